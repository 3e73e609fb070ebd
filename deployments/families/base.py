"""The per-family interface: the math that differs between model families, behind a few named calls.

The stage classes own what is common (loading, batching, the step loop, image I/O); a family owns
prompt encoding, latent packing, the model call with its guidance combination, the scheduler set-up
and latent decoding, and declares what its Conditioning carries and what its requests may set
(deployments/families/<family>/parameters.py). A stage builds its family for one role ("encode",
"denoise" or "decode") with only that role's components and calls only that role's methods.
"""

import functools
import re
import warnings
from abc import ABC, abstractmethod
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from deployments.checkpoints.loader import ModelSpec
from deployments.contracts import Conditioning, EditRequest, Latents
from deployments.devices.transfer import to_device, to_host
from deployments.errors import InvalidInputError, ModelLoadError
from deployments.request.fields import EditParameters
from deployments.request.registry import declaration
from deployments.settings.lora import LoraSettings
from deployments.workflows import provenance

ROLES = ("encode", "denoise", "decode")

MAX_PROBED_STEPS = 4
PROBE_IMAGE_TOKENS = 4096  # the schedule's shift depends on the image's size; its finiteness doesn't


@dataclass(frozen=True)
class Footprint:
    """What one request costs each denoising forward, known from its Conditioning's shapes alone (no
    device work): what admission decides with before the request is started."""

    bucket: Hashable  # requests with equal buckets may share one model forward
    rows: int  # model-forward rows per step (guidance rows included)
    tokens: int  # tokens those rows put through each forward


@dataclass(frozen=True)
class TensorSpec:
    """A tensor a family's Conditioning carries: its shape (for readers) and whether it may be absent."""

    shape: str
    optional: bool = False


@dataclass(eq=False)
class DenoiseJob:
    """One request inside the Denoiser: its conditioning on the device and where its sampling stands.
    Everything that is this request's own lives here, never in the family shared by all rows."""

    conditioning: Conditioning
    latents: torch.Tensor  # (1, L, C) the current sample, packed
    scheduler: Any  # this request's own scheduler instance (schedulers keep a step index)
    timesteps: torch.Tensor  # (N,)
    footprint: Footprint
    tensors: dict[str, torch.Tensor]  # the conditioning's tensors on the model's device
    state: dict[str, Any] = field(default_factory=dict)  # the family's per-request state (e.g. its step noise, caches)
    step_index: int = 0
    preview_after: frozenset[int] = frozenset()  # step counts after which to keep a preview
    preview: torch.Tensor | None = None  # (1, L, C) the predicted clean sample, when kept

    @property
    def bucket(self) -> Hashable:
        return self.footprint.bucket

    @property
    def timestep(self) -> torch.Tensor:
        return self.timesteps[self.step_index]

    @property
    def done(self) -> bool:
        return self.step_index >= len(self.timesteps)


