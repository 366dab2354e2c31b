"""Reconnect backoff: exponential with full jitter, shared by every client that reconnects.

Sans-IO: it hands out delays and never sleeps; the caller owns the clock and the wait.
Full jitter ("Exponential Backoff And Jitter", AWS Architecture Blog) spreads a fleet that
lost its broker at the same instant over the whole window instead of letting it come back
in waves (docs/decisions/0003-packages-own-reconnection.md).
"""

from __future__ import annotations

import random

__all__ = ["Backoff"]

# 2.0**64 times any sane initial delay is far past any cap; bounding the exponent keeps the
# float finite however long an outage lasts.
_MAX_EXPONENT = 64


class Backoff:
    """Delays for successive retries: uniform in ``[0, min(maximum, initial * multiplier**attempt)]``.

    Args:
        initial: Upper bound of the first delay, in seconds (0 allowed: retry at once).
        maximum: The largest upper bound, in seconds.
        multiplier: Growth of the upper bound per attempt (at least 1).
        rng: Source of randomness; pass a seeded one for reproducible delays. By default a
            private `random.Random` (jitter is not a secret, so no CSPRNG is needed).

    Raises:
        ValueError: The bounds are inconsistent (the message names which).
    """

    def __init__(
        self,
        *,
        initial: float,
        maximum: float,
        multiplier: float = 2.0,
        rng: random.Random | None = None,
    ) -> None:
        """Start at attempt 0."""
        if initial < 0 or maximum < initial:
            msg = f"need 0 <= initial <= maximum, got initial={initial}, maximum={maximum}"
            raise ValueError(msg)
        if multiplier < 1:
            msg = f"multiplier must be at least 1, got {multiplier}"
            raise ValueError(msg)
        self._initial = initial
        self._maximum = maximum
        self._multiplier = multiplier
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._attempt = 0

    @property
    def attempt(self) -> int:
        """How many delays were handed out since the last reset."""
        return self._attempt

    def ceiling(self) -> float:
        """The upper bound of the next delay (before jitter)."""
        exponent = min(self._attempt, _MAX_EXPONENT)
        return min(self._maximum, self._initial * self._multiplier**exponent)

    def next_delay(self) -> float:
        """Return the next delay, in seconds, and count the attempt."""
        delay = self._rng.uniform(0.0, self.ceiling())
        self._attempt += 1
        return delay

    def reset(self) -> None:
        """Start over (after a successful connection)."""
        self._attempt = 0
