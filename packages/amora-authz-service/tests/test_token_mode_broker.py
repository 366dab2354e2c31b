"""Token mode against real mosquitto (TLS, dynamic security) with the ``amora_auth`` plugin:
logins write nothing to the broker, tokens connect with their ACL, and every way a session ends
reaches every broker (kicked, refused afterwards), fail closed while one is down, and healed by
the retry and by the full pass's ``listRevocations`` comparison.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import structlog
from authz_broker_harness import NOT_AUTHORISED, WAIT, Harness, receive, subscribe

from amora_authz._control import DynsecClient
from amora_authz._errors import BrokerError
from amora_authz._revocations import AUTH_CONTROL_TOPIC, NO_PLUGIN_HINT, REVOCATION_MARGIN_S, list_revocations
from amora_authz.testing import broker_endpoint, broker_token_key, dev_settings, serve, session_body, token_mode
from amora_devtools import MqttClient, MqttRefused, client_ssl_context, start_broker
from amora_devtools._authz_process import make_broker_token_key, start_authz
from amora_devtools._proc import wait_until
from amora_devtools.broker import TokenPlugin

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    from amora_devtools import BrokerProcess, DevPKI

pytestmark = pytest.mark.services


def _token_broker(folder: Path, key_folder: Path, pki: DevPKI, name: str) -> BrokerProcess:
    _, public = broker_token_key(key_folder)
    return start_broker(folder / name, pki, name=name, token_plugin=TokenPlugin(public_keys=public))


@pytest.fixture
def token_broker(tmp_path: Path, dev_pki: DevPKI) -> Iterator[BrokerProcess]:
    """A broker loading the plugin with the public key of `broker_token_key(tmp_path)`."""
    with _token_broker(tmp_path, tmp_path, dev_pki, "primary") as broker:
        yield broker


@contextlib.asynccontextmanager
async def _service(
    folder: Path, pki: DevPKI, *brokers: BrokerProcess, background: bool = True
) -> AsyncIterator[Harness]:
    settings = dev_settings(
        folder,
        brokers=tuple(broker_endpoint(b) for b in brokers),
        broker=token_mode(folder),
        device_ca_cert=str(pki.ca_file),
        device_ca_key=str(pki.ca_key_file),
        crl_file=str(folder / "service-crl.pem"),
    )
    async with serve(settings, background=background) as svc:
        yield Harness(svc, brokers[0], pki, folder)


def _revoked_on(broker: BrokerProcess) -> dict[str, int]:
    """The plugin's persisted deny list (username -> until)."""
    document = json.loads(broker.revocations_file.read_text())
    return {entry["username"]: entry["until"] for entry in document["sessions"]}


async def _refused(harness: Harness, session: dict[str, Any], broker: BrokerProcess) -> None:
    with pytest.raises(MqttRefused):
        await Harness(harness.svc, broker, harness.pki, harness.folder).app(session)


async def test_a_login_writes_nothing_to_the_broker_and_its_token_connects_with_its_acl(
    token_broker: BrokerProcess, dev_pki: DevPKI, tmp_path: Path
) -> None:
    async with _service(tmp_path, dev_pki, token_broker) as harness:
        await harness.register("player-1", "alice")
        await harness.register("player-2", "bob")
        before = token_broker.dynsec_file.read_bytes()
        fleet = harness.svc.runtime.service.fleet
        commands_before = fleet.status[token_broker.name].commands_applied

        session = await harness.session("alice")

        assert token_broker.dynsec_file.read_bytes() == before
        assert fleet.status[token_broker.name].commands_applied == commands_before
        on_broker = await fleet.clients[0].fetch_state()
        assert not [name for name in on_broker.clients if name.startswith("sess.")]
        assert not [name for name in on_broker.groups if name.startswith("user:")]
        assert not [name for name in on_broker.roles if name.startswith("user-device:")]
        assert {"player-1", "player-2"} <= set(on_broker.clients)  # devices stay dynsec clients

        app = await harness.app(session)
        device = await harness.device("player-1")
        try:
            assert await subscribe(app, "amora/devices/player-1/state") < 0x80
            assert await subscribe(app, "amora/devices/player-2/state") == NOT_AUTHORISED
            await asyncio.to_thread(device.publish, "amora/devices/player-1/state", b"playing", qos=1, timeout=WAIT)
            message = await receive(app)
            assert message is not None
            assert (message.topic, message.payload) == ("amora/devices/player-1/state", b"playing")
        finally:
            app.disconnect()
            device.disconnect()
        # The token connects only as its own session: another client id is refused.
        with pytest.raises(MqttRefused):
            await harness.app(session, client_id="sess.someone-else")


