"""`--result-cache APP`: the bulk job shares the result cache of a Serve application running in its
cluster (serve/result_cache.py). A row whose image is in the cache is answered from it (its image
written, no stage runs it); every image the job makes is kept there for later rows, jobs and online
requests. The cache is an optimisation: a lookup that fails or takes longer than `timeout_s` is a
miss, a store that does is skipped (both logged), and after one the cache is skipped for a while
(Reachability): a cache that is down never holds the job up for long.
"""

import functools
import logging
from dataclasses import dataclass, field

from deployments.contracts import EditedImage
from deployments.workflows.result_cache import Reachability, as_cached, key_of

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SharedResultCache:
    app: str  # the Serve application whose ResultCache deployment holds the images
    engine: dict  # engine_identity of the job's stages: part of every key (deployments/checkpoints/identity.py)
    timeout_s: float = 2.0
    reachability: Reachability = field(default_factory=Reachability, compare=False)

    def check(self) -> None:
        """Raises if the application has no result cache to share (before the job starts)."""
        _handle(self.app).stats.remote().result(timeout_s=60)

    def get(self, key: str) -> EditedImage | None:
        return self._call("lookup", "get", key)

    def put(self, edited: EditedImage) -> None:
        """Keeps `edited` under its provenance record's key."""
        self._call("store", "put", key_of(edited.provenance, self.engine), as_cached(edited))

    def _call(self, what: str, method: str, *args):
        if not self.reachability.worth_calling:
            return None
        response = getattr(_handle(self.app), method).remote(*args)
        try:
            return response.result(timeout_s=self.timeout_s)
        except Exception as e:
            response.cancel()  # not left queued for a cache that may never answer
            self.reachability.failed()
            logger.warning("result cache %s failed (%r); going on without the cache for %.0fs", what, e, self.reachability.pause_s)
            return None


@functools.cache
def _handle(app: str):
    # Imported here: Ray Serve (with FastAPI) costs every read task and stage actor of every job half a
    # second of start-up, and only jobs given --result-cache use it.
    from ray import serve

    return serve.get_deployment_handle("ResultCache", app)
