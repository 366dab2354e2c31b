"""The service keeps the brokers matching its database: reconciliation, primary and standby,
persistence checks, concurrent changes, the background loops (real mosquitto, TLS, dynsec).

What the broker then enforces: ``test_broker_access.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import time
from typing import TYPE_CHECKING

import pytest

from amora_authz import BrokerEndpoint
from amora_authz._dynsec import Scope
from amora_authz._store import Session
from amora_authz.testing import broker_endpoint, dev_settings, serve, session_body
from amora_devtools import MqttRefused
from amora_devtools.broker import dynsec

if TYPE_CHECKING:
    from pathlib import Path

    from amora_devtools import BrokerProcess
from authz_broker_harness import WAIT, Harness

pytestmark = pytest.mark.services


async def test_reconciliation_heals_a_broker_that_lost_its_dynsec_file(broker: BrokerProcess, tmp_path: Path) -> None:
    pristine = tmp_path / "pristine-dynsec.json"
    shutil.copyfile(broker.dynsec_file, pristine)
    settings = dev_settings(tmp_path, brokers=(broker_endpoint(broker),))
    async with serve(settings) as svc:
        harness = Harness(svc, broker, broker.pki, tmp_path)
        session = await harness.session("alice")
        (await harness.app(session)).disconnect()

        await asyncio.to_thread(broker.stop)
        # Restore the file as the harness made it: admin only, no Amora state. Writing
        # into the existing file keeps its owner (the broker's user).
        broker.dynsec_file.write_bytes(pristine.read_bytes())
        await asyncio.to_thread(broker.restart)
        with pytest.raises(MqttRefused):
            await harness.app(session)

        # More than one message's worth of commands (the client sends them in batches).
        now = time.time_ns() // 10**6
        for n in range(250):
            await svc.runtime.store.add_session(
                Session(
                    session_id=f"sess.bulk{n:04d}",
                    user_sub=f"user-{n % 7}",
                    client_name=None,
                    signing_key=b"k" * 32,
                    encryption_key=b"x" * 32,
                    created_at_ms=now,
                    expires_at_ms=now + 3_600_000,
                )
            )
        results = await svc.runtime.service.reconcile()
        assert results[broker.name] > 250
        on_broker = await svc.runtime.service.fleet.clients[0].fetch_state()
        assert {name for name in on_broker.clients if name.startswith("sess.")} == {
            session["session_id"],
            *(f"sess.bulk{n:04d}" for n in range(250)),
        }
        healed = await harness.app(session)
        healed.disconnect()
        status = svc.runtime.service.fleet.status[broker.name]
        assert status.reachable
        assert status.persisting is True
        # A second pass finds nothing to do.
        assert (await svc.runtime.service.reconcile())[broker.name] == 0


async def test_primary_and_standby_are_both_reconciled(
    broker_pair: tuple[BrokerProcess, BrokerProcess], tmp_path: Path
) -> None:
    primary, standby = broker_pair
    settings = dev_settings(tmp_path, brokers=(broker_endpoint(primary), broker_endpoint(standby)))
    async with serve(settings) as svc:
        session = await Harness(svc, primary, primary.pki, tmp_path).session("alice")
        assert session["broker"]["endpoints"] == [
            *broker_endpoint(primary).client_endpoints,
            *broker_endpoint(standby).client_endpoints,
        ]
        for server in (primary, standby):
            client = await Harness(svc, server, server.pki, tmp_path).app(session)
            client.disconnect()
        assert {s.name: s.reachable for s in svc.runtime.service.fleet.status.values()} == {
            primary.name: True,
            standby.name: True,
        }
        ready = await svc.http.get("/readyz")
        assert ready.json()["status"] == "ready"

        # With the standby down, a logout is applied on the primary but not reported
        # done (fail closed): 503 change_pending naming the standby, and not ready.
        await asyncio.to_thread(standby.stop)
        alice = await svc.auth("alice")
        response = await svc.http.delete(f"/v1/sessions/{session['session_id']}", headers=alice)
        assert response.status_code == 503
        assert response.json()["code"] == "change_pending"
        assert response.json()["brokers"] == [standby.name]
        assert response.headers["Retry-After"] == "1"
        status = svc.runtime.service.fleet.status
        assert status[primary.name].reachable
        assert not status[standby.name].reachable
        assert status[standby.name].behind
        with pytest.raises(MqttRefused):
            await Harness(svc, primary, primary.pki, tmp_path).app(session)
        ready = await svc.http.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["code"] == "brokers_behind"
        # Logins need only the primary: the load balancer's probe keeps the service in rotation.
        serving = await svc.http.get("/readyz/serving")
        assert (serving.status_code, serving.json()["status"]) == (200, "ready")
        # Repeating the request answers the same while the standby is behind...
        again = await svc.http.delete(f"/v1/sessions/{session['session_id']}", headers=alice)
        assert (again.status_code, again.json()["code"]) == (503, "change_pending")
        # ...and the retry heals the standby once it is back; then the repeat succeeds.
        await asyncio.to_thread(standby.restart)
        with contextlib.suppress(MqttRefused):
            # Still holds the deleted session: the standby missed the change.
            (await Harness(svc, standby, standby.pki, tmp_path).app(session)).disconnect()
        await svc.runtime.service.fleet.retry_pending()
        assert status[standby.name].reachable
        assert not status[standby.name].behind
        with pytest.raises(MqttRefused):
            await Harness(svc, standby, standby.pki, tmp_path).app(session)
        again = await svc.http.delete(f"/v1/sessions/{session['session_id']}", headers=alice)
        assert again.status_code == 204
        assert (await svc.http.get("/readyz")).status_code == 200
        # Once settled, the session is simply gone.
        gone = await svc.http.delete(f"/v1/sessions/{session['session_id']}", headers=alice)
        assert gone.status_code == 404


async def test_a_broker_that_cannot_save_is_reported(broker: BrokerProcess, tmp_path: Path) -> None:
    settings = dev_settings(tmp_path, brokers=(broker_endpoint(broker),))
    async with serve(settings) as svc:

        def persisting() -> bool | None:
            return svc.runtime.service.fleet.status[broker.name].persisting

        assert persisting() is True
        state_dir = broker.dynsec_file.parent
        owner = state_dir.stat()
        # Take the broker's write access to its state directory away (as a wrongly
        # owned volume would): mosquitto still answers "success" to every command.
        os.chown(state_dir, 0, 0)
        try:
            session = await Harness(svc, broker, broker.pki, tmp_path).session("alice")
            assert persisting() is False
            metrics = await svc.http.get("/metrics")
            assert f'amora_authz_broker_persisting{{broker="{broker.name}"}} 0.0' in metrics.text
        finally:
            os.chown(state_dir, owner.st_uid, owner.st_gid)
        # The broker's memory matches the database, but its file does not: a full pass
        # has nothing to send and still reports it (a restart would lose the session).
        assert (await svc.runtime.service.reconcile())[broker.name] == 0
        assert persisting() is False
        # The next change makes the broker write its whole state again.
        response = await svc.http.delete(f"/v1/sessions/{session['session_id']}", headers=await svc.auth("alice"))
        assert response.status_code == 204
        assert persisting() is True
        await svc.runtime.service.reconcile()
        assert persisting() is True


async def test_concurrent_changes_leave_the_broker_matching_the_database(harness: Harness) -> None:
    for n in range(4):
        await harness.register(f"player-{n}")
    admin = await harness.svc.auth("admin")

    async def toggle(device_id: str, times: int) -> None:
        for _ in range(times):
            await harness.svc.http.put(f"/v1/admin/users/alice/devices/{device_id}", headers=admin)
            await harness.svc.http.delete(f"/v1/admin/users/alice/devices/{device_id}", headers=admin)
        await harness.svc.http.put(f"/v1/admin/users/alice/devices/{device_id}", headers=admin)

    async with asyncio.TaskGroup() as tg:
        for n in range(4):
            tg.create_task(toggle(f"player-{n}", 3 + n))
    # One more unlink racing a link of another device.
    async with asyncio.TaskGroup() as tg:
        tg.create_task(harness.svc.http.delete("/v1/admin/users/alice/devices/player-0", headers=admin))
        tg.create_task(harness.svc.http.delete("/v1/admin/users/alice/devices/player-2", headers=admin))
    client = harness.svc.runtime.service.fleet.clients[0]
    state = await client.fetch_scope(Scope(groups=frozenset({"user:alice"})))
    assert state.groups["user:alice"].roles == {"user-device:player-1", "user-device:player-3"}
    # And a full pass has nothing left to correct.
    assert (await harness.svc.runtime.service.reconcile())[harness.broker.name] == 0


async def test_no_session_is_handed_out_without_the_primary(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        down = BrokerEndpoint(name="down", host="127.0.0.1", port=port, username="x", password="y", tls=False)
        async with serve(dev_settings(tmp_path, brokers=(down,))) as svc:
            response = await svc.http.post("/v1/sessions", json=session_body(), headers=await svc.auth("alice"))
            assert response.status_code == 503
            assert response.json()["code"] == "broker_unavailable"
            assert response.headers["Retry-After"] == "1"
            # The credential that could not be created is not kept either.
            assert await svc.runtime.store.active_sessions(now_ms=0) == []
            status = svc.runtime.service.fleet.status["down"]
            assert not status.reachable
            assert status.last_error
            ready = await svc.http.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["code"] == "brokers_unreachable"
            serving = await svc.http.get("/readyz/serving")
            assert (serving.status_code, serving.json()["code"]) == (503, "primary_unreachable")


async def test_the_background_loops_heal_and_expire(broker: BrokerProcess, tmp_path: Path) -> None:
    pristine = tmp_path / "pristine-dynsec.json"
    shutil.copyfile(broker.dynsec_file, pristine)
    settings = dev_settings(
        tmp_path, brokers=(broker_endpoint(broker),), reconcile_interval_s=0.2, expiry_check_interval_s=0.1
    )
    async with serve(settings) as svc:
        harness = Harness(svc, broker, broker.pki, tmp_path)
        session = await harness.session("alice")
        await asyncio.to_thread(broker.stop)
        broker.dynsec_file.write_bytes(pristine.read_bytes())
        await asyncio.to_thread(broker.restart)
        # The periodic check sees a new admin connection (a restarted broker may have
        # loaded an older file) and runs a full pass: alice's account comes back.
        probe = [{"command": "getClient", "username": session["session_id"]}]
        async with asyncio.timeout(WAIT):
            while True:
                if not (await asyncio.to_thread(dynsec, broker, probe, check=False))[0].get("error"):
                    break
                await asyncio.sleep(0.1)  # bounded poll of the broker's state
        alice = await harness.app(session)
        try:
            kicked = asyncio.create_task(asyncio.to_thread(alice.closed_by_broker, timeout=WAIT))
            service = svc.runtime.service
            real_clock = service._clock_ms
            service._clock_ms = lambda: real_clock() + 2 * service.session_ttl_s * 1000
            assert await kicked, "the expiry sweep did not remove the expired session's client"
        finally:
            alice.disconnect()


async def test_a_foreign_object_with_a_desired_name_is_never_taken_over(harness: Harness) -> None:
    """Issue #11: the reconciler used to adopt any object bearing a name it wanted."""
    await harness.register("player-9", "alice")
    broker, service = harness.broker, harness.svc.runtime.service
    # An operator's account takes the device's name (it is deleted and re-created
    # without the service's marker, with a role of its own).
    await asyncio.to_thread(
        dynsec,
        broker,
        [
            {"command": "deleteClient", "username": "player-9"},
            {"command": "createRole", "rolename": "ops-tool", "acls": []},
            {"command": "createClient", "username": "player-9", "textname": "ops", "roles": [{"rolename": "ops-tool"}]},
        ],
    )
    try:
        await service.reconcile()  # a full pass
        answer = (await asyncio.to_thread(dynsec, broker, [{"command": "getClient", "username": "player-9"}]))[0]
        client = answer["data"]["client"]
        assert client["textname"] == "ops"
        assert [r["rolename"] for r in client["roles"]] == ["ops-tool"]
        status = service.fleet.status[broker.name]
        assert status.foreign == ["client:player-9"]
        assert status.behind
        ready = await harness.svc.http.get("/readyz")
        assert (ready.status_code, ready.json()["code"]) == (503, "brokers_behind")
        assert ready.json()["brokers"][broker.name]["foreign"] == ["client:player-9"]
    finally:
        await asyncio.to_thread(
            dynsec,
            broker,
            [{"command": "deleteClient", "username": "player-9"}, {"command": "deleteRole", "rolename": "ops-tool"}],
        )
    # Once the operator freed the name, the next pass restores the device.
    await service.reconcile()
    assert not service.fleet.status[broker.name].behind
    assert (await harness.svc.http.get("/readyz")).status_code == 200


