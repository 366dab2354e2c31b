from __future__ import annotations

import pytest

import amora_protocol as ap


def test_names_follow_the_broker_layout():
    assert ap.device_role("player-1") == "device:player-1"
    assert ap.user_device_role("player-1") == "user-device:player-1"
    assert ap.user_group("alice") == "user:alice"


@pytest.mark.parametrize("bad", ["", "a/b", "+", "#", "sess.x", "x" * 65])
def test_roles_refuse_what_is_not_a_device_id(bad: str):
    with pytest.raises(ap.InvalidDeviceId):
        ap.device_role(bad)
    with pytest.raises(ap.InvalidDeviceId):
        ap.user_device_role(bad)


def test_a_group_needs_a_subject():
    with pytest.raises(ValueError, match="sub claim"):
        ap.user_group("")


def test_session_ids_never_collide_with_device_ids():
    session_id = ap.SESSION_ID_PREFIX + "0123abcd"
    assert ap.is_session_id(session_id)
    assert not ap.is_session_id("player-1")
    assert not ap.is_session_id(ap.SESSION_ID_PREFIX)
    # The dot is what keeps them apart: no valid device id contains one.
    with pytest.raises(ap.InvalidDeviceId):
        ap.validate_device_id(session_id)
