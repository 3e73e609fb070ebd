"""Load benchmark of the online app against the in-process staged engine, side by side in one run.

    python -m cluster.bench.load [--model DIR_OR_HUB_ID] [--report bench.json] [--quick]

1. Throughput: 128x128 edits, 8 steps, CFG on, 8 concurrent clients, 64 requests, against the same
   requests run one at a time in this process through Encoder -> Denoiser -> Decoder (the baseline).
   Also 1 client (serving overhead) and 256x256. Final line: throughput_ratio=<served/baseline>.
2. Head-of-line blocking: half 4-step, half 24-step requests, 8 clients, with the Denoiser's
   continuous (step-level) admission on and off. Final line: short_p50_ratio=<on/off> of the 4-step
   requests' median latency.
3. Mixed aspect ratios: inputs of 4 aspect ratios at size auto (4 latent shapes), 8 clients, with
   several shapes per engine step (the default, `max_buckets_per_step: 4`) and with one shape at a
   time (`max_buckets_per_step: 1`). Final line: mixed_shapes_p95_ratio=<several/one>.

Each served run starts the app with `python -m serve` on a free loopback port (serve/config.yaml
with the denoiser's settings switched as needed) and stops it afterwards. Requests and time are
bounded. The JSON report holds throughput (images/s), p50/p95/p99 latency, and mean rows and latent
shapes (forwards) per engine step.
"""

import argparse
import json
import os
from pathlib import Path

import numpy as np

from cluster.bench.common import Job, input_image, run_served, served_app, time_in_process, tiny_at_working_size
from deployments.stages.in_process import InProcessStages

# Inputs of four aspect ratios (1:1, 5:3, 3:5, 16:9 roughly): at size auto, four latent shapes.
MIXED_INPUTS = ((128, 128), (160, 96), (96, 160), (176, 96))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", default=None,
        help="checkpoint directory or hub id (default: $MODEL, else the tiny model at a 128x128 working area)",
    )
    parser.add_argument("--report", type=Path, default=Path("bench-report.json"))
    parser.add_argument("--quick", action="store_true", help="a quarter of the requests (a smoke run)")
    parser.add_argument("--max-seconds", type=float, default=300, help="stop issuing requests of a workload after this")
    args = parser.parse_args()
    model = args.model or os.environ.get("MODEL") or str(tiny_at_working_size(128))
    scale = 4 if args.quick else 1
    image = input_image()
    report: dict = {"model": model, "cpu_count": os.cpu_count()}

    throughput_jobs = [Job(128, 8, seed) for seed in range(64 // scale)]
    latency_jobs = [Job(128, 8, seed) for seed in range(16 // scale)]
    large_jobs = [Job(256, 8, seed) for seed in range(16 // scale)]
    mixed_jobs = [Job(128, 4 if i % 2 == 0 else 24, i) for i in range(48 // scale)]
    shape_jobs = [Job(None, 8, i, MIXED_INPUTS[i % len(MIXED_INPUTS)]) for i in range(48 // scale)]

    stages = InProcessStages(model)
    time_in_process(stages, image, throughput_jobs[:2])  # warm-up
    print("baseline: in-process, one request at a time", flush=True)
    report["baseline_128"] = time_in_process(stages, image, throughput_jobs)
    report["baseline_256"] = time_in_process(stages, image, large_jobs)
    del stages

    with served_app(model) as app:
        run_served(app, image, throughput_jobs[:8], 8, args.max_seconds)  # warm-up
        print("served: continuous batching", flush=True)
        report["served_128_c8"] = run_served(app, image, throughput_jobs, 8, args.max_seconds)
        report["served_128_c1"] = run_served(app, image, latency_jobs, 1, args.max_seconds)
        report["served_256_c8"] = run_served(app, image, large_jobs, 8, args.max_seconds)
        report["mixed_continuous"] = run_served(app, image, mixed_jobs, 8, args.max_seconds)
        report["shapes_several_per_step"] = run_served(app, image, shape_jobs, 8, args.max_seconds)
    with served_app(model, max_buckets_per_step=1) as app:
        run_served(app, image, shape_jobs[:8], 8, args.max_seconds)  # warm-up
        print("served: one latent shape per step", flush=True)
        report["shapes_one_per_step"] = run_served(app, image, shape_jobs, 8, args.max_seconds)
    with served_app(model, continuous=False) as app:
        run_served(app, image, throughput_jobs[:8], 8, args.max_seconds)  # warm-up
        print("served: whole-request batching", flush=True)
        report["mixed_whole_request"] = run_served(app, image, mixed_jobs, 8, args.max_seconds)

    for name in ("mixed_continuous", "mixed_whole_request"):
        by_job = report[name].pop("by_job")
        report[name]["short_p50_s"] = round(float(np.median([t for job, t in by_job if job.steps == 4])), 4)
        report[name]["long_p50_s"] = round(float(np.median([t for job, t in by_job if job.steps == 24])), 4)
    for name in ("served_128_c8", "served_128_c1", "served_256_c8", "shapes_several_per_step", "shapes_one_per_step"):
        report[name].pop("by_job")

    ratios = {
        "throughput_ratio": report["served_128_c8"]["images_per_s"] / report["baseline_128"]["images_per_s"],
        "throughput_ratio_256": report["served_256_c8"]["images_per_s"] / report["baseline_256"]["images_per_s"],
        "serving_overhead_c1": report["served_128_c1"]["p50_s"] / report["baseline_128"]["p50_s"],
        "short_p50_ratio": report["mixed_continuous"]["short_p50_s"] / report["mixed_whole_request"]["short_p50_s"],
        "mixed_shapes_p50_ratio": report["shapes_several_per_step"]["p50_s"] / report["shapes_one_per_step"]["p50_s"],
        "mixed_shapes_p95_ratio": report["shapes_several_per_step"]["p95_s"] / report["shapes_one_per_step"]["p95_s"],
        "mixed_shapes_throughput_ratio": (
            report["shapes_several_per_step"]["images_per_s"] / report["shapes_one_per_step"]["images_per_s"]
        ),
    }
    report["ratios"] = {name: round(value, 3) for name, value in ratios.items()}
    args.report.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    for name in (
        "serving_overhead_c1", "throughput_ratio_256", "short_p50_ratio", "mixed_shapes_throughput_ratio",
        "mixed_shapes_p50_ratio", "mixed_shapes_p95_ratio", "throughput_ratio",
    ):
        print(f"{name}={report['ratios'][name]}")


if __name__ == "__main__":
    main()
