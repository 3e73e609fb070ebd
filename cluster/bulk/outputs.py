"""Where bulk results go: `OUT/images/<safe-id>.<ext>`, written atomically, never outside OUT."""

import hashlib
import os
import re
from pathlib import Path

TEMP_SUFFIX = ".partial"
UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_READABLE = 80


def safe_name(row_id: str) -> str:
    """A file name for any id: a readable part (safe characters only, never dot-leading) and a hash
    of the whole id, so that distinct ids never share a file ("a/b" vs "a_b", "../x" vs "x")."""
    readable = UNSAFE.sub("_", row_id).lstrip(".")[:MAX_READABLE] or "id"
    digest = hashlib.sha256(row_id.encode("utf-8")).hexdigest()[:16]
    return f"{readable}-{digest}"


def inside(root: Path, relative: str) -> Path:
    """`root / relative`, refusing any path that would land outside `root`."""
    root = root.resolve()
    path = (root / relative).resolve()
    if root != path and root not in path.parents:
        raise ValueError(f"{relative!r} would be written outside {root}")
    return path


def write_atomic(root: Path, relative: str, data: bytes) -> Path:
    """Writes `data` to `root/relative` so that a reader (or a crash) sees the whole file or none."""
    path = inside(root, relative)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")
    with open(temp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)
    return path


def remove_partial_files(root: Path) -> int:
    """Deletes temp files a killed job left behind; returns how many."""
    leftovers = list(Path(root).rglob(f"*{TEMP_SUFFIX}"))
    for path in leftovers:
        path.unlink(missing_ok=True)
    return len(leftovers)
