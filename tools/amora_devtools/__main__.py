"""Command line: start a local broker (and standby) and an MPD for manual work; dev PKI.

    python -m amora_devtools up [--dir DIR] [--standby] [--no-mpd] [--device ID ...]
    python -m amora_devtools pki init DIR
    python -m amora_devtools pki issue DIR COMMON_NAME
    python -m amora_devtools pki revoke DIR SERIAL

DEVELOPMENT ONLY: the PKI this makes is for local work and tests. Production keys and
certificates never come from it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amora_devtools._errors import DevtoolsError
from amora_devtools._files import write_private
from amora_devtools.broker import BrokerProcess, create_device_client, start_broker
from amora_devtools.mpd import start_mpd
from amora_devtools.pki import DevPKI
from amora_protocol import state_topic

if TYPE_CHECKING:
    from collections.abc import Sequence

_PKI_WARNING = (
    "DEVELOPMENT PKI: its CA key is stored unencrypted. Production keys and certificates NEVER come from this tool."
)


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m amora_devtools",
        description="Amora local development stack and development PKI. " + _PKI_WARNING,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser(
        "up",
        help="start mosquitto (Amora config) and MPD on loopback; Ctrl-C stops them",
        description="Start mosquitto with the Amora configuration and a real MPD on free "
        "loopback ports, print how to reach them, and run until Ctrl-C. " + _PKI_WARNING,
    )
    up.add_argument("--dir", type=Path, help="work directory (default: a new temporary one)")
    up.add_argument("--standby", action="store_true", help="also start a standby broker bridged to it")
    up.add_argument("--no-mpd", action="store_true", help="do not start MPD")
    up.add_argument(
        "--device",
        action="append",
        default=None,
        metavar="ID",
        help="device id to register (dynsec client + role + certificate); repeatable (default: player-1)",
    )
    pki = sub.add_parser("pki", help="development PKI (never for production keys)", description=_PKI_WARNING)
    pki_sub = pki.add_subparsers(dest="pki_command", required=True)
    init = pki_sub.add_parser("init", help="create a CA, localhost server certificate and CRL")
    init.add_argument("dir", type=Path)
    issue = pki_sub.add_parser("issue", help="issue a client certificate (CN = device id)")
    issue.add_argument("dir", type=Path)
    issue.add_argument("common_name")
    revoke = pki_sub.add_parser("revoke", help="revoke a certificate by serial and rewrite the CRL")
    revoke.add_argument("dir", type=Path)
    revoke.add_argument("serial", help="decimal, or hex with 0x")
    return parser


def _broker_info(broker: BrokerProcess) -> dict[str, Any]:
    return {
        "host": broker.host,
        "device_port": broker.device_port,
        "app_port": broker.app_port,
        "ws_url": f"wss://localhost:{broker.ws_port}/mqtt",
        "ws_port": broker.ws_port,
        "ca_file": str(broker.ca_file),
        "admin_username": broker.admin_username,
        "admin_password": broker.admin_password,
        "pid": broker.pid,
        "log_file": str(broker.log_file),
        "dynsec_file": str(broker.dynsec_file),
    }


def _up(args: argparse.Namespace) -> int:
    workdir: Path = args.dir or Path(tempfile.mkdtemp(prefix="amora-dev-"))
    workdir.mkdir(parents=True, exist_ok=True)
    pki_dir = workdir / "pki"
    pki = DevPKI.load(pki_dir) if (pki_dir / "ca.key").exists() else DevPKI.create(pki_dir)
    devices: list[str] = args.device or ["player-1"]
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with contextlib.ExitStack() as stack:
        primary = stack.enter_context(start_broker(workdir, pki, name="primary"))
        info: dict[str, Any] = {"workdir": str(workdir), "primary": _broker_info(primary), "devices": {}}
        if args.standby:
            standby = stack.enter_context(start_broker(workdir, pki, name="standby", bridge_to=primary))
            info["standby"] = _broker_info(standby)
        for device_id in devices:
            cert = pki.issue_client_cert(device_id)
            create_device_client(primary, device_id)
            if args.standby:
                create_device_client(standby, device_id)
            info["devices"][device_id] = {"cert_file": str(cert.cert_file), "key_file": str(cert.key_file)}
        if not args.no_mpd:
            player = stack.enter_context(start_mpd(workdir / "mpd"))
            info["mpd"] = {"host": player.host, "port": player.port, "pid": player.pid,
                           "music_dir": str(player.music_dir)}  # fmt: skip
        write_private(workdir / "stack.json", json.dumps(info, indent=2))  # broker admin credentials
        _print_summary(info)
        stop.wait()
        _out("stopping ...")
    _out("stopped.")
    return 0


def _print_summary(info: dict[str, Any]) -> None:
    p = info["primary"]
    _out(f"Amora local stack in {info['workdir']} (all of it also in stack.json there)")
    _out(_PKI_WARNING)
    _out()
    for name in ("primary", "standby"):
        if name in info:
            b = info[name]
            _out(f"mosquitto {name} (pid {b['pid']}, log {b['log_file']}):")
            _out(f"  device listener (mTLS): {b['host']}:{b['device_port']}")
            _out(f"  app listener (TLS, user/password): {b['host']}:{b['app_port']}")
            _out(f"  websockets (TLS): {b['ws_url']}")
            _out(f"  dynsec admin: {b['admin_username']} / {b['admin_password']}")
    _out(f"  CA certificate: {p['ca_file']}")
    for device_id, files in info["devices"].items():
        _out(f"device {device_id}: cert {files['cert_file']} key {files['key_file']}")
        _out(
            f"  mosquitto_pub -h localhost -p {p['device_port']} --cafile {p['ca_file']} "
            f"--cert {files['cert_file']} --key {files['key_file']} -V mqttv5 "
            f"-t {state_topic(device_id)} -m hello -r"
        )
    _out(
        f"watch everything: mosquitto_sub -h localhost -p {p['app_port']} --cafile {p['ca_file']} "
        f"-u {p['admin_username']} -P {p['admin_password']} -V mqttv5 -t 'amora/#' -v"
    )
    if "mpd" in info:
        m = info["mpd"]
        _out(f"mpd (pid {m['pid']}): {m['host']}:{m['port']}  e.g. mpc -h {m['host']} -p {m['port']} status")
    _out()
    _out("Ctrl-C stops everything.")


def _pki(args: argparse.Namespace) -> int:
    _out(_PKI_WARNING)
    if args.pki_command == "init":
        pki = DevPKI.create(args.dir)
        _out(f"CA {pki.ca_file}\nserver {pki.server_cert_file} {pki.server_key_file}\nCRL {pki.crl_file}")
    elif args.pki_command == "issue":
        cert = DevPKI.load(args.dir).issue_client_cert(args.common_name)
        _out(f"cert {cert.cert_file}\nkey {cert.key_file}\nserial {cert.serial}")
    else:
        serial = int(args.serial, 0)
        DevPKI.load(args.dir).revoke(serial)
        _out(f"revoked {serial}; CRL rewritten: reload brokers (SIGHUP) to apply it")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = _parser().parse_args(argv)
    try:
        return _up(args) if args.command == "up" else _pki(args)
    except DevtoolsError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
