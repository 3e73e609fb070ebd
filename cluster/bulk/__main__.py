"""Bulk re-editing of a Parquet manifest with Ray Data, through the online app's own stage classes:

    python -m cluster.bulk --manifest IN.parquet --output OUT [--model M] [--steps 8] ...
    ray job submit -- python -m cluster.bulk --manifest s3://bucket/manifest/ --output /mnt/out

read_parquet -> read images + build requests -> Encoder pool -> Denoiser pool (batched) -> Decoder
pool (writes OUT/images/<safe-id>.<ext> atomically) -> OUT/results/ (Parquet, one row per id).
Re-running the same command skips ids already `ok` and retries the rest; exit code 0 only when
every row is `ok`. With no cluster address (RAY_ADDRESS) it starts a local Ray cluster.
"""

import argparse
import math
import os
import sys
from pathlib import Path

import pyarrow.dataset
import ray
import ray.util.metrics

from cluster.bulk.manifest import ManifestError, check_ids, check_schema
from cluster.bulk.outputs import remove_partial_files
from cluster.bulk.results import compact, to_result_rows, write_part
from cluster.bulk.requests import Defaults, ToRequests
from cluster.bulk.stages import DecodeActor, DenoiseActor, EncodeActor
from cluster.bulk.tally import Tally
from deployments import metrics
from deployments.contracts import OUTPUT_FORMATS
from deployments.errors import InvalidInputError
from deployments.fast_path import ATTENTION_BACKENDS, FastPath
from deployments.models import model_name, resolve_model
from deployments.parameters import PARAMETERS
from deployments.settings import model_from_env


