from __future__ import annotations

import json
import os
import pwd
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest

import amora_devtools.broker as broker_module
from amora_devtools import (
    BrokerProcess,
    ClientCert,
    DevPKI,
    DynsecError,
    MqttClient,
    MqttError,
    MqttRefused,
    ServiceStartError,
    Will,
    create_device_client,
    create_session_client,
    delete_device_client,
    delete_session_client,
    dynsec,
    start_broker,
)

NOT_AUTHORIZED = 0x87


def _device(broker: BrokerProcess, pki: DevPKI, cert: ClientCert, **kwargs: Any) -> MqttClient:
    return MqttClient.connect(broker.host, broker.device_port, ssl_context=pki.client_context(cert), **kwargs)


def _transport_refused(excinfo: pytest.ExceptionInfo[MqttError]) -> None:
    """Refused during the TLS handshake (not by an MQTT reason code)."""
    assert not isinstance(excinfo.value, MqttRefused)
    assert isinstance(excinfo.value.__cause__, (ssl.SSLError, OSError))


def test_broker_is_ready_and_lists_only_the_admin(broker):
    responses = dynsec(broker, [{"command": "listClients"}])
    assert responses[0]["data"]["clients"] == [broker.admin_username]
    default = dynsec(broker, [{"command": "getDefaultACLAccess"}])[0]["data"]["acls"]
    assert {acl["acltype"]: acl["allow"] for acl in default} == {
        "publishClientSend": False,
        "publishClientReceive": False,
        "subscribe": False,
        "unsubscribe": False,
    }


def test_dynsec_state_is_saved_by_the_brokers_user(broker):
    create_device_client(broker, "player-1")
    saved = json.loads(broker.dynsec_file.read_text())
    assert "player-1" in {c["username"] for c in saved["clients"]}
    assert "device:player-1" in {r["rolename"] for r in saved["roles"]}
    if os.geteuid() == 0:
        owner = pwd.getpwuid(broker.dynsec_file.stat().st_uid).pw_name
        assert owner == "mosquitto"


@pytest.mark.skipif(os.geteuid() != 0, reason="the broker only changes user when started as root")
def test_start_fails_when_the_broker_user_cannot_save_dynsec(tmp_path, dev_pki, monkeypatch):
    # Leave the state directory owned by root but readable: mosquitto (dropped to
    # `mosquitto`) loads it, answers dynsec commands with success but cannot save them;
    # the harness must notice.
    def readable_only(path, _user):
        for item in [path, *path.rglob("*")]:
            item.chmod(0o755 if item.is_dir() else 0o644)

    monkeypatch.setattr(broker_module, "chown_tree", readable_only)
    with pytest.raises(ServiceStartError, match="not writable"):
        start_broker(tmp_path, dev_pki)


def test_dynsec_errors_are_raised_with_the_failed_command(broker):
    with pytest.raises(DynsecError) as excinfo:
        dynsec(broker, [{"command": "deleteClient", "username": "nobody"}])
    assert excinfo.value.failures[0][0] == "deleteClient"
    unchecked = dynsec(broker, [{"command": "deleteClient", "username": "nobody"}], check=False)
    assert unchecked[0]["error"]


def test_device_listener_refuses_a_client_without_certificate(broker, dev_pki):
    with pytest.raises(MqttError) as excinfo:
        MqttClient.connect(broker.host, broker.device_port, ssl_context=dev_pki.client_context())
    _transport_refused(excinfo)


def test_device_listener_refuses_a_certificate_from_another_ca(broker, dev_pki, tmp_path):
    stranger = DevPKI.create(tmp_path / "stranger").issue_client_cert("player-1")
    ctx = dev_pki.client_context()
    ctx.load_cert_chain(stranger.cert_file, stranger.key_file)
    with pytest.raises(MqttError) as excinfo:
        MqttClient.connect(broker.host, broker.device_port, ssl_context=ctx)
    _transport_refused(excinfo)


def test_revoked_certificate_is_refused_after_crl_reload(broker, dev_pki):
    revoked = dev_pki.issue_client_cert("player-2")
    kept = dev_pki.issue_client_cert("player-3")
    with _device(broker, dev_pki, revoked):
        pass  # accepted before revocation
    dev_pki.revoke(revoked.serial)
    broker.reload()
    with pytest.raises(MqttError) as excinfo:
        _device(broker, dev_pki, revoked)
    _transport_refused(excinfo)
    with _device(broker, dev_pki, kept):
        pass  # the CRL refuses only what it lists
    # A second revocation right after the first one applies too (back-to-back reloads).
    dev_pki.revoke(kept.serial)
    broker.reload()
    with pytest.raises(MqttError) as excinfo:
        _device(broker, dev_pki, kept)
    _transport_refused(excinfo)


