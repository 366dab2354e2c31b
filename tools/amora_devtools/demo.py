"""The live local demo: the whole stack, and a client watching and commanding its players.

``tools/dev demo`` (or ``hatch run demo``) starts the local stack (brokers, authz service, one
agent on a real MPD and simulated players), opens an SDK client as the development user
``alice``, and shows her players' live state while it plays, pauses, skips, changes the volume
and seeks through signed commands, with each step's end-to-end latency: command -> verified
response, and command -> verified new state from the watch. It ends by itself within about a
minute (``--keep`` keeps it running until Ctrl-C) and stops everything it started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from amora_devtools._errors import DevtoolsError
from amora_devtools.music import Track
from amora_devtools.stack import CREDENTIALS, Stack

if TYPE_CHECKING:
    from collections.abc import Callable

    from amora_protocol import Action, ConnectionStatus, DeviceState

__all__ = ["main"]

DEMO_USER = "alice"
# Longer tracks than the tests' so that seeking and the ticking position are worth watching.
DEMO_TRACKS = (
    Track("amora-demo/01-morning-signal.flac", "Morning Signal", "The Loopbacks", "Amora Demo", 1, 40.0, 220.0),
    Track("amora-demo/02-retained-light.flac", "Retained Light", "Quiet Broker", "Amora Demo", 2, 35.0, 277.2),
    Track("amora-demo/03-last-will.flac", "Last Will", "Ada & the Keepalives", "Amora Demo", 3, 45.0, 329.6),
    Track("amora-demo/04-qos-two.flac", "QoS Two", "Exactly Once", "Amora Demo", 4, 30.0, 392.0),
)  # fmt: skip

_BOLD, _GREEN, _RED, _RESET = "\x1b[1m", "\x1b[32m", "\x1b[31m", "\x1b[0m"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _clock(ms: int | None) -> str:
    if ms is None:
        return "--:--"
    seconds = ms // 1000
    return f"{seconds // 60}:{seconds % 60:02d}"


@dataclass
class _View:
    """What the screen shows: the latest verified state per device and the step log."""

    devices: list[str]
    tty: bool
    states: dict[str, DeviceState] = field(default_factory=dict)
    online: dict[str, bool] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    def note(self, line: str) -> None:
        self.log.append(line)
        del self.log[:-14]
        if not self.tty:
            sys.stdout.write(_ANSI.sub("", line) + "\n")
            sys.stdout.flush()

    def render(self, position: Callable[[str], int | None]) -> str:
        heading = f"{'player':<10} {'':3} {'status':<7} {'song':<40} {'position':>13} {'vol':>4}  {'state version':<14}"
        rows = [
            (
                f"{_BOLD}Amora live demo{_RESET} — user {DEMO_USER}, "
                f"{len(self.devices)} of the stack's players, every state verified end to end"
            ),
            "",
            f"{_BOLD}{heading}{_RESET}",
        ]
        for device in self.devices:
            state = self.states.get(device)
            dot = f"{_GREEN}●{_RESET}" if self.online.get(device) else f"{_RED}○{_RESET}"
            if state is None:
                rows.append(f"{device:<10} {dot:3}   (waiting for its state)")
                continue
            song = state.song
            title = f"{song.title or song.file} — {song.artist or '?'}" if song else "(nothing queued)"
            duration = song.duration_ms if song else None
            where = f"{_clock(position(device))} / {_clock(duration)}"
            volume = "-" if state.volume is None else str(state.volume)
            status = state.status.value
            rows.append(f"{device:<10} {dot:12} {status:<7} {title[:40]:<40} {where:>13} {volume:>4}  {state.version}")
        rows += ["", f"{_BOLD}steps{_RESET} (command -> verified response | -> verified new state)", *self.log]
        return "\x1b[H\x1b[2J" + "\n".join(rows) + "\n"


async def _consume(events: Any, view: _View) -> None:  # noqa: ANN401 - the SDK's Watch
    from amora_protocol import DeviceState  # noqa: PLC0415

    async for event in events:
        async with view.changed:
            if isinstance(event, DeviceState):
                view.states[event.device_id] = event
            else:
                status: ConnectionStatus = event
                view.online[status.device_id] = status.online
            view.changed.notify_all()


async def _render(view: _View, client: Any) -> None:  # noqa: ANN401 - the SDK's AmoraClient
    while True:
        sys.stdout.write(view.render(client.position_ms))
        sys.stdout.flush()
        await asyncio.sleep(0.25)


async def _step(  # noqa: PLR0913 - one call per scripted step reads best
    client: Any,  # noqa: ANN401 - the SDK's AmoraClient
    view: _View,
    *,
    device: str,
    label: str,
    action: Action,
    done: Callable[[DeviceState], bool] | None,
) -> tuple[float, float | None]:
    """Send one command; return (ms to the response, ms to the verified new state)."""
    from amora_sync import AmoraSyncError  # noqa: PLC0415

    before = view.states.get(device)
    start = time.perf_counter()
    try:
        response = await client.command(device, action, timeout=10)
    except AmoraSyncError as exc:
        view.note(f"  {device:<9} {label:<18} {_RED}{type(exc).__name__}: {exc}{_RESET}")
        return (float("nan"), None)
    answered = (time.perf_counter() - start) * 1000

    def arrived() -> bool:
        state = view.states.get(device)
        return (
            state is not None
            and (before is None or state.version > before.version)
            and done is not None
            and done(state)
        )

    seen: float | None = None
    if done is not None:
        async with view.changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(view.changed.wait_for(arrived), timeout=5)
                seen = (time.perf_counter() - start) * 1000
    if done is None:
        state_part = " (no state change: a harmless round trip)"
    else:
        state_part = f"{seen:6.1f} ms" if seen is not None else f"{_RED}no new state within 5 s{_RESET}"
    view.note(f"  {device:<9} {label:<18} {response.status.value:<9} {answered:6.1f} ms | {state_part}")
    return answered, seen


async def _script(client: Any, view: _View, devices: list[str], *, keep: bool) -> list[float]:  # noqa: ANN401
    from amora_protocol import (  # noqa: PLC0415
        ChangeVolume,
        Next,
        Pause,
        Ping,
        Play,
        PlaybackStatus,
        Previous,
        Seek,
        SetVolume,
    )

    playing: Callable[[DeviceState], bool] = lambda s: s.status is PlaybackStatus.PLAY  # noqa: E731
    real, sim = devices[0], devices[1] if len(devices) > 1 else devices[0]
    steps: list[tuple[str, str, Action, Callable[[DeviceState], bool] | None]] = [
        (real, "play", Play(), playing),
        (real, "pause", Pause(), lambda s: s.status is PlaybackStatus.PAUSE),
        (real, "play", Play(), playing),
        (real, "next track", Next(), lambda s: s.song is not None and (s.song.position or 0) >= 1),
        (real, "previous track", Previous(), lambda s: s.song is not None and (s.song.position or 0) == 0),
        (real, "ping", Ping(), None),
        (real, "volume 30", SetVolume(volume=30), lambda s: s.volume == 30),
        (real, "volume +15", ChangeVolume(delta=15), lambda s: s.volume == 45),
        (sim, "play", Play(), playing),
        (sim, "next track", Next(), lambda s: s.song is not None and (s.song.position or 0) >= 1),
        (sim, "volume 70", SetVolume(volume=70), lambda s: s.volume == 70),
        (real, "seek 0:20", Seek(position_ms=20_000), lambda s: (s.elapsed_ms or 0) >= 19_000),
    ]
    latencies: list[float] = []
    for device, label, action, done in steps:
        await asyncio.sleep(2.0 if view.tty else 0.5)  # paced for a person to follow
        answered, seen = await _step(client, view, device=device, label=label, action=action, done=done)
        latencies.append(answered)
        if seen is not None:
            latencies.append(seen)
    valid = sorted(x for x in latencies if not math.isnan(x))  # failed steps measured nothing
    if valid:
        view.note(
            f"{_BOLD}end to end{_RESET}: median {valid[len(valid) // 2]:.1f} ms, "
            f"worst {valid[-1]:.1f} ms over {len(valid)} measurements"
        )
    await asyncio.sleep(4.0 if view.tty else 0.1)
    if keep:
        view.note("--keep: watching until Ctrl-C")
        await asyncio.Event().wait()
    return valid


async def _run_client(info: dict[str, Any], *, keep: bool) -> int:
    from amora_sync import AmoraClient, AmoraSyncError  # noqa: PLC0415

    authz = info["authz_url"]

    async def token() -> str:
        async with httpx.AsyncClient(timeout=10) as http:
            response = await http.post(f"{authz}/dev-issuer/token", json={"username": DEMO_USER})
            response.raise_for_status()
            return str(response.json()["access_token"])

    devices = list(info["users"][DEMO_USER]["devices"])
    view = _View(devices, tty=sys.stdout.isatty())
    try:
        async with (
            AmoraClient(authz, token, ca_file=info["broker"]["ca_file"]) as client,
            client.watch(*devices) as events,
        ):
            background = [asyncio.create_task(_consume(events, view), name="amora-demo.watch")]
            if view.tty:
                background.append(asyncio.create_task(_render(view, client), name="amora-demo.render"))
            try:
                result = await _script(client, view, devices, keep=keep)
            finally:
                for task in background:
                    task.cancel()
                await asyncio.gather(*background, return_exceptions=True)
            if view.tty:
                sys.stdout.write(view.render(client.position_ms))
            return 0 if result else 1
    except AmoraSyncError as exc:
        sys.stderr.write(f"amora-demo: {exc}\n")
        return 1


def main(argv: list[str] | None = None) -> int:
    """Run the demo."""
    parser = argparse.ArgumentParser(prog="amora-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep running after the script (until Ctrl-C)")
    parser.add_argument("--players", type=int, default=4, help="players in the stack (default 4)")
    parser.add_argument("--state-dir", type=Path, help="keep the stack's files here (default: a temporary folder)")
    parser.add_argument(
        "--credentials",
        choices=CREDENTIALS,
        default="dynsec",
        help="how app sessions log in to the brokers: dynamic-security clients (default) or broker tokens",
    )
    args = parser.parse_args(argv)
    state_dir = args.state_dir or Path(tempfile.mkdtemp(prefix="amora-demo-"))
    out = sys.stdout
    out.write(
        f"Starting the Amora stack in {state_dir} (brokers, authz service, MPD, {args.players} players; "
        f"app sessions: {args.credentials})...\n"
    )
    out.flush()
    stack = Stack(state_dir, players=max(2, args.players), mpd_tracks=DEMO_TRACKS, credentials=args.credentials)
    started = time.perf_counter()
    try:
        info = stack.start()
        out.write(f"Stack ready in {time.perf_counter() - started:.1f} s.\n")
        out.flush()
        code = asyncio.run(_run_client(info, keep=args.keep))
    except KeyboardInterrupt:
        code = 0
    except DevtoolsError as exc:
        sys.stderr.write(f"amora-demo: the stack did not start: {exc}\n")
        code = 1
    finally:
        stack.stop()
        if args.state_dir is None:
            shutil.rmtree(state_dir, ignore_errors=True)
    out.write("Demo finished; everything it started is stopped.\n")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