async def test_the_periodic_check_is_cheap_in_steady_state_and_repairs_what_differs(harness: Harness) -> None:
    """Issue #15: the periodic pass must not cost a full reconcile while nothing changed."""
    await harness.register("player-1", "alice")
    session = await harness.session("alice")
    broker, service = harness.broker, harness.svc.runtime.service
    fleet = service.fleet
    fleet._settle_s = 0.05
    full_before = fleet.full_passes
    mtime = broker.dynsec_file.stat().st_mtime_ns
    for _ in range(3):
        (report,) = await service.periodic_pass()
        assert (report.full, report.commands) == (None, 0)
    assert fleet.full_passes == full_before
    assert broker.dynsec_file.stat().st_mtime_ns == mtime  # nothing was written
    # An operator deletes a managed account behind the service's back: the counts differ,
    # and the next check repairs it with a full pass.
    await asyncio.to_thread(dynsec, broker, [{"command": "deleteClient", "username": session["session_id"]}])
    (report,) = await service.periodic_pass()
    assert report.full == "counts differ"
    assert report.commands == 1
    answer = await asyncio.to_thread(dynsec, broker, [{"command": "getClient", "username": session["session_id"]}])
    assert answer[0]["data"]["client"]["username"] == session["session_id"]
    (report,) = await service.periodic_pass()
    assert report.full is None


