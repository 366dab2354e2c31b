import json
import os
import signal
import subprocess
import sys

import pytest
from cryptography import x509

from amora_devtools import MqttClient, client_ssl_context
from amora_devtools.__main__ import main


def test_pki_commands(tmp_path, capsys):
    assert main(["pki", "init", str(tmp_path)]) == 0
    assert main(["pki", "issue", str(tmp_path), "player-1"]) == 0
    out = capsys.readouterr().out
    assert "NEVER come from this tool" in out
    serial = int(out.split("serial ")[1].split()[0])
    assert main(["pki", "revoke", str(tmp_path), hex(serial)]) == 0
    crl = x509.load_pem_x509_crl((tmp_path / "crl.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None


def test_pki_load_error_is_reported_not_raised(tmp_path, capsys):
    assert main(["pki", "issue", str(tmp_path / "missing"), "player-1"]) == 1
    assert "no usable development PKI" in capsys.readouterr().err


def test_help_says_the_pki_is_not_for_production(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "Production keys" in capsys.readouterr().out


@pytest.mark.services
def test_up_starts_a_usable_stack_and_stops_it_on_sigint(tmp_path):
    proc = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "amora_devtools", "up", "--dir", str(tmp_path), "--device", "player-1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # The summary ends with this line once everything is up (an event on the pipe).
        lines = []
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Ctrl-C stops everything"):
                break
        assert (tmp_path / "stack.json").exists(), "".join(lines)
        info = json.loads((tmp_path / "stack.json").read_text())
        primary = info["primary"]
        device = info["devices"]["player-1"]
        ctx = client_ssl_context(primary["ca_file"], cert_file=device["cert_file"], key_file=device["key_file"])
        with MqttClient.connect(primary["host"], primary["device_port"], ssl_context=ctx) as client:
            client.publish("amora/devices/player-1/state", b"hi", qos=1)
        assert f"127.0.0.1:{info['mpd']['port']}" in "".join(lines)
        pids = [primary["pid"], info["mpd"]["pid"]]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
