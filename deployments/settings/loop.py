"""The denoising loop's admission settings, declared once for the online Denoiser (serve/settings.py's
`denoiser`) and the bulk job's (`python -m cluster.bulk --denoiser-*` flags): both run the same loop
(deployments/batching/denoise_loop.py) under the same policy (deployments/batching/admission.py)."""

from pydantic import BaseModel, ConfigDict, Field


class LoopSettings(BaseModel):
    """Step-level (continuous) batching under a token budget."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    continuous: bool = Field(
        True,
        description="Admit waiting requests between any two steps; false falls back to whole-request "
        "batching (a batch starts only when the previous one has finished).",
    )
    token_budget: int = Field(
        65536, ge=1, description="Most tokens per transformer forward: image + text tokens, CFG rows counted."
    )
    max_batch_rows: int = Field(
        16, ge=1, description="Most rows per step (a guided request takes 2 with Qwen-Image-Edit, 3 with InstructPix2Pix)."
    )
    max_buckets_per_step: int = Field(
        4, ge=1,
        description="Most latent shapes (aspect ratios / sizes) in one engine step, one forward each. More "
        "shapes: a waiting request of another shape joins at the next step; 1: one shape at a time (fewer, "
        "fuller forwards; requests of other shapes wait for it to drain).",
    )
    max_wait_steps: int = Field(
        32, ge=1,
        description="Aging: once a request has waited this many steps, no younger request is admitted before it.",
    )
