"""The HTTP API against a real local Ray Serve app: results equal the in-process engine's."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

from deployments.media import metadata
from deployments.stages.in_process import InProcessStages
from tests.helpers import edit_request, image_bytes, random_image

PHOTO = image_bytes(random_image(96, 64, seed=5))
OTHER = image_bytes(random_image(64, 80, seed=6))
FAST = {"num_inference_steps": "2"}


def edit(client, files=None, **fields):
    files = files if files is not None else [("image", ("photo.png", PHOTO, "image/png"))]
    return client.post("/v1/images/edits", files=files, data={"prompt": "make the sky pink", **FAST, **fields})


def pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"), dtype=np.int16)


def assert_same_image(b64: str, expected_png: bytes) -> None:
    """Equal within one 8-bit level: replicas run torch with other thread counts than this process,
    which may flip the rounding of a pixel, never more (the project's 1/255 fidelity bar)."""
    served = pixels(b64)
    expected = pixels(base64.b64encode(expected_png))
    assert served.shape == expected.shape
    assert np.abs(served - expected).max() <= 1


@pytest.fixture(scope="module")
def engine(tiny_checkpoints):
    model = tiny_checkpoints["edit-plus"]
    stages = InProcessStages(model)

    def run(images, **values) -> bytes:
        return stages.edit(edit_request(model, images, **values).parameters).data

    return run


def test_edit_equals_in_process_engine(client, engine):
    response = edit(client, seed="42", negative_prompt="blurry")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["data"][0]["seed"] == 42 and body["output_format"] == "png"
    assert body["data"][0]["quality_report"]["output_size"] == body["size"]  # deployments/workflows/quality.py; tests/serve/test_guards_api.py
    record = metadata.read(base64.b64decode(body["data"][0]["b64_json"]))  # tests/engine/test_provenance.py
    assert record["parameters"]["seed"] == 42 and record["parameters"]["negative_prompt"] == "blurry"
    expected = engine([PHOTO], prompt="make the sky pink", negative_prompt="blurry", seed=42, num_inference_steps=2)
    assert_same_image(body["data"][0]["b64_json"], expected)


def test_a_step_cache_is_reported_and_the_image_is_the_engine_s(client, engine):
    cache = '{"method": "taylorseer", "cache_interval": 2, "disable_cache_before_step": 2}'
    response = edit(client, seed="3", num_inference_steps="6", cache=cache)
    assert response.status_code == 200, response.text
    item = response.json()["data"][0]
    assert item["cache"] == {"computed": 8, "reused": 0, "predicted": 4}  # 2 rows x (steps 0, 1, 3, 5 computed)
    expected = engine([PHOTO], prompt="make the sky pink", seed=3, num_inference_steps=6, cache=cache)
    assert_same_image(item["b64_json"], expected)
    assert "cache" not in edit(client, seed="3").json()["data"][0]  # off by default
    refused = edit(client, cache='{"method": "first_block_cache", "threshold": 2}').json()["error"]
    assert refused["param"] == "cache" and "less than or equal to 1" in refused["message"]


def test_n_images_use_consecutive_seeds(client):
    body = edit(client, n="2", seed="7").json()
    assert [item["seed"] for item in body["data"]] == [7, 8]
    single = edit(client, seed="8").json()
    assert body["data"][1]["b64_json"] == single["data"][0]["b64_json"]
    assert body["data"][0]["b64_json"] != body["data"][1]["b64_json"]


def test_multi_image_edit(client, engine):
    files = [("image[]", ("a.png", PHOTO, "image/png")), ("image[]", ("b.png", OTHER, "image/png"))]
    response = edit(client, files=files, seed="3", prompt="put picture 1 into picture 2")
    assert response.status_code == 200, response.text
    expected = engine([PHOTO, OTHER], prompt="put picture 1 into picture 2", seed=3, num_inference_steps=2)
    assert_same_image(response.json()["data"][0]["b64_json"], expected)


@pytest.mark.parametrize("fmt, magic", [("png", b"\x89PNG"), ("jpeg", b"\xff\xd8\xff"), ("webp", b"RIFF")])
def test_output_formats(client, fmt, magic):
    body = edit(client, output_format=fmt, output_compression="80").json()
    assert body["output_format"] == fmt
    assert base64.b64decode(body["data"][0]["b64_json"]).startswith(magic)


def test_size_auto_and_explicit(client):
    auto = edit(client, size="auto").json()
    assert auto["size"] == "320x224"  # ~256x256 area at the 96x64 input's 3:2 ratio, on the 32-px grid
    explicit = edit(client, size="128x64").json()
    assert explicit["size"] == "128x64"
    assert pixels(explicit["data"][0]["b64_json"]).shape == (64, 128, 3)


def test_same_seed_same_bytes_other_seed_other_image(client):
    first, second = (edit(client, seed="123").json()["data"][0]["b64_json"] for _ in range(2))
    assert first == second
    assert edit(client, seed="124").json()["data"][0]["b64_json"] != first


def test_timings_are_reported(client):
    response = edit(client)
    timings = response.json()["timings"]
    assert {"encode_queue", "encode", "denoise_queue", "denoise", "decode_queue", "decode", "total"} <= set(timings)
    assert timings["total"] >= timings["denoise"] > 0
    assert "denoise;dur=" in response.headers["server-timing"]


@pytest.mark.parametrize(
    "fields, param",
    [
        ({"prompt": ""}, "prompt"),
        ({"n": "9"}, "n"),
        ({"n": "two"}, "n"),
        ({"size": "big"}, "size"),
        ({"response_format": "url"}, "response_format"),
        ({"output_format": "gif"}, "output_format"),
        ({"true_cfg_scale": "nan"}, "true_cfg_scale"),
        ({"num_inference_steps": "0"}, "num_inference_steps"),
        ({"model": "gpt-image-1"}, "model"),
    ],
)
def test_invalid_fields_get_openai_error_shape(client, fields, param):
    response = edit(client, **fields)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["code"] == 400
    assert param in error["message"]


def test_missing_prompt_and_image(client):
    response = client.post("/v1/images/edits", files=[("image", ("p.png", PHOTO, "image/png"))], data={})
    assert response.status_code == 400 and response.json()["error"]["param"] == "prompt"
    response = client.post("/v1/images/edits", data={"prompt": "hi"}, files={"other": ("x", b"x")})
    assert response.status_code == 400 and response.json()["error"]["param"] == "image"


def test_undecodable_upload(client):
    response = edit(client, files=[("image", ("p.png", b"<html>not a png</html>", "image/png"))])
    assert response.status_code == 400 and response.json()["error"]["param"] == "image"


def test_models_health_and_openapi(client):
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == "edit-plus"
    health = client.get("/healthz")
    assert health.status_code == 200 and set(health.json()["stages"]) == {"Encoder", "Denoiser", "Decoder"}
    spec = client.get("/openapi.json").json()
    assert {"/v1/images/edits", "/v1/models", "/healthz"} <= set(spec["paths"])
