"""What the broker enforces once the service has reconciled it (real mosquitto, TLS, dynsec).

Apps connect on the password listener with the credential from ``POST /v1/sessions``;
devices connect on the mTLS listener with the certificate the service issued for
their CSR. The harness's MQTT client is synchronous, so its calls run in threads
while the service keeps serving in this event loop.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from amora_authz import BrokerEndpoint
from amora_authz._dynsec import Scope
from amora_authz._store import Session
from amora_authz.testing import RunningService, broker_endpoint, dev_settings, serve, session_body
from amora_devtools import MqttClient, MqttError, MqttRefused, client_ssl_context
from amora_devtools.broker import dynsec
from amora_protocol import (
    EncryptionKey,
    SigningKey,
    commands_topic,
    connection_topic,
    responses_topic,
    state_topic,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence
    from pathlib import Path

    from amora_authz._store import Certificate
    from amora_devtools import BrokerProcess, DevPKI

pytestmark = pytest.mark.services

NOT_AUTHORISED = 0x87
WAIT = 5.0  # bound for every wait on a broker event


endpoint = broker_endpoint


@dataclass
class Harness:
    svc: RunningService
    broker: BrokerProcess
    pki: DevPKI
    folder: Path

    async def register(self, device_id: str, *users: str) -> Path:
        """Register a device through the API with a CSR; link users; return its cert dir."""
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
            .sign(key, hashes.SHA256())
            .public_bytes(serialization.Encoding.PEM)
            .decode()
        )
        admin = await self.svc.auth("admin")
        response = await self.svc.http.post(
            "/v1/admin/devices",
            json={
                "device_id": device_id,
                "signing_key": base64.b64encode(SigningKey.generate().public_key.raw).decode(),
                "encryption_key": base64.b64encode(EncryptionKey.generate().public_key.raw).decode(),
                "csr": csr,
            },
            headers=admin,
        )
        assert response.status_code == 201, response.text
        folder = self.folder / device_id
        folder.mkdir()
        (folder / "cert.pem").write_text(response.json()["certificate"])
        (folder / "key.pem").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        for user in users:
            linked = await self.svc.http.put(f"/v1/admin/users/{user}/devices/{device_id}", headers=admin)
            assert linked.status_code == 201
        return folder

    async def session(self, user: str) -> dict[str, Any]:
        response = await self.svc.http.post("/v1/sessions", json=session_body(), headers=await self.svc.auth(user))
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    async def app(self, session: dict[str, Any], **options: Any) -> MqttClient:
        broker = session["broker"]
        options.setdefault("client_id", broker["client_id"])
        return await asyncio.to_thread(
            MqttClient.connect,
            self.broker.host,
            self.broker.app_port,
            ssl_context=client_ssl_context(self.broker.ca_file),
            username=broker["username"],
            password=broker["password"],
            timeout=WAIT,
            **options,
        )

    async def device(self, device_id: str) -> MqttClient:
        folder = self.folder / device_id
        return await asyncio.to_thread(
            MqttClient.connect,
            self.broker.host,
            self.broker.device_port,
            ssl_context=client_ssl_context(
                self.broker.ca_file,
                cert_file=folder / "cert.pem",
                key_file=folder / "key.pem",
            ),
            client_id=device_id,
            timeout=WAIT,
        )


@pytest.fixture
async def harness(broker: BrokerProcess, dev_pki: DevPKI, tmp_path: Path) -> AsyncIterator[Harness]:
    def crl_written(revoked: Sequence[Certificate]) -> None:
        # The harness's PKI is shared by the whole test session, so the service's
        # revocations are added to it rather than overwriting its CRL; a test reloads
        # the broker when it wants the CRL in force.
        known = set(dev_pki.revoked_serials())
        for cert in revoked:
            if cert.serial not in known:
                dev_pki.revoke(cert.serial)

    settings = dev_settings(
        tmp_path,
        brokers=(endpoint(broker),),
        device_ca_cert=str(dev_pki.ca_file),
        device_ca_key=str(dev_pki.ca_key_file),
        crl_file=str(tmp_path / "service-crl.pem"),
    )
    async with serve(settings, on_crl_written=crl_written) as svc:
        yield Harness(svc, broker, dev_pki, tmp_path)


async def subscribe(client: MqttClient, topic: str) -> int:
    return await asyncio.to_thread(client.subscribe, topic, qos=1, timeout=WAIT)


async def publish(client: MqttClient, topic: str, payload: bytes, **options: Any) -> None:
    await asyncio.to_thread(client.publish, topic, payload, qos=1, timeout=WAIT, **options)


async def receive(client: MqttClient) -> Any:
    return await asyncio.to_thread(client.receive, timeout=WAIT)


async def watch_everything(harness: Harness) -> MqttClient:
    """The broker's admin account, subscribed to every topic (amora/... and dynsec control)."""
    watcher = await asyncio.to_thread(harness.broker.admin_client, timeout=WAIT)
    assert await subscribe(watcher, "#") < 0x80
    assert await subscribe(watcher, "$CONTROL/dynamic-security/#") < 0x80
    return watcher


