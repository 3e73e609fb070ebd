"""The three stage deployments: each wraps the engine's stage class (the same one the bulk jobs use)
with batching (Ray Serve request batching for the Encoder and Decoder, the engine's step-level loop
for the Denoiser), per-request timings, counters and metrics. No stage logic lives here.
"""

import asyncio
import dataclasses
import time

import ray.util.metrics
from ray import serve

from deployments import metrics
from deployments.batching.admission import AdmissionPolicy
from deployments.batching.denoise_loop import DenoiseLoop
from deployments.checkpoints.loader import model_name
from deployments.contracts import Conditioning, EditedImage, EditRequest, Latents
from deployments.errors import EditError
from deployments.settings.lora import LoraSettings
from deployments.stages.decoder import Decoder
from deployments.stages.denoiser import Denoiser
from deployments.stages.encoder import Encoder
from serve.settings import BatchedStage, DenoiserStage
from serve.stage_protocol import ACCEPTED, ADAPTER_SEPARATOR, DEFAULT_OPTIONS


class BatchingReplica:
    """Collects concurrent calls into batches (`@serve.batch`) and runs each batch off the event loop,
    so the replica keeps answering health checks and accepting requests while the model works."""

    stage: str  # "encode" | "denoise" | "decode": names this stage's timings
    engine_class: type  # the engine's stage class this deployment wraps
    takes_adapters = False  # whether its engine class needs the LoRA settings

    def __init__(self, model: str, batching: BatchedStage, served_name: str | None = None, lora: LoraSettings = LoraSettings()):
        metrics.bind(ray.util.metrics)
        options = {"lora": lora} if self.takes_adapters else {}
        self.engine = self.engine_class(model, fast_path=batching.fast_path, **options)
        self.model_name = served_name or model_name(model)  # the metrics' `model` label
        self.wedged_after_s = batching.wedged_after_s
        self.busy_since: float | None = None  # when the running batch started
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
        started = self.busy_since = time.time()
        try:
            results = await asyncio.to_thread(self.process, items)
        finally:
            self.busy_since = None
        finished = time.time()
        self.batches += 1
        self.items += len(items)
        metrics.BATCH_SIZE.observe(len(items), model=self.model_name, stage=self.stage)
        metrics.record_memory(self.stage)
        return [
            result if isinstance(result, EditError) else _stamp(result, item, self.stage, started, finished, self.model_name)
            for item, result in zip(items, results)
        ]

    def stats(self) -> dict[str, int]:
        """How many batches and items this replica has run."""
        return {"batches": self.batches, "items": self.items}

    def check_health(self) -> None:
        """Serve calls this periodically; raising marks the replica unhealthy and replaces it. A batch
        stuck far beyond any real one means the model (or its device) is wedged."""
        busy_since = self.busy_since
        if busy_since is not None and time.time() - busy_since > self.wedged_after_s:
            raise RuntimeError(f"a {self.stage} batch has been running for over {self.wedged_after_s:.0f}s")


def _stamp(result, item, stage: str, started: float, finished: float, served_name: str):
    """Copies the item's timings onto the result, adding this stage's queue wait and run time (also
    recorded as metrics)."""
    timings = dict(item.timings)
    timings[f"{stage}_queue"] = max(0.0, started - timings.pop("sent_at", started))
    timings[stage] = finished - started
    timings["sent_at"] = finished
    metrics.QUEUE_SECONDS.observe(timings[f"{stage}_queue"], model=served_name, stage=stage)
    metrics.STAGE_SECONDS.observe(timings[stage], model=served_name, stage=stage)
    return dataclasses.replace(result, timings=timings)


@serve.deployment(name="Encoder", **DEFAULT_OPTIONS)
class EncoderDeployment(BatchingReplica):
    stage = "encode"
    engine_class = Encoder
    takes_adapters = True  # their schedulers decide the fewest steps

    def process(self, items: list[EditRequest]) -> list:
        return self.engine.encode_batch(items)

    async def encode(self, request: EditRequest) -> Conditioning:
        return await self.submit(request)


