"""The bulk manifest's contract, checked before any work starts.

Required columns: `id` (string, unique), `image` (a path/URI string, or a list of 1-3 for Edit-Plus
models), `instruction` (string). Optional: `negative_prompt`, `seed`, `num_inference_steps`,
`output_format`, `size`, and the model family's guidance fields (`true_cfg_scale` for
Qwen-Image-Edit; `guidance_scale`, `image_guidance_scale` for InstructPix2Pix); missing ones (and
null values) take the job's defaults. A column of the other family's fields is refused.
"""

from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc

from deployments.parameters import GUIDANCE_FIELDS, FamilyParameters

REQUIRED = ("id", "image", "instruction")
OPTIONAL_TYPES = {
    "negative_prompt": (pa.types.is_string, pa.types.is_large_string),
    "seed": (pa.types.is_integer,),
    "num_inference_steps": (pa.types.is_integer,),
    **{name: (pa.types.is_floating, pa.types.is_integer) for name in GUIDANCE_FIELDS},
    "output_format": (pa.types.is_string, pa.types.is_large_string),
    "size": (pa.types.is_string, pa.types.is_large_string),
}
MAX_LISTED = 10


class ManifestError(ValueError):
    """The manifest cannot be processed; the message names every problem found."""


def _is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_image_column(t: pa.DataType) -> bool:
    if _is_string(t):
        return True
    return (pa.types.is_list(t) or pa.types.is_large_list(t)) and _is_string(t.value_type)


def check_schema(schema: pa.Schema, parameters: FamilyParameters) -> None:
    """Raises ManifestError naming each missing, wrongly typed or (for the model's family) foreign column."""
    problems = [f"missing required column {name!r}" for name in REQUIRED if name not in schema.names]
    problems += [
        f"column {name!r} does not apply to {parameters.family} models (they take {', '.join(parameters.guidance)})"
        for name in GUIDANCE_FIELDS if name in schema.names and name not in parameters.guidance
    ]
    types = {field.name: field.type for field in schema}
    if "id" in types and not _is_string(types["id"]):
        problems.append(f"column 'id' must be string, got {types['id']}")
    if "instruction" in types and not _is_string(types["instruction"]):
        problems.append(f"column 'instruction' must be string, got {types['instruction']}")
    if "image" in types and not _is_image_column(types["image"]):
        problems.append(f"column 'image' must be string or list<string>, got {types['image']}")
    for name, checks in OPTIONAL_TYPES.items():
        if name in types and not any(check(types[name]) for check in checks):
            problems.append(f"column {name!r} has type {types[name]}, which it cannot be")
    if problems:
        raise ManifestError("manifest refused: " + "; ".join(problems))


def check_ids(ids: pa.ChunkedArray | pa.Array) -> None:
    """Raises ManifestError when ids are null, empty or repeated (naming up to 10 of them)."""
    if ids.null_count:
        raise ManifestError(f"manifest refused: {ids.null_count} row(s) have no id")
    empty = pc.sum(pc.equal(pc.utf8_length(ids), 0)).as_py() or 0
    if empty:
        raise ManifestError(f"manifest refused: {empty} row(s) have an empty id")
    repeated = [value for value, count in Counter(ids.to_pylist()).items() if count > 1]
    if repeated:
        listed = ", ".join(repr(value) for value in repeated[:MAX_LISTED])
        more = f" and {len(repeated) - MAX_LISTED} more" if len(repeated) > MAX_LISTED else ""
        raise ManifestError(f"manifest refused: duplicate id(s) {listed}{more}")
