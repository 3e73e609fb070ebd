"""Continuous (step-level) batching: one engine loop per Denoiser replica, on its own thread.

    step() = admit -> forward -> update -> resolve

Between any two denoising steps, waiting requests join the running batch and finished ones leave at
once, so a short request never waits for a long one to finish all its steps. One step may hold
several latent shapes (one forward each). Each request's result equals denoising it alone.

Failure semantics — a request is never stranded:
- `submit` only enqueues; starting a request (noise, schedule, copies to the device) happens on the
  loop's thread at admission, never on the caller's.
- Every request's result or error is delivered exactly once, by `_retire`; delivering to a request
  its caller already cancelled (client gone, deadline) is a no-op.
- Whatever one request's work raises — starting it, its step cache, its guidance, its scheduler
  update, its step callback, its preview, its final copy — fails that request alone, and does not
  count against the replica's health. A failed forward fails the requests of its latent shape in
  that step.
- A fault of the loop's own code fails every request in the loop at once with a retryable
  EngineStoppedError (503), and the loop goes on. `close()` (or the thread ending for any reason)
  fails every waiting and running request the same way, and later submits are refused with it.
- `health()` reports the loop stopped, a step wedged, or `unhealthy_after_failed_steps` steps in a
  row in which nothing succeeded (e.g. a poisoned CUDA context), so the replica gets replaced.
"""

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field

from deployments import metrics
from deployments.batching.admission import AdmissionPolicy
from deployments.contracts import Conditioning, Latents
from deployments.errors import EngineStoppedError, OverloadedError, failed_alone
from deployments.families.base import DenoiseJob, Footprint
from deployments.stages.denoiser import Denoiser, StepFailures

logger = logging.getLogger(__name__)

OnStep = Callable[[int, int, Latents | None], None]  # (steps done, total, preview or None), on the loop's thread


