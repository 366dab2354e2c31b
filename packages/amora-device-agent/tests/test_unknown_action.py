"""A newer app's action that this agent does not know is answered rejected/unsupported and runs nothing."""

import msgspec

from amora_agent import SimulatedPlayer
from amora_agent._mqtt import InboundMessage
from amora_protocol import CommandStatus, RejectReason, SetVolume, commands_topic, parse_envelope, signed_bytes


async def test_unknown_action_is_answered_unsupported(make_offline_agent, make_app) -> None:
    player = SimulatedPlayer(volume=50)
    agent = make_offline_agent(player=player)
    app = make_app(("player-1",))
    command, payload = app.command("player-1", SetVolume(volume=20))
    topic = commands_topic("player-1")
    # The same command, as a newer app would send an action this version lacks.
    header = parse_envelope(payload).header_bytes
    body = msgspec.msgpack.encode({**msgspec.to_builtins(command), "action": {"type": "crossfade", "seconds": 3}})
    newer = msgspec.msgpack.encode((header, body, app.key.sign(signed_bytes(topic, header, body))))
    message = InboundMessage(
        topic=topic,
        payload=newer,
        qos=1,
        retain=False,
        content_type=None,
        correlation_data=command.id.encode(),
        response_topic=None,
    )
    response = await agent._handle_command(message)
    assert (response.status, response.reason, response.command_id) == (
        CommandStatus.REJECTED,
        RejectReason.UNSUPPORTED,
        command.id,
    )
    assert response.message is not None
    assert "crossfade" in response.message
    assert player.snapshot_now().volume == 50  # nothing ran
