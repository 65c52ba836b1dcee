"""Real Redis and PostgreSQL servers for the idempotency store tests, on loopback.

Each server runs as our child in its own process group, with its data in a fresh temporary
directory, on a free 127.0.0.1 port (another is picked if that one was taken before the server
bound it), and is stopped at the end: its shutdown signal, then SIGKILL to the whole process
group, then the directory is removed. Every wait is bounded; a server that does not come up
fails with the tail of its log. Servers still running when the interpreter exits (an
interrupted run whose finalizers did not get to them) are killed by an ``atexit`` hook.

PostgreSQL refuses to run as root: as root, the server runs as the ``postgres`` system user
(the Debian package makes it; if it is missing, a system user ``h2guard-pg`` is made), with
the directory handed to it; run by anyone else, as that user.

Test modules here import this as ``store_servers`` (``tests/idempotency`` is not a package;
pytest puts it on ``sys.path``; ``servers`` would clash with ``tests/peers/servers.py``).

A program missing here skips the tests that need it, loudly, naming the Debian package
(``scripts/install-peers.sh``, run by ``make test``, installs it).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import dataclasses
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import warnings
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

__all__ = ["MISSING", "STARTED", "FreezingProxy", "Server", "closed_port", "need",
           "silent_listener", "start_postgres", "start_redis"]

START_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0

# program -> Debian package, for what was missing this run (the terminal summary repeats it)
MISSING: dict[str, str] = {}
# name -> seconds from spawn to ready, for the terminal summary
STARTED: list[tuple[str, float]] = []
_LIVE: set[Server] = set()


@dataclasses.dataclass(eq=False)
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    workdir: Path
    port: int
    log: Path
    url: str = ""
    stop_signal: int = signal.SIGTERM
    startup_seconds: float = 0.0

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Stop it (bounded), kill what is left of its process group, remove its directory."""
        _LIVE.discard(self)
        proc = self.proc
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(self.stop_signal)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(STOP_TIMEOUT)
        shutil.rmtree(self.workdir, ignore_errors=True)


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.stop()


def need(program: str, package: str, path: str | None) -> str:
    """``path`` if the program is there; else skip loudly, naming the Debian package."""
    if path is not None:
        return path
    MISSING[program] = package
    message = (f"SERVER PROGRAM MISSING: `{program}` is not installed, so this test did not "
               f"run. Install the Debian package `{package}` (apt-get install {package}); "
               f"`make test` (scripts/install-peers.sh) installs it.")
    warnings.warn(message, UserWarning, stacklevel=2)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def closed_port() -> int:
    """A loopback port nothing listens on (connections are refused at once)."""
    return free_port()


@contextlib.asynccontextmanager
async def silent_listener() -> AsyncIterator[int]:
    """A port that accepts TCP connections and then never says a word: the server that hangs.

    The kernel completes the handshake from the listen backlog; nobody ever reads or writes."""
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield sock.getsockname()[1]
    finally:
        sock.close()
        await asyncio.sleep(0)


def _spawn(args: list[str], workdir: Path, log: Path, *,
           user: str | None = None) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            cwd=workdir, start_new_session=True, user=user,
            group=None if user is None else pwd.getpwnam(user).pw_gid,
            extra_groups=None if user is None else [],
            env={"PATH": "/usr/bin:/bin", "LANG": "C", "LC_ALL": "C", "TZ": "UTC"})


def _wait_ready(server: Server, check: Callable[[], bool], deadline: float, *,
                taken: str = "in use") -> bool:
    """Poll ``check()`` until it is true; False if the port was taken by someone else first."""
    while True:
        if server.proc.poll() is not None:
            log = server.log_tail()
            if taken.lower() in log.lower():
                return False
            raise RuntimeError(f"{server.name} exited with {server.proc.returncode} before it "
                               f"was ready:\n{log}")
        if check():
            return True
        if time.monotonic() > deadline:
            raise RuntimeError(f"{server.name} was not ready within {START_TIMEOUT:g} s:\n"
                               f"{server.log_tail()}")
        time.sleep(0.02)


# -- Redis -------------------------------------------------------------------------------


