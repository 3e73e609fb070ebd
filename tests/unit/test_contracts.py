import math

import pytest

from deployments.contracts import EditRequest, OutputSpec
from deployments.errors import InvalidInputError

IMAGE = (b"not decoded here",)


def make(**overrides) -> EditRequest:
    return EditRequest(**{"images": IMAGE, "prompt": "make the sky pink", **overrides})


@pytest.mark.parametrize(
    "overrides, param, fragment",
    [
        ({"prompt": ""}, "prompt", "non-empty"),
        ({"prompt": "   \n"}, "prompt", "non-empty"),
        ({"prompt": None}, "prompt", "non-empty"),
        ({"num_inference_steps": 0}, "num_inference_steps", "[1, 1000]"),
        ({"num_inference_steps": -3}, "num_inference_steps", "[1, 1000]"),
        ({"num_inference_steps": 2.5}, "num_inference_steps", "integer"),
        ({"num_inference_steps": True}, "num_inference_steps", "integer"),
        ({"true_cfg_scale": math.nan}, "true_cfg_scale", "finite"),
        ({"true_cfg_scale": math.inf}, "true_cfg_scale", "finite"),
        ({"true_cfg_scale": -1.0}, "true_cfg_scale", "[0, 100]"),
        ({"true_cfg_scale": "4"}, "true_cfg_scale", "finite number"),
        ({"guidance_scale": math.nan}, "guidance_scale", "finite"),
        ({"image_guidance_scale": -0.5}, "image_guidance_scale", "[0, 100]"),
        ({"image_guidance_scale": True}, "image_guidance_scale", "finite number"),
        ({"seed": -1}, "seed", "integer in [0,"),
        ({"seed": 2**63}, "seed", "integer in [0,"),
        ({"images": ()}, "image", "1 to 3 images, got 0"),
        ({"images": IMAGE * 4}, "image", "1 to 3 images, got 4"),
        ({"images": [b"x"]}, "image", "1 to 3 images"),
        ({"width": 512}, "size", "both width and height"),
        ({"width": 0, "height": 512}, "size", "width must be an integer in [1, 4096]"),
        ({"width": 512, "height": 5000}, "size", "height must be an integer in [1, 4096]"),
        ({"negative_prompt": 3}, "negative_prompt", "string"),
    ],
)
def test_invalid_request_names_the_field(overrides, param, fragment):
    with pytest.raises(InvalidInputError) as info:
        make(**overrides)
    assert info.value.param == param
    assert info.value.status == 400
    assert fragment in info.value.message


@pytest.mark.parametrize(
    "kwargs, param",
    [({"format": "gif"}, "output_format"), ({"compression": 101}, "output_compression"), ({"compression": -1}, "output_compression")],
)
def test_invalid_output_spec(kwargs, param):
    with pytest.raises(InvalidInputError) as info:
        OutputSpec(**kwargs)
    assert info.value.param == param


def test_given_reports_the_family_specific_fields_as_set():
    assert make().given() == {"true_cfg_scale": None, "guidance_scale": None, "image_guidance_scale": None, "size": None}
    assert make(guidance_scale=5, width=64, height=32).given()["guidance_scale"] == 5
    assert make(width=64, height=32).given()["size"] == (64, 32)


def test_valid_request_keeps_its_values():
    request = make(seed=7, num_inference_steps=3, true_cfg_scale=2, width=512, height=256)
    assert (request.seed, request.num_inference_steps, request.width, request.height) == (7, 3, 512, 256)
