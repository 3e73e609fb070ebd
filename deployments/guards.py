"""Guards: limits on an edited image's quality report (deployments/quality.py) that turn it into a
verdict, and what to do when one is crossed.

A request's `guard` (JSON text in a form field or a manifest column, e.g. {"max_changed_fraction":
0.3, "action": "retry"}), or the deployment's default (`limits.guard.default`) when it sets none.
Actions: `flag` returns the image with the verdict "flagged"; `retry` makes the image once more with
the next seed no image of the request uses (image i of n: seed + i + n) and returns that one, its
verdict "retried" if it passes, else "flagged"; `fail` fails the image (a 422 online, an error row
in bulk). Guards never change how an image is made: the result cache and provenance ignore them.
"""

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from deployments.errors import EditError
from deployments.json_text import json_text

# limit -> (the report's field, whether the limit is a most (else a least))
LIMITS = {
    "max_changed_fraction": ("changed_fraction", True),
    "min_changed_fraction": ("changed_fraction", False),
    "min_unchanged_ssim": ("unchanged_ssim", False),
    "min_unchanged_psnr_db": ("unchanged_psnr_db", False),
}


class Guard(BaseModel):
    """Limits on one image's quality report, and the action when one is crossed."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

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


GuardField = Annotated[Guard | None, json_text('{"max_changed_fraction": 0.3, "action": "flag"}')]


class GuardPolicy(BaseModel):
    """The deployment's guard (`limits.guard` in serve/config.yaml, the bulk job's `--limits`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default: Guard | None = Field(None, description="The guard of requests that leave `guard` unset; none unless configured.")


class GuardFailedError(EditError):
    """An edited image crossed its guard's limits and the guard's action is `fail` (HTTP 422)."""

    status = 422
    type = "invalid_request_error"
    kind = "guard"

    def __init__(self, crossed: list[str]):
        super().__init__(f"guard: the edited image crossed its limits ({'; '.join(crossed)})", "guard")


@dataclass(frozen=True)
class Verdict:
    """What a guard says of an image: `verdict` passed, flagged, retried or failed, the limits it crossed, and the seed
    whose image crossed them first when the image was made again."""

    verdict: str
    crossed: tuple[str, ...] = ()
    retried_from_seed: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "crossed": list(self.crossed), "retried_from_seed": self.retried_from_seed}


def judge(guard: Guard, quality: dict[str, Any], first_seed: int | None = None) -> Verdict | None:
    """The verdict on an image's `quality` report, or None when the guard asks for it to be made again
    (action `retry`, not yet retried). `first_seed`: set when this image is the retry, the seed of the
    image that crossed the limits first. Raises GuardFailedError for action `fail`."""
    crossed = guard.crossed(quality)
    if first_seed is not None:
        return Verdict("retried" if not crossed else "flagged", tuple(crossed), first_seed)
    if not crossed:
        return Verdict("passed")
    if guard.action == "fail":
        raise GuardFailedError(crossed)
    return None if guard.action == "retry" else Verdict("flagged", tuple(crossed))


def retry_seed(seed: int, n: int) -> int:
    """The seed a retry of the image of `seed` uses: the next one no image of its request (n images,
    seeds seed0 .. seed0 + n - 1) uses."""
    return (seed + n) % 2**63  # seeds are at most 2**63 - 1
