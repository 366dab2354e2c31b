"""The real local stack for the SDK's tests: mosquitto (TLS + dynsec) from the harness,
a device that signs with `amora_protocol.Sender` and answers commands, and a stand-in
for the authz service's session API (real HTTP on loopback, real dynsec clients, real
signed grants) until the service itself runs in these tests.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib.util
import json
import secrets
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gmqtt
import httpx
import msgspec
import pytest

from amora_devtools import DynsecError
from amora_devtools.broker import (
    BrokerProcess,
    create_device_client,
    dynsec,
    start_broker,
    start_broker_pair,
)
from amora_devtools.pki import DevPKI
from amora_protocol import (
    ClockSkew,
    Codec,
    CommandGuard,
    CommandResponse,
    CommandStatus,
    ConnectionStatus,
    DeviceState,
    EncryptionKey,
    Grant,
    PlaybackStatus,
    ProtocolError,
    RejectReason,
    Right,
    Sender,
    SigningKey,
    Song,
    VerifyKey,
    commands_topic,
    connection_topic,
    issue_grant,
    keyring,
    responses_topic,
    state_topic,
    unauthenticated_id,
    user_device_acls,
    verify_command,
)
from amora_sync import AmoraClient, ReconnectPolicy
from amora_sync._mqtt import NO_RECONNECT

if TYPE_CHECKING:
    import ssl
    from collections.abc import AsyncIterator

WAIT = 15.0  # bound on every wait for an event in these tests, in seconds
_DISCONNECT_WITH_WILL = 0x04


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


# ---------------------------------------------------------------- stand-in authz service


@dataclass
class _SessionRecord:
    session_id: str
    password: str
    user: str
    devices: list[str]
    signing_key: bytes
    encryption_key: bytes
    expires_at_ms: int


@dataclass
class StandInAuthz:
    """Speaks `POST /v1/sessions`, `POST /v1/sessions/{id}/refresh` and `DELETE /v1/sessions/{id}`
    as the authz service's contract says, and creates the broker clients with dynsec."""

    brokers: list[BrokerProcess]
    session_ttl_ms: int = 600_000
    issuer: SigningKey = field(default_factory=SigningKey.generate)
    users: dict[str, tuple[str, list[str]]] = field(default_factory=dict)  # token -> (sub, devices)
    device_keys: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)
    sessions: dict[str, _SessionRecord] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    refreshed: threading.Event = field(default_factory=threading.Event)
    rate_limited: int = 0  # answer this many more session requests 429 + Retry-After
    retry_after: str = "1"
    clock_offset_s: float = 0.0  # this service's clock (its HTTP Date) minus the real one
    exchanged: threading.Event = field(default_factory=threading.Event)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def trusted_keys(self) -> dict[str, Any]:
        return keyring([self.issuer.public_key])

    def add_device(self, device_id: str, signing_key: bytes, encryption_key: bytes) -> None:
        self.device_keys[device_id] = (signing_key, encryption_key)
        acls = [
            {"acltype": a.acltype, "topic": a.topic, "priority": 0, "allow": a.allow}
            for a in user_device_acls(device_id)
        ]
        for broker in self.brokers:
            dynsec(broker, [{"command": "createRole", "rolename": f"user-device:{device_id}", "acls": acls}])

    def add_user(self, token: str, sub: str, devices: list[str]) -> None:
        self.users[token] = (sub, devices)

    def expire(self, session_id: str) -> None:
        """End a session as the service does at expiry: forget it, delete its broker client."""
        with self._lock:
            self.sessions.pop(session_id, None)
        for broker in self.brokers:
            dynsec(broker, [{"command": "deleteClient", "username": session_id}], check=False)

    def _grant(self, record: _SessionRecord) -> bytes:
        now = now_ms()
        grant = Grant(
            grant_id=secrets.token_hex(8),
            subject=record.user,
            session_id=record.session_id,
            signing_key=record.signing_key,
            devices=tuple(record.devices),
            rights=(Right.WATCH, Right.CONTROL),
            issued_at_ms=now,
            expires_at_ms=record.expires_at_ms,
            encryption_key=record.encryption_key,
        )
        return issue_grant(grant, self.issuer)

    def _answer(self, record: _SessionRecord) -> dict[str, Any]:
        # The published schema (amora_protocol.SessionResponse), for creation and refresh alike.
        return {
            "session_id": record.session_id,
            "expires_at": record.expires_at_ms,
            "grant": b64(self._grant(record)),
            "broker": {
                "endpoints": [f"mqtts://{b.host}:{b.app_port}" for b in self.brokers],
                "username": record.session_id,
                "password": record.password,
                "client_id": record.session_id,
            },
            "devices": [
                {
                    "device_id": d,
                    "signing_key": b64(self.device_keys[d][0]),
                    "encryption_key": b64(self.device_keys[d][1]),
                }
                for d in record.devices
            ],
            "authz_keys": [{"kid": self.issuer.kid, "public_key": b64(self.issuer.public_key.raw)}],
        }

    def handle(self, method: str, path: str, token: str | None, body: bytes) -> tuple[int, dict[str, Any]]:  # noqa: PLR0911 - one answer per route
        self.calls.append(f"{method} {path}")
        user = self.users.get(token or "")
        if user is None:
            return 401, {"code": "invalid_token", "message": "bad token"}
        sub, devices = user
        parts = path.strip("/").split("/")
        if method == "POST" and self.rate_limited > 0:
            self.rate_limited -= 1
            return 429, {"code": "rate_limited", "message": "too many session requests"}
        if method == "POST" and parts == ["v1", "sessions"]:
            request = json.loads(body or b"{}")
            record = _SessionRecord(
                session_id=f"s-{secrets.token_hex(8)}",
                password=secrets.token_urlsafe(16),
                user=sub,
                devices=list(devices),
                signing_key=base64.b64decode(request["signing_key"]),
                encryption_key=base64.b64decode(request["encryption_key"]),
                expires_at_ms=now_ms() + self.session_ttl_ms,
            )
            command = {
                "command": "createClient",
                "username": record.session_id,
                "password": record.password,
                "clientid": record.session_id,
                "roles": [{"rolename": f"user-device:{d}"} for d in devices],
            }
            for broker in self.brokers:
                # The real service reconciles a broker that is down later; so does this one
                # (not at all: the tests that stop a broker create sessions before).
                with contextlib.suppress(DynsecError):
                    dynsec(broker, [command])
            with self._lock:
                self.sessions[record.session_id] = record
            self.exchanged.set()
            return 201, self._answer(record)
        if len(parts) >= 3 and parts[:2] == ["v1", "sessions"]:
            with self._lock:
                found = self.sessions.get(parts[2])
            if found is None or found.user != sub:
                return 404, {"code": "session_not_found", "message": "no such session"}
            record = found
            if method == "POST" and parts[3:] == ["refresh"]:
                record.expires_at_ms = now_ms() + self.session_ttl_ms
                self.refreshed.set()
                return 200, self._answer(record)
            if method == "DELETE" and len(parts) == 3:
                self.expire(record.session_id)
                return 204, {}
        return 404, {"code": "not_found", "message": path}

    def start(self) -> None:
        authz = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                auth = self.headers.get("Authorization", "")
                token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None
                status, answer = authz.handle(self.command, self.path, token, body)
                data = json.dumps(answer).encode() if status != 204 else b""
                self.send_response(status)
                if status == 429:
                    self.send_header("Retry-After", authz.retry_after)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def date_time_string(self, timestamp: float | None = None) -> str:
                # The Date header, from this service's (possibly skewed) clock.
                now = time.time() if timestamp is None else timestamp
                return super().date_time_string(now + authz.clock_offset_s)

            do_POST = _serve  # noqa: N815 - http.server's naming
            do_DELETE = _serve  # noqa: N815

            def log_message(self, *_args: object) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="stand-in-authz", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


