"""Which waiting requests join the denoising batch before the next step (continuous batching).

One engine step may hold several latent shapes ("buckets"); the Denoiser runs one forward per bucket.
Requests are considered oldest first and admitted while the step stays within a token budget (image +
text tokens, CFG rows counted, over all its buckets), a row limit and a limit on buckets per step.
A younger request may pass one that does not fit (backfilling the room left), but not one that has
waited `max_wait_steps` steps: from then on nothing younger is admitted, the batch drains until the
starving request fits, and it goes next. A request larger than the budget on its own runs alone. A
request that is not ready (its LoRA adapters are still loading, or there is no room to load them until
running requests finish) fits nowhere; once starving, it too stops younger ones passing it. A `solo`
request (the bulk job retrying a row whose batch failed as a whole) runs only in a step of its own.
"""

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from deployments.settings.loop import LoopSettings


class Candidate(Protocol):
    bucket: Hashable  # requests with equal buckets share one forward
    rows: int  # forward rows: 2 with true CFG, else 1 (3 for guided InstructPix2Pix)
    tokens: int  # tokens across its rows per forward
    waited_steps: int  # engine steps it has spent waiting
    ready: bool  # whether it can start now (its LoRA adapters are loaded)
    solo: bool  # runs with no other request in its steps


T = TypeVar("T", bound=Candidate)


@dataclass(frozen=True)
class AdmissionPolicy:
    token_budget: int
    max_batch_rows: int
    max_wait_steps: int
    continuous: bool = True  # False: whole-request batching (admit only into an empty batch)
    max_buckets_per_step: int = 4  # forwards per step; 1 = one latent shape at a time

    @classmethod
    def from_settings(cls, settings: LoopSettings) -> "AdmissionPolicy":
        return cls(settings.token_budget, settings.max_batch_rows, settings.max_wait_steps, settings.continuous, settings.max_buckets_per_step)

    def admit(self, waiting: Sequence[T], active: Sequence[T]) -> list[T]:
        """The waiting requests (oldest first) to add to `active` before the next step."""
        if not waiting or (active and not self.continuous) or any(r.solo for r in active):
            return []
        buckets = {r.bucket for r in active}
        rows = sum(r.rows for r in active)
        tokens = sum(r.tokens for r in active)
        admitted: list[T] = []
        for request in waiting:
            fits = request.ready and not request.solo and (
                rows + request.rows <= self.max_batch_rows
                and tokens + request.tokens <= self.token_budget
                and len(buckets | {request.bucket}) <= self.max_buckets_per_step
            )
            alone = request.ready and not active and not admitted  # an oversized request still runs, by itself
            if fits or alone:
                admitted.append(request)
                if request.solo:
                    break  # nothing joins it
                buckets.add(request.bucket)
                rows += request.rows
                tokens += request.tokens
            elif request.waited_steps >= self.max_wait_steps:
                break  # starving: nobody younger passes it; the batch drains until it fits
        return admitted
