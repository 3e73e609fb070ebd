"""The bulk results dataset (cluster/bulk/results.py): one schema any tool reads, parts of bounded
count, compaction to one row per id across resumed runs, and its cost at a million rows (no model)."""

import subprocess
import sys
import time
import uuid

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset
import pyarrow.parquet as pq
import pytest

from cluster.bulk.results import ResultsWriter, compact, read_results, result_schema, to_result_rows
from cluster.bulk.storage import Output
from deployments.request.registry import DECLARATIONS

QWEN = DECLARATIONS["QwenImageEditPlusPipeline"]
MILLION = 1_000_000


def frame(ids, errors=None) -> pd.DataFrame:
    """The pipeline's last frame for `ids`: decoded rows, or rows that failed (`errors`, by id)."""
    errors = errors or {}
    return pd.DataFrame({
        "id": ids,
        "item": [None if i in errors else f"images/{i}.png" for i in ids],
        "error": [errors.get(i) for i in ids],
        "instruction": ["make it blue"] * len(ids),
        "seed": range(len(ids)),
        "encode_s": 0.5, "started_at": time.time(), "finished_at": time.time(),
    })


def rows(ids, errors=None) -> pa.Table:
    return to_result_rows(frame(ids, errors), "tiny", QWEN)


@pytest.fixture
def output(tmp_path) -> Output:
    output = Output.at(str(tmp_path / "out"))
    output.prepare()
    return output


def test_parts_with_and_without_errors_read_as_one_table_by_any_tool(output):
    writer = ResultsWriter(output, part_rows=2, part_seconds=60)
    writer.add(rows(["a", "b"]))  # all ok: `error` is still a string column
    writer.add(rows(["c", "d"], {"d": "prompt: must be a non-empty instruction"}))
    writer.flush()
    assert writer.parts == 2
    folder = f"{output.root}/results"
    table = pyarrow.dataset.dataset(folder, format="parquet").to_table()
    assert table.schema == result_schema(QWEN) and sorted(table["id"].to_pylist()) == ["a", "b", "c", "d"]
    assert pd.read_parquet(folder).set_index("id").loc["d", "status"] == "error"
    assert read_results(output).num_rows == 4

    import ray  # a reader that unifies schemas across files, as other engines do

    ray.init(num_cpus=1, include_dashboard=False)
    try:
        assert sorted(ray.data.read_parquet(folder).to_pandas()["id"]) == ["a", "b", "c", "d"]
    finally:
        ray.shutdown()


