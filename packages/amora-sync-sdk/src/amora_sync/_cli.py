"""The ``amora`` command: watch players, send commands, list devices, measure round trips.

Credentials, first found wins:

1. ``--dev DIR/stack.json --user NAME``: development mode, against the repository's local
   stack (`amora_sync._devstack`: a development token for NAME from the stack's
   development issuer); ``--stack`` is its deprecated name;
2. ``--authz-url`` / ``--token`` / ``--ca-file``;
3. the environment: ``AMORA_DEV_STACK`` (with ``--user`` or ``AMORA_DEV_USER``) for
   development mode, else ``AMORA_AUTHZ_URL``, ``AMORA_TOKEN``, ``AMORA_CA_FILE``;
4. a TOML config file (``--config``, ``$AMORA_CONFIG`` or ``~/.config/amora/config.toml``)
   with ``authz_url``, ``token`` and ``ca_file``.

Exit codes: 0 success; 1 the command was rejected, failed, expired or timed out (reason on
stderr); 2 usage errors; 3 no session or no connection.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sys
import time
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import msgspec

from amora_protocol import (
    ChangeVolume,
    Command,
    ConnectionStatus,
    DeviceState,
    Next,
    Pause,
    Ping,
    Play,
    PlayQueueItem,
    Previous,
    Seek,
    SetVolume,
    Stop,
    Toggle,
    now_ms,
)
from amora_sync._client import AmoraClient
from amora_sync._connection import ConnectionState
from amora_sync._devstack import DevStackError, dev_token, read_dev_stack
from amora_sync._errors import (
    AmoraSyncError,
    CommandError,
    ConnectError,
    InvalidCommandError,
    InvalidDeviceIdError,
    SessionError,
    UnknownDeviceError,
)
from amora_sync._flow import DEFAULT_CONNECT_TIMEOUT
from amora_sync._outbox import validate_command

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from amora_protocol import Action

EXIT_OK, EXIT_COMMAND, EXIT_USAGE, EXIT_CONNECT = 0, 1, 2, 3


class UsageError(Exception):
    """Bad arguments or missing credentials (exit 2)."""


@dataclass(frozen=True, kw_only=True)
class Credentials:
    """Where the authz service is and how to get the user's token."""

    authz_url: str
    token: Callable[[], str | Awaitable[str]]
    ca_file: str | None


# ---------------------------------------------------------------- credentials


def _config_file(explicit: Path | None) -> dict[str, Any]:
    path = explicit or Path(os.environ.get("AMORA_CONFIG") or Path.home() / ".config" / "amora" / "config.toml")
    if not path.is_file():
        if explicit is not None:
            raise UsageError(f"config file {path} not found")
        return {}
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"cannot read config file {path}: {exc}") from exc


def _dev_credentials(stack_file: Path, user: str | None, *, ca_file: str | None) -> Credentials:
    if not user:
        raise UsageError("development mode needs a user: --user NAME or AMORA_DEV_USER (one of stack.json's users)")
    try:
        stack = read_dev_stack(stack_file)
    except DevStackError as exc:
        raise UsageError(str(exc)) from exc

    async def token() -> str:
        return await dev_token(stack, user)

    return Credentials(authz_url=stack.authz_url, token=token, ca_file=ca_file or stack.ca_file)


