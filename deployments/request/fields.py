"""What an edit request may set, declared once: the fields every model family shares here, each
family's own (guidance scales, ...) in a subclass in its folder (deployments/families/<family>/parameters.py),
and the field types they are declared with.

Every edge is derived from these declarations: the HTTP form and its OpenAPI document (serve/), the
bulk job's manifest columns and flags (cluster/bulk/), `python -m deployments.cli.edit`'s flags and the
page's fields. binding.py binds them to the limits and a checkpoint, and validates values with them.
"""

import random
import re
import typing
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from deployments.errors import InvalidInputError
from deployments.settings.guard import GuardField
from deployments.settings.json_text import ADAPTER_LIST_CHARS, CHAIN_CHARS, json_text
from deployments.settings.limits import HARD_MAX_N, HARD_MAX_STEPS, Limits
from deployments.settings.lora import LoraSettings
from deployments.settings.step_cache import StepCache

MAX_SEED = 2**63 - 1
SIZE = re.compile(r"(\d{1,5})x(\d{1,5})")  # fullmatch: `$` would accept a trailing newline


def _instruction(text: str) -> str:
    if not text.strip():
        raise PydanticCustomError("empty_prompt", "must be a non-empty instruction")
    return _text(text)


def _text(text: str | None) -> str | None:
    if text is not None and "\x00" in text:
        raise PydanticCustomError("nul", "must not contain NUL characters")
    return text


# Types a family's own fields are declared with.
GuidanceScale = Annotated[float, Field(ge=0, le=20)]
NegativePrompt = Annotated[
    str | None,
    Field(title="Negative prompt", description="What to steer away from; without one, the family's default."),
    AfterValidator(_text),
]


# A chain of further instructions (deployments/workflows/chains.py): instructions, or objects with a prompt
# and fields of their own.
ChainField = Annotated[
    tuple[str | dict[str, Any], ...],
    json_text('["make it night", {"prompt": "add snow", "seed": 3}]', CHAIN_CHARS, empty=(), off=False, kind="a JSON list"),
    Field(max_length=16),
]


class AdapterChoice(BaseModel):
    """One adapter a request stacks: a name the deployment offers (/v1/models) and its strength."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)  # strict: true is no scale

    name: str
    scale: float | None = Field(None, description="The adapter's strength; unset: the adapter's configured scale.")


AdapterChoices = Annotated[
    tuple[AdapterChoice, ...],
    json_text(
        '[{"name": "lightning-8step", "scale": 1.0}]', ADAPTER_LIST_CHARS, empty=(), off=False, kind='a JSON list of {"name", "scale"}'
    ),
]


def _only_auto_size(schema: dict, model: type) -> None:
    """In the JSON schema of a family whose requests may not choose a size, size's one allowed value."""
    if model.size_rule is not None:
        schema["properties"]["size"]["enum"] = ["auto"]


