"""Masked edits and outpainting over HTTP: OpenAI's `mask` through the official SDK unchanged, the
same image as the engine makes; `placement` extends the canvas to `size`; mask problems are 400s
naming `mask`, before any denoising."""

import base64
import io

import numpy as np
import pytest
from openai import BadRequestError, OpenAI
from PIL import Image

from deployments.stages.in_process import InProcessStages
from tests.engine.test_masked_edits import area, openai_mask
from tests.helpers import edit_request, image_bytes, random_image
from tests.serve.test_bad_input import assert_refused, no_denoising_work
from tests.serve.test_http_api import assert_same_image

PHOTO = image_bytes(random_image(96, 64, seed=12))
MASK = openai_mask(area("rectangle"))


def test_openai_sdk_edits_inside_a_mask_as_the_engine_does(served, tiny_checkpoints):
    client = OpenAI(base_url=f"{served}/v1", api_key="unused", max_retries=0, timeout=120)
    extra = {"seed": 6, "num_inference_steps": 4, "strength": 0.8}
    result = client.images.edit(
        image=("photo.png", PHOTO, "image/png"), mask=("mask.png", MASK, "image/png"), prompt="remove the car",
        extra_body=extra,
    )
    assert result.data[0].b64_json

    model = tiny_checkpoints["edit-plus"]
    request = edit_request(model, [PHOTO], prompt="remove the car", mask=MASK, **extra)
    expected = InProcessStages(model).edit(request.parameters).data
    assert_same_image(result.data[0].b64_json, expected)

    with pytest.raises(BadRequestError) as refused:
        client.images.edit(
            image=("photo.png", PHOTO, "image/png"), mask=("mask.png", PHOTO, "image/png"), prompt="remove the car",
            extra_body=extra,
        )
    assert refused.value.body["param"] == "mask" and "no alpha channel" in refused.value.body["message"]


def test_placement_extends_the_canvas_to_the_asked_size(client):
    response = client.post(
        "/v1/images/edits", files=[("image", ("p.png", PHOTO, "image/png"))],
        data={"prompt": "extend the beach", "size": "160x96", "placement": "center", "strength": "1",
              "num_inference_steps": "3"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["size"] == "160x96"
    assert Image.open(io.BytesIO(base64.b64decode(body["data"][0]["b64_json"]))).size == (160, 96)


def mask_upload(data: bytes, name: str = "mask.png", content_type: str = "image/png") -> list:
    return [("image", ("p.png", PHOTO, "image/png")), ("mask", (name, data, content_type))]


BAD_MASKS = {  # id -> (files, fields, message fragment)
    "jpeg": (mask_upload(image_bytes(random_image(96, 64), "JPEG"), "m.jpg", "image/jpeg"), {}, "must be a PNG with an alpha channel"),
    "no-alpha": (mask_upload(PHOTO), {}, "has no alpha channel (RGB PNG)"),
    "other-size": (mask_upload(openai_mask(np.ones((64, 64), bool))), {}, "must be the size of the image, 96x64, got 64x64"),
    "nothing-to-edit": (mask_upload(openai_mask(np.zeros((64, 96), bool))), {}, "no fully transparent pixel"),
    "not-an-image": (mask_upload(b"GIF89a not really"), {}, "not a recognizable"),
    "two-masks": (mask_upload(MASK) + [("mask", ("m2.png", MASK, "image/png"))], {}, "give one file, got 2"),
    "as-text": ([("image", ("p.png", PHOTO, "image/png"))], {"mask": "the left half"}, "must be an uploaded file"),
}


@pytest.mark.parametrize("case", BAD_MASKS)
def test_mask_problems_are_refused_naming_mask(client, case):
    files, fields, fragment = BAD_MASKS[case]
    with no_denoising_work():
        response = client.post("/v1/images/edits", files=files, data={"prompt": "remove it", "num_inference_steps": "2", **fields})
    assert_refused(response, 400, "mask", fragment)
