"""Bulk re-editing of a Parquet manifest with Ray Data, through the online app's own stage classes:

    python -m cluster.bulk --manifest IN.parquet --output OUT [--model M] [--num-inference-steps 8] ...
    ray job submit -- python -m cluster.bulk --manifest s3://bucket/catalog/ --output s3://bucket/edited

read_parquet -> drop ids already done -> read images + build requests (tasks) -> Encoder pool ->
Denoiser pool (the online engine loop) -> Decoder pool (writes OUT/images/<safe-id>.<ext>
atomically) -> OUT/results/ (Parquet parts of one schema, one row per id; cluster/bulk/results.py).
Rows whose `chain` has further links, or whose `guard` asks for a retry, take further passes over
just those rows (cluster/bulk/follow_ups.py).
Manifest, images and OUT may be local or on any filesystem pyarrow supports (s3:// with the usual
AWS_* variables). Re-running the same command skips ids already `ok` and retries the rest; exit
code 0 only when every row is `ok`. With no cluster address (RAY_ADDRESS) it starts a local Ray
cluster.

The manifest's optional columns and their flags are the model family's declared request fields
(cluster/bulk/manifest.py); rows are held to the same limits, with the same messages, as online
requests (`--limits`). Rows may name LoRA adapters in a `lora` column (the API's JSON); the adapters
offered are those of `--adapters` (a Serve config's `lora` settings, or a YAML mapping of them) and
the checkpoint's own (deployments/settings/lora.py).
"""

import argparse
import math
import os
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset
import ray
import ray.util.metrics

from cluster.bulk.follow_ups import FollowUps, Pending, as_table, with_pending
from cluster.bulk.image_reads import ImageReader
from cluster.bulk.manifest import NOT_COLUMNS, ManifestError, check_ids, check_schema
from cluster.bulk.requests import RequestBuilder
from cluster.bulk.result_cache import SharedResultCache
from cluster.bulk.results import ResultsWriter, compact, to_result_rows
from cluster.bulk.stages import DecodeActor, DenoiseActor, EncodeActor
from cluster.bulk.storage import Output
from cluster.bulk.tally import Tally
from deployments import metrics
from deployments.checkpoints.generated import ensure_generated
from deployments.checkpoints.identity import STAGES as IDENTITY_STAGES
from deployments.checkpoints.identity import engine_identity, gpu_device
from deployments.checkpoints.loader import ModelSpec, model_name, resolve_model
from deployments.errors import InvalidInputError
from deployments.request.binding import parse
from deployments.request.flags import add_parameter_flags, given, parameter_fields
from deployments.settings.environment import load_app_settings, model_from_env
from deployments.settings.fast_path import FastPath
from deployments.settings.flags import add_settings_flags, settings_from_flags
from deployments.settings.limits import Limits
from deployments.settings.loop import LoopSettings
from deployments.settings.lora import LoraSettings

BULK_DEFAULTS = {"seed": 0}  # unlike online (random), so that re-running a job draws the same images
LOOP_FLAGS = ("token_budget", "max_batch_rows", "max_buckets_per_step", "max_wait_steps")  # the engine loop's, as online


