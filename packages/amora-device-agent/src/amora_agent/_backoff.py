"""Exponential backoff with full jitter (as in "Exponential Backoff And Jitter", AWS)."""

from __future__ import annotations

import random

__all__ = ["Backoff"]


class Backoff:
    """Delays for successive retries: uniform in ``[0, min(maximum, initial * 2**attempt)]``.

    Full jitter spreads a fleet that lost its broker at the same instant over the whole
    window instead of letting it come back in waves.

    Args:
        initial: The cap of the first delay, in seconds.
        maximum: The largest cap, in seconds.
        rng: Source of randomness (seeded in tests).
    """

    def __init__(self, *, initial: float, maximum: float, rng: random.Random | None = None) -> None:
        """Start at attempt 0."""
        if initial <= 0 or maximum < initial:
            raise ValueError("need 0 < initial <= maximum")
        self._initial = initial
        self._maximum = maximum
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._attempt = 0

    @property
    def attempt(self) -> int:
        """How many delays were handed out since the last reset."""
        return self._attempt

    def cap(self) -> float:
        """The upper bound of the next delay."""
        # min() before the power would still overflow for huge attempts; bound the exponent.
        return min(self._maximum, self._initial * float(2 ** min(self._attempt, 62)))

    def next_delay(self) -> float:
        """Return the next delay and advance."""
        delay = self._rng.uniform(0, self.cap())
        self._attempt += 1
        return delay

    def reset(self) -> None:
        """Start over after a success."""
        self._attempt = 0
