"""The authz service over a real broker, and the MQTT probes its broker tests use.

`Harness` registers devices (CSR answered with a certificate), opens sessions and connects apps
and devices with the harness's synchronous MQTT client; its calls run in threads while the
service keeps serving in the test's event loop. `assert_dropped` / `assert_delivered` tell
what the broker let through by what a watcher (the broker's admin account) receives.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from amora_authz.testing import RunningService, broker_endpoint, dev_settings, serve, session_body
from amora_devtools import MqttClient, client_ssl_context
from amora_devtools.pki import device_key_and_csr
from amora_protocol import (
    EncryptionKey,
    SigningKey,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence
    from pathlib import Path

    from amora_authz._store import Certificate
    from amora_devtools import BrokerProcess, DevPKI

__all__ = [
    "NOT_AUTHORISED",
    "WAIT",
    "Harness",
    "assert_delivered",
    "assert_dropped",
    "next_live",
    "publish",
    "receive",
    "serve_harness",
    "subscribe",
    "watch_everything",
]

NOT_AUTHORISED = 0x87
WAIT = 5.0  # bound for every wait on a broker event


@dataclass
class Harness:
    svc: RunningService
    broker: BrokerProcess
    pki: DevPKI
    folder: Path

    async def register(self, device_id: str, *users: str) -> Path:
        """Register a device through the API with a CSR; link users; return its cert dir."""
        key_pem, csr_pem = device_key_and_csr(device_id)
        admin = await self.svc.auth("admin")
        response = await self.svc.http.post(
            "/v1/admin/devices",
            json={
                "device_id": device_id,
                "signing_key": base64.b64encode(SigningKey.generate().public_key.raw).decode(),
                "encryption_key": base64.b64encode(EncryptionKey.generate().public_key.raw).decode(),
                "csr": csr_pem.decode(),
            },
            headers=admin,
        )
        assert response.status_code == 201, response.text
        folder = self.folder / device_id
        folder.mkdir()
        (folder / "cert.pem").write_text(response.json()["certificate"])
        (folder / "key.pem").write_bytes(key_pem)
        for user in users:
            linked = await self.svc.http.put(f"/v1/admin/users/{user}/devices/{device_id}", headers=admin)
            assert linked.status_code == 201
        return folder

    async def session(self, user: str) -> dict[str, Any]:
        response = await self.svc.http.post("/v1/sessions", json=session_body(), headers=await self.svc.auth(user))
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    async def app(self, session: dict[str, Any], **options: Any) -> MqttClient:
        broker = session["broker"]
        options.setdefault("client_id", broker["client_id"])
        return await asyncio.to_thread(
            MqttClient.connect,
            self.broker.host,
            self.broker.app_port,
            ssl_context=client_ssl_context(self.broker.ca_file),
            username=broker["username"],
            password=broker["password"],
            timeout=WAIT,
            **options,
        )

    async def device(self, device_id: str) -> MqttClient:
        folder = self.folder / device_id
        return await asyncio.to_thread(
            MqttClient.connect,
            self.broker.host,
            self.broker.device_port,
            ssl_context=client_ssl_context(
                self.broker.ca_file,
                cert_file=folder / "cert.pem",
                key_file=folder / "key.pem",
            ),
            client_id=device_id,
            timeout=WAIT,
        )


@contextlib.asynccontextmanager
async def serve_harness(broker: BrokerProcess, dev_pki: DevPKI, tmp_path: Path) -> AsyncIterator[Harness]:
    """The service (development issuer on, CA from ``dev_pki``) reconciling ``broker``."""

    def crl_written(revoked: Sequence[Certificate]) -> None:
        # The harness's PKI is shared by the whole test session, so the service's
        # revocations are added to it rather than overwriting its CRL; a test reloads
        # the broker when it wants the CRL in force.
        known = set(dev_pki.revoked_serials())
        for cert in revoked:
            if cert.serial not in known:
                dev_pki.revoke(cert.serial)

    settings = dev_settings(
        tmp_path,
        brokers=(broker_endpoint(broker),),
        device_ca_cert=str(dev_pki.ca_file),
        device_ca_key=str(dev_pki.ca_key_file),
        crl_file=str(tmp_path / "service-crl.pem"),
    )
    async with serve(settings, on_crl_written=crl_written) as svc:
        yield Harness(svc, broker, dev_pki, tmp_path)


async def subscribe(client: MqttClient, topic: str) -> int:
    return await asyncio.to_thread(client.subscribe, topic, qos=1, timeout=WAIT)


async def publish(client: MqttClient, topic: str, payload: bytes, **options: Any) -> None:
    await asyncio.to_thread(client.publish, topic, payload, qos=1, timeout=WAIT, **options)


async def receive(client: MqttClient) -> Any:
    return await asyncio.to_thread(client.receive, timeout=WAIT)


async def watch_everything(harness: Harness) -> MqttClient:
    """The broker's admin account, subscribed to every topic (amora/... and dynsec control)."""
    watcher = await asyncio.to_thread(harness.broker.admin_client, timeout=WAIT)
    assert await subscribe(watcher, "#") < 0x80
    assert await subscribe(watcher, "$CONTROL/dynamic-security/#") < 0x80
    return watcher


async def next_live(watcher: MqttClient) -> Any:
    """The watcher's next message published after it subscribed (retained copies skipped)."""
    while True:
        message = await receive(watcher)
        assert message is not None, "the watcher received nothing"
        if not message.retain:
            return message


async def assert_dropped(watcher: MqttClient, sender: MqttClient, topic: str, payload: bytes, *, marker: str) -> None:
    """The broker drops ``sender``'s publish to ``topic``.

    paho 1.6 does not report PUBACK reason codes, so this looks at delivery: the broker
    handles one connection's publishes in order, so when the sender's next publish (to
    ``marker``, a topic it may use) is the first the watcher sees, the first was dropped.
    """
    await publish(sender, topic, payload)
    token = os.urandom(8).hex().encode()
    await publish(sender, marker, token)
    message = await next_live(watcher)
    assert (message.topic, message.payload) == (marker, token), f"{topic} was delivered"


async def assert_delivered(watcher: MqttClient, sender: MqttClient, topic: str, payload: bytes) -> None:
    """The broker delivers ``sender``'s publish to ``topic`` (the watcher sees it next)."""
    await publish(sender, topic, payload)
    message = await next_live(watcher)
    assert (message.topic, message.payload) == (topic, payload)
