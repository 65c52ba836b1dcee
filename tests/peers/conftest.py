"""Helpers for tests that run real programs (curl, nghttp, h2load) against the chaos server.

Every subprocess is bounded: :func:`run` kills the program (and its process group) when its
timeout expires and fails the test with what the program had printed so far. A test whose
program is missing skips with a loud reason naming the Debian package; ``make test`` installs
them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from h2guard.chaos.server import ChaosServer

PACKAGES = {
    "curl": "curl",
    "nghttp": "nghttp2-client",
    "h2load": "nghttp2-client",
    "nginx": "nginx-light",
    "haproxy": "haproxy",
    "tinyproxy": "tinyproxy",
}


_MISSING: dict[str, str] = {}
_MISSING_MODULES: dict[str, str] = {}


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say it at the end of the run too: skipped peer tests are easy to miss."""
    if not _MISSING and not _MISSING_MODULES:
        return
    terminalreporter.section("peer programs missing", sep="!", red=True, bold=True)
    for program, package in sorted(_MISSING.items()):
        terminalreporter.write_line(
            f"`{program}` not found: its peer tests were SKIPPED. Install the Debian package "
            f"`{package}`; `make test` installs it.", red=True, bold=True)
    for module, package in sorted(_MISSING_MODULES.items()):
        terminalreporter.write_line(
            f"Python module `{module}` not importable: its peer tests were SKIPPED. "
            f"`pip install {package}`; `make test` installs it.", red=True, bold=True)


def need(program: str) -> str:
    """The path of ``program``, or skip the test loudly naming the package that provides it."""
    path = shutil.which(program)
    if path is None:
        package = PACKAGES.get(program, program)
        _MISSING[program] = package
        pytest.skip(f"PEER PROGRAM MISSING: `{program}` is not installed, so this test did not "
                    f"run. Install the Debian package `{package}` (apt-get install {package}); "
                    f"`make test` installs it.")
    return path


def need_module(module: str, package: str) -> None:
    """Skip the test loudly when the Python library a real peer lives in is not installed.

    Some peers are libraries, not programs (grpcio's C core is a real HTTP/2 stack): the same
    loud skip and end-of-run summary as :func:`need`, naming the pip package instead."""
    import importlib

    try:
        importlib.import_module(module)
    except ImportError as exc:
        _MISSING_MODULES[module] = package
        pytest.skip(f"PEER LIBRARY MISSING: `import {module}` failed ({exc}), so this test did "
                    f"not run. `pip install {package}` (it is in the dev extra); `make test` "
                    f"installs it.")


@dataclass(frozen=True)
class Result:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def describe(self) -> str:
        return (f"$ {' '.join(self.args)}\nexit {self.returncode}\n--- stdout\n"
                f"{self.stdout[-4000:]}\n--- stderr\n{self.stderr[-4000:]}")


async def run(args: Sequence[str], *, timeout: float = 10.0) -> Result:
    """Run a program to completion, at most ``timeout`` seconds; fail the test if it hangs.

    The program gets its own process group, killed whole on timeout or cancellation."""
    proc = await asyncio.create_subprocess_exec(
        *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=True)
    assert proc.stdout is not None and proc.stderr is not None
    readers = [asyncio.ensure_future(proc.stdout.read()),
               asyncio.ensure_future(proc.stderr.read())]
    timed_out = False
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        timed_out = True
        _kill(proc)
        await asyncio.wait_for(proc.wait(), 5.0)
    except BaseException:
        _kill(proc)
        for reader in readers:
            reader.cancel()
        raise
    done, pending = await asyncio.wait(readers, timeout=5.0)
    for reader in pending:  # a grandchild kept the pipe open: do not wait for it
        reader.cancel()
    out, err = (r.result() if r in done else b"" for r in readers)
    result = Result(tuple(args), -9 if timed_out else int(proc.returncode or 0),
                    out.decode(errors="replace"), err.decode(errors="replace"))
    if timed_out:
        pytest.fail(f"{args[0]} did not finish within {timeout} s and was killed\n"
                    f"{result.describe()}")
    return result


def _kill(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


async def settle(server: ChaosServer, *, timeout: float = 3.0) -> None:
    """Wait until the server has no open connection left (clients closed theirs)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while server.connections and loop.time() < deadline:
        await asyncio.sleep(0.01)
    assert server.connections == 0, f"{server.connections} connections still open"


def fault_events(server: ChaosServer, **match: object) -> list[dict[str, object]]:
    """The data of every ``chaos.fault`` event whose fields equal ``match``."""
    found = []
    for event in server.events.since(0, name="chaos.fault"):
        data = dict(event.data)
        if all(data.get(k) == v for k, v in match.items()):
            found.append(data)
    return found


class PeerKit:
    """The helpers above, as a fixture (test modules never import conftest)."""

    need = staticmethod(need)
    need_module = staticmethod(need_module)
    run = staticmethod(run)
    settle = staticmethod(settle)
    fault_events = staticmethod(fault_events)


@pytest.fixture
def peer() -> PeerKit:
    return PeerKit()
