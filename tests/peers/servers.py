"""Real middleboxes (nginx, HAProxy) run as bounded child processes, for the peer tests.

A daemon runs in the foreground as our child in its own process group, with its configuration,
logs and pid file in the test's temporary directory; it listens on free loopback ports (others
are picked if one was taken before it could bind), and is stopped at the end of the block:
SIGTERM, then SIGKILL to the whole process group. Every wait is bounded.

Test modules import this as ``servers`` (pytest puts ``tests/peers`` on ``sys.path`` for the
modules in it, which is not a package). The program's path comes from ``peer.need`` (the peers
conftest), which skips the test loudly when it is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

__all__ = ["START_TIMEOUT", "STOP_TIMEOUT", "Daemon", "daemon", "free_ports", "nginx",
           "nginx_conf"]

START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0


@dataclasses.dataclass
class Daemon:
    """A real middlebox running in the foreground as our child, in its own process group."""

    name: str
    proc: asyncio.subprocess.Process
    workdir: Path
    ports: list[int]
    output: Path  # its stdout and stderr

    @property
    def port(self) -> int:
        return self.ports[0]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        try:
            return self.output.read_text(errors="replace")[-4000:]
        except OSError:
            return ""


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


async def _listening(daemon: Daemon, deadline: float) -> bool:
    """Wait until every port accepts connections; False if a port was taken by someone else."""
    loop = asyncio.get_running_loop()
    for port in daemon.ports:
        while True:
            if daemon.proc.returncode is not None:
                if "in use" in daemon.log():
                    return False  # a port we picked was taken in between: try other ports
                pytest.fail(f"{daemon.name} exited with {daemon.proc.returncode} before it "
                            f"listened on {port}:\n{daemon.log()}")
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port), 0.5)
            except (OSError, TimeoutError):
                if loop.time() > deadline:
                    pytest.fail(f"{daemon.name} did not listen on {port} within "
                                f"{START_TIMEOUT} s:\n{daemon.log()}")
                await asyncio.sleep(0.02)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)
            break
    return True


async def _stop(daemon: Daemon) -> None:
    """SIGTERM (both programs stop at once on it), then SIGKILL the whole process group, which
    also takes any worker left behind; every wait bounded."""
    proc = daemon.proc
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
        except TimeoutError:
            pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if proc.returncode is None:
        await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)


@contextlib.asynccontextmanager
async def daemon(name: str, workdir: Path, nports: int,
                 configure: Callable[[list[int]], Sequence[str]]) -> AsyncIterator[Daemon]:
    """Run a middlebox whose command line ``configure(ports)`` writes the configuration for;
    picks free loopback ports (and others, if one was taken before the program bound it)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT
    for attempt in range(3):
        ports = free_ports(nports)
        args = list(configure(ports))
        output = workdir / f"{name}-{attempt}.out"
        with output.open("wb") as sink:
            proc = await asyncio.create_subprocess_exec(
                *args, stdin=asyncio.subprocess.DEVNULL, stdout=sink,
                stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        running = Daemon(name, proc, workdir, ports, output)
        try:
            if not await _listening(running, deadline):
                continue
            yield running
            return
        finally:
            await _stop(running)
    pytest.fail(f"{name}: three sets of free ports were all taken before it could bind them")


def nginx_conf(workdir: Path, servers: str, *, worker_connections: int = 256) -> str:
    """A whole nginx.conf: one worker, an access log (method, uri, status, X-Request-Id,
    protocol) and every temporary path in ``workdir``; ``servers`` goes in the http block."""
    # As root the workers would run as nobody and could not read the 0700 temporary
    # directory; `user` may only be given when nginx starts as root.
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = "\n".join(f"    {kind}_temp_path {workdir}/{kind}_temp;"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""{user}worker_processes 1;
events {{ worker_connections {worker_connections}; }}
http {{
    log_format ids '$request_method $uri $status rid=$http_x_request_id $server_protocol';
    access_log {workdir}/access.log ids;
{temp}
{servers}
}}
"""


@contextlib.asynccontextmanager
async def nginx(peer: Any, workdir: Path, nports: int, servers: Callable[[list[int]], str],
                *, worker_connections: int = 256) -> AsyncIterator[Daemon]:
    """Real nginx (skips loudly if it is missing) with ``servers(ports)`` in its http block."""
    binary = peer.need("nginx")

    def configure(ports: list[int]) -> list[str]:
        conf = workdir / "nginx.conf"
        conf.write_text(nginx_conf(workdir, servers(ports),
                                   worker_connections=worker_connections))
        return [binary, "-p", str(workdir), "-e", "stderr", "-c", str(conf),
                "-g", f"daemon off; pid {workdir}/nginx.pid; error_log stderr;"]

    async with daemon("nginx", workdir, nports, configure) as running:
        yield running
