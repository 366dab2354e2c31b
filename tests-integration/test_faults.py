"""The fault suite (issue 18): brokers killed and hung, agents crash-looping, damaged state files,
shifted clocks and a stalled player, each under a stream of non-idempotent commands.

Commands are driven by `amora_devtools.faultkit.ProtocolApp`, an app that follows the
protocol README's sender rules (resend with the same id until the deadline, leave a hung
broker, fail back with jitter); every command ends in one counted outcome. Each scenario
asserts the invariants: no command executed twice, none left without an answer or a reported
timeout, the final volume equal to the number of increments that succeeded (no effect lost or
doubled), and the app's final state equal to what the device published last. Timings go to
the benchmark (``amora_bench.failover``), not here.

The stack restarts what dies (like systemd): a killed broker or agent comes back by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import pytest

from amora_devtools.faultkit import ProtocolApp, agent_connections
from amora_devtools.stack import Player, Stack
from amora_protocol import ChangeVolume, ConnectionStatus, DeviceState, SetVolume, parse_envelope, state_topic
from amora_sync import CommandTimeoutError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

pytestmark = [pytest.mark.services, pytest.mark.slow]

SIM = "player-2"  # a simulated player: broker faults
MPD = "player-1"  # on a real MPD (state outside the agent): crashes, stalls, clocks, damaged state
WAIT_S = 30.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(tmp_path_factory.mktemp("faults") / "stack", players=2, users={"alice": (0, 1)}) as running:
        yield running


async def _until(check: Callable[[], Any], what: str, timeout_s: float = WAIT_S) -> Any:
    """Poll ``check`` (a state held by another process) until truthy, bounded."""
    deadline = time.monotonic() + timeout_s
    while not (result := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)
    return result


async def _healthy(stack: Stack, app: ProtocolApp) -> None:
    """Every agent and the app on the primary broker (after a fault's failback)."""
    primary = stack.brokers[0]
    for player in stack.player_list:
        await _until(_on_broker(player, primary.device_port), f"{player.device_id} on the primary")
    await _until(lambda: app.port == primary.app_port, "the app on the primary")


def _on_broker(player: Player, port: int) -> Callable[[], bool]:
    def check() -> bool:
        found = agent_connections(player.log_file)
        return bool(found) and found[-1][1] == port

    return check


def _more_connections(player: Player, than: int) -> Callable[[], bool]:
    return lambda: len(agent_connections(player.log_file)) > than


async def _reset_volume(app: ProtocolApp, device: str) -> None:
    assert await app.command(device, SetVolume(volume=0)) == "succeeded"
    await _until(lambda: (s := app.states.get(device)) is not None and s.volume == 0, "volume 0")


async def _stream(app: ProtocolApp, device: str, count: int, *, rate: float, faults: dict[int, Any]) -> list[str]:
    """Send ``count`` ChangeVolume(+1) at ``rate``/s; run ``faults[i]()`` before command i."""
    tasks = []
    for i in range(count):
        if i in faults:
            await faults[i]()
        tasks.append(asyncio.create_task(app.command(device, ChangeVolume(delta=1), timeout_s=25)))
        await asyncio.sleep(1 / rate)
    return list(await asyncio.gather(*tasks))


def _retained_state(stack: Stack, device: str) -> DeviceState:
    with stack.brokers[0].admin_client() as admin:
        admin.subscribe(state_topic(device))
        message = admin.receive(timeout=10)
    assert message is not None
    env = parse_envelope(message.payload, content_type=message.content_type)
    return msgspec.msgpack.decode(env.body, type=DeviceState)


async def _assert_invariants(stack: Stack, app: ProtocolApp, device: str, *, base: int = 0) -> None:
    ledger = app.ledger
    summary = ledger.summary()
    assert ledger.executed_twice == 0, summary
    assert ledger.unanswered == 0, summary
    assert ledger.timed_out == 0, summary  # every command's caller learned its outcome
    increments = sum(1 for o in ledger.outcomes.values() if o == "succeeded") - 1  # minus the reset
    # Outcomes that do not say whether it took effect: the device restarted while running it
    # (duplicate), or MPD did not answer in time (failed).
    unknown = sum(1 for o in ledger.outcomes.values() if o.startswith("duplicate") or o == "failed")
    final = await _until(
        lambda: (s := app.states.get(device)) is not None and base + increments <= (s.volume or 0) and s,
        f"the final volume ({summary})",
    )
    # Each increment that succeeded took effect once; one whose outcome the device lost may have.
    assert base + increments <= final.volume <= base + increments + unknown, summary
    # The app ends on what the device published last.
    retained = await asyncio.to_thread(_retained_state, stack, device)
    assert await _until(lambda: app.states[device].version >= retained.version, "the app to catch up")
    assert app.states[device].volume == retained.volume


async def test_primary_killed_under_a_command_stream_fails_over_and_back(stack: Stack) -> None:
    async with ProtocolApp(stack, "alice", [SIM]) as app:
        await _healthy(stack, app)
        await _reset_volume(app, SIM)

        async def kill() -> None:
            stack.brokers[0].kill()  # the stack restarts it after 0.5 s

        outcomes = await _stream(app, SIM, 60, rate=6, faults={10: kill})
        assert set(outcomes) == {"succeeded"}, app.ledger.summary()
        assert any(e.why == "lost" for e in app.links)
        await _healthy(stack, app)  # agents and app moved back to the restarted primary
        await _assert_invariants(stack, app, SIM)


async def test_primary_hung_under_a_command_stream_is_left_and_stale_wills_corrected(stack: Stack) -> None:
    primary, standby = stack.brokers
    async with ProtocolApp(stack, "alice", [SIM]) as app:
        await _healthy(stack, app)
        await _reset_volume(app, SIM)
        started = time.monotonic()

        async def hang() -> None:
            primary.signal(signal.SIGSTOP)

        async def resume() -> None:
            primary.signal(signal.SIGCONT)

        outcomes = await _stream(app, SIM, 70, rate=5, faults={8: hang, 50: resume})
        assert set(outcomes) == {"succeeded"}, app.ledger.summary()
        # The app and the agent left the hung broker for the standby (no timed assertion).
        assert any(e.why == "hung" for e in app.links)
        assert any(e.port == standby.app_port and e.at > started for e in app.links)
        player = stack.player(SIM)
        assert any(port == standby.device_port for _, port in agent_connections(player.log_file))
        await _healthy(stack, app)
        await _assert_invariants(stack, app, SIM)

        # Whatever stale Will the resumed primary let out, the newest status is online.
        def newest() -> ConnectionStatus:
            return max((s for _, s in app.statuses if s.device_id == SIM), key=lambda s: s.version or 0)

        assert (await _until(lambda: newest().online, "online status")) is True


async def test_sdk_client_rides_a_hung_and_a_dead_primary_without_doubling(stack: Stack, sdk_client) -> None:
    """The SDK's own failover, failback and resend-with-the-same-id under a command stream."""
    primary = stack.brokers[0]
    outcomes: list[str] = []

    async def one(client: Any) -> None:
        try:
            response = await client.command(SIM, ChangeVolume(delta=1), timeout=20)
        except CommandTimeoutError:
            outcomes.append("timed_out")  # the caller is told; it may or may not have run
        else:
            outcomes.append(response.status.value)

    async with ProtocolApp(stack, "alice", [SIM]) as watcher, sdk_client(stack, "alice") as client:
        await _healthy(stack, watcher)
        await _reset_volume(watcher, SIM)
        tasks = []
        for i in range(60):
            if i == 8:
                primary.signal(signal.SIGSTOP)
            elif i == 40:
                primary.signal(signal.SIGCONT)
            elif i == 48:
                primary.kill()  # restarted by the stack
            tasks.append(asyncio.create_task(one(client)))
            await asyncio.sleep(0.25)
        await asyncio.gather(*tasks)
        assert not [o for o in outcomes if o not in {"succeeded", "timed_out"}], outcomes
        succeeded, unknown = outcomes.count("succeeded"), outcomes.count("timed_out")
        await _healthy(stack, watcher)
        final = await _until(
            lambda: (s := watcher.states.get(SIM)) is not None and (s.volume or 0) >= succeeded and s, "final volume"
        )
        # Each success took effect once; a timed-out one at most once.
        assert succeeded <= final.volume <= succeeded + unknown, outcomes


async def test_agent_crash_loop_runs_each_command_at_most_once(stack: Stack) -> None:
    # On MPD: the volume lives outside the agent, so it survives the crashes.
    player = stack.player(MPD)
    async with ProtocolApp(stack, "alice", [MPD]) as app:
        await _healthy(stack, app)
        await _reset_volume(app, MPD)

        async def crash() -> None:
            await _until(lambda: player.process is not None and player.process.alive(), "the agent restarted")
            assert player.process is not None
            player.process.signal(signal.SIGKILL)  # the stack restarts it with backoff

        outcomes = await _stream(app, MPD, 45, rate=4, faults={5: crash, 18: crash, 31: crash})
        assert not [o for o in outcomes if o not in {"succeeded", "duplicate"}], app.ledger.summary()
        assert stack.supervisor is not None
        assert stack.supervisor.restarts[f"agent[{MPD}]"] >= 3
        await _healthy(stack, app)
        await _assert_invariants(stack, app, MPD)
        assert _mpd_volume(stack) == app.states[MPD].volume


async def test_a_stalled_player_answers_every_command(stack: Stack) -> None:
    assert stack.mpd is not None
    async with ProtocolApp(stack, "alice", [MPD]) as app:
        await _healthy(stack, app)
        await _reset_volume(app, MPD)
        os.kill(stack.mpd.pid, signal.SIGSTOP)  # MPD hangs: every call to it stalls
        try:
            tasks = [asyncio.create_task(app.command(MPD, ChangeVolume(delta=1), timeout_s=40)) for _ in range(90)]
            await _until(lambda: app.ledger.failed > 0, "the first answers")
        finally:
            os.kill(stack.mpd.pid, signal.SIGCONT)
        outcomes = await asyncio.gather(*tasks)
        # Each one answered (MPD's 5 s call bound turns the stall into `failed` answers, busy
        # ones are resent after retry_after_ms); none dropped, none timed out.
        assert not [o for o in outcomes if o not in {"succeeded", "failed"}], app.ledger.summary()
        await _assert_invariants(stack, app, MPD)


async def test_a_slow_consumer_holds_nobody_back_and_ends_on_the_latest_state(
    stack: Stack, new_session: Any, mqtt_probe: Any
) -> None:
    assert stack.pki is not None
    session = new_session(stack, "alice")["broker"]
    probe_ctx = mqtt_probe(stack.brokers[0].app_port, stack.pki.ca_file, session=session)
    async with ProtocolApp(stack, "alice", [SIM]) as app:
        await _healthy(stack, app)
        with probe_ctx as slow:
            assert slow.subscribe(state_topic(SIM))[0] < 0x80
            slow.client.socket().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
            # Its message handler blocks, so its network thread stops reading the socket: the
            # broker's queue for it grows while everyone else goes on.
            reading = threading.Event()
            handler = slow.client.on_message

            def stalled(client: Any, userdata: Any, message: Any) -> None:
                reading.wait(timeout=120)
                handler(client, userdata, message)

            slow.client.on_message = stalled
            try:
                outcomes = await _stream(app, SIM, 80, rate=20, faults={})
            finally:
                reading.set()
            # Nobody waited for the slow one: every command ran once.
            assert set(outcomes) == {"succeeded"}, app.ledger.summary()
            assert app.ledger.executed_twice == 0
            latest = await _until(lambda: app.states.get(SIM), "the latest state")

            def newest_seen() -> int:
                versions = [
                    msgspec.msgpack.decode(
                        parse_envelope(m.payload, content_type=getattr(m.properties, "ContentType", None)).body,
                        type=DeviceState,
                    ).version
                    for m in list(slow.messages)
                ]
                return max(versions, default=0)

            # Once it reads again it catches up, ending on the state the device published last.
            await _until(lambda: newest_seen() >= app.states[SIM].version, "the slow consumer to catch up")
            assert newest_seen() == app.states[SIM].version >= latest.version


def _mpd_volume(stack: Stack) -> int:
    assert stack.mpd is not None
    with stack.mpd.client() as client:
        return int(client.status()["volume"])


def _faketime(shift: str) -> dict[str, str]:
    libraries = sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))
    if not libraries:
        pytest.fail("libfaketime is missing: tools/dev installs the Debian package faketime")
    return {"LD_PRELOAD": str(libraries[0]), "FAKETIME": shift, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


async def _restart_agent(stack: Stack, app: ProtocolApp, device: str, env: dict[str, str] | None) -> None:
    player = stack.player(device)
    before = len(agent_connections(player.log_file))
    player.env = env
    assert player.process is not None
    player.process.stop()  # the supervisor starts it again, with the new environment
    stack.start_agent(player)
    await _until(_more_connections(player, before), f"{device} reconnected")
    await _healthy(stack, app)


async def test_clock_offsets_within_the_allowance_work_beyond_it_say_clock_skew(stack: Stack) -> None:
    async with ProtocolApp(stack, "alice", [MPD]) as app:
        await _healthy(stack, app)
        try:
            for shift in ("+20s", "-20s"):
                await _restart_agent(stack, app, MPD, _faketime(shift))
                # 10 s commands on a device 20 s ahead of (or behind) the app.
                for volume in (31, 32, 33):
                    assert await app.command(MPD, SetVolume(volume=volume), timeout_s=10) == "succeeded", shift
            for shift, sign in (("+60s", 1), ("-60s", -1)):
                await _restart_agent(stack, app, MPD, _faketime(shift))
                before = app.ledger.rejected["clock-skew"]
                assert await app.command(MPD, SetVolume(volume=40), timeout_s=10) == "rejected:clock-skew"
                assert app.ledger.rejected["clock-skew"] == before + 1
                answer = next(
                    r for rs in app.responses.values() for r in rs if r.clock_offset_ms and r.clock_offset_ms * sign > 0
                )
                assert answer.clock_offset_ms is not None
                assert 50_000 < abs(answer.clock_offset_ms) < 70_000
            log = stack.player(MPD).log_file.read_text()
            assert "clock offset estimated" in log  # the agent logs its own estimate
        finally:
            await _restart_agent(stack, app, MPD, None)
        assert app.ledger.executed_twice == 0


def _mount_small_tmpfs(path: Path) -> bool:
    """Mount a 256 KiB tmpfs on ``path`` (root only); False where that is not allowed.

    A real full disk (ENOSPC), which only a file system of its own gives without filling the
    machine's.
    """
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    result = subprocess.run(  # noqa: S603 - fixed argv
        ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(path)],  # noqa: S607
        capture_output=True,
        check=False,
    )
    return result.returncode == 0


