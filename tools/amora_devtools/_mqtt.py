"""A small, synchronous MQTT 5 client for the harness and its tests.

The harness needs MQTT before any package's client exists (readiness, the dynsec
admin helper, bridge checks) and over secure websockets, which gmqtt lacks. This
client covers exactly that: CONNECT (username/password, client certificate, will),
SUBSCRIBE, PUBLISH at QoS 0/1, receiving at QoS 0/1/2, over TLS or TLS websockets.
It is blocking with bounded timeouts everywhere; it is not meant for production use.

Received messages that arrive while waiting for an acknowledgement wait in a bounded
buffer (`MAX_PENDING`); when it is full the oldest is dropped (policy: the harness
only ever reads its latest answers).
"""

from __future__ import annotations

import base64
import collections
import contextlib
import os
import socket
import ssl
import struct
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Self, TypeVar

from amora_devtools._errors import MqttError, MqttRefused

if TYPE_CHECKING:
    from pathlib import Path
    from types import TracebackType

__all__ = [
    "MAX_PENDING",
    "Message",
    "MqttClient",
    "Will",
    "client_ssl_context",
]

MAX_PENDING: Final = 1000
_T = TypeVar("_T")

_CONNECT, _CONNACK, _PUBLISH, _PUBACK, _PUBREC, _PUBREL, _PUBCOMP = 1, 2, 3, 4, 5, 6, 7
_SUBSCRIBE, _SUBACK, _DISCONNECT = 8, 9, 14

# MQTT 5 property identifiers -> wire type, to skip or read any property the broker sends.
_BYTE, _U16, _U32, _VARINT, _STR, _BIN, _PAIR = range(7)
_PROPERTY_TYPES: Final = {
    0x01: _BYTE, 0x02: _U32, 0x03: _STR, 0x08: _STR, 0x09: _BIN, 0x0B: _VARINT,
    0x11: _U32, 0x12: _STR, 0x13: _U16, 0x15: _STR, 0x16: _BIN, 0x17: _BYTE,
    0x18: _U32, 0x19: _BYTE, 0x1A: _STR, 0x1C: _STR, 0x1F: _STR, 0x21: _U16,
    0x22: _U16, 0x23: _U16, 0x24: _BYTE, 0x25: _BYTE, 0x26: _PAIR, 0x27: _U32,
    0x28: _BYTE, 0x29: _BYTE, 0x2A: _BYTE,
}  # fmt: skip
_CONTENT_TYPE, _RESPONSE_TOPIC, _CORRELATION_DATA, _MESSAGE_EXPIRY = 0x03, 0x08, 0x09, 0x02
_SESSION_EXPIRY, _USER_PROPERTY = 0x11, 0x26


def client_ssl_context(
    ca_file: Path | str,
    *,
    cert_file: Path | str | None = None,
    key_file: Path | str | None = None,
) -> ssl.SSLContext:
    """A TLS 1.2+ client context that trusts ``ca_file`` and checks the host name.

    Args:
        ca_file: The development CA (`DevPKI.ca_file`).
        cert_file: Client certificate, for the device listener.
        key_file: Its private key.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cafile=str(ca_file))
    if cert_file is not None:
        ctx.load_cert_chain(str(cert_file), None if key_file is None else str(key_file))
    return ctx


@dataclass(frozen=True, slots=True)
class Message:
    """A received PUBLISH."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    content_type: str | None = None
    response_topic: str | None = None
    correlation_data: bytes | None = None
    message_expiry: int | None = None
    user_properties: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Will:
    """A Last Will for CONNECT."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value % 128, value // 128
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _str(value: str) -> bytes:
    raw = value.encode()
    return struct.pack("!H", len(raw)) + raw


def _bin(value: bytes) -> bytes:
    return struct.pack("!H", len(value)) + value


def _packet(kind: int, flags: int, body: bytes) -> bytes:
    return bytes([(kind << 4) | flags]) + _varint(len(body)) + body


class _Reader:
    """Cursor over one packet body."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise MqttError("malformed packet from broker (truncated)")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def byte(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int(struct.unpack("!H", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack("!I", self.take(4))[0])

    def varint(self) -> int:
        value, shift = 0, 0
        for _ in range(4):
            byte = self.byte()
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
        raise MqttError("malformed variable byte integer from broker")

    def string(self) -> str:
        return self.take(self.u16()).decode(errors="replace")

    def binary(self) -> bytes:
        return self.take(self.u16())

    def rest(self) -> bytes:
        return self.take(len(self.data) - self.pos)

    def properties(self) -> dict[int, object]:
        end = self.varint() + self.pos
        props: dict[int, object] = {}
        pairs: list[tuple[str, str]] = []
        while self.pos < end:
            ident = self.varint()
            kind = _PROPERTY_TYPES.get(ident)
            readers = {
                _BYTE: self.byte, _U16: self.u16, _U32: self.u32, _VARINT: self.varint,
                _STR: self.string, _BIN: self.binary,
            }  # fmt: skip
            if kind == _PAIR:
                pairs.append((self.string(), self.string()))
            elif kind is None:
                raise MqttError(f"unknown MQTT property 0x{ident:02x} from broker")
            else:
                props[ident] = readers[kind]()
        if pairs:
            props[_USER_PROPERTY] = tuple(pairs)
        return props


