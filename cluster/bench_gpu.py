"""Stock diffusers against this project's staged engine, the same edit, one process, one GPU.

    python -m cluster.bench_gpu                              # random:qwen-image-edit-2509 on CUDA
    python -m cluster.bench_gpu --compile --attention-backend _native_cudnn
    python -m cluster.bench_gpu --part in-process --compile --fp8      # FP8 (compute capability 8.9+)
    python -m cluster.bench_gpu --part endpoint --serve-config serve/config.multi-gpu.yaml
    python -m cluster.bench_gpu --model models/tiny-edit-plus --size 128 --steps 4 \
        --serve-config serve/config.yaml                          # CPU: the command works

The edit: one input image, SIZExSIZE output (1024), STEPS steps (50), true_cfg_scale 4.0, seed 0.
(a) `QwenImageEditPlusPipeline` with stock settings, built from the same components; then, after
freeing it, (b) Encoder -> Denoiser -> Decoder with the fast-path settings given. Reported per side:
ms per denoising step (median, first step excluded), end-to-end and per-stage seconds, peak memory
per stage, the transformer's achieved TFLOP/s, and speedup = (a) / (b) per step and end to end.
Then (part "endpoint") the online app itself, `python -m serve` with --serve-config (the one-GPU
layout by default) on a loopback port: the same edit from C = 1, 2, 4 clients sending back to back
(--requests-per-client each, after one warm-up edit), reported as saturated images/hour and latency.

FLOPs counted per transformer forward row over T tokens (image + text), for width D = heads x head
dim and L blocks: linear layers 2 x 12 L D^2 x T (q, k, v, out and a 4x MLP, per stream; 6.8e9
weights per token for the real model) plus attention 4 x T^2 x D x L; CFG runs 2 rows per step.
Writes bench-gpu.json.
"""

import argparse
import gc
import io
import json
import statistics
import time
from pathlib import Path

import torch
import yaml
from PIL import Image

from cluster.bench import CONFIG, Job, input_image, run_served, served_app
from deployments.contracts import EditRequest
from deployments.decoder import Decoder
from deployments.denoiser import Denoiser
from deployments.encoder import Encoder
from deployments.fast_path import ATTENTION_BACKENDS, FastPath
from deployments.generated import ensure_generated
from deployments.models import default_device, default_dtype, load_components, resolve_model
from deployments.parameters import parse
from deployments.settings import EngineSettings

PROMPT = "change the red dress to a blue long-sleeved shirt"
CONCURRENCY = (1, 2, 4)
STAGES = ("encoder", "denoiser", "decoder")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def transformer_tflops(config, tokens: int, rows: int, step_s: float) -> float:
    width, layers = config.num_attention_heads * config.attention_head_dim, config.num_layers
    per_row = 2 * 12 * layers * width**2 * tokens + 4 * tokens**2 * width * layers
    return round(rows * per_row / step_s / 1e12, 2)


def run_diffusers(model: str, device: torch.device, image, size: int, steps: int) -> dict:
    import diffusers

    spec = resolve_model(model)
    components = load_components(spec, tuple(spec.component_classes), device, default_dtype(device))
    pipe = getattr(diffusers, spec.pipeline_class)(**components)
    stamps = []

    def on_step(pipeline, step, timestep, kwargs):
        sync(device)
        stamps.append(time.perf_counter())
        return kwargs

    reset_peak(device)
    sync(device)
    started = time.perf_counter()
    pipe(image=image, prompt=PROMPT, negative_prompt=" ", true_cfg_scale=4.0, num_inference_steps=steps, height=size,
         width=size, generator=torch.Generator(device).manual_seed(0), callback_on_step_end=on_step, output_type="np")
    sync(device)
    total = time.perf_counter() - started
    result = {"end_to_end_s": round(total, 3), "ms_per_step": _median_ms(stamps), "peak_gib": peak_gib(device)}
    del pipe, components
    free(device)
    return result


def run_staged(model: str, device: torch.device, image_bytes: bytes, size: int, steps: int, fast: FastPath) -> dict:
    encoder, denoiser, decoder = Encoder(model, device, fast), Denoiser(model, device, fast), Decoder(model, device, fast)
    values = {"image": [image_bytes], "prompt": PROMPT, "seed": 0, "num_inference_steps": steps, "size": f"{size}x{size}"}
    request = EditRequest(parse(encoder.family.spec.request_model(), values))  # true CFG 4 with " ": the defaults
    stages, peaks, stamps = {}, {}, []
    sync(device)
    started = time.perf_counter()

    def timed(name, call):
        reset_peak(device)
        t = time.perf_counter()
        out = call()
        sync(device)
        stages[name], peaks[name] = round(time.perf_counter() - t, 3), peak_gib(device)
        return out

    conditioning = timed("encode", lambda: encoder.encode(request))

    def denoise():
        job = denoiser.start(conditioning)
        while not job.done:
            denoiser.step([job])
            sync(device)  # per-step timing only: the engine itself never synchronizes inside the loop
            stamps.append(time.perf_counter())
        return denoiser.finish(job), job

    latents, job = timed("denoise", denoise)
    timed("decode", lambda: decoder.decode(latents))
    total = time.perf_counter() - started
    step_ms = _median_ms(stamps)
    config = denoiser.family.loaded["transformer"].config
    rows, tokens_per_row = job.footprint.rows, job.footprint.tokens // job.footprint.rows
    return {
        "end_to_end_s": round(total, 3), "ms_per_step": step_ms, "stage_s": stages, "peak_gib_per_stage": peaks,
        "tokens_per_row": tokens_per_row, "rows_per_step": rows,
        "transformer_tflops": transformer_tflops(config, tokens_per_row, rows, step_ms / 1000),
    }


