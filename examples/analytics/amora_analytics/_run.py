"""One replica: consume the fleet's verified states and statuses into the database."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, TextIO

from amora_analytics._db import StateStore
from amora_protocol import ConnectionStatus, DeviceState
from amora_sync.backend import BackendConsumer, BackendCredentials

if TYPE_CHECKING:
    from amora_sync.backend import FleetMessage

__all__ = ["run"]


def _say(out: TextIO | None, event: str, **fields: object) -> None:
    if out is not None:
        out.write(json.dumps({"event": event, **fields}) + "\n")
        out.flush()


async def run(  # noqa: PLR0913 - one replica's whole configuration, keyword-only
    *,
    authz_url: str,
    credentials: BackendCredentials,
    replica: int,
    database_url: str,
    ca_file: str | None = None,
    takeover_delay: int = 2,
    progress: TextIO | None = None,
) -> None:
    """Consume until cancelled; each message is acknowledged only once it is in the database.

    Args:
        authz_url: The authz service (device keys).
        credentials: The backend's identity (role ``analytics``).
        replica: This replica's slot (1..replicas).
        database_url: PostgreSQL connection string.
        ca_file: CA bundle of the brokers and the authz service.
        takeover_delay: Seconds before a dead replica's slot is taken over.
        progress: Where to write one JSON line per stored message (None: nothing).

    Raises:
        ValueError: ``replica`` is not one of the backend's slots.
        AnalyticsError: The database cannot be reached or failed.
        amora_sync.AmoraSyncError: The backend credential was refused, or no broker answered.
    """
    # Built first: a replica outside the backend's slots is refused before anything connects.
    consumer = BackendConsumer(authz_url, credentials, replica=replica, ca_file=ca_file, takeover_delay=takeover_delay)
    async with StateStore(database_url) as store, consumer:
        _say(progress, "ready", replica=replica, devices=consumer.cached_keys)
        async for item in consumer:
            await _store(store, item, replica=replica, progress=progress)


async def _store(store: StateStore, item: FleetMessage, *, replica: int, progress: TextIO | None) -> None:
    message = item.message
    if isinstance(message, DeviceState):
        new = await store.add_state(message, replica=replica, slot=item.slot)
        _say(progress, "state", device_id=item.device_id, version=message.version, slot=item.slot, new=new)
    elif isinstance(message, ConnectionStatus):
        await store.add_status(message)
