"""amora-analytics: run one replica of the analytics backend."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from importlib import metadata
from pathlib import Path

from amora_analytics._db import AnalyticsError
from amora_analytics._run import run
from amora_sync import AmoraSyncError
from amora_sync.backend import BackendCredentials

__all__ = ["main"]

EXIT_FAILURE = 1
EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="amora-analytics", description=__doc__)
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {metadata.version('amora-example-analytics')}"
    )
    parser.add_argument("--authz-url", required=True, help="the authz service, e.g. http://127.0.0.1:8080")
    parser.add_argument(
        "--credentials",
        type=Path,
        required=True,
        help="JSON answer of POST /v1/admin/backends (role analytics) for this backend",
    )
    parser.add_argument("--replica", type=int, required=True, help="this replica's slot, 1..replicas")
    parser.add_argument(
        "--database-url", required=True, help="PostgreSQL, e.g. postgresql://amora@127.0.0.1:5432/amora"
    )
    parser.add_argument("--ca-file", help="CA bundle of the brokers and the authz service")
    parser.add_argument("--takeover-delay", type=int, default=2, help="seconds before a dead replica is taken over")
    parser.add_argument("--progress", action="store_true", help="print one JSON line per stored state")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one replica until interrupted; return the exit status (1: failed, 2: bad usage)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        credentials = BackendCredentials.from_admin(json.loads(args.credentials.read_text()))
    except (OSError, ValueError) as exc:
        print(f"amora-analytics: cannot use --credentials {args.credentials}: {exc}", file=sys.stderr)  # noqa: T201
        return EXIT_USAGE
    try:
        asyncio.run(
            run(
                authz_url=args.authz_url,
                credentials=credentials,
                replica=args.replica,
                database_url=args.database_url,
                ca_file=args.ca_file,
                takeover_delay=args.takeover_delay,
                progress=sys.stdout if args.progress else None,
            )
        )
    except KeyboardInterrupt:
        return 0
    except ValueError as exc:  # a replica outside the backend's slots
        print(f"amora-analytics: {exc}", file=sys.stderr)  # noqa: T201
        return EXIT_USAGE
    except (AnalyticsError, AmoraSyncError) as exc:
        print(f"amora-analytics: {exc}", file=sys.stderr)  # noqa: T201
        return EXIT_FAILURE
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
