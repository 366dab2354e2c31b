"""The SDK against the real broker (TLS + dynsec), a signing device and the session API."""

import asyncio
import json

import pytest
from sdk_waits import next_state

from amora_devtools import MqttClient, client_ssl_context
from amora_devtools.broker import dynsec
from amora_protocol import Codec, Sender, SigningKey, now_ms, state_topic
from amora_sync import (
    AuthenticationError,
    ChangeVolume,
    ClientClosedError,
    CommandExpiredError,
    CommandRejectedError,
    CommandStatus,
    ConnectError,
    ConnectionState,
    ConnectionStatus,
    DeviceState,
    InvalidCommandError,
    InvalidDeviceIdError,
    OutboxFullError,
    Pause,
    Ping,
    ReconnectPolicy,
    RejectReason,
    SetVolume,
    UnknownDeviceError,
)

pytestmark = pytest.mark.services

WAIT = 15.0


async def wait_for_state(client, *, endpoint_port: int | None = None, state=ConnectionState.CONNECTED):
    async with asyncio.timeout(WAIT):
        async for info in client.connection_changes():
            if info.state is state and (endpoint_port is None or info.endpoint.port == endpoint_port):
                return info
    raise AssertionError("connection changes ended")


async def wait_for_new_session(client, old_session: str) -> None:
    async with asyncio.timeout(WAIT):
        async for info in client.connection_changes():
            if info.state is ConnectionState.CONNECTED and client.session_id != old_session:
                return


async def test_watch_sees_retained_state_first_then_a_change(stack):
    device = stack.devices["player-1"]
    await device.connect(stack.broker)
    first = device.publish_state(volume=30)
    async with stack.client() as client, client.watch("player-1") as events:
        assert await next_state(events, version=first.version) == first
        second = device.publish_state(volume=31)
        assert await next_state(events, version=second.version) == second
        assert client.state("player-1") == second
        assert client.stats.invalid == 0
        position = client.position_ms("player-1")
        assert position is not None
        assert position >= second.elapsed_ms


async def test_watch_of_all_devices_yields_states_and_connection_status(stack):
    one, two = stack.devices["player-1"], stack.devices["player-2"]
    await one.connect(stack.broker)
    await two.connect(stack.broker)
    s1, s2 = one.publish_state(), two.publish_state()
    async with stack.client() as client, client.watch() as events:
        seen: dict[tuple[str, type], object] = {}
        async with asyncio.timeout(WAIT):
            async for event in events:
                seen[event.device_id, type(event)] = event
                if len(seen) == 4:
                    break
        assert seen["player-1", DeviceState] == s1
        assert seen["player-2", DeviceState] == s2
        status = seen["player-1", ConnectionStatus]
        assert isinstance(status, ConnectionStatus)
        assert status.online
        assert client.connection_status("player-2").online


async def test_a_crashed_device_shows_offline_through_its_signed_last_will(stack):
    device = stack.devices["player-1"]
    await device.connect(stack.broker)
    async with stack.client() as client, client.watch("player-1") as events:
        async with asyncio.timeout(WAIT):
            async for event in events:
                if isinstance(event, ConnectionStatus) and event.online:
                    break
            await device.crash()
            async for event in events:
                if isinstance(event, ConnectionStatus):
                    assert not event.online
                    assert event.reason == "lost"
                    break
        assert client.connection_status("player-1").online is False
        assert client.stats.invalid == 0


async def test_late_watcher_gets_the_current_state_first(stack):
    device = stack.devices["player-1"]
    await device.connect(stack.broker)
    async with stack.client() as client:
        async with client.watch("player-1") as early:
            state = device.publish_state()
            await next_state(early, version=state.version)
        async with client.watch("player-1", include_connection=False) as late:
            async with asyncio.timeout(WAIT):
                first = await anext(late)
            assert first == state


async def test_command_round_trip_and_qos_defaults(stack):
    device = stack.devices["player-1"]
    await device.connect(stack.broker)
    async with stack.client() as client:
        response = await client.command("player-1", Pause(), timeout=10)
        assert response.status is CommandStatus.SUCCEEDED
        assert response.device_id == "player-1"
        assert [c.id for c in device.commands] == [response.command_id]
        assert device.commands[0].action == Pause()
        # A critical action (QoS 2 by default) and a sealed one both arrive intact.
        critical = await client.command("player-1", ChangeVolume(delta=-5))
        sealed = await client.command("player-1", SetVolume(volume=12), seal=True)
        assert [c.action for c in device.commands[1:]] == [ChangeVolume(delta=-5), SetVolume(volume=12)]
        assert device.delivery[response.command_id] == (1, None)
        assert device.delivery[critical.command_id] == (2, None)
        assert device.delivery[sealed.command_id] == (1, device.encryption_key.public_key.kid)


