"""The metrics module: one prefix, fixed labels, recording through whatever backend is bound."""

import time

import pytest

from deployments import metrics


class Recorder:
    """A backend with Ray's metric constructors' and methods' signatures, keeping what it got."""

    def __init__(self):
        self.created, self.records = {}, []
        for kind in ("Counter", "Gauge", "Histogram"):
            setattr(self, kind, self._factory(kind))

    def _factory(self, kind):
        def create(name, description, tag_keys, boundaries=None):
            self.created[name] = (kind, tuple(tag_keys), boundaries)
            record = lambda value, tags: self.records.append((name, value, tags))  # noqa: E731
            return type(kind, (), {"inc": staticmethod(record), "set": staticmethod(record), "observe": staticmethod(record)})()

        return create


@pytest.fixture
def recorder():
    backend = Recorder()
    metrics.bind(backend)
    yield backend
    metrics.bind(None)


def test_names_share_the_prefix_and_are_unique():
    names = [m.name for m in metrics.ALL]
    assert len(set(names)) == len(names)
    assert all(m.kind in ("counter", "gauge", "histogram") for m in metrics.ALL)
    assert all(m.boundaries for m in metrics.ALL if m.kind == "histogram")


def test_unbound_recording_does_nothing_but_still_checks_labels():
    metrics.ERRORS.inc(kind="bad_input")
    with pytest.raises(ValueError, match="takes labels"):
        metrics.ERRORS.inc(route="/")


def test_bound_recording_creates_each_instrument_once(recorder):
    metrics.ERRORS.inc(kind="bad_input")
    metrics.ERRORS.inc(kind="timeout")
    metrics.BATCH_SIZE.observe(4, model="m", stage="encode")
    metrics.HTTP_REQUESTS.inc(route="/healthz", code=200)
    metrics.BULK_ROWS.inc(0, model="m", status="skipped")  # nothing to add: not recorded
    assert recorder.created == {
        "image_edit_errors": ("Counter", ("kind",), None),
        "image_edit_batch_size": ("Histogram", ("model", "stage"), list(metrics.SIZES)),
        "image_edit_http_requests": ("Counter", ("route", "code"), None),
    }
    assert recorder.records == [
        ("image_edit_errors", 1.0, {"kind": "bad_input"}),
        ("image_edit_errors", 1.0, {"kind": "timeout"}),
        ("image_edit_batch_size", 4, {"model": "m", "stage": "encode"}),
        ("image_edit_http_requests", 1.0, {"route": "/healthz", "code": "200"}),  # label values as strings
    ]


def test_a_batch_records_its_size_and_each_items_stage_time(recorder):
    metrics.record_batch("m", "decode", 3, 0.5)
    assert [r for r in recorder.records if r[0] == "image_edit_batch_size"] == [("image_edit_batch_size", 3, {"model": "m", "stage": "decode"})]
    assert [r[1] for r in recorder.records if r[0] == "image_edit_stage_seconds"] == [0.5, 0.5, 0.5]


def test_gauges_are_re_recorded_while_nothing_changes(monkeypatch):
    """Ray drops a gauge from its export soon after its last recording: each process re-records its own."""
    monkeypatch.setattr(metrics, "GAUGE_REFRESH_S", 0.05)
    backend = Recorder()
    metrics.bind(backend)
    try:
        metrics.DENOISE_WAITING.set(3, model="m")
        metrics.DENOISE_WAITING.set(0, model="m")  # the last value is the one kept fresh
        recorded = lambda: [r[1:] for r in backend.records if r[0] == "image_edit_denoise_waiting_requests"]  # noqa: E731
        deadline = time.monotonic() + 10
        while len(recorded()) < 5:
            assert time.monotonic() < deadline, "the gauge was not re-recorded"
            time.sleep(0.01)
        assert recorded()[:5] == [(3, {"model": "m"})] + [(0, {"model": "m"})] * 4
    finally:
        metrics.bind(None)


def test_a_failing_backend_never_fails_the_work(recorder, caplog):
    class Broken(Recorder):
        def _factory(self, kind):
            def create(*args, **kwargs):
                raise RuntimeError("metrics agent unreachable")

            return create

    metrics.bind(Broken())
    metrics.ERRORS.inc(kind="internal")  # logged, not raised
    assert "recording metric errors failed" in caplog.text
