"""An InstructPix2Pix app beside the Qwen-Image-Edit one in the same Serve instance (one app per
model, each under its own route prefix), over HTTP and through the openai SDK."""

import base64

import pytest
from openai import BadRequestError, OpenAI

from deployments.stages.in_process import InProcessStages
from tests.helpers import edit_request, image_bytes, random_image
from tests.serve.support import FUZZ_MODES, Client, app_settings, fuzz
from tests.serve.test_http_api import assert_same_image

PREFIX = "/pix2pix"
PHOTO = image_bytes(random_image(72, 48, seed=8))


@pytest.fixture(scope="module")
def pix2pix(ray_cluster, tiny_checkpoints):
    from ray import serve

    from serve.app import build_app

    serve.run(build_app(app_settings(tiny_checkpoints["ip2p"])), name="edit-pix2pix", route_prefix=PREFIX)
    yield Client(ray_cluster + PREFIX)
    serve.delete("edit-pix2pix")


def edit(client, **fields):
    files = [("image", ("photo.png", PHOTO, "image/png"))]
    return client.post("/v1/images/edits", files=files, data={"prompt": "make it snow", "num_inference_steps": "3", **fields})


def test_edit_with_both_guidance_scales_equals_the_engine(pix2pix, tiny_checkpoints):
    response = edit(pix2pix, guidance_scale="9", image_guidance_scale="1.2", seed="4", negative_prompt="grey")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["size"] == "72x48"  # the input's size

    model = tiny_checkpoints["ip2p"]
    request = edit_request(model, [PHOTO], prompt="make it snow", negative_prompt="grey", seed=4, num_inference_steps=3,
                           guidance_scale=9.0, image_guidance_scale=1.2)
    expected = InProcessStages(model).edit(request.parameters).data
    assert_same_image(body["data"][0]["b64_json"], expected)


def test_models_lists_the_family_and_its_parameters(pix2pix):
    model = pix2pix.get("/v1/models").json()["data"][0]
    assert model["family"] == "InstructPix2Pix"
    properties = model["parameters"]["properties"]
    assert (properties["guidance_scale"]["default"], properties["image_guidance_scale"]["default"]) == (7.5, 1.5)
    assert properties["image"]["maxItems"] == 1 and properties["size"]["enum"] == ["auto"]
    assert "true_cfg_scale" not in properties


@pytest.mark.parametrize("fields, param, fragment", [
    ({"true_cfg_scale": "4"}, "true_cfg_scale", "does not apply to InstructPix2Pix models"),
    ({"size": "64x64"}, "size", "edit at the input image's size"),
    ({"guidance_scale": "25"}, "guidance_scale", "[0, 20]"),
    ({"image_guidance_scale": "much"}, "image_guidance_scale", "must be a finite number"),
])
def test_fields_that_do_not_apply_or_are_out_of_range_are_refused(pix2pix, fields, param, fragment):
    response = edit(pix2pix, **fields)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param and fragment in error["message"]


def test_a_mask_does_not_apply(pix2pix):
    mask = image_bytes(random_image(72, 48, mode="RGBA"))
    response = pix2pix.post("/v1/images/edits", files=[("image", ("p.png", PHOTO, "image/png")), ("mask", ("m.png", mask, "image/png"))],
                            data={"prompt": "x"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "mask" and "does not apply to InstructPix2Pix models" in error["message"]


def test_the_qwen_app_refuses_instruct_pix2pix_fields(client):
    response = client.post("/v1/images/edits", files=[("image", ("p.png", PHOTO, "image/png"))],
                           data={"prompt": "x", "image_guidance_scale": "1.5"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "image_guidance_scale"


def test_openai_sdk_streams_previews_then_the_same_image(pix2pix):
    client = OpenAI(base_url=f"{pix2pix.base_url}/v1", api_key="unused", max_retries=0, timeout=120)
    photo = ("photo.png", PHOTO, "image/png")
    extra = {"seed": 3, "num_inference_steps": 4, "guidance_scale": 6.0}
    events = list(client.images.edit(image=photo, prompt="make it snow", stream=True, partial_images=1, extra_body=extra))
    assert [e.type for e in events] == ["image_edit.partial_image", "image_edit.completed"]
    plain = client.images.edit(image=photo, prompt="make it snow", extra_body=extra)
    assert events[-1].b64_json == plain.data[0].b64_json
    assert base64.b64decode(events[0].b64_json)[:2] == b"\xff\xd8"  # a JPEG preview

    with pytest.raises(BadRequestError) as info:
        client.images.edit(image=[photo, photo], prompt="two", extra_body=extra)
    assert info.value.body["param"] == "image"


@pytest.mark.parametrize("mode", FUZZ_MODES)
def test_fuzzed_from_its_openapi_document_no_server_error(pix2pix, mode):
    """tests/serve/test_fuzzed_api.py's fuzzing, on this app."""
    seconds = fuzz(pix2pix.base_url, mode)
    print(f"\nfuzzed the InstructPix2Pix app ({mode.value}): {len(seconds)} requests in {sum(seconds):.1f}s")
