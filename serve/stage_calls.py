"""One edit's way through the stage deployments, each call watched and re-run once if a replica is lost.

The ingress waits for every stage's result itself, as an object ref, before it calls the next stage
(the tensors still go replica to replica through the object store; nothing is fetched here). Handing
a stage an upstream response that is still running would leave a failure of that upstream to Ray
Serve's router, which takes an upstream `ActorUnavailableError` (a node dying, not yet declared
dead) for its own replica being unavailable and re-routes the downstream call forever.

Every stage is deterministic for a given request and seed, so a call whose replica died (or was
unreachable, or stopped its engine) is simply made again, once; Serve routes it to another replica,
or to the replacement it starts. If the call failed because its input was lost with a dead node's
object store (Ray's ObjectLostError family), the upstream stage makes that input again first.
"""

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable

from ray import ObjectRef
from ray.exceptions import ObjectLostError, RayActorError
from ray.experimental import get_object_locations
from ray.serve.handle import DeploymentHandle, DeploymentResponse

from deployments import metrics
from deployments.contracts import EditedImage, EditRequest
from deployments.errors import EngineStoppedError
from deployments.workflows.guards import judge, retry_seed
from serve.capacity import StageCapacity
from serve.errors import caused_by
from serve.result_cache import CachedResults
from serve.stage_protocol import ACCEPTED

logger = logging.getLogger(__name__)

# A replica died or could not be reached (RayActorError: ActorDiedError, ActorUnavailableError), a
# replica's engine stopped, or a result was lost with its node: another replica can do the work.
REPLICA_LOST = (RayActorError, EngineStoppedError, ObjectLostError)


async def finished(response: DeploymentResponse) -> ObjectRef:
    """The call's result as an object ref once it exists, or the call's error. Large results stay in
    the object store of the node that made them; small ones and errors are held here (the caller owns
    them), so reading one of those costs nothing and tells whether the call failed."""
    try:
        ref = await response._to_object_ref()
        await ref._ready()
        if not get_object_locations([ref])[ref]["node_ids"]:
            await ref  # raises the call's error, if it failed
        return ref
    except BaseException:
        cancel(response)
        raise


def cancel(*responses) -> None:
    """Cancels every response given: cancelling one doesn't cancel the responses it was given as
    inputs, and one that already failed re-raises its error on cancel (ignored: it is done)."""
    for response in responses:
        try:
            response.cancel()
        except Exception:
            pass


