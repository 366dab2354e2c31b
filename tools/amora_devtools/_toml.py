"""TOML values for the configuration files the harness writes."""

from __future__ import annotations

import json

__all__ = ["toml_value"]


def toml_value(value: object) -> str:
    """``value`` as TOML: JSON strings, numbers, booleans and lists of them are valid TOML."""
    return json.dumps(value)
