"""`SystemdNotifier` (the agent process under systemd: test_process_live.py)."""

import os
import socket

from amora_agent._sdnotify import SystemdNotifier


def test_without_systemd_nothing_is_sent() -> None:
    notifier = SystemdNotifier({})
    assert not notifier.enabled
    assert notifier.notify("READY=1") is False
    assert notifier.watchdog_interval_s is None


def test_the_watchdog_is_only_for_the_process_systemd_named(tmp_path) -> None:
    sock = str(tmp_path / "n.sock")
    assert SystemdNotifier({"NOTIFY_SOCKET": sock, "WATCHDOG_USEC": "4000000"}).watchdog_interval_s == 2.0
    other = {"NOTIFY_SOCKET": sock, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert SystemdNotifier(other).watchdog_interval_s is None


def test_an_abstract_socket_address_is_used() -> None:
    name = f"amora-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0" + name)
        listener.settimeout(5)
        assert SystemdNotifier({"NOTIFY_SOCKET": "@" + name}).notify("READY=1", "STATUS=ok")
        assert listener.recv(100) == b"READY=1\nSTATUS=ok"
