"""A real PostgreSQL server for tests: one throwaway cluster for the whole run, or the one CI names.

Use from a test module (like `conftest`, this directory is on sys.path):

    from pg_fixtures import pg_schema, postgres_dsn  # noqa: F401

* `postgres_dsn` (session): a libpq URI for a superuser. If `$CONET_TEST_PG_DSN` is set, that server
  is used and nothing is started or stopped; otherwise offchain.devnet.postgres starts a cluster on a
  free port of 127.0.0.1 the first time a test asks, and stops it when the run ends. A machine without
  PostgreSQL fails these tests with the error saying how to install it (`scripts/ensure_postgres.sh`,
  which `make test` runs): a silently skipped storage test would hide exactly the breakage it is for.
* `pg_schema` (function): a fresh schema name, dropped with everything in it after the test, so tests
  sharing the server do not see each other's tables.

pytest makes one fixture definition per module that imports a fixture, so a session fixture imported
into two modules would start two clusters; the module-level reference count below makes them share one.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from offchain.devnet.postgres import PostgresServer, start_postgres

ENV_DSN = "CONET_TEST_PG_DSN"

_lock = threading.Lock()
_server: PostgresServer | None = None
_users = 0


def _acquire() -> str:
    global _server, _users
    given = os.environ.get(ENV_DSN)
    if given:
        return given
    with _lock:
        if _server is None:
            _server = start_postgres()
        _users += 1
        return _server.dsn


def _release() -> None:
    global _server, _users
    if os.environ.get(ENV_DSN):
        return
    with _lock:
        _users -= 1
        if _users == 0 and _server is not None:
            _server.stop()
            _server = None


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    dsn = _acquire()
    try:
        yield dsn
    finally:
        _release()


def drop_schema(dsn: str, schema: str) -> None:
    """Drop `schema` and everything in it; waits at most 10 s for locks other sessions hold."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET lock_timeout = '10s'")
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture
def pg_schema(postgres_dsn: str) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:16]}"
    yield name
    drop_schema(postgres_dsn, name)