def parse_args(argv=None) -> argparse.Namespace:
    gpu = _has_cuda()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", required=True, help="Parquet file or directory (local or any pyarrow URI, e.g. s3://)")
    p.add_argument("--output", required=True, help="output location OUT: a directory or a URI (e.g. s3://bucket/prefix)")
    p.add_argument("--image-root", default=None,
                   help="refuse image paths (after resolving relative ones) outside this directory or URI prefix")
    p.add_argument("--model", default=None, help="checkpoint directory or hub id (default: $MODEL or the tiny model)")
    p.add_argument("--limits", type=Path, default=None,
                   help="a Serve config file (its app's `limits`) or a YAML mapping of limits; rows are held to them as "
                   "online requests are (default: the built-in limits, serve/config.yaml's)")
    p.add_argument("--adapters", type=Path, default=None,
                   help="a Serve config file (its app's `lora`) or a YAML mapping of LoRA settings: the adapters a "
                   "row's `lora` may name, besides the checkpoint's own (default: none)")
    p.add_argument("--result-cache", default=None, metavar="APP",
                   help="share the result cache of this Serve application in the job's cluster: rows whose image it "
                   "holds are answered from it, every image made is kept there (default: none)")
    d = p.add_argument_group("defaults for the manifest's optional columns (a row's own value wins)")
    add_parameter_flags(d, NOT_COLUMNS, BULK_DEFAULTS)
    r = p.add_argument_group("resources (defaults fit one GPU, or this CPU machine)")
    r.add_argument("--read-tasks", type=int, default=2,
                   help="most tasks reading images and building requests at once (more for object stores far away)")
    for stage, gpus in (("encoder", 0.25), ("denoiser", 0.5), ("decoder", 0.25)):
        r.add_argument(f"--{stage}-actors", type=int, default=1, help=f"{stage} pool size")
        r.add_argument(f"--{stage}-batch-size", type=int, default=4,
                       help="rows per call (the Denoiser's loop batches rows of several calls by its budget)")
        r.add_argument(f"--{stage}-gpus", type=float, default=gpus if gpu else 0, help="GPU fraction per actor")
        r.add_argument(f"--{stage}-cpus", type=float, default=0.5, help="CPUs per actor")
        r.add_argument(f"--{stage}-accelerator-type", default=None,
                       help="the node pool of its actors: nodes with this GPU type (Ray's names: H100, L4, A100, ...)")
    loop = p.add_argument_group("the Denoiser's engine loop (deployments/settings/loop.py, as online)")
    add_settings_flags(loop, LoopSettings, prefix="denoiser_", fields=LOOP_FLAGS)
    o = p.add_argument_group("results")
    o.add_argument("--results-part-rows", type=int, default=10_000, help="rows per results part (at most; see --results-part-seconds)")
    o.add_argument("--results-part-seconds", type=float, default=60.0,
                   help="a results part is committed at the latest this long after its first row arrived")
    add_settings_flags(p.add_argument_group("fast path (deployments/settings/fast_path.py), for every stage"), FastPath)
    return p.parse_args(argv)


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv=None) -> int:
    args = parse_args(argv)
    model = args.model or model_from_env()
    ensure_generated(model)  # the tiny default on first use
    spec = resolve_model(model)  # fails here, once, on a model that can't be found
    limits = load_app_settings(args.limits, "limits", Limits)
    defaults = {**BULK_DEFAULTS, **given(args, list(parameter_fields(NOT_COLUMNS)))}
    try:
        loop = settings_from_flags(args, LoopSettings, LOOP_FLAGS)
        fast_path = settings_from_flags(args, FastPath)
        manifest = pyarrow.dataset.dataset(args.manifest, format="parquet")
        lora = load_app_settings(args.adapters, "lora", LoraSettings).offering_checkpoint_adapters(spec.path)
        # The flags as a row would use them: refused with the message a row (or an online request) gets.
        parse(spec.request_model(limits, lora), {**defaults, "prompt": "check", "image": [b""]})
        check_schema(manifest.schema, spec.declared)
        check_ids(manifest.to_table(columns=["id"]).column("id"))
    except InvalidInputError as e:
        print(f"error: --{e.param.replace('_', '-')}: {e.message}", file=sys.stderr)
        return 2
    except (ManifestError, ValueError, OSError) as e:  # ValueError: adapters the model can't use (pydantic's too)
        print(f"error: {e}", file=sys.stderr)
        return 2
    output = Output.at(args.output)
    output.prepare()
    removed = output.remove_partial_files()
    done = compact(output, spec.declared)
    print(f"resuming: {len(done)} id(s) already ok, {removed} partial file(s) removed", flush=True)
    connect(args)
    results = None
    if args.result_cache is not None:
        results = SharedResultCache(args.result_cache, engine_identity(spec, lora, stage_engines(args, fast_path)))
    if results is not None:
        try:
            results.check()
        except Exception as e:
            print(f"error: --result-cache: the Serve application {args.result_cache!r} has no result cache here ({e!r})", file=sys.stderr)
            return 2
    tally = Tally(model=model_name(model), skipped=len(done))
    writer = ResultsWriter(output, args.results_part_rows, args.results_part_seconds)
    follow_ups = FollowUps(model_name(model))
    pending = None  # the first pass: every row not done; then the rows whose chain or guard asks for another edit
    while True:
        for batch in run(args, spec, done, limits, lora, loop, fast_path, defaults, output, results, pending):
            rows = to_result_rows(follow_ups.judged(batch), spec.model_id, spec.declared)
            writer.add(rows)
            tally.add(rows)
        pending = follow_ups.next_pass()
        if pending is None:
            break
        print(f"another pass for {len(pending)} row(s): their chain's next link, or their guard's retry", flush=True)
    writer.flush()
    print("\n" + tally.summary())
    return 0 if tally.error == 0 else 1


