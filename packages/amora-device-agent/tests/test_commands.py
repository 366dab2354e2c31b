"""Command handling end to end inside one agent, without a broker (the live tests add one)."""

import asyncio
import base64
import logging
from pathlib import Path

import msgspec

from amora_agent import BrokerEndpoint, DesiredSettings, SimulatedPlayer
from amora_agent._config import LogLevel
from amora_agent._management import parse_desired
from amora_agent._mqtt import InboundMessage, _Connection, _Inflight
from amora_protocol import (
    ChangeVolume,
    Codec,
    CommandStatus,
    DeviceState,
    EncryptionKey,
    Ping,
    PlaybackStatus,
    PlayQueueItem,
    RejectReason,
    Right,
    Seek,
    SigningKey,
    Toggle,
    commands_topic,
    now_ms,
    unauthenticated_id,
)


def inbound(device_id: str, payload: bytes, *, codec: Codec = Codec.MSGPACK, correlation: bytes | None = None):
    return InboundMessage(
        topic=commands_topic(device_id),
        payload=payload,
        qos=1,
        retain=False,
        content_type=codec.value,
        correlation_data=correlation,
        response_topic=None,
    )


async def test_authorised_command_runs_once(make_offline_agent, make_app) -> None:
    player = SimulatedPlayer(volume=50)
    agent = make_offline_agent(player=player)
    app = make_app(("player-1",))
    command, payload = app.command("player-1", ChangeVolume(delta=5))
    first = await agent._handle_command(inbound("player-1", payload))
    assert (first.status, first.command_id) == (CommandStatus.SUCCEEDED, command.id)
    assert player.snapshot_now().volume == 55
    again = await agent._handle_command(inbound("player-1", payload))
    # The original outcome, flagged as a repeat, with the original answer's time.
    assert (again.status, again.duplicate, again.at_ms) == (CommandStatus.SUCCEEDED, True, first.at_ms)
    assert player.snapshot_now().volume == 55  # no second effect


async def test_same_id_in_a_fresh_envelope_is_a_duplicate(make_offline_agent, make_app) -> None:
    player = SimulatedPlayer(volume=50)
    agent = make_offline_agent(player=player)
    app = make_app(("player-1",))
    _, first = app.command("player-1", ChangeVolume(delta=5), command_id="same-id")
    _, second = app.command("player-1", ChangeVolume(delta=5), command_id="same-id")
    assert (await agent._handle_command(inbound("player-1", first))).status is CommandStatus.SUCCEEDED
    repeat = await agent._handle_command(inbound("player-1", second))
    assert (repeat.status, repeat.duplicate) == (CommandStatus.SUCCEEDED, True)
    assert player.snapshot_now().volume == 55


async def test_a_reused_sequence_number_is_rejected_not_reported_as_duplicate(make_offline_agent, make_app) -> None:
    player = SimulatedPlayer(volume=50)
    agent = make_offline_agent(player=player)
    app = make_app(("player-1",))
    _, first = app.command("player-1", ChangeVolume(delta=5))
    app.sender._seq -= 1  # the next envelope reuses the first one's (sender, epoch, seq)
    command, second = app.command("player-1", ChangeVolume(delta=5))
    assert (await agent._handle_command(inbound("player-1", first))).status is CommandStatus.SUCCEEDED
    answer = await agent._handle_command(inbound("player-1", second))
    # It never ran: an app must not read it as done, as it would a duplicate.
    assert (answer.command_id, answer.status, answer.reason) == (
        command.id,
        CommandStatus.REJECTED,
        RejectReason.INVALID,
    )
    assert player.snapshot_now().volume == 55


async def test_executed_ids_survive_an_agent_restart(tmp_path: Path, make_offline_agent, make_app) -> None:
    app = make_app(("player-1",))
    _, payload = app.command("player-1", ChangeVolume(delta=5))
    player = SimulatedPlayer(volume=50)
    agent = make_offline_agent(player=player, state_dir=tmp_path / "s")
    assert (await agent._handle_command(inbound("player-1", payload))).status is CommandStatus.SUCCEEDED
    agent._book.close()
    restarted = make_offline_agent(player=player, state_dir=tmp_path / "s")
    response = await restarted._handle_command(inbound("player-1", payload))
    assert (response.status, response.duplicate) == (CommandStatus.SUCCEEDED, True)
    assert player.snapshot_now().volume == 55


async def test_expired_command_is_rejected(make_offline_agent, make_app) -> None:
    agent = make_offline_agent()
    app = make_app(("player-1",))
    # The device knows this sender's clock agrees (a first command), so one sent 5 s ago with
    # a 1 s lifetime is late, not skewed (see test_reliability for skew).
    _, first = app.command("player-1", Ping())
    assert (await agent._handle_command(inbound("player-1", first))).status is CommandStatus.SUCCEEDED
    _, payload = app.command("player-1", Toggle(), issued_at_ms=now_ms() - 5_000, ttl_ms=1_000)
    response = await agent._handle_command(inbound("player-1", payload))
    assert (response.status, response.reason) == (CommandStatus.REJECTED, RejectReason.EXPIRED)


