"""The amora-broker image's entrypoint (infra/images/broker/amora_broker.py) on this host's mosquitto.

The same program the image runs, with the repository's templates and the development PKI
laid out as the image's mounts would be; the image itself is built and run by
``hatch run images:smoke``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from amora_devtools import DevPKI, MqttClient, MqttError, client_ssl_context
from amora_devtools._authz_process import make_broker_token_key
from amora_devtools._broker_config import amora_auth_plugin, dynsec_plugin, template_dir
from amora_devtools._proc import free_port, wait_until
from amora_devtools.broker_tokens import load_token_key, session_token
from amora_devtools.image_smoke import device_connack

if TYPE_CHECKING:
    from types import ModuleType

ENTRYPOINT = Path(__file__).resolve().parents[2] / "infra" / "images" / "broker" / "amora_broker.py"
pytestmark = pytest.mark.services


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("amora_broker", ENTRYPOINT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["amora_broker"] = module
    spec.loader.exec_module(module)
    return module


amora_broker = _load()


class Layout:
    """The image's mounts in a temporary directory, owned by the user the broker runs as."""

    def __init__(self, pki: DevPKI) -> None:
        # Run as root (CI), the entrypoint runs as `mosquitto`, like the image's non-root user.
        self.user = "mosquitto" if os.getuid() == 0 else None
        self.root = Path(tempfile.mkdtemp(prefix="amora-broker-image-"))
        self.secrets = self.root / "secrets"
        self.secrets.mkdir()
        for name, source in {
            "device-ca.pem": pki.ca_file,
            "broker.pem": pki.server_cert_file,
            "broker.key": pki.server_key_file,
        }.items():
            shutil.copy(source, self.secrets / name)
        self.admin_password = uuid.uuid4().hex
        (self.secrets / "broker-admin-password").write_text(self.admin_password + "\n")
        (self.secrets / "bridge-password").write_text("bridge-secret")
        self.crl_dir = self.root / "crl"
        self.crl_dir.mkdir()
        shutil.copy(pki.crl_file, self.crl_dir / "devices.crl.pem")
        self.state = self.root / "state"
        self.run_dir = self.root / "run"
        for path in (self.state, self.run_dir):
            path.mkdir()
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            for path in [self.root, *self.root.rglob("*")]:
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self.device_port, self.app_port, self.ws_port = free_port(), free_port(), free_port()
        self.log = self.root / "broker.log"

    def env(self, **extra: str) -> dict[str, str]:
        values = {
            "TEMPLATE_DIR": str(template_dir()),
            "RUN_DIR": str(self.run_dir),
            "STATE_DIR": str(self.state),
            "BIND_ADDRESS": "127.0.0.1",
            "WS_BIND": "lo",
            "DEVICE_PORT": str(self.device_port),
            "APP_PORT": str(self.app_port),
            "WS_PORT": str(self.ws_port),
            "CA_FILE": str(self.secrets / "device-ca.pem"),
            "CERT_FILE": str(self.secrets / "broker.pem"),
            "KEY_FILE": str(self.secrets / "broker.key"),
            "CRL_FILE": str(self.crl_dir / "devices.crl.pem"),
            "DYNSEC_PLUGIN": dynsec_plugin(),
            "ADMIN_PASSWORD_FILE": str(self.secrets / "broker-admin-password"),
            "BRIDGE_USERNAME": "svc.bridge-standby",
            "BRIDGE_PASSWORD_FILE": str(self.secrets / "bridge-password"),
            "CRL_WATCH_S": "0.2",
            "MOSQUITTO": shutil.which("mosquitto") or "/usr/sbin/mosquitto",
            **extra,
        }
        return {"PATH": os.environ.get("PATH", ""), **{f"AMORA_BROKER_{k}": v for k, v in values.items()}}

    def start(self, **extra: str) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as log:
            return subprocess.Popen(  # noqa: S603 - the entrypoint under test
                # Debian's python3, as in the image (the entrypoint needs only its standard library).
                [shutil.which("python3", path="/usr/bin:/bin") or sys.executable, str(ENTRYPOINT), "run"],
                env=self.env(**extra),
                stdout=log,
                stderr=subprocess.STDOUT,
                user=self.user,
                cwd=self.root,
                start_new_session=True,
            )

    def settings(self) -> object:
        return amora_broker.settings_from_env(self.env())

    def wait_healthy(self, process: subprocess.Popen[bytes]) -> None:
        settings = self.settings()
        ready = wait_until(
            lambda: True if amora_broker.healthcheck(settings, timeout=1.0) else None,
            timeout=15,
            interval=0.05,
            alive=lambda: process.poll() is None,
        )
        assert ready, self.log.read_text()

    def admin(self) -> MqttClient:
        return MqttClient.connect(
            "127.0.0.1",
            self.app_port,
            ssl_context=client_ssl_context(self.secrets / "device-ca.pem"),
            client_id=f"amora-authz-{uuid.uuid4().hex[:8]}",
            username="svc.amora-authz",
            password=self.admin_password,
        )

    def dynsec(self, command: dict[str, object]) -> dict[str, object]:
        with self.admin() as client:
            client.subscribe("$CONTROL/dynamic-security/v1/response")
            client.publish("$CONTROL/dynamic-security/v1", json.dumps({"commands": [command]}).encode(), qos=1)
            message = client.receive(timeout=5)
        assert message is not None
        response: dict[str, object] = json.loads(message.payload)["responses"][0]
        return response

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)
        raise