# ---------------------------------------------------------------- a device


def _no_reconnect_client(client_id: str, **kwargs: Any) -> gmqtt.Client:
    client = gmqtt.Client(client_id, **kwargs)
    client.set_config({"reconnect_retries": NO_RECONNECT})  # the tests reconnect devices themselves
    return client


class Device:
    """A player as the agent would be on the wire: mTLS, signed state, a responder."""

    def __init__(self, device_id: str, pki: DevPKI) -> None:
        self.device_id = device_id
        self.pki = pki
        self.cert = pki.issue_client_cert(device_id)
        self.signing_key = SigningKey.generate()
        self.encryption_key = EncryptionKey.generate()
        self.sender = Sender(device_id, self.signing_key, epoch=secrets.randbits(62))
        self.version = 0
        self.client: gmqtt.Client | None = None
        self.trusted: dict[str, Any] = {}
        self.guard = CommandGuard()
        self.commands: list[Any] = []  # executed (passed the guard)
        self.seen_ids: list[str] = []  # every verified command that arrived
        self.delivery: dict[str, tuple[int, str | None]] = {}  # command id -> (MQTT QoS, sealed_to)
        self.command_event = asyncio.Event()
        self.answer: CommandStatus | None = CommandStatus.SUCCEEDED
        self.reject_reason: RejectReason | None = None
        self.retry_after_ms: int | None = None
        self.answers_to_lose = 0  # run the next commands but lose their answers
        self.outcomes: dict[str, CommandResponse] = {}  # command id -> original answer
        self.clock_offset_ms = 0  # this device's clock minus the real one
        # As the agent when its command queue is full: answer `busy` before verifying,
        # by the digest of the payload (`unauthenticated_id`), never by the command's id.
        self.busy_by_digest = False
        self.commands_to_ignore = 0  # drop the next verified commands unseen by the guard
        self.ignored: list[str] = []  # ids of the commands dropped that way
        self.ignored_event = asyncio.Event()

    def ssl_context(self) -> ssl.SSLContext:
        return self.pki.client_context(self.cert)

    async def connect(self, broker: BrokerProcess, *, respond: bool = True) -> None:
        will_payload = self.sender.encode(
            connection_topic(self.device_id),
            ConnectionStatus(device_id=self.device_id, online=False, at_ms=now_ms(), reason="lost"),
            now_ms=now_ms(),
        )
        will = gmqtt.Message(
            connection_topic(self.device_id), will_payload, qos=1, retain=True, content_type=Codec.MSGPACK.value
        )
        # A persistent session, as the agent has: commands published while the device is
        # offline wait for it in the broker.
        client = _no_reconnect_client(
            self.device_id, will_message=will, clean_session=False, session_expiry_interval=600
        )
        client.on_message = self._on_message
        self.client = client  # queued commands may arrive before connect() returns
        await asyncio.wait_for(
            client.connect(broker.host, broker.device_port, ssl=self.ssl_context(), keepalive=10), WAIT
        )
        if respond:
            client.subscribe(commands_topic(self.device_id), qos=2)
        await self.publish_status(online=True)

    async def crash(self) -> None:
        """Leave as a crash does, as far as the broker can tell: it publishes the Last Will.

        MQTT 5 DISCONNECT reason 0x04 ("disconnect with Will Message") has the broker treat
        the end like a lost connection, through gmqtt's public API.
        """
        assert self.client is not None
        client, self.client = self.client, None
        await asyncio.wait_for(client.disconnect(reason_code=_DISCONNECT_WITH_WILL), WAIT)

    async def disconnect(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.client.disconnect(), 5)
            self.client = None

    def _publish(self, topic: str, payload: bytes, *, retain: bool) -> None:
        assert self.client is not None
        self.client.publish(topic, payload, qos=1, retain=retain, content_type=Codec.MSGPACK.value)

    def make_state(self, *, status: PlaybackStatus = PlaybackStatus.PLAY, **fields: Any) -> DeviceState:
        self.version += 1
        return DeviceState(
            device_id=self.device_id,
            version=self.version,
            status=status,
            sampled_at_ms=now_ms(),
            elapsed_ms=fields.pop("elapsed_ms", 1000),
            song=fields.pop("song", Song(file="a.flac", title="Song A", artist="Artist A", duration_ms=180_000)),
            volume=fields.pop("volume", 50),
            **fields,
        )

    def publish_state(self, **fields: Any) -> DeviceState:
        state = self.make_state(**fields)
        topic = state_topic(self.device_id)
        self._publish(topic, self.sender.encode(topic, state, now_ms=now_ms()), retain=True)
        return state

    async def publish_status(self, *, online: bool) -> None:
        topic = connection_topic(self.device_id)
        status = ConnectionStatus(device_id=self.device_id, online=online, at_ms=now_ms())
        self._publish(topic, self.sender.encode(topic, status, now_ms=now_ms()), retain=True)

    def _on_message(self, _client: object, topic: str, payload: bytes, qos: int, properties: Any) -> int:
        content_type = (properties.get("content_type") or [None])[0]
        correlation = (properties.get("correlation_data") or [b""])[0]
        if self.busy_by_digest:
            busy = CommandResponse(
                command_id=unauthenticated_id(payload),
                device_id=self.device_id,
                status=CommandStatus.REJECTED,
                at_ms=now_ms(),
                reason=RejectReason.BUSY,
                retry_after_ms=self.retry_after_ms,
            )
            self._respond(busy, correlation)
            return 0
        try:
            verified = verify_command(
                payload,
                topic=topic,
                content_type=content_type,
                trusted_keys=self.trusted,
                now_ms=now_ms(),
                decrypt_key=self.encryption_key,
            )
        except ProtocolError:
            return 0
        command = verified.command
        if self.commands_to_ignore > 0:
            # Lost on the way, as to a broker with no session for the device yet.
            self.commands_to_ignore -= 1
            self.ignored.append(command.id)
            self.ignored_event.set()
            return 0
        self.seen_ids.append(command.id)
        self.delivery[command.id] = (qos, verified.header.sealed_to)
        now = now_ms() + self.clock_offset_ms
        try:
            self.guard.check(verified.header, command, now_ms=now)
        except ClockSkew as exc:
            self._respond(
                CommandResponse(
                    command_id=command.id,
                    device_id=self.device_id,
                    status=CommandStatus.REJECTED,
                    at_ms=now,
                    reason=RejectReason.CLOCK_SKEW,
                    clock_offset_ms=exc.offset_ms,
                ),
                correlation,
            )
            return 0
        except ProtocolError:
            # A repeat: the original outcome again, as the agent does; a bare
            # `duplicate` only when the outcome is unknown.
            original = self.outcomes.get(command.id)
            if original is None:
                original = CommandResponse(
                    command_id=command.id, device_id=self.device_id, status=CommandStatus.DUPLICATE, at_ms=now
                )
            self._respond(msgspec.structs.replace(original, duplicate=True), correlation)
            return 0
        self.commands.append(command)
        self.command_event.set()
        if self.answer is not None:
            outcome = CommandResponse(
                command_id=command.id,
                device_id=self.device_id,
                status=self.answer,
                at_ms=now,
                reason=self.reject_reason,
                retry_after_ms=self.retry_after_ms,
            )
            self.outcomes[command.id] = outcome
            if self.answers_to_lose > 0:
                self.answers_to_lose -= 1  # ran, but the answer is lost on the way
            else:
                self._respond(outcome, correlation)
        return 0

    def _respond(self, response: CommandResponse, correlation: bytes) -> None:
        topic = responses_topic(self.device_id)
        assert self.client is not None
        self.client.publish(
            topic,
            self.sender.encode(topic, response, now_ms=now_ms()),
            qos=1,
            content_type=Codec.MSGPACK.value,
            correlation_data=correlation,
        )

    async def wait_ignored(self, count: int = 1) -> None:
        async with asyncio.timeout(WAIT):
            while len(self.ignored) < count:
                self.ignored_event.clear()
                await self.ignored_event.wait()

    async def wait_command(self, count: int = 1) -> None:
        async with asyncio.timeout(WAIT):
            while len(self.commands) < count:
                self.command_event.clear()
                await self.command_event.wait()


