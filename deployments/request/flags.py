"""Command-line flags derived from the families' request declarations (deployments/request/fields.py):
`--num-inference-steps`, `--true-cfg-scale`, ... with each field's type, choices and description.
Used by `python -m deployments.cli.edit` and the bulk job (`python -m cluster.bulk`).

The flags of every family are offered (the model, hence its family, is known only after parsing);
a value for a field the model's family doesn't take is refused by validation, naming it. A file field
(e.g. `--mask`) takes a path, and is offered only where asked for (a bulk manifest names files per row).
"""

import argparse
from pathlib import Path

from deployments.request.binding import json_types, request_model
from deployments.request.registry import DECLARATIONS

FLAG_TYPES = {"integer": int, "number": float, "string": str, "array": str, "object": str}  # structured values as JSON text
FAMILIES = sorted({declared.family for declared in DECLARATIONS.values()})


def parameter_fields(exclude: tuple[str, ...], files: bool = False) -> dict[str, tuple[dict, list[str]]]:
    """Every family's fields but `exclude` (and but its file fields, unless `files`) -> (the field's JSON
    schema, the families that take it); a field whose default differs between families has "the model's"
    as its default."""
    fields: dict[str, tuple[dict, list[str]]] = {}
    for declared in DECLARATIONS.values():
        properties = request_model(declared).model_json_schema()["properties"]  # the family's defaults filled in
        for name in declared.model_fields:
            if name in exclude or (not files and name in declared.file_fields()):
                continue
            schema, families = fields.setdefault(name, (dict(properties[name]), []))
            if declared.family not in families:
                families.append(declared.family)
            if schema.get("default") != properties[name].get("default"):
                schema["default"] = "the model's"
    return fields


def add_parameter_flags(group, exclude: tuple[str, ...], defaults: dict | None = None, files: bool = False) -> list[str]:
    """Adds a flag per declared field (but `exclude`; file fields only with `files`, taking a path) to
    `group`, each defaulting to None (= the declaration's default, or `defaults`' where given, as its help
    says); returns the field names."""
    defaults = defaults or {}
    fields = parameter_fields(exclude, files)
    for name, (field, families) in fields.items():
        note = "" if len(families) == len(FAMILIES) else f" [{', '.join(families)} models]"
        default = defaults.get(name, field.get("default", "random" if name == "seed" else "none"))
        group.add_argument(
            f"--{name.replace('_', '-')}", dest=name, default=None, choices=field.get("enum"),
            type=Path if _is_file(field) else FLAG_TYPES[sorted(json_types(field))[0]],
            metavar="PATH" if _is_file(field) else None,
            help=f"{field.get('description', '')} (default: {default}){note}".replace("%", "%%"),
        )
    return list(fields)


def _is_file(field: dict) -> bool:
    return any(option.get("format") == "binary" for option in field.get("anyOf", [field]))


def given(args: argparse.Namespace, names: list[str]) -> dict:
    """The flags of `names` that were given (a file flag's file read in)."""
    values = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    return {name: value.read_bytes() if isinstance(value, Path) else value for name, value in values.items()}
