"""Test-wide settings: no network for model hubs, an empty Hugging Face cache, tiny checkpoints.

Suites: unit/ (no model), engine/ (tiny model, in-process). Later suites add serve/ and cluster/.
"""

import os
import tempfile

# Before anything imports huggingface_hub (it reads these at import time).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="empty-hf-home-")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, str]:
    """Freshly written tiny checkpoints, {"edit": dir, "edit-plus": dir}, shared by the session."""
    from deployments.tiny import write_checkpoint

    root = tmp_path_factory.mktemp("tiny")
    return {variant: str(write_checkpoint(root / variant, variant)) for variant in ("edit", "edit-plus")}
