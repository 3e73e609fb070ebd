"""The ingress's view of whether each stage can serve (serve/capacity.py), from Serve's status and
Ray's actor table as they read when a stage's replica can't be placed. The real thing, on a
multi-node cluster: tests/cluster/test_multi_node.py."""

import asyncio

import pytest

from serve.capacity import PLACEMENT_GRACE_S, NoCapacityError, StageCapacity

RUNNING = {"Encoder": ("HEALTHY", {"RUNNING": 1}), "Denoiser": ("HEALTHY", {"RUNNING": 1}), "Decoder": ("HEALTHY", {"RUNNING": 1})}
LOST = {**RUNNING, "Denoiser": ("UNHEALTHY", {"STARTING": 1})}  # its node died; the replacement waits
DEMANDS = {"encode": {"CPU": 0.5, "accelerator_type:L4": 0.001}, "denoise": {"CPU": 0.5, "accelerator_type:H100": 0.001}}
NO_H100 = {"CPU": 6.0, "accelerator_type:L4": 2.0}  # what is free: no node of the Denoiser's pool


def test_a_stage_whose_replacement_stays_unplaced_has_no_capacity_after_the_grace():
    capacity = StageCapacity("edit", DEMANDS)
    capacity.update(LOST, {"Denoiser": 1}, NO_H100, now=100.0)
    capacity.refuse_if_unplaceable()  # scheduling may take a moment: not yet
    capacity.update(LOST, {"Denoiser": 1}, NO_H100, now=100.0 + PLACEMENT_GRACE_S)
    with pytest.raises(NoCapacityError, match="the Denoiser stage has no running replica and Ray can place none") as refused:
        capacity.refuse_if_unplaceable()
    assert refused.value.status == 503 and refused.value.retry_after_s >= 5
    capacity.refuse_if_unplaceable("encode")  # the other stages serve
    capacity.update(RUNNING, {}, NO_H100, now=200.0)  # a node joined: it runs again
    capacity.refuse_if_unplaceable()


def test_a_replica_starting_on_a_node_is_not_a_lack_of_capacity():
    capacity = StageCapacity("edit", DEMANDS)
    for now in (0.0, 60.0, 600.0):  # placed, loading its model for minutes: requests wait for it
        capacity.update(LOST, {}, NO_H100, now=now)
    capacity.refuse_if_unplaceable()
    room = {**NO_H100, "accelerator_type:H100": 1.0}  # no worker process yet (its runtime environment is being set up)
    for now in (0.0, 60.0):
        capacity.update(LOST, {"Denoiser": 1}, room, now=now)
    capacity.refuse_if_unplaceable()


def test_a_call_waiting_on_a_stage_that_loses_its_capacity_ends_at_once():
    async def scenario():
        capacity = StageCapacity("edit", DEMANDS)
        never = asyncio.get_running_loop().create_future()  # a call Serve's router holds until a replica exists
        waiting = asyncio.ensure_future(capacity.serving("denoise", lambda: never))
        await asyncio.sleep(0)
        capacity.update(LOST, {"Denoiser": 1}, NO_H100, now=0.0)
        capacity.update(LOST, {"Denoiser": 1}, NO_H100, now=PLACEMENT_GRACE_S)
        with pytest.raises(NoCapacityError):
            await asyncio.wait_for(waiting, 5)
        assert never.cancelled()  # the call is given up, not left waiting
        assert await capacity.serving("encode", lambda: asyncio.sleep(0, result="encoded")) == "encoded"
        calls = []
        with pytest.raises(NoCapacityError):  # refused before the call is made: nothing is left queued
            await capacity.serving("denoise", lambda: calls.append("made") or asyncio.sleep(0))
        assert not calls

    asyncio.run(scenario())


def test_a_stream_refused_while_it_waits_closes_cleanly():
    """A stream's first event awaited through `serving` and cut short: the generator is stopped before
    the caller closes it (closing a generator still running raised, and the 503 became a 500)."""

    async def scenario():
        capacity = StageCapacity("edit", DEMANDS)

        async def events():
            await asyncio.get_running_loop().create_future()  # the Denoiser never accepts it
            yield "accepted"

        steps = events()
        waiting = asyncio.ensure_future(capacity.serving("denoise", steps.__anext__))
        await asyncio.sleep(0)
        capacity.update(LOST, {"Denoiser": 1}, NO_H100, now=0.0)
        capacity.update(LOST, {"Denoiser": 1}, NO_H100, now=PLACEMENT_GRACE_S)
        with pytest.raises(NoCapacityError):
            await waiting
        await steps.aclose()

    asyncio.run(scenario())