async def test_unsigned_garbage_is_answered_by_digest_never_by_echo(make_offline_agent) -> None:
    agent = make_offline_agent()
    for payload in (b"\x93\xc4\x00", b"not msgpack at all", msgspec.msgpack.encode({"id": "x"})):
        response = await agent._handle_command(inbound("player-1", payload, correlation=b"cid-1"))
        assert (response.status, response.reason) == (CommandStatus.REJECTED, RejectReason.INVALID)
        # Not the correlation data, not anything read from the payload: a digest of it.
        assert response.command_id == unauthenticated_id(payload)
        assert response.message == "refused before authentication: SchemaError"
    response = await agent._handle_command(inbound("player-1", b"{}", codec=Codec.JSON))
    assert response.status is CommandStatus.REJECTED


async def test_forged_signature_is_rejected(make_offline_agent, make_app) -> None:
    player = SimulatedPlayer()
    agent = make_offline_agent(player=player)
    app = make_app(("player-1",))
    _, payload = app.command("player-1", Toggle())
    forged = payload[:-3] + bytes(b ^ 0x55 for b in payload[-3:])  # flip signature bits
    response = await agent._handle_command(inbound("player-1", forged))
    assert (response.status, response.reason) == (CommandStatus.REJECTED, RejectReason.UNAUTHORIZED)
    # A stranger's key with a stolen grant: the grant names another session key.
    thief = make_app(("player-1",))
    thief.token = app.token
    _, stolen = thief.command("player-1", Toggle())
    response = await agent._handle_command(inbound("player-1", stolen))
    assert (response.status, response.reason) == (CommandStatus.REJECTED, RejectReason.UNAUTHORIZED)
    assert player.snapshot_now().status is PlaybackStatus.STOP


async def test_grant_for_another_device_is_rejected(make_offline_agent, make_app) -> None:
    agent = make_offline_agent()
    app = make_app(("player-2",))
    _, payload = app.command("player-1", Toggle())
    response = await agent._handle_command(inbound("player-1", payload))
    assert (response.status, response.reason) == (CommandStatus.REJECTED, RejectReason.UNAUTHORIZED)


async def test_command_for_another_device_topic_is_rejected(make_offline_agent, make_app) -> None:
    agent = make_offline_agent()
    app = make_app(("player-1", "player-2"))
    _, payload = app.command("player-2", Toggle())  # signed for player-2's topic
    response = await agent._handle_command(inbound("player-1", payload))
    # The grant covers both devices: only the topic bound into the signature refuses it.
    assert (response.status, response.reason) == (CommandStatus.REJECTED, RejectReason.UNAUTHORIZED)


async def test_watch_only_and_untrusted_grants_are_rejected(make_offline_agent, make_app) -> None:
    agent = make_offline_agent()
    watcher = make_app(("player-1",), rights=(Right.WATCH,))
    _, payload = watcher.command("player-1", Toggle())
    response = await agent._handle_command(inbound("player-1", payload))
    assert (response.status, response.reason) == (CommandStatus.REJECTED, RejectReason.UNAUTHORIZED)
    rogue = make_app(("player-1",), issuer=SigningKey.generate())
    _, payload = rogue.command("player-1", Toggle())
    response = await agent._handle_command(inbound("player-1", payload))
    assert (response.status, response.reason) == (CommandStatus.REJECTED, RejectReason.UNAUTHORIZED)


async def test_expired_grant_is_rejected(make_offline_agent, make_app) -> None:
    agent = make_offline_agent()
    app = make_app(("player-1",), grant_ttl_ms=-1)
    _, payload = app.command("player-1", Toggle())
    response = await agent._handle_command(inbound("player-1", payload))
    assert (response.status, response.reason) == (CommandStatus.REJECTED, RejectReason.EXPIRED)


async def test_if_version_guards_concurrent_control(make_offline_agent, make_app) -> None:
    player = SimulatedPlayer()
    agent = make_offline_agent(player=player)
    agent._state = DeviceState(
        device_id="player-1",
        version=agent._versions.next(),
        status=PlaybackStatus.STOP,
        sampled_at_ms=1,
    )
    version = agent.state.version
    app = make_app(("player-1",))
    _, stale = app.command("player-1", Toggle(), if_version=version - 1)
    response = await agent._handle_command(inbound("player-1", stale))
    assert (response.status, response.reason) == (CommandStatus.REJECTED, RejectReason.VERSION_MISMATCH)
    assert player.snapshot_now().status is PlaybackStatus.STOP
    _, current = app.command("player-1", Toggle(), if_version=version)
    assert (await agent._handle_command(inbound("player-1", current))).status is CommandStatus.SUCCEEDED
    assert player.snapshot_now().status is PlaybackStatus.PLAY


