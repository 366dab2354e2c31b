"""Fixtures for the cross-package tests: the whole local stack, SDK clients and raw MQTT probes."""

from __future__ import annotations

import base64
import contextlib
import secrets
import ssl
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest

from amora_devtools.fakedevice import FakeDevice, register_fake_device
from amora_devtools.stack import Stack
from amora_protocol import EncryptionKey, SigningKey
from amora_sync import AmoraClient, ReconnectPolicy

WAIT_S = 15.0


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """The stack: primary + standby broker, authz, player-1 on MPD, player-2 and -3 simulated.

    alice owns player-1 and player-2, bob owns player-3, carol owns nothing.
    """
    with Stack(tmp_path / "stack", players=3, users={"alice": (0, 1), "bob": (2,), "carol": ()}) as running:
        yield running


def _token_provider(stack: Stack, user: str) -> Any:
    async def token() -> str:
        async with httpx.AsyncClient(base_url=stack.authz_url, timeout=10) as http:
            response = await http.post("/dev-issuer/token", json={"username": user})
            response.raise_for_status()
            return str(response.json()["access_token"])

    return token


@contextlib.asynccontextmanager
async def _sdk_client(stack: Stack, user: str, **options: Any) -> AsyncIterator[AmoraClient]:
    assert stack.pki is not None
    options.setdefault("ca_file", stack.pki.ca_file)
    options.setdefault("reconnect", ReconnectPolicy(initial_delay=0.05, max_delay=1.0, connect_timeout=3.0))
    async with AmoraClient(stack.authz_url, _token_provider(stack, user), **options) as c:
        yield c


def _new_session(stack: Stack, user: str) -> dict[str, Any]:
    """A fresh session for ``user`` straight from the HTTP API (its own keys and credential)."""
    token = httpx.post(f"{stack.authz_url}/dev-issuer/token", json={"username": user}, timeout=10).json()[
        "access_token"
    ]
    body = {
        "signing_key": base64.b64encode(SigningKey.generate().public_key.raw).decode(),
        "encryption_key": base64.b64encode(EncryptionKey.generate().public_key.raw).decode(),
        "client_name": "integration-probe",
    }
    response = httpx.post(
        f"{stack.authz_url}/v1/sessions", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    response.raise_for_status()
    return dict(response.json()) | {"token": token}


@dataclass
class Probe:
    """An independent MQTT 5 client (paho-mqtt), for checking what the broker allows."""

    client: mqtt.Client
    connack: threading.Event = field(default_factory=threading.Event)
    connect_rc: int | None = None
    subacks: dict[int, list[int]] = field(default_factory=dict)
    suback_event: threading.Condition = field(default_factory=threading.Condition)
    messages: list[mqtt.MQTTMessage] = field(default_factory=list)
    message_event: threading.Condition = field(default_factory=threading.Condition)
    pubacks: dict[int, int] = field(default_factory=dict)  # message id -> PUBACK reason code

    def subscribe(self, topic: str) -> list[int]:
        """Subscribe and return the broker's reason codes (>= 0x80 means refused)."""
        _, mid = self.client.subscribe(topic, qos=1)
        with self.suback_event:
            assert self.suback_event.wait_for(lambda: mid in self.subacks, timeout=WAIT_S), "no SUBACK"
            return self.subacks[mid]

    def wait_message(self, predicate: Any, timeout: float = WAIT_S) -> mqtt.MQTTMessage | None:
        with self.message_event:
            found: list[mqtt.MQTTMessage] = []

            def check() -> bool:
                found[:] = [m for m in self.messages if predicate(m)]
                return bool(found)

            self.message_event.wait_for(check, timeout=timeout)
            return found[0] if found else None

    def publish(self, topic: str, payload: bytes, *, content_type: str | None = None) -> None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.PUBLISH)
        if content_type:
            props.ContentType = content_type
        info = self.client.publish(topic, payload, qos=1, properties=props)
        info.wait_for_publish(timeout=WAIT_S)

    def publish_acked(self, topic: str, payload: bytes, *, retain: bool = False) -> int:
        """Publish at QoS 1 and return the PUBACK's reason code (>= 0x80 means refused)."""
        mid: int = self.client.publish(topic, payload, qos=1, retain=retain).mid
        with self.suback_event:
            assert self.suback_event.wait_for(lambda: mid in self.pubacks, timeout=WAIT_S), "no PUBACK"
            return self.pubacks[mid]

    def drop(self) -> None:
        """Lose the connection without DISCONNECT (the broker then sends the Last Will)."""
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()