def test_parts_are_committed_by_row_count_and_by_age(output, monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    writer = ResultsWriter(output, part_rows=5, part_seconds=60)
    for i in range(4):
        writer.add(rows([f"r{i}"]))
    assert writer.parts == 0  # 4 rows, none older than a minute
    writer.add(rows(["r4", "r5"]))
    assert writer.parts == 1  # 6 >= 5 rows
    writer.add(rows(["late"]))
    clock[0] = 61.0
    writer.add(rows(["later"]))
    assert writer.parts == 2  # its first row waited a minute
    writer.flush()
    writer.flush()  # nothing buffered: no empty part
    assert writer.parts == 2 and read_results(output).num_rows == 8


def test_compaction_keeps_one_ok_row_per_id_and_rewrites_only_parts_that_lose_rows(output):
    writer = ResultsWriter(output, part_rows=3, part_seconds=60)
    writer.add(rows(["a", "b", "c"]))  # untouched by compaction
    writer.add(rows(["d", "e", "f"], {"e": "image: could not be read", "f": "internal error"}))
    writer.flush()
    with_errors, untouched = sorted(output.files("results", ".parquet"), key=lambda part: "a" in pq.read_table(part)["id"].to_pylist())
    # A kill between writing a compacted part and deleting the old one leaves duplicate ok rows.
    duplicate = output.write(f"results/part-{uuid.uuid4().hex}.parquet", _parquet(pq.read_table(untouched).slice(0, 2)))

    done = compact(output, QWEN)
    assert sorted(done.to_pylist()) == ["a", "b", "c", "d"]
    table = read_results(output)
    assert sorted(table["id"].to_pylist()) == ["a", "b", "c", "d"] and set(table["status"].to_pylist()) == {"ok"}
    parts = output.files("results", ".parquet")
    assert with_errors not in parts and len({untouched, duplicate} & set(parts)) == 1  # the first of the two stays as it was
    assert sorted(compact(output, QWEN).to_pylist()) == sorted(done.to_pylist())
    assert output.files("results", ".parquet") == parts  # nothing left to rewrite


def test_an_earlier_version_s_part_is_rewritten_to_the_schema(output):
    """Before the schema was declared, an all-ok part stored `error` as a null column: such parts make
    the dataset unreadable until compaction casts them."""
    old = rows(["a", "b"]).drop_columns(["error"]).append_column("error", pa.nulls(2, pa.null()))
    output.write(f"results/part-{uuid.uuid4().hex}.parquet", _parquet(old))
    output.write(f"results/part-{uuid.uuid4().hex}.parquet", _parquet(rows(["c"], {"c": "bad"})))
    assert sorted(compact(output, QWEN).to_pylist()) == ["a", "b"]
    assert pyarrow.dataset.dataset(f"{output.root}/results", format="parquet").to_table().schema == result_schema(QWEN)


def test_a_part_written_before_columns_were_added_resumes_with_them_null(output):
    old = rows(["a", "b"]).drop_columns(["cache", "cache_computed", "strength", "placement"])  # an earlier version
    output.write(f"results/part-{uuid.uuid4().hex}.parquet", _parquet(old))
    assert sorted(compact(output, QWEN).to_pylist()) == ["a", "b"]
    table = pyarrow.dataset.dataset(f"{output.root}/results", format="parquet").to_table()
    assert table.schema == result_schema(QWEN) and table.column("cache_computed").null_count == 2


def test_results_of_another_family_are_refused_with_a_clear_message(output):
    ip2p = to_result_rows(frame(["a"]), "tiny", DECLARATIONS["StableDiffusionInstructPix2PixPipeline"])
    output.write(f"results/part-{uuid.uuid4().hex}.parquet", _parquet(ip2p))
    with pytest.raises(ValueError, match="another model family .* new --output"):
        compact(output, QWEN)


RESUME = """
import resource, sys, time
import pyarrow as pa
import pyarrow.parquet as pq
from cluster.bulk.__main__ import drop_done
from cluster.bulk.results import compact
from cluster.bulk.storage import Output
from deployments.request.registry import DECLARATIONS

output, manifest = Output.at(sys.argv[1]), sys.argv[2]
started = time.perf_counter()
done = compact(output, DECLARATIONS["QwenImageEditPlusPipeline"])
compact_s = time.perf_counter() - started
ids = pq.read_table(manifest, columns=["id"])
started = time.perf_counter()
remaining = drop_done(ids, done)
filter_s = time.perf_counter() - started
arrow_mb = pa.default_memory_pool().max_memory() // 2**20  # the peak of what the ids and parts took
print(len(done), remaining.num_rows, round(compact_s, 2), round(filter_s, 2), arrow_mb, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def test_a_million_rows_resume_within_bounded_time_parts_and_memory(output, tmp_path, capsys):
    """1M result rows (every 100th an error, so every part holds errors: compaction's worst case)
    written in 10k-row parts, then a resume in a fresh process, as the job's driver does it:
    compaction and the done-id filter over a 1M-row manifest. Figures go to the README."""
    ids = pa.array([f"catalog/item-{i}" for i in range(MILLION)], pa.string())
    pq.write_table(pa.table({"id": ids}), tmp_path / "manifest.parquet")
    base = rows(["x"]).take(np.zeros(10_000, dtype=int))
    status = pa.array(np.where(np.arange(10_000) % 100 == 0, "error", "ok"))
    started = time.perf_counter()
    writer = ResultsWriter(output, part_rows=10_000, part_seconds=3600)
    for start in range(0, MILLION, 10_000):
        writer.add(base.set_column(0, "id", ids.slice(start, 10_000)).set_column(1, "status", status))
    writer.flush()
    write_s = time.perf_counter() - started
    assert writer.parts == 100 and len(output.files("results", ".parquet")) == 100

    resume = subprocess.run([sys.executable, "-c", RESUME, output.root, str(tmp_path / "manifest.parquet")],
                            capture_output=True, text=True, timeout=600)
    assert resume.returncode == 0, resume.stderr[-3000:]
    done, remaining, compact_s, filter_s, arrow_mb, peak_mb = resume.stdout.split()
    assert (int(done), int(remaining)) == (MILLION - MILLION // 100, MILLION // 100)
    assert float(compact_s) < 60 and float(filter_s) < 10 and int(arrow_mb) < 1000, resume.stdout
    errors = pc.equal(read_results(output)["status"], "error")
    assert not pc.any(errors).as_py()
    with capsys.disabled():
        print(f"\n1M result rows: written in {write_s:.1f}s as {writer.parts} parts; resume in a fresh process: "
              f"compact {compact_s}s, done-id filter {filter_s}s, Arrow memory peak {arrow_mb} MB, process peak RSS {peak_mb} MB (imports of torch and Ray included)")


def _parquet(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()
