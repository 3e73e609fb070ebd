"""What, besides a request, decides the pixels of its image: the checkpoint's files, the adapters'
files, and how each stage runs them (device type, dtype, FP8, attention backend, VAE tiling, ...).

The result cache keys images by it together with the request's provenance record
(deployments/workflows/result_cache.py): an image made with FP8 weights, in another dtype, with
another attention backend or VAE tiling, from another revision of the checkpoint or from another
file under an adapter's name is never the answer to a request that would not make it.
"""

import dataclasses
import functools
import hashlib
import os
from pathlib import Path
from typing import Any

from deployments.checkpoints.loader import ModelSpec, dtype_name
from deployments.settings.fast_path import FastPath
from deployments.settings.lora import LoraAdapter, LoraSettings

STAGES = ("encode", "denoise", "decode")


def engine_identity(spec: ModelSpec, lora: LoraSettings, stages: dict[str, tuple[str, FastPath]]) -> dict[str, Any]:
    """The identity of an engine that runs `spec` with `stages` (stage -> (device type, fast path)) and
    offers `lora`'s adapters (a key lists only the adapters its request uses: `adapters`)."""
    return {
        "checkpoint": {"model": spec.model_id, "path": str(spec.path.resolve()), "files_sha256": _files_digest(spec.path.resolve())},
        "stages": {
            stage: {"device": device, "dtype": dtype_name(device), "fast_path": dataclasses.asdict(fast_path)}
            for stage, (device, fast_path) in stages.items()
        },
        "adapters": {name: adapter_identity(adapter) for name, adapter in lora.adapters.items()},
    }


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
