"""Every metric the system records, declared once: one name prefix, fixed label keys, and buckets
that fit seconds-to-minutes diffusion work.

deployments/ imports no Ray, so metrics record through the backend their process binds with
`bind(ray.util.metrics)`: the Serve replicas, the bulk job's Ray Data actors and its driver do, and
Ray exports what they record from every node's metrics port (Prometheus finds those ports in the
service-discovery file Ray writes). In an unbound process (the one-shot CLI, engine tests) recording
does nothing. In Prometheus each name gains Ray's `ray_` prefix, and counters a `_total` suffix.

Labels stay small and fixed — never per request: `model` (served model name), `stage` (encode,
denoise, decode), `status`, `kind`, `verdict`, `adapter` (a configured LoRA adapter's name), and for HTTP
`route` and `code`.
"""

import itertools
import logging
import threading
import time
from dataclasses import dataclass

import psutil
import torch

PREFIX = "image_edit_"
SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TOKENS = (256, 1024, 4096, 16384, 65536, 262144, 1048576)
SHARES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


@dataclass(frozen=True)
class Metric:
    kind: str  # "counter" | "gauge" | "histogram"
    name: str  # without PREFIX
    description: str
    tag_keys: tuple[str, ...]
    boundaries: tuple[float, ...] = ()

    def inc(self, value: float = 1.0, **tags) -> None:
        if value:  # Ray refuses increments of 0; there is nothing to add anyway
            _record(self, "inc", value, tags)

    def set(self, value: float, **tags) -> None:
        _record(self, "set", value, tags)

    def observe(self, value: float, **tags) -> None:
        _record(self, "observe", value, tags)

    def start_at_zero(self, **tags: str | tuple[str, ...]) -> None:
        """Makes a counter's series for known label values exist at 0 before anything is counted
        (Prometheus' advice), so a dashboard shows 0 rather than "no data" until a feature is first used;
        a label given several values gets one series each. (Ray's `inc` refuses 0: its `_record` takes it.)"""
        if self.kind != "counter":
            raise ValueError(f"{self.name} is a {self.kind}; only counters start at zero")
        keys = list(tags)
        choices = [value if isinstance(value, tuple) else (value,) for value in tags.values()]
        for values in itertools.product(*choices):
            _record(self, "_record", 0, dict(zip(keys, values)))


