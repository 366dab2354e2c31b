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
   SIGHUP, and the same certificate is refused.

Every step is timed; the summary goes to stdout. Everything started is stopped by PID and
every working container is removed, also on failure.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import httpx
from cryptography import x509

from amora_devtools._errors import DevtoolsError
from amora_devtools._files import private_dir, write_private
from amora_devtools._proc import free_port, tail, wait_until
from amora_devtools.images import build_images, buildah, ensure_base, image_config
from amora_devtools.pki import DevPKI, device_key_and_csr
from amora_protocol import EncryptionKey, SigningKey

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence
    from types import TracebackType

__all__ = ["Container", "SmokeRun", "device_connack", "run_smoke"]

UID = 10001  # every image runs as this uid (see infra/images)
_READY_S = 120.0
_ADMIN = "admin"
_USER = "alice"


def _descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from /proc), deepest last."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(0), []):
            found.append(child)
            queue.append(child)
    return found


@dataclass
class Container:
    """A working container of an image, its command run by ``buildah run`` (host network)."""

    name: str
    image: str
    log_file: Path
    container_id: str = ""
    process: subprocess.Popen[bytes] | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def create(self) -> None:
        """``buildah from`` the image (a copy of its tree: seconds with vfs)."""
        self.config = image_config(self.image)
        self.container_id = buildah("from", "--pull-never", "--name", f"amora-smoke-{self.name}-{uuid.uuid4().hex[:8]}",
                                    self.image).strip()  # fmt: skip

    def _run_argv(self, command: Sequence[str], *, env: Mapping[str, str], volumes: Sequence[str]) -> list[str]:
        exe = shutil.which("buildah") or "buildah"
        argv = [exe, "--storage-driver", "vfs", "run", "--isolation", "chroot", "--network", "host"]
        argv += ["--user", str(self.config.get("User") or "0")]
        for key, value in env.items():
            argv += ["--env", f"{key}={value}"]
        for volume in volumes:
            argv += ["--volume", volume]
        return [*argv, self.container_id, "--", *command]

    def start(self, *, env: Mapping[str, str], volumes: Sequence[str]) -> None:
        """Run the image's ENTRYPOINT + CMD, as the image's USER, output to ``log_file``."""
        command = [*(self.config.get("Entrypoint") or []), *(self.config.get("Cmd") or [])]
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 - argv built here from the image's config
                self._run_argv(command, env=env, volumes=volumes),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._env, self._volumes = dict(env), list(volumes)

    def alive(self) -> bool:
        """Whether its command still runs."""
        return self.process is not None and self.process.poll() is None

    def healthy(self) -> bool:
        """Run the image's HEALTHCHECK command in the container once; True on exit 0."""
        test = (self.config.get("Healthcheck") or {}).get("Test") or []
        if not test or test[0] != "CMD":
            raise DevtoolsError(f"{self.image} has no exec-form HEALTHCHECK")
        result = subprocess.run(  # noqa: S603 - argv built here from the image's config
            self._run_argv(test[1:], env=self._env, volumes=self._volumes),
            check=False,
            capture_output=True,
            timeout=60,
        )
        return result.returncode == 0

    def wait_healthy(self, *, timeout: float = _READY_S) -> None:
        """Poll the HEALTHCHECK until it passes (bounded; fails early if the command died).

        Raises:
            DevtoolsError: It exited or stayed unhealthy (with its log).
        """
        if (
            wait_until(lambda: True if self.healthy() else None, timeout=timeout, interval=0.5, alive=self.alive)
            is None
        ):
            raise DevtoolsError(f"{self.name} not healthy (alive: {self.alive()}):\n{tail(self.log_file)}")

    def signal(self, signum: signal.Signals) -> None:
        """Send ``signum`` to the container's entrypoint (what ``docker kill -s`` would do).

        Raises:
            DevtoolsError: Nothing runs in it.
        """
        payload = self._payload()
        if not payload:
            raise DevtoolsError(f"nothing runs in {self.name}")
        os.kill(payload[0], signum)

    def _payload(self) -> list[int]:
        """The processes buildah run started in the container (not buildah's own helpers)."""
        if self.process is None:
            return []
        found = []
        for pid in _descendants(self.process.pid):
            with contextlib.suppress(OSError):
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
                if not comm.startswith(("buildah", "memfd:buildah")):
                    found.append(pid)
        return found

    def stop(self, *, timeout: float = 15.0) -> None:
        """SIGTERM to what runs inside, SIGKILL after ``timeout``; remove the container.

        ``buildah run`` does not forward SIGTERM (it kills its child), so the payload gets the
        signal directly, as a container runtime would deliver it, and buildah exits after it.
        """
        try:
            if self.process is not None and self.alive():
                for pid in self._payload()[:1]:  # the entrypoint; it stops its own children
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
                try:
                    self.process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    for pid in [self.process.pid, *_descendants(self.process.pid)]:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                    self.process.wait(timeout=timeout)
        finally:
            if self.container_id:
                with contextlib.suppress(DevtoolsError):
                    buildah("rm", self.container_id)
                self.container_id = ""


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
        headers = {"Authorization": f"Bearer {self.token(url, _ADMIN)}"}
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


