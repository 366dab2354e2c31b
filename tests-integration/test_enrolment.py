"""Claim-based self-enrolment on the real stack: keygen, enrol, run; replays and expiry refused."""

from __future__ import annotations

import hashlib
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from amora_devtools.stack import ADMIN_USER, Player, Stack
from amora_protocol import EncryptionKey, SigningKey

pytestmark = [pytest.mark.services, pytest.mark.slow]

EXIT_CONFIG = 2


@pytest.fixture(scope="module")
def small_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One broker, the authz service and one simulated player (the enrolled ones come on top)."""
    with Stack(
        tmp_path_factory.mktemp("enrol") / "stack", players=1, real_mpd=False, standby=False, supervise=False
    ) as running:
        yield running


def _script(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def _new_player(stack: Stack, device_id: str) -> Player:
    """A player with a configuration whose key files do not exist yet, in a folder that does not."""
    directory = stack.state_dir / "enrolled" / device_id
    directory.mkdir(parents=True)
    player = Player(
        device_id, "simulated", directory, directory / "agent.toml", SigningKey.generate(), EncryptionKey.generate()
    )
    stack._write_agent_config(player)
    text = player.config_file.read_text()
    for name in ("signing.pem", "encryption.pem", "device.key", "device.pem"):
        text = text.replace(str(directory / name), str(directory / "keys" / name))
    player.config_file.write_text(text)
    return player


def _issue(stack: Stack, **body: object) -> str:
    admin = stack._token(ADMIN_USER)
    return str(stack._admin(admin, "POST", "/v1/admin/enrolment-claims", dict(body))["claim"])


def _enrol(stack: Stack, player: Player, claim: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - this environment's amora-agent
        [
            _script("amora-agent"),
            "enrol",
            "--config",
            str(player.config_file),
            "--authz-url",
            stack.authz_url,
            "--claim",
            claim,
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_a_player_enrols_with_a_claim_and_comes_online(small_stack: Stack) -> None:
    player = _new_player(small_stack, "player-9")
    claim = _issue(small_stack, device_id="player-9", ttl_s=600)

    enrolled = _enrol(small_stack, player, claim)
    assert enrolled.returncode == 0, enrolled.stderr
    assert "enrolled player-9" in enrolled.stdout

    keys = player.directory / "keys"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    for name in ("signing.pem", "encryption.pem", "device.key", "device.key.csr"):
        assert stat.S_IMODE((keys / name).stat().st_mode) == 0o600, name
    assert "BEGIN CERTIFICATE" in (keys / "device.pem").read_text()

    # The certificate and registration are real: the broker lets the agent in and it is online.
    small_stack.player_list.append(player)
    small_stack.start_agent(player)
    small_stack.wait_online([player.device_id])

    # Only the claim's digest is stored.
    with sqlite3.connect(small_stack.state_dir / "authz" / "authz.db") as db:
        rows = db.execute("SELECT claim_sha256, device_id, uses_left FROM enrolment_claims").fetchall()
    assert (hashlib.sha256(claim.encode()).hexdigest(), "player-9", 0) in rows
    assert all(claim not in str(row) for row in rows)

    # A replay of the used claim (another player, same id or not) is refused with the reason.
    again = _enrol(small_stack, _new_player(small_stack, "player-9b"), claim)
    assert again.returncode == EXIT_CONFIG
    assert "for device 'player-9'" in again.stderr
    replay = _new_player(small_stack, "player-9-copy")
    replay.config_file.write_text(replay.config_file.read_text().replace('"player-9-copy"', '"player-9"', 1))
    used = _enrol(small_stack, replay, claim)
    assert used.returncode == EXIT_CONFIG
    assert "claim_used" in used.stderr
    assert "already been used" in used.stderr


def test_an_expired_or_unknown_claim_is_refused_with_the_reason(small_stack: Stack) -> None:
    claim = _issue(small_stack, device_id="player-10", ttl_s=600)
    with sqlite3.connect(small_stack.state_dir / "authz" / "authz.db") as db:  # expire it now
        db.execute(
            "UPDATE enrolment_claims SET expires_at_ms = 0 WHERE claim_sha256 = ?",
            (hashlib.sha256(claim.encode()).hexdigest(),),
        )
    expired = _enrol(small_stack, _new_player(small_stack, "player-10"), claim)
    assert expired.returncode == EXIT_CONFIG
    assert "claim_expired" in expired.stderr
    assert "new claim" in expired.stderr

    unknown = _enrol(small_stack, _new_player(small_stack, "player-11"), "amora-claim-made-up")
    assert unknown.returncode == EXIT_CONFIG
    assert "claim_unknown" in unknown.stderr


def test_a_batch_claim_enrols_as_many_players_as_it_allows(small_stack: Stack) -> None:
    # Issued with the CLI, on the service's database, as an operator would.
    issued = subprocess.run(  # noqa: S603 - this environment's amora-authz
        [
            _script("amora-authz"),
            "--config",
            str(small_stack.state_dir / "authz" / "authz.toml"),
            "enrolment-claim",
            "--uses",
            "2",
            "--ttl",
            "600",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    claim = issued.stdout.strip()
    assert claim.startswith("amora-claim-")
    for device_id in ("batch-1", "batch-2"):
        result = _enrol(small_stack, _new_player(small_stack, device_id), claim)
        assert result.returncode == 0, result.stderr
    third = _enrol(small_stack, _new_player(small_stack, "batch-3"), claim)
    assert third.returncode == EXIT_CONFIG
    assert "claim_used" in third.stderr
