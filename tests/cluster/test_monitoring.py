"""Metrics end to end: a real Prometheus (Debian's package, on loopback) scrapes a running local
cluster (`python -m serve`) through the service-discovery file Ray writes, as
cluster/monitoring/prometheus.yml configures it, while the cluster serves a few edits and runs a
small bulk job (two of the edits with LoRA adapters, one replacing the other). Then every metric must have moved as the workload says, and every PromQL
expression of the Grafana dashboard must return data."""

import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests

from cluster.bench.common import served_app
from deployments import metrics
from tests.helpers import image_bytes, random_image
from tests.serve.support import free_port

MONITORING = Path(__file__).resolve().parents[2] / "cluster" / "monitoring"
IMAGE = image_bytes(random_image(64, 64))
EDIT = {"prompt": "make it blue", "num_inference_steps": "2", "size": "64x64"}
BULK_ROWS = 8
# TaylorSeer over EDIT's 2 steps: step 0 computed, step 1 predicted, for each of the 2 guidance rows
CACHE = '{"method": "taylorseer", "cache_interval": 2, "disable_cache_before_step": 1, "max_order": 0}'


@dataclass(frozen=True)
class Prometheus:
    base: str

    def query(self, expr: str) -> list[dict]:
        return self._get("/api/v1/query", {"query": expr})

    def query_range(self, expr: str, start: float, end: float) -> list[dict]:
        return self._get("/api/v1/query_range", {"query": expr, "start": start, "end": end, "step": 5})

    def value(self, expr: str) -> float:
        """An expression's single value now (0 when it has no series)."""
        result = self.query(expr)
        assert len(result) <= 1, (expr, result)
        return float(result[0]["value"][1]) if result else 0.0

    def metric_names(self, pattern: str) -> set[str]:
        return {series["__name__"] for series in self._get("/api/v1/series", {"match[]": f'{{__name__=~"{pattern}"}}'})}

    def _get(self, path: str, params: dict):
        body = requests.get(self.base + path, params=params, timeout=30).json()
        assert body["status"] == "success", (params, body)
        return body["data"]["result"] if isinstance(body["data"], dict) else body["data"]


@contextlib.contextmanager
def prometheus(root: Path):
    binary = shutil.which("prometheus")
    assert binary, "Prometheus is not installed: `make test` installs Debian's prometheus package"
    port = free_port()
    log = open(root / "prometheus.log", "w")
    process = subprocess.Popen(
        [binary, f"--config.file={MONITORING / 'prometheus.yml'}", f"--storage.tsdb.path={root / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (root / "prometheus.log").read_text()[-3000:]
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{base}/-/ready", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, "Prometheus did not become ready"
            time.sleep(0.5)
        yield Prometheus(base)
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


# One series of the first edit per process that records it: the ingress and each stage's replica.
FIRST_EDIT_SERIES = (
    "sum(ray_image_edit_request_seconds_count)",
    *(f'sum(ray_image_edit_stage_seconds_count{{stage="{stage}"}})' for stage in ("encode", "denoise", "decode")),
)


def run_workload(base: str, model: str, root: Path, prom: Prometheus) -> None:
    """Two refusals and seven edits (eight images; one step-cached, one guarded, one answered from the
    result cache), then a bulk job of BULK_ROWS rows on the same
    cluster. The first edit's metrics, from every process that records them, reach Prometheus before
    the rest are sent: rate() only sees increases of a series Prometheus already had."""
    post = lambda files, data: requests.post(f"{base}/v1/images/edits", files=files, data=data, timeout=120)  # noqa: E731
    image = {"image": ("in.png", IMAGE, "image/png")}
    assert post(image, {**EDIT, "prompt": ""}).status_code == 400  # refused while parsing
    assert post(image, EDIT).status_code == 200
    for recorded_by_each_process in FIRST_EDIT_SERIES:  # each replica exports on its own clock
        wait_for(prom, recorded_by_each_process, 1)
    thin = {"image": ("thin.png", image_bytes(random_image(400, 16)), "image/png")}
    assert post(thin, {**EDIT, "size": "auto"}).status_code == 400  # refused by the Encoder
    for data in ({**EDIT, "seed": "1", "cache": CACHE}, {**EDIT, "n": "2"}):
        assert post(image, data).status_code == 200
    for adapter in ("style", "detail"):  # one adapter loaded at a time: the second load evicts the first
        assert post(image, {**EDIT, "model": adapter}).status_code == 200
    guarded = post(image, {**EDIT, "seed": "5", "guard": '{"max_changed_fraction": 1}'}).json()["data"][0]
    assert guarded["guard"]["verdict"] == "passed" and guarded["result_cache"] == "miss"
    assert post(image, {**EDIT, "seed": "5"}).json()["data"][0]["result_cache"] == "hit"  # no stage runs it

    (root / "in.png").write_bytes(IMAGE)
    pq.write_table(pa.table({
        "id": [f"row-{i}" for i in range(BULK_ROWS)], "image": ["in.png"] * BULK_ROWS,
        "instruction": ["make it blue"] * BULK_ROWS, "seed": list(range(BULK_ROWS)),
    }), root / "manifest.parquet")
    command = [sys.executable, "-m", "cluster.bulk", "--manifest", str(root / "manifest.parquet"), "--output",
               str(root / "out"), "--model", model, "--num-inference-steps", "2", "--size", "64x64", "--encoder-batch-size", "4"]
    # RAY_ADDRESS=auto: the job joins the cluster `python -m serve` started, as `ray job submit` would.
    job = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, "RAY_ADDRESS": "auto"})
    assert job.returncode == 0, job.stdout[-2000:] + job.stderr[-3000:]
    wait_for(prom, 'sum(ray_image_edit_bulk_rows_total{status="ok"})', BULK_ROWS)


