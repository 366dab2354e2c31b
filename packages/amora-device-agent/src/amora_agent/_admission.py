"""What the agent admits before a command runs: the authz session list, and a budget for refusals.

Two guards sit in the command verification path, next to `amora_protocol.verify_command`:

- `SessionGate` holds the newest `SessionList` the authz service published for this device
  (retained, signed with the same key as grants). Once it holds one, a command under a grant
  whose session is not listed is refused: that is how a logout, an unlink or a device
  revocation reaches the device before the grant expires.
- `RefusalBudget` bounds the answers (each one a signature) the agent gives to input refused
  *before* its sender was authenticated: garbage on the commands topic must not turn the
  device into a signing oracle or let one sender spend its CPU.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from typing import TYPE_CHECKING, Final

from amora_protocol import ProtocolError, SessionList, verify_session_list

if TYPE_CHECKING:
    from collections.abc import Callable

    from amora_protocol import Grant, KeyRing

__all__ = ["Offer", "RefusalBudget", "SessionGate"]


@dataclasses.dataclass(frozen=True, slots=True)
class Offer:
    """What became of a session list the device received.

    Attributes:
        applied: The list replaced the one held.
        reason: Why not, when it was not applied.
    """

    applied: bool
    reason: str | None = None


class SessionGate:
    """The newest verified session list for one device.

    Until the first list arrives every grant is judged by its own expiry alone (as before
    session lists existed); from then on its session must be listed too.

    Args:
        device_id: The device the lists must be for.
    """

    def __init__(self, device_id: str) -> None:
        """Start with no list."""
        self._device_id = device_id
        self._current: SessionList | None = None

    @property
    def current(self) -> SessionList | None:
        """The list in force, if any."""
        return self._current

    def offer(self, token: bytes, trusted_keys: KeyRing) -> Offer:
        """Verify a list from the sessions topic; keep it when it is newer than the one held."""
        try:
            received = verify_session_list(token, trusted_keys, device_id=self._device_id)
        except ProtocolError as exc:
            return Offer(applied=False, reason=f"{type(exc).__name__}: {exc}")
        current = self._current
        if current is not None and received.issued_at_ms <= current.issued_at_ms:
            # Retained copies come back on resubscription and via the bridge: keep the newest.
            return Offer(applied=False, reason=f"not newer than the list of {current.issued_at_ms}")
        self._current = received
        return Offer(applied=True)

    def awaits_newer_list(self, grant: Grant) -> bool:
        """Whether ``grant``'s session is missing only because its list has not arrived yet.

        The authz service publishes the list naming a new session before it hands out the
        grant, but a command sent through another connection can still overtake that list on
        its way to the device. A grant issued after the list in force cannot be on it; one
        issued before it and missing from it was ended (logout, unlink, revocation).
        """
        current = self._current
        return (
            current is not None and not current.allows(grant.session_id) and grant.issued_at_ms > current.issued_at_ms
        )

    def refusal(self, grant: Grant) -> str | None:
        """Why a command under ``grant`` must be refused now, or ``None`` when it may run."""
        current = self._current
        if current is None or current.allows(grant.session_id):
            return None
        return (
            f"revoked: session {grant.session_id!r} is not on the device's session list of "
            f"{current.issued_at_ms} (logged out, unlinked, or the device was revoked)"
        )


_PER_SENDER_RATE: Final = 1.0
_PER_SENDER_BURST: Final = 5.0
_TOTAL_RATE: Final = 10.0
_TOTAL_BURST: Final = 20.0
_MAX_SENDERS: Final = 1024


class RefusalBudget:
    """Token buckets: per claimed sender and for all unauthenticated refusals together.

    The sender an unauthenticated envelope names is only a claim, so a global bucket bounds
    what a flood of made-up senders can cost; the per-sender one keeps one noisy sender from
    using up everyone's answers. Senders are forgotten least-recently-used first.

    Args:
        per_sender_rate: Answers per second per claimed sender.
        per_sender_burst: Answers one sender may get at once.
        total_rate: Answers per second for every sender together.
        total_burst: Answers at once for every sender together.
        max_senders: Senders remembered.
        clock: Monotonic seconds.
    """

    def __init__(  # noqa: PLR0913 - every bound is the caller's to choose
        self,
        *,
        per_sender_rate: float = _PER_SENDER_RATE,
        per_sender_burst: float = _PER_SENDER_BURST,
        total_rate: float = _TOTAL_RATE,
        total_burst: float = _TOTAL_BURST,
        max_senders: int = _MAX_SENDERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Start with full buckets."""
        self._rate, self._burst = per_sender_rate, per_sender_burst
        self._total_rate, self._total_burst = total_rate, total_burst
        self._max_senders = max_senders
        self._clock = clock
        self._total = (total_burst, clock())
        self._senders: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()

    @staticmethod
    def _refill(bucket: tuple[float, float], rate: float, burst: float, now: float) -> float:
        tokens, at = bucket
        return min(burst, tokens + (now - at) * rate)

    def take(self, sender: str) -> bool:
        """Spend one answer for ``sender``; ``False`` when either bucket is empty."""
        now = self._clock()
        total = self._refill(self._total, self._total_rate, self._total_burst, now)
        own = self._refill(self._senders.get(sender, (self._burst, now)), self._rate, self._burst, now)
        allowed = total >= 1.0 and own >= 1.0
        if allowed:
            total -= 1.0
            own -= 1.0
        self._total = (total, now)
        self._senders[sender] = (own, now)
        self._senders.move_to_end(sender)
        while len(self._senders) > self._max_senders:
            self._senders.popitem(last=False)
        return allowed
