"""The `POST /v1/images/edits` form: the served family's declared parameters (OpenAI's Images edit
fields and the family's own, deployments/request/fields.py) plus the options of the HTTP call itself,
parsed into an EditRequest. The form's fields, ranges and defaults, its OpenAPI schema and the page's
fields all come from one model, `ServedModel.form_model`. Every refusal names the field.
"""

import functools
import json
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator
from pydantic_core import PydanticCustomError
from starlette.datastructures import FormData, UploadFile

from deployments.checkpoints.loader import ModelSpec
from deployments.contracts import EditRequest
from deployments.errors import InvalidInputError
from deployments.media.images import inspect_image
from deployments.request.binding import as_declared, json_types, validate
from deployments.request.fields import EditParameters, refused
from deployments.settings.json_text import ADAPTER_LIST_CHARS, read_json
from deployments.settings.limits import Limits
from deployments.settings.lora import LoraSettings
from deployments.workflows.chains import chain_links

IMAGE_FIELDS = ("image", "image[]")  # OpenAI's SDK sends several images as `image[]`
IGNORED = "Accepted for OpenAI compatibility; ignored."


class CallOptions(BaseModel):
    """The HTTP call's own fields: how to answer, not what to compute."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    served_name: ClassVar[str] = ""
    adapter_names: ClassVar[tuple[str, ...]] = ()  # model= may also name one of them

    model: str | None = Field(
        None, description="Optional: the served model, or one of its LoRA adapters (see /v1/models), which then "
        "applies at its configured scale before any adapters of `lora`."
    )
    response_format: Literal["b64_json"] = "b64_json"
    timeout: float | None = Field(None, ge=1, description="This request's deadline in seconds (504 past it).")
    stream: bool = Field(
        False, description="Answer as Server-Sent Events (n must be 1). Invalid input is refused with the same "
        "JSON 4xx as without streaming, before any event."
    )
    partial_images: int = Field(0, ge=0, le=3, description="Previews streamed before the final image.")
    stream_progress: bool = Field(False, description="Also stream an image_edit.progress event per denoising step.")
    chain_intermediates: bool = Field(
        False, description="With a `chain`: each image's entry also lists the images of the links before the last."
    )
    background: str | None = Field(None, description=IGNORED)
    quality: str | None = Field(None, description=IGNORED)
    user: str | None = Field(None, description=IGNORED)
    input_fidelity: str | None = Field(None, description=IGNORED)
    moderation: str | None = Field(None, description=IGNORED)

    @model_validator(mode="after")
    def _consistent(self):
        if self.model is not None and self.model != self.served_name and self.model not in self.adapter_names:
            adapters = f" and its adapters {', '.join(self.adapter_names)}" if self.adapter_names else ""
            raise refused("model", f"this server serves {self.served_name!r}{adapters}, got {self.model!r}")
        n = getattr(self, "n", 1)  # a field of the parameters this is combined with
        if self.stream and n != 1:
            raise refused("n", f"must be 1 when streaming, got {n}")
        if not self.stream and self.partial_images:
            raise refused("partial_images", "needs stream=true")
        if self.stream and getattr(self, "chain", ()):
            raise refused("chain", "a chained edit can't be streamed; leave out stream or the chain")
        if self.chain_intermediates and not getattr(self, "chain", ()):
            raise refused("chain_intermediates", "needs a chain")
        return self


@dataclass(frozen=True)
class ServedModel:
    """What the ingress knows of the model it serves, without loading it."""

    name: str  # in /v1/models and the `model` field
    spec: ModelSpec  # its family's request declaration and the checkpoint's defaults
    lora: LoraSettings = LoraSettings()  # the adapters it offers
    engine: dict | None = field(default=None, compare=False)  # how the stages run it (engine_identity): keys the result cache

    def form_model(self, limits: Limits, timeout_s: float) -> type[BaseModel]:
        """Everything the edit form may hold: the family's bound parameters and the call's options."""
        return _form_model(self.spec.request_model(limits, self.lora), self.name, timeout_s)


@functools.cache
def _form_model(parameters: type[EditParameters], served_name: str, timeout_s: float) -> type[BaseModel]:
    timeout = CallOptions.model_fields["timeout"]
    model = create_model(
        "EditForm", __base__=(parameters, CallOptions), __module__=__name__,
        timeout=(timeout.annotation, Field(None, ge=1, le=timeout_s, description=timeout.description)),
    )
    model.served_name = served_name
    model.adapter_names = tuple(parameters.lora_settings.adapters)
    return model


@functools.cache
def _text_fields(form_model: type[BaseModel]) -> frozenset[str]:
    """The form's fields of string type: for them an empty value is a value (an empty prompt is refused)."""
    properties = form_model.model_json_schema()["properties"]
    return frozenset(name for name, schema in properties.items() if "string" in json_types(schema))