async def next_live(watcher: MqttClient) -> Any:
    """The watcher's next message published after it subscribed (retained copies skipped)."""
    while True:
        message = await receive(watcher)
        assert message is not None, "the watcher received nothing"
        if not message.retain:
            return message


async def assert_dropped(watcher: MqttClient, sender: MqttClient, topic: str, payload: bytes, *, marker: str) -> None:
    """The broker drops ``sender``'s publish to ``topic``.

    paho 1.6 does not report PUBACK reason codes, so this looks at delivery: the broker
    handles one connection's publishes in order, so when the sender's next publish (to
    ``marker``, a topic it may use) is the first the watcher sees, the first was dropped.
    """
    await publish(sender, topic, payload)
    token = os.urandom(8).hex().encode()
    await publish(sender, marker, token)
    message = await next_live(watcher)
    assert (message.topic, message.payload) == (marker, token), f"{topic} was delivered"


async def assert_delivered(watcher: MqttClient, sender: MqttClient, topic: str, payload: bytes) -> None:
    """The broker delivers ``sender``'s publish to ``topic`` (the watcher sees it next)."""
    await publish(sender, topic, payload)
    message = await next_live(watcher)
    assert (message.topic, message.payload) == (topic, payload)


async def test_a_user_reaches_exactly_their_devices(harness: Harness) -> None:
    await harness.register("player-a", "alice")
    await harness.register("player-b", "bob")
    alice = await harness.app(await harness.session("alice"))
    device_a = await harness.device("player-a")
    watcher = await watch_everything(harness)
    try:
        for topic in (
            state_topic("player-a"),
            connection_topic("player-a"),
            responses_topic("player-a"),
        ):
            assert await subscribe(alice, topic) < 0x80, topic
        for topic in (
            state_topic("player-b"),
            commands_topic("player-a"),  # apps never read commands
            "amora/devices/+/state",
            "amora/devices/#",
            "#",
            "$CONTROL/dynamic-security/v1/response",
        ):
            assert await subscribe(alice, topic) == NOT_AUTHORISED, topic
        # Commands: to her device yes, to another user's device no; no device topics.
        own_commands = commands_topic("player-a")
        await assert_delivered(watcher, alice, own_commands, b"cmd")
        await assert_dropped(watcher, alice, commands_topic("player-b"), b"cmd", marker=own_commands)
        await assert_dropped(watcher, alice, state_topic("player-a"), b"forged", marker=own_commands)
        await assert_dropped(watcher, alice, "$CONTROL/dynamic-security/v1", b'{"commands":[]}', marker=own_commands)

        # The device publishes its own topics and reads its commands; alice sees them.
        assert await subscribe(device_a, commands_topic("player-a")) < 0x80
        assert await subscribe(device_a, commands_topic("player-b")) == NOT_AUTHORISED
        await assert_dropped(watcher, device_a, state_topic("player-b"), b"forged", marker=responses_topic("player-a"))
        await publish(device_a, state_topic("player-a"), b"state-1", retain=True)
        marker = await receive(alice)  # the marker above, on a topic she reads
        assert marker.topic == responses_topic("player-a")
        message = await receive(alice)
        assert (message.topic, message.payload) == (state_topic("player-a"), b"state-1")
        await publish(alice, commands_topic("player-a"), b"play")
        command = await receive(device_a)
        assert (command.topic, command.payload) == (commands_topic("player-a"), b"play")
    finally:
        alice.disconnect()
        device_a.disconnect()
        watcher.disconnect()

    # Bob cannot read alice's device, even retained state.
    bob = await harness.app(await harness.session("bob"))
    try:
        assert await subscribe(bob, state_topic("player-a")) == NOT_AUTHORISED
    finally:
        bob.disconnect()


