"""How a stage gets its family: `load_family(model, "encode" | "denoise" | "decode")`."""

import torch

from deployments.checkpoints.generated import ensure_generated
from deployments.checkpoints.loader import default_device, default_dtype, load_components, resolve_model
from deployments.families.base import ROLES, ModelFamily
from deployments.families.instruct_pix2pix.family import InstructPix2Pix
from deployments.families.qwen_image_edit.family import QwenImageEdit
from deployments.settings.lora import LoraSettings

FAMILIES: tuple[type[ModelFamily], ...] = (QwenImageEdit, InstructPix2Pix)
FAMILY_OF = {name: family for family in FAMILIES for name in family.pipeline_classes}


def load_family(
    model: str, role: str, device: torch.device | None = None, pinned_transfers: bool = True,
    lora: LoraSettings = LoraSettings(), dtype: torch.dtype | None = None,
) -> ModelFamily:
    """The family math of `model` for `role`, with only the components that role needs, loaded on `device`
    in `dtype` (default: bf16 on a GPU, fp32 on a CPU); `lora`: the adapters its requests may name."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    device = device or default_device()
    ensure_generated(model)  # the tiny default or a random preset, written once per node on first use
    spec = resolve_model(model, _all_components(role))  # refuses a pipeline no family serves
    family = FAMILY_OF[spec.pipeline_class]
    dtype = dtype or default_dtype(device)
    loaded = load_components(spec, family.components[role], device, dtype)
    spec.request_model(lora=lora)  # refuses adapters the family can't use, before any request
    return family(spec, role, loaded, device, dtype, pinned_transfers, lora)


def _all_components(role: str) -> tuple[str, ...]:
    # Before model_index.json is read the family is unknown: fetch what any family's role may need.
    return tuple(sorted({name for family in FAMILIES for name in family.components[role]}))
