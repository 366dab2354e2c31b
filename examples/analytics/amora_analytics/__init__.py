"""Example backend: the fleet's state changes into PostgreSQL (plays, listening time, last seen).

Run as many replicas as the backend has slots (``amora-analytics --replica N``); the broker
splits the fleet's states between them and a replica that dies is taken over by the others
(`amora_sync.backend`). Every state is stored once per ``(device_id, version)``, so the
duplicates an at-least-once consumer may see cost nothing.
"""

from importlib.metadata import PackageNotFoundError, version

from amora_analytics._db import DeviceStats, StateStore
from amora_analytics._run import run

try:
    __version__ = version("amora-example-analytics")
except PackageNotFoundError:  # pragma: no cover - source tree without metadata
    __version__ = "0+unknown"

__all__ = ["DeviceStats", "StateStore", "__version__", "run"]
