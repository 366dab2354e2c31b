"""Start mosquitto with the Amora configuration (infra/mosquitto) for tests and manual work.

Each broker gets free loopback ports, its own state directory, a dynamic-security state
file with one admin account (and deny-by-default ACL access), and is only handed back
once a TLS connection with that admin account gets a CONNACK and a dynsec command has
demonstrably been saved to disk by the broker's user. `BrokerProcess.close` (or leaving
its ``with`` block) stops it and removes its state.

``start_broker(token_plugin=TokenPlugin(public_keys=PEM))`` also loads the broker-token
plugin ``amora_auth.so`` (infra/broker-plugin, built with ``make`` when needed) before
dynamic security: ``sess.*`` usernames then log in with a token signed by the key whose
public half is in ``PEM``, and `amora_auth` sends it revocations as the admin.

Run as root, mosquitto drops to the user ``mosquitto``; its state directory (which also
holds copies of the TLS files, since the CRL is re-read after the privilege drop) is
then made under the system temporary directory, owned by that user, because pytest's
own temporary directories are private to root.
"""

from __future__ import annotations

import json
import pwd
import re
import secrets
import shutil
import signal
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

from amora_devtools._broker_config import amora_auth_plugin, dynsec_plugin, render_template, template_dir
from amora_devtools._errors import DevtoolsError, MqttError, ServiceStartError
from amora_devtools._files import private_dir, write_private
from amora_devtools._mqtt import MqttClient, client_ssl_context
from amora_devtools._proc import (
    ManagedProcess,
    ServiceHandle,
    chown_tree,
    free_port,
    is_root,
    remove_at_exit,
    tail,
    wait_until,
)
from amora_devtools.dynsec import (
    ADMIN_USERNAME,
    AMORA_AUTH_TOPIC,
    DYNSEC_TOPIC,
    PROBE_TOPIC_PREFIX,
    acl,
    amora_auth,
    create_device_client,
    create_session_client,
    delete_device_client,
    delete_session_client,
    dynsec,
    initial_dynsec_state,
)
from amora_protocol import service_account_name

if TYPE_CHECKING:
    import ssl

    from amora_devtools.pki import DevPKI

__all__ = [
    "ADMIN_USERNAME",
    "AMORA_AUTH_TOPIC",
    "DYNSEC_TOPIC",
    "BrokerProcess",
    "TokenPlugin",
    "amora_auth",
    "create_device_client",
    "create_session_client",
    "delete_device_client",
    "delete_session_client",
    "dynsec",
    "start_broker",
    "start_broker_pair",
    "template_dir",
]

_BROKER_USER: Final = "mosquitto"
_START_TIMEOUT: Final = 15.0
_START_ATTEMPTS: Final = 3
_PROBE_ROLE: Final = "amora-harness-write-probe"
_SAVE_TIMEOUT: Final = 5.0
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


def _broker_user() -> str | None:
    """The user mosquitto will run as after dropping privileges (None: this user)."""
    if not is_root():
        return None
    try:
        pwd.getpwnam(_BROKER_USER)
    except KeyError as exc:
        raise ServiceStartError(
            "mosquitto", f"running as root but there is no user {_BROKER_USER!r} to drop to"
        ) from exc
    return _BROKER_USER


@dataclass(frozen=True, slots=True)
class TokenPlugin:
    """Load the broker-token plugin (``amora_auth.so``) before dynamic security.

    Attributes:
        public_keys: PEM file with the broker-token public key(s) (``amora-authz
            broker-token-key public``); copied into the broker's state directory.
        issuer: The ``iss`` every token must carry (authz ``token_issuer``).
        audience: The ``aud`` every token must carry (authz ``token_audience``).
        username_prefix: Usernames the plugin decides (and never lets dynsec decide).
        synced: Start with an empty deny list the authz service has already confirmed
            (``{"version": 1, "synced": true, "sessions": []}``), like a broker that has
            run before, so tokens are accepted at once. False: a brand-new broker without
            the file, which refuses every session login until the ``synced`` command
            (the authz service sends it on connecting; `amora_auth` here).
    """

    public_keys: Path
    issuer: str = "amora-authz"
    audience: str = "amora-broker"
    username_prefix: str = "sess."
    synced: bool = True


@dataclass(frozen=True, slots=True)
class _Bridge:
    name: str
    address: str
    username: str
    password: str


