"""Serve the live player page of ``packages/amora-sync-web`` for the local stack.

One loopback HTTP server: the page's static files (``web/`` after ``npm run build``), a
``config.json`` naming the development users, and the authz service's public paths
(``/v1/``, ``/dev-issuer/``, ``/.well-known/``) passed through, so that the page and the
service share one origin and the service needs no CORS. DEVELOPMENT ONLY: plain HTTP on
loopback (a secure context for browsers); the MQTT connection itself is ``wss://``, verified.
"""

from __future__ import annotations

import json
import threading
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import httpx

from amora_devtools._errors import DevtoolsError

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["WEB_DIR", "WebPage", "start_webpage"]

WEB_DIR = Path(__file__).resolve().parent.parent.parent / "packages" / "amora-sync-web" / "web"
_PROXIED = ("/v1/", "/dev-issuer/", "/.well-known/")
_HOP_HEADERS = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "host"}
)


class _Handler(SimpleHTTPRequestHandler):
    authz_url: ClassVar[str] = ""
    config: ClassVar[bytes] = b"{}"
    http: ClassVar[httpx.Client]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002, ANN401 - the stdlib's signature
        """Stay quiet: the stack's output is for people."""

    def do_GET(self) -> None:
        """Serve config.json, pass authz paths through, else a static file."""
        if self.path.split("?")[0] == "/config.json":
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(self.config)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(self.config)
        elif self.path.startswith(_PROXIED):
            self._proxy()
        else:
            super().do_GET()

    def do_POST(self) -> None:
        """Pass authz paths through."""
        self._proxy()

    def do_DELETE(self) -> None:
        """Pass authz paths through."""
        self._proxy()

    def _proxy(self) -> None:
        if not self.path.startswith(_PROXIED):
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
        try:
            answer = self.http.request(self.command, self.authz_url + self.path, content=body, headers=headers)
        except httpx.HTTPError as exc:
            self.send_error(HTTPStatus.BAD_GATEWAY, f"authz service unreachable: {exc}")
            return
        self.send_response(answer.status_code)
        for key, value in answer.headers.items():
            if key.lower() not in _HOP_HEADERS:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(answer.content)))
        self.end_headers()
        self.wfile.write(answer.content)


class WebPage:
    """The running page server (stop with `close`)."""

    def __init__(self, server: ThreadingHTTPServer, http: httpx.Client) -> None:
        """Wrap a started server."""
        self._server = server
        self._http = http
        self._thread = threading.Thread(target=server.serve_forever, name="amora-stack.webpage", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """Where the page is served."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/"

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        self._http.close()


def start_webpage(authz_url: str, *, users: Sequence[str], web_dir: Path = WEB_DIR, host: str = "127.0.0.1") -> WebPage:
    """Serve the page from ``web_dir`` on a free loopback port, talking to ``authz_url``.

    Raises:
        DevtoolsError: The page is not built (``npm ci && npm run build`` in the package).
    """
    if not (web_dir / "dist" / "app.js").is_file():
        raise DevtoolsError(f"the web page is not built: run `npm ci && npm run build` in {web_dir.parent}")
    http = httpx.Client(timeout=10.0)
    handler = type(
        "AmoraPageHandler",
        (_Handler,),
        {
            "authz_url": authz_url.rstrip("/"),
            "config": json.dumps({"authz_url": "", "dev_users": list(users)}).encode(),
            "http": http,
            "__init__": lambda self, *a, **kw: _Handler.__init__(self, *a, directory=str(web_dir), **kw),
        },
    )
    server = ThreadingHTTPServer((host, 0), handler)
    return WebPage(server, http)
