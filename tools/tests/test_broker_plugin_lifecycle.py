"""The broker-token plugin (amora_auth.so) across broker restarts and reloads, in a real mosquitto.

- A broker without a confirmed deny list (first start, a lost volume) refuses every session
  login until the authz service sends ``synced``; the marker is persisted, so a restart from
  an intact file opens at once (security review F1).
- A reload (SIGHUP: CRL changes, key rotation) re-authenticates every context with the token
  it connected with: a connection outliving that token stays, a revoked session is refused,
  and a departed persistent session is still pruned once its token expired (F2, F3).
- Revocations arriving together share one save of the deny list, each answered after it (F5).

Tokens are signed here (`amora_devtools.broker_tokens`, the plugin's contract); each test runs
its own broker through the harness (TLS, dynamic security after the plugin).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from typing import TYPE_CHECKING, Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from amora_devtools import MqttClient, MqttRefused, start_broker
from amora_devtools._broker_config import plugin_source_dir
from amora_devtools._proc import wait_until
from amora_devtools.broker import AMORA_AUTH_TOPIC, TokenPlugin, amora_auth
from amora_devtools.broker_tokens import session_token

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from amora_devtools import BrokerProcess, DevPKI

pytestmark = pytest.mark.services

STATE = "amora/harness/t/d1/state"  # the admin may publish under amora/harness/#
ACL = [{"permission": "allow", "action": "subscribe", "topic": STATE}]
NOT_CONFIRMED = "deny list not confirmed by the authz service yet"


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def keys_file(key: ec.EllipticCurvePrivateKey, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("token-keys") / "keys.pem"
    path.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return path


@pytest.fixture
def new_broker(dev_pki: DevPKI, keys_file: Path, tmp_path: Path) -> Iterator[BrokerProcess]:
    """A brand-new broker: no deny list file yet."""
    with start_broker(tmp_path, dev_pki, token_plugin=TokenPlugin(keys_file, synced=False)) as broker:
        yield broker


@pytest.fixture
def broker(dev_pki: DevPKI, keys_file: Path, tmp_path: Path) -> Iterator[BrokerProcess]:
    """A broker whose (empty) deny list the authz service has confirmed."""
    with start_broker(tmp_path, dev_pki, token_plugin=TokenPlugin(keys_file)) as started:
        yield started


def username() -> str:
    return f"sess.{uuid.uuid4().hex[:12]}"


def connect(broker: BrokerProcess, name: str, token: str, **kwargs: Any) -> MqttClient:
    return MqttClient.connect(
        broker.host,
        broker.app_port,
        ssl_context=broker.client_context(),
        client_id=name,
        username=name,
        password=token,
        **kwargs,
    )


def accepted(broker: BrokerProcess, name: str, token: str) -> bool:
    try:
        connect(broker, name, token).disconnect()
    except MqttRefused:
        return False
    return True


def wait_log(broker: BrokerProcess, text: str, *, timeout: float = 5.0) -> bool:
    return wait_until(lambda: True if text in broker.log_text() else None, timeout=timeout) is not None


def saved(broker: BrokerProcess) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(broker.revocations_file.read_text())
    return document


# ---- F1: fail closed until the authz service confirmed the deny list ---------------------


def test_a_new_broker_refuses_sessions_until_the_deny_list_is_confirmed(new_broker, key):
    assert wait_log(new_broker, "is missing (first start, lost volume or a restore without it)")
    name, revoked = username(), username()
    token = session_token(key, username=name, acl=ACL)
    assert not accepted(new_broker, name, token)
    assert wait_log(new_broker, f"amora_auth: refused {name}: {NOT_CONFIRMED}")
    # What authz does on connecting: compare, send what is missing, then confirm.
    [listed, sent] = amora_auth(
        new_broker,
        [
            {"command": "listRevocations"},
            {"command": "revokeSessions", "sessions": [{"username": revoked, "until": int(time.time()) + 600}]},
        ],
    )
    assert (listed["count"], "error" in sent) == (0, False)
    assert saved(new_broker)["synced"] is False  # a revocation before the confirmation: still closed
    new_broker.restart()
    assert not accepted(new_broker, name, token)

    [confirmed] = amora_auth(new_broker, [{"command": "synced"}])
    assert (confirmed["command"], "error" in confirmed) == ("synced", False)
    assert wait_log(new_broker, "amora_auth: deny list confirmed by the authz service (1 revocation(s))")
    assert accepted(new_broker, name, token)
    assert not accepted(new_broker, revoked, session_token(key, username=revoked, acl=ACL))
    assert saved(new_broker)["synced"] is True
    # An intact, confirmed file opens at once after a restart.
    new_broker.restart()
    assert accepted(new_broker, name, token)


def test_a_lost_deny_list_closes_the_broker_again(broker, key):
    name, revoked = username(), username()
    token, revoked_token = (session_token(key, username=n, acl=ACL) for n in (name, revoked))
    amora_auth(broker, [{"command": "revokeSessions", "sessions": [{"username": revoked, "until": 2**40}]}])
    assert accepted(broker, name, token)
    broker.stop()
    broker.revocations_file.unlink()  # a new volume, a pod without its PVC
    broker.restart()
    # The revoked token would get in here without the confirmation.
    assert not accepted(broker, revoked, revoked_token)
    assert wait_log(broker, f"amora_auth: refused {revoked}: {NOT_CONFIRMED}")
    assert not accepted(broker, name, token)


def test_a_deny_list_from_before_the_marker_counts_as_confirmed(broker, key):
    name, revoked = username(), username()
    broker.stop()
    # Same file: owner and mode stay.
    broker.revocations_file.write_text(json.dumps({"version": 1, "sessions": [{"username": revoked, "until": 2**40}]}))
    broker.restart()
    assert accepted(broker, name, session_token(key, username=name, acl=ACL))
    assert not accepted(broker, revoked, session_token(key, username=revoked, acl=ACL))
    assert f"{NOT_CONFIRMED}" not in broker.log_text()


def test_a_deny_list_its_own_group_may_access_is_accepted(broker, key):
    # Kubernetes' fsGroup (the broker's own group, infra/k8s) adds group rw to the volume's
    # files when it relabels them: that must not stop the broker (security review I6).
    broker.stop()
    broker.revocations_file.chmod(0o660)
    assert broker.revocations_file.stat().st_gid == broker.state_dir.stat().st_gid  # the broker's group
    broker.restart()
    name = username()
    assert accepted(broker, name, session_token(key, username=name, acl=ACL))


# ---- F2, F3: a reload re-authenticates from the entry -------------------------------------


def test_a_reload_keeps_a_connection_that_outlived_its_token_and_refuses_a_revoked_one(broker, key):
    # The SDK refreshes its token without reconnecting: the live connection still carries
    # the token it connected with, which may have expired long ago.
    name = username()
    with connect(broker, name, session_token(key, username=name, acl=ACL, lifetime_s=2)) as client:
        assert client.subscribe(STATE) == 1
        expired_at = time.time() + 3
        assert wait_until(lambda: True if time.time() > expired_at else None, timeout=10.0, interval=0.2)
        # A persistent session gone offline and then revoked: refused by the reload.
        gone = username()
        connect(
            broker, gone, session_token(key, username=gone, acl=ACL), clean_start=False, session_expiry=300
        ).disconnect()
        amora_auth(broker, [{"command": "revokeSessions", "sessions": [{"username": gone, "until": 2**40}]}])

        broker.reload()

        with broker.admin_client() as admin:
            admin.publish(STATE, b"after the reload", qos=1)
        message = client.receive(timeout=5.0)
        assert message is not None
        assert (message.topic, message.payload) == (STATE, b"after the reload")
        assert f"refused {name}" not in broker.log_text()
        assert wait_log(broker, f"amora_auth: refused {gone}: revoked (checked again on reload)")


@pytest.fixture
def quick_prune_broker(dev_pki: DevPKI, keys_file: Path, tmp_path: Path, monkeypatch) -> Iterator[BrokerProcess]:
    """A broker whose plugin prunes departed sessions every second instead of every minute."""
    source = plugin_source_dir()
    assert source is not None
    build = source / "build" / "prune-1s"
    subprocess.run(  # noqa: S603 - fixed argv
        ["make", "-s", "-C", str(source), f"BUILD={build}", "EXTRA_CFLAGS=-DPRUNE_INTERVAL_S=1"],  # noqa: S607
        check=True,
        capture_output=True,
        timeout=120,
    )
    monkeypatch.setenv("AMORA_AUTH_PLUGIN", str(build / "amora_auth.so"))
    with start_broker(tmp_path, dev_pki, token_plugin=TokenPlugin(keys_file)) as started:
        yield started


def test_a_reload_leaves_a_departed_session_offline_so_it_is_pruned(quick_prune_broker, key):
    broker, name = quick_prune_broker, username()
    token = session_token(key, username=name, acl=ACL, lifetime_s=3)
    with connect(broker, name, token, clean_start=True, session_expiry=300) as client:
        assert client.subscribe(STATE) == 1
    broker.reload()  # while the token is still valid: re-authenticated, still offline
    assert wait_log(broker, "amora_auth: dropped 1 departed session(s) whose token expired", timeout=15.0)
    with broker.admin_client() as admin:
        admin.publish(STATE, b"for nobody", qos=1)  # no ACL left: not queued
    later = session_token(key, username=name, acl=ACL)
    with connect(broker, name, later, clean_start=False, session_expiry=300) as client:
        assert client.session_present
        with broker.admin_client() as admin:
            admin.publish(STATE, b"marker", qos=1)
        # A queued message would arrive before the live one.
        message = client.receive(timeout=5.0)
        assert message is not None
        assert message.payload == b"marker"


# ---- F5: revocations saved together ---------------------------------------------------------


def test_a_flood_of_revocations_is_saved_together_and_each_answered_after_its_save(broker):
    # Each save rewrites and fsyncs the whole deny list on the broker's only thread: commands
    # arriving meanwhile share the next save (security review F5), answered only once saved.
    names = [username() for _ in range(40)]
    with broker.admin_client() as admin:
        assert admin.subscribe(AMORA_AUTH_TOPIC + "/response") < 0x80
        for i, name in enumerate(names):
            command = {
                "command": "revokeSessions",
                "sessions": [{"username": name, "until": 2**40}],
                "correlationData": str(i),
            }
            admin.publish(AMORA_AUTH_TOPIC, json.dumps({"commands": [command]}).encode())  # QoS 0: no wait
        answered: dict[str, dict[str, Any]] = {}
        while len(answered) < len(names) and (message := admin.receive(timeout=10.0)) is not None:
            for response in json.loads(message.payload)["responses"]:
                answered[response["correlationData"]] = response
    assert sorted(answered, key=int) == [str(i) for i in range(len(names))]
    assert not [r for r in answered.values() if "error" in r]
    # Every answer followed its save: the file holds every revocation.
    assert {entry["username"] for entry in saved(broker)["sessions"]} == set(names)
    saves = [
        int(n) for n in re.findall(r"amora_auth: revoked \d+ session\(s\) in (\d+) command\(s\)", broker.log_text())
    ]
    assert sum(saves) == len(names)
    assert len(saves) <= len(names) // 2, saves
