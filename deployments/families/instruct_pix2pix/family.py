"""InstructPix2Pix family math (StableDiffusionInstructPix2PixPipeline).

Adapted from diffusers 0.42 `pipelines/stable_diffusion/pipeline_stable_diffusion_instruct_pix2pix.py`
(`__call__` split into encode / start + predict / decode), calling the pipeline's own helpers where it
has them. Dual classifier-free guidance, three UNet rows per guided request and step:

    e = e(z, 0, 0) + s_I * (e(z, c_I, 0) - e(z, 0, 0)) + s_T * (e(z, c_I, c_T) - e(z, c_I, 0))

with s_T = `guidance_scale`, s_I = `image_guidance_scale`. As in diffusers, guidance runs only when
s_T > 1 and s_I >= 1; otherwise one row, e(z, c_I, c_T). Rows of many requests share one UNet batch.
"""

import dataclasses
import math
from typing import Any

import numpy as np
import torch
from diffusers import StableDiffusionInstructPix2PixPipeline
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_instruct_pix2pix import retrieve_latents
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from deployments.checkpoints.loader import ModelSpec
from deployments.contracts import Conditioning, EditRequest, Latents
from deployments.errors import InvalidInputError, ModelLoadError
from deployments.families.base import DenoiseJob, Footprint, ModelFamily, TensorSpec, own_part
from deployments.families.batch_invariance import make_per_row_linears_batch_invariant
from deployments.families.instruct_pix2pix import ancestral_noise
from deployments.media.images import OutputSpec
from deployments.workflows.quality import reference_of

COMPONENTS = ("vae", "text_encoder", "tokenizer", "unet", "scheduler")
# Previews need the clean sample each step predicts: x0 = x - sigma * eps, the k-diffusion form these use.
SCHEDULERS = ("EulerAncestralDiscreteScheduler", "EulerDiscreteScheduler")
MIN_LATENT_SIDE = 8
CLIP_TOKENS = 77  # every CLIP prompt is padded to this length


