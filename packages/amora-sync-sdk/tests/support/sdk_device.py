"""A player as the agent would be on the wire, for the SDK tests: mTLS, signed state, a command responder."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from typing import TYPE_CHECKING, Any

import gmqtt
import msgspec

from amora_protocol import (
    ClockSkew,
    Codec,
    CommandGuard,
    CommandResponse,
    CommandStatus,
    ConnectionStatus,
    DeviceState,
    EncryptionKey,
    PlaybackStatus,
    ProtocolError,
    RejectReason,
    Sender,
    SigningKey,
    Song,
    commands_topic,
    connection_topic,
    now_ms,
    responses_topic,
    state_topic,
    unauthenticated_id,
    verify_command,
)
from amora_sync._mqtt import NO_RECONNECT

if TYPE_CHECKING:
    import ssl

    from amora_devtools.broker import (
        BrokerProcess,
    )
    from amora_devtools.pki import DevPKI


__all__ = ["WAIT", "Device"]

WAIT = 15.0  # bound on every wait for an event in these tests, in seconds
_DISCONNECT_WITH_WILL = 0x04


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
