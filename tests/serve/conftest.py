"""One local Ray cluster and one Serve instance for the whole serve/ suite, on a free loopback port."""

import pytest

from tests.serve.support import APP, Client, adapter_settings, app_settings, free_port


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
    """Base URL of the editing app serving the tiny edit-plus checkpoint, with its LoRA adapters."""
    from ray import serve

    from serve.app import build_app

    checkpoint = tiny_checkpoints["edit-plus"]
    serve.run(build_app(app_settings(checkpoint, adapter_settings(checkpoint))), name=APP, route_prefix="/")
    return ray_cluster


@pytest.fixture(scope="session")
def client(served):
    return Client(served)
