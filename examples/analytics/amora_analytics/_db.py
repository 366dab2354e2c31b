"""The analytics database (PostgreSQL, psycopg 3): raw states and statuses, figures as a view.

Raw rows are stored under their natural keys (a state's ``(device_id, version)``), so a
message delivered twice (at least once, several replicas, a taken-over session) is stored
once: ``ON CONFLICT DO NOTHING``. The figures are computed from the rows when asked
(`StateStore.stats`), so a state that arrives late (a redelivery after a replica died) still
counts in the right place, between its neighbours by version.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Self

import psycopg

if TYPE_CHECKING:
    from types import TracebackType

    from amora_protocol import ConnectionStatus, DeviceState

__all__ = ["AnalyticsError", "DeviceStats", "StateStore"]

_SCHEMA_LOCK: Final = 0x616D6F7261  # replicas starting together create the schema one at a time

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS device_states (
    device_id     text    NOT NULL,
    version       bigint  NOT NULL,
    status        text    NOT NULL,
    song          text,
    sampled_at_ms bigint  NOT NULL,
    elapsed_ms    bigint,
    replica       integer NOT NULL,
    slot          integer NOT NULL,
    PRIMARY KEY (device_id, version)
);
CREATE TABLE IF NOT EXISTS device_statuses (
    device_id text    NOT NULL,
    at_ms     bigint  NOT NULL,
    online    boolean NOT NULL,
    PRIMARY KEY (device_id, at_ms, online)
);
CREATE OR REPLACE VIEW device_stats AS
WITH ordered AS (
    SELECT device_id, status, song, sampled_at_ms,
           lag(status) OVER w AS previous_status,
           lag(song) OVER w AS previous_song,
           lead(sampled_at_ms) OVER w AS next_at_ms
    FROM device_states
    WINDOW w AS (PARTITION BY device_id ORDER BY version)
), figures AS (
    SELECT device_id,
           count(*) AS states,
           count(*) FILTER (
               WHERE status = 'play'
                 AND (previous_status IS DISTINCT FROM 'play' OR song IS DISTINCT FROM previous_song)
           ) AS plays,
           coalesce(sum(next_at_ms - sampled_at_ms) FILTER (WHERE status = 'play' AND next_at_ms IS NOT NULL), 0)
               AS listening_ms,
           max(sampled_at_ms) AS last_state_at_ms
    FROM ordered
    GROUP BY device_id
)
SELECT f.device_id, f.states, f.plays, f.listening_ms,
       greatest(f.last_state_at_ms, (SELECT max(s.at_ms) FROM device_statuses s WHERE s.device_id = f.device_id))
           AS last_seen_ms
FROM figures f;
"""


class AnalyticsError(Exception):
    """The database refused or could not be reached (the message says which and what to do)."""


@dataclass(frozen=True, kw_only=True)
class DeviceStats:
    """What the analytics know about one device.

    Attributes:
        device_id: The device.
        states: State versions stored.
        plays: Times it started playing (from not playing, or a new song while playing).
        listening_ms: Time spent playing, from each playing state to the next state.
        last_seen_ms: Its latest state or connection status (ms since the epoch).
    """

    device_id: str
    states: int
    plays: int
    listening_ms: int
    last_seen_ms: int


class StateStore:
    """States and statuses in PostgreSQL; use as an async context manager.

    Args:
        url: A PostgreSQL connection string (``postgresql://user@host:port/db``).
    """

    def __init__(self, url: str) -> None:
        """Prepare; nothing connects before ``async with``."""
        self._url = url
        self._conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None

    async def __aenter__(self) -> Self:
        """Connect and create the schema if missing.

        Raises:
            AnalyticsError: PostgreSQL cannot be reached or refused the schema.
        """
        try:
            self._conn = await psycopg.AsyncConnection.connect(self._url, autocommit=True)
            async with self._conn.transaction():
                await self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                await self._conn.execute(_SCHEMA)
        except psycopg.Error as exc:
            msg = f"cannot prepare the analytics database ({exc}); check --database-url and that PostgreSQL runs"
            raise AnalyticsError(msg) from exc
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Disconnect."""
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    def _connection(self) -> psycopg.AsyncConnection[tuple[object, ...]]:
        if self._conn is None:
            msg = "the state store is not open: use `async with StateStore(url)`"
            raise AnalyticsError(msg)
        return self._conn

    async def add_state(self, state: DeviceState, *, replica: int, slot: int) -> bool:
        """Store one state; return whether it was new (False: a duplicate, already stored).

        Raises:
            AnalyticsError: The database failed.
        """
        try:
            cursor = await self._connection().execute(
                "INSERT INTO device_states (device_id, version, status, song, sampled_at_ms, elapsed_ms, replica, slot)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (
                    state.device_id,
                    state.version,
                    state.status.value,
                    None if state.song is None else state.song.file,
                    state.sampled_at_ms,
                    state.elapsed_ms,
                    replica,
                    slot,
                ),
            )
        except psycopg.Error as exc:
            raise AnalyticsError(f"cannot store {state.device_id} version {state.version}: {exc}") from exc
        return cursor.rowcount == 1

    async def add_status(self, status: ConnectionStatus) -> bool:
        """Store one connection status; return whether it was new.

        Raises:
            AnalyticsError: The database failed.
        """
        try:
            cursor = await self._connection().execute(
                "INSERT INTO device_statuses (device_id, at_ms, online) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                (status.device_id, status.at_ms, status.online),
            )
        except psycopg.Error as exc:
            raise AnalyticsError(f"cannot store {status.device_id}'s status: {exc}") from exc
        return cursor.rowcount == 1

    async def versions(self, device_id: str) -> list[int]:
        """The state versions stored for ``device_id``, ascending."""
        cursor = await self._connection().execute(
            "SELECT version FROM device_states WHERE device_id = %s ORDER BY version", (device_id,)
        )
        return [int(row[0]) for row in await cursor.fetchall()]  # type: ignore[call-overload]

    async def stats(self, device_id: str) -> DeviceStats | None:
        """The figures of one device, or None when nothing was stored for it."""
        cursor = await self._connection().execute(
            "SELECT device_id, states, plays, listening_ms, last_seen_ms FROM device_stats WHERE device_id = %s",
            (device_id,),
        )
        row = await cursor.fetchone()
        if row is None:
            return None
        device, states, plays, listening, seen = row
        return DeviceStats(
            device_id=str(device),
            states=int(states),  # type: ignore[call-overload]
            plays=int(plays),  # type: ignore[call-overload]
            listening_ms=int(listening),  # type: ignore[call-overload]
            last_seen_ms=int(seen),  # type: ignore[call-overload]
        )
