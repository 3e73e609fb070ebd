"""The ingress's view of whether each stage can serve (serve/capacity.py), from Serve's status and
Ray's actor table as they read when a stage's replica can't be placed. The real thing, on a
multi-node cluster: tests/cluster/test_multi_node.py."""

import asyncio

import pytest

from serve.capacity import PLACEMENT_GRACE_S, NoCapacityError, StageCapacity

RUNNING = {"Encoder": ("HEALTHY", {"RUNNING": 1}), "Denoiser": ("HEALTHY", {"RUNNING": 1}), "Decoder": ("HEALTHY", {"RUNNING": 1})}
LOST = {**RUNNING, "Denoiser": ("UNHEALTHY", {"STARTING": 1})}  # its node died; the replacement waits


def test_a_stage_whose_replacement_stays_unplaced_has_no_capacity_after_the_grace():
    capacity = StageCapacity("edit")
    capacity.update(LOST, {"Denoiser": 1}, now=100.0)
    capacity.refuse_if_unplaceable()  # scheduling may take a moment: not yet
    capacity.update(LOST, {"Denoiser": 1}, now=100.0 + PLACEMENT_GRACE_S)
    with pytest.raises(NoCapacityError, match="the Denoiser stage has no running replica and Ray can place none") as refused:
        capacity.refuse_if_unplaceable()
    assert refused.value.status == 503 and refused.value.retry_after_s >= 5
    capacity.refuse_if_unplaceable("encode")  # the other stages serve
    capacity.update(RUNNING, {}, now=200.0)  # a node joined: it runs again
    capacity.refuse_if_unplaceable()


def test_a_replica_starting_on_a_node_is_not_a_lack_of_capacity():
    capacity = StageCapacity("edit")
    for now in (0.0, 60.0, 600.0):  # placed, loading its model for minutes: requests wait for it
        capacity.update(LOST, {}, now=now)
    capacity.refuse_if_unplaceable()


def test_a_call_waiting_on_a_stage_that_loses_its_capacity_ends_at_once():
    async def scenario():
        capacity = StageCapacity("edit")
        never = asyncio.get_running_loop().create_future()  # a call Serve's router holds until a replica exists
        waiting = asyncio.ensure_future(capacity.serving("denoise", never))
        await asyncio.sleep(0)
        capacity.update(LOST, {"Denoiser": 1}, now=0.0)
        capacity.update(LOST, {"Denoiser": 1}, now=PLACEMENT_GRACE_S)
        with pytest.raises(NoCapacityError):
            await asyncio.wait_for(waiting, 5)
        assert never.cancelled()  # the call is given up, not left waiting
        assert await capacity.serving("encode", asyncio.sleep(0, result="encoded")) == "encoded"

    asyncio.run(scenario())
