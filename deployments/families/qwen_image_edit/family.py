"""Qwen-Image-Edit family math (QwenImageEditPipeline, QwenImageEditPlusPipeline for -2509/-2511);
masked edits and outpainting in qwen_image_masked_edits.py.

Adapted from diffusers 0.42 `pipelines/qwenimage/pipeline_qwenimage_edit{,_plus}.py` (`__call__`
split into encode / start + predict / decode). Where diffusers has a helper we call it (on a pipeline
object holding only this stage's components) instead of copying it, so fixes there reach us.
"""

from typing import Any

import numpy as np
import torch
from diffusers import QwenImageEditInpaintPipeline, QwenImageEditPipeline, QwenImageEditPlusPipeline
from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import (
    calculate_dimensions,
    calculate_shift,
    retrieve_timesteps,
)
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from deployments.checkpoints.loader import ModelSpec
from deployments.contracts import Conditioning, EditRequest, Latents
from deployments.errors import InvalidInputError, ModelLoadError
from deployments.families.base import DenoiseJob, Footprint, ModelFamily, TensorSpec, own_part
from deployments.families.batch_invariance import make_per_row_linears_batch_invariant
from deployments.families.qwen_image_edit import prompt_padding
from deployments.families.qwen_image_edit.masked_edits import MaskedEdits
from deployments.families.qwen_image_edit.step_cache import (
    FirstBlockCacheRow,
    TaylorSeerRow,
    forward_with_first_block_cache,
    new_row_cache,
    summed_report,
)
from deployments.lora import per_row
from deployments.media.images import OutputSpec
from deployments.workflows.quality import reference_of

PIPELINES = {cls.__name__: cls for cls in (QwenImageEditPipeline, QwenImageEditPlusPipeline)}
ALL_COMPONENTS = ("scheduler", "vae", "text_encoder", "tokenizer", "processor", "transformer")
MAX_ASPECT_RATIO = 16  # beyond it an image's short side rounds to nothing at the VL area