async def test_logout_kicks_the_live_connection_and_the_token_is_refused_afterwards(
    token_broker: BrokerProcess, dev_pki: DevPKI, tmp_path: Path
) -> None:
    async with _service(tmp_path, dev_pki, token_broker) as harness:
        await harness.register("player-1", "alice")
        session = await harness.session("alice")
        app = await harness.app(session)
        response = await harness.svc.http.delete(
            f"/v1/sessions/{session['session_id']}", headers=await harness.svc.auth("alice")
        )
        assert response.status_code == 204
        assert await asyncio.to_thread(app.closed_by_broker, timeout=WAIT)
        await _refused(harness, session, token_broker)
        assert session["session_id"] in _revoked_on(token_broker)
        status = harness.svc.runtime.service.fleet.status[token_broker.name]
        assert status.revocations_sent == 1
        metrics = (await harness.svc.http.get("/metrics")).text
        assert f'amora_authz_broker_revocations_sent_total{{broker="{token_broker.name}"}} 1.0' in metrics


async def test_unlink_and_the_expiry_sweep_cut_live_connections(
    token_broker: BrokerProcess, dev_pki: DevPKI, tmp_path: Path
) -> None:
    async with _service(tmp_path, dev_pki, token_broker) as harness:
        await harness.register("player-1", "alice")
        session = await harness.session("alice")
        app = await harness.app(session)
        admin = await harness.svc.auth("admin")
        unlinked = await harness.svc.http.delete("/v1/admin/users/alice/devices/player-1", headers=admin)
        assert unlinked.status_code == 204
        assert await asyncio.to_thread(app.closed_by_broker, timeout=WAIT)
        await _refused(harness, session, token_broker)
        # A new login gets a token without the device.
        again = await harness.session("alice")
        app = await harness.app(again)
        try:
            assert await subscribe(app, "amora/devices/player-1/state") == NOT_AUTHORISED
        finally:
            app.disconnect()

        # The plugin does not re-check exp on a live connection: the sweep's revocation closes it.
        app = await harness.app(again)
        service = harness.svc.runtime.service
        later = again["expires_at"] + 1
        service._clock_ms = lambda: later
        assert await service.expire_sessions() == [again["session_id"]]
        assert await asyncio.to_thread(app.closed_by_broker, timeout=WAIT)
        await _refused(harness, again, token_broker)


async def test_a_session_ended_after_its_revocation_margin_is_still_kicked(
    token_broker: BrokerProcess, dev_pki: DevPKI, tmp_path: Path
) -> None:
    """Security review F4: the sweep ran (or reached the broker) more than the 60 s margin after
    the session expired, so its revocation's `until` is past: the live connection, which the
    plugin never re-checks, must still be cut, and nothing is left listed for it."""
    async with _service(tmp_path, dev_pki, token_broker) as harness:
        await harness.register("player-1", "alice")
        session = await harness.session("alice")
        app = await harness.app(session)
        service = harness.svc.runtime.service
        later = session["expires_at"] + (REVOCATION_MARGIN_S + 60) * 1000
        service._clock_ms = lambda: later
        service.fleet._clock_ms = lambda: later
        assert await service.expire_sessions() == [session["session_id"]]
        assert await asyncio.to_thread(app.closed_by_broker, timeout=WAIT)
        assert not service.fleet.status[token_broker.name].behind


