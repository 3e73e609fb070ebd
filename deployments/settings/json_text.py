"""Structured request fields (`cache`, `guard`, `chain`, `lora`) arrive as JSON text in a form field or a
manifest column: one bounded parser for all of them, whose refusal shows an example of what is allowed.

pydantic's own JSON parser (pydantic_core.from_json) rather than `json.loads`: it has a nesting
limit and reports it, like every other malformation, as a ValueError — `json.loads` raises
RecursionError on ~1000 nested brackets, which no handler of malformed JSON expects. Each field has
its own size bound, checked before parsing: the request body's bound (tens of megabytes) would let
one field hold millions of values.
"""

from typing import Any

from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError, from_json

# Each field's most characters of JSON: far above what any valid value needs.
SMALL_OBJECT_CHARS = 2_000  # `cache`, `guard`
ADAPTER_LIST_CHARS = 8_000  # `lora`: at most 16 {"name", "scale"} objects
CHAIN_CHARS = 300_000  # `chain`: up to 16 links, each with prompts of thousands of characters


def read_json(value: str, example: str, max_chars: int, off: bool = False, kind: str = "JSON") -> Any:
    """`value` parsed as JSON; a PydanticCustomError (saying what is allowed: `kind` such as `example`)
    when it is longer than `max_chars` or not JSON."""
    allowed = f"{kind} such as {example}" + (", or off" if off else "")
    if len(value) > max_chars:
        raise PydanticCustomError(
            "as_is", "may be at most {most} characters of {allowed}; got {got}", {"most": max_chars, "allowed": allowed, "got": len(value)}
        )
    try:
        return from_json(value, allow_inf_nan=False)
    except (ValueError, TypeError) as e:  # malformed, nested too deep, or text that isn't UTF-8 (a lone surrogate)
        raise PydanticCustomError(
            "as_is", "must be {allowed}; got {value} ({why})", {"allowed": allowed, "value": excerpt(value), "why": str(e)}
        ) from None


def json_text(example: str, max_chars: int, empty: Any = None, off: bool = True, kind: str = "JSON") -> BeforeValidator:
    """A validator that reads a text value as JSON (read_json): "" (and, with `off`, the word off) is
    `empty`; a value that is not text is left as it is."""

    def parse(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        if not value.strip() or (off and value.strip() == "off"):
            return empty
        return read_json(value, example, max_chars, off, kind)

    return BeforeValidator(parse)


def excerpt(value: str, most: int = 80) -> str:
    """`value` quoted as an error message shows it: its start, when long."""
    return repr(value) if len(value) <= most else f"{value[:most]!r}... ({len(value)} characters)"
