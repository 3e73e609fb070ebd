"""A checkpoint's engine settings: one definition each, with its default, its meaning and its validation."""

import json
from dataclasses import dataclass
from pathlib import Path

from deployments.errors import ModelLoadError

# A small JSON file of the project's own beside `model_index.json`; real checkpoints don't have one.
ENGINE_SETTINGS_FILE = "edit_engine.json"


@dataclass(frozen=True)
class EngineSettings:
    """Per-model knobs of the engine. The defaults are the values diffusers' pipelines hard-code."""

    vae_image_area: int = 1024 * 1024
    """Pixel area the input image(s) are resized to for VAE latents (and the default output area);
    for InstructPix2Pix, which edits at the input's size, the largest area (larger inputs are scaled down)."""

    condition_image_area: int = 384 * 384
    """Pixel area of each input image shown to the Qwen2.5-VL encoder (Edit-Plus models only)."""

    default_num_inference_steps: int = 50
    """Denoising steps of a request that names none."""

    max_prompt_tokens: int = 512
    """Longest prompt (and negative prompt) in tokens; diffusers would cut longer ones silently."""

    def __post_init__(self):
        for name in ("vae_image_area", "condition_image_area"):
            _check_int(name, getattr(self, name), 32 * 32, 4096 * 4096)
        _check_int("default_num_inference_steps", self.default_num_inference_steps, 1, 1000)
        _check_int("max_prompt_tokens", self.max_prompt_tokens, 1, 1024)

    @classmethod
    def for_model(cls, model_dir: str | Path, **family_defaults) -> "EngineSettings":
        """The settings recorded beside a checkpoint; what it doesn't record takes the model family's
        defaults (`family_defaults`), then these."""
        path = Path(model_dir) / ENGINE_SETTINGS_FILE
        if not path.is_file():
            return cls(**family_defaults)
        try:
            values = json.loads(path.read_text())
            return cls(**{**family_defaults, **values})
        except (ValueError, TypeError) as e:
            raise ModelLoadError(f"{path} is not a valid engine settings file: {e}") from e


def _check_int(name: str, value, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
