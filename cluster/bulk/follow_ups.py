"""What a bulk row still needs after a pass of the pipeline, judged in the driver as results arrive:
nothing (it is a result), its chain's next link, or its guard's retry (deployments/workflows/chains.py,
deployments/workflows/guards.py).

The job runs the manifest once, then again over just the rows that still need an edit, each with
its own next edit (`Pending`), until none does: a row's chain of k links takes k passes, a guard's
retry one more. A later link edits the previous link's image (written to OUT/images/ as a PNG named
after the row's id and the link); the last link's image is the row's result. A row is a result
only once it is done, so a kill between passes leaves it without one and the next run edits it
from the start: exactly once still holds.

A pass's rows carry their next edit as columns (`as_table`, joined onto the manifest's rows in the
pipeline), never in a closure pickled into every read task; the previous link's provenance record
is read back from its image, which carries it.

Guards: each link's image is judged from its quality report and its guard (as used). `retry` makes
that link again with the next seed (its seed + 1: a row makes one image); `fail` makes the row an
error naming the limits crossed; the result row has its last link's verdict. A failure in a later
link names the link.
"""

import json
from dataclasses import dataclass, replace

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from cluster.bulk.manifest import PASS_COLUMNS
from cluster.bulk.results import GUARD, QUALITY
from deployments import metrics
from deployments.settings.guard import Guard
from deployments.workflows.chains import link_name
from deployments.workflows.guards import GuardFailedError, judge


@dataclass(frozen=True)
class Pending:
    """A row's next edit: its `link` (0: the row's own instruction), the previous link's image (an
    OUT-relative path, carrying its provenance record), and when it retries a guard, the seed that failed."""

    link: int = 0
    image: str | None = None
    retry_of_seed: int | None = None

    @classmethod
    def of_row(cls, row: dict) -> "Pending":
        """The next edit a row of a later pass carries in its COLUMNS (none: the first pass)."""
        if "pending_link" not in row:
            return cls()
        image, seed = row["pending_image"], row["pending_retry_of_seed"]
        return cls(int(row["pending_link"]), None if pd.isna(image) else image, None if pd.isna(seed) else int(seed))


COLUMNS = pa.schema([("id", pa.string()), *zip(PASS_COLUMNS, (pa.int64(), pa.string(), pa.int64()))])


def as_table(pending: dict[str, Pending]) -> pa.Table:
    """A pass's rows and their next edits as columns (COLUMNS) to join onto the manifest's rows."""
    edits = pending.values()
    return pa.table([list(pending), [p.link for p in edits], [p.image for p in edits], [p.retry_of_seed for p in edits]], schema=COLUMNS)


def with_pending(rows: pa.Table, pending: pa.Table) -> pa.Table:
    """The manifest's `rows` of a later pass (those in `pending`), each with its next edit's columns.
    (Not Table.join: Arrow's joins can't carry list columns, such as a row's several images.)"""
    index = pc.index_in(rows["id"], value_set=pending["id"])  # each row's place in `pending`, or null
    kept = pc.is_valid(index)
    rows, index = rows.filter(kept), index.filter(kept)
    for name in COLUMNS.names[1:]:
        rows = rows.append_column(name, pending[name].take(index))
    return rows


class FollowUps:
    def __init__(self, model: str):
        self.model = model  # the metrics' `model` label
        self.current: dict[str, Pending] = {}  # the rows of the pass running now (none: the first pass)
        self.next: dict[str, Pending] = {}

    def next_pass(self) -> dict[str, Pending] | None:
        """The rows of the next pass and their edits, or None when no row needs one."""
        self.current, self.next = self.next, {}
        return self.current or None

    def judged(self, batch: pd.DataFrame) -> pd.DataFrame:
        """`batch` (the pipeline's last frame) as results: its rows that are done, each guarded one with
        its verdict; the others wait for the next pass."""
        columns = {name: [None] * len(batch) for name in GUARD}
        errors, done = batch["error"].tolist(), []
        for i, row in enumerate(batch.to_dict("records")):
            pending = self.current.get(row["id"], Pending())
            if not pd.isna(row["error"]):
                if pending.link:
                    errors[i] = f"{link_name(pending.link, row['links'])}: {row['error']}"
                done.append(i)
                continue
            try:
                verdict = self._verdict(row, pending)
            except GuardFailedError as failed:
                errors[i] = failed.message if not pending.link else f"{link_name(pending.link, row['links'])}: {failed.message}"
                columns["guard_verdict"][i] = "failed"
                done.append(i)
                continue
            if verdict is False:  # retry with the next seed
                self.next[row["id"]] = replace(pending, retry_of_seed=int(row["seed"]))
            elif pending.link + 1 < row["links"]:  # the chain's next link edits this image
                self.next[row["id"]] = Pending(pending.link + 1, row["output"])
            else:
                if verdict is not None:
                    columns["guard_verdict"][i], columns["guard_crossed"][i] = verdict.verdict, "; ".join(verdict.crossed) or None
                    columns["retried_from_seed"][i] = verdict.retried_from_seed
                done.append(i)
        # `item` (the last stage's contract) is no result column, and pandas can't select rows of it
        return batch.drop(columns="item").assign(error=errors, **columns).iloc[done]

    def _verdict(self, row: dict, pending: Pending):
        """The row's guard's verdict on this link's image: None without a guard, False to make it again."""
        if not isinstance(row.get("guard"), str):
            return None
        quality = {name: None if pd.isna(row.get(name)) else row[name] for name in QUALITY}
        try:
            verdict = judge(Guard.model_validate(json.loads(row["guard"])), quality, pending.retry_of_seed)
        except GuardFailedError:
            self._count("failed")
            raise
        if verdict is None:
            return False
        self._count(verdict.verdict)
        return verdict

    def _count(self, verdict: str) -> None:
        metrics.GUARD_VERDICTS.inc(model=self.model, verdict=verdict)
