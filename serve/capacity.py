"""Whether each stage can serve, as the ingress sees it: from Serve's deployment status (the state of
each stage and of its replicas) and Ray's actor table (where a replica waits).

A stage that lost its replica normally has a replacement starting within seconds, and requests wait
for it (their calls are made again: serve/stage_calls.py). But when no node has room for the
replacement — its replica actors all wait, unplaced (Ray's PENDING_CREATION with no worker process),
for longer than PLACEMENT_GRACE_S, and the cluster's free resources can't hold one replica of the
stage (a replica whose worker is still being set up, say installing its runtime environment, has
its node's resources) — waiting would only end at each request's deadline
(a 504). Such a stage has no capacity: new requests, and requests waiting on it, get a fast 503 with
Retry-After, and /healthz says which stage and why, until a replica runs again (a node joined, or
another stage's replica left room).

Checked every CHECK_S in a background task: one call to Serve's controller, one to Ray's GCS.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import ray
import ray._private.state
from ray import serve

from deployments.errors import OverloadedError

logger = logging.getLogger(__name__)

STAGES = {"encode": "Encoder", "denoise": "Denoiser", "decode": "Decoder"}  # stage -> its deployment
# Serve's deployment states in which a stage can take requests (or start a replica for one).
SERVING_STATES = ("HEALTHY", "UPSCALING", "DOWNSCALING")
# A stage in another state (UNHEALTHY: a replica was lost; UPDATING) still serves while it has a
# replica running or one starting: requests wait for it, and a lost replica's calls are made again.
SERVING_REPLICA_STATES = ("RUNNING", "STARTING")
CHECK_S = 2.0
PLACEMENT_GRACE_S = 10.0  # a replica actor scheduled normally leaves PENDING_CREATION far sooner
RETRY_AFTER_S = 10  # what a 503 for no capacity tells clients: a node may take a while to join


class StageCapacity:
    """The ingress's view of its app's stages, refreshed by `watch`."""

    def __init__(self, app: str, demands: dict[str, dict[str, float]] | None = None):
        self.app = app
        self.demands = demands or {}  # stage -> the resources one of its replicas asks for
        self.states: dict[str, tuple[str, dict[str, int]]] = {}  # deployment -> (status, replicas by state)
        self.unplaceable: dict[str, str] = {}  # stage -> why it has no replica and none can be placed
        self._waiting_since: dict[str, float] = {}  # stage -> since when it has had no running replica, only unplaced ones
        self._changed = asyncio.Event()  # set whenever `unplaceable` gains a stage

    async def watch(self) -> None:
        """Refreshes the view every CHECK_S, for as long as the ingress lives; a failed check keeps the
        last view (never an error of its own)."""
        while True:
            try:
                self.update(*await asyncio.to_thread(observe, self.app))
            except Exception as e:
                logger.warning("could not read the stages' status: %r", e)
            await asyncio.sleep(CHECK_S)

    def update(
        self, states: dict[str, tuple[str, dict[str, int]]], unplaced: dict[str, int], available: dict[str, float],
        now: float | None = None,
    ) -> None:
        """The view from Serve's `states`, the number of `unplaced` replica actors of each deployment and
        the cluster's `available` resources."""
        now = time.monotonic() if now is None else now
        self.states = states
        unplaceable = {}
        for stage, deployment in STAGES.items():
            _, replicas = states.get(deployment, ("", {}))
            demand = self.demands.get(stage, {})
            fits = all(available.get(resource, 0.0) >= amount for resource, amount in demand.items())
            if replicas.get("RUNNING", 0) == 0 and unplaced.get(deployment, 0) > 0 and not fits:
                since = self._waiting_since.setdefault(stage, now)
                if now - since >= PLACEMENT_GRACE_S:
                    unplaceable[stage] = (
                        f"the {deployment} stage has no running replica and Ray can place none of its {unplaced[deployment]} "
                        f"waiting replica(s): the cluster lacks the resources one asks for ({demand})"
                    )
            else:
                self._waiting_since.pop(stage, None)
        if set(unplaceable) - set(self.unplaceable):
            logger.warning("no capacity: %s", unplaceable)
            self._changed.set()
            self._changed = asyncio.Event()
        self.unplaceable = unplaceable

    def refuse_if_unplaceable(self, stage: str | None = None) -> None:
        """A fast 503 (OverloadedError) when `stage` (any stage, if None) has no capacity."""
        why = [reason for name, reason in self.unplaceable.items() if stage in (None, name)]
        if why:
            raise NoCapacityError(f"no capacity: {'; '.join(why)}; retry later")

    async def serving(self, stage: str, start: Callable[[], Awaitable]) -> Any:
        """`start()`'s work (a call to `stage`, made only if the stage has capacity), unless the stage
        comes to have none while it waits: then a fast 503 instead of a wait until the request's deadline."""
        self.refuse_if_unplaceable(stage)
        task = asyncio.ensure_future(start())
        try:
            while True:
                changed = asyncio.ensure_future(self._changed.wait())
                try:
                    await asyncio.wait({task, changed}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    changed.cancel()
                if task.done():
                    return task.result()
                self.refuse_if_unplaceable(stage)
        finally:
            if not task.done():  # refused, or the caller was cancelled: the work stops before we go on
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task


class NoCapacityError(OverloadedError):
    """A stage has no replica and none can be placed (HTTP 503; a node may take a while to join)."""

    retry_after_s = RETRY_AFTER_S


def serving(state: str, replicas: dict[str, int]) -> bool:
    """Whether a stage in Serve's `state`, with these replicas, can serve."""
    return state in SERVING_STATES or any(replicas.get(name, 0) > 0 for name in SERVING_REPLICA_STATES)


def observe(app: str) -> tuple[dict[str, tuple[str, dict[str, int]]], dict[str, int], dict[str, float]]:
    """Each stage deployment's Serve status and its replicas by state, how many of its replica actors
    wait unplaced (no worker process yet), and the cluster's free resources."""
    deployments = serve.status().applications[app].deployments
    states = {
        name: (deployments[name].status.value, {str(getattr(k, "value", k)): n for k, n in deployments[name].replica_states.items()})
        for name in STAGES.values()
    }
    unplaced: dict[str, int] = {}
    for actor in ray._private.state.actors(actor_state_name="PENDING_CREATION").values():
        deployment = actor["ActorClassName"].removeprefix(f"ServeReplica:{app}:")
        # no worker process yet: not placed (its `Address` names a node even so)
        if deployment in STAGES.values() and not actor["Pid"]:
            unplaced[deployment] = unplaced.get(deployment, 0) + 1
    return states, unplaced, ray.available_resources()
