"""CONNECT cost: a broker token checked by the amora_auth plugin against a dynsec password.

One harness broker with the broker-token plugin loaded before dynamic security (as token
mode runs it). Workers open TLS connections to the app listener, send CONNECT, wait for the
CONNACK and disconnect, as fast as they can, in alternating windows: a dynsec account's
password (PBKDF2-SHA512, mosquitto's own check) or a session's ES256 token (the plugin: JWS
parsing, signature, claims, ACL kept for the connection). Per window: CONNECTs per second
and the broker's CPU time per CONNECT (from /proc, so the client's own cost and the
machine's other load stay out of the per-CONNECT figure). TLS is in both; the difference
between the two modes is the credential check.

Run alone: ``python -m amora_bench.connect_auth --seconds 5 --rounds 2 --workers 16``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amora_bench._common import cpu_seconds, machine, raise_fd_limit
from amora_bench._rawmqtt import RawMqtt, RawMqttError

if TYPE_CHECKING:
    import ssl

    from cryptography.hazmat.primitives.asymmetric import ec

    from amora_devtools.broker import BrokerProcess

__all__ = ["run"]

_DYNSEC_USER = "bench-dynsec"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _token(key: ec.EllipticCurvePrivateKey, kid: str, username: str, clientid: str) -> str:
    """A broker token as the authz service issues one (4 rules: one device)."""
    from cryptography.hazmat.primitives import hashes  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature  # noqa: PLC0415

    now = int(time.time())
    base = "amora/devices/d1"
    claims = {
        "iss": "amora-authz",
        "aud": "amora-broker",
        "sub": "bench-user",
        "username": username,
        "clientid": clientid,
        "iat": now,
        "exp": now + 3600,
        "acl": [
            {"permission": "allow", "action": "subscribe", "topic": f"{base}/state"},
            {"permission": "allow", "action": "subscribe", "topic": f"{base}/connection"},
            {"permission": "allow", "action": "subscribe", "topic": f"{base}/responses/{clientid}"},
            {"permission": "allow", "action": "publish", "topic": f"{base}/commands"},
        ],
    }
    header = {"alg": "ES256", "typ": "JWT", "kid": kid}
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return f"{signing_input}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


async def _window(
    broker: BrokerProcess, ctx: ssl.SSLContext, creds: list[tuple[str, str, str]], seconds: float
) -> tuple[int, int, float]:
    """CONNECT/CONNACK/DISCONNECT in a loop per worker for ``seconds``: (ok, refused, broker CPU s)."""
    deadline = time.monotonic() + seconds
    counts = [0, 0]

    async def worker(clientid: str, username: str, password: str) -> None:
        while time.monotonic() < deadline:
            try:
                conn = await RawMqtt.connect(
                    broker.host,
                    broker.app_port,
                    ssl_context=ctx,
                    client_id=clientid,
                    username=username,
                    password=password,
                )
            except RawMqttError:
                counts[1] += 1
                continue
            conn.writer.write(b"\xe0\x00")  # DISCONNECT, normal
            conn.writer.close()
            await conn.writer.wait_closed()
            counts[0] += 1

    cpu_before = cpu_seconds(broker.pid)
    await asyncio.gather(*(worker(*c) for c in creds))
    return counts[0], counts[1], cpu_seconds(broker.pid) - cpu_before


def run(*, seconds: float = 5.0, rounds: int = 2, workers: int = 16) -> dict[str, Any]:
    """Alternate dynsec and token windows ``rounds`` times; figures per mode and their ratio."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415

    from amora_devtools.broker import TokenPlugin, start_broker  # noqa: PLC0415
    from amora_devtools.dynsec import dynsec  # noqa: PLC0415
    from amora_devtools.pki import DevPKI  # noqa: PLC0415

    raise_fd_limit()
    key = ec.generate_private_key(ec.SECP256R1())
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    kid = _b64(hashlib.sha256(spki).digest()[:16])
    with tempfile.TemporaryDirectory(prefix="amora-bench-connect-") as tmp:
        work = Path(tmp)
        pki = DevPKI.create(work / "pki")
        keys = work / "keys.pem"
        keys.write_bytes(
            key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        with start_broker(work / "brokers", pki, token_plugin=TokenPlugin(keys)) as broker:
            password = uuid.uuid4().hex
            dynsec(broker, [{"command": "createClient", "username": _DYNSEC_USER, "password": password}])
            dynsec_creds = [(f"bench-d{i}", _DYNSEC_USER, password) for i in range(workers)]
            token_creds = [(f"bench-t{i}", f"sess.bench{i}", "") for i in range(workers)]
            token_creds = [(c, u, _token(key, kid, u, c)) for c, u, _ in token_creds]
            ctx = broker.client_context()
            modes: dict[str, dict[str, float]] = {
                m: {"connects": 0, "refused": 0, "cpu_s": 0.0, "seconds": 0.0} for m in ("dynsec", "token")
            }
            load_before = os.getloadavg()[0]
            for _ in range(rounds):
                for mode, creds in (("dynsec", dynsec_creds), ("token", token_creds)):
                    ok, refused, cpu = asyncio.run(_window(broker, ctx, creds, seconds))
                    modes[mode]["connects"] += ok
                    modes[mode]["refused"] += refused
                    modes[mode]["cpu_s"] += cpu
                    modes[mode]["seconds"] += seconds
    figures: dict[str, Any] = {"machine": machine(), "workers": workers, "window_s": seconds, "rounds": rounds}
    for mode, m in modes.items():
        figures[mode] = {
            "connects": int(m["connects"]),
            "refused": int(m["refused"]),
            "connects_per_s": round(m["connects"] / m["seconds"], 1),
            "broker_cpu_us_per_connect": round(m["cpu_s"] / max(m["connects"], 1) * 1e6, 1),
        }
    figures["token_over_dynsec_rate"] = round(
        figures["token"]["connects_per_s"] / figures["dynsec"]["connects_per_s"], 2
    )
    figures["load_average"] = {"before": load_before, "after": os.getloadavg()[0]}
    return figures


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each window")
    parser.add_argument("--rounds", type=int, default=2, help="dynsec/token window pairs")
    parser.add_argument("--workers", type=int, default=16, help="concurrent connecting clients")
    args = parser.parse_args(argv)
    sys.stdout.write(json.dumps(run(seconds=args.seconds, rounds=args.rounds, workers=args.workers), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