class InstructPix2Pix(ModelFamily):
    pipeline_classes = (StableDiffusionInstructPix2PixPipeline.__name__,)
    components = {
        "encode": ("tokenizer", "text_encoder", "vae", "scheduler"),  # the scheduler's config: which step counts it runs
        "denoise": ("unet", "scheduler"),
        "decode": ("vae",),
    }
    denoising_model = "unet"
    conditioning_tensors = {
        "prompt_embeds": TensorSpec("(77, D) CLIP"),
        "negative_prompt_embeds": TensorSpec("(77, D), when guidance is on", optional=True),
        "image_latents": TensorSpec("(C, h, w) the input image's VAE latents (mode, unscaled)"),
    }

    def __init__(self, spec: ModelSpec, role: str, loaded: dict[str, Any], *args, **kwargs):
        self.pipe = StableDiffusionInstructPix2PixPipeline(
            **{name: loaded.get(name) for name in COMPONENTS},
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
        super().__init__(spec, role, loaded, *args, **kwargs)

    def set_up_encoder(self) -> None:
        self._check_scheduler()  # the encoder probes it for the fewest steps it runs

    def set_up_denoiser(self) -> None:
        self._check_scheduler()
        ancestral_noise.install(type(self.loaded["scheduler"]))
        make_per_row_linears_batch_invariant(self.loaded["unet"])

    def _check_scheduler(self) -> None:
        scheduler = self.loaded["scheduler"]
        if type(scheduler).__name__ not in SCHEDULERS or scheduler.config.prediction_type != "epsilon":
            raise ModelLoadError(
                f"{self.spec.model_id!r}: the scheduler is a {type(scheduler).__name__} predicting "
                f"{scheduler.config.prediction_type}; supported: {', '.join(SCHEDULERS)} with epsilon prediction"
            )

    # ---- Encoder -------------------------------------------------------------------------------

    @staticmethod
    def guided_by(parameters) -> bool:
        return parameters.guidance_scale > 1 and parameters.image_guidance_scale >= 1  # diffusers' rule

    def check_prompts(self, parameters) -> None:
        tokenizer = self.loaded["tokenizer"]  # CLIP: what it would cut off, diffusers truncates with a log line
        limit = min(tokenizer.model_max_length, self.spec.settings.max_prompt_tokens)
        self._check_prompts(parameters, self.guided_by(parameters), tokenizer, limit, counted=" (start and end included)")

    @torch.no_grad()
    def encode(self, request: EditRequest, images: list[Image.Image]) -> Conditioning:
        parameters = request.parameters
        guided = self.guided_by(parameters)
        image = images[0]
        width, height = self._working_size(image)
        pixels = self.pipe.image_processor.preprocess(image, height, width)  # (1, 3, H, W) in [-1, 1]
        vae = self.loaded["vae"]
        image_latents = retrieve_latents(vae.encode(pixels.to(self.device, vae.dtype)), sample_mode="argmax")
        # [prompt] or, guided, [prompt, negative, negative] (the order diffusers batches them in)
        embeds = self.pipe._encode_prompt(parameters.prompt, self.device, 1, guided, parameters.negative_prompt)
        prompt_embeds, latents = self.to_host(embeds[0], image_latents[0])
        negative_embeds = self.to_host(embeds[1])[0] if guided else None
        grid = (1, latents.shape[1], latents.shape[2])
        tensors = {"prompt_embeds": prompt_embeds, "negative_prompt_embeds": negative_embeds, "image_latents": latents}
        return self._conditioning(
            request,
            tensors,
            img_shapes=(grid, grid),
            height=height,
            width=width,
            reference=reference_of(image, None, (width, height), image.size),
        )

    def _working_size(self, image: Image.Image) -> tuple[int, int]:
        """The input's size (as diffusers, floored to the VAE's multiple), scaled down first if its
        area exceeds the model's `vae_image_area`."""
        width, height = image.width, image.height
        area = self.spec.settings.vae_image_area
        if width * height > area:
            scale = math.sqrt(area / (width * height))
            width, height = int(width * scale), int(height * scale)
        multiple = self.pipe.vae_scale_factor
        width, height = width - width % multiple, height - height % multiple
        smallest = MIN_LATENT_SIDE * multiple
        if min(width, height) < smallest:
            raise InvalidInputError(
                "image", f"{image.width}x{image.height} is too small or too elongated: after scaling to at most "
                f"{area} pixels each side must be at least {smallest} pixels",
            )
        return width, height

    # ---- Denoiser ------------------------------------------------------------------------------

    def warm_up_batches(self) -> list[list[Conditioning]]:
        # Compiled code has a variant for one row (Dynamo specialises a size of 1) and for several.
        guided = self._synthetic()
        unguided = dataclasses.replace(guided, tensors={k: v for k, v in guided.tensors.items() if k != "negative_prompt_embeds"})
        return [[guided], [unguided]]

    def _synthetic(self) -> Conditioning:
        """A guided request at the model's usual size with zero prompts and image."""
        unet = self.loaded["unet"]
        side, width = unet.config.sample_size, unet.config.cross_attention_dim
        prompt = torch.zeros(CLIP_TOKENS, width, dtype=self.dtype)
        grid = (1, side, side)
        tensors = {"prompt_embeds": prompt, "negative_prompt_embeds": prompt, "image_latents": torch.zeros(4, side, side, dtype=self.dtype)}
        return Conditioning(
            request_id="warm-up", tensors=tensors, img_shapes=(grid, grid), height=side * 8, width=side * 8, seed=0,
            num_inference_steps=self.min_inference_steps, parameters=self.declared.model_construct().family_values(),
            output=OutputSpec(),
        )

    def new_schedule(self, steps: int, image_tokens: int, device: torch.device, scheduler: dict[str, Any] | None = None):
        scheduler = self.fresh_scheduler(scheduler)
        scheduler.set_timesteps(steps, device=device)
        scheduler.set_begin_index(0)  # what it would find itself on the first step, without a host sync
        return scheduler, scheduler.timesteps

    def footprint(self, conditioning: Conditioning) -> Footprint:
        _, rows, cols = conditioning.img_shapes[0]
        guidance_rows = 3 if self.guided(conditioning) else 1
        return Footprint(
            bucket=conditioning.img_shapes,  # one UNet batch needs one latent size
            rows=guidance_rows,
            tokens=guidance_rows * (rows * cols + conditioning.tensors["prompt_embeds"].shape[0]),
        )

    def start(self, conditioning: Conditioning) -> DenoiseJob:
        _, rows, cols = conditioning.img_shapes[0]
        generator = torch.Generator("cpu").manual_seed(conditioning.seed)
        channels = self.loaded["unet"].config.out_channels
        noise = randn_tensor((1, channels, rows, cols), generator=generator, device=self.device, dtype=self.dtype)
        scheduler, timesteps = self.new_schedule(conditioning.num_inference_steps, rows * cols, self.device)
        job = DenoiseJob(
            conditioning=conditioning,
            latents=noise * scheduler.init_noise_sigma,
            scheduler=scheduler,
            timesteps=timesteps,
            footprint=self.footprint(conditioning),
            tensors=self.device_tensors(conditioning),
        )
        if ancestral_noise.draws_every_step(scheduler):  # the noise each step adds, from the same generator
            step_noise = ancestral_noise.draw(generator, len(timesteps), tuple(noise.shape), self.dtype)
            job.state["step_noise"] = self.to_device(step_noise)
        return job

    def scheduler_step(self, job: DenoiseJob, noise_pred: torch.Tensor) -> torch.Tensor:
        if "step_noise" not in job.state:
            return super().scheduler_step(job, noise_pred)
        with ancestral_noise.given(job.state["step_noise"][job.step_index]):
            return super().scheduler_step(job, noise_pred)

    @torch.no_grad()
    def predict(self, jobs: list[DenoiseJob]) -> list[torch.Tensor | Exception]:
        inputs = [own_part(self._rows_of, job) for job in jobs]  # a job whose scheduler fails here fails alone
        forwarded = [row for row in inputs if not isinstance(row, Exception)]
        if forwarded:
            samples, texts, timesteps = zip(*forwarded)
            embeds = torch.stack([text for job_texts in texts for text in job_texts])
            noise_pred = self.loaded["unet"](torch.cat(samples), torch.cat(timesteps), encoder_hidden_states=embeds, return_dict=False)[0]
        predictions, row = [], 0
        for job, given in zip(jobs, inputs):
            if isinstance(given, Exception):
                predictions.append(given)
                continue
            rows = 3 if self.guided(job.conditioning) else 1
            predictions.append(own_part(self._guided, job, noise_pred[row : row + rows]))
            row += rows
        return predictions

    def _rows_of(self, job: DenoiseJob) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """The job's UNet rows: (rows, C + C_img, h, w) scaled samples with the image latents, the rows'
        text embeddings, their timesteps. Guided rows: (image, text), (image, no text), (no image, no text)."""
        tensors = job.tensors
        image = tensors["image_latents"][None]
        if self.guided(job.conditioning):
            sample = torch.cat([job.latents] * 3)
            images = torch.cat([image, image, torch.zeros_like(image)])
            texts = [tensors["prompt_embeds"], tensors["negative_prompt_embeds"], tensors["negative_prompt_embeds"]]
        else:
            sample, images, texts = job.latents, image, [tensors["prompt_embeds"]]
        scaled = job.scheduler.scale_model_input(sample, job.timestep)
        return torch.cat([scaled, images], dim=1), texts, job.timestep.expand(sample.shape[0])

    def _guided(self, job: DenoiseJob, noise_pred: torch.Tensor) -> torch.Tensor:
        """The job's prediction from its rows' (dual guidance when guided)."""
        if not self.guided(job.conditioning):
            return noise_pred
        text, image, uncond = noise_pred.chunk(3)
        s_t, s_i = job.conditioning.parameters["guidance_scale"], job.conditioning.parameters["image_guidance_scale"]
        return uncond + s_t * (text - image) + s_i * (image - uncond)  # diffusers' order of terms

    def predicted_clean(self, job: DenoiseJob, noise_pred: torch.Tensor) -> torch.Tensor:
        return job.latents - job.scheduler.sigmas[job.step_index] * noise_pred  # a host scalar: no copy to the device

    # ---- Decoder -------------------------------------------------------------------------------

    @torch.no_grad()
    def decode(self, latents: Latents) -> np.ndarray:
        vae = self.loaded["vae"]
        sample = self.to_device(latents.latents, vae.dtype)[None]  # (1, C, h, w)
        image = vae.decode(sample / vae.config.scaling_factor, return_dict=False)[0]
        return self.pipe.image_processor.postprocess(image, output_type="np", do_denormalize=[True])[0]