def parse_args(argv=None) -> argparse.Namespace:
    gpu = _has_cuda()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", required=True, help="Parquet file or directory (local or any pyarrow URI, e.g. s3://)")
    p.add_argument("--output", required=True, type=Path, help="output directory OUT")
    p.add_argument("--model", default=None, help="checkpoint directory or hub id (default: $MODEL or the tiny model)")
    d = p.add_argument_group("defaults for the manifest's optional columns")
    d.add_argument("--negative-prompt", default=None,
                   help="default: the model family's (' ' for Qwen-Image-Edit, none for InstructPix2Pix)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    d.add_argument("--cfg", type=float, default=None, help="Qwen-Image-Edit: true CFG scale (4.0)")
    d.add_argument("--guidance-scale", type=float, default=None, help="InstructPix2Pix: text guidance s_T (7.5)")
    d.add_argument("--image-guidance-scale", type=float, default=None, help="InstructPix2Pix: image guidance s_I (1.5)")
    d.add_argument("--output-format", choices=OUTPUT_FORMATS, default="png")
    d.add_argument("--size", default="auto", help="WIDTHxHEIGHT or auto")
    r = p.add_argument_group("resources (defaults fit one GPU, or this CPU machine)")
    for stage, gpus in (("encoder", 0.25), ("denoiser", 0.5), ("decoder", 0.25)):
        r.add_argument(f"--{stage}-actors", type=int, default=1, help=f"{stage} pool size")
        r.add_argument(f"--{stage}-batch-size", type=int, default=8 if stage == "denoiser" else 4)
        r.add_argument(f"--{stage}-gpus", type=float, default=gpus if gpu else 0, help="GPU fraction per actor")
        r.add_argument(f"--{stage}-cpus", type=float, default=0.5, help="CPUs per actor")
    f = p.add_argument_group("fast path (deployments/fast_path.py), for every stage")
    f.add_argument("--attention-backend", choices=ATTENTION_BACKENDS, default="native")
    f.add_argument("--compile", action="store_true", help="regional torch.compile of the transformer, warmed up at start")
    f.add_argument("--vae-tiling", action="store_true", help="tiled VAE: less memory for large images")
    f.add_argument("--vae-slicing", action="store_true", help="VAE one image at a time: less memory, same pixels")
    f.add_argument("--no-pinned-transfers", dest="pinned_transfers", action="store_false",
                   help="plain instead of page-locked GPU-host copies")
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

    parameters = PARAMETERS[spec.pipeline_class]
    flags = {"true_cfg_scale": args.cfg, "guidance_scale": args.guidance_scale, "image_guidance_scale": args.image_guidance_scale}
    manifest = pyarrow.dataset.dataset(args.manifest, format="parquet")
    try:
        parameters.check(flags)
        check_schema(manifest.schema, parameters)
        check_ids(manifest.to_table(columns=["id"]).column("id"))
    except InvalidInputError as e:
        print(f"error: --{FLAGS[e.param]}: {e.message}", file=sys.stderr)
        return 2
    except ManifestError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    removed = remove_partial_files(out)
    done = compact(out)
    print(f"resuming: {len(done)} id(s) already ok, {removed} partial file(s) removed", flush=True)
    negative = parameters.default_negative_prompt if args.negative_prompt is None else args.negative_prompt
    defaults = Defaults(
        negative_prompt=negative, seed=args.seed, output_format=args.output_format, size=args.size,
        num_inference_steps=args.steps or spec.settings.default_num_inference_steps, **parameters.guidance_of(flags),
    )
    connect(args)
    tally = Tally(model=model_name(model), skipped=len(done))
    run(args, model, done, defaults, tally)
    print("\n" + tally.summary())
    return 0 if tally.error == 0 else 1


STAGES = ("encoder", "denoiser", "decoder")
FLAGS = {"true_cfg_scale": "cfg", "guidance_scale": "guidance-scale", "image_guidance_scale": "image-guidance-scale"}
REQUESTS_CPUS = 0.25  # reading files and building requests is light work


def connect(args) -> None:
    """Joins the cluster at RAY_ADDRESS (as under `ray job submit`), or starts a local one; from then
    on the job's metrics go to the cluster's metrics export."""
    if not ray.is_initialized():
        local = {} if os.environ.get("RAY_ADDRESS") else {"num_cpus": local_cpus(args)}
        ray.init(include_dashboard=False, **local)
    metrics.bind(ray.util.metrics)


def run(args, model: str, done: set[str], defaults: Defaults, tally: Tally) -> None:
    manifest_dir = None if "://" in args.manifest else str(Path(args.manifest).resolve().parent)

    # The `item` column carries the stage contracts as pickled Python objects; saying so explicitly
    # stops every worker from warning that it fell back to that.
    ray.data.DataContext.get_current().enable_fallback_to_arrow_object_ext_type = True
    ds = ray.data.read_parquet(args.manifest)
    if done:
        ds = ds.filter(lambda row: row["id"] not in done)
    # Small blocks let the stages overlap: a Parquet file is one block, and a map step works through
    # a whole block before handing anything on, so without this each stage would wait for the last.
    ds = ds.repartition(target_num_rows_per_block=args.encoder_batch_size)
    pool = ray.data.ActorPoolStrategy
    ds = ds.map_batches(
        ToRequests, fn_constructor_args=(defaults, manifest_dir), batch_format="pandas",
        compute=pool(size=1), num_cpus=REQUESTS_CPUS,
    )
    fast_path = FastPath(
        attention_backend=args.attention_backend, compile=args.compile, vae_tiling=args.vae_tiling,
        vae_slicing=args.vae_slicing, pinned_transfers=args.pinned_transfers,
    )
    actors = {"encoder": (EncodeActor, ()), "denoiser": (DenoiseActor, ()), "decoder": (DecodeActor, (str(args.output),))}
    for stage in STAGES:
        actor, extra = actors[stage]
        ds = ds.map_batches(
            actor,
            fn_constructor_args=(model, fast_path, *extra),
            batch_format="pandas",
            batch_size=getattr(args, f"{stage}_batch_size"),
            compute=pool(size=getattr(args, f"{stage}_actors")),
            num_cpus=getattr(args, f"{stage}_cpus"),
            num_gpus=getattr(args, f"{stage}_gpus"),
        )
    for batch in ds.iter_batches(batch_format="pandas", batch_size=args.decoder_batch_size):  # results as they come
        rows = to_result_rows(batch, model)
        write_part(args.output, rows)
        tally.add(rows)


def local_cpus(args) -> int:
    """Logical CPUs for a local cluster: every actor pool at once, plus a core for Ray Data's read
    tasks — with fewer, the pools take them all and the job waits forever for a read to start."""
    pools = sum(getattr(args, f"{stage}_actors") * getattr(args, f"{stage}_cpus") for stage in STAGES)
    return max(os.cpu_count() or 1, math.ceil(pools + REQUESTS_CPUS) + 1)


if __name__ == "__main__":
    raise SystemExit(main())
