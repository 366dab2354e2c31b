"""The compatibility vectors: messages of newer senders, with keys this version does not know."""

from __future__ import annotations

from typing import Any

import msgspec
from _vectors_common import (
    AUTHZ_KEY,
    DEVICE,
    DEVICE_KEY,
    NOW,
    SESSION,
    SESSION_KEY,
    make_command,
    make_envelope,
    make_vector,
    resign,
)

import amora_protocol as ap


def compatibility_vectors(grant: bytes) -> list[dict[str, Any]]:
    """Newer senders' messages: keys this version does not know, which receivers must ignore.

    A command from a newer app (unknown keys in the header, the command and its action) and a
    response from a newer device (an unknown key in the body), each validly signed.
    """
    authz = {"authz_public_key_hex": AUTHZ_KEY.public_key.raw.hex()}
    cmd_t, resp_t = ap.commands_topic(DEVICE), ap.responses_topic(DEVICE)
    command = make_command(ap.SetVolume(volume=30), 900)
    parsed = ap.parse_envelope(make_envelope(cmd_t, command, SESSION_KEY, SESSION, seq=900, grant=grant))
    header = msgspec.msgpack.encode({**msgspec.msgpack.decode(parsed.header_bytes), "x-future": "ignored"})
    body_map = msgspec.to_builtins(command)
    body_map["action"] = {**body_map["action"], "x-future": True}
    body = msgspec.msgpack.encode({**body_map, "x-future": {"nested": [1, 2]}})
    response = ap.CommandResponse(
        command_id=command.id, device_id=DEVICE, status=ap.CommandStatus.SUCCEEDED, at_ms=NOW - 50, state_version=43
    )
    resp = ap.parse_envelope(make_envelope(resp_t, response, DEVICE_KEY, DEVICE, seq=901))
    resp_body = msgspec.msgpack.encode({**msgspec.to_builtins(response), "x-future": "ignored"})
    return [
        make_vector(
            "command-unknown-keys",
            cmd_t,
            resign(cmd_t, header, body, SESSION_KEY),
            SESSION_KEY,
            "valid",
            message=command,
            canonical=False,  # type: ignore[arg-type]
            **authz,
        ),
        make_vector(
            "response-unknown-key",
            resp_t,
            resign(resp_t, resp.header_bytes, resp_body, DEVICE_KEY),
            DEVICE_KEY,
            "valid",
            message=response,
            canonical=False,  # type: ignore[arg-type]
        ),
    ]
