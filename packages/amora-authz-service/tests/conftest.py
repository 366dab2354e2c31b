"""Shared fixtures: the store on both back ends (SQLite in-process, PostgreSQL from the harness)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from amora_authz._store import open_store

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from amora_authz._store import Store


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
