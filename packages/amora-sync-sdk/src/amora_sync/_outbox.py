"""The outbox and the command lifecycle: build, sign, publish, resend, match the response.

A command waits here from `send` until its final response, its deadline or the client's
end. It is published at once when a link is up, else on the next connect; a command whose
deadline passes before it could be published is never sent (`CommandExpiredError`).

Whenever the link changes (a reconnect, a failover, a failback) every command still
waiting for its answer is sent again with the same id, until its deadline: nothing tells
whether the first copy, or its answer, got through. The device runs each id at most once
and answers a repeat with the original outcome (``duplicate: true``), which settles the
command as that outcome. A link change on the device's side is invisible here, and a broker
with no session for the device yet drops what it is sent meanwhile, so a command that got
no answer at all is also sent again when the device's online status is published anew and
every `resend_interval` seconds (the protocol's sender rules).

A device refuses some input before authenticating it (``busy`` when its command queue is
full) and then answers with `unauthenticated_id` of the exact payload, never the command's
own id; each published payload's digest is remembered until its command settles, so such
an answer settles the command it refuses.
"""

from __future__ import annotations

import asyncio
import math
import os
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec

from amora_protocol import (
    Command,
    CommandResponse,
    CommandStatus,
    RejectReason,
    commands_topic,
    is_critical,
    now_ms,
    responses_topic,
    unauthenticated_id,
)
from amora_sync._errors import (
    ClientClosedError,
    ClockSkewError,
    CommandExpiredError,
    CommandRejectedError,
    CommandTimeoutError,
    DeviceBusyError,
    InvalidCommandError,
    OutboxFullError,
)

if TYPE_CHECKING:
    import logging
    from collections.abc import Callable

    from amora_protocol import Action, Codec, Sender
    from amora_sync._link import Link
    from amora_sync._session import DeviceInfo, Session
    from amora_sync._stats import ClientStats
    from amora_sync._telemetry import CommandTracer

__all__ = ["Outbox", "validate_command"]

_FINAL_OK = frozenset({"succeeded", "duplicate"})
_FINAL_BAD = frozenset({"rejected", "failed"})


@dataclass(kw_only=True)
class _Pending:
    command: Command
    device: DeviceInfo
    qos: int
    seal: bool
    deadline: float  # loop time
    final: asyncio.Future[CommandResponse]
    published: bool = False
    sent_at: float = 0.0  # loop time of the last publish
    digests: list[str] = field(default_factory=list)  # unauthenticated_id of each payload sent
    last: CommandResponse | None = None
    trace: list[tuple[str, str]] | None = None  # user properties with the send span's context


