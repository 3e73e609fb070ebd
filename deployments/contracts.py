"""What passes between the stages: EditRequest -> Encoder -> Conditioning -> Denoiser -> Latents -> Decoder -> EditedImage.

Frozen dataclasses with diffusers' tensor names. Tensors cross process boundaries on the CPU,
contiguous, in the model dtype; never as base64 or JSON.

Each contract carries `timings`, where the request's time went so far: seconds by name
("encode_queue", "encode", "denoise_queue", ...), plus "sent_at", the wall-clock time the previous
hop handed it on. Stages copy it forward; the serving layer fills it in.
"""

from dataclasses import dataclass, field
from typing import Any

import torch

from deployments.media.images import OutputSpec
from deployments.request.fields import EditParameters


@dataclass(frozen=True)
class Reference:
    """What the Decoder compares an edited image with (deployments/workflows/quality.py); made by the Encoder."""

    pixels: torch.Tensor  # (H, W, 3) uint8: image 1 (its canvas when outpainting) at the output size
    keep: torch.Tensor | None  # (H, W) bool, True outside the request's mask; None without a mask
    input_size: tuple[int, int]  # image 1's (width, height) as uploaded, upright


@dataclass(frozen=True)
class EditRequest:
    """One edit as the engine receives it: parameters already validated at the edge against the model
    family's declaration and the limits (deployments/request/binding.py), with their defaults filled in."""

    parameters: EditParameters
    request_id: str = ""
    timings: dict[str, float] = field(default_factory=dict, compare=False)
    derived_from: dict[str, Any] | None = None  # a chain's later link: the provenance record of the image it edits
    # A chain's link: the links after it, which the Encoder checks too before this one runs (their images are placeholders)
    later_links: tuple[EditParameters, ...] = field(default=(), compare=False)

    @property
    def output(self) -> OutputSpec:
        return OutputSpec(self.parameters.output_format, self.parameters.output_compression)


@dataclass(frozen=True)
class Conditioning:
    """The Encoder's output: everything the Denoiser needs, and nothing it has to recompute.

    `tensors` are the ones the model family declares (`ModelFamily.conditioning_tensors`: names and
    shapes), e.g. prompt embeddings and image latents. `img_shapes` are the (frames, rows, cols)
    latent grids of the output, then of each input image: Qwen-Image-Edit counts 2x2 patches, as
    diffusers passes them to the transformer (RoPE positions depend on them); InstructPix2Pix counts
    latent pixels. `parameters` are the family's own request fields (e.g. guidance scales). `adapters`
and `scheduler` come from the request's LoRA adapters (deployments/settings/lora.py).
    """

    request_id: str
    tensors: dict[str, torch.Tensor]
    img_shapes: tuple[tuple[int, int, int], ...]
    height: int  # output pixels
    width: int
    seed: int
    num_inference_steps: int
    parameters: dict[str, Any]
    output: OutputSpec
    adapters: tuple[tuple[str, float], ...] = ()  # LoRA adapters (name, scale), stacked in order
    scheduler: dict[str, Any] | None = None  # scheduler-config values replacing the checkpoint's (an adapter's schedule)
    cache: Any = None  # the request's step cache setting, or None (deployments/settings/step_cache.py)
    reference: Reference | None = None  # what the Decoder compares the edited image with (deployments/workflows/quality.py)
    provenance: dict[str, Any] | None = None  # how the image is made, but for its seed (deployments/workflows/provenance.py)
    timings: dict[str, float] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Latents:
    """The Denoiser's output: final packed latents of one edit."""

    request_id: str
    latents: torch.Tensor  # the family's layout: Qwen (L, C) packed, normalized; IP2P (C, h, w)
    height: int
    width: int
    seed: int
    output: OutputSpec
    timings: dict[str, float] = field(default_factory=dict, compare=False)
    cache: dict[str, int] | None = None  # with step caching: the model forwards computed, reused, predicted
    reference: Reference | None = None  # Conditioning.reference (none for a preview)
    provenance: dict[str, Any] | None = None  # Conditioning.provenance with this image's seed (none for a preview)


@dataclass(frozen=True)
class EditedImage:
    """The Decoder's output: the encoded image and what it is."""

    request_id: str
    data: bytes
    format: str
    width: int
    height: int
    seed: int
    timings: dict[str, float] = field(default_factory=dict, compare=False)
    cache: dict[str, int] | None = None  # Latents.cache
    quality: dict[str, Any] | None = None  # how much changed and how well the rest was kept (deployments/workflows/quality.py)
    guard: dict[str, Any] | None = None  # the request's guard's verdict on it (deployments/workflows/guards.py), if it had one
    provenance: dict[str, Any] | None = None  # Latents.provenance, also written into `data`
    result_cache: str | None = None  # online with the result cache on: "hit" or "miss" (serve/result_cache.py)

