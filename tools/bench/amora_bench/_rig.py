"""Shared rigging for the SDK and agent benchmarks: a device and sessions on a bare broker, a publisher process.

The session exchange is served in-process (httpx MockTransport) with credentials created
directly in the broker's dynamic security: what these benchmarks measure starts at the broker.
"""

from __future__ import annotations

import base64
import multiprocessing
import secrets
import time
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from collections.abc import Callable
    from multiprocessing.connection import Connection
    from multiprocessing.context import SpawnProcess

    import httpx

    from amora_devtools.broker import BrokerProcess
    from amora_sync import AmoraClient, ReconnectPolicy

__all__ = ["device_identity", "mock_session_client", "publisher", "session_identity", "start_publisher"]


def publisher(  # noqa: PLR0913 - a process entry point takes plain values
    *,
    conn: Connection,
    host: str,
    port: int,
    ca_file: str,
    cert: tuple[str, str],
    device_id: str,
    signing_key_raw: bytes,
    rate: float,
    count: int,
) -> None:
    """Publish ``count`` signed, retained QoS 1 states at ``rate``/s; send back the send instants (ns)."""
    from amora_devtools import MqttClient, client_ssl_context  # noqa: PLC0415 - child process
    from amora_protocol import (  # noqa: PLC0415
        Codec,
        DeviceState,
        PlaybackStatus,
        Sender,
        SigningKey,
        Song,
        state_topic,
    )

    sender = Sender(device_id, SigningKey.from_raw(signing_key_raw), epoch=secrets.randbits(62))
    topic = state_topic(device_id)
    sent: list[int] = []
    ctx = client_ssl_context(ca_file, cert_file=cert[0], key_file=cert[1])
    with MqttClient.connect(host, port, ssl_context=ctx, client_id=device_id) as client:
        conn.send("ready")
        conn.recv()  # go
        start = time.monotonic()
        for i in range(1, count + 1):
            due = start + i / rate
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)  # pacing the publish rate, not waiting for an event
            now = time.time_ns() // 1_000_000
            state = DeviceState(
                device_id=device_id,
                version=i,
                status=PlaybackStatus.PLAY,
                sampled_at_ms=now,
                elapsed_ms=i,
                song=Song(file="bench.flac", title="Bench", artist="Amora", duration_ms=600_000),
                volume=i % 101,
            )
            payload = sender.encode(topic, state, now_ms=now)
            sent.append(time.monotonic_ns())
            client.publish(topic, payload, qos=1, retain=True, content_type=Codec.MSGPACK.value)
    conn.send(sent)
    conn.close()


def start_publisher(  # noqa: PLR0913 - the publisher's plain values
    broker: BrokerProcess,
    *,
    cert: tuple[str, str],
    device_id: str,
    signing_raw: bytes,
    rate: float,
    count: int,
    target: Callable[..., None] | None = None,
) -> tuple[SpawnProcess, Connection]:
    """Start `publisher` (or ``target``, which takes the same arguments) in a process of its own.

    Returns:
        The process and the pipe end to talk to it.
    """
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(
        target=target or publisher,
        kwargs={
            "conn": child,
            "host": broker.host,
            "port": broker.device_port,
            "ca_file": str(broker.ca_file),
            "cert": cert,
            "device_id": device_id,
            "signing_key_raw": signing_raw,
            "rate": rate,
            "count": count,
        },
        name=f"amora-bench-device-{device_id}",
    )
    proc.start()
    return proc, parent


def device_identity(broker: BrokerProcess, device_id: str) -> tuple[tuple[str, str], bytes, bytes]:
    """Register ``device_id`` on the broker; return its (cert, key) files, signing key and X25519 public key."""
    from amora_devtools import create_device_client  # noqa: PLC0415
    from amora_protocol import EncryptionKey, SigningKey  # noqa: PLC0415

    create_device_client(broker, device_id)
    cert = broker.pki.issue_client_cert(device_id)
    key = SigningKey.generate()
    return (str(cert.cert_file), str(cert.key_file)), key.to_raw(), EncryptionKey.generate().public_key.raw


def session_identity(broker: BrokerProcess, device_id: str, *, user: str | None = None) -> tuple[str, str]:
    """Create an app session that may watch ``device_id``; return its id and broker password.

    Sessions of one ``user`` share its group (fewer broker commands each); by default every
    session has a user of its own.
    """
    from amora_devtools import create_session_client  # noqa: PLC0415

    session_id = f"bench-{secrets.token_hex(6)}"
    password = secrets.token_urlsafe(16)
    create_session_client(broker, session_id, password, user=user or f"u-{session_id}", device_ids=[device_id])
    return session_id, password


def mock_session_client(  # noqa: PLR0913 - a session's plain values
    broker: BrokerProcess,
    *,
    device_id: str,
    session_id: str,
    password: str,
    signing_raw: bytes,
    encryption_raw: bytes,
    reconnect: ReconnectPolicy | None = None,
    transport: Literal["auto", "mqtts", "wss"] = "auto",
) -> tuple[AmoraClient, httpx.AsyncClient]:
    """An `AmoraClient` whose session exchange answers in-process with this session (not entered yet).

    The session lists the broker's ``mqtts://`` and ``wss://`` endpoints, as the authz
    service does; `transport` picks which the client uses.
    """
    import httpx  # noqa: PLC0415

    from amora_protocol import SigningKey  # noqa: PLC0415
    from amora_sync import AmoraClient  # noqa: PLC0415

    answer = {
        "session_id": session_id,
        "expires_at": time.time_ns() // 1_000_000 + 3_600_000,
        "broker": {
            "endpoints": [f"mqtts://{broker.host}:{broker.app_port}", f"wss://localhost:{broker.ws_port}/mqtt"],
            "username": session_id,
            "password": password,
            "client_id": session_id,
        },
        "grant": base64.b64encode(b"bench").decode(),
        "devices": [
            {
                "device_id": device_id,
                "signing_key": base64.b64encode(SigningKey.from_raw(signing_raw).public_key.raw).decode(),
                "encryption_key": base64.b64encode(encryption_raw).decode(),
            }
        ],
        "authz_keys": [],
    }

    def exchange(request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path == "/v1/sessions":
            return httpx.Response(201, json=answer)
        return httpx.Response(204)

    http = httpx.AsyncClient(transport=httpx.MockTransport(exchange))
    client = AmoraClient(
        "http://authz.invalid",
        lambda: "bench-token",
        ssl_context=broker.client_context(),
        http_client=http,
        reconnect=reconnect,
        transport=transport,
        connect_timeout=120.0,  # many clients connect at once in these benchmarks
    )
    return client, http
