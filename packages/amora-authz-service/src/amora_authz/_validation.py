"""Request validation failures as data: each with the path of the field and what was wrong.

Litestar reports a body, path or query parameter that fails its schema as a list of
``{"message", "key", "source"}``; a missing field or a body of the wrong type is reported
against the whole body (key ``data``) with the field only in msgspec's message. This turns
them into ``{"field": "body.device_id", "message": "..."}`` (``query.limit``, ``path.id``)
for the 422 answer, instead of a Python repr.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

__all__ = ["FieldError", "field_errors"]

_MISSING = re.compile(r"missing required field `([^`]+)`")
_AT_PATH = re.compile(r" - at `\$\.?([^`]*)`$")


class FieldError(msgspec.Struct, frozen=True):
    """One invalid field: its path (``body.device_id``, ``query.limit``) and the reason."""

    field: str
    message: str


def _source(value: Any) -> str:  # noqa: ANN401 - Litestar's ParamType or a plain string
    return str(getattr(value, "value", value) or "body")


def field_errors(extra: Any) -> list[FieldError]:  # noqa: ANN401 - Litestar's ``extra``, as it comes
    """The field errors in Litestar's validation ``extra`` (empty when it holds none)."""
    if not isinstance(extra, list):
        return []
    errors = []
    for item in extra:
        if not isinstance(item, dict):
            continue
        message = str(item.get("message", "invalid"))
        source, key = _source(item.get("source")), str(item.get("key") or "")
        nested = _AT_PATH.search(message)
        missing = _MISSING.search(message)
        if nested:
            message = message[: nested.start()]
            key = nested[1] if key in {"", "data"} else f"{key}.{nested[1]}"
        if missing and key in {"", "data"}:
            key = missing[1]
        path = source if key in {"", "data"} else f"{source}.{key}"
        errors.append(FieldError(field=path, message=message))
    return errors