def test_device_uses_its_own_topics_only_once_its_dynsec_client_exists(broker, dev_pki):
    cert = dev_pki.issue_client_cert("player-4")
    own_state = "amora/devices/player-4/state"
    with _device(broker, dev_pki, cert) as device:
        # No dynsec client yet: default ACL (deny) only. Had the broker taken this retained
        # state, the app below would receive it first, on subscribing.
        device.publish(own_state, b"v0", qos=1, retain=True)
        assert device.subscribe("amora/devices/player-4/commands") == NOT_AUTHORIZED

    create_device_client(broker, "player-4")
    create_session_client(broker, "session-a", "secret-a", user="alice", device_ids=["player-4"])
    with (
        MqttClient.connect(
            broker.host,
            broker.app_port,
            ssl_context=dev_pki.client_context(),
            client_id="session-a",
            username="session-a",
            password="secret-a",
        ) as app,
        _device(broker, dev_pki, cert) as device,
        broker.admin_client() as watcher,
    ):
        assert app.subscribe("amora/devices/player-4/state") == 1
        assert watcher.subscribe("amora/devices/+/state") == 1
        assert device.subscribe("amora/devices/player-4/commands") == 1
        # Another device's topics stay closed, for publishing and subscribing. The broker
        # handles one connection's publishes in order, so the watcher's first message
        # being v1 proves the forged one before it was dropped.
        device.publish("amora/devices/player-5/state", b"forged", qos=1)
        assert device.subscribe("amora/devices/player-5/commands") == NOT_AUTHORIZED
        assert device.subscribe("amora/#") == NOT_AUTHORIZED
        device.publish(own_state, b"v1", qos=1)
        for client in (app, watcher):
            message = client.receive()
            assert message is not None
            assert (message.topic, message.payload) == (own_state, b"v1")
        # The app's command reaches the device.
        app.publish("amora/devices/player-4/commands", b"play", qos=1)
        command = device.receive()
        assert command is not None
        assert command.payload == b"play"


def test_deleting_the_device_client_disconnects_it(broker, dev_pki):
    cert = dev_pki.issue_client_cert("player-6")
    create_device_client(broker, "player-6")
    with _device(broker, dev_pki, cert) as device:
        delete_device_client(broker, "player-6")
        assert device.closed_by_broker()


def test_device_certificate_cannot_log_in_on_the_password_listener(broker, dev_pki):
    create_device_client(broker, "player-7")
    with pytest.raises(MqttRefused):
        MqttClient.connect(
            broker.host,
            broker.app_port,
            ssl_context=dev_pki.client_context(),
            username="player-7",
            password="",
        )


@pytest.mark.parametrize("listener", ["app_port", "ws_port"])
def test_anonymous_and_wrong_password_are_refused(broker, dev_pki, listener):
    port = getattr(broker, listener)
    websocket = listener == "ws_port"
    ctx = dev_pki.client_context()
    with pytest.raises(MqttRefused):
        MqttClient.connect(broker.host, port, ssl_context=ctx, websocket=websocket)
    with pytest.raises(MqttRefused):
        MqttClient.connect(broker.host, port, ssl_context=ctx, websocket=websocket, username="anonymous")
    with pytest.raises(MqttRefused):
        MqttClient.connect(
            broker.host,
            port,
            ssl_context=ctx,
            websocket=websocket,
            username=broker.admin_username,
            password="wrong",
        )
    # ... while the right account is accepted on the same listener.
    with MqttClient.connect(
        broker.host,
        port,
        ssl_context=ctx,
        websocket=websocket,
        username=broker.admin_username,
        password=broker.admin_password,
    ) as admin:
        assert admin.subscribe("$CONTROL/dynamic-security/v1/response") == 1


def test_anonymous_is_refused_on_the_device_listener(broker, dev_pki):
    with pytest.raises(MqttError) as excinfo:
        MqttClient.connect(broker.host, broker.device_port, ssl_context=dev_pki.client_context(), username="x")
    _transport_refused(excinfo)


