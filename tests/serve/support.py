"""Helpers shared by the serve/ tests: the test app's settings, deploying an extra app for one test,
an HTTP client, a free port, the Denoiser's counters."""

import contextlib
import socket
from pathlib import Path

import requests
from ray import serve

from serve.settings import AppSettings

APP = "edit"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app_settings(model: str, lora: dict | None = None, **settings) -> AppSettings:
    """The repo's defaults, pointed at the tiny test checkpoint, with small CPU shares so that the app
    and the autoscaling app fit the test cluster; `lora`: the LoRA settings (none by default); and any
    other `settings` (e.g. result_cache; off by default: it would hide the work of repeated requests)."""
    deployment = {"ray_actor_options": {"num_cpus": 0.5}, "max_ongoing_requests": 32}
    stage = {"max_batch_size": 8, "batch_wait_timeout_s": 0.2, "deployment": deployment}
    denoiser = {"deployment": deployment}
    return AppSettings.model_validate(
        {"model": model, "request_timeout_s": 120, "encoder": stage, "denoiser": denoiser, "decoder": stage,
         "lora": lora or {}, **settings}
    )


def adapter_settings(checkpoint: str) -> dict:
    """LoRA settings offering, besides the tiny checkpoint's own adapters (style, detail 0.8,
    lightning-4step: deployments/checkpoints/tiny_adapters.py), `broken`, a corrupt file written here."""
    broken = Path(checkpoint) / "adapters" / "broken.safetensors"
    broken.write_bytes(b"\x00" * 64)
    return {"max_per_request": 2, "max_scale": 2.0, "adapters": {"broken": {"source": str(broken)}}}


class Client:
    """requests against one base URL, with a timeout on every call."""

    def __init__(self, base_url: str):
        self.base_url = base_url
        self.session = requests.Session()

    def get(self, path: str, **kwargs) -> requests.Response:
        return self.session.get(self.base_url + path, timeout=120, **kwargs)

    def post(self, path: str, **kwargs) -> requests.Response:
        return self.session.post(self.base_url + path, timeout=120, **kwargs)


def denoiser_stats(app: str = APP) -> dict:
    """The engine-loop counters of `app`'s Denoiser (one replica)."""
    return serve.get_deployment_handle("Denoiser", app).stats.remote().result(timeout_s=60)


@contextlib.contextmanager
def deployed(app, name: str, route_prefix: str | None):
    """`app` running under `name` for the duration (deleted however the test ends, so a failed test
    leaves no replicas taking the shared cluster's CPUs); yields its handle."""
    handle = serve.run(app, name=name, route_prefix=route_prefix)
    try:
        yield handle
    finally:
        serve.delete(name)
