"""Loading a stage's components from a diffusers-format checkpoint: a local directory or a hub id.

`model_index.json` names the pipeline class (hence the model family and its rules) and, for each
component, the library and class to load it with, exactly as `DiffusionPipeline.from_pretrained`
reads it. Each stage loads only the components it uses: the Encoder never loads the transformer.
Real checkpoints (Qwen/Qwen-Image-Edit, Qwen/Qwen-Image-Edit-2509), the tiny ones and the full-size
random presets (`random:qwen-image-edit-2509`, deployments/checkpoints/random_presets.py) take this path.
"""

import importlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from deployments.checkpoints.random_presets import build_module, is_preset_dir, is_random, preset_dir
from deployments.errors import ModelLoadError
from deployments.request.binding import request_model
from deployments.request.fields import EditParameters
from deployments.request.registry import declaration
from deployments.settings.engine import ENGINE_SETTINGS_FILE, EngineSettings
from deployments.settings.environment import TINY_MODEL_DIRS
from deployments.settings.limits import Limits
from deployments.settings.lora import LoraSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """What a checkpoint is: where it lives, its pipeline class, its components and the engine settings."""

    model_id: str  # as the user named it (directory or hub id)
    path: Path  # local directory holding model_index.json
    pipeline_class: str
    component_classes: dict[str, tuple[str, str]]  # name -> (library, class name)
    settings: EngineSettings
    random_weights: bool = False  # a full-size random preset: modules are built from their configs

    @property
    def declared(self) -> type[EditParameters]:
        """What requests to this model may set: its family's declaration."""
        return declaration(self.pipeline_class)

    def request_model(self, limits: Limits = Limits(), lora: LoraSettings = LoraSettings()) -> type[EditParameters]:
        """The family's declaration bound to `limits`, this checkpoint's defaults and the adapters `lora`
        offers: what edges validate with."""
        return request_model(self.declared, limits, self.settings, lora)


def resolve_model(model: str, components: tuple[str, ...] = ()) -> ModelSpec:
    """Finds `model` locally or in the hub cache (downloading only `components` when online). Reads
    only: the generated checkpoints must have been written first (deployments/checkpoints/generated.py)."""
    path = preset_dir(model) if is_random(model) else Path(model)
    generated = is_random(model) or path.resolve() in TINY_MODEL_DIRS
    if generated and not path.is_dir():
        raise ModelLoadError(f"{model!r} is generated on first use: call deployments.checkpoints.generated.ensure_generated first")
    if not path.is_dir():
        path = _download(model, components)
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise ModelLoadError(f"{model!r} is not a diffusers checkpoint: {index_file} is missing")
    index = json.loads(index_file.read_text())
    component_classes = {  # [null, null] marks an absent optional component (e.g. a safety checker)
        name: tuple(value) for name, value in index.items()
        if not name.startswith("_") and isinstance(value, list) and value[0] is not None
    }
    declared = declaration(index.get("_class_name"))  # refuses a pipeline no family serves (before any loading)
    return ModelSpec(
        model_id=model,
        path=path,
        pipeline_class=index["_class_name"],
        component_classes=component_classes,
        settings=EngineSettings.for_model(path, default_num_inference_steps=declared.default_num_inference_steps),
        random_weights=is_preset_dir(path),
    )


def _download(repo_id: str, components: tuple[str, ...]) -> Path:
    from huggingface_hub import snapshot_download

    patterns = ["model_index.json", ENGINE_SETTINGS_FILE] + [f"{name}/*" for name in components]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as e:  # hub errors have many types; all mean the same to the caller
        raise ModelLoadError(
            f"model {repo_id!r} is neither a local checkpoint directory nor available from the hub cache ({e})"
        ) from e


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPUs (the dtype the Qwen-Image models are published in), fp32 on CPUs."""
    return getattr(torch, dtype_name(device.type))


def dtype_name(device_type: str) -> str:
    """The name of the dtype a stage on a `device_type` ("cuda", "cpu") runs in (default_dtype)."""
    return "bfloat16" if device_type == "cuda" else "float32"


def load_components(
    spec: ModelSpec, names: tuple[str, ...], device: torch.device, dtype: torch.dtype
) -> dict[str, Any]:
    """Loads the named components of `spec`; torch modules go to `device` in `dtype`, in eval mode."""
    missing = [name for name in names if name not in spec.component_classes]
    if missing:
        raise ModelLoadError(f"{spec.model_id!r} ({spec.pipeline_class}) has no component(s) {missing}")
    return {name: _load_component(spec, name, device, dtype) for name in names}


def _load_component(spec: ModelSpec, name: str, device: torch.device, dtype: torch.dtype) -> Any:
    library, class_name = spec.component_classes[name]
    cls = getattr(importlib.import_module(library), class_name)
    folder = spec.path / name
    logger.info("loading %s (%s.%s) from %s", name, library, class_name, folder)
    if issubclass(cls, torch.nn.Module):
        if spec.random_weights:
            return build_module(cls, folder, device, dtype)
        # Read from the files straight onto the device: a 40.9 GB transformer is never first built in host memory.
        return cls.from_pretrained(folder, torch_dtype=dtype, device_map=device).eval()
    return cls.from_pretrained(folder)


def model_name(model: str) -> str:
    """What the API and metrics call a model: a hub id as is, a checkpoint directory by its name."""
    path = Path(model)
    return path.name if path.is_dir() or path.is_absolute() else model
