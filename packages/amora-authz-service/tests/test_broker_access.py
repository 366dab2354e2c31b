"""What the broker enforces once the service has reconciled it (real mosquitto, TLS, dynsec).

Apps connect on the password listener with the credential from ``POST /v1/sessions``;
devices connect on the mTLS listener with the certificate the service issued for
their CSR (`authz_broker_harness`). Reconciliation, several brokers and background loops:
``test_broker_reconcile.py``.
"""

from __future__ import annotations

import asyncio

import pytest
from authz_broker_harness import (
    NOT_AUTHORISED,
    WAIT,
    Harness,
    assert_delivered,
    assert_dropped,
    next_live,
    publish,
    receive,
    subscribe,
    watch_everything,
)

from amora_devtools import MqttClient, MqttError, MqttRefused, client_ssl_context
from amora_protocol import (
    commands_topic,
    connection_topic,
    responses_topic,
    state_topic,
)

pytestmark = pytest.mark.services


async def test_a_user_reaches_exactly_their_devices(harness: Harness) -> None:
    await harness.register("player-a", "alice")
    await harness.register("player-b", "bob")
    alice = await harness.app(await harness.session("alice"))
    device_a = await harness.device("player-a")
    watcher = await watch_everything(harness)
    try:
        for topic in (
            state_topic("player-a"),
            connection_topic("player-a"),
            responses_topic("player-a"),
        ):
            assert await subscribe(alice, topic) < 0x80, topic
        for topic in (
            state_topic("player-b"),
            commands_topic("player-a"),  # apps never read commands
            "amora/devices/+/state",
            "amora/devices/#",
            "#",
            "$CONTROL/dynamic-security/v1/response",
        ):
            assert await subscribe(alice, topic) == NOT_AUTHORISED, topic
        # Commands: to her device yes, to another user's device no; no device topics.
        own_commands = commands_topic("player-a")
        await assert_delivered(watcher, alice, own_commands, b"cmd")
        await assert_dropped(watcher, alice, commands_topic("player-b"), b"cmd", marker=own_commands)
        await assert_dropped(watcher, alice, state_topic("player-a"), b"forged", marker=own_commands)
        await assert_dropped(watcher, alice, "$CONTROL/dynamic-security/v1", b'{"commands":[]}', marker=own_commands)

        # The device publishes its own topics and reads its commands; alice sees them.
        assert await subscribe(device_a, commands_topic("player-a")) < 0x80
        assert await subscribe(device_a, commands_topic("player-b")) == NOT_AUTHORISED
        await assert_dropped(watcher, device_a, state_topic("player-b"), b"forged", marker=responses_topic("player-a"))
        await publish(device_a, state_topic("player-a"), b"state-1", retain=True)
        marker = await receive(alice)  # the marker above, on a topic she reads
        assert marker.topic == responses_topic("player-a")
        message = await receive(alice)
        assert (message.topic, message.payload) == (state_topic("player-a"), b"state-1")
        await publish(alice, commands_topic("player-a"), b"play")
        command = await receive(device_a)
        assert (command.topic, command.payload) == (commands_topic("player-a"), b"play")
    finally:
        alice.disconnect()
        device_a.disconnect()
        watcher.disconnect()

    # Bob cannot read alice's device, even retained state.
    bob = await harness.app(await harness.session("bob"))
    try:
        assert await subscribe(bob, state_topic("player-a")) == NOT_AUTHORISED
    finally:
        bob.disconnect()


async def test_credentials_are_bound_to_the_session(harness: Harness) -> None:
    session = await harness.session("alice")
    with pytest.raises(MqttRefused):
        await harness.app(session, client_id="someone-else")
    wrong = {**session, "broker": {**session["broker"], "password": "not-the-password"}}
    with pytest.raises(MqttRefused):
        await harness.app(wrong)


