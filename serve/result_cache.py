"""The result cache online (deployments/workflows/result_cache.py): one `ResultCache` deployment, shared by the
ingress replicas, holds the images; the ingress looks each image up before it calls the stages and
stores what they made. A cache that can't be reached, or answers slower than `timeout_s`, never fails or holds up an edit:
the edit is made (or answered) as if the cache were off, and the problem logged.
"""

import asyncio
import dataclasses
import logging
import time

import ray.util.metrics
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments import metrics
from deployments.contracts import EditedImage, EditRequest
from deployments.workflows.result_cache import Reachability, ResultCache, as_cached, result_key
from serve.settings import ResultCacheSettings

logger = logging.getLogger(__name__)


@serve.deployment(name="ResultCache", ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=256)
class ResultCacheDeployment:
    """The images, in this replica's memory (keep one replica: each would hold a cache of its own)."""

    def __init__(self, settings: ResultCacheSettings, served_name: str):
        metrics.bind(ray.util.metrics)
        self.cache = ResultCache(settings.max_bytes)
        self.model = served_name

    def get(self, key: str) -> EditedImage | None:
        image = self.cache.get(key)
        metrics.RESULT_CACHE_LOOKUPS.inc(model=self.model, outcome="miss" if image is None else "hit")
        return image

    def put(self, key: str, image: EditedImage) -> None:
        self.cache.put(key, image)
        metrics.RESULT_CACHE_BYTES.set(self.cache.bytes, model=self.model)

    def stats(self) -> dict[str, int]:
        return self.cache.stats()


@dataclasses.dataclass(frozen=True)
class CachedResults:
    """The ingress's side of the cache: what a request's image is keyed by, and the calls."""

    handle: DeploymentHandle
    model_id: str
    adapter_sources: dict[str, str]
    engine: dict  # engine_identity: how the stages make images (deployments/checkpoints/identity.py)
    timeout_s: float  # a cache call slower than this is a miss (or a store skipped)
    reachability: Reachability = dataclasses.field(default_factory=Reachability, compare=False)

    async def made(self, request: EditRequest, seed: int, make) -> EditedImage:
        """The image of `request` with `seed`: the cached one, or `make()`'s, then cached. Its timings
        gain `result_cache_lookup`, its entry `result_cache` (hit or miss)."""
        started = time.time()
        key = result_key(request, seed, self.model_id, self.adapter_sources, self.engine)
        cached = await self._call("lookup", self.handle.get, key)
        lookup = {"result_cache_lookup": time.time() - started}
        if cached is not None:
            return dataclasses.replace(cached, request_id=request.request_id, timings=lookup, result_cache="hit")
        edited = await make()
        await self._call("store", self.handle.put, key, as_cached(edited))
        return dataclasses.replace(edited, timings={**lookup, **edited.timings}, result_cache="miss")

    async def _call(self, what: str, method, *args):
        """The cache's answer, or None when it failed, was slower than `timeout_s` or is being skipped
        after a failure: the cache is an optimisation, never a reason for an edit to fail or wait."""
        if not self.reachability.worth_calling:
            return None
        response = method.remote(*args)
        try:
            return await asyncio.wait_for(response, self.timeout_s)
        except Exception as e:
            response.cancel()  # not left queued in Serve's router for a cache that may never answer
            self.reachability.failed()
            logger.warning("result cache %s failed (%r); going on without the cache for %.0fs", what, e, self.reachability.pause_s)
            return None
