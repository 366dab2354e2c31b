"""Shared fixtures: the store on both back ends (SQLite in-process, PostgreSQL from the harness),
and the service reconciling a harness broker (``harness``, helpers in ``support/authz_broker_harness.py``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from authz_broker_harness import Harness, serve_harness

from amora_authz._store import open_store

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from amora_authz._store import Store
    from amora_devtools import BrokerProcess, DevPKI


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.services)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL: a SQLite file, or a fresh database on the harness's PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'authz.db'}"
    return str(request.getfixturevalue("postgres_dsn"))


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    async with await open_store(store_url) as opened:
        await opened.migrate()
        yield opened


@pytest.fixture
async def harness(broker: BrokerProcess, dev_pki: DevPKI, tmp_path: Path) -> AsyncIterator[Harness]:
    """The service reconciling the harness's ``broker``, with the session's PKI as device CA."""
    async with serve_harness(broker, dev_pki, tmp_path) as running:
        yield running
