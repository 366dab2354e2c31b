"""The vectors for rules the protocol README states explicitly: content types, base64, size limits, grants."""

from __future__ import annotations

from typing import Any

import msgspec
from _vectors_common import (
    AUTHZ_KEY,
    DEVICE,
    DEVICE_ENC,
    DEVICE_KEY,
    NOW,
    OTHER_ENC,
    OTHER_KEY,
    SESSION,
    SESSION_KEY,
    make_command,
    make_envelope,
    make_grant,
    make_vector,
    resign,
)

import amora_protocol as ap


def spec_vectors(state: ap.DeviceState, grant: bytes) -> list[dict[str, Any]]:  # noqa: PLR0915 - one flat list
    """Vectors for rules the README states explicitly (content types, base64, limits, grants)."""
    out: list[dict[str, Any]] = []
    authz = {"authz_public_key_hex": AUTHZ_KEY.public_key.raw.hex()}
    state_t, cmd_t = ap.state_topic(DEVICE), ap.commands_topic(DEVICE)
    env = make_envelope(state_t, state, DEVICE_KEY, DEVICE, seq=400)
    parsed = ap.parse_envelope(env)

    # Content types: absent means msgpack; anything else is refused.
    absent = make_vector("content-type-absent", state_t, env, DEVICE_KEY, "valid", message=state)
    absent["content_type"] = None
    out.append(absent)
    unknown = make_vector("content-type-unknown", state_t, env, DEVICE_KEY, "SchemaError")
    unknown["content_type"] = "application/json"
    out.append(unknown)

    # The size limit is inclusive: a payload of exactly max_size bytes is accepted.
    out.append(make_vector("size-limit-exact", state_t, env, DEVICE_KEY, "valid", message=state, max_size=len(env)))  # type: ignore[arg-type]
    out.append(make_vector("size-limit-one-over", state_t, env, DEVICE_KEY, "TooLarge", max_size=len(env) - 1))  # type: ignore[arg-type]

    # Outer layer and header.
    out.append(
        make_vector(
            "signature-63-bytes",
            state_t,
            msgspec.msgpack.encode((parsed.header_bytes, parsed.body, parsed.signature[:63])),
            DEVICE_KEY,
            "SchemaError",
        )
    )
    out.append(
        make_vector(
            "outer-four-elements",
            state_t,
            msgspec.msgpack.encode((parsed.header_bytes, parsed.body, parsed.signature, b"")),
            DEVICE_KEY,
            "SchemaError",
        )
    )
    header_map = msgspec.msgpack.decode(parsed.header_bytes)
    v2 = msgspec.msgpack.encode({**header_map, "v": 2})
    out.append(
        make_vector("version-2", state_t, resign(state_t, v2, parsed.body, DEVICE_KEY), DEVICE_KEY, "SchemaError")
    )
    extra = msgspec.msgpack.encode({**header_map, "x-future": "ignored"})
    out.append(
        make_vector(
            "header-unknown-key",
            state_t,
            resign(state_t, extra, parsed.body, DEVICE_KEY),
            DEVICE_KEY,
            "valid",
            message=state,
            canonical=False,  # type: ignore[arg-type]
        )
    )
    body_extra = msgspec.msgpack.encode({**msgspec.to_builtins(state), "x-future": [1, 2]})
    out.append(
        make_vector(
            "body-unknown-key",
            state_t,
            resign(state_t, parsed.header_bytes, body_extra, DEVICE_KEY),
            DEVICE_KEY,
            "valid",
            message=state,
            canonical=False,  # type: ignore[arg-type]
        )
    )
    no_version = msgspec.to_builtins(state)
    del no_version["version"]
    missing = msgspec.msgpack.encode(no_version)
    out.append(
        make_vector(
            "body-missing-key",
            state_t,
            resign(state_t, parsed.header_bytes, missing, DEVICE_KEY),
            DEVICE_KEY,
            "SchemaError",
        )
    )

    # JSON: standard base64 with padding; unknown outer keys are ignored.
    json_env = make_envelope(state_t, state, DEVICE_KEY, DEVICE, seq=401, codec=ap.Codec.JSON)
    outer = msgspec.json.decode(json_env)
    out.append(
        make_vector(
            "json-outer-unknown-key",
            state_t,
            msgspec.json.encode({**outer, "x-future": 1}),
            DEVICE_KEY,
            "valid",
            codec=ap.Codec.JSON,
            message=state,
            canonical=False,  # type: ignore[arg-type]
        )
    )
    out.append(
        make_vector(
            "json-base64-unpadded",
            state_t,
            msgspec.json.encode({**outer, "sig": outer["sig"].rstrip("=")}),
            DEVICE_KEY,
            "SchemaError",
            codec=ap.Codec.JSON,
        )
    )
    urlsafe = {k: v.replace("+", "-").replace("/", "_") for k, v in outer.items()}
    if urlsafe != outer:  # only a difference is a test
        out.append(
            make_vector(
                "json-base64-urlsafe",
                state_t,
                msgspec.json.encode(urlsafe),
                DEVICE_KEY,
                "SchemaError",
                codec=ap.Codec.JSON,
            )
        )

    # Commands in JSON, sealed or not.
    cmd = make_command(ap.SetVolume(volume=30), 500)
    out.append(
        make_vector(
            "command-json",
            cmd_t,
            make_envelope(cmd_t, cmd, SESSION_KEY, SESSION, seq=500, grant=grant, codec=ap.Codec.JSON),
            SESSION_KEY,
            "valid",
            codec=ap.Codec.JSON,
            message=cmd,
            **authz,
        )
    )
    sealed_cmd = make_command(ap.Seek(position_ms=1_000), 501)
    out.append(
        make_vector(
            "command-sealed-json",
            cmd_t,
            make_envelope(
                cmd_t,
                sealed_cmd,
                SESSION_KEY,
                SESSION,
                seq=501,
                grant=grant,
                codec=ap.Codec.JSON,
                seal_to=DEVICE_ENC.public_key,
            ),
            SESSION_KEY,
            "valid",
            codec=ap.Codec.JSON,
            message=sealed_cmd,
            recipient_private_key_hex=DEVICE_ENC.to_raw().hex(),
            plaintext_hex=msgspec.json.encode(sealed_cmd).hex(),
            **authz,
        )
    )

    # Seals: to another key (UnknownKey), and a ciphertext that does not open (DecryptionError).
    sealed = make_envelope(
        cmd_t, make_command(ap.Pause(), 502), SESSION_KEY, SESSION, seq=502, grant=grant, seal_to=DEVICE_ENC.public_key
    )
    out.append(
        make_vector(
            "sealed-to-another-key",
            cmd_t,
            sealed,
            SESSION_KEY,
            "UnknownKey",
            recipient_private_key_hex=OTHER_ENC.to_raw().hex(),
            **authz,
        )
    )
    sp = ap.parse_envelope(sealed)
    broken = sp.body[:-1] + bytes([sp.body[-1] ^ 0x01])  # the AEAD tag no longer matches
    out.append(
        make_vector(
            "sealed-body-does-not-open",
            cmd_t,
            resign(cmd_t, sp.header_bytes, broken, SESSION_KEY),
            SESSION_KEY,
            "DecryptionError",
            recipient_private_key_hex=DEVICE_ENC.to_raw().hex(),
            **authz,
        )
    )

    # Each way a grant can fail, and the class it fails with.
    def cmd_with(
        name: str, token: bytes, expect: str, *, key: ap.SigningKey = SESSION_KEY, sender: str = SESSION
    ) -> None:
        n = 600 + len(out)
        payload = make_envelope(cmd_t, make_command(ap.Pause(), n), key, sender, seq=n, grant=token)
        out.append(make_vector(name, cmd_t, payload, key, expect, **authz))

    cmd_with("grant-expired", make_grant(expires_at_ms=NOW - 1), "Expired")
    cmd_with("grant-unknown-issuer", make_grant(OTHER_KEY), "UnknownKey")
    body, kid, sig = msgspec.msgpack.decode(grant, type=tuple[bytes, str, bytes])
    cmd_with("grant-bad-signature", msgspec.msgpack.encode((body, kid, bytes([sig[0] ^ 1]) + sig[1:])), "BadSignature")
    cmd_with("grant-malformed", b"\x93\xc4\x01", "SchemaError")
    cmd_with("grant-watch-only", make_grant(rights=(ap.Right.WATCH,)), "Unauthorized")
    cmd_with("grant-for-another-session", make_grant(session_id="sess-other"), "Unauthorized")
    cmd_with("command-not-signed-by-grant-key", grant, "UnknownKey", key=OTHER_KEY)
    return out
