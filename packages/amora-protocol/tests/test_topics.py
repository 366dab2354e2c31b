from __future__ import annotations

import pytest

import amora_protocol as ap


@pytest.mark.parametrize("device_id", ["a", "player-1", "P_2", "9" * 64, "x-_-y"])
def test_valid_ids_build_and_parse(device_id: str):
    builders = {
        ap.TopicKind.STATE: ap.state_topic,
        ap.TopicKind.COMMANDS: ap.commands_topic,
        ap.TopicKind.RESPONSES: ap.responses_topic,
        ap.TopicKind.CONNECTION: ap.connection_topic,
    }
    for kind, build in builders.items():
        topic = build(device_id)
        assert topic == f"amora/devices/{device_id}/{kind.value}"
        assert ap.parse_topic(topic) == (device_id, kind)


@pytest.mark.parametrize(
    "bad",
    ["", "-lead", "_lead", "a/b", "+", "#", "a+", "dev#", "é", "a b", "a\n", "x" * 65, "dev.1"],
)
def test_invalid_ids_are_refused_with_the_id_named(bad: str):
    with pytest.raises(ap.InvalidDeviceId) as info:
        ap.state_topic(bad)
    assert info.value.device_id == bad
    assert repr(bad) in str(info.value)
    assert isinstance(info.value, ap.ProtocolError)
    assert isinstance(info.value, ValueError)


def test_non_string_id_is_refused():
    with pytest.raises(ap.InvalidDeviceId):
        ap.validate_device_id(42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "topic",
    [
        "amora/devices/p1",
        "amora/devices/p1/state/extra",
        "amora/devices/p1/unknown",
        "other/devices/p1/state",
        "amora/devices//state",
        "amora/devices/+/state",
        "amora/devices/#",
    ],
)
def test_parse_refuses_foreign_topics(topic: str):
    with pytest.raises(ap.SchemaError):
        ap.parse_topic(topic)


def test_device_and_user_acls_cover_only_that_device():
    dev = ap.device_acls("p1")
    sends = {a.topic for a in dev if a.acltype == "publishClientSend"}
    assert sends == {ap.state_topic("p1"), ap.responses_topic("p1"), ap.connection_topic("p1")}
    # Its commands, its own connection status (stale Last Wills, liveness probe), its session list.
    assert {a.topic for a in dev if a.acltype == "subscribePattern"} == {
        ap.commands_topic("p1"),
        ap.connection_topic("p1"),
        ap.sessions_topic("p1"),
    }
    user = ap.user_device_acls("p1")
    assert {a.topic for a in user if a.acltype == "publishClientSend"} == {ap.commands_topic("p1")}
    subs = {a.topic for a in user if a.acltype == "subscribePattern"}
    assert subs == {ap.state_topic("p1"), ap.responses_topic("p1"), ap.connection_topic("p1")}
    for acl in dev + user:
        assert "+" not in acl.topic
        assert "#" not in acl.topic
        assert acl.allow
