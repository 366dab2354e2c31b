"""Sessions from the authz service: the token exchange and its refresh (HTTP, httpx)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import email.utils
import inspect
import math
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

import httpx
import msgspec

from amora_protocol import EncryptionPublicKey, ProtocolError, SchemaError, VerifyKey, decode_session_response, now_ms
from amora_sync._errors import AuthenticationError, AuthzUnavailableError, RateLimitedError, SessionError
from amora_sync._session_store import token_subject

if TYPE_CHECKING:
    from amora_protocol import EncryptionKey, SigningKey

TokenProvider = Callable[[], "str | Awaitable[str]"]
"""Returns the user's current JWT; may be a plain function or a coroutine function."""

_DEFAULT_MQTTS_PORT = 8883
_DEFAULT_WSS_PORT = 443

Transport = Literal["mqtts", "wss"]
"""How an endpoint is reached: MQTT over TLS, or MQTT over TLS websockets."""
_TOO_MANY_REQUESTS = 429
_NO_RETRY_AFTER_S = 1.0  # a 429 without Retry-After: try again after this
_HALF_SECOND_MS = 500  # an HTTP Date is whole seconds: the service's time is on average .5 s later


@dataclass(frozen=True, kw_only=True)
class Endpoint:
    """A broker endpoint: MQTT over TLS (``mqtts://``) or over TLS websockets (``wss://``).

    Attributes:
        host: Host name or address.
        port: TCP port.
        transport: ``"mqtts"`` or ``"wss"``.
        path: The HTTP path of a ``wss`` endpoint (``/mqtt``); empty for ``mqtts``.
    """

    host: str
    port: int
    transport: Transport = "mqtts"
    path: str = ""

    def __str__(self) -> str:
        """Return ``host:port`` (``mqtts``) or the ``wss://`` URL."""
        if self.transport == "wss":
            return f"wss://{self.host}:{self.port}{self.path}"
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, kw_only=True)
class DeviceInfo:
    """A device this session may use, with the keys its messages are checked against.

    Attributes:
        device_id: The device id.
        signing_key: The device's Ed25519 public key (verifies its state, status, responses).
        encryption_key: The device's X25519 public key (commands can be sealed to it).
    """

    device_id: str
    signing_key: VerifyKey
    encryption_key: EncryptionPublicKey | None


@dataclass(frozen=True, kw_only=True)
class BrokerCredentials:
    """Where and as whom to connect.

    Attributes:
        endpoints: Endpoints in order of preference.
        username: MQTT user name (the session id).
        password: MQTT password.
        client_id: MQTT client id (fixed by the broker's access rules).
    """

    endpoints: tuple[Endpoint, ...]
    username: str
    password: str = field(repr=False)
    client_id: str


@dataclass(frozen=True, kw_only=True)
class Session:
    """A session issued by the authz service.

    Attributes:
        session_id: The session id (also the sender id of its commands).
        expires_at_ms: When the session ends, in ms since the epoch.
        broker: Broker endpoints and credentials.
        grant: The signed grant token sent along with each command.
        devices: The devices the session may use, by id.
        authz_keys: The authz service's grant-signing public keys.
    """

    session_id: str
    expires_at_ms: int
    broker: BrokerCredentials
    grant: bytes
    devices: Mapping[str, DeviceInfo]
    authz_keys: tuple[VerifyKey, ...]


class _WireError(msgspec.Struct):
    code: str | None = None
    message: str | None = None
    detail: str | None = None


def _b64(text: str) -> bytes:
    padded = text + "=" * (-len(text) % 4)
    try:
        if "-" in text or "_" in text:
            return base64.urlsafe_b64decode(padded)
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SessionError(f"bad base64 in session answer: {text[:16]!r}") from exc


def parse_endpoint(raw: str) -> Endpoint | None:
    """Parse one endpoint: ``mqtts://host:port`` (or ``host:port``), or ``wss://host:port/path``.

    Returns None for transports the SDK does not speak (``ws://``: websockets without TLS).
    """
    text = raw if "://" in raw else f"mqtts://{raw}"
    parts = urlsplit(text)
    if parts.hostname is None or parts.scheme == "ws":
        return None
    if parts.scheme == "wss":
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return Endpoint(host=parts.hostname, port=parts.port or _DEFAULT_WSS_PORT, transport="wss", path=path)
    return Endpoint(host=parts.hostname, port=parts.port or _DEFAULT_MQTTS_PORT)


def select_endpoints(endpoints: tuple[Endpoint, ...], transport: str) -> tuple[Endpoint, ...]:
    """The endpoints a client with this `transport` setting uses, in the session's order.

    ``"mqtts"`` and ``"wss"`` take only that kind; ``"auto"`` takes the ``mqtts`` ones, or
    the ``wss`` ones when the session lists no ``mqtts`` endpoint.
    """
    if transport == "auto":
        tcp = tuple(e for e in endpoints if e.transport == "mqtts")
        return tcp or tuple(e for e in endpoints if e.transport == "wss")
    return tuple(e for e in endpoints if e.transport == transport)


