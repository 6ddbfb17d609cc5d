"""Shared fixtures: one PostgreSQL server for the session, started only when a test asks for it; the code sandbox's
mode for a machine with no boundary."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """On a machine with no sandbox boundary (no bubblewrap, no usable uid) "auto" refuses to run model code; the
    suite's programs are its own, so it runs them behind the guard, says so once, and the escape tests that need a
    boundary skip as before."""
    if os.environ.get("MEMCOLLAB_SANDBOX"):
        return
    from memcollab.grading.sandbox import SandboxError, isolation_mode

    try:
        isolation_mode()
    except SandboxError as exc:
        os.environ["MEMCOLLAB_SANDBOX"] = "guard"
        config.issue_config_time_warning(pytest.PytestWarning(f"tests run code behind the guard alone: {exc}"), 2)


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
