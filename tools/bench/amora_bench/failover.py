"""Broker failover and failback on the whole stack: agents and an app, under a command stream.

The local stack (primary and standby brokers bridged, authz, two simulated players, the
stack restarting what dies) with one `amora_devtools.faultkit.ProtocolApp` sending
``ChangeVolume(+1)`` to both players at a steady rate, and one SDK client
(`amora_sync.AmoraClient`, failback every 2 s ± 50 %) sending its own stream to player-1.
Each round:

* **dead**: SIGKILL the primary (the stack restarts it 0.5 s later);
* **hung**: SIGSTOP the primary for ``hang_s``, then SIGCONT.

Measured per round, from the fault: until each agent is connected again (``agent failover``,
from the agents' logs) and until each app is (``app failover``, the SDK's from its
``connection_changes``); from the primary being back:
until each agent and the app are on it again (``failback``, which includes the jittered
failback wait: 5 s mean for agents, 2 s for the app); commands lost (timed out or never
answered), executed twice, resent; and how long the app showed a live player offline
(a stale Last Will), raw and when statuses are ordered by version.

Targets (issue 18): a hung broker left within 5 s, failover within 10 s, a live device never
shown offline for more than 1 s, no command lost or doubled. Read from the figures, never
asserted. The SDK's own figures are ``amora_bench.sdk_failover``.

Run: ``python -m amora_bench.failover [--rounds 1] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from amora_devtools.faultkit import ProtocolApp, agent_connections
from amora_devtools.stack import Stack
from amora_protocol import ChangeVolume, SetVolume
from amora_sync import AmoraClient, CommandTimeoutError, ConnectionState, ReconnectPolicy

_DEVICES = ("player-1", "player-2")
_RATE = 5.0  # commands per second, spread over both players


def _first_connection_after(log_file: Path, wall: float, port: int | None = None) -> float | None:
    for at, connected_port in agent_connections(log_file):
        if at >= wall and (port is None or connected_port == port):
            return at
    return None


def _offline_spans(app: ProtocolApp, device: str, since: float, *, by_version: bool) -> list[float]:
    """How long the app showed ``device`` offline each time after ``since`` (monotonic)."""
    spans: list[float] = []
    offline_at: float | None = None
    newest = -1
    for at, status in app.statuses:
        if status.device_id != device or at < since:
            continue
        if by_version:
            if (status.version or 0) < newest:
                continue  # older than what is held: a client ordering statuses ignores it
            newest = status.version or 0
        if not status.online and offline_at is None:
            offline_at = at
        elif status.online and offline_at is not None:
            spans.append(at - offline_at)
            offline_at = None
    return spans


async def _stream(app: ProtocolApp, stop: asyncio.Event, outcomes: list[str]) -> None:
    tasks: list[asyncio.Task[str]] = []
    i = 0
    while not stop.is_set():
        device = _DEVICES[i % len(_DEVICES)]
        tasks.append(asyncio.create_task(app.command(device, ChangeVolume(delta=1), timeout_s=20)))
        i += 1
        await asyncio.sleep(1 / _RATE)
    outcomes += await asyncio.gather(*tasks)


class _Sdk:
    """The SDK client's link changes and command outcomes."""

    def __init__(self, client: AmoraClient) -> None:
        self.client = client
        self.links: list[tuple[float, int | None]] = []  # (monotonic, app port when connected)
        self.outcomes: list[str] = []

    async def watch(self) -> None:
        async for info in self.client.connection_changes():
            connected = info.state is ConnectionState.CONNECTED and info.endpoint is not None
            self.links.append((time.monotonic(), info.endpoint.port if connected and info.endpoint else None))

    async def one(self) -> None:
        try:
            response = await self.client.command("player-1", ChangeVolume(delta=1), timeout=20)
        except CommandTimeoutError:
            self.outcomes.append("lost")  # sent, no answer before the deadline
        except Exception as exc:  # noqa: BLE001 - every other outcome is an answer or a refusal to send
            self.outcomes.append(type(exc).__name__)
        else:
            self.outcomes.append(response.status.value)

    async def stream(self, stop: asyncio.Event) -> None:
        tasks = []
        while not stop.is_set():
            tasks.append(asyncio.create_task(self.one()))
            await asyncio.sleep(0.5)
        await asyncio.gather(*tasks)


