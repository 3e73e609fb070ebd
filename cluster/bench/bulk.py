"""Bulk job throughput against the online endpoint's saturated throughput, same workload, one run.

    python -m cluster.bench.bulk [--model DIR_OR_HUB_ID] [--rows 128] [--online-rows N] [--report bench-bulk.json]

Workload: 128x128 edits, 8 steps, CFG on (as cluster/bench/load.py). The bulk side is
`python -m cluster.bulk` over a generated manifest, timed by its own summary — once running (from
the engine's first row to its last, as the online figure is timed: server start-up left out) and
over the whole run — and end to end; the online side is 8 concurrent clients against
`python -m serve`. Final line: bulk_vs_online=<bulk running rows/s / online images/s>.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from cluster.bench.common import Job, input_image, run_served, served_app, tiny_at_working_size

SUMMARY = re.compile(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(\d+)\s*$", re.MULTILINE)


def run_bulk(model: str, jobs: list[Job], image: bytes) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "in.png").write_bytes(image)
        first = jobs[0].form()
        table = pa.table({
            "id": [f"row-{job.seed}" for job in jobs],
            "image": ["in.png"] * len(jobs),
            "instruction": [first["prompt"]] * len(jobs),
            "seed": [job.seed for job in jobs],
        })
        pq.write_table(table, root / "manifest.parquet")
        command = [
            sys.executable, "-m", "cluster.bulk", "--manifest", str(root / "manifest.parquet"), "--output", str(root / "out"),
            "--model", model, "--num-inference-steps", first["num_inference_steps"],
            "--negative-prompt", first["negative_prompt"], "--size", first["size"],
        ]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
        wall = time.perf_counter() - started
    match = SUMMARY.findall(done.stdout)
    if done.returncode != 0 or not match:
        raise SystemExit(f"the bulk job failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    ok, error, _, rows_per_s, running_rows_per_s, job_wall, driver_mb = match[-1]
    return {
        "rows": int(ok) + int(error),
        "ok": int(ok),
        "running_rows_per_s": float(running_rows_per_s),  # the job's own: engine's first row to its last
        "rows_per_s": float(rows_per_s),  # the job's own figure: from Ray start to the last result
        "end_to_end_s": round(wall, 2),  # the whole command, interpreter start-up included
        "end_to_end_rows_per_s": round(len(jobs) / wall, 4),
        "job_wall_s": float(job_wall),
        "driver_peak_rss_mb": int(driver_mb),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--rows", type=int, default=128, help="bulk rows")
    parser.add_argument("--online-rows", type=int, default=None, help="online requests (default: --rows); rates compare either way")
    parser.add_argument("--report", type=Path, default=Path("bench-bulk.json"))
    args = parser.parse_args()
    model = args.model or os.environ.get("MODEL") or str(tiny_at_working_size(128))
    image = input_image()
    jobs = [Job(128, 8, seed) for seed in range(args.rows)]

    report = {"model": model, "cpu_count": os.cpu_count(), "bulk": run_bulk(model, jobs, image)}
    with served_app(model) as app:
        run_served(app, image, jobs[:8], 8, 300)  # warm-up
        report["online_c8"] = run_served(app, image, jobs[:args.online_rows or args.rows], 8, 600)
        report["online_c8"].pop("by_job")
    online = report["online_c8"]["images_per_s"]
    report["bulk_vs_online"] = round(report["bulk"]["running_rows_per_s"] / online, 3)
    report["bulk_with_startup_vs_online"] = round(report["bulk"]["rows_per_s"] / online, 3)
    args.report.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"bulk_vs_online={report['bulk_vs_online']}")


if __name__ == "__main__":
    main()
