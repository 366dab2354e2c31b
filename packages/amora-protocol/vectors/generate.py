"""Regenerate ``envelopes.json`` and ``session_lists.json``: ``python vectors/generate.py`` from the package folder.

Keys come from fixed seeds and every time is fixed, so unsealed vectors are reproduced byte for
byte (Ed25519 is deterministic); sealed vectors differ run to run only in HPKE's ephemeral key.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import msgspec

import amora_protocol as ap

NOW = 1_790_000_000_000  # 2026-09-21T...Z, the verification time of every vector
DEVICE = "player-0001"
SESSION = "sess-0123456789abcdef"


def _key(seed: int) -> ap.SigningKey:
    return ap.SigningKey.from_raw(bytes([seed]) * 32)


DEVICE_KEY = _key(1)
SESSION_KEY = _key(2)
AUTHZ_KEY = _key(3)
OTHER_KEY = _key(4)
DEVICE_ENC = ap.EncryptionKey.from_raw(bytes([5]) * 32)


def _state() -> ap.DeviceState:
    return ap.DeviceState(
        device_id=DEVICE,
        version=42,
        status=ap.PlaybackStatus.PLAY,
        sampled_at_ms=NOW - 500,
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
        options=ap.PlayerOptions(repeat=True),
        queue_length=5,
        queue_version=12,
    )


def _grant(key: ap.SigningKey = AUTHZ_KEY, **changes: object) -> bytes:
    """The session's grant, or (``changes``) one broken in a single way."""
    grant = ap.Grant(
        grant_id="grant-1",
        subject="user-alice",
        session_id=SESSION,
        signing_key=SESSION_KEY.public_key.raw,
        devices=(DEVICE,),
        rights=(ap.Right.WATCH, ap.Right.CONTROL),
        issued_at_ms=NOW - 60_000,
        expires_at_ms=NOW + 3_600_000,
    )
    return ap.issue_grant(msgspec.structs.replace(grant, **changes), key)


def _command(action: ap.Action, n: int) -> ap.Command:
    return ap.Command(
        id=f"0190a000-0000-7000-8000-{n:012d}",
        issued_at_ms=NOW - 100,
        expires_at_ms=NOW + 30_000,
        action=action,
    )


def _envelope(  # noqa: PLR0913
    topic: str,
    message: ap.Message,
    key: ap.SigningKey,
    sender: str,
    *,
    seq: int,
    codec: ap.Codec = ap.Codec.MSGPACK,
    grant: bytes | None = None,
    seal_to: ap.EncryptionPublicKey | None = None,
    expires_at_ms: int | None = None,
) -> bytes:
    if expires_at_ms is None and isinstance(message, ap.Command):
        expires_at_ms = message.expires_at_ms
    return ap.encode_envelope(
        topic,
        message,
        signing_key=key,
        sender=sender,
        epoch=0x1234_5678_9ABC,
        seq=seq,
        now_ms=NOW - 100,
        expires_at_ms=expires_at_ms,
        grant=grant,
        codec=codec,
        seal_to=seal_to,
    )


def _vector(  # noqa: PLR0913
    name: str,
    topic: str,
    payload: bytes,
    signer: ap.SigningKey,
    expect: str,
    *,
    codec: ap.Codec = ap.Codec.MSGPACK,
    message: ap.Message | None = None,
    **extra: str | int | bool,
) -> dict[str, Any]:
    vector: dict[str, Any] = {
        "name": name,
        "topic": topic,
        "content_type": codec.value,
        "envelope_hex": payload.hex(),
        "signer_public_key_hex": signer.public_key.raw.hex(),
        "signer_private_key_hex": signer.to_raw().hex(),
        "expect": expect,
        "now": NOW,
    }
    if message is not None:
        vector["message"] = json.loads(msgspec.json.encode(message))
    vector.update(extra)
    return vector


def _flip(payload: bytes, index: int) -> bytes:
    return payload[:index] + bytes([payload[index] ^ 0x01]) + payload[index + 1 :]


