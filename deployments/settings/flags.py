"""Command-line flags derived from a settings model (e.g. FastPath, LoopSettings): one flag per field,
named, typed, defaulted and described by the field's declaration, so a CLI never declares a setting
again. (A request's fields have their own flags: deployments/request/flags.py.)"""

import argparse
import typing
from typing import Literal

from pydantic import TypeAdapter


def add_settings_flags(group, settings: type, prefix: str = "", fields: tuple[str, ...] | None = None) -> None:
    """`--{prefix}{field}` for each of `fields` (default: all) of `settings` (a pydantic model or
    dataclass); a true-by-default bool becomes `--no-{prefix}{field}`. The values land under the
    field's own name."""
    declared = settings.__pydantic_fields__
    for name in fields or tuple(declared):
        field = declared[name]
        flag, help_text = f"--{prefix}{name}".replace("_", "-"), field.description
        if field.annotation is bool:
            if field.default:
                group.add_argument(f"--no-{prefix}{name}".replace("_", "-"), dest=name, action="store_false", help=help_text)
            else:
                group.add_argument(flag, dest=name, action="store_true", help=help_text)
        elif typing.get_origin(field.annotation) is Literal:
            group.add_argument(flag, dest=name, choices=typing.get_args(field.annotation), default=field.default, help=help_text)
        else:
            group.add_argument(flag, dest=name, type=field.annotation, default=field.default, help=help_text)


def settings_from_flags(args: argparse.Namespace, settings: type, fields: tuple[str, ...] | None = None):
    """`settings` from the parsed flags of `add_settings_flags` (validated: a bad value names its field)."""
    names = fields or tuple(settings.__pydantic_fields__)
    return TypeAdapter(settings).validate_python({name: getattr(args, name) for name in names})
