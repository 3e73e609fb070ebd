"""The bulk job's guards (deployments/guards.py): each edited row's verdict from its quality columns
and its `guard` (as used), in the driver, as results arrive.

A row whose guard says `retry` is not a result yet: the job makes it again after the main pass, in a
second pass over just those rows with the next seed (seed + 1: a row makes one image), and that
image is the row's result, its verdict `retried` or `flagged`. A kill before the second pass
commits leaves those rows without a result, so the next run edits them from the start; exactly once
still holds. `fail` makes the row an error naming the limits crossed.
"""

import json

import pandas as pd

from cluster.bulk.results import GUARD, QUALITY
from deployments import metrics
from deployments.guards import Guard, GuardFailedError, judge, retry_seed


class Guarding:
    """Judges rows as they arrive; `retries` collects the rows to make again (id -> seed of the first image)."""

    def __init__(self, model: str):
        self.model = model  # the metrics' `model` label
        self.retries: dict[str, int] = {}
        self.first_seeds: dict[str, int] = {}  # in the second pass: the rows being made again

    def second_pass(self) -> dict[str, int]:
        """Starts the second pass: the retried rows' ids -> the seed each is made with now."""
        self.first_seeds, self.retries = self.retries, {}
        return {id_: retry_seed(seed, 1) for id_, seed in self.first_seeds.items()}

    def judged(self, batch: pd.DataFrame) -> pd.DataFrame:
        """`batch` (the pipeline's last frame) with its guarded rows' verdicts, without the rows to make again."""
        columns = {name: [None] * len(batch) for name in GUARD}
        errors, kept = batch["error"].tolist(), []
        for i, row in enumerate(batch.to_dict("records")):
            guarded = isinstance(row.get("guard"), str) and pd.isna(row["error"])
            if not guarded:
                kept.append(i)
                continue
            first_seed = self.first_seeds.get(row["id"])
            quality = {name: None if pd.isna(row.get(name)) else row[name] for name in QUALITY}
            try:
                verdict = judge(Guard.model_validate(json.loads(row["guard"])), quality, first_seed)
            except GuardFailedError as failed:
                errors[i], columns["guard_verdict"][i] = failed.message, "failed"
                kept.append(i)
                self._count("failed")
                continue
            if verdict is None:
                self.retries[row["id"]] = int(row["seed"])
                continue
            columns["guard_verdict"][i], columns["guard_crossed"][i] = verdict.verdict, "; ".join(verdict.crossed) or None
            columns["retried_from_seed"][i] = verdict.retried_from_seed
            kept.append(i)
            self._count(verdict.verdict)
        # `item` (the last stage's contract) is no result column, and pandas can't select rows of it
        return batch.drop(columns="item").assign(error=errors, **columns).iloc[kept]

    def _count(self, verdict: str) -> None:
        metrics.GUARD_VERDICTS.inc(model=self.model, verdict=verdict)
