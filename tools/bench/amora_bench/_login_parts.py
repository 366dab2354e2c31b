"""What the login scenarios share: the authz service in its own process, timed logins, a storm of CONNECTs.

`amora_bench.logins` (dynamic-security sessions) and `amora_bench.token_logins` (broker
tokens) measure the same things in the two credential modes with these, so that their
figures compare.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amora_bench._common import latency_summary
from amora_bench._rawmqtt import RawMqtt, RawMqttError

if TYPE_CHECKING:
    from collections.abc import Iterator

    import httpx

    from amora_devtools.broker import BrokerProcess

__all__ = ["HANDSHAKE_CONCURRENCY", "authz_service", "bearer_tokens", "install_window", "storm"]

HANDSHAKE_CONCURRENCY = 512  # the load generator's own bound: 5,000 real apps have none


def _authz_config(folder: Path, broker: BrokerProcess, users: list[str], port: int, token_key: Path | None) -> Path:
    listed = ", ".join(f'"{u}"' for u in [*users, "admin"])
    text = f"""
database_url = "sqlite://{folder / "authz.db"}"
listen_host = "127.0.0.1"
listen_port = {port}
state_dir = "{folder / "state"}"
log_level = "error"
max_sessions_per_user = 1000000
reconcile_interval_s = 3600

[rate_limits]
enabled = false

[dev_issuer]
enabled = true
users = [{listed}]
admins = ["admin"]

[[brokers]]
name = "{broker.name}"
host = "{broker.host}"
port = {broker.app_port}
username = "{broker.admin_username}"
password = "{broker.admin_password}"
ca_file = "{broker.ca_file}"
"""
    if token_key is not None:
        text += f"""
[broker]
credentials = "token"
token_key_file = "{token_key}"
"""
    path = folder / "authz.toml"
    path.write_text(text)
    return path


@contextlib.contextmanager
def authz_service(
    folder: Path, broker: BrokerProcess, users: list[str], *, token_key: Path | None = None
) -> Iterator[str]:
    """The real authz service (SQLite, dev issuer, no rate limits) for ``broker``; yields its URL.

    ``token_key``: token mode (``[broker] credentials = "token"``) with that signing key.
    """
    from amora_devtools._proc import free_port  # noqa: PLC0415 - the harness, only where a service runs

    port = free_port()
    config = _authz_config(folder, broker, users, port, token_key)
    command = shutil.which("amora-authz") or str(Path(sys.executable).parent / "amora-authz")
    env = {**os.environ, "AMORA_AUTHZ_LOG_JSON": "false"}
    log = (folder / "authz.log").open("wb")
    process = subprocess.Popen(  # noqa: S603 - our own service, arguments we built
        [command, "--config", str(config), "serve"], env=env, stdout=subprocess.DEVNULL, stderr=log
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


async def bearer_tokens(http: httpx.AsyncClient, users: list[str]) -> dict[str, dict[str, str]]:
    """Wait for the service to answer, then a development-issuer token (as a header) per user and admin."""
    import httpx  # noqa: PLC0415 - only the login scenarios speak HTTP

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if (await http.get("/healthz")).status_code == 200:
                break
        await asyncio.sleep(0.2)  # bounded readiness poll of a process we started
    tokens = {}
    for user in [*users, "admin"]:
        answer = await http.post("/dev-issuer/token", json={"username": user})
        answer.raise_for_status()
        tokens[user] = {"Authorization": f"Bearer {answer.json()['access_token']}"}
    return tokens


async def install_window(
    http: httpx.AsyncClient, tokens: dict[str, dict[str, str]], users: list[str], seconds: float
) -> dict[str, Any]:
    """Each user logs in (``POST /v1/sessions``) again and again for ``seconds``, all at once."""
    from amora_authz.testing import session_body  # noqa: PLC0415

    latencies: list[float] = []
    first: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def install(user: str) -> int:
        done = 0
        while (began := time.perf_counter()) < stop_at:
            answer = await http.post("/v1/sessions", json=session_body(), headers=tokens[user])
            if answer.status_code != 201:
                msg = f"POST /v1/sessions answered {answer.status_code}: {answer.text[:200]}"
                raise RuntimeError(msg)
            (first if done == 0 else latencies).append((time.perf_counter() - began) * 1000)
            done += 1
        return done

    counts = await asyncio.gather(*(install(u) for u in users))
    return {
        "logins": sum(counts),
        "logins_per_s": round(sum(counts) / seconds, 1),
        "latency_ms": latency_summary(latencies),
        "users_first_login_ms": latency_summary(first),
    }


async def storm(
    broker: BrokerProcess, apps: list[tuple[str, str, str, str]], *, hold: list[RawMqtt] | None = None
) -> dict[str, Any]:
    """Every app at once: TLS CONNECT with its stored credential, SUBSCRIBE, the retained state.

    ``apps`` are (client id, username, password, state topic). With ``hold`` the connections
    that got their state are left open there (live sessions); otherwise they are closed.
    """
    context = broker.client_context()
    gate = asyncio.Semaphore(HANDSHAKE_CONCURRENCY)
    done_at: list[float] = []
    failures: list[str] = []
    links: list[RawMqtt] = []
    start = time.perf_counter()

    async def app(client_id: str, username: str, password: str, topic: str) -> None:
        for attempt in range(5):
            try:
                async with gate:
                    link = await RawMqtt.connect(
                        broker.host,
                        broker.app_port,
                        ssl_context=context,
                        client_id=client_id,
                        username=username,
                        password=password,
                    )
                links.append(link)
                await link.subscribe(topic)
                await link.next_payload()
                done_at.append(time.perf_counter() - start)
            except (OSError, RawMqttError, asyncio.IncompleteReadError) as exc:
                if attempt == 4:
                    failures.append(repr(exc))
                await asyncio.sleep(0.05 * 2**attempt)
            else:
                return

    await asyncio.gather(*(app(*a) for a in apps))
    total = time.perf_counter() - start
    for link in links:
        if hold is None:
            link.close()
        else:
            hold.append(link)
    return {
        "all_received_s": round(total, 2),
        "per_app_ms": latency_summary([t * 1000 for t in done_at]),
        "failures": len(failures),
        "first_failure": failures[0] if failures else None,
    }
