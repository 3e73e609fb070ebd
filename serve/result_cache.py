"""The result cache online (deployments/workflows/result_cache.py): one `ResultCache` deployment, shared by the
ingress replicas, holds the images; the ingress looks each image up before it calls the stages and
stores what they made. A cache that can't be reached never fails an edit: the edit is made as if
the cache were off (and the problem logged).
"""

import dataclasses
import logging
import time

import ray.util.metrics
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments import metrics
from deployments.contracts import EditedImage, EditRequest
from deployments.workflows.result_cache import ResultCache, as_cached, result_key
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

    async def made(self, request: EditRequest, seed: int, make) -> EditedImage:
        """The image of `request` with `seed`: the cached one, or `make()`'s, then cached. Its timings
        gain `result_cache_lookup`, its entry `result_cache` (hit or miss)."""
        started = time.time()
        key = result_key(request, seed, self.model_id, self.adapter_sources)
        try:
            cached = await self.handle.get.remote(key)
        except Exception as e:  # the cache is an optimisation: its failure is only a miss
            logger.warning("result cache lookup failed (%r); making the image", e)
            cached = None
        lookup = {"result_cache_lookup": time.time() - started}
        if cached is not None:
            return dataclasses.replace(cached, request_id=request.request_id, timings=lookup, result_cache="hit")
        edited = await make()
        try:
            await self.handle.put.remote(key, as_cached(edited))
        except Exception as e:
            logger.warning("result cache store failed (%r)", e)
        return dataclasses.replace(edited, timings={**lookup, **edited.timings}, result_cache="miss")
