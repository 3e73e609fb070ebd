"""Stock diffusers against this project's staged engine, the same edit, one process, one GPU.

    python -m cluster.bench.gpu                              # random:qwen-image-edit-2509 on CUDA
    python -m cluster.bench.gpu --part in-process --staged plain --staged compile,attention=_native_cudnn
    python -m cluster.bench.gpu --part staged --staged compile,fp8     # FP8 (compute capability 8.9+)
    python -m cluster.bench.gpu --part staged --steps 8 --true-cfg-scale 1 --staged compile,lora=64   # Lightning's shape, an adapter
    python -m cluster.bench.gpu --part invariance --size 1024 --steps 5
    python -m cluster.bench.gpu --part endpoint --serve-config serve/config.multi-gpu.yaml
    python -m cluster.bench.gpu --model models/tiny-edit-plus --size 128 --steps 4 \
        --serve-config serve/config.yaml                          # CPU: the command works

The edit: one input image, SIZExSIZE output (1024), STEPS steps (50), true_cfg_scale 4.0, seed 0.
(a) `QwenImageEditPlusPipeline` with stock settings, built from the same components; then, after
freeing it, (b) Encoder -> Denoiser -> Decoder once per `--staged` given (part "staged": (b)
alone). A staged run is `plain` or a comma-separated list of `compile`, `fp8`, `unpinned`,
`attention=BACKEND` and `lora=RANK` (a random adapter in the Lightning files' format on every linear,
alpha = RANK / 8 as theirs, with the Lightning scheduler, named by the request: the per-row LoRA
path's cost). Reported per side: ms per denoising step (median, first step excluded), end-to-end
and per-stage seconds, peak memory per stage, the transformer's achieved TFLOP/s, and
speedup = (a) / (b) per step and end to end.
Part "invariance": requests of the same edit with different seeds and prompts (1, 3, ... of them
with CFG off) join one running batch at different steps, in the model's dtype (bf16 on CUDA), 2, 4
and 8 at a time; each one's final latents against its solo run, as a fraction of their largest
magnitude (the README's bound).
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
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml
from PIL import Image

from cluster.bench.common import CONFIG, Job, input_image, run_served, served_app
from deployments.batching.staggered import denoise_joining
from deployments.checkpoints.generated import ensure_generated
from deployments.checkpoints.loader import default_device, default_dtype, load_components, resolve_model
from deployments.checkpoints.tiny_adapters import write_lightning_format
from deployments.contracts import EditRequest
from deployments.request.binding import parse
from deployments.settings.engine import EngineSettings
from deployments.settings.fast_path import ATTENTION_BACKENDS, FastPath
from deployments.settings.limits import Limits
from deployments.settings.lora import LoraAdapter, LoraSettings
from deployments.stages.decoder import Decoder
from deployments.stages.denoiser import Denoiser
from deployments.stages.encoder import Encoder

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


def run_diffusers(model: str, device: torch.device, image, size: int, steps: int, cfg: float) -> dict:
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
    pipe(image=image, prompt=PROMPT, negative_prompt=" ", true_cfg_scale=cfg, num_inference_steps=steps, height=size,
         width=size, generator=torch.Generator(device).manual_seed(0), callback_on_step_end=on_step, output_type="np")
    sync(device)
    total = time.perf_counter() - started
    result = {"end_to_end_s": round(total, 3), "ms_per_step": _median_ms(stamps), "peak_gib": peak_gib(device),
              "images_per_hour": round(3600 / total)}
    del pipe, components
    free(device)
    return result


@dataclass(frozen=True)
class Variant:
    """One staged run: the engine's fast-path settings, and optionally a random LoRA adapter on every request."""

    fast: FastPath = FastPath()
    lora_rank: int | None = None  # an adapter in the Qwen-Image-Lightning files' format, on every linear of every block

    def describe(self) -> dict:
        return {"fast_path": asdict(self.fast), "lora_rank": self.lora_rank}


