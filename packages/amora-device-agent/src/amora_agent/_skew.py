"""How far this device's clock is from its senders' and from the authz service's.

Strategy: every verified command measures ``now - header.ts_ms``: the clock difference plus
the transit time. Transit only adds, so per sender the recent measurement closest to zero is
the best estimate (NTP's minimum-delay filter), and a command delivered late does not pass
for a clock difference. The authz service is the trusted clock the device already hears
from: each grant's ``issued_at_ms`` is on it, and ``now - issued_at_ms`` (the offset plus the
grant's age) caps how far ahead the device can be. The device's own estimate, reported in its
telemetry, is the median of the per-sender estimates under that cap.
"""

from __future__ import annotations

import statistics
from collections import OrderedDict, deque
from typing import Final

__all__ = ["SkewTracker"]

_SAMPLES_PER_SENDER: Final = 4


def _closest_to_zero(values: list[int]) -> int:
    return min(values, key=abs)


class SkewTracker:
    """Per-sender clock offsets (this device minus the sender) and the device's own estimate.

    Memory is bounded: ``max_senders`` senders (least recently seen evicted), a few samples each.
    """

    def __init__(self, *, max_senders: int = 1024) -> None:
        """Start with nothing known."""
        self._max_senders = max_senders
        self._samples: OrderedDict[str, deque[int]] = OrderedDict()
        self._grant_cap: int | None = None

    def offset_for(self, sender: str, measured_ms: int) -> int:
        """The offset to judge a command from ``sender`` with, given this one's measurement."""
        known = self._samples.get(sender)
        return _closest_to_zero([measured_ms, *(known or ())])

    def observe(self, sender: str, measured_ms: int, *, grant_age_ms: int) -> None:
        """Record a verified command's measurement and its grant's apparent age."""
        samples = self._samples.get(sender)
        if samples is None:
            samples = self._samples[sender] = deque(maxlen=_SAMPLES_PER_SENDER)
            while len(self._samples) > self._max_senders:
                self._samples.popitem(last=False)
        else:
            self._samples.move_to_end(sender)
        samples.append(measured_ms)
        # A grant cannot be older than "now" on the authz clock: the youngest apparent age
        # seen lately bounds the device's offset from above.
        self._grant_cap = grant_age_ms if self._grant_cap is None else min(self._grant_cap, grant_age_ms)

    def estimate(self) -> int | None:
        """This device's clock minus its senders' (ms), or None before any command."""
        if not self._samples:
            return None
        median = round(statistics.median(_closest_to_zero(list(s)) for s in self._samples.values()))
        return median if self._grant_cap is None else min(median, self._grant_cap)

    def forget_grant_cap(self) -> None:
        """Start a new period for the grant cap (grants age; old ones bound nothing)."""
        self._grant_cap = None
