"""Setup mistakes and outages give the SDK's own errors, naming the cause (real broker, real sockets)."""

import socket

import httpx
import pytest

from amora_devtools.pki import DevPKI
from amora_sync import AmoraClient, AuthenticationError, AuthzUnavailableError, ConnectError

pytestmark = pytest.mark.services


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_missing_ca_file_is_a_connect_error_naming_the_path(stack, tmp_path):
    missing = tmp_path / "no-such-ca.pem"
    with pytest.raises(ConnectError, match="ca_file=") as caught:
        async with stack.client(ca_file=missing):
            pass
    assert str(missing) in str(caught.value)
    assert isinstance(caught.value.__cause__, FileNotFoundError)


async def test_a_network_failure_in_the_token_provider_is_unavailable_not_authentication(stack):
    port = _closed_port()

    async def token() -> str:
        async with httpx.AsyncClient() as http:  # an identity provider that is down
            r = await http.post(f"http://127.0.0.1:{port}/token")
            return str(r.json()["access_token"])

    with pytest.raises(AuthzUnavailableError, match="could not reach") as caught:
        async with AmoraClient(stack.authz.url, token, ca_file=stack.pki.ca_file):
            pass
    assert not isinstance(caught.value, AuthenticationError)
    assert isinstance(caught.value.__cause__, httpx.ConnectError)


async def test_unreachable_authz_names_its_url(stack):
    url = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(AuthzUnavailableError) as caught:
        async with AmoraClient(url, lambda: "token-alice", ca_file=stack.pki.ca_file):
            pass
    assert url in str(caught.value)


async def test_an_authz_url_on_a_non_http_port_gives_a_reason(stack):
    # The broker's TLS listener: it answers an HTTP request by closing the connection.
    url = f"http://127.0.0.1:{stack.broker.app_port}"
    with pytest.raises(AuthzUnavailableError) as caught:
        async with AmoraClient(url, lambda: "token-alice", ca_file=stack.pki.ca_file):
            pass
    message = str(caught.value)
    assert url in message
    reason = message.split("unreachable:", 1)[1].strip()
    assert reason
    assert "HTTP port" in message


async def test_a_broker_certificate_from_another_ca_fails_at_once_not_after_the_timeout(stack, tmp_path):
    other = DevPKI.create(tmp_path / "other-pki")
    # A generous timeout: only the verification path, not the timeout, gives this message.
    with pytest.raises(ConnectError, match="could be trusted") as caught:
        async with stack.client(ca_file=other.ca_file, connect_timeout=120):
            pass
    assert "failed verification" in str(caught.value)
    assert "ca_file" in str(caught.value)
