"""The gmqtt adapter (`amora_sync._mqtt`) against a real broker, and the guard on gmqtt itself.

The adapter reaches into gmqtt in two marked places; these tests fail loudly when an
installed gmqtt no longer matches what they were written for.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

import pytest
from sdk_links import adapter_account
from sdk_waits import stopped

from amora_sync._mqtt import TESTED_GMQTT, MqttLink, _abort_transport, gmqtt_version
from amora_sync._session import Endpoint

WAIT = 15.0


def _link(received: list[str], arrived: asyncio.Event | None = None) -> MqttLink:
    def on_message(topic: str, _payload: bytes, _props: object) -> None:
        received.append(topic)
        if arrived is not None:
            arrived.set()

    return MqttLink(
        client_id="adapter-test",
        username="adapter-test",
        password="pw",
        session_expiry=60,
        keepalive=30,
        on_message=on_message,
        logger=logging.getLogger("test"),
    )


def test_installed_gmqtt_is_in_the_tested_range():
    low, high = TESTED_GMQTT
    assert low <= gmqtt_version() < high, (
        f"gmqtt {gmqtt_version()} is outside the range the SDK's adapter was tested with "
        f"({low} <= v < {high}): re-check the 'gmqtt internals' section of amora_sync/_mqtt.py"
    )


@pytest.mark.services
async def test_link_round_trip_and_abort_reaches_gmqtts_transport(stack):
    broker = stack.broker
    adapter_account(broker)
    received: list[str] = []
    arrived = asyncio.Event()
    link = _link(received, arrived)
    endpoint = Endpoint(host=broker.host, port=broker.app_port)
    assert await link.connect(endpoint, ssl_context=broker.client_context(), limit=WAIT) is False
    granted = await link.subscribe(["amora/adapter/test"], qos=1, limit=WAIT)
    assert granted == (1,)
    assert link.publish("amora/adapter/test", b"x", qos=1)
    async with asyncio.timeout(WAIT):
        await link.wait_inflight_drained()
        await arrived.wait()
    assert received == ["amora/adapter/test"]
    # The marked internal: gmqtt still keeps the transport where the adapter cuts it.
    assert _abort_transport(link._client), "gmqtt moved its transport: fix _mqtt._abort_transport"
    async with asyncio.timeout(WAIT):
        await link.lost.wait()
    assert not link.connected


@pytest.mark.services
async def test_closing_a_link_to_a_stopped_broker_does_not_block(stack):
    broker = stack.broker
    adapter_account(broker)
    link = _link([])
    await link.connect(
        Endpoint(host=broker.host, port=broker.app_port), ssl_context=broker.client_context(), limit=WAIT
    )
    os.kill(broker.pid, signal.SIGSTOP)
    try:
        # A graceful TLS close would wait 30 s for the stopped broker's close_notify.
        async with asyncio.timeout(WAIT):
            await link.close(end_session=True)
    finally:
        os.kill(broker.pid, signal.SIGCONT)
    assert link.lost.is_set()


@pytest.mark.services
async def test_publishes_lost_with_a_broker_session_do_not_use_up_packet_ids(pair_stack):
    primary, standby = pair_stack.brokers
    for broker in (primary, standby):
        adapter_account(broker)
    link = _link([])
    await link.connect(
        Endpoint(host=primary.host, port=primary.app_port), ssl_context=primary.client_context(), limit=WAIT
    )
    # A hung broker: the publishes are never acknowledged (the receive maximum is 20).
    with stopped(primary):
        sent = sum(link.publish("amora/adapter/lost", b"x", qos=1) for _ in range(30))
        link.abort()
        # Failover: the standby has no session of ours; gmqtt drops what was in flight.
        standby_endpoint = Endpoint(host=standby.host, port=standby.app_port)
        assert await link.connect(standby_endpoint, ssl_context=standby.client_context(), limit=WAIT) is False
        # Every packet id is free again: a full window goes out and is acknowledged.
        assert all(link.publish("amora/adapter/after", b"y", qos=1) for _ in range(sent))
        async with asyncio.timeout(WAIT):
            await link.wait_inflight_drained()
        assert await link.probe(limit=WAIT)
        await link.close()
    assert 0 < sent < 30  # the window had filled up
