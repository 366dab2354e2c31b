"""The service's MQTT links never let gmqtt reconnect behind their back (real mosquitto).

Both links (dynsec control, session-list publisher) notice a lost connection and open a
fresh client on their next use. gmqtt decides on every loss whether to reconnect the old
client itself; with its reconnect switched off it refuses at once and logs that it did.
A setting that still allows one retry (``reconnect_retries: 0``) logs nothing and
reconnects after its delay, leaving a second connection for the same account.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import TYPE_CHECKING

import pytest
import structlog

from amora_authz._control import DynsecClient
from amora_authz._sessionlists import PUBLISHER_ACCOUNT, _BrokerLink
from amora_authz.testing import broker_endpoint

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from amora_devtools import BrokerProcess

pytestmark = pytest.mark.services

WAIT = 5.0  # bound for every wait on a broker event (gmqtt's own reconnect delay is 6 s)


class _Refusals(logging.Handler):
    """Counts gmqtt's "will not reconnect" errors, as an awaitable count."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.count = 0
        self._changed = asyncio.Event()
        self._loop = asyncio.get_running_loop()

    def emit(self, record: logging.LogRecord) -> None:
        if str(record.msg).startswith("[Client] max number of failed connection attempts"):
            self._loop.call_soon_threadsafe(self._bump)

    def _bump(self) -> None:
        self.count += 1
        self._changed.set()

    async def reach(self, count: int) -> None:
        async with asyncio.timeout(WAIT):
            while self.count < count:
                self._changed.clear()
                await self._changed.wait()


@pytest.fixture
async def refusals() -> AsyncIterator[_Refusals]:
    handler = _Refusals()
    gmqtt_logger = logging.getLogger("gmqtt")
    gmqtt_logger.addHandler(handler)
    try:
        yield handler
    finally:
        gmqtt_logger.removeHandler(handler)


async def test_a_lost_link_is_never_reconnected_by_gmqtt(broker: BrokerProcess, refusals: _Refusals) -> None:
    endpoint = broker_endpoint(broker)
    logger = structlog.get_logger()
    control = DynsecClient(endpoint, logger=logger, timeout_s=WAIT)
    password = secrets.token_urlsafe(16)
    await control.execute_checked([{"command": "createClient", "username": PUBLISHER_ACCOUNT, "password": password}])
    publisher = _BrokerLink(endpoint, password=password, logger=logger, timeout_s=WAIT)
    first = await publisher.client()
    assert first is not None

    # Both connections drop at once; each gmqtt client must refuse to reconnect itself.
    await asyncio.to_thread(broker.restart)
    await refusals.reach(2)

    # The links themselves reconnect on their next use, with fresh clients.
    assert await control.execute([{"command": "getClient", "username": PUBLISHER_ACCOUNT}])
    second = await publisher.client()
    assert second is not None
    assert second is not first
    assert publisher.generation == 2
    assert refusals.count == 2
    await publisher.close()
    await control.close()