async def _wait(check: Any, timeout_s: float = 60.0) -> None:  # noqa: ANN401 - any truthy probe
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("the stack did not settle")
        await asyncio.sleep(0.05)


async def _settled(stack: Stack, app: ProtocolApp) -> None:
    primary = stack.brokers[0]

    def all_on_primary() -> bool:
        on = [agent_connections(p.log_file) for p in stack.player_list]
        return all(c and c[-1][1] == primary.device_port for c in on) and app.port == primary.app_port

    await _wait(all_on_primary)


async def _round(stack: Stack, app: ProtocolApp, sdk: _Sdk, kind: str, hang_s: float) -> dict[str, Any]:
    primary, standby = stack.brokers
    await _settled(stack, app)
    for device in _DEVICES:
        await app.command(device, SetVolume(volume=0))
    before = app.ledger.summary()
    stop = asyncio.Event()
    outcomes: list[str] = []
    streaming = asyncio.create_task(_stream(app, stop, outcomes))
    sdk.outcomes.clear()
    sdk_streaming = asyncio.create_task(sdk.stream(stop))
    await asyncio.sleep(2.0)  # a steady stream first
    fault_wall, fault_mono = time.time(), time.monotonic()
    links_before, sdk_links_before = len(app.links), len(sdk.links)
    if kind == "dead":
        primary.kill()  # the stack's supervisor restarts it
        await _wait(lambda: primary.running)
    else:
        primary.signal(signal.SIGSTOP)
        await asyncio.sleep(hang_s)
        primary.signal(signal.SIGCONT)
    back_wall, back_mono = time.time(), time.monotonic()
    await _settled(stack, app)
    await _wait(lambda: sdk.links and sdk.links[-1][1] == primary.app_port)
    await asyncio.sleep(2.0)  # the stream runs on after failback
    stop.set()
    await streaming
    await sdk_streaming
    after = app.ledger.summary()

    agents = {}
    for player in stack.player_list:
        failover = _first_connection_after(player.log_file, fault_wall)
        failback = _first_connection_after(player.log_file, back_wall, primary.device_port)
        agents[player.device_id] = {
            "failover_s": None if failover is None else round(failover - fault_wall, 3),
            "failback_s": None if failback is None else round(failback - back_wall, 3),
            "went_to_standby": any(
                port == standby.device_port and at >= fault_wall for at, port in agent_connections(player.log_file)
            ),
        }
    new_links = app.links[links_before:]
    app_failover = next((e.at for e in new_links if e.port is not None), None)
    app_failback = next((e.at for e in new_links if e.port == primary.app_port and e.at >= back_mono), None)
    sdk_links = sdk.links[sdk_links_before:]
    sdk_failover = next((at for at, port in sdk_links if port is not None and at >= fault_mono), None)
    sdk_failback = next((at for at, port in sdk_links if port == primary.app_port and at >= back_mono), None)
    raw = [s for d in _DEVICES for s in _offline_spans(app, d, fault_mono, by_version=False)]
    ordered = [s for d in _DEVICES for s in _offline_spans(app, d, fault_mono, by_version=True)]
    return {
        "kind": kind,
        "agents": agents,
        "app_failover_s": None if app_failover is None else round(app_failover - fault_mono, 3),
        "app_failback_s": None if app_failback is None else round(app_failback - back_mono, 3),
        "app_left_because": next((e.why for e in new_links if e.port is None), None),
        "commands": len(outcomes),
        "succeeded": after["succeeded"] - before["succeeded"],
        "lost": (after["timed_out"] - before["timed_out"]) + app.ledger.unanswered,
        "executed_twice": after["executed_twice"] - before["executed_twice"],
        "resends": after["resends"] - before["resends"],
        "sdk_failover_s": None if sdk_failover is None else round(sdk_failover - fault_mono, 3),
        "sdk_failback_s": None if sdk_failback is None else round(sdk_failback - back_mono, 3),
        "sdk_commands": len(sdk.outcomes),
        "sdk_succeeded": sdk.outcomes.count("succeeded"),
        "sdk_lost": sdk.outcomes.count("lost"),
        "sdk_other": sorted(o for o in sdk.outcomes if o not in {"succeeded", "lost"}),
        "offline_shown_max_s_raw": round(max(raw), 3) if raw else 0.0,
        "offline_shown_max_s_by_version": round(max(ordered), 3) if ordered else 0.0,
    }