# ---------------------------------------------------------------- the stack


@dataclass
class Stack:
    pki: DevPKI
    brokers: list[BrokerProcess]
    authz: StandInAuthz
    devices: dict[str, Device]
    token: str = "token-alice"

    @property
    def broker(self) -> BrokerProcess:
        return self.brokers[0]

    def client(self, **kwargs: Any) -> AmoraClient:
        kwargs.setdefault("ca_file", self.pki.ca_file)
        kwargs.setdefault("reconnect", ReconnectPolicy(initial_delay=0.05, max_delay=0.5, connect_timeout=5))
        kwargs.setdefault("connect_timeout", WAIT)
        token = self.token
        return AmoraClient(self.authz.url, lambda: token, **kwargs)


def _build_stack(pki: DevPKI, brokers: list[BrokerProcess], device_ids: list[str]) -> Stack:
    authz = StandInAuthz(brokers)
    devices = {}
    for device_id in device_ids:
        device = Device(device_id, pki)
        device.trusted = authz.trusted_keys()
        for broker in brokers:
            create_device_client(broker, device_id)
        authz.add_device(device_id, device.signing_key.public_key.raw, device.encryption_key.public_key.raw)
        devices[device_id] = device
    authz.add_user("token-alice", "alice", device_ids)
    authz.start()
    return Stack(pki=pki, brokers=brokers, authz=authz, devices=devices)


