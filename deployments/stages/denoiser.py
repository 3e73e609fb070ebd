"""Stage 2, Denoiser: list[Conditioning] -> list[Latents], one batched model forward per step.

Loads: the denoising model (Qwen-Image's transformer, or InstructPix2Pix's UNet) and the scheduler
config (never the VAE or the text encoder).
Requests in one batch may differ in prompt and prompt length, seed, guidance on/off and scales, and may be
at different steps: `start` admits a request at any time and `step` advances every given job by one
step, so a caller can add and retire requests between steps. Jobs whose latent shapes differ are
never mixed in one forward (one forward per shape, in the same step); jobs with different LoRA
adapters (or none) are (deployments/lora/per_row.py). Each request's result equals denoising it alone, and one
request's failure fails no other (a failed forward fails its shape's jobs).

A request's adapters must be loaded before it starts: `adapters_ready` loads them without blocking
(the engine loop's admission), `denoise_batch` waits for them.
"""

import dataclasses

import torch

from deployments import metrics
from deployments.contracts import Conditioning, Latents
from deployments.devices.fast_path import prepare_transformer
from deployments.errors import EditError, failed_alone
from deployments.families.base import DenoiseJob, Footprint
from deployments.families.loading import load_family
from deployments.lora import per_row
from deployments.lora.store import AdapterStore
from deployments.settings.environment import model_from_env
from deployments.settings.fast_path import FastPath
from deployments.settings.lora import LoraSettings
from deployments.workflows import provenance


class StepFailures(dict):
    """The jobs a step failed, with their errors; `forward_failed`: whether a model forward (a whole
    bucket's work, not one request's own) failed — what says something about the replica's health."""

    forward_failed: bool = False


