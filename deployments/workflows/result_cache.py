"""The result cache: edited images by the content address of how they are made, so an identical
request is answered without recomputing it — exact, since the same record gives the same image.

The key is the SHA-256 of the image's provenance record (deployments/workflows/provenance.py): the model, every
parameter that decides the pixels, the image's seed, the SHA-256 of each input file (image(s), mask),
the adapters and their sources, a chain link's earlier links, and the software versions (an upgrade
never answers from an older version's results). `guard` and `n` are not part of it: the cache holds
images, a guard judges each one as it is answered.

Held in memory, least recently used first out, bounded in bytes (the encoded images').
"""

import dataclasses
import hashlib
import threading
from collections import OrderedDict

from deployments.contracts import EditedImage, EditRequest
from deployments.media import metadata
from deployments.workflows import provenance


def result_key(request: EditRequest, seed: int, model_id: str, adapter_sources: dict[str, str]) -> str:
    """The content address of the image `request` makes with `seed`."""
    record = provenance.record(request.parameters, model_id, adapter_sources, request.derived_from)
    return key_of(provenance.with_seed(record, seed))


def key_of(record: dict) -> str:
    """The content address of the image a provenance record describes (an EditedImage's `provenance`)."""
    return hashlib.sha256(metadata.as_text(record).encode("utf-8")).hexdigest()


def as_cached(image: EditedImage) -> EditedImage:
    """What the cache keeps of an image: nothing of the request it was made for."""
    return dataclasses.replace(image, request_id="", timings={}, guard=None, result_cache=None)


class ResultCache:
    """Images by key, at most `max_bytes` of them (an image larger than that is not kept)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self._images: OrderedDict[str, EditedImage] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = self.evictions = 0

    def get(self, key: str) -> EditedImage | None:
        with self._lock:
            image = self._images.get(key)
            if image is None:
                self.misses += 1
                return None
            self._images.move_to_end(key)
            self.hits += 1
            return image

    def put(self, key: str, image: EditedImage) -> None:
        size = len(image.data)
        with self._lock:
            if key in self._images or size > self.max_bytes:
                return
            self._images[key] = image
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, evicted = self._images.popitem(last=False)
                self.bytes -= len(evicted.data)
                self.evictions += 1

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "entries": len(self._images), "bytes": self.bytes, "hits": self.hits, "misses": self.misses,
                "evictions": self.evictions,
            }
