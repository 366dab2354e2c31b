"""Flow-control building blocks: the reconnect policy and the latest-per-key queue."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

from amora_protocol import Backoff

DEFAULT_CONNECT_TIMEOUT = 15.0
"""Seconds, the one default for connecting: each attempt (`ReconnectPolicy.connect_timeout`),
entering `AmoraClient` (its ``connect_timeout``) and the ``amora`` CLI (``--connect-timeout``)."""

K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True, kw_only=True)
class ReconnectPolicy:
    """How the client retries a lost or refused connection.

    Delays follow "exponential backoff with full jitter": attempt ``n`` (from 0)
    waits a uniformly random time in ``[0, min(cap, initial * multiplier**n)]``,
    so thousands of clients that lost the same broker do not come back in step.

    Attributes:
        initial_delay: Upper bound of the first wait, in seconds.
        max_delay: Cap on the upper bound, in seconds.
        multiplier: Growth factor of the upper bound per failed attempt.
        connect_timeout: Bound on one attempt (TCP + TLS + CONNACK), in seconds.
        liveness_interval: After this many seconds without anything from the broker, ask it
            for an answer (an UNSUBSCRIBE round trip through the broker's own loop).
        liveness_timeout: A broker that has not answered within this many seconds is hung
            (stopped, overloaded, cut off): the link is dropped and the next endpoint tried.
            A hung broker is left within ``liveness_interval + liveness_timeout``.
        failback_interval: While on a less preferred endpoint, check a more preferred one
            this often (each wait drawn from 0.5x to 1.5x, so that clients do not move back
            in step) and move back once it accepts a TLS handshake. 0 disables failback.
    """

    initial_delay: float = 0.1
    max_delay: float = 30.0
    multiplier: float = 2.0
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    liveness_interval: float = 1.5
    liveness_timeout: float = 2.0
    failback_interval: float = 30.0

    def __post_init__(self) -> None:
        """Check the values."""
        if self.initial_delay < 0 or self.max_delay < self.initial_delay:
            raise ValueError("need 0 <= initial_delay <= max_delay")
        if self.multiplier < 1:
            raise ValueError("multiplier must be >= 1")
        if self.connect_timeout <= 0:
            raise ValueError("connect_timeout must be positive")
        if self.liveness_interval <= 0 or self.liveness_timeout <= 0:
            raise ValueError("liveness_interval and liveness_timeout must be positive")
        if self.failback_interval < 0:
            raise ValueError("failback_interval must be >= 0 (0: never fail back)")

    def backoff(self) -> Backoff:
        """A fresh full-jitter backoff over this policy's bounds (`amora_protocol.Backoff`)."""
        return Backoff(initial=self.initial_delay, maximum=self.max_delay, multiplier=self.multiplier)


class LatestPerKeyQueue(Generic[K, V]):
    """A bounded async queue that keeps only the latest item per key.

    Policy when an item arrives for a key that is already waiting: the waiting
    item is replaced in place (it keeps its place in line, so a key that
    changes constantly cannot starve the others) and the replacement is
    counted in `superseded`. The queue therefore holds at most one item per
    key; `max_keys` bounds the number of keys, and when a new key would exceed
    it the oldest waiting key is dropped (counted in `dropped`).

    A single consumer is expected; producers never block.
    """

    def __init__(self, *, max_keys: int) -> None:
        """Create an empty queue holding at most `max_keys` keys."""
        if max_keys < 1:
            raise ValueError("max_keys must be >= 1")
        self._items: OrderedDict[K, V] = OrderedDict()
        self._max_keys = max_keys
        # The consumers waiting, each on a future of its own (a cancelled one leaves the others
        # waiting). Awaited directly, not through an `asyncio.Event` or a coroutine of ours:
        # each would add a coroutine per wait, on the path of every state a watch hands out.
        self._waiters: list[asyncio.Future[None]] = []
        self._closed = False
        self.superseded = 0
        self.dropped = 0

    def __len__(self) -> int:
        """Return the number of waiting items."""
        return len(self._items)

    @property
    def closed(self) -> bool:
        """Whether `close` was called."""
        return self._closed

    def put(self, key: K, item: V) -> None:
        """Add or replace the item for `key`; never blocks."""
        if self._closed:
            return
        if key in self._items:
            self._items[key] = item
            self.superseded += 1
        else:
            if len(self._items) >= self._max_keys:
                self._items.popitem(last=False)
                self.dropped += 1
            self._items[key] = item
        self._wake()

    def close(self) -> None:
        """Wake the consumer; `get` then drains what is left and raises `QueueClosedError`."""
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    def arrival(self) -> asyncio.Future[None]:
        """A future done at the next `put` or `close` (then `get_nowait` again): ``await queue.arrival()``."""
        waiters = self._waiters
        for waiter in waiters:
            if waiter.done():  # its consumer was cancelled while waiting (a timeout around anext)
                waiters[:] = [w for w in waiters if not w.done()]
                break
        waiter = asyncio.get_running_loop().create_future()
        waiters.append(waiter)
        return waiter

    def get_nowait(self) -> V | None:
        """Return the oldest waiting item, or None when empty."""
        if not self._items:
            return None
        _, item = self._items.popitem(last=False)
        return item

    async def get(self) -> V:
        """Wait for and return the oldest waiting item.

        Raises:
            QueueClosedError: The queue is closed and empty.
        """
        while True:
            item = self.get_nowait()
            if item is not None:
                return item
            if self._closed:
                raise QueueClosedError
            await self.arrival()


class QueueClosedError(Exception):
    """Raised internally by `LatestPerKeyQueue.get` once closed and drained."""
