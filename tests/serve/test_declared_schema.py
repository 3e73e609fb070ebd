"""Every edge states and enforces what the family's declaration says: the OpenAPI document, the bulk
job's columns and flags list the declared fields with the server's ranges and defaults, and an
out-of-range value is refused with the same message online and in a bulk row. The expectation is
derived from the declaration itself (deployments/request/fields.py + the family's `parameters.py`)."""

import json
import re

import pandas as pd
import pytest

from cluster.bulk.__main__ import parse_args
from cluster.bulk.image_reads import ImageReader
from cluster.bulk.manifest import NOT_COLUMNS, file_columns, parameter_columns
from cluster.bulk.requests import RequestBuilder
from cluster.bulk.storage import Output
from deployments.checkpoints.loader import resolve_model
from deployments.settings.lora import LoraSettings
from tests.helpers import image_bytes, random_image
from tests.serve.support import app_settings

PNG = image_bytes(random_image(64, 48))
SHAPE = ("type", "minimum", "maximum", "default", "enum", "maxLength", "maxItems")


@pytest.fixture(scope="module")
def declared(tiny_checkpoints):
    """The served model's declared parameters, bound to the app's limits."""
    spec = resolve_model(tiny_checkpoints["edit-plus"])
    return spec, spec.request_model(app_settings(spec.model_id).limits)


def shape(schema: dict) -> dict:
    typed = next((option for option in schema.get("anyOf", []) if option.get("type") != "null"), schema)
    return {key: typed.get(key, schema.get(key)) for key in SHAPE if key in typed or key in schema}


def out_of_range(schema: dict):
    """A value just past the field's declared maximum (None when it has none)."""
    typed = shape(schema)
    if "maximum" in typed:
        return typed["maximum"] + 1
    if "enum" in typed:
        return "not-" + typed["enum"][0]
    return None


def test_the_openapi_document_lists_the_declared_fields_with_their_ranges(client, declared):
    _, model = declared
    form = client.get("/openapi.json").json()["paths"]["/v1/images/edits"]["post"]["requestBody"]["content"]
    properties = form["multipart/form-data"]["schema"]["properties"]
    for name, schema in model.model_json_schema()["properties"].items():
        assert shape(properties[name]) == shape(schema), name
    assert properties["num_inference_steps"]["maximum"] == 200 and properties["num_inference_steps"]["default"] == 8
    assert properties["n"]["maximum"] == 4  # the limit, a setting
    assert properties["image[]"] == properties["image"] and properties["image"]["maxItems"] == 3
    document = client.get("/openapi.json").json()
    references = set(re.findall(r'"\$ref": "#/components/schemas/(\w+)"', json.dumps(document)))
    assert {"AdapterChoice", "FirstBlockCache", "TaylorSeer"} <= references <= set(document["components"]["schemas"])


def test_the_bulk_columns_and_flags_are_the_declared_fields(declared):
    spec, model = declared
    columns = parameter_columns(spec.declared)
    assert set(columns) == set(model.model_fields) - set(NOT_COLUMNS) - {"mask"}
    assert file_columns(spec.declared) == ("mask",)  # a column of paths, read like `image`; no flag
    args = parse_args(["--manifest", "m.parquet", "--output", "out"])
    assert all(hasattr(args, name) for name in columns)  # --num-inference-steps, --true-cfg-scale, ...


def test_an_out_of_range_value_is_refused_alike_online_and_in_a_bulk_row(client, declared, tmp_path):
    spec, model = declared
    (tmp_path / "in.png").write_bytes(PNG)
    limits = app_settings(spec.model_id).limits
    rows = RequestBuilder(spec, limits, LoraSettings(), {}, ImageReader(str(tmp_path), limits), Output.at(str(tmp_path / "out")))
    checked = 0
    for name, schema in model.model_json_schema()["properties"].items():
        value = out_of_range(schema)
        if value is None or name in NOT_COLUMNS:
            continue
        online = client.post(
            "/v1/images/edits", files=[("image", ("in.png", PNG, "image/png"))],
            data={"prompt": "make it blue", name: str(value)},
        ).json()["error"]
        row = rows(pd.DataFrame([{"id": "a", "image": "in.png", "instruction": "make it blue", name: value}]))
        assert online["param"] == name and online["message"] == row["error"][0], name
        checked += 1
    assert checked >= 4  # seed, steps, compression, output format, true_cfg_scale at least
