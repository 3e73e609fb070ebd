"""The private (underscore) and internal Ray APIs the project leans on, listed in one place: a Ray
upgrade that changes one fails here, by name, before the fault tests fail for reasons that are
harder to read."""

import inspect

import pytest
from ray import ObjectRef
from ray.experimental import get_object_locations
from ray.serve.handle import DeploymentResponse
from ray.util.metrics import Counter

# (owner, attribute, the parameters we pass, by name) — who uses it
USED = [
    (DeploymentResponse, "_to_object_ref", ("self",)),  # serve/stage_calls.py: a stage's result as an object ref
    (ObjectRef, "_ready", ("self",)),  # ... waited for without fetching it
    (Counter, "_record", ("self", "value", "tags")),  # deployments/metrics.py: a counter's series started at 0
]


@pytest.mark.parametrize("owner, name, parameters", USED, ids=[f"{o.__name__}.{n}" for o, n, _ in USED])
def test_the_private_ray_apis_we_use_still_take_what_we_pass(owner, name, parameters):
    function = getattr(owner, name, None)
    assert function is not None, f"{owner.__name__}.{name} is gone"
    if inspect.isfunction(function):  # ObjectRef is compiled: its methods have no Python signature
        assert tuple(inspect.signature(function).parameters)[: len(parameters)] == parameters


def test_get_object_locations_names_the_nodes_holding_an_object():
    """serve/stage_calls.py reads `node_ids` (empty: the object is held by its owner, the ingress)."""
    assert tuple(inspect.signature(get_object_locations).parameters)[:1] == ("obj_refs",)
    assert "node_ids" in inspect.getdoc(get_object_locations)  # the documented key of each object's entry


def test_the_actor_table_says_which_replicas_wait_unplaced():
    """serve/capacity.py lists PENDING_CREATION actors from the GCS (no dashboard needed) and reads each
    one's class name and process id (0 until placed)."""
    import ray._private.state

    assert "actor_state_name" in inspect.signature(ray._private.state.actors).parameters
    source = inspect.getsource(ray._private.state.GlobalState._gen_actor_info)
    assert all(f'"{key}"' in source for key in ("ActorClassName", "Pid"))
