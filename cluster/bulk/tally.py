"""Counts the bulk job's results as they arrive (also as metrics) and prints the summary table at the end."""

import resource
import time
from dataclasses import dataclass, field
from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc

from deployments import metrics


@dataclass
class Tally:
    model: str  # the metrics' `model` label
    skipped: int = 0  # ids already `ok` from an earlier run
    ok: int = 0
    error: int = 0
    flagged: int = 0  # `ok` rows whose guard flagged them (cluster/bulk/follow_ups.py)
    retried: int = 0  # `ok` rows made again with their next seed, whose retry passed the guard
    started: float = field(default_factory=time.perf_counter)
    first_started_at: datetime | None = None  # when the engine took its first row
    last_finished_at: datetime | None = None  # when it was done with its last

    def __post_init__(self):
        metrics.BULK_ROWS.inc(self.skipped, model=self.model, status="skipped")

    def add(self, rows: pa.Table) -> None:
        ok = pc.sum(pc.equal(rows["status"], "ok")).as_py() or 0
        error = len(rows) - ok
        self.ok, self.error = self.ok + ok, self.error + error
        for status, count in (("ok", ok), ("error", error)):
            metrics.BULK_ROWS.inc(count, model=self.model, status=status)
        self.flagged += pc.sum(pc.equal(rows["guard_verdict"], "flagged")).as_py() or 0
        self.retried += pc.sum(pc.equal(rows["guard_verdict"], "retried")).as_py() or 0
        first, last = pc.min(rows["started_at"]).as_py(), pc.max(rows["finished_at"]).as_py()
        if first is not None:
            self.first_started_at = first if self.first_started_at is None else min(first, self.first_started_at)
        if last is not None:
            self.last_finished_at = last if self.last_finished_at is None else max(last, self.last_finished_at)
        metrics.BULK_ROWS_PER_SECOND.set(self.running_rows_per_s(), model=self.model)

    def rows_per_s(self) -> float:
        """Over the whole run, start-up (Ray, workers, model loads) included."""
        return (self.ok + self.error) / max(time.perf_counter() - self.started, 1e-9)

    def running_rows_per_s(self) -> float:
        """From the engine's first row to its last: start-up left out, the figure a catalog of
        millions of rows sees (and what the online endpoint's saturated throughput measures)."""
        if self.first_started_at is None or self.last_finished_at is None:
            return self.rows_per_s()
        span = (self.last_finished_at - self.first_started_at).total_seconds()
        return (self.ok + self.error) / max(span, 1e-9)

    def summary(self) -> str:
        wall = time.perf_counter() - self.started
        driver_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        return (
            f"{'ok':>8} {'error':>8} {'skipped':>8} {'flagged':>8} {'retried':>8} {'rows/s':>8} {'running':>8} {'wall s':>8} "
            f"{'driver MB':>10}\n"
            f"{self.ok:>8} {self.error:>8} {self.skipped:>8} {self.flagged:>8} {self.retried:>8} {self.rows_per_s():>8.2f} "
            f"{self.running_rows_per_s():>8.2f} {wall:>8.1f} {driver_mb:>10}\n"
            "flagged, retried: ok rows their guard flagged, or made again with the next seed and then passed; "
            "rows/s: over the whole run, start-up included; running: from the engine's first row to its last; "
            "driver MB: the driver's peak resident memory"
        )
