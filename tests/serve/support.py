"""Helpers shared by the serve/ tests: the test app's settings, deploying an extra app for one test,
an HTTP client, a free port, the Denoiser's counters, fuzzing an app from its OpenAPI document."""

import contextlib
import socket
import time
from pathlib import Path

import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from ray import serve
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance, status_code_conformance

from serve.settings import AppSettings

APP = "edit"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app_settings(model: str, lora: dict | None = None, **settings) -> AppSettings:
    """The repo's defaults, pointed at the tiny test checkpoint, with small CPU shares so that the app
    and the autoscaling app fit the test cluster; `lora`: the LoRA settings (none by default); and any
    other `settings` (e.g. result_cache; off by default: it would hide the work of repeated requests)."""
    deployment = {"ray_actor_options": {"num_cpus": 0.5}, "max_ongoing_requests": 32}
    stage = {"max_batch_size": 8, "batch_wait_timeout_s": 0.2, "deployment": deployment}
    denoiser = {"deployment": deployment}
    return AppSettings.model_validate(
        {"model": model, "request_timeout_s": 120, "encoder": stage, "denoiser": denoiser, "decoder": stage,
         "lora": lora or {}, **settings}
    )


def adapter_settings(checkpoint: str) -> dict:
    """LoRA settings offering, besides the tiny checkpoint's own adapters (style, detail 0.8,
    lightning-4step: deployments/checkpoints/tiny_adapters.py), `broken`, a corrupt file written here."""
    broken = Path(checkpoint) / "adapters" / "broken.safetensors"
    broken.write_bytes(b"\x00" * 64)
    return {"max_per_request": 2, "max_scale": 2.0, "adapters": {"broken": {"source": str(broken)}}}


class Client:
    """requests against one base URL, with a timeout on every call."""

    def __init__(self, base_url: str):
        self.base_url = base_url
        self.session = requests.Session()

    def get(self, path: str, **kwargs) -> requests.Response:
        return self.session.get(self.base_url + path, timeout=120, **kwargs)

    def post(self, path: str, **kwargs) -> requests.Response:
        return self.session.post(self.base_url + path, timeout=120, **kwargs)


def denoiser_stats(app: str = APP) -> dict:
    """The engine-loop counters of `app`'s Denoiser (one replica)."""
    return serve.get_deployment_handle("Denoiser", app).stats.remote().result(timeout_s=60)


@contextlib.contextmanager
def deployed(app, name: str, route_prefix: str | None):
    """`app` running under `name` for the duration (deleted however the test ends, so a failed test
    leaves no replicas taking the shared cluster's CPUs); yields its handle."""
    handle = serve.run(app, name=name, route_prefix=route_prefix)
    try:
        yield handle
    finally:
        serve.delete(name)


FUZZ_CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
FUZZ_EXAMPLES = 150  # per operation and mode; edit requests are refused in milliseconds (a fuzzed image is no image)
FUZZ_MODES = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
FUZZ_DEADLINE_S = "2"  # each fuzzed request's `timeout`: what a valid edit may cost the suite


def fuzz(base_url: str, mode: GenerationMode) -> list[float]:
    """Fuzzes every operation of the app at `base_url` with values its document allows (positive) or
    doesn't (negative); returns each request's seconds. Fails on a 5xx or an undocumented response."""
    schema = schemathesis.openapi.from_url(base_url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 4  # the page, models, health, edits
    seconds = []
    for operation in operations:
        if mode is GenerationMode.NEGATIVE and not operation.body:  # no input to make invalid (the GETs take none)
            continue

        @settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=mode))
        def call(case):
            if mode is GenerationMode.POSITIVE and isinstance(case.body, dict):  # a valid edit runs at most this long (504 after)
                case.body["timeout"] = FUZZ_DEADLINE_S
            started = time.monotonic()
            response = case.call(base_url=base_url, timeout=120)
            seconds.append(time.monotonic() - started)
            if response.status_code == 504:  # the request's own deadline passed: its documented answer, not a fault
                assert response.json()["error"]["type"] == "timeout", response.text
                case.validate_response(response, checks=FUZZ_CHECKS[1:])
            else:
                case.validate_response(response, checks=FUZZ_CHECKS)

        call()
    return seconds
