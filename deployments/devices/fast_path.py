"""The fast-path settings (deployments/settings/fast_path.py) applied to a stage's models:

- `attention_backend`: diffusers' attention dispatcher backend for the transformer, chosen
  explicitly. "native" is PyTorch SDPA, which itself picks flash / cuDNN / memory-efficient kernels
  on CUDA when the inputs allow; "_native_flash", "_native_cudnn", "_native_efficient",
  "_native_math" force one of them; "flash" uses the FlashAttention package when installed.
- `compile`: regional `torch.compile` of the transformer's repeated block (compiled once, reused by
  all 60 blocks: seconds to compile instead of minutes), with dynamic shapes so new batch sizes and
  token counts don't recompile; the Denoiser warms it up at start so no user request pays for it
  (with LoRA adapters offered, their layers are made at start and their terms run eagerly, so
  adapters never recompile either: deployments/lora/per_row.py).
- `fp8`: the transformer's linears in FP8 on GPUs with FP8 tensor cores (deployments/devices/fp8.py), off by
  default: not exact (the one setting that changes results), refused where unsupported.
- `vae_tiling` / `vae_slicing`: decode large images tile by tile / batches image by image, for memory.
- `pinned_transfers`: tensors cross between a stage's GPU and the host through page-locked memory,
  asynchronously, with one wait per hand-over (deployments/devices/transfer.py); no effect off CUDA.
"""

import torch
from diffusers.models.attention_dispatch import _AttentionBackendRegistry

from deployments.devices import fp8
from deployments.settings.fast_path import FastPath

COMPILED_VARIANTS = 64  # per compiled function (see prepare_transformer)


def prepare_transformer(transformer: torch.nn.Module, fast: FastPath) -> None:
    """Applies the settings to the Denoiser's model (Qwen-Image's transformer or a UNet)."""
    if fast.attention_backend != "native":
        processors = [getattr(module, "processor", None) for module in transformer.modules()]
        if not any(hasattr(processor, "_attention_backend") for processor in processors):
            raise ValueError(
                f"attention_backend {fast.attention_backend!r}: {type(transformer).__name__} calls PyTorch SDPA "
                "directly, not diffusers' attention dispatcher; leave attention_backend native"
            )
        # diffusers also makes the backend the process-wide default; our transformer's processors
        # now name theirs, so put the default back and leave other models in the process alone.
        active, _ = _AttentionBackendRegistry.get_active_backend()
        transformer.set_attention_backend(fast.attention_backend)
        _AttentionBackendRegistry.set_active_backend(active)
    if fast.fp8:  # before compiling: the compiled block is the quantized one
        fp8.check_supported(transformer)
        fp8.quantize(transformer)
    if fast.compile:
        # The Denoiser's warm-up compiles every variant of the block's code (prompt mask or none, one row
        # or several, adapters in use or not: tests/engine/test_fast_path.py and test_lora.py), more than
        # Dynamo's default limit of 8 per function, past which it would run the rest uncompiled.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, COMPILED_VARIANTS)
        transformer.compile_repeated_blocks(dynamic=True)


def prepare_vae(vae: torch.nn.Module, fast: FastPath) -> None:
    (vae.enable_tiling if fast.vae_tiling else vae.disable_tiling)()
    (vae.enable_slicing if fast.vae_slicing else vae.disable_slicing)()