class EditParameters(BaseModel):
    """The fields of every family's requests. A family subclasses it with its own fields and sets the
    class variables; `request_model` then binds it to the limits and a checkpoint's defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, json_schema_extra=_only_auto_size)

    family: ClassVar[str]  # what users call it, in messages and /v1/models
    pipeline: ClassVar[str]  # the diffusers pipeline class (model_index.json's `_class_name`)
    max_input_images: ClassVar[int] = 1
    size_rule: ClassVar[str | None] = None  # set when a request may not choose its output size: how it is chosen
    default_num_inference_steps: ClassVar[int] = 50  # diffusers' default for the pipeline
    takes_adapters: ClassVar[bool] = False  # whether the family's Denoiser can run LoRA adapters
    takes_step_cache: ClassVar[bool] = False  # whether the family's Denoiser can cache steps (`cache`)
    scheduler_presets: ClassVar[dict[str, dict[str, Any]]] = {}  # scheduler configs an adapter may name
    # Set by request_model:
    declaration: ClassVar[type["EditParameters"] | None] = None  # the family's declared class
    limits: ClassVar[Limits] = Limits()
    default_area: ClassVar[int] = 1024 * 1024  # output pixels of size=auto (for the work bound)
    lora_settings: ClassVar[LoraSettings] = LoraSettings()  # the adapters `lora` may name

    image: list[bytes] = Field(
        min_length=1, description="The image(s) to edit: PNG, JPEG or WebP files (several as `image[]`)."
    )
    prompt: Annotated[str, AfterValidator(_instruction)] = Field(
        description="The edit instruction, in any language. The text encoder's special tokens (e.g. "
        "<|image_pad|>, <|im_end|>) are refused."
    )
    negative_prompt: NegativePrompt = None
    n: int = Field(1, ge=1, le=HARD_MAX_N, description="Images to make; image i uses seed + i.")
    seed: int = Field(
        default_factory=lambda: random.randrange(2**31), ge=0, le=MAX_SEED,
        description="Same seed and inputs give the same image; random if unset.",
    )
    size: str = Field(
        "auto", description="WIDTHxHEIGHT (multiples of the model's latent grid, 16 for Qwen-Image-Edit) or "
        "auto: the model's area at the aspect ratio of the (last) input image."
    )
    num_inference_steps: int = Field(
        default_num_inference_steps, ge=1, le=HARD_MAX_STEPS, title="Steps",  # request_model sets the checkpoint's default
        description="Denoising steps (at least what the model's scheduler can run, 2 for Qwen-Image-Edit's).",
    )
    output_format: Literal["png", "jpeg", "webp"] = Field("png", title="Output format", description="The edited image's file format.")
    output_compression: int = Field(100, ge=0, le=100, title="Quality", description="JPEG/WebP quality; 100 is best. Ignored for PNG.")
    lora: AdapterChoices = Field(
        (), title="LoRA adapters",
        description='Adapters to apply, stacked in order: a JSON list of {"name", "scale"} naming adapters the '
        "deployment offers (/v1/models). Their own defaults (e.g. a Lightning adapter's steps and CFG) apply "
        "to fields the request leaves unset.",
    )

    cache: StepCache = Field(
        None, title="Step cache", description='Reuse work between denoising steps, per request: JSON such as '
        '{"method": "first_block_cache", "threshold": 0.1} or {"method": "taylorseer", "cache_interval": 5, '
        '"disable_cache_before_step": 3, "max_order": 1}, or "off"; the deployment\'s default if unset. Faster, and '
        "further from the uncached result the more it skips.",
    )

    chain: ChainField = Field(
        (), title="Chain", description='Further instructions, each applied to the previous one\'s image: a JSON list '
        'of instructions or objects with a prompt and fields of their own, e.g. ["make it night", {"prompt": '
        '"add snow", "seed": 3}]. Later links take the request\'s values where they set none.',
    )
    guard: GuardField = Field(
        None, title="Guard", description='Limits on the edited image\'s quality report and what to do past them: JSON '
        'such as {"max_changed_fraction": 0.3, "min_unchanged_ssim": 0.9, "action": "retry"} (action flag, retry '
        'once with the next seed, or fail), or "off"; the deployment\'s default if unset. Never changes the image.',
    )

    @field_validator("size")
    @classmethod
    def _size(cls, size: str) -> str:
        if size == "auto":
            return size
        if cls.size_rule is not None:
            raise PydanticCustomError("size", "{rule}; leave size out or give 'auto'", {"rule": f"{cls.family} models {cls.size_rule}"})
        match = SIZE.fullmatch(size)
        if not match:
            raise PydanticCustomError("size", "must be 'auto' or WIDTHxHEIGHT (e.g. 1024x768), got {size}", {"size": repr(size)})
        width, height = int(match.group(1)), int(match.group(2))
        if width == 0 or height == 0 or width * height > cls.limits.max_output_pixels:
            raise PydanticCustomError(
                "size", "must be at least 1x1 and at most {most} pixels in all, got {size}",
                {"most": cls.limits.max_output_pixels, "size": size},
            )
        return size

    @model_validator(mode="wrap")
    @classmethod
    def _adapters_resolved(cls, values: Any, handler):
        """The request with its adapters resolved (each with its scale) and their defaults filled into the
        fields it left unset — validated again with them, so every bound holds for the final values."""
        validated = handler(values)
        if not validated.lora or not isinstance(values, dict):
            return validated
        resolved = cls.lora_settings.resolved([choice.model_dump() for choice in validated.lora])
        defaults = cls.lora_settings.defaults([name for name, _ in resolved])
        unset = {name: value for name, value in defaults.items() if name not in validated.model_fields_set}
        lora = [{"name": name, "scale": scale} for name, scale in resolved]
        return handler({**values, **unset, "lora": lora, "seed": validated.seed})

    @model_validator(mode="after")
    def _step_cache_allowed(self):
        if self.cache is None:
            return self
        if not self.takes_step_cache:
            raise refused("cache", f"{self.family} models take no step cache; leave it out or give off")
        why = self.limits.step_cache.refusal(self.cache)
        if why:
            raise refused("cache", why)
        return self

    @model_validator(mode="after")
    def _bounded_work(self):
        if self.seed > MAX_SEED - (self.n - 1):
            raise refused("seed", f"must be at most {MAX_SEED - (self.n - 1)} with n={self.n} (image i uses seed + i)")
        if self.work > self.limits.max_work:
            raise refused(
                "n", f"n x num_inference_steps x output pixels (x 2 with a guard that retries) may be at most "
                f"{self.limits.max_work}, got {self.work}; ask for fewer images, fewer steps or a smaller size",
            )
        return self

    @property
    def work(self) -> int:
        """What the request may cost: n x steps x output pixels, twice over when its guard may retry each image."""
        area = self.default_area if self.output_size is None else self.output_size[0] * self.output_size[1]
        retries = 2 if self.guard is not None and self.guard.action == "retry" else 1
        return self.n * self.num_inference_steps * area * retries

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_as_numbers(cls, value: Any, info):
        """true is no number (pydantic's lax mode would read it as 1): a chain link's JSON or a bulk
        row's boolean column can't set n, seed or a scale with it."""
        if isinstance(value, bool) and bool not in _leaf_types(cls.model_fields[info.field_name].annotation):
            raise PydanticCustomError("not_a_number", "must not be true or false")
        return value

    @property
    def output_size(self) -> tuple[int, int] | None:
        """(width, height) asked for, or None for auto."""
        match = SIZE.fullmatch(self.size)
        return None if match is None else (int(match.group(1)), int(match.group(2)))

    @classmethod
    def family_fields(cls) -> tuple[str, ...]:
        """The fields this family adds to the shared ones (e.g. its guidance scales)."""
        return tuple(name for name in cls.model_fields if name not in EditParameters.model_fields)

    @classmethod
    def file_fields(cls) -> tuple[str, ...]:
        """The fields holding uploaded files (`image`, a family's `mask`): multipart files online, path
        columns in a bulk manifest."""
        return tuple(name for name, field in cls.model_fields.items() if bytes in _leaf_types(field.annotation))

    def family_values(self) -> dict[str, Any]:
        """The family's own values a stage needs beyond its tensors (its uploads become tensors)."""
        files = self.file_fields()
        return {name: getattr(self, name) for name in self.family_fields() if name not in files}

    @property
    def adapters(self) -> tuple[tuple[str, float], ...]:
        """The adapters to apply, as (name, scale) pairs (scales resolved at validation)."""
        return tuple((choice.name, choice.scale) for choice in self.lora)


def _leaf_types(annotation) -> set:
    """The plain types inside an annotation (`list[bytes] | None` -> {bytes, NoneType})."""
    args = typing.get_args(annotation)
    if not args:
        return {annotation}
    return set().union(*(_leaf_types(arg) for arg in args))


def checked_file(check) -> AfterValidator:
    """A validator of an uploaded file's bytes by `check(data, param)`, which raises InvalidInputError
    (e.g. images.inspect_image): its message becomes the refusal's."""

    def validate(data: bytes | None, info) -> bytes | None:
        if data is not None:
            try:
                check(data, info.field_name)
            except InvalidInputError as e:
                raise PydanticCustomError("as_is", "{message}", {"message": e.message.removeprefix(f"{e.param}: ")}) from None
        return data

    return AfterValidator(validate)


def refused(param: str, message: str) -> PydanticCustomError:
    """A model-level refusal that names its field (pydantic reports model validators at the root)."""
    return PydanticCustomError("refused", "{message}", {"param": param, "message": message})
