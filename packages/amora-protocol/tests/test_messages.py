from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

import amora_protocol as ap

DEVICE_IDS = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")
MS = st.integers(min_value=0, max_value=2**53)
TEXT = st.text(max_size=40)
SMALL = st.integers(min_value=0, max_value=2**31)

songs = st.builds(
    ap.Song,
    file=TEXT,
    id=st.none() | SMALL,
    position=st.none() | SMALL,
    title=st.none() | TEXT,
    artist=st.none() | TEXT,
    album=st.none() | TEXT,
    duration_ms=st.none() | SMALL,
)
options = st.builds(
    ap.PlayerOptions,
    repeat=st.booleans(),
    random=st.booleans(),
    single=st.sampled_from(ap.SingleMode),
    consume=st.booleans(),
)
states = st.builds(
    ap.DeviceState,
    device_id=DEVICE_IDS,
    version=SMALL,
    status=st.sampled_from(ap.PlaybackStatus),
    sampled_at_ms=MS,
    elapsed_ms=st.none() | SMALL,
    song=st.none() | songs,
    volume=st.none() | st.integers(0, 100),
    options=options,
    queue_length=SMALL,
    queue_version=SMALL,
    error=st.none() | TEXT,
)
actions = st.one_of(
    st.builds(ap.Play),
    st.builds(ap.Pause),
    st.builds(ap.Toggle),
    st.builds(ap.Stop),
    st.builds(ap.Next),
    st.builds(ap.Previous),
    st.builds(ap.Ping),
    st.builds(ap.Seek, position_ms=SMALL),
    st.builds(ap.SetVolume, volume=st.integers(0, 100)),
    st.builds(ap.ChangeVolume, delta=st.integers(-100, 100)),
    st.builds(ap.PlayQueueItem, position=SMALL),
)
command_ids = st.text(alphabet="abcdef0123456789-", min_size=1, max_size=40)
commands = st.builds(
    ap.Command,
    id=command_ids,
    issued_at_ms=MS,
    expires_at_ms=MS,
    action=actions,
    if_version=st.none() | SMALL,
)
responses = st.builds(
    ap.CommandResponse,
    command_id=command_ids,
    device_id=DEVICE_IDS,
    status=st.sampled_from(ap.CommandStatus),
    at_ms=MS,
    reason=st.none() | st.sampled_from(ap.RejectReason),
    message=st.none() | TEXT,
    state_version=st.none() | SMALL,
)
statuses = st.builds(
    ap.ConnectionStatus,
    device_id=DEVICE_IDS,
    online=st.booleans(),
    at_ms=MS,
    agent_version=st.none() | TEXT,
)
grants = st.builds(
    ap.Grant,
    grant_id=command_ids,
    subject=TEXT,
    session_id=command_ids,
    signing_key=st.binary(min_size=32, max_size=32),
    devices=st.lists(DEVICE_IDS, max_size=5).map(tuple),
    rights=st.lists(st.sampled_from(ap.Right), max_size=2, unique=True).map(tuple),
    issued_at_ms=MS,
    expires_at_ms=MS,
    encryption_key=st.none() | st.binary(min_size=32, max_size=32),
)
any_message = st.one_of(states, commands, responses, statuses, grants)


@given(any_message)
def test_every_message_round_trips_in_both_codecs(message: msgspec.Struct):
    kind = type(message)
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(message), type=kind) == message
    assert msgspec.json.decode(msgspec.json.encode(message), type=kind) == message


def test_messages_are_frozen():
    state = ap.DeviceState(device_id="p1", version=1, status=ap.PlaybackStatus.STOP, sampled_at_ms=0)
    with pytest.raises(AttributeError):
        state.version = 2  # type: ignore[misc]


def test_unknown_fields_are_tolerated():
    raw = b'{"device_id":"p1","version":3,"status":"pause","sampled_at_ms":5,"future_field":[1,2]}'
    state = msgspec.json.decode(raw, type=ap.DeviceState)
    assert state.version == 3
    assert state.status is ap.PlaybackStatus.PAUSE


def test_wrong_type_in_a_body_is_a_schema_error_after_verification():
    key = ap.SigningKey.generate()
    topic = ap.state_topic("p1")
    sender = ap.Sender("p1", key, epoch=1)
    good = sender.encode(
        topic,
        ap.DeviceState(device_id="p1", version=1, status=ap.PlaybackStatus.STOP, sampled_at_ms=0),
        now_ms=0,
    )
    env = ap.parse_envelope(good)
    bad_body = msgspec.msgpack.encode({"device_id": "p1", "version": "one", "status": "stop", "sampled_at_ms": 0})
    payload = msgspec.msgpack.encode(
        (env.header_bytes, bad_body, key.sign(ap.signed_bytes(topic, env.header_bytes, bad_body)))
    )
    with pytest.raises(ap.SchemaError, match="version"):
        ap.verify_envelope(payload, topic=topic, content_type=None, key=key.public_key, now_ms=0)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"id":"c1","issued_at_ms":0,"expires_at_ms":1,"action":{"type":"self_destruct"}}',
        b'{"id":"c1","issued_at_ms":0,"expires_at_ms":1,"action":{"type":"set_volume","volume":101}}',
        b'{"id":"c1","issued_at_ms":0,"expires_at_ms":1,"action":{"type":"seek","position_ms":-1}}',
        b'{"id":"","issued_at_ms":0,"expires_at_ms":1,"action":{"type":"play"}}',
        b'{"id":"c1\\nforged line","issued_at_ms":0,"expires_at_ms":1,"action":{"type":"play"}}',
        b'{"id":"c 1","issued_at_ms":0,"expires_at_ms":1,"action":{"type":"play"}}',
        b'{"issued_at_ms":0,"expires_at_ms":1,"action":{"type":"play"}}',
    ],
)
def test_invalid_commands_fail_validation(raw: bytes):
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(raw, type=ap.Command)


def test_position_interpolates_only_while_playing():
    song = ap.Song(file="a.flac", duration_ms=10_000)
    playing = ap.DeviceState(
        device_id="p1",
        version=1,
        status=ap.PlaybackStatus.PLAY,
        sampled_at_ms=1_000,
        elapsed_ms=2_000,
        song=song,
    )
    assert playing.position_at(1_500) == 2_500
    assert playing.position_at(100_000) == 10_000  # capped at the duration
    assert playing.position_at(500) == 2_000  # a clock behind the sample never goes backwards
    paused = msgspec.structs.replace(playing, status=ap.PlaybackStatus.PAUSE)
    assert paused.position_at(5_000) == 2_000
    empty = ap.DeviceState(device_id="p1", version=1, status=ap.PlaybackStatus.STOP, sampled_at_ms=0)
    assert empty.position_at(5) is None


def test_critical_actions_are_the_non_idempotent_ones():
    critical = {a.__struct_config__.tag for a in ap.ACTIONS if a.critical}
    assert critical == {"toggle", "next", "previous", "change_volume"}
    assert ap.is_critical(ap.Next())
    assert not ap.is_critical(ap.Pause())
