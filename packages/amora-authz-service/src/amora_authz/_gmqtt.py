"""How the service makes its gmqtt clients: gmqtt's own reconnect switched off.

The service holds two kinds of MQTT link per broker, the dynsec control client
(`amora_authz._control`) and the session-list publisher (`amora_authz._sessionlists`).
Both notice a lost connection themselves and open a fresh client on their next use
(docs/decisions/0003-packages-own-reconnection.md). gmqtt must therefore never reconnect
the old client behind their back: that would leave a second connection for the same
account, and for the dynsec client (one client id per link) kick the fresh one.
"""

from __future__ import annotations

import asyncio
from typing import Final

import gmqtt
from gmqtt.storage import PersistentStorage

__all__ = ["NO_RECONNECT", "PublishWindow", "new_client"]

NO_RECONNECT: Final = -2
"""gmqtt's ``reconnect_retries`` value that switches its reconnect off.

gmqtt reconnects while its failed attempts are ``<= reconnect_retries``, with -1 meaning
unlimited: 0 still reconnects once after a loss (after ``reconnect_delay``), and only a
value below -1 allows none.
"""


class PublishWindow(PersistentStorage):  # type: ignore[misc]  # gmqtt ships no types
    """gmqtt's store of unacknowledged QoS 1 publishes, counted, so a publisher can wait for room.

    gmqtt hands out packet ids only up to the broker's receive maximum (mosquitto's
    ``max_inflight_messages``, 20 in the shipped configuration) and raises ``OverflowError``
    past it: a loop of publishes with no await between them (a session list for every device)
    must wait for acknowledgements once ``limit`` are outstanding.
    """

    def __init__(self, limit: int) -> None:
        """Allow ``limit`` unacknowledged publishes (below the broker's receive maximum)."""
        super().__init__()
        self._limit = limit
        self._outstanding: set[int] = set()
        self._room = asyncio.Event()
        self._room.set()

    def push_message(self, mid: int, raw_package: bytes) -> None:
        """gmqtt: a QoS 1 publish went out (or was replaced by its next packet)."""
        super().push_message(mid, raw_package)
        self._outstanding.add(mid)
        if len(self._outstanding) >= self._limit:
            self._room.clear()

    def remove_message_by_mid(self, mid: int) -> None:
        """gmqtt: the broker acknowledged ``mid``."""
        super().remove_message_by_mid(mid)
        self._outstanding.discard(mid)
        if len(self._outstanding) < self._limit:
            self._room.set()

    def clear(self) -> None:
        """gmqtt: the connection's store was wiped."""
        super().clear()
        self._outstanding.clear()
        self._room.set()

    async def room(self) -> None:
        """Return once fewer than ``limit`` publishes await their acknowledgement."""
        await self._room.wait()


def new_client(client_id: str, *, window: PublishWindow | None = None) -> gmqtt.Client:
    """A clean-session gmqtt client that never reconnects by itself."""
    client = gmqtt.Client(client_id, clean_session=True, persistent_storage=window)
    client.set_config({"reconnect_retries": NO_RECONNECT})
    return client
