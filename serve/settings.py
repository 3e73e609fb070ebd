"""The online app's settings: the typed `args` of serve/config.yaml, each with a default and a description.

Ray Serve validates the YAML `args` against `AppSettings` before it builds the app, so a bad value
stops the deployment with a message naming the field, the value and what is allowed.
"""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from deployments.admission import AdmissionPolicy
from deployments.fast_path import ATTENTION_BACKENDS, FastPath


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ActorOptions(_Settings):
    num_cpus: float = Field(0.5, ge=0, description="Logical CPUs each replica reserves.")
    num_gpus: float = Field(
        0, ge=0, description="GPUs each replica reserves; a fraction (e.g. 0.25) lets small stages share a card."
    )


class Autoscaling(_Settings):
    min_replicas: int = Field(1, ge=0, description="Fewest replicas; 0 scales the stage to zero when idle.")
    initial_replicas: int | None = Field(None, ge=0, description="Replicas at start-up (default: min_replicas).")
    max_replicas: int = Field(1, ge=1, description="Most replicas.")
    target_ongoing_requests: float = Field(2, gt=0, description="Requests per replica the autoscaler aims for.")
    upscale_delay_s: float = Field(5, ge=0, description="How long load must stay high before adding replicas.")
    downscale_delay_s: float = Field(60, ge=0, description="How long load must stay low before removing replicas.")
    look_back_period_s: float = Field(30, gt=0, description="Window the autoscaler averages load over.")

    @model_validator(mode="after")
    def _ordered(self):
        initial = self.min_replicas if self.initial_replicas is None else self.initial_replicas
        if not self.min_replicas <= initial <= self.max_replicas:
            raise ValueError(
                "need min_replicas <= initial_replicas <= max_replicas, got "
                f"{self.min_replicas} <= {initial} <= {self.max_replicas}"
            )
        return self


class DeploymentSettings(_Settings):
    """Ray Serve options of one deployment."""

    ray_actor_options: ActorOptions = Field(default_factory=ActorOptions)
    max_ongoing_requests: int = Field(8, ge=1, description="Requests a replica works on at once.")
    max_queued_requests: int = Field(
        64, ge=1, description="Requests waiting for a replica before callers get 'overloaded' (429/503)."
    )
    autoscaling_config: Autoscaling = Field(default_factory=Autoscaling)
    health_check_period_s: float = Field(10, gt=0, description="How often Serve checks each replica.")
    health_check_timeout_s: float = Field(30, gt=0, description="How long a health check may take.")

    def options(self) -> dict:
        """Keyword arguments for `Deployment.options`."""
        return self.model_dump(exclude_none=True)


class FastPathSettings(_Settings):
    """The engine's speed-ups (deployments/fast_path.py); each can be switched off."""

    attention_backend: Literal[ATTENTION_BACKENDS] = Field(  # type: ignore[valid-type]
        "native", description="Transformer attention kernels: native = PyTorch SDPA's own choice; or one forced."
    )
    compile: bool = Field(False, description="Regional torch.compile of the transformer block, warmed up at start.")
    vae_tiling: bool = Field(False, description="Tiled VAE encode/decode: less memory for large images, slightly different pixels.")
    vae_slicing: bool = Field(False, description="VAE one image at a time: less memory, same pixels.")
    pinned_transfers: bool = Field(
        True, description="Tensors between GPU and host through page-locked memory, asynchronously (no effect off CUDA)."
    )

    def engine(self) -> FastPath:
        return FastPath(**self.model_dump())


class BatchedStage(_Settings):
    max_batch_size: int = Field(4, ge=1, le=64, description="Most requests one batch call handles.")
    batch_wait_timeout_s: float = Field(
        0.01, ge=0, le=10, description="How long a batch waits to fill up after its first request."
    )
    wedged_after_s: float = Field(
        300, gt=0, description="A batch running longer than this marks the replica unhealthy (Serve replaces it)."
    )
    fast_path: FastPathSettings = Field(default_factory=FastPathSettings)
    deployment: DeploymentSettings = Field(default_factory=DeploymentSettings)