async def test_rejected_command_raises_with_the_reason(stack):
    device = stack.devices["player-1"]
    device.answer = CommandStatus.REJECTED
    device.reject_reason = RejectReason.VERSION_MISMATCH
    await device.connect(stack.broker)
    async with stack.client() as client:
        with pytest.raises(CommandRejectedError) as caught:
            await client.command("player-1", Pause(), if_version=3)
        assert caught.value.reason == "version-mismatch"
        assert caught.value.device_id == "player-1"
        assert caught.value.response.status is CommandStatus.REJECTED
        assert device.commands[0].if_version == 3


async def test_bad_device_ids_are_typed_errors(stack):
    async with stack.client() as client:
        with pytest.raises(InvalidDeviceIdError):
            client.watch("a/#")
        with pytest.raises(UnknownDeviceError):
            await client.command("player-9", Ping())
        with pytest.raises(InvalidCommandError):
            await client.command("player-1", SetVolume(volume=400))
        assert client.stats.commands_sent == 0


async def test_command_while_broker_down_is_delivered_when_it_returns(stack):
    device = stack.devices["player-1"]
    await device.connect(stack.broker)
    async with stack.client() as client:
        await client.command("player-1", Ping())
        await device.disconnect()
        stack.broker.stop()
        await wait_for_state(client, state=ConnectionState.RECONNECTING)
        task = asyncio.create_task(client.command("player-1", Pause(), timeout=WAIT))
        await asyncio.sleep(0)  # let it reach the outbox while offline
        assert not task.done()
        await asyncio.to_thread(stack.broker.restart)
        await device.connect(stack.broker)
        response = await task
        assert response.status is CommandStatus.SUCCEEDED
        assert [c.action for c in device.commands] == [Ping(), Pause()]


async def test_command_past_its_deadline_while_offline_expires_and_never_fires(stack):
    device = stack.devices["player-1"]
    await device.connect(stack.broker)
    async with stack.client() as client, client.watch("player-1") as events:
        await device.disconnect()
        stack.broker.stop()
        await wait_for_state(client, state=ConnectionState.RECONNECTING)
        with pytest.raises(CommandExpiredError) as caught:
            await client.command("player-1", Pause(), timeout=0.5)
        expired_id = caught.value.command_id
        await asyncio.to_thread(stack.broker.restart)
        reconnected_ms = now_ms()
        await device.connect(stack.broker)
        await client.wait_connected(timeout=WAIT)
        # Wait until the client has seen the device online: a command sent before that is
        # resent when the online status arrives (the sender rule), which would count twice.
        async with asyncio.timeout(WAIT):
            async for event in events:
                if isinstance(event, ConnectionStatus) and event.online and event.at_ms >= reconnected_ms:
                    break
        # Anything the outbox had sent on reconnect would arrive before this ping.
        await client.command("player-1", Ping())
        assert [c.action for c in device.commands] == [Ping()]
        assert expired_id not in device.seen_ids  # not even delivered late
        assert client.stats.commands_sent == 1


async def test_failover_to_standby_keeps_the_watch_alive_and_resynced(pair_stack):
    primary, standby = pair_stack.brokers
    device = pair_stack.devices["player-1"]
    await device.connect(primary)
    first = device.publish_state()
    async with pair_stack.client() as client, client.watch("player-1") as events:
        assert await next_state(events, version=first.version) == first
        assert client.connection.endpoint.port == primary.app_port
        primary.kill()
        await wait_for_state(client, endpoint_port=standby.app_port)
        await device.disconnect()
        await device.connect(standby)
        second = device.publish_state()
        assert await next_state(events, version=second.version) == second
        assert client.stats.connects >= 2


async def test_first_reachable_endpoint_is_used(pair_stack):
    primary, standby = pair_stack.brokers
    device = pair_stack.devices["player-1"]
    await device.connect(standby)
    state = device.publish_state()
    primary.stop()
    async with pair_stack.client() as client, client.watch("player-1") as events:
        assert client.connection.endpoint.port == standby.app_port
        assert await next_state(events, version=state.version) == state


