"""The paho adapter (`amora_sync._websocket`) against the real wss listener of a real broker.

Each test drives `WebSocketLink` and, where the behaviour must match, `MqttLink` too, through
the same `Link` calls: the rest of the SDK cannot tell them apart. The installed paho is the
workspace's (1.6, pinned by azure-iot-device); ``test_the_adapter_works_with_paho_2`` runs
this file again in a child interpreter with paho-mqtt 2.x first on its path.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sdk_links import adapter_account
from sdk_waits import stopped

from amora_devtools.broker import dynsec
from amora_devtools.pki import DevPKI
from amora_sync._link import Link, LinkError
from amora_sync._mqtt import MqttLink
from amora_sync._session import Endpoint
from amora_sync._websocket import TESTED_PAHO, WebSocketLink, paho_version

WAIT = 15.0
ROOT = Path(__file__).resolve().parents[3]
PAHO2_DIR = ROOT / ".cache" / "paho-mqtt-2"  # tools/dev installs paho-mqtt 2.x here
_PAHO2_ENV = "AMORA_TEST_PAHO2"
TOPIC = "amora/adapter/test"


def _wss(broker) -> Endpoint:
    # The broker's certificate names localhost (its wss listener is bound to `lo`).
    return Endpoint(host="localhost", port=broker.ws_port, transport="wss", path="/mqtt")


def _mqtts(broker) -> Endpoint:
    return Endpoint(host=broker.host, port=broker.app_port)


def _link(kind: type, received: list[tuple[str, bytes, dict[str, Any]]] | None = None, **overrides) -> Link:
    arrived = overrides.pop("arrived", None)

    def on_message(topic: str, payload: bytes, props: Any) -> None:
        if received is not None:
            received.append((topic, payload, dict(props)))
        if arrived is not None:
            arrived.set()

    settings = {
        "client_id": "adapter-test",
        "username": "adapter-test",
        "password": "pw",
        "session_expiry": 60,
        "keepalive": 30,
        "on_message": on_message,
        "logger": logging.getLogger("test"),
    }
    link: Link = kind(**{**settings, **overrides})
    return link


def test_installed_paho_is_in_the_tested_range():
    low, high = TESTED_PAHO
    assert low <= paho_version() < high, f"paho-mqtt {paho_version()} is outside {low} <= v < {high}"
    if os.environ.get(_PAHO2_ENV):
        assert paho_version() >= (2,), "the paho 2 run imported another paho"


@pytest.mark.services
async def test_round_trip_with_mqtt5_properties_in_gmqtts_shape(stack):
    broker = stack.broker
    adapter_account(broker)
    received: list[tuple[str, bytes, dict[str, Any]]] = []
    arrived = asyncio.Event()
    link = _link(WebSocketLink, received, arrived=arrived)
    assert await link.connect(_wss(broker), ssl_context=broker.client_context(), limit=WAIT) is False
    assert await link.subscribe([TOPIC, "amora/adapter/other"], qos=1, limit=WAIT) == (1, 1)
    assert link.publish(
        TOPIC,
        b"\x00payload",
        qos=1,
        content_type="application/vnd.amora+msgpack",
        response_topic="amora/adapter/answers",
        correlation_data=b"cmd-1",
        message_expiry_interval=30,
        user_property=("k", "v"),
    )
    async with asyncio.timeout(WAIT):
        await link.wait_inflight_drained()
        await arrived.wait()
    topic, payload, props = received[0]
    assert (topic, payload) == (TOPIC, b"\x00payload")
    # What `_inbound` and `_outbox` read, exactly as gmqtt hands it over.
    assert props["content_type"] == ["application/vnd.amora+msgpack"]
    assert props["response_topic"] == ["amora/adapter/answers"]
    assert props["correlation_data"] == [b"cmd-1"]
    assert props["user_property"] == [("k", "v")]
    assert 0 < props["message_expiry_interval"][0] <= 30
    assert await link.probe(limit=WAIT)
    await link.close()
    assert not link.connected
    # The persistent session (clean start off, session expiry 60 s) is there on return.
    again = _link(WebSocketLink)
    assert await again.connect(_wss(broker), ssl_context=broker.client_context(), limit=WAIT) is True
    await again.close(end_session=True)


@pytest.mark.services
async def test_a_dropped_connection_sets_lost(stack):
    broker = stack.broker
    adapter_account(broker)
    link = _link(WebSocketLink)
    await link.connect(_wss(broker), ssl_context=broker.client_context(), limit=WAIT)
    # The broker kicks the client (dynsec disconnects a deleted client at once).
    dynsec(broker, [{"command": "deleteClient", "username": "adapter-test"}])
    async with asyncio.timeout(WAIT):
        await link.lost.wait()
    assert not link.connected
    assert await link.probe(limit=WAIT) is False
    with pytest.raises(LinkError, match="not connected"):
        await link.subscribe([TOPIC], qos=1, limit=WAIT)


@pytest.mark.services
async def test_closing_a_link_to_a_stopped_broker_does_not_block(stack):
    broker = stack.broker
    adapter_account(broker)
    link = _link(WebSocketLink)
    await link.connect(_wss(broker), ssl_context=broker.client_context(), limit=WAIT)
    with stopped(broker):
        assert await link.probe(limit=0.5) is False  # hung: no UNSUBACK
        async with asyncio.timeout(WAIT):
            await link.close(end_session=True)
    assert link.lost.is_set()


@pytest.mark.services
async def test_a_hung_broker_costs_one_time_limit_and_the_window_frees_on_failover(pair_stack):
    primary, standby = pair_stack.brokers
    for broker in (primary, standby):
        adapter_account(broker)
    link = _link(WebSocketLink)
    await link.connect(_wss(primary), ssl_context=primary.client_context(), limit=WAIT)
    with stopped(primary):
        # Unacknowledged QoS 1 publishes fill the broker's receive maximum (20): then refused.
        sent = 0
        while link.publish("amora/adapter/lost", b"x", qos=1):
            sent += 1
            assert sent <= 100, "the receive window was never enforced"
        assert sent == 20
        # Connecting to the stopped broker: TCP is accepted, TLS never completes.
        with pytest.raises(LinkError, match="cannot connect"):
            await link.connect(_wss(primary), ssl_context=primary.client_context(), limit=0.5)
        assert await link.connect(_wss(standby), ssl_context=standby.client_context(), limit=WAIT) is False
        assert all(link.publish("amora/adapter/after", b"y", qos=1) for _ in range(sent))
        async with asyncio.timeout(WAIT):
            await link.wait_inflight_drained()
        await link.close()


@pytest.mark.services
@pytest.mark.parametrize("kind", [MqttLink, WebSocketLink])
async def test_a_certificate_from_another_ca_is_untrusted_with_the_same_message(stack, tmp_path, kind):
    broker = stack.broker
    adapter_account(broker)
    other = DevPKI.create(tmp_path / "other-pki")
    endpoint = _wss(broker) if kind is WebSocketLink else _mqtts(broker)
    with pytest.raises(LinkError) as caught:
        await _link(kind).connect(endpoint, ssl_context=other.client_context(), limit=WAIT)
    assert caught.value.untrusted
    assert str(caught.value) == (
        f"the certificate of broker {endpoint} failed verification (unable to get local issuer certificate); "
        "check that ca_file is the CA that signed the broker's certificate"
    )


@pytest.mark.services
@pytest.mark.parametrize("kind", [MqttLink, WebSocketLink])
async def test_a_wrong_password_is_a_credential_refusal(stack, kind):
    broker = stack.broker
    adapter_account(broker)
    endpoint = _wss(broker) if kind is WebSocketLink else _mqtts(broker)
    with pytest.raises(LinkError) as caught:
        await _link(kind, password="wrong").connect(endpoint, ssl_context=broker.client_context(), limit=WAIT)
    assert caught.value.credential_refused
    assert caught.value.reason_code == 135
    assert not caught.value.untrusted


@pytest.mark.services
async def test_no_websocket_listener_there_is_a_connection_failure(stack):
    broker = stack.broker
    # The app listener speaks MQTT, not HTTP: the websocket upgrade fails, quickly.
    endpoint = Endpoint(host="localhost", port=broker.app_port, transport="wss", path="/mqtt")
    with pytest.raises(LinkError, match="cannot connect") as caught:
        await _link(WebSocketLink).connect(endpoint, ssl_context=broker.client_context(), limit=WAIT)
    assert not caught.value.untrusted
    assert caught.value.reason_code is None


def test_the_adapter_works_with_paho_2():
    """This file again, in a child interpreter whose first path entry holds paho-mqtt 2.x."""
    if os.environ.get(_PAHO2_ENV):
        pytest.skip("this is the paho 2 run itself")
    if not (PAHO2_DIR / "paho" / "mqtt" / "client.py").is_file():
        pytest.fail(f"paho-mqtt 2.x is missing from {PAHO2_DIR}: run tools/dev test (it installs it there)")
    env = {
        **os.environ,
        _PAHO2_ENV: "1",
        "PYTHONPATH": os.pathsep.join([str(PAHO2_DIR), os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(  # noqa: S603 - this interpreter, this file
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            # The harness's own paho client (amora_devtools) is written for 1.6's callbacks,
            # which 2.x still runs with this warning; the adapter uses 2.x's own.
            "-W",
            "ignore:Callback API version 1 is deprecated:DeprecationWarning",
            __file__,
        ],
        cwd=Path(__file__).parent,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert " passed" in result.stdout.splitlines()[-1]
