"""Step caching as configuration: what a request may ask for (its `cache` field: a method and its
parameters, as diffusers' FirstBlockCacheConfig and TaylorSeerCacheConfig name them; JSON text in a
form field or a manifest column, e.g. {"method": "first_block_cache", "threshold": 0.1}) and the
deployment's policy (`limits.step_cache`: the default for requests that don't ask, and how aggressive
a request may be). The math: deployments/families/qwen_image_edit/step_cache.py."""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from deployments.settings.json_text import SMALL_OBJECT_CHARS, json_text

METHODS = ("first_block_cache", "taylorseer")


class FirstBlockCache(BaseModel):
    """Reuse the other blocks' residual while the first block's output moves less than `threshold`."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)  # strict: true is no number

    method: Literal["first_block_cache"]
    threshold: float = Field(
        0.05, gt=0, le=1, description="Relative change of the first block's residual below which a step reuses "
        "the cached one (diffusers' default 0.05; higher skips more, and loses more fidelity).",
    )


class TaylorSeer(BaseModel):
    """Skip whole forwards, predicting the model's output by a Taylor expansion of its computed outputs
    (diffusers' TaylorSeer in its lite mode)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)

    method: Literal["taylorseer"]
    cache_interval: int = Field(5, ge=1, le=100, description="Steps between computed forwards once caching began.")
    disable_cache_before_step: int = Field(3, ge=0, le=1000, description="Steps computed before any prediction.")
    disable_cache_after_step: int | None = Field(None, ge=0, le=1000, description="From this step on, every step computes.")
    max_order: int = Field(1, ge=0, le=4, description="Order of the Taylor expansion.")

    @model_validator(mode="after")
    def _warm_up_fits_the_order(self):
        """A row predicts from the outputs computed before: an expansion of order k needs k + 1 of them
        (and at step 0 there are none: diffusers' hook then fails too)."""
        if self.disable_cache_before_step < self.max_order + 1:
            raise PydanticCustomError(
                "as_is", "disable_cache_before_step must be at least max_order + 1 = {least} (the computed steps an expansion "
                "of order {order} needs), got {got}",
                {"least": self.max_order + 1, "order": self.max_order, "got": self.disable_cache_before_step},
            )
        return self


StepCache = Annotated[
    Annotated[FirstBlockCache | TaylorSeer, Field(discriminator="method")] | None,
    json_text('{"method": "first_block_cache", "threshold": 0.05}', SMALL_OBJECT_CHARS),
]


class StepCachePolicy(BaseModel):
    """The deployment's step caching: the default and the limits (`limits.step_cache` in serve/config.yaml,
    the bulk job's `--limits`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default: Annotated[FirstBlockCache | TaylorSeer, Field(discriminator="method")] | None = Field(
        None, description="What requests that leave `cache` unset get; none (off) unless configured.",
    )
    max_threshold: float = Field(
        0.5, gt=0, le=1, description="Highest First-Block-Cache threshold a request may ask for (the higher, the "
        "more steps reuse the cache, and the further the result moves from the uncached one).",
    )
    max_cache_interval: int = Field(10, ge=1, le=100, description="Longest TaylorSeer cache interval a request may ask for.")

    def refusal(self, cache: FirstBlockCache | TaylorSeer) -> str | None:
        """Why this deployment refuses `cache`, or None."""
        if isinstance(cache, FirstBlockCache) and cache.threshold > self.max_threshold:
            return f"threshold may be at most {self.max_threshold} on this deployment, got {cache.threshold}"
        if isinstance(cache, TaylorSeer) and cache.cache_interval > self.max_cache_interval:
            return f"cache_interval may be at most {self.max_cache_interval} on this deployment, got {cache.cache_interval}"
        return None
