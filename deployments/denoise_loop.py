"""Continuous (step-level) batching: one engine loop per Denoiser replica, on its own thread.

    step() = admit -> forward -> update -> resolve

Between any two denoising steps, waiting requests join the running batch and finished ones leave at
once, so a short request never waits for a long one to finish all its steps. Each request's result
equals denoising it alone (the Denoiser's batch-invariance guarantee). Cancelled requests leave at
the next step boundary and free their slot.
"""

import collections
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from deployments.admission import AdmissionPolicy
from deployments import metrics
from deployments.contracts import Conditioning, Latents
from deployments.denoiser import Denoiser
from deployments.errors import OverloadedError
from deployments.families import DenoiseJob

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class Ticket:
    """One request in the loop: its job, its result, where it stands."""

    job: DenoiseJob
    on_step: Callable[[int, int, Latents | None], None] | None  # (steps done, total, preview or None), loop thread
    future: Future = field(default_factory=Future)
    submitted_at: float = field(default_factory=time.time)
    admitted_at: float | None = None
    waited_steps: int = 0

    @property
    def bucket(self):
        return self.job.bucket

    @property
    def rows(self) -> int:
        return self.job.rows

    @property
    def tokens(self) -> int:
        return self.job.tokens

    @property
    def progress(self) -> tuple[int, int]:
        return self.job.step_index, len(self.job.timesteps)

    def cancel(self) -> None:
        """Leave the batch at the next step boundary (safe from any thread; also what cancelling an
        asyncio future wrapping `future` does)."""
        self.future.cancel()

    @property
    def cancelled(self) -> bool:
        return self.future.cancelled()


@dataclass
class LoopStats:
    """The loop's state, for metrics and tests."""

    active_requests: int = 0
    active_rows: int = 0
    waiting_requests: int = 0
    last_forward_tokens: int = 0
    last_step_s: float = 0.0
    steps: int = 0  # engine steps run (one forward each)
    rows_stepped: int = 0  # sum of rows over all steps: rows_stepped / steps = mean rows per forward
    max_requests_in_a_step: int = 0
    mixed_timestep_steps: int = 0  # steps whose batch held requests at different timesteps
    finished: int = 0
    cancelled: int = 0


class DenoiseLoop:
    def __init__(self, denoiser: Denoiser, policy: AdmissionPolicy, max_waiting: int, model_name: str = ""):
        self.denoiser = denoiser
        self.model_name = model_name  # the metrics' `model` label
        self.policy = policy
        self.max_waiting = max_waiting
        self.stats = LoopStats()
        self.last_beat = time.monotonic()  # last time the loop was alive and not stuck in a step
        self._step_started: float | None = None  # monotonic start of the step running now
        self._waiting: collections.deque[Ticket] = collections.deque()
        self._active: list[Ticket] = []
        self._wakeup = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="denoise-loop", daemon=True)
        self._thread.start()

    def submit(
        self,
        conditioning: Conditioning,
        on_step: Callable[[int, int, Latents | None], None] | None = None,
        preview_after: frozenset[int] = frozenset(),
    ) -> Ticket:
        """Queues a request; its ticket's future resolves to its Latents. `on_step` hears of each step,
        with a preview (the predicted clean latents) after the step counts in `preview_after`.
        Raises OverloadedError when `max_waiting` requests are already waiting."""
        with self._wakeup:
            if len(self._waiting) >= self.max_waiting:
                raise OverloadedError(f"the denoiser already has {self.max_waiting} requests waiting")
            job = self.denoiser.start(conditioning)
            job.preview_after = preview_after
            ticket = Ticket(job=job, on_step=on_step)
            self._waiting.append(ticket)
            self._set_waiting()
            self._wakeup.notify()
        return ticket

    def close(self) -> None:
        with self._wakeup:
            self._stopped = True
            self._wakeup.notify()
        self._thread.join(timeout=60)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def step_running_for(self) -> float:
        """Seconds the current step has been running (0 between steps): a health check's measure of a
        wedged model or device."""
        started = self._step_started
        return 0.0 if started is None else time.monotonic() - started

    def _run(self) -> None:
        while True:
            with self._wakeup:
                while not (self._stopped or self._waiting or self._active):
                    self.last_beat = time.monotonic()
                    self._wakeup.wait(timeout=1.0)
                if self._stopped:
                    return
                self._drop_cancelled()
                self._admit()
            if self._active:
                self._step()
            self.stats.active_requests = len(self._active)  # after finished and cancelled ones left
            metrics.DENOISE_ACTIVE.set(len(self._active), model=self.model_name)
            self.last_beat = time.monotonic()

    def _drop_cancelled(self) -> None:
        for queue in (self._waiting, self._active):
            for ticket in [t for t in queue if t.cancelled]:
                queue.remove(ticket)
                self.stats.cancelled += 1

    def _admit(self) -> None:
        for ticket in self.policy.admit(list(self._waiting), self._active):
            self._waiting.remove(ticket)
            ticket.admitted_at = time.time()
            self._active.append(ticket)
        for ticket in self._waiting:
            ticket.waited_steps += 1
        self._set_waiting()

    def _set_waiting(self) -> None:
        self.stats.waiting_requests = len(self._waiting)
        metrics.DENOISE_WAITING.set(len(self._waiting), model=self.model_name)

    def _step(self) -> None:
        """One batched forward for every active request, each at its own timestep; then resolve."""
        batch = list(self._active)
        started = time.perf_counter()
        self._step_started = time.monotonic()
        try:
            self.denoiser.step([t.job for t in batch])
        except Exception as error:  # a failed step fails its requests with the cause, not the loop
            logger.exception("denoising step failed for %d request(s)", len(batch))
            for ticket in batch:
                self._active.remove(ticket)
                if not ticket.cancelled:
                    ticket.future.set_exception(error)
            return
        finally:
            self._step_started = None
        self._record(batch, time.perf_counter() - started)
        for ticket in batch:
            if ticket.on_step is not None:
                ticket.on_step(*ticket.progress, self.denoiser.take_preview(ticket.job))
            if ticket.job.done:
                self._active.remove(ticket)
                self.stats.finished += 1
                if not ticket.cancelled:  # cancelled during this step: nobody is waiting
                    ticket.future.set_result(self.denoiser.finish(ticket.job))

    def _record(self, batch: list[Ticket], seconds: float) -> None:
        s = self.stats
        s.active_requests = len(batch)
        s.active_rows = sum(t.rows for t in batch)
        s.last_forward_tokens = sum(t.tokens for t in batch)
        s.last_step_s = seconds
        s.steps += 1
        s.rows_stepped += s.active_rows
        s.max_requests_in_a_step = max(s.max_requests_in_a_step, len(batch))
        # step_index was advanced by the step: differing indices = different timesteps in one forward
        if len({t.job.step_index for t in batch}) > 1:
            s.mixed_timestep_steps += 1
        model = self.model_name
        metrics.DENOISE_STEP_SECONDS.observe(seconds, model=model)
        metrics.DENOISE_ROWS.observe(s.active_rows, model=model)
        metrics.DENOISE_TOKENS.observe(s.last_forward_tokens, model=model)
        metrics.DENOISE_STEPS.inc(model=model)
        metrics.record_memory("denoise")
