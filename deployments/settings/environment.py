"""Where the engine finds things: the repository's paths and the tiny checkpoints written there, the
model to serve (the MODEL environment variable: environment variables are read here and nowhere
else), and an app's settings read from a Serve config file."""

import os
from pathlib import Path

import yaml

# Tiny checkpoints generated on first use (git-ignored); the first is the default model everywhere.
PROJECT_DIR = Path(__file__).resolve().parents[2]  # relative paths in configs (e.g. adapter sources) start here
MODELS_DIR = PROJECT_DIR / "models"
TINY_MODEL_DIRS = {
    MODELS_DIR / "tiny-edit-plus": "edit-plus", MODELS_DIR / "tiny-edit": "edit", MODELS_DIR / "tiny-ip2p": "ip2p"
}
DEFAULT_MODEL_DIR = MODELS_DIR / "tiny-edit-plus"


def model_from_env(configured: str | None = None) -> str:
    """The model to serve: `MODEL` (a checkpoint directory or a hub id), else `configured`, else the
    tiny default."""
    return os.environ.get("MODEL") or configured or str(DEFAULT_MODEL_DIR)


def load_app_settings(path: Path | None, key: str, cls):
    """`cls` from a YAML file: a Serve config file's (first) app's `key` settings, or a mapping of them."""
    if path is None:
        return cls()
    config = yaml.safe_load(path.read_text()) or {}
    if "applications" in config:
        config = (config["applications"][0].get("args") or {}).get(key) or {}
    return cls.model_validate(config)