@pytest.fixture
def layout(dev_pki):
    layout = Layout(dev_pki)
    try:
        yield layout
    finally:
        layout.close()


def test_first_start_initialises_dynsec_from_the_secret_and_later_starts_keep_it(layout):
    process = layout.start()
    try:
        layout.wait_healthy(process)
        listed = layout.dynsec({"command": "listClients"})
        assert sorted(listed["data"]["clients"]) == ["svc.amora-authz", "svc.bridge-standby"]
        assert layout.dynsec({"command": "createRole", "rolename": "kept"}).get("error") is None
    finally:
        assert _stop(process) == 0  # SIGTERM reached mosquitto through the entrypoint
    state = json.loads((layout.state / "dynamic-security.json").read_text())
    assert "kept" in {role["rolename"] for role in state["roles"]}
    assert (layout.state / "dynamic-security.json").stat().st_mode & 0o077 == 0
    assert "dynamic security initialised" in layout.log.read_text()

    # Second start: the state is the broker's now (the authz service manages it); the
    # admin secret is not even read.
    (layout.secrets / "broker-admin-password").write_text("changed")
    process = layout.start()
    try:
        layout.wait_healthy(process)
        roles = layout.dynsec({"command": "listRoles"})["data"]["roles"]
        assert "kept" in roles
    finally:
        assert _stop(process) == 0
    assert layout.log.read_text().count("dynamic security initialised") == 1


def test_a_changed_crl_is_reloaded_and_the_revoked_certificate_refused(layout, dev_pki):
    cert = dev_pki.issue_client_cert("player-7")
    process = layout.start()
    try:
        layout.wait_healthy(process)
        ca = layout.secrets / "device-ca.pem"
        # No dynsec client for it: the certificate connects with the deny-all default ACL.
        assert device_connack("127.0.0.1", layout.device_port, ca, cert.cert_file, cert.key_file) == 0
        dev_pki.revoke(cert.serial)
        fresh = layout.crl_dir / "devices.crl.pem.new"
        shutil.copy(dev_pki.crl_file, fresh)
        if layout.user is not None:
            os.chown(fresh, pwd.getpwnam(layout.user).pw_uid, -1)
        fresh.replace(layout.crl_dir / "devices.crl.pem")  # as the authz service writes it

        def refused() -> str | None:
            answer = device_connack("127.0.0.1", layout.device_port, ca, cert.cert_file, cert.key_file)
            return answer if isinstance(answer, str) else None

        assert wait_until(refused, timeout=10, interval=0.1), layout.log.read_text()
    finally:
        assert _stop(process) == 0
    assert "changed, reloading (SIGHUP)" in layout.log.read_text()


def test_a_standby_renders_the_bridge_and_the_primary_its_account(layout):
    standby = amora_broker.settings_from_env(layout.env(BRIDGE_ADDRESS="primary.internal:8884"))
    text = amora_broker.render(standby, bridge_password="pw")
    assert "address primary.internal:8884" in text
    assert "remote_username svc.bridge-standby" in text
    assert "remote_password pw" in text
    primary = amora_broker.settings_from_env(layout.env())
    assert "connection " not in amora_broker.render(primary)
    state = amora_broker.initial_dynsec(
        admin_username="a",
        admin_password="admin-secret-1",
        bridge_username="svc.bridge-standby",
        bridge_password="bridge-2",
    )
    bridge = next(c for c in state["clients"] if c["username"] == "svc.bridge-standby")
    assert bridge["clientid"] == "svc.bridge-standby"  # a fixed client id: no takeover
    assert "admin-secret-1" not in json.dumps(state)  # only hashes are stored
    assert "bridge-2" not in json.dumps(state)


