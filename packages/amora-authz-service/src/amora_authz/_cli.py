"""amora-authz: serve, migrate, and admin helpers that work on the database directly."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import uvicorn

from amora_authz._app import create_app, create_ops_app
from amora_authz._backend_cli import add_backend_parser, run_backend
from amora_authz._config import load_settings
from amora_authz._devissuer import PATH as DEV_ISSUER_PATH
from amora_authz._devissuer import DevIssuer
from amora_authz._enrolment import DEFAULT_TTL_S, issue_claim
from amora_authz._errors import AuthzError, ConfigError, ConflictError, InvalidInputError, NotFoundError
from amora_authz._keyfiles import check_key_files
from amora_authz._logging import configure_logging
from amora_authz._runtime import AuthzRuntime, load_signing_keys
from amora_authz._store import open_store
from amora_authz._token_cli import add_token_key_parser, run_token_key
from amora_protocol import now_ms

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from litestar import Litestar

    from amora_authz._config import Settings

__all__ = ["EXIT_CONFIG", "EXIT_FAILURE", "main"]

EXIT_FAILURE = 1  # may heal: a database or broker that is down
EXIT_CONFIG = 2  # will not heal by restarting (systemd's RestartPreventExitStatus=2)
# What the command asked for cannot be done as asked (a bad name, a backend that exists or is
# not there): a usage error like a bad configuration, so it exits 2 too, as the other CLIs do.
_INPUT_ERRORS = (InvalidInputError, NotFoundError, ConflictError)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="amora-authz", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {metadata.version('amora-authz-service')}")
    parser.add_argument("--config", type=Path, help="TOML configuration file")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP API and the broker reconciler")
    serve.add_argument("--host", help="bind address (overrides listen_host)")
    serve.add_argument("--port", type=int, help="HTTP port (overrides listen_port)")
    sub.add_parser("migrate", help="apply database migrations and exit")
    sub.add_parser("keys", help="print the grant-signing key ids")
    link = sub.add_parser("link", help="link a user and a device (database only)")
    link.add_argument("user")
    link.add_argument("device_id")
    unlink = sub.add_parser("unlink", help="unlink a user and a device (database only)")
    unlink.add_argument("user")
    unlink.add_argument("device_id")
    devices = sub.add_parser("devices", help="list a user's devices, or all devices")
    devices.add_argument("user", nargs="?")
    claim = sub.add_parser("enrolment-claim", help="issue a one-time device enrolment claim (database only)")
    claim.add_argument("--device-id", help="the one device it enrols (default: any, --uses times)")
    claim.add_argument("--uses", type=int, default=1, help="how many devices it enrols (batch; default 1)")
    claim.add_argument(
        "--ttl", type=int, default=DEFAULT_TTL_S, help=f"seconds it stays valid (default {DEFAULT_TTL_S})"
    )
    add_backend_parser(sub)
    add_token_key_parser(sub)
    token = sub.add_parser("dev-token", help="mint a development token (dev issuer must be on)")
    token.add_argument("user")
    return parser


async def _serve(settings: Settings) -> None:
    def server(app: Litestar, host: str, port: int, *, kind: type[uvicorn.Server] = uvicorn.Server) -> uvicorn.Server:
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=10,
        )
        return kind(config)

    if settings.ops_listen_port is None:
        single = server(create_app(settings), settings.listen_host, settings.listen_port)
        await single.serve()
        if not single.started:  # uvicorn logged why (port taken, start-up failed) and returned
            raise AuthzError(f"the HTTP server did not start on {settings.listen_host}:{settings.listen_port}")
        return
    # Two listeners share one runtime, which therefore lives here rather than in an
    # app's lifespan. The servers must not take the signals themselves: uvicorn re-raises
    # a captured signal when it is done, which would end the process before the runtime
    # closes. SIGTERM/SIGINT stop both; when one server ends, so does the other.
    async with AuthzRuntime(settings) as runtime:
        public = server(
            create_app(settings, runtime=runtime), settings.listen_host, settings.listen_port, kind=_QuietServer
        )
        ops = server(
            create_ops_app(settings, runtime=runtime),
            settings.ops_listen_host,
            settings.ops_listen_port,
            kind=_QuietServer,
        )

        def stop() -> None:
            public.should_exit = ops.should_exit = True

        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop)

        async def run(this: uvicorn.Server) -> None:
            try:
                await this.serve()
            finally:
                stop()

        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(run(public), name="amora-authz.public-listener")
                tasks.create_task(run(ops), name="amora-authz.ops-listener")
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)


class _QuietServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its caller."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Install nothing (see ``_serve``)."""
        yield