def variant(spec: str) -> Variant:
    """`plain`, or e.g. `compile,fp8,attention=_native_cudnn,lora=64` (also `unpinned`: no page-locked transfers)."""
    settings, rank = {}, None
    for token in filter(None, spec.split(",")):
        name, _, value = token.partition("=")
        if name in ("compile", "fp8") and not value:
            settings[name] = True
        elif name == "unpinned" and not value:
            settings["pinned_transfers"] = False
        elif name == "attention" and value in ATTENTION_BACKENDS:
            settings["attention_backend"] = value
        elif name == "lora" and value.isdigit() and int(value) > 0:
            rank = int(value)
        elif token != "plain":
            raise argparse.ArgumentTypeError(
                f"{token!r}: a staged run is 'plain' or a comma-separated list of compile, fp8, unpinned, lora=RANK "
                f"and attention=BACKEND with BACKEND one of {', '.join(ATTENTION_BACKENDS)}")
    return Variant(FastPath(**settings), rank)


def edit_request(model: str, image_bytes: bytes, size: int, steps: int, cfg: float, seed=0, prompt=PROMPT,
                 lora: LoraSettings = LoraSettings()) -> EditRequest:
    values = {"image": [image_bytes], "prompt": prompt, "seed": seed, "num_inference_steps": steps,
              "size": f"{size}x{size}", "true_cfg_scale": cfg}  # with the default negative prompt " "
    if lora.adapters:
        values["lora"] = json.dumps([{"name": name} for name in lora.adapters])
    return EditRequest(parse(resolve_model(model).request_model(Limits(), lora), values))


def run_staged(model: str, device: torch.device, image_bytes: bytes, size: int, steps: int, cfg: float,
               run: Variant, scratch: Path) -> dict:
    fast, adapter = run.fast, scratch / "adapter.safetensors"
    adapter.touch()  # offered before its weights exist (they take the loaded transformer's shapes): written below
    lora = LoraSettings(adapters={"random": LoraAdapter(source=str(adapter), scheduler="lightning")}) if run.lora_rank else LoraSettings()
    encoder, denoiser = Encoder(model, device, fast, lora), Denoiser(model, device, fast, lora)
    decoder = Decoder(model, device, fast)
    if run.lora_rank:  # from the transformer's shapes, alpha/rank as Lightning's 8/64; loaded before timing
        write_lightning_format(adapter, denoiser.family.loaded["transformer"], run.lora_rank, run.lora_rank / 8, seed=0)
        denoiser.adapters.prefetch(lora.adapters).result()
        assert denoiser.adapters.ready(lora.adapters, keep=set())
    request = edit_request(model, image_bytes, size, steps, cfg, lora=lora)
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
            if failed := denoiser.step([job]):
                raise failed[job]
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
        "images_per_hour": round(3600 / total),
    }


INVARIANCE_PROMPTS = (PROMPT, "remove the watermark bottom-left", "배경을 해변으로 바꿔줘",
                      "把文字换成 Buy One Get One Free, in a bold red typeface on a white banner")


