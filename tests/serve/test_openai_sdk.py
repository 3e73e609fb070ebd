"""The official `openai` SDK edits through the app unchanged."""

import base64
import io

import pytest
from openai import BadRequestError, OpenAI
from PIL import Image

from tests.helpers import image_bytes, random_image


def test_openai_sdk_edit(served):
    client = OpenAI(base_url=f"{served}/v1", api_key="unused", max_retries=0, timeout=120)
    photo = ("photo.png", image_bytes(random_image(80, 64, seed=9)), "image/png")
    result = client.images.edit(
        image=photo,
        prompt="change the red dress to a blue long-sleeved shirt",
        n=2,
        output_format="webp",
        extra_body={"seed": 5, "num_inference_steps": 2, "negative_prompt": "blurry", "true_cfg_scale": 3.0},
    )
    assert len(result.data) == 2
    image = Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json)))
    assert image.format == "WEBP"
    assert result.output_format == "webp"


def test_openai_sdk_multi_image_and_error(served):
    client = OpenAI(base_url=f"{served}/v1", api_key="unused", max_retries=0, timeout=120)
    images = [("a.png", image_bytes(random_image(64, 64, seed=1)), "image/png"),
              ("b.png", image_bytes(random_image(64, 96, seed=2)), "image/png")]
    result = client.images.edit(image=images, prompt="把文字换成 Buy One Get One Free", extra_body={"num_inference_steps": 2})
    assert len(result.data) == 1 and result.data[0].b64_json

    with pytest.raises(BadRequestError) as info:
        client.images.edit(image=images[0], prompt="", extra_body={"num_inference_steps": 2})
    assert info.value.body["param"] == "prompt"


def test_openai_sdk_streams_partial_images_then_the_same_image(served):
    client = OpenAI(base_url=f"{served}/v1", api_key="unused", max_retries=0, timeout=120)
    photo = ("photo.png", image_bytes(random_image(64, 64, seed=4)), "image/png")
    extra = {"seed": 11, "num_inference_steps": 6}
    stream = client.images.edit(image=photo, prompt="make it night", stream=True, partial_images=2, extra_body=extra)
    events = list(stream)
    assert [e.type for e in events] == ["image_edit.partial_image"] * 2 + ["image_edit.completed"]
    assert [e.partial_image_index for e in events[:2]] == [0, 1]
    for partial in events[:2]:
        assert Image.open(io.BytesIO(base64.b64decode(partial.b64_json))).format == "JPEG"
    plain = client.images.edit(image=photo, prompt="make it night", extra_body=extra)
    assert events[-1].b64_json == plain.data[0].b64_json  # streaming changes nothing about the result
