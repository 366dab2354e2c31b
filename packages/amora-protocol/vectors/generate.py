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
from _vectors_common import (
    AUTHZ_KEY,
    DEVICE,
    DEVICE_ENC,
    DEVICE_KEY,
    NOW,
    OTHER_KEY,
    SESSION,
    SESSION_KEY,
    flip,
    make_command,
    make_envelope,
    make_grant,
    make_vector,
)
from _vectors_compat import compatibility_vectors
from _vectors_spec import spec_vectors

import amora_protocol as ap


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


def build() -> list[dict[str, Any]]:  # noqa: PLR0915 - one flat list reads best
    """Return every vector."""
    out: list[dict[str, Any]] = []
    authz = {"authz_public_key_hex": AUTHZ_KEY.public_key.raw.hex()}
    state_t, cmd_t = ap.state_topic(DEVICE), ap.commands_topic(DEVICE)
    resp_t, conn_t = ap.responses_topic(DEVICE), ap.connection_topic(DEVICE)

    state = _state()
    state_env = make_envelope(state_t, state, DEVICE_KEY, DEVICE, seq=1)
    out.append(make_vector("state", state_t, state_env, DEVICE_KEY, "valid", message=state))
    state_json = make_envelope(state_t, state, DEVICE_KEY, DEVICE, seq=2, codec=ap.Codec.JSON)
    out.append(
        make_vector(
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
        make_vector(
            "connection-offline",
            conn_t,
            make_envelope(conn_t, conn, DEVICE_KEY, DEVICE, seq=3),
            DEVICE_KEY,
            "valid",
            message=conn,
        )
    )
    resp = ap.CommandResponse(
        command_id=make_command(ap.Pause(), 1).id,
        device_id=DEVICE,
        status=ap.CommandStatus.REJECTED,
        at_ms=NOW - 100,
        reason=ap.RejectReason.VERSION_MISMATCH,
        state_version=42,
    )
    out.append(
        make_vector(
            "response",
            resp_t,
            make_envelope(resp_t, resp, DEVICE_KEY, DEVICE, seq=4),
            DEVICE_KEY,
            "valid",
            message=resp,
        )
    )

    grant = make_grant()
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
        cmd = make_command(action, n)
        env = make_envelope(cmd_t, cmd, SESSION_KEY, SESSION, seq=n, grant=grant)
        out.append(
            make_vector(
                f"command-{action.__struct_config__.tag}",
                cmd_t,
                env,
                SESSION_KEY,
                "valid",
                message=cmd,
                **authz,
            )
        )

    sealed_cmd = make_command(ap.SetVolume(volume=20), 100)
    sealed_env = make_envelope(
        cmd_t, sealed_cmd, SESSION_KEY, SESSION, seq=100, grant=grant, seal_to=DEVICE_ENC.public_key
    )
    out.append(
        make_vector(
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
        make_vector(
            "tampered-body",
            state_t,
            flip(state_env, len(state_env) - 70),
            DEVICE_KEY,
            "BadSignature",
        )
    )
    out.append(
        make_vector(
            "tampered-header",
            state_t,
            flip(state_env, header_len_offset + 1 + 30),
            DEVICE_KEY,
            "BadSignature",
        )
    )
    out.append(make_vector("wrong-topic", ap.state_topic("player-0002"), state_env, DEVICE_KEY, "BadSignature"))
    out.append(make_vector("type-not-for-topic", conn_t, state_env, DEVICE_KEY, "TopicMismatch"))
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
    out.append(make_vector("wrong-key", state_t, forged, DEVICE_KEY, "BadSignature"))
    out.append(
        make_vector(
            "unknown-key",
            state_t,
            make_envelope(state_t, state, OTHER_KEY, DEVICE, seq=5),
            DEVICE_KEY,
            "UnknownKey",
        )
    )
    expired = make_envelope(state_t, state, DEVICE_KEY, DEVICE, seq=6, expires_at_ms=NOW - 1)
    out.append(make_vector("expired-state", state_t, expired, DEVICE_KEY, "Expired"))
    old_cmd = ap.Command(id="old-1", issued_at_ms=NOW - 60_000, expires_at_ms=NOW - 30_000, action=ap.Pause())
    out.append(
        make_vector(
            "expired-command",
            cmd_t,
            make_envelope(cmd_t, old_cmd, SESSION_KEY, SESSION, seq=200, grant=grant),
            SESSION_KEY,
            "Expired",
            **authz,
        )
    )
    no_grant = make_envelope(cmd_t, make_command(ap.Pause(), 300), SESSION_KEY, SESSION, seq=300)
    out.append(make_vector("command-without-grant", cmd_t, no_grant, SESSION_KEY, "Unauthorized", **authz))
    other_dev_t = ap.commands_topic("player-0002")
    other_dev = make_envelope(other_dev_t, make_command(ap.Pause(), 301), SESSION_KEY, SESSION, seq=301, grant=grant)
    out.append(
        make_vector(
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
    big = make_envelope(state_t, oversize, DEVICE_KEY, DEVICE, seq=7)
    big = big + b"\x00" * (ap.DEFAULT_MAX_SIZE + 1 - len(big))
    out.append(make_vector("oversize", state_t, big, DEVICE_KEY, "TooLarge"))
    out.append(make_vector("truncated", state_t, state_env[: len(state_env) // 2], DEVICE_KEY, "SchemaError"))
    wrong_type = msgspec.msgpack.encode({**msgspec.to_builtins(state), "version": "forty-two"})
    parsed = ap.parse_envelope(state_env)
    wt = msgspec.msgpack.encode(
        (
            parsed.header_bytes,
            wrong_type,
            DEVICE_KEY.sign(ap.signed_bytes(state_t, parsed.header_bytes, wrong_type)),
        )
    )
    out.append(make_vector("wrong-type", state_t, wt, DEVICE_KEY, "SchemaError"))
    out.extend(spec_vectors(state, grant))
    out.extend(compatibility_vectors(grant))
    return out


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
        make_vector("session-list", topic, token, AUTHZ_KEY, "valid", message=listed, **authz),
        make_vector(
            "session-list-empty",
            topic,
            ap.issue_session_list(revoked, AUTHZ_KEY),
            AUTHZ_KEY,
            "valid",
            message=revoked,
            **authz,
        ),
        make_vector(
            "session-list-other-device", ap.sessions_topic("player-0002"), token, AUTHZ_KEY, "TopicMismatch", **authz
        ),
        make_vector(
            "session-list-unknown-key",
            topic,
            ap.issue_session_list(listed, OTHER_KEY),
            OTHER_KEY,
            "UnknownKey",
            **authz,
        ),
        make_vector("session-list-tampered", topic, flip(token, 10), AUTHZ_KEY, "BadSignature", **authz),
        # A grant signature over the same bytes: the domain separation makes it useless here.
        make_vector("session-list-grant-domain", topic, cross, AUTHZ_KEY, "BadSignature", **authz),
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
