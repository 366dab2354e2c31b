"""Development mode's contract: stack.json in the formats this SDK reads, and nothing else.

The file the harness really writes is checked in ``test_real_authz.py`` (the CLI against the
real authz service) and ``tests-integration/test_cli_dev_mode.py`` (the CLI against a whole
``stack:up`` stack); here, what is refused and how.
"""

from __future__ import annotations

import json
import socket
from typing import TYPE_CHECKING, Any

import pytest

from amora_devtools.pki import DevPKI
from amora_devtools.stack import STACK_FORMAT, dev_mode_fields
from amora_sync._cli import main
from amora_sync._devstack import SUPPORTED_FORMATS, DevStack, DevStackError, read_dev_stack

if TYPE_CHECKING:
    from pathlib import Path

AUTHZ = "http://127.0.0.1:8080"


def _write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "stack.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def _fields(tmp_path: Path) -> dict[str, Any]:
    return dev_mode_fields(authz_url=AUTHZ, ca_file=tmp_path / "pki" / "ca.pem")


def test_the_harness_writes_a_format_this_sdk_reads(tmp_path: Path):
    assert STACK_FORMAT in SUPPORTED_FORMATS
    stack = read_dev_stack(_write(tmp_path, {**_fields(tmp_path), "users": {"alice": {}}}))
    assert stack == DevStack(
        authz_url=AUTHZ, ca_file=str(tmp_path / "pki" / "ca.pem"), token_url=f"{AUTHZ}/dev-issuer/token"
    )


def test_an_unknown_format_version_is_refused_naming_the_file_the_version_and_the_fix(tmp_path: Path):
    path = _write(tmp_path, {**_fields(tmp_path), "format": 99})
    with pytest.raises(DevStackError) as caught:
        read_dev_stack(path)
    message = str(caught.value)
    assert str(path) in message
    assert "format 99" in message
    assert "reads format 1" in message
    assert "hatch run stack:up" in message


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        pytest.param({"format": None}, 'no "format" field', id="no-format"),
        pytest.param({"format": "1"}, 'format "1"', id="format-as-string"),
        pytest.param({"format": True}, "format true", id="format-as-boolean"),
    ],
)
def test_a_missing_or_odd_format_is_refused(tmp_path: Path, change: dict[str, Any], expected: str):
    data = {**_fields(tmp_path), **change}
    if change["format"] is None:
        del data["format"]
    with pytest.raises(DevStackError, match=expected):
        read_dev_stack(_write(tmp_path, data))


def test_the_shapes_of_older_harnesses_are_refused_not_guessed(tmp_path: Path):
    # What `python -m amora_devtools up` (brokers only) and harnesses before format 1 wrote.
    old = {"authz": {"url": AUTHZ}, "primary": {"ca_file": "/x/ca.pem"}}
    with pytest.raises(DevStackError, match='no "format" field'):
        read_dev_stack(_write(tmp_path, old))


def test_a_format_1_file_without_its_fields_names_what_is_missing(tmp_path: Path):
    data = _fields(tmp_path)
    del data["dev_issuer"]
    with pytest.raises(DevStackError, match=r"incomplete: .*dev_issuer"):
        read_dev_stack(_write(tmp_path, data))


@pytest.mark.parametrize("content", ["", "not json", "[1, 2]"])
def test_a_file_that_is_not_a_json_object_is_refused(tmp_path: Path, content: str):
    with pytest.raises(DevStackError, match="not a JSON object"):
        read_dev_stack(_write(tmp_path, content))


def test_a_missing_file_is_refused_with_the_fix(tmp_path: Path):
    with pytest.raises(DevStackError, match=r"cannot read .*missing\.json.*hatch run stack:up"):
        read_dev_stack(tmp_path / "missing.json")


@pytest.fixture
def no_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("AMORA_AUTHZ_URL", "AMORA_TOKEN", "AMORA_CA_FILE", "AMORA_DEV_STACK", "AMORA_DEV_USER"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AMORA_CONFIG", str(tmp_path / "no-config.toml"))


def _exit(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert isinstance(caught.value.code, int)
    return caught.value.code, capsys.readouterr().err


@pytest.mark.usefixtures("no_credentials")
def test_the_cli_refuses_an_unknown_format_before_connecting(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    path = _write(tmp_path, {**_fields(tmp_path), "format": 2})
    code, err = _exit(["--dev", str(path), "--user", "alice", "devices"], capsys)
    assert code == 2  # a usage error: nothing was tried against any service
    assert f"amora: {path} is stack.json format 2; this amora CLI reads format 1" in err


@pytest.mark.usefixtures("no_credentials")
def test_development_mode_from_the_environment_checks_the_same(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("AMORA_DEV_STACK", str(_write(tmp_path, {**_fields(tmp_path), "format": 2})))
    monkeypatch.setenv("AMORA_DEV_USER", "alice")
    code, err = _exit(["devices"], capsys)
    assert code == 2
    assert "format 2" in err


@pytest.mark.usefixtures("no_credentials")
@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        pytest.param(["--dev", "S", "devices"], {}, "needs a user: --user NAME or AMORA_DEV_USER", id="no-user"),
        pytest.param(
            ["--dev", "S", "--user", "alice", "--token", "t", "devices"],
            {},
            "cannot be combined with --authz-url or --token",
            id="dev-and-token",
        ),
        pytest.param(
            ["devices"],
            {"AMORA_DEV_STACK": "S", "AMORA_AUTHZ_URL": "http://x"},
            "AMORA_DEV_STACK (development mode) and AMORA_AUTHZ_URL/AMORA_TOKEN are both set",
            id="both-in-environment",
        ),
        pytest.param(["--user", "alice", "devices"], {}, "use it with --dev", id="user-without-dev"),
        pytest.param(["devices"], {}, "--dev DIR/stack.json --user NAME", id="nothing"),
    ],
)
def test_development_mode_is_explicit(  # noqa: PLR0917 - parametrised cases
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    env: dict[str, str],
    expected: str,
):
    path = str(_write(tmp_path, _fields(tmp_path)))
    for name, value in env.items():
        monkeypatch.setenv(name, path if value == "S" else value)
    code, err = _exit([path if a == "S" else a for a in argv], capsys)
    assert code == 2
    assert expected in err


@pytest.mark.usefixtures("no_credentials")
def test_a_stack_that_is_not_running_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    with socket.socket() as closed:  # a port nothing listens on once this socket is closed
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
    pki = DevPKI.create(tmp_path / "pki")
    path = _write(tmp_path, dev_mode_fields(authz_url=url, ca_file=pki.ca_file))
    code = main(["--dev", str(path), "--user", "alice", "--connect-timeout", "5", "devices"])
    err = capsys.readouterr().err
    assert code == 3  # no session
    assert f"the stack's development issuer at {url}/dev-issuer/token did not answer" in err
    assert "is the stack running?" in err