def resolve_credentials(args: argparse.Namespace) -> Credentials:
    """Find the credentials (see the module docstring for the order).

    Raises:
        UsageError: Nothing usable was found, or development mode was mixed with another source.
    """
    user = args.user or os.environ.get("AMORA_DEV_USER")
    if args.stack is not None:
        _err("--stack is deprecated: use --dev DIR/stack.json (the same, named for what it is)")
    dev_flag = args.dev or args.stack
    if dev_flag is not None:
        if args.authz_url or args.token:
            raise UsageError("--dev (development mode) cannot be combined with --authz-url or --token")
        return _dev_credentials(dev_flag, user, ca_file=args.ca_file)
    if args.authz_url is None and args.token is None and os.environ.get("AMORA_DEV_STACK"):
        if os.environ.get("AMORA_AUTHZ_URL") or os.environ.get("AMORA_TOKEN"):
            raise UsageError(
                "AMORA_DEV_STACK (development mode) and AMORA_AUTHZ_URL/AMORA_TOKEN are both set: unset one"
            )
        return _dev_credentials(Path(os.environ["AMORA_DEV_STACK"]), user, ca_file=args.ca_file)
    if args.user:
        raise UsageError("--user names a development user: use it with --dev DIR/stack.json")
    config = _config_file(args.config)
    url = args.authz_url or os.environ.get("AMORA_AUTHZ_URL") or config.get("authz_url")
    token = args.token or os.environ.get("AMORA_TOKEN") or config.get("token")
    ca_file = args.ca_file or os.environ.get("AMORA_CA_FILE") or config.get("ca_file")
    if not url or not token:
        raise UsageError(
            "no credentials: set AMORA_AUTHZ_URL and AMORA_TOKEN (and AMORA_CA_FILE), use a config file, "
            "or, against the repository's local stack, --dev DIR/stack.json --user NAME"
        )
    fixed = str(token)
    return Credentials(authz_url=str(url), token=lambda: fixed, ca_file=ca_file)


# ---------------------------------------------------------------- actions


def _ms(text: str) -> int:
    """Parse ``90``, ``90s``, ``1:30`` or ``1500ms`` into milliseconds."""
    text = text.strip()
    try:
        if text.endswith("ms"):
            return int(text[:-2])
        if ":" in text:
            minutes, seconds = text.split(":", 1)
            return int((int(minutes) * 60 + float(seconds)) * 1000)
        return int(float(text.removesuffix("s")) * 1000)
    except ValueError as exc:
        raise UsageError(f"not a position: {text!r} (try 90, 1:30 or 1500ms)") from exc


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError as exc:
        raise UsageError(f"{what} must be an integer, not {text!r}") from exc


_SIMPLE: dict[str, Callable[[], Action]] = {
    "play": Play,
    "pause": Pause,
    "toggle": Toggle,
    "stop": Stop,
    "next": Next,
    "previous": Previous,
    "prev": Previous,
    "ping": Ping,
}
ACTION_HELP = (
    "play | pause | toggle | stop | next | previous | ping | seek POSITION | volume N | volume +N/-N | play-item INDEX"
)


def parse_action(name: str, args: Sequence[str]) -> Action:
    """Build an action from the command line.

    Raises:
        UsageError: Unknown action or bad arguments.
    """
    action = _parse_action(name, args)
    try:
        validate_command(Command(id="cli", issued_at_ms=0, expires_at_ms=0, action=action))
    except InvalidCommandError as exc:
        raise UsageError(f"{name} {' '.join(args)}: {exc}") from exc
    return action


def _parse_action(name: str, args: Sequence[str]) -> Action:
    key = name.lower().replace("_", "-")
    if key in _SIMPLE:
        if args:
            raise UsageError(f"{name} takes no arguments")
        return _SIMPLE[key]()
    if key == "seek" and len(args) == 1:
        return Seek(position_ms=_ms(args[0]))
    if key in {"volume", "vol", "set-volume"} and len(args) == 1:
        text = args[0]
        if text.startswith(("+", "-")):
            return ChangeVolume(delta=_int(text, "the volume change"))
        return SetVolume(volume=_int(text, "the volume"))
    if key == "change-volume" and len(args) == 1:
        return ChangeVolume(delta=_int(args[0], "the volume change"))
    if key in {"play-item", "play-queue-item"} and len(args) == 1:
        return PlayQueueItem(position=_int(args[0], "the queue index"))
    raise UsageError(f"unknown action or wrong arguments: {name} {' '.join(args)} ({ACTION_HELP})")