async def test_session_is_refreshed_before_expiry_without_reconnecting(stack):
    stack.authz.session_ttl_ms = 3000
    device = stack.devices["player-1"]
    await device.connect(stack.broker)
    async with stack.client(refresh_margin=0.5) as client, client.watch("player-1") as events:
        first = device.publish_state()
        await next_state(events, version=first.version)
        assert await asyncio.to_thread(stack.authz.refreshed.wait, WAIT)
        second = device.publish_state()
        assert await next_state(events, version=second.version) == second
        assert client.stats.connects == 1
        # Commands carry the refreshed grant.
        assert (await client.command("player-1", Ping())).status is CommandStatus.SUCCEEDED


async def test_a_refreshed_password_is_used_for_every_later_connect_and_stored(stack, tmp_path):
    # Token mode: a refresh hands out a new password (a token with the new expiry) for the
    # same account, and the old one stops working once it expires.
    stack.authz.rotate_passwords = 1
    device = stack.devices["player-1"]
    await device.connect(stack.broker)
    store = tmp_path / "session.json"
    client = stack.client(refresh_margin=0.9995, session_store=store)  # 600 s sessions: refreshed within 0.3 s
    async with client, client.watch("player-1") as events:
        first = device.publish_state()
        await next_state(events, version=first.version)
        sessions = client.session_changes()
        issued = await anext(sessions)
        async with asyncio.timeout(WAIT):
            refreshed = await anext(sessions)
        assert refreshed.session_id == issued.session_id
        assert refreshed.broker.password != issued.broker.password
        assert client.stats.connects == 1  # the broker checks a credential at CONNECT: the link stays
        changes = client.connection_changes()
        assert (await anext(changes)).state is ConnectionState.CONNECTED  # the state now
        # Only the refreshed password is accepted now; the broker disconnects the client.
        await asyncio.to_thread(stack.authz.accept_only_newest_password, issued.session_id)
        async with asyncio.timeout(WAIT):
            while (await anext(changes)).state is not ConnectionState.CONNECTED:
                pass
        second = device.publish_state()
        assert await next_state(events, version=second.version) == second
        # Back with the refreshed password, not through a new exchange after a refusal.
        assert client.session_id == issued.session_id
        assert client.stats.session_exchanges == 1
        assert client.stats.connects == 2
        assert (await client.command("player-1", Ping())).status is CommandStatus.SUCCEEDED
    # The stored session carries the newest credential for the next start.
    stored = json.loads(json.loads(store.read_bytes())["session"])
    assert stored["broker"]["password"] == refreshed.broker.password


async def test_refresh_of_a_forgotten_session_exchanges_again_and_reconnects(stack):
    stack.authz.session_ttl_ms = 2000
    device = stack.devices["player-1"]
    await device.connect(stack.broker)
    async with stack.client(refresh_margin=0.5) as client, client.watch("player-1") as events:
        first = device.publish_state()
        await next_state(events, version=first.version)
        old_session = client.session_id
        stack.authz.sessions.pop(old_session)  # the service lost it: refresh answers 404
        await wait_for_new_session(client, old_session)
        second = device.publish_state()
        assert await next_state(events, version=second.version) == second
        assert client.session_id != old_session
        assert (await client.command("player-1", Ping())).status is CommandStatus.SUCCEEDED


async def test_session_expiry_mid_watch_exchanges_again_without_losing_updates(stack):
    device = stack.devices["player-1"]
    await device.connect(stack.broker)
    async with stack.client() as client, client.watch("player-1") as events:
        first = device.publish_state()
        await next_state(events, version=first.version)
        old_session = client.session_id
        await asyncio.to_thread(stack.authz.expire, old_session)  # the broker kicks it
        during = device.publish_state(volume=77)  # published while the SDK is out
        assert await next_state(events, version=during.version) == during
        await wait_for_new_session(client, old_session)
        after = device.publish_state(volume=78)
        assert await next_state(events, version=after.version) == after
        assert (await client.command("player-1", Ping())).status is CommandStatus.SUCCEEDED


