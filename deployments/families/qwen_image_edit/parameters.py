"""What Qwen-Image-Edit requests may set beyond the shared fields (deployments/request/fields.py)."""

import math
import re
from typing import Annotated

from pydantic import Field, model_validator

from deployments.media.images import turned_by_exif
from deployments.media.masks import check_mask_file
from deployments.request.fields import EditParameters, GuidanceScale, NegativePrompt, checked_file, refused

PLACEMENT = re.compile(r"center|(\d{1,5}),(\d{1,5})")  # fullmatch: `$` would accept a trailing newline


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
    takes_step_cache = True
    scheduler_presets = {"lightning": LIGHTNING_SCHEDULER}

    negative_prompt: NegativePrompt = " "  # as diffusers' examples: true CFG on by default
    true_cfg_scale: GuidanceScale = Field(
        4.0, title="CFG scale", description="True classifier-free guidance scale; <= 1 (or no negative prompt) turns it off."
    )
    mask: Annotated[bytes | None, checked_file(check_mask_file)] = Field(
        None, description="A PNG the size of the (first) image whose fully transparent pixels (alpha 0) mark the "
        "area to edit; everything else is kept (OpenAI's `mask`). The edit is made at the image's framing."
    )
    strength: float = Field(
        0.6, ge=0, le=1, description="How much of the schedule a masked edit runs, as diffusers' inpainting: 1 "
        "repaints the area from noise, less keeps more of what is there. Ignored without a mask or placement."
    )
    placement: str | None = Field(
        None, description="Outpainting: where the (first) image goes on a canvas of `size`: 'center' or 'X,Y' "
        "(its top-left corner in pixels; an image larger than the canvas is first scaled down to fit). Only "
        "the new area (and the mask's, if any) is edited; strength 1 suits it best."
    )
    @model_validator(mode="after")
    def _masked_edit(self):
        if self.placement is not None and not PLACEMENT.fullmatch(self.placement):
            raise refused("placement", f"must be 'center' or 'X,Y' (non-negative pixels), got {self.placement!r}")
        if self.placement is not None and self.output_size is None:
            raise refused("placement", "extends the canvas to `size`: give a size (WIDTHxHEIGHT) as well")
        if self.mask is not None and self.placement is None and self.output_size is not None:
            raise refused(
                "size", "a masked edit is made at the (first) image's framing; leave size out (or 'auto'), or give "
                "a placement to extend the canvas to it"
            )
        if self.mask is not None and turned_by_exif(self.image[0]):
            raise refused(
                "mask", "image 1 carries an EXIF orientation that turns it, so which way the mask was drawn can't be told "
                "(a square image's mask fits either way); upload image 1 upright (orientation applied) and the mask for it",
            )
        if self.masked and self.num_inference_steps - first_step(self.num_inference_steps, self.strength) < 1:
            raise refused(
                "strength", f"{self.strength} runs none of the {self.num_inference_steps} steps; give a larger strength"
            )
        return self

    @property
    def masked(self) -> bool:
        """Whether only part of the (first) image is edited: a mask, or a canvas around it."""
        return self.mask is not None or self.placement is not None

    @property
    def position(self) -> str | tuple[int, int] | None:
        """The placement: "center", (x, y), or None."""
        if self.placement is None or self.placement == "center":
            return self.placement
        x, y = PLACEMENT.fullmatch(self.placement).groups()
        return int(x), int(y)


def first_step(steps: int, strength: float) -> int:
    """Where a masked edit of `steps` steps starts in its schedule: strength 1 runs every step, less
    skips the first ones. Adapted from diffusers' `get_timesteps` (QwenImageEditInpaintPipeline)."""
    init_timestep = min(steps * strength, steps)
    return int(max(steps - init_timestep, 0))


class QwenImageEditPlusParameters(QwenImageEditParameters):
    """Qwen-Image-Edit-2509 / -2511: several input images."""

    pipeline = "QwenImageEditPlusPipeline"
    max_input_images = 3
