"""Where a bulk job writes: OUT, a local directory or any URI pyarrow has a filesystem for
(`s3://bucket/prefix`, `gs://`, `hdfs://`; S3 endpoints and credentials from the usual AWS_*
environment variables, e.g. AWS_ENDPOINT_URL for an S3-compatible server).

OUT holds `images/<safe-id>.<ext>` and `results/part-*.parquet`, nothing else of ours. Every write
is atomic by construction: a reader, or a resumed job after a kill, sees a whole file or none — on
object storage one object put (an object exists only once its upload completed), on a local disk a
temp file renamed over the name.
"""

import hashlib
import os
import posixpath
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

TEMP_SUFFIX = ".partial"
UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_READABLE = 80
FOLDERS = ("images", "results")  # everything a job writes lies in one of these


def safe_name(row_id: str) -> str:
    """A file name for any id: a readable part (safe characters only, never dot-leading) and a hash
    of the whole id, so that distinct ids never share a file ("a/b" vs "a_b", "../x" vs "x")."""
    readable = UNSAFE.sub("_", row_id).lstrip(".")[:MAX_READABLE] or "id"
    digest = hashlib.sha256(row_id.encode("utf-8")).hexdigest()[:16]
    return f"{readable}-{digest}"


def image_path(request_id: str, fmt: str) -> str:
    """Where, relative to OUT, the image of a request (a row, or a chain's link) is written."""
    return f"images/{safe_name(request_id)}.{'jpg' if fmt == 'jpeg' else fmt}"


def filesystem_and_path(location: str) -> tuple[pafs.FileSystem, str]:
    """A local path (made absolute) or a URI -> its pyarrow filesystem and the path within it."""
    if "://" in location:
        return pafs.FileSystem.from_uri(location)
    return pafs.LocalFileSystem(), str(Path(location).resolve())


@dataclass(frozen=True)
class Output:
    """OUT: the job's output location."""

    filesystem: pafs.FileSystem
    root: str  # OUT's path within `filesystem`

    @classmethod
    def at(cls, location: str) -> "Output":
        filesystem, root = filesystem_and_path(location)
        return cls(filesystem, root.rstrip("/"))

    @property
    def local(self) -> bool:
        return isinstance(self.filesystem, pafs.LocalFileSystem)

    def path(self, relative: str) -> str:
        """`relative` within OUT: one of our folders and a plain name, never anywhere else."""
        folder, _, name = relative.partition("/")
        if folder not in FOLDERS or not name or "/" in name or name.startswith("."):
            raise ValueError(f"{relative!r} is not a file name inside OUT/{{{','.join(FOLDERS)}}}")
        return f"{self.root}/{relative}"

    def prepare(self) -> None:
        if self.local:  # object stores have no folders (pyarrow would put empty marker objects)
            for folder in FOLDERS:
                self.filesystem.create_dir(f"{self.root}/{folder}", recursive=True)

    def read(self, relative: str) -> bytes:
        with self.filesystem.open_input_stream(self.path(relative)) as stream:
            return stream.read()

    def write(self, relative: str, data: bytes) -> str:
        """Writes `data` to OUT/`relative` atomically; returns its path within the filesystem."""
        path = self.path(relative)
        if not self.local:
            with self.filesystem.open_output_stream(path) as stream:  # one object, visible once complete
                stream.write(data)
            return path
        temp = posixpath.join(posixpath.dirname(path), f".{posixpath.basename(path)}.{os.getpid()}.{uuid.uuid4().hex[:8]}{TEMP_SUFFIX}")
        try:
            with open(temp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)  # a failed write leaves nothing behind
            raise
        return path

    def files(self, folder: str, suffix: str) -> list[str]:
        """The paths of OUT/`folder`'s files ending in `suffix`, sorted (temp files left out)."""
        selector = pafs.FileSelector(f"{self.root}/{folder}", allow_not_found=True)
        return sorted(
            info.path for info in self.filesystem.get_file_info(selector)
            if info.type == pafs.FileType.File and info.base_name.endswith(suffix) and not info.base_name.startswith(".")
        )

    def delete(self, path: str) -> None:
        self.filesystem.delete_file(path)

    def remove_partial_files(self) -> int:
        """Deletes the temp files a killed job left in OUT's own folders (local disks only: object
        stores never see a partial object); returns how many."""
        if not self.local:
            return 0
        leftovers = [path for folder in FOLDERS for path in Path(self.root, folder).glob(f".*{TEMP_SUFFIX}")]
        for path in leftovers:
            path.unlink(missing_ok=True)
        return len(leftovers)