async def _measure(rounds: int, hang_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="amora-failover-") as tmp:
        stack = Stack(Path(tmp) / "stack", players=2, real_mpd=False, users={"alice": (0, 1)})
        with stack:
            if stack.pki is None:
                raise RuntimeError("the stack has no PKI")
            policy = ReconnectPolicy(failback_interval=2.0)
            async with (
                ProtocolApp(stack, "alice", _DEVICES) as app,
                AmoraClient(stack.authz_url, _token(stack), ca_file=stack.pki.ca_file, reconnect=policy) as client,
            ):
                sdk = _Sdk(client)
                watching = asyncio.create_task(sdk.watch())
                results = []
                for _ in range(rounds):
                    for kind in ("dead", "hung"):
                        results.append(await _round(stack, app, sdk, kind, hang_s))
                        sys.stderr.write(f"  {kind}: {json.dumps(results[-1])}\n")
                watching.cancel()
    return {"rounds": results, "hang_s": hang_s}


def _token(stack: Stack) -> Any:  # noqa: ANN401 - the SDK's token provider
    async def token() -> str:
        async with httpx.AsyncClient(base_url=stack.authz_url, timeout=10) as http:
            response = await http.post("/dev-issuer/token", json={"username": "alice"})
            response.raise_for_status()
            return str(response.json()["access_token"])

    return token


def _stat(values: list[float | None]) -> str:
    known = [v for v in values if v is not None]
    if not known:
        return "n/a"
    if len(known) == 1:
        return f"{known[0]:.2f}"
    return f"{statistics.median(known):.2f} (max {max(known):.2f})"


def _summary(figures: dict[str, Any]) -> str:
    intro = (
        "Whole stack, primary broker killed (`dead`, restarted by the stack 0.5 s later) or "
        f"stopped for {figures['hang_s']:.0f} s (`hung`), under a stream of `ChangeVolume(+1)` at "
        f"{_RATE:.0f}/s from an app following the protocol's sender rules (`faultkit.ProtocolApp`). "
        "Times in seconds: failover from the fault, failback from the primary being back "
        "(agents try it every 5 s ± 50 %, the app every 2 s ± 50 %)."
    )
    lines = [
        intro,
        "",
        (
            "| fault | agent failover | app failover (protocol / SDK) | agent failback "
            "| app failback (protocol / SDK) | commands (protocol + SDK) | lost | executed twice "
            "| offline shown (raw / by version) |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for kind in ("dead", "hung"):
        rounds = [r for r in figures["rounds"] if r["kind"] == kind]
        if not rounds:
            continue
        agent_failover = [a["failover_s"] for r in rounds for a in r["agents"].values()]
        agent_failback = [a["failback_s"] for r in rounds for a in r["agents"].values()]
        lines.append(
            f"| {kind} | {_stat(agent_failover)} "
            f"| {_stat([r['app_failover_s'] for r in rounds])} / {_stat([r['sdk_failover_s'] for r in rounds])} "
            f"| {_stat(agent_failback)} "
            f"| {_stat([r['app_failback_s'] for r in rounds])} / {_stat([r['sdk_failback_s'] for r in rounds])} "
            f"| {sum(r['commands'] for r in rounds)} + {sum(r['sdk_commands'] for r in rounds)} "
            f"| {sum(r['lost'] for r in rounds)} + {sum(r['sdk_lost'] for r in rounds)} "
            f"| {sum(r['executed_twice'] for r in rounds)} "
            f"| {max(r['offline_shown_max_s_raw'] for r in rounds):.2f} / "
            f"{max(r['offline_shown_max_s_by_version'] for r in rounds):.2f} |"
        )
    other = sorted(o for r in figures["rounds"] for o in r["sdk_other"])
    if other:
        lines += ["", f"SDK outcomes other than succeeded / lost: {', '.join(other)}."]
    return "\n".join(lines)


def run(*, rounds: int = 1, hang_s: float = 8.0) -> dict[str, Any]:
    """Measure ``rounds`` dead and hung rounds; return the figures and a Markdown summary."""
    figures = asyncio.run(_measure(rounds, hang_s))
    figures["summary"] = _summary(figures)
    return figures


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="amora-bench-failover", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=1, help="dead and hung rounds each (default 1)")
    parser.add_argument("--hang", type=float, default=8.0, help="seconds the primary stays stopped (default 8)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    figures = run(rounds=args.rounds, hang_s=args.hang)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    sys.stdout.write(figures["summary"] + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
