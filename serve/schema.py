"""The `POST /v1/images/edits` form: OpenAI's Images edit fields plus our extensions, parsed into an
EditRequest. Every refusal names the field and what is allowed.
"""

import math
import random
import re
from dataclasses import dataclass

from starlette.datastructures import FormData, UploadFile

from deployments.contracts import MAX_INPUT_IMAGES, EditRequest, OutputSpec
from deployments.errors import InvalidInputError, PayloadTooLargeError
from deployments.images import inspect_image
from deployments.parameters import GUIDANCE_FIELDS, FamilyParameters
from deployments.settings import EngineSettings
from serve.settings import Limits

# Fields OpenAI's SDK may send that don't change what this server computes; accepted and ignored.
IGNORED_FIELDS = ("background", "quality", "user", "input_fidelity", "moderation")
FIELDS = (
    "image", "image[]", "prompt", "negative_prompt", "n", "seed", "size", "num_inference_steps", *GUIDANCE_FIELDS,
    "output_format", "output_compression", "response_format", "model", "timeout", "mask", "stream", "partial_images",
    "stream_progress", *IGNORED_FIELDS,
)
MAX_PARTIAL_IMAGES = 3
MAX_CFG_SCALE = 20.0
SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")


@dataclass(frozen=True)
class ServedModel:
    """What the ingress knows of the model it serves, without loading it."""

    name: str  # in /v1/models and the `model` field
    engine: EngineSettings  # its defaults: output area of size=auto, steps (for the work bound)
    parameters: FamilyParameters  # what its family's requests may set


@dataclass(frozen=True)
class EditForm:
    """A parsed edit call: the request for the engine, how many images, and the response format."""

    request: EditRequest
    n: int
    seeds: tuple[int, ...]  # one per image: seed, seed + 1, ...
    timeout_s: float | None  # the request's own deadline, if it set a shorter one than the server's
    stream: bool = False  # answer as Server-Sent Events
    partial_images: int = 0  # previews to stream before the final image
    stream_progress: bool = False  # also stream an `image_edit.progress` event per denoising step


async def read_uploads(form: FormData, limits: Limits) -> tuple[bytes, ...]:
    files = [*form.getlist("image"), *form.getlist("image[]")]
    if not files:
        raise InvalidInputError("image", "upload 1 to 3 image files as `image` (or `image[]`)")
    if len(files) > MAX_INPUT_IMAGES:
        raise InvalidInputError("image", f"give 1 to {MAX_INPUT_IMAGES} images, got {len(files)}")
    uploads = []
    for i, file in enumerate(files):
        param = "image" if len(files) == 1 else f"image[{i}]"
        if not isinstance(file, UploadFile):
            raise InvalidInputError(param, "must be an uploaded file (multipart/form-data), not a text field")
        if file.size is not None and file.size > limits.max_image_bytes:  # known before reading it in
            raise PayloadTooLargeError(param, f"each image may be at most {limits.max_image_bytes} bytes, got {file.size}")
        data = await file.read()
        inspect_image(data, param, limits.max_image_pixels)  # format and size from the header: refuse early
        uploads.append(data)
    return tuple(uploads)


