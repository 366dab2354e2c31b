from __future__ import annotations

import shutil
import subprocess

import pytest

from amora_devtools.postgres import _bin_dir


def _psql(dsn: str, sql: str) -> str:
    psql = shutil.which("psql") or str(_bin_dir() / "psql")
    result = subprocess.run(  # noqa: S603 - fixed program, test-made arguments
        [psql, dsn, "-At", "-v", "ON_ERROR_STOP=1", "-c", sql],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return result.stdout.strip()


def test_each_test_gets_an_empty_database(postgres_server, postgres_dsn):
    assert postgres_dsn.startswith(f"postgresql://amora@127.0.0.1:{postgres_server.port}/test_")
    assert _psql(postgres_dsn, "select count(*) from pg_tables where schemaname = 'public'") == "0"
    _psql(postgres_dsn, "create table t (x int); insert into t values (42)")
    assert _psql(postgres_dsn, "select x from t") == "42"


def test_server_listens_on_loopback_only(postgres_server):
    assert _psql(postgres_server.dsn, "show listen_addresses") == "127.0.0.1"
    with pytest.raises(subprocess.CalledProcessError):
        _psql(postgres_server.dsn_for("no_such_db"), "select 1")
