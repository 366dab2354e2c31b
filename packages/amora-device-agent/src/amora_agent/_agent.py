"""The agent core: player changes in, signed states out; verified commands in, responses out."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
from collections import Counter
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any, Final, Self

import msgspec
import structlog
from opentelemetry import trace

from amora_agent._admission import RefusalBudget, SessionGate
from amora_agent._agent_commands import CommandHandling, claimed_sender
from amora_agent._agent_management import ManagementHandling
from amora_agent._commands import CommandBook
from amora_agent._errors import PlayerUnavailable, StateDirError
from amora_agent._mqtt import InboundMessage, MqttLink, Will
from amora_agent._persist import VersionCounter
from amora_agent._telemetry import AgentTelemetry
from amora_protocol import (
    Backoff,
    Codec,
    CommandResponse,
    CommandStatus,
    ConnectionStatus,
    DeviceState,
    EncryptionKey,
    Message,
    PlaybackStatus,
    ProtocolError,
    RejectReason,
    Sender,
    SigningKey,
    VerifyKey,
    commands_topic,
    connection_topic,
    keyring,
    now_ms,
    responses_topic,
    sessions_topic,
    state_topic,
    unauthenticated_id,
    validate_device_id,
    verify_envelope,
)

if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable, Iterable, Sequence
    from pathlib import Path
    from types import TracebackType

    from amora_agent._config import BrokerEndpoint
    from amora_agent._management import ManagementPlane
    from amora_agent._player import Player
    from amora_protocol import SessionList

__all__ = ["AGENT_VERSION", "Agent", "AgentOptions"]


def _agent_version() -> str:
    try:
        return version("amora-device-agent")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0.0.0"


AGENT_VERSION: Final = _agent_version()

_PLAYER_UNAVAILABLE: Final = "player unavailable"


@dataclasses.dataclass(frozen=True, kw_only=True)
class AgentOptions:
    """Tuning knobs; the defaults suit a player on a home network.

    Attributes:
        session_expiry_s: How long the broker keeps the session (queued commands) offline.
        keepalive_s: MQTT keep-alive.
        connect_timeout_s: Bound on one broker connection attempt.
        backoff_initial_s: Cap of the first reconnection delay (full jitter).
        backoff_max_s: Largest reconnection delay cap.
        failback_interval_s: How often to probe preferred brokers while on a fallback.
        command_queue: Commands waiting to run; when full, a new one is answered at once
            with ``rejected`` / ``busy`` (and ``retry_after_ms``), never dropped.
        busy_retry_after_ms: The ``retry_after_ms`` of a ``busy`` answer.
        version_block: State versions reserved per write to the state directory.
        executed_capacity: Executed command ids (and their outcomes) remembered, until they
            expire.
        durable: fsync the replay log before each command runs (off only for simulated
            fleets: a power cut may then forget executed commands).
        codec: Encoding of everything the agent publishes.
        max_command_ttl_ms: Longest command lifetime accepted.
        max_skew_ms: The clock-skew allowance, either way.
        max_inflight: Unacknowledged QoS 1/2 publishes allowed at once (further ones are
            refused and counted; state is republished on the next connection).
        liveness_interval_s: How often the broker is probed end to end.
        liveness_timeout_s: How long a probe may go unanswered before the broker counts
            as hung and the link leaves it.
    """

    session_expiry_s: int = 600
    keepalive_s: int = 30
    connect_timeout_s: float = 10.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 60.0
    failback_interval_s: float = 60.0
    command_queue: int = 64
    busy_retry_after_ms: int = 1000
    version_block: int = 1000
    executed_capacity: int = 4096
    durable: bool = True
    codec: Codec = Codec.MSGPACK
    max_command_ttl_ms: int = 10 * 60_000
    max_skew_ms: int = 30_000
    max_inflight: int = 16
    liveness_interval_s: float = 1.5
    liveness_timeout_s: float = 2.0


class Agent(CommandHandling, ManagementHandling):
    """One player's agent: keeps the broker informed and carries out authorised commands.

    Use it as an async context manager (it runs in the background until the block ends,
    then publishes its offline status and disconnects), or call `run` and `stop`.

    Args:
        device_id: The device id (the certificate's CN).
        signing_key: The device's Ed25519 key (its public key is registered with authz).
        trusted_keys: The authz service's public keys, for grants.
        endpoints: Brokers in order of preference.
        ssl_context: TLS with the device certificate (``None`` only for plain-TCP tests).
        state_dir: Where versions and executed command ids survive restarts.
        player: The player backend (MPD or simulated).
        encryption_key: The device's X25519 key, to open sealed commands.
        management: A management plane (IoT Hub), optional.
        display_name: A human name, reported to the management plane.
        options: Tuning knobs.
        logger: A structlog logger; the agent binds its device id.
        telemetry: Instruments and tracer (default: on the process's global providers).
    """

    def __init__(  # noqa: PLR0913 - all but the essentials are keyword-only
        self,
        *,
        device_id: str,
        signing_key: SigningKey,
        trusted_keys: Iterable[VerifyKey],
        endpoints: Sequence[BrokerEndpoint],
        ssl_context: ssl.SSLContext | None,
        state_dir: Path,
        player: Player,
        encryption_key: EncryptionKey | None = None,
        management: ManagementPlane | None = None,
        display_name: str | None = None,
        options: AgentOptions | None = None,
        logger: structlog.typing.FilteringBoundLogger | None = None,
        telemetry: AgentTelemetry | None = None,
    ) -> None:
        """Open the state directory; nothing connects before `run`."""
        self.device_id = validate_device_id(device_id)
        self._options = options or AgentOptions()
        opts = self._options
        self._log = (logger if logger is not None else structlog.get_logger("amora_agent")).bind(device_id=device_id)
        self._sender = Sender(device_id, signing_key, epoch=secrets.randbits(63))
        self._encryption_key = encryption_key
        self._trusted = keyring(trusted_keys)
        self._player = player
        self._management = management
        self.display_name = display_name
        # The wall clock as a floor: versions stay newer than before even if the state
        # directory is lost (a re-flashed player), as long as the clock is sane.
        self.last_error: str | None = None
        # Opened before the version counter: a state directory used before must hold a log.
        self._book = CommandBook(
            state_dir,
            capacity=opts.executed_capacity,
            durable=opts.durable,
            max_skew_ms=opts.max_skew_ms,
            max_ttl_ms=opts.max_command_ttl_ms,
            now_ms=now_ms(),
        )
        if self._book.damage is not None:
            self.last_error = f"replay log: {self._book.damage}"
            horizon = self._book.horizon
            self._log.error(
                "replay log damaged; older commands are refused",
                error=self._book.damage,
                refused_if_issued_before_ms=horizon.issued_before_ms if horizon else None,
            )
        # The wall clock as a floor: versions stay newer than before even if the state
        # directory is lost (a re-flashed player), as long as the clock is sane.
        self._versions = VersionCounter(state_dir, block=opts.version_block, floor=now_ms())
        self._connection_versions: tuple[int | None, int | None] = (None, None)
        self._stopping = False
        self._topics = {
            "state": state_topic(device_id),
            "commands": commands_topic(device_id),
            "responses": responses_topic(device_id),
            "connection": connection_topic(device_id),
            "sessions": sessions_topic(device_id),
        }
        self._sessions = SessionGate(device_id)
        self._session_list_applied = asyncio.Event()
        self._refusals = RefusalBudget()
        self._state: DeviceState | None = None
        self._dirty = asyncio.Event()
        self._online = asyncio.Event()
        self._connection_changed = asyncio.Condition()
        self._stop = asyncio.Event()
        self._commands: asyncio.Queue[InboundMessage] = asyncio.Queue(opts.command_queue)
        self._usage: Counter[str] = Counter()
        self._telemetry = telemetry if telemetry is not None else AgentTelemetry()
        self._disconnected_at: float | None = None
        # The span context of the last command run: the next state published is its effect.
        self._state_cause: trace.SpanContext | None = None
        self._link = MqttLink(
            client_id=device_id,
            endpoints=endpoints,
            ssl_context=ssl_context,
            subscriptions=[(self._topics["commands"], 2), (self._topics["sessions"], 1)],
            probe_topic=self._topics["connection"],
            on_message=self._on_message,
            on_connected=self._on_connected,
            on_disconnected=self._on_disconnected,
            will=self._will,
            session_expiry_s=opts.session_expiry_s,
            keepalive_s=opts.keepalive_s,
            connect_timeout_s=opts.connect_timeout_s,
            backoff=Backoff(initial=opts.backoff_initial_s, maximum=opts.backoff_max_s),
            failback_interval_s=opts.failback_interval_s,
            max_inflight=opts.max_inflight,
            liveness_interval_s=opts.liveness_interval_s,
            liveness_timeout_s=opts.liveness_timeout_s,
            logger=self._log,
        )
        self._task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()

    # -- public surface -------------------------------------------------------------------

    @property
    def state(self) -> DeviceState | None:
        """The last state published (or built while offline)."""
        return self._state

    @property
    def broker(self) -> BrokerEndpoint | None:
        """The broker in use, if connected."""
        return self._link.endpoint

    @property
    def trusted_keys(self) -> tuple[VerifyKey, ...]:
        """The authz keys trusted for grants now."""
        return tuple(self._trusted.values())

    def set_trusted_keys(self, keys: Iterable[VerifyKey]) -> None:
        """Replace the trusted authz keys (key rotation); applies to the next command."""
        self._trusted = keyring(keys)
        self._log.info("trusted keys replaced", kids=sorted(self._trusted))

    def set_endpoints(self, endpoints: Sequence[BrokerEndpoint]) -> None:
        """Replace the broker list (moves now if the current broker is no longer first)."""
        self._link.set_endpoints(endpoints)
        self._log.info("brokers replaced", brokers=[str(e) for e in endpoints])

    async def wait_online(self) -> None:
        """Return once connected, subscribed, and the online status is published."""
        await self._online.wait()

    async def wait_broker(self, predicate: Callable[[BrokerEndpoint | None], bool]) -> None:
        """Return once ``predicate`` holds for the broker in use (``None`` while offline)."""
        async with self._connection_changed:
            await self._connection_changed.wait_for(lambda: predicate(self.broker))

    def _notify_connection(self) -> None:
        async def notify() -> None:
            async with self._connection_changed:
                self._connection_changed.notify_all()

        task = asyncio.get_running_loop().create_task(notify())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def stop(self) -> None:
        """Ask `run` to publish the offline status, disconnect and return."""
        self._stop.set()

    async def __aenter__(self) -> Self:
        """Start `run` in the background."""
        self._task = asyncio.create_task(self.run(), name=f"amora-agent[{self.device_id}]")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop cleanly (offline status, normal disconnect) and wait for the end."""
        self.stop()
        if self._task is not None:
            await self._task

    async def run(self) -> None:
        """Run until `stop`; then publish the offline status and disconnect normally."""
        name = f"amora-agent[{self.device_id}]"
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(self._player.run(self._player_changed), name=f"{name}.player"),
                    group.create_task(self._publish_states(), name=f"{name}.state"),
                    group.create_task(self._serve_commands(), name=f"{name}.commands"),
                    group.create_task(self._link.run(), name=f"{name}.mqtt"),
                ]
                if self._management is not None:
                    tasks.append(group.create_task(self._run_management(), name=f"{name}.management"))
                await self._stop.wait()
                # Shutdown: the offline status goes out on the live connection, then a
                # normal DISCONNECT (which makes the broker drop the Will).
                self._stopping = True
                self._publish_connection(online=False, reason="shutdown")
                for task in tasks:
                    task.cancel()
        finally:
            await self._link.close()
            self._book.close()
            self._log.info("agent stopped")

    # -- MQTT callbacks -------------------------------------------------------------------

    def _encode(self, topic: str, message: Message) -> bytes:
        return self._sender.encode(topic, message, now_ms=now_ms(), codec=self._options.codec)

    def _next_version(self) -> int | None:
        try:
            return self._versions.next()
        except StateDirError as exc:
            self.last_error = str(exc)
            self._log.error("cannot reserve state versions", error=str(exc))
            return None

    def _will(self) -> Will:
        # Numbered between this connection's online status and anything later: a stale Will
        # delivered after a newer connection's online status is older than it.
        online, will = self._next_version(), self._next_version()
        self._connection_versions = (online, will)
        status = ConnectionStatus(
            device_id=self.device_id,
            online=False,
            at_ms=now_ms(),
            agent_version=AGENT_VERSION,
            reason="connection lost",
            version=will,
        )
        topic = self._topics["connection"]
        return Will(topic, self._encode(topic, status), self._options.codec.value)

    def _publish_connection(self, *, online: bool, reason: str | None = None) -> None:
        status = ConnectionStatus(
            device_id=self.device_id,
            online=online,
            at_ms=now_ms(),
            agent_version=AGENT_VERSION,
            reason=reason,
            version=self._connection_versions[0] if online else self._next_version(),
        )
        topic = self._topics["connection"]
        self._link.publish(
            topic,
            self._encode(topic, status),
            qos=1,
            retain=True,
            content_type=self._options.codec.value,
        )

    def _on_connected(self, endpoint: BrokerEndpoint) -> None:
        self._usage["connections"] += 1
        telemetry = self._telemetry
        telemetry.mqtt_connected.add(1)
        if self._link.connections > 1:
            self._usage["reconnects"] += 1
            telemetry.mqtt_reconnects.add(1)
        if self._disconnected_at is not None:
            telemetry.mqtt_disconnected.add(time.monotonic() - self._disconnected_at)
            self._disconnected_at = None
        self._publish_connection(online=True)
        self._dirty.set()  # a fresh state follows the online status
        self._online.set()
        self._notify_connection()
        self._log.info("online", broker=str(endpoint))

    def _on_disconnected(self, endpoint: BrokerEndpoint) -> None:
        self._telemetry.mqtt_connected.add(-1)
        self._disconnected_at = time.monotonic()
        self._online.clear()
        self._notify_connection()
        self._log.info("offline", broker=str(endpoint))

    def _on_message(self, message: InboundMessage) -> None:
        if message.topic == self._topics["connection"]:
            self._check_own_status(message)
            return
        if message.topic == self._topics["sessions"]:
            self._on_session_list(message.payload)
            return
        if message.topic != self._topics["commands"]:
            return
        if message.retain or not message.payload:
            # A retained command is someone's leftover, replayed on every subscription; an
            # empty payload is the authz service clearing one. Neither is a command: no answer.
            if message.payload:
                self._usage["retained_commands_dropped"] += 1
                self._log.warning("retained command dropped", payload_bytes=len(message.payload))
            return
        try:
            self._commands.put_nowait(message)
        except asyncio.QueueFull:
            # Push back at once and cheaply (no signature check): the sender learns it did
            # not run and when to try again, instead of timing out. Unverified, so it is
            # answered like any unauthenticated input: within the refusal budget, by digest.
            self._usage["commands_busy"] += 1
            self._log.warning("command queue full; answered busy", qos=message.qos)
            if not self._refusals.take(claimed_sender(message)):
                self._usage["commands_unanswered"] += 1
                self._telemetry.answered("unanswered", RejectReason.BUSY.value)
                return
            response = CommandResponse(
                command_id=unauthenticated_id(message.payload),
                device_id=self.device_id,
                status=CommandStatus.REJECTED,
                at_ms=now_ms(),
                reason=RejectReason.BUSY,
                message=f"{self._commands.maxsize} commands waiting",
                retry_after_ms=self._options.busy_retry_after_ms,
            )
            self._respond(response)

    def _on_session_list(self, payload: bytes) -> None:
        offer = self._sessions.offer(payload, self._trusted)
        current = self._sessions.current
        if offer.applied and current is not None:
            # Wake the waiters of this list; later ones wait for the next.
            self._session_list_applied.set()
            self._session_list_applied = asyncio.Event()
            self._usage["session_lists_applied"] += 1
            self._log.info("session list applied", issued_at_ms=current.issued_at_ms, sessions=len(current.sessions))
        elif offer.reason is not None and not offer.reason.startswith("not newer"):
            self._usage["session_lists_refused"] += 1
            self._log.warning("session list refused", reason=offer.reason)

    @property
    def session_list(self) -> SessionList | None:
        """The authz session list in force (``None``: none received yet)."""
        return self._sessions.current

    def _check_own_status(self, message: InboundMessage) -> None:
        """Correct a stale offline status (an old connection's Last Will, delivered late)."""
        if self._stopping or not self._online.is_set():
            return
        try:
            verified = verify_envelope(
                message.payload,
                topic=message.topic,
                content_type=message.content_type,
                key=self._sender.signing_key.public_key,
                now_ms=now_ms(),
            )
        except ProtocolError:
            return
        status = verified.message
        if isinstance(status, ConnectionStatus) and not status.online:
            self._usage["stale_wills_corrected"] += 1
            self._log.info("stale offline status seen; online status republished", version=status.version)
            self._publish_connection(online=True)

    # -- state ------------------------------------------------------------------------------

    def _player_changed(self) -> None:
        self._dirty.set()

    async def _publish_states(self) -> None:
        """Publish a new state per change; bursts coalesce, the first change is never delayed.

        While a snapshot is read and published, further changes only set the flag again,
        so a burst of N events yields at most two publishes, the last one up to date.
        """
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            if not self._link.connected:
                continue  # the next connection sets the flag again
            now = now_ms()
            try:
                snap = await self._player.snapshot()
                # The fields' dict is not kept in a local: it would stay alive, a GC-tracked
                # object (it holds enum members), while this loop waits for the next change.
                state = DeviceState(device_id=self.device_id, version=0, **msgspec.structs.asdict(snap))
            except PlayerUnavailable:
                if self._state is not None and self._state.error == _PLAYER_UNAVAILABLE:
                    continue
                state = DeviceState(
                    device_id=self.device_id,
                    version=0,
                    status=PlaybackStatus.STOP,
                    sampled_at_ms=now,
                    error=_PLAYER_UNAVAILABLE,
                )
            except (msgspec.ValidationError, TypeError) as exc:
                self._log.error("player state does not fit the schema", error=str(exc))
                continue
            try:
                state = msgspec.structs.replace(state, version=self._versions.next())
            except StateDirError as exc:
                self.last_error = str(exc)
                self._log.error("cannot reserve state versions", error=str(exc))
                continue
            previous, self._state = self._state, state
            if state.status is PlaybackStatus.PLAY and (
                previous is None or previous.status is not PlaybackStatus.PLAY or previous.song != state.song
            ):
                self._usage["plays"] += 1
            self._publish_state(state)

    def _publish_state(self, state: DeviceState) -> None:
        topic = self._topics["state"]
        cause, self._state_cause = self._state_cause, None
        if cause is None:
            published = self._link.publish(
                topic, self._encode(topic, state), qos=1, retain=True, content_type=self._options.codec.value
            )
        else:
            # The command that caused this state is the parent: its trace ends with the state.
            with self._telemetry.tracer.start_as_current_span(
                "amora.state publish",
                context=trace.set_span_in_context(trace.NonRecordingSpan(cause)),
                kind=trace.SpanKind.PRODUCER,
                attributes={"messaging.destination.name": topic, "amora.state.version": state.version},
            ):
                published = self._link.publish(
                    topic,
                    self._encode(topic, state),
                    qos=1,
                    retain=True,
                    content_type=self._options.codec.value,
                    user_properties=self._telemetry.inject(),
                )
        if published:
            self._telemetry.states_published.add(1)

    # -- management (and `ManagementHandling`) ---------------------------------------------

    def reported(self) -> dict[str, Any]:
        """Reported properties for the device twin."""
        broker = self._link.endpoint
        return {
            "agent_version": AGENT_VERSION,
            "mpd_version": self._player.backend_version,
            "connected_broker": str(broker) if broker is not None else None,
            "display_name": self.display_name,
            "trusted_authz_kids": sorted(self._trusted),
            "last_error": self.last_error,
            "clock_offset_ms": self._book.clock_offset_ms,
            "replay_log_damage": self._book.damage,
        }
