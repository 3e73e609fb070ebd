"""What Qwen-Image-Edit requests may set beyond the shared fields (deployments/parameters.py)."""

from pydantic import Field

from deployments.parameters import EditParameters, GuidanceScale, NegativePrompt


class QwenImageEditParameters(EditParameters):
    family = "Qwen-Image-Edit"
    pipeline = "QwenImageEditPipeline"

    negative_prompt: NegativePrompt = " "  # as diffusers' examples: true CFG on by default
    true_cfg_scale: GuidanceScale = Field(
        4.0, title="CFG scale", description="True classifier-free guidance scale; <= 1 (or no negative prompt) turns it off."
    )


class QwenImageEditPlusParameters(QwenImageEditParameters):
    """Qwen-Image-Edit-2509 / -2511: several input images."""

    pipeline = "QwenImageEditPlusPipeline"
    max_input_images = 3
