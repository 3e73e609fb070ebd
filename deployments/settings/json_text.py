"""Structured request fields (`cache`, `guard`, `chain`) arrive as JSON text in a form field or a
manifest column: one parser for all of them, whose refusal shows an example of what is allowed."""

import json
from typing import Any

from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError


def json_text(example: str, empty: Any = None, off: bool = True) -> BeforeValidator:
    """A validator that reads a text value as JSON: "" (and, with `off`, the word off) is `empty`; a
    value that is not text is left as it is."""

    def parse(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        if not value.strip() or (off and value.strip() == "off"):
            return empty
        try:
            return json.loads(value)
        except json.JSONDecodeError as e:
            allowed = f"JSON such as {example}" + (", or off" if off else "")
            raise PydanticCustomError(
                "as_is", "must be {allowed}; got {value} ({why})", {"allowed": allowed, "value": repr(value), "why": e.msg}
            ) from None

    return BeforeValidator(parse)