async def test_a_broker_down_during_a_logout_gets_the_revocation_and_the_service_answers_change_pending(
    dev_pki: DevPKI, tmp_path: Path
) -> None:
    with (
        _token_broker(tmp_path, tmp_path, dev_pki, "primary") as primary,
        _token_broker(tmp_path, tmp_path, dev_pki, "standby") as standby,
    ):
        # No background retry: the test shows the standby without the revocation first.
        async with _service(tmp_path, dev_pki, primary, standby, background=False) as harness:
            svc, fleet = harness.svc, harness.svc.runtime.service.fleet
            await harness.register("player-1", "alice")
            warm, session, other = [await harness.session("alice") for _ in range(3)]
            for broker in (primary, standby):
                (await Harness(svc, broker, dev_pki, tmp_path).app(session)).disconnect()
            alice = await svc.auth("alice")
            assert (await svc.http.delete(f"/v1/sessions/{warm['session_id']}", headers=alice)).status_code == 204
            old_deny_list = standby.revocations_file.read_bytes()  # lists `warm` only

            await asyncio.to_thread(standby.stop)
            response = await svc.http.delete(f"/v1/sessions/{session['session_id']}", headers=alice)
            assert response.status_code == 503
            assert response.json()["code"] == "change_pending"
            assert response.json()["brokers"] == [standby.name]
            assert response.headers["Retry-After"] == "1"
            assert fleet.status[standby.name].behind
            assert fleet.status[standby.name].revocations_failed == 1
            assert (await svc.http.get("/readyz")).json()["code"] == "brokers_behind"
            await _refused(harness, session, primary)
            again = await svc.http.delete(f"/v1/sessions/{session['session_id']}", headers=alice)
            assert (again.status_code, again.json()["code"]) == (503, "change_pending")

            # Back up without it: the token still works there until the retry reaches it.
            await asyncio.to_thread(standby.restart)
            (await Harness(svc, standby, dev_pki, tmp_path).app(session)).disconnect()
            await fleet.retry_pending()
            assert not fleet.status[standby.name].behind
            await _refused(harness, session, standby)
            assert (await svc.http.delete(f"/v1/sessions/{session['session_id']}", headers=alice)).status_code == 204
            assert (await svc.http.get("/readyz")).status_code == 200

            # Restarted from an older deny list: the full pass's listRevocations comparison
            # finds the missing entry and sends it again.
            await asyncio.to_thread(standby.stop)
            standby.revocations_file.write_bytes(old_deny_list)
            await asyncio.to_thread(standby.restart)
            (await Harness(svc, standby, dev_pki, tmp_path).app(session)).disconnect()
            await svc.runtime.service.reconcile()
            await _refused(harness, session, standby)
            assert session["session_id"] in _revoked_on(standby)
            # The other session was never revoked anywhere.
            (await Harness(svc, standby, dev_pki, tmp_path).app(other)).disconnect()


async def test_a_broker_that_lost_its_deny_list_is_closed_until_the_service_syncs_it_at_once(
    token_broker: BrokerProcess, dev_pki: DevPKI, tmp_path: Path
) -> None:
    """Security review F1: a broker restarted without its deny list (a new volume) must not
    let a logged-out token in, and the service syncs it as soon as its admin connection is
    new, not at the next periodic check (an hour away in these settings)."""
    async with _service(tmp_path, dev_pki, token_broker) as harness:
        svc = harness.svc
        await harness.register("player-1", "alice")
        ended, live = await harness.session("alice"), await harness.session("alice")
        alice = await svc.auth("alice")
        assert (await svc.http.delete(f"/v1/sessions/{ended['session_id']}", headers=alice)).status_code == 204
        checks = svc.runtime.service.fleet.full_passes

        await asyncio.to_thread(token_broker.stop)
        token_broker.revocations_file.unlink()
        await asyncio.to_thread(token_broker.restart)
        # Closed until the service has synced it, then the revocation is back.
        await _refused(harness, ended, token_broker)

        confirmed = "amora_auth: deny list confirmed by the authz service (1 revocation(s))"
        seen = await asyncio.to_thread(
            wait_until, lambda: True if confirmed in token_broker.log_text() else None, timeout=30.0
        )
        assert seen, token_broker.log_text()[-2000:]
        (await harness.app(live)).disconnect()
        await _refused(harness, ended, token_broker)
        assert ended["session_id"] in _revoked_on(token_broker)
        assert json.loads(token_broker.revocations_file.read_text())["synced"] is True
        assert svc.runtime.service.fleet.full_passes == checks  # no periodic check ran meanwhile


