"""Secret files of the harness: 0600 from the first byte, in 0700 folders."""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING

from amora_devtools._files import private_dir, write_private
from amora_devtools.pki import DevPKI

if TYPE_CHECKING:
    from pathlib import Path

    import pytest


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_private_creates_0600_never_wider(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    created: list[int] = []
    real_open = os.open

    def spy(path: object, flags: int, mode: int = 0o777, *args: object, **kwargs: object) -> int:
        if flags & os.O_CREAT:
            created.append(mode)
        return real_open(path, flags, mode, *args, **kwargs)  # type: ignore[arg-type]

    target = tmp_path / "token.json"
    target.write_text("old")
    target.chmod(0o644)
    monkeypatch.setattr(os, "open", spy)
    write_private(target, "secret")
    monkeypatch.undo()
    assert created == [0o600]  # the bytes never sat in a file with a wider mode
    assert (target.read_text(), _mode(target)) == ("secret", 0o600)


def test_private_dir_tightens_an_existing_folder(tmp_path: Path) -> None:
    folder = tmp_path / "state"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    assert _mode(private_dir(folder)) == 0o700


def test_the_pki_keeps_its_keys_private(tmp_path: Path) -> None:
    pki = DevPKI.create(tmp_path / "pki")
    cert = pki.issue_client_cert("player-1")
    for key in (pki.ca_key_file, pki.server_key_file, cert.key_file):
        assert _mode(key) == 0o600, key
    assert _mode(tmp_path / "pki") == 0o700
    assert _mode(cert.key_file.parent) == 0o700
