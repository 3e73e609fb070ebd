"""LoRA adapters as configuration: which adapters a deployment offers, by name, and how requests may
use them. Torch-free: the HTTP edge and the bulk job check a request's `lora` against it before any
stage sees the request; the Denoiser loads the adapters it names (deployments/lora/store.py).

A request picks adapters with its `lora` field (a JSON list of {"name", "scale"}; online also with
`model=<adapter name>`). An adapter may carry the scheduler it was distilled for (Qwen-Image-Lightning:
a few steps, CFG off) and defaults for the request fields it needs, which apply where the request
leaves those fields unset.

A checkpoint directory may ship adapters of its own: `adapters/adapters.json`, a mapping of name ->
adapter settings whose sources are relative to that directory (the tiny checkpoints ship theirs). A
deployment offers them besides its configured ones; `offering_checkpoint_adapters` merges them.
"""

import json
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from deployments.settings.environment import PROJECT_DIR

NAME = r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,63}$"
CHECKPOINT_ADAPTERS = Path("adapters") / "adapters.json"  # inside a checkpoint directory
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LoraAdapter(_Settings):
    """One adapter a deployment offers."""

    source: str = Field(
        description="A .safetensors file, a directory holding one (see weight_name), or a Hugging Face hub id. "
        "Formats: diffusers/PEFT (lora_A/lora_B), kohya (lora_unet_*, lora_down/lora_up, alpha) and the "
        "`diffusion_model.` keys of the Qwen-Image-Lightning files; alpha != rank is honoured. A relative "
        "path is relative to the project directory; what is not a local path is a hub id."
    )
    weight_name: str | None = Field(None, description="The file inside a directory or hub repo holding several.")
    scale: float = Field(1.0, description="The adapter's strength when a request names it without a scale.")
    scheduler: str | dict[str, Any] | None = Field(
        None, description="The scheduler the adapter was distilled for: a preset of the model family (e.g. "
        "'lightning') or scheduler-config values replacing the checkpoint's. Requests using it run that schedule.",
    )
    defaults: dict[str, Any] = Field(
        default_factory=dict, description="Request fields the adapter sets when a request leaves them unset, "
        "e.g. {num_inference_steps: 8, true_cfg_scale: 1.0} for an 8-step Lightning adapter.",
    )
    description: str = Field("", description="Shown in /v1/models and on the page.")

    @field_validator("source")
    @classmethod
    def _found_if_a_path(cls, source: str) -> str:
        """A source that can only be a path (absolute, relative with ./ or ../, a file name with a weights
        suffix, or more than one /) must exist: it would otherwise be taken for a hub id and fail, or load
        something else, far from here."""
        looks_like_a_path = (
            source.startswith(("/", "./", "../", "~")) or source.endswith(WEIGHT_SUFFIXES) or source.count("/") > 1
        )
        if looks_like_a_path and not (PROJECT_DIR / source).exists():
            raise ValueError(f"{source!r} is a path, and there is no such file or directory (relative paths start at {PROJECT_DIR})")
        return source

    def location(self) -> str:
        """Where to load it from: a path made absolute (against the project directory) or a hub id."""
        local = PROJECT_DIR / self.source  # an absolute source stays as it is
        return str(local) if local.exists() else self.source


class LoraSettings(_Settings):
    """The adapters a deployment offers and the bounds on their use."""

    adapters: dict[str, LoraAdapter] = Field(default_factory=dict, description="Adapters by name (a request's `lora` names them).")
    max_per_request: int = Field(4, ge=1, le=16, description="Most adapters one request may stack.")
    max_loaded: int = Field(
        8, ge=1, description="Most adapters one Denoiser replica keeps loaded (least recently used are unloaded first)."
    )
    max_scale: float = Field(4.0, gt=0, description="Scales must lie in [-max_scale, max_scale].")

    def __hash__(self) -> int:  # request models are cached per settings; dict fields aren't hashable
        return hash(self.model_dump_json())

    @field_validator("adapters")
    @classmethod
    def _names(cls, adapters: dict[str, LoraAdapter]) -> dict[str, LoraAdapter]:
        for name in adapters:
            if not re.match(NAME, name):
                raise ValueError(f"adapter name {name!r} must be 1-64 letters, digits, '.', '_' or '-'")
        return adapters

    @model_validator(mode="after")
    def _fits(self):
        if self.max_per_request > self.max_loaded:
            raise ValueError(f"max_per_request ({self.max_per_request}) may not exceed max_loaded ({self.max_loaded})")
        return self

    def offering_checkpoint_adapters(self, checkpoint: Path) -> "LoraSettings":
        """These settings plus the adapters the checkpoint directory ships (CHECKPOINT_ADAPTERS); one
        configured here under the same name wins."""
        shipped_file = checkpoint / CHECKPOINT_ADAPTERS
        if not shipped_file.is_file():
            return self
        shipped = {
            name: {**adapter, "source": str(shipped_file.parent / adapter["source"])}
            for name, adapter in json.loads(shipped_file.read_text()).items()
        }
        settings = self.model_dump()
        settings["adapters"] = {**shipped, **settings["adapters"]}
        return LoraSettings.model_validate(settings)

    def sources(self) -> dict[str, str]:
        """Each offered adapter's file or hub id, by name (what provenance records and the result cache key)."""
        return {name: adapter.source for name, adapter in self.adapters.items()}

    def resolved(self, choices: list[dict[str, Any]]) -> tuple[tuple[str, float], ...]:
        """A request's validated `lora` choices as (name, scale) pairs, each scale given or the adapter's
        own; refuses unknown names, repeats, too many adapters, scales out of range and adapters made for
        different schedulers (raised as pydantic errors naming `lora`)."""
        if len(choices) > self.max_per_request:
            raise _refused(f"may stack at most {self.max_per_request} adapters, got {len(choices)}")
        resolved, schedulers = [], {}
        for choice in choices:
            name, scale = choice["name"], choice.get("scale")
            if name not in self.adapters:
                offered = ", ".join(sorted(self.adapters)) or "none are configured"
                raise _refused(f"unknown adapter {name!r}; this deployment offers: {offered}")
            if name in dict(resolved):
                raise _refused(f"names adapter {name!r} twice")
            adapter = self.adapters[name]
            scale = adapter.scale if scale is None else scale
            if not -self.max_scale <= scale <= self.max_scale:
                raise _refused(f"adapter {name!r}: scale must be in [{-self.max_scale}, {self.max_scale}], got {scale}")
            resolved.append((name, float(scale)))
            if adapter.scheduler is not None:
                schedulers[name] = adapter.scheduler
        if len({json.dumps(s, sort_keys=True) for s in schedulers.values()}) > 1:
            raise _refused(f"adapters {sorted(schedulers)} were made for different schedulers; use one of them")
        return tuple(resolved)

    def defaults(self, names: list[str]) -> dict[str, Any]:
        """The request defaults of the adapters `names`, the first named winning a conflict."""
        merged: dict[str, Any] = {}
        for name in reversed(names):
            merged.update(self.adapters[name].defaults)
        return merged

    def scheduler(self, names: list[str]) -> str | dict[str, Any] | None:
        """The scheduler the adapters `names` were made for (resolved() allows at most one), or None."""
        return next((self.adapters[n].scheduler for n in names if self.adapters[n].scheduler is not None), None)


def _refused(message: str) -> PydanticCustomError:
    return PydanticCustomError("refused", "{message}", {"param": "lora", "message": message})
