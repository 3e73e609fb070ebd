"""Reading a manifest row's images: from a local disk or any URI pyarrow has a filesystem for.

- A relative path is relative to the manifest's location: the folder of a manifest file, or the
  manifest folder itself (`s3://bucket/catalog/` + `imgs/1.png`), whatever its filesystem.
- With an image root (`--image-root`), a path that resolves outside it is refused: a manifest from
  elsewhere cannot make the job read the machine's files. Local paths are compared as real paths
  (symlinks resolved): a link inside the root can't lead out of it.
- Reads are held to the online limits: at most `max_image_bytes` are read, only regular files (a
  device or a pipe would stall the reader), and the header must show a PNG, JPEG or WebP image of at
  most `max_image_pixels` — as the HTTP edge checks an upload.
"""

import functools
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from cluster.bulk.storage import filesystem_and_path
from deployments.errors import InvalidInputError
from deployments.media.images import inspect_image
from deployments.settings.limits import Limits


def manifest_folder(manifest: str) -> str:
    """Where a manifest's relative image paths start: its folder (a directory manifest) or the folder
    holding it (a single file), as an absolute path or a URI."""
    filesystem, path = filesystem_and_path(manifest)
    is_file = filesystem.get_file_info(path).type == pafs.FileType.File
    prefix, location = _split(manifest if "://" in manifest else path)
    return prefix + (posixpath.dirname(location) if is_file else location)


def _split(location: str) -> tuple[str, str]:
    """"scheme://bucket" and the normalised path of a URI; "" and the normalised path of a local one."""
    if "://" not in location:
        return "", posixpath.normpath(location)
    scheme, netloc, path, *_ = urlsplit(location)
    return f"{scheme}://{netloc}", posixpath.normpath(path or "/")


@dataclass(frozen=True)
class ImageReader:
    base: str  # manifest_folder(...)
    limits: Limits  # its max_image_bytes caps every read
    root: str | None = None  # --image-root, absolute: every image must lie inside it

    @classmethod
    def for_manifest(cls, manifest: str, limits: Limits, root: str | None = None) -> "ImageReader":
        """Resolved where the job starts: a worker's working directory is not the job's."""
        if root is not None and "://" not in root:
            root = str(Path(root).resolve())
        return cls(manifest_folder(manifest), limits, root)

    def locate(self, image: str, param: str = "image") -> str:
        """The image's absolute location (a local one with its symlinks resolved); raises InvalidInputError
        (naming `param`) when it is no path or lies outside the root."""
        if not isinstance(image, str) or not image:
            raise InvalidInputError(param, f"must be a file path or URI, got {image!r}")
        if "://" not in image and not posixpath.isabs(image):
            image = f"{self.base.rstrip('/')}/{image}"
        prefix, path = _split(image)
        if not prefix:
            path = os.path.realpath(path)
        location = prefix + path
        if self.root is not None:
            root_prefix, root_path = _split(self.root)
            inside = prefix == root_prefix and (path == root_path or path.startswith(root_path.rstrip("/") + "/"))
            if not inside:
                raise InvalidInputError(param, f"{image!r} lies outside --image-root {self.root}")
        return location

    def read(self, image: str, param: str = "image") -> bytes:
        """The file's bytes; any problem is an InvalidInputError naming `param` (the row's column)."""
        try:
            return self._read(image, param)
        except OSError as e:  # the filesystem's own failures (permissions, network, ...)
            raise InvalidInputError(param, f"{image!r} could not be read ({e})") from e

    def _read(self, image: str, param: str) -> bytes:
        location = self.locate(image, param)
        filesystem, path = _filesystem(location)
        info = filesystem.get_file_info(path)
        if info.type != pafs.FileType.File:
            why = "not found" if info.type == pafs.FileType.NotFound else "not a file"
            raise InvalidInputError(param, f"{image!r} could not be read ({why})")
        most = self.limits.max_image_bytes
        if info.size is not None and info.size > most:
            raise self.limits.image_too_large(param, str(info.size))
        with filesystem.open_input_stream(path) as stream:
            data = stream.read(most + 1)  # never more, whatever the listing said
        if len(data) > most:
            raise self.limits.image_too_large(param, "more")
        inspect_image(data, param, self.limits.max_image_pixels)
        return data


@functools.lru_cache(maxsize=64)
def _filesystem_of(prefix: str) -> tuple[pafs.FileSystem, str]:
    """A URI prefix's filesystem and the path its "/" has there ("bucket" on object stores), made once
    per scheme and bucket in each worker: an S3 client per read would be slow."""
    filesystem, root = pafs.FileSystem.from_uri(prefix + "/")
    return filesystem, root.rstrip("/")


def _filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    prefix, path = _split(location)
    if not prefix:
        return pafs.LocalFileSystem(), path
    filesystem, root = _filesystem_of(prefix)
    return filesystem, root + path
