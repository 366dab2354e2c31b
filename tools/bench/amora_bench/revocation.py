"""Revocation: from the admin API call that unlinks a user's device to the cut subscription.

A session subscribed to a device's state topic; the admin unlinks the user and the device
(``DELETE /v1/admin/users/{user}/devices/{device}``); the authz service removes the role from
the user's broker group, and mosquitto disconnects the session, which reconnects without the
right. Timed from just before the call to the moment the broker closes the connection; then
the link is restored and the next round begins.

Run alone: ``python -m amora_bench.revocation --rounds 20``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from amora_bench._common import latency_summary, raise_fd_limit
from amora_bench._rawmqtt import RawMqtt, RawMqttError

__all__ = ["run"]

USER = "rita"
DEVICE = "revoke-me"


async def _rounds(url: str, admin: str, broker: Any, ca_context: Any, rounds: int) -> dict[str, Any]:  # noqa: ANN401
    from amora_protocol import EncryptionKey, SigningKey, state_topic  # noqa: PLC0415

    headers = {"Authorization": f"Bearer {admin}"}
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        body = {
            "device_id": DEVICE,
            "signing_key": base64.b64encode(SigningKey.generate().public_key.raw).decode(),
            "encryption_key": base64.b64encode(EncryptionKey.generate().public_key.raw).decode(),
        }
        (await http.post("/v1/admin/devices", json=body, headers=headers)).raise_for_status()
        (await http.put(f"/v1/admin/users/{USER}/devices/{DEVICE}", headers=headers)).raise_for_status()
        token = (await http.post("/dev-issuer/token", json={"username": USER})).json()["access_token"]
        session_body = {
            "signing_key": base64.b64encode(SigningKey.generate().public_key.raw).decode(),
            "encryption_key": base64.b64encode(EncryptionKey.generate().public_key.raw).decode(),
        }
        response = await http.post("/v1/sessions", json=session_body, headers={"Authorization": f"Bearer {token}"})
        response.raise_for_status()
        creds = response.json()["broker"]
        cut_ms: list[float] = []
        api_ms: list[float] = []
        refused_after = 0
        for _ in range(rounds):
            conn = await RawMqtt.connect(
                broker.host,
                broker.app_port,
                ssl_context=ca_context,
                client_id=creds["client_id"],
                username=creds["username"],
                password=creds["password"],
            )
            await conn.subscribe(state_topic(DEVICE))
            closed = asyncio.create_task(conn.wait_closed_by_peer(), name="bench.revocation-watch")
            start = time.perf_counter()
            unlinked = await http.delete(f"/v1/admin/users/{USER}/devices/{DEVICE}", headers=headers)
            api_ms.append((time.perf_counter() - start) * 1000)
            unlinked.raise_for_status()
            async with asyncio.timeout(10):
                await closed
            cut_ms.append((time.perf_counter() - start) * 1000)
            conn.close()
            # The same credential may still connect, but the subscription is now refused.
            again = await RawMqtt.connect(
                broker.host,
                broker.app_port,
                ssl_context=ca_context,
                client_id=creds["client_id"],
                username=creds["username"],
                password=creds["password"],
            )
            try:
                await again.subscribe(state_topic(DEVICE))
            except RawMqttError:
                refused_after += 1
            again.close()
            (await http.put(f"/v1/admin/users/{USER}/devices/{DEVICE}", headers=headers)).raise_for_status()
    return {
        "rounds": rounds,
        "api_call": latency_summary(api_ms),
        "cut": latency_summary(cut_ms),
        "resubscribe_refused": refused_after,
        "latency_sets": {"unlink API call -> subscription cut": [round(x, 3) for x in cut_ms]},
    }


def run(*, rounds: int = 20) -> dict[str, Any]:
    """Measure ``rounds`` unlink -> cut round trips on a fresh broker and authz service."""
    from amora_devtools.broker import start_broker  # noqa: PLC0415
    from amora_devtools.pki import DevPKI  # noqa: PLC0415
    from amora_devtools.stack import start_authz  # noqa: PLC0415

    raise_fd_limit()
    with tempfile.TemporaryDirectory(prefix="amora-bench-revoke-") as tmp:
        work = Path(tmp)
        pki = DevPKI.create(work / "pki")
        with start_broker(work / "brokers", pki) as broker:
            authz, url = start_authz(work / "authz", pki, [broker], users=[USER, "admin"], rate_limits=False)
            try:
                admin = httpx.post(f"{url}/dev-issuer/token", json={"username": "admin"}, timeout=10).json()
                figures = asyncio.run(_rounds(url, admin["access_token"], broker, broker.client_context(), rounds))
            finally:
                authz.stop()
    figures["target_p99_under_1s"] = figures["cut"]["p99_ms"] < 1000
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
