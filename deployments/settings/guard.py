"""Guards as configuration: limits on an edited image's quality report and the action when one is
crossed — a request's `guard` field (JSON text in a form field or a manifest column) and the
deployment's default (`limits.guard`). What a guard does: deployments/workflows/guards.py."""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from deployments.settings.json_text import SMALL_OBJECT_CHARS, json_text

# limit -> (the report's field, whether the limit is a most (else a least))
LIMITS = {
    "max_changed_fraction": ("changed_fraction", True),
    "min_changed_fraction": ("changed_fraction", False),
    "min_unchanged_ssim": ("unchanged_ssim", False),
    "min_unchanged_psnr_db": ("unchanged_psnr_db", False),
}


class Guard(BaseModel):
    """Limits on one image's quality report, and the action when one is crossed."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)  # strict: true is no number

    max_changed_fraction: float | None = Field(
        None, ge=0, le=1, description="Most of the image an edit may change (an edit meant to be local that changed most of it)."
    )
    min_changed_fraction: float | None = Field(None, ge=0, le=1, description="Least it must change (an edit that did nothing).")
    min_unchanged_ssim: float | None = Field(None, ge=-1, le=1, description="Least SSIM of the region that should be unchanged.")
    min_unchanged_psnr_db: float | None = Field(None, ge=0, le=200, description="Least PSNR (dB) of that region.")
    action: Literal["flag", "retry", "fail"] = Field(
        "flag", description="flag: answer with the verdict; retry: once, with the next seed; fail: the image fails."
    )

    @model_validator(mode="after")
    def _some_limit(self):
        if all(getattr(self, name) is None for name in LIMITS):
            raise PydanticCustomError("as_is", "sets no limit; give one of {limits}, or off", {"limits": ", ".join(LIMITS)})
        return self

    def crossed(self, quality: dict[str, Any]) -> list[str]:
        """The limits the report crosses, each said with its value. A region that is empty (SSIM null)
        or identical (PSNR null: infinite) crosses no least."""
        crossed = []
        for name, (measure, most) in LIMITS.items():
            limit, value = getattr(self, name), quality[measure]
            if limit is None or value is None:
                continue
            if (value > limit) if most else (value < limit):
                crossed.append(f"{measure} {value:g} is {'above' if most else 'below'} {name} {limit:g}")
        return crossed


GuardField = Annotated[Guard | None, json_text('{"max_changed_fraction": 0.3, "action": "flag"}', SMALL_OBJECT_CHARS)]


class GuardPolicy(BaseModel):
    """The deployment's guard (`limits.guard` in serve/config.yaml, the bulk job's `--limits`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default: Guard | None = Field(None, description="The guard of requests that leave `guard` unset; none unless configured.")