def decode_session(body: bytes) -> Session:
    """Decode a session answer with the published schema (`amora_protocol.SessionResponse`).

    Raises:
        SessionError: The answer does not match the schema or carries an invalid key.
    """
    try:
        wire = decode_session_response(body)
    except SchemaError as exc:
        raise SessionError(f"the authz service sent an unexpected session: {exc}") from exc
    endpoints = tuple(e for e in map(parse_endpoint, wire.broker.endpoints) if e is not None)
    if not endpoints:
        raise SessionError("the session lists no endpoint this SDK can use (mqtts://host:port or wss://host:port/path)")
    try:
        devices = {
            d.device_id: DeviceInfo(
                device_id=d.device_id,
                signing_key=VerifyKey.from_raw(_b64(d.signing_key)),
                encryption_key=EncryptionPublicKey.from_raw(_b64(d.encryption_key)),
            )
            for d in wire.devices
        }
        authz_keys = tuple(VerifyKey.from_raw(_b64(k.public_key)) for k in wire.authz_keys)
    except ProtocolError as exc:  # bad key lengths
        raise SessionError(f"the session carries an invalid key: {exc}") from exc
    return Session(
        session_id=wire.session_id,
        expires_at_ms=wire.expires_at,
        broker=BrokerCredentials(
            endpoints=endpoints,
            username=wire.broker.username,
            password=wire.broker.password,
            client_id=wire.broker.client_id,
        ),
        grant=_b64(wire.grant),
        devices=devices,
        authz_keys=authz_keys,
    )


def _reason(exc: BaseException) -> str:
    """The exception's message, or its type when it has none (some httpx errors are empty)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def current_token(provider: TokenProvider) -> str:
    """Call the token provider (sync or async) and return the token.

    Raises:
        AuthenticationError: The provider failed or returned nothing.
        AuthzUnavailableError: The provider could not reach its server.
        SessionError: Raised by the provider itself: passed on as it is.
    """
    try:
        result = provider()
        token = await result if inspect.isawaitable(result) else result
    except SessionError:
        raise  # the provider said itself what failed (the CLI's development mode does)
    except (httpx.TransportError, OSError, TimeoutError) as exc:
        # The provider could not reach its identity provider: the token was not refused, so
        # this is worth retrying, not a reason to ask the user to log in again.
        raise AuthzUnavailableError(f"the token provider could not reach its server: {_reason(exc)}") from exc
    except Exception as exc:
        raise AuthenticationError(f"the token provider failed: {_reason(exc)}") from exc
    if not isinstance(token, str) or not token:
        raise AuthenticationError("the token provider returned no token")
    return token


def retry_after_seconds(value: str | None, *, now_ms: int) -> float | None:
    """Parse an HTTP ``Retry-After``: delay seconds or an HTTP date; None when absent or bad."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now_ms / 1000)


def _clock_offset_ms(response: httpx.Response, *, received_ms: int) -> int | None:
    """The service's clock minus ours, from its ``Date`` header (to about a second)."""
    date = response.headers.get("date")
    if date is None:
        return None
    try:
        when = email.utils.parsedate_to_datetime(date)
    except (TypeError, ValueError):
        return None
    return int(when.timestamp() * 1000) + _HALF_SECOND_MS - received_ms