HTTP_REQUESTS = Metric("counter", "http_requests", "HTTP requests answered, by route and status code.", ("route", "code"))
IMAGES = Metric("counter", "images", "Images edited online (status ok) or lost to a failed edit (error).", ("model", "status"))
ERRORS = Metric("counter", "errors", "Failed edit requests by kind: bad_input, overload, timeout, internal.", ("kind",))
REQUEST_SECONDS = Metric("histogram", "request_seconds", "End-to-end time of successful edits.", ("model",), SECONDS)
QUEUE_SECONDS = Metric("histogram", "queue_seconds", "Time a request waited before a stage started it.", ("model", "stage"), SECONDS)
STAGE_SECONDS = Metric("histogram", "stage_seconds", "Time a request spent in a stage.", ("model", "stage"), SECONDS)
STAGE_RETRIES = Metric(
    "counter", "stage_retries", "Stage calls made again because their replica was lost (died, unreachable, engine "
    "stopped) or their input was lost with a node.", ("stage",),
)
BATCH_SIZE = Metric("histogram", "batch_size", "Items per batch a stage ran.", ("model", "stage"), SIZES)
DENOISE_STEP_SECONDS = Metric("histogram", "denoise_step_seconds", "Time of one batched denoising step.", ("model",), SECONDS)
DENOISE_ROWS = Metric("histogram", "denoise_rows", "Rows (requests x CFG branches) per denoising forward.", ("model",), SIZES)
DENOISE_TOKENS = Metric("histogram", "denoise_tokens", "Image + text tokens per denoising forward.", ("model",), TOKENS)
DENOISE_STEPS = Metric("counter", "denoise_steps", "Denoising steps run (one batched forward each).", ("model",))
DENOISE_ACTIVE = Metric("gauge", "denoise_active_requests", "Requests in the denoiser's running batch.", ("model",))
DENOISE_WAITING = Metric("gauge", "denoise_waiting_requests", "Requests waiting to join the denoiser's batch.", ("model",))
MEMORY_BYTES = Metric(
    "gauge", "memory_bytes", "Memory of a stage's process: gpu_allocated, gpu_reserved (CUDA), rss.", ("stage", "kind")
)
ADAPTER_REQUESTS = Metric("counter", "adapter_requests", "Denoising requests by LoRA adapter (none: the base model).", ("model", "adapter"))
ADAPTER_LOADS = Metric("counter", "adapter_loads", "LoRA adapter loads into a Denoiser replica, by status: ok, error.", ("model", "adapter", "status"))
ADAPTER_EVICTIONS = Metric("counter", "adapter_evictions", "LoRA adapters unloaded to make room (least recently used).", ("model", "adapter"))
ADAPTER_LOAD_SECONDS = Metric("histogram", "adapter_load_seconds", "Time to load a LoRA adapter (read + inject).", ("model",), SECONDS)
CACHE_FORWARDS = Metric(
    "counter", "cache_forwards", "Model forwards of step-cached requests, by outcome: computed (every block), reused "
    "(First-Block-Cache: the first block only), predicted (TaylorSeer: none). Hit ratio: (reused + predicted) / all.",
    ("model", "outcome"),
)
CACHE_SKIPPED_SHARE = Metric(
    "histogram", "cache_skipped_share", "Per step-cached request, the share of its model forwards not computed in full.",
    ("model",), SHARES,
)
GUARD_VERDICTS = Metric(
    "counter", "guard_verdicts", "Guarded images by verdict: passed, flagged, retried (made again, then passed), failed.",
    ("model", "verdict"),
)
RESULT_CACHE_LOOKUPS = Metric(
    "counter", "result_cache_lookups", "Result cache lookups by outcome: hit (answered from the cache), miss.",
    ("model", "outcome"),
)
RESULT_CACHE_BYTES = Metric("gauge", "result_cache_bytes", "Bytes of images the result cache holds.", ("model",))
BULK_ROWS = Metric("counter", "bulk_rows", "Bulk job rows finished, by status: ok, error, skipped.", ("model", "status"))
BULK_ROWS_PER_SECOND = Metric("gauge", "bulk_rows_per_second", "A running bulk job's rows per second.", ("model",))

ALL = (
    HTTP_REQUESTS, IMAGES, ERRORS, REQUEST_SECONDS, QUEUE_SECONDS, STAGE_SECONDS, STAGE_RETRIES, BATCH_SIZE, DENOISE_STEP_SECONDS,
    DENOISE_ROWS, DENOISE_TOKENS, DENOISE_STEPS, DENOISE_ACTIVE, DENOISE_WAITING, MEMORY_BYTES, ADAPTER_REQUESTS,
    ADAPTER_LOADS, ADAPTER_EVICTIONS, ADAPTER_LOAD_SECONDS, CACHE_FORWARDS, CACHE_SKIPPED_SHARE, GUARD_VERDICTS, RESULT_CACHE_LOOKUPS, RESULT_CACHE_BYTES, BULK_ROWS,
    BULK_ROWS_PER_SECOND,
)

logger = logging.getLogger(__name__)

_backend = None
_instruments: dict[str, object] = {}
_gauges: dict[tuple, tuple[Metric, float, dict]] = {}  # (name, labels) -> the last value set, to re-record
_lock = threading.Lock()
# Ray drops a gauge from its export ~20-40 s after it was last recorded, so each process re-records
# the gauges it set (and re-reads its memory) this often: an idle replica still shows its queue (0)
# and memory on the dashboard.
GAUGE_REFRESH_S = 10.0
MEMORY_REPORT_INTERVAL_S = 5.0
_last_memory_report: dict[str, float] = {}  # stage -> when its memory was last recorded