def test_listeners_refuse_plain_tcp(broker):
    # An MQTT CONNECT without TLS never gets a CONNACK (0x20) on any listener.
    connect = bytes.fromhex("101000044d5154540502003c00000003616e6f")
    for port in (broker.device_port, broker.app_port, broker.ws_port):
        with socket.create_connection((broker.host, port), timeout=5) as sock:
            sock.sendall(connect)
            try:
                answer = sock.recv(16)
            except ConnectionResetError:
                answer = b""
        assert not answer.startswith(b"\x20")


def test_restart_keeps_ports_retained_state_and_dynsec(broker, dev_pki):
    cert = dev_pki.issue_client_cert("player-8")
    create_device_client(broker, "player-8")
    with _device(broker, dev_pki, cert) as device:
        device.publish("amora/devices/player-8/state", b"kept", qos=1, retain=True)
    ports = (broker.device_port, broker.app_port, broker.ws_port)
    old_pid = broker.pid
    broker.restart()
    assert broker.pid != old_pid
    assert (broker.device_port, broker.app_port, broker.ws_port) == ports
    with broker.admin_client() as admin:
        admin.subscribe("amora/devices/+/state")
        message = admin.receive()
    assert message is not None
    assert (message.payload, message.retain) == (b"kept", True)
    with _device(broker, dev_pki, cert):
        pass


def test_close_leaves_no_process_and_no_state(tmp_path, dev_pki):
    server = start_broker(tmp_path, dev_pki, name="short")
    pid, state_dir = server.pid, server.state_dir
    server.close()
    server.close()  # idempotent
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    if os.geteuid() == 0:
        assert not state_dir.exists()
    assert "terminating" in server.log_text()


def test_websockets_listener_is_bound_to_loopback_only(broker):
    # /proc/net/tcp{,6} list listening sockets with hex local addresses.
    port_hex = f"{broker.ws_port:04X}"
    local = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with Path(table).open() as fh:
            for line in fh.readlines()[1:]:
                fields = line.split()
                address, port = fields[1].rsplit(":", 1)
                if port == port_hex and fields[3] == "0A":  # LISTEN
                    local.append(address)
    assert local
    loopback = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}
    assert set(local) <= loopback


def test_web_app_session_over_websockets_follows_a_device(broker, dev_pki):
    cert = dev_pki.issue_client_cert("player-20")
    create_device_client(broker, "player-20")
    create_session_client(broker, "web-1", "pw-1", user="bob", device_ids=["player-20"])
    with MqttClient.connect(
        broker.host,
        broker.ws_port,
        ssl_context=dev_pki.client_context(),
        websocket=True,
        client_id="web-1",
        username="web-1",
        password="pw-1",
    ) as web:
        assert web.subscribe("amora/devices/player-20/state") == 1
        assert web.subscribe("amora/devices/player-21/state") == NOT_AUTHORIZED
        with _device(broker, dev_pki, cert) as device:
            device.publish("amora/devices/player-20/state", b"s", qos=1)
        message = web.receive()
        assert message is not None
        assert message.payload == b"s"
        delete_session_client(broker, "web-1")
        assert web.closed_by_broker()


def test_session_client_id_is_fixed_to_the_session(broker, dev_pki):
    create_session_client(broker, "s-1", "pw", user="carol", device_ids=["player-30"])
    with pytest.raises(MqttRefused):
        MqttClient.connect(
            broker.host,
            broker.app_port,
            ssl_context=dev_pki.client_context(),
            client_id="someone-else",
            username="s-1",
            password="pw",
        )


def test_service_fixtures_mark_their_tests(request, broker):  # noqa: ARG001 - requested for the marker
    assert request.node.get_closest_marker("services") is not None


def test_device_last_will_reaches_a_watcher(broker, dev_pki):
    cert = dev_pki.issue_client_cert("player-40")
    create_device_client(broker, "player-40")
    topic = "amora/devices/player-40/connection"
    with broker.admin_client() as watcher:
        watcher.subscribe(topic)
        device = _device(broker, dev_pki, cert, will=Will(topic, b"offline", qos=1, retain=True))
        device.drop()  # no DISCONNECT: the broker publishes the will
        message = watcher.receive()
    assert message is not None
    assert (message.topic, message.payload) == (topic, b"offline")