async def _database(settings: Settings, args: argparse.Namespace) -> None:
    async with await open_store(settings.database_url) as store:
        version = await store.migrate()
        if args.command == "migrate":
            print(f"schema version {version}")  # noqa: T201 - CLI output
        elif args.command == "link":
            created = await store.link(args.user, args.device_id, at_ms=now_ms())
            print("linked" if created else "already linked")  # noqa: T201
        elif args.command == "unlink":
            print("unlinked" if await store.unlink(args.user, args.device_id) else "no link")  # noqa: T201
        elif args.command == "enrolment-claim":
            issued = await issue_claim(
                store, by="amora-authz-cli", device_id=args.device_id, uses=args.uses, ttl_s=args.ttl
            )
            print(issued.claim)  # noqa: T201 - the claim alone on stdout, for scripts
            expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(issued.expires_at_ms / 1000))
            print(f"for {issued.device_id or f'{issued.uses} device(s)'}, until {expires}", file=sys.stderr)  # noqa: T201
        elif args.command == "backend":
            await run_backend(store, settings, args)
        elif args.command == "devices":
            if args.user:
                rows = await store.devices_of_user(args.user)
            else:
                rows = [d.device_id for d in await store.list_devices()]
            print("\n".join(rows))  # noqa: T201


def _check_serve(settings: Settings) -> None:
    """What would otherwise fail inside the server's start-up, as one clear line before it.

    Raises:
        ConfigError: no token issuer, or a key file others may read.
    """
    if settings.oidc is None and not settings.dev_issuer.enabled:
        raise ConfigError(
            "no token issuer configured: add an [oidc] table (issuer, audience), or for local work "
            "[dev_issuer] enabled = true (AMORA_AUTHZ_DEV_ISSUER=1)"
        )
    check_key_files(settings)


def _dev_token(settings: Settings, user: str) -> None:
    """Print a development token for ``user``.

    Raises:
        ConfigError: the development issuer is disabled.
    """
    if not settings.dev_issuer.enabled:
        raise ConfigError("the development issuer is disabled: set [dev_issuer] enabled = true")
    issuer = DevIssuer(
        key=DevIssuer.load_or_create_key(Path(settings.state_dir) / "dev-issuer-key.json"),
        issuer=settings.base_url + DEV_ISSUER_PATH,
        audience=settings.dev_issuer.audience,
        users=settings.dev_issuer.users,
        admins=settings.dev_issuer.admins,
        ttl_s=settings.dev_issuer.token_ttl_s,
    )
    print(issuer.issue(user))  # noqa: T201


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit status.

    Exit statuses, as the agent's: 0 done; 1 a failure that may heal (database or broker
    unreachable); 2 unusable configuration or command line, including input the command
    cannot act on (a bad name, a backend or device that exists or is missing): restarting
    will not help.
    One line on stderr says why.
    """
    args = _parser().parse_args(argv)
    try:
        if args.command == "broker-token-key":
            run_token_key(args)  # needs no configuration: it makes part of one
            return 0
        settings = load_settings(args.config)
        if args.command == "serve" and (args.host is not None or args.port is not None):
            settings = msgspec.structs.replace(
                settings,
                listen_host=settings.listen_host if args.host is None else args.host,
                listen_port=settings.listen_port if args.port is None else args.port,
            )
        configure_logging(level=settings.log_level, json=settings.log_json)
        if args.command == "serve":
            # Before the server: a missing issuer or a key others may read is one clear line,
            # not a start-up traceback.
            _check_serve(settings)
            # uvicorn handles SIGINT/SIGTERM itself: graceful shutdown runs the lifespan exit.
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            try:
                asyncio.run(_serve(settings))
            except SystemExit as exc:  # uvicorn's own exit when it cannot start (it logged why)
                raise AuthzError(
                    f"the HTTP server did not start on {settings.listen_host}:{settings.listen_port} "
                    f"(uvicorn exit {exc.code}; its log line above says why)",
                    code="start_failed",
                ) from exc
        elif args.command == "keys":
            for key in load_signing_keys(settings):
                print(key.kid)  # noqa: T201 - CLI output
        elif args.command == "dev-token":
            _dev_token(settings, args.user)
        else:
            asyncio.run(_database(settings, args))
    except ConfigError as exc:
        print(f"amora-authz: {exc.message}", file=sys.stderr)  # noqa: T201
        return EXIT_CONFIG
    except AuthzError as exc:
        print(f"amora-authz: {exc.message} ({exc.code})", file=sys.stderr)  # noqa: T201
        return EXIT_CONFIG if isinstance(exc, _INPUT_ERRORS) else EXIT_FAILURE
    return 0
