"""Stage 1, Encoder: EditRequest -> Conditioning.

Loads: the text encoder (Qwen2.5-VL with its processor, or CLIP with its tokenizer) and the VAE,
never the denoising model. Decodes the uploaded bytes (EXIF orientation applied, any mode to RGB),
refuses what only the loaded model can tell (fewer steps than its scheduler runs), resizes as diffusers does, embeds the prompt (and
the negative prompt when guidance is on) and VAE-encodes the input image(s) into the family's
latents (deployments/families/). Output tensors are on the CPU.
"""

import torch

from deployments.contracts import Conditioning, EditRequest
from deployments.devices.fast_path import prepare_vae
from deployments.errors import EditError, each_or_error
from deployments.families.loading import load_family
from deployments.media.images import decode_image
from deployments.settings.environment import model_from_env
from deployments.settings.fast_path import FastPath
from deployments.settings.lora import LoraSettings


class Encoder:
    def __init__(
        self, model: str | None = None, device: torch.device | None = None, fast_path: FastPath = FastPath(),
        lora: LoraSettings = LoraSettings(),
    ):
        # `lora`: the adapters requests may name (their schedulers decide the fewest steps a request may ask for)
        self.family = load_family(model or model_from_env(), "encode", device, fast_path.pinned_transfers, lora)
        prepare_vae(self.family.loaded["vae"], fast_path)  # tiling/slicing also bound VAE-encode memory

    def encode(self, request: EditRequest) -> Conditioning:
        self.family.check(request)
        uploads = request.parameters.image
        images = [decode_image(data, "image" if len(uploads) == 1 else f"image[{i}]") for i, data in enumerate(uploads)]
        return self.family.encode(request, images)

    def encode_batch(self, requests: list[EditRequest]) -> list[Conditioning | EditError]:
        """Each request's Conditioning, or the error that request alone ended with."""
        return each_or_error(self.encode, requests, "encoding")