async def test_a_session_that_expires_while_a_broker_is_unreachable_is_kicked_there_even_after_a_service_restart(
    dev_pki: DevPKI, tmp_path: Path
) -> None:
    """Security review F4: the plugin never re-checks exp on a live connection, so the kick
    must reach every broker even after the revocation's `until`, and even when the service
    restarted meanwhile (what it owed a broker was only in memory): the revocation stays in
    the database until every broker acknowledged it."""
    with (
        _token_broker(tmp_path, tmp_path, dev_pki, "primary") as primary,
        _token_broker(tmp_path, tmp_path, dev_pki, "standby") as standby,
    ):
        async with _service(tmp_path, dev_pki, primary, standby, background=False) as harness:
            svc, service = harness.svc, harness.svc.runtime.service
            await harness.register("player-1", "alice")
            session = await harness.session("alice")
            app = await Harness(svc, standby, dev_pki, tmp_path).app(session)
            expired = session["expires_at"] + 1
            late = session["expires_at"] + (REVOCATION_MARGIN_S + 30) * 1000
            # Frozen: the service's exchanges with it time out, the app's connection stays open.
            standby.signal(signal.SIGSTOP)
            try:
                service._clock_ms = service.fleet._clock_ms = lambda: expired
                assert await service.expire_sessions() == [session["session_id"]]
                assert service.fleet.status[standby.name].behind
                # Past the revocation's `until` (expiry + margin): kept, and still owed.
                service._clock_ms = service.fleet._clock_ms = lambda: late
                assert await service.expire_sessions() == []
                assert session["session_id"] in await svc.runtime.store.revocations_of()
                assert (await svc.http.get("/readyz")).json()["code"] == "brokers_behind"
            except BaseException:
                standby.signal(signal.SIGCONT)
                raise
        # The service restarts while the standby is still out of reach, then it comes back.
        try:
            async with _service(tmp_path, dev_pki, primary, standby, background=False) as harness:
                svc, service = harness.svc, harness.svc.runtime.service
                service._clock_ms = service.fleet._clock_ms = lambda: late
                assert service.fleet.status[standby.name].behind
                standby.signal(signal.SIGCONT)
                await service.fleet.retry_pending()
                assert not service.fleet.status[standby.name].behind
                assert await asyncio.to_thread(app.closed_by_broker, timeout=WAIT)
                # Every broker acknowledged it: the past revocation goes at the next sweep.
                await service.expire_sessions()
                assert await svc.runtime.store.revocations_of() == {}
                assert (await svc.http.get("/readyz")).status_code == 200
        finally:
            standby.signal(signal.SIGCONT)


async def test_a_primary_that_refuses_the_service_s_tokens_is_not_ready_and_no_session_is_handed_out(
    dev_pki: DevPKI, tmp_path: Path
) -> None:
    """Security review F7: the primary's plugin loads another public key (a wrong secret
    mounted, the broker rotated first). The full pass's probe token is refused: readiness and
    logins fail closed, naming the fix, until the right key is loaded."""
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    with _token_broker(tmp_path, foreign, dev_pki, "primary") as primary:
        async with _service(tmp_path, dev_pki, primary, background=False) as harness:
            svc, fleet = harness.svc, harness.svc.runtime.service.fleet
            await harness.register("player-1", "alice")
            assert fleet.status[primary.name].token_refused
            for path in ("/readyz/serving", "/readyz"):
                answer = await svc.http.get(path)
                assert (answer.status_code, answer.json()["code"]) == (503, "token_refused"), path
                assert "broker-token-key public" in answer.json()["message"]
            metrics = (await svc.http.get("/metrics")).text
            assert f'amora_authz_broker_token_refused{{broker="{primary.name}"}} 1.0' in metrics
            refused = await svc.http.post("/v1/sessions", json=session_body(), headers=await svc.auth("alice"))
            assert (refused.status_code, refused.json()["code"]) == (503, "token_refused")

            # The service's public key on the broker: the retried full pass's probe passes.
            _, public = broker_token_key(tmp_path)
            primary.token_public_keys_file.write_bytes(public.read_bytes())
            await asyncio.to_thread(primary.reload)
            await fleet.retry_pending()
            assert not fleet.status[primary.name].token_refused
            assert (await svc.http.get("/readyz/serving")).status_code == 200
            assert (await svc.http.get("/readyz")).status_code == 200
            (await harness.app(await harness.session("alice"))).disconnect()


