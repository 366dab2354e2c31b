"""The replay log: a crash or damage at any byte never lets an executed command run again."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path  # noqa: TC003 - pytest resolves fixture annotations

import pytest

from amora_agent import StateDirError
from amora_agent._replaylog import HEADER_SIZE, LOG_FILE, Executed, Outcome, ReplayLog, encode_record
from amora_protocol import Command, CommandGuard, CommandStatus, Header, MessageType, Pause, Replayed

NOW = 1_800_000_000_000
SKEW = 30_000
# A command kept alive long enough that only the replay record can stop it running again.
TTL = 60_000


def _open(state_dir: Path, *, now: int = NOW, capacity: int = 100) -> tuple[ReplayLog, CommandGuard]:
    guard = CommandGuard(max_skew_ms=SKEW, max_ids=capacity)
    return ReplayLog(state_dir, guard=guard, capacity=capacity, durable=True, max_skew_ms=SKEW, now_ms=now), guard


def _execute(log: ReplayLog, guard: CommandGuard, cid: str, seq: int, *, at: int = NOW) -> None:
    header = Header(v=1, type=MessageType.COMMAND, sender="app", kid="k", epoch=7, seq=seq, ts_ms=at)
    guard.check(header, Command(id=cid, issued_at_ms=at, expires_at_ms=at + TTL, action=Pause()), now_ms=at)
    log.record_executed(Executed(cid, at + TTL, "app", 7, seq, at))
    log.record_outcome(Outcome(cid, CommandStatus.SUCCEEDED, at, state_version=seq))
    log.compact(now_ms=at)  # as the agent does after each command


def _would_run_again(log: ReplayLog, guard: CommandGuard, cid: str, seq: int, *, now: int) -> bool:
    """Offer a captured command again to a restarted agent's log and guard."""
    if log.refuses(NOW):  # the command was issued at NOW
        return False
    header = Header(v=1, type=MessageType.COMMAND, sender="app", kid="k", epoch=7, seq=seq, ts_ms=NOW)
    command = Command(id=cid, issued_at_ms=NOW, expires_at_ms=NOW + TTL, action=Pause())
    try:
        guard.check(header, command, now_ms=now)
    except Replayed:
        return False
    return True


def _restart_and_replay(state: Path, *, now: int) -> tuple[str | None, list[str]]:
    """(damage seen at start, ids that would run a second time)."""
    log, guard = _open(state, now=now)
    try:
        twice = [f"cmd-{i}" for i in range(3) if _would_run_again(log, guard, f"cmd-{i}", i + 1, now=now)]
        return log.damage, twice
    finally:
        log.close()


def _history(state_dir: Path) -> bytes:
    log, guard = _open(state_dir)
    for i in range(3):
        _execute(log, guard, f"cmd-{i}", seq=i + 1)
    log.close()
    return (state_dir / LOG_FILE).read_bytes()


def test_ids_outcomes_and_sequence_windows_survive_a_restart(tmp_path: Path) -> None:
    _history(tmp_path)
    assert _restart_and_replay(tmp_path, now=NOW + 5_000) == (None, [])
    log, guard = _open(tmp_path)
    assert log.damage is None
    assert log.horizon is None
    assert all(f"cmd-{i}" in log for i in range(3))
    original = log.outcome("cmd-1")
    assert original is not None
    assert (original.status, original.state_version) == (CommandStatus.SUCCEEDED, 2)
    # The sequence window came back too: a new id on a used (sender, epoch, seq) is refused.
    header = Header(v=1, type=MessageType.COMMAND, sender="app", kid="k", epoch=7, seq=2, ts_ms=NOW)
    with pytest.raises(Replayed, match="sequence"):
        guard.check(header, Command(id="fresh", issued_at_ms=NOW, expires_at_ms=NOW + TTL, action=Pause()), now_ms=NOW)


def test_truncation_at_every_byte_never_lets_a_command_run_twice(tmp_path: Path) -> None:
    full = _history(tmp_path / "source")
    restart = NOW + 5_000
    for cut in range(len(full)):  # every offset, the last records included
        state = tmp_path / f"cut-{cut}"
        state.mkdir()
        (state / LOG_FILE).write_bytes(full[:cut])
        (state / "state-version").write_text("1000\n")
        damage, twice = _restart_and_replay(state, now=restart)
        assert twice == [], f"cut at byte {cut}: {twice} would run twice"
        assert damage is not None, f"cut at byte {cut} went unnoticed"


def test_flipped_bytes_are_detected_and_never_let_a_command_run_twice(tmp_path: Path) -> None:
    full = _history(tmp_path / "source")
    restart = NOW + 5_000
    for offset in range(len(full)):
        state = tmp_path / f"flip-{offset}"
        state.mkdir()
        damaged = bytearray(full)
        damaged[offset] ^= 0x20
        (state / LOG_FILE).write_bytes(bytes(damaged))
        damage, twice = _restart_and_replay(state, now=restart)
        assert twice == [], f"flip at byte {offset}: {twice} would run twice"
        assert damage is not None, f"flip at byte {offset} went unnoticed"