class SessionApi:
    """The authz service's session endpoints.

    Attributes:
        clock_offset_ms: The service's clock minus ours, from the ``Date`` of its last
            answer (to about a second), or None before the first.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        base_url: str,
        token_provider: TokenProvider,
        *,
        rate_limit_wait: float = 30.0,
        on_rate_limited: Callable[[float], None] | None = None,
    ) -> None:
        """Bind to the service at `base_url`.

        Args:
            http: The HTTP client.
            base_url: The service's base URL.
            token_provider: Returns the user's current token.
            rate_limit_wait: How long one request may wait in all for the service's rate
                limit (HTTP 429 with ``Retry-After``) before `RateLimitedError`.
            on_rate_limited: Called with the wait (s) each time a 429 is waited out.
        """
        self._http = http
        self._base = base_url.rstrip("/")
        self._token_provider = token_provider
        self._rate_limit_wait = rate_limit_wait
        self._on_rate_limited = on_rate_limited
        self._rng = random.Random()  # noqa: S311 - jitter, not security
        self.clock_offset_ms: int | None = None

    async def _post(self, path: str, body: dict[str, str] | None) -> bytes:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._rate_limit_wait
        while True:
            response = await self._post_once(path, body)
            if response.status_code != _TOO_MANY_REQUESTS:
                return self._content(path, response)
            code, message = _error_of(response)
            said = retry_after_seconds(response.headers.get("retry-after"), now_ms=now_ms())
            wait = _NO_RETRY_AFTER_S if said is None else said
            # A little jitter: clients told the same Retry-After do not all return at once.
            wait += self._rng.uniform(0, min(1.0, wait / 10))
            if loop.time() + wait > deadline:
                asked = "no Retry-After" if said is None else f"Retry-After {said:g} s"
                raise RateLimitedError(
                    f"the authz service is rate limiting {path} ({message}; {asked}), longer than "
                    f"this client waits ({self._rate_limit_wait:g} s, rate_limit_wait): try again later",
                    retry_after=said,
                    code=code,
                )
            if self._on_rate_limited is not None:
                self._on_rate_limited(wait)
            await asyncio.sleep(wait)

    async def _post_once(self, path: str, body: dict[str, str] | None) -> httpx.Response:
        token = await current_token(self._token_provider)
        try:
            response = await self._http.post(
                f"{self._base}{path}",
                headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
                content=None if body is None else msgspec.json.encode(body),
            )
        except httpx.HTTPError as exc:
            hint = ""
            if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError):
                hint = " (does this URL point at the authz service's HTTP port?)"
            message = f"authz service {self._base} unreachable: {_reason(exc)}{hint}"
            raise AuthzUnavailableError(message) from exc
        offset = _clock_offset_ms(response, received_ms=now_ms())
        if offset is not None:
            self.clock_offset_ms = offset
        return response

    def _content(self, path: str, response: httpx.Response) -> bytes:
        if response.is_success:
            return response.content
        code, message = _error_of(response)
        status = response.status_code
        text = f"authz service {self._base} answered {status} on {path}: {message}"
        if status in {401, 403}:
            raise AuthenticationError(text, status_code=status, code=code)
        if status >= 500:
            raise AuthzUnavailableError(text, status_code=status, code=code)
        raise SessionError(text, status_code=status, code=code)

    async def create(
        self,
        signing_key: SigningKey,
        encryption_key: EncryptionKey,
        *,
        client_name: str | None = None,
    ) -> Session:
        """Exchange the user's token for a session (``POST /v1/sessions``).

        Raises:
            AuthenticationError: The token was refused.
            AuthzUnavailableError: The service could not be reached.
            SessionError: Any other refusal or an unexpected answer.
        """
        return (await self.create_with_body(signing_key, encryption_key, client_name=client_name))[0]

    async def create_with_body(
        self,
        signing_key: SigningKey,
        encryption_key: EncryptionKey,
        *,
        client_name: str | None = None,
    ) -> tuple[Session, bytes]:
        """Like `create`, also returning the service's answer as sent (to store it).

        Raises:
            AuthenticationError: The token was refused.
            AuthzUnavailableError: The service could not be reached.
            SessionError: Any other refusal or an unexpected answer.
        """
        body = {
            "signing_key": base64.b64encode(signing_key.public_key.raw).decode(),
            "encryption_key": base64.b64encode(encryption_key.public_key.raw).decode(),
        }
        if client_name:
            body["client_name"] = client_name
        raw = await self._post("/v1/sessions", body)
        return decode_session(raw), raw

    async def refresh(self, session: Session) -> Session:
        """Extend `session` with a fresh token (``POST /v1/sessions/{id}/refresh``).

        The broker credential stays the same, so the live connection is kept.

        Raises:
            AuthenticationError: The token was refused.
            AuthzUnavailableError: The service could not be reached.
            SessionError: Any other refusal (404: the session is gone).
        """
        return (await self.refresh_with_body(session))[0]

    async def refresh_with_body(self, session: Session) -> tuple[Session, bytes]:
        """Like `refresh`, also returning the service's answer as sent (to store it).

        Raises:
            AuthenticationError: The token was refused.
            AuthzUnavailableError: The service could not be reached.
            SessionError: Any other refusal (404: the session is gone).
        """
        body = await self._post(f"/v1/sessions/{session.session_id}/refresh", {})
        return decode_session(body), body

    async def token_subject(self) -> str | None:
        """The ``sub`` of the current token, unverified (None when it is not a readable JWT).

        Raises:
            AuthenticationError: The token provider failed.
            AuthzUnavailableError: The token provider could not reach its server.
        """
        return token_subject(await current_token(self._token_provider))

    async def delete(self, session: Session) -> None:
        """End `session` (``DELETE /v1/sessions/{id}``); errors are ignored (best effort)."""
        try:
            token = await current_token(self._token_provider)
            await self._http.delete(
                f"{self._base}/v1/sessions/{session.session_id}",
                headers={"Authorization": f"Bearer {token}"},
            )
        except (httpx.HTTPError, SessionError):
            return


def _error_of(response: httpx.Response) -> tuple[str | None, str]:
    """The service's error ``code`` and message from an error answer."""
    message = response.text[:200]
    try:
        err = msgspec.json.decode(response.content, type=_WireError)
    except msgspec.DecodeError:
        return None, message
    return err.code, err.message or err.detail or message


def refresh_delay(session: Session, *, now_ms: int, margin: float) -> float:
    """Seconds to wait before refreshing `session`.

    Refresh at the later of ``margin`` of its remaining life spent and a small
    floor, so that a session is refreshed well before it expires.
    """
    remaining = max(0, session.expires_at_ms - now_ms) / 1000
    return max(0.5, math.floor(remaining * (1 - margin) * 1000) / 1000)
