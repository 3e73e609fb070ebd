"""The checkpoints this project writes instead of downloading: the tiny defaults (models/tiny-*) and
the full-size random presets (`random:NAME`, deployments/checkpoints/random_presets.py).

`ensure_generated(model)` is the one explicit call that writes them, on first use; loading
(deployments/checkpoints/loader.py) only reads. It holds a file lock while it checks and writes, so concurrent
replicas on one node wait for one writer and then find the finished directory; the writer builds a
private copy and renames it into place, so no reader ever sees a half-written one.
"""

import fcntl
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from deployments.settings.environment import MODELS_DIR, TINY_MODEL_DIRS

logger = logging.getLogger(__name__)

LOCK_FILE = MODELS_DIR / ".generate.lock"


def ensure_generated(model: str) -> None:
    """Writes `model` if it is one of the generated checkpoints and is missing or was written by an
    older version of its builder; does nothing for any other model."""
    from deployments.checkpoints import random_presets, tiny  # builders: diffusers and transformers, only when needed

    if random_presets.is_random(model):
        name = random_presets.preset_name(model)
        path, marker, build = random_presets.preset_dir(model), random_presets.MARKER, random_presets.PRESET_BUILD
        write: Callable[[Path], object] = lambda out: random_presets.write_preset(out, name)
    elif (variant := TINY_MODEL_DIRS.get(Path(model).resolve())) is not None:
        path, marker, build = Path(model).resolve(), tiny.BUILD_MARKER, tiny.TINY_BUILD
        write = lambda out: tiny.write_checkpoint(out, variant)
    else:
        return
    ensure_written(path, marker, build, write)


def ensure_written(path: Path, marker: str, build: int, write: Callable[[Path], object]) -> None:
    """Has `write` build `path` unless it holds build `build` already (under the lock, atomically)."""
    MODELS_DIR.mkdir(parents=True, exist_ok=True)
    with open(LOCK_FILE, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not is_current(path, marker, build):
            _write(path, marker, build, write)


def is_current(path: Path, marker: str, build: int) -> bool:
    """Whether `path` was written as build `build` of its generator (recorded in its file `marker`)."""
    marker_file = path / marker
    return marker_file.is_file() and marker_file.read_text().strip() == str(build)


def _write(path: Path, marker: str, build: int, write: Callable[[Path], object]) -> None:
    logger.info("generating %s (build %d)", path, build)
    scratch = path.parent / f".{path.name}.{os.getpid()}.tmp"
    shutil.rmtree(scratch, ignore_errors=True)
    write(scratch)
    (scratch / marker).write_text(f"{build}\n")
    if path.is_dir():  # stale: move it aside first (rename, so readers never see a mix)
        stale = path.parent / f".{path.name}.{os.getpid()}.stale"
        path.rename(stale)
        shutil.rmtree(stale, ignore_errors=True)
    scratch.rename(path)
