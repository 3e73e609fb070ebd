"""Model families and how a stage gets its own: `load_family(model, "encode" | "denoise" | "decode")`."""

import torch

from deployments.families.base import DenoiseJob, Footprint, ModelFamily
from deployments.families.instruct_pix2pix import InstructPix2Pix
from deployments.families.qwen_image_edit import QwenImageEdit
from deployments.models import default_device, default_dtype, load_components, resolve_model

FAMILIES: tuple[type[ModelFamily], ...] = (QwenImageEdit, InstructPix2Pix)
FAMILY_OF = {name: family for family in FAMILIES for name in family.pipeline_classes}

__all__ = ["DenoiseJob", "Footprint", "ModelFamily", "FAMILIES", "FAMILY_OF", "load_family"]


def load_family(
    model: str, stage: str, device: torch.device | None = None, pinned_transfers: bool = True
) -> ModelFamily:
    """The family math of `model` with only the components `stage` needs, loaded on `device`."""
    device = device or default_device()
    spec = resolve_model(model, _all_components(stage))  # refuses a pipeline no family serves
    family = FAMILY_OF[spec.pipeline_class]
    dtype = default_dtype(device)
    loaded = load_components(spec, family.components[stage], device, dtype)
    return family(spec, loaded, device, dtype, pinned_transfers)


def _all_components(stage: str) -> tuple[str, ...]:
    # Before model_index.json is read the family is unknown: fetch what any family's stage may need.
    return tuple(sorted({name for family in FAMILIES for name in family.components[stage]}))
