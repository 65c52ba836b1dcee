"""A chaos server in a child process, for tests that measure what the server itself costs.

An in-process server shares its heap with the test (and with the client the test runs), so
its memory cannot be told apart; a child process has its own ``/proc/PID/status``. The child
is ``python -m h2guard chaos serve --h2c --port 0 --quiet ...``, whose first stdout line is
its URL. Everything is bounded: start-up waits at most :data:`START_TIMEOUT`, and the block
ends with SIGTERM, then SIGKILL to the child's whole process group.

:class:`RssWatch` samples a child's resident set while the test works, and stops the work as
soon as growth passes the limit: a server that buffers without bound would otherwise take
gigabytes of the (shared) machine before the assertion at the end could fail.

    async with chaos_process(tmp_path) as upstream, \\
            chaos_process(tmp_path, "--upstream", upstream.h2c_url) as proxy:
        watch = RssWatch(proxy, limit=64 * MB)
        await watch.baseline()
        result = await watch.run(download(proxy.url), timeout=60, progress=lambda: ...)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest

__all__ = ["MB", "START_TIMEOUT", "STOP_TIMEOUT", "ChaosProcess", "RssWatch", "chaos_process",
           "rss_bytes"]

T = TypeVar("T")

MB = 1024 * 1024
START_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0


def rss_bytes(pid: int) -> int:
    """The resident set size of ``pid`` now (VmRSS in /proc/PID/status), in bytes."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/{pid}/status has no VmRSS line (a zombie?)")


@dataclass
class ChaosProcess:
    """A running ``h2guard chaos serve`` child: its URL, pid and output file."""

    proc: asyncio.subprocess.Process
    url: str
    output: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def netloc(self) -> str:
        return self.url.split("://", 1)[1]

    @property
    def h2c_url(self) -> str:
        """This server as a proxy's upstream, dialled with HTTP/2 prior knowledge."""
        return f"h2c://{self.netloc}"

    @property
    def http1_url(self) -> str:
        """This server as a proxy's HTTP/1.1 upstream (cleartext ports sniff HTTP/1.1)."""
        return f"http://{self.netloc}"

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def log(self) -> str:
        try:
            return self.output.read_text(errors="replace")[-4000:]
        except OSError:
            return ""


@contextlib.asynccontextmanager
async def chaos_process(workdir: Path, *args: str) -> AsyncIterator[ChaosProcess]:
    """Run ``h2guard chaos serve --h2c --port 0 --quiet *args`` until the block ends.

    Output goes to a file, never a pipe: a child blocked on a full pipe nobody reads would
    look exactly like a hung server."""
    output = workdir / f"chaos-{len(list(workdir.glob('chaos-*.out')))}.out"
    cmd = [sys.executable, "-m", "h2guard", "chaos", "serve", "--h2c", "--port", "0",
           "--quiet", *args]
    with output.open("wb") as sink:
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdin=asyncio.subprocess.DEVNULL, stdout=sink,
            stderr=asyncio.subprocess.STDOUT, start_new_session=True)
    try:
        url = await _url_line(proc, output, cmd)
        yield ChaosProcess(proc, url, output)
    finally:
        await _stop(proc)


async def _url_line(proc: asyncio.subprocess.Process, output: Path, cmd: list[str]) -> str:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT
    while True:
        text = output.read_text(errors="replace")
        first = text.split("\n", 1)[0]
        if "\n" in text and first.startswith("http"):
            return first.strip()
        if proc.returncode is not None or "\n" in text:
            pytest.fail(f"`{' '.join(cmd)}` did not print its URL first (exit "
                        f"{proc.returncode}):\n{text[-4000:]}")
        if loop.time() > deadline:
            pytest.fail(f"`{' '.join(cmd)}` printed no URL within {START_TIMEOUT} s:\n"
                        f"{text[-4000:]}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 0.02)


async def _stop(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM (a clean stop), then SIGKILL to the process group; every wait bounded."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if proc.returncode is None:
        await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)


@dataclass
class RssWatch:
    """Samples a child's RSS every ``interval`` seconds; growth is measured from
    :meth:`baseline` (call it once the child is warm: first requests import and allocate)."""

    server: ChaosProcess
    limit: int
    interval: float = 0.1
    base: int = 0
    peak: int = 0
    samples: list[tuple[float, int]] = field(default_factory=list)

    @property
    def growth(self) -> int:
        """Peak RSS minus the baseline, in bytes."""
        return max(0, self.peak - self.base)

    def sample(self) -> int:
        rss = self.server.rss()
        self.samples.append((asyncio.get_running_loop().time(), rss))
        self.peak = max(self.peak, rss)
        return rss

    async def baseline(self, settle: float = 0.3) -> int:
        """The idle RSS: the highest of a few samples over ``settle`` seconds."""
        self.samples.clear()
        end = asyncio.get_running_loop().time() + settle
        self.peak = self.sample()
        while asyncio.get_running_loop().time() < end:
            await asyncio.sleep(0.05)
            self.sample()
        self.base = self.peak
        return self.base

    def describe(self) -> str:
        return (f"RSS {self.base / MB:.1f} MB idle, peak {self.peak / MB:.1f} MB: grew "
                f"{self.growth / MB:.1f} MB (limit {self.limit / MB:.0f} MB)")

    async def run(self, work: Awaitable[T], *, timeout: float,
                  progress: Callable[[], str] = lambda: "") -> T:
        """Await ``work`` while sampling; fail the test (cancelling the work) as soon as the
        growth passes the limit, or when ``timeout`` seconds pass."""
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(work)
        started = loop.time()
        try:
            while True:
                self.sample()
                elapsed = loop.time() - started
                if self.growth > self.limit:
                    pytest.fail(f"{self.describe()} after {elapsed:.1f} s, so the work was "
                                f"stopped early; {progress()}")
                if task.done():
                    print(f"\n{progress() or 'done'}: {self.describe()}")  # the figure
                    return task.result()
                if elapsed > timeout:
                    pytest.fail(f"not done within {timeout} s; {self.describe()}; "
                                f"{progress()}")
                await asyncio.wait({task}, timeout=self.interval)
        finally:
            if not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=STOP_TIMEOUT)