# ---------------------------------------------------------------- output


def _fmt_time(ms: int | None) -> str:
    if ms is None:
        return "-"
    seconds = ms // 1000
    return f"{seconds // 60}:{seconds % 60:02d}"


def state_row(device_id: str, state: DeviceState | None, status: ConnectionStatus | None, *, at_ms: int) -> list[str]:
    """One table row for a device."""
    online = "unknown" if status is None else ("online" if status.online else "offline")
    if state is None:
        return [device_id, online, "-", "-", "-", "-", "-"]
    song = state.song
    title = "-"
    if song is not None:
        title = " - ".join(x for x in (song.title or song.file, song.artist) if x)
    duration = None if song is None else song.duration_ms
    position = f"{_fmt_time(state.position_at(at_ms))}/{_fmt_time(duration)}"
    volume = "-" if state.volume is None else str(state.volume)
    return [device_id, online, str(state.status), title, position, volume, str(state.version)]


HEADERS = ["DEVICE", "CONNECTION", "STATUS", "SONG", "POSITION", "VOL", "VERSION"]


_SONG = HEADERS.index("SONG")
_GAP = 2


def _fit(cell: str, width: int) -> str:
    if len(cell) <= width:
        return cell.ljust(width)
    return cell[: max(width - 1, 0)] + "…" if width > 0 else ""