class QwenImageEdit(MaskedEdits, ModelFamily):
    pipeline_classes = tuple(PIPELINES)
    components = {
        "encode": ("processor", "text_encoder", "vae", "scheduler"),  # the scheduler's config: which step counts it runs
        "denoise": ("transformer", "scheduler"),
        "decode": ("vae",),
    }
    denoising_model = "transformer"
    conditioning_tensors = {
        "prompt_embeds": TensorSpec("(S, D)"),
        "prompt_embeds_mask": TensorSpec("(S,) int64, 1 = real token"),
        "negative_prompt_embeds": TensorSpec("(S', D), with true CFG only", optional=True),
        "negative_prompt_embeds_mask": TensorSpec("(S',)", optional=True),
        "image_latents": TensorSpec("(L_img, C) normalized, packed, all input images concatenated"),
        # Masked edits (a mask or an outpainting canvas) only:
        "mask": TensorSpec("(L, C) packed like the latents: 1 = edit, 0 = keep", optional=True),
        "image_posterior": TensorSpec("(2z, 1, h, w) image 1's VAE posterior (mean, log-variance)", optional=True),
        "latents_normalization": TensorSpec("(2, z) the VAE's latents_mean and 1 / latents_std", optional=True),
    }

    def __init__(self, spec: ModelSpec, role: str, loaded: dict[str, Any], *args, **kwargs):
        self.plus = spec.pipeline_class == QwenImageEditPlusPipeline.__name__
        # diffusers' pipeline holding only this role's components: its prompt template, image
        # processor and static helpers are the reference we must match.
        components = {name: loaded.get(name) for name in ALL_COMPONENTS}
        self.pipe = PIPELINES[spec.pipeline_class](**components)
        # Masked edits follow diffusers' inpaint pipeline (Qwen-Image-Edit's; Edit-Plus has none): its mask processor.
        self.mask_processor = QwenImageEditInpaintPipeline(**components).mask_processor
        super().__init__(spec, role, loaded, *args, **kwargs)

    def set_up_denoiser(self) -> None:
        transformer = self.loaded["transformer"]
        if transformer.config.guidance_embeds:
            raise ModelLoadError(f"{self.spec.model_id!r}: guidance-distilled Qwen-Image transformers are not supported")
        make_per_row_linears_batch_invariant(transformer)
        transformer.set_attn_processor(prompt_padding.PromptPaddingAttnProcessor())

    # ---- Encoder -------------------------------------------------------------------------------

    @staticmethod
    def guided_by(parameters) -> bool:
        return parameters.negative_prompt is not None and parameters.true_cfg_scale > 1  # diffusers' rule

    def check_prompts(self, parameters) -> None:
        self._check_prompts(parameters, self.guided_by(parameters), self.pipe.processor.tokenizer, self.spec.settings.max_prompt_tokens)

    @torch.no_grad()
    def encode(self, request: EditRequest, images: list[Image.Image]) -> Conditioning:
        parameters = request.parameters
        true_cfg = self.guided_by(parameters)
        width, height = self._output_size(parameters.output_size, images)
        input_size, edit_area = images[0].size, None
        if parameters.masked:  # the mask applies to image 1 (its canvas, when outpainting), at its latent grid
            images, edit_area = self._masked_images(parameters, images)
        condition_images, vae_images, vae_sizes = self._prepare_images(images, exact_first=parameters.placement is not None)
        if edit_area is not None:
            width, height = vae_sizes[0]
        prompt_embeds, prompt_mask = self._encode_prompt(parameters.prompt, condition_images)
        negative_embeds = negative_mask = None
        if true_cfg:
            negative_embeds, negative_mask = self._encode_prompt(parameters.negative_prompt, condition_images)
        scale = self.pipe.vae_scale_factor * 2
        tensors = {
            "prompt_embeds": prompt_embeds,
            "prompt_embeds_mask": prompt_mask,
            "negative_prompt_embeds": negative_embeds,
            "negative_prompt_embeds_mask": negative_mask,
        }
        if edit_area is None:
            tensors["image_latents"] = self._encode_image_latents(vae_images)
        else:
            tensors.update(self._encode_masked(vae_images, edit_area, width, height))
        return self._conditioning(
            request,
            tensors,
            img_shapes=((1, height // scale, width // scale), *[(1, h // scale, w // scale) for w, h in vae_sizes]),
            height=height,
            width=width,
            reference=reference_of(images[0], edit_area, (width, height), input_size),
        )

    def _prepare_images(self, images: list[Image.Image], exact_first: bool = False):
        """Condition image(s) for the VL encoder (PIL) and VAE image(s) (B, C, 1, H, W) with their sizes:
        the model's area at each image's aspect ratio (with `exact_first`, image 1 at its own size)."""
        settings, processor = self.spec.settings, self.pipe.image_processor
        condition_images, vae_images, vae_sizes = [], [], []
        for i, image in enumerate(images):
            ratio = image.width / image.height
            vae_width, vae_height = calculate_dimensions(settings.vae_image_area, ratio)
            if exact_first and i == 0:
                vae_width, vae_height = image.size
            condition_width, condition_height = calculate_dimensions(settings.condition_image_area, ratio)
            too_thin = min(vae_width, vae_height, condition_width, condition_height) < 32
            if too_thin or max(ratio, 1 / ratio) > MAX_ASPECT_RATIO:
                raise InvalidInputError(
                    "image", f"{image.width}x{image.height} is too elongated; the aspect ratio may be at most "
                    f"{MAX_ASPECT_RATIO}:1"
                )
            if self.plus:
                condition_images.append(processor.resize(image, condition_height, condition_width))
            else:  # Edit shows the VL encoder the VAE-sized image and preprocesses that resized copy
                image = processor.resize(image, vae_height, vae_width)
                condition_images.append(image)
            vae_images.append(processor.preprocess(image, vae_height, vae_width).unsqueeze(2))
            vae_sizes.append((vae_width, vae_height))
        return condition_images, vae_images, vae_sizes

    def _output_size(self, asked: tuple[int, int] | None, images: list[Image.Image]) -> tuple[int, int]:
        multiple = self.pipe.vae_scale_factor * 2
        if asked is not None:
            if asked[0] % multiple or asked[1] % multiple:
                raise InvalidInputError("size", f"width and height must be multiples of {multiple}, got {asked[0]}x{asked[1]}")
            return asked
        # Edit-Plus takes the aspect ratio of the last image, Edit of its only one.
        image = images[-1]
        width, height = calculate_dimensions(self.spec.settings.vae_image_area, image.width / image.height)
        return width // multiple * multiple, height // multiple * multiple

    def _encode_prompt(self, prompt: str, condition_images: list[Image.Image]):
        """(S, D) embeddings and their (S,) mask for one prompt, on the CPU."""
        images = condition_images if self.plus else condition_images[0]
        embeds, mask = self.pipe.encode_prompt(prompt=prompt, image=images, device=self.device)
        if mask is None:  # diffusers drops an all-ones mask; the contract always carries one
            mask = torch.ones(embeds.shape[:2], dtype=torch.long)
        return self.to_host(embeds[0], mask[0])

    def _encode_image_latents(self, vae_images: list[torch.Tensor], first: torch.Tensor | None = None) -> torch.Tensor:
        """Normalized, packed latents of every input image, concatenated: (L_img, C); image 1's (1, C, 1, h, w)
        latents may be given as `first`."""
        latents = [] if first is None else [first]
        for image in vae_images[len(latents) :]:
            latents.append(self.pipe._encode_vae_image(image.to(self.device, self.dtype), generator=None))
        return self.to_host(torch.cat([self._pack(each) for each in latents], dim=1)[0])[0]

    def _pack(self, latents: torch.Tensor) -> torch.Tensor:
        """(1, C, 1, h, w) -> (1, L, 4C) 2x2 patches, as diffusers packs them."""
        _, channels, _, height, width = latents.shape
        return self.pipe._pack_latents(latents, 1, channels, height, width)

    # ---- Denoiser ------------------------------------------------------------------------------

    def read_adapter(self, location: str, **kwargs):
        # diffusers' loader: diffusers/PEFT, kohya and `diffusion_model.` files, alpha folded into the weights
        return type(self.pipe).lora_state_dict(location, **kwargs)

    def warm_up_batches(self) -> list[list[Conditioning]]:
        # Compiled code has a variant per prompt mask (none, or padded prompts) and per row count (one
        # row, or several: Dynamo specialises a size of 1): a guided request with prompts of one length,
        # then of two; an unguided one without, then with, a masked token.
        return [[self._synthetic((16, 16))], [self._synthetic((16, 8))], [self._synthetic((16,))], [self._synthetic((16,), masked=True)]]

    def _synthetic(self, prompt_lengths: tuple[int, ...], masked: bool = False) -> Conditioning:
        """A request at the model's usual area with zero prompts of these lengths (a second one: the negative)."""
        transformer = self.loaded["transformer"]
        side = int(self.spec.settings.vae_image_area**0.5) // 16 * 16
        grid = (1, side // 16, side // 16)
        tokens, channels, width = grid[1] * grid[2], transformer.config.in_channels, transformer.config.joint_attention_dim
        tensors = {"image_latents": torch.zeros(tokens, channels, dtype=self.dtype)}
        for name, length in zip(("prompt_embeds", "negative_prompt_embeds"), prompt_lengths):
            tensors[name], tensors[name + "_mask"] = torch.zeros(length, width, dtype=self.dtype), torch.ones(length, dtype=torch.long)
        if masked:
            tensors["prompt_embeds_mask"][-1] = 0
        return Conditioning(
            request_id="warm-up", tensors=tensors, img_shapes=(grid, grid), height=side, width=side, seed=0,
            num_inference_steps=self.min_inference_steps, parameters=self.declared.model_construct().family_values(),
            output=OutputSpec(),
        )

    def new_schedule(self, steps: int, image_tokens: int, device: torch.device, scheduler: dict[str, Any] | None = None):
        fresh = self.fresh_scheduler(scheduler)
        config = fresh.config
        mu = calculate_shift(
            image_tokens,
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", 1.15),
        )
        sigmas = np.linspace(1.0, 1 / steps, steps)
        timesteps, _ = retrieve_timesteps(fresh, steps, device, sigmas=sigmas, mu=mu)
        fresh.set_begin_index(0)
        return fresh, timesteps

    def footprint(self, conditioning: Conditioning) -> Footprint:
        _, rows, cols = conditioning.img_shapes[0]
        tensors = conditioning.tensors
        guidance_rows = 2 if self.guided(conditioning) else 1
        text = max(tensors[name].shape[0] for name in ("prompt_embeds", "negative_prompt_embeds") if name in tensors)
        return Footprint(
            bucket=conditioning.img_shapes,  # RoPE takes one set of image shapes per forward
            rows=guidance_rows,
            tokens=guidance_rows * (rows * cols + tensors["image_latents"].shape[0] + text),
        )

    def start(self, conditioning: Conditioning) -> DenoiseJob:
        transformer = self.loaded["transformer"]
        _, rows, cols = conditioning.img_shapes[0]
        channels = transformer.config.in_channels // 4
        generator = torch.Generator("cpu").manual_seed(conditioning.seed)
        tensors = self.device_tensors(conditioning)
        # A masked edit samples image 1's posterior first, with the same generator, as diffusers' inpaint pipeline.
        image_latents = self._sampled_image_latents(tensors, generator) if "mask" in tensors else None
        noise = randn_tensor((1, 1, channels, 2 * rows, 2 * cols), generator=generator, device=self.device, dtype=self.dtype)
        latents = self.pipe._pack_latents(noise, 1, channels, 2 * rows, 2 * cols)  # (1, L, C)

        scheduler, timesteps = self.new_schedule(conditioning.num_inference_steps, latents.shape[1], self.device, conditioning.scheduler)

        job = DenoiseJob(
            conditioning=conditioning,
            latents=latents,
            scheduler=scheduler,
            timesteps=timesteps,
            footprint=self.footprint(conditioning),
            tensors=tensors,
        )
        # each forward row keeps its own step cache
        job.state["caches"] = {name: new_row_cache(conditioning.cache) for name in self._row_names(conditioning)}
        # Which rows' prompts have no masked token, read here from the host copy: asking the device
        # tensor in every step would be a device-to-host sync per step.
        job.state["unmasked"] = {name: bool(conditioning.tensors[name + "_mask"].all()) for name in self._row_names(conditioning)}
        if image_latents is not None:
            self._start_masked(job, image_latents)
        return job

    @torch.no_grad()
    def predict(self, jobs: list[DenoiseJob]) -> list[torch.Tensor | Exception]:
        # One row per job, plus one for its negative prompt when it uses true CFG (with the job's adapters
        # and step cache too). A row whose TaylorSeer predicts this step skips the forward. A row's cache
        # failing is its job's failure alone (own_part).
        rows = [(job, name) for job in jobs for name in self._row_names(job.conditioning)]
        outputs: list[torch.Tensor | Exception | None] = [None] * len(rows)
        forwarded = []
        for i, (job, name) in enumerate(rows):
            cache = job.state["caches"].get(name)
            if isinstance(cache, TaylorSeerRow) and not cache.should_compute():
                outputs[i] = own_part(cache.predict)
            else:
                forwarded.append(i)
        if forwarded:
            noise_pred = self._forward([rows[i] for i in forwarded])
            for j, i in enumerate(forwarded):
                outputs[i] = noise_pred[j : j + 1]
                cache = rows[i][0].state["caches"].get(rows[i][1])
                if isinstance(cache, TaylorSeerRow):
                    outputs[i] = own_part(_updated, cache, outputs[i])

        predictions, row = [], 0
        for job in jobs:
            own = outputs[row : row + len(self._row_names(job.conditioning))]
            row += len(own)
            failed = next((output for output in own if isinstance(output, Exception)), None)
            if failed is not None:
                predictions.append(failed)
            elif self.guided(job.conditioning):
                predictions.append(own_part(_true_cfg, *own, job.conditioning.parameters["true_cfg_scale"]))
            else:
                predictions.append(own[0])
        return predictions

    def _row_names(self, conditioning: Conditioning) -> tuple[str, ...]:
        """The prompt embeddings of each of a request's forward rows."""
        return ("prompt_embeds", "negative_prompt_embeds") if self.guided(conditioning) else ("prompt_embeds",)

    def _forward(self, rows: list[tuple[DenoiseJob, str]]) -> torch.Tensor:
        """(B, L, C) the transformer's noise predictions for `rows` in one forward (per-row First-Block-Cache
        when a row has one)."""
        jobs = [job for job, _ in rows]
        embeds, mask = _pad_prompts([job.tensors[name] for job, name in rows], [job.tensors[name + "_mask"] for job, name in rows])
        lengths = [job.tensors[name].shape[0] for job, name in rows]
        # Padding is attended row by row without a mask (prompt_padding.py); only a row with masked
        # tokens of its own takes diffusers' mask. Decided from shapes and admission-time flags, without a sync.
        own_masks = not all(job.state["unmasked"][name] for job, name in rows)
        inputs = dict(
            hidden_states=torch.cat([torch.cat([job.latents, job.tensors["image_latents"][None]], dim=1) for job in jobs]),  # (B, L + L_img, C)
            timestep=torch.stack([job.timestep for job in jobs]).to(self.dtype) / 1000,  # one timestep per row
            encoder_hidden_states_mask=mask if own_masks else None,
            encoder_hidden_states=embeds,
            img_shapes=[list(jobs[0].conditioning.img_shapes)] * len(rows),
            attention_kwargs={} if own_masks else prompt_padding.attention_kwargs(lengths),
        )
        adapters = [job.conditioning.adapters for job in jobs]
        caches = [job.state["caches"].get(name) for job, name in rows]
        transformer = self.loaded["transformer"]
        with prompt_padding.rows_with_prompt_lengths(lengths):
            if any(isinstance(cache, FirstBlockCacheRow) for cache in caches):
                fbc = [cache if isinstance(cache, FirstBlockCacheRow) else None for cache in caches]
                noise_pred = forward_with_first_block_cache(transformer, fbc, adapters, **inputs)
            else:
                with per_row.rows_using(adapters):
                    noise_pred = transformer(**inputs, guidance=None, return_dict=False)[0]
        return noise_pred[:, : jobs[0].latents.shape[1]]  # drop the image-latent positions

    def cache_report(self, job: DenoiseJob) -> dict[str, int] | None:
        caches = [cache for cache in job.state["caches"].values() if cache is not None]
        return summed_report(caches) if caches else None

    # ---- Decoder -------------------------------------------------------------------------------

    def predicted_clean(self, job: DenoiseJob, noise_pred: torch.Tensor) -> torch.Tensor:
        # Flow matching predicts the velocity v = noise - x0, and x_t = x0 + sigma * v (the schedule may
        # begin past its first sigma: a masked edit's strength).
        clean = job.latents - job.scheduler.sigmas[job.scheduler.begin_index + job.step_index] * noise_pred
        return self._outside_the_mask(job, job.state["image_latents"], clean) if "mask" in job.tensors else clean

    @torch.no_grad()
    def decode(self, latents: Latents) -> np.ndarray:
        vae = self.loaded["vae"]
        packed = self.to_device(latents.latents, vae.dtype)[None]  # (1, L, C)
        unpacked = self.pipe._unpack_latents(packed, latents.height, latents.width, self.pipe.vae_scale_factor)
        z_dim = vae.config.z_dim
        mean = torch.tensor(vae.config.latents_mean).view(1, z_dim, 1, 1, 1).to(unpacked.device, unpacked.dtype)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, z_dim, 1, 1, 1).to(unpacked.device, unpacked.dtype)
        image = vae.decode(unpacked / inv_std + mean, return_dict=False)[0][:, :, 0]  # (1, 3, H, W) in [-1, 1]
        return self.pipe.image_processor.postprocess(image, output_type="np")[0]


def _updated(cache: TaylorSeerRow, output: torch.Tensor) -> torch.Tensor:
    """A row's computed output, once its TaylorSeer has updated its factors with it."""
    cache.update(output)
    return output


def _true_cfg(positive: torch.Tensor, negative: torch.Tensor, scale: float) -> torch.Tensor:
    """diffusers' true CFG with norm rescale: guide, then restore the conditional prediction's norm."""
    combined = negative + scale * (positive - negative)
    cond_norm = torch.norm(positive, dim=-1, keepdim=True)
    noise_norm = torch.norm(combined, dim=-1, keepdim=True)
    return combined * (cond_norm / noise_norm)


def _pad_prompts(embeds: list[torch.Tensor], masks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pads (S_i, D) prompts to (B, S_max, D) with a (B, S_max) mask, as diffusers pads a batch."""
    length = max(e.shape[0] for e in embeds)
    padded = torch.stack([torch.cat([e, e.new_zeros(length - e.shape[0], e.shape[1])]) for e in embeds])
    mask = torch.stack([torch.cat([m, m.new_zeros(length - m.shape[0])]) for m in masks])
    return padded, mask