def _toml(value: object) -> str:
    return json.dumps(value)  # JSON strings, numbers and lists of them are valid TOML


def _authz_config(port: int, brokers: Sequence[tuple[str, int, int]], admin_password: str) -> str:
    lines = [
        'database_url = "sqlite:///var/lib/amora-authz/authz.db"',
        'listen_host = "127.0.0.1"',
        f"listen_port = {port}",
        f"public_url = {_toml(f'http://127.0.0.1:{port}')}",
        'state_dir = "/var/lib/amora-authz/state"',
        'device_ca_cert = "/run/secrets/amora/device-ca.pem"',
        'device_ca_key = "/run/secrets/amora/device-ca.key"',
        'crl_file = "/run/amora/crl/devices.crl.pem"',
        # The brokers run in other containers: the smoke test sends them SIGHUP itself.
        "crl_reload_command = []",
        'log_level = "info"',
        "",
        "[dev_issuer]",
        "enabled = true",
        f"users = {_toml([_USER, _ADMIN])}",
        f"admins = {_toml([_ADMIN])}",
    ]
    for name, app_port, ws_port in brokers:
        lines += [
            "",
            "[[brokers]]",
            f"name = {_toml(name)}",
            'host = "127.0.0.1"',
            f"port = {app_port}",
            'username = "svc.amora-authz"',
            f"password = {_toml(admin_password)}",
            'ca_file = "/run/secrets/amora/device-ca.pem"',
            f"client_endpoints = {_toml([f'mqtts://localhost:{app_port}', f'wss://localhost:{ws_port}/mqtt'])}",
        ]
    return "\n".join(lines) + "\n"


def _agent_config(device: _Device, device_port: int, authz_keys: Sequence[str]) -> str:
    inside = f"/etc/amora-sim/{device.device_id}"
    return "\n".join([
        f"device_id = {_toml(device.device_id)}",
        f"state_dir = {_toml('/var/lib/amora-sim/' + device.device_id)}",
        "state_fsync = false",
        "",
        "[keys]",
        f"signing_key_file = {_toml(inside + '/signing.pem')}",
        f"encryption_key_file = {_toml(inside + '/encryption.pem')}",
        f"trusted_authz_keys = {_toml(list(authz_keys))}",
        "",
        "[tls]",
        'ca_file = "/run/secrets/amora/device-ca.pem"',
        f"cert_file = {_toml(inside + '/device.pem')}",
        f"key_file = {_toml(inside + '/device.key')}",
        "",
        "[mqtt]",
        "backoff_initial_s = 0.2",
        "backoff_max_s = 5.0",
        "",
        "[[brokers]]",
        'host = "127.0.0.1"',
        f"port = {device_port}",
        "",
        "[player]",
        'kind = "simulated"',
    ]) + "\n"  # fmt: skip


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
        write_private(config_dir / "authz.toml", _authz_config(authz_port, brokers_cfg, admin_password))
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

        if wait_until(ready, timeout=_READY_S, interval=0.2, alive=authz.alive) is None:
            raise DevtoolsError("authz not ready:\n" + tail(authz.log_file))
        authz.wait_healthy()

    with run.step("player-sim: device registered (CSR), linked, container up and healthy"):
        device = run.register(url, "sim-1")
        run.admin(url, "PUT", f"/v1/admin/users/{_USER}/devices/{device.device_id}")
        keys = [str(k["public_key"]) for k in run.http(url).get("/.well-known/amora-keys").json()["keys"]]
        fleet = run.workdir / "fleet"
        fleet.mkdir()
        shutil.copytree(device.directory, fleet / device.device_id)
        (fleet / f"{device.device_id}.toml").write_text(_agent_config(device, ports["primary"][0], keys))
        for path in [fleet, *fleet.rglob("*")]:
            _owned(path, mode=0o500 if path.is_dir() else 0o400)
        sim = run.container("player-sim", images["amora-player-sim"])
        sim.start(
            env={},
            volumes=[*mounts, f"{fleet}:/etc/amora-sim:ro", f"{run.state_dir('player-sim')}:/var/lib/amora-sim"],
        )
        sim.wait_healthy()

    with run.step("session through authz, TLS to the broker, signed state received"):
        version, seconds = asyncio.run(_receive_state(url, run.token(url, _USER), pki.ca_file, device.device_id, 60))
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