def test_damage_keeps_the_file_refuses_older_commands_and_then_ends(tmp_path: Path) -> None:
    full = _history(tmp_path)
    (tmp_path / LOG_FILE).write_bytes(full[:-3])
    log, _ = _open(tmp_path, now=NOW + 1_000)
    assert log.damage is not None
    assert "damaged" in log.damage
    kept = list(tmp_path.glob(f"{LOG_FILE}.damaged-*"))
    assert [p.read_bytes() for p in kept] == [full[:-3]]  # moved aside, never deleted
    assert log.refuses(NOW)
    assert log.horizon is not None
    assert not log.refuses(log.horizon.issued_before_ms)  # commands issued later run
    log.close()
    # The horizon is itself durable: the next start still refuses, without new damage.
    again, _ = _open(tmp_path, now=NOW + 2_000)
    assert again.damage is None
    assert again.refuses(NOW)
    again.close()


def test_non_utf8_and_garbage_files_are_damage_not_a_crash(tmp_path: Path) -> None:
    bad = Executed("x", 1, "app", 1, 1, NOW)
    frame = bytearray(encode_record(bad))
    payload = frame[8:]
    payload[payload.index(b"x")] = 0xFF  # an id that is not UTF-8, with a correct checksum
    frame = bytearray(struct.pack(">HHI", len(payload), len(payload) ^ 0xFFFF, zlib.crc32(payload))) + payload
    _history(tmp_path / "a")
    good = (tmp_path / "a" / LOG_FILE).read_bytes()
    committed = len(good) - HEADER_SIZE + len(frame)
    head = b"AMRPLOG1" + committed.to_bytes(8, "big") + bytes(4)
    (tmp_path / "a" / LOG_FILE).write_bytes(head + zlib.crc32(head).to_bytes(4, "big") + good[HEADER_SIZE:] + frame)
    log, _ = _open(tmp_path / "a")
    assert log.damage is not None
    assert "unreadable record" in log.damage
    assert "cmd-2" in log  # what came before the damage is kept
    log.close()

    (tmp_path / "b").mkdir()
    (tmp_path / "b" / LOG_FILE).write_bytes(os.urandom(300))
    log, _ = _open(tmp_path / "b")
    assert log.damage is not None
    assert log.refuses(NOW)
    log.close()


def test_an_append_torn_past_the_committed_length_is_dropped_quietly(tmp_path: Path) -> None:
    # A crash while appending, before the header was rewritten: that command never ran.
    full = _history(tmp_path)
    torn = encode_record(Executed("cmd-x", NOW + TTL, "app", 7, 9, NOW))[:-4]
    (tmp_path / LOG_FILE).write_bytes(full + torn)
    log, guard = _open(tmp_path)
    assert log.damage is None
    assert log.horizon is None
    assert "cmd-x" not in log
    assert not guard.seen("cmd-x")
    # And the next append is readable after another restart.
    _execute(log, guard, "cmd-y", seq=10)
    log.close()
    again, _ = _open(tmp_path)
    assert "cmd-y" in again
    assert again.damage is None
    again.close()


def test_a_missing_log_in_a_used_state_directory_is_damage(tmp_path: Path) -> None:
    (tmp_path / "state-version").write_text("5000\n")
    log, _ = _open(tmp_path)
    assert log.damage is not None
    assert "missing" in log.damage
    assert log.refuses(NOW)
    log.close()


def test_an_intact_previous_text_log_is_imported_without_a_refusal_window(tmp_path: Path) -> None:
    # As agent 0.1.0 leaves it: every line whole, UTF-8, ending with a newline.
    (tmp_path / "executed-commands").write_bytes(f"old-1 {NOW + TTL}\nälter-2 {NOW + TTL}\n".encode())
    log, guard = _open(tmp_path, now=NOW + 1_000)
    assert log.damage is None
    assert log.horizon is None
    assert not log.refuses(NOW)  # commands issued around the upgrade run at once
    assert not _would_run_again(log, guard, "old-1", 1, now=NOW + 1_000)  # replays still refused
    assert "älter-2" in log
    assert _would_run_again(log, guard, "new-1", 1, now=NOW + 1_000)
    assert (tmp_path / "executed-commands.imported").exists()
    log.close()
    # The imported ids are in the new log: a later restart still refuses the replay.
    again, guard = _open(tmp_path, now=NOW + 2_000)
    assert again.damage is None
    assert not _would_run_again(again, guard, "old-1", 1, now=NOW + 2_000)
    again.close()


