"""The tools' one setting for gmqtt clients (fault kit, benchmarks)."""

from __future__ import annotations

from typing import Final

__all__ = ["NO_RECONNECT"]

NO_RECONNECT: Final = -2
"""gmqtt's ``reconnect_retries`` value that switches its reconnect off.

gmqtt reconnects while its failed attempts are ``<= reconnect_retries`` (-1: unlimited), so
0 still reconnects once; only a value below -1 allows none. Tools that drive their own
reconnection (or must see a loss as a loss) set ``{"reconnect_retries": NO_RECONNECT}``.
"""
