from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

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


def test_service_accounts_carry_the_reserved_prefix():
    assert ap.service_account_name("amora-authz") == "svc.amora-authz"
    assert ap.is_reserved_account_name("svc.amora-authz")
    assert ap.is_reserved_account_name(ap.SESSION_ID_PREFIX + "0" * 32)
    assert not ap.is_reserved_account_name("amora-authz")


@pytest.mark.parametrize("bad", ["", ".x", "a b", "a/b", "#", "x" * 61])
def test_bad_service_names_are_refused(bad: str):
    with pytest.raises(ValueError, match="invalid service account name"):
        ap.service_account_name(bad)


@pytest.mark.parametrize("name", [ap.SERVICE_ACCOUNT_PREFIX + "bridge-standby", ap.SESSION_ID_PREFIX + "ab"])
def test_a_reserved_name_is_never_a_valid_device_id(name: str):
    with pytest.raises(ap.InvalidDeviceId):
        ap.validate_device_id(name)


@given(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", fullmatch=True))
def test_no_valid_device_id_is_reserved(device_id: str):
    assert not ap.is_reserved_account_name(ap.validate_device_id(device_id))
