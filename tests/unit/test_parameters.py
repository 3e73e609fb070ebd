"""Each model family takes its own fields; the others are refused by name, with what it takes instead."""

import pytest

from deployments.errors import InvalidInputError
from deployments.families import FAMILY_OF
from deployments.parameters import PARAMETERS

QWEN, IP2P = PARAMETERS["QwenImageEditPlusPipeline"], PARAMETERS["StableDiffusionInstructPix2PixPipeline"]


def test_every_supported_pipeline_has_a_family_and_parameters():
    assert set(PARAMETERS) == set(FAMILY_OF)


@pytest.mark.parametrize("parameters, given, param, fragment", [
    (QWEN, {"guidance_scale": 7.5}, "guidance_scale", "they take true_cfg_scale"),
    (QWEN, {"image_guidance_scale": 1.5}, "image_guidance_scale", "Qwen-Image-Edit models"),
    (IP2P, {"true_cfg_scale": 4.0}, "true_cfg_scale", "they take guidance_scale and image_guidance_scale"),
    (IP2P, {"size": (512, 512)}, "size", "edit at the input image's size"),
])
def test_fields_of_another_family_are_refused(parameters, given, param, fragment):
    with pytest.raises(InvalidInputError) as info:
        parameters.check(given)
    assert info.value.param == param and fragment in info.value.message


def test_own_fields_pass_and_defaults_fill_the_rest():
    IP2P.check({"guidance_scale": 5.0, "image_guidance_scale": None, "true_cfg_scale": None, "size": None})
    QWEN.check({"true_cfg_scale": 2.0, "size": (64, 64)})
    assert IP2P.guidance_of({"guidance_scale": 5}) == {"guidance_scale": 5.0, "image_guidance_scale": 1.5}
    assert QWEN.guidance_of({}) == {"true_cfg_scale": 4.0}
    assert IP2P.default_negative_prompt is None and QWEN.default_negative_prompt == " "
