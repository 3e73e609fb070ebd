"""The online app's settings: the typed `args` of serve/config.yaml, each with a default and a description.

Ray Serve validates the YAML `args` against `AppSettings` before it builds the app, so a bad value
stops the deployment with a message naming the field, the value and what is allowed. Each stage's
`deployment` is Ray Serve's own deployment schema; `limits` are the engine's (deployments/settings/limits.py),
`lora` the LoRA adapters offered (deployments/settings/lora.py).
"""

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator
from ray.serve.config import AutoscalingConfig
from ray.serve.schema import DeploymentSchema

from deployments.checkpoints.identity import gpu_device
from deployments.settings.fast_path import FastPath
from deployments.settings.limits import Limits
from deployments.settings.loop import LoopSettings
from deployments.settings.lora import LoraSettings
from serve.stage_protocol import DEFAULT_OPTIONS

STAGE_SETTINGS = {"encode": "encoder", "denoise": "denoiser", "decode": "decoder"}  # stage -> its settings in AppSettings


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeploymentOptions(DeploymentSchema):
    """Ray Serve's own options of one stage deployment, as a Serve config's `deployments:` entries take
    them (ray.serve.schema.DeploymentSchema): all of `ray_actor_options` (num_cpus, num_gpus, memory,
    resources, accelerator_type, runtime_env, ...), `autoscaling_config` (checked by Ray's
    AutoscalingConfig), health checks, max_replicas_per_node, placement groups. What a config leaves
    unset keeps the stage's defaults (serve/stages.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field("", description="Not set here: the stage's deployment name is fixed (Encoder, ...).")

    @field_validator("autoscaling_config")
    @classmethod
    def _ray_autoscaling(cls, value):
        if isinstance(value, dict):
            AutoscalingConfig.model_validate(value)  # Ray's schema ignores unknown autoscaling fields; so do we
        return value

    def options(self) -> dict:
        """Keyword arguments for `Deployment.options`: what the config set."""
        return self.model_dump(exclude_unset=True, exclude={"name"})

    def resource_demand(self) -> dict[str, float]:
        """The resources one replica asks Ray for (the stage defaults where the config sets none)."""
        actor = {**DEFAULT_OPTIONS["ray_actor_options"], **self.options().get("ray_actor_options", {})}
        demand = {"CPU": actor.get("num_cpus", 1), "GPU": actor.get("num_gpus", 0), **actor.get("resources", {})}
        if actor.get("accelerator_type"):
            demand[f"accelerator_type:{actor['accelerator_type']}"] = 0.001  # how Ray asks for a node type
        return {resource: amount for resource, amount in demand.items() if amount}

    @property
    def device(self) -> str:
        """Where its replicas run the model: "cuda" when they hold a GPU (Ray hides GPUs from an actor
        that asks for none), "cuda:<type>" when pinned to a GPU type, else "cpu"."""
        actor = self.options().get("ray_actor_options", {})
        return gpu_device(actor.get("num_gpus", 0), actor.get("accelerator_type"))


class BatchedStage(_Settings):
    max_batch_size: int = Field(4, ge=1, le=64, description="Most requests one batch call handles.")
    batch_wait_timeout_s: float = Field(
        0.01, ge=0, le=10, description="How long a batch waits to fill up after its first request."
    )
    wedged_after_s: float = Field(
        300, gt=0, description="A batch running longer than this marks the replica unhealthy (Serve replaces it)."
    )
    fast_path: FastPath = Field(default_factory=FastPath)
    deployment: DeploymentOptions = Field(default_factory=DeploymentOptions)


class DenoiserStage(LoopSettings):
    """The Denoiser replica's engine loop: step-level (continuous) batching under a token budget
    (the admission settings are deployments/settings/loop.py's, shared with the bulk job)."""

    max_waiting: int = Field(64, ge=1, description="Requests waiting in the loop before new ones get 503.")
    wedged_after_s: float = Field(
        120, gt=0, description="A denoising step running longer than this marks the replica unhealthy."
    )
    unhealthy_after_failed_steps: int = Field(
        3, ge=1,
        description="This many engine steps in a row in which every request failed (e.g. a broken GPU) mark "
        "the replica unhealthy, so Serve replaces it.",
    )
    fast_path: FastPath = Field(default_factory=FastPath)
    deployment: DeploymentOptions = Field(default_factory=DeploymentOptions)


class IngressSettings(_Settings):
    deployment: DeploymentOptions = Field(default_factory=DeploymentOptions)


class ResultCacheSettings(_Settings):
    """The result cache (deployments/workflows/result_cache.py): identical requests answered from memory, exactly."""

    enabled: bool = Field(False, description="Answer identical requests (same inputs, parameters, seed, model) from the cache.")
    max_bytes: int = Field(512 * 2**20, ge=2**20, description="Most bytes of images the cache holds (least recently used go first).")
    call_timeout_s: float = Field(
        2.0, gt=0, le=60, description="A lookup or store slower than this is a miss (a store: skipped), and the cache "
        "is skipped for 30 s after one: an unreachable cache never holds an edit up for longer.",
    )
    deployment: DeploymentOptions = Field(default_factory=DeploymentOptions)


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
    lora: LoraSettings = Field(default_factory=LoraSettings)
    ingress: IngressSettings = Field(default_factory=IngressSettings)
    encoder: BatchedStage = Field(default_factory=BatchedStage)
    denoiser: DenoiserStage = Field(default_factory=DenoiserStage)
    decoder: BatchedStage = Field(default_factory=BatchedStage)
    result_cache: ResultCacheSettings = Field(default_factory=ResultCacheSettings)

    def stage_demands(self) -> dict[str, dict[str, float]]:
        """The resources one replica of each stage asks for (serve/capacity.py)."""
        return {stage: getattr(self, key).deployment.resource_demand() for stage, key in STAGE_SETTINGS.items()}

    def stage_engines(self) -> dict[str, tuple[str, FastPath]]:
        """Each stage's device type and fast path (deployments/checkpoints/identity.py)."""
        return {stage: (getattr(self, key).deployment.device, getattr(self, key).fast_path) for stage, key in STAGE_SETTINGS.items()}