def run_invariance(model: str, device: torch.device, image_bytes: bytes, size: int, steps: int, counts=(2, 4, 8)) -> dict:
    """Each of max(counts) requests batched among the first `count` ones, joining at different steps,
    against its solo run: the largest and mean difference of its final latents over their largest magnitude."""
    encoder, denoiser = Encoder(model, device), Denoiser(model, device)
    requests = [edit_request(model, image_bytes, size, steps, cfg=1.0 if i % 2 else 4.0, seed=i,
                             prompt=INVARIANCE_PROMPTS[i % len(INVARIANCE_PROMPTS)]) for i in range(max(counts))]
    conditionings = [encoder.encode(request) for request in requests]
    del encoder
    free(device)
    solo = [denoiser.denoise([c])[0].latents.float() for c in conditionings]
    model_dtype = denoiser.family.loaded[denoiser.family.denoising_model].dtype
    results, finite = {"dtype": str(model_dtype).removeprefix("torch.")}, all(bool(t.isfinite().all()) for t in solo)
    for count in counts:
        reset_peak(device)
        batched, forward_rows = denoise_joining(denoiser, conditionings[:count], [i % max(steps - 1, 1) for i in range(count)])
        worst, mean = 0.0, 0.0
        finite = finite and all(bool(t.isfinite().all()) for t in batched)
        for together, alone in zip(batched, solo):
            difference, scale = (together.float() - alone).abs(), alone.abs().max().item()
            worst, mean = max(worst, difference.max().item() / scale), max(mean, difference.mean().item() / scale)
        results[f"{count}_requests"] = {"max_rows_per_forward": max(forward_rows), "max_difference": round(worst, 6),
                                        "mean_difference": round(mean, 6), "peak_gib": peak_gib(device)}
    del denoiser
    free(device)
    return results | {"finite": finite}  # random weights: a difference of non-finite latents would mean nothing


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
    parser.add_argument("--true-cfg-scale", type=float, default=4.0, help="1 switches CFG off (Lightning's setting)")
    parser.add_argument("--staged", type=variant, action="append", dest="variants", metavar="SPEC",
                        help="a staged run, once per flag (default: plain); e.g. compile,fp8,attention=_native_cudnn,lora=64")
    parser.add_argument("--part", choices=("all", "in-process", "staged", "invariance", "endpoint"), default="all")
    parser.add_argument("--serve-config", type=Path, default=CONFIG.with_name("config.one-gpu.yaml"))
    parser.add_argument("--requests-per-client", type=int, default=3)
    parser.add_argument("--max-seconds", type=float, default=600, help="per concurrency: stop issuing requests after this")
    parser.add_argument("--report", type=Path, default=Path("bench-gpu.json"))
    args = parser.parse_args()
    variants = args.variants or [Variant()]
    device = default_device()
    ensure_generated(args.model)  # a random preset's configs, on first use
    data = input_image(args.size)
    report = {
        "model": args.model, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "size": args.size, "steps": args.steps, "true_cfg_scale": args.true_cfg_scale,
    }
    # diffusers resizes inputs to its hard-coded areas; the engine to the model's settings. Only when
    # those are diffusers' (real checkpoints, random presets) do both sides do the same work.
    report["comparable"] = resolve_model(args.model).settings == EngineSettings()
    if args.part in ("all", "in-process"):
        report["diffusers"] = run_diffusers(args.model, device, Image.open(io.BytesIO(data)), args.size, args.steps,
                                            args.true_cfg_scale)
        print(json.dumps({"diffusers": report["diffusers"]}), flush=True)
    if args.part in ("all", "in-process", "staged"):
        report["staged"] = []
        for run in variants:
            with tempfile.TemporaryDirectory() as scratch:
                staged = run.describe() | run_staged(args.model, device, data, args.size, args.steps,
                                                     args.true_cfg_scale, run, Path(scratch))
            if "diffusers" in report:
                staged["speedup_per_step"] = round(report["diffusers"]["ms_per_step"] / staged["ms_per_step"], 3)
                staged["speedup_end_to_end"] = round(report["diffusers"]["end_to_end_s"] / staged["end_to_end_s"], 3)
            free(device)  # this run's stages, before the next run builds its own
            report["staged"].append(staged)
            print(json.dumps(staged), flush=True)  # a later variant failing keeps this one's figures
    if args.part == "invariance":
        report["invariance"] = run_invariance(args.model, device, data, args.size, args.steps)
    if args.part in ("all", "endpoint"):
        report["endpoint"] = {"config": str(args.serve_config)} | run_endpoint(
            args.model, args.serve_config, args.size, args.steps, args.requests_per_client, args.max_seconds
        )
    args.report.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
