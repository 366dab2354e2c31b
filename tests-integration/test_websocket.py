"""The Python SDK over ``wss://``: the real stack's websocket listeners (TLS, mosquitto), real agents.

The session lists both kinds of endpoint for each broker; ``transport="wss"`` makes the
SDK use only the ``wss://`` ones (paho-mqtt underneath), so every test here would fail if
anything of the way fell back to ``mqtts``. The error cases run on both transports and
must come out the same.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Literal

import pytest

from amora_devtools.broker import dynsec
from amora_devtools.pki import DevPKI
from amora_devtools.stack import Stack
from amora_protocol import PlaybackStatus
from amora_sync import AmoraClient, ConnectError, ConnectionInfo, ConnectionState, DeviceState, Pause, Play

WAIT_S = 15.0
Transport = Literal["mqtts", "wss"]
TRANSPORTS: list[Transport] = ["mqtts", "wss"]


@pytest.fixture(scope="module")
def ws_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Primary + standby, alice with player-1 (MPD) and player-2; nothing restarts behind the tests."""
    folder = tmp_path_factory.mktemp("wss")
    with Stack(folder / "stack", players=2, users={"alice": (0, 1)}, supervise=False) as running:
        yield running


async def _state(client: AmoraClient, device: str, predicate: Any) -> DeviceState:
    async with asyncio.timeout(WAIT_S), client.watch(device) as events:
        async for event in events:
            if isinstance(event, DeviceState) and predicate(event):
                return event
    raise AssertionError("the watch ended")


async def _connected_to(changes: AsyncIterator[ConnectionInfo], *, port: int) -> None:
    async with asyncio.timeout(WAIT_S):
        async for info in changes:
            if info.state is ConnectionState.CONNECTED and info.endpoint is not None and info.endpoint.port == port:
                return
    raise AssertionError(f"the connection changes ended before the client was connected to port {port}")


async def test_watch_and_command_a_real_agent_over_wss(ws_stack: Stack, sdk_client: Any) -> None:
    async with sdk_client(ws_stack, "alice", transport="wss") as client:
        endpoint = client.connection.endpoint
        assert endpoint is not None
        assert endpoint.transport == "wss"
        assert endpoint.port == ws_stack.brokers[0].ws_port
        for device in ("player-1", "player-2"):
            first = await _state(client, device, lambda _s: True)  # the retained state
            response = await client.command(device, Play(), timeout=WAIT_S)
            assert response.status.value == "succeeded"
            assert response.device_id == device
            await _state(client, device, lambda s, v=first.version: s.version > v and s.status is PlaybackStatus.PLAY)
            await client.command(device, Pause(), timeout=WAIT_S)
            await _state(client, device, lambda s: s.status is PlaybackStatus.PAUSE)
        assert client.stats.invalid == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_broker_certificate_from_another_ca_fails_at_once(
    ws_stack: Stack, sdk_client: Any, tmp_path: Path, transport: Transport
) -> None:
    other = DevPKI.create(tmp_path / "other-pki")
    # Every endpoint fails verification: entering fails with that reason (below), not with the
    # generous timeout's.
    with pytest.raises(ConnectError) as caught:
        async with sdk_client(
            ws_stack, "alice", transport=transport, ssl_context=other.client_context(), connect_timeout=120
        ):
            pass
    message = str(caught.value)
    assert message.startswith("no broker endpoint could be trusted: the certificate of broker ")
    assert "failed verification (unable to get local issuer certificate)" in message
    assert "check that ca_file is the CA that signed the broker's certificate" in message
    assert ("wss://localhost:" in message) is (transport == "wss")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_refused_credential_is_exchanged_again_on_both_transports(
    ws_stack: Stack, sdk_client: Any, transport: Transport
) -> None:
    async with sdk_client(ws_stack, "alice", transport=transport) as client:
        first = client.session_id
        # As at expiry: the session's broker client goes (mosquitto drops it at once), the
        # broker refuses its credential, and the SDK exchanges the token for a new session.
        for broker in ws_stack.brokers:
            dynsec(broker, [{"command": "deleteClient", "username": first}])
        async with asyncio.timeout(WAIT_S):
            async for info in client.connection_changes():
                if info.state is ConnectionState.CONNECTED and client.session_id != first:
                    break
        assert client.connection.endpoint is not None
        assert client.connection.endpoint.transport == transport
        response = await client.command("player-2", Pause(), timeout=WAIT_S)
        assert response.status.value == "succeeded"


async def test_a_hung_primary_is_left_for_the_standby_over_wss(ws_stack: Stack, sdk_client: Any) -> None:
    """SIGSTOP: the TCP connection stays open, only the SDK's probe (an UNSUBSCRIBE over wss) notices."""
    primary, standby = ws_stack.brokers
    async with sdk_client(ws_stack, "alice", transport="wss") as client:
        assert client.connection.endpoint is not None
        assert client.connection.endpoint.port == primary.ws_port
        changes = client.connection_changes()
        primary.signal(signal.SIGSTOP)
        try:
            await _connected_to(changes, port=standby.ws_port)
            # The agents leave the hung primary too; a command reaches player-2 through the standby.
            response = await client.command("player-2", Pause(), timeout=WAIT_S)
            assert response.status.value == "succeeded"
        finally:
            primary.signal(signal.SIGCONT)


async def test_failover_to_the_standby_over_wss_and_back(ws_stack: Stack, sdk_client: Any) -> None:
    """Last in the module: it kills the primary, and leaves it running again."""
    primary, standby = ws_stack.brokers
    async with sdk_client(ws_stack, "alice", transport="wss") as client:
        assert client.connection.endpoint is not None
        assert client.connection.endpoint.port == primary.ws_port
        before = await _state(client, "player-2", lambda _s: True)
        changes = client.connection_changes()
        primary.kill()
        try:
            await _connected_to(changes, port=standby.ws_port)
            assert client.connection.endpoint is not None
            assert client.connection.endpoint.transport == "wss"
            # The agents failed over too; a command reaches player-2 through the standby.
            response = await client.command("player-2", Play(), timeout=WAIT_S)
            assert response.status.value == "succeeded"
            await _state(client, "player-2", lambda s: s.version > before.version and s.status is PlaybackStatus.PLAY)
        finally:
            primary.restart()
            standby.wait_bridged()