class ModelFamily(ABC):
    """Family math for one pipeline class, built for one role. `components[role]` lists what each role loads."""

    pipeline_classes: ClassVar[tuple[str, ...]]
    components: ClassVar[dict[str, tuple[str, ...]]]  # role -> component names
    denoising_model: ClassVar[str]  # the component the Denoiser runs each step (fast-path settings apply to it)
    conditioning_tensors: ClassVar[dict[str, TensorSpec]]  # what `encode` puts in Conditioning.tensors

    def __init__(
        self, spec: ModelSpec, role: str, loaded: dict[str, Any], device: torch.device, dtype: torch.dtype,
        pinned_transfers: bool = True, lora: LoraSettings = LoraSettings(),
    ):
        self.spec = spec
        self.lora = lora  # the adapters requests may name, and the schedulers those carry
        self.role = role
        self.loaded = loaded
        self.device = device
        self.dtype = dtype
        self.pinned_transfers = pinned_transfers
        self.declared = declaration(spec.pipeline_class)  # what its requests may set
        self._fewest: dict[str, int] = {}  # fewest_steps per scheduler config
        # The encoder refuses, and the denoiser's warm-up uses, the fewest steps the scheduler runs.
        self.min_inference_steps = self.fewest_steps() if role in ("encode", "denoise") else 1
        {"encode": self.set_up_encoder, "denoise": self.set_up_denoiser, "decode": self.set_up_decoder}[role]()

    def set_up_encoder(self) -> None:
        """Checks and preparations of the encode role's components (none by default)."""

    def set_up_denoiser(self) -> None:
        """Checks and preparations of the denoise role's components (none by default)."""

    def set_up_decoder(self) -> None:
        """Checks and preparations of the decode role's components (none by default)."""

    def fewest_steps(self, scheduler: dict[str, Any] | None = None) -> int:
        """The fewest denoising steps the checkpoint's scheduler (with `scheduler`'s config values) runs
        with finite sigmas: Qwen's config (`shift_terminal` set) gives NaN sigmas for 1 step — in
        diffusers' own pipeline too; the Lightning one doesn't."""
        key = repr(sorted((scheduler or {}).items()))
        if key not in self._fewest:
            self._fewest[key] = self._probe_fewest_steps(scheduler)
        return self._fewest[key]

    def _probe_fewest_steps(self, scheduler: dict[str, Any] | None) -> int:
        for steps in range(1, MAX_PROBED_STEPS + 1):
            with warnings.catch_warnings(), np.errstate(all="ignore"):  # the NaNs we are looking for warn
                warnings.simplefilter("ignore", RuntimeWarning)
                probe, _ = self.new_schedule(steps, PROBE_IMAGE_TOKENS, torch.device("cpu"), scheduler)
            if torch.isfinite(torch.as_tensor(probe.sigmas)).all():
                return steps
        raise ModelLoadError(f"{self.spec.model_id!r}: the scheduler gives no finite sigmas for 1 to {MAX_PROBED_STEPS} steps")

    def fresh_scheduler(self, overrides: dict[str, Any] | None = None):
        """A new instance of the checkpoint's scheduler (a scheduler keeps a step index: one per request),
        `overrides` replacing values of its config (e.g. a Lightning adapter's schedule)."""
        template = self.loaded["scheduler"]
        return type(template).from_config({**template.config, **(overrides or {})})

    def scheduler_of(self, parameters: EditParameters) -> dict[str, Any] | None:
        """The scheduler-config values the request's adapters replace (a preset resolved), or None."""
        scheduler = self.lora.scheduler([name for name, _ in parameters.adapters]) if parameters.lora else None
        return self.declared.scheduler_presets[scheduler] if isinstance(scheduler, str) else scheduler

    def to_host(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """CPU copies of this stage's results for the next stage (deployments/devices/transfer.py)."""
        return to_host(tensors, self.pinned_transfers)

    def to_device(self, tensor: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """A tensor from the previous stage on this stage's device."""
        return to_device(tensor, self.device, self.pinned_transfers, dtype)

    # Encoder side
    def check(self, request: EditRequest) -> None:
        """Refuses what only the loaded model can tell (the request was validated against the family's
        declaration at the edge), for the request and every later link of its chain — before any of
        them runs: parameters of another family's declaration, fewer steps than this checkpoint's
        scheduler can run, prompts the text encoder can't take (check_prompts)."""
        self.check_parameters(request.parameters)
        for k, link in enumerate(request.later_links):
            try:
                self.check_parameters(link)
            except InvalidInputError as e:
                raise InvalidInputError("chain", f"chain[{k}].{e.message}") from None

    def check_parameters(self, parameters: EditParameters) -> None:
        if type(parameters) is not self.declared:
            raise InvalidInputError(
                "model", f"the request was made for {type(parameters).pipeline} models; this is a "
                f"{self.spec.pipeline_class} ({self.declared.family})",
            )
        steps, fewest = parameters.num_inference_steps, self.fewest_steps(self.scheduler_of(parameters))
        if steps < fewest:
            raise InvalidInputError("num_inference_steps", f"this model's scheduler needs at least {fewest} steps, got {steps}")
        self.check_prompts(parameters)

    @abstractmethod
    def check_prompts(self, parameters: EditParameters) -> None:
        """Refuses prompts the text encoder can't take (_check_prompts, with the family's tokenizer and
        whether guidance reads the negative prompt)."""

    @abstractmethod
    def encode(self, request: EditRequest, images: list[Image.Image]) -> Conditioning:
        """Prompt embeddings (and negative ones with CFG) and image latents; tensors on the CPU."""

    def _check_prompts(self, parameters: EditParameters, guided: bool, tokenizer, limit: int, counted: str = "") -> None:
        """Refuses a prompt (and, when guidance uses it, a negative prompt) that holds one of the
        tokenizer's special tokens — text such as `<|image_pad|>` or `<|im_end|>` would be read as
        control tokens, miscounting the images or rewriting the chat template around the user's
        text — or is longer than `limit` tokens (diffusers would cut it silently)."""
        texts = {"prompt": parameters.prompt, "negative_prompt": parameters.negative_prompt if guided else None}
        special = _special_tokens(tokenizer)
        for param, text in texts.items():
            if text is None:
                continue
            found = special.search(text)
            if found:
                raise InvalidInputError(
                    param, f"contains {found.group()!r}, one of the text encoder's special tokens; they may not "
                    "appear in a prompt",
                )
            tokens = len(tokenizer(text).input_ids)
            if tokens > limit:
                raise InvalidInputError(param, f"may be at most {limit} tokens{counted}, got {tokens}")

    def _conditioning(self, request: EditRequest, tensors: dict[str, torch.Tensor | None], **encoded) -> Conditioning:
        """The Conditioning of `tensors` (None = absent) and `encoded` (shapes, output size) with what the
        request itself decides."""
        return Conditioning(
            request_id=request.request_id,
            tensors=self.checked_tensors({name: t for name, t in tensors.items() if t is not None}),
            seed=request.parameters.seed,
            num_inference_steps=request.parameters.num_inference_steps,
            parameters=request.parameters.family_values(),
            output=request.output,
            adapters=request.parameters.adapters,
            scheduler=self.scheduler_of(request.parameters),
            cache=request.parameters.cache,
            provenance=provenance.record(request.parameters, self.spec.model_id, self.lora.sources(), request.derived_from),
            timings=request.timings,
            **encoded,
        )

    def checked_tensors(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`tensors`, if they are what this family's Conditioning declares (as diffusers' modular blocks
        check their declared outputs): no unknown name, no required one missing."""
        declared = self.conditioning_tensors
        unknown = sorted(set(tensors) - set(declared))
        missing = sorted(name for name, spec in declared.items() if not spec.optional and name not in tensors)
        if unknown or missing:
            raise ValueError(f"{type(self).__name__} conditioning: undeclared tensor(s) {unknown}, missing {missing}")
        return tensors

    def device_tensors(self, conditioning: Conditioning) -> dict[str, torch.Tensor]:
        """The conditioning's (checked) tensors on this stage's device."""
        return {name: self.to_device(t) for name, t in self.checked_tensors(conditioning.tensors).items()}

    @staticmethod
    def guided(conditioning: Conditioning) -> bool:
        """Whether each step also runs the model without the prompt (guidance rows)."""
        return "negative_prompt_embeds" in conditioning.tensors

    # Denoiser side
    def read_adapter(self, location: str, **kwargs) -> tuple[dict[str, torch.Tensor], dict | None]:
        """A LoRA file's weights in diffusers' keys and its metadata (diffusers' `lora_state_dict`)."""
        raise ModelLoadError(f"{self.declared.family} models take no LoRA adapters")

    @abstractmethod
    def warm_up_batches(self) -> list[list[Conditioning]]:
        """Synthetic requests of the fewest steps at the model's usual size, in batches whose forwards
        compile every variant of compiled code, so that no user request waits for a compilation."""

    @abstractmethod
    def new_schedule(
        self, steps: int, image_tokens: int, device: torch.device, scheduler: dict[str, Any] | None = None
    ) -> tuple[Any, torch.Tensor]:
        """A fresh scheduler (`scheduler`'s config values replacing the checkpoint's) set for `steps` steps
        (for `image_tokens` latent tokens) and its timesteps."""

    @abstractmethod
    def footprint(self, conditioning: Conditioning) -> Footprint:
        """The request's bucket, rows and tokens per forward, from shapes only (cheap, any thread)."""

    @abstractmethod
    def start(self, conditioning: Conditioning) -> DenoiseJob:
        """Initial noise from the request's seed, its own scheduler and timesteps."""

    @abstractmethod
    def predict(self, jobs: list[DenoiseJob]) -> list[torch.Tensor | Exception]:
        """One batched model forward for `jobs` (one bucket, each at its own timestep, guidance rows
        included) and the guided noise prediction of each, shaped like its `latents` — or, where the
        job's own part failed (its inputs, its step cache, its guidance combination), the error, which
        fails that job alone. A failure of the forward itself is raised: it fails the bucket."""

    def scheduler_step(self, job: DenoiseJob, noise_pred: torch.Tensor) -> torch.Tensor:
        """The job's latents after its scheduler's step with this prediction."""
        return job.scheduler.step(noise_pred, job.timestep, job.latents, return_dict=False)[0]

    def after_step(self, job: DenoiseJob, noise_pred: torch.Tensor) -> None:
        """Runs after the job's scheduler step, with its prediction: where a family updates the job's own
        state (e.g. blends a masked edit or updates a step cache). Nothing by default."""

    def cache_report(self, job: DenoiseJob) -> dict[str, int] | None:
        """With step caching, how the job's model forwards went (computed, reused, predicted); else None."""
        return None

    @abstractmethod
    def predicted_clean(self, job: DenoiseJob, noise_pred: torch.Tensor) -> torch.Tensor:
        """The clean sample the model predicts at the job's current step (for previews), like `latents`."""

    # Decoder side
    @abstractmethod
    def decode(self, latents: Latents) -> np.ndarray:
        """The (H, W, 3) float image in [0, 1], before 8-bit quantization."""


def own_part(work, *args) -> Any:
    """`work(*args)`, or the exception it raised: one job's own part of a batched step, whose failure is
    that job's (ModelFamily.predict) and must not stop its batch-mates' work."""
    try:
        return work(*args)
    except Exception as error:
        return error


@functools.cache
def _special_tokens(tokenizer) -> re.Pattern:
    """A pattern matching any special token of `tokenizer` (longest first; never matches if it has none)."""
    tokens = {*tokenizer.all_special_tokens, *(t.content for t in tokenizer.added_tokens_decoder.values() if t.special)}
    return re.compile("|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True)) or "(?!)")
