"""Admission policy: oldest first across shapes, token/row/bucket budgets, backfill, aging, fallback mode."""

from dataclasses import dataclass

from deployments.batching.admission import AdmissionPolicy


@dataclass(eq=False)
class R:
    name: str
    bucket: str = "a"
    rows: int = 2
    tokens: int = 100
    waited_steps: int = 0
    ready: bool = True
    solo: bool = False


POLICY = AdmissionPolicy(token_budget=400, max_batch_rows=6, max_wait_steps=5)


def names(requests):
    return [r.name for r in requests]


def test_admits_oldest_first_within_budget_and_rows():
    waiting = [R("1"), R("2"), R("3"), R("4")]
    assert names(POLICY.admit(waiting, [])) == ["1", "2", "3"]  # 6 rows max
    assert names(POLICY.admit(waiting, [R("x", tokens=250)])) == ["1"]  # 400-token budget


def test_several_shapes_share_a_step():
    waiting = [R("b1", bucket="b"), R("a1"), R("c1", bucket="c", rows=1)]
    assert names(POLICY.admit(waiting, [R("running")])) == ["b1", "a1"]  # 6 rows: c1 does not fit
    assert names(POLICY.admit(waiting, [R("running", rows=1)])) == ["b1", "a1", "c1"]


def test_buckets_per_step_are_capped():
    one_shape = AdmissionPolicy(token_budget=10_000, max_batch_rows=100, max_wait_steps=5, max_buckets_per_step=1)
    waiting = [R("b1", bucket="b"), R("a1"), R("b2", bucket="b"), R("a2")]
    assert names(one_shape.admit(waiting, [R("running")])) == ["a1", "a2"]  # the running shape only
    assert names(one_shape.admit(waiting, [])) == ["b1", "b2"]  # empty batch: the oldest request's shape


def test_a_younger_request_backfills_room_an_older_one_does_not_fit():
    waiting = [R("big", tokens=350), R("small", tokens=10)]
    assert names(POLICY.admit(waiting, [R("running", tokens=100)])) == ["small"]


def test_nobody_passes_a_starving_request():
    waiting = [R("big", tokens=350, waited_steps=5), R("small", tokens=10)]
    assert POLICY.admit(waiting, [R("running", tokens=100)]) == []  # the batch drains...
    assert names(POLICY.admit(waiting, [])) == ["big", "small"]  # ...then it goes first


def test_aging_drains_the_running_shape_when_shapes_are_capped():
    one_shape = AdmissionPolicy(token_budget=400, max_batch_rows=6, max_wait_steps=5, max_buckets_per_step=1)
    starving = R("b", bucket="b", waited_steps=5)
    assert one_shape.admit([starving, R("a-new")], [R("running")]) == []  # stop feeding shape a
    assert names(one_shape.admit([starving, R("a-new")], [])) == ["b"]  # then shape b goes first
    young = R("b", bucket="b", waited_steps=4)
    assert names(one_shape.admit([young, R("a1")], [R("running")])) == ["a1"]  # a young one does not block


def test_an_oversized_request_runs_alone():
    assert names(POLICY.admit([R("huge", tokens=10_000, rows=9), R("small")], [])) == ["huge"]


def test_whole_request_batching_admits_only_into_an_empty_batch():
    policy = AdmissionPolicy(token_budget=400, max_batch_rows=6, max_wait_steps=5, continuous=False)
    assert policy.admit([R("1")], [R("running")]) == []
    assert names(policy.admit([R("1"), R("2", bucket="b")], [])) == ["1", "2"]


def test_a_request_whose_adapters_are_not_loaded_waits_and_once_starving_blocks_younger_ones():
    loading = R("1", ready=False)
    assert names(POLICY.admit([loading, R("2")], [])) == ["2"]  # it fits nowhere; others pass it
    starving = R("1", ready=False, waited_steps=5)
    assert names(POLICY.admit([starving, R("2")], [R("x")])) == []  # the batch drains until it can load
    assert names(POLICY.admit([R("1", waited_steps=5), R("2")], [])) == ["1", "2"]


def test_a_solo_request_runs_in_steps_of_its_own():
    solo = R("solo", solo=True)
    assert names(POLICY.admit([solo, R("2")], [])) == ["solo"]  # nothing joins it
    assert names(POLICY.admit([R("2")], [solo])) == []  # nor joins it later
    assert names(POLICY.admit([R("1"), solo, R("3")], [])) == ["1", "3"]  # it waits for an empty step
    assert names(POLICY.admit([R("solo", solo=True, waited_steps=5), R("3")], [R("x")])) == []  # and drains the batch
