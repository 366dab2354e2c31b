"""`AmoraClient(transport=...)`: which of the session's endpoints the client uses, and the errors."""

from __future__ import annotations

import pytest

from amora_sync import AmoraClient, ConnectError


def test_an_unknown_transport_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match="transport must be one of 'auto', 'mqtts', 'wss', not 'websockets'"):
        AmoraClient("http://authz.invalid", lambda: "token", transport="websockets")  # type: ignore[arg-type]


@pytest.mark.services
async def test_a_session_without_an_endpoint_for_the_transport_fails_at_once_and_logs_out(stack):
    # The stand-in authz service lists only mqtts:// endpoints.
    with pytest.raises(ConnectError, match=r"the session lists no wss endpoint \(it lists 127\.0\.0\.1:\d+\)"):
        async with stack.client(transport="wss"):
            pass
    assert stack.authz.calls[-1].startswith("DELETE /v1/sessions/")  # the session was ended
    assert not stack.authz.sessions
