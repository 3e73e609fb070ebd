"""Qwen-Image-Edit's masked edits (OpenAI's `mask`) and outpainting (`placement`): the math of
diffusers' QwenImageEditInpaintPipeline, split at the stage boundaries. Edit-Plus, which has no
inpaint pipeline in diffusers, takes the same math for its image 1.

Adapted from diffusers 0.42 `pipelines/qwenimage/pipeline_qwenimage_edit_inpaint.py`: the mask at the
output's latent grid; image 1's latents *sampled* from its VAE posterior with the request's generator
(the edit pipeline takes the mode); `strength` dropping the schedule's first steps; the start from the
image latents noised to the first kept timestep; and after every step the area outside the mask put
back, noised to the next timestep (clean after the last). All of it per request, outside the
transformer: masked and unmasked requests share forwards.
"""

import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from PIL import Image

from deployments.families.base import DenoiseJob
from deployments.families.qwen_image_edit.parameters import QwenImageEditParameters, first_step
from deployments.media.masks import outpainting_canvas, read_mask


class MaskedEdits:
    """The masked-edit half of the QwenImageEdit family (a mixin: it uses the family's `pipe`,
    `mask_processor`, `loaded`, `_pack` and `_encode_image_latents`)."""

    # ---- Encoder -------------------------------------------------------------------------------

    @staticmethod
    def _masked_images(parameters: QwenImageEditParameters, images: list[Image.Image]) -> tuple[list[Image.Image], Image.Image]:
        """The images with image 1 on its outpainting canvas (when placed), and the area to edit in image 1."""
        first = images[0]
        edit_area = None if parameters.mask is None else read_mask(parameters.mask, first.size)
        if parameters.placement is not None:
            first, edit_area = outpainting_canvas(first, edit_area, parameters.output_size, parameters.position)
        return [first, *images[1:]], edit_area

    def _encode_masked(self, vae_images: list[torch.Tensor], edit_area: Image.Image, width: int, height: int) -> dict:
        """A masked edit's tensors: image 1's VAE posterior, which the Denoiser samples with each image's own
        generator; the image latents with image 1's mode in its place until then; the area to edit at the
        latent grid."""
        vae = self.loaded["vae"]
        posterior = vae.encode(vae_images[0].to(self.device, self.dtype)).latent_dist
        normalization = torch.stack([torch.tensor(vae.config.latents_mean), 1.0 / torch.tensor(vae.config.latents_std)])
        normalization = normalization.to(self.device, self.dtype)  # computed as diffusers computes them
        image_latents = self._encode_image_latents(vae_images, first=_normalized(posterior.mode(), normalization))
        posterior_parameters, normalization = self.to_host(posterior.parameters[0], normalization)
        return {
            "image_latents": image_latents,
            "image_posterior": posterior_parameters,
            "latents_normalization": normalization,
            "mask": self._mask_latents(edit_area, width, height),
        }

    def _mask_latents(self, edit_area: Image.Image, width: int, height: int) -> torch.Tensor:
        """(L, C) the area to edit, binarized at the output's latent grid and packed like the latents
        (the pipeline's `__call__` and `prepare_mask_latents`)."""
        condition = self.mask_processor.preprocess(edit_area, height=height, width=width)  # (1, 1, H, W), 1 = edit
        scale = self.pipe.vae_scale_factor * 2
        rows, cols = 2 * (height // scale), 2 * (width // scale)
        mask = torch.nn.functional.interpolate(condition, size=(rows, cols)).to(self.device, self.dtype)
        channels = self.loaded["vae"].config.z_dim  # the transformer's in_channels // 4
        packed = self.pipe._pack_latents(mask.repeat(1, channels, 1, 1), 1, channels, rows, cols)
        return self.to_host(packed[0])[0]

    # ---- Denoiser ------------------------------------------------------------------------------

    def _sampled_image_latents(self, tensors: dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        """(1, L, C) image 1's latents sampled from its VAE posterior with `generator`, normalized and packed
        (the pipeline's `_encode_vae_image`, split at the stage boundary)."""
        posterior = DiagonalGaussianDistribution(tensors["image_posterior"][None])
        return self._pack(_normalized(posterior.sample(generator), tensors["latents_normalization"]))

    def _start_masked(self, job: DenoiseJob, image_latents: torch.Tensor) -> None:
        """`strength` drops the schedule's first steps (the pipeline's `get_timesteps`), and the sample
        starts from the image latents noised to the first kept timestep; the transformer sees the sampled
        image latents as its condition."""
        first = first_step(len(job.timesteps), job.conditioning.parameters["strength"])
        job.timesteps = job.timesteps[first:]
        job.scheduler.set_begin_index(first)
        noise = job.latents
        job.latents = job.scheduler.scale_noise(image_latents, job.timesteps[:1], noise)
        condition = job.tensors["image_latents"]
        job.tensors["image_latents"] = torch.cat([image_latents[0], condition[image_latents.shape[1] :]])
        job.state.update(image_latents=image_latents, noise=noise)

    def after_step(self, job: DenoiseJob, noise_pred: torch.Tensor) -> None:
        """Outside the mask, the sample becomes the image latents noised to the next timestep (the clean
        ones after the last step)."""
        if "mask" not in job.tensors:
            return
        known = job.state["image_latents"]
        following = job.step_index + 1
        if following < len(job.timesteps):
            known = job.scheduler.scale_noise(known, job.timesteps[following : following + 1], job.state["noise"])
        job.latents = self._outside_the_mask(job, known, job.latents)

    @staticmethod
    def _outside_the_mask(job: DenoiseJob, known: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """`latents` inside the job's mask, `known` outside it (as the pipeline blends them)."""
        mask = job.tensors["mask"]
        return (1 - mask) * known + mask * latents


def _normalized(latents: torch.Tensor, normalization: torch.Tensor) -> torch.Tensor:
    """(1, z, 1, h, w) VAE latents in the transformer's space: (latents - latents_mean) / latents_std per
    channel, computed as diffusers' `_encode_vae_image` computes it."""
    mean, inv_std = (values.view(1, -1, 1, 1, 1) for values in normalization)
    return (latents - mean) * inv_std