@dataclass(eq=False)
class BrokerProcess(ServiceHandle):
    """A running mosquitto started by `start_broker`.

    Attributes:
        name: Label (``"primary"``, ``"standby"``); also its directory name.
        host: ``127.0.0.1``.
        device_port: mTLS listener (client certificate, CN = username = client id).
        app_port: TLS listener with username/password.
        ws_port: TLS websockets listener (``wss://host:ws_port/mqtt``), same accounts.
        ca_file: CA that signed the broker's certificate (trust it as a client).
        admin_username: Dynsec admin account (works on app_port and ws_port).
        admin_password: Its password.
        workdir: Holds ``mosquitto.log``.
        state_dir: Owned by the broker's user: persistence, dynsec file, TLS copies.
        pki: The development PKI whose CRL `reload` installs.
        bridge_name: Bridge connection name when this broker is a standby, else None.
        bridge_peer: The primary this standby bridges to, else None.
        token_plugin: The broker-token plugin's settings when it is loaded, else None.
    """

    name: str
    host: str
    device_port: int
    app_port: int
    ws_port: int
    ca_file: Path
    admin_username: str
    admin_password: str
    workdir: Path
    state_dir: Path
    pki: DevPKI
    bridge_name: str | None = None
    bridge_peer: BrokerProcess | None = field(default=None, repr=False)
    token_plugin: TokenPlugin | None = None
    _argv: list[str] = field(default_factory=list, repr=False)
    _proc: ManagedProcess | None = field(default=None, repr=False)
    _owns_state_dir: bool = field(default=False, repr=False)

    # -- files -----------------------------------------------------------------------

    @property
    def config_file(self) -> Path:
        """The rendered mosquitto.conf (in `state_dir`: the broker re-reads it on SIGHUP)."""
        return self.state_dir / "mosquitto.conf"

    @property
    def log_file(self) -> Path:
        """The broker's log (its stdout and stderr)."""
        return self.workdir / "mosquitto.log"

    @property
    def dynsec_file(self) -> Path:
        """The dynamic-security state file the broker rewrites on every change."""
        return self.state_dir / "dynamic-security.json"

    @property
    def revocations_file(self) -> Path:
        """The broker-token plugin's persisted deny list (written by the broker's user)."""
        return self.state_dir / "amora-revocations.json"

    @property
    def token_public_keys_file(self) -> Path:
        """The broker-token public keys the plugin loaded (its copy in `state_dir`)."""
        return self.state_dir / "tls" / "broker-token-keys.pem"

    @property
    def label(self) -> str:
        """What runs, for messages."""
        return f"broker {self.name}"

    def log_text(self) -> str:
        """Everything mosquitto logged so far."""
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    def client_context(self) -> ssl.SSLContext:
        """A TLS client context trusting this broker's CA (no client certificate)."""
        return client_ssl_context(self.ca_file)

    # -- lifecycle -------------------------------------------------------------------

    def _spawn(self) -> None:
        self._proc = ManagedProcess("mosquitto", self._argv, log_file=self.log_file)

    def _wait_ready(self, timeout: float) -> None:
        """Wait until the admin gets a CONNACK over TLS on the app listener."""
        proc = self._proc
        assert proc is not None  # noqa: S101 - set by _spawn just before
        ctx = client_ssl_context(self.ca_file)

        def probe() -> bool | None:
            try:
                with MqttClient.connect(
                    self.host,
                    self.app_port,
                    ssl_context=ctx,
                    client_id=f"amora-harness-ready-{uuid.uuid4().hex[:8]}",
                    username=self.admin_username,
                    password=self.admin_password,
                    timeout=2.0,
                ):
                    return True
            except MqttError:
                return None

        if wait_until(probe, timeout=timeout, alive=proc.alive) is None:
            why = "exited" if not proc.alive() else f"accepted no TLS connection within {timeout:.0f}s"
            log = tail(self.log_file)
            proc.stop()
            raise ServiceStartError("mosquitto", f"broker {self.name} {why}", log_tail=log)

    def _check_dynsec_saved(self) -> None:
        """Prove the broker's user can save the dynsec file (dynsec says OK regardless)."""
        # check=False: after a crash the probe role may still exist; the file decides.
        dynsec(self, [{"command": "createRole", "rolename": _PROBE_ROLE}], check=False)
        # mosquitto rewrites the file in place (truncate, then write) on every change, and a
        # client (the authz service) may be changing it right now: a read can catch it empty
        # or half written, so read until it parses and names the probe, within a bound.
        reason = "the change did not reach the file"

        def saved() -> bool | None:
            nonlocal reason
            try:
                state = json.loads(self.dynsec_file.read_text())
            except (OSError, ValueError) as exc:
                reason = repr(exc)
                return None
            reason = "the change did not reach the file"
            return True if _PROBE_ROLE in {role.get("rolename") for role in state.get("roles", [])} else None

        if wait_until(saved, timeout=_SAVE_TIMEOUT, interval=0.02) is None:
            log = tail(self.log_file)
            self.stop()
            raise ServiceStartError(
                "mosquitto",
                f"dynsec state {self.dynsec_file} is not writable by the broker's user "
                f"({_broker_user() or 'current user'}): {reason}",
                log_tail=log,
            )
        dynsec(self, [{"command": "deleteRole", "rolename": _PROBE_ROLE}])

    def wait_bridged(self, *, timeout: float = _START_TIMEOUT) -> None:
        """Wait until the bridge carries messages from the primary to this standby.

        End to end: the primary's admin publishes a probe on ``amora/harness/...`` until
        this broker's admin receives it (the bridge's ``$SYS`` notification is retained
        and persisted, so after a restart it may still say "1" before the bridge is up).

        Raises:
            DevtoolsError: This broker is not a standby.
            ServiceStartError: Nothing came across within ``timeout`` seconds.
        """
        primary = self.bridge_peer
        if primary is None:
            raise DevtoolsError(f"broker {self.name} has no bridge")
        topic = f"{PROBE_TOPIC_PREFIX}/bridge/{uuid.uuid4().hex}"
        try:
            with self.admin_client() as sub, primary.admin_client() as pub:
                sub.subscribe(topic)

                def probe() -> bool | None:
                    pub.publish(topic, b"probe", qos=1)
                    message = sub.receive(timeout=0.25)
                    return True if message is not None and message.topic == topic else None

                arrived = wait_until(probe, timeout=timeout, interval=0, alive=lambda: self.running)
        except MqttError as exc:
            raise ServiceStartError("mosquitto", f"bridge check failed: {exc}") from exc
        if arrived is None:
            raise ServiceStartError(
                "mosquitto", f"bridge {self.bridge_name} carried nothing", log_tail=tail(self.log_file)
            )

    def _start(self, *, timeout: float) -> None:
        self._spawn()
        self._wait_ready(timeout)
        self._check_dynsec_saved()
        if self.bridge_peer is not None:
            try:
                self.wait_bridged(timeout=timeout)
            except ServiceStartError:
                self.stop()
                raise

    def admin_client(self, *, client_id: str | None = None, timeout: float = 5.0) -> MqttClient:
        """Connect as the dynsec admin on the app listener (the harness's own MQTT client).

        Raises:
            MqttError: The connection failed.
        """
        return MqttClient.connect(
            self.host,
            self.app_port,
            ssl_context=client_ssl_context(self.ca_file),
            client_id=client_id or f"{self.admin_username}-{uuid.uuid4().hex[:12]}",
            username=self.admin_username,
            password=self.admin_password,
            timeout=timeout,
        )

    def reload(self, *, timeout: float = 10.0) -> None:
        """Install the PKI's current CRL and SIGHUP the broker; return once it reloaded.

        New TLS handshakes then see the new CRL; connected clients stay connected.

        Raises:
            DevtoolsError: The broker is not running or did not log the reload in time.
        """
        if not self.running:
            raise DevtoolsError(f"broker {self.name} is not running")
        shutil.copyfile(self.pki.crl_file, self.state_dir / "tls" / ".crl.pem.tmp")
        (self.state_dir / "tls" / ".crl.pem.tmp").replace(self.state_dir / "tls" / "crl.pem")
        user = _broker_user()
        if user is not None:
            chown_tree(self.state_dir / "tls", user)
        # mosquitto logs the line, then reloads (config, certificates, CRL) in the same
        # loop iteration, and clears its reload flag at the end: a SIGHUP that arrives
        # during a reload is lost. So: resend if the line does not come, and return only
        # after a CONNACK, which the loop can only send once the reload is finished.
        deadline = time.monotonic() + timeout
        before = self.log_text().count("Reloading config.")
        seen = None
        while seen is None and time.monotonic() < deadline:
            self.signal(signal.SIGHUP)
            seen = wait_until(
                lambda: True if self.log_text().count("Reloading config.") > before else None,
                timeout=min(2.0, max(deadline - time.monotonic(), 0.0)),
                alive=lambda: self.running,
            )
            if self._proc is None or not self._proc.alive():
                break
        if seen is None:
            raise DevtoolsError(f"broker {self.name} did not reload within {timeout}s")
        try:
            self.admin_client(timeout=max(deadline - time.monotonic(), 1.0)).disconnect()
        except MqttError as exc:
            raise DevtoolsError(f"broker {self.name} unreachable after reload: {exc}") from exc

    def signal(self, signum: signal.Signals) -> None:
        """Send a signal to the broker process (only)."""
        if self._proc is not None:
            self._proc.signal(signum)

    def close(self) -> None:
        """Stop and delete the broker's state directory. Idempotent."""
        self.stop()
        if self._owns_state_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)
            remove_at_exit(self.state_dir, keep=True)


