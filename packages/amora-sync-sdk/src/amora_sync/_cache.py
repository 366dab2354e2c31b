"""The last verified state and status per device, and their fan-out to watches.

The cache sees only verified messages (from `_inbound`); it orders states by version,
keeps the newest per device and offers each new one to the watches that want it. Each
`Watch` has its own bounded latest-per-key queue, so a slow consumer never blocks the
others or the connection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Self

from amora_protocol import ConnectionStatus, DeviceState
from amora_sync._flow import LatestPerKeyQueue

if TYPE_CHECKING:
    from collections.abc import Iterable

    from amora_sync._stats import ClientStats

__all__ = ["DeviceCache", "Watch", "WatchEvent"]

WatchEvent = DeviceState | ConnectionStatus
"""What a watch yields: a verified state or a verified connection status."""

_STATUS_KEY = "/connection"  # a status waits under "{device_id}/connection", a state under its device id


class Watch:
    """A stream of verified `DeviceState` and `ConnectionStatus` for some devices.

    Use it as ``async with client.watch(...) as events: async for event in events``
    (or directly with ``async for``). It yields the current state first, then
    only newer versions. Its queue holds at most one waiting state and one
    waiting status per device: when the consumer is slower than the devices,
    intermediate versions are skipped (counted in `superseded`) and the newest
    is delivered, so neither memory nor other watchers suffer.
    """

    def __init__(
        self,
        cache: DeviceCache,
        device_ids: frozenset[str] | None,
        *,
        include_connection: bool,
        max_devices: int,
    ) -> None:
        """Create the watch (use `AmoraClient.watch`)."""
        self._cache = cache
        self.device_ids = device_ids
        self.include_connection = include_connection
        self._queue: LatestPerKeyQueue[str, WatchEvent] = LatestPerKeyQueue(max_keys=2 * max_devices)
        self._registered = False

    @property
    def superseded(self) -> int:
        """How many waiting events were replaced by newer ones (slow consumer)."""
        return self._queue.superseded

    def wants(self, device_id: str) -> bool:
        """Whether this watch covers `device_id`."""
        return self.device_ids is None or device_id in self.device_ids

    def offer(self, event: WatchEvent) -> None:
        """Queue `event` (called by the cache; never blocks)."""
        # Keyed by a string, not a (device, kind) tuple: a tuple is a GC-tracked object that
        # would wait in the queue with every state. A device id never holds a "/".
        if isinstance(event, DeviceState):
            self._queue.put(event.device_id, event)
        else:
            self._queue.put(event.device_id + _STATUS_KEY, event)

    def _register(self) -> None:
        if not self._registered:
            self._registered = True
            self._cache.add_watch(self)

    def close(self) -> None:
        """Stop the watch: iteration ends after what is already queued."""
        self._queue.close()
        self._cache.remove_watch(self)

    async def __aenter__(self) -> Self:
        """Start watching."""
        self._register()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        """Stop watching."""
        self.close()

    def __aiter__(self) -> Self:
        """Return self (registering if needed)."""
        self._register()
        return self

    async def __anext__(self) -> WatchEvent:
        """Return the next event."""
        # `LatestPerKeyQueue.get` inlined: its coroutine would wait with every consumer.
        queue = self._queue
        while True:
            event = queue.get_nowait()
            if event is not None:
                return event
            if queue.closed:
                raise StopAsyncIteration
            await queue.arrival()


class DeviceCache:
    """The newest verified state and status of each device, fanned out to watches."""

    def __init__(self, *, stats: ClientStats) -> None:
        """Create an empty cache that counts into `stats`."""
        self._stats = stats
        self._states: dict[str, DeviceState] = {}
        self._statuses: dict[str, ConnectionStatus] = {}
        self._watches: set[Watch] = set()
        # The watches as a tuple, rebuilt when one comes or goes (rare): each state is offered
        # by iterating it, with no per-state copy of the set.
        self._fanout: tuple[Watch, ...] = ()
        self.accepting = True
        """False once closed: a watch registered then ends at once."""

    def state(self, device_id: str) -> DeviceState | None:
        """The newest verified state of `device_id`, or None."""
        return self._states.get(device_id)

    def status(self, device_id: str) -> ConnectionStatus | None:
        """The newest verified connection status of `device_id`, or None."""
        return self._statuses.get(device_id)

    def on_state(self, state: DeviceState) -> None:
        """Keep `state` if it is newer than the one held and offer it to the watches."""
        held = self._states.get(state.device_id)
        if held is not None and state.version <= held.version:
            self._stats.stale += 1
            return
        self._states[state.device_id] = state
        self._stats.delivered += 1
        for watch in self._fanout:
            if watch.wants(state.device_id):
                watch.offer(state)

    def on_status(self, status: ConnectionStatus) -> bool:
        """Keep `status` unless older than the one held; offer it to the watches that want it.

        Returns:
            Whether it was kept (False: a repeat or an older status).
        """
        # A status carries the device's version counter: its Last Will is numbered when the
        # connection is made, and the online status right after gets a higher number, so a
        # stale Will (late from a resumed broker or across the bridge) is older than the
        # online status and dropped, never showing a live device offline. Statuses without
        # a version (older agents) keep the old rule: last one wins.
        held = self._statuses.get(status.device_id)
        if held == status or (
            held is not None
            and held.version is not None
            and status.version is not None
            and status.version < held.version
        ):
            self._stats.stale += 1
            return False
        self._statuses[status.device_id] = status
        self._stats.delivered += 1
        for watch in self._fanout:
            if watch.include_connection and watch.wants(status.device_id):
                watch.offer(status)
        return True

    def retain_only(self, device_ids: Iterable[str]) -> None:
        """Forget the devices not in `device_ids` (the session no longer covers them)."""
        keep = set(device_ids)
        for device_id in set(self._states) - keep:
            del self._states[device_id]
        for device_id in set(self._statuses) - keep:
            del self._statuses[device_id]

    def add_watch(self, watch: Watch) -> None:
        """Register `watch` and offer it what is known now (the current state first)."""
        if not self.accepting:
            watch.close()
            return
        self._watches.add(watch)
        self._fanout = tuple(self._watches)
        for device_id, state in list(self._states.items()):
            if watch.wants(device_id):
                watch.offer(state)
        if watch.include_connection:
            for device_id, status in list(self._statuses.items()):
                if watch.wants(device_id):
                    watch.offer(status)

    def remove_watch(self, watch: Watch) -> None:
        """Unregister `watch` (idempotent)."""
        self._watches.discard(watch)
        self._fanout = tuple(self._watches)

    def close(self) -> None:
        """End every watch; later ones end at once."""
        self.accepting = False
        for watch in list(self._watches):
            watch.close()