async def test_unlinking_cuts_a_live_subscription(harness: Harness) -> None:
    await harness.register("player-a", "alice")
    await harness.register("player-c", "alice")
    session = await harness.session("alice")
    # A persistent session: the session (and its subscription) survives the broker's
    # kick, and delivery must stop all the same (the deny-by-default receive ACL, and
    # mosquitto re-checking subscriptions, both see to it).
    alice = await harness.app(session, clean_start=False, session_expiry=300)
    device_a = await harness.device("player-a")
    device_c = await harness.device("player-c")
    try:
        assert await subscribe(alice, state_topic("player-a")) < 0x80
        assert await subscribe(alice, state_topic("player-c")) < 0x80
        await publish(device_a, state_topic("player-a"), b"before")
        assert (await receive(alice)).payload == b"before"

        kicked = asyncio.create_task(asyncio.to_thread(alice.closed_by_broker, timeout=WAIT))
        admin = await harness.svc.auth("admin")
        response = await harness.svc.http.delete("/v1/admin/users/alice/devices/player-a", headers=admin)
        assert response.status_code == 204
        assert await kicked, "the broker did not disconnect the unlinked user"

        again = await harness.app(session, clean_start=False, session_expiry=300)
        try:
            assert again.session_present
            # Ordered after player-a's publish (acknowledged first): once c's arrives,
            # a's would have arrived before it if it were delivered at all.
            await publish(device_a, state_topic("player-a"), b"after")
            await publish(device_c, state_topic("player-c"), b"marker")
            message = await receive(again)
            assert (message.topic, message.payload) == (state_topic("player-c"), b"marker")
            assert await subscribe(again, state_topic("player-a")) == NOT_AUTHORISED
        finally:
            again.disconnect()
    finally:
        alice.disconnect()
        device_a.disconnect()
        device_c.disconnect()


async def test_deleting_a_session_kicks_its_connection(harness: Harness) -> None:
    session = await harness.session("alice")
    alice = await harness.app(session)
    try:
        kicked = asyncio.create_task(asyncio.to_thread(alice.closed_by_broker, timeout=WAIT))
        response = await harness.svc.http.delete(
            f"/v1/sessions/{session['session_id']}", headers=await harness.svc.auth("alice")
        )
        assert response.status_code == 204
        assert await kicked
    finally:
        alice.disconnect()
    with pytest.raises(MqttRefused):
        await harness.app(session)


async def test_expired_sessions_lose_their_broker_client(harness: Harness) -> None:
    session = await harness.session("alice")
    alice = await harness.app(session)
    service = harness.svc.runtime.service
    try:
        kicked = asyncio.create_task(asyncio.to_thread(alice.closed_by_broker, timeout=WAIT))
        real_clock = service._clock_ms
        service._clock_ms = lambda: real_clock() + 2 * service.session_ttl_s * 1000
        assert await service.expire_sessions() == [session["session_id"]]
        assert await kicked
    finally:
        alice.disconnect()
    with pytest.raises(MqttRefused):
        await harness.app(session)


async def test_revoking_a_device_kicks_it_and_the_crl_keeps_it_out(harness: Harness) -> None:
    await harness.register("player-r", "alice")
    device = await harness.device("player-r")
    try:
        assert await subscribe(device, commands_topic("player-r")) < 0x80
        kicked = asyncio.create_task(asyncio.to_thread(device.closed_by_broker, timeout=WAIT))
        response = await harness.svc.http.post(
            "/v1/admin/devices/player-r/revoke", headers=await harness.svc.auth("admin")
        )
        assert response.status_code == 200
        serials = [int(s) for s in response.json()["revoked_serials"]]
        assert len(serials) == 1
        assert serials[0] in harness.pki.revoked_serials()
        assert await kicked
    finally:
        device.disconnect()

    # Before the broker reloads the CRL the certificate still completes a handshake,
    # but the broker account is gone: default ACL, nothing allowed.
    device = await harness.device("player-r")
    watcher = await watch_everything(harness)
    try:
        assert await subscribe(device, commands_topic("player-r")) == NOT_AUTHORISED
        await publish(device, state_topic("player-r"), b"x")
        # Published after the device's PUBACK, so after the broker handled its publish: the
        # watcher would have received that first had it been delivered.
        await publish(watcher, "amora/harness/marker", b"after")
        message = await next_live(watcher)
        assert (message.topic, message.payload) == ("amora/harness/marker", b"after")
    finally:
        device.disconnect()
        watcher.disconnect()

    await asyncio.to_thread(harness.broker.reload)
    with pytest.raises(MqttError):
        await harness.device("player-r")
    # The user's sessions lost it too.
    session = await harness.session("alice")
    assert session["devices"] == []


async def test_sessions_work_over_websockets_too(harness: Harness) -> None:
    await harness.register("player-w", "alice")
    session = await harness.session("alice")
    assert f"wss://{harness.broker.host}:{harness.broker.ws_port}/mqtt" in session["broker"]["endpoints"]
    client = await asyncio.to_thread(
        MqttClient.connect,
        harness.broker.host,
        harness.broker.ws_port,
        ssl_context=client_ssl_context(harness.broker.ca_file),
        client_id=session["broker"]["client_id"],
        username=session["broker"]["username"],
        password=session["broker"]["password"],
        websocket=True,
        timeout=WAIT,
    )
    try:
        assert await subscribe(client, state_topic("player-w")) < 0x80
        assert await subscribe(client, "amora/#") == NOT_AUTHORISED
    finally:
        client.disconnect()