def _prepare_state_dir(workdir: Path, name: str, pki: DevPKI) -> tuple[Path, bool]:
    """Make the state dir (see module doc) with copies of the TLS files."""
    if is_root():
        state_dir = Path(tempfile.mkdtemp(prefix=f"amora-mosquitto-{name}-"))
        remove_at_exit(state_dir)
        owned = True
    else:
        state_dir = private_dir(workdir / "state")  # password hashes, the bridge password, the TLS key
        owned = False
    tls = private_dir(state_dir / "tls")
    for src, dst in (
        (pki.ca_file, "ca.pem"),
        (pki.server_cert_file, "server.pem"),
        (pki.crl_file, "crl.pem"),
    ):
        shutil.copyfile(src, tls / dst)
    write_private(tls / "server.key", pki.server_key_file.read_bytes())
    return state_dir, owned


def start_broker(  # noqa: PLR0913 - each option is a distinct deployment choice
    workdir: Path | str,
    pki: DevPKI,
    *,
    name: str = "primary",
    bridge_to: BrokerProcess | None = None,
    host: str = "127.0.0.1",
    timeout: float = _START_TIMEOUT,
    ports: tuple[int, int, int] | None = None,
    token_plugin: TokenPlugin | None = None,
) -> BrokerProcess:
    """Start mosquitto with the Amora configuration and wait until it is usable.

    Args:
        workdir: Parent directory; the broker's log goes to ``workdir/name``.
        pki: Development PKI for the server certificate, device CA and CRL.
        name: Label, also the directory name; ``[A-Za-z0-9_-]{1,32}``.
        bridge_to: Make this broker a standby bridged (``amora/#`` both ways) to that
            primary; a dynsec bridge account is created on the primary, and this call
            returns once the bridge is connected.
        host: Loopback address for the MQTT listeners.
        timeout: Bound for each readiness wait, in seconds.
        ports: Fixed (device, app, websocket) ports instead of free ones (``stack:up``'s
            documented defaults); a port in use then fails the start instead of a retry.
        token_plugin: Also load the broker-token plugin (built from infra/broker-plugin
            with ``make`` when needed, or ``AMORA_AUTH_PLUGIN``) with these settings,
            before dynamic security; its deny list is `BrokerProcess.revocations_file`.

    Returns:
        The running broker; `BrokerProcess.close` it (or use it as a context manager).

    Raises:
        ServiceStartError: mosquitto is missing, did not start, did not accept TLS
            connections in time, cannot save its dynsec state, or its bridge did not connect;
            or the token plugin could not be built or refused its settings.
    """
    if not _NAME.fullmatch(name):
        raise DevtoolsError(f"bad broker name {name!r}")
    broker_dir = Path(workdir) / name
    broker_dir.mkdir(parents=True, exist_ok=True)
    templates = template_dir()
    try:
        main_template = (templates / "mosquitto.conf.template").read_text()
        bridge_template = (templates / "bridge.conf.template").read_text()
        auth_template = (templates / "amora-auth.conf.template").read_text() if token_plugin else ""
    except OSError as exc:
        raise ServiceStartError("mosquitto", f"configuration templates not found: {exc}") from exc
    bridge = None if bridge_to is None else _make_bridge_account(bridge_to, name)
    plugin = dynsec_plugin()
    auth_plugin = amora_auth_plugin() if token_plugin else None
    user = _broker_user()
    last_error: ServiceStartError | None = None
    for _ in range(_START_ATTEMPTS):
        state_dir, owned = _prepare_state_dir(broker_dir, name, pki)
        admin_password = secrets.token_urlsafe(18)
        write_private(  # password hashes
            state_dir / "dynamic-security.json", json.dumps(initial_dynsec_state(admin_password), indent=2)
        )
        tls = state_dir / "tls"
        device_port, app_port, ws_port = ports or (free_port(host), free_port(host), free_port(host))
        values = {
            "bind_address": host,
            "ws_bind": "lo",
            "device_port": str(device_port),
            "app_port": str(app_port),
            "ws_port": str(ws_port),
            "ca_file": str(tls / "ca.pem"),
            "cert_file": str(tls / "server.pem"),
            "key_file": str(tls / "server.key"),
            "crl_file": str(tls / "crl.pem"),
            "state_dir": str(state_dir),
            "dynsec_plugin": plugin,
        }
        config = render_template(main_template, values)
        if token_plugin is not None and auth_plugin is not None:
            config = _token_plugin_config(auth_template, token_plugin, auth_plugin, state_dir) + "\n" + config
        if bridge is not None:
            config += "\n" + render_template(
                bridge_template,
                {
                    "bridge_name": bridge.name,
                    "bridge_address": bridge.address,
                    "bridge_username": bridge.username,
                    "bridge_password": bridge.password,
                    "bridge_cafile": str(tls / "ca.pem"),
                },
            )
        write_private(state_dir / "mosquitto.conf", config)  # holds the bridge password
        if user is not None:
            chown_tree(state_dir, user)
        broker = BrokerProcess(
            name=name,
            host=host,
            device_port=int(values["device_port"]),
            app_port=int(values["app_port"]),
            ws_port=int(values["ws_port"]),
            ca_file=pki.ca_file,
            admin_username=ADMIN_USERNAME,
            admin_password=admin_password,
            workdir=broker_dir,
            state_dir=state_dir,
            pki=pki,
            bridge_name=None if bridge is None else bridge.name,
            bridge_peer=bridge_to,
            token_plugin=token_plugin,
            _argv=["mosquitto", "-c", str(state_dir / "mosquitto.conf")],
            _owns_state_dir=owned,
        )
        try:
            broker._start(timeout=timeout)  # noqa: SLF001 - the factory of its own class
        except ServiceStartError as exc:
            broker.close()
            if "Address already in use" not in exc.log_tail or ports is not None:
                raise
            last_error = exc  # a port was taken between probing and binding: new ports
            continue
        except BaseException:
            broker.close()
            raise
        return broker
    assert last_error is not None  # noqa: S101 - the loop ran at least once
    raise last_error