@pytest.mark.parametrize(
    ("extra", "names"),
    [
        ({"ADMIN_PASSWORD_FILE": "/nonexistent/pw"}, "AMORA_BROKER_ADMIN_PASSWORD_FILE"),
        ({"CRL_FILE": "/nonexistent/crl.pem"}, "AMORA_BROKER_CRL_FILE"),
        ({"DEVICE_PORT": "eighty"}, "AMORA_BROKER_DEVICE_PORT"),
        ({"BRIDGE_ADDRESS": "primary:8884", "BRIDGE_USERNAME": "", "BRIDGE_PASSWORD_FILE": ""}, "BRIDGE_USERNAME"),
        ({"CRL_WATCH_S": "soon"}, "AMORA_BROKER_CRL_WATCH_S"),
    ],
)
def test_bad_settings_stop_with_the_variable_to_fix(layout, extra, names):
    process = layout.start(**extra)
    assert process.wait(timeout=15) == 2
    log = layout.log.read_text()
    assert names in log
    assert not (layout.state / "dynamic-security.json").exists()


def test_a_state_volume_it_cannot_write_is_refused(layout):
    unwritable = layout.root / "readonly"
    unwritable.mkdir(mode=0o500)
    process = layout.start(STATE_DIR=str(unwritable / "state"))
    assert process.wait(timeout=15) == 2
    assert "not writable" in layout.log.read_text()


def test_mounted_token_keys_put_the_plugin_first_tokens_log_in_and_the_admin_revokes(layout, tmp_path):
    private, public = make_broker_token_key(tmp_path / "token-key")
    mounted = layout.secrets / "broker-token-keys.pem"
    shutil.copy(public, mounted)
    layout.state.chmod(0o700)  # the image's state volume: the plugin keeps its deny list there
    extra = {"TOKEN_PUBLIC_KEYS": str(mounted), "TOKEN_PLUGIN": str(amora_auth_plugin())}
    text = amora_broker.render(amora_broker.settings_from_env(layout.env(**extra)))
    # mosquitto asks plugins in load order: amora_auth must come before dynamic security.
    assert text.index("amora_auth.so") < text.index(dynsec_plugin())
    assert f"plugin_opt_public_keys {mounted}" in text
    process = layout.start(**extra)
    try:
        layout.wait_healthy(process)
        now = int(time.time())
        rules = [{"permission": "allow", "action": "subscribe", "topic": "amora/devices/player-1/state"}]
        token = session_token(load_token_key(private), username="sess.t1", acl=rules)
        ca = client_ssl_context(layout.secrets / "device-ca.pem")

        def control(command: dict[str, object]) -> None:
            # The admin account the entrypoint created may send the plugin its commands.
            with layout.admin() as admin:
                admin.subscribe("$CONTROL/amora-auth/v1/response")
                admin.publish("$CONTROL/amora-auth/v1", json.dumps({"commands": [command]}).encode(), qos=1)
                answer = admin.receive(timeout=5)
            assert answer is not None
            assert "error" not in json.loads(answer.payload)["responses"][0]

        # A new broker (no deny list yet) refuses sessions until the authz service confirms it.
        with pytest.raises(MqttError):
            MqttClient.connect(
                "127.0.0.1", layout.app_port, ssl_context=ca, client_id="sess.t1", username="sess.t1", password=token
            )
        control({"command": "synced"})
        with MqttClient.connect(
            "127.0.0.1", layout.app_port, ssl_context=ca, client_id="sess.t1", username="sess.t1", password=token
        ):
            pass
        control({"command": "revokeSessions", "sessions": [{"username": "sess.t1", "until": now + 300}]})
        with pytest.raises(MqttError):
            MqttClient.connect(
                "127.0.0.1", layout.app_port, ssl_context=ca, client_id="sess.t1", username="sess.t1", password=token
            )
    finally:
        assert _stop(process) == 0
    assert "sess.t1" in (layout.state / "amora-revocations.json").read_text()
    assert "broker tokens" in layout.log.read_text()


def test_named_token_keys_that_are_not_there_stop_the_start_with_the_fix(layout):
    missing = layout.secrets / "nowhere.pem"
    with pytest.raises(amora_broker.ConfigError, match=r"TOKEN_PUBLIC_KEYS=.*no such file"):
        amora_broker.settings_from_env(layout.env(TOKEN_PUBLIC_KEYS=str(missing)))
    # Not named and not mounted: dynamic-security sessions only, no plugin line.
    assert "amora_auth" not in amora_broker.render(layout.settings())