@dataclass(frozen=True)
class EditForm:
    """A parsed edit call: the request for the engine, how many images, and how to answer."""

    request: EditRequest
    links: tuple[EditParameters, ...]  # the chain's links: the request's parameters first (deployments/workflows/chains.py)
    n: int
    seeds: tuple[int, ...]  # one per image: seed, seed + 1, ...
    timeout_s: float | None  # the request's own deadline, if it set a shorter one than the server's
    stream: bool = False  # answer as Server-Sent Events
    partial_images: int = 0  # previews to stream before the final image
    stream_progress: bool = False  # also stream an `image_edit.progress` event per denoising step
    chain_intermediates: bool = False  # answer with each image's links before the last, too


async def read_uploads(form: FormData, limits: Limits, form_model: type[BaseModel]) -> dict[str, bytes | list[bytes]]:
    """The uploaded files of the family's file fields (`image`, a list; e.g. `mask`, one file), refused
    early (before decoding) when too many, too large or not images."""
    max_images = form_model.declaration.max_input_images
    files = [file for name in IMAGE_FIELDS for file in form.getlist(name)]
    if not files:
        raise InvalidInputError("image", f"upload 1 to {max_images} image files as `image` (or `image[]`)")
    if len(files) > max_images:
        raise InvalidInputError("image", f"give 1 to {max_images} image(s), got {len(files)}")
    uploads: dict[str, bytes | list[bytes]] = {
        "image": [await _read(file, "image" if len(files) == 1 else f"image[{i}]", limits) for i, file in enumerate(files)]
    }
    for name in form_model.file_fields():
        if name == "image":
            continue
        given = form.getlist(name)
        if len(given) > 1:
            raise InvalidInputError(name, f"give one file, got {len(given)}")
        if given:
            uploads[name] = await _read(given[0], name, limits)
    return uploads


async def _read(file, param: str, limits: Limits) -> bytes:
    if not isinstance(file, UploadFile):
        raise InvalidInputError(param, "must be an uploaded file (multipart/form-data), not a text field")
    if file.size is not None and file.size > limits.max_image_bytes:  # known before reading it in
        raise limits.image_too_large(param, str(file.size))
    data = await file.read()
    inspect_image(data, param, limits.max_image_pixels)  # format and size from the header: refuse early
    return data


def parse_edit_form(form: FormData, uploads: dict[str, bytes | list[bytes]], form_model: type[BaseModel]) -> EditForm:
    """The form's text fields and `uploads` (read_uploads) validated by `form_model` (ServedModel.form_model)."""
    values: dict[str, object] = dict(uploads)
    text_fields = _text_fields(form_model)
    for name in form.keys():
        if name in IMAGE_FIELDS or name in uploads:
            continue
        given = form.getlist(name)
        if len(given) > 1:
            raise InvalidInputError(name, f"give it once, got {len(given)} values")
        if not isinstance(given[0], str) and name in form_model.model_fields:
            raise InvalidInputError(name, "must be a text field, not a file")
        if not isinstance(given[0], str):  # no field of this form (e.g. another family's `mask`): validation says so
            values[name] = "(a file)"
            continue
        if given[0] != "" or name in text_fields:  # an empty number means: not given (as HTML forms send it)
            values[name] = given[0]
    if values.get("model") in form_model.adapter_names:
        values["lora"] = _with_adapter(values["model"], values.get("lora"))
    validated = validate(form_model, values)
    parameters = as_declared(validated)
    links = chain_links(form_model, parameters, values)
    return EditForm(
        request=EditRequest(links[0], later_links=links[1:]),
        links=links,
        n=parameters.n,
        seeds=tuple(parameters.seed + i for i in range(parameters.n)),
        timeout_s=validated.timeout,
        stream=validated.stream,
        partial_images=validated.partial_images,
        stream_progress=validated.stream_progress,
        chain_intermediates=validated.chain_intermediates,
    )


def _with_adapter(name: str, lora: str | None) -> str:
    """`lora` (JSON text) with adapter `name` (chosen by `model=`) first; malformed `lora` is left for
    validation to refuse."""
    try:
        given = read_json(lora, "", ADAPTER_LIST_CHARS) if lora else []
    except PydanticCustomError:
        return lora
    return json.dumps([{"name": name}, *given]) if isinstance(given, list) else lora