@pytest.fixture
def sdk_pki(tmp_path: Path) -> DevPKI:
    return DevPKI.create(tmp_path / "pki")


@pytest.fixture
async def stack(tmp_path: Path, sdk_pki: DevPKI) -> AsyncIterator[Stack]:
    broker = start_broker(tmp_path / "broker", sdk_pki)
    try:
        built = _build_stack(sdk_pki, [broker], ["player-1", "player-2"])
        try:
            yield built
        finally:
            for device in built.devices.values():
                await device.disconnect()
            built.authz.stop()
    finally:
        broker.close()


@pytest.fixture
async def pair_stack(tmp_path: Path, sdk_pki: DevPKI) -> AsyncIterator[Stack]:
    primary, standby = start_broker_pair(tmp_path / "brokers", sdk_pki)
    try:
        built = _build_stack(sdk_pki, [primary, standby], ["player-1"])
        try:
            yield built
        finally:
            for device in built.devices.values():
                await device.disconnect()
            built.authz.stop()
    finally:
        standby.close()
        primary.close()


# ---------------------------------------------------------------- the real authz service


@dataclass
class RealStack:
    """The real amora-authz-service (its own process, dev issuer on) over a harness broker."""

    pki: DevPKI
    broker: BrokerProcess
    url: str
    devices: dict[str, Device]

    async def token(self, user: str) -> str:
        async with httpx.AsyncClient(timeout=10) as http:
            response = await http.post(f"{self.url}/dev-issuer/token", json={"username": user})
        response.raise_for_status()
        return str(response.json()["access_token"])

    async def add_device(self, device_id: str, *, link_to: str) -> Device:
        """Register a device through the admin API, link it to a user, wait for its broker client."""
        admin = {"Authorization": f"Bearer {await self.token('admin')}"}
        device = Device(device_id, self.pki)
        async with httpx.AsyncClient(base_url=self.url, timeout=10, headers=admin) as http:
            registered = await http.post(
                "/v1/admin/devices",
                json={
                    "device_id": device_id,
                    "signing_key": b64(device.signing_key.public_key.raw),
                    "encryption_key": b64(device.encryption_key.public_key.raw),
                },
            )
            registered.raise_for_status()
            (await http.put(f"/v1/admin/users/{link_to}/devices/{device_id}")).raise_for_status()
            keys = (await http.get("/.well-known/amora-keys")).json()["keys"]
        device.trusted = keyring(VerifyKey.from_raw(base64.b64decode(k["public_key"])) for k in keys)
        await _wait_device_client(self.broker, device_id)
        self.devices[device_id] = device
        return device

    def client(self, user: str = "alice", **kwargs: Any) -> AmoraClient:
        kwargs.setdefault("ca_file", self.pki.ca_file)
        kwargs.setdefault("reconnect", ReconnectPolicy(initial_delay=0.05, max_delay=0.5, connect_timeout=5))
        kwargs.setdefault("connect_timeout", WAIT)

        async def token() -> str:
            return await self.token(user)

        return AmoraClient(self.url, token, **kwargs)


