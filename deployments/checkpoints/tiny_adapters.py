"""Tiny LoRA adapters for the tiny Qwen-Image-Edit checkpoints, one per file format diffusers' Qwen-Image
LoRA loader reads, written offline with fixed seeds (`python -m deployments.checkpoints.tiny` writes them into the
checkpoint's `adapters/` directory).

- `style-peft.safetensors`: diffusers/PEFT, as diffusers' training scripts save it (`save_lora_weights`
  with the LoraConfig as metadata): keys `transformer.<module>.lora_A/lora_B.weight`; rank 4, alpha 8.
- `detail-kohya.safetensors`: kohya's `lora_unet_<module_with_underscores>.lora_down/lora_up.weight`
  and `.alpha`; rank 4, alpha 2.
- `lightning-like.safetensors`: the `diffusion_model.<module>.lora_down/lora_up.weight` + `.alpha` keys
  of the Qwen-Image-Lightning files, on every linear of every block, alpha != rank as theirs are
  (rank 8, alpha 1: effective scale 0.125, like their 64 and 8). Random weights: it makes the model
  no faster, but it is loaded and scheduled exactly like the real ones.

Their weights are large enough to change a tiny edit visibly, so a dropped adapter or an ignored
alpha fails the parity tests. The checkpoint offers them as `style`, `detail` and `lightning-4step`
(its `adapters/adapters.json`, deployments/settings/lora.py), so any deployment of it has them.
"""

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from deployments.settings.lora import CHECKPOINT_ADAPTERS

ADAPTERS_DIR = CHECKPOINT_ADAPTERS.parent  # inside the checkpoint directory

# What the checkpoint offers (CHECKPOINT_ADAPTERS in deployments/settings/lora.py), sources relative to ADAPTERS_DIR.
OFFERED = {
    "style": {"source": "style-peft.safetensors", "description": "diffusers/PEFT file (rank 4, alpha 8)"},
    "detail": {"source": "detail-kohya.safetensors", "scale": 0.8, "description": "kohya file (rank 4, alpha 2)"},
    "lightning-4step": {
        "source": "lightning-like.safetensors", "scheduler": "lightning",
        "defaults": {"num_inference_steps": 4, "true_cfg_scale": 1.0},
        "description": "Lightning-style file (rank 8, alpha 1), its 4-step schedule, CFG off",
    },
}

ATTENTION = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0")
CONTEXT_AND_MLP = ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out", "img_mlp.net.0.proj", "img_mlp.net.2")
EVERY_LINEAR = (*ATTENTION, *CONTEXT_AND_MLP, "img_mod.1", "txt_mod.1", "txt_mlp.net.0.proj", "txt_mlp.net.2")


def write_adapters(out_dir: Path, transformer: torch.nn.Module, pipeline_class) -> Path:
    """Writes the three adapters for `transformer` into `out_dir`/adapters; returns that directory."""
    directory = Path(out_dir) / ADAPTERS_DIR
    directory.mkdir(parents=True, exist_ok=True)

    # diffusers/PEFT, with its LoraConfig (alpha != rank) as the file's metadata
    peft = {}
    for name, down, up in _pairs(transformer, ATTENTION + ("img_mod.1",), rank=4, seed=1):
        peft[f"{name}.lora_A.weight"], peft[f"{name}.lora_B.weight"] = down, up
    config = {"r": 4, "lora_alpha": 8, "target_modules": sorted({k.rsplit(".lora_", 1)[0] for k in peft}), "lora_dropout": 0.0}
    pipeline_class.save_lora_weights(
        directory, transformer_lora_layers=peft, transformer_lora_adapter_metadata=config, weight_name="style-peft.safetensors"
    )

    kohya = {}
    for name, down, up in _pairs(transformer, CONTEXT_AND_MLP, rank=4, seed=2):
        key = "lora_unet_" + name.replace(".", "_")
        kohya[f"{key}.lora_down.weight"], kohya[f"{key}.lora_up.weight"] = down, up
        kohya[f"{key}.alpha"] = torch.tensor(2.0)
    save_file(kohya, directory / "detail-kohya.safetensors")

    write_lightning_format(directory / "lightning-like.safetensors", transformer, rank=8, alpha=1.0, seed=3)
    (Path(out_dir) / CHECKPOINT_ADAPTERS).write_text(json.dumps(OFFERED, indent=2) + "\n")
    return directory


def write_lightning_format(path: Path, transformer: torch.nn.Module, rank: int, alpha: float, seed: int) -> Path:
    """An adapter on every linear of every block, in the Qwen-Image-Lightning files' keys
    (`diffusion_model.<module>.lora_down/lora_up.weight` and `.alpha`)."""
    lightning = {}
    for name, down, up in _pairs(transformer, EVERY_LINEAR, rank, seed):
        key = f"diffusion_model.{name}"
        lightning[f"{key}.lora_down.weight"], lightning[f"{key}.lora_up.weight"] = down, up
        lightning[f"{key}.alpha"] = torch.tensor(alpha)
    save_file(lightning, path)
    return path


def _pairs(transformer: torch.nn.Module, targets: tuple[str, ...], rank: int, seed: int):
    """(module name, down (rank, in), up (out, rank)) for each target of each block."""
    generator = torch.Generator().manual_seed(seed)
    modules = dict(transformer.named_modules())
    for block in range(len(transformer.transformer_blocks)):
        for target in targets:
            name = f"transformer_blocks.{block}.{target}"
            linear = modules[name]
            down = torch.randn(rank, linear.in_features, generator=generator) / linear.in_features**0.5
            up = torch.randn(linear.out_features, rank, generator=generator) * 0.5
            yield name, down, up
