"""The private (underscore) and internal diffusers and PEFT APIs the engine leans on, listed in one
place: a diffusers or PEFT upgrade that changes one fails here, by name, before the parity tests fail
for reasons that are harder to read. Public APIs are covered by the parity tests themselves."""

import inspect

import pytest
from diffusers import (
    FlowMatchEulerDiscreteScheduler,
    QwenImageEditInpaintPipeline,
    QwenImageEditPipeline,
    QwenImageEditPlusPipeline,
    StableDiffusionInstructPix2PixPipeline,
)
from diffusers.models.attention_dispatch import _AttentionBackendRegistry
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus
from peft.tuners.lora import Linear as LoraLinear

# (owner, attribute, the leading parameters we pass, by name) — who uses it
USED = [
    (QwenImageEditPipeline, "_pack_latents", ("latents", "batch_size", "num_channels_latents", "height", "width")),  # families/qwen_image_edit.py
    (QwenImageEditPipeline, "_unpack_latents", ("latents", "height", "width", "vae_scale_factor")),
    (QwenImageEditPipeline, "_encode_vae_image", ("self", "image", "generator")),
    (QwenImageEditPlusPipeline, "_encode_vae_image", ("self", "image", "generator")),
    (QwenImageEditInpaintPipeline, "get_timesteps", ("self", "num_inference_steps", "strength", "device")),  # first_step adapts it
    (pipeline_qwenimage_edit_plus, "calculate_dimensions", ("target_area", "ratio")),
    (pipeline_qwenimage_edit_plus, "calculate_shift", ("image_seq_len", "base_seq_len", "max_seq_len", "base_shift", "max_shift")),
    (FlowMatchEulerDiscreteScheduler, "scale_noise", ("self", "sample", "timestep", "noise")),  # qwen_image_masked_edits.py
    (FlowMatchEulerDiscreteScheduler, "set_begin_index", ("self", "begin_index")),
    (DiagonalGaussianDistribution, "__init__", ("self", "parameters")),
    (DiagonalGaussianDistribution, "sample", ("self", "generator")),
    (StableDiffusionInstructPix2PixPipeline, "_encode_prompt", ("self", "prompt", "device", "num_images_per_prompt",
                                                                "do_classifier_free_guidance", "negative_prompt")),
    (_AttentionBackendRegistry, "get_active_backend", ()),  # fast_path.py
    (_AttentionBackendRegistry, "set_active_backend", ("backend",)),
    (LoraLinear, "_cast_input_dtype", ("self", "x", "dtype")),  # lora.py
]


@pytest.mark.parametrize("owner, name, leading", USED, ids=[f"{getattr(o, '__name__', o)}.{n}" for o, n, _ in USED])
def test_the_private_apis_we_use_keep_their_signatures(owner, name, leading):
    assert hasattr(owner, name), f"{owner}.{name} is gone"
    parameters = list(inspect.signature(getattr(owner, name)).parameters)
    assert parameters[: len(leading)] == list(leading), f"{owner}.{name} now takes {parameters}"


def test_the_scheduler_exposes_its_begin_index():
    scheduler = FlowMatchEulerDiscreteScheduler()
    scheduler.set_begin_index(3)
    assert scheduler.begin_index == 3 and scheduler.step_index is None  # scale_noise picks sigma from these


def test_the_inpaint_pipeline_s_mask_processor_binarizes_grey_masks():
    source = inspect.getsource(QwenImageEditInpaintPipeline.__init__)
    for setting in ("do_normalize=False", "do_binarize=True", "do_convert_grayscale=True"):
        assert setting in source, f"QwenImageEditInpaintPipeline's mask processor no longer has {setting}"
