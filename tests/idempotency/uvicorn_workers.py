"""A real uvicorn with 4 workers serving a Starlette app behind IdempotencyMiddleware.

The ``uvicorn_app`` fixture (indirect parameter: the store kind, ``sqlite`` / ``redis`` /
``postgres``) yields the base URL and the file where the handler appends one line per run (its
side effect: ``<pid> <request body>``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

WORKERS = 4

APP = textwrap.dedent('''
    """The app under test, built once per uvicorn worker."""
    import asyncio, json, os, uuid

    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from h2guard.idempotency import IdempotencyMiddleware


    def _store():
        spec = os.environ["H2G_STORE"]
        if spec.startswith("sqlite:"):
            from h2guard.idempotency import SQLiteStore
            return SQLiteStore(spec[len("sqlite:"):])
        if spec.startswith("redis://"):
            from h2guard.idempotency import RedisStore
            return RedisStore(spec)
        from h2guard.idempotency import PostgresStore
        return PostgresStore(spec)


    async def orders(request):
        body = await request.body()
        with open(os.environ["H2G_EFFECTS"], "a") as f:  # the side effect, one line per run
            f.write(f"{os.getpid()} {body.decode()}\\n")
        # slow enough that the other 199 arrive while it runs; "x-slow: 1" (not part of the
        # fingerprint): long enough to kill the process mid-request
        await asyncio.sleep(30 if request.headers.get("x-slow") == "1" else 0.3)
        return JSONResponse({"order": str(uuid.uuid4()), "pid": os.getpid()}, status_code=201)


    def make_app():
        app = Starlette(routes=[Route("/orders", orders, methods=["POST"])])
        # 200 requests at once over 4 workers on 2 cores: a store call can queue behind the
        # rest for more than the 2 s default, and these tests are about exactly-once, not
        # about the store timeout (test_middleware.py covers that)
        guarded = IdempotencyMiddleware(app, store=_store(),
                                        lock_ttl=float(os.environ.get("H2G_LOCK_TTL", "30")),
                                        store_timeout=10.0)
        pid = str(os.getpid()).encode()

        async def tag(scope, receive, send):  # which worker answered, on every response
            async def send_tagged(message):
                if message["type"] == "http.response.start":
                    message = dict(message)
                    message["headers"] = [*message.get("headers", []), (b"x-worker-pid", pid)]
                await send(message)
            await guarded(scope, receive, send_tagged)

        return tag
''')


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _store_spec(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:{tmp_path / 'store.sqlite3'}"
    if kind == "redis":
        return str(request.getfixturevalue("redis_url"))
    return str(request.getfixturevalue("postgres_dsn"))


class Uvicorn:
    """One uvicorn process group serving ``workers_app:make_app`` from ``tmp_path``."""

    def __init__(self, tmp_path: Path, store_spec: str, *, workers: int = WORKERS,
                 lock_ttl: float = 30.0) -> None:
        (tmp_path / "workers_app.py").write_text(APP)
        self.effects = tmp_path / "effects.log"
        self.effects.touch()
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "H2G_STORE": store_spec, "H2G_EFFECTS": str(self.effects),
               "H2G_LOCK_TTL": str(lock_ttl),
               "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
        self._log_path = tmp_path / f"uvicorn-{self.port}.log"
        self._log = self._log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "workers_app:make_app",
             "--workers", str(workers), "--host", "127.0.0.1", "--port", str(self.port),
             "--log-level", "warning", "--no-access-log"],
            cwd=tmp_path, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)
        try:
            self._wait_listening()
        except BaseException:
            self.stop()
            raise

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("uvicorn exited: " + self._log_path.read_text())
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("uvicorn did not listen within 30 s") from None
                time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL the whole group: workers die mid-request, nothing is cleaned up."""
        with contextlib.suppress(OSError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._log.close()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        self._log.close()


@pytest.fixture
def uvicorn_app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    server = Uvicorn(tmp_path, _store_spec(request.param, request, tmp_path))
    try:
        yield server.url, server.effects
    finally:
        server.stop()
