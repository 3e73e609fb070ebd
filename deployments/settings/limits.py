"""The engine's limits: what one request may ask for, the same online (`limits` in serve/config.yaml)
and in bulk jobs (`--limits`). They bound the declared request fields (deployments/request/fields.py).
"""

from pydantic import BaseModel, ConfigDict, Field

from deployments.errors import PayloadTooLargeError
from deployments.settings.guard import GuardPolicy
from deployments.settings.step_cache import StepCachePolicy

HARD_MAX_STEPS = 1000  # the most any limit may allow: beyond it a request is a mistake, not a setting
HARD_MAX_N = 16


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_request_bytes: int = Field(
        50 * 2**20, ge=1024, description="Largest request body accepted; larger ones get 413."
    )
    max_image_bytes: int = Field(20 * 2**20, ge=1024, description="Largest single uploaded image; larger get 413.")
    max_n: int = Field(4, ge=1, le=HARD_MAX_N, description="Most images one request may ask for (`n`).")
    max_image_pixels: int = Field(
        25_000_000, ge=64 * 64, le=64_000_000,
        description="Largest input image in pixels, read from its header before decoding; larger get 400.",
    )
    max_prompt_chars: int = Field(4000, ge=1, description="Longest prompt or negative prompt, in characters.")
    max_steps: int = Field(200, ge=1, le=HARD_MAX_STEPS, description="Most denoising steps a request may ask for.")
    max_output_pixels: int = Field(
        2048 * 2048, ge=64 * 64, description="Largest output image (width x height) a request may ask for."
    )
    max_work: int = Field(
        4 * 50 * 1024 * 1024, ge=1,
        description="Most n x steps x output pixels one request may cost, over all the links of its chain and counting a "
        "retrying guard's second image: bounds what one request can make the cluster compute.",
    )
    max_chain_links: int = Field(4, ge=1, le=16, description="Most links (the request and its `chain`) one request may have.")
    step_cache: StepCachePolicy = Field(
        default_factory=StepCachePolicy, description="Step caching: the default (off) and how aggressive a request may be.",
    )
    guard: GuardPolicy = Field(
        default_factory=GuardPolicy, description="Quality guards: the default for requests that set none (none).",
    )

    def image_too_large(self, param: str, got: str) -> PayloadTooLargeError:
        """The error for an image over `max_image_bytes` (413), online and in bulk alike."""
        return PayloadTooLargeError(param, f"each image may be at most {self.max_image_bytes} bytes, got {got}")