async def test_a_full_state_disk_refuses_commands_and_loses_nothing(stack: Stack, tmp_path: Path) -> None:
    player = stack.player(MPD)
    assert stack.supervisor is not None
    state = player.directory / "state"
    async with ProtocolApp(stack, "alice", [MPD]) as app:
        await _healthy(stack, app)
        await _reset_volume(app, MPD)
        connections = len(agent_connections(player.log_file))
        stack.supervisor.hold(f"agent[{MPD}]")
        saved = tmp_path / "state"
        mounted = False
        try:
            assert player.process is not None
            player.process.stop()
            shutil.copytree(state, saved)
            mounted = await asyncio.to_thread(_mount_small_tmpfs, state)
            if not mounted:
                pytest.skip("mounting a small tmpfs needs root; test_replaylog.py covers a full disk (EFBIG)")
            for item in saved.iterdir():
                shutil.copy2(item, state / item.name)
            stack.start_agent(player)
            await _until(_more_connections(player, connections), "the agent back")
            await _healthy(stack, app)
            volume = _mpd_volume(stack)
            filler = state / "filler"
            with contextlib.suppress(OSError), filler.open("wb") as handle:
                handle.write(bytes(1024 * 1024))  # until the disk is full
            # The log's last page may still have room: commands run until an append needs a
            # new page; that one is answered busy (not recorded, so not run), and so is every
            # resend of it until its deadline.
            busy, ran = app.ledger.busy_answers, 0
            async with asyncio.timeout(120):
                while app.ledger.busy_answers == busy:
                    outcome = await app.command(MPD, ChangeVolume(delta=1), timeout_s=4)
                    ran += outcome == "succeeded"
            assert app.ledger.timed_out == 1, app.ledger.summary()  # the refused one, its caller told
            assert _mpd_volume(stack) == volume + ran  # the refused one had no effect
            assert "cannot record a command" in player.log_file.read_text()
            filler.unlink()
            assert await app.command(MPD, ChangeVolume(delta=1), timeout_s=10) == "succeeded"
            await _until(lambda: _mpd_volume(stack) == volume + ran + 1, "the command's one effect")
        finally:
            if mounted:
                assert player.process is not None
                player.process.stop()
                after = tmp_path / "after"  # what the agent recorded on the small disk: kept
                shutil.copytree(state, after)
                await asyncio.to_thread(subprocess.run, ["umount", str(state)], check=False)
                for item in after.iterdir():
                    shutil.copy2(item, state / item.name)
                stack.start_agent(player)
            stack.supervisor.release(f"agent[{MPD}]")
        await _healthy(stack, app)
        assert app.ledger.executed_twice == 0


