"""The bulk manifest's contract, derived from the model family's request declaration
(deployments/request/fields.py and the family's `parameters.py`) and checked before any work starts.

Required columns: `id` (string, unique), `image` (a path/URI string, or a list of them for models
taking several images) and `instruction` (the API's `prompt`). Optional: the family's other file
fields as path/URI strings (Qwen-Image-Edit's `mask`; null: none), and every other field the family
declares, under its API name, except `n` (a row makes one image): e.g. `negative_prompt`, `seed`,
`num_inference_steps`, `size`, `output_format`, `lora` (JSON text, as the API takes it) and the
family's own guidance fields. Missing columns and null values take the job's flags, then the
declaration's defaults. A column of another family's fields is refused; other columns are carried
along unread.
"""

import functools

import pyarrow as pa
import pyarrow.compute as pc

from deployments.request.binding import json_types
from deployments.request.fields import EditParameters
from deployments.request.registry import foreign_field

REQUIRED = ("id", "image", "instruction")
PASS_COLUMNS = ("pending_link", "pending_image", "pending_retry_of_seed")  # a later pass's next edit (cluster/bulk/follow_ups.py)
NOT_COLUMNS = ("image", "prompt", "n")  # image and prompt are required columns (as paths, as `instruction`)
MAX_LISTED = 10
ARROW_TYPES = {  # a declared field's JSON type -> the Arrow types its column may have
    "integer": (pa.types.is_integer,),
    "number": (pa.types.is_floating, pa.types.is_integer),
    "string": (pa.types.is_string, pa.types.is_large_string),
    "array": (pa.types.is_string, pa.types.is_large_string),  # as JSON text, as the API takes it (e.g. `lora`)
    "object": (pa.types.is_string, pa.types.is_large_string),  # as JSON text (e.g. `cache`)
}


class ManifestError(ValueError):
    """The manifest cannot be processed; the message names every problem found."""


@functools.cache  # read per results batch: build the JSON schema once
def parameter_columns(declared: type[EditParameters]) -> dict[str, dict]:
    """The optional columns of `declared`'s family -> their fields' JSON schemas."""
    properties = declared.model_json_schema()["properties"]
    files = declared.file_fields()
    return {name: properties[name] for name in declared.model_fields if name not in NOT_COLUMNS and name not in files}


def file_columns(declared: type[EditParameters]) -> tuple[str, ...]:
    """The optional columns of paths to files (e.g. `mask`), read like `image`."""
    return tuple(name for name in declared.file_fields() if name != "image")


def _is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_image_column(t: pa.DataType) -> bool:
    if _is_string(t):
        return True
    return (pa.types.is_list(t) or pa.types.is_large_list(t)) and _is_string(t.value_type)


def check_schema(schema: pa.Schema, declared: type[EditParameters]) -> None:
    """Raises ManifestError naming each missing, wrongly typed or (for the model's family) foreign column."""
    columns = parameter_columns(declared)
    problems = [f"missing required column {name!r}" for name in REQUIRED if name not in schema.names]
    problems += [f"column {name!r} {why}" for name in schema.names if (why := foreign_field(name, declared))]
    problems += [f"column {name!r} is reserved for the job's own passes; rename it" for name in schema.names if name in PASS_COLUMNS]
    types = {field.name: field.type for field in schema}
    for name in ("id", "instruction"):
        if name in types and not _is_string(types[name]):
            problems.append(f"column {name!r} must be string, got {types[name]}")
    if "image" in types and not _is_image_column(types["image"]):
        problems.append(f"column 'image' must be string or list<string>, got {types['image']}")
    for name in file_columns(declared):
        if name in types and not _is_string(types[name]):
            problems.append(f"column {name!r} must be string (a path or URI), got {types[name]}")
    for name, field in columns.items():
        allowed = [check for json_type in json_types(field) for check in ARROW_TYPES[json_type]]
        if name in types and not any(check(types[name]) for check in allowed):
            problems.append(f"column {name!r} has type {types[name]}; it must be {' or '.join(sorted(json_types(field)))}")
    if problems:
        raise ManifestError("manifest refused: " + "; ".join(problems))


def check_ids(ids: pa.ChunkedArray | pa.Array) -> None:
    """Raises ManifestError when ids are null, empty or repeated (naming up to 10 of them)."""
    if ids.null_count:
        raise ManifestError(f"manifest refused: {ids.null_count} row(s) have no id")
    empty = pc.sum(pc.equal(pc.utf8_length(ids), 0)).as_py() or 0
    if empty:
        raise ManifestError(f"manifest refused: {empty} row(s) have an empty id")
    counts = pc.value_counts(ids)
    repeated = counts.field("values").filter(pc.greater(counts.field("counts"), 1)).to_pylist()
    if repeated:
        listed = ", ".join(repr(value) for value in repeated[:MAX_LISTED])
        more = f" and {len(repeated) - MAX_LISTED} more" if len(repeated) > MAX_LISTED else ""
        raise ManifestError(f"manifest refused: duplicate id(s) {listed}{more}")
