"""A stand-in for the authz service's session API, for the SDK tests that shape its answers.

Real HTTP on loopback, real dynsec clients on the brokers, real signed grants; it can answer
429s, shift its clock, expire sessions, so that tests reach cases the real service rarely
produces on demand.
"""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from amora_devtools import DynsecError
from amora_devtools.broker import (
    BrokerProcess,
    dynsec,
)
from amora_protocol import (
    Grant,
    Right,
    SigningKey,
    issue_grant,
    keyring,
    now_ms,
    user_device_acls,
)

__all__ = ["StandInAuthz", "b64"]


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@dataclass
class _SessionRecord:
    session_id: str
    password: str
    user: str
    devices: list[str]
    signing_key: bytes
    encryption_key: bytes
    expires_at_ms: int


@dataclass
class StandInAuthz:
    """Speaks `POST /v1/sessions`, `POST /v1/sessions/{id}/refresh` and `DELETE /v1/sessions/{id}`
    as the authz service's contract says, and creates the broker clients with dynsec."""

    brokers: list[BrokerProcess]
    session_ttl_ms: int = 600_000
    issuer: SigningKey = field(default_factory=SigningKey.generate)
    users: dict[str, tuple[str, list[str]]] = field(default_factory=dict)  # token -> (sub, devices)
    device_keys: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)
    sessions: dict[str, _SessionRecord] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    refreshed: threading.Event = field(default_factory=threading.Event)
    rate_limited: int = 0  # answer this many more session requests 429 + Retry-After
    retry_after: str = "1"
    clock_offset_s: float = 0.0  # this service's clock (its HTTP Date) minus the real one
    rotate_passwords: int = 0  # this many more refreshes hand out a new broker password (token mode: each does)
    exchanged: threading.Event = field(default_factory=threading.Event)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def trusted_keys(self) -> dict[str, Any]:
        return keyring([self.issuer.public_key])

    def add_device(self, device_id: str, signing_key: bytes, encryption_key: bytes) -> None:
        self.device_keys[device_id] = (signing_key, encryption_key)
        acls = [
            {"acltype": a.acltype, "topic": a.topic, "priority": 0, "allow": a.allow}
            for a in user_device_acls(device_id)
        ]
        for broker in self.brokers:
            dynsec(broker, [{"command": "createRole", "rolename": f"user-device:{device_id}", "acls": acls}])

    def add_user(self, token: str, sub: str, devices: list[str]) -> None:
        self.users[token] = (sub, devices)

    def expire(self, session_id: str) -> None:
        """End a session as the service does at expiry: forget it, delete its broker client."""
        with self._lock:
            self.sessions.pop(session_id, None)
        for broker in self.brokers:
            dynsec(broker, [{"command": "deleteClient", "username": session_id}], check=False)

    def accept_only_newest_password(self, session_id: str) -> None:
        """Make the brokers refuse every password of the session but its newest (in token mode:
        the older tokens have expired). The broker disconnects the session's client."""
        with self._lock:
            password = self.sessions[session_id].password
        for broker in self.brokers:
            dynsec(broker, [{"command": "setClientPassword", "username": session_id, "password": password}])

    def _grant(self, record: _SessionRecord) -> bytes:
        now = now_ms()
        grant = Grant(
            grant_id=secrets.token_hex(8),
            subject=record.user,
            session_id=record.session_id,
            signing_key=record.signing_key,
            devices=tuple(record.devices),
            rights=(Right.WATCH, Right.CONTROL),
            issued_at_ms=now,
            expires_at_ms=record.expires_at_ms,
            encryption_key=record.encryption_key,
        )
        return issue_grant(grant, self.issuer)

    def _answer(self, record: _SessionRecord) -> dict[str, Any]:
        # The published schema (amora_protocol.SessionResponse), for creation and refresh alike.
        return {
            "session_id": record.session_id,
            "expires_at": record.expires_at_ms,
            "grant": b64(self._grant(record)),
            "broker": {
                "endpoints": [f"mqtts://{b.host}:{b.app_port}" for b in self.brokers],
                "username": record.session_id,
                "password": record.password,
                "client_id": record.session_id,
            },
            "devices": [
                {
                    "device_id": d,
                    "signing_key": b64(self.device_keys[d][0]),
                    "encryption_key": b64(self.device_keys[d][1]),
                }
                for d in record.devices
            ],
            "authz_keys": [{"kid": self.issuer.kid, "public_key": b64(self.issuer.public_key.raw)}],
        }

    def handle(self, method: str, path: str, token: str | None, body: bytes) -> tuple[int, dict[str, Any]]:  # noqa: PLR0911 - one answer per route
        self.calls.append(f"{method} {path}")
        user = self.users.get(token or "")
        if user is None:
            return 401, {"code": "invalid_token", "message": "bad token"}
        sub, devices = user
        parts = path.strip("/").split("/")
        if method == "POST" and self.rate_limited > 0:
            self.rate_limited -= 1
            return 429, {"code": "rate_limited", "message": "too many session requests"}
        if method == "POST" and parts == ["v1", "sessions"]:
            request = json.loads(body or b"{}")
            record = _SessionRecord(
                session_id=f"s-{secrets.token_hex(8)}",
                password=secrets.token_urlsafe(16),
                user=sub,
                devices=list(devices),
                signing_key=base64.b64decode(request["signing_key"]),
                encryption_key=base64.b64decode(request["encryption_key"]),
                expires_at_ms=now_ms() + self.session_ttl_ms,
            )
            command = {
                "command": "createClient",
                "username": record.session_id,
                "password": record.password,
                "clientid": record.session_id,
                "roles": [{"rolename": f"user-device:{d}"} for d in devices],
            }
            for broker in self.brokers:
                # The real service reconciles a broker that is down later; so does this one
                # (not at all: the tests that stop a broker create sessions before).
                with contextlib.suppress(DynsecError):
                    dynsec(broker, [command])
            with self._lock:
                self.sessions[record.session_id] = record
            self.exchanged.set()
            return 201, self._answer(record)
        if len(parts) >= 3 and parts[:2] == ["v1", "sessions"]:
            with self._lock:
                found = self.sessions.get(parts[2])
            if found is None or found.user != sub:
                return 404, {"code": "session_not_found", "message": "no such session"}
            record = found
            if method == "POST" and parts[3:] == ["refresh"]:
                record.expires_at_ms = now_ms() + self.session_ttl_ms
                if self.rotate_passwords > 0:
                    self.rotate_passwords -= 1
                    record.password = secrets.token_urlsafe(16)
                self.refreshed.set()
                return 200, self._answer(record)
            if method == "DELETE" and len(parts) == 3:
                self.expire(record.session_id)
                return 204, {}
        return 404, {"code": "not_found", "message": path}

    def start(self) -> None:
        authz = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                auth = self.headers.get("Authorization", "")
                token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None
                status, answer = authz.handle(self.command, self.path, token, body)
                data = json.dumps(answer).encode() if status != 204 else b""
                self.send_response(status)
                if status == 429:
                    self.send_header("Retry-After", authz.retry_after)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def date_time_string(self, timestamp: float | None = None) -> str:
                # The Date header, from this service's (possibly skewed) clock.
                now = time.time() if timestamp is None else timestamp
                return super().date_time_string(now + authz.clock_offset_s)

            do_POST = _serve  # noqa: N815 - http.server's naming
            do_DELETE = _serve  # noqa: N815

            def log_message(self, *_args: object) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="stand-in-authz", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