STAGES = ("encoder", "denoiser", "decoder")  # the pools, as IDENTITY_STAGES names their stages
REQUESTS_CPUS = 0.25  # reading files and building requests is light work


def connect(args) -> None:
    """Joins the cluster at RAY_ADDRESS (as under `ray job submit`), or starts a local one; from then
    on the job's metrics go to the cluster's metrics export."""
    if not ray.is_initialized():
        local = {} if os.environ.get("RAY_ADDRESS") else {"num_cpus": local_cpus(args)}
        ray.init(include_dashboard=False, **local)
    metrics.bind(ray.util.metrics)


def run(args, spec: ModelSpec, done: pa.Array, limits: Limits, lora: LoraSettings, loop: LoopSettings, fast_path: FastPath,
        defaults: dict, output: Output, results: SharedResultCache | None, pending: dict[str, Pending] | None = None):
    """The pipeline over the manifest's rows not in `done` (in a later pass: the `pending` rows, each
    with its next edit), `defaults` filling their missing parameters; yields its last frames as they come."""
    model = spec.model_id
    images = ImageReader.for_manifest(args.manifest, limits, args.image_root)

    # The `item` column carries the stage contracts as pickled Python objects; saying so explicitly
    # stops every worker from warning that it fell back to that.
    ray.data.DataContext.get_current().enable_fallback_to_arrow_object_ext_type = True
    ds = ray.data.read_parquet(args.manifest)
    if pending is not None:
        ds = ds.map_batches(with_pending, fn_args=(as_table(pending),), batch_format="pyarrow", batch_size=None)
    elif len(done):  # whole blocks at once; the ids travel once, in the object store
        ds = ds.map_batches(drop_done, fn_args=(done,), batch_format="pyarrow", batch_size=None)
    # Small blocks let the stages overlap: a Parquet file is one block, and a map step works through
    # a whole block before handing anything on, so without this each stage would wait for the last.
    ds = ds.repartition(target_num_rows_per_block=args.encoder_batch_size)
    ds = ds.map_batches(
        RequestBuilder(spec, limits, lora, defaults, images, output, results), batch_format="pandas", num_cpus=REQUESTS_CPUS,
        concurrency=args.read_tasks,
    )
    # Enough Denoiser calls in flight that its loop always has rows waiting to join the running batch.
    denoiser_calls = max(2, math.ceil(loop.max_batch_rows / args.denoiser_batch_size) + 1)
    actors = {
        "encoder": (EncodeActor, (), 1), "denoiser": (DenoiseActor, (loop,), denoiser_calls), "decoder": (DecodeActor, (output, results), 1),
    }
    for stage in STAGES:
        actor, extra, calls = actors[stage]
        ds = ds.map_batches(
            actor,
            fn_constructor_args=(model, fast_path, lora, *extra),
            batch_format="pandas",
            batch_size=getattr(args, f"{stage}_batch_size"),
            compute=ray.data.ActorPoolStrategy(size=getattr(args, f"{stage}_actors"), max_concurrent_calls_per_actor=calls),
            num_cpus=getattr(args, f"{stage}_cpus"),
            num_gpus=getattr(args, f"{stage}_gpus"),
            accelerator_type=getattr(args, f"{stage}_accelerator_type"),
        )
    yield from ds.iter_batches(batch_format="pandas", batch_size=args.decoder_batch_size)  # results as they come


def stage_engines(args, fast_path: FastPath) -> dict[str, tuple[str, FastPath]]:
    """Each stage's device type and fast path (deployments/checkpoints/identity.py)."""
    return {
        stage: (gpu_device(getattr(args, f"{pool}_gpus"), getattr(args, f"{pool}_accelerator_type")), fast_path)
        for stage, pool in zip(IDENTITY_STAGES, STAGES)
    }


def drop_done(rows: pa.Table, done: pa.Array) -> pa.Table:
    return rows.filter(pc.invert(pc.is_in(rows["id"], value_set=done)))


def local_cpus(args) -> int:
    """Logical CPUs for a local cluster: every actor pool at once, plus a core for Ray Data's read
    tasks — with fewer, the pools take them all and the job waits forever for a read to start."""
    pools = sum(getattr(args, f"{stage}_actors") * getattr(args, f"{stage}_cpus") for stage in STAGES)
    return max(os.cpu_count() or 1, math.ceil(pools + args.read_tasks * REQUESTS_CPUS) + 1)


if __name__ == "__main__":
    raise SystemExit(main())
