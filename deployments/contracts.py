"""What passes between the stages: EditRequest -> Encoder -> Conditioning -> Denoiser -> Latents -> Decoder -> EditedImage.

Frozen dataclasses with diffusers' tensor names. Tensors cross process boundaries on the CPU,
contiguous, in the model dtype; never as base64 or JSON.

Each contract carries `timings`, where the request's time went so far: seconds by name
("encode_queue", "encode", "denoise_queue", ...), plus "sent_at", the wall-clock time the previous
hop handed it on. Stages copy it forward; the serving layer fills it in.
"""

import math
from dataclasses import dataclass, field

import torch

from deployments.errors import InvalidInputError
from deployments.parameters import GUIDANCE_FIELDS

OUTPUT_FORMATS = ("png", "jpeg", "webp")
MAX_INPUT_IMAGES = 3
MAX_SIDE = 4096
MAX_STEPS = 1000
MAX_CFG_SCALE = 100.0
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class OutputSpec:
    """How the Decoder encodes the image. `compression` is the JPEG/WebP quality, 100 = best (OpenAI's meaning)."""

    format: str = "png"
    compression: int = 100

    def __post_init__(self):
        if self.format not in OUTPUT_FORMATS:
            raise InvalidInputError("output_format", f"must be one of {', '.join(OUTPUT_FORMATS)}, got {self.format!r}")
        if not _is_int(self.compression) or not 0 <= self.compression <= 100:
            raise InvalidInputError("output_compression", f"must be an integer in [0, 100], got {self.compression!r}")


@dataclass(frozen=True)
class EditRequest:
    """One validated edit: input image bytes (decoded by the Encoder), the instruction and the sampling settings.

    The guidance fields belong to model families (deployments/parameters.py): `true_cfg_scale` to
    Qwen-Image-Edit (true CFG runs when `negative_prompt` is given and the scale is > 1, diffusers'
    rule), `guidance_scale` (s_T) and `image_guidance_scale` (s_I) to InstructPix2Pix; None means the
    family's default, and the Encoder refuses a field its family doesn't take.
    `width`/`height` of None mean: the model's area at the aspect ratio of the input image;
    `num_inference_steps` of None means the model's default.
    """

    images: tuple[bytes, ...]
    prompt: str
    negative_prompt: str | None = None
    seed: int = 0
    num_inference_steps: int | None = None
    true_cfg_scale: float | None = None
    guidance_scale: float | None = None
    image_guidance_scale: float | None = None
    width: int | None = None
    height: int | None = None
    output: OutputSpec = field(default_factory=OutputSpec)
    request_id: str = ""
    timings: dict[str, float] = field(default_factory=dict, compare=False)

    def __post_init__(self):
        if not isinstance(self.images, tuple) or not 1 <= len(self.images) <= MAX_INPUT_IMAGES:
            raise InvalidInputError("image", f"give 1 to {MAX_INPUT_IMAGES} images, got {_count(self.images)}")
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise InvalidInputError("prompt", "must be a non-empty instruction")
        if self.negative_prompt is not None and not isinstance(self.negative_prompt, str):
            raise InvalidInputError("negative_prompt", "must be a string")
        if not _is_int(self.seed) or not 0 <= self.seed <= MAX_SEED:
            raise InvalidInputError("seed", f"must be an integer in [0, {MAX_SEED}], got {self.seed!r}")
        steps = self.num_inference_steps
        if steps is not None and (not _is_int(steps) or not 1 <= steps <= MAX_STEPS):
            raise InvalidInputError(
                "num_inference_steps", f"must be an integer in [1, {MAX_STEPS}], got {self.num_inference_steps!r}"
            )
        for name in GUIDANCE_FIELDS:
            scale = getattr(self, name)
            if scale is None:
                continue
            if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
                raise InvalidInputError(name, f"must be a finite number, got {scale!r}")
            if not 0 <= scale <= MAX_CFG_SCALE:
                raise InvalidInputError(name, f"must be in [0, {MAX_CFG_SCALE:g}], got {scale!r}")
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or not 1 <= value <= MAX_SIDE):
                raise InvalidInputError("size", f"{name} must be an integer in [1, {MAX_SIDE}], got {value!r}")
        if (self.width is None) != (self.height is None):
            raise InvalidInputError("size", "give both width and height, or neither")

    def given(self) -> dict[str, object]:
        """The family-specific fields as the request set them (None = left to the family)."""
        size = None if self.width is None else (self.width, self.height)
        return {**{name: getattr(self, name) for name in GUIDANCE_FIELDS}, "size": size}


@dataclass(frozen=True)
class Conditioning:
    """The Encoder's output: everything the Denoiser needs, and nothing it has to recompute.

    `img_shapes` are the (frames, rows, cols) latent grids of the output, then of each input image:
    Qwen-Image-Edit counts 2x2 patches, as diffusers passes them to the transformer (RoPE positions
    depend on them); InstructPix2Pix counts latent pixels. Latent layouts are the family's own.
    """

    request_id: str
    prompt_embeds: torch.Tensor  # (S, D)
    prompt_embeds_mask: torch.Tensor | None  # (S,) int64, 1 = real token; None for CLIP (fixed length)
    negative_prompt_embeds: torch.Tensor | None  # (S', D), None when guidance is off
    negative_prompt_embeds_mask: torch.Tensor | None  # (S',)
    image_latents: torch.Tensor  # Qwen: (L_img, C) normalized, packed, all inputs concatenated; IP2P: (C, h, w)
    img_shapes: tuple[tuple[int, int, int], ...]
    height: int  # output pixels
    width: int
    seed: int
    num_inference_steps: int
    guidance: dict[str, float]  # the family's guidance fields with their values (defaults filled in)
    output: OutputSpec
    timings: dict[str, float] = field(default_factory=dict, compare=False)

    @property
    def guided(self) -> bool:
        """Whether each step also runs the model without the prompt (CFG rows)."""
        return self.negative_prompt_embeds is not None


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


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _count(images) -> str:
    try:
        return str(len(images))
    except TypeError:
        return type(images).__name__