async def test_damaged_state_files_never_let_a_replayed_command_run_twice(stack: Stack) -> None:
    player = stack.player(MPD)
    assert stack.supervisor is not None
    log = player.directory / "state" / "replay-log"
    async with ProtocolApp(stack, "alice", [MPD]) as app:
        await _healthy(stack, app)
        await _reset_volume(app, MPD)
        captured: dict[str, tuple[str, bytes]] = {}
        for damage in ("torn", "garbage"):  # one captured command for each
            assert await app.command(MPD, ChangeVolume(delta=1), timeout_s=10) == "succeeded"
            command_id = next(reversed(app.payloads))
            captured[damage] = (command_id, app.payloads[command_id])
        for damage, (command_id, payload) in captured.items():
            volume = _mpd_volume(stack)
            connections = len(agent_connections(player.log_file))
            stack.supervisor.hold(f"agent[{MPD}]")
            try:
                assert player.process is not None
                player.process.kill()
                data = log.read_bytes()
                # Issue 18's case: the last record cut; then a file of garbage (not UTF-8 either).
                log.write_bytes(data[:-5] if damage == "torn" else os.urandom(len(data)))
                stack.start_agent(player)
                await _until(_more_connections(player, connections), "the agent back")
                await _healthy(stack, app)
            finally:
                stack.supervisor.release(f"agent[{MPD}]")
            assert "replay log damaged" in player.log_file.read_text()
            seen = len(app.responses.get(command_id, []))
            app.republish(MPD, payload)  # the captured bytes, replayed
            answers = app.responses.setdefault(command_id, [])
            await _until(lambda: len(answers) > seen, "the replay's answer")  # noqa: B023 - awaited here
            answer = answers[-1]
            assert answer.duplicate or answer.status.value in {"duplicate", "rejected"}, answer
            assert _mpd_volume(stack) == volume, damage  # MPD itself: no second effect
        assert len(list(log.parent.glob("replay-log.damaged-*"))) == 2  # kept, never deleted
        # A command issued now may be one the lost records knew: refused until the horizon.
        assert await app.command(MPD, ChangeVolume(delta=1), timeout_s=10) == "rejected:expired"
        assert app.ledger.executed_twice == 0