async def test_switching_to_token_mode_removes_the_session_objects_dynsec_mode_made(
    token_broker: BrokerProcess, dev_pki: DevPKI, tmp_path: Path
) -> None:
    dynsec = dev_settings(
        tmp_path,
        brokers=(broker_endpoint(token_broker),),
        device_ca_cert=str(dev_pki.ca_file),
        device_ca_key=str(dev_pki.ca_key_file),
        crl_file=str(tmp_path / "service-crl.pem"),
    )
    async with serve(dynsec) as svc:
        harness = Harness(svc, token_broker, dev_pki, tmp_path)
        await harness.register("player-1", "alice")
        await harness.session("alice")
        state = await svc.runtime.service.fleet.clients[0].fetch_state()
        assert any(name.startswith("sess.") for name in state.clients)
        assert "user:alice" in state.groups
    async with _service(tmp_path, dev_pki, token_broker) as harness:
        state = await harness.svc.runtime.service.fleet.clients[0].fetch_state()
        assert not [name for name in state.clients if name.startswith("sess.")]
        assert not state.groups
        assert "user-device:player-1" not in state.roles
        assert {"player-1", "svc.session-lists"} <= set(state.clients)
        assert "device:player-1" in state.roles
        # The periodic check agrees with the database's counts: no full pass needed.
        reports = await harness.svc.runtime.service.fleet.check_all()
        assert [r.full for r in reports] == [None]


async def test_the_harness_starts_the_service_in_token_mode(tmp_path: Path, dev_pki: DevPKI) -> None:
    """What the dev stack does: the key pair from the CLI, the brokers, then the service."""
    private, public = make_broker_token_key(tmp_path / "keys")
    assert (private.stat().st_mode & 0o777, public.read_bytes()[:26]) == (0o600, b"-----BEGIN PUBLIC KEY-----")
    assert make_broker_token_key(tmp_path / "keys") == (private, public)  # made once, reused
    plugin = TokenPlugin(public_keys=public)
    with start_broker(tmp_path / "broker", dev_pki, token_plugin=plugin) as broker:
        process, url = await asyncio.to_thread(
            start_authz, tmp_path / "authz", dev_pki, [broker], users=["alice"], broker_token_key=private
        )
        try:
            async with httpx.AsyncClient(base_url=url, timeout=10) as http:
                token = (await http.post("/dev-issuer/token", json={"username": "alice"})).json()["access_token"]
                created = await http.post(
                    "/v1/sessions", json=session_body(), headers={"Authorization": f"Bearer {token}"}
                )
                assert created.status_code == 201, created.text
            credential = created.json()["broker"]
            assert credential["password"].count(".") == 2  # a JWS, not a derived password
            app = await asyncio.to_thread(
                MqttClient.connect,
                broker.host,
                broker.app_port,
                ssl_context=client_ssl_context(broker.ca_file),
                username=credential["username"],
                password=credential["password"],
                client_id=credential["client_id"],
                timeout=WAIT,
            )
            app.disconnect()
        finally:
            await asyncio.to_thread(process.stop)


async def test_a_broker_without_the_plugin_is_named_as_the_cause(broker: BrokerProcess) -> None:
    """mosquitto drops a $CONTROL message no plugin handles: silence, so the error says what to check."""
    client = DynsecClient(
        broker_endpoint(broker),
        logger=structlog.get_logger("test"),
        timeout_s=0.5,
        control_topic=AUTH_CONTROL_TOPIC,
        unanswered_hint=NO_PLUGIN_HINT,
    )
    try:
        with pytest.raises(BrokerError) as refused:
            await list_revocations(client)
    finally:
        await client.close()
    assert refused.value.code == "broker_timeout"
    assert "does the broker load the amora_auth plugin" in refused.value.message
