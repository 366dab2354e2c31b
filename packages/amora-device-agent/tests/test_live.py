"""The agent against a real mosquitto (TLS device listener, dynamic security)."""

import asyncio
from typing import Any

import pytest

from amora_agent import SimulatedPlayer
from amora_protocol import (
    ChangeVolume,
    Codec,
    CommandResponse,
    CommandStatus,
    ConnectionStatus,
    DeviceState,
    PlaybackStatus,
    RejectReason,
    SigningKey,
    Toggle,
    VerifyKey,
    commands_topic,
    connection_topic,
    now_ms,
    responses_topic,
    state_topic,
    unauthenticated_id,
)

pytestmark = pytest.mark.services

DEVICE = "player-1"


def is_state(key: VerifyKey, predicate: Any = None) -> Any:
    def check(received) -> bool:
        if received.topic != state_topic(DEVICE):
            return False
        state = received.message(key)
        return isinstance(state, DeviceState) and (predicate is None or predicate(state))

    return check


def is_response(key: VerifyKey, command_id: str) -> Any:
    def check(received) -> bool:
        if received.topic != responses_topic(DEVICE):
            return False
        return bool(received.message(key).command_id == command_id)

    return check


async def test_state_and_commands_flow_through_the_broker(broker, live_device, live_app) -> None:
    device = live_device(broker)
    key = device.signing_key.public_key
    player = SimulatedPlayer(volume=40)
    app, client = live_app(broker, (DEVICE,))
    async with device.agent(player) as agent, client:
        await asyncio.wait_for(agent.wait_online(), 15)
        await client.subscribe(state_topic(DEVICE), connection_topic(DEVICE), responses_topic(DEVICE))
        online = await client.wait_for(lambda r: r.topic == connection_topic(DEVICE))
        status = online.message(key)
        assert isinstance(status, ConnectionStatus)
        assert status.online
        assert online.retain
        first = (await client.wait_for(is_state(key))).message(key)

        # A change on the player becomes a new signed state with a higher version.
        mark = len(client.messages)
        player.apply(Toggle())
        playing = (await client.wait_for(is_state(key, lambda s: s.status is PlaybackStatus.PLAY), start=mark)).message(
            key
        )
        assert playing.version > first.version

        # A command (QoS 2) changes the player once and is answered with correlation data.
        command, payload = app.command(DEVICE, ChangeVolume(delta=10))
        client.publish(
            commands_topic(DEVICE),
            payload,
            qos=2,
            content_type=Codec.MSGPACK.value,
            correlation_data=command.id.encode(),
        )
        answer = await client.wait_for(is_response(key, command.id))
        response = answer.message(key)
        assert isinstance(response, CommandResponse)
        assert response.status is CommandStatus.SUCCEEDED
        assert answer.prop("correlation_data") == command.id.encode()
        await client.wait_for(is_state(key, lambda s: s.volume == 50))

        # The same bytes again: the original outcome, flagged as a repeat; no second effect.
        mark = len(client.messages)
        client.publish(commands_topic(DEVICE), payload, qos=1, content_type=Codec.MSGPACK.value)
        again = (await client.wait_for(is_response(key, command.id), start=mark)).message(key)
        assert (again.status, again.duplicate, again.at_ms) == (CommandStatus.SUCCEEDED, True, response.at_ms)
        assert player.snapshot_now().volume == 50

        # Expired and forged commands are rejected.
        # (Sent 5 s ago with a 1 s life by a sender whose clock the device knows agrees.)
        expired, payload = app.command(DEVICE, Toggle(), issued_at_ms=now_ms() - 5_000, ttl_ms=1000)
        client.publish(
            commands_topic(DEVICE),
            payload,
            content_type=Codec.MSGPACK.value,
            correlation_data=expired.id.encode(),
        )
        rejected = (await client.wait_for(is_response(key, expired.id))).message(key)
        assert (rejected.status, rejected.reason) == (CommandStatus.REJECTED, RejectReason.EXPIRED)
        forged, payload = app.command(DEVICE, Toggle())
        payload = payload[:-1] + bytes([payload[-1] ^ 1])
        client.publish(
            commands_topic(DEVICE),
            payload,
            content_type=Codec.MSGPACK.value,
            correlation_data=forged.id.encode(),
        )
        # Refused before authentication: answered by a digest of the payload, never its id.
        answer = await client.wait_for(is_response(key, unauthenticated_id(payload)))
        assert answer.prop("correlation_data") == unauthenticated_id(payload).encode()
        rejected = answer.message(key)
        assert (rejected.status, rejected.reason) == (CommandStatus.REJECTED, RejectReason.UNAUTHORIZED)
        assert player.snapshot_now().status is PlaybackStatus.PLAY

    # A clean stop publishes the offline status (retained).
    async with client:
        mark = len(client.messages)
        await client.subscribe(connection_topic(DEVICE))
        retained = await client.wait_for(lambda r: r.topic == connection_topic(DEVICE), start=mark)
        offline = retained.message(key)
        assert not offline.online
        assert offline.reason == "shutdown"


async def test_refused_subscription_is_retried_until_the_role_exists(broker, dev_pki, tmp_path, authz_key, live_app):
    from amora_agent import Agent, AgentOptions, BrokerEndpoint, TlsConfig, client_ssl_context  # noqa: PLC0415
    from amora_devtools.broker import create_device_client  # noqa: PLC0415

    cert = dev_pki.issue_client_cert(DEVICE)  # a certificate, but no dynsec client or role yet
    signing = SigningKey.generate()
    agent = Agent(
        device_id=DEVICE,
        signing_key=signing,
        trusted_keys=[authz_key.public_key],
        endpoints=[BrokerEndpoint(host=broker.host, port=broker.device_port)],
        ssl_context=client_ssl_context(
            TlsConfig(ca_file=str(dev_pki.ca_file), cert_file=str(cert.cert_file), key_file=str(cert.key_file))
        ),
        state_dir=tmp_path / "state",
        player=SimulatedPlayer(),
        options=AgentOptions(backoff_initial_s=0.05, backoff_max_s=0.3),
    )
    async with agent:
        await asyncio.to_thread(create_device_client, broker, DEVICE)
        await asyncio.wait_for(agent.wait_online(), 15)
        app, client = live_app(broker, (DEVICE,))
        async with client:
            await client.subscribe(responses_topic(DEVICE))
            command, payload = app.command(DEVICE, Toggle())
            client.publish(
                commands_topic(DEVICE),
                payload,
                content_type=Codec.MSGPACK.value,
                correlation_data=command.id.encode(),
            )
            answer = await client.wait_for(is_response(signing.public_key, command.id))
            assert answer.message(signing.public_key).status is CommandStatus.SUCCEEDED
