"""The results dataset at OUT/results/: Parquet part files, each written whole (temp + rename).

Resuming keeps exactly one row per id: `compact` rewrites what earlier runs left as one file of
their `ok` rows (one per id) before the job runs the rest, so retried ids never appear twice.
"""

import uuid
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cluster.bulk.manifest import parameter_columns
from cluster.bulk.outputs import write_atomic
from deployments.parameters import EditParameters, json_types

STAGE_SECONDS = ("encode_s", "denoise_s", "decode_s")
TIMES = ("started_at", "finished_at")


def result_columns(declared: type[EditParameters]) -> list[str]:
    """A results row: what became of the id, and every parameter it was edited with (the family's)."""
    return ["id", "status", "output", "error", "model", "instruction", *parameter_columns(declared), *STAGE_SECONDS, *TIMES]


def results_dir(output: Path) -> Path:
    return output / "results"


def read_results(output: Path) -> pd.DataFrame:
    files = sorted(results_dir(output).glob("*.parquet"))
    if not files:
        return pd.DataFrame(columns=["id", "status"])
    return pd.concat([pq.read_table(f).to_pandas() for f in files], ignore_index=True)


def compact(output: Path) -> set[str]:
    """Keeps one `ok` row per id from earlier runs (in one new file) and returns those ids."""
    old_files = sorted(results_dir(output).glob("*.parquet"))
    if not old_files:
        return set()
    ok = read_results(output)
    ok = ok[ok["status"] == "ok"].drop_duplicates("id")
    if len(ok):
        write_part(output, ok)
    for path in old_files:  # a kill here leaves duplicates of ok rows only; the next compact drops them
        path.unlink()
    return set(ok["id"])


def write_part(output: Path, rows: pd.DataFrame) -> None:
    table = pa.Table.from_pandas(rows.reset_index(drop=True), preserve_index=False)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    write_atomic(output, f"results/part-{uuid.uuid4().hex}.parquet", sink.getvalue().to_pybytes())


def to_result_rows(batch: pd.DataFrame, model: str, declared: type[EditParameters]) -> pd.DataFrame:
    """The pipeline's last frame as result rows: status, output path, error and parameters."""
    ok = batch["error"].isna()
    rows = batch.assign(
        status=ok.map({True: "ok", False: "error"}),
        output=batch["item"].where(ok, None),
        model=model,
    )
    for column in STAGE_SECONDS + TIMES:
        if column not in rows:  # every row of the batch failed before reaching that stage
            rows[column] = None
    for column in TIMES:
        rows[column] = pd.to_datetime(rows[column], unit="s", utc=True)
    for column, field in parameter_columns(declared).items():
        if column not in rows:  # no row of the batch had a value
            rows[column] = None
        if json_types(field) == {"number"}:  # float64 even where a part's values are all whole: one schema
            rows[column] = rows[column].astype("float64")
    return rows[result_columns(declared)]
