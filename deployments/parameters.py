"""What an edit request may set, declared once: the fields every model family shares here, each
family's own (guidance scales, ...) in a subclass beside its math (deployments/families/).

Every edge is derived from these declarations: the HTTP form and its OpenAPI document (serve/), the
bulk job's manifest columns and flags (cluster/bulk/), `python -m deployments.edit`'s flags and the
page's fields. `request_model` binds a family's declaration to the engine's limits and a checkpoint's
defaults; `parse` validates values with it and turns any refusal into one InvalidInputError whose
message is the same wherever the values came from. Kept free of torch and diffusers: the HTTP layer
and the bulk job check requests before any stage sees them.
"""

import functools
import random
import re
import typing
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, create_model
from pydantic import field_validator, model_validator
from pydantic_core import PydanticCustomError

from deployments.chains import ChainField
from deployments.errors import InvalidInputError
from deployments.guards import GuardField
from deployments.limits import HARD_MAX_N, HARD_MAX_STEPS, Limits
from deployments.lora_settings import LoraSettings, choices_from_text
from deployments.step_cache_settings import StepCache
from deployments.settings import EngineSettings

MAX_SEED = 2**63 - 1
SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")


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


class AdapterChoice(BaseModel):
    """One adapter a request stacks: a name the deployment offers (/v1/models) and its strength."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str
    scale: float | None = Field(None, description="The adapter's strength; unset: the adapter's configured scale.")


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
    lora: Annotated[tuple[AdapterChoice, ...], BeforeValidator(choices_from_text)] = Field(
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
        match = SIZE.match(size)
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
        work = self.n * self.num_inference_steps * (self.default_area if self.output_size is None else self.output_size[0] * self.output_size[1])
        if work > self.limits.max_work:
            raise refused(
                "n", f"n x num_inference_steps x output pixels may be at most {self.limits.max_work}, got {work}; ask "
                "for fewer images, fewer steps or a smaller size",
            )
        return self

    @property
    def output_size(self) -> tuple[int, int] | None:
        """(width, height) asked for, or None for auto."""
        match = SIZE.match(self.size)
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


@functools.cache
def request_model(
    declared: type[EditParameters], limits: Limits = Limits(), settings: EngineSettings | None = None,
    lora: LoraSettings = LoraSettings(),
) -> type[EditParameters]:
    """`declared` bound to `limits`, a checkpoint's `settings` (its default steps, and the output area
    of size=auto; without them, the family's) and the adapters `lora` offers: the model every edge
    validates with, whose JSON schema states the ranges and defaults the server enforces."""
    fields = declared.model_fields
    bounds = {
        "image": Field(max_length=declared.max_input_images),
        "prompt": Field(max_length=limits.max_prompt_chars),
        "negative_prompt": Field(max_length=limits.max_prompt_chars),
        "n": Field(le=limits.max_n),
        "num_inference_steps": Field(le=limits.max_steps),
    }
    settings = settings or EngineSettings(default_num_inference_steps=declared.default_num_inference_steps)
    steps, default_area = settings.default_num_inference_steps, settings.vae_image_area
    defaults = {
        "num_inference_steps": steps, "cache": limits.step_cache.default if declared.takes_step_cache else None,
        "guard": limits.guard.default,
    }
    overrides = {
        name: (_bounded(fields[name], bounds.get(name, Field())), defaults.get(name, fields[name].default))
        for name in {*bounds, *defaults}
    }
    model = create_model(declared.__name__, __base__=declared, __module__=declared.__module__, **overrides)
    model.declaration, model.limits, model.default_area, model.lora_settings = declared, limits, default_area, lora
    model.default_num_inference_steps = steps
    _check_adapters(model)
    return model


def _check_adapters(model: type[EditParameters]) -> None:
    """Refuses (ValueError naming the adapter) configured adapters the bound `model`'s family can't use:
    any, for a family without adapters; an unknown scheduler preset; defaults that aren't valid values of
    the family's fields under these limits."""
    declared = model.declaration
    for name, adapter in model.lora_settings.adapters.items():
        where = f"lora.adapters.{name}"
        if not declared.takes_adapters:
            raise ValueError(f"{where}: {declared.family} models take no LoRA adapters")
        if isinstance(adapter.scheduler, str) and adapter.scheduler not in declared.scheduler_presets:
            raise ValueError(f"{where}.scheduler: {adapter.scheduler!r} is not one of {sorted(declared.scheduler_presets)}")
        fixed = {"image", "prompt", "lora"} & set(adapter.defaults)
        if fixed:
            raise ValueError(f"{where}.defaults: {sorted(fixed)} can't have adapter defaults")
        try:
            model.model_validate({"image": [b"-"], "prompt": "-", **adapter.defaults})
        except ValidationError as e:
            raise ValueError(f"{where}.defaults: {invalid_input(e, model).message}") from None


