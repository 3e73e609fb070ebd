"""Which waiting requests join the denoising batch before the next step (continuous batching).

One forward runs one latent shape (a "bucket"). Requests are admitted FIFO within the active
bucket while the forward stays within a token budget (image + text tokens, CFG rows counted) and a
row limit. Fairness across buckets by aging: once the oldest request of another bucket has waited
`max_wait_steps` steps, the active bucket stops admitting and drains, and that bucket goes next.
"""

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar


class Candidate(Protocol):
    bucket: Hashable
    rows: int  # forward rows: 2 with true CFG, else 1
    tokens: int  # tokens across its rows per forward
    waited_steps: int  # engine steps it has spent waiting


T = TypeVar("T", bound=Candidate)


@dataclass(frozen=True)
class AdmissionPolicy:
    token_budget: int
    max_batch_rows: int
    max_wait_steps: int
    continuous: bool = True  # False: whole-request batching (admit only into an empty batch)

    def admit(self, waiting: Sequence[T], active: Sequence[T]) -> list[T]:
        """The waiting requests (oldest first) to add to `active` before the next step."""
        if not waiting or (active and not self.continuous):
            return []
        bucket = self._next_bucket(waiting, active)
        if active and active[0].bucket != bucket:
            return []  # drain the active bucket so a starving one can run
        rows = sum(r.rows for r in active)
        tokens = sum(r.tokens for r in active)
        admitted: list[T] = []
        for request in waiting:
            if request.bucket != bucket:
                continue
            fits = rows + request.rows <= self.max_batch_rows and tokens + request.tokens <= self.token_budget
            if not fits and (active or admitted):  # an oversized request still runs, alone
                break
            admitted.append(request)
            rows += request.rows
            tokens += request.tokens
        return admitted

    def _next_bucket(self, waiting: Sequence[T], active: Sequence[T]) -> Hashable:
        starving = next((r for r in waiting if r.waited_steps >= self.max_wait_steps), None)
        if starving is not None:
            return starving.bucket
        return active[0].bucket if active else waiting[0].bucket