@serve.deployment(name="Denoiser", **DEFAULT_OPTIONS)
class DenoiserDeployment:
    """Runs the engine's continuous-batching loop on its own thread; each call waits for its request
    while the replica's event loop stays free. A call that is cancelled (client gone, deadline hit)
    takes its request out of the batch at the next step boundary.

    LoRA adapters: a call for a request with adapters carries their names as its multiplexed model id
    (`ADAPTER_SEPARATOR`-joined), so Ray Serve routes it to a replica that already read them when one
    exists; reading starts as the call arrives, loading completes at admission (deployments/lora/store.py).
    """

    def __init__(self, model: str, settings: DenoiserStage, served_name: str | None = None, lora: LoraSettings = LoraSettings()):
        metrics.bind(ray.util.metrics)
        self.model_name = served_name or model_name(model)
        denoiser = Denoiser(model, fast_path=settings.fast_path, lora=lora, model_name=self.model_name)
        metrics.start_denoiser_counters(self.model_name, tuple(lora.adapters))
        self.loop = DenoiseLoop(
            denoiser, AdmissionPolicy.from_settings(settings), settings.max_waiting, self.model_name, settings.unhealthy_after_failed_steps
        )
        self.wedged_after_s = settings.wedged_after_s

        async def read_adapters(model_id: str) -> tuple[str, ...]:  # Serve's LRU of ids mirrors what was read here
            names = tuple(model_id.split(ADAPTER_SEPARATOR))
            await asyncio.wrap_future(denoiser.adapters.prefetch(names))
            return names

        self.read_adapters = serve.multiplexed(max_num_models_per_replica=lora.max_loaded)(read_adapters)

    async def _adapters_read(self) -> None:
        """Starts (and awaits) reading the call's adapters, which marks this replica as holding them."""
        model_id = serve.get_multiplexed_model_id()
        if model_id:
            await self.read_adapters(model_id)

    async def denoise(self, conditioning: Conditioning, seed: int) -> Latents:
        """Denoises `conditioning` with `seed` (one encoding serves all `n` images of a request)."""
        await self._adapters_read()
        ticket = self.loop.submit(dataclasses.replace(conditioning, seed=seed))
        latents = await asyncio.wrap_future(ticket.future)  # cancelling this cancels the ticket
        return _stamp(latents, conditioning, "denoise", ticket.admitted_at, time.time(), self.model_name)

    async def denoise_stream(self, conditioning: Conditioning, seed: int, previews: int):
        """Streams a request's denoising: ACCEPTED once it is in the loop (the encoding succeeded and
        the queue had room: the caller may start answering), `{"step", "total"}` after every step,
        `{"preview": Latents}` (the predicted clean latents) after `previews` steps spread over the
        run, then the result."""
        conditioning = dataclasses.replace(conditioning, seed=seed)
        await self._adapters_read()
        events: asyncio.Queue = asyncio.Queue()
        event_loop = asyncio.get_running_loop()

        def on_step(done: int, total: int, preview) -> None:  # on the engine loop's thread
            event_loop.call_soon_threadsafe(events.put_nowait, (done, total, preview))

        ticket = self.loop.submit(conditioning, on_step, previews)
        # The end (result, failure or cancellation) follows the last step's event in the queue.
        ticket.future.add_done_callback(lambda _: event_loop.call_soon_threadsafe(events.put_nowait, None))
        try:
            yield ACCEPTED
            while (event := await events.get()) is not None:
                done, total, preview = event
                yield {"step": done, "total": total}
                if preview is not None:
                    yield {"preview": preview}
            latents = await asyncio.wrap_future(ticket.future)
            yield _stamp(latents, conditioning, "denoise", ticket.admitted_at, time.time(), self.model_name)
        finally:  # the caller went away or the stream ended: leave the batch
            ticket.cancel()

    def stats(self) -> dict:
        """The engine loop's counters, and this replica's id, loaded adapters and adapter loads so far."""
        adapters = self.loop.denoiser.adapters
        return dataclasses.asdict(self.loop.stats) | {
            "replica": serve.get_replica_context().replica_id.unique_id,
            "adapters": list(adapters.installed), "adapter_loads": adapters.loads,
        }

    def check_health(self) -> None:
        """Serve calls this periodically; raising marks the replica unhealthy and replaces it."""
        problem = self.loop.health(self.wedged_after_s)
        if problem is not None:
            raise RuntimeError(problem)

    def __del__(self):
        self.loop.close()


@serve.deployment(name="Decoder", **DEFAULT_OPTIONS)
class DecoderDeployment(BatchingReplica):
    stage = "decode"
    engine_class = Decoder

    def process(self, items: list[Latents]) -> list:
        return self.engine.decode_batch(items)

    async def decode(self, latents: Latents) -> EditedImage:
        return await self.submit(latents)