def _bounded(field, bound):
    """The field's type and declaration with the constraint `bound` last (pydantic keeps the last of two
    `le`s), on the non-None part of an optional field."""
    args = typing.get_args(field.annotation)
    if type(None) in args:
        inner = next(arg for arg in args if arg is not type(None))
        return Annotated[Annotated[inner, bound] | None, field]
    return Annotated[field.annotation, field, bound]


def parse(model: type[EditParameters], values: dict[str, Any]) -> EditParameters:
    """`values` validated by `model` (from request_model) as the family's declared parameters."""
    return as_declared(validate(model, values))


def validate(model: type[BaseModel], values: dict[str, Any]) -> BaseModel:
    """`values` validated by `model`; a refusal is an InvalidInputError naming the field."""
    try:
        return model.model_validate(values)
    except ValidationError as e:
        raise invalid_input(e, model) from None


def as_declared(validated: EditParameters) -> EditParameters:
    """A validated request as an instance of its family's declared class, with only its fields:
    picklable by reference (it crosses process boundaries), unlike the bound model's."""
    declared = validated.declaration or type(validated)
    return declared.model_construct(**{name: getattr(validated, name) for name in declared.model_fields})


def invalid_input(error: ValidationError, model: type[BaseModel]) -> InvalidInputError:
    """The first problem of `error` as an InvalidInputError: the field it is about and, from the field's
    declaration, what is allowed."""
    problem = error.errors(include_url=False)[0]
    kind, value = problem["type"], problem.get("input")
    if kind == "refused":
        return InvalidInputError(problem["ctx"]["param"], problem["ctx"]["message"])
    param = str(problem["loc"][0]) if problem["loc"] else "body"
    field = model.model_fields.get(param)
    if len(problem["loc"]) > 1:  # inside a structured field (e.g. one `lora` entry): say where
        where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in problem["loc"][1:])
        return InvalidInputError(param, f"{param}{where}: {problem['msg'].lower()}, got {value!r}")
    if kind == "extra_forbidden":
        return InvalidInputError(param, _not_a_field(param, model))
    if kind == "missing":
        return InvalidInputError(param, "is required")
    if field is None or kind in ("empty_prompt", "nul", "size", "as_is"):
        return InvalidInputError(param, problem["msg"])
    if kind == "literal_error":
        return InvalidInputError(param, f"must be one of {problem['ctx']['expected']}, got {value!r}")
    if param == "image" and kind in ("too_long", "too_short"):
        most = _range(field, "max_length")[1]
        return InvalidInputError(param, f"give 1 to {most} image(s) to {model.family} models, got {len(value)}")
    if kind in ("too_long", "string_too_long"):
        return InvalidInputError(param, f"may be at most {problem['ctx']['max_length']} characters, got {len(value)}")
    if kind.startswith("bool"):
        return InvalidInputError(param, f"must be true or false, got {value!r}")
    low, high = _range(field, "ge", "le")
    if low is not None or high is not None:
        kind_name = "an integer" if _numeric(field) is int else "a finite number"
        allowed = f"in [{low}, {high}]" if high is not None else f">= {low}"
        return InvalidInputError(param, f"must be {kind_name} {allowed}, got {_shown(value)}")
    return InvalidInputError(param, f"{problem['msg'].lower()}, got {value!r}")


def _shown(value) -> str:
    """A refused value as the message shows it: a number as written (whether it came as text, from a
    form, or as a number, from a bulk row), anything else quoted."""
    if isinstance(value, str):
        try:
            float(value)
            return value
        except ValueError:
            return repr(value)
    return str(value)


def json_types(schema: dict) -> set[str]:
    """The JSON types a field's JSON schema allows, null aside (e.g. {"integer"}); a structured value (a
    `$ref` or `oneOf` of models, e.g. `cache`) is an "object"."""
    options = schema.get("anyOf", [schema])
    return {option.get("type", "object") for option in options if option.get("type") != "null"}


def _not_a_field(param: str, model: type[BaseModel]) -> str:
    from deployments.families import foreign_field  # the families import this module

    foreign = foreign_field(param, model) if getattr(model, "family", None) else None
    if foreign is not None:
        return foreign
    return f"is not a field of this API; the fields are {', '.join(model.model_fields)}"


def _range(field, low: str = "min_length", high: str = "max_length") -> tuple[Any, Any]:
    """The tightest bounds named `low` and `high` (e.g. ge, le) among the field's constraints."""
    lows = [getattr(m, low) for m in field.metadata if hasattr(m, low)]
    highs = [getattr(m, high) for m in field.metadata if hasattr(m, high)]
    return (max(lows) if lows else None), (min(highs) if highs else None)


def _numeric(field) -> type:
    annotation = field.annotation
    return int if annotation is int or annotation == (int | None) else float
