"""The results dataset at OUT/results/: Parquet parts that any tool reads as one table
(`pyarrow.dataset.dataset(OUT/results)`, pandas, `ray.data.read_parquet`, other engines).

- One schema for every part, declared once here from the family's request declaration: a column
  never changes type from one part to the next (an all-`ok` part still has a string `error`).
- Parts of bounded count: the driver commits buffered rows as one part once it holds `part_rows`
  rows or its oldest row has waited `part_seconds` (and at the end), so a million rows leave ~100
  parts. A row counts as done once its part is committed; rows edited but not yet committed when a
  job is killed are edited again on resume (same seed, same image, written over the same name).
- Exactly one row per id across resumed runs: `compact` keeps the first `ok` row of each id and drops
  the rest (errors are retried), rewriting only the parts that lose rows, one part at a time; what
  the driver holds is the ids, never every row.
"""

import dataclasses
import functools
import posixpath
import time
import uuid

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset
import pyarrow.parquet as pq

from cluster.bulk.manifest import parameter_columns
from cluster.bulk.storage import Output
from deployments.contracts import EditedImage
from deployments.media import metadata
from deployments.request.binding import json_types
from deployments.request.fields import EditParameters
from deployments.workflows.quality import QualityReport

STAGE_SECONDS = ("encode_s", "denoise_s", "decode_s")
CACHE_FORWARDS = ("cache_computed", "cache_reused", "cache_predicted")  # a step-cached row's model forwards
QUALITY = {  # the quality report's fields (deployments/workflows/quality.py), a column each
    field.name: pa.string() if field.type is str else pa.float64() for field in dataclasses.fields(QualityReport)
}
GUARD = {"guard_verdict": pa.string(), "guard_crossed": pa.string(), "retried_from_seed": pa.int64()}  # cluster/bulk/follow_ups.py
TIMES = ("started_at", "finished_at")
COLUMN_TYPES = {  # a declared field's JSON type -> its results column's Arrow type
    "integer": pa.int64(),
    "number": pa.float64(),
    "string": pa.string(),
    "array": pa.string(),  # as JSON text, as a manifest gives it (e.g. `lora`)
    "object": pa.string(),  # as JSON text (e.g. `cache`)
}
FOLDER = "results"
SUFFIX = ".parquet"


@functools.cache
def result_schema(declared: type[EditParameters]) -> pa.Schema:
    """A results row: what became of the id, every parameter it was edited with (the family's), how
    long each stage took it, the edited image's quality report and its guard's verdict."""
    # provenance: the image's record (JSON); result_cache: with --result-cache, hit (not made again) or miss
    text = ("id", "status", "output", "error", "model", "instruction", "provenance", "result_cache")
    fields = [pa.field(name, pa.string()) for name in text]
    for name, field in parameter_columns(declared).items():
        (json_type,) = json_types(field)  # one JSON type per declared field (null aside)
        fields.append(pa.field(name, COLUMN_TYPES[json_type]))
    fields += [pa.field(name, pa.float64()) for name in STAGE_SECONDS]
    fields += [pa.field(name, pa.int64()) for name in CACHE_FORWARDS]
    fields += [pa.field(name, kind) for name, kind in {**QUALITY, **GUARD}.items()]
    fields += [pa.field(name, pa.timestamp("us", tz="UTC")) for name in TIMES]
    return pa.schema(fields)


def image_columns(edited: EditedImage, relative: str) -> dict:
    """A row's columns of its image, written at OUT/`relative`: where, its quality report, its provenance."""
    return {"output": relative, **(edited.quality or {}), "provenance": metadata.as_text(edited.provenance)}


def to_result_rows(batch: pd.DataFrame, model: str, declared: type[EditParameters]) -> pa.Table:
    """The pipeline's last frame as result rows of the results schema."""
    ok = batch["error"].isna()
    rows = batch.assign(status=np.where(ok, "ok", "error"), model=model)
    if "output" in rows:  # the image of a row its guard failed is written, but is no result
        rows["output"] = rows["output"].where(ok, None)
    schema = result_schema(declared)
    for name in schema.names:
        if name not in rows:  # no row of the batch had a value (e.g. every row failed before that stage)
            rows[name] = None
    for name in TIMES:
        rows[name] = pd.to_datetime(rows[name], unit="s", utc=True).dt.floor("us")  # the schema keeps microseconds
    return pa.Table.from_pandas(rows[schema.names].reset_index(drop=True), schema=schema, preserve_index=False)


