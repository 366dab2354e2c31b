"""Secrets on disk (issue #11 item 2), checked on the real stack and a real agent process.

Every private key, password and token file the stack writes is mode 0600 inside a 0700
folder, and an agent refuses to start with a private key that others may read, naming the
file and the fix. (The authz service's refusal is tested in its package, `test_keyfiles`.)
"""

from __future__ import annotations

import stat
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from amora_devtools.stack import Stack


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _secret_files(stack: Stack) -> list[Path]:
    root = stack.state_dir
    files = [
        root / "stack.json",  # the users' and the admin's tokens
        root / "authz" / "authz.toml",  # the brokers' admin passwords
        root / "authz" / "grant-signing-key.pem",
        root / "authz" / "session-secret",
        root / "authz" / "dev-issuer-key.json",
        root / "pki" / "ca.key",
        root / "pki" / "server.key",
        *sorted((root / "pki" / "clients").glob("*.key")),
    ]
    for player in stack.player_list:
        files += [player.directory / name for name in ("signing.pem", "encryption.pem", "device.key")]
    for broker in stack.brokers:
        files += [broker.state_dir / "mosquitto.conf", broker.state_dir / "tls" / "server.key"]
    return files


def test_every_secret_the_stack_writes_is_private(stack: Stack) -> None:
    files = _secret_files(stack)
    assert len(files) >= 7 + 3 * len(stack.player_list) + 2 * len(stack.brokers)
    loose = {str(f): f"{_mode(f):04o}" for f in files if _mode(f) != 0o600}
    assert loose == {}, "secret files others may read"
    folders = {f.parent for f in files} | {stack.state_dir}
    open_folders = {str(d): f"{_mode(d):04o}" for d in folders if _mode(d) & 0o077}
    assert open_folders == {}, "folders with secrets that others may enter"


def test_an_agent_refuses_a_signing_key_others_may_read(stack: Stack) -> None:
    player = stack.player("player-3")
    assert player.process is not None
    assert stack.supervisor is not None
    stack.supervisor.hold(f"agent[{player.device_id}]")  # the stack's restarts would race this test
    try:
        player.process.stop()
        key = player.directory / "signing.pem"
        key.chmod(0o644)
        stack.start_agent(player)
        assert player.process.wait(timeout=60) == 2  # a configuration error: systemd does not restart it
        last = player.log_file.read_text().strip().splitlines()[-1]
        assert last.endswith(f"is accessible by group or others (mode 0644): run `chmod 600 {key}`"), last
        key.chmod(0o600)  # the fix it names
        stack.start_agent(player)
        stack.wait_online([player.device_id])
    finally:
        stack.supervisor.release(f"agent[{player.device_id}]")
