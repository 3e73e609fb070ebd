"""What a request may set for each model family, and the defaults for what it leaves out.

Kept free of torch and diffusers: the HTTP layer checks a request against its model's family before
any stage sees it, and the bulk job checks its manifest's columns before any work starts.
"""

from dataclasses import dataclass

from deployments.errors import InvalidInputError

GUIDANCE_FIELDS = ("true_cfg_scale", "guidance_scale", "image_guidance_scale")


@dataclass(frozen=True)
class FamilyParameters:
    family: str  # what users call it, for messages and /v1/models
    guidance: dict[str, float]  # the guidance fields this family takes -> their defaults
    default_negative_prompt: str | None  # what a request without one gets
    max_input_images: int
    explicit_size: bool  # whether a request may ask for an output size
    size_rule: str = ""  # how the output size is chosen when it may not be asked for
    default_num_inference_steps: int = 50  # diffusers' default for the pipeline (a checkpoint may record its own)

    def check(self, given: dict[str, object]) -> None:
        """Refuses, naming the field, anything in `given` (field -> value, None = not given) that
        this family does not take."""
        for name in GUIDANCE_FIELDS:
            if given.get(name) is not None and name not in self.guidance:
                takes = " and ".join(self.guidance) or "no guidance field"
                raise InvalidInputError(name, f"does not apply to {self.family} models; they take {takes}")
        if not self.explicit_size and given.get("size") is not None:
            raise InvalidInputError("size", f"{self.family} models {self.size_rule}; leave size out or give 'auto'")

    def guidance_of(self, given: dict[str, object]) -> dict[str, float]:
        """This family's guidance values: the given ones, the defaults for the rest."""
        return {name: float(given[name]) if given.get(name) is not None else default for name, default in self.guidance.items()}


QWEN_IMAGE_EDIT = dict(
    family="Qwen-Image-Edit", guidance={"true_cfg_scale": 4.0}, default_negative_prompt=" ", explicit_size=True
)
PARAMETERS = {
    "QwenImageEditPipeline": FamilyParameters(**QWEN_IMAGE_EDIT, max_input_images=1),
    "QwenImageEditPlusPipeline": FamilyParameters(**QWEN_IMAGE_EDIT, max_input_images=3),
    "StableDiffusionInstructPix2PixPipeline": FamilyParameters(
        family="InstructPix2Pix",
        guidance={"guidance_scale": 7.5, "image_guidance_scale": 1.5},
        default_negative_prompt=None,  # diffusers then uses the empty prompt
        max_input_images=1,
        explicit_size=False,
        size_rule="edit at the input image's size (multiples of 8, scaled down to the model's largest area)",
        default_num_inference_steps=100,
    ),
}

