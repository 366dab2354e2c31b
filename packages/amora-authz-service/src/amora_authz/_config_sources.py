"""Settings from where container platforms put them: nested environment variables, secret files.

- ``AMORA_AUTHZ_<TABLE>__<KEY>`` sets a key of a table (``AMORA_AUTHZ_OIDC__ISSUER``,
  ``AMORA_AUTHZ_DEV_ISSUER__ENABLED=true``, ``AMORA_AUTHZ_RATE_LIMITS__ENABLED=false``) and
  ``AMORA_AUTHZ_BROKERS__<N>__<KEY>`` a key of the N-th ``[[brokers]]`` entry (0-based; N may
  be the next index, to add one). Values are read as TOML values when they are one (``8883``,
  ``true``, ``["a", "b"]``, ``"text"``), else as plain text.
- A secret may be given as a file instead: ``password_file`` in a ``[[brokers]]`` entry and
  ``database_url_file`` at the top (or ``AMORA_AUTHZ_DATABASE_URL_FILE``; Kubernetes and Docker
  mount secrets as files); the file's
  content, without its trailing newline, becomes ``password`` / ``database_url``. Giving both
  the value and its file is an error.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from amora_authz._errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["apply_nested_env", "read_secret_files"]

_SEPARATOR: Final = "__"
_SECRETS: Final = ("password", "database_url")  # keys that may come from `<key>_file`


def _value(text: str) -> Any:  # noqa: ANN401 - any TOML value
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_nested_env(data: dict[str, Any], environ: Mapping[str, str], prefix: str) -> None:
    """Set the table keys that ``<prefix><TABLE>__<KEY>`` variables name, in place.

    Raises:
        ConfigError: a ``[[brokers]]`` index that is not a number or skips entries.
    """
    file_variable = f"{prefix}DATABASE_URL_FILE"  # overrides the file's database_url
    if file_variable in environ:
        data.pop("database_url", None)
        data["database_url_file"] = environ[file_variable]
    for name in sorted(environ):  # sorted: BROKERS__0 before BROKERS__1
        if not name.startswith(prefix) or _SEPARATOR not in name:
            continue
        parts = name.removeprefix(prefix).lower().split(_SEPARATOR)
        table, rest = parts[0], parts[1:]
        if table == "brokers":
            if len(rest) != 2 or not rest[0].isdigit():
                raise ConfigError(f"{name}: use {prefix}BROKERS__<index>__<KEY> (e.g. {prefix}BROKERS__0__PASSWORD)")
            entries = data.setdefault("brokers", [])
            index = int(rest[0])
            if index > len(entries):
                raise ConfigError(f"{name}: [[brokers]] has {len(entries)} entries; index {index} skips some")
            if index == len(entries):
                entries.append({})
            entries[index][rest[1]] = _value(environ[name])
        elif len(rest) == 1:
            section = data.setdefault(table, {})
            if not isinstance(section, dict):
                raise ConfigError(f"{name}: {table!r} is not a table")
            section[rest[0]] = _value(environ[name])
        else:
            raise ConfigError(f"{name}: use {prefix}<TABLE>__<KEY>")


def _read(path: str, key: str) -> str:
    try:
        return Path(path).read_text("utf-8").removesuffix("\n").removesuffix("\r")
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror}") from exc


def read_secret_files(data: dict[str, Any]) -> None:
    """Replace each ``<secret>_file`` with the secret it holds, in place.

    Raises:
        ConfigError: the file cannot be read, or both the value and its file are given.
    """
    tables: list[tuple[str, dict[str, Any]]] = [("", data)]
    brokers = data.get("brokers")
    if isinstance(brokers, list):
        tables += [(f"brokers[{i}].", b) for i, b in enumerate(brokers) if isinstance(b, dict)]
    for where, table in tables:
        for key in _SECRETS:
            path = table.pop(f"{key}_file", None)
            if path is None:
                continue
            if key in table:
                raise ConfigError(f"{where}{key} and {where}{key}_file are both given: keep one")
            table[key] = _read(str(path), f"{where}{key}_file")