def _redis_pings(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(*, name: str = "redis-server") -> Server:
    """A fresh redis-server on 127.0.0.1, no persistence. Skips loudly if it is missing."""
    program = need("redis-server", "redis-server",
                   shutil.which("redis-server") or
                   (p if os.path.exists(p := "/usr/bin/redis-server") else None))
    workdir = Path(tempfile.mkdtemp(prefix="h2guard-redis-"))
    log = workdir / "redis.log"
    started = time.monotonic()
    deadline = started + START_TIMEOUT
    try:
        for _ in range(5):
            port = free_port()
            proc = _spawn([program, "--port", str(port), "--bind", "127.0.0.1",
                           "--save", "", "--appendonly", "no", "--dir", str(workdir),
                           "--daemonize", "no", "--protected-mode", "yes",
                           "--databases", "1"], workdir, log)
            server = Server(name, proc, workdir, port, log, url=f"redis://127.0.0.1:{port}/0")
            _LIVE.add(server)
            if _wait_ready(server, lambda port=port: _redis_pings(port), deadline):
                server.startup_seconds = time.monotonic() - started
                STARTED.append((name, server.startup_seconds))
                return server
            _LIVE.discard(server)
        raise RuntimeError(f"{name}: every port tried was taken:\n{log.read_text()[-4000:]}")
    except BaseException:
        for server in [s for s in _LIVE if s.workdir == workdir]:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        raise


# -- PostgreSQL --------------------------------------------------------------------------


def _postgres_bindir() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


def _postgres_user() -> str | None:
    """The user to run PostgreSQL as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for user in ("postgres", "h2guard-pg"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(user)
            return user
    subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                    "--shell", "/usr/sbin/nologin", "h2guard-pg"],
                   check=True, capture_output=True, timeout=30)
    return "h2guard-pg"


def _run_as(user: str | None, args: list[str], workdir: Path, log: Path,
            timeout: float) -> None:
    proc = _spawn(args, workdir, log, user=user)
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(STOP_TIMEOUT)
        raise RuntimeError(f"{args[0]} did not finish within {timeout:g} s:\n"
                           f"{log.read_text(errors='replace')[-4000:]}") from None
    if code != 0:
        raise RuntimeError(f"{' '.join(args)} exited with {code}:\n"
                           f"{log.read_text(errors='replace')[-4000:]}")


def start_postgres(*, name: str = "postgres", database: str = "h2guard_test") -> Server:
    """A fresh PostgreSQL cluster on 127.0.0.1 (trust auth, fsync off) with ``database`` in
    it; ``Server.url`` is its DSN. Skips loudly if PostgreSQL or psycopg is missing."""
    bindir = need("initdb", "postgresql", _postgres_bindir())
    try:
        import psycopg
    except ImportError:
        pytest.skip("psycopg is not installed: pip install 'h2guard[postgres]'")
    user = _postgres_user()
    superuser = "postgres"
    workdir = Path(tempfile.mkdtemp(prefix="h2guard-pg-"))
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(workdir, entry.pw_uid, entry.pw_gid)
    log = workdir / "postgres.log"
    started = time.monotonic()
    deadline = started + START_TIMEOUT
    server: Server | None = None
    try:
        _run_as(user, [f"{bindir}/initdb", "-D", str(workdir / "data"), "-U", superuser,
                       "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync",
                       "--no-instructions"], workdir, log, START_TIMEOUT)
        for _ in range(5):
            port = free_port()
            proc = _spawn([
                f"{bindir}/postgres", "-D", str(workdir / "data"), "-h", "127.0.0.1",
                "-p", str(port), "-k", str(workdir), "-c", "fsync=off",
                "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                "-c", "max_connections=200", "-c", "shared_buffers=32MB",
                "-c", "log_min_messages=warning", "-c", "logging_collector=off",
            ], workdir, log, user=user)
            dsn = f"postgresql://{superuser}@127.0.0.1:{port}/postgres"
            server = Server(name, proc, workdir, port, log, url=dsn,
                            stop_signal=signal.SIGINT)  # "fast" shutdown: clients or not
            _LIVE.add(server)

            def accepts(dsn: str = dsn) -> bool:
                try:
                    with psycopg.connect(dsn, connect_timeout=2):
                        return True
                except psycopg.OperationalError:
                    return False

            if _wait_ready(server, accepts, deadline, taken="could not bind"):
                break
            _LIVE.discard(server)
            server = None
        else:
            raise RuntimeError(f"{name}: every port tried was taken:\n"
                               f"{log.read_text(errors='replace')[-4000:]}")
        with psycopg.connect(server.url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{database}"')
        server.url = f"postgresql://{superuser}@127.0.0.1:{server.port}/{database}"
        server.startup_seconds = time.monotonic() - started
        STARTED.append((name, server.startup_seconds))
        return server
    except BaseException:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        raise


class FreezingProxy:
    """A TCP proxy on loopback to ``port`` that can stop forwarding on command: the server
    (or the network to it) that goes silent in the middle of a conversation. ``freeze()``
    keeps every connection open and says nothing more, in either direction."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.frozen = False
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> FreezingProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)
        for writer in self._writers:
            writer.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 2.0)

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def freeze(self) -> None:
        self.frozen = True

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                if self.frozen:
                    await asyncio.Event().wait()  # swallow it, forever (until cancelled)
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self._writers.append(writer)
        if self.frozen:
            await asyncio.Event().wait()
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        self._writers.append(up_writer)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer),
                             return_exceptions=True)
