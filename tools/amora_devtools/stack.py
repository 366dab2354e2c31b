"""The whole local Amora stack on loopback: brokers, authz service, players, development users.

``python -m amora_devtools.stack up --state-dir DIR`` (``hatch run stack:up --state-dir DIR``)
starts, in order:

1. a development PKI, a primary broker and (by default) a standby bridged to it;
2. the authz service (SQLite, development issuer on) reconciling both brokers; with
   ``--credentials token`` in token mode (a broker-token key made with its CLI, every broker
   loading the ``amora_auth`` plugin with the public half: app sessions log in with signed
   tokens instead of dynamic-security clients);
3. players, each registered through the authz admin API (keys + a CSR answered with its
   certificate): by default one agent on a real MPD and three simulated ones;
4. development users who own different players (``alice``, ``bob``; ``carol`` owns none).

Once every player is online it writes ``DIR/stack.json`` and runs until interrupted, then stops
everything it started, by PID, in reverse order. Meanwhile it restarts brokers and agents that
die, with backoff (0.5 s doubling to 10 s, reset after 10 s up), as systemd's ``Restart=`` and
Kubernetes do (see `amora_devtools.supervise`; ``--no-restart`` turns it off).
DEVELOPMENT ONLY: the PKI, the tokens and the issuer are for local work; production keys
never come from here.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import json
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import httpx

from amora_devtools._authz_process import (
    ADMIN_USER,
    READY_TIMEOUT,
    console_script,
    make_broker_token_key,
    start_authz,
)
from amora_devtools._errors import DevtoolsError, ServiceStartError
from amora_devtools._files import private_dir, write_private
from amora_devtools._players import Player, agent_alive, agent_config, agent_config_error, says_online
from amora_devtools._proc import ManagedProcess, tail
from amora_devtools.broker import BrokerProcess, TokenPlugin, start_broker
from amora_devtools.mpd import MpdProcess, start_mpd
from amora_devtools.music import DEFAULT_TRACKS, Track
from amora_devtools.pki import DevPKI, device_key_and_csr
from amora_devtools.supervise import Supervisor
from amora_devtools.webpage import WEB_DIR, WebPage, start_webpage
from amora_protocol import EncryptionKey, SigningKey, connection_topic

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from types import TracebackType

__all__ = [
    "ADMIN_USER",
    "CREDENTIALS",
    "DEFAULT_AUTHZ_PORT",
    "DEFAULT_BROKER_PORT",
    "DEFAULT_USERS",
    "DEFAULT_WSS_PORT",
    "STACK_FORMAT",
    "STANDBY_PORT_OFFSET",
    "Player",
    "Stack",
    "dev_mode_fields",
    "fixed_ports",
    "main",
    "start_authz",
]

# Who owns which player, by player index (0 is the real-MPD player when there is one).
DEFAULT_USERS: dict[str, tuple[int, ...]] = {"alice": (0, 1), "bob": (2, 3), "carol": ()}
# `stack:up`'s fixed ports, which the READMEs use (the SDK quickstart's authz URL). The
# layout is the deployments' (infra/images, infra/k8s, infra/azure), so what works against
# the stack works against a real broker: devices 8883 (mTLS), apps 8884 (TLS + password),
# wss 8443; the standby, on the same host here, 1000 higher (9883, 9884, 9443, as in
# infra/azure). `Stack` itself (tests) picks free ports.
DEFAULT_AUTHZ_PORT = 8080
DEFAULT_BROKER_PORT = 8883  # the primary's device listener; its app listener is the next port
DEFAULT_WSS_PORT = 8443  # the primary's wss listener (behind 443 in the deployments)
STANDBY_PORT_OFFSET = 1000
# The version of stack.json's layout. Bump it when a field `dev_mode_fields` writes moves or
# changes meaning, and teach amora_sync._devstack the new format in the same commit: the
# published CLI reads only the formats it lists. Adding other fields needs no bump.
STACK_FORMAT = 1
# How app sessions log in to the brokers (`Stack.credentials`, ``stack:up --credentials``).
CREDENTIALS = ("dynsec", "token")


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def dev_mode_fields(*, authz_url: str, ca_file: Path) -> dict[str, Any]:
    """The fields of ``stack.json`` that the ``amora`` CLI's development mode reads (`STACK_FORMAT`).

    ``amora --dev DIR/stack.json --user NAME`` (amora_sync._devstack) reads exactly these, in
    the formats it lists, and refuses others with an error naming the version it found.
    """
    return {
        "format": STACK_FORMAT,
        "authz_url": authz_url,
        "broker": {"ca_file": str(ca_file)},
        "dev_issuer": {"token_url": f"{authz_url}/dev-issuer/token"},
    }


@dataclass
class Stack:
    """The running stack; use as a context manager or call `start` and `stop`.

    Args:
        state_dir: Where everything lives (keys, certificates, databases, logs, stack.json).
        players: How many players (at least 1).
        real_mpd: Make the first player an agent on a real MPD.
        standby: Also run a standby broker bridged to the primary.
        users: User name -> indexes of the players they own.
        agent_programs: Device id -> the ``amora-agent`` executable to run it with (default:
            this environment's); the compatibility suite runs a previous release this way.
        supervise: Restart brokers and agents that die, with backoff.
        authz_port: Fixed port for the authz service (default: a free one).
        broker_port: Fixed device port of the primary broker; its app port is the next one
            (default: free ones). The standby's are `STANDBY_PORT_OFFSET` higher.
        wss_port: The primary's wss port when `broker_port` is fixed.
        credentials: How app sessions log in to the brokers: ``dynsec`` (each session a
            dynamic-security client, the default) or ``token`` (token mode: the authz service
            signs a broker token per session and every broker loads the ``amora_auth`` plugin;
            docs/decisions/0015-stateless-broker-tokens.md).
    """

    state_dir: Path
    players: int = 4
    real_mpd: bool = True
    standby: bool = True
    users: dict[str, tuple[int, ...]] = field(default_factory=lambda: dict(DEFAULT_USERS))
    mpd_tracks: tuple[Track, ...] = DEFAULT_TRACKS
    agent_programs: dict[str, Path] = field(default_factory=dict)
    supervise: bool = True
    authz_port: int | None = None
    broker_port: int | None = None
    wss_port: int = DEFAULT_WSS_PORT
    credentials: str = "dynsec"
    token_plugin: TokenPlugin | None = field(default=None, init=False)
    broker_token_key: Path | None = field(default=None, init=False)
    supervisor: Supervisor | None = field(default=None, init=False)
    pki: DevPKI | None = field(default=None, init=False)
    brokers: list[BrokerProcess] = field(default_factory=list, init=False)
    mpd: MpdProcess | None = field(default=None, init=False)
    authz: ManagedProcess | None = field(default=None, init=False)
    authz_url: str = field(default="", init=False)
    player_list: list[Player] = field(default_factory=list, init=False)
    tokens: dict[str, str] = field(default_factory=dict, init=False)
    _http: httpx.Client | None = field(default=None, init=False, repr=False)
    _crl_requested: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _previous_usr1: Any = field(default=None, init=False, repr=False)
    _reloader: threading.Thread | None = field(default=None, init=False, repr=False)
    _stopping: bool = field(default=False, init=False, repr=False)
    webpage: WebPage | None = field(default=None, init=False)

    # -- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> Self:
        """Start everything."""
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop everything."""
        self.stop()

    def start(self) -> dict[str, Any]:
        """Start the whole stack; return what `stack.json` holds.

        Raises:
            ServiceStartError: A part did not start or did not become ready in time.
        """
        if self.players < 1:
            raise DevtoolsError("a stack needs at least one player")
        if self.credentials not in CREDENTIALS:
            raise DevtoolsError(f"credentials {self.credentials!r}: choose one of {', '.join(CREDENTIALS)}")
        self.state_dir = self.state_dir.resolve()
        private_dir(self.state_dir)
        # A second `stack:up` in the same folder starts afresh (new PKI, new keys): the previous
        # run's database and players would only conflict with them (409 device_exists).
        for part in ("authz", "players", "broker-token"):
            shutil.rmtree(self.state_dir / part, ignore_errors=True)
        self._listen_for_crl_reloads()
        try:
            self.pki = DevPKI.create(self.state_dir / "pki")
            self._start_brokers(self.pki)
            self._start_authz()
            admin = self._token(ADMIN_USER)
            self._make_players(admin)
            for user, indexes in self.users.items():
                self.tokens[user] = self._token(user)
                for index in indexes:
                    if index < len(self.player_list):
                        self._admin(admin, "PUT", f"/v1/admin/users/{user}/devices/{self.player_list[index].device_id}")
            self._start_agents()
            self.wait_online([p.device_id for p in self.player_list])
            if (WEB_DIR / "dist" / "app.js").is_file():  # the live page, once built with npm
                self.webpage = start_webpage(self.authz_url, users=list(self.users))
            if self.supervise:
                self._supervise()
        except BaseException:
            self.stop()
            raise
        info = self.describe()
        write_private(self.state_dir / "stack.json", json.dumps(info, indent=2) + "\n")  # holds tokens
        return info

    def _start_brokers(self, pki: DevPKI) -> None:
        """The primary and (by default) the standby; in token mode each loads the token plugin."""
        if self.credentials == "token":
            self.broker_token_key, public = make_broker_token_key(self.state_dir / "broker-token")
            self.token_plugin = TokenPlugin(public_keys=public)
        primary = start_broker(
            self.state_dir / "brokers", pki, name="primary", ports=self._broker_ports(0), token_plugin=self.token_plugin
        )
        self.brokers.append(primary)
        if self.standby:
            self.brokers.append(
                start_broker(
                    self.state_dir / "brokers",
                    pki,
                    name="standby",
                    bridge_to=primary,
                    ports=self._broker_ports(1),
                    token_plugin=self.token_plugin,
                )
            )

    def _broker_ports(self, index: int) -> tuple[int, int, int] | None:
        """The (device, app, wss) ports of broker ``index`` when fixed, else None."""
        if self.broker_port is None:
            return None
        return fixed_ports(self.broker_port, self.wss_port)[index]

    def _listen_for_crl_reloads(self) -> None:
        """Install the CRL on every broker whenever the authz service asks.

        The service runs ``kill -USR1 <this pid>`` (its ``crl_reload_command``) after it
        rewrote the CRL; the signal handler only sets an event, a thread does the work.
        """
        self._stopping = False
        self._previous_usr1 = signal.signal(signal.SIGUSR1, lambda *_: self._crl_requested.set())

        def reload_loop() -> None:
            while not self._stopping:
                if self._crl_requested.wait(0.2):
                    self._crl_requested.clear()
                    with contextlib.suppress(DevtoolsError):
                        self.reload_crl()

        self._reloader = threading.Thread(target=reload_loop, name="amora-stack.crl-reloader", daemon=True)
        self._reloader.start()

    def stop(self) -> None:
        """Stop everything this stack started, newest first, by PID."""
        self._stopping = True
        if self.supervisor is not None:
            self.supervisor.stop()
            self.supervisor = None
        if self._reloader is not None:
            self._reloader.join(timeout=5)
            self._reloader = None
        if self._previous_usr1 is not None:
            signal.signal(signal.SIGUSR1, self._previous_usr1)
            self._previous_usr1 = None
        self._stop_webpage()
        for player in reversed(self.player_list):
            if player.process is not None:
                player.process.stop()
                player.process = None
        if self.authz is not None:
            self.authz.stop()
            self.authz = None
        if self._http is not None:
            self._http.close()
            self._http = None
        if self.mpd is not None:
            self.mpd.close()
            self.mpd = None
        for broker in reversed(self.brokers):
            broker.close()
        self.brokers.clear()

    def _stop_webpage(self) -> None:
        if self.webpage is not None:
            self.webpage.close()
            self.webpage = None

    # -- parts ----------------------------------------------------------------------------

    def _start_authz(self) -> None:
        assert self.pki is not None  # noqa: S101 - set by start()
        self.authz, self.authz_url = start_authz(
            self.state_dir / "authz",
            self.pki,
            self.brokers,
            users=[*self.users, ADMIN_USER],
            # The stack reloads every broker's CRL when the service signals it.
            crl_reload_command=["kill", "-USR1", str(os.getpid())],
            port=self.authz_port,
            broker_token_key=self.broker_token_key,
        )
        self._http = httpx.Client(base_url=self.authz_url, timeout=10.0)

    def _client(self) -> httpx.Client:
        if self._http is None:
            raise DevtoolsError("the authz service is not running")
        return self._http

    def _token(self, user: str) -> str:
        response = self._client().post("/dev-issuer/token", json={"username": user})
        response.raise_for_status()
        return str(response.json()["access_token"])

    def _admin(self, token: str, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        response = self._client().request(method, path, json=body, headers={"Authorization": f"Bearer {token}"})
        if response.status_code >= 400:
            raise DevtoolsError(f"authz {method} {path} -> {response.status_code}: {response.text}")
        return response.json() if response.content else {}

    def authz_keys(self) -> list[str]:
        """The authz service's grant-signing public keys (base64 of raw bytes)."""
        response = self._client().get("/.well-known/amora-keys")
        response.raise_for_status()
        return [str(k["public_key"]) for k in response.json()["keys"]]

    def _make_players(self, admin: str) -> None:
        if self.real_mpd:
            self.mpd = start_mpd(self.state_dir / "mpd", tracks=self.mpd_tracks)
            with self.mpd.client() as mpd_client:  # a player starts with its library queued
                mpd_client.clear()
                for track in self.mpd.tracks:
                    mpd_client.add(track.file)
                mpd_client.setvol(50)
        for index in range(self.players):
            kind = "mpd" if self.real_mpd and index == 0 else "simulated"
            device_id = f"player-{index + 1}"
            directory = self.state_dir / "players" / device_id
            private_dir(directory)
            signing, encryption = SigningKey.generate(), EncryptionKey.generate()
            write_private(directory / "signing.pem", signing.to_pem())
            write_private(directory / "encryption.pem", encryption.to_pem())
            key_pem, csr_pem = device_key_and_csr(device_id)
            write_private(directory / "device.key", key_pem)
            registered = self._admin(
                admin,
                "POST",
                "/v1/admin/devices",
                {
                    "device_id": device_id,
                    "signing_key": _b64(signing.public_key.raw),
                    "encryption_key": _b64(encryption.public_key.raw),
                    "csr": csr_pem.decode(),
                },
            )
            (directory / "device.pem").write_text(registered["certificate"])
            player = Player(device_id, kind, directory, directory / "agent.toml", signing, encryption)
            self._write_agent_config(player)
            self.player_list.append(player)

    def _write_agent_config(self, player: Player) -> None:
        assert self.pki is not None  # noqa: S101 - set by start()
        player.config_file.write_text(
            agent_config(
                player, ca_file=self.pki.ca_file, brokers=self.brokers, mpd=self.mpd, authz_keys=self.authz_keys()
            )
        )

    def _start_agents(self) -> None:
        for player in self.player_list:
            self.start_agent(player)

    def start_agent(self, player: Player) -> None:
        """Start (or restart) one player's agent process; nothing if it is running."""
        with self.supervisor.lock if self.supervisor is not None else contextlib.nullcontext():
            if player.process is not None and player.process.alive():
                return
            player.process = ManagedProcess(
                f"amora-agent[{player.device_id}]",
                [
                    str(self.agent_programs.get(player.device_id) or console_script("amora-agent")),
                    "run",
                    "--config",
                    str(player.config_file),
                ],
                log_file=player.log_file,
                # Several agents on one machine: each serves its metrics on a free loopback
                # port (its log line `telemetry configured` names it), not all on 9464.
                env={**os.environ, "OTEL_EXPORTER_PROMETHEUS_PORT": "0", **(player.env or {})},
            )

    def _supervise(self) -> None:
        supervisor = self.supervisor = Supervisor(self.state_dir / "supervisor.log")
        for broker in self.brokers:
            supervisor.watch(f"broker[{broker.name}]", alive=_broker_alive(broker), restart=broker.restart)
        for player in self.player_list:
            supervisor.watch(
                f"agent[{player.device_id}]",
                alive=agent_alive(player),
                restart=functools.partial(self.start_agent, player),
                final=agent_config_error(player),
            )
        supervisor.start()

    def player(self, device_id: str) -> Player:
        """The player with ``device_id``.

        Raises:
            DevtoolsError: No such player.
        """
        for player in self.player_list:
            if player.device_id == device_id:
                return player
        raise DevtoolsError(f"no player {device_id!r} in this stack")

    def wait_online(self, device_ids: Sequence[str], *, timeout: float = READY_TIMEOUT) -> None:
        """Wait until each device's retained connection status says online (read as the admin).

        Raises:
            ServiceStartError: Some device did not come online in time.
        """
        pending = set(device_ids)
        primary = self.brokers[0]
        deadline = time.monotonic() + timeout
        with primary.admin_client() as client:
            for device_id in pending:
                client.subscribe(connection_topic(device_id))
            while pending and time.monotonic() < deadline:
                message = client.receive(timeout=max(0.05, deadline - time.monotonic()))
                if message is None:
                    continue
                # The payload is a signed envelope; the agents' own tests verify it. Here only
                # liveness matters, and an offline Last Will must not count: decode the body.
                if says_online(message.payload, message.content_type):
                    pending.discard(message.topic.split("/")[2])
                for player in self.player_list:
                    if player.device_id in pending and player.process is not None and not player.process.alive():
                        raise ServiceStartError(player.process.service, tail(player.log_file))
        if pending:
            logs = "\n".join(f"--- {d}\n{tail(self.player(d).log_file)}" for d in sorted(pending))
            raise ServiceStartError("players", f"not online within {timeout}s: {sorted(pending)}\n{logs}")

    def reload_crl(self) -> None:
        """Install the current CRL on every running broker (the authz service asks for it)."""
        for broker in self.brokers:
            if broker.running:
                broker.reload()

    def describe(self) -> dict[str, Any]:
        """What `stack.json` says: how to reach the brokers and authz, users and their devices."""
        primary = self.brokers[0]
        return {
            **dev_mode_fields(authz_url=self.authz_url, ca_file=primary.ca_file),
            "broker_credentials": self.credentials,
            "broker": {
                "host": primary.host,
                "device_port": primary.device_port,
                "app_port": primary.app_port,
                "ws_port": primary.ws_port,
                "ca_file": str(primary.ca_file),
            },
            "standby": [
                {"host": b.host, "device_port": b.device_port, "app_port": b.app_port, "ws_port": b.ws_port}
                for b in self.brokers[1:]
            ],
            "web_url": None if self.webpage is None else self.webpage.url,
            "users": {
                user: {
                    "token": self.tokens[user],
                    "devices": [self.player_list[i].device_id for i in indexes if i < len(self.player_list)],
                }
                for user, indexes in self.users.items()
            },
            "admin_token": self._token(ADMIN_USER),
            "devices": [p.device_id for p in self.player_list],
            "players": {
                p.device_id: {"kind": p.kind, "pid": p.process.pid if p.process else None, "log": str(p.log_file)}
                for p in self.player_list
            },
            "mpd": None if self.mpd is None else {"host": self.mpd.host, "port": self.mpd.port},
            "pids": {
                "brokers": [b.pid for b in self.brokers],
                "authz": self.authz.pid if self.authz else None,
                "mpd": self.mpd.pid if self.mpd else None,
            },
        }


def _broker_alive(broker: BrokerProcess) -> Callable[[], bool]:
    return lambda: broker.running


def fixed_ports(
    broker_port: int = DEFAULT_BROKER_PORT, wss_port: int = DEFAULT_WSS_PORT
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """The (device, app, wss) ports of the primary and the standby for fixed ports."""
    primary = (broker_port, broker_port + 1, wss_port)
    return primary, (primary[0] + STANDBY_PORT_OFFSET, primary[1] + STANDBY_PORT_OFFSET, wss_port + STANDBY_PORT_OFFSET)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m amora_devtools.stack up --state-dir DIR [--players N] [--no-mpd] [--credentials token] ...``."""
    parser = argparse.ArgumentParser(prog="amora-stack", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the stack, write stack.json, run until Ctrl-C")
    up.add_argument("--state-dir", type=Path, required=True, help="folder for everything the stack makes")
    up.add_argument("--players", type=int, default=4, help="number of players (default 4)")
    up.add_argument("--no-mpd", action="store_true", help="simulated players only")
    up.add_argument("--no-standby", action="store_true", help="no standby broker")
    up.add_argument("--no-restart", action="store_true", help="do not restart brokers and agents that die")
    up.add_argument(
        "--authz-port", type=int, default=DEFAULT_AUTHZ_PORT, help=f"authz HTTP port (default {DEFAULT_AUTHZ_PORT})"
    )
    up.add_argument(
        "--broker-port",
        type=int,
        default=DEFAULT_BROKER_PORT,
        help=(
            f"primary broker's device (mTLS) port; apps on the next (default {DEFAULT_BROKER_PORT}, "
            f"{DEFAULT_BROKER_PORT + 1}); the standby's ports are {STANDBY_PORT_OFFSET} higher"
        ),
    )
    up.add_argument(
        "--wss-port", type=int, default=DEFAULT_WSS_PORT, help=f"primary broker's wss port (default {DEFAULT_WSS_PORT})"
    )
    up.add_argument("--random-ports", action="store_true", help="free ports instead (several stacks side by side)")
    up.add_argument(
        "--credentials",
        choices=CREDENTIALS,
        default="dynsec",
        help="how app sessions log in to the brokers: dynamic-security clients (default) or broker tokens",
    )
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stack = Stack(
        args.state_dir,
        players=args.players,
        real_mpd=not args.no_mpd,
        standby=not args.no_standby,
        supervise=not args.no_restart,
        authz_port=None if args.random_ports else args.authz_port,
        broker_port=None if args.random_ports else args.broker_port,
        wss_port=args.wss_port,
        credentials=args.credentials,
    )
    try:
        info = stack.start()
    except DevtoolsError as exc:
        sys.stderr.write(f"amora-stack: {exc}\n")
        return 1
    out = sys.stdout
    out.write(f"Amora stack up; {args.state_dir / 'stack.json'} written.\n")
    broker = info["broker"]
    out.write(
        f"  broker  mqtts://127.0.0.1:{broker['app_port']} (apps), wss://localhost:{broker['ws_port']}/mqtt"
        f" (apps), device mTLS :{broker['device_port']}\n"
    )
    out.write(f"  authz   {info['authz_url']}  (OpenAPI at /schema; app sessions: {args.credentials})\n")
    for user, entry in info["users"].items():
        out.write(f"  user    {user}: {', '.join(entry['devices']) or '(no devices)'}\n")
    web = info["web_url"] or f"not built (cd {WEB_DIR.parent} && npm ci && npm run build)"
    out.write(f"  web     {web}  (live player page; development issuer login)\n")
    out.write(f"  try:    hatch run amora --dev {args.state_dir / 'stack.json'} --user alice watch\n")
    out.write("Ctrl-C stops everything.\n")
    out.flush()
    try:
        stop.wait()
    finally:
        stack.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