async def test_credentials_are_bound_to_the_session(harness: Harness) -> None:
    session = await harness.session("alice")
    with pytest.raises(MqttRefused):
        await harness.app(session, client_id="someone-else")
    wrong = {**session, "broker": {**session["broker"], "password": "not-the-password"}}
    with pytest.raises(MqttRefused):
        await harness.app(wrong)


async def test_unlinking_cuts_a_live_subscription(harness: Harness) -> None:
    await harness.register("player-a", "alice")
    await harness.register("player-c", "alice")
    session = await harness.session("alice")
    # A persistent session: the session (and its subscription) survives the broker's
    # kick, and delivery must stop all the same (the deny-by-default receive ACL, and
    # mosquitto re-checking subscriptions, both see to it).
    alice = await harness.app(session, clean_start=False, session_expiry=300)
    device_a = await harness.device("player-a")
    device_c = await harness.device("player-c")
    try:
        assert await subscribe(alice, state_topic("player-a")) < 0x80
        assert await subscribe(alice, state_topic("player-c")) < 0x80
        await publish(device_a, state_topic("player-a"), b"before")
        assert (await receive(alice)).payload == b"before"

        kicked = asyncio.create_task(asyncio.to_thread(alice.closed_by_broker, timeout=WAIT))
        admin = await harness.svc.auth("admin")
        response = await harness.svc.http.delete("/v1/admin/users/alice/devices/player-a", headers=admin)
        assert response.status_code == 204
        assert await kicked, "the broker did not disconnect the unlinked user"

        again = await harness.app(session, clean_start=False, session_expiry=300)
        try:
            assert again.session_present
            # Ordered after player-a's publish (acknowledged first): once c's arrives,
            # a's would have arrived before it if it were delivered at all.
            await publish(device_a, state_topic("player-a"), b"after")
            await publish(device_c, state_topic("player-c"), b"marker")
            message = await receive(again)
            assert (message.topic, message.payload) == (state_topic("player-c"), b"marker")
            assert await subscribe(again, state_topic("player-a")) == NOT_AUTHORISED
        finally:
            again.disconnect()
    finally:
        alice.disconnect()
        device_a.disconnect()
        device_c.disconnect()


async def test_deleting_a_session_kicks_its_connection(harness: Harness) -> None:
    session = await harness.session("alice")
    alice = await harness.app(session)
    try:
        kicked = asyncio.create_task(asyncio.to_thread(alice.closed_by_broker, timeout=WAIT))
        response = await harness.svc.http.delete(
            f"/v1/sessions/{session['session_id']}", headers=await harness.svc.auth("alice")
        )
        assert response.status_code == 204
        assert await kicked
    finally:
        alice.disconnect()
    with pytest.raises(MqttRefused):
        await harness.app(session)


async def test_expired_sessions_lose_their_broker_client(harness: Harness) -> None:
    session = await harness.session("alice")
    alice = await harness.app(session)
    service = harness.svc.runtime.service
    try:
        kicked = asyncio.create_task(asyncio.to_thread(alice.closed_by_broker, timeout=WAIT))
        real_clock = service._clock_ms
        service._clock_ms = lambda: real_clock() + 2 * service.session_ttl_s * 1000
        assert await service.expire_sessions() == [session["session_id"]]
        assert await kicked
    finally:
        alice.disconnect()
    with pytest.raises(MqttRefused):
        await harness.app(session)


