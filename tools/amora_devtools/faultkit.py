"""Fault rehearsal on the local stack: an app that speaks the protocol, with exact accounting.

`ProtocolApp` is an app reduced to what the protocol README asks of senders: it gets a
session from the authz service, connects to the brokers in order, probes the one in use
end to end (a re-subscription whose SUBACK must come back in time) and leaves it when it
hangs, tries the preferred broker again now and then (with jitter), and **resends every
unanswered command with the same id** whenever the link changes, until the command's
deadline (``busy`` answers are resent after ``retry_after_ms``). Each command ends in exactly
one outcome, and a `Ledger` counts them: sent, succeeded, failed, rejected by reason, timed
out, executed twice (two first-hand answers for one id), stale states and the link's moves.
The fault suite (``tests-integration/test_faults.py``) and the failover benchmark
(``amora_bench.failover``) both drive the stack with it.

DEVELOPMENT ONLY: it trusts the development issuer and keeps everything in memory.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import random
import re
import time
import uuid
from collections import Counter
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, Self

import gmqtt
import httpx
import msgspec

from amora_devtools._gmqtt import NO_RECONNECT
from amora_devtools._mqtt import client_ssl_context
from amora_protocol import (
    Codec,
    Command,
    CommandResponse,
    CommandStatus,
    ConnectionStatus,
    DeviceState,
    EncryptionKey,
    Freshness,
    ProtocolError,
    RejectReason,
    Sender,
    SigningKey,
    StateTracker,
    VerifyKey,
    commands_topic,
    connection_topic,
    now_ms,
    parse_topic,
    responses_topic,
    state_topic,
    unauthenticated_id,
    verify_envelope,
)

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path
    from types import TracebackType

    from amora_devtools.stack import Stack
    from amora_protocol import Action

__all__ = ["Ledger", "LinkEvent", "ProtocolApp", "agent_connections"]

_FINAL: Final = frozenset(
    {CommandStatus.SUCCEEDED, CommandStatus.FAILED, CommandStatus.REJECTED, CommandStatus.DUPLICATE}
)
_RAN: Final = frozenset({CommandStatus.SUCCEEDED, CommandStatus.FAILED})


@dataclasses.dataclass
class Ledger:
    """Exact accounting of a command stream (every command ends in one outcome)."""

    sent: int = 0
    succeeded: int = 0
    failed: int = 0
    rejected: Counter[str] = dataclasses.field(default_factory=Counter)
    timed_out: int = 0
    outcome_unknown: int = 0  # `duplicate`: the device restarted while running it
    executed_twice: int = 0
    resends: int = 0
    busy_answers: int = 0
    repeated_answers: int = 0
    stale_states: int = 0
    outcomes: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def expired(self) -> int:
        """Commands rejected as expired."""
        return self.rejected["expired"]

    @property
    def unanswered(self) -> int:
        """Commands sent that have no outcome yet (must be 0 once a stream is over)."""
        return self.sent - len(self.outcomes)

    def summary(self) -> dict[str, Any]:
        """The counts, for reports and assertion messages."""
        return {
            "sent": self.sent,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "rejected": dict(self.rejected),
            "expired": self.expired,
            "timed_out": self.timed_out,
            "outcome_unknown": self.outcome_unknown,
            "executed_twice": self.executed_twice,
            "unanswered": self.unanswered,
            "resends": self.resends,
            "busy_answers": self.busy_answers,
            "repeated_answers": self.repeated_answers,
            "stale_states": self.stale_states,
        }


@dataclasses.dataclass(frozen=True)
class LinkEvent:
    """The app's link moved: ``port`` is the broker's app port (None: no link)."""

    at: float  # time.monotonic()
    port: int | None
    why: str


@dataclasses.dataclass(eq=False)
class _Pending:
    device_id: str
    command: Command
    done: asyncio.Future[CommandResponse]
    # Envelopes (epoch, seq) of answers that are not repeats: two distinct ones = ran twice.
    # The same envelope twice is only the transport (a bridge flushing its queue).
    first_hand: set[tuple[int, int]] = dataclasses.field(default_factory=set)
    resend_at: float | None = None


@dataclasses.dataclass(eq=False)
class _AppLink:
    client: gmqtt.Client
    port: int
    lost: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    subacks: dict[int, asyncio.Event] = dataclasses.field(default_factory=dict)


class ProtocolApp:
    """An app on the protocol directly (see the module docstring).

    Args:
        stack: The running stack.
        user: A development user.
        devices: The devices to watch and command (the user's own).
        liveness_interval_s: Time between liveness probes of the broker in use.
        liveness_timeout_s: How long a probe may go unanswered.
        failback_interval_s: Mean time between tries of the preferred broker while on another.
        connect_timeout_s: Bound on one connection attempt.
        resend_after_s: Resend a command still unanswered after this long (an answer lost
            with an agent that crashed after running it).
    """

    def __init__(  # noqa: PLR0913 - all keyword-only tuning
        self,
        stack: Stack,
        user: str,
        devices: Sequence[str],
        *,
        liveness_interval_s: float = 1.0,
        liveness_timeout_s: float = 2.0,
        failback_interval_s: float = 2.0,
        connect_timeout_s: float = 3.0,
        resend_after_s: float = 3.0,
    ) -> None:
        """Configure; `__aenter__` opens the session and connects."""
        if stack.pki is None:
            raise ValueError("the stack is not running")
        self._stack = stack
        self._user = user
        self.devices = tuple(devices)
        self._liveness_interval_s = liveness_interval_s
        self._liveness_timeout_s = liveness_timeout_s
        self._failback_interval_s = failback_interval_s
        self._connect_timeout_s = connect_timeout_s
        self._resend_after_s = resend_after_s
        self._ssl = client_ssl_context(stack.pki.ca_file)
        self._ports = [b.app_port for b in stack.brokers]
        self._key = SigningKey.generate()
        self._sender: Sender | None = None
        self._grant = b""
        self._account: dict[str, str] = {}
        self._device_keys: dict[str, VerifyKey] = {}
        self._link: _AppLink | None = None
        self._hung: set[int] = set()
        self._pending: dict[str, _Pending] = {}
        self._tracker = StateTracker()
        self._task: asyncio.Task[None] | None = None
        self._linked = asyncio.Event()
        self.ledger = Ledger()
        self.links: list[LinkEvent] = []
        self.states: dict[str, DeviceState] = {}
        self.statuses: list[tuple[float, ConnectionStatus]] = []
        self.responses: dict[str, list[CommandResponse]] = {}
        self.payloads: dict[str, bytes] = {}
        # A device answers what it refused unverified (e.g. `busy`) by the payload's digest.
        self._by_digest: dict[str, str] = {}

    # -- session and lifecycle ----------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Open a session, connect, and start keeping the link."""
        await self._open_session()
        self._task = asyncio.create_task(self._keep_link(), name=f"protocol-app[{self._user}].link")
        async with asyncio.timeout(30):
            await self._linked.wait()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop keeping the link and disconnect."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._link is not None:
            await _close(self._link.client)

    async def _open_session(self) -> None:
        async with httpx.AsyncClient(base_url=self._stack.authz_url, timeout=10) as http:
            token = (await http.post("/dev-issuer/token", json={"username": self._user})).json()["access_token"]
            body = {
                "signing_key": base64.b64encode(self._key.public_key.raw).decode(),
                "encryption_key": base64.b64encode(EncryptionKey.generate().public_key.raw).decode(),
                "client_name": "faultkit",
            }
            response = await http.post("/v1/sessions", json=body, headers={"Authorization": f"Bearer {token}"})
            response.raise_for_status()
            session = response.json()
        self._grant = base64.b64decode(session["grant"])
        self._account = {k: session["broker"][k] for k in ("username", "password", "client_id")}
        self._sender = Sender(session["session_id"], self._key, epoch=random.getrandbits(63))
        self._device_keys = {
            d["device_id"]: VerifyKey.from_raw(base64.b64decode(d["signing_key"])) for d in session["devices"]
        }

    # -- commands --------------------------------------------------------------------------------

    async def command(self, device_id: str, action: Action, *, timeout_s: float = 20.0) -> str:
        """Send one command and return its outcome (``succeeded``, ``rejected:busy``, ``timed_out``...).

        Resent with the same id on every link change, and after a ``busy`` answer, until the
        deadline.
        """
        issued = now_ms()
        command = Command(
            id=str(uuid.uuid4()), issued_at_ms=issued, expires_at_ms=issued + int(timeout_s * 1000), action=action
        )
        pending = _Pending(device_id, command, asyncio.get_running_loop().create_future())
        self._pending[command.id] = pending
        self.ledger.sent += 1
        self._send(pending)
        pending.resend_at = time.monotonic() + self._resend_after_s
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    wait = max(0.0, (pending.resend_at or 0.0) - time.monotonic())
                    with contextlib.suppress(TimeoutError):
                        response = await asyncio.wait_for(asyncio.shield(pending.done), wait)
                        break
                    pending.resend_at = time.monotonic() + self._resend_after_s
                    self._send(pending, resend=True)
        except TimeoutError:
            outcome = "timed_out"
            self.ledger.timed_out += 1
        else:
            outcome = response.status.value
            if response.status is CommandStatus.SUCCEEDED:
                self.ledger.succeeded += 1
            elif response.status is CommandStatus.FAILED:
                self.ledger.failed += 1
            elif response.status is CommandStatus.DUPLICATE:
                self.ledger.outcome_unknown += 1
            else:
                outcome = f"{outcome}:{response.reason.value if response.reason else '-'}"
                self.ledger.rejected[response.reason.value if response.reason else response.status.value] += 1
        self.ledger.outcomes[command.id] = outcome
        # Keep listening for late answers (a second first-hand answer would be a double run).
        return outcome

    def _send(self, pending: _Pending, *, resend: bool = False) -> None:
        link, sender = self._link, self._sender
        if link is None or sender is None:
            return  # sent when the next link is up
        topic = commands_topic(pending.device_id)
        payload = sender.encode(
            topic, pending.command, now_ms=now_ms(), grant=self._grant, expires_at_ms=pending.command.expires_at_ms
        )
        remaining_s = max(1, (pending.command.expires_at_ms - now_ms()) // 1000)
        self.payloads[pending.command.id] = payload
        self._by_digest[unauthenticated_id(payload)] = pending.command.id
        with contextlib.suppress(Exception):  # a dead socket: the next link resends
            link.client.publish(
                topic,
                payload,
                qos=1,
                content_type=Codec.MSGPACK.value,
                correlation_data=pending.command.id.encode(),
                message_expiry_interval=remaining_s,
            )
            if resend:
                self.ledger.resends += 1

    def republish(self, device_id: str, payload: bytes) -> None:
        """Publish captured bytes again, as an attacker replaying them would."""
        if self._link is not None:
            self._link.client.publish(commands_topic(device_id), payload, qos=1, content_type=Codec.MSGPACK.value)

    def _resend_all(self) -> None:
        for pending in self._pending.values():
            if not pending.done.done():
                self._send(pending, resend=True)

    # -- inbound ------------------------------------------------------------------------------

    def _on_message(self, topic: str, payload: bytes, content_type: str | None) -> None:
        try:
            parsed = parse_topic(topic)
            key = self._device_keys[parsed.device_id]
            verified = verify_envelope(payload, topic=topic, content_type=content_type, key=key, now_ms=now_ms())
        except (ProtocolError, KeyError):
            return
        message = verified.message
        if isinstance(message, CommandResponse):
            self._on_response(message, (verified.header.epoch, verified.header.seq))
        elif isinstance(message, DeviceState):
            if self._tracker.observe(message.device_id, message.version) is Freshness.NEWER:
                self.states[message.device_id] = message
            elif self._tracker.current(message.device_id) != message.version:
                self.ledger.stale_states += 1
        elif isinstance(message, ConnectionStatus):
            self.statuses.append((time.monotonic(), message))

    def _on_response(self, response: CommandResponse, envelope: tuple[int, int]) -> None:
        if response.command_id in self._by_digest:
            response = msgspec.structs.replace(response, command_id=self._by_digest[response.command_id])
        self.responses.setdefault(response.command_id, []).append(response)
        pending = self._pending.get(response.command_id)
        if pending is None:
            return
        if response.duplicate:
            self.ledger.repeated_answers += 1
        elif response.status in _RAN and envelope not in pending.first_hand:
            pending.first_hand.add(envelope)
            if len(pending.first_hand) == 2:  # a second, distinct first-hand answer
                self.ledger.executed_twice += 1
        if response.reason is RejectReason.BUSY:
            self.ledger.busy_answers += 1
            pending.resend_at = time.monotonic() + (response.retry_after_ms or 1000) / 1000
            return
        if response.status in _FINAL and not pending.done.done():
            pending.done.set_result(response)

    # -- the link -----------------------------------------------------------------------------

    async def _keep_link(self) -> None:
        while True:
            for port in sorted(self._ports, key=lambda p: p in self._hung):
                link = await self._connect(port)
                if link is not None:
                    await self._serve(link)
                    break
            else:
                await asyncio.sleep(0.2)

    async def _connect(self, port: int) -> _AppLink | None:
        client = gmqtt.Client(self._account["client_id"])
        client.set_auth_credentials(self._account["username"], self._account["password"])
        client.set_config({"reconnect_retries": NO_RECONNECT})  # the kit reconnects itself
        link = _AppLink(client, port)

        def on_message(_c: object, topic: str, payload: bytes, _qos: int, props: dict[str, Any]) -> int:
            content_type = props.get("content_type")
            self._on_message(topic, bytes(payload), content_type[0] if content_type else None)
            return 0

        def on_subscribe(_c: object, mid: int, _qos: object, _props: object) -> None:
            if mid in link.subacks:
                link.subacks[mid].set()

        client.on_message = on_message
        client.on_subscribe = on_subscribe
        client.on_disconnect = lambda *_a: link.lost.set()
        topics = [f(d) for d in self.devices for f in (state_topic, responses_topic, connection_topic)]
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                await client.connect("127.0.0.1", port, ssl=self._ssl, keepalive=30)
                mid = client.subscribe([gmqtt.Subscription(t, qos=1) for t in topics])
                link.subacks[mid] = asyncio.Event()
                await link.subacks[mid].wait()
        except Exception:  # noqa: BLE001 - a dead or hung broker, in any of its forms
            await _close(client)
            return None
        self._hung.discard(port)
        return link

    async def _serve(self, link: _AppLink) -> None:
        current: _AppLink | None = link
        while current is not None:
            self._link = current
            self.links.append(LinkEvent(time.monotonic(), current.port, "connected"))
            self._linked.set()
            self._resend_all()
            why, better = await self._watch(current)
            self._link = None
            self.links.append(LinkEvent(time.monotonic(), None, why))
            if why == "hung":
                self._hung.add(current.port)
            await _close(current.client)
            current = better

    async def _watch(self, link: _AppLink) -> tuple[str, _AppLink | None]:
        probe = gmqtt.Subscription(responses_topic(self.devices[0]), qos=1, retain_handling_options=1)
        next_failback = time.monotonic() + self._failback_interval_s * random.uniform(0.5, 1.5)  # noqa: S311
        while True:
            if link.lost.is_set():
                return "lost", None
            mid = link.client.resubscribe(probe)
            link.subacks[mid] = asyncio.Event()
            try:
                async with asyncio.timeout(self._liveness_timeout_s):
                    await link.subacks[mid].wait()
            except TimeoutError:
                return "hung", None
            if self._ports.index(link.port) > 0 and time.monotonic() >= next_failback:
                next_failback = time.monotonic() + self._failback_interval_s * random.uniform(0.5, 1.5)  # noqa: S311
                better = await self._connect(self._ports[0])
                if better is not None:
                    return "failback", better
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(link.lost.wait(), self._liveness_interval_s)

    @property
    def port(self) -> int | None:
        """The app port of the broker in use (None: no link)."""
        return self._link.port if self._link is not None else None

    async def wait_link(self, port: int, *, after: float, timeout_s: float = 30.0) -> float:
        """Wait until the link is up on ``port`` (after ``after``, monotonic); return when it came up."""
        async with asyncio.timeout(timeout_s):
            while True:
                for event in self.links:
                    if event.at >= after and event.port == port:
                        return event.at
                await asyncio.sleep(0.05)


async def _close(client: gmqtt.Client) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.disconnect(), 1.0)


_LOG_LINE: Final = re.compile(r'^(\S+)\s.*mqtt connected.*broker=(?:"?)([\d.]+):(\d+)')


def agent_connections(log_file: Path) -> list[tuple[float, int]]:
    """(wall-clock time, broker device port) of each connection an agent logged, in order."""
    found: list[tuple[float, int]] = []
    with contextlib.suppress(OSError):
        for line in log_file.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(msgspec.DecodeError, KeyError, ValueError):
                    entry = msgspec.json.decode(line)
                    if entry.get("event") == "mqtt connected":
                        stamp = datetime.fromisoformat(entry["timestamp"]).timestamp()
                        found.append((stamp, int(str(entry["broker"]).rsplit(":", 1)[1])))
                continue
            match = _LOG_LINE.match(line)
            if match:
                with contextlib.suppress(ValueError):
                    found.append((datetime.fromisoformat(match.group(1)).timestamp(), int(match.group(3))))
    return found
