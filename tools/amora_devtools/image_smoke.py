"""Smoke test of the three server images, run against each other on this host.

Builds ``amora-broker``, ``amora-authz`` and ``amora-player-sim`` (`amora_devtools.images`) and
starts them with ``buildah run --isolation chroot --network host`` (``podman run`` cannot set
rlimits in this sandbox), each as the user, entrypoint and command its image declares, with
the development PKI mounted where the images expect their secrets:

1. a primary broker and a standby (the same image with bridge settings); each is waited for
   with the image's own HEALTHCHECK command, the standby's bridge is seen logging in with
   the account the primary created on its first start;
2. the authz service, reconciling both brokers, until ``/readyz`` answers 200;
3. a simulated player registered through the authz admin API (keys + CSR), linked to
   ``alice``, running in the player-sim container until its HEALTHCHECK passes;
4. ``alice`` creates a session through the authz container (the SDK's token exchange),
   connects with it to the broker container over TLS and receives the player's signed state,
   verified by the SDK;
5. a second device's certificate connects to the device listener, is revoked through the
   authz API (CRL written to the volume shared with the broker), the broker container gets
   SIGHUP, and the same certificate is refused;
6. token mode: one more broker container with broker-token public keys mounted loads the
   image's ``amora_auth.so`` (it would not start otherwise) and, with no authz service to
   confirm its new deny list, fails closed: a token signed by the mounted key and one signed
   by another key are both refused (0x87), the first for the unconfirmed deny list (the
   accepted path is tested on the host: ``tools/tests/test_broker_image.py``).

Every step is timed; the summary goes to stdout. Everything started is stopped by PID and
every working container is removed, also on failure.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import secrets
import shutil
import signal
import socket
import ssl
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from amora_devtools._container import READY_S, UID, Container
from amora_devtools._errors import DevtoolsError, MqttError, MqttRefused
from amora_devtools._files import private_dir, write_private
from amora_devtools._mqtt import MqttClient, client_ssl_context
from amora_devtools._proc import free_port, tail, wait_until
from amora_devtools._smoke_configs import ADMIN, USER, agent_config, authz_config
from amora_devtools.broker_tokens import session_token
from amora_devtools.images import build_images, ensure_base
from amora_devtools.pki import DevPKI, device_key_and_csr
from amora_protocol import EncryptionKey, SigningKey

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence
    from types import TracebackType

__all__ = ["Container", "SmokeRun", "device_connack", "run_smoke"]


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _owned(path: Path, *, mode: int) -> Path:
    """Make ``path`` belong to the images' uid (it reads its mounts as that user)."""
    os.chown(path, UID, UID)
    path.chmod(mode)
    return path


@dataclass
class _Device:
    device_id: str
    directory: Path
    signing: SigningKey
    encryption: EncryptionKey
    serial: int = 0