class Denoiser:
    def __init__(
        self, model: str | None = None, device: torch.device | None = None, fast_path: FastPath = FastPath(),
        lora: LoraSettings = LoraSettings(), model_name: str = "", dtype: torch.dtype | None = None,
    ):
        self.family = load_family(model or model_from_env(), "denoise", device, fast_path.pinned_transfers, lora, dtype)
        denoising_model = self.family.loaded[self.family.denoising_model]
        prepare_transformer(denoising_model, fast_path)
        self.adapters = AdapterStore(denoising_model, self.family.read_adapter, lora, self.family.device, model_name,
                                     hold_structure=fast_path.compile and bool(lora.adapters))
        self.model_name = model_name  # the metrics' `model` label
        if fast_path.compile:
            self.warm_up()

    def warm_up(self) -> None:
        """Synthetic requests at the model's default area, so that compilation (and the first kernel
        launches) happen here rather than in a user's request; with adapters offered, each batch once
        more with a row using one (their compiled code differs only in that: deployments/lora/per_row.py)."""
        for batch in self.family.warm_up_batches():
            self.denoise(batch)
            if self.adapters.resident:
                self.denoise([dataclasses.replace(c, adapters=((per_row.STRUCTURE_ADAPTER, 1.0),)) for c in batch])

    def denoise(self, batch: list[Conditioning]) -> list[Latents]:
        """Every request's Latents; raises the first request's error if any failed."""
        results = self.denoise_batch(batch)
        for result in results:
            if isinstance(result, EditError):
                raise result
        return results

    def denoise_batch(self, batch: list[Conditioning]) -> list[Latents | EditError]:
        """Each request's Latents, or the error that request alone ended with (batched step by step, in
        as many rounds as it takes to hold every request's adapters within `max_loaded`)."""
        results: dict[int, Latents | EditError] = {}
        waiting = list(enumerate(batch))
        while waiting:
            jobs: dict[DenoiseJob, int] = {}
            for i, conditioning in self._adapter_round(waiting):
                try:
                    self._load_adapters(conditioning, {name for job in jobs for name, _ in job.conditioning.adapters})
                    jobs[self.start(conditioning)] = i
                except Exception as error:
                    results[i] = failed_alone(error, "denoising", conditioning.request_id)
            while active := [job for job, i in jobs.items() if not job.done and i not in results]:
                for job, error in self.step(active).items():
                    results[jobs[job]] = failed_alone(error, "denoising", job.conditioning.request_id)
            for job, i in jobs.items():
                if i not in results:
                    try:
                        results[i] = self.finish(job)
                    except Exception as error:
                        results[i] = failed_alone(error, "denoising", job.conditioning.request_id)
        return [results[i] for i in range(len(batch))]

    def _adapter_round(self, waiting: list[tuple[int, Conditioning]]) -> list[tuple[int, Conditioning]]:
        """Takes from `waiting` the requests that run together: in order, while their adapters fit."""
        taken, names = [], set()
        for item in list(waiting):
            wanted = names | {name for name, _ in item[1].adapters}
            if taken and len(wanted) > self.adapters.settings.max_loaded:
                continue
            taken.append(item)
            waiting.remove(item)
            names = wanted
        return taken

    def _load_adapters(self, conditioning: Conditioning, keep: set[str]) -> None:
        """Loads the request's adapters, waiting for their files to be read; keeps the adapters in `keep`."""
        names = [name for name, _ in conditioning.adapters]
        while not self.adapters_ready(conditioning, keep):
            self.adapters.prefetch(names).result()

    def adapters_ready(self, conditioning: Conditioning, keep: set[str]) -> bool:
        """Whether the request's adapters are loaded (without waiting: loads what has been read and starts
        reading the rest), never unloading those in `keep`; raises ModelLoadError for one that can't be
        loaded."""
        return not conditioning.adapters or self.adapters.ready([name for name, _ in conditioning.adapters], keep)

    def footprint(self, conditioning: Conditioning) -> Footprint:
        """What the request costs per forward (bucket, rows, tokens), from shapes only: no device work."""
        return self.family.footprint(conditioning)

    def start(self, conditioning: Conditioning) -> DenoiseJob:
        """Initial noise from the request's seed and its own sigma schedule; no model call yet."""
        return self.family.start(conditioning)

    @torch.no_grad()
    def step(self, jobs: list[DenoiseJob]) -> StepFailures:
        """Advances every job by one step: one model forward per latent-shape bucket, then each job's
        own scheduler update. Returns the jobs that failed, with their errors — a failed forward fails
        its bucket; a job's own part (its step cache, guidance, scheduler update, preview, mask) fails
        that job alone — and the others have advanced."""
        buckets: dict = {}
        failed = StepFailures()
        held = self.adapters.held
        for job in jobs:
            missing = {name for name, _ in job.conditioning.adapters} - held
            if missing:  # never run a row without the adapters it asked for
                failed[job] = RuntimeError(f"LoRA adapter(s) {sorted(missing)} were not loaded")
                continue
            buckets.setdefault(job.bucket, []).append(job)
        for group in buckets.values():
            try:
                predictions = self.family.predict(group)
            except Exception as error:
                failed.update(dict.fromkeys(group, error))
                failed.forward_failed = True
                continue
            for job, noise_pred in zip(group, predictions):
                try:
                    if isinstance(noise_pred, Exception):
                        raise noise_pred
                    self._update(job, noise_pred)
                except Exception as error:
                    failed[job] = error
        return failed

    def _update(self, job: DenoiseJob, noise_pred: torch.Tensor) -> None:
        """The job's own scheduler step (and its preview, when one was asked for after this step), then the
        family's hook on the job's own state."""
        if job.step_index + 1 in job.preview_after:
            job.preview = self.family.predicted_clean(job, noise_pred)
        job.latents = self.family.scheduler_step(job, noise_pred)
        self.family.after_step(job, noise_pred)
        job.step_index += 1

    def finish(self, job: DenoiseJob) -> Latents:
        latents = self._as_latents(job, job.latents, final=True)
        if latents.cache is not None:  # a step-cached request: how its forwards went
            for outcome, forwards in latents.cache.items():
                metrics.CACHE_FORWARDS.inc(forwards, model=self.model_name, outcome=outcome)
            skipped = latents.cache["reused"] + latents.cache["predicted"]
            metrics.CACHE_SKIPPED_SHARE.observe(skipped / (skipped + latents.cache["computed"]), model=self.model_name)
        return latents

    def take_preview(self, job: DenoiseJob) -> Latents | None:
        """The preview kept at the last step, if one was asked for there (then forgotten)."""
        preview, job.preview = job.preview, None
        return None if preview is None else self._as_latents(job, preview)

    def _as_latents(self, job: DenoiseJob, latents, final: bool = False) -> Latents:
        """The job's `latents` for the Decoder; the `final` image's with what its quality report and
        provenance need (a preview has neither)."""
        c = job.conditioning
        return Latents(
            request_id=c.request_id,
            latents=self.family.to_host(latents[0])[0],
            height=c.height,
            width=c.width,
            seed=c.seed,
            output=c.output,
            timings=c.timings,
            cache=self.family.cache_report(job),
            reference=c.reference if final else None,
            provenance=provenance.with_seed(c.provenance, c.seed) if final and c.provenance is not None else None,
        )
