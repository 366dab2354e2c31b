"""The one wall-clock helper: milliseconds since the Unix epoch, the unit of every wire time.

The protocol's functions never call it themselves (they take ``now_ms`` as an argument);
it is here so that every package reads the clock the same way when it fills that argument.
"""

from __future__ import annotations

import time

__all__ = ["now_ms"]


def now_ms() -> int:
    """Milliseconds since the Unix epoch (integer, from the system's wall clock)."""
    return time.time_ns() // 1_000_000
