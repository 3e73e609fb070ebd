"""The result cache: edited images by the content address of how they are made, so an identical
request is answered without recomputing it — exact, since the same record gives the same image.

The key is the SHA-256 of the image's provenance record (deployments/workflows/provenance.py): the model, every
parameter that decides the pixels, the image's seed, the SHA-256 of each input file (image(s), mask),
the adapters and their sources, a chain link's earlier links, and the software versions (an upgrade
never answers from an older version's results) — together with the engine's identity
(deployments/checkpoints/identity.py: the checkpoint's files, each used adapter's file and schedule,
each stage's device type, dtype and fast path), which the record does not hold. `guard` and `n` are
not part of it: the cache holds images, a guard judges each one as it is answered.

Held in memory, least recently used first out, bounded in bytes (everything kept: the encoded
images and the records and reports kept with them).
"""

import dataclasses
import hashlib
import threading
import time
from collections import OrderedDict

from deployments.contracts import EditedImage, EditRequest
from deployments.media import metadata
from deployments.workflows import provenance


def result_key(request: EditRequest, seed: int, model_id: str, adapter_sources: dict[str, str], engine: dict) -> str:
    """The content address of the image `request` makes with `seed` on the engine `engine` (engine_identity)."""
    record = provenance.record(request.parameters, model_id, adapter_sources, request.derived_from)
    return key_of(provenance.with_seed(record, seed), engine)


def key_of(record: dict, engine: dict) -> str:
    """The content address of the image a provenance record describes (an EditedImage's `provenance`),
    made on `engine` (engine_identity; of its adapters, those the image used)."""
    used = {**engine, "adapters": {name: engine["adapters"].get(name) for name in record["adapter_sources"]}}
    return hashlib.sha256(metadata.as_text({"image": record, "engine": used}).encode("utf-8")).hexdigest()


def as_cached(image: EditedImage) -> EditedImage:
    """What the cache keeps of an image: nothing of the request it was made for, nor of the work that made
    it (a hit ran no model forward: it reports no step-cache counts)."""
    return dataclasses.replace(image, request_id="", timings={}, guard=None, result_cache=None, cache=None)


def held_bytes(image: EditedImage) -> int:
    """What keeping `image` costs: its encoded bytes and the records kept with it."""
    records = (record for record in (image.provenance, image.quality) if record is not None)
    return len(image.data) + sum(len(metadata.as_text(record).encode("utf-8")) for record in records)


class ResultCache:
    """Images by key, at most `max_bytes` of them (an image larger than that is not kept)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self._images: OrderedDict[str, tuple[EditedImage, int]] = OrderedDict()  # key -> (image, held_bytes)
        self._lock = threading.Lock()
        self.hits = self.misses = self.evictions = 0

    def get(self, key: str) -> EditedImage | None:
        with self._lock:
            held = self._images.get(key)
            if held is None:
                self.misses += 1
                return None
            self._images.move_to_end(key)
            self.hits += 1
            return held[0]

    def put(self, key: str, image: EditedImage) -> None:
        size = held_bytes(image)
        with self._lock:
            if key in self._images or size > self.max_bytes:
                return
            self._images[key] = (image, size)
            self.bytes += size
            while self.bytes > self.max_bytes:  # each entry's size as counted when it came in: no record is encoded twice
                _, (_, evicted_size) = self._images.popitem(last=False)
                self.bytes -= evicted_size
                self.evictions += 1

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "entries": len(self._images), "bytes": self.bytes, "hits": self.hits, "misses": self.misses,
                "evictions": self.evictions,
            }


class Reachability:
    """When to call a shared cache: after a call that failed or timed out, calls are skipped (each one a
    miss) for `pause_s`, so a cache that is down costs one timeout per pause, not one per image."""

    def __init__(self, pause_s: float = 30.0):
        self.pause_s = pause_s
        self._skip_until = 0.0

    @property
    def worth_calling(self) -> bool:
        return time.monotonic() >= self._skip_until

    def failed(self) -> None:
        self._skip_until = time.monotonic() + self.pause_s