async def test_player_refusal_is_a_failed_response(make_offline_agent, make_app) -> None:
    agent = make_offline_agent()
    app = make_app(("player-1",))
    _, payload = app.command("player-1", Seek(position_ms=1000))  # stopped: nothing to seek
    response = await agent._handle_command(inbound("player-1", payload))
    assert response.status is CommandStatus.FAILED
    _, payload = app.command("player-1", PlayQueueItem(position=999))
    assert (await agent._handle_command(inbound("player-1", payload))).status is CommandStatus.FAILED


async def test_sealed_command_opens_with_the_device_key(make_offline_agent, make_app) -> None:
    sealing = EncryptionKey.generate()
    player = SimulatedPlayer()
    agent = make_offline_agent(player=player, encryption_key=sealing)
    app = make_app(("player-1",))
    _, payload = app.command("player-1", Toggle(), seal_to=sealing.public_key)
    assert (await agent._handle_command(inbound("player-1", payload))).status is CommandStatus.SUCCEEDED
    assert player.snapshot_now().status is PlaybackStatus.PLAY
    # Sealed to another key: cannot be opened, rejected.
    _, other = app.command("player-1", Toggle(), seal_to=EncryptionKey.generate().public_key)
    assert (await agent._handle_command(inbound("player-1", other))).status is CommandStatus.REJECTED


async def test_json_commands_are_accepted(make_offline_agent, make_app) -> None:
    agent = make_offline_agent()
    app = make_app(("player-1",))
    _, payload = app.command("player-1", Ping(), codec=Codec.JSON)
    response = await agent._handle_command(inbound("player-1", payload, codec=Codec.JSON))
    assert response.status is CommandStatus.SUCCEEDED


async def test_desired_properties_rotate_trusted_keys(make_offline_agent, make_app) -> None:
    agent = make_offline_agent()
    new_authz = SigningKey.generate()
    rotated = make_app(("player-1",), issuer=new_authz)
    _, payload = rotated.command("player-1", Ping())
    assert (await agent._handle_command(inbound("player-1", payload))).status is CommandStatus.REJECTED
    agent.apply_desired(DesiredSettings(trusted_authz_keys=(base64.b64encode(new_authz.public_key.raw).decode(),)))
    _, payload = rotated.command("player-1", Ping())
    assert (await agent._handle_command(inbound("player-1", payload))).status is CommandStatus.SUCCEEDED
    old = make_app(("player-1",))  # issued by the retired key
    _, payload = old.command("player-1", Ping())
    assert (await agent._handle_command(inbound("player-1", payload))).status is CommandStatus.REJECTED
    # A bad key in the twin is reported, and the keys in force stay.
    agent.apply_desired(DesiredSettings(trusted_authz_keys=("garbage",)))
    assert agent.last_error is not None
    assert [k.kid for k in agent.trusted_keys] == [new_authz.public_key.kid]


class RecordingClient:
    """Stands in for the gmqtt client: records publishes and signals each one."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []
        self.event = asyncio.Event()

    def publish(self, topic: str, payload: bytes, **_kwargs: object) -> None:
        self.published.append((topic, payload))
        self.event.set()


async def test_bursts_coalesce_without_delaying_the_first_change(make_offline_agent) -> None:
    player = SimulatedPlayer(volume=0)
    agent = make_offline_agent(player=player)
    client = RecordingClient()
    agent._link._current = _Connection(client, BrokerEndpoint(host="127.0.0.1", port=1), _Inflight())
    task = asyncio.create_task(agent._publish_states())
    try:
        player._on_change = agent._player_changed
        player.apply(ChangeVolume(delta=1))
        await asyncio.wait_for(client.event.wait(), 5)  # the first change goes out at once
        assert agent.state is not None
        assert agent.state.volume == 1
        for _ in range(99):  # a burst
            player.apply(ChangeVolume(delta=1))
        async with asyncio.timeout(5):
            while agent.state.volume != 100:
                client.event.clear()
                await client.event.wait()
        assert len(client.published) <= 3  # first change, then at most two for the burst
    finally:
        task.cancel()


def test_desired_log_level_and_display_name(make_offline_agent) -> None:
    agent = make_offline_agent()
    root = logging.getLogger()
    level = root.level
    try:
        agent.apply_desired(DesiredSettings(log_level=LogLevel.DEBUG, display_name="Kitchen"))
        assert root.level == logging.DEBUG
    finally:
        root.setLevel(level)
    reported = agent.reported()
    assert reported["display_name"] == "Kitchen"
    assert reported["mpd_version"] == "simulated-0.24"
    assert reported["connected_broker"] is None


def test_desired_properties_parse_leniently() -> None:
    settings = parse_desired({"$version": 4, "brokers": [{"host": "b", "port": 1883}], "future_setting": True})
    assert settings.brokers == (BrokerEndpoint(host="b", port=1883),)
    assert settings.trusted_authz_keys is None
