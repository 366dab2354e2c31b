"""Registered devices that publish signed states on demand, for tests and benchmarks.

A `FakeDevice` is a real device as far as the broker and every client can tell: it is
registered with the authz service (its keys and a CSR, answered with a certificate from the
device CA), logs in on the device listener with that certificate, and publishes states
signed with its own Ed25519 key, with strictly increasing versions. Unlike an agent it has
no player: a test or a benchmark decides how many states it publishes and how fast, so the
consumers under test can be checked version by version.
"""

from __future__ import annotations

import asyncio
import base64
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import gmqtt
import httpx
from gmqtt.storage import PersistentStorage

from amora_devtools._gmqtt import NO_RECONNECT
from amora_devtools._mqtt import client_ssl_context
from amora_devtools.pki import device_key_and_csr
from amora_protocol import (
    DeviceState,
    EncryptionKey,
    PlaybackStatus,
    Sender,
    SigningKey,
    Song,
    now_ms,
    state_topic,
)

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["FakeDevice", "register_fake_device"]

_CONNECT_TIMEOUT_S = 10.0


@dataclass(eq=False)
class FakeDevice:
    """A registered device with its certificate and signing key (see `register_fake_device`).

    Use as an async context manager to connect it to a device listener; `publish_state`
    then publishes the next version (QoS 1, retained, like an agent).
    """

    device_id: str
    signing_key: SigningKey
    cert_file: Path
    key_file: Path
    ca_file: Path
    host: str
    port: int
    version: int = 0
    _client: gmqtt.Client | None = field(default=None, repr=False)
    _sender: Sender | None = field(default=None, repr=False)
    _inflight: PersistentStorage | None = field(default=None, repr=False)

    async def __aenter__(self) -> Self:
        """Connect on the device listener with the certificate."""
        context = client_ssl_context(self.ca_file, cert_file=self.cert_file, key_file=self.key_file)
        self._inflight = PersistentStorage()
        client = gmqtt.Client(self.device_id, clean_session=True, persistent_storage=self._inflight)
        client.set_config({"reconnect_retries": NO_RECONNECT})
        async with asyncio.timeout(_CONNECT_TIMEOUT_S):
            await client.connect(self.host, self.port, ssl=context, keepalive=30)
        self._client = client
        self._sender = Sender(self.device_id, self.signing_key, epoch=now_ms())
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Wait until the broker acknowledged every state, then disconnect."""
        if self._client is not None:
            await self.drained()
            await self._client.disconnect()
            self._client = None

    def state(self, *, playing: bool, elapsed_ms: int = 0) -> DeviceState:
        """The next state (version + 1): playing or paused, one song."""
        self.version += 1
        return DeviceState(
            device_id=self.device_id,
            version=self.version,
            status=PlaybackStatus.PLAY if playing else PlaybackStatus.PAUSE,
            sampled_at_ms=now_ms(),
            elapsed_ms=elapsed_ms,
            song=Song(file=f"{self.device_id}/song-{self.version}.flac", duration_ms=180_000),
            volume=50,
        )

    async def drained(self) -> None:
        """Wait until the broker acknowledged every state published so far."""
        if self._inflight is not None:
            async with asyncio.timeout(_CONNECT_TIMEOUT_S):
                await self._inflight.wait_empty()

    async def publish(self, state: DeviceState) -> None:
        """Sign and publish ``state`` (QoS 1, retained), waiting while the broker's in-flight window is full.

        Raises:
            RuntimeError: not connected (use ``async with``).
        """
        if self._client is None or self._sender is None:
            msg = f"{self.device_id} is not connected: use `async with device:` first"
            raise RuntimeError(msg)
        topic = state_topic(self.device_id)
        payload = self._sender.encode(topic, state, now_ms=now_ms())
        while True:
            try:
                self._client.publish(topic, payload, qos=1, retain=True)
            except OverflowError:  # every packet id in flight (the broker's receive maximum)
                await self.drained()
            else:
                return

    async def publish_state(self, *, playing: bool, elapsed_ms: int = 0) -> DeviceState:
        """Publish the next state and return it."""
        state = self.state(playing=playing, elapsed_ms=elapsed_ms)
        await self.publish(state)
        return state


def register_fake_device(  # noqa: PLR0913 - where the device registers and connects
    authz_url: str,
    admin_token: str,
    device_id: str,
    *,
    ca_file: Path,
    host: str,
    port: int,
    directory: Path | None = None,
) -> FakeDevice:
    """Register ``device_id`` with the authz service (keys + CSR) and return it, not yet connected.

    Args:
        authz_url: The authz service.
        admin_token: A token with the admin role.
        device_id: The id to register.
        ca_file: The CA of the broker's certificate.
        host: The broker's host.
        port: Its device listener.
        directory: Where to keep the certificate and key (a new private folder by default).

    Raises:
        httpx.HTTPStatusError: The registration was refused (its body says why).
    """
    signing = SigningKey.generate()
    key_pem, csr_pem = device_key_and_csr(device_id)
    body: dict[str, Any] = {
        "device_id": device_id,
        "signing_key": base64.b64encode(signing.public_key.raw).decode(),
        "encryption_key": base64.b64encode(EncryptionKey.generate().public_key.raw).decode(),
        "csr": csr_pem.decode(),
    }
    response = httpx.post(
        f"{authz_url}/v1/admin/devices", json=body, headers={"Authorization": f"Bearer {admin_token}"}, timeout=30
    )
    response.raise_for_status()
    folder = directory or Path(tempfile.mkdtemp(prefix=f"amora-{device_id}-"))
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_file, cert_file = folder / f"{device_id}.key", folder / f"{device_id}.pem"
    key_file.touch(mode=0o600)
    key_file.write_bytes(key_pem)
    cert_file.write_text(response.json()["certificate"])
    return FakeDevice(
        device_id=device_id,
        signing_key=signing,
        cert_file=cert_file,
        key_file=key_file,
        ca_file=ca_file,
        host=host,
        port=port,
    )