class _Transport:
    """Bytes over a TLS socket, with an input buffer so a timeout never loses data."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock = sock
        self.buffer = bytearray()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def fill(self, deadline: float) -> None:
        """Read more bytes into ``buffer``; raise TimeoutError past ``deadline``."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        self.sock.settimeout(remaining)
        chunk = self.sock.recv(65536)
        if not chunk:
            raise MqttError("connection closed by broker")
        self.buffer += chunk

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class _WebSocketTransport(_Transport):
    """MQTT over a TLS websocket (RFC 6455, subprotocol ``mqtt``), client side."""

    def __init__(self, sock: ssl.SSLSocket, host: str, deadline: float) -> None:
        super().__init__(sock)
        self.raw = bytearray()
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET /mqtt HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
        )
        sock.sendall(request.encode())
        while b"\r\n\r\n" not in self.raw:
            self._recv_raw(deadline)
        head, _, rest = bytes(self.raw).partition(b"\r\n\r\n")
        self.raw = bytearray(rest)
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status + b" ":
            raise MqttError(f"websocket upgrade refused: {status.decode(errors='replace')}")

    def _recv_raw(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        self.sock.settimeout(remaining)
        chunk = self.sock.recv(65536)
        if not chunk:
            raise MqttError("connection closed by broker")
        self.raw += chunk

    def send(self, data: bytes) -> None:
        mask = os.urandom(4)
        n = len(data)
        if n < 126:
            header = bytes([0x82, 0x80 | n])
        elif n < 65536:
            header = bytes([0x82, 0x80 | 126]) + struct.pack("!H", n)
        else:
            header = bytes([0x82, 0x80 | 127]) + struct.pack("!Q", n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.sock.sendall(header + mask + masked)

    def fill(self, deadline: float) -> None:
        while True:
            frame = self._parse_frame()
            if frame is not None:
                opcode, payload = frame
                if opcode in (0x0, 0x1, 0x2):
                    self.buffer += payload
                    return
                if opcode == 0x8:
                    raise MqttError("websocket closed by broker")
                if opcode == 0x9:
                    self.sock.sendall(bytes([0x8A, 0x80]) + os.urandom(4))
                continue
            self._recv_raw(deadline)

    def _parse_frame(self) -> tuple[int, bytes] | None:
        raw = self.raw
        if len(raw) < 2:
            return None
        opcode, length, pos = raw[0] & 0x0F, raw[1] & 0x7F, 2
        if length == 126:
            if len(raw) < 4:
                return None
            length, pos = struct.unpack("!H", raw[2:4])[0], 4
        elif length == 127:
            if len(raw) < 10:
                return None
            length, pos = struct.unpack("!Q", raw[2:10])[0], 10
        masked = bool(raw[1] & 0x80)
        mask = bytes(raw[pos : pos + 4]) if masked else b""
        pos += 4 if masked else 0
        if len(raw) < pos + length:
            return None
        payload = bytes(raw[pos : pos + length])
        if masked:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        del raw[: pos + length]
        return opcode, payload


def _take_packet(buffer: bytearray) -> tuple[int, int, bytes] | None:
    """Remove and return one complete packet (type, flags, body) from ``buffer``."""
    length, shift, pos = 0, 0, 1
    while True:
        if pos >= len(buffer):
            return None
        byte = buffer[pos]
        length |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            break
        shift += 7
        if shift > 21:
            raise MqttError("malformed remaining length from broker")
    if len(buffer) < pos + length:
        return None
    first = buffer[0]
    body = bytes(buffer[pos : pos + length])
    del buffer[: pos + length]
    return first >> 4, first & 0x0F, body


class MqttClient:
    """A connected MQTT 5 session. Build it with `MqttClient.connect`.

    Use it as a context manager; leaving it sends DISCONNECT and closes the socket.
    """

    def __init__(self, transport: _Transport, *, timeout: float, session_present: bool) -> None:
        """Wrap an open, accepted connection (use `connect`)."""
        self._transport = transport
        self._timeout = timeout
        self._next_id = 0
        self._pending: collections.deque[Message] = collections.deque(maxlen=MAX_PENDING)
        self.session_present = session_present

    @classmethod
    def connect(  # noqa: PLR0913 - mirrors the CONNECT packet's fields
        cls,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext,
        client_id: str = "",
        username: str | None = None,
        password: str | None = None,
        websocket: bool = False,
        clean_start: bool = True,
        session_expiry: int = 0,
        keepalive: int = 60,
        will: Will | None = None,
        timeout: float = 5.0,
    ) -> Self:
        """Open TLS (or TLS websocket), send CONNECT, and wait for CONNACK.

        Raises:
            MqttRefused: CONNACK carried a failure reason code.
            MqttError: The TLS handshake failed, the connection was closed or timed out.
        """
        deadline = time.monotonic() + timeout
        transport: _Transport | None = None
        try:
            raw = socket.create_connection((host, port), timeout=timeout)
            sock = ssl_context.wrap_socket(raw, server_hostname=host)
            transport = _WebSocketTransport(sock, host, deadline) if websocket else _Transport(sock)
            transport.send(
                _connect_packet(
                    client_id=client_id,
                    username=username,
                    password=password,
                    clean_start=clean_start,
                    session_expiry=session_expiry,
                    keepalive=keepalive,
                    will=will,
                )
            )
            client = cls(transport, timeout=timeout, session_present=False)
            kind, _flags, body = client._read(deadline)
        except MqttError:
            if transport is not None:
                transport.close()
            raise
        except (OSError, TimeoutError) as exc:
            if transport is not None:
                transport.close()
            raise MqttError(f"cannot connect to {host}:{port}: {exc!r}") from exc
        if kind != _CONNACK:
            transport.close()
            raise MqttError(f"expected CONNACK, got packet type {kind}")
        reader = _Reader(body)
        ack_flags, reason = reader.byte(), reader.byte()
        if reason >= 0x80:
            transport.close()
            raise MqttRefused(reason)
        client.session_present = bool(ack_flags & 1)
        return client

    def __enter__(self) -> Self:
        """Return self."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Disconnect."""
        self.disconnect()

    def _packet_id(self) -> int:
        self._next_id = self._next_id % 65535 + 1
        return self._next_id

    def _read(self, deadline: float) -> tuple[int, int, bytes]:
        """Return the next packet; raise TimeoutError past ``deadline``."""
        while True:
            packet = _take_packet(self._transport.buffer)
            if packet is not None:
                return packet
            self._transport.fill(deadline)

    def _handle_publish(self, flags: int, body: bytes) -> Message:
        qos, retain = (flags >> 1) & 3, bool(flags & 1)
        reader = _Reader(body)
        topic = reader.string()
        packet_id = reader.u16() if qos else 0
        props = reader.properties()
        message = Message(
            topic=topic,
            payload=reader.rest(),
            qos=qos,
            retain=retain,
            content_type=_opt(props, _CONTENT_TYPE, str),
            response_topic=_opt(props, _RESPONSE_TOPIC, str),
            correlation_data=_opt(props, _CORRELATION_DATA, bytes),
            message_expiry=_opt(props, _MESSAGE_EXPIRY, int),
            user_properties=_opt(props, _USER_PROPERTY, tuple) or (),
        )
        if qos == 1:
            self._transport.send(_packet(_PUBACK, 0, struct.pack("!H", packet_id)))
        elif qos == 2:
            self._transport.send(_packet(_PUBREC, 0, struct.pack("!H", packet_id)))
        return message

    def _await(self, kind: int, packet_id: int | None, deadline: float) -> bytes:
        """Read until a packet of ``kind`` (for ``packet_id``) arrives; keep messages."""
        while True:
            got, flags, body = self._read(deadline)
            if got == _PUBLISH:
                self._pending.append(self._handle_publish(flags, body))
            elif got == _PUBREL:
                self._transport.send(_packet(_PUBCOMP, 0, body[:2]))
            elif got == _DISCONNECT:
                reason = body[0] if body else 0
                raise MqttError(f"broker sent DISCONNECT with reason 0x{reason:02x}")
            elif got == kind and (packet_id is None or struct.unpack("!H", body[:2])[0] == packet_id):
                return body

    def subscribe(self, topic_filter: str, *, qos: int = 1, timeout: float | None = None) -> int:
        """Subscribe and return the SUBACK reason code (0-2 granted QoS, >= 0x80 refused).

        Raises:
            MqttError: No SUBACK in time, or the connection failed.
        """
        packet_id = self._packet_id()
        body = struct.pack("!H", packet_id) + b"\x00" + _str(topic_filter) + bytes([qos])
        with _Guard():
            self._transport.send(_packet(_SUBSCRIBE, 0x2, body))
            ack = self._await(_SUBACK, packet_id, self._deadline(timeout))
        reader = _Reader(ack)
        reader.u16()
        reader.properties()
        return reader.byte()

    def publish(  # noqa: PLR0913 - mirrors the PUBLISH packet's fields
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 0,
        retain: bool = False,
        content_type: str | None = None,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
        message_expiry: int | None = None,
        timeout: float | None = None,
    ) -> int:
        """Publish; at QoS 1 wait for PUBACK and return its reason code (0 for QoS 0).

        A reason code >= 0x80 means the broker refused it (0x87: not authorised). At
        QoS 0 a refused publish is dropped silently by the broker.

        Raises:
            MqttError: No PUBACK in time, or the connection failed.
        """
        if qos not in (0, 1):
            raise MqttError("this client publishes at QoS 0 or 1 only")
        props = b""
        if message_expiry is not None:
            props += bytes([_MESSAGE_EXPIRY]) + struct.pack("!I", message_expiry)
        if content_type is not None:
            props += bytes([_CONTENT_TYPE]) + _str(content_type)
        if response_topic is not None:
            props += bytes([_RESPONSE_TOPIC]) + _str(response_topic)
        if correlation_data is not None:
            props += bytes([_CORRELATION_DATA]) + _bin(correlation_data)
        packet_id = self._packet_id() if qos else 0
        body = _str(topic) + (struct.pack("!H", packet_id) if qos else b"")
        body += _varint(len(props)) + props + payload
        with _Guard():
            self._transport.send(_packet(_PUBLISH, (qos << 1) | int(retain), body))
            if not qos:
                return 0
            ack = self._await(_PUBACK, packet_id, self._deadline(timeout))
        return ack[2] if len(ack) > 2 else 0

    def receive(self, *, timeout: float | None = None) -> Message | None:
        """Return the next received message, or ``None`` if none came within ``timeout``.

        Raises:
            MqttError: The connection failed or the broker disconnected us.
        """
        if self._pending:
            return self._pending.popleft()
        deadline = self._deadline(timeout)
        with _Guard():
            try:
                while True:
                    got, flags, body = self._read(deadline)
                    if got == _PUBLISH:
                        return self._handle_publish(flags, body)
                    if got == _PUBREL:
                        self._transport.send(_packet(_PUBCOMP, 0, body[:2]))
                    elif got == _DISCONNECT:
                        reason = body[0] if body else 0
                        raise MqttError(f"broker sent DISCONNECT with reason 0x{reason:02x}")
            except TimeoutError:
                return None

    def closed_by_broker(self, *, timeout: float | None = None) -> bool:
        """Wait until the broker ends the connection; ``False`` if it is still open.

        Messages that arrive meanwhile are kept for `receive`.
        """
        deadline = self._deadline(timeout)
        while True:
            try:
                message = self.receive(timeout=max(deadline - time.monotonic(), 0.0))
            except MqttError:
                return True
            if message is None:
                return False
            self._pending.append(message)
            if time.monotonic() >= deadline:
                return False

    def disconnect(self) -> None:
        """Send DISCONNECT (reason 0, no will) and close. Idempotent; never raises."""
        with contextlib.suppress(OSError, MqttError):
            self._transport.send(_packet(_DISCONNECT, 0, b"\x00\x00"))
        self._transport.close()

    def drop(self) -> None:
        """Close the socket without DISCONNECT (the broker then sends the will)."""
        self._transport.close()

    def _deadline(self, timeout: float | None) -> float:
        return time.monotonic() + (self._timeout if timeout is None else timeout)


class _Guard(contextlib.AbstractContextManager["_Guard"]):
    """Translate socket/TLS errors and timeouts into `MqttError`."""

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if isinstance(exc, TimeoutError):
            raise MqttError("timed out waiting for the broker") from exc
        if isinstance(exc, OSError):
            raise MqttError(f"connection failed: {exc!r}") from exc


def _opt(props: dict[int, object], key: int, kind: type[_T]) -> _T | None:
    value = props.get(key)
    return value if isinstance(value, kind) else None


def _connect_packet(  # noqa: PLR0913 - the CONNECT packet's fields
    *,
    client_id: str,
    username: str | None,
    password: str | None,
    clean_start: bool,
    session_expiry: int,
    keepalive: int,
    will: Will | None,
) -> bytes:
    flags = 0x02 if clean_start else 0
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
    if username is not None:
        flags |= 0x80
    if password is not None:
        flags |= 0x40
    props = bytes([_SESSION_EXPIRY]) + struct.pack("!I", session_expiry) if session_expiry else b""
    body = _str("MQTT") + bytes([5, flags]) + struct.pack("!H", keepalive)
    body += _varint(len(props)) + props + _str(client_id)
    if will is not None:
        body += b"\x00" + _str(will.topic) + _bin(will.payload)
    if username is not None:
        body += _str(username)
    if password is not None:
        body += _bin(password.encode())
    return _packet(_CONNECT, 0, body)
