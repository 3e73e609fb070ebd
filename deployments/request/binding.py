"""A family's declared request fields bound to the engine's limits, a checkpoint's defaults and the
adapters offered (`request_model`: the model every edge validates with, whose JSON schema states the
ranges and defaults the server enforces), and validation with it: `parse` turns any refusal into one
InvalidInputError naming the field and what is allowed, the same message wherever the values came
from. Torch-free: the HTTP layer and the bulk job check requests before any stage sees them."""

import functools
import typing
from typing import Annotated, Any

from pydantic import BaseModel, Field, ValidationError, create_model

from deployments.errors import InvalidInputError
from deployments.request.fields import EditParameters
from deployments.request.registry import foreign_field
from deployments.settings.engine import EngineSettings
from deployments.settings.limits import Limits
from deployments.settings.lora import LoraSettings


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
