"""What, besides a request, decides the pixels of its image: the checkpoint's files, the adapters'
files, and how each stage runs them (device type, dtype, FP8, attention backend, VAE tiling, ...).

The result cache keys images by it together with the request's provenance record
(deployments/workflows/result_cache.py): an image made with FP8 weights, in another dtype, with
another attention backend or VAE tiling, from another revision of the checkpoint or from another
file under an adapter's name is never the answer to a request that would not make it.
"""

import functools
import hashlib
import os
from pathlib import Path
from typing import Any

from deployments.checkpoints.loader import ModelSpec, dtype_name
from deployments.settings.fast_path import FastPath
from deployments.settings.lora import LoraAdapter, LoraSettings

# The fast-path settings each stage applies that can change pixels (deployments/devices/fast_path.py:
# the Denoiser's kernels, the VAE's tiles); the others (slicing, pinned transfers) leave every pixel as
# it is, so engines differing only in them share images — e.g. a bulk job and a config slicing its Decoder's VAE.
PIXEL_SETTINGS = {"encode": ("vae_tiling",), "denoise": ("attention_backend", "compile", "fp8"), "decode": ("vae_tiling",)}
STAGES = tuple(PIXEL_SETTINGS)


def engine_identity(spec: ModelSpec, lora: LoraSettings, stages: dict[str, tuple[str, FastPath]]) -> dict[str, Any]:
    """The identity of an engine that runs `spec` with `stages` (stage -> (device, fast path); a device is
    "cpu", "cuda" or "cuda:<GPU type>" where the stage is pinned to one: kernels differ between GPU
    models) and offers `lora`'s adapters (a key lists only the adapters its request uses)."""
    return {
        "checkpoint": {"model": spec.model_id, "path": str(spec.path.resolve()), "files_sha256": _files_digest(spec.path.resolve())},
        "stages": {
            stage: {
                "device": device, "dtype": dtype_name(device.partition(":")[0]),
                "fast_path": {name: getattr(fast_path, name) for name in PIXEL_SETTINGS[stage]},
            }
            for stage, (device, fast_path) in stages.items()
        },
        "adapters": {name: adapter_identity(adapter) for name, adapter in lora.adapters.items()},
    }


def gpu_device(gpus: float, accelerator_type: str | None) -> str:
    """A stage's device in an identity: "cpu" without GPUs, else "cuda", or "cuda:<type>" when pinned
    to a GPU type (Ray's accelerator_type)."""
    if not gpus:
        return "cpu"
    return f"cuda:{accelerator_type}" if accelerator_type else "cuda"


def adapter_identity(adapter: LoraAdapter) -> dict[str, Any]:
    """An adapter's source, file, schedule and the SHA-256 of its weights (a local file's; a hub id is
    named as it is)."""
    location = Path(adapter.location())
    files = [location] if location.is_file() else sorted(location.glob(adapter.weight_name or "*.safetensors")) if location.is_dir() else []
    return {
        **adapter.model_dump(mode="json", include={"source", "weight_name", "scheduler"}),
        "sha256": [_file_sha256(str(file), *_version(file)) for file in files],
    }


def _files_digest(folder: Path) -> str:
    """A digest of a checkpoint folder: every JSON file's contents (configs, the weights' index) and every
    other file's name and size (weights are too large to hash at start-up; a new revision changes its index)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes() if path.suffix == ".json" else str(path.stat().st_size).encode())
    return digest.hexdigest()


def _version(file: Path) -> tuple[int, int]:
    stat = os.stat(file)
    return stat.st_size, stat.st_mtime_ns


@functools.cache
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """The file's SHA-256, computed once per version of it (size and modification time)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()
