"""The three stage deployments: each wraps the engine's stage class (the same one the bulk jobs use)
with Ray Serve request batching, per-request timings and counters. No stage logic lives here.
"""

import asyncio
import dataclasses
import logging
import time

from ray import serve

from deployments.contracts import Conditioning, EditRequest, Latents
from deployments.decoder import Decoder
from deployments.denoiser import Denoiser
from deployments.encoder import Encoder
from deployments.errors import EditError
from serve.settings import BatchedStage

logger = logging.getLogger(__name__)


class BatchingReplica:
    """Collects concurrent calls into batches (`@serve.batch`) and runs each batch off the event loop,
    so the replica keeps answering health checks and accepting requests while the model works."""

    stage: str  # "encode" | "denoise" | "decode": names this stage's timings

    def __init__(self, batching: BatchedStage):
        self.batches = 0
        self.items = 0
        self._batch.set_max_batch_size(batching.max_batch_size)
        self._batch.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)

    def process(self, items: list) -> list:
        """The engine call for one batch: one result (or EditError) per item."""
        raise NotImplementedError

    async def submit(self, item):
        result = await self._batch(item)
        if isinstance(result, EditError):
            raise result
        return result

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.01)  # real values set per replica in __init__
    async def _batch(self, items: list) -> list:
        started = time.time()
        results = await asyncio.to_thread(self.process, items)
        finished = time.time()
        self.batches += 1
        self.items += len(items)
        return [
            result if isinstance(result, EditError) else _stamp(result, item, self.stage, started, finished)
            for item, result in zip(items, results)
        ]

    def stats(self) -> dict[str, int]:
        """How many batches and items this replica has run."""
        return {"batches": self.batches, "items": self.items}


def _stamp(result, item, stage: str, started: float, finished: float):
    """Copies the item's timings onto the result, adding this stage's queue wait and run time."""
    timings = dict(item.timings)
    timings[f"{stage}_queue"] = max(0.0, started - timings.pop("sent_at", started))
    timings[stage] = finished - started
    timings["sent_at"] = finished
    return dataclasses.replace(result, timings=timings)


@serve.deployment(name="Encoder")
class EncoderDeployment(BatchingReplica):
    stage = "encode"

    def __init__(self, model: str, batching: BatchedStage):
        super().__init__(batching)
        self.engine = Encoder(model)

    def process(self, items: list[EditRequest]) -> list:
        return self.engine.encode_batch(items)

    async def encode(self, request: EditRequest) -> Conditioning:
        return await self.submit(request)


@serve.deployment(name="Denoiser")
class DenoiserDeployment(BatchingReplica):
    """Whole-request batching through the engine's batched denoise. Callers only use `denoise`, so a
    step-level engine loop can replace the batching inside without touching the ingress."""

    stage = "denoise"

    def __init__(self, model: str, batching: BatchedStage):
        super().__init__(batching)
        self.engine = Denoiser(model)

    def process(self, items: list[Conditioning]) -> list:
        return self.engine.denoise(items)

    async def denoise(self, conditioning: Conditioning, seed: int) -> Latents:
        """Denoises `conditioning` with `seed` (one encoding serves all `n` images of a request)."""
        return await self.submit(dataclasses.replace(conditioning, seed=seed))


@serve.deployment(name="Decoder")
class DecoderDeployment(BatchingReplica):
    stage = "decode"

    def __init__(self, model: str, batching: BatchedStage):
        super().__init__(batching)
        self.engine = Decoder(model)

    def process(self, items: list[Latents]) -> list:
        return self.engine.decode_batch(items)

    async def decode(self, latents: Latents):
        return await self.submit(latents)
