"""Fixtures for the idempotency store tests: real Redis and PostgreSQL servers on loopback.

``redis_url`` and ``postgres_dsn`` (session-scoped) start one server each for the whole run,
the first time a test asks, and stop it at the end (also on Ctrl-C: the finalizers run, and an
``atexit`` hook kills whatever is left). Tests sharing them keep apart by key prefix / table
name. ``throwaway_redis`` is a server of a test's own, to stop in the middle of it.

A missing program skips the tests that need it, loudly, naming its Debian package
(``make test`` installs them via ``scripts/install-peers.sh``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from store_servers import MISSING, STARTED, Server, start_postgres, start_redis


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if STARTED:
        terminalreporter.section("idempotency store servers", sep="-")
        for name, seconds in STARTED:
            terminalreporter.write_line(f"{name}: ready in {seconds:.2f} s")
    if MISSING:
        terminalreporter.section("server programs missing", sep="!", red=True, bold=True)
        for program, package in sorted(MISSING.items()):
            terminalreporter.write_line(
                f"`{program}` not found: the store tests that need it were SKIPPED. Install "
                f"the Debian package `{package}`; `make test` installs it.",
                red=True, bold=True)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Server]:
    server = start_redis()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: Server) -> str:
    """``redis://127.0.0.1:PORT/0`` of a redis-server running for this test session."""
    return redis_server.url


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Server]:
    server = start_postgres()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_dsn(postgres_server: Server) -> str:
    """``postgresql://postgres@127.0.0.1:PORT/h2guard_test`` (trust auth, no password) of a
    PostgreSQL server running for this test session."""
    return postgres_server.url


@pytest.fixture
def throwaway_redis() -> Iterator[Server]:
    """A redis-server of this test's own (stop it with ``.stop()`` to see a dead server)."""
    server = start_redis(name="redis-server (throwaway)")
    try:
        yield server
    finally:
        server.stop()
