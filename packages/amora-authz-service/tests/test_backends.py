"""Backend identities without a broker: their broker objects, password rotation in the planner, the CLI.

The broker side (ACLs enforced by a real mosquitto, rotation and deletion on every broker,
support grants through a real agent) is in ``tests-integration/test_backends_access.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING

import msgspec
import pytest
import structlog

from amora_authz._backends import Backend, backend_objects, backend_password
from amora_authz._cli import main
from amora_authz._dynsec import MANAGED, DynsecState, plan
from amora_devtools.broker import dynsec
from amora_protocol import BackendRole

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from authz_broker_harness import Harness

SECRET = bytes(range(32))


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The CLI configures logging for the process (onto pytest's captured stderr); put it back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


def _backend(role: BackendRole = BackendRole.ANALYTICS, generation: int = 1) -> Backend:
    return Backend(
        name="stats",
        role=role,
        replicas=2,
        generation=generation,
        created_at_ms=1,
        rotated_at_ms=1,
        created_by="admin",
    )


def test_a_backend_gets_one_bound_account_per_replica_and_one_marked_role() -> None:
    backend = _backend()
    state = backend_objects(backend, backend_password(SECRET, "stats", 1))
    assert sorted(state.clients) == ["svc.backend.stats.1", "svc.backend.stats.2"]
    for name, client in state.clients.items():
        assert client.clientid == name  # no client id of its choosing: cannot kick a device
        assert client.roles == frozenset({"svc.backend.stats"})
        assert client.textname == MANAGED
    (role,) = state.roles.values()
    assert role.textname == MANAGED
    assert {(a.acltype, a.topic) for a in role.acls} >= {
        ("subscribePattern", "$share/stats/amora/devices/+/state"),
        ("publishClientReceive", "amora/devices/+/state"),
    }
    assert not [a for a in role.acls if a.acltype == "publishClientSend" and a.topic.startswith("amora/devices/")]
    support = backend_objects(_backend(BackendRole.SUPPORT), "pw")
    assert ("publishClientSend", "amora/devices/+/commands") in {
        (a.acltype, a.topic) for a in next(iter(support.roles.values())).acls
    }


def test_passwords_derive_from_the_secret_name_and_generation() -> None:
    assert backend_password(SECRET, "stats", 1) == backend_password(SECRET, "stats", 1)
    assert backend_password(SECRET, "stats", 1) != backend_password(SECRET, "stats", 2)
    assert backend_password(SECRET, "stats", 1) != backend_password(SECRET, "other", 1)
    assert backend_password(SECRET, "stats", 1) != backend_password(bytes(32), "stats", 1)


def test_the_planner_sets_a_rotated_password_again_and_leaves_a_current_one() -> None:
    old = backend_objects(_backend(generation=1), backend_password(SECRET, "stats", 1))
    new = backend_objects(_backend(generation=2), backend_password(SECRET, "stats", 2))
    # What a broker reports: no passwords, the tag in textdescription.
    actual = DynsecState(
        roles=dict(old.roles),
        clients={n: msgspec.structs.replace(c, password=None) for n, c in old.clients.items()},
    )
    assert plan(old, actual) == []
    commands = plan(new, actual)
    rotated = [c for c in commands if c["command"] == "setClientPassword"]
    assert sorted(c["username"] for c in rotated) == ["svc.backend.stats.1", "svc.backend.stats.2"]
    assert {c["password"] for c in rotated} == {backend_password(SECRET, "stats", 2)}
    tags = [c for c in commands if c["command"] == "modifyClient"]
    assert {c["textdescription"] for c in tags} == {"generation 2"}


def _config(folder: Path) -> Path:
    path = folder / "authz.toml"
    path.write_text(
        f"""
database_url = "sqlite://{folder / "cli.db"}"
state_dir = "{folder / "state"}"

[dev_issuer]
enabled = true
"""
    )
    return path


def test_the_cli_creates_lists_rotates_and_deletes_backends(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(_config(tmp_path))
    assert main(["--config", config, "backend", "create", "stats", "--role", "analytics", "--replicas", "3"]) == 0
    first = capsys.readouterr().out.strip()
    assert len(first) > 20
    assert main(["--config", config, "backend", "list"]) == 0
    (listed,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert listed["usernames"] == ["svc.backend.stats.1", "svc.backend.stats.2", "svc.backend.stats.3"]
    assert listed["role"] == "analytics"
    assert listed["generation"] == 1
    assert main(["--config", config, "backend", "rotate", "stats"]) == 0
    second = capsys.readouterr().out.strip()
    assert second not in {"", first}
    # Bad input names the rule broken, exits 2 (a usage error: retrying will not help); nothing is created.
    assert main(["--config", config, "backend", "create", "Bad.Name", "--role", "analytics"]) == 2
    assert "invalid backend name" in capsys.readouterr().err
    assert main(["--config", config, "backend", "create", "stats", "--role", "ingest"]) == 2
    assert "backend_exists" in capsys.readouterr().err
    assert main(["--config", config, "backend", "delete", "stats"]) == 0
    assert main(["--config", config, "backend", "list"]) == 0
    assert capsys.readouterr().out.strip() == ""
    assert main(["--config", config, "backend", "delete", "stats"]) == 2
    assert "no backend 'stats'" in capsys.readouterr().err


async def test_the_periodic_check_counts_backend_accounts_and_repairs_them(harness: Harness) -> None:
    """The cheap periodic check (issue #15) must agree with a broker that holds backends."""
    runtime = harness.svc.runtime
    fleet = runtime.service.fleet
    fleet._settle_s = 0.05
    backend = await runtime.backends.create(name="stats", role="analytics", replicas=2, by="admin", at_ms=1)
    (report,) = await runtime.service.periodic_pass()
    assert (report.full, report.commands) == (None, 0)  # the backend's objects are counted
    # An operator deletes one of its accounts behind the service's back: repaired.
    await asyncio.to_thread(dynsec, harness.broker, [{"command": "deleteClient", "username": backend.accounts[1]}])
    (report,) = await runtime.service.periodic_pass()
    assert report.full == "counts differ"
    answer = await asyncio.to_thread(
        dynsec, harness.broker, [{"command": "getClient", "username": backend.accounts[1]}]
    )
    client = answer[0]["data"]["client"]
    assert (client["textname"], client["textdescription"]) == (MANAGED, "generation 1")
    # Deleted: gone from the broker, and the check agrees again.
    await runtime.backends.delete("stats")
    gone = await asyncio.to_thread(
        dynsec, harness.broker, [{"command": "getClient", "username": backend.accounts[0]}], check=False
    )
    assert gone[0].get("error")
    (report,) = await runtime.service.periodic_pass()
    assert report.full is None
