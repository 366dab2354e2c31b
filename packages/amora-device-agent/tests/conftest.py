"""Shared test helpers for the agent: an authz issuer and app sessions that sign commands."""

from __future__ import annotations

import contextlib
import itertools
import secrets
import uuid
from pathlib import Path  # noqa: TC003 - pytest resolves fixture annotations
from typing import Any, Self

import pytest

from amora_agent import Agent, AgentOptions, BrokerEndpoint, SimulatedPlayer
from amora_agent._mqtt import NO_RECONNECT
from amora_protocol import (
    Action,
    Codec,
    Command,
    CommandResponse,
    EncryptionPublicKey,
    Grant,
    Right,
    Sender,
    SigningKey,
    VerifyKey,
    commands_topic,
    issue_grant,
    now_ms,
    responses_topic,
    verify_envelope,
)

_ids = itertools.count(1)


class App:
    """An app session: its own key, a grant from the test authz key, commands it signs."""

    def __init__(
        self,
        authz_key: SigningKey,
        devices: tuple[str, ...],
        *,
        rights: tuple[Right, ...] = (Right.WATCH, Right.CONTROL),
        grant_ttl_ms: int = 3_600_000,
    ) -> None:
        self.session_id = f"s-{uuid.uuid4().hex[:12]}"
        self.key = SigningKey.generate()
        self.sender = Sender(self.session_id, self.key, epoch=secrets.randbits(63))
        now = now_ms()
        self.grant = Grant(
            grant_id=f"g-{next(_ids)}",
            subject="user-1",
            session_id=self.session_id,
            signing_key=self.key.public_key.raw,
            devices=devices,
            rights=rights,
            issued_at_ms=now,
            expires_at_ms=now + grant_ttl_ms,
        )
        self.token = issue_grant(self.grant, authz_key)

    def command(
        self,
        device_id: str,
        action: Action,
        *,
        ttl_ms: int = 60_000,
        issued_at_ms: int | None = None,
        if_version: int | None = None,
        command_id: str | None = None,
        seal_to: EncryptionPublicKey | None = None,
        codec: Codec = Codec.MSGPACK,
    ) -> tuple[Command, bytes]:
        issued = now_ms() if issued_at_ms is None else issued_at_ms
        command = Command(
            id=command_id or str(uuid.uuid4()),
            issued_at_ms=issued,
            expires_at_ms=issued + ttl_ms,
            action=action,
            if_version=if_version,
        )
        payload = self.sender.encode(
            commands_topic(device_id),
            command,
            now_ms=issued,
            grant=self.token,
            seal_to=seal_to,
            codec=codec,
        )
        return command, payload


@pytest.fixture
def authz_key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def device_key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def make_app(authz_key: SigningKey):
    def make(devices: tuple[str, ...], *, issuer: SigningKey | None = None, **kwargs: object) -> App:
        return App(issuer or authz_key, devices, **kwargs)  # type: ignore[arg-type]

    return make


@pytest.fixture
def make_offline_agent(tmp_path: Path, authz_key: SigningKey, device_key: SigningKey):
    """An agent over a simulated player that never connects (for command handling)."""

    def make(
        device_id: str = "player-1",
        *,
        player: SimulatedPlayer | None = None,
        trusted: tuple[VerifyKey, ...] | None = None,
        state_dir: Path | None = None,
        options: AgentOptions | None = None,
        **kwargs: object,
    ) -> Agent:
        return Agent(
            device_id=device_id,
            signing_key=device_key,
            trusted_keys=trusted if trusted is not None else (authz_key.public_key,),
            endpoints=[BrokerEndpoint(host="127.0.0.1", port=1)],
            ssl_context=None,
            state_dir=state_dir or tmp_path / device_id,
            player=player or SimulatedPlayer(),
            options=options or AgentOptions(durable=False),
            **kwargs,  # type: ignore[arg-type]
        )

    return make


# -- live services (real mosquitto, real MPD) -------------------------------------------


class Received:
    """One message an app received."""

    def __init__(self, topic: str, payload: bytes, retain: bool, props: dict[str, Any]) -> None:
        self.topic = topic
        self.payload = payload
        self.retain = retain
        self.props = props

    def prop(self, name: str):
        value = self.props.get(name)
        return value[0] if isinstance(value, list) and value else value

    def message(self, key: VerifyKey) -> Any:
        """The verified message (the device's signature over this topic), or a ProtocolError."""
        return verify_envelope(
            self.payload,
            topic=self.topic,
            content_type=self.prop("content_type"),
            key=key,
            now_ms=now_ms(),
        ).message