@pytest.mark.parametrize("cut", [1, 5, len(f" {NOW + TTL}\n"), len(f"old-2 {NOW + TTL}\n") - 1])
def test_a_previous_text_log_cut_inside_its_last_line_gets_the_refusal_window(tmp_path: Path, cut: int) -> None:
    whole = f"old-1 {NOW + TTL}\nold-2 {NOW + TTL}\n".encode()
    (tmp_path / "executed-commands").write_bytes(whole[:-cut])
    log, guard = _open(tmp_path)
    assert log.damage is not None
    assert "previous format" in log.damage
    assert log.refuses(NOW)  # old-2 may have run with its id lost: older commands are refused
    assert "old-1" in log  # the whole lines are kept
    assert guard.seen("old-1")
    # A line missing only its newline is still whole and kept; a cut expiry (read as 1970 by
    # 0.1.0) is never trusted.
    assert ("old-2" in log) == (cut == 1)
    log.close()


def test_the_previous_text_log_is_imported_cautiously_when_garbled(tmp_path: Path) -> None:
    (tmp_path / "executed-commands").write_bytes(b"old-1 1800000060000\nold-2 17959775\n\xff\xfe\n")
    log, guard = _open(tmp_path)
    assert "old-1" in log
    assert guard.seen("old-1")
    assert log.damage is not None
    assert log.refuses(NOW)  # the old format could be misread: older commands are refused
    assert (tmp_path / "executed-commands.imported").exists()
    log.close()


def test_entries_are_bounded_and_compaction_keeps_them(tmp_path: Path) -> None:
    log, guard = _open(tmp_path, capacity=10)
    for i in range(50):
        _execute(log, guard, f"c{i}", seq=i + 1, at=NOW + i)
    assert len(log) == 10
    assert "c49" in log
    assert "c0" not in log
    size = (tmp_path / LOG_FILE).stat().st_size
    log.close()
    # Compacted: never more than about three records per id kept (each well under 60 bytes).
    assert size < HEADER_SIZE + 3 * 10 * 60
    again, guard = _open(tmp_path, capacity=10)
    assert "c49" in again
    assert again.outcome("c49") is not None
    header = Header(v=1, type=MessageType.COMMAND, sender="app", kid="k", epoch=7, seq=50, ts_ms=NOW)
    with pytest.raises(Replayed):
        guard.check(header, Command(id="new", issued_at_ms=NOW, expires_at_ms=NOW + TTL, action=Pause()), now_ms=NOW)
    again.close()


def test_a_full_disk_refuses_the_record_and_loses_nothing(tmp_path: Path) -> None:
    # A file-size limit makes the append fail the way a full disk does (EFBIG vs ENOSPC),
    # in a child process so the limit does not touch this one.
    _history(tmp_path)
    script = textwrap.dedent(
        f"""
        import resource, signal, sys
        from pathlib import Path  # noqa: TC003 - pytest resolves fixture annotations
        from amora_agent import StateDirError
        from amora_agent._replaylog import Executed, ReplayLog
        from amora_protocol import CommandGuard
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        guard = CommandGuard(max_skew_ms={SKEW})
        log = ReplayLog(Path(sys.argv[1]), guard=guard, max_skew_ms={SKEW}, now_ms={NOW})
        size = Path(sys.argv[1], "{LOG_FILE}").stat().st_size
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 10, resource.RLIM_INFINITY))
        try:
            log.record_executed(Executed("too-big", {NOW + TTL}, "app", 7, 20, {NOW}))
        except StateDirError as exc:
            print("refused:", exc)
        else:
            print("written")
        """
    )
    result = subprocess.run(  # noqa: S603 - this interpreter, a fixed script
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.startswith("refused:"), result.stdout + result.stderr
    assert str(tmp_path / LOG_FILE) in result.stdout
    log, _ = _open(tmp_path)
    assert log.damage is None  # the failed append left nothing half-committed
    assert "too-big" not in log
    assert all(f"cmd-{i}" in log for i in range(3))
    log.close()


def test_an_unreadable_state_directory_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / LOG_FILE).mkdir()  # a directory where the file should be
    with pytest.raises(StateDirError, match=LOG_FILE):
        _open(tmp_path)


def test_wide_sequence_windows_survive_compaction(tmp_path: Path) -> None:
    # A window spans 1,024 sequence numbers: wider than any MessagePack integer.
    log, guard = _open(tmp_path, capacity=4)
    for i in range(20):
        _execute(log, guard, f"w{i}", seq=1 + i * 50, at=NOW + i)  # spread over the whole window
    log.close()
    again, guard = _open(tmp_path, capacity=4)
    assert again.damage is None
    for i in range(20):
        header = Header(v=1, type=MessageType.COMMAND, sender="app", kid="k", epoch=7, seq=1 + i * 50, ts_ms=NOW)
        command = Command(id=f"again{i}", issued_at_ms=NOW, expires_at_ms=NOW + TTL, action=Pause())
        with pytest.raises(Replayed):
            guard.check(header, command, now_ms=NOW)
    again.close()