@contextlib.contextmanager
def _probe(  # noqa: C901 - one function per knob (TLS, will, websockets, credentials) would scatter the setup
    port: int,
    ca_file: Path,
    *,
    username: str | None = None,
    password: str | None = None,
    client_id: str = "",
    websockets: bool = False,
    session: Mapping[str, Any] | None = None,
    cert: tuple[str, str] | None = None,
    will: tuple[str, bytes, bool] | None = None,
) -> Iterator[Probe]:
    """Connect a paho client; ``probe.connect_rc`` is the CONNACK reason (None: no CONNACK).

    ``session``: a session's ``broker`` object (``POST /v1/sessions``), whose ``username``,
    ``password`` and ``client_id`` are then used. ``cert``: a client certificate and key
    (the device listener). ``will``: a Last Will ``(topic, payload, retain)`` at QoS 1.
    """
    if session is not None:
        username, password, client_id = session["username"], session["password"], session["client_id"]
    client = mqtt.Client(client_id=client_id, protocol=mqtt.MQTTv5, transport="websockets" if websockets else "tcp")
    if websockets:
        client.ws_set_options(path="/mqtt")
    context = ssl.create_default_context(cafile=str(ca_file))
    if cert is not None:
        context.load_cert_chain(*cert)
    client.tls_set_context(context)
    if username is not None:
        client.username_pw_set(username, password)
    if will is not None:
        client.will_set(will[0], will[1], qos=1, retain=will[2])
    p = Probe(client)

    def on_connect(_c: Any, _u: Any, _flags: Any, rc: Any, _props: Any = None) -> None:
        p.connect_rc = int(rc.value if hasattr(rc, "value") else rc)
        p.connack.set()

    def on_subscribe(_c: Any, _u: Any, mid: int, codes: Any, _props: Any = None) -> None:
        with p.suback_event:
            p.subacks[mid] = [int(c.value if hasattr(c, "value") else c) for c in codes]
            p.suback_event.notify_all()

    def on_message(_c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        with p.message_event:
            p.messages.append(message)
            p.message_event.notify_all()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.on_disconnect = lambda *_args: p.connack.set()
    # paho 1.6 hands the PUBACK reason code to no callback (see amora_devtools._mqtt): read it
    # from the packet paho is handling, in this one place.
    original = client._handle_pubackcomp

    def handle_puback(cmd: str) -> int:
        packet = client._in_packet["packet"]
        with p.suback_event:
            p.pubacks[int.from_bytes(packet[:2], "big")] = packet[2] if len(packet) > 2 else 0
            p.suback_event.notify_all()
        return int(original(cmd))

    client._handle_pubackcomp = handle_puback
    try:
        client.connect("127.0.0.1", port, keepalive=30)
        client.loop_start()
        p.connack.wait(WAIT_S)
    except (OSError, ssl.SSLError):
        p.connect_rc = None
        p.connack.set()
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
def sdk_client() -> Any:
    """``async with sdk_client(stack, user, **options) as client``: an SDK client for a development user."""
    return _sdk_client


@pytest.fixture
def new_session() -> Any:
    """``new_session(stack, user)``: a fresh session straight from the authz HTTP API."""
    return _new_session


@pytest.fixture
def mqtt_probe() -> Any:
    """``with mqtt_probe(port, ca_file, username=..., password=..., client_id=...) as p``: paho MQTT 5.

    ``session=`` a session's ``broker`` object instead of the three.
    """
    return _probe


@pytest.fixture(scope="session")
def security_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One stack shared by the security suite (alice: player-1, -2; bob: player-3).

    Starting a stack takes about ten seconds; the attack cases share one, and each leaves
    it as it found it (brokers running, links and devices as they were). carol owns
    nothing; mallory is for floods (her rate-limit buckets end up empty). Nothing restarts
    a stopped broker behind the tests' back: the fail-closed cases stop and restart
    brokers themselves.
    """
    folder = tmp_path_factory.mktemp("security")
    users = {"alice": (0, 1), "bob": (2,), "carol": (), "mallory": ()}
    with Stack(folder / "stack", players=3, users=users, supervise=False) as running:
        yield running


def dev_token(stack: Stack, user: str) -> str:
    """A development token for ``user`` from the stack's authz dev issuer."""
    response = httpx.post(f"{stack.authz_url}/dev-issuer/token", json={"username": user}, timeout=10)
    response.raise_for_status()
    return str(response.json()["access_token"])


@pytest.fixture
def authz_http() -> Any:
    """``authz_http(stack, user)``: an httpx client on the stack's authz, as ``user`` (None: anonymous)."""

    def client(stack: Stack, user: str | None = None) -> httpx.Client:
        headers = {} if user is None else {"Authorization": f"Bearer {dev_token(stack, user)}"}
        return httpx.Client(base_url=stack.authz_url, headers=headers, timeout=30)

    return client


@pytest.fixture
def fake_device() -> Any:
    """``fake_device(stack, prefix)``: a newly registered device (`amora_devtools.fakedevice`), not yet connected."""

    def register(stack: Stack, prefix: str) -> FakeDevice:
        assert stack.pki is not None
        return register_fake_device(
            stack.authz_url,
            dev_token(stack, "admin"),
            f"{prefix}-{secrets.token_hex(3)}",
            ca_file=stack.pki.ca_file,
            host=stack.brokers[0].host,
            port=stack.brokers[0].device_port,
        )

    return register
