"""Benchmark of LoRA adapters: requests with different adapters in one batch, against batches of one.

    python -m cluster.bench.lora [--model DIR_OR_HUB_ID --adapters LORA.yaml --size 1024] [--report F] [--quick]

The first four adapters of `--adapters` (a Serve config file's `lora` settings or a YAML mapping of
them) are used; by default the tiny model at a 128x128 working area with its own tiny adapters
(`deployments/checkpoints/tiny_adapters.py`; its three files under four names, each name its own adapter in the
model, without the Lightning one's schedule and defaults, so that requests differ only by adapter). On a GPU, give a real checkpoint, its adapters and `--size 1024`.

1. Per-forward cost, in this process: one Denoiser step of `--batch` guided requests (two rows each)
   with no adapter, all with one adapter, and mixed — the four adapters and none, a fifth each — in one
   forward; and the same mixed requests stepped as one forward per adapter (what a server that cannot
   mix adapters in a batch does). Median ms per step over interleaved rounds.
2. Served: 40 edits (8 steps, CFG on) by 8 clients, the four adapters and none (chosen with
   `model=<adapter>`), sent interleaved (mixed batches) and the same requests grouped by adapter,
   against one app, alternating twice. Throughput and p50.
3. Adapter churn: 20 adapters (rank `--churn-rank` on every linear, the Lightning files' keys) loaded
   in turn through an LRU of 2: the memory held after each load (process RSS on a CPU, allocated
   device memory on a GPU), read and inject seconds, and the base output bit-identical afterwards.

Final lines: mixed_vs_one_adapter_step=<mixed/one>, split_vs_mixed_step=<one forward per adapter /
mixed>, mixed_vs_grouped_throughput=<served mixed/grouped>, churn_memory_growth_mb=<last - first>.
"""

import argparse
import ctypes
import gc
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cluster.bench.common import Job, input_image, run_served, served_app, tiny_at_working_size
from deployments.checkpoints.tiny_adapters import ADAPTERS_DIR, OFFERED, write_lightning_format
from deployments.settings.environment import load_app_settings
from deployments.settings.lora import LoraAdapter, LoraSettings
from deployments.stages.in_process import InProcessStages

ADAPTERS_USED = 4
CHURN_ADAPTERS = 20


def tiny_adapters(model: Path) -> LoraSettings:
    """The tiny checkpoint's adapter files under ADAPTERS_USED names, without their schedulers and
    defaults: every request costs the same but for its adapter."""
    files = [model / ADAPTERS_DIR / adapter["source"] for adapter in OFFERED.values()]
    sources = [files[i % len(files)] for i in range(ADAPTERS_USED)]
    return LoraSettings(adapters={f"{source.stem}-{i}": LoraAdapter(source=str(source)) for i, source in enumerate(sources)})


def with_adapter(stages: InProcessStages, size: int, adapter: str | None, seed: int, steps: int):
    """The Conditioning of a request of `size` with `adapter` (or none)."""
    form = Job(size, steps, seed).form()
    if adapter:
        form["lora"] = json.dumps([{"name": adapter}])
    return stages.conditioning({**form, "image": [input_image(size)]})


def sync(stages: InProcessStages) -> None:
    if stages.denoiser.family.device.type == "cuda":
        torch.cuda.synchronize()


# ---- 1. per-forward cost ------------------------------------------------------------------------------


def step_costs(stages: InProcessStages, size: int, adapters: list[str], batch: int, rounds: int) -> dict:
    choices = [*adapters, None]
    steps = rounds + 3  # no request finishes while it is timed
    plans = {
        "no_adapter": [None] * batch,
        "one_adapter": [adapters[0]] * batch,
        "mixed": [choices[i % len(choices)] for i in range(batch)],
    }
    denoiser = stages.denoiser
    denoiser.denoise([with_adapter(stages, size, name, 0, 2) for name in adapters])  # loads every adapter
    jobs = {
        plan: [denoiser.start(with_adapter(stages, size, name, seed, steps)) for seed, name in enumerate(names)]
        for plan, names in plans.items()
    }
    split_jobs = [denoiser.start(with_adapter(stages, size, name, seed, steps)) for seed, name in enumerate(plans["mixed"])]
    groups = [[job for job, name in zip(split_jobs, plans["mixed"]) if name == choice] for choice in choices]
    runs = {**{plan: [group] for plan, group in jobs.items()}, "one_forward_per_adapter": groups}

    times: dict[str, list[float]] = {plan: [] for plan in runs}
    for round_ in range(rounds + 1):  # round 0 warms up
        for plan, forwards in runs.items():
            sync(stages)
            started = time.perf_counter()
            for group in forwards:
                failed = denoiser.step(group)
                assert not failed, failed
            sync(stages)
            if round_:
                times[plan].append(time.perf_counter() - started)
    return {
        "requests": batch, "rows": 2 * batch, "rounds": rounds,
        **{f"{plan}_ms": round(1000 * float(np.median(values)), 3) for plan, values in times.items()},
        **{f"{plan}_p95_ms": round(1000 * float(np.percentile(values, 95)), 3) for plan, values in times.items()},
    }


# ---- 2. served: mixed against grouped ----------------------------------------------------------------