def write_part(output: Output, rows: pa.Table, name: str | None = None) -> str:
    """Writes `rows` as a part: a new one, or the part `name` (a file name in OUT/results) replaced."""
    sink = pa.BufferOutputStream()
    pq.write_table(rows, sink)
    return output.write(f"{FOLDER}/{name or f'part-{uuid.uuid4().hex}{SUFFIX}'}", sink.getvalue().to_pybytes())


class ResultsWriter:
    """Buffers result rows and commits them as parts of at least `part_rows` rows, or of whatever
    arrived within `part_seconds`."""

    def __init__(self, output: Output, part_rows: int, part_seconds: float):
        self.output, self.part_rows, self.part_seconds = output, part_rows, part_seconds
        self._buffer: list[pa.Table] = []
        self._buffered = 0
        self._oldest = 0.0  # when the oldest buffered row arrived
        self.parts = 0

    def add(self, rows: pa.Table) -> None:
        if not self._buffer:
            self._oldest = time.monotonic()
        self._buffer.append(rows)
        self._buffered += len(rows)
        if self._buffered >= self.part_rows or time.monotonic() - self._oldest >= self.part_seconds:
            self.flush()

    def flush(self) -> None:
        if self._buffered:
            write_part(self.output, pa.concat_tables(self._buffer))
            self.parts += 1
        self._buffer, self._buffered = [], 0


def read_results(output: Output) -> pa.Table:
    """Every results row (what `pyarrow.dataset.dataset(OUT/results)` reads)."""
    return pyarrow.dataset.dataset(output.files(FOLDER, SUFFIX), filesystem=output.filesystem, format="parquet").to_table()


def compact(output: Output, declared: type[EditParameters]) -> pa.Array:
    """Leaves one `ok` row per id from earlier runs (their first, in part order) and no error rows;
    returns those ids. Parts that lose rows, or were written with another schema, are rewritten. On a
    local disk: the new part first, then the old one deleted (a kill in between leaves only duplicates
    of `ok` rows, which the next compaction drops). On object storage each is replaced in place (one
    object put, atomic), an emptied part included: deleting an object there makes pyarrow write an
    empty folder-marker object for its parent, and OUT holds nothing but images and parts."""
    schema = result_schema(declared)
    parts = output.files(FOLDER, SUFFIX)
    if not parts:
        return pa.array([], pa.string())
    indexes, same_schema = zip(*(_part_index(output, n, path, schema) for n, path in enumerate(parts)))
    index = pa.concat_tables(indexes)
    position = pc.add(pc.multiply(index["part"], 2**32), index["row"])  # orders rows by part, then within it
    index = index.append_column("position", position)
    ok = index.filter(pc.equal(index["status"], "ok"))
    first = ok.group_by("id", use_threads=False).aggregate([("position", "min")])  # the first ok row of each id
    kept = index.filter(pc.is_in(index["position"], value_set=first["position_min"]))
    kept_per_part = np.bincount(kept["part"].to_numpy(), minlength=len(parts))
    rows_per_part = np.bincount(index["part"].to_numpy(), minlength=len(parts))
    for n, path in enumerate(parts):
        if kept_per_part[n] == rows_per_part[n] and same_schema[n]:
            continue  # the common case: an untouched part is never read in full
        rows = kept.filter(pc.equal(kept["part"], n))["row"]
        table = _as_schema(pq.read_table(path, filesystem=output.filesystem).take(rows), schema, path)
        if not output.local:
            write_part(output, table, name=posixpath.basename(path))
            continue
        if len(table):
            write_part(output, table)
        output.delete(path)
    return kept["id"].combine_chunks()


def _part_index(output: Output, n: int, path: str, schema: pa.Schema) -> tuple[pa.Table, bool]:
    """One part's ids and statuses with where each row lies (part n, row), and whether the part has
    the results schema: one open of the file for both."""
    with output.filesystem.open_input_file(path) as file:
        part = pq.ParquetFile(file)
        table = part.read(columns=["id", "status"])
        same_schema = part.schema_arrow.remove_metadata() == schema
    table = table.append_column("part", pa.array(np.full(len(table), n, np.int64)))
    return table.append_column("row", pa.array(np.arange(len(table), dtype=np.int64))), same_schema


def _as_schema(table: pa.Table, schema: pa.Schema, path: str) -> pa.Table:
    """An earlier run's rows in the results schema (e.g. a part whose `error` column was null-typed, or
    one written before a column was added: null there)."""
    if not set(table.column_names) <= set(schema.names):
        raise ValueError(
            f"{path} holds results of another model family or version (columns {table.column_names}); "
            "write this job's results to a new --output"
        )
    for name in schema.names:
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(len(table), schema.field(name).type))
    return table.select(schema.names).cast(schema)
