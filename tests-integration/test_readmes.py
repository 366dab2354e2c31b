"""Every code block of every README runs as written (the doc test).

Each fenced block must say what it is in its info string (the first word is the language):

- ``python``: type-checked with ``mypy --strict`` and run with this interpreter from the
  repository root (a block that defines ``test_*`` functions runs under pytest, with the
  ``amora_devtools`` fixtures), against the stack that ``hatch run stack:up --state-dir
  /tmp/amora-stack`` starts on its documented fixed ports;
- ``sh``: run with ``bash -euo pipefail`` from the repository root, against the same stack;
- ``js``: an ES module (the web SDK's README), syntax-checked with ``node --check``; when it
  runs, it runs with Node as an application that installed ``@amora/sync-web`` would (the
  package, built, as ``node_modules/@amora/sync-web``), with the same stack's ``stack.json``
  as its one argument; a block that says it is ``examples/NAME.mjs`` must be that file;
- ``toml`` / ``json``: parsed;
- ``text``: not code (wire formats, topic tables, command synopses);
- any language followed by ``no-run: <reason>``: not run, and the reason says why (it installs
  into the environment, needs root, runs for minutes or until Ctrl-C, ...).

A block without an info string, or with one this test does not know, fails the test: nothing
is skipped silently. One stack is started for the whole module (about 10 s), mypy runs once
over every Python block.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from amora_devtools.stack import DEFAULT_AUTHZ_PORT, DEFAULT_BROKER_PORT, Stack, fixed_ports

ROOT = Path(__file__).resolve().parents[1]
STATE_DIR = Path("/tmp/amora-stack")  # noqa: S108 - the path the READMEs document
_RUN_TIMEOUT_S = 60
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_NO_RUN = re.compile(r"^no-run:\s*(?P<reason>\S.{9,})$")
_CODE = frozenset({"python", "sh", "js", "toml", "json"})
WEB = ROOT / "packages" / "amora-sync-web"
_EXAMPLE = re.compile(r"\bexamples/[\w.-]+\.mjs\b")

pytestmark = [pytest.mark.services, pytest.mark.slow]


@dataclass(frozen=True)
class Block:
    """One fenced code block of a README."""

    readme: str  # relative to the repository root
    line: int  # of the opening fence, 1-based
    info: str
    code: str

    @property
    def id(self) -> str:
        return f"{self.readme}:{self.line}"

    @property
    def language(self) -> str:
        return self.info.split(maxsplit=1)[0] if self.info else ""

    @property
    def no_run_reason(self) -> str | None:
        rest = self.info.split(maxsplit=1)[1] if " " in self.info else ""
        match = _NO_RUN.match(rest.strip())
        return match["reason"] if match else None

    @property
    def runs(self) -> bool:
        return self.language in {"python", "sh", "js"} and self.no_run_reason is None


def _readmes() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "README.md", "*/README.md"],  # noqa: S607 - git from PATH
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return sorted(p for p in listed if "node_modules" not in p and (ROOT / p).is_file())


def _blocks(readme: str) -> list[Block]:
    lines = (ROOT / readme).read_text().splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        end = index + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            end += 1
        if end == len(lines):
            pytest.fail(f"{readme}:{index + 1}: code block never closed")
        body = [line.removeprefix(indent) for line in lines[index + 1 : end]]
        blocks.append(Block(readme, index + 1, opening["info"].strip(), "\n".join(body) + "\n"))
        index = end + 1
    return blocks


ALL_BLOCKS = [block for readme in _readmes() for block in _blocks(readme)]
RUNNABLE = [block for block in ALL_BLOCKS if block.runs]


def _problem(block: Block) -> str | None:
    """Why this block's info string is not acceptable, or None."""
    language, rest = block.language, block.info[len(block.language) :].strip()
    if not language:
        return "no info string: say what it is (python, sh, js, toml, json, text) or `<lang> no-run: <reason>`"
    if rest and block.no_run_reason is None:
        return f"after {language!r} only `no-run: <reason of at least 10 characters>` may follow, not {rest!r}"
    if language not in {*_CODE, "text"} and block.no_run_reason is None:
        return f"unknown language {language!r}: use python, sh, js, toml, json or text, or add `no-run: <reason>`"
    return None


def test_every_block_says_what_it_is() -> None:
    assert len(ALL_BLOCKS) > 20  # the READMEs were found at all
    problems = [f"{b.id}: {p}" for b in ALL_BLOCKS if (p := _problem(b)) is not None]
    assert not problems, "README code blocks without a usable marker:\n" + "\n".join(problems)


@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.language == "toml"], ids=lambda b: b.id)
def test_toml_block_parses(block: Block) -> None:
    tomllib.loads(block.code)


@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.language == "json"], ids=lambda b: b.id)
def test_json_block_parses(block: Block) -> None:
    json.loads(block.code)


# -- the running examples ----------------------------------------------------------------------


def _file_name(block: Block) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", block.id) + ".py"


@pytest.fixture(scope="module")
def python_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("readme-blocks")
    for block in RUNNABLE:
        if block.language == "python":
            (directory / _file_name(block)).write_text(block.code)
    return directory


