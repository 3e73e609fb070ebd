"""Full-size random-weight presets: `MODEL=random:qwen-image-edit-2509` or `random:qwen-image-edit`.

Latency and memory do not depend on weight values, so a preset measures a real model on a real GPU
where its weights cannot be downloaded. Each preset is a weightless diffusers-format directory
(model_index.json, every component's published config, tokenizer, processor, scheduler), written
once under models/; the loader builds its torch modules from those configs directly on the target
device in the target dtype (bf16 on CUDA), never as an fp32 CPU copy of 20B parameters.

The published configurations: the MMDiT transformer (60 layers, 24 heads x 128, joint attention dim
3584, in 64 / out 16 channels, patch 2; ~20.4B parameters), Qwen2.5-VL-7B-Instruct as text encoder
(~8.3B) and the Qwen-Image VAE. The tokenizer is the tiny models' byte-level one (the real vocabulary
cannot be downloaded): prompts tokenize into more, never fewer, tokens than with the real one.
"""

import contextlib
import dataclasses
import json
from pathlib import Path

import torch

from deployments.errors import ModelLoadError
from deployments.settings.engine import ENGINE_SETTINGS_FILE, EngineSettings
from deployments.settings.environment import MODELS_DIR

PREFIX = "random:"
PRESETS = {"qwen-image-edit": "QwenImageEditPipeline", "qwen-image-edit-2509": "QwenImageEditPlusPipeline"}
MARKER = "random_preset.txt"  # marks a preset directory: its modules are built, not loaded
PRESET_BUILD = 1  # bump when the written configs change

TRANSFORMER_CONFIG = {
    "patch_size": 2, "in_channels": 64, "out_channels": 16, "num_layers": 60, "attention_head_dim": 128,
    "num_attention_heads": 24, "joint_attention_dim": 3584, "guidance_embeds": False, "axes_dims_rope": [16, 56, 56],
}
QWEN25_VL_7B_TEXT = {
    "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
    "num_key_value_heads": 4, "vocab_size": 152064, "max_position_embeddings": 128000, "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0, "hidden_act": "silu", "tie_word_embeddings": False,
    "rope_scaling": {"type": "mrope", "rope_type": "default", "mrope_section": [16, 24, 24]},
}
QWEN25_VL_7B_VISION = {
    "depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "in_chans": 3,
    "out_hidden_size": 3584, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
    "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2, "hidden_act": "silu",
}


def is_random(model: str) -> bool:
    return model.startswith(PREFIX)


def is_preset_dir(path: Path) -> bool:
    return (path / MARKER).is_file()


def preset_name(model: str) -> str:
    name = model[len(PREFIX):]
    if name not in PRESETS:
        raise ModelLoadError(f"unknown random preset {model!r}; the presets are {', '.join(PREFIX + p for p in PRESETS)}")
    return name


def preset_dir(model: str) -> Path:
    """Where the weightless directory of preset `random:NAME` lives (deployments/checkpoints/generated.py writes it)."""
    return MODELS_DIR / f"random-{preset_name(model)}"


def write_preset(out: Path, name: str) -> None:
    # Imported here: resolving a model (e.g. in the bulk job's light request workers) needs none of it.
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel

    from deployments.checkpoints.tiny import SCHEDULER_CONFIG, build_processor, build_tokenizer, qwen25_vl_config

    pipeline_class = PRESETS[name]
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(out / "tokenizer")
    build_processor(tokenizer).save_pretrained(out / "processor")
    FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG).save_config(out / "scheduler")
    with torch.device("meta"):  # configs only: nothing is allocated
        QwenImageTransformer2DModel(**TRANSFORMER_CONFIG).save_config(out / "transformer")
        AutoencoderKLQwenImage().save_config(out / "vae")  # diffusers' defaults are Qwen-Image's VAE
    qwen25_vl_config(tokenizer, QWEN25_VL_7B_TEXT, QWEN25_VL_7B_VISION).save_pretrained(out / "text_encoder")
    index = {
        "_class_name": pipeline_class,
        "_diffusers_version": "0.36.0",
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "Qwen2_5_VLForConditionalGeneration"],
        "tokenizer": ["transformers", "Qwen2Tokenizer"],
        "processor": ["transformers", "Qwen2VLProcessor"],
        "transformer": ["diffusers", "QwenImageTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKLQwenImage"],
    }
    _write_json(out / "model_index.json", index)
    _write_json(out / ENGINE_SETTINGS_FILE, dataclasses.asdict(EngineSettings()))  # the real models' defaults


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def build_module(cls: type, folder: Path, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """`cls` from the config in `folder` with random weights, allocated directly on `device` in `dtype`."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    if device.type == "cpu":
        raise ModelLoadError("random presets are full-size (~29B parameters): run them on a CUDA device")
    with torch.device(device), _default_dtype(dtype):
        if issubclass(cls, Qwen2_5_VLForConditionalGeneration):
            module = cls._from_config(Qwen2_5_VLConfig.from_pretrained(folder), torch_dtype=dtype)
        else:
            module = cls.from_config(cls.load_config(folder))
    return module.to(dtype).eval()


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)