def gpus_per_replica(config: Path) -> float:
    """The most GPUs one replica of any stage in the Serve config file asks for (Serve's default: 0)."""
    args = yaml.safe_load(config.read_text())["applications"][0].get("args") or {}
    options = [((args.get(stage) or {}).get("deployment") or {}).get("ray_actor_options") or {} for stage in STAGES]
    return max(float(option.get("num_gpus", 0)) for option in options)


def run_endpoint(model: str, config: Path, size: int, steps: int, per_client: int, max_seconds: float) -> dict:
    if gpus_per_replica(config) > torch.cuda.device_count():  # Ray would wait for them forever
        raise SystemExit(f"{config} asks for GPUs and this machine has {torch.cuda.device_count()}; "
                         "give --serve-config serve/config.yaml on a CPU")
    image, results = input_image(size), {}
    with served_app(model, config_path=config) as app:
        run_served(app, image, [Job(size, steps, seed=0)], 1, max_seconds)  # warm-up
        for clients in CONCURRENCY:
            jobs = [Job(size, steps, seed) for seed in range(clients * per_client)]
            summary = run_served(app, image, jobs, clients, max_seconds)
            summary.pop("by_job")
            results[f"c{clients}"] = summary | {"images_per_hour": round(summary["images_per_s"] * 3600)}
    return results


def _median_ms(stamps: list[float]) -> float:
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]  # the first step (warm-up) has no predecessor
    return round(statistics.median(gaps) * 1000, 2) if gaps else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="random:qwen-image-edit-2509")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--compile", action="store_true", help="regional torch.compile (warmed up before timing)")
    parser.add_argument("--attention-backend", choices=ATTENTION_BACKENDS, default="native")
    parser.add_argument("--fp8", action="store_true", help="the staged engine's transformer linears in FP8 (torchao)")
    parser.add_argument("--no-pinned-transfers", dest="pinned_transfers", action="store_false")
    parser.add_argument("--part", choices=("all", "in-process", "endpoint"), default="all")
    parser.add_argument("--serve-config", type=Path, default=CONFIG.with_name("config.one-gpu.yaml"))
    parser.add_argument("--requests-per-client", type=int, default=3)
    parser.add_argument("--max-seconds", type=float, default=600, help="per concurrency: stop issuing requests after this")
    parser.add_argument("--report", type=Path, default=Path("bench-gpu.json"))
    args = parser.parse_args()
    device = default_device()
    ensure_generated(args.model)  # a random preset's configs, on first use
    data = input_image(args.size)
    report = {
        "model": args.model, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "size": args.size, "steps": args.steps, "fast_path": {
            "compile": args.compile, "attention_backend": args.attention_backend, "fp8": args.fp8,
            "pinned_transfers": args.pinned_transfers,
        },
    }
    # diffusers resizes inputs to its hard-coded areas; the engine to the model's settings. Only when
    # those are diffusers' (real checkpoints, random presets) do both sides do the same work.
    report["comparable"] = resolve_model(args.model).settings == EngineSettings()
    if args.part in ("all", "in-process"):
        report["diffusers"] = run_diffusers(args.model, device, Image.open(io.BytesIO(data)), args.size, args.steps)
        fast = FastPath(attention_backend=args.attention_backend, compile=args.compile, fp8=args.fp8, pinned_transfers=args.pinned_transfers)
        report["staged"] = run_staged(args.model, device, data, args.size, args.steps, fast)
        report["speedup_per_step"] = round(report["diffusers"]["ms_per_step"] / report["staged"]["ms_per_step"], 3)
        report["speedup_end_to_end"] = round(report["diffusers"]["end_to_end_s"] / report["staged"]["end_to_end_s"], 3)
        free(device)  # the endpoint's replicas need the card
    if args.part in ("all", "endpoint"):
        report["endpoint"] = {"config": str(args.serve_config)} | run_endpoint(
            args.model, args.serve_config, args.size, args.steps, args.requests_per_client, args.max_seconds
        )
    args.report.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