async def test_forged_and_misplaced_states_are_dropped_and_counted(stack):
    device = stack.devices["player-1"]
    other = stack.devices["player-2"]
    await device.connect(stack.broker)
    # Someone with broker access to the device topics, but not the device's key.
    rogue = "rogue"
    acls = [
        {"acltype": "publishClientSend", "topic": "amora/#", "priority": 0, "allow": True},
    ]
    dynsec(
        stack.broker,
        [
            {"command": "createRole", "rolename": rogue, "acls": acls},
            {"command": "createClient", "username": rogue, "password": "pw", "roles": [{"rolename": rogue}]},
        ],
    )
    async with stack.client() as client, client.watch() as events:
        genuine = device.publish_state()
        await next_state(events, version=genuine.version)
        forger = Sender("player-1", SigningKey.generate(), epoch=1)
        forged = device.make_state(volume=100)
        topic = state_topic("player-1")
        replayed_for_other = Sender("player-1", device.signing_key, epoch=2)

        def publish_forgeries() -> None:
            with MqttClient.connect(
                stack.broker.host,
                stack.broker.app_port,
                ssl_context=client_ssl_context(stack.pki.ca_file),
                client_id=rogue,
                username=rogue,
                password="pw",
            ) as mqtt:
                ct = Codec.MSGPACK.value
                payload = forger.encode(topic, forged, now_ms=forged.sampled_at_ms)
                mqtt.publish(topic, payload, qos=1, content_type=ct)
                # A genuine signature for player-1's topic, replayed onto player-2's.
                other_topic = state_topic(other.device_id)
                payload = replayed_for_other.encode(topic, forged, now_ms=1)
                mqtt.publish(other_topic, payload, qos=1, content_type=ct)
                mqtt.publish(topic, b"\x93garbage", qos=1, content_type=ct)

        await asyncio.to_thread(publish_forgeries)
        after = device.publish_state(volume=5)
        got = await next_state(events, version=after.version)
        assert got == after
        assert client.stats.invalid == 3
        assert client.state("player-1") == after
        assert client.state("player-2") is None


async def test_slow_watcher_does_not_delay_a_fast_one(stack):
    device = stack.devices["player-1"]
    await device.connect(stack.broker)
    async with stack.client() as client:
        slow = client.watch("player-1", include_connection=False)
        fast = client.watch("player-1", include_connection=False)
        async with slow, fast:
            # The fast watcher sees every burst while the slow one reads nothing.
            for burst in range(6):
                states = [device.publish_state(volume=burst * 10 + v) for v in range(10)]
                assert await next_state(fast, version=states[-1].version) == states[-1]
            assert len(slow._queue) == 1  # bounded: only the latest state waits
            assert slow.superseded >= 1
            assert await anext(slow) == states[-1]


async def test_refused_token_is_an_authentication_error(stack):
    stack.token = "not-a-token"
    with pytest.raises(AuthenticationError) as caught:
        async with stack.client():
            pass
    assert caught.value.status_code == 401


async def test_unreachable_brokers_are_a_connect_error(stack):
    stack.broker.stop()
    client = stack.client(connect_timeout=1.0, reconnect=ReconnectPolicy(initial_delay=0.05, max_delay=0.2))
    with pytest.raises(ConnectError) as caught:
        async with client:
            pass
    assert caught.value.attempts >= 1
    assert caught.value.last_error


async def test_client_closes_cleanly_and_ends_watches(stack):
    client = stack.client()
    async with client:
        watch = client.watch()
        session_id = client.session_id
        events = aiter(watch)
    with pytest.raises(StopAsyncIteration):
        await anext(events)
    assert client.connection.state is ConnectionState.CLOSED
    assert session_id not in stack.authz.sessions  # logged out


async def test_outbox_is_bounded_and_close_ends_pending_commands(stack):
    device = stack.devices["player-1"]
    device.answer = None  # the device executes but never answers
    await device.connect(stack.broker)
    client = stack.client(max_pending_commands=1)
    async with client:
        first = asyncio.create_task(client.command("player-1", Pause(), timeout=WAIT))
        await device.wait_command()
        with pytest.raises(OutboxFullError) as caught:
            await client.command("player-1", Pause())
        assert caught.value.device_id == "player-1"
    with pytest.raises(ClientClosedError):
        await first


async def test_a_burst_beyond_the_brokers_receive_maximum_is_sent_in_turn(stack):
    device = stack.devices["player-1"]
    await device.connect(stack.broker)
    async with stack.client() as client:
        # More QoS 1 publishes at once than the broker lets be unacknowledged: the rest wait
        # in the outbox until acknowledgements free the window, then all complete.
        responses = await asyncio.gather(*(client.command("player-1", Ping(), timeout=WAIT) for _ in range(100)))
        assert {r.status for r in responses} == {CommandStatus.SUCCEEDED}
        assert len({r.command_id for r in responses}) == 100
        assert client.stats.commands_sent == 100
