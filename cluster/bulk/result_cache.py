"""`--result-cache APP`: the bulk job shares the result cache of a Serve application running in its
cluster (serve/result_cache.py). A row whose image is in the cache is answered from it (its image
written, no stage runs it); every image the job makes is kept there for later rows, jobs and online
requests. The cache is an optimisation: a lookup that fails is a miss, a store that fails is
skipped (both logged).
"""

import functools
import logging
from dataclasses import dataclass

from deployments.contracts import EditedImage
from deployments.workflows.result_cache import as_cached, key_of

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SharedResultCache:
    app: str  # the Serve application whose ResultCache deployment holds the images

    def check(self) -> None:
        """Raises if the application has no result cache to share (before the job starts)."""
        _handle(self.app).stats.remote().result(timeout_s=60)

    def get(self, key: str) -> EditedImage | None:
        try:
            return _handle(self.app).get.remote(key).result(timeout_s=60)
        except Exception as e:
            logger.warning("result cache lookup failed (%r); making the image", e)
            return None

    def put(self, edited: EditedImage) -> None:
        """Keeps `edited` under its provenance record's key."""
        try:
            _handle(self.app).put.remote(key_of(edited.provenance), as_cached(edited)).result(timeout_s=60)
        except Exception as e:
            logger.warning("result cache store failed (%r)", e)


@functools.cache
def _handle(app: str):
    # Imported here: Ray Serve (with FastAPI) costs every read task and stage actor of every job half a
    # second of start-up, and only jobs given --result-cache use it.
    from ray import serve

    return serve.get_deployment_handle("ResultCache", app)
