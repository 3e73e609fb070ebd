"""The engine's speed-ups as configuration, declared once: the Serve config's `fast_path` of each stage
(serve/settings.py), the bulk job's flags and the benchmarks take this model. Each can be switched
off and each is parity-tested on the tiny model against the plain path (tests/engine/test_fast_path.py)
except `fp8`, which needs a GPU. How they are applied to a model: deployments/devices/fast_path.py.
"""

from typing import Literal

from pydantic import ConfigDict, Field, field_validator
from pydantic.dataclasses import dataclass

# "native" is PyTorch SDPA, which itself picks flash / cuDNN / memory-efficient kernels on CUDA when the
# inputs allow; "_native_*" force one of them; "flash" uses the FlashAttention package when installed.
ATTENTION_BACKENDS = ("native", "_native_flash", "_native_cudnn", "_native_efficient", "_native_math", "flash")


# A (pydantic) dataclass: built positionally or by name in code, validated from a Serve config or flags.
@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class FastPath:

    attention_backend: Literal[ATTENTION_BACKENDS] = Field(  # type: ignore[valid-type]
        "native", description="Transformer attention kernels (diffusers' attention dispatcher): native = PyTorch "
        "SDPA's own choice; or one forced.",
    )
    compile: bool = Field(
        False, description="Regional torch.compile of the transformer's repeated block (compiled once, reused by "
        "every block) with dynamic shapes, warmed up at start so no request pays for it.",
    )
    fp8: bool = Field(
        False, description="The Denoiser's transformer linears in FP8 (torchao; GPUs of compute capability 8.9+ "
        "only): faster, less memory, not exact (the one setting that changes results).",
    )
    vae_tiling: bool = Field(False, description="Tiled VAE encode/decode: less memory for large images, slightly different pixels.")
    vae_slicing: bool = Field(False, description="VAE one image at a time: less memory, same pixels.")
    pinned_transfers: bool = Field(
        True, description="Tensors between GPU and host through page-locked memory, asynchronously, one wait per "
        "hand-over (no effect off CUDA).",
    )

    # Before the Literal's own check (which stays for the JSON schema's enum): one message naming the
    # field and every allowed value, whether the value came from code, a config file or a flag.
    @field_validator("attention_backend", mode="before")
    @classmethod
    def _known_backend(cls, value):
        if value not in ATTENTION_BACKENDS:
            raise ValueError(f"attention_backend must be one of {ATTENTION_BACKENDS}, got {value!r}")
        return value