def _token_plugin_config(template: str, settings: TokenPlugin, plugin: Path, state_dir: Path) -> str:
    """Copy the plugin and its keys into the state directory; render its configuration block.

    Copies, because mosquitto loads plugins after dropping to its own user, which may
    not be able to reach a checkout under a private home directory.
    """
    try:
        keys = settings.public_keys.read_bytes()
    except OSError as exc:
        raise ServiceStartError("mosquitto", f"token public keys {settings.public_keys} not readable: {exc}") from exc
    shutil.copyfile(plugin, state_dir / "amora_auth.so")
    write_private(state_dir / "tls" / "broker-token-keys.pem", keys)
    revocations = state_dir / "amora-revocations.json"
    if settings.synced and not revocations.exists():
        write_private(revocations, json.dumps({"version": 1, "synced": True, "sessions": []}))
    return render_template(
        template,
        {
            "amora_auth_plugin": str(state_dir / "amora_auth.so"),
            "token_public_keys": str(state_dir / "tls" / "broker-token-keys.pem"),
            "token_issuer": settings.issuer,
            "token_audience": settings.audience,
            "token_revocations": str(state_dir / "amora-revocations.json"),
            "token_username_prefix": settings.username_prefix,
        },
    )


def _make_bridge_account(primary: BrokerProcess, standby_name: str) -> _Bridge:
    """Create the primary's dynsec client and role for a standby's bridge."""
    username = service_account_name(f"bridge-{standby_name}")
    password = secrets.token_urlsafe(18)
    role = f"bridge:{standby_name}"
    acls = [
        acl(acltype, "amora/#")
        for acltype in ("publishClientSend", "publishClientReceive", "subscribePattern", "unsubscribePattern")
    ]
    dynsec(
        primary,
        [
            {"command": "createRole", "rolename": role, "acls": acls},
            {
                "command": "createClient",
                "username": username,
                "password": password,
                "clientid": username,
                "textname": f"bridge from standby {standby_name}",
                "roles": [{"rolename": role}],
            },
        ],
    )
    return _Bridge(
        name=f"{standby_name}-to-{primary.name}",
        address=f"{primary.host}:{primary.app_port}",
        username=username,
        password=password,
    )


def start_broker_pair(
    workdir: Path | str,
    pki: DevPKI,
    *,
    timeout: float = _START_TIMEOUT,
) -> tuple[BrokerProcess, BrokerProcess]:
    """Start a primary and a standby bridged to it on ``amora/#`` (both directions).

    Returns:
        ``(primary, standby)``, both running; close both (standby first).

    Raises:
        ServiceStartError: Either broker did not start, or the bridge did not connect.
    """
    primary = start_broker(workdir, pki, name="primary", timeout=timeout)
    try:
        standby = start_broker(workdir, pki, name="standby", bridge_to=primary, timeout=timeout)
    except BaseException:
        primary.close()
        raise
    return primary, standby
