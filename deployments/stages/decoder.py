"""Stage 3, Decoder: Latents -> EditedImage.

Loads: the VAE only. Turns the family's latents back into VAE latents (unpacks, de-normalizes),
VAE-decodes, post-processes exactly as diffusers does and encodes the image as PNG, JPEG or WebP
with its provenance record (deployments/workflows/provenance.py); reports the image's quality against its input
(deployments/workflows/quality.py).
"""

import numpy as np
import torch

from deployments.contracts import EditedImage, Latents
from deployments.devices.fast_path import prepare_vae
from deployments.errors import EditError, each_or_error
from deployments.families.loading import load_family
from deployments.media.images import encode_image, quantized
from deployments.settings.environment import model_from_env
from deployments.settings.fast_path import FastPath
from deployments.workflows.quality import quality_report


class Decoder:
    def __init__(self, model: str | None = None, device: torch.device | None = None, fast_path: FastPath = FastPath()):
        self.family = load_family(model or model_from_env(), "decode", device, fast_path.pinned_transfers)
        prepare_vae(self.family.loaded["vae"], fast_path)

    def decode_pixels(self, latents: Latents) -> np.ndarray:
        """The (H, W, 3) float image in [0, 1], before 8-bit quantization."""
        return self.family.decode(latents)

    def decode(self, latents: Latents) -> EditedImage:
        image = quantized(self.decode_pixels(latents))
        reference = latents.reference
        return EditedImage(
            request_id=latents.request_id,
            data=encode_image(image, latents.output, latents.provenance),
            format=latents.output.format,
            width=image.shape[1],
            height=image.shape[0],
            seed=latents.seed,
            timings=latents.timings,
            cache=latents.cache,
            quality=None if reference is None else quality_report(torch.from_numpy(image), reference).as_dict(),
            provenance=latents.provenance,
        )

    def decode_batch(self, batch: list[Latents]) -> list[EditedImage | EditError]:
        """Each request's image, or the error that request alone ended with."""
        return each_or_error(self.decode, batch, "decoding")
