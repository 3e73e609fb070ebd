"""Bulk re-editing of a Parquet manifest with Ray Data, through the online app's own stage classes:

    python -m cluster.bulk --manifest IN.parquet --output OUT [--model M] [--steps 8] ...
    ray job submit -- python -m cluster.bulk --manifest s3://bucket/manifest/ --output /mnt/out

read_parquet -> read images + build requests -> Encoder pool -> Denoiser pool (batched) -> Decoder
pool (writes OUT/images/<safe-id>.<ext> atomically) -> OUT/results/ (Parquet, one row per id).
Re-running the same command skips ids already `ok` and retries the rest; exit code 0 only when
every row is `ok`. With no cluster address (RAY_ADDRESS) it starts a local Ray cluster.
"""

import argparse
import os
import sys
import time
from pathlib import Path

import pyarrow.dataset

from cluster.bulk.manifest import ManifestError, check_ids, check_schema
from cluster.bulk.outputs import remove_partial_files
from cluster.bulk.results import compact, to_result_rows, write_part
from cluster.bulk.stages import DecodeActor, Defaults, DenoiseActor, EncodeActor, ToRequests
from deployments.contracts import OUTPUT_FORMATS
from deployments.models import resolve_model
from deployments.settings import model_from_env


def parse_args(argv=None) -> argparse.Namespace:
    gpu = _has_cuda()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", required=True, help="Parquet file or directory (local or any pyarrow URI, e.g. s3://)")
    p.add_argument("--output", required=True, type=Path, help="output directory OUT")
    p.add_argument("--model", default=None, help="checkpoint directory or hub id (default: $MODEL or the tiny model)")
    d = p.add_argument_group("defaults for the manifest's optional columns")
    d.add_argument("--negative-prompt", default=" ")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    d.add_argument("--cfg", type=float, default=4.0, help="true CFG scale")
    d.add_argument("--output-format", choices=OUTPUT_FORMATS, default="png")
    d.add_argument("--size", default="auto", help="WIDTHxHEIGHT or auto")
    r = p.add_argument_group("resources (defaults fit one GPU, or this CPU machine)")
    for stage, gpus in (("encoder", 0.25), ("denoiser", 0.5), ("decoder", 0.25)):
        r.add_argument(f"--{stage}-actors", type=int, default=1, help=f"{stage} pool size")
        r.add_argument(f"--{stage}-batch-size", type=int, default=8 if stage == "denoiser" else 4)
        r.add_argument(f"--{stage}-gpus", type=float, default=gpus if gpu else 0, help="GPU fraction per actor")
        r.add_argument(f"--{stage}-cpus", type=float, default=0.5, help="CPUs per actor")
    return p.parse_args(argv)


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv=None) -> int:
    args = parse_args(argv)
    model = args.model or model_from_env()
    spec = resolve_model(model)  # fails here, once, on a model that can't be found
    out = args.output
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "results").mkdir(parents=True, exist_ok=True)

    manifest = pyarrow.dataset.dataset(args.manifest, format="parquet")
    try:
        check_schema(manifest.schema)
        check_ids(manifest.to_table(columns=["id"]).column("id"))
    except ManifestError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    removed = remove_partial_files(out)
    done = compact(out)
    print(f"resuming: {len(done)} id(s) already ok, {removed} partial file(s) removed", flush=True)
    defaults = Defaults(
        negative_prompt=args.negative_prompt, seed=args.seed, true_cfg_scale=args.cfg, output_format=args.output_format,
        size=args.size, num_inference_steps=args.steps or spec.settings.default_num_inference_steps,
    )
    started = time.perf_counter()
    counts = run(args, model, done, defaults)
    wall = time.perf_counter() - started
    processed = counts["ok"] + counts["error"]
    print(
        f"\n{'ok':>8} {'error':>8} {'skipped':>8} {'rows/s':>8} {'wall s':>8}\n"
        f"{counts['ok']:>8} {counts['error']:>8} {len(done):>8} {processed / wall:>8.2f} {wall:>8.1f}"
    )
    return 0 if counts["error"] == 0 else 1


def run(args, model: str, done: set[str], defaults: Defaults) -> dict[str, int]:
    import ray

    if not ray.is_initialized():
        # A local cluster needs logical CPUs for every pool at once (too few and Ray Data waits forever).
        local = {} if os.environ.get("RAY_ADDRESS") else {"num_cpus": max(4, os.cpu_count() or 1)}
        ray.init(include_dashboard=False, **local)
    manifest_dir = None if "://" in args.manifest else str(Path(args.manifest).resolve().parent)

    ds = ray.data.read_parquet(args.manifest)
    if done:
        ds = ds.filter(lambda row: row["id"] not in done)
    ds = ds.map_batches(
        ToRequests, fn_constructor_args=(defaults, manifest_dir), batch_format="pandas", concurrency=1, num_cpus=0.25
    )
    stages = ((EncodeActor, "encoder", ()), (DenoiseActor, "denoiser", ()), (DecodeActor, "decoder", (str(args.output),)))
    for actor, stage, extra in stages:
        ds = ds.map_batches(
            actor,
            fn_constructor_args=(model, *extra),
            batch_format="pandas",
            batch_size=getattr(args, f"{stage}_batch_size"),
            concurrency=getattr(args, f"{stage}_actors"),
            num_cpus=getattr(args, f"{stage}_cpus"),
            num_gpus=getattr(args, f"{stage}_gpus"),
        )
    counts = {"ok": 0, "error": 0}
    for batch in ds.iter_batches(batch_format="pandas", batch_size=args.decoder_batch_size):  # results as they come
        rows = to_result_rows(batch, model)
        write_part(args.output, rows)
        counts["ok"] += int((rows["status"] == "ok").sum())
        counts["error"] += int((rows["status"] == "error").sum())
    return counts


if __name__ == "__main__":
    raise SystemExit(main())