class DenoiserStage(_Settings):
    """The Denoiser replica's engine loop: step-level (continuous) batching under a token budget."""

    continuous: bool = Field(
        True,
        description="Admit waiting requests between any two steps; false falls back to whole-request "
        "batching (a batch starts only when the previous one has finished).",
    )
    token_budget: int = Field(
        65536, ge=1, description="Most tokens per transformer forward: image + text tokens, CFG rows counted."
    )
    max_batch_rows: int = Field(
        16, ge=1, description="Most rows per step (a guided request takes 2 with Qwen-Image-Edit, 3 with InstructPix2Pix)."
    )
    max_waiting: int = Field(64, ge=1, description="Requests waiting in the loop before new ones get 503.")
    max_buckets_per_step: int = Field(
        4, ge=1,
        description="Most latent shapes (aspect ratios / sizes) in one engine step, one forward each. More "
        "shapes: a waiting request of another shape joins at the next step; 1: one shape at a time (fewer, "
        "fuller forwards; requests of other shapes wait for it to drain).",
    )
    max_wait_steps: int = Field(
        32, ge=1,
        description="Aging: once a request has waited this many steps, no younger request is admitted before it.",
    )
    wedged_after_s: float = Field(
        120, gt=0, description="A denoising step running longer than this marks the replica unhealthy."
    )
    unhealthy_after_failed_steps: int = Field(
        3, ge=1,
        description="This many engine steps in a row in which every request failed (e.g. a broken GPU) mark "
        "the replica unhealthy, so Serve replaces it.",
    )
    fast_path: FastPathSettings = Field(default_factory=FastPathSettings)
    deployment: DeploymentSettings = Field(default_factory=DeploymentSettings)

    def policy(self) -> AdmissionPolicy:
        return AdmissionPolicy(
            self.token_budget, self.max_batch_rows, self.max_wait_steps, self.continuous, self.max_buckets_per_step
        )


class IngressSettings(_Settings):
    deployment: DeploymentSettings = Field(default_factory=DeploymentSettings)


class Limits(_Settings):
    max_request_bytes: int = Field(
        50 * 2**20, ge=1024, description="Largest request body accepted; larger ones get 413."
    )
    max_image_bytes: int = Field(20 * 2**20, ge=1024, description="Largest single uploaded image; larger get 413.")
    max_n: int = Field(4, ge=1, le=16, description="Most images one request may ask for (`n`).")
    max_image_pixels: int = Field(
        25_000_000, ge=64 * 64, le=64_000_000,
        description="Largest input image in pixels, read from its header before decoding; larger get 400.",
    )
    max_prompt_chars: int = Field(4000, ge=1, description="Longest prompt or negative prompt, in characters.")
    max_steps: int = Field(200, ge=1, le=1000, description="Most denoising steps a request may ask for.")
    max_output_pixels: int = Field(
        2048 * 2048, ge=64 * 64, description="Largest output image (width x height) a request may ask for."
    )
    max_work: int = Field(
        4 * 50 * 1024 * 1024, ge=1,
        description="Most n x steps x output pixels one request may ask for: bounds what one request can cost.",
    )


class AppSettings(_Settings):
    """Everything `serve/config.yaml` sets under `args`."""

    model: str | None = Field(
        None, description="Checkpoint directory or hub id; the MODEL environment variable overrides it."
    )
    served_model_name: str | None = Field(
        None, description="Name in /v1/models and the `model` field (default: the checkpoint's name)."
    )
    request_timeout_s: Annotated[float, Field(gt=0)] = Field(
        300, description="A request still unfinished after this long gets 504 (a request's `timeout` field may shorten it)."
    )
    limits: Limits = Field(default_factory=Limits)
    ingress: IngressSettings = Field(default_factory=IngressSettings)
    encoder: BatchedStage = Field(default_factory=BatchedStage)
    denoiser: DenoiserStage = Field(default_factory=DenoiserStage)
    decoder: BatchedStage = Field(default_factory=BatchedStage)
