from pathlib import Path

import pytest

from amora_agent import ExecutedCommands, StateDirError, VersionCounter


def test_versions_increase_within_and_across_runs(tmp_path: Path) -> None:
    first = VersionCounter(tmp_path, block=10)
    seen = [first.next() for _ in range(25)]  # crosses two block boundaries
    assert seen == sorted(set(seen))
    # A second process (the first "crashed" without closing) starts above everything handed out.
    second = VersionCounter(tmp_path, block=10)
    assert second.next() > seen[-1]
    third = VersionCounter(tmp_path, block=10)
    assert third.next() > second.last


def test_versions_write_once_per_block(tmp_path: Path) -> None:
    counter = VersionCounter(tmp_path, block=100)
    path = tmp_path / "state-version"
    ceiling = path.read_text()
    for _ in range(99):
        counter.next()
    assert path.read_text() == ceiling  # no write inside the block
    counter.next()
    counter.next()
    assert int(path.read_text()) > int(ceiling)


def test_versions_respect_a_floor(tmp_path: Path) -> None:
    assert VersionCounter(tmp_path, floor=5_000).next() == 5_001


def test_unreadable_version_file_is_a_state_dir_error(tmp_path: Path) -> None:
    (tmp_path / "state-version").write_text("not a number")
    with pytest.raises(StateDirError):
        VersionCounter(tmp_path)


def test_executed_ids_survive_a_restart(tmp_path: Path) -> None:
    log = ExecutedCommands(tmp_path)
    log.add("c1", 2_000, now_ms=1_000)
    log.add("c2", 3_000, now_ms=1_000)
    log.close()
    again = ExecutedCommands(tmp_path)
    assert "c1" in again
    assert "c2" in again
    assert "c3" not in again


def test_executed_ids_are_forgotten_once_expired(tmp_path: Path) -> None:
    log = ExecutedCommands(tmp_path)
    log.add("old", 1_500, now_ms=1_000)
    log.add("new", 9_000, now_ms=2_000)  # pruning happens on add
    assert "old" not in log
    assert "new" in log


def test_executed_ids_are_bounded_and_compacted(tmp_path: Path) -> None:
    log = ExecutedCommands(tmp_path, capacity=10, durable=False)
    for i in range(100):
        log.add(f"c{i}", 10_000 + i, now_ms=0)
    assert len(log) == 10
    assert "c99" in log
    assert "c0" not in log  # the one expiring first went
    log.close()
    lines = (tmp_path / "executed-commands").read_text().splitlines()
    assert len(lines) <= 21  # compacted, never more than twice the bound
    assert "c99" in ExecutedCommands(tmp_path, capacity=10)
