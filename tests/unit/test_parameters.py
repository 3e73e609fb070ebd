"""The request declarations: every refusal names the field and what is allowed; each family takes its
own fields and refuses the others'; limits and a checkpoint's defaults bind the declaration."""

import math

import pytest
from PIL import ExifTags, Image

from deployments.errors import InvalidInputError
from deployments.families.loading import FAMILY_OF
from deployments.request.binding import parse, request_model
from deployments.request.fields import EditParameters
from deployments.request.registry import DECLARATIONS
from deployments.settings.engine import EngineSettings
from deployments.settings.limits import Limits
from tests.helpers import image_bytes, random_image

QWEN = request_model(DECLARATIONS["QwenImageEditPlusPipeline"])
EDIT = request_model(DECLARATIONS["QwenImageEditPipeline"])
IP2P = request_model(DECLARATIONS["StableDiffusionInstructPix2PixPipeline"])
IMAGE = [b"not decoded here"]
MASK = image_bytes(random_image(8, 8, mode="RGBA"))  # its pixels are read by the Encoder; its header here


def _turned_square() -> bytes:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # stored sideways: shown turned 90 degrees
    return image_bytes(random_image(8, 8), "JPEG", exif=exif)


TURNED_SQUARE = _turned_square()


def refusal(model, **values) -> InvalidInputError:
    with pytest.raises(InvalidInputError) as info:
        parse(model, {"image": IMAGE, "prompt": "make the sky pink", **values})
    assert info.value.status == 400
    return info.value


def test_every_supported_pipeline_has_a_declaration_and_its_math():
    assert set(DECLARATIONS) == set(FAMILY_OF)
    for pipeline, declared in DECLARATIONS.items():
        assert declared.pipeline == pipeline and issubclass(declared, EditParameters)


@pytest.mark.parametrize("values, param, fragment", [
    ({"prompt": ""}, "prompt", "non-empty"),
    ({"prompt": "   \n"}, "prompt", "non-empty"),
    ({"prompt": None}, "prompt", "string"),
    ({"prompt": "a\x00b"}, "prompt", "NUL"),
    ({"prompt": "x" * 4001}, "prompt", "at most 4000 characters, got 4001"),
    ({"num_inference_steps": 0}, "num_inference_steps", "an integer in [1, 200], got 0"),
    ({"num_inference_steps": 201}, "num_inference_steps", "an integer in [1, 200], got 201"),
    ({"num_inference_steps": 2.5}, "num_inference_steps", "integer"),
    ({"num_inference_steps": "three"}, "num_inference_steps", "integer"),
    ({"true_cfg_scale": math.nan}, "true_cfg_scale", "a finite number in [0, 20]"),
    ({"true_cfg_scale": math.inf}, "true_cfg_scale", "finite"),
    ({"true_cfg_scale": -1.0}, "true_cfg_scale", "[0, 20], got -1.0"),
    ({"true_cfg_scale": 90}, "true_cfg_scale", "[0, 20], got 90"),  # the engine once took up to 100
    ({"seed": -1}, "seed", "integer in [0,"),
    ({"seed": 2**63}, "seed", "integer in [0,"),
    ({"seed": 2**63 - 1, "n": 2}, "seed", "with n=2"),
    ({"image": []}, "image", "give 1 to 3 image(s) to Qwen-Image-Edit models, got 0"),
    ({"image": IMAGE * 4}, "image", "give 1 to 3 image(s) to Qwen-Image-Edit models, got 4"),
    ({"size": "512"}, "size", "'auto' or WIDTHxHEIGHT"),
    ({"size": "512X512"}, "size", "'auto' or WIDTHxHEIGHT"),  # bulk once took a capital X
    ({"size": "0x512"}, "size", "at least 1x1"),
    ({"size": "4096x4096"}, "size", "at most 4194304 pixels"),
    ({"n": 5}, "n", "an integer in [1, 4], got 5"),
    ({"n": 4, "num_inference_steps": 200, "size": "1024x1024"}, "n", "n x num_inference_steps x output pixels"),
    ({"negative_prompt": 3}, "negative_prompt", "string"),
    ({"output_format": "gif"}, "output_format", "one of 'png', 'jpeg' or 'webp', got 'gif'"),
    ({"output_compression": 101}, "output_compression", "[0, 100]"),
    ({"mask": b"x"}, "mask", "is not a recognizable PNG, JPEG or WebP image"),
    ({"mask": image_bytes(random_image(8, 8), "JPEG")}, "mask", "must be a PNG with an alpha channel, got a JPEG file"),
    ({"mask": MASK, "size": "512x512"}, "size", "a masked edit is made at the (first) image's framing"),
    ({"mask": MASK, "strength": 1.5}, "strength", "a finite number in [0, 1], got 1.5"),
    ({"mask": MASK, "strength": 0}, "strength", "0.0 runs none of the 50 steps"),
    ({"placement": "left"}, "placement", "must be 'center' or 'X,Y' (non-negative pixels), got 'left'"),
    # a mask for a square JPEG turned by its EXIF orientation edited the wrong area, silently
    ({"mask": MASK, "image": [TURNED_SQUARE]}, "mask", "image 1 carries an EXIF orientation that turns it"),
    ({"placement": "-1,0", "size": "512x512"}, "placement", "must be 'center' or 'X,Y'"),
    ({"placement": "center"}, "placement", "give a size (WIDTHxHEIGHT) as well"),
    ({"guidance_scale": 7.5}, "guidance_scale", "does not apply to Qwen-Image-Edit models; they take true_cfg_scale"),
])
def test_invalid_values_are_refused_naming_the_field(values, param, fragment):
    error = refusal(QWEN, **values)
    assert error.param == param and fragment in error.message, error.message


