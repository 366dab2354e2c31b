"""Token mode end to end: the real stack with broker tokens (``Stack(credentials="token")``).

Sessions are not broker accounts here: the authz service signs each session's MQTT password
(an ES256 token carrying its ACL) and the brokers' ``amora_auth`` plugin checks it at CONNECT
and enforces its ACL (docs/decisions/0015-stateless-broker-tokens.md). An SDK client logs in,
watches and commands a real agent on a real MPD; logging out cuts it; forged, expired and
other users' tokens are refused at the broker; a session reaches only its user's devices;
an unlink revokes the user's sessions and the SDK comes back without the device.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from amora_devtools.broker import amora_auth, dynsec
from amora_devtools.broker_tokens import b64url, load_token_key, sign_token, token_parts
from amora_devtools.stack import Stack
from amora_protocol import PlaybackStatus, commands_topic, state_topic
from amora_sync import ConnectionState, DeviceState, Pause, Play

if TYPE_CHECKING:
    from collections.abc import Iterator

WAIT_S = 15.0
NOT_AUTHORIZED = 0x87
REFUSED = {NOT_AUTHORIZED}  # mosquitto 2.0.11 answers every refused credential so


@pytest.fixture(scope="module")
def token_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One token-mode stack for this module: alice owns player-1 (real MPD) and -2, bob player-3.

    Each test leaves it as it found it (links restored).
    """
    users = {"alice": (0, 1), "bob": (2,), "carol": ()}
    folder = tmp_path_factory.mktemp("tokens")
    with Stack(folder / "stack", players=3, users=users, supervise=False, credentials="token") as running:
        yield running


# ---------------------------------------------------------------- helpers


def _connect_rc(stack: Stack, mqtt_probe: Any, username: str, password: str, client_id: str) -> int | None:
    assert stack.pki is not None
    with mqtt_probe(
        stack.brokers[0].app_port, stack.pki.ca_file, username=username, password=password, client_id=client_id
    ) as probe:
        return probe.connect_rc  # type: ignore[no-any-return]


# ---------------------------------------------------------------- the tests


async def test_an_sdk_client_watches_and_commands_the_real_mpd_player_with_a_token(token_stack, sdk_client):
    async with sdk_client(token_stack, "alice") as client:
        session = await anext(client.session_changes())
        assert session.broker.username.startswith("sess.")
        header, claims, _ = token_parts(session.broker.password)
        assert header["alg"] == "ES256"
        assert (claims["username"], claims["clientid"]) == (session.broker.username, session.broker.client_id)
        # Nothing was written to the broker for this login: the session has no dynsec account.
        answer = await asyncio.to_thread(
            dynsec, token_stack.brokers[0], [{"command": "getClient", "username": session.broker.username}], check=False
        )
        assert answer[0].get("error")
        async with client.watch("player-1") as events:

            async def until(status: PlaybackStatus) -> DeviceState:
                async with asyncio.timeout(WAIT_S):
                    async for event in events:
                        if isinstance(event, DeviceState) and event.status is status:
                            return event
                raise AssertionError("the watch ended")

            assert (await client.command("player-1", Play(), timeout=WAIT_S)).status.value == "succeeded"
            await until(PlaybackStatus.PLAY)
            with token_stack.mpd.client() as mpd:  # the real MPD plays
                assert mpd.status()["state"] == "play"
            assert (await client.command("player-1", Pause(), timeout=WAIT_S)).status.value == "succeeded"
            await until(PlaybackStatus.PAUSE)
            with token_stack.mpd.client() as mpd:
                assert mpd.status()["state"] == "pause"
        assert client.stats.invalid == 0


def test_logout_cuts_the_connection_and_the_token_is_refused_after(token_stack, new_session, mqtt_probe):
    session = new_session(token_stack, "alice")
    broker = session["broker"]
    with mqtt_probe(token_stack.brokers[0].app_port, token_stack.pki.ca_file, session=broker) as probe:
        assert probe.connect_rc == 0
        cut = threading.Event()
        probe.client.on_disconnect = lambda *_args: cut.set()
        gone = httpx.delete(
            f"{token_stack.authz_url}/v1/sessions/{session['session_id']}",
            headers={"Authorization": f"Bearer {session['token']}"},
            timeout=WAIT_S,
        )
        assert gone.status_code == 204
        assert cut.wait(WAIT_S), "the broker did not cut the logged-out session"
    # The token itself is still signed and unexpired: the broker's revocation refuses it,
    # on every broker, and the plugin persisted it.
    for broker_process in token_stack.brokers:
        with mqtt_probe(broker_process.app_port, token_stack.pki.ca_file, session=broker) as again:
            assert again.connect_rc in REFUSED
    assert broker["username"] in token_stack.brokers[0].revocations_file.read_text()


