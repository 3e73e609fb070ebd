"""What InstructPix2Pix requests may set beyond the shared fields (deployments/request/fields.py)."""

from pydantic import Field

from deployments.request.fields import EditParameters, GuidanceScale


class InstructPix2PixParameters(EditParameters):
    family = "InstructPix2Pix"
    pipeline = "StableDiffusionInstructPix2PixPipeline"
    size_rule = "edit at the input image's size (multiples of 8, scaled down to the model's largest area)"
    default_num_inference_steps = 100

    # negative_prompt: None by default (diffusers then uses the empty prompt)
    guidance_scale: GuidanceScale = Field(
        7.5, title="Text guidance", description="Text guidance s_T: how strongly the instruction applies (5-10 typical). Guidance runs "
        "when it is > 1 and image_guidance_scale >= 1."
    )
    image_guidance_scale: GuidanceScale = Field(
        1.5, title="Image guidance", description="Image guidance s_I: how closely the output follows the input image (1-1.5 typical)."
    )