async def test_a_restarted_broker_gets_a_full_pass_and_its_session_lists(harness: Harness, tmp_path: Path) -> None:
    await harness.register("player-1", "alice")
    broker, service = harness.broker, harness.svc.runtime.service
    pristine = tmp_path / "before-session.json"
    shutil.copyfile(broker.dynsec_file, pristine)
    session = await harness.session("alice")
    (report,) = await service.periodic_pass()
    assert report.full is None
    # The broker comes back with an older file holding exactly as many objects (the session
    # is missing, a foreign client the operator added meanwhile stands in its place): only
    # the new admin connection tells the check that something may have changed.
    await asyncio.to_thread(broker.stop)
    older = json.loads(pristine.read_text())
    older["clients"].append({"username": "ops-tool", "textname": "ops"})
    broker.dynsec_file.write_text(json.dumps(older))
    await asyncio.to_thread(broker.restart)
    published = service.session_lists.published_total if service.session_lists else 0
    (report,) = await service.periodic_pass()
    assert report.full == "reconnected"
    answer = await asyncio.to_thread(dynsec, broker, [{"command": "getClient", "username": session["session_id"]}])
    assert not answer[0].get("error")
    assert service.session_lists is not None
    assert service.session_lists.published_total > published  # the lists are retained on it again