@pytest.fixture(scope="module")
def mypy_errors(python_dir: Path) -> dict[str, list[str]]:
    """``mypy --strict`` over every runnable Python block at once: file name -> its errors."""
    files = sorted(p.name for p in python_dir.glob("*.py"))
    result = subprocess.run(  # noqa: S603 - fixed argv: this interpreter's mypy
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-error-summary",
            "--cache-dir",
            str(ROOT / ".mypy_cache" / "readmes"),
            *files,
        ],
        cwd=python_dir,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    errors: dict[str, list[str]] = {name: [] for name in files}
    for line in result.stdout.splitlines():
        name = line.split(":", 1)[0]
        errors.setdefault(name, []).append(line)
    if result.returncode not in {0, 1}:
        pytest.fail(f"mypy crashed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return errors


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        # As the servers do: connections of a previous run in TIME_WAIT do not hold the port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def readme_stack() -> Iterator[Stack]:
    """The stack exactly as ``hatch run stack:up --state-dir /tmp/amora-stack`` starts it."""
    with (STATE_DIR.parent / "amora-stack.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two doc-test runs on one machine take turns
        ports = [DEFAULT_AUTHZ_PORT, *(port for broker in fixed_ports() for port in broker)]
        busy = [port for port in ports if not _port_free(port)]
        if busy:
            pytest.fail(
                f"the README examples use stack:up's fixed ports, and {busy} are in use: "
                "stop your own `hatch run stack:up` (or whatever holds them) and run again"
            )
        with Stack(
            STATE_DIR, authz_port=DEFAULT_AUTHZ_PORT, broker_port=DEFAULT_BROKER_PORT, supervise=False
        ) as running:
            yield running


def _env() -> dict[str, str]:
    # This environment's console scripts (amora, amora-authz, amora-agent) first, as in an
    # activated virtualenv or `hatch shell`.
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "NO_COLOR": "1"}


def _run(argv: list[str], block: Block) -> None:
    try:
        result = subprocess.run(  # noqa: S603 - the README's own commands, which this test exists to run
            argv, cwd=ROOT, env=_env(), capture_output=True, text=True, check=False, timeout=_RUN_TIMEOUT_S
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{block.id} did not finish within {_RUN_TIMEOUT_S}s:\n{block.code}\n{exc.stdout!r}")
    assert result.returncode == 0, (
        f"{block.id} failed ({result.returncode}):\n{block.code}\n--- stdout\n{result.stdout}\n"
        f"--- stderr\n{result.stderr}"
    )


@pytest.mark.parametrize("block", [b for b in RUNNABLE if b.language == "python"], ids=lambda b: b.id)
def test_python_block(block: Block, python_dir: Path, mypy_errors: dict[str, list[str]], readme_stack: Stack) -> None:
    name = _file_name(block)
    assert not mypy_errors[name], f"{block.id} fails mypy --strict:\n" + "\n".join(mypy_errors[name])
    assert readme_stack.authz_url == f"http://127.0.0.1:{DEFAULT_AUTHZ_PORT}"
    if re.search(r"^(async )?def test_", block.code, re.MULTILINE):
        _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(python_dir / name)], block)
    else:
        _run([sys.executable, str(python_dir / name)], block)


@pytest.mark.parametrize("block", [b for b in RUNNABLE if b.language == "sh"], ids=lambda b: b.id)
def test_sh_block(block: Block, readme_stack: Stack) -> None:
    assert readme_stack.authz_url == f"http://127.0.0.1:{DEFAULT_AUTHZ_PORT}"
    _run(["bash", "-euo", "pipefail", "-c", block.code], block)


# -- the web SDK's JavaScript -----------------------------------------------------------------


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is missing: run tools/dev test (it installs Node.js and npm)")
    return found


@pytest.fixture(scope="module")
def node_app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder laid out as an application that installed ``@amora/sync-web``: the package,
    installed from its lockfile and built, linked as ``node_modules/@amora/sync-web``."""
    env = {**os.environ, "CI": "1"}
    if not (WEB / "node_modules" / ".package-lock.json").exists():
        installed = subprocess.run(  # noqa: S603 - fixed argv
            [_tool("npm"), "ci", "--no-audit", "--no-fund"],
            cwd=WEB,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert installed.returncode == 0, installed.stdout + installed.stderr
    built = subprocess.run(  # noqa: S603 - fixed argv
        [_tool("npm"), "run", "build"], cwd=WEB, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert built.returncode == 0, built.stdout + built.stderr
    app = tmp_path_factory.mktemp("node-app")
    (app / "node_modules" / "@amora").mkdir(parents=True)
    (app / "node_modules" / "@amora" / "sync-web").symlink_to(WEB, target_is_directory=True)
    return app


@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.language == "js"], ids=lambda b: b.id)
def test_js_block_parses(block: Block, tmp_path: Path) -> None:
    module = tmp_path / "block.mjs"
    module.write_text(block.code)
    checked = subprocess.run(  # noqa: S603 - node from PATH, a syntax check only
        [_tool("node"), "--check", str(module)], capture_output=True, text=True, timeout=60, check=False
    )
    assert checked.returncode == 0, f"{block.id} is not valid JavaScript:\n{checked.stderr}"


@pytest.mark.parametrize("block", [b for b in RUNNABLE if b.language == "js"], ids=lambda b: b.id)
def test_js_block(block: Block, node_app: Path, readme_stack: Stack) -> None:
    named = _EXAMPLE.search("\n".join(block.code.splitlines()[:3]))
    if named is not None:  # the README says this block is that file: it must be
        example = (ROOT / block.readme).parent / named[0]
        assert example.read_text() == block.code, f"{block.id} differs from {example.relative_to(ROOT)}"
    module = node_app / _file_name(block).replace(".py", ".mjs")
    module.write_text(block.code)
    _run([_tool("node"), str(module), str(readme_stack.state_dir / "stack.json")], block)
