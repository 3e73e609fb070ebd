"""Admission policy: FIFO within a bucket, token and row budgets, aging across buckets, fallback mode."""

from dataclasses import dataclass

from deployments.admission import AdmissionPolicy


@dataclass(eq=False)
class R:
    name: str
    bucket: str = "a"
    rows: int = 2
    tokens: int = 100
    waited_steps: int = 0


POLICY = AdmissionPolicy(token_budget=400, max_batch_rows=6, max_wait_steps=5)


def names(requests):
    return [r.name for r in requests]


def test_admits_fifo_within_budget_and_rows():
    waiting = [R("1"), R("2"), R("3"), R("4")]
    assert names(POLICY.admit(waiting, [])) == ["1", "2", "3"]  # 6 rows max
    assert names(POLICY.admit(waiting, [R("x", tokens=250)])) == ["1"]  # 400-token budget


def test_only_the_active_bucket_joins():
    waiting = [R("b1", bucket="b"), R("a1"), R("b2", bucket="b"), R("a2")]
    assert names(POLICY.admit(waiting, [R("running")])) == ["a1", "a2"]
    assert names(POLICY.admit(waiting, [])) == ["b1", "b2"]  # empty batch: the oldest request's bucket


def test_strict_fifo_stops_at_the_first_that_does_not_fit():
    waiting = [R("big", tokens=350), R("small", tokens=10)]
    assert names(POLICY.admit(waiting, [R("running", tokens=100)])) == []


def test_an_oversized_request_runs_alone():
    assert names(POLICY.admit([R("huge", tokens=10_000, rows=9)], [])) == ["huge"]


def test_aging_drains_the_active_bucket_for_a_starving_one():
    starving = R("b", bucket="b", waited_steps=5)
    waiting = [starving, R("a-new")]
    assert POLICY.admit(waiting, [R("running")]) == []  # stop feeding bucket a
    assert names(POLICY.admit(waiting, [])) == ["b"]  # then bucket b goes first


def test_young_other_bucket_does_not_block():
    assert names(POLICY.admit([R("b", bucket="b", waited_steps=4), R("a1")], [R("running")])) == ["a1"]


def test_whole_request_batching_admits_only_into_an_empty_batch():
    policy = AdmissionPolicy(token_budget=400, max_batch_rows=6, max_wait_steps=5, continuous=False)
    assert policy.admit([R("1")], [R("running")]) == []
    assert names(policy.admit([R("1"), R("2")], [])) == ["1", "2"]
