"""Revocation to the device: from a logout or unlink API call to the agent refusing the old grant.

A real agent (in this process, simulated player, mTLS to a real broker) serves one device;
the authz service runs as its own process. Each round creates a session for ``rita``, waits
until the agent holds a session list that has it, then ends it: even rounds log the session
out (``DELETE /v1/sessions/{id}``), odd rounds unlink rita from the device (and link her
again after the round). Timed from just before the API call until the agent holds a session
list without the session (`Agent.wait_session_list`, woken as the list is applied). Then a
command under the old grant is relayed through another user's still-valid connection and must
be answered ``rejected`` / ``unauthorized`` / ``revoked: ...``; the count of such refusals is
reported next to the latency.

Run alone: ``python -m amora_bench.device_revocation --rounds 20``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from amora_bench._common import latency_summary, raise_fd_limit
from amora_bench._rawmqtt import RawMqtt

if TYPE_CHECKING:
    from amora_agent import Agent
    from amora_devtools.broker import BrokerProcess
    from amora_devtools.pki import DevPKI
    from amora_protocol import CommandResponse, SessionList, SigningKey, VerifyKey

__all__ = ["run"]

USER, RELAY_USER, DEVICE = "rita", "carl", "revoke-me"
_WAIT_S = 10.0


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


class _Api:
    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def token(self, user: str) -> dict[str, str]:
        response = await self.http.post("/dev-issuer/token", json={"username": user})
        response.raise_for_status()
        return {"Authorization": f"Bearer {response.json()['access_token']}"}

    async def session(self, user: str) -> tuple[dict[str, Any], SigningKey, dict[str, str]]:
        from amora_protocol import EncryptionKey, SigningKey  # noqa: PLC0415

        key = SigningKey.generate()
        headers = await self.token(user)
        body = {
            "signing_key": _b64(key.public_key.raw),
            "encryption_key": _b64(EncryptionKey.generate().public_key.raw),
        }
        response = await self.http.post("/v1/sessions", json=body, headers=headers)
        response.raise_for_status()
        return response.json(), key, headers


async def _until(agent: Agent, session_id: str, *, listed: bool) -> None:
    """Wait until the agent holds a session list that has (or has not) ``session_id``."""

    def holds(current: SessionList | None) -> bool:
        return current is not None and current.allows(session_id) is listed

    await asyncio.wait_for(agent.wait_session_list(holds), _WAIT_S)


async def _relayed_refusal(
    relay: RawMqtt, session: dict[str, Any], key: SigningKey, device_key: VerifyKey
) -> CommandResponse:
    """Send a command under ``session``'s grant through ``relay``; return the device's answer."""
    from amora_protocol import (  # noqa: PLC0415
        Command,
        CommandResponse,
        Ping,
        ProtocolError,
        Sender,
        commands_topic,
        now_ms,
        responses_topic,
        verify_envelope,
    )

    issued = now_ms()
    command = Command(id=str(uuid.uuid4()), issued_at_ms=issued, expires_at_ms=issued + 30_000, action=Ping())
    sender = Sender(session["session_id"], key, epoch=issued)
    grant = base64.b64decode(session["grant"])
    relay.publish(commands_topic(DEVICE), sender.encode(commands_topic(DEVICE), command, now_ms=issued, grant=grant))
    async with asyncio.timeout(_WAIT_S):
        while True:
            payload = await relay.next_payload()
            try:
                answer = verify_envelope(
                    payload, topic=responses_topic(DEVICE), content_type=None, key=device_key, now_ms=now_ms()
                ).message
            except ProtocolError:
                continue
            if isinstance(answer, CommandResponse) and answer.command_id == command.id:
                return answer


async def _rounds(  # noqa: PLR0913 - the rig's parts
    api: _Api, admin: dict[str, str], *, agent: Agent, relay: RawMqtt, device_key: VerifyKey, rounds: int
) -> dict[str, Any]:
    from amora_protocol import CommandStatus, RejectReason  # noqa: PLC0415

    reach: dict[str, list[float]] = {"logout": [], "unlink": []}
    api_ms: list[float] = []
    refused = 0
    for n in range(rounds):
        kind = "logout" if n % 2 == 0 else "unlink"
        session, key, headers = await api.session(USER)
        session_id = session["session_id"]
        await _until(agent, session_id, listed=True)
        start = time.perf_counter()
        if kind == "logout":
            response = await api.http.delete(f"/v1/sessions/{session_id}", headers=headers)
        else:
            response = await api.http.delete(f"/v1/admin/users/{USER}/devices/{DEVICE}", headers=admin)
        api_ms.append((time.perf_counter() - start) * 1000)
        response.raise_for_status()
        await _until(agent, session_id, listed=False)
        reach[kind].append((time.perf_counter() - start) * 1000)
        answer = await _relayed_refusal(relay, session, key, device_key)
        if (
            answer.status is CommandStatus.REJECTED
            and answer.reason is RejectReason.UNAUTHORIZED
            and (answer.message or "").startswith("revoked:")
        ):
            refused += 1
        if kind == "unlink":
            (await api.http.put(f"/v1/admin/users/{USER}/devices/{DEVICE}", headers=admin)).raise_for_status()
    every = reach["logout"] + reach["unlink"]
    return {
        "rounds": rounds,
        "to_device": latency_summary(every),
        "to_device_logout": latency_summary(reach["logout"]),
        "to_device_unlink": latency_summary(reach["unlink"]),
        "api_call": latency_summary(api_ms),
        "relayed_old_grant_refused": refused,
        "latency_sets": {"logout/unlink API call -> agent holds the new session list": [round(x, 3) for x in every]},
    }


async def _measure(url: str, pki: DevPKI, broker: BrokerProcess, work: Path, rounds: int) -> dict[str, Any]:
    from amora_agent import Agent, AgentOptions, BrokerEndpoint, SimulatedPlayer, TlsConfig, client_ssl_context  # noqa: PLC0415
    from amora_protocol import EncryptionKey, SigningKey, VerifyKey, responses_topic  # noqa: PLC0415

    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        api = _Api(http)
        admin = await api.token("admin")
        device_key = SigningKey.generate()
        body = {
            "device_id": DEVICE,
            "signing_key": _b64(device_key.public_key.raw),
            "encryption_key": _b64(EncryptionKey.generate().public_key.raw),
        }
        (await http.post("/v1/admin/devices", json=body, headers=admin)).raise_for_status()
        for user in (USER, RELAY_USER):
            (await http.put(f"/v1/admin/users/{user}/devices/{DEVICE}", headers=admin)).raise_for_status()
        keys = (await http.get("/.well-known/amora-keys")).json()["keys"]
        cert = pki.issue_client_cert(DEVICE)
        tls = TlsConfig(ca_file=str(pki.ca_file), cert_file=str(cert.cert_file), key_file=str(cert.key_file))
        agent = Agent(
            device_id=DEVICE,
            signing_key=device_key,
            trusted_keys=[VerifyKey.from_raw(base64.b64decode(k["public_key"])) for k in keys],
            endpoints=[BrokerEndpoint(host=broker.host, port=broker.device_port)],
            ssl_context=client_ssl_context(tls),
            state_dir=work / "agent",
            player=SimulatedPlayer(),
            options=AgentOptions(durable=False),
        )
        relay_session, _, _ = await api.session(RELAY_USER)
        creds = relay_session["broker"]
        async with agent:
            await asyncio.wait_for(agent.wait_online(), _WAIT_S)
            relay = await RawMqtt.connect(
                broker.host,
                broker.app_port,
                ssl_context=broker.client_context(),
                client_id=creds["client_id"],
                username=creds["username"],
                password=creds["password"],
            )
            try:
                await relay.subscribe(responses_topic(DEVICE))
                return await _rounds(
                    api, admin, agent=agent, relay=relay, device_key=device_key.public_key, rounds=rounds
                )
            finally:
                relay.close()


def run(*, rounds: int = 20) -> dict[str, Any]:
    """Measure ``rounds`` logout/unlink -> device refusal round trips on a fresh broker and authz."""
    from amora_devtools.broker import start_broker  # noqa: PLC0415
    from amora_devtools.pki import DevPKI  # noqa: PLC0415
    from amora_devtools.stack import start_authz  # noqa: PLC0415

    raise_fd_limit()
    with tempfile.TemporaryDirectory(prefix="amora-bench-device-revoke-") as tmp:
        work = Path(tmp)
        pki = DevPKI.create(work / "pki")
        with start_broker(work / "brokers", pki) as broker:
            authz, url = start_authz(
                work / "authz", pki, [broker], users=[USER, RELAY_USER, "admin"], rate_limits=False
            )
            try:
                figures = asyncio.run(_measure(url, pki, broker, work, rounds))
            finally:
                authz.stop()
    figures["target_p99_under_1s"] = figures["to_device"]["p99_ms"] < 1000
    figures["summary"] = (
        f"logout/unlink API call -> the agent holds the new session list: p50 {figures['to_device']['p50_ms']} ms, "
        f"p99 {figures['to_device']['p99_ms']} ms, max {figures['to_device']['max_ms']} ms over {rounds} rounds "
        f"(target p99 < 1 s: {'met' if figures['target_p99_under_1s'] else 'missed'}); the old grant relayed "
        f"through another live session was refused as revoked in {figures['relayed_old_grant_refused']}/{rounds}."
    )
    return figures


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args(argv)
    figures = run(rounds=args.rounds)
    figures.pop("latency_sets", None)
    sys.stdout.write(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