def _authz_executable() -> Path | None:
    if importlib.util.find_spec("amora_authz") is None:
        return None
    script = Path(sys.executable).parent / "amora-authz"
    return script if script.exists() else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _wait_ready(url: str, proc: asyncio.subprocess.Process) -> None:
    async with httpx.AsyncClient(timeout=2) as http, asyncio.timeout(WAIT):
        while proc.returncode is None:
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(f"{url}/readyz")).status_code == 200:
                    return
            await asyncio.sleep(0.1)  # bounded readiness poll of a process we started
    raise RuntimeError("amora-authz exited during start-up")


async def _wait_device_client(broker: BrokerProcess, device_id: str) -> None:
    # The service reconciles the broker after each change; wait until the device's client exists.
    async with asyncio.timeout(WAIT):
        while True:
            answer = await asyncio.to_thread(
                dynsec, broker, [{"command": "getClient", "username": device_id}], check=False
            )
            if not answer[0].get("error"):
                return
            await asyncio.sleep(0.1)  # bounded poll of the broker's state


@pytest.fixture
async def real_stack(request: pytest.FixtureRequest, tmp_path: Path, sdk_pki: DevPKI) -> AsyncIterator[RealStack]:
    """The real service; ``indirect`` parametrisation passes extra configuration (a dict)."""
    executable = _authz_executable()
    if executable is None:
        pytest.skip("amora-authz-service is not installed in this environment")
    broker = start_broker(tmp_path / "broker", sdk_pki)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    config = {
        "database_url": f"sqlite://{tmp_path / 'authz.db'}",
        "listen_host": "127.0.0.1",
        "listen_port": port,
        "public_url": url,
        "state_dir": str(tmp_path / "authz-state"),
        "session_ttl_s": 600,
        "log_json": False,
        "log_level": "warning",
        "expiry_check_interval_s": 1.0,
        "dev_issuer": {"enabled": True, "users": ["alice", "bob", "admin"], "admins": ["admin"]},
        "brokers": [
            {
                "name": "primary",
                "host": broker.host,
                "port": broker.app_port,
                "username": broker.admin_username,
                "password": broker.admin_password,
                "ca_file": str(broker.ca_file),
                "client_endpoints": [f"mqtts://{broker.host}:{broker.app_port}"],
            }
        ],
    }
    config.update(getattr(request, "param", None) or {})
    config_file = tmp_path / "authz.toml"
    config_file.write_text(_toml(config))
    log = (tmp_path / "authz.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        str(executable), "--config", str(config_file), "serve", stdout=log, stderr=log
    )
    stack: RealStack | None = None
    try:
        try:
            await _wait_ready(url, proc)
        except (RuntimeError, TimeoutError) as exc:
            log.flush()
            tail = (tmp_path / "authz.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"amora-authz did not become ready:\n{tail}") from exc
        stack = RealStack(pki=sdk_pki, broker=broker, url=url, devices={})
        await stack.add_device("player-1", link_to="alice")
        yield stack
    finally:
        if stack is not None:
            for device in stack.devices.values():
                await device.disconnect()
        if proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(10):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        log.close()
        broker.close()


def _toml_value(item: Any) -> str:
    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, int | float):
        return str(item)
    if isinstance(item, str):
        return json.dumps(item)
    if isinstance(item, list):
        return "[" + ", ".join(_toml_value(i) for i in item) + "]"
    raise TypeError(item)


def _toml_table(name: str, table: dict[str, Any]) -> list[str]:
    lines = ["", f"[{name}]"] + [f"{k} = {_toml_value(v)}" for k, v in table.items() if not isinstance(v, dict)]
    for sub, inner in table.items():
        if isinstance(inner, dict):
            lines += _toml_table(f"{name}.{sub}", inner)
    return lines


def _toml(data: dict[str, Any]) -> str:
    """A tiny TOML writer for the service's configuration (strings, numbers, lists, tables)."""
    lines = [
        f"{k} = {_toml_value(v)}"
        for k, v in data.items()
        if not isinstance(v, dict) and (not isinstance(v, list) or _plain(v))
    ]
    for key, table in data.items():
        if isinstance(table, dict):
            lines += _toml_table(key, table)
        elif isinstance(table, list) and not _plain(table):
            for entry in table:
                lines += ["", f"[[{key}]]"] + [f"{k} = {_toml_value(v)}" for k, v in entry.items()]
    return "\n".join(lines) + "\n"


def _plain(items: list[Any]) -> bool:
    return all(not isinstance(i, dict) for i in items)