@pytest.mark.parametrize("model, values, param, fragment", [
    (EDIT, {"image": IMAGE * 2}, "image", "give 1 to 1 image(s)"),
    (IP2P, {"true_cfg_scale": 4.0}, "true_cfg_scale", "they take guidance_scale and image_guidance_scale"),
    (IP2P, {"size": "64x64"}, "size", "edit at the input image's size"),
    (IP2P, {"image_guidance_scale": 21}, "image_guidance_scale", "[0, 20]"),
    (IP2P, {"mask": MASK}, "mask", "does not apply to InstructPix2Pix models"),
])
def test_each_family_takes_its_own_fields(model, values, param, fragment):
    error = refusal(model, **values)
    assert error.param == param and fragment in error.message, error.message


def test_defaults_are_filled_in_and_values_kept():
    ip2p = parse(IP2P, {"image": IMAGE, "prompt": "x", "guidance_scale": "5"})  # form text is converted
    assert type(ip2p) is DECLARATIONS["StableDiffusionInstructPix2PixPipeline"]  # picklable by reference
    assert ip2p.family_values() == {"guidance_scale": 5.0, "image_guidance_scale": 1.5}
    assert ip2p.negative_prompt is None and ip2p.num_inference_steps == 100 and ip2p.size == "auto"
    qwen = parse(QWEN, {"image": IMAGE, "prompt": "x", "seed": 7, "size": "512x256"})
    assert (qwen.seed, qwen.output_size, qwen.negative_prompt, qwen.true_cfg_scale) == (7, (512, 256), " ", 4.0)
    assert qwen.num_inference_steps == 50 and 0 <= parse(QWEN, {"image": IMAGE, "prompt": "x"}).seed < 2**31
    assert (qwen.masked, qwen.strength, qwen.family_values()) == (False, 0.6, {"true_cfg_scale": 4.0, "strength": 0.6, "placement": None})
    masked = parse(QWEN, {"image": IMAGE, "prompt": "x", "mask": MASK, "strength": "1"})
    assert masked.masked and masked.mask == MASK and masked.strength == 1.0 and "mask" not in masked.family_values()
    assert parse(QWEN, {"image": IMAGE, "prompt": "x", "size": "96x64", "placement": "8,16"}).position == (8, 16)
    assert parse(QWEN, {"image": IMAGE, "prompt": "x", "strength": 0}).strength == 0  # ignored without a mask
    assert QWEN.file_fields() == ("image", "mask") and IP2P.file_fields() == ("image",)


def test_limits_and_checkpoint_defaults_bind_the_declaration_and_its_schema():
    limits = Limits(max_steps=30, max_n=2, max_prompt_chars=10)
    model = request_model(DECLARATIONS["QwenImageEditPlusPipeline"], limits, EngineSettings(default_num_inference_steps=8))
    properties = model.model_json_schema()["properties"]
    assert properties["num_inference_steps"]["maximum"] == 30 and properties["num_inference_steps"]["default"] == 8
    assert properties["n"]["maximum"] == 2 and properties["prompt"]["maxLength"] == 10
    assert properties["true_cfg_scale"] == {**properties["true_cfg_scale"], "minimum": 0, "maximum": 20, "default": 4.0}
    assert "num_inference_steps: must be an integer in [1, 30], got 31" == refusal(model, prompt="x", num_inference_steps=31).message
    assert request_model(DECLARATIONS["QwenImageEditPlusPipeline"], limits) is request_model(
        DECLARATIONS["QwenImageEditPlusPipeline"], Limits(max_steps=30, max_n=2, max_prompt_chars=10)
    )  # one bound model per (family, limits, checkpoint)
    assert IP2P.model_json_schema()["properties"]["size"]["enum"] == ["auto"]


def test_step_caching_is_off_unless_asked_or_configured_and_bounded_by_the_deployment():
    ask = '{"method": "first_block_cache", "threshold": 0.2}'
    assert parse(QWEN, {"image": IMAGE, "prompt": "x"}).cache is None
    assert parse(QWEN, {"image": IMAGE, "prompt": "x", "cache": ask}).cache.threshold == 0.2
    limits = Limits.model_validate({"step_cache": {"default": {"method": "taylorseer"}, "max_threshold": 0.1}})
    configured = request_model(DECLARATIONS["QwenImageEditPlusPipeline"], limits)
    assert parse(configured, {"image": IMAGE, "prompt": "x"}).cache.cache_interval == 5  # the default, diffusers' defaults
    assert parse(configured, {"image": IMAGE, "prompt": "x", "cache": "off"}).cache is None
    assert configured.model_json_schema()["properties"]["cache"]["default"]["method"] == "taylorseer"
    assert refusal(configured, cache=ask).message == "cache: threshold may be at most 0.1 on this deployment, got 0.2"
    assert "must be JSON such as" in refusal(QWEN, cache="{fast").message
    assert "'first_block_cache', 'taylorseer'" in refusal(QWEN, cache='{"method": "teacache"}').message
    assert refusal(IP2P, cache=ask).message.startswith("cache: InstructPix2Pix models take no step cache")
    ip2p = request_model(DECLARATIONS["StableDiffusionInstructPix2PixPipeline"], limits)
    assert parse(ip2p, {"image": IMAGE, "prompt": "x"}).cache is None  # the deployment default is for families that cache