@dataclass(eq=False)
class Ticket:
    """One request in the loop: what it asked for, its job once admitted, its result."""

    conditioning: Conditioning
    footprint: Footprint  # what admission decides with, before the request is started
    on_step: OnStep | None = None
    previews: int = 0  # previews `on_step` gets, spread over the steps the request runs
    future: Future = field(default_factory=Future)
    submitted_at: float = field(default_factory=time.time)
    admitted_at: float | None = None
    waited_steps: int = 0
    ready: bool = False  # its adapters are loaded: set before each admission
    solo: bool = False  # shares no forward with other requests
    job: DenoiseJob | None = None  # started at admission, on the loop's thread

    @property
    def bucket(self):
        return self.footprint.bucket

    @property
    def rows(self) -> int:
        return self.footprint.rows

    @property
    def tokens(self) -> int:
        return self.footprint.tokens

    @property
    def progress(self) -> tuple[int, int]:
        total = self.conditioning.num_inference_steps
        return (0, total) if self.job is None else (self.job.step_index, len(self.job.timesteps))

    def cancel(self) -> None:
        """Leave the loop at the next step boundary (safe from any thread; also what cancelling an
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
    steps: int = 0  # engine steps run
    rows_stepped: int = 0  # sum of rows over all steps: rows_stepped / steps = mean rows per step
    buckets_stepped: int = 0  # sum of latent shapes (forwards) over all steps
    max_requests_in_a_step: int = 0
    max_buckets_in_a_step: int = 0
    mixed_timestep_steps: int = 0  # steps whose batch held requests at different timesteps
    finished: int = 0  # requests that ran all their steps
    cancelled: int = 0  # requests whose caller went away
    failed: int = 0  # requests that ended with an error
    failed_steps: int = 0  # steps in which nothing succeeded
    consecutive_failed_steps: int = 0


class DenoiseLoop:
    def __init__(
        self,
        denoiser: Denoiser,
        policy: AdmissionPolicy,
        max_waiting: int,
        model_name: str = "",
        unhealthy_after_failed_steps: int = 3,
    ):
        self.denoiser = denoiser
        self.policy = policy
        self.max_waiting = max_waiting
        self.model_name = model_name  # the metrics' `model` label
        self.unhealthy_after_failed_steps = unhealthy_after_failed_steps
        self.stats = LoopStats()
        self._step_started: float | None = None  # monotonic start of the step running now
        self._waiting: collections.deque[Ticket] = collections.deque()
        self._active: list[Ticket] = []  # only the loop's thread touches it
        self._wakeup = threading.Condition()
        self._stopped = False
        self._nudged = False  # set when a waiting request may have become able to start
        self._thread = threading.Thread(target=self._run, name="denoise-loop", daemon=True)
        self._thread.start()

    # ---- the caller's side (any thread) -----------------------------------------------------------

    def submit(
        self, conditioning: Conditioning, on_step: OnStep | None = None, previews: int = 0, solo: bool = False,
    ) -> Ticket:
        """Queues a request; its ticket's future resolves to its Latents or its error. `on_step` hears
        of each step, with a preview (the predicted clean latents) after `previews` of the steps the
        request runs, spread over them (preview_steps); a `solo` request runs in steps of its own. Raises
        OverloadedError when `max_waiting` requests are already waiting, and EngineStoppedError once the
        loop has stopped."""
        ticket = Ticket(conditioning, self.denoiser.footprint(conditioning), on_step, previews, solo=solo)
        for name in [name for name, _ in conditioning.adapters] or ["none"]:
            metrics.ADAPTER_REQUESTS.inc(model=self.model_name, adapter=name)
        with self._wakeup:
            if self._stopped:
                raise EngineStoppedError("this denoiser replica is shutting down; retry")
            if len(self._waiting) >= self.max_waiting:
                raise OverloadedError(f"the denoiser already has {self.max_waiting} requests waiting")
            self._waiting.append(ticket)
            self._count_waiting()
            self._nudged = True
            self._wakeup.notify()
        return ticket

    def close(self) -> None:
        """Stops the loop; every request still in it fails with a retryable EngineStoppedError."""
        with self._wakeup:
            self._stopped = True
            self._wakeup.notify()
        self._thread.join(timeout=60)
        self._fail_everyone(EngineStoppedError("this denoiser replica is shutting down; retry"))  # also if a step hangs

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def step_running_for(self) -> float:
        """Seconds the current step has been running (0 between steps)."""
        started = self._step_started
        return 0.0 if started is None else time.monotonic() - started

    def health(self, wedged_after_s: float) -> str | None:
        """What makes this loop unfit to serve, or None: a health check's verdict."""
        if not self.alive:
            return "the denoising engine loop has stopped"
        if self.step_running_for() > wedged_after_s:
            return f"a denoising step has been running for over {wedged_after_s:.0f}s"
        failed = self.stats.consecutive_failed_steps
        if failed >= self.unhealthy_after_failed_steps:
            return f"the last {failed} denoising steps all failed"
        return None

    # ---- the loop's thread --------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while self._wait_for_work():
                try:
                    self.step()
                except Exception:  # the loop's own fault, not one request's: nothing in it can be trusted
                    logger.exception("denoising engine step failed; failing every request in the loop")
                    self._fail_everyone(EngineStoppedError("the denoising engine failed; retry"))
                    self._count_step(succeeded=False)
        finally:
            with self._wakeup:
                self._stopped = True
            self._fail_everyone(EngineStoppedError("this denoiser replica is shutting down; retry"))

    def _wait_for_work(self) -> bool:
        """Blocks until there is a request to work on (True) or the loop is stopped (False)."""
        with self._wakeup:
            while not (self._stopped or self._waiting or self._active):
                self._wakeup.wait()
            return not self._stopped

    def step(self) -> None:
        """One engine step for every admitted request, each at its own timestep."""
        start_failures = self._admit()
        if self._active:
            failed = self._forward()
            self._update(failed)
            self._resolve()
        elif start_failures:  # nothing could even start: as telling as a failed forward
            self._count_step(succeeded=False)
        else:
            self._idle()
        self.stats.active_requests = len(self._active)
        metrics.DENOISE_ACTIVE.set(len(self._active), model=self.model_name)

    def _admit(self) -> int:
        """Drops cancelled requests, loads waiting ones' adapters, lets the policy pick waiting ones, and
        starts them; returns how many failed to start."""
        for ticket in [t for t in self._active if t.cancelled]:
            self._retire(ticket)
        with self._wakeup:
            for ticket in [t for t in self._waiting if t.cancelled]:
                self._waiting.remove(ticket)
                self.stats.cancelled += 1
            waiting = list(self._waiting)
        self._load_adapters(waiting)
        with self._wakeup:
            chosen = self.policy.admit(list(self._waiting), self._active)
            for ticket in chosen:
                self._waiting.remove(ticket)
            for ticket in self._waiting:
                ticket.waited_steps += 1
            self._count_waiting()
        start_failures = 0
        for ticket in chosen:
            ticket.admitted_at = time.time()
            self._active.append(ticket)
            try:
                ticket.job = self.denoiser.start(ticket.conditioning)
                # the steps it really runs (a masked edit's strength may skip the schedule's first ones)
                ticket.job.preview_after = preview_steps(len(ticket.job.timesteps), ticket.previews)
            except Exception as error:
                self._retire(ticket, error=error)
                start_failures += 1
        return start_failures

    def _load_adapters(self, waiting: list[Ticket]) -> None:
        """Marks which waiting requests are ready to start, loading their adapters (oldest first) without
        unloading any that a running request, or an older ready one, uses, and fails those whose adapters
        can't be loaded — their failure, not the engine's: it doesn't count against the replica's health.
        Outside the lock: loading must not hold up `submit`."""
        keep = {name for t in self._active for name, _ in t.conditioning.adapters}
        for ticket in waiting:
            try:
                ticket.ready = self.denoiser.adapters_ready(ticket.conditioning, keep)
            except Exception as error:
                with self._wakeup:
                    with contextlib.suppress(ValueError):
                        self._waiting.remove(ticket)
                    self._count_waiting()
                self._retire(ticket, error=error)
                continue
            if ticket.ready:
                keep |= {name for name, _ in ticket.conditioning.adapters}
            else:  # wake the loop when its files have been read, in case nothing else is running
                self.denoiser.adapters.prefetch([name for name, _ in ticket.conditioning.adapters]).add_done_callback(self._nudge)
        self.denoiser.adapters.forget_failures()
        # what requests that left (cancelled, timed out) had read is freed, beyond a few
        self.denoiser.adapters.trim(keep | {name for t in waiting for name, _ in t.conditioning.adapters})

    def _nudge(self, _=None) -> None:
        """Something may now be able to start: a request came in, or an adapter's file was read."""
        with self._wakeup:
            self._nudged = True
            self._wakeup.notify()

    def _idle(self) -> None:
        """Nothing could run this step (waiting requests all wait for adapters): sleep until nudged."""
        with self._wakeup:
            if not self._nudged and not self._stopped:
                self._wakeup.wait(timeout=1.0)
            self._nudged = False

    def _forward(self) -> StepFailures:
        """One forward per latent shape; the jobs that failed, with their errors. Requests failing on their
        own (their settings, their scheduler) say nothing of the replica: only a step whose forwards
        failed and in which nothing succeeded counts against its health."""
        jobs = [ticket.job for ticket in self._active]
        started = time.perf_counter()
        self._step_started = time.monotonic()
        try:
            failed = self.denoiser.step(jobs)
        finally:
            self._step_started = None
        self._count_step(succeeded=not failed.forward_failed or len(failed) < len(jobs))
        self._record(time.perf_counter() - started)
        return failed

    def _update(self, failed: dict[DenoiseJob, Exception]) -> None:
        """Fails the requests whose forward or update failed; tells the others' callers of the step."""
        for ticket in list(self._active):
            if ticket.job in failed:
                self._retire(ticket, error=failed[ticket.job])
                continue
            try:
                preview = self.denoiser.take_preview(ticket.job)
                if ticket.on_step is not None:
                    ticket.on_step(*ticket.progress, preview)
            except Exception as error:
                self._retire(ticket, error=error)

    def _resolve(self) -> None:
        """Hands finished requests their Latents."""
        for ticket in [t for t in self._active if t.job.done]:
            try:
                result = self.denoiser.finish(ticket.job)
            except Exception as error:
                self._retire(ticket, error=error)
            else:
                self._retire(ticket, result)

    def _retire(self, ticket: Ticket, result: Latents | None = None, error: Exception | None = None) -> None:
        """Takes `ticket` out of the running batch and delivers its outcome — once: a no-op for a ticket
        its caller cancelled or that was already resolved."""
        with contextlib.suppress(ValueError):  # not admitted yet, or already taken out
            self._active.remove(ticket)
        try:
            if error is not None:
                ticket.future.set_exception(failed_alone(error, "denoising", ticket.conditioning.request_id))
                self.stats.failed += 1
            else:
                ticket.future.set_result(result)
                self.stats.finished += 1
        except InvalidStateError:  # its caller cancelled it, at any moment until now: nobody is waiting
            self.stats.cancelled += 1

    def _fail_everyone(self, error: Exception) -> None:
        """Every waiting and running request fails with `error` (idempotent, any thread)."""
        with self._wakeup:
            tickets = [*self._waiting, *self._active]
            self._waiting.clear()
            self._count_waiting()
        for ticket in tickets:
            self._retire(ticket, error=error)

    def _count_waiting(self) -> None:  # under self._wakeup
        self.stats.waiting_requests = len(self._waiting)
        metrics.DENOISE_WAITING.set(len(self._waiting), model=self.model_name)

    def _count_step(self, succeeded: bool) -> None:
        s = self.stats
        s.consecutive_failed_steps = 0 if succeeded else s.consecutive_failed_steps + 1
        s.failed_steps += not succeeded

    def _record(self, seconds: float) -> None:
        """The step's counters and metrics."""
        batch = self._active
        s = self.stats
        s.active_rows = sum(t.rows for t in batch)
        s.last_forward_tokens = sum(t.tokens for t in batch)
        s.last_step_s = seconds
        s.steps += 1
        s.rows_stepped += s.active_rows
        buckets = len({t.bucket for t in batch})
        s.buckets_stepped += buckets
        s.max_buckets_in_a_step = max(s.max_buckets_in_a_step, buckets)
        s.max_requests_in_a_step = max(s.max_requests_in_a_step, len(batch))
        if len({t.job.step_index for t in batch}) > 1:  # advanced by the step: different timesteps in one step
            s.mixed_timestep_steps += 1
        model = self.model_name
        metrics.DENOISE_STEP_SECONDS.observe(seconds, model=model)
        metrics.DENOISE_ROWS.observe(s.active_rows, model=model)
        metrics.DENOISE_TOKENS.observe(s.last_forward_tokens, model=model)
        metrics.DENOISE_STEPS.inc(model=model)
        metrics.record_memory("denoise")


def preview_steps(total: int, previews: int) -> frozenset[int]:
    """`previews` step counts spread evenly over `total` steps, before the last (e.g. 8, 2 -> {3, 5})."""
    return frozenset(round(total * (i + 1) / (previews + 1)) for i in range(previews)) - {0, total}
