from pathlib import Path

import pytest

from amora_agent import StateDirError
from amora_agent._persist import VersionCounter


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
