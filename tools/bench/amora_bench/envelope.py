"""Envelope micro-benchmark: sign+encode and decode+verify against two baselines in one run.

Baselines, measured on the same message in the same process:

* floor: bare cryptography Ed25519 sign / verify of the exact bytes the envelope signs;
* JWS: a compact JWS (alg Ed25519 per RFC 9864, joserfc) carrying the same message as JSON — what a team would
  otherwise reach for.

Run: ``hatch run bench:envelope [--seconds S] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from joserfc import jws
from joserfc.jwk import OKPKey

import amora_protocol as ap

if TYPE_CHECKING:
    from collections.abc import Callable

NOW = 1_800_000_000_000
DEVICE = "player-0001"


def _state() -> ap.DeviceState:
    return ap.DeviceState(
        device_id=DEVICE,
        version=123_456,
        status=ap.PlaybackStatus.PLAY,
        sampled_at_ms=NOW,
        elapsed_ms=61_250,
        song=ap.Song(
            file="albums/blue/01.flac",
            id=7,
            position=0,
            title="So What",
            artist="Miles Davis",
            album="Kind of Blue",
            duration_ms=562_000,
        ),
        volume=35,
        queue_length=5,
        queue_version=12,
    )


def _rate(fn: Callable[[], object], seconds: float) -> float:
    """Return calls per second of ``fn``, timed over about ``seconds`` after a warm-up."""
    for _ in range(200):
        fn()
    batch = 500
    calls = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(batch):
            fn()
        calls += batch
        now = time.perf_counter()
        if now >= deadline:
            return calls / (now - start)


def run(seconds: float = 1.0) -> dict[str, Any]:
    """Measure every path and return the figures."""
    key = ap.SigningKey.from_raw(bytes([1]) * 32)
    verify_key = key.public_key
    topic = ap.state_topic(DEVICE)
    state = _state()
    sender = ap.Sender(DEVICE, key, epoch=42)
    payload = sender.encode(topic, state, now_ms=NOW)
    env = ap.parse_envelope(payload)
    signed = ap.signed_bytes(topic, env.header_bytes, env.body)
    signature = key.sign(signed)

    jwk = OKPKey.import_key(key.to_pem())
    json_body = msgspec.json.encode(state)
    token = jws.serialize_compact({"alg": "Ed25519"}, json_body, jwk, algorithms=["Ed25519"])
    state_decoder = msgspec.json.Decoder(ap.DeviceState)

    def ours_encode() -> bytes:
        return sender.encode(topic, state, now_ms=NOW)

    def ours_decode() -> ap.Message:
        return ap.verify_envelope(payload, topic=topic, content_type=None, key=verify_key, now_ms=NOW).message

    def floor_sign() -> bytes:
        return key.sign(signed)

    def floor_verify() -> bool:
        return verify_key.verify(signature, signed)

    def jws_encode() -> str:
        return jws.serialize_compact({"alg": "Ed25519"}, msgspec.json.encode(state), jwk, algorithms=["Ed25519"])

    def jws_decode() -> ap.DeviceState:
        return state_decoder.decode(jws.deserialize_compact(token, jwk, algorithms=["Ed25519"]).payload)

    assert ours_decode() == state  # noqa: S101 - the benchmark measures a working path
    assert jws_decode() == state  # noqa: S101
    rates = {
        name: _rate(fn, seconds)
        for name, fn in {
            "floor_sign": floor_sign,
            "ours_encode": ours_encode,
            "jws_encode": jws_encode,
            "floor_verify": floor_verify,
            "ours_decode": ours_decode,
            "jws_decode": jws_decode,
        }.items()
    }
    return {
        "payload_bytes": len(payload),
        "jws_bytes": len(token),
        "ops_per_s": {k: round(v) for k, v in rates.items()},
        # Time ratios: how many times slower than the floor (target <= 1.3).
        "encode_vs_floor": round(rates["floor_sign"] / rates["ours_encode"], 3),
        "decode_vs_floor": round(rates["floor_verify"] / rates["ours_decode"], 3),
        # Speed-ups over the JWS path (target >= 1.5).
        "encode_speedup_vs_jws": round(rates["ours_encode"] / rates["jws_encode"], 3),
        "decode_speedup_vs_jws": round(rates["ours_decode"] / rates["jws_decode"], 3),
        # The most any Ed25519 envelope could gain over the JWS path: the floor's own lead.
        "floor_speedup_vs_jws_encode": round(rates["floor_sign"] / rates["jws_encode"], 3),
        "floor_speedup_vs_jws_decode": round(rates["floor_verify"] / rates["jws_decode"], 3),
    }


def report(result: dict[str, Any]) -> str:
    """Render the figures as a short text table."""
    ops = result["ops_per_s"]
    lines = [
        f"envelope: {result['payload_bytes']} B msgpack envelope, {result['jws_bytes']} B JWS",
        (
            f"  sign+encode   ours {ops['ours_encode']:>8,}/s   floor {ops['floor_sign']:>8,}/s"
            f"   jws {ops['jws_encode']:>8,}/s"
        ),
        (
            f"  decode+verify ours {ops['ours_decode']:>8,}/s   floor {ops['floor_verify']:>8,}/s"
            f"   jws {ops['jws_decode']:>8,}/s"
        ),
        (
            f"  vs floor (x slower; target <= 1.3): encode {result['encode_vs_floor']}"
            f", decode {result['decode_vs_floor']}"
        ),
        (
            f"  vs JWS (x faster; target >= 1.5):   encode {result['encode_speedup_vs_jws']}"
            f", decode {result['decode_speedup_vs_jws']}"
        ),
        (
            f"  (ceiling: the bare-Ed25519 floor itself is {result['floor_speedup_vs_jws_encode']}x / "
            f"{result['floor_speedup_vs_jws_decode']}x faster than JWS)"
        ),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measured path")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    result = run(args.seconds)
    sys.stdout.write(report(result) + "\n")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
