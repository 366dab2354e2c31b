"""The TypeScript browser SDK (packages/amora-sync-web): its Node suites run from pytest.

`npm ci` installs the locked packages when they are missing (tools/dev does it first); the
suites compile with `tsc --strict` and run under Node's test runner. The unit suite includes
every protocol vector; the end-to-end suite drives Debian's Chromium against a real stack.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import msgspec
import pytest

import amora_protocol as ap
from amora_devtools.stack import Stack

WEB = Path(__file__).resolve().parent.parent / "packages" / "amora-sync-web"


def _npm(*args: str, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is missing: run tools/dev test (it installs nodejs and npm)")
    return subprocess.run(  # noqa: S603 - fixed argv
        [npm, *args],
        cwd=WEB,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "CI": "1", **(env or {})},
    )


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is missing: run tools/dev test (it installs nodejs)")
    return node


@pytest.fixture(scope="module")
def built() -> Path:
    """The package installed from its lockfile and compiled."""
    if not (WEB / "node_modules" / ".package-lock.json").exists():
        installed = _npm("ci", "--no-audit", "--no-fund")
        assert installed.returncode == 0, installed.stdout + installed.stderr
    build = _npm("run", "build")
    assert build.returncode == 0, build.stdout + build.stderr
    return WEB


def test_unit_and_vector_suites_pass(built: Path) -> None:
    assert (built / "build" / "test" / "vectors.test.js").is_file()
    result = _npm("run", "test:unit")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "# fail 0" in output
    assert "# pass 0" not in output, output


@pytest.mark.usefixtures("built")
def test_page_in_chromium_against_the_stack(tmp_path: Path) -> None:
    """The live page in headless Chromium: players, real MPD control, forgeries, failover, TLS.

    The scenarios are in ``e2e/page.test.ts``; this starts the real stack they run against and
    prints the click-to-screen latency they measure.
    """
    if not Path(os.environ.get("AMORA_CHROMIUM", "/usr/bin/chromium")).exists():
        pytest.fail("chromium is missing: run tools/dev test (it installs Debian's chromium)")
    report = tmp_path / "latency.txt"
    # No supervisor: the test stops the primary broker on purpose and it must stay down.
    with Stack(tmp_path / "stack", supervise=False) as stack:
        info = stack.describe()
        assert info["web_url"], "the stack did not serve the page although it is built"
        stack_json = tmp_path / "e2e-stack.json"
        stack_json.write_text(json.dumps({**info, "state_dir": str(stack.state_dir)}))
        env = {"AMORA_STACK_JSON": str(stack_json), "AMORA_E2E_REPORT": str(report)}
        if screenshot := os.environ.get("AMORA_E2E_SCREENSHOT"):
            env["AMORA_E2E_SCREENSHOT"] = screenshot
        # The README's Node example (before the e2e suite stops the primary broker).
        example = subprocess.run(  # noqa: S603 - fixed argv
            [_node(), "examples/watch-and-pause.mjs", str(stack_json)],
            cwd=WEB,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        result = _npm("run", "test:e2e", timeout=240, env=env)
    assert example.returncode == 0, example.stdout + example.stderr
    assert "pause: succeeded" in example.stdout, example.stdout
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "# fail 0" in output, output
    assert "# pass 7" in output, output
    print(report.read_text().strip())  # noqa: T201 - the figure the test exists to produce


def test_python_verifies_what_typescript_encodes(built: Path) -> None:
    """Interop the other way round: envelopes the TypeScript encoder makes (MessagePack and JSON,
    63-bit epochs, non-ASCII text, sealed commands) verify and decode in amora_protocol."""
    emitted = subprocess.run(  # noqa: S603 - fixed argv
        [_node(), "--experimental-global-webcrypto", "scripts/emit-envelopes.mjs"],
        cwd=built,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    data = json.loads(emitted.stdout)
    device_key = ap.VerifyKey.from_raw(bytes.fromhex(data["device_public_hex"]))
    authz = ap.VerifyKey.from_raw(bytes.fromhex(data["authz_public_hex"]))
    recipient = ap.EncryptionKey.from_raw(bytes.fromhex(data["recipient_private_hex"]))
    kinds: set[tuple[str, str, bool]] = set()
    for item in data["envelopes"]:
        payload = bytes.fromhex(item["hex"])
        if item["kind"] == "command":
            verified = ap.verify_command(
                payload,
                topic=item["topic"],
                content_type=item["codec"],
                trusted_keys=ap.keyring([authz]),
                now_ms=data["now"],
                decrypt_key=recipient,
            )
            assert (verified.header.sealed_to is not None) is item["sealed"]
            message: ap.Message = verified.command
        else:
            message = ap.verify_envelope(
                payload, topic=item["topic"], content_type=item["codec"], key=device_key, now_ms=data["now"]
            ).message
            assert ap.parse_envelope(payload, content_type=item["codec"]).header.epoch == 2**63 - 1
        assert json.loads(msgspec.json.encode(message)) == item["message"]
        kinds.add((item["kind"], item["codec"], bool(item.get("sealed"))))
    assert len(kinds) == 10  # 4 kinds x 2 codecs, commands also sealed
