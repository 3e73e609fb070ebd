"""What Qwen-Image-Edit requests may set beyond the shared fields (deployments/parameters.py)."""

import math

from pydantic import Field

from deployments.parameters import EditParameters, GuidanceScale, NegativePrompt


# The schedule the Qwen-Image-Lightning adapters were distilled for (their model card's
# FlowMatchEulerDiscreteScheduler config): sigmas 1, 0.9, 0.75, 0.5 at 4 steps; run with CFG off.
LIGHTNING_SCHEDULER = {
    "base_image_seq_len": 256,
    "base_shift": math.log(3),
    "invert_sigmas": False,
    "max_image_seq_len": 8192,
    "max_shift": math.log(3),
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "shift_terminal": None,
    "stochastic_sampling": False,
    "time_shift_type": "exponential",
    "use_beta_sigmas": False,
    "use_dynamic_shifting": True,
    "use_exponential_sigmas": False,
    "use_karras_sigmas": False,
}


class QwenImageEditParameters(EditParameters):
    family = "Qwen-Image-Edit"
    pipeline = "QwenImageEditPipeline"
    takes_adapters = True
    scheduler_presets = {"lightning": LIGHTNING_SCHEDULER}

    negative_prompt: NegativePrompt = " "  # as diffusers' examples: true CFG on by default
    true_cfg_scale: GuidanceScale = Field(
        4.0, title="CFG scale", description="True classifier-free guidance scale; <= 1 (or no negative prompt) turns it off."
    )


class QwenImageEditPlusParameters(QwenImageEditParameters):
    """Qwen-Image-Edit-2509 / -2511: several input images."""

    pipeline = "QwenImageEditPlusPipeline"
    max_input_images = 3