def parse_edit_form(
    form: FormData, uploads: tuple[bytes, ...], limits: Limits, served: ServedModel, timeout_s: float
) -> EditForm:
    """The form as an EditRequest for `served`'s family; `timeout_s` is the server's deadline."""
    unknown = sorted(set(form.keys()) - set(FIELDS))
    if unknown:
        raise InvalidInputError(unknown[0], f"is not a field of this API; the fields are {', '.join(FIELDS)}")
    if form.get("mask") is not None:
        raise InvalidInputError("mask", "masks are not supported; describe the region in the prompt instead")
    response_format = _text(form, "response_format") or "b64_json"
    if response_format != "b64_json":
        raise InvalidInputError("response_format", f"only b64_json is supported, got {response_format!r}")
    model = _text(form, "model")
    if model is not None and model != served.name:
        raise InvalidInputError("model", f"this server serves {served.name!r}, got {model!r}")
    size = _text(form, "size")
    given = {name: _float(form, name, None, 0.0, MAX_CFG_SCALE) for name in GUIDANCE_FIELDS}
    served.parameters.check({**given, "size": None if size in (None, "", "auto") else size})
    if len(uploads) > served.parameters.max_input_images:
        raise InvalidInputError(
            "image", f"{served.name} takes at most {served.parameters.max_input_images} image(s), got {len(uploads)}"
        )

    n = _int(form, "n", 1, limits.max_n) or 1
    stream = _bool(form, "stream")
    partial_images = _int(form, "partial_images", 0, MAX_PARTIAL_IMAGES) or 0
    if stream and n != 1:
        raise InvalidInputError("n", f"must be 1 when streaming, got {n}")
    if not stream and partial_images:
        raise InvalidInputError("partial_images", "needs stream=true")
    seed = _int(form, "seed", 0, 2**63 - n)
    seed = random.randrange(2**31) if seed is None else seed
    width, height = _size(size, limits)
    steps = _int(form, "num_inference_steps", 1, limits.max_steps)
    engine = served.engine  # size=auto: at most the model's area
    work = n * (steps or engine.default_num_inference_steps) * (width * height if width else engine.vae_image_area)
    if work > limits.max_work:
        raise InvalidInputError(
            "n", f"n x num_inference_steps x output pixels may be at most {limits.max_work}, got {work}; ask for "
            "fewer images, fewer steps or a smaller size",
        )
    output_format = _text(form, "output_format") or "png"
    compression = _int(form, "output_compression", 0, 100)
    request = EditRequest(
        images=uploads,
        prompt=_prompt(form, "prompt", limits) or "",
        negative_prompt=_prompt(form, "negative_prompt", limits, served.parameters.default_negative_prompt),
        seed=seed,
        num_inference_steps=steps,
        **given,
        width=width,
        height=height,
        output=OutputSpec(format=output_format, compression=100 if compression is None else compression),
    )
    own_timeout = _float(form, "timeout", None, 1.0, timeout_s)
    return EditForm(
        request=request, n=n, seeds=tuple(seed + i for i in range(n)), timeout_s=own_timeout, stream=stream,
        partial_images=partial_images, stream_progress=_bool(form, "stream_progress"),
    )


def _bool(form: FormData, name: str) -> bool:
    text = (_text(form, name) or "false").lower()
    if text not in ("true", "false", "1", "0"):
        raise InvalidInputError(name, f"must be true or false, got {text!r}")
    return text in ("true", "1")


def _prompt(form: FormData, name: str, limits: Limits, default: str | None = None) -> str | None:
    text = _text(form, name, strip=False)
    if text is None:
        return default
    if len(text) > limits.max_prompt_chars:
        raise InvalidInputError(name, f"may be at most {limits.max_prompt_chars} characters, got {len(text)}")
    if "\x00" in text:
        raise InvalidInputError(name, "must not contain NUL characters")
    return text


def _text(form: FormData, name: str, strip: bool = True) -> str | None:
    value = form.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInputError(name, "must be a text field, not a file")
    return value.strip() if strip else value


def _int(form: FormData, name: str, low: int, high: int) -> int | None:
    text = _text(form, name)
    if text is None or text == "":
        return None
    try:
        value = int(text)
    except ValueError:
        raise InvalidInputError(name, f"must be an integer in [{low}, {high}], got {text!r}") from None
    if not low <= value <= high:
        raise InvalidInputError(name, f"must be an integer in [{low}, {high}], got {value}")
    return value


def _float(form: FormData, name: str, default: float | None, low: float, high: float) -> float | None:
    text = _text(form, name)
    if text is None or text == "":
        return default
    try:
        value = float(text)
    except ValueError:
        raise InvalidInputError(name, f"must be a number in [{low}, {high}], got {text!r}") from None
    if not math.isfinite(value) or not low <= value <= high:
        raise InvalidInputError(name, f"must be a finite number in [{low}, {high}], got {text!r}")
    return value


def _size(text: str | None, limits: Limits) -> tuple[int | None, int | None]:
    if text is None or text in ("", "auto"):
        return None, None
    match = SIZE.match(text)
    if not match:
        raise InvalidInputError("size", f"must be 'auto' or WIDTHxHEIGHT (e.g. 1024x768), got {text!r}")
    width, height = int(match.group(1)), int(match.group(2))
    if width == 0 or height == 0 or width * height > limits.max_output_pixels:
        raise InvalidInputError(
            "size", f"must be at least 1x1 and at most {limits.max_output_pixels} pixels in all, got {width}x{height}"
        )
    return width, height
