"""Device keys for a backend: fetched from the authz service, cached, refreshed on an unknown key.

A backend verifies every device's messages, so it needs every device's public signing key:
``GET /v1/backend/devices`` (paged) at start, then ``GET /v1/backend/devices/{id}`` whenever
a message names a device or a key id the cache does not hold (a device registered since, or
re-registered with new keys). Refreshes are rate limited so that garbage naming made-up
devices cannot turn the consumer into a request flood: each device at most once per
``min_refresh_interval`` seconds, and all devices together within a token bucket.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from typing import TYPE_CHECKING, Final

import httpx
import msgspec

from amora_protocol import DeviceKeyPage, DevicePublicKeys, ProtocolError, VerifyKey
from amora_sync._errors import AuthenticationError, AuthzUnavailableError, SessionError

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["DeviceKeyCache"]

_PAGE: Final = 500
_UNAUTHORIZED: Final = 401
_NOT_FOUND: Final = 404
_page_decoder: Final = msgspec.json.Decoder(DeviceKeyPage)
_one_decoder: Final = msgspec.json.Decoder(DevicePublicKeys)


def _verify_key(keys: DevicePublicKeys) -> VerifyKey:
    try:
        return VerifyKey.from_raw(base64.b64decode(keys.signing_key, validate=True))
    except (binascii.Error, ValueError, ProtocolError) as exc:
        msg = f"the authz service sent an unusable signing key for {keys.device_id!r}: {exc}"
        raise SessionError(msg) from exc


class DeviceKeyCache:
    """Every active device's signing key, as the authz service lists them.

    Args:
        http: An httpx client whose base URL is the authz service and whose auth is the
            backend's (HTTP Basic with one of its account names and its password).
        min_refresh_interval: Seconds between two refreshes of one device.
        refresh_rate: Refreshes per second for all devices together (and the burst, x10).
        clock: Monotonic seconds.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        min_refresh_interval: float = 5.0,
        refresh_rate: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Start empty (`load` fills it)."""
        self._http = http
        self._keys: dict[str, VerifyKey] = {}
        self._last_refresh: dict[str, float] = {}
        self._interval = min_refresh_interval
        self._rate = refresh_rate
        self._burst = refresh_rate * 10
        self._tokens = self._burst
        self._filled_at = clock()
        self._clock = clock
        self._inflight: dict[str, asyncio.Future[VerifyKey | None]] = {}
        self.refreshes = 0
        """Single-device fetches made (for tests and statistics)."""

    def __len__(self) -> int:
        """How many devices' keys are held."""
        return len(self._keys)

    def get(self, device_id: str) -> VerifyKey | None:
        """The cached key of ``device_id``, if any."""
        return self._keys.get(device_id)

    async def _get(self, path: str, **params: str | int) -> httpx.Response:
        try:
            response = await self._http.get(path, params=params)
        except httpx.HTTPError as exc:
            msg = f"cannot reach the authz service for device keys ({exc!r}); it is retried"
            raise AuthzUnavailableError(msg) from exc
        if response.status_code == _UNAUTHORIZED:
            msg = (
                "the authz service refused the backend credential (401): use the name and password from "
                "POST /v1/admin/backends, or the new password after a rotation"
            )
            raise AuthenticationError(msg, status_code=_UNAUTHORIZED)
        return response

    async def load(self) -> int:
        """Fetch every active device's key (page by page); return how many.

        Raises:
            AuthenticationError: The backend credential was refused.
            AuthzUnavailableError: The service cannot be reached or failed.
            SessionError: The answer was malformed.
        """
        keys: dict[str, VerifyKey] = {}
        after: str | None = None
        while True:
            params: dict[str, str | int] = {"limit": _PAGE} | ({} if after is None else {"after": after})
            response = await self._get("/v1/backend/devices", **params)
            if response.status_code != httpx.codes.OK:
                msg = f"the authz service answered {response.status_code} for device keys: {response.text[:200]}"
                raise AuthzUnavailableError(msg, status_code=response.status_code)
            try:
                page = _page_decoder.decode(response.content)
            except msgspec.DecodeError as exc:
                raise SessionError(f"malformed device key page from the authz service: {exc}") from exc
            for device in page.devices:
                keys[device.device_id] = _verify_key(device)
            if page.next is None:
                break
            after = page.next
        self._keys = keys
        return len(keys)

    def _take_token(self) -> bool:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._filled_at) * self._rate)
        self._filled_at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    async def refresh(self, device_id: str) -> VerifyKey | None:
        """Fetch ``device_id``'s key again, unless one device or all refreshed too recently.

        Concurrent calls for one device share one request.

        Returns:
            The key now held (the old one when the refresh was rate limited), or None
            when the service does not know the device (or it was revoked: then it is dropped).

        Raises:
            AuthenticationError: The backend credential was refused.
            AuthzUnavailableError: The service cannot be reached.
        """
        shared = self._inflight.get(device_id)
        if shared is not None:
            return await shared
        now = self._clock()
        if now - self._last_refresh.get(device_id, -self._interval) < self._interval or not self._take_token():
            return self._keys.get(device_id)
        self._last_refresh[device_id] = now
        future: asyncio.Future[VerifyKey | None] = asyncio.get_running_loop().create_future()
        self._inflight[device_id] = future
        try:
            key = await self._fetch(device_id)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here: the sharers re-raise it
            raise
        else:
            future.set_result(key)
            return key
        finally:
            del self._inflight[device_id]

    async def _fetch(self, device_id: str) -> VerifyKey | None:
        self.refreshes += 1
        response = await self._get(f"/v1/backend/devices/{device_id}")
        if response.status_code == _NOT_FOUND:
            self._keys.pop(device_id, None)
            return None
        if response.status_code != httpx.codes.OK:
            msg = f"the authz service answered {response.status_code} for {device_id!r}'s keys"
            raise AuthzUnavailableError(msg, status_code=response.status_code)
        try:
            key = _verify_key(_one_decoder.decode(response.content))
        except msgspec.DecodeError as exc:
            raise SessionError(f"malformed device keys from the authz service: {exc}") from exc
        self._keys[device_id] = key
        return key
