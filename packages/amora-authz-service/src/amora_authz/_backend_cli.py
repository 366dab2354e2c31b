"""``amora-authz backend ...``: backend identities from the command line (database only).

Like ``link`` and ``unlink``, these commands change the database; the running service puts
the change on every broker at its next full pass (``reconcile_interval_s``), or at once
when the admin API (``/v1/admin/backends``) is used instead.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import msgspec

from amora_authz._backends import Backend, BackendRegistry, name_of, replicas_of, role_of
from amora_authz._runtime import _session_secret
from amora_protocol import BackendRole, now_ms

if TYPE_CHECKING:
    import argparse

    from amora_authz._config import Settings
    from amora_authz._store import Store

__all__ = ["add_backend_parser", "run_backend"]


def add_backend_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``backend create|list|rotate|delete``."""
    backend = sub.add_parser("backend", help="manage backend identities (database only; see --help)")
    actions = backend.add_subparsers(dest="backend_action", required=True)
    create = actions.add_parser("create", help="create a backend; prints its password once")
    create.add_argument("name", help="1-32 characters of [a-z0-9-]")
    create.add_argument("--role", required=True, choices=[r.value for r in BackendRole])
    create.add_argument("--replicas", type=int, default=2, help="replica slots, one broker account each (default 2)")
    actions.add_parser("list", help="list backends (JSON lines, no passwords)")
    rotate = actions.add_parser("rotate", help="give a backend a new password; prints it")
    rotate.add_argument("name")
    delete = actions.add_parser("delete", help="delete a backend")
    delete.add_argument("name")


def _show(backend: Backend) -> str:
    return json.dumps(
        msgspec.structs.asdict(backend) | {"role": backend.role.value, "usernames": list(backend.accounts)}
    )


async def run_backend(store: Store, settings: Settings, args: argparse.Namespace) -> None:
    """Run one ``backend`` action against the database.

    Raises:
        AuthzError: bad input (``InvalidInputError``), a missing or existing backend.
    """
    registry = BackendRegistry(store, secret=_session_secret(settings))
    action = args.backend_action
    if action == "create":
        at = now_ms()
        backend = Backend(
            name=name_of(args.name),
            role=role_of(args.role),
            replicas=replicas_of(args.replicas),
            generation=1,
            created_at_ms=at,
            rotated_at_ms=at,
            created_by="amora-authz-cli",
        )
        await registry.add(backend)
    elif action == "rotate":
        backend = await registry.rotate(name_of(args.name), at_ms=now_ms())
    elif action == "delete":
        await registry.remove(name_of(args.name))
        print(f"deleted {args.name}; the service removes its broker accounts at its next full pass", file=sys.stderr)  # noqa: T201
        return
    else:
        for listed in await registry.list():
            print(_show(listed))  # noqa: T201 - CLI output
        return
    print(registry.password(backend))  # noqa: T201 - the password alone on stdout, for scripts
    print(  # noqa: T201
        f"{_show(backend)}\nthe service applies it at its next full pass (reconcile_interval_s)",
        file=sys.stderr,
    )
