"""The harness's synchronous MQTT client: a failed connect leaves nothing open behind it."""

from __future__ import annotations

import gc
import socket
import ssl
import threading
import warnings

import pytest

from amora_devtools import MqttClient, MqttError


def test_a_failed_tls_handshake_leaves_no_socket_open() -> None:
    # A listener that accepts and hangs up at once: the TLS handshake fails inside paho's
    # connect, which keeps that socket in its own frame; the harness must close it, not leave
    # it to a later collection whose ResourceWarning would land in an unrelated test.
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def hang_up() -> None:
        conn, _ = server.accept()
        conn.close()

    thread = threading.Thread(target=hang_up, daemon=True)
    thread.start()
    context = ssl.create_default_context()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            with pytest.raises(MqttError, match="cannot connect"):
                MqttClient.connect("127.0.0.1", port, ssl_context=context, timeout=5.0)
            gc.collect()
    finally:
        thread.join(timeout=5)
        server.close()
    leaked = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaked == []
