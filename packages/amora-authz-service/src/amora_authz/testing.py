"""Run a real authz service in-process, for this package's tests and for integration tests.

Everything here is the real service (HTTP over loopback, the store, the brokers it is
given); only the choice of settings is for development: SQLite in a temporary
folder and the development issuer on.

Token mode: ``dev_settings(folder, broker=token_mode(folder))`` signs broker tokens with a key
made in ``folder``; `broker_token_key` returns its files, the public one for the brokers'
``amora_auth`` plugin (make the key before starting the brokers, which load it).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import msgspec
import uvicorn

from amora_authz._app import create_app, create_ops_app
from amora_authz._brokertoken import generate_private_pem, load_private_key, public_pem
from amora_authz._config import BrokerSettings, DevIssuerSettings, Settings
from amora_authz._dynsec import BrokerEndpoint
from amora_authz._keyfiles import write_private
from amora_authz._runtime import AuthzRuntime
from amora_protocol import EncryptionKey, SigningKey

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from amora_devtools import BrokerProcess

__all__ = [
    "RunningService",
    "broker_endpoint",
    "broker_token_key",
    "dev_settings",
    "serve",
    "session_body",
    "token_mode",
]


def broker_endpoint(broker: BrokerProcess) -> BrokerEndpoint:
    """The service's endpoint for a harness broker: its admin account on the app listener."""
    return BrokerEndpoint(
        name=broker.name,
        host=broker.host,
        port=broker.app_port,
        username=broker.admin_username,
        password=broker.admin_password,
        ca_file=str(broker.ca_file),
        dynsec_file=str(broker.dynsec_file),
        client_endpoints=(
            f"mqtts://{broker.host}:{broker.app_port}",
            f"wss://{broker.host}:{broker.ws_port}/mqtt",
        ),
    )


def broker_token_key(folder: Path) -> tuple[Path, Path]:
    """The broker token key of ``folder``, made on first use: (private key 0600, public key PEM).

    The public file is what the brokers' ``amora_auth`` plugin loads
    (``amora_devtools.broker.TokenPlugin(public_keys=...)``).
    """
    private = folder / "broker-token-key.pem"
    public = folder / "broker-token-keys.pem"
    if not private.exists():
        write_private(private, generate_private_pem())
    if not public.exists():
        public.write_bytes(public_pem(load_private_key(private.read_bytes(), private)))
    return private, public


def token_mode(folder: Path, **overrides: Any) -> BrokerSettings:  # noqa: ANN401 - BrokerSettings fields
    """``[broker]`` settings for token mode with the key of `broker_token_key` (``folder``)."""
    private, _ = broker_token_key(folder)
    return BrokerSettings(credentials="token", token_key_file=str(private), **overrides)


def dev_settings(folder: Path, **overrides: Any) -> Settings:  # noqa: ANN401 - Settings fields
    """Settings for a loopback service: SQLite and secrets in ``folder``, dev issuer on.

    Args:
        folder: where the database and generated secrets go.
        **overrides: any :class:`Settings` field.
    """
    base = Settings(
        database_url=f"sqlite://{folder / 'authz.db'}",
        listen_host="127.0.0.1",
        listen_port=0,
        state_dir=str(folder / "state"),
        dev_issuer=DevIssuerSettings(enabled=True, users=("alice", "bob", "carol", "admin")),
        log_json=False,
        reconcile_interval_s=3600,
        expiry_check_interval_s=3600,
    )
    return msgspec.structs.replace(base, **overrides)


def session_body(
    signing_key: SigningKey | None = None,
    encryption_key: EncryptionKey | None = None,
    **extra: object,
) -> dict[str, object]:
    """A ``POST /v1/sessions`` body for fresh (or the given) session keys."""
    signing_key = signing_key or SigningKey.generate()
    encryption_key = encryption_key or EncryptionKey.generate()
    return {
        "signing_key": base64.b64encode(signing_key.public_key.raw).decode(),
        "encryption_key": base64.b64encode(encryption_key.public_key.raw).decode(),
        **extra,
    }


@dataclass
class RunningService:
    """A service answering HTTP on loopback.

    Attributes:
        base_url: where it answers.
        runtime: its parts (service, store, fleet) for white-box checks.
        http: a client bound to ``base_url``.
        ops_url: the operations listener, when ``ops_listen_port`` was set.
    """

    base_url: str
    runtime: AuthzRuntime
    http: httpx.AsyncClient
    ops_url: str | None = None

    async def token(self, user: str) -> str:
        """A development token for ``user`` (from the service's own dev issuer)."""
        response = await self.http.post("/dev-issuer/token", json={"username": user})
        response.raise_for_status()
        return str(response.json()["access_token"])

    async def auth(self, user: str) -> dict[str, str]:
        """An ``Authorization`` header for ``user``."""
        return {"Authorization": f"Bearer {await self.token(user)}"}


@contextlib.asynccontextmanager
async def serve(settings: Settings, **runtime_options: Any) -> AsyncIterator[RunningService]:  # noqa: ANN401
    """Run the service (runtime + uvicorn) in this event loop until the block ends.

    The listening socket is bound before the runtime starts (the dev issuer's URL names
    its port) and handed to uvicorn, so requests wait in its backlog instead of racing
    the server's start-up.

    Args:
        settings: the configuration (``listen_port``, and ``ops_listen_port`` when set,
            are replaced by free ports).
        **runtime_options: passed to :class:`AuthzRuntime`.
    """
    sock = socket.socket()
    sock.bind((settings.listen_host, 0))
    sock.listen(128)
    ops_sock: socket.socket | None = None
    settings = msgspec.structs.replace(settings, listen_port=sock.getsockname()[1])
    if settings.ops_listen_port is not None:
        ops_sock = socket.socket()
        ops_sock.bind((settings.ops_listen_host, 0))
        ops_sock.listen(16)
        settings = msgspec.structs.replace(settings, ops_listen_port=ops_sock.getsockname()[1])
    try:
        async with AuthzRuntime(settings, **runtime_options) as runtime, contextlib.AsyncExitStack() as servers:
            apps = [(create_app(settings, runtime=runtime), sock)]
            if ops_sock is not None:
                apps.append((create_ops_app(settings, runtime=runtime), ops_sock))
            for app, listening in apps:
                config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on", http="h11", ws="none")
                server = uvicorn.Server(config)
                task = asyncio.create_task(server.serve(sockets=[listening]), name="amora-authz.uvicorn")
                servers.push_async_callback(_stop, server, task)
            ops_url = None if ops_sock is None else f"http://{settings.ops_listen_host}:{settings.ops_listen_port}"
            async with httpx.AsyncClient(base_url=settings.base_url, timeout=10) as http:
                yield RunningService(settings.base_url, runtime, http, ops_url)
    finally:
        sock.close()
        if ops_sock is not None:
            ops_sock.close()


async def _stop(server: uvicorn.Server, task: asyncio.Task[None]) -> None:
    server.should_exit = True
    await task