class StagedEdit:
    """One request through Encoder -> Denoiser (once per seed) -> Decoder; `retried` lists the stages
    whose call had to be made again."""

    def __init__(
        self, encoder: DeploymentHandle, denoiser: DeploymentHandle, decoder: DeploymentHandle, request: EditRequest,
        results: CachedResults | None = None, capacity: StageCapacity | None = None,
    ):
        self.encoder, self.denoiser, self.decoder = encoder, denoiser, decoder
        self.request = request
        self.results = results  # the result cache, if on
        self.capacity = capacity  # which stages can't serve (serve/capacity.py): their calls end in a fast 503
        self.retried: list[str] = []
        self._encoding: asyncio.Task | None = None  # shared by the request's images
        self._encoded_again = False

    async def images(self, seeds: tuple[int, ...]) -> list[EditedImage]:
        tasks = [asyncio.ensure_future(self.image(seed)) for seed in seeds]
        try:
            return list(await asyncio.gather(*tasks))
        finally:  # one image failed, the deadline came or the client left: stop the others' work
            for task in tasks:
                task.cancel()
            self._stop_encoding()

    async def image(self, seed: int) -> EditedImage:
        return await self.guarded(await self.made(seed), seed)

    async def made(self, seed: int) -> EditedImage:
        """The image of `seed`, from the result cache if it is on and has it."""
        if self.results is None:
            return await self._made(seed)
        return await self.results.made(self.request, seed, lambda: self._made(seed))

    async def _made(self, seed: int) -> EditedImage:
        return await (await self.call("decode", self.decoder.decode.remote, lambda again: self.latents(seed, again)))

    async def guarded(self, edited: EditedImage, seed: int) -> EditedImage:
        """`edited` (the image of `seed`) with the request's guard's verdict; made again with the next seed
        if the guard says so. Raises GuardFailedError if it fails the image."""
        guard = self.request.parameters.guard
        if guard is None:
            return edited
        verdict = judge(guard, edited.quality)
        if verdict is None:  # action retry
            edited = await self.made(retry_seed(seed, self.request.parameters.n))
            verdict = judge(guard, edited.quality, first_seed=seed)
        return dataclasses.replace(edited, guard=verdict.as_dict())

    async def decoded(self, latents) -> EditedImage:
        """The Decoder's image of `latents` (a value here, as a stream's previews and result are)."""
        return await (await self.call("decode", self.decoder.decode.remote, _given(latents)))

    async def latents(self, seed: int, again: bool = False) -> ObjectRef:
        return await self.call("denoise", lambda conditioning: self.denoiser.denoise.remote(conditioning, seed), self.conditioning, again)

    async def conditioning(self, again: bool = False) -> ObjectRef:
        """The request's encoding; `again`: made anew because the first was lost (once, for all its images)."""
        if self._encoding is None or (again and not self._encoded_again):
            self._encoded_again = again
            self._encoding = asyncio.ensure_future(self.call("encode", self.encoder.encode.remote, _given(self.request)))
        return await asyncio.shield(self._encoding)

    async def denoising_events(self, seed: int, previews: int):
        """The Denoiser's event stream for `seed` (serve/stages.py: ACCEPTED, steps, previews, the
        latents); if its replica is lost midway, the denoising starts again on another, once (its steps
        are counted again from 1)."""
        again = False
        try:
            for attempt in (1, 2):
                conditioning = await self.conditioning(again)
                steps = self.denoiser.options(stream=True).denoise_stream.remote(conditioning, seed, previews)
                try:
                    async for event in steps:
                        if attempt == 1 or event != ACCEPTED:
                            yield event
                    return
                except Exception as e:
                    if attempt == 2 or not caused_by(e, REPLICA_LOST):
                        raise
                    self._lost("denoise", e)
                    again = caused_by(e, ObjectLostError)
                finally:
                    cancel(steps)
        finally:  # refused, failed, timed out, or the client left
            self._stop_encoding()

    async def call(self, stage: str, call: Callable[..., DeploymentResponse], made: Callable[[bool], Awaitable], again: bool = False) -> ObjectRef:
        """`call(input)` for the input `made(again)` gives, watched; made again once after a replica loss
        (its input made anew too if the loss took it)."""
        source = await made(again)
        try:
            return await self._serving(stage, lambda: finished(call(source)))
        except Exception as e:
            if not caused_by(e, REPLICA_LOST):
                raise
            self._lost(stage, e)
            source = await made(caused_by(e, ObjectLostError))
            return await self._serving(stage, lambda: finished(call(source)))

    async def _serving(self, stage: str, start: Callable[[], Awaitable]) -> ObjectRef:
        """`start()`'s call, or a fast 503 (before the call is made, or once it waits) when `stage` has
        no replica and none can be placed."""
        return await (start() if self.capacity is None else self.capacity.serving(stage, start))

    def _stop_encoding(self) -> None:
        if self._encoding is not None:
            self._encoding.cancel()  # nothing if it is done

    def _lost(self, stage: str, error: Exception) -> None:
        logger.warning("request %s: the %s call lost its replica (%r); calling again", self.request.request_id, stage, error)
        self.retried.append(stage)
        metrics.STAGE_RETRIES.inc(stage=stage)


def _given(value) -> Callable[[bool], Awaitable]:
    """An input that is a value here: nothing can lose it."""

    async def made(again: bool):
        return value

    return made
