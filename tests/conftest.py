"""Shared fixtures: one PostgreSQL server for the session, started only when a test asks for it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[object]:
    """A private PostgreSQL server (tests/postgres_server.py), stopped at the end; skips, saying why, without one."""
    from postgres_server import start

    server, reason = start()
    if server is None:
        pytest.skip(f"no PostgreSQL server for the PostgreSQL store tests: {reason}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server) -> Iterator[str]:
    """A fresh, empty database of the session's server for one test, dropped after it."""
    url = postgres_server.create_database()
    yield url
    postgres_server.drop_database(url)
