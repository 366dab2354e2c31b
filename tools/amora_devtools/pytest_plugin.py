"""pytest fixtures for real local services (registered through the ``pytest11`` entry point).

Fixtures:
    dev_pki (session): a `DevPKI` in a temporary directory.
    music_library (session): a directory of generated FLAC tracks (`music.DEFAULT_TRACKS`).
    broker: a running `BrokerProcess` (fresh per test: dynsec state is per test).
    broker_pair: ``(primary, standby)`` bridged on ``amora/#`` (fresh per test).
    mpd_server: a running `MpdProcess` (fresh per test) over ``music_library``.
    postgres_server (session): a running `PostgresProcess`.
    postgres_dsn: DSN of a fresh, empty database on ``postgres_server`` (per test).

Every service is stopped in a ``finally`` block, also when the test fails; a failing
test gets the service's log appended to its report. Tests that use any of these
fixtures are marked ``services`` automatically.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Final

import pytest

from amora_devtools.broker import BrokerProcess, start_broker, start_broker_pair
from amora_devtools.mpd import MpdProcess, start_mpd
from amora_devtools.music import write_library
from amora_devtools.pki import DevPKI
from amora_devtools.postgres import PostgresProcess, start_postgres

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

__all__ = [
    "broker",
    "broker_pair",
    "dev_pki",
    "mpd_server",
    "music_library",
    "postgres_dsn",
    "postgres_server",
]

_SERVICE_FIXTURES: Final = frozenset({"broker", "broker_pair", "mpd_server", "postgres_server", "postgres_dsn"})
_LOG_LINES: Final = 60
_FAILED: Final = pytest.StashKey[bool]()


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``services`` marker (harmless if the project registers it too)."""
    config.addinivalue_line("markers", "services: needs real local services (mosquitto, mpd, postgresql)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses a service fixture with ``services``."""
    for item in items:
        if _SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.services)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:  # noqa: ARG001
    """Remember whether the test failed, for the fixtures' log attachment."""
    report = yield
    if getattr(report, "failed", False):
        item.stash[_FAILED] = True
    return report


def _attach_log(request: pytest.FixtureRequest, title: str, text: str) -> None:
    if request.node.stash.get(_FAILED, False) and text:
        tail = "\n".join(text.splitlines()[-_LOG_LINES:])
        request.node.add_report_section("teardown", title, tail)


@pytest.fixture(scope="session")
def dev_pki(tmp_path_factory: pytest.TempPathFactory) -> DevPKI:
    """A development PKI (CA, localhost server certificate, CRL) for the whole session."""
    return DevPKI.create(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def music_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A music directory with the generated default tracks."""
    path = tmp_path_factory.mktemp("music")
    write_library(path)
    return path


@pytest.fixture
def broker(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, dev_pki: DevPKI
) -> Iterator[BrokerProcess]:
    """A running mosquitto with the Amora configuration, stopped after the test."""
    server = start_broker(tmp_path_factory.mktemp("broker"), dev_pki)
    try:
        yield server
    finally:
        _attach_log(request, "mosquitto log", server.log_text())
        server.close()


@pytest.fixture
def broker_pair(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, dev_pki: DevPKI
) -> Iterator[tuple[BrokerProcess, BrokerProcess]]:
    """A running primary and a standby bridged to it, stopped after the test."""
    primary, standby = start_broker_pair(tmp_path_factory.mktemp("brokers"), dev_pki)
    try:
        yield primary, standby
    finally:
        _attach_log(request, "mosquitto standby log", standby.log_text())
        _attach_log(request, "mosquitto primary log", primary.log_text())
        try:
            standby.close()
        finally:
            primary.close()


@pytest.fixture
def mpd_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, music_library: Path
) -> Iterator[MpdProcess]:
    """A running MPD (null output, software mixer) with the generated tracks indexed."""
    server = start_mpd(tmp_path_factory.mktemp("mpd"), music_dir=music_library)
    try:
        yield server
    finally:
        try:
            log = server.log_file.read_text(errors="replace")
        except OSError:
            log = ""
        _attach_log(request, "mpd log", log)
        server.close()


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresProcess]:
    """A running PostgreSQL for the session (use `postgres_dsn` for a fresh database)."""
    server = start_postgres(tmp_path_factory.mktemp("postgres"))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def postgres_dsn(postgres_server: PostgresProcess) -> str:
    """DSN of a new, empty database for this test."""
    return postgres_server.create_database(f"test_{uuid.uuid4().hex[:16]}")
