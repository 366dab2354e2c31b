"""Development mode of the ``amora`` CLI: the local stack's ``stack.json`` and its development issuer.

The repository's harness (``hatch run stack:up``, `amora_devtools.stack`) writes
``STATE_DIR/stack.json``. Development mode reads exactly the formats in `SUPPORTED_FORMATS`
and no other shape; format 1 is, of all that the file holds::

    {"format": 1,
     "authz_url": "http://127.0.0.1:8080",
     "broker": {"ca_file": "/tmp/amora-stack/pki/ca.pem", ...},
     "dev_issuer": {"token_url": "http://127.0.0.1:8080/dev-issuer/token"},
     ...}

A token comes from the stack's authz service, whose development issuer signs one for any
user it is configured with (``POST {token_url}`` with ``{"username": NAME}``; see the authz
service's README, "Development issuer"). That issuer is off in every real deployment, so
this mode is for local work only; a production login hands the SDK a token from the
identity provider instead.
"""

from __future__ import annotations

import json
import ssl
from typing import TYPE_CHECKING, Literal

import httpx
import msgspec

from amora_sync._errors import AuthenticationError, AuthzUnavailableError

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["SUPPORTED_FORMATS", "DevStack", "DevStackError", "dev_token", "read_dev_stack"]

SUPPORTED_FORMATS: tuple[int, ...] = (1,)
_FIX = "start the stack with this checkout's harness (hatch run stack:up --state-dir DIR) and pass DIR/stack.json"
_TOKEN_TIMEOUT_S = 10.0


class DevStackError(Exception):
    """``stack.json`` cannot be used: unreadable, of an unsupported format, or incomplete."""


class DevStack(msgspec.Struct, frozen=True, kw_only=True):
    """What development mode takes from ``stack.json``."""

    authz_url: str
    ca_file: str
    token_url: str


class _Version(msgspec.Struct):
    format: object = None  # checked by hand: a missing or odd value gets its own message


class _Broker(msgspec.Struct, frozen=True):
    ca_file: str


class _DevIssuer(msgspec.Struct, frozen=True):
    token_url: str


class _Format1(msgspec.Struct, frozen=True):
    format: Literal[1]
    authz_url: str
    broker: _Broker
    dev_issuer: _DevIssuer


def read_dev_stack(path: Path) -> DevStack:
    """Read ``stack.json`` in one of `SUPPORTED_FORMATS`.

    Raises:
        DevStackError: The file is missing or not JSON, has no or an unsupported ``format``,
            or lacks a field that format requires (the message names the file and the fix).
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DevStackError(f"cannot read {path}: {exc.strerror or exc}; {_FIX}") from exc
    try:
        found = msgspec.json.decode(raw, type=_Version).format
    except msgspec.DecodeError as exc:
        raise DevStackError(f"{path} is not a JSON object ({exc}); {_FIX}") from exc
    supported = ", ".join(str(v) for v in SUPPORTED_FORMATS)
    if found is None:
        raise DevStackError(
            f'{path} has no "format" field: it is not a stack:up stack.json of format 1 or later (an '
            "older harness wrote it, or `hatch run services`, which runs no authz service); "
            f"this amora CLI reads format {supported}: {_FIX}"
        )
    if type(found) is not int or found not in SUPPORTED_FORMATS:
        raise DevStackError(
            f"{path} is stack.json format {json.dumps(found)}; this amora CLI reads format {supported}. "
            "Use the amora CLI of the checkout that wrote it (hatch run amora ... there), "
            f"or {_FIX}"
        )
    try:
        stack = msgspec.json.decode(raw, type=_Format1)
    except msgspec.ValidationError as exc:
        raise DevStackError(f"{path} (format {found}) is incomplete: {exc}; {_FIX}") from exc
    return DevStack(authz_url=stack.authz_url, ca_file=stack.broker.ca_file, token_url=stack.dev_issuer.token_url)


async def dev_token(stack: DevStack, user: str) -> str:
    """A development token for ``user`` from the stack's development issuer.

    Raises:
        AuthenticationError: The issuer refused the user (not one it is configured with).
        AuthzUnavailableError: The issuer could not be reached or failed.
    """
    verify: ssl.SSLContext | bool = True
    if stack.token_url.startswith("https:"):
        verify = ssl.create_default_context(cafile=stack.ca_file)
    try:
        async with httpx.AsyncClient(timeout=_TOKEN_TIMEOUT_S, verify=verify) as http:
            response = await http.post(stack.token_url, json={"username": user})
    except httpx.HTTPError as exc:
        raise AuthzUnavailableError(
            f"the stack's development issuer at {stack.token_url} did not answer ({exc!r}): is the stack running?"
        ) from exc
    if response.status_code != httpx.codes.OK:
        error = (
            AuthenticationError if response.status_code < httpx.codes.INTERNAL_SERVER_ERROR else AuthzUnavailableError
        )
        raise error(
            f"the stack's development issuer refused user {user!r} ({response.status_code}): "
            "use one of the stack's users (stack.json: users)",
            status_code=response.status_code,
        )
    try:
        return str(response.json()["access_token"])
    except (ValueError, KeyError, TypeError) as exc:
        raise AuthzUnavailableError(
            f"the stack's development issuer at {stack.token_url} answered without an access_token"
        ) from exc