def build() -> list[dict[str, Any]]:  # noqa: PLR0915 - one flat list reads best
    """Return every vector."""
    out: list[dict[str, Any]] = []
    authz = {"authz_public_key_hex": AUTHZ_KEY.public_key.raw.hex()}
    state_t, cmd_t = ap.state_topic(DEVICE), ap.commands_topic(DEVICE)
    resp_t, conn_t = ap.responses_topic(DEVICE), ap.connection_topic(DEVICE)

    state = _state()
    state_env = _envelope(state_t, state, DEVICE_KEY, DEVICE, seq=1)
    out.append(_vector("state", state_t, state_env, DEVICE_KEY, "valid", message=state))
    state_json = _envelope(state_t, state, DEVICE_KEY, DEVICE, seq=2, codec=ap.Codec.JSON)
    out.append(
        _vector(
            "state-json",
            state_t,
            state_json,
            DEVICE_KEY,
            "valid",
            codec=ap.Codec.JSON,
            message=state,
        )
    )
    conn = ap.ConnectionStatus(device_id=DEVICE, online=False, at_ms=NOW - 100, reason="will")
    out.append(
        _vector(
            "connection-offline",
            conn_t,
            _envelope(conn_t, conn, DEVICE_KEY, DEVICE, seq=3),
            DEVICE_KEY,
            "valid",
            message=conn,
        )
    )
    resp = ap.CommandResponse(
        command_id=_command(ap.Pause(), 1).id,
        device_id=DEVICE,
        status=ap.CommandStatus.REJECTED,
        at_ms=NOW - 100,
        reason=ap.RejectReason.VERSION_MISMATCH,
        state_version=42,
    )
    out.append(
        _vector(
            "response",
            resp_t,
            _envelope(resp_t, resp, DEVICE_KEY, DEVICE, seq=4),
            DEVICE_KEY,
            "valid",
            message=resp,
        )
    )

    grant = _grant()
    actions: list[ap.Action] = [
        ap.Play(),
        ap.Pause(),
        ap.Toggle(),
        ap.Stop(),
        ap.Next(),
        ap.Previous(),
        ap.Seek(position_ms=90_000),
        ap.SetVolume(volume=55),
        ap.ChangeVolume(delta=-5),
        ap.PlayQueueItem(position=3),
        ap.Ping(),
    ]
    for n, action in enumerate(actions, start=1):
        cmd = _command(action, n)
        env = _envelope(cmd_t, cmd, SESSION_KEY, SESSION, seq=n, grant=grant)
        out.append(
            _vector(
                f"command-{action.__struct_config__.tag}",
                cmd_t,
                env,
                SESSION_KEY,
                "valid",
                message=cmd,
                **authz,
            )
        )

    sealed_cmd = _command(ap.SetVolume(volume=20), 100)
    sealed_env = _envelope(cmd_t, sealed_cmd, SESSION_KEY, SESSION, seq=100, grant=grant, seal_to=DEVICE_ENC.public_key)
    out.append(
        _vector(
            "command-sealed",
            cmd_t,
            sealed_env,
            SESSION_KEY,
            "valid",
            message=sealed_cmd,
            recipient_private_key_hex=DEVICE_ENC.to_raw().hex(),
            plaintext_hex=msgspec.msgpack.encode(sealed_cmd).hex(),
            **authz,
        )
    )

    # Negative vectors.
    header_len_offset = 2  # msgpack: fixarray(3), then bin8 marker + length byte, then header
    out.append(
        _vector(
            "tampered-body",
            state_t,
            _flip(state_env, len(state_env) - 70),
            DEVICE_KEY,
            "BadSignature",
        )
    )
    out.append(
        _vector(
            "tampered-header",
            state_t,
            _flip(state_env, header_len_offset + 1 + 30),
            DEVICE_KEY,
            "BadSignature",
        )
    )
    out.append(_vector("wrong-topic", ap.state_topic("player-0002"), state_env, DEVICE_KEY, "BadSignature"))
    out.append(_vector("type-not-for-topic", conn_t, state_env, DEVICE_KEY, "TopicMismatch"))
    # Signed by another key that claims the device's key id: the signature cannot verify.
    forged = ap.encode_envelope(state_t, state, signing_key=OTHER_KEY, sender=DEVICE, epoch=1, seq=1, now_ms=NOW - 100)
    parsed = ap.parse_envelope(forged)
    forged_header = msgspec.msgpack.encode(msgspec.structs.replace(parsed.header, kid=DEVICE_KEY.kid))
    forged = msgspec.msgpack.encode(
        (
            forged_header,
            parsed.body,
            OTHER_KEY.sign(ap.signed_bytes(state_t, forged_header, parsed.body)),
        )
    )
    out.append(_vector("wrong-key", state_t, forged, DEVICE_KEY, "BadSignature"))
    out.append(
        _vector(
            "unknown-key",
            state_t,
            _envelope(state_t, state, OTHER_KEY, DEVICE, seq=5),
            DEVICE_KEY,
            "UnknownKey",
        )
    )
    expired = _envelope(state_t, state, DEVICE_KEY, DEVICE, seq=6, expires_at_ms=NOW - 1)
    out.append(_vector("expired-state", state_t, expired, DEVICE_KEY, "Expired"))
    old_cmd = ap.Command(id="old-1", issued_at_ms=NOW - 60_000, expires_at_ms=NOW - 30_000, action=ap.Pause())
    out.append(
        _vector(
            "expired-command",
            cmd_t,
            _envelope(cmd_t, old_cmd, SESSION_KEY, SESSION, seq=200, grant=grant),
            SESSION_KEY,
            "Expired",
            **authz,
        )
    )
    no_grant = _envelope(cmd_t, _command(ap.Pause(), 300), SESSION_KEY, SESSION, seq=300)
    out.append(_vector("command-without-grant", cmd_t, no_grant, SESSION_KEY, "Unauthorized", **authz))
    other_dev_t = ap.commands_topic("player-0002")
    other_dev = _envelope(other_dev_t, _command(ap.Pause(), 301), SESSION_KEY, SESSION, seq=301, grant=grant)
    out.append(
        _vector(
            "command-device-not-in-grant",
            other_dev_t,
            other_dev,
            SESSION_KEY,
            "Unauthorized",
            **authz,
        )
    )
    oversize = ap.DeviceState(
        device_id=DEVICE,
        version=1,
        status=ap.PlaybackStatus.STOP,
        sampled_at_ms=NOW,
        error="x" * 1000,
    )
    big = _envelope(state_t, oversize, DEVICE_KEY, DEVICE, seq=7)
    big = big + b"\x00" * (ap.DEFAULT_MAX_SIZE + 1 - len(big))
    out.append(_vector("oversize", state_t, big, DEVICE_KEY, "TooLarge"))
    out.append(_vector("truncated", state_t, state_env[: len(state_env) // 2], DEVICE_KEY, "SchemaError"))
    wrong_type = msgspec.msgpack.encode({**msgspec.to_builtins(state), "version": "forty-two"})
    parsed = ap.parse_envelope(state_env)
    wt = msgspec.msgpack.encode(
        (
            parsed.header_bytes,
            wrong_type,
            DEVICE_KEY.sign(ap.signed_bytes(state_t, parsed.header_bytes, wrong_type)),
        )
    )
    out.append(_vector("wrong-type", state_t, wt, DEVICE_KEY, "SchemaError"))
    out.extend(_spec_vectors(state, grant))
    out.extend(_compatibility_vectors(grant))
    return out


OTHER_ENC = ap.EncryptionKey.from_raw(bytes([6]) * 32)


def _resign(topic: str, header: bytes, body: bytes, key: ap.SigningKey) -> bytes:
    """A msgpack envelope of hand-made header/body bytes, validly signed."""
    return msgspec.msgpack.encode((header, body, key.sign(ap.signed_bytes(topic, header, body))))


def _spec_vectors(state: ap.DeviceState, grant: bytes) -> list[dict[str, Any]]:  # noqa: PLR0915 - one flat list
    """Vectors for rules the README states explicitly (content types, base64, limits, grants)."""
    out: list[dict[str, Any]] = []
    authz = {"authz_public_key_hex": AUTHZ_KEY.public_key.raw.hex()}
    state_t, cmd_t = ap.state_topic(DEVICE), ap.commands_topic(DEVICE)
    env = _envelope(state_t, state, DEVICE_KEY, DEVICE, seq=400)
    parsed = ap.parse_envelope(env)

    # Content types: absent means msgpack; anything else is refused.
    absent = _vector("content-type-absent", state_t, env, DEVICE_KEY, "valid", message=state)
    absent["content_type"] = None
    out.append(absent)
    unknown = _vector("content-type-unknown", state_t, env, DEVICE_KEY, "SchemaError")
    unknown["content_type"] = "application/json"
    out.append(unknown)

    # The size limit is inclusive: a payload of exactly max_size bytes is accepted.
    out.append(_vector("size-limit-exact", state_t, env, DEVICE_KEY, "valid", message=state, max_size=len(env)))  # type: ignore[arg-type]
    out.append(_vector("size-limit-one-over", state_t, env, DEVICE_KEY, "TooLarge", max_size=len(env) - 1))  # type: ignore[arg-type]

    # Outer layer and header.
    out.append(
        _vector(
            "signature-63-bytes",
            state_t,
            msgspec.msgpack.encode((parsed.header_bytes, parsed.body, parsed.signature[:63])),
            DEVICE_KEY,
            "SchemaError",
        )
    )
    out.append(
        _vector(
            "outer-four-elements",
            state_t,
            msgspec.msgpack.encode((parsed.header_bytes, parsed.body, parsed.signature, b"")),
            DEVICE_KEY,
            "SchemaError",
        )
    )
    header_map = msgspec.msgpack.decode(parsed.header_bytes)
    v2 = msgspec.msgpack.encode({**header_map, "v": 2})
    out.append(_vector("version-2", state_t, _resign(state_t, v2, parsed.body, DEVICE_KEY), DEVICE_KEY, "SchemaError"))
    extra = msgspec.msgpack.encode({**header_map, "x-future": "ignored"})
    out.append(
        _vector(
            "header-unknown-key",
            state_t,
            _resign(state_t, extra, parsed.body, DEVICE_KEY),
            DEVICE_KEY,
            "valid",
            message=state,
            canonical=False,  # type: ignore[arg-type]
        )
    )
    body_extra = msgspec.msgpack.encode({**msgspec.to_builtins(state), "x-future": [1, 2]})
    out.append(
        _vector(
            "body-unknown-key",
            state_t,
            _resign(state_t, parsed.header_bytes, body_extra, DEVICE_KEY),
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
        _vector(
            "body-missing-key",
            state_t,
            _resign(state_t, parsed.header_bytes, missing, DEVICE_KEY),
            DEVICE_KEY,
            "SchemaError",
        )
    )

    # JSON: standard base64 with padding; unknown outer keys are ignored.
    json_env = _envelope(state_t, state, DEVICE_KEY, DEVICE, seq=401, codec=ap.Codec.JSON)
    outer = msgspec.json.decode(json_env)
    out.append(
        _vector(
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
        _vector(
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
            _vector(
                "json-base64-urlsafe",
                state_t,
                msgspec.json.encode(urlsafe),
                DEVICE_KEY,
                "SchemaError",
                codec=ap.Codec.JSON,
            )
        )

    # Commands in JSON, sealed or not.
    cmd = _command(ap.SetVolume(volume=30), 500)
    out.append(
        _vector(
            "command-json",
            cmd_t,
            _envelope(cmd_t, cmd, SESSION_KEY, SESSION, seq=500, grant=grant, codec=ap.Codec.JSON),
            SESSION_KEY,
            "valid",
            codec=ap.Codec.JSON,
            message=cmd,
            **authz,
        )
    )
    sealed_cmd = _command(ap.Seek(position_ms=1_000), 501)
    out.append(
        _vector(
            "command-sealed-json",
            cmd_t,
            _envelope(
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
    sealed = _envelope(
        cmd_t, _command(ap.Pause(), 502), SESSION_KEY, SESSION, seq=502, grant=grant, seal_to=DEVICE_ENC.public_key
    )
    out.append(
        _vector(
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
        _vector(
            "sealed-body-does-not-open",
            cmd_t,
            _resign(cmd_t, sp.header_bytes, broken, SESSION_KEY),
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
        payload = _envelope(cmd_t, _command(ap.Pause(), n), key, sender, seq=n, grant=token)
        out.append(_vector(name, cmd_t, payload, key, expect, **authz))

    cmd_with("grant-expired", _grant(expires_at_ms=NOW - 1), "Expired")
    cmd_with("grant-unknown-issuer", _grant(OTHER_KEY), "UnknownKey")
    body, kid, sig = msgspec.msgpack.decode(grant, type=tuple[bytes, str, bytes])
    cmd_with("grant-bad-signature", msgspec.msgpack.encode((body, kid, bytes([sig[0] ^ 1]) + sig[1:])), "BadSignature")
    cmd_with("grant-malformed", b"\x93\xc4\x01", "SchemaError")
    cmd_with("grant-watch-only", _grant(rights=(ap.Right.WATCH,)), "Unauthorized")
    cmd_with("grant-for-another-session", _grant(session_id="sess-other"), "Unauthorized")
    cmd_with("command-not-signed-by-grant-key", grant, "UnknownKey", key=OTHER_KEY)
    return out


def _compatibility_vectors(grant: bytes) -> list[dict[str, Any]]:
    """Newer senders' messages: keys this version does not know, which receivers must ignore.

    A command from a newer app (unknown keys in the header, the command and its action) and a
    response from a newer device (an unknown key in the body), each validly signed.
    """
    authz = {"authz_public_key_hex": AUTHZ_KEY.public_key.raw.hex()}
    cmd_t, resp_t = ap.commands_topic(DEVICE), ap.responses_topic(DEVICE)
    command = _command(ap.SetVolume(volume=30), 900)
    parsed = ap.parse_envelope(_envelope(cmd_t, command, SESSION_KEY, SESSION, seq=900, grant=grant))
    header = msgspec.msgpack.encode({**msgspec.msgpack.decode(parsed.header_bytes), "x-future": "ignored"})
    body_map = msgspec.to_builtins(command)
    body_map["action"] = {**body_map["action"], "x-future": True}
    body = msgspec.msgpack.encode({**body_map, "x-future": {"nested": [1, 2]}})
    response = ap.CommandResponse(
        command_id=command.id, device_id=DEVICE, status=ap.CommandStatus.SUCCEEDED, at_ms=NOW - 50, state_version=43
    )
    resp = ap.parse_envelope(_envelope(resp_t, response, DEVICE_KEY, DEVICE, seq=901))
    resp_body = msgspec.msgpack.encode({**msgspec.to_builtins(response), "x-future": "ignored"})
    return [
        _vector(
            "command-unknown-keys",
            cmd_t,
            _resign(cmd_t, header, body, SESSION_KEY),
            SESSION_KEY,
            "valid",
            message=command,
            canonical=False,  # type: ignore[arg-type]
            **authz,
        ),
        _vector(
            "response-unknown-key",
            resp_t,
            _resign(resp_t, resp.header_bytes, resp_body, DEVICE_KEY),
            DEVICE_KEY,
            "valid",
            message=response,
            canonical=False,  # type: ignore[arg-type]
        ),
    ]


def build_session_lists() -> list[dict[str, Any]]:
    """Session lists (``session_lists.json``): tokens, not envelopes, signed by the authz key.

    A file of their own: verifiers of envelopes (other languages, older releases) need not
    know the sessions topic.
    """
    topic = ap.sessions_topic(DEVICE)
    authz = {"authz_public_key_hex": AUTHZ_KEY.public_key.raw.hex()}
    listed = ap.SessionList(device_id=DEVICE, issued_at_ms=NOW - 1_000, sessions=(SESSION, "sess-fedcba9876543210"))
    token = ap.issue_session_list(listed, AUTHZ_KEY)
    revoked = ap.SessionList(device_id=DEVICE, issued_at_ms=NOW - 500)  # a revoked device: nobody
    body = msgspec.msgpack.encode(listed)
    cross = msgspec.msgpack.encode((body, AUTHZ_KEY.kid, AUTHZ_KEY.sign(ap.GRANT_DOMAIN + body)))
    return [
        _vector("session-list", topic, token, AUTHZ_KEY, "valid", message=listed, **authz),
        _vector(
            "session-list-empty",
            topic,
            ap.issue_session_list(revoked, AUTHZ_KEY),
            AUTHZ_KEY,
            "valid",
            message=revoked,
            **authz,
        ),
        _vector(
            "session-list-other-device", ap.sessions_topic("player-0002"), token, AUTHZ_KEY, "TopicMismatch", **authz
        ),
        _vector(
            "session-list-unknown-key",
            topic,
            ap.issue_session_list(listed, OTHER_KEY),
            OTHER_KEY,
            "UnknownKey",
            **authz,
        ),
        _vector("session-list-tampered", topic, _flip(token, 10), AUTHZ_KEY, "BadSignature", **authz),
        # A grant signature over the same bytes: the domain separation makes it useless here.
        _vector("session-list-grant-domain", topic, cross, AUTHZ_KEY, "BadSignature", **authz),
    ]


def main() -> int:
    """Write the vectors next to this script."""
    for name, vectors in (("envelopes.json", build()), ("session_lists.json", build_session_lists())):
        path = Path(__file__).with_name(name)
        path.write_text(json.dumps(vectors, indent=2) + "\n")
        sys.stdout.write(f"wrote {path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
