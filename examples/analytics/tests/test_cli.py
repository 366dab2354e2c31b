"""``amora-analytics``: --help, --version, and bad input refused with its cause (exit 2)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest
from amora_analytics.__main__ import EXIT_USAGE, main

if TYPE_CHECKING:
    from pathlib import Path

REQUIRED = ["--authz-url", "http://127.0.0.1:1", "--database-url", "postgresql://amora@127.0.0.1:1/none"]


@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_help_and_version(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main([flag])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert ("--replica" in out and "``" not in out) if flag == "--help" else out.startswith("amora-analytics 0.")


def test_a_credentials_file_that_is_not_the_admin_answer_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.json"
    assert main([*REQUIRED, "--credentials", str(missing), "--replica", "1"]) == EXIT_USAGE
    assert f"cannot use --credentials {missing}" in capsys.readouterr().err
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"access_token": "x"}))
    assert main([*REQUIRED, "--credentials", str(wrong), "--replica", "1"]) == EXIT_USAGE
    assert "POST /v1/admin/backends" in capsys.readouterr().err


def test_a_replica_outside_the_backends_slots_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    answer = {
        "backend": {"name": "stats", "role": "analytics", "replicas": 2},
        "password": "pw",
        "endpoints": ["mqtts://127.0.0.1:1"],
    }
    credentials = tmp_path / "credentials.json"
    credentials.write_text(json.dumps(answer))
    assert main([*REQUIRED, "--credentials", str(credentials), "--replica", "3"]) == EXIT_USAGE
    assert "replica must be 1..2" in capsys.readouterr().err