def served_mixed_vs_grouped(model: str, lora: LoraSettings, adapters: list[str], size: int, requests: int, max_seconds: float) -> dict:
    choices = [*adapters, None]
    mixed = [Job(size, 8, seed, adapter=choices[seed % len(choices)]) for seed in range(requests)]
    grouped = sorted(mixed, key=lambda job: choices.index(job.adapter))
    image = input_image(size)
    report: dict = {}
    with served_app(model, lora=lora.model_dump(mode="json")) as app:
        run_served(app, image, mixed[: 2 * len(choices)], 8, max_seconds)  # warm-up: loads every adapter
        for attempt in (1, 2):
            for name, jobs in (("mixed", mixed), ("grouped", grouped)):
                result = run_served(app, image, jobs, 8, max_seconds)
                result.pop("by_job")
                report[f"{name}_{attempt}"] = result
    for name in ("mixed", "grouped"):
        runs = [report[f"{name}_{attempt}"] for attempt in (1, 2)]
        report[name] = {key: round(float(np.mean([r[key] for r in runs])), 4) for key in ("images_per_s", "p50_s", "mean_rows_per_step")}
    return report


# ---- 3. adapter churn --------------------------------------------------------------------------------


def held_memory_mb(device: torch.device) -> float:
    """Memory the process holds: allocated device memory on a GPU, else RSS after returning freed heap."""
    gc.collect()
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # what glibc keeps of freed memory is not held by anyone
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def churn(model: str, size: int, rank: int, directory: Path) -> dict:
    sources = {f"churn-{i}": directory / f"churn-{i}.safetensors" for i in range(CHURN_ADAPTERS)}
    lora = LoraSettings(adapters={name: LoraAdapter(source=str(s)) for name, s in sources.items()}, max_loaded=2, max_per_request=1)
    stages = InProcessStages(model, lora)  # adapters are read on first use: their files can come after
    for seed, path in enumerate(sources.values()):
        write_lightning_format(path, stages.denoiser.family.loaded["transformer"], rank, alpha=rank / 8, seed=seed)
    adapter_mb = sources["churn-0"].stat().st_size / 2**20
    store, device = stages.denoiser.adapters, stages.denoiser.family.device
    base = with_adapter(stages, size, None, 1, 2)
    before = stages.denoiser.denoise([base])[0].latents
    memory, reads, injects = [], [], []
    for name in lora.adapters:
        started = time.perf_counter()
        store.prefetch([name]).result()
        reads.append(time.perf_counter() - started)
        started = time.perf_counter()
        assert store.ready([name], keep=set())
        sync(stages)
        injects.append(time.perf_counter() - started)
        stages.denoiser.denoise([with_adapter(stages, size, name, 1, 2)])
        memory.append(round(held_memory_mb(device), 1))
    identical = torch.equal(stages.denoiser.denoise([base])[0].latents, before)
    return {
        "adapters": CHURN_ADAPTERS, "rank": rank, "adapter_file_mb": round(adapter_mb, 2), "max_loaded": 2,
        "memory_mb_after_each": memory,
        "memory_growth_mb": round(memory[-1] - memory[1], 1),  # from the LRU's first full state to the last
        "read_s_median": round(float(np.median(reads)), 4), "inject_s_median": round(float(np.median(injects)), 4),
        "base_output_bit_identical": identical,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="checkpoint directory or hub id (default: the tiny model at 128x128)")
    parser.add_argument("--adapters", type=Path, default=None, help="LoRA settings: a Serve config file or a YAML mapping")
    parser.add_argument("--size", type=int, default=128, help="output width and height of every edit")
    parser.add_argument("--batch", type=int, default=10, help="requests per timed step (two rows each)")
    parser.add_argument("--churn-rank", type=int, default=512, help="rank of the adapters loaded in turn")
    parser.add_argument("--report", type=Path, default=Path("bench-lora-report.json"))
    parser.add_argument("--quick", action="store_true", help="fewer rounds and requests (a smoke run)")
    parser.add_argument("--max-seconds", type=float, default=300, help="stop issuing requests of a workload after this")
    args = parser.parse_args()
    if args.model is None:
        model = str(tiny_at_working_size(args.size))
        lora = tiny_adapters(Path(model))
    elif args.adapters is None:
        raise SystemExit("--model needs --adapters: the LoRA settings offering its adapters")
    else:
        model, lora = args.model, load_app_settings(args.adapters, "lora", LoraSettings)
    adapters = list(lora.adapters)[:ADAPTERS_USED]
    lora = lora.model_copy(update={"max_loaded": max(lora.max_loaded, len(adapters))})
    report: dict = {"model": model, "adapters": adapters, "size": args.size, "cpu_count": os.cpu_count()}

    print("per-forward cost", flush=True)
    stages = InProcessStages(model, lora)
    report["step"] = step_costs(stages, args.size, adapters, args.batch, rounds=5 if args.quick else 20)
    del stages
    print("served: mixed against grouped", flush=True)
    report["served"] = served_mixed_vs_grouped(model, lora, adapters, args.size, 20 if args.quick else 40, args.max_seconds)
    print("adapter churn", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        report["churn"] = churn(model, args.size, args.churn_rank, Path(tmp))

    step, served = report["step"], report["served"]
    report["ratios"] = {
        "mixed_vs_one_adapter_step": round(step["mixed_ms"] / step["one_adapter_ms"], 3),
        "one_adapter_vs_none_step": round(step["one_adapter_ms"] / step["no_adapter_ms"], 3),
        "split_vs_mixed_step": round(step["one_forward_per_adapter_ms"] / step["mixed_ms"], 3),
        "mixed_vs_grouped_throughput": round(served["mixed"]["images_per_s"] / served["grouped"]["images_per_s"], 3),
        "mixed_vs_grouped_p50": round(served["mixed"]["p50_s"] / served["grouped"]["p50_s"], 3),
        "churn_memory_growth_mb": report["churn"]["memory_growth_mb"],
    }
    args.report.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    for name, value in report["ratios"].items():
        print(f"{name}={value}")


if __name__ == "__main__":
    main()