def test_forged_expired_and_other_users_tokens_are_refused_at_the_broker(token_stack, new_session, mqtt_probe):
    alice = new_session(token_stack, "alice")["broker"]
    bob = new_session(token_stack, "bob")["broker"]
    user, client_id, token = alice["username"], alice["client_id"], alice["password"]
    header, claims, signature = token_parts(token)
    # The genuine token is accepted (so each refusal below is the token's doing).
    assert _connect_rc(token_stack, mqtt_probe, user, token, client_id) == 0
    # Forged: bob's device added to the ACL, the service's signature kept.
    widened = {**claims, "acl": [*claims["acl"], {"permission": "allow", "action": "all", "topic": "amora/#"}]}
    forged = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(widened).encode())}.{signature}"
    assert _connect_rc(token_stack, mqtt_probe, user, forged, client_id) in REFUSED
    # Signed by another key under the service's key id.
    stranger = sign_token(header, widened, ec.generate_private_key(ec.SECP256R1()))
    assert _connect_rc(token_stack, mqtt_probe, user, stranger, client_id) in REFUSED
    # Unsigned (alg none).
    unsigned = f"{b64url(json.dumps({**header, 'alg': 'none'}).encode())}.{b64url(json.dumps(claims).encode())}."
    assert _connect_rc(token_stack, mqtt_probe, user, unsigned, client_id) in REFUSED
    # Expired, though signed by the service's own key.
    now = int(time.time())
    assert token_stack.broker_token_key is not None
    service_key = load_token_key(token_stack.broker_token_key)
    expired = sign_token(header, {**claims, "iat": now - 120, "exp": now - 60}, service_key)
    assert _connect_rc(token_stack, mqtt_probe, user, expired, client_id) in REFUSED
    # Another user's genuine token under this session's name, or under its own name with
    # this session's client id: the token names its username and client id.
    assert _connect_rc(token_stack, mqtt_probe, user, bob["password"], client_id) in REFUSED
    assert _connect_rc(token_stack, mqtt_probe, bob["username"], bob["password"], client_id) in REFUSED
    assert _connect_rc(token_stack, mqtt_probe, bob["username"], bob["password"], bob["client_id"]) == 0


def test_a_token_session_reaches_only_its_users_devices(token_stack, new_session, mqtt_probe):
    broker = new_session(token_stack, "alice")["broker"]
    with mqtt_probe(token_stack.brokers[0].app_port, token_stack.pki.ca_file, session=broker) as probe:
        assert probe.connect_rc == 0
        assert probe.subscribe(state_topic("player-1")) == [1]
        assert probe.subscribe(state_topic("player-3")) == [NOT_AUTHORIZED]  # bob's
        assert probe.subscribe("amora/devices/+/state") == [NOT_AUTHORIZED]
        assert probe.subscribe("amora/#") == [NOT_AUTHORIZED]
        assert probe.subscribe("$CONTROL/amora-auth/v1/response") == [NOT_AUTHORIZED]
        assert probe.publish_acked(commands_topic("player-3"), b"not a command") == NOT_AUTHORIZED
        # States are the devices' to publish, not a session's.
        assert probe.publish_acked(state_topic("player-1"), b"not a state") == NOT_AUTHORIZED
        assert probe.publish_acked("$CONTROL/amora-auth/v1", b'{"commands": []}') == NOT_AUTHORIZED


async def test_unlink_revokes_the_sessions_and_the_sdk_comes_back_without_the_device(
    token_stack, sdk_client, authz_http, mqtt_probe
):
    async with sdk_client(token_stack, "alice") as client:
        sessions = client.session_changes()
        before = await anext(sessions)
        assert set(before.devices) == {"player-1", "player-2"}
        with authz_http(token_stack, "admin") as admin:
            try:
                assert admin.delete("/v1/admin/users/alice/devices/player-2").status_code == 204
                # The broker refuses the old token (revoked), the SDK exchanges it for a new
                # session whose token and device list lack player-2.
                async with asyncio.timeout(WAIT_S):
                    after = await anext(sessions)
                assert after.session_id != before.session_id
                assert list(after.devices) == ["player-1"]
                _, claims, _ = token_parts(after.broker.password)
                assert not [rule for rule in claims["acl"] if "player-2" in rule["topic"]]
                await client.wait_connected(timeout=WAIT_S)
                assert (await client.command("player-1", Pause(), timeout=WAIT_S)).status.value == "succeeded"
                old = before.broker
                assert _connect_rc(token_stack, mqtt_probe, old.username, old.password, old.client_id) in REFUSED
            finally:
                assert admin.put("/v1/admin/users/alice/devices/player-2").status_code in {200, 201, 204}


async def test_a_refresh_brings_a_new_token_and_a_kicked_client_comes_back_to_the_same_session(token_stack, sdk_client):
    # 3600 s sessions refreshed at 99.95 % of their life left: within about 2 s.
    async with sdk_client(token_stack, "alice", refresh_margin=0.9995) as client:
        sessions = client.session_changes()
        first = await anext(sessions)
        async with asyncio.timeout(WAIT_S):
            refreshed = await anext(sessions)
        assert refreshed.session_id == first.session_id
        assert refreshed.broker.password != first.broker.password  # a new token
        assert token_parts(refreshed.broker.password)[1]["exp"] >= token_parts(first.broker.password)[1]["exp"]
        assert client.stats.connects == 1  # the broker checked the token at CONNECT: the link stays
        changes = client.connection_changes()
        assert (await anext(changes)).state is ConnectionState.CONNECTED
        # The plugin kicks the session's connections (an `until` already past lists nothing).
        kick = {"username": first.broker.username, "until": int(time.time()) - 1}
        await asyncio.to_thread(amora_auth, token_stack.brokers[0], [{"command": "revokeSessions", "sessions": [kick]}])
        async with asyncio.timeout(WAIT_S):
            while (await anext(changes)).state is not ConnectionState.CONNECTED:
                pass
        # Back with the newest token on the same session, not through a new exchange.
        assert client.session_id == first.session_id
        assert client.stats.session_exchanges == 1
        assert client.stats.connects >= 2