class Outbox:
    """Pending commands, bounded, published over whichever link is up."""

    def __init__(  # noqa: PLR0913 - keyword-only wiring
        self,
        *,
        max_pending: int,
        resend_interval: float,
        codec: Codec,
        session: Callable[[], Session],
        sender: Callable[[], Sender],
        app_clock_offset: Callable[[], int | None],
        stats: ClientStats,
        logger: logging.Logger,
        tracer: CommandTracer | None = None,
    ) -> None:
        """Wire the outbox.

        Args:
            max_pending: Bound on pending commands; one more raises `OutboxFullError`.
            resend_interval: Seconds after which a sent command without any answer is sent
                again (same id), until its deadline.
            codec: Encoding of the commands.
            session: Returns the current session (its grant goes with each command).
            sender: Returns the envelope signer of the current session.
            app_clock_offset: Returns the authz service's clock minus ours (ms), if known
                (to say whose clock is off on a ``clock-skew`` rejection).
            stats: Counts publishes.
            logger: Where to log.
            tracer: Traces commands (`amora_sync._telemetry`); None: no tracing.
        """
        self._max_pending = max_pending
        self._resend_interval = resend_interval
        self._codec = codec
        self._session = session
        self._sender = sender
        self._app_clock_offset = app_clock_offset
        self._stats = stats
        self._log = logger
        self._tracer = tracer if tracer is not None and tracer.enabled else None
        self._pending: dict[str, _Pending] = {}
        self._by_digest: dict[str, _Pending] = {}  # unauthenticated_id(payload) -> its command
        self._link: Link | None = None
        self._wakeup = asyncio.Event()
        # Set while a command is pending: the resend timer runs only then. An idle client
        # (no command in flight, most of its life) has no timer at all, so a process holding
        # thousands of them makes no garbage between states.
        self._busy = asyncio.Event()

    def __len__(self) -> int:
        """Return the number of pending commands."""
        return len(self._pending)

    # ------------------------------------------------------------------ link changes

    def attach(self, link: Link) -> None:
        """Use `link` from now on and flush the outbox.

        What was never sent goes out, and so does everything still waiting for its answer
        (same id, new envelope): the device runs an id once and repeats its outcome.
        """
        self._link = link
        self._flush(link, resend=True)

    def detach(self) -> None:
        """The link is gone: hold commands until the next `attach`."""
        self._link = None

    def device_online(self, device_id: str) -> None:
        """`device_id` published a new online status: resend its unanswered commands.

        The device may have just connected to this broker (its failover): what was sent to it
        before could have been dropped by a broker that had no session for it yet.
        """
        link = self._link
        if link is None or not link.connected:
            return
        self._resend_unanswered(link, device_id=device_id, sent_before=math.inf)

    def _resend_unanswered(self, link: Link, *, device_id: str | None, sent_before: float) -> None:
        # Only commands with no answer at all: one the device acknowledged (``accepted``) is
        # in its hands, and a repeat of a command still running may be answered with a bare
        # ``duplicate`` before its real outcome.
        now = asyncio.get_running_loop().time()
        for pending in list(self._pending.values()):
            if (
                pending.published
                and pending.last is None
                and not pending.final.done()
                and now < pending.deadline
                and pending.sent_at <= sent_before
                and device_id in {None, pending.device.device_id}
                and not self._publish(link, pending)
            ):
                return  # the broker's receive maximum is reached

    # ------------------------------------------------------------------ commands

    async def send(  # noqa: PLR0913 - keyword-only options
        self,
        device: DeviceInfo,
        action: Action,
        *,
        timeout: float,  # noqa: ASYNC109 - the command's deadline, not a wait bound
        qos: int | None,
        if_version: int | None,
        seal: bool,
    ) -> CommandResponse:
        """Send `action` to `device` and return its final response (see `AmoraClient.command`)."""
        device_id = device.device_id
        if seal and device.encryption_key is None:
            raise InvalidCommandError(f"device {device_id!r} has no encryption key to seal to")
        if qos is None:
            qos = 2 if is_critical(action) else 1
        if qos not in {0, 1, 2}:
            raise InvalidCommandError(f"qos must be 0, 1 or 2, not {qos!r}")
        issued = now_ms()
        command = Command(
            id=str(_uuid7(issued)),
            issued_at_ms=issued,
            expires_at_ms=issued + max(1, int(timeout * 1000)),
            action=action,
            if_version=if_version,
        )
        validate_command(command)
        if len(self._pending) >= self._max_pending:
            raise OutboxFullError(
                f"{len(self._pending)} commands pending; try again later",
                device_id=device_id,
                command_id=command.id,
            )
        loop = asyncio.get_running_loop()
        pending = _Pending(
            command=command,
            device=device,
            qos=qos,
            seal=seal,
            deadline=loop.time() + timeout,
            final=loop.create_future(),
        )
        if self._tracer is None:
            return await self._send(pending, timeout)
        with self._tracer.sending(device_id, command.id, action) as pending.trace:
            return await self._send(pending, timeout)

    async def _send(self, pending: _Pending, timeout: float) -> CommandResponse:  # noqa: ASYNC109 - the deadline
        command, device_id = pending.command, pending.device.device_id
        self._pending[command.id] = pending
        self._busy.set()
        try:
            if self._link is not None and self._link.connected:
                self._publish(self._link, pending)
            response = await self._settle(pending, timeout)
        finally:
            self._pending.pop(command.id, None)
            if not self._pending:
                self._busy.clear()
            for digest in pending.digests:
                self._by_digest.pop(digest, None)
        if _status(response) in _FINAL_BAD:
            raise self._rejection(response, device_id=device_id, command_id=command.id)
        return response

    def _rejection(self, response: CommandResponse, *, device_id: str, command_id: str) -> CommandRejectedError:
        if response.reason == RejectReason.BUSY:
            return DeviceBusyError(response, device_id=device_id, command_id=command_id)
        if response.reason == RejectReason.CLOCK_SKEW:
            return ClockSkewError(
                response, device_id=device_id, command_id=command_id, app_offset_ms=self._app_clock_offset()
            )
        return CommandRejectedError(response, device_id=device_id, command_id=command_id)

    async def _settle(self, pending: _Pending, timeout: float) -> CommandResponse:  # noqa: ASYNC109
        command, device_id = pending.command, pending.device.device_id
        try:
            async with asyncio.timeout_at(pending.deadline):
                return await asyncio.shield(pending.final)
        except TimeoutError:
            if not pending.published:
                raise CommandExpiredError(
                    f"command {command.id} to {device_id!r} expired in the outbox (never sent)",
                    device_id=device_id,
                    command_id=command.id,
                ) from None
            raise CommandTimeoutError(
                f"no final response from {device_id!r} to {command.id} within {timeout} s",
                device_id=device_id,
                command_id=command.id,
                last_response=pending.last,
            ) from None

    def on_response(self, response: CommandResponse) -> None:
        """Settle the pending command `response` answers (a verified response)."""
        pending = self._pending.get(response.command_id) or self._by_digest.get(response.command_id)
        if pending is None or pending.device.device_id != response.device_id or pending.final.done():
            return  # someone else's command (same user, other app) or already settled
        status = _status(response)
        if status in _FINAL_OK or status in _FINAL_BAD:
            pending.final.set_result(response)
        else:
            pending.last = response

    def fail_all(self, error: str | None) -> None:
        """End every pending command with `ClientClosedError` (the client is closing)."""
        for pending in list(self._pending.values()):
            if not pending.final.done():
                why = error or "the client closed before the command completed"
                pending.final.set_exception(ClientClosedError(why))
                # Retrieved by the waiter, or by nobody: do not warn either way.
                pending.final.exception()

    # ------------------------------------------------------------------ publishing

    async def run(self) -> None:
        """Send what waited for the broker's receive window, as acknowledgements free it."""
        # Strategy: commands that could not be published because too many QoS 1/2
        # publishes await acknowledgement are sent once those drain (an event from the
        # link's in-flight store, not a poll), oldest first.
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            link = self._link
            if link is None:
                continue  # the next connection flushes the outbox
            await link.wait_inflight_drained()
            if link.connected and link is self._link:
                self._flush(link, resend=False)

    async def run_resends(self) -> None:
        """Every `resend_interval`, send again what was sent that long ago and got no answer."""
        loop = asyncio.get_running_loop()
        while True:
            # Strategy: no command pending, nothing to resend: wait for one (an event, not a
            # timer that wakes every client of a process for nothing).
            await self._busy.wait()
            # Half the interval: a command waits between one and one and a half intervals.
            await asyncio.sleep(self._resend_interval / 2)
            link = self._link
            if link is not None and link.connected:
                due = loop.time() - self._resend_interval
                self._resend_unanswered(link, device_id=None, sent_before=due)

    def _flush(self, link: Link, *, resend: bool) -> None:
        loop = asyncio.get_running_loop()
        for pending in list(self._pending.values()):
            if pending.final.done() or loop.time() >= pending.deadline:
                continue  # expired ones are never sent: send() reports them
            if (not pending.published or resend) and not self._publish(link, pending):
                return  # the broker's receive maximum is reached; run() resumes

    def _publish(self, link: Link, pending: _Pending) -> bool:
        session = self._session()
        device_id = pending.device.device_id
        topic = commands_topic(device_id)
        now = now_ms()
        payload = self._sender().encode(
            topic,
            pending.command,
            now_ms=now,
            expires_at_ms=pending.command.expires_at_ms,
            grant=session.grant,
            codec=self._codec,
            seal_to=pending.device.encryption_key if pending.seal else None,
        )
        remaining_s = max(1, math.ceil((pending.command.expires_at_ms - now) / 1000))
        sent = link.publish(
            topic,
            payload,
            qos=pending.qos,
            content_type=str(self._codec.value),
            response_topic=responses_topic(device_id),
            correlation_data=pending.command.id.encode(),
            message_expiry_interval=remaining_s,
            **({"user_property": pending.trace} if pending.trace else {}),
        )
        if not sent:
            self._wakeup.set()
            return False
        pending.published = True
        pending.sent_at = asyncio.get_running_loop().time()
        digest = unauthenticated_id(payload)
        pending.digests.append(digest)
        self._by_digest[digest] = pending
        self._stats.commands_sent += 1
        return True


_command_codec = msgspec.msgpack.Encoder()
_command_decoder = msgspec.msgpack.Decoder(Command)


def validate_command(command: Command) -> None:
    """Check `command` against the schema the device will apply (structs do not check on build).

    Raises:
        InvalidCommandError: A field is out of range or of the wrong type.
    """
    try:
        _command_decoder.decode(_command_codec.encode(command))
    except (msgspec.ValidationError, msgspec.DecodeError, TypeError) as exc:
        raise InvalidCommandError(f"invalid command: {exc}") from exc


def _status(response: CommandResponse) -> str:
    status: CommandStatus = response.status
    return str(getattr(status, "value", status))


def _uuid7(ms: int) -> uuid.UUID:
    """A UUIDv7 (RFC 9562): 48-bit ms timestamp, version, 74 random bits."""
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= ((rand >> 62) & 0xFFF) << 64
    value |= 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    return uuid.UUID(int=value)
