"""What the agent knows about the commands it received.

The replay guard and its durable log, each command's outcome, the commands running now, and
the senders' clock offsets.

Strategy: a command id is written to the replay log (durably) before the command runs, and
its outcome after; a resend of a known id is answered from here instead of running again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from amora_agent._errors import StateDirError
from amora_agent._replaylog import Executed, Horizon, Outcome, ReplayLog
from amora_agent._skew import SkewTracker
from amora_protocol import CommandGuard, CommandResponse, ProtocolError, parse_envelope

if TYPE_CHECKING:
    from pathlib import Path

    import structlog

    from amora_agent._mqtt import InboundMessage
    from amora_protocol import Command, VerifiedCommand

__all__ = ["CommandBook"]


class CommandBook:
    """The replay guard, the replay log, outcomes, running commands and clock offsets.

    Args:
        state_dir: Where the replay log lives.
        capacity: Command ids (with outcomes) remembered until they expire.
        durable: fsync each record before its command runs.
        max_skew_ms: The clock-skew allowance, either way.
        max_ttl_ms: The longest command lifetime accepted.
        now_ms: The current time, for the log's damage horizon.

    Raises:
        StateDirError: The replay log cannot be read or written.
    """

    def __init__(  # noqa: PLR0913 - all keyword-only
        self,
        state_dir: Path,
        *,
        capacity: int,
        durable: bool,
        max_skew_ms: int,
        max_ttl_ms: int,
        now_ms: int,
    ) -> None:
        """Load the replay log into a fresh guard."""
        self.max_skew_ms = max_skew_ms
        self.guard = CommandGuard(max_skew_ms=max_skew_ms, max_ttl_ms=max_ttl_ms, max_ids=capacity)
        self._log = ReplayLog(
            state_dir, guard=self.guard, capacity=capacity, durable=durable, max_skew_ms=max_skew_ms, now_ms=now_ms
        )
        self._skew = SkewTracker()
        self._running: set[str] = set()

    @property
    def damage(self) -> str | None:
        """What was wrong with the replay log at start (None: nothing)."""
        return self._log.damage

    @property
    def horizon(self) -> Horizon | None:
        """Commands issued before this are refused (after damage), if any."""
        return self._log.horizon

    @property
    def clock_offset_ms(self) -> int | None:
        """This device's clock minus its senders', as estimated (see `SkewTracker`)."""
        return self._skew.estimate()

    def judge_offset(self, message: InboundMessage, now_ms: int) -> tuple[int | None, int]:
        """(measured offset, offset to judge the command with) from its unverified header.

        Only picks the time the command is verified at; the signature check follows.
        """
        try:
            header = parse_envelope(message.payload, content_type=message.content_type).header
        except ProtocolError:
            return None, 0
        measured = now_ms - header.ts_ms
        return measured, self._skew.offset_for(header.sender, measured)

    def sender_time(self, now_ms: int, offset: int) -> int:
        """``now_ms`` moved to the sender's clock, within the allowance."""
        return now_ms - max(-self.max_skew_ms, min(self.max_skew_ms, offset))

    def refuses(self, command: Command) -> bool:
        """Whether ``command`` (a new id) falls before the damage horizon of the replay log."""
        return self._log.refuses(command.issued_at_ms) and not self.guard.seen(command.id)

    def note_skew(self, verified: VerifiedCommand, measured: int, now_ms: int) -> bool:
        """Record a verified command's offset; return whether the estimate moved by >= 1 s."""
        before = self._skew.estimate()
        age = now_ms - verified.grant.issued_at_ms
        self._skew.observe(verified.header.sender, measured, grant_age_ms=age)
        after = self._skew.estimate()
        return after is not None and (before is None or abs(after - before) >= 1000)

    def original(self, command_id: str) -> Outcome | None:
        """The recorded outcome of a known id (None: unknown or running)."""
        return self._log.outcome(command_id)

    def running(self, command_id: str) -> bool:
        """Whether the command with this id is running now."""
        return command_id in self._running

    def start(self, verified: VerifiedCommand, now_ms: int) -> None:
        """Record the command durably and mark it running; it may run once this returns.

        Raises:
            StateDirError: It could not be recorded: it must not run (and may come again).
        """
        command, header = verified.command, verified.header
        try:
            self._log.record_executed(
                Executed(command.id, command.expires_at_ms, header.sender, header.epoch, header.seq, now_ms)
            )
        except StateDirError:
            self.guard.forget(command.id)
            raise
        self._running.add(command.id)

    def abandon(self, command_id: str) -> None:
        """A running command ended without an answer (an internal error): outcome unknown."""
        self._running.discard(command_id)

    def finish(self, response: CommandResponse, log: structlog.typing.FilteringBoundLogger) -> None:
        """Remember how a command ended (a failure to write it is logged: the command did run)."""
        self._running.discard(response.command_id)
        outcome = Outcome(
            response.command_id,
            response.status,
            response.at_ms,
            response.reason,
            response.message,
            response.state_version,
        )
        try:
            self._log.record_outcome(outcome)
            self._log.compact(now_ms=response.at_ms)
        except StateDirError as exc:
            log.warning("cannot record a command's outcome", error=str(exc))

    def close(self) -> None:
        """Close the replay log."""
        self._log.close()