def render_table(rows: list[list[str]], *, width: int) -> list[str]:
    """Align rows under the headers within `width` columns.

    Only the SONG column shrinks to fit (ending in an ellipsis): the columns after it, VERSION
    above all, are what scripts and people compare, so they are never cut.
    """
    table = [HEADERS, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(HEADERS))]
    overflow = sum(widths) + _GAP * (len(widths) - 1) - width
    if overflow > 0:
        widths[_SONG] = max(len(HEADERS[_SONG]), widths[_SONG] - overflow)
    return [(" " * _GAP).join(_fit(c, w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table]


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _err(text: str) -> None:
    sys.stderr.write(f"amora: {text}\n")
    sys.stderr.flush()


def _response_json(response: object) -> str:
    return msgspec.json.encode(response).decode()


# ---------------------------------------------------------------- commands


def _client(creds: Credentials, args: argparse.Namespace) -> AmoraClient:
    return AmoraClient(
        creds.authz_url,
        creds.token,
        ca_file=creds.ca_file,
        client_name="amora-cli",
        connect_timeout=args.connect_timeout,
        transport=args.transport,
    )


async def cmd_devices(client: AmoraClient, args: argparse.Namespace) -> int:
    """List the session's devices with their last known state."""
    ids = [d.device_id for d in client.devices]
    # Retained states and statuses arrive right after subscribing; wait briefly for them.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(args.settle), client.watch() as events:
            async for _ in events:
                if all(client.state(i) and client.connection_status(i) for i in ids):
                    break
    if args.json:
        for device_id in ids:
            state = client.state(device_id)
            status = client.connection_status(device_id)
            _out(
                json.dumps(
                    {
                        "device_id": device_id,
                        "online": None if status is None else status.online,
                        "state": None if state is None else msgspec.to_builtins(state),
                    }
                )
            )
        return EXIT_OK
    now = now_ms()
    rows = [state_row(i, client.state(i), client.connection_status(i), at_ms=now) for i in ids]
    for line in render_table(rows, width=shutil.get_terminal_size().columns):
        _out(line)
    if not ids:
        _out("(no devices in this session)")
    return EXIT_OK


async def cmd_watch(client: AmoraClient, args: argparse.Namespace) -> int:
    """Watch devices: a live table on a terminal, one JSON line per event otherwise."""
    live = sys.stdout.isatty() and not args.json
    watch = client.watch(*args.devices)
    ids = list(args.devices) or [d.device_id for d in client.devices]
    count = 0
    async with watch:
        if not live:
            async for event in watch:
                kind = "state" if isinstance(event, DeviceState) else "connection"
                _out(json.dumps({"kind": kind, **msgspec.to_builtins(event)}))
                count += 1
                if args.count and count >= args.count:
                    break
            return EXIT_OK
        return await _live_table(client, watch, ids, args)


async def _live_table(client: AmoraClient, watch: Any, ids: list[str], args: argparse.Namespace) -> int:  # noqa: ANN401
    drawn = 0
    changed = asyncio.Event()
    changed.set()

    async def pump() -> None:
        async for _ in watch:
            changed.set()

    async with asyncio.TaskGroup() as tg:
        pump_task = tg.create_task(pump(), name="amora-cli.watch")
        try:
            while not pump_task.done():
                # Redraw on every change, and at least every tick so the position moves.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(args.tick):
                        await changed.wait()
                changed.clear()
                now = now_ms()
                rows = [state_row(i, client.state(i), client.connection_status(i), at_ms=now) for i in ids]
                conn = client.connection
                banner = f"amora watch - {conn.state.value}"
                if conn.endpoint is not None:
                    banner += f" ({conn.endpoint})"
                lines = [banner, *render_table(rows, width=shutil.get_terminal_size().columns)]
                if drawn:
                    sys.stdout.write(f"\x1b[{drawn}F")  # back to the table's first line
                sys.stdout.write("".join(f"\x1b[2K{line}\n" for line in lines))
                sys.stdout.flush()
                drawn = len(lines)
                if conn.state is ConnectionState.CLOSED:
                    break
        finally:
            pump_task.cancel()
    return EXIT_OK


async def cmd_send(client: AmoraClient, args: argparse.Namespace) -> int:
    """Send one action; print the response; exit 0 only on success."""
    action = parse_action(args.action, args.args)
    try:
        response = await client.command(
            args.device,
            action,
            timeout=args.timeout,
            qos=args.qos,
            if_version=args.if_version,
            seal=args.seal,
        )
    except CommandError as exc:
        _err(str(exc))
        last = getattr(exc, "response", None) or getattr(exc, "last_response", None)
        if last is not None:
            _out(_response_json(last))
        return EXIT_COMMAND
    _out(_response_json(response))
    return EXIT_OK


async def cmd_ping(client: AmoraClient, args: argparse.Namespace) -> int:
    """Send harmless pings one after another; print round-trip percentiles."""
    samples: list[float] = []
    failures = 0
    for i in range(args.count):
        start = time.perf_counter()
        try:
            await client.command(args.device, Ping(), timeout=args.timeout)
        except CommandError as exc:
            failures += 1
            _err(f"ping {i + 1}: {exc}")
            continue
        rtt = (time.perf_counter() - start) * 1000
        samples.append(rtt)
        if not args.quiet:
            _out(f"ping {i + 1}: {rtt:.2f} ms")
        if args.interval and i + 1 < args.count:
            await asyncio.sleep(args.interval)  # pacing between pings, by request
    if samples:
        ordered = sorted(samples)

        def pct(p: float) -> float:
            return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]

        _out(
            f"{len(samples)} replies, {failures} lost: min {ordered[0]:.2f} / p50 {pct(50):.2f} / "
            f"p90 {pct(90):.2f} / p99 {pct(99):.2f} / max {ordered[-1]:.2f} ms"
        )
    return EXIT_OK if samples and not failures else EXIT_COMMAND


# ---------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    """The argument parser."""
    parser = argparse.ArgumentParser(
        prog="amora",
        description="Watch and control Amora players.",
        epilog="Credentials: --dev STACK_JSON --user NAME (development only), --authz-url/--token/--ca-file, "
        "AMORA_DEV_STACK/AMORA_DEV_USER, AMORA_AUTHZ_URL/AMORA_TOKEN/AMORA_CA_FILE, "
        "or ~/.config/amora/config.toml (authz_url, token, ca_file).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {metadata.version('amora-sync-sdk')}")
    parser.add_argument("--authz-url", help="authz service URL")
    parser.add_argument("--token", help="the user's JWT")
    parser.add_argument("--ca-file", help="CA bundle for the broker and the authz service")
    parser.add_argument("--config", type=Path, help="TOML config file")
    parser.add_argument(
        "--dev",
        type=Path,
        metavar="STACK_JSON",
        help="development mode: the repository's local stack (hatch run stack:up writes DIR/stack.json); "
        "also AMORA_DEV_STACK",
    )
    parser.add_argument("--user", help="development user (with --dev; also AMORA_DEV_USER)")
    parser.add_argument("--stack", type=Path, help=argparse.SUPPRESS)  # deprecated name of --dev (0.1.0)
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=DEFAULT_CONNECT_TIMEOUT,
        help=f"seconds (default {DEFAULT_CONNECT_TIMEOUT:g}, the SDK's)",
    )
    parser.add_argument(
        "--transport",
        choices=("auto", "mqtts", "wss"),
        default="auto",
        help="broker endpoints to use: mqtts, wss (MQTT over websockets, e.g. port 443), or auto (default)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    devices = sub.add_parser("devices", help="list your devices and their state")
    devices.add_argument("--json", action="store_true", help="one JSON object per line")
    devices.add_argument("--settle", type=float, default=2.0, help="seconds to wait for states")

    watch = sub.add_parser("watch", help="live table of device state (JSON lines when piped)")
    watch.add_argument("devices", nargs="*", metavar="DEVICE", help="default: all your devices")
    watch.add_argument("--json", action="store_true", help="JSON lines even on a terminal")
    watch.add_argument("--count", type=int, default=0, help="stop after N events (JSON mode)")
    watch.add_argument("--tick", type=float, default=0.25, help="redraw interval, seconds")

    send = sub.add_parser("send", help="send a command", description=f"ACTION: {ACTION_HELP}")
    send.add_argument("device")
    send.add_argument("action")
    send.add_argument("args", nargs="*")
    send.add_argument("--timeout", type=float, default=10.0, help="deadline in seconds")
    send.add_argument("--qos", type=int, choices=(0, 1, 2), help="default: 2 for critical actions")
    send.add_argument("--if-version", type=int, help="apply only at this state version")
    send.add_argument("--seal", action="store_true", help="encrypt to the device's key")

    ping = sub.add_parser("ping", help="round-trip latency of a harmless command")
    ping.add_argument("device")
    ping.add_argument("-n", "--count", type=int, default=10)
    ping.add_argument("--interval", type=float, default=0.0, help="pause between pings, seconds")
    ping.add_argument("--timeout", type=float, default=5.0)
    ping.add_argument("-q", "--quiet", action="store_true", help="summary only")
    return parser


_COMMANDS: dict[str, Callable[[AmoraClient, argparse.Namespace], Awaitable[int]]] = {
    "devices": cmd_devices,
    "watch": cmd_watch,
    "send": cmd_send,
    "ping": cmd_ping,
}


async def run(args: argparse.Namespace) -> int:
    """Run the chosen command; return the exit code."""
    creds = resolve_credentials(args)
    if args.command == "send":
        parse_action(args.action, args.args)  # usage errors before connecting
    try:
        async with _client(creds, args) as client:
            return await _COMMANDS[args.command](client, args)
    except (InvalidDeviceIdError, UnknownDeviceError) as exc:
        _err(str(exc))
        return EXIT_USAGE
    except (SessionError, ConnectError) as exc:
        _err(str(exc))
        return EXIT_CONNECT
    except AmoraSyncError as exc:
        _err(str(exc))
        return EXIT_COMMAND


def _fail(code: int, message: str) -> NoReturn:
    _err(message)
    raise SystemExit(code)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point of ``amora``."""
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(run(args))
    except UsageError as exc:
        _fail(EXIT_USAGE, str(exc))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
