"""Guards at work: an edited image's quality report (deployments/workflows/quality.py) judged by its guard
(declared in deployments/settings/guard.py), and what is done when a limit is crossed.

A request's `guard` (JSON text in a form field or a manifest column, e.g. {"max_changed_fraction":
0.3, "action": "retry"}), or the deployment's default (`limits.guard.default`) when it sets none.
Actions: `flag` returns the image with the verdict "flagged"; `retry` makes the image once more with
the next seed no image of the request uses (image i of n: seed + i + n) and returns that one, its
verdict "retried" if it passes, else "flagged"; `fail` fails the image (a 422 online, an error row
in bulk). Guards never change how an image is made: the result cache and provenance ignore them.
"""

from dataclasses import dataclass
from typing import Any

from deployments.errors import EditError
from deployments.settings.guard import Guard


class GuardFailedError(EditError):
    """An edited image crossed its guard's limits and the guard's action is `fail` (HTTP 422)."""

    status = 422
    type = "invalid_request_error"
    kind = "guard"

    def __init__(self, crossed: list[str]):
        super().__init__(f"guard: the edited image crossed its limits ({'; '.join(crossed)})", "guard")


VERDICTS = ("passed", "flagged", "retried", "failed")


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
