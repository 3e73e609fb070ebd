"""Test-wide settings: no network for model hubs, an empty Hugging Face cache, tiny checkpoints.

Suites: unit/ (no model), engine/ (tiny model, in-process), serve/ (a real local Ray Serve),
cluster/ (bulk jobs).
"""

import os
import tempfile

# Before anything imports huggingface_hub (it reads these at import time).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="empty-hf-home-")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Serve replicas and handles report load every 0.5 s instead of 10 s, so autoscaling tests take
# seconds. Ray reads these at import, and the local test cluster's processes inherit them.
for name in ("RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S", "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S"):
    os.environ[name] = "0.5"
# Autoscale on the load replicas report: the autoscaling test calls the Denoiser from this driver,
# whose handle's own load reports were seen never to reach the autoscaler (no scale-up in 90 s).
os.environ["RAY_SERVE_COLLECT_AUTOSCALING_METRICS_ON_HANDLE"] = "0"

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` need CUDA: skipped without it (`pytest -m gpu` selects them on a GPU machine)."""
    import torch

    if not torch.cuda.is_available():
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(pytest.mark.skip(reason="needs CUDA"))


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, str]:
    """Freshly written tiny checkpoints, {"edit": dir, "edit-plus": dir, "ip2p": dir}, shared by the session."""
    from deployments.checkpoints.tiny import VARIANTS, write_checkpoint

    root = tmp_path_factory.mktemp("tiny")
    return {variant: str(write_checkpoint(root / variant, variant)) for variant in VARIANTS}
