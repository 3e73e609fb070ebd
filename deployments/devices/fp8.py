"""FP8 for the Denoiser's transformer (the `fp8` fast-path setting): torchao's dynamic float8
quantization — weights stored in float8 (e4m3, one scale per output row), activations quantized per
row at each call, matmuls on FP8 tensor cores — for the transformer's linears, except the layers the
peers keep in bf16 because errors there reach every token or compound over the 60 blocks: the
timestep / text / image embedders, the modulation linears (img_mod, txt_mod: the scale and shift of
every norm), the image MLP's output projection (vLLM-Omni's `ignored_layers: img_mlp` guidance), and
the final norm and projection. It halves the quantized weights' memory; its speed and quality are
measured on a GPU (cluster/bench/gpu.py --fp8), not here: FP8 tensor cores exist only on NVIDIA GPUs
of compute capability 8.9 and up (Ada: L4, L40S; Hopper: H100, H200), so anywhere else it is refused.
"""

import re

import torch

# Dotted name parts of the linears that stay in bf16.
KEPT_IN_BF16 = ("time_text_embed", "img_in", "txt_in", "img_mod", "txt_mod", "img_mlp.net.2", "norm_out", "proj_out")
_KEPT = re.compile(r"(^|\.)(" + "|".join(re.escape(part) for part in KEPT_IN_BF16) + r")(\.|$)")
FP8_CAPABILITY = (8, 9)


def quantized(name: str) -> bool:
    """Whether the transformer's linear layer `name` runs in FP8."""
    return _KEPT.search(name) is None


def check_supported(model: torch.nn.Module) -> None:
    """Refuses FP8 where it can't run (ValueError saying why)."""
    device = next(model.parameters()).device
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    reason = refusal(type(model).__name__, device.type, capability)
    if reason:
        raise ValueError(f"fp8: {reason}; set fp8 false")


def refusal(model_class: str, device_type: str, capability: tuple[int, int] | None) -> str | None:
    """Why FP8 can't run for this model on this device, or None: another model than Qwen-Image's
    transformer, no CUDA device, or a GPU without FP8 tensor cores."""
    needed = "an NVIDIA GPU with FP8 tensor cores (compute capability 8.9+: L4, L40S, H100, H200)"
    if model_class != "QwenImageTransformer2DModel":
        return f"only Qwen-Image's transformer is quantized, not a {model_class}"
    if device_type != "cuda":
        return f"needs {needed}; this Denoiser runs on {device_type}"
    if capability < FP8_CAPABILITY:
        return f"needs {needed}; this GPU has compute capability {capability[0]}.{capability[1]}"
    return None


def quantize(model: torch.nn.Module) -> None:
    """Quantizes the transformer's linears to FP8 in place (after `check_supported`)."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    quantize_(model, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()),
              filter_fn=lambda module, name: isinstance(module, torch.nn.Linear) and quantized(name))