async def test_revoking_a_device_kicks_it_and_the_crl_keeps_it_out(harness: Harness) -> None:
    await harness.register("player-r", "alice")
    device = await harness.device("player-r")
    try:
        assert await subscribe(device, commands_topic("player-r")) < 0x80
        kicked = asyncio.create_task(asyncio.to_thread(device.closed_by_broker, timeout=WAIT))
        response = await harness.svc.http.post(
            "/v1/admin/devices/player-r/revoke", headers=await harness.svc.auth("admin")
        )
        assert response.status_code == 200
        serials = [int(s) for s in response.json()["revoked_serials"]]
        assert len(serials) == 1
        assert serials[0] in harness.pki.revoked_serials()
        assert await kicked
    finally:
        device.disconnect()

    # Before the broker reloads the CRL the certificate still completes a handshake,
    # but the broker account is gone: default ACL, nothing allowed.
    device = await harness.device("player-r")
    watcher = await watch_everything(harness)
    try:
        assert await subscribe(device, commands_topic("player-r")) == NOT_AUTHORISED
        await publish(device, state_topic("player-r"), b"x")
        # Published after the device's PUBACK, so after the broker handled its publish: the
        # watcher would have received that first had it been delivered.
        await publish(watcher, "amora/harness/marker", b"after")
        message = await next_live(watcher)
        assert (message.topic, message.payload) == ("amora/harness/marker", b"after")
    finally:
        device.disconnect()
        watcher.disconnect()

    await asyncio.to_thread(harness.broker.reload)
    with pytest.raises(MqttError):
        await harness.device("player-r")
    # The user's sessions lost it too.
    session = await harness.session("alice")
    assert session["devices"] == []


async def test_reconciliation_heals_a_broker_that_lost_its_dynsec_file(broker: BrokerProcess, tmp_path: Path) -> None:
    pristine = tmp_path / "pristine-dynsec.json"
    shutil.copyfile(broker.dynsec_file, pristine)
    settings = dev_settings(tmp_path, brokers=(endpoint(broker),))
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
    settings = dev_settings(tmp_path, brokers=(endpoint(primary), endpoint(standby)))
    async with serve(settings) as svc:
        session = await Harness(svc, primary, primary.pki, tmp_path).session("alice")
        assert session["broker"]["endpoints"] == [
            *endpoint(primary).client_endpoints,
            *endpoint(standby).client_endpoints,
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
    settings = dev_settings(tmp_path, brokers=(endpoint(broker),))
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


async def test_sessions_work_over_websockets_too(harness: Harness) -> None:
    await harness.register("player-w", "alice")
    session = await harness.session("alice")
    assert f"wss://{harness.broker.host}:{harness.broker.ws_port}/mqtt" in session["broker"]["endpoints"]
    client = await asyncio.to_thread(
        MqttClient.connect,
        harness.broker.host,
        harness.broker.ws_port,
        ssl_context=client_ssl_context(harness.broker.ca_file),
        client_id=session["broker"]["client_id"],
        username=session["broker"]["username"],
        password=session["broker"]["password"],
        websocket=True,
        timeout=WAIT,
    )
    try:
        assert await subscribe(client, state_topic("player-w")) < 0x80
        assert await subscribe(client, "amora/#") == NOT_AUTHORISED
    finally:
        client.disconnect()


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
        tmp_path, brokers=(endpoint(broker),), reconcile_interval_s=0.2, expiry_check_interval_s=0.1
    )
    async with serve(settings) as svc:
        harness = Harness(svc, broker, broker.pki, tmp_path)
        session = await harness.session("alice")
        await asyncio.to_thread(broker.stop)
        broker.dynsec_file.write_bytes(pristine.read_bytes())
        await asyncio.to_thread(broker.restart)
        fleet = svc.runtime.service.fleet
        # A pass that started after the restart has finished: the loop healed it.
        async with asyncio.timeout(WAIT):
            await fleet.wait_full_passes(fleet.full_passes + 2)
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