def wait_for(prom: Prometheus, expr: str, at_least: float) -> None:
    deadline = time.monotonic() + 90  # Ray exports every few seconds; Prometheus scrapes every 5
    while prom.value(expr) < at_least:
        assert time.monotonic() < deadline, f"{expr} never reached {at_least} in Prometheus"
        time.sleep(1)


@dataclass(frozen=True)
class Observed:
    prom: Prometheus
    started: float  # when the cluster started
    idle_since: float  # when the last traffic ended


@pytest.fixture(scope="module")
def observed(tiny_checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("monitoring")
    model = tiny_checkpoints["edit-plus"]
    started = time.time()
    lora = {"max_loaded": 1, "max_per_request": 1}  # the checkpoint's own adapters, one loaded at a time
    with served_app(model, lora=lora, result_cache=True) as app, prometheus(root) as prom:
        run_workload(app.base, model, root, prom)
        idle_since = time.time()
        time.sleep(12)  # two more scrapes, so that every rate() has two samples after the last change
        yield Observed(prom, started, idle_since)


EXPECTED = {  # PromQL -> value after the workload (model label: the checkpoint directory's name)
    'sum(ray_image_edit_http_requests_total{route="/v1/images/edits", code="400"})': 2,
    'sum(ray_image_edit_http_requests_total{route="/v1/images/edits", code="200"})': 7,
    'sum(ray_image_edit_errors_total{kind="bad_input"})': 2,
    'sum(ray_image_edit_images_total{model="edit-plus", status="ok"})': 8,
    'sum(ray_image_edit_images_total{model="edit-plus", status="error"})': 1,  # the one the Encoder refused
    "sum(ray_image_edit_request_seconds_count)": 7,
    # The cache hit runs no stage.
    'sum(ray_image_edit_queue_seconds_count{stage="encode"})': 6,
    'sum(ray_image_edit_queue_seconds_count{stage="denoise"})': 7,
    'sum(ray_image_edit_queue_seconds_count{stage="decode"})': 7,
    'sum(ray_image_edit_stage_seconds_count{stage="encode"})': 6 + BULK_ROWS,
    'sum(ray_image_edit_stage_seconds_count{stage="denoise"})': 7 + BULK_ROWS,
    'sum(ray_image_edit_stage_seconds_count{stage="decode"})': 7 + BULK_ROWS,
    # Online, one request at a time: seven Encoder batches of 1; the bulk job: two batches of 4.
    'sum(ray_image_edit_batch_size_bucket{stage="encode", le="1.0"})': 7,
    'sum(ray_image_edit_batch_size_bucket{stage="encode", le="2.0"})': 7,
    'sum(ray_image_edit_batch_size_bucket{stage="encode", le="4.0"})': 9,
    # Denoising requests by adapter (none: the base model) — four online, and the bulk rows, which run
    # the same engine loop — adapter loads and the eviction.
    'sum(ray_image_edit_adapter_requests_total{adapter="none"})': 5 + BULK_ROWS,
    'sum(ray_image_edit_adapter_requests_total{adapter="style"})': 1,
    'sum(ray_image_edit_adapter_loads_total{status="ok"})': 2,
    'sum(ray_image_edit_adapter_evictions_total{adapter="style"})': 1,
    "sum(ray_image_edit_adapter_load_seconds_count)": 2,
    'sum(ray_image_edit_cache_forwards_total{outcome="computed"})': 2,
    'sum(ray_image_edit_cache_forwards_total{outcome="predicted"})': 2,
    "sum(ray_image_edit_cache_skipped_share_count)": 1,
    'sum(ray_image_edit_guard_verdicts_total{verdict="passed"})': 1,
    # every image looked up before any stage runs (the Encoder's refusal too); the repeat is the hit
    'sum(ray_image_edit_result_cache_lookups_total{outcome="miss"})': 8,
    'sum(ray_image_edit_result_cache_lookups_total{outcome="hit"})': 1,
    'sum(ray_image_edit_bulk_rows_total{model="edit-plus", status="ok"})': BULK_ROWS,
    "sum(ray_image_edit_denoise_active_requests)": 0,
    "sum(ray_image_edit_denoise_waiting_requests)": 0,
}


def test_each_metric_moves_as_the_workload_says(observed):
    prom = observed.prom
    got = {expr: prom.value(expr) for expr in EXPECTED}
    assert got == pytest.approx(EXPECTED)

    # The denoiser's loops (online and the bulk job's): 7 online images made and BULK_ROWS rows x 2 steps,
    # batched into at least 2 + 2 and at most 14 + 2 x BULK_ROWS forwards, each recorded once in every
    # per-forward metric.
    steps = prom.value("sum(ray_image_edit_denoise_steps_total)")
    assert 4 <= steps <= 14 + 2 * BULK_ROWS
    for name in ("denoise_step_seconds", "denoise_rows", "denoise_tokens"):
        assert prom.value(f"sum(ray_image_edit_{name}_count)") == steps, name
    assert prom.value('sum(ray_image_edit_denoise_rows_bucket{le="1.0"})') == 0  # CFG on: 2 rows a request
    for stage in ("encode", "denoise", "decode"):
        assert prom.value(f'max(ray_image_edit_memory_bytes{{stage="{stage}", kind="rss"}})') > 50e6, stage
    assert prom.value("sum(ray_image_edit_bulk_rows_per_second)") > 0
    assert prom.value('sum(ray_image_edit_http_requests_total{route="/healthz", code="200"})') >= 1

    # Every declared metric reached Prometheus (the GPU-only memory kinds aside; stage retries need a
    # lost replica: tests/cluster/test_multi_node.py reads them from the node's metrics export).
    names = prom.metric_names("ray_image_edit_.*")
    suffix = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_count", "_sum"]}
    declared = {f"ray_{metrics.PREFIX}{m.name}{s}" for m in metrics.ALL if m is not metrics.STAGE_RETRIES for s in suffix[m.kind]}
    assert declared <= names, declared - names

    # Counters with known label values exist at 0 before anything is counted: a dashboard shows 0, not
    # "no data" (none of these happened in the workload).
    for never in ('guard_verdicts_total{verdict="failed"}', 'cache_forwards_total{outcome="reused"}',
                  'adapter_loads_total{status="error"}'):
        assert prom.value(f"count(ray_image_edit_{never})") >= 1 and prom.value(f"sum(ray_image_edit_{never})") == 0, never


def dashboard_expressions() -> list[tuple[str, str, str]]:
    """(row, panel title, PromQL) of every query of the dashboard."""
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    expressions, row = [], ""
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            row = panel["title"]
        expressions += [(row, panel["title"], target["expr"]) for target in panel.get("targets", [])]
    return expressions


def test_every_dashboard_expression_returns_data(observed):
    prom = observed.prom
    expressions = dashboard_expressions()
    assert len(expressions) >= 20
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda e: prom.query_range(e[2], observed.started, time.time()), expressions))
    empty = []
    for (_, title, expr), result in zip(expressions, results):
        values = [float(v) for series in result for _, v in series["values"]]
        if not any(math.isfinite(v) for v in values):
            empty.append(f"{title}: {expr}")
    assert not empty, "dashboard expressions without data:\n" + "\n".join(empty)