@dataclass
class SmokeRun:
    """One smoke run in ``workdir``: containers, PKI, timings."""

    workdir: Path
    timings: dict[str, float] = field(default_factory=dict)
    containers: list[Container] = field(default_factory=list)
    _http: httpx.Client | None = None

    def __enter__(self) -> Self:
        """Nothing to start yet."""
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop every container, newest first."""
        if self._http is not None:
            self._http.close()
        for container in reversed(self.containers):
            container.stop()

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Time one step (printed as it ends)."""
        started = time.monotonic()
        sys.stderr.write(f"smoke: {name} ...\n")
        yield
        self.timings[name] = time.monotonic() - started
        sys.stderr.write(f"smoke: {name}: {self.timings[name]:.1f} s\n")

    def container(self, name: str, image: str) -> Container:
        """Create a working container of ``image`` (stopped and removed at the end)."""
        container = Container(name, image, self.workdir / f"{name}.log")
        self.containers.append(container)
        container.create()
        return container

    # -- the PKI and the mounts -------------------------------------------------------------

    def secrets_dir(self, pki: DevPKI, admin_password: str, bridge_password: str) -> Path:
        """What a secret store would mount at /run/secrets/amora (readable by the images' uid)."""
        directory = self.workdir / "secrets"
        directory.mkdir(mode=0o700)
        files = {
            "device-ca.pem": pki.ca_file.read_bytes(),
            "device-ca.key": pki.ca_key_file.read_bytes(),
            "broker.pem": pki.server_cert_file.read_bytes(),
            "broker.key": pki.server_key_file.read_bytes(),
            "broker-admin-password": admin_password.encode(),
            "bridge-password": bridge_password.encode(),
        }
        for name, data in files.items():
            write_private(directory / name, data)
            _owned(directory / name, mode=0o400)
        return _owned(directory, mode=0o500)

    def crl_dir(self, pki: DevPKI) -> Path:
        """The volume the authz service writes the CRL to and the brokers read it from."""
        directory = self.workdir / "crl"
        directory.mkdir()
        shutil.copy(pki.crl_file, directory / "devices.crl.pem")
        _owned(directory / "devices.crl.pem", mode=0o644)
        return _owned(directory, mode=0o755)

    def state_dir(self, name: str) -> Path:
        """An empty state volume owned by the images' uid."""
        directory = self.workdir / "volumes" / name
        directory.mkdir(parents=True)
        return _owned(directory, mode=0o700)

    # -- authz API ---------------------------------------------------------------------------

    def http(self, url: str) -> httpx.Client:
        """The authz service's HTTP client."""
        if self._http is None:
            self._http = httpx.Client(base_url=url, timeout=15.0)
        return self._http

    def token(self, url: str, user: str) -> str:
        """A development token from the authz container's issuer."""
        response = self.http(url).post("/dev-issuer/token", json={"username": user})
        response.raise_for_status()
        return str(response.json()["access_token"])

    def admin(self, url: str, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """An authz admin call.

        Raises:
            DevtoolsError: Not 2xx.
        """
        headers = {"Authorization": f"Bearer {self.token(url, ADMIN)}"}
        response = self.http(url).request(method, path, json=body, headers=headers)
        if response.status_code >= 400:
            raise DevtoolsError(f"authz {method} {path} -> {response.status_code}: {response.text}")
        return response.json() if response.content else {}

    def register(self, url: str, device_id: str) -> _Device:
        """Register a device through the admin API: keys and a CSR answered with its certificate."""
        directory = self.workdir / "devices" / device_id
        private_dir(directory)
        device = _Device(device_id, directory, SigningKey.generate(), EncryptionKey.generate())
        key_pem, csr_pem = device_key_and_csr(device_id)
        write_private(directory / "device.key", key_pem)
        answer = self.admin(url, "POST", "/v1/admin/devices", {
            "device_id": device_id,
            "signing_key": _b64(device.signing.public_key.raw),
            "encryption_key": _b64(device.encryption.public_key.raw),
            "csr": csr_pem.decode(),
        })  # fmt: skip
        (directory / "device.pem").write_text(answer["certificate"])
        device.serial = int(
            answer.get("serial") or x509.load_pem_x509_certificate(answer["certificate"].encode()).serial_number
        )
        write_private(directory / "signing.pem", device.signing.to_pem())
        write_private(directory / "encryption.pem", device.encryption.to_pem())
        return device


def device_connack(host: str, port: int, ca_file: Path, cert: Path, key: Path) -> int | str:
    """CONNECT with a device certificate: the CONNACK reason code, or why TLS/MQTT failed."""
    context = ssl.create_default_context(cafile=str(ca_file))
    context.load_cert_chain(str(cert), str(key))
    connect = b"\x10\x0d\x00\x04MQTT\x05\x02\x00\x0a\x00\x00\x00"
    try:
        with (
            socket.create_connection((host, port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            tls.sendall(connect)
            answer = tls.recv(16)  # under TLS 1.3 a refused certificate shows up here
    except (ssl.SSLError, OSError) as exc:
        return f"refused: {exc}"
    if len(answer) >= 4 and answer[0] == 0x20:
        return answer[3]
    return f"no CONNACK: {answer!r}"


async def _receive_state(url: str, token: str, ca_file: Path, device_id: str, limit_s: float) -> tuple[int, float]:
    """Session through authz, TLS to the broker, the first verified state of ``device_id``."""
    from amora_sync import AmoraClient, DeviceState  # noqa: PLC0415 - only the smoke test needs the SDK

    async def provider() -> str:
        return token

    started = time.monotonic()
    async with asyncio.timeout(limit_s), AmoraClient(url, provider, ca_file=ca_file) as client:
        devices = [d.device_id for d in client.devices]
        if device_id not in devices:
            raise DevtoolsError(f"the session lists {devices}, not {device_id}")
        async with client.watch(device_id) as events:
            async for event in events:
                if isinstance(event, DeviceState):
                    return event.version, time.monotonic() - started
    raise DevtoolsError("the watch ended without a state")


def _smoke(run: SmokeRun, images: Mapping[str, str]) -> None:  # noqa: C901, PLR0915 - one scenario, step by step
    pki = DevPKI.create(run.workdir / "pki")
    admin_password, bridge_password = secrets.token_urlsafe(18), secrets.token_urlsafe(18)
    secrets_dir = run.secrets_dir(pki, admin_password, bridge_password)
    crl_dir = run.crl_dir(pki)
    ports = {name: (free_port(), free_port(), free_port()) for name in ("primary", "standby")}
    broker_env = {
        "AMORA_BROKER_BIND_ADDRESS": "127.0.0.1",
        "AMORA_BROKER_WS_BIND": "lo",  # an interface name: libwebsockets binds all for 127.0.0.1
        "AMORA_BROKER_BRIDGE_USERNAME": "svc.bridge-standby",
        "AMORA_BROKER_BRIDGE_PASSWORD_FILE": "/run/secrets/amora/bridge-password",
    }
    mounts = [f"{secrets_dir}:/run/secrets/amora:ro"]
    brokers: dict[str, Container] = {}
    for name, (device_port, app_port, ws_port) in ports.items():
        with run.step(f"broker {name}: container up and healthy"):
            env = {
                **broker_env,
                "AMORA_BROKER_DEVICE_PORT": str(device_port),
                "AMORA_BROKER_APP_PORT": str(app_port),
                "AMORA_BROKER_WS_PORT": str(ws_port),
            }
            if name == "standby":
                env["AMORA_BROKER_BRIDGE_ADDRESS"] = f"localhost:{ports['primary'][1]}"
            else:
                # No CRL watching during the test: the reload below must come from SIGHUP
                # (tools/tests/test_broker_image.py covers the watching).
                env["AMORA_BROKER_CRL_WATCH_S"] = "3600"
            broker = run.container(f"broker-{name}", images["amora-broker"])
            volumes = [
                *mounts,
                f"{crl_dir}:/run/amora/crl:ro",
                f"{run.state_dir('broker-' + name)}:/var/lib/amora-broker",
            ]
            broker.start(env=env, volumes=volumes)
            broker.wait_healthy()
            brokers[name] = broker
    with run.step("bridge: standby logged in to the primary"):
        logged_in = wait_until(
            lambda: (
                True if "as svc.bridge-standby" in brokers["primary"].log_file.read_text(errors="replace") else None
            ),
            timeout=30,
            interval=0.2,
        )
        if logged_in is None:
            raise DevtoolsError("the standby's bridge did not log in:\n" + tail(brokers["standby"].log_file))

    authz_port = free_port()
    url = f"http://127.0.0.1:{authz_port}"
    with run.step("authz: container up, both brokers reconciled (/readyz 200)"):
        config_dir = run.workdir / "authz-config"
        config_dir.mkdir()
        brokers_cfg = [(name, app, ws) for name, (_dev, app, ws) in ports.items()]
        write_private(config_dir / "authz.toml", authz_config(authz_port, brokers_cfg, admin_password))
        _owned(config_dir / "authz.toml", mode=0o400)
        _owned(config_dir, mode=0o500)
        authz = run.container("authz", images["amora-authz"])
        authz.start(
            # The image's AMORA_AUTHZ_LISTEN_* override the file; on the host network the
            # service takes a free loopback port instead of 8080.
            env={
                "AMORA_AUTHZ_CONFIG": "/etc/amora-authz/authz.toml",
                "AMORA_AUTHZ_LISTEN_HOST": "127.0.0.1",
                "AMORA_AUTHZ_LISTEN_PORT": str(authz_port),
            },
            volumes=[
                *mounts,
                f"{config_dir}:/etc/amora-authz:ro",
                f"{crl_dir}:/run/amora/crl",
                f"{run.state_dir('authz')}:/var/lib/amora-authz",
            ],
        )

        def ready() -> bool | None:
            with contextlib.suppress(httpx.HTTPError):
                if run.http(url).get("/readyz", timeout=2).status_code == 200:
                    return True
            return None

        if wait_until(ready, timeout=READY_S, interval=0.2, alive=authz.alive) is None:
            raise DevtoolsError("authz not ready:\n" + tail(authz.log_file))
        authz.wait_healthy()

    with run.step("player-sim: device registered (CSR), linked, container up and healthy"):
        device = run.register(url, "sim-1")
        run.admin(url, "PUT", f"/v1/admin/users/{USER}/devices/{device.device_id}")
        keys = [str(k["public_key"]) for k in run.http(url).get("/.well-known/amora-keys").json()["keys"]]
        fleet = run.workdir / "fleet"
        fleet.mkdir()
        shutil.copytree(device.directory, fleet / device.device_id)
        (fleet / f"{device.device_id}.toml").write_text(agent_config(device.device_id, ports["primary"][0], keys))
        for path in [fleet, *fleet.rglob("*")]:
            _owned(path, mode=0o500 if path.is_dir() else 0o400)
        sim = run.container("player-sim", images["amora-player-sim"])
        sim.start(
            env={},
            volumes=[*mounts, f"{fleet}:/etc/amora-sim:ro", f"{run.state_dir('player-sim')}:/var/lib/amora-sim"],
        )
        sim.wait_healthy()

    with run.step("session through authz, TLS to the broker, signed state received"):
        version, seconds = asyncio.run(_receive_state(url, run.token(url, USER), pki.ca_file, device.device_id, 60))
        sys.stdout.write(f"smoke: {device.device_id} state v{version} verified, {seconds * 1000:.0f} ms after login\n")

    with run.step("revocation: CRL from authz, SIGHUP, certificate refused"):
        other = run.register(url, "sim-2")
        cert, key = other.directory / "device.pem", other.directory / "device.key"
        before = device_connack("127.0.0.1", ports["primary"][0], pki.ca_file, cert, key)
        if before != 0:
            raise DevtoolsError(f"sim-2's certificate should connect before revocation, got {before}")
        run.admin(url, "POST", f"/v1/admin/devices/{other.device_id}/revoke")
        brokers["primary"].signal(signal.SIGHUP)

        def refused() -> str | None:
            answer = device_connack("127.0.0.1", ports["primary"][0], pki.ca_file, cert, key)
            return answer if isinstance(answer, str) else None

        why = wait_until(refused, timeout=15, interval=0.2)
        if why is None:
            raise DevtoolsError(
                "a revoked certificate still connects after SIGHUP:\n" + tail(brokers["primary"].log_file)
            )
        sys.stdout.write(f"smoke: revoked certificate {why}\n")

    with run.step("token mode: broker with amora_auth.so, closed until its deny list is confirmed"):
        _token_broker(run, images["amora-broker"], secrets_dir, crl_dir, pki.ca_file)


def _token_broker(run: SmokeRun, image: str, secrets_dir: Path, crl_dir: Path, ca_file: Path) -> None:
    """Step 6: the broker image in token mode (its entrypoint loads the plugin when keys are mounted)."""
    key = ec.generate_private_key(ec.SECP256R1())
    token_dir = run.workdir / "broker-token"
    token_dir.mkdir(mode=0o700)
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    write_private(token_dir / "broker-token-keys.pem", public)
    _owned(token_dir / "broker-token-keys.pem", mode=0o400)
    _owned(token_dir, mode=0o500)
    device_port, app_port, ws_port = free_port(), free_port(), free_port()
    state = run.state_dir("broker-token")
    broker = run.container("broker-token", image)
    broker.start(
        env={
            "AMORA_BROKER_BIND_ADDRESS": "127.0.0.1",
            "AMORA_BROKER_WS_BIND": "lo",
            "AMORA_BROKER_DEVICE_PORT": str(device_port),
            "AMORA_BROKER_APP_PORT": str(app_port),
            "AMORA_BROKER_WS_PORT": str(ws_port),
            "AMORA_BROKER_TOKEN_PUBLIC_KEYS": "/run/amora/broker-token/broker-token-keys.pem",
        },
        volumes=[
            f"{secrets_dir}:/run/secrets/amora:ro",
            f"{crl_dir}:/run/amora/crl:ro",
            f"{token_dir}:/run/amora/broker-token:ro",
            f"{state}:/var/lib/amora-broker",
        ],
    )
    broker.wait_healthy()
    acl = [{"permission": "allow", "action": "subscribe", "topic": "amora/devices/sim-1/state"}]
    good = session_token(key, username="sess.smoke", acl=acl)
    forged = session_token(ec.generate_private_key(ec.SECP256R1()), username="sess.smoke", acl=acl)
    answers = [_session_connack("127.0.0.1", app_port, ca_file, "sess.smoke", token) for token in (good, forged)]
    log = tail(broker.log_file)
    closed = "deny list not confirmed" in log or "until the authz service confirms the deny list" in log
    if answers != [0x87, 0x87] or not closed:
        raise DevtoolsError(
            f"token mode: CONNACK {answers} for (signed, another key's) token, not [0x87, 0x87] with the "
            f"unconfirmed deny list named:\n{log}"
        )
    sys.stdout.write("smoke: token mode: plugin loaded; a new broker refuses sessions until authz confirms (0x87)\n")


def _session_connack(host: str, port: int, ca_file: Path, username: str, password: str) -> int | str:
    """The CONNACK reason of a TLS app-listener CONNECT (client id = username), or why there was none."""
    try:
        with MqttClient.connect(
            host,
            port,
            ssl_context=client_ssl_context(ca_file),
            client_id=username,
            username=username,
            password=password,
        ):
            return 0
    except MqttRefused as exc:
        return exc.reason_code
    except MqttError as exc:
        return str(exc)


def run_smoke(*, keep: Path | None = None) -> int:
    """Build and smoke-test the images; print the timings and sizes. Returns the exit status."""
    timings: dict[str, float] = {}
    started = time.monotonic()
    _, timings["base image (cached after the first run)"] = ensure_base()
    build_started = time.monotonic()
    built = build_images()
    timings["build all three (buildah, cached layers)"] = time.monotonic() - build_started
    images = {image.name: image.reference for image in built}
    workdir = keep or Path(tempfile.mkdtemp(prefix="amora-smoke-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        with SmokeRun(workdir) as run:
            _smoke(run, images)
            timings.update(run.timings)
    except DevtoolsError as exc:
        sys.stderr.write(f"smoke: FAILED: {exc}\n(files in {workdir})\n")
        return 1
    finally:
        if keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    timings["total"] = time.monotonic() - started
    sys.stdout.write("\n| image | version | size |\n|---|---|---|\n")
    for image in built:
        sys.stdout.write(f"| {image.name} | {image.version} | {image.size} |\n")
    sys.stdout.write("\n| step | seconds |\n|---|---|\n")
    for name, seconds in timings.items():
        sys.stdout.write(f"| {name} | {seconds:.1f} |\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m amora_devtools.image_smoke [--keep DIR]``."""
    from amora_devtools.images import main as images_main  # noqa: PLC0415

    return images_main(["smoke", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    raise SystemExit(main())
