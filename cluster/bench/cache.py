"""Benchmark of per-request step caching: the Denoiser's work and time with caching off and on, side by side.

    python -m cluster.bench.cache [--model DIR_OR_HUB_ID --size 1024] [--steps 50] [--batch 4] [--rounds 3] [--report F]

By default the tiny model at a 128x128 working area: a check of the mechanism (how many block
forwards are saved, what that buys in wall time) — its random weights say nothing of quality. On a
GPU, give a real checkpoint and `--size 1024`; the same command measures it there.

For each setting — caching off, First-Block-Cache at `--threshold`, TaylorSeer (`--interval`, warm-up
`--warm-up` steps, order 1) — `--batch` guided requests (one image, different seeds) are denoised
together, one batched forward per step, `--rounds` times with the settings interleaved. Reported per
setting: the median wall seconds of the batch, block forwards (rows through each transformer block,
counted by hooks), the share of block forwards saved and the speed-up against off, and how far the
final latents moved from off's (max |difference|).

Final line: fbc_speedup=<off/fbc>, taylorseer_speedup=<off/taylorseer>, fbc_block_forwards_saved=<share>.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from cluster.bench.common import input_image, tiny_at_working_size
from deployments.checkpoints.generated import ensure_generated
from deployments.checkpoints.loader import resolve_model
from deployments.contracts import EditRequest
from deployments.request.binding import parse
from deployments.stages.denoiser import Denoiser
from deployments.stages.encoder import Encoder


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="checkpoint directory or hub id (default: the tiny model at --size)")
    p.add_argument("--size", type=int, default=128, help="working size: input image and output are size x size")
    p.add_argument("--steps", type=int, default=50, help="denoising steps per request")
    p.add_argument("--batch", type=int, default=4, help="requests denoised together")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per setting, interleaved")
    p.add_argument("--threshold", type=float, default=0.3, help="First-Block-Cache threshold")
    p.add_argument("--interval", type=int, default=5, help="TaylorSeer cache interval")
    p.add_argument("--warm-up", type=int, default=3, help="TaylorSeer steps computed before any prediction")
    p.add_argument("--report", type=Path, default=Path("bench-cache.json"))
    return p.parse_args(argv)


def settings(args: argparse.Namespace) -> dict[str, str | None]:
    return {
        "off": None,
        "fbc": json.dumps({"method": "first_block_cache", "threshold": args.threshold}),
        "taylorseer": json.dumps({"method": "taylorseer", "cache_interval": args.interval,
                                  "disable_cache_before_step": args.warm_up, "max_order": 1}),
    }


class BlockCounter:
    """Rows through every transformer block, counted by forward hooks."""

    def __init__(self, transformer: torch.nn.Module):
        self.rows = 0
        self.hooks = [
            block.register_forward_hook(self._count, with_kwargs=True) for block in transformer.transformer_blocks
        ]

    def _count(self, module, args, kwargs, output) -> None:
        self.rows += (args[0] if args else kwargs["hidden_states"]).shape[0]


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main(argv=None) -> int:
    args = parse_args(argv)
    model = args.model or str(tiny_at_working_size(args.size))
    ensure_generated(model)
    bound = resolve_model(model).request_model()
    encoder, denoiser = Encoder(model), Denoiser(model)
    image = input_image(args.size)
    conditionings = {
        name: [
            encoder.encode(EditRequest(parse(bound, {
                "image": [image], "prompt": "make it a watercolour", "seed": seed, "num_inference_steps": args.steps,
                **({"cache": cache} if cache else {}),
            }), request_id=f"{name}-{seed}"))
            for seed in range(args.batch)
        ]
        for name, cache in settings(args).items()
    }
    counter = BlockCounter(denoiser.family.loaded[denoiser.family.denoising_model])
    seconds: dict[str, list[float]] = {name: [] for name in conditionings}
    block_rows, latents = {}, {}
    denoiser.denoise(conditionings["off"][:1])  # warm-up
    for _ in range(args.rounds):
        for name, batch in conditionings.items():
            counter.rows = 0
            sync()
            started = time.perf_counter()
            results = denoiser.denoise(batch)
            sync()
            seconds[name].append(time.perf_counter() - started)
            block_rows[name], latents[name] = counter.rows, [result.latents for result in results]
    off = float(np.median(seconds["off"]))
    report = {"model": model, "steps": args.steps, "batch": args.batch, "rounds": args.rounds, "settings": settings(args)}
    for name in conditionings:
        median = float(np.median(seconds[name]))
        moved = max(float((a - b).abs().max()) for a, b in zip(latents[name], latents["off"]))
        report[name] = {
            "median_s": round(median, 3), "min_s": round(min(seconds[name]), 3), "max_s": round(max(seconds[name]), 3),
            "block_forwards": block_rows[name], "block_forwards_saved": round(1 - block_rows[name] / block_rows["off"], 3),
            "speedup": round(off / median, 3), "max_latent_change_vs_off": round(moved, 5),
        }
        print(f"{name:>10}: {json.dumps(report[name])}")
    args.report.write_text(json.dumps(report, indent=2) + "\n")
    print(f"fbc_speedup={report['fbc']['speedup']} taylorseer_speedup={report['taylorseer']['speedup']} "
          f"fbc_block_forwards_saved={report['fbc']['block_forwards_saved']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