IDLE_S = 60


def test_online_panels_keep_their_data_after_a_minute_without_traffic(observed):
    """Ray drops a gauge from its export soon after its last recording; every replica re-records its
    own, so an idle cluster still shows its queue depth (0) and memory. Queried at this instant, after
    at least IDLE_S seconds without traffic: every online panel has series (latency quantiles are NaN
    then, there being no requests to measure), and every panel without a quantile has numbers."""
    time.sleep(max(0.0, observed.idle_since + IDLE_S - time.time()))  # the condition is the time itself
    prom = observed.prom
    online = [(title, expr) for row, title, expr in dashboard_expressions() if row != "Bulk jobs"]
    blank = []
    for title, expr in online:
        values = [float(series["value"][1]) for series in prom.query(expr)]
        if not values or ("histogram_quantile" not in expr and not any(map(math.isfinite, values))):
            blank.append(f"{title}: {expr} -> {values}")
    assert not blank, f"online panels blank after {IDLE_S}s idle:\n" + "\n".join(blank)
    assert prom.value("sum(ray_image_edit_denoise_waiting_requests)") == 0
    stages = {s["metric"]["stage"] for s in prom.query('count by (stage) (ray_image_edit_memory_bytes{kind="rss"})')}
    assert stages == {"encode", "denoise", "decode"}
