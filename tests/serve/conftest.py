"""One local Ray cluster and one Serve instance for the whole serve/ suite, on a free loopback port."""

import socket

import pytest
import requests

from serve.settings import AppSettings

APP = "edit"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_settings(model: str) -> AppSettings:
    """The repo's defaults, pointed at the tiny test checkpoint, with small CPU shares so that the app
    and the autoscaling app fit the test cluster."""
    stage = {"max_batch_size": 8, "batch_wait_timeout_s": 0.2, "deployment": {"ray_actor_options": {"num_cpus": 0.5}}}
    return AppSettings.model_validate(
        {"model": model, "request_timeout_s": 120, "encoder": stage, "denoiser": stage, "decoder": stage}
    )


@pytest.fixture(scope="session")
def ray_cluster():
    import ray
    from ray import serve

    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def served(ray_cluster, tiny_checkpoints) -> str:
    """Base URL of the editing app serving the tiny edit-plus checkpoint."""
    from ray import serve

    from serve.app import build_app

    serve.run(build_app(test_settings(tiny_checkpoints["edit-plus"])), name=APP, route_prefix="/")
    return ray_cluster


class Client:
    """requests against one base URL, with a timeout on every call."""

    def __init__(self, base_url: str):
        self.base_url = base_url
        self.session = requests.Session()

    def get(self, path: str, **kwargs) -> requests.Response:
        return self.session.get(self.base_url + path, timeout=120, **kwargs)

    def post(self, path: str, **kwargs) -> requests.Response:
        return self.session.post(self.base_url + path, timeout=120, **kwargs)


@pytest.fixture(scope="session")
def client(served):
    return Client(served)
