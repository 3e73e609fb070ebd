"""The API fuzzed from its own OpenAPI document (schemathesis): every operation /openapi.json lists,
with values its schemas allow and values they don't, gets no server error, and every response
conforms to what the document says (status codes, content types, bodies) — for the Qwen-Image-Edit
app and the InstructPix2Pix one. Bounded: a fixed number of examples per operation."""

import time

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance, status_code_conformance

from tests.serve.support import app_settings

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES = 150  # per operation and mode; edit requests are refused in milliseconds (a fuzzed image is no image)
PIX2PIX = "/fuzzed-pix2pix"
calls: dict[str, list[float]] = {}  # app -> each call's seconds: the run's size and time, printed at the end


@pytest.fixture(scope="module")
def apps(served, ray_cluster, tiny_checkpoints):
    from ray import serve

    from serve.app import build_app

    serve.run(build_app(app_settings(tiny_checkpoints["ip2p"])), name="fuzzed-pix2pix", route_prefix=PIX2PIX)
    yield {"edit": served, "pix2pix": ray_cluster + PIX2PIX}
    serve.delete("fuzzed-pix2pix")
    for app, seconds in calls.items():
        print(f"\nfuzzed {app}: {len(seconds)} requests in {sum(seconds):.1f}s")


@pytest.mark.parametrize("app", ["edit", "pix2pix"])
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_server_error_and_every_response_as_documented(apps, app, mode):
    """Values the document allows (positive) and values it doesn't (negative), for every operation."""
    schema = schemathesis.openapi.from_url(apps[app] + "/openapi.json")
    assert len(list(schema.get_all_operations())) == 4  # the page, models, health, edits
    for result in schema.get_all_operations():
        operation = result.ok()
        if mode is GenerationMode.NEGATIVE and not operation.body:  # no input to make invalid (the GETs take none)
            continue

        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=mode))
        def fuzz(case):
            started = time.monotonic()
            response = case.call(base_url=apps[app], timeout=120)
            calls.setdefault(app, []).append(time.monotonic() - started)
            case.validate_response(response, checks=CHECKS)

        fuzz()
