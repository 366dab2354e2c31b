"""Verify a vector file with whichever ``amora_protocol`` this interpreter imports.

Standalone on purpose (imports only ``amora_protocol`` and ``msgspec``): the compatibility
suite runs it with the current package on the previous release's vectors, and inside a
previous release's venv on the current vectors.

    python vectors_check.py VECTORS.json --mode exact      # everything as the vector says
    python vectors_check.py VECTORS.json --mode receiver   # an older receiver of newer messages

``exact``: each valid vector verifies and decodes to exactly its ``message``; each invalid
one is refused (with the named error class when this package has it). ``receiver``: each
valid vector verifies, and every field this (older) package decodes equals the vector's;
fields it does not know are ignored, which the policy requires. Invalid vectors are not
checked in that mode: an older receiver may miss a check that was added later, which is a
fix on the newer side, not a break of the wire format.

Prints one JSON object (``version``, ``checked``, ``skipped``, ``failures``); exits 1 when
anything failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import msgspec

import amora_protocol as ap


def _verify(vector: dict[str, Any]) -> object:
    payload = bytes.fromhex(vector["envelope_hex"])
    topic = vector["topic"]
    signer = ap.VerifyKey.from_raw(bytes.fromhex(vector["signer_public_key_hex"]))
    decrypt = None
    if "recipient_private_key_hex" in vector:
        decrypt = ap.EncryptionKey.from_raw(bytes.fromhex(vector["recipient_private_key_hex"]))
    max_size = vector.get("max_size", ap.DEFAULT_MAX_SIZE)
    if ap.parse_topic(topic).kind is ap.TopicKind.COMMANDS:
        authz = ap.VerifyKey.from_raw(bytes.fromhex(vector["authz_public_key_hex"]))
        return ap.verify_command(
            payload,
            topic=topic,
            content_type=vector["content_type"],
            trusted_keys={authz.kid: authz},
            now_ms=vector["now"],
            decrypt_key=decrypt,
            max_size=max_size,
        ).command
    return ap.verify_envelope(
        payload, topic=topic, content_type=vector["content_type"], key=signer, now_ms=vector["now"], max_size=max_size
    ).message


def _differences(decoded: object, expected: object, *, exact: bool, path: str = "") -> list[str]:
    """Where ``decoded`` disagrees with ``expected``.

    Keys only in ``expected`` count when ``exact``; an older receiver (not exact) drops the
    fields it does not know, as the policy says it must.
    """
    if isinstance(decoded, dict) and isinstance(expected, dict):
        found: list[str] = []
        for key, value in decoded.items():
            if key not in expected:
                found.append(f"{path}{key}: decoded {value!r}, absent from the message")
            else:
                found += _differences(value, expected[key], exact=exact, path=f"{path}{key}.")
        if exact:
            found += [
                f"{path}{key}: lost in decoding (the message says {expected[key]!r})"
                for key in expected
                if key not in decoded
            ]
        return found
    if decoded != expected:
        return [f"{path.rstrip('.')}: decoded {decoded!r}, the message says {expected!r}"]
    return []


def check(vectors: list[dict[str, Any]], mode: str) -> tuple[int, int, list[str]]:
    """Check every vector; return (checked, skipped, failures)."""
    checked = skipped = 0
    failures: list[str] = []
    for vector in vectors:
        name = vector["name"]
        if vector["expect"] != "valid":
            if mode == "receiver":
                skipped += 1
                continue
            checked += 1
            try:
                _verify(vector)
            except ap.ProtocolError as exc:
                named = getattr(ap, vector["expect"], None)
                if isinstance(named, type) and not isinstance(exc, named):
                    failures.append(f"{name}: refused with {type(exc).__name__}, expected {vector['expect']}")
            except Exception as exc:  # noqa: BLE001 - any other exception is a finding to report
                failures.append(f"{name}: {type(exc).__name__} escaped instead of a ProtocolError: {exc}")
            else:
                failures.append(f"{name}: accepted, expected {vector['expect']}")
            continue
        checked += 1
        try:
            message = _verify(vector)
        except Exception as exc:  # noqa: BLE001 - a valid vector must verify; report why not
            failures.append(f"{name}: refused ({type(exc).__name__}: {exc})")
            continue
        decoded = json.loads(msgspec.json.encode(message))
        failures += [f"{name}: {d}" for d in _differences(decoded, vector["message"], exact=mode == "exact")]
    return checked, skipped, failures


def main() -> int:
    """Check the file named on the command line; print the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("vectors", type=Path)
    parser.add_argument("--mode", choices=("exact", "receiver"), required=True)
    args = parser.parse_args()
    checked, skipped, failures = check(json.loads(args.vectors.read_text()), args.mode)
    report = {"version": ap.__version__, "checked": checked, "skipped": skipped, "failures": failures}
    sys.stdout.write(json.dumps(report) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