def bind(backend) -> None:
    """Records from now on through `backend` (a module with Ray's Counter, Gauge and Histogram), and
    keeps this process's gauges fresh."""
    global _backend
    with _lock:
        if backend is not _backend:
            _backend = backend
            _instruments.clear()
            _gauges.clear()
            _last_memory_report.clear()
            threading.Thread(target=_refresh_gauges, args=(backend,), name="metrics-gauge-refresh", daemon=True).start()


def _record(metric: Metric, method: str, value: float, tags: dict) -> None:
    if set(tags) != set(metric.tag_keys):  # a programming error, whatever the backend
        raise ValueError(f"{metric.name} takes labels {metric.tag_keys}, got {tuple(tags)}")
    if _backend is None:
        return
    with _lock:  # one lock for recording and remembering: a refresh never re-records a stale value
        if _apply(metric, method, value, tags) and metric.kind == "gauge":
            _gauges[(metric.name, *sorted(tags.items()))] = (metric, value, tags)


def _apply(metric: Metric, method: str, value: float, tags: dict) -> bool:
    """Records through the backend (under _lock); False if it failed — observability never fails the
    work it observes."""
    try:
        instrument = _instruments.get(metric.name)
        if instrument is None:
            instrument = _instruments[metric.name] = _create(metric)
        getattr(instrument, method)(value, tags={key: str(v) for key, v in tags.items()})
        return True
    except Exception:
        logger.exception("recording metric %s failed", metric.name)
        return False


def _refresh_gauges(backend) -> None:
    while _backend is backend:
        time.sleep(GAUGE_REFRESH_S)
        for stage in list(_last_memory_report):
            record_memory(stage, every_s=0)
        with _lock:
            for metric, value, tags in _gauges.values():
                _apply(metric, "set", value, tags)


def _create(metric: Metric):
    name, keys = PREFIX + metric.name, metric.tag_keys
    if metric.kind == "histogram":
        return _backend.Histogram(name, description=metric.description, boundaries=list(metric.boundaries), tag_keys=keys)
    cls = {"counter": _backend.Counter, "gauge": _backend.Gauge}[metric.kind]
    return cls(name, description=metric.description, tag_keys=keys)


def record_batch(model: str, stage: str, size: int, seconds: float) -> None:
    """One batch a stage ran: its size, and its time as the stage time of each of its items."""
    BATCH_SIZE.observe(size, model=model, stage=stage)
    for _ in range(size):
        STAGE_SECONDS.observe(seconds, model=model, stage=stage)
    record_memory(stage)


def record_memory(stage: str, every_s: float = MEMORY_REPORT_INTERVAL_S) -> None:
    """The process's memory (resident set; CUDA allocated and reserved when on a GPU), at most once
    per `every_s`: reading it is cheap, but it runs after every batch."""
    now = time.monotonic()
    if _backend is None or now - _last_memory_report.get(stage, -every_s) < every_s:
        return
    _last_memory_report[stage] = now
    MEMORY_BYTES.set(psutil.Process().memory_info().rss, stage=stage, kind="rss")
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        MEMORY_BYTES.set(torch.cuda.memory_allocated(), stage=stage, kind="gpu_allocated")
        MEMORY_BYTES.set(torch.cuda.memory_reserved(), stage=stage, kind="gpu_reserved")


def start_denoiser_counters(model: str, adapters: tuple[str, ...]) -> None:
    """A Denoiser replica's counters with known label values, at 0: its adapters' requests, loads and
    evictions, and step caching's forwards by outcome."""
    ADAPTER_REQUESTS.start_at_zero(model=model, adapter=(*adapters, "none"))
    if adapters:
        ADAPTER_LOADS.start_at_zero(model=model, adapter=adapters, status=("ok", "error"))
        ADAPTER_EVICTIONS.start_at_zero(model=model, adapter=adapters)
    CACHE_FORWARDS.start_at_zero(model=model, outcome=("computed", "reused", "predicted"))
