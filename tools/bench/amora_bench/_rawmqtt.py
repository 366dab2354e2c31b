"""A minimal MQTT 5 client over asyncio streams, for holding many connections cheaply.

Only what the connection benchmarks need: CONNECT/CONNACK, SUBSCRIBE/SUBACK, QoS 0 PUBLISH,
and reading PUBLISH packets. gmqtt carries far more state per connection; this keeps the
client's own cost out of what is measured about the broker.
"""

from __future__ import annotations

import asyncio
import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ssl

__all__ = ["RawMqtt", "RawMqttError"]


class RawMqttError(Exception):
    """The broker refused or broke the conversation."""


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str | bytes) -> bytes:
    data = s.encode() if isinstance(s, str) else s
    return struct.pack(">H", len(data)) + data


def _packet(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + _varint(len(body)) + body


async def _read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readexactly(1)
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
    return head[0], await reader.readexactly(length)


class RawMqtt:
    """One MQTT 5 connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Wrap an established, CONNACKed stream pair (use `connect`)."""
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(  # noqa: PLR0913 - the CONNECT packet's fields
        cls,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext,
        client_id: str,
        username: str,
        password: str,
        keepalive: int = 240,
        local_host: str | None = None,
    ) -> RawMqtt:
        """Open TLS, send CONNECT (clean start) and wait for a successful CONNACK.

        Raises:
            RawMqttError: The broker refused the connection.
            OSError: The TCP or TLS connection failed.
        """
        reader, writer = await asyncio.open_connection(
            host,
            port,
            ssl=ssl_context,
            server_hostname=host,
            local_addr=(local_host, 0) if local_host else None,
        )
        flags = 0x80 | 0x40 | 0x02  # username, password, clean start
        variable = _str("MQTT") + bytes([5, flags]) + struct.pack(">H", keepalive) + _varint(0)
        payload = _str(client_id) + _str(username) + _str(password)
        writer.write(_packet(0x10, variable + payload))
        try:
            kind, body = await _read_packet(reader)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            writer.close()
            raise RawMqttError(f"no CONNACK: {exc}") from exc
        if kind >> 4 != 2 or len(body) < 2 or body[1] != 0:
            writer.close()
            raise RawMqttError(f"CONNECT refused: packet {kind:#x}, reason {body[1:2].hex()}")
        return cls(reader, writer)

    async def subscribe(self, topic: str, packet_id: int = 1) -> None:
        """Subscribe at QoS 0 and wait for the SUBACK.

        Raises:
            RawMqttError: The subscription was refused.
        """
        body = struct.pack(">H", packet_id) + _varint(0) + _str(topic) + bytes([0])
        self.writer.write(_packet(0x82, body))
        kind, reply = await _read_packet(self.reader)
        if kind >> 4 != 9 or reply[-1] >= 0x80:
            raise RawMqttError(f"SUBSCRIBE refused: {reply.hex()}")

    def publish(self, topic: str, payload: bytes) -> None:
        """Send a QoS 0 PUBLISH (buffered; the event loop writes it)."""
        self.writer.write(_packet(0x30, _str(topic) + _varint(0) + payload))

    async def next_payload(self) -> bytes:
        """Wait for the next PUBLISH and return its payload (QoS 0, MQTT 5 properties skipped).

        Raises:
            asyncio.IncompleteReadError: The connection closed.
        """
        while True:
            kind, body = await _read_packet(self.reader)
            if kind >> 4 != 3:
                continue
            topic_len = struct.unpack(">H", body[:2])[0]
            pos = 2 + topic_len
            props, shift = 0, 0
            while True:
                byte = body[pos]
                pos += 1
                props |= (byte & 0x7F) << shift
                if not byte & 0x80:
                    break
                shift += 7
            return body[pos + props :]

    async def wait_closed_by_peer(self) -> None:
        """Return when the broker closes the connection (reads and drops anything else)."""
        try:
            while await self.reader.read(4096):
                pass
        except (ConnectionError, OSError):
            return

    def close(self) -> None:
        """Close the connection without DISCONNECT (like a crash)."""
        self.writer.close()