class AppClient:
    """An app session on the broker's app listener (gmqtt), collecting what it receives."""

    def __init__(self, host: str, port: int, ssl_context, session_id: str, password: str) -> None:
        import asyncio  # noqa: PLC0415

        self._host, self._port, self._ssl = host, port, ssl_context
        self.session_id = session_id
        self._password = password
        self.messages: list[Received] = []
        self._changed = asyncio.Condition()
        self._tasks: set[Any] = set()
        self._client: Any = None

    async def __aenter__(self) -> Self:
        import gmqtt  # noqa: PLC0415

        client = gmqtt.Client(self.session_id, clean_session=True)
        client.set_config({"reconnect_retries": NO_RECONNECT})
        client.set_auth_credentials(self.session_id, self._password)
        client.on_message = self._on_message
        await client.connect(self._host, self._port, ssl=self._ssl)
        self._client = client
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            # The TLS close can race data still in flight from the broker (gmqtt then raises
            # SSLError APPLICATION_DATA_AFTER_CLOSE_NOTIFY): the session is over either way.
            with contextlib.suppress(OSError):
                await self._client.disconnect()

    def _on_message(self, _client, topic, payload, qos, props) -> int:  # noqa: ARG002
        import asyncio  # noqa: PLC0415

        self.messages.append(Received(topic, bytes(payload), bool(props.get("retain")), props))

        async def notify() -> None:
            async with self._changed:
                self._changed.notify_all()

        self._tasks.add(asyncio.get_running_loop().create_task(notify()))
        return 0

    async def subscribe(self, *topics: str) -> None:
        import asyncio  # noqa: PLC0415

        import gmqtt  # noqa: PLC0415

        done = asyncio.Event()
        self._client.on_subscribe = lambda *_a: done.set()
        self._client.subscribe([gmqtt.Subscription(t, qos=1) for t in topics])
        await asyncio.wait_for(done.wait(), 10)

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, **props) -> None:
        self._client.publish(topic, payload, qos=qos, **props)

    async def send(self, app: App, device_id: str, action: Action, *, key: VerifyKey) -> CommandResponse:
        """Publish ``app``'s signed command for ``action``; return the device's answer to it (verified)."""
        command, payload = app.command(device_id, action)
        self.publish(
            commands_topic(device_id),
            payload,
            content_type=Codec.MSGPACK.value,
            correlation_data=command.id.encode(),
        )
        answer = await self.wait_for(
            lambda r: r.topic == responses_topic(device_id) and r.message(key).command_id == command.id
        )
        response = answer.message(key)
        assert isinstance(response, CommandResponse)
        return response

    async def wait_for(self, predicate: Any, *, within: float = 15.0, start: int = 0) -> Received:
        """The first message from index ``start`` on that satisfies ``predicate``."""
        import asyncio  # noqa: PLC0415

        async with asyncio.timeout(within), self._changed:
            while True:
                for message in self.messages[start:]:
                    if predicate(message):
                        return message
                await self._changed.wait()


class LiveDevice:
    """A device registered on brokers (dynsec client + role, certificate) and agents for it."""

    def __init__(self, device_id: str, pki, brokers, tmp_path: Path, authz_key: SigningKey) -> None:
        from amora_devtools.broker import create_device_client  # noqa: PLC0415

        self.device_id = device_id
        self.signing_key = SigningKey.generate()
        self.cert = pki.issue_client_cert(device_id)
        self.pki = pki
        self.brokers = list(brokers)
        self.state_dir = tmp_path / f"state-{device_id}"
        self.authz_key = authz_key
        for broker in self.brokers:
            create_device_client(broker, device_id)

    def ssl_context(self) -> Any:
        from amora_agent import TlsConfig, client_ssl_context  # noqa: PLC0415

        return client_ssl_context(
            TlsConfig(
                ca_file=str(self.pki.ca_file),
                cert_file=str(self.cert.cert_file),
                key_file=str(self.cert.key_file),
            )
        )

    def endpoints(self) -> list[BrokerEndpoint]:
        return [BrokerEndpoint(host=b.host, port=b.device_port) for b in self.brokers]

    def agent(self, player, **kwargs) -> Agent:
        options = kwargs.pop(
            "options",
            AgentOptions(backoff_initial_s=0.05, backoff_max_s=0.5, failback_interval_s=0.5),
        )
        return Agent(
            device_id=self.device_id,
            signing_key=self.signing_key,
            trusted_keys=kwargs.pop("trusted_keys", (self.authz_key.public_key,)),
            endpoints=self.endpoints(),
            ssl_context=self.ssl_context(),
            state_dir=self.state_dir,
            player=player,
            options=options,
            **kwargs,
        )


@pytest.fixture
def live_device(dev_pki, tmp_path, authz_key):
    def make(*brokers, device_id: str = "player-1") -> LiveDevice:
        return LiveDevice(device_id, dev_pki, brokers, tmp_path, authz_key)

    return make


@pytest.fixture
def live_app(dev_pki, authz_key):
    """An app session on ``broker``'s app listener with a grant for ``devices``."""

    def make(broker, devices: tuple[str, ...], *, issuer=None, **kwargs) -> tuple[App, AppClient]:
        from amora_devtools.broker import create_session_client  # noqa: PLC0415

        app = App(issuer or authz_key, devices, **kwargs)
        password = secrets.token_urlsafe(16)
        create_session_client(broker, app.session_id, password, user="user-1", device_ids=devices)
        client = AppClient(broker.host, broker.app_port, dev_pki.client_context(), app.session_id, password)
        return app, client

    return make


@pytest.fixture
def live_mpd(mpd_server):
    """The harness's MPD with every track queued and the volume at 80."""
    with mpd_server.client() as client:
        client.clear()
        for track in mpd_server.tracks:
            client.add(track.file)
        client.setvol(80)
    return mpd_server
