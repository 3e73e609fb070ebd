"""Stage 2, Denoiser: list[Conditioning] -> list[Latents], one batched model forward per step.

Loads: the denoising model (Qwen-Image's transformer, or InstructPix2Pix's UNet) and the scheduler
config (never the VAE or the text encoder).
Requests in one batch may differ in prompt and prompt length, seed, guidance on/off and scales, and may be
at different steps: `start` admits a request at any time and `step` advances every given job by one
step, so a caller can add and retire requests between steps. Jobs whose latent shapes differ are
never mixed in one forward. Each request's result equals denoising it alone.
"""

import torch

from deployments.contracts import Conditioning, Latents
from deployments.fast_path import FastPath, prepare_transformer
from deployments.families import DenoiseJob, load_family
from deployments.settings import model_from_env


class Denoiser:
    def __init__(self, model: str | None = None, device: torch.device | None = None, fast_path: FastPath = FastPath()):
        self.family = load_family(model or model_from_env(), "denoise", device, fast_path.pinned_transfers)
        prepare_transformer(self.family.loaded[self.family.denoising_model], fast_path)
        if fast_path.compile:
            self.warm_up()

    def warm_up(self) -> None:
        """One guided step of a synthetic request at the model's default area, so that compilation (and
        the first kernel launches) happen here rather than in a user's request."""
        self.denoise([self.family.warm_up_conditioning()])

    def denoise(self, batch: list[Conditioning]) -> list[Latents]:
        jobs = [self.start(conditioning) for conditioning in batch]
        while active := [job for job in jobs if not job.done]:
            self.step(active)
        return [self.finish(job) for job in jobs]

    def start(self, conditioning: Conditioning) -> DenoiseJob:
        """Initial noise from the request's seed and its own sigma schedule; no model call yet."""
        return self.family.start(conditioning)

    @torch.no_grad()
    def step(self, jobs: list[DenoiseJob]) -> None:
        """Advances every job by one step: one model forward per latent-shape bucket, then each job's
        own scheduler update."""
        buckets: dict = {}
        for job in jobs:
            buckets.setdefault(job.bucket, []).append(job)
        for group in buckets.values():
            for job, noise_pred in zip(group, self.family.predict(group)):
                if job.step_index + 1 in job.preview_after:
                    job.preview = self.family.predicted_clean(job, noise_pred)
                job.latents = job.scheduler.step(noise_pred, job.timestep, job.latents, **job.step_kwargs, return_dict=False)[0]
                job.step_index += 1

    def finish(self, job: DenoiseJob) -> Latents:
        return self._as_latents(job, job.latents)

    def take_preview(self, job: DenoiseJob) -> Latents | None:
        """The preview kept at the last step, if one was asked for there (then forgotten)."""
        preview, job.preview = job.preview, None
        return None if preview is None else self._as_latents(job, preview)

    def _as_latents(self, job: DenoiseJob, latents) -> Latents:
        c = job.conditioning
        return Latents(
            request_id=c.request_id,
            latents=self.family.to_host(latents[0])[0],
            height=c.height,
            width=c.width,
            seed=c.seed,
            output=c.output,
            timings=c.timings,
        )
