"""The agent's command path: verification, the replay guard and log, running, answering.

A mixin of `amora_agent._agent.Agent` (it uses the agent's link, player, state and counters),
kept apart so the agent module holds the lifecycle and the state side.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Final

import msgspec
from opentelemetry import trace

from amora_agent._errors import PlayerError, StateDirError
from amora_agent._telemetry import AgentTelemetry
from amora_protocol import (
    BadSignature,
    ClockSkew,
    CommandResponse,
    CommandStatus,
    Expired,
    ProtocolError,
    RejectReason,
    Replayed,
    Unauthorized,
    UnknownKey,
    UnsupportedAction,
    VerifiedCommand,
    now_ms,
    parse_envelope,
    unauthenticated_id,
    verify_command,
)

if TYPE_CHECKING:
    from collections import Counter
    from collections.abc import Callable, Mapping

    import structlog

    from amora_agent._admission import RefusalBudget, SessionGate
    from amora_agent._agent import AgentOptions
    from amora_agent._commands import CommandBook
    from amora_agent._mqtt import InboundMessage, MqttLink
    from amora_agent._player import Player
    from amora_protocol import Action, DeviceState, EncryptionKey, Grant, Message, SessionList, VerifyKey

__all__ = ["CommandHandling", "claimed_sender"]

# How long a command under a grant newer than the session list in force waits for the list
# naming its session (it is on its way: see `SessionGate.awaits_newer_list`).
_NEWER_LIST_WAIT_S: Final = 2.0


def _reject_reason(exc: ProtocolError) -> RejectReason:
    if isinstance(exc, Expired):
        return RejectReason.EXPIRED
    if isinstance(exc, UnsupportedAction):  # a newer app's action: not malformed, just not known here
        return RejectReason.UNSUPPORTED
    if isinstance(exc, Unauthorized | BadSignature | UnknownKey):
        return RejectReason.UNAUTHORIZED
    # Schema errors, topic mismatches, oversized payloads, sealed bodies that do not open,
    # and commands dated in the future are all malformed from the device's point of view.
    return RejectReason.INVALID


def _status(response: CommandResponse) -> str:
    return response.status.value


def claimed_sender(message: InboundMessage) -> str:
    """The sender an unauthenticated envelope names (only a claim: a refusal budget key)."""
    try:
        return parse_envelope(message.payload, content_type=message.content_type).header.sender
    except ProtocolError:
        return "-"


class CommandHandling:
    """Serving commands: the agent's command queue in, one answer per command out."""

    # Provided by the agent (see `Agent.__init__`).
    device_id: str
    last_error: str | None
    _book: CommandBook
    _trusted: Mapping[str, VerifyKey]
    _encryption_key: EncryptionKey | None
    _options: AgentOptions
    _usage: Counter[str]
    _log: structlog.typing.FilteringBoundLogger
    _state: DeviceState | None
    _player: Player
    _link: MqttLink
    _topics: dict[str, str]
    _commands: asyncio.Queue[InboundMessage]
    _online: asyncio.Event
    _refusals: RefusalBudget
    _sessions: SessionGate
    _session_list_applied: asyncio.Event
    _encode: Callable[[str, Message], bytes]
    _telemetry: AgentTelemetry
    _state_cause: trace.SpanContext | None

    async def _serve_commands(self) -> None:
        telemetry = self._telemetry
        while True:
            message = await self._commands.get()
            # Queued commands can arrive right after CONNACK, before the link is usable for
            # the answer: hold them until the connection is fully up.
            await self._online.wait()
            started = time.perf_counter()
            if not telemetry.tracing:
                self._answered(await self._handle_safely(message), started)
                continue
            with telemetry.tracer.start_as_current_span(
                "amora.command process",
                context=AgentTelemetry.extract(message.user_properties),
                kind=trace.SpanKind.CONSUMER,
                attributes={"messaging.destination.name": message.topic, "amora.device_id": self.device_id},
            ) as span:
                response = await self._handle_safely(message)
                if response is not None:
                    span.set_attributes(
                        {"amora.command.id": response.command_id, "amora.command.outcome": _status(response)}
                    )
                    if response.status in {CommandStatus.FAILED, CommandStatus.REJECTED}:
                        why = response.reason.value if response.reason is not None else response.message
                        span.set_status(trace.StatusCode.ERROR, why)
                self._answered(response, started)

    async def _handle_safely(self, message: InboundMessage) -> CommandResponse | None:
        try:
            return await self._handle_command(message)
        except Exception as exc:  # noqa: BLE001 - one bad command must never end the agent
            self._log.exception("command handling failed")
            self._usage["errors"] += 1
            return CommandResponse(
                command_id=unauthenticated_id(message.payload),
                device_id=self.device_id,
                status=CommandStatus.FAILED,
                at_ms=now_ms(),
                message=f"internal error: {type(exc).__name__}",
            )

    def _answered(self, response: CommandResponse | None, started: float) -> None:
        if response is None:
            return  # refused without an answer: counted where it was refused
        self._respond(response)
        self._telemetry.command_duration.record(time.perf_counter() - started, {"outcome": _status(response)})

    def _respond(self, response: CommandResponse) -> None:
        # The correlation data is the answered id, never the inbound property: that one is
        # not covered by any signature, and echoing it would reflect a stranger's bytes.
        telemetry = self._telemetry
        telemetry.answered(_status(response), response.reason.value if response.reason else None)
        topic = self._topics["responses"]
        traced = telemetry.tracing and trace.get_current_span().get_span_context().is_valid
        span = (
            telemetry.tracer.start_as_current_span(
                "amora.command respond",
                kind=trace.SpanKind.PRODUCER,
                attributes={"messaging.destination.name": topic, "amora.command.id": response.command_id},
            )
            if traced
            else contextlib.nullcontext()
        )
        with span:
            self._link.publish(
                topic,
                self._encode(topic, response),
                qos=1,
                content_type=self._options.codec.value,
                correlation_data=response.command_id.encode(),
                user_properties=telemetry.inject() if traced else None,
            )

    def _answer(
        self,
        command_id: str,
        status: CommandStatus,
        *,
        reason: RejectReason | None = None,
        message: str | None = None,
        clock_offset_ms: int | None = None,
    ) -> CommandResponse:
        if status is CommandStatus.REJECTED:
            self._usage["commands_rejected"] += 1
        self._log.info(
            "command answered",
            command_id=command_id,
            status=status.value,
            reason=reason.value if reason else None,
            detail=message,
        )
        return CommandResponse(
            command_id=command_id,
            device_id=self.device_id,
            status=status,
            at_ms=now_ms(),
            reason=reason,
            message=message[:1024] if message else None,
            state_version=self._state.version if self._state is not None else None,
            clock_offset_ms=clock_offset_ms,
        )

    def _repeat(self, command_id: str, detail: str) -> CommandResponse:
        """The answer to an id already received: its original outcome, if known."""
        self._usage["commands_duplicate"] += 1
        original = self._book.original(command_id)
        if original is not None:
            self._log.info("command repeated; original outcome answered", command_id=command_id)
            return CommandResponse(
                command_id=command_id,
                device_id=self.device_id,
                status=original.status,
                at_ms=original.at_ms,
                reason=original.reason,
                message=original.message,
                state_version=original.state_version,
                duplicate=True,
            )
        if self._book.running(command_id):
            response = self._answer(command_id, CommandStatus.ACCEPTED, message="running; the answer follows")
            return msgspec.structs.replace(response, duplicate=True)
        return self._answer(
            command_id,
            CommandStatus.DUPLICATE,
            message=f"{detail}; its outcome is unknown (the device restarted while running it)",
        )

    def _refuse_unauthenticated(self, message: InboundMessage, exc: ProtocolError) -> CommandResponse | None:
        """Answer input refused before its sender was authenticated, within the refusal budget.

        The answer names a digest of the payload, not an id read from it, and a fixed text per
        error class: nothing an unauthenticated sender chose is signed back.
        """
        if not self._refusals.take(claimed_sender(message)):
            self._usage["commands_unanswered"] += 1
            self._telemetry.answered("unanswered", _reject_reason(exc).value)
            self._log.debug("unauthenticated command refused without an answer", error=type(exc).__name__)
            return None
        return self._answer(
            unauthenticated_id(message.payload),
            CommandStatus.REJECTED,
            reason=_reject_reason(exc),
            message=f"refused before authentication: {type(exc).__name__}",
        )

    async def _verify(
        self, message: InboundMessage, now: int
    ) -> tuple[VerifiedCommand, int | None, int] | CommandResponse | None:
        """The verified command with its measured and judged clock offsets, or the refusal.

        ``None``: refused before authentication and not answered (over the refusal budget).
        """
        book = self._book
        measured, offset = book.judge_offset(message, now)
        try:
            verified = verify_command(
                message.payload,
                topic=message.topic,
                content_type=message.content_type,
                trusted_keys=self._trusted,
                now_ms=book.sender_time(now, offset),
                decrypt_key=self._encryption_key,
            )
        except ProtocolError as exc:
            if exc.command_id is None:
                return self._refuse_unauthenticated(message, exc)
            reason = _reject_reason(exc)
            if reason is RejectReason.EXPIRED and measured is not None and abs(measured) > book.max_skew_ms:
                reason = RejectReason.CLOCK_SKEW
            return self._answer(
                exc.command_id,
                CommandStatus.REJECTED,
                reason=reason,
                message=str(exc),
                clock_offset_ms=measured if reason is RejectReason.CLOCK_SKEW else None,
            )
        revoked = await self._refusal_once_listed(verified.grant)
        if revoked is not None:
            command_id = verified.command.id
            return self._answer(command_id, CommandStatus.REJECTED, reason=RejectReason.UNAUTHORIZED, message=revoked)
        return verified, measured, offset

    async def wait_session_list(self, predicate: Callable[[SessionList | None], bool]) -> None:
        """Return once ``predicate`` holds for the session list in force."""
        while not predicate(self._sessions.current):
            await self._session_list_applied.wait()

    async def _refusal_once_listed(self, grant: Grant) -> str | None:
        """Why ``grant`` is refused by the session list, waiting (bounded) for one as new as it if need be."""
        if not self._sessions.awaits_newer_list(grant):
            return self._sessions.refusal(grant)
        issued = grant.issued_at_ms
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_NEWER_LIST_WAIT_S):
                await self.wait_session_list(lambda current: current is not None and current.issued_at_ms >= issued)
        return self._sessions.refusal(grant)

    async def _handle_command(self, message: InboundMessage) -> CommandResponse | None:  # noqa: PLR0911 - one answer per outcome
        now = now_ms()
        book = self._book
        checked = await self._verify(message, now)
        if checked is None or isinstance(checked, CommandResponse):
            return checked
        verified, measured, offset = checked
        command = verified.command
        if book.refuses(command):
            return self._answer(
                command.id,
                CommandStatus.REJECTED,
                reason=RejectReason.EXPIRED,
                message="issued before the device lost part of its replay record; send it again with a new id",
            )
        try:
            book.guard.check(verified.header, command, now_ms=now, clock_offset_ms=offset)
        except Replayed as exc:
            if book.guard.seen(command.id):
                return self._repeat(command.id, str(exc))
            # A new id on an envelope whose (sender, epoch, seq) was already used or is too old:
            # it never ran, so it must not read as a duplicate (which apps take as done).
            return self._answer(command.id, CommandStatus.REJECTED, reason=RejectReason.INVALID, message=str(exc))
        except ClockSkew as exc:
            self._usage["commands_clock_skew"] += 1
            reason, offset_ms = RejectReason.CLOCK_SKEW, exc.offset_ms
            return self._answer(
                command.id, CommandStatus.REJECTED, reason=reason, message=str(exc), clock_offset_ms=offset_ms
            )
        except ProtocolError as exc:
            return self._answer(command.id, CommandStatus.REJECTED, reason=_reject_reason(exc), message=str(exc))
        if measured is not None and book.note_skew(verified, measured, now):
            self._log.info(
                "clock offset estimated", clock_offset_ms=book.clock_offset_ms, allowance_ms=book.max_skew_ms
            )
        # Recorded (durably) before it runs: at most once, even across a crash.
        try:
            book.start(verified, now)
        except StateDirError as exc:
            self.last_error = str(exc)
            self._log.error("cannot record a command; not run", error=str(exc))
            return self._answer(
                command.id,
                CommandStatus.REJECTED,
                reason=RejectReason.BUSY,
                message=f"cannot record the command, so it did not run: {exc}",
            )
        try:
            response = await self._run(command.id, command.action, command.if_version)
        except BaseException:
            book.abandon(command.id)
            raise
        book.finish(response, self._log)
        return response

    async def _run(self, command_id: str, action: Action, if_version: int | None) -> CommandResponse:
        current = self._state.version if self._state is not None else None
        if if_version is not None and if_version != current:
            return self._answer(
                command_id,
                CommandStatus.REJECTED,
                reason=RejectReason.VERSION_MISMATCH,
                message=f"state version is {current}",
            )
        self._usage["commands"] += 1
        try:
            if self._telemetry.tracing:
                await self._execute_traced(action)
            else:
                await self._player.execute(action)
        except PlayerError as exc:
            self._usage["errors"] += 1
            self._state_cause = None
            return self._answer(command_id, CommandStatus.FAILED, message=str(exc))
        return self._answer(command_id, CommandStatus.SUCCEEDED)

    async def _execute_traced(self, action: Action) -> None:
        with self._telemetry.tracer.start_as_current_span(
            "mpd execute", kind=trace.SpanKind.CLIENT, attributes={"amora.action": type(action).__name__}
        ) as span:
            # Set before the call: the player's change event may publish the state before
            # `execute` returns.
            self._state_cause = span.get_span_context()
            await self._player.execute(action)

    @property
    def clock_offset_ms(self) -> int | None:
        """This device's clock minus its senders' as estimated from the commands it verified."""
        return self._book.clock_offset_ms
