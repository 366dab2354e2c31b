"""Waits and faults the SDK tests share: the next state a watch delivers, a hung broker."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from typing import TYPE_CHECKING, Any

from sdk_device import WAIT

from amora_sync import DeviceState

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from amora_devtools.broker import BrokerProcess

__all__ = ["next_state", "stopped"]


async def next_state(events: AsyncIterator[Any], *, version: int, device_id: str | None = None) -> DeviceState:
    """The first state from ``events`` at ``version`` or newer (of ``device_id``, if given), within `WAIT`."""
    async with asyncio.timeout(WAIT):
        async for event in events:
            if (
                isinstance(event, DeviceState)
                and event.version >= version
                and (device_id is None or event.device_id == device_id)
            ):
                return event
    raise AssertionError("the watch ended")


@contextlib.contextmanager
def stopped(broker: BrokerProcess) -> Iterator[None]:
    """SIGSTOP the broker (hung: its sockets stay open, nothing answers) until the block ends."""
    os.kill(broker.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(broker.pid, signal.SIGCONT)
