"""What the benchmarks share: a workload's jobs and inputs, the tiny model at a working size, latency
summaries, the in-process baseline (the stages in this process, one request at a time) and the
served app (`python -m serve` on a free loopback port) with clients sending it a workload."""


import contextlib
import functools
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests
import yaml
from PIL import Image

from deployments.checkpoints.generated import ensure_written
from deployments.checkpoints.tiny import BUILD_MARKER, TINY_BUILD, write_checkpoint
from deployments.request.binding import parse
from deployments.settings.environment import MODELS_DIR
from deployments.stages.in_process import InProcessStages

CONFIG = Path(__file__).resolve().parents[2] / "serve" / "config.yaml"
APP = "edit"


@dataclass(frozen=True)
class Job:
    """One edit of a workload."""

    size: int | None  # output width and height; None: size auto (the model's area at the input's aspect)
    steps: int
    seed: int
    input_size: tuple[int, int] | None = None  # (width, height) of its own input image; None: the workload's
    adapter: str | None = None  # a LoRA adapter it asks for (as `model`), at the adapter's scale

    def form(self) -> dict[str, str]:
        return {
            "prompt": "change the red dress to a blue long-sleeved shirt",
            "negative_prompt": "blurry",  # true CFG at its default scale
            "size": "auto" if self.size is None else f"{self.size}x{self.size}",
            "num_inference_steps": str(self.steps),
            "seed": str(self.seed),
            **({"model": self.adapter} if self.adapter else {}),
        }


def tiny_at_working_size(size: int) -> Path:
    """The tiny checkpoint with its VAE (and VL) image area at size x size, so that the whole edit —
    input latents and output — runs at the workload's resolution. Written once, under models/."""
    path = MODELS_DIR / f"tiny-edit-plus-{size}"
    write = lambda out: write_checkpoint(out, "edit-plus", vae_image_area=size * size, condition_image_area=size * size)
    ensure_written(path, BUILD_MARKER, TINY_BUILD, write)  # rewritten when the tiny builder changed
    return path


@functools.cache
def input_image(width: int = 128, height: int | None = None) -> bytes:
    pixels = np.random.RandomState(0).randint(0, 256, (height or width, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def summarize(latencies: list[float], wall_s: float) -> dict:
    ordered = np.sort(np.array(latencies))
    return {
        "requests": len(latencies),
        "wall_s": round(wall_s, 3),
        "images_per_s": round(len(latencies) / wall_s, 4),
        **{f"p{q}_s": round(float(np.percentile(ordered, q)), 4) for q in (50, 95, 99)},
    }


# ---- baseline: the staged engine in this process, one request at a time ----------------------------


def time_in_process(stages: InProcessStages, image: bytes, jobs: list[Job]) -> dict:
    """The baseline of a served workload: `jobs` one at a time through the stages in this process."""
    latencies, started = [], time.perf_counter()
    for job in jobs:
        t = time.perf_counter()
        stages.edit(parse(stages.request_model, {**job.form(), "image": [image]}))
        latencies.append(time.perf_counter() - t)
    return summarize(latencies, time.perf_counter() - started)


# ---- served: the app over HTTP on loopback ---------------------------------------------------------


@contextlib.contextmanager
def served_app(model: str, config_path: Path = CONFIG, lora: dict | None = None, ray_address: str | None = None,
               actor_options: dict[str, dict] | None = None, result_cache: bool = False, **denoiser):
    """Runs `python -m serve` with `config_path` (the model, the `lora` and `denoiser` settings given set,
    and each stage's `ray_actor_options` updated with `actor_options[stage]`) on a free port, on its
    own local Ray cluster or on the one at `ray_address`. The result cache is off unless asked for: a
    benchmark that repeats a request measures its work, not a cache hit."""
    config = yaml.safe_load(config_path.read_text())
    args = config["applications"][0]["args"]
    args["model"] = model
    args.setdefault("result_cache", {})["enabled"] = result_cache
    if lora is not None:
        args["lora"] = lora
    args.setdefault("denoiser", {}).update(denoiser)
    for stage, options in (actor_options or {}).items():
        args[stage]["deployment"]["ray_actor_options"].update(options)
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        path = Path(tmp) / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        log = open(Path(tmp) / "serve.log", "w")
        env = {**os.environ, "PORT": str(port)} | ({"RAY_ADDRESS": ray_address} if ray_address else {})
        env.pop("MODEL", None)  # the config names the model
        process = subprocess.Popen([sys.executable, "-m", "serve", "--config", str(path)], stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_ready(base, process, timeout_s=300)
            yield ServedApp(base)
        finally:
            process.send_signal(2)  # Ctrl-C: the launcher shuts Serve and Ray down
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
            log.close()


def wait_ready(base: str, process: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the app exited with {process.returncode} before it was ready")
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{base}/healthz", timeout=5).status_code == 200:
                return
        time.sleep(1)
    raise SystemExit(f"the app was not ready within {timeout_s}s")


# Read in a short-lived process: a driver that connects to a cluster, holds Serve handles and
# disconnects cannot reconnect to the next cluster in the same process.
STATS = (
    "import json, ray; from ray import serve; ray.init(address='auto', namespace='serve', log_to_driver=False); "
    f"print(json.dumps(serve.get_deployment_handle('Denoiser', '{APP}').stats.remote().result(timeout_s=60)))"
)


@dataclass(frozen=True)
class ServedApp:
    base: str  # http://127.0.0.1:PORT

    def denoiser_stats(self) -> dict:
        """The Denoiser's engine-loop counters (one replica: the config's default)."""
        out = subprocess.run([sys.executable, "-c", STATS], capture_output=True, text=True, timeout=120, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])


def run_served(app: ServedApp, image: bytes, jobs: list[Job], clients: int, max_seconds: float) -> dict:
    """`clients` concurrent clients send `jobs` (in order, as each frees up); stops issuing after
    `max_seconds`. Returns the summary plus each job's latency."""
    base = app.base
    before = app.denoiser_stats()
    deadline = time.monotonic() + max_seconds
    sessions = [requests.Session() for _ in range(clients)]

    stage_times = []

    def send(index: int) -> tuple[Job, float | None]:
        job = jobs[index]
        if time.monotonic() > deadline:
            return job, None
        t = time.perf_counter()
        data = image if job.input_size is None else input_image(*job.input_size)
        response = sessions[index % clients].post(
            f"{base}/v1/images/edits", files={"image": ("in.png", data, "image/png")}, data=job.form(), timeout=600
        )
        response.raise_for_status()
        stage_times.append(response.json()["timings"])
        return job, time.perf_counter() - t

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [r for r in pool.map(send, range(len(jobs))) if r[1] is not None]
    wall = time.perf_counter() - started
    after = app.denoiser_stats()
    steps = after["steps"] - before["steps"]
    summary = summarize([latency for _, latency in results], wall)
    summary["mean_rows_per_step"] = round((after["rows_stepped"] - before["rows_stepped"]) / max(steps, 1), 3)
    summary["mean_shapes_per_step"] = round((after["buckets_stepped"] - before["buckets_stepped"]) / max(steps, 1), 3)
    summary["clients"] = clients
    summary["mean_stage_s"] = {name: round(float(np.mean([t[name] for t in stage_times])), 4) for name in stage_times[0]}
    return summary | {"by_job": results}
