"""The bench runner: every client through every scenario, one fresh chaos server per cell.

For each (scenario, client) cell the runner asks the server host (:mod:`h2guard.bench.host`,
a process of its own) for a fresh chaos server with that scenario, hands the client the
scenario's planned requests, then stops the server and reads its ledger: attempts and effects
per ``x-request-id`` and every injected fault with its time. :func:`h2guard.bench.metrics.cell`
turns that into the scoreboard cell. Cells run one after another, so that no client's load
disturbs another's figures; every wait is bounded (per request, per cell, per host command).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from h2guard.bench.clients import ClientInfo, get_client
from h2guard.bench.metrics import cell
from h2guard.bench.scenarios import BenchScenario

__all__ = ["BenchError", "BenchHooks", "HostProcess", "machine", "run_bench"]

RESULT_VERSION = "h2guard.bench/1"


class BenchError(RuntimeError):
    """The bench itself could not run (the server host failed): one line for the user."""


@dataclass(slots=True)
class BenchHooks:
    """What the CLI shows while the bench runs; every hook is optional."""

    clients_ready: Callable[[list[ClientInfo]], None] | None = None
    cell_started: Callable[[str, str, int], None] | None = None
    request_done: Callable[[bool], None] | None = None
    cell_done: Callable[[dict[str, Any]], None] | None = None
    preparing: Callable[[str], None] | None = None


class HostProcess:
    """The server host subprocess, spoken to in JSON lines; every command is bounded."""

    def __init__(self) -> None:
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "h2guard.bench.host", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
            limit=64 << 20)

    async def command(self, msg: dict[str, Any], *, timeout: float = 30.0) -> dict[str, Any]:
        proc = self.proc
        if proc is None or proc.stdin is None or proc.stdout is None:
            raise BenchError("the chaos server host is not running")
        try:
            proc.stdin.write((json.dumps(msg) + "\n").encode())
            await proc.stdin.drain()
            line = await asyncio.wait_for(proc.stdout.readline(), timeout)
        except (BrokenPipeError, ConnectionResetError, TimeoutError) as exc:
            raise BenchError(f"the chaos server host stopped answering ({type(exc).__name__}):"
                             f" {await self._stderr()}") from None
        if not line:
            raise BenchError(f"the chaos server host exited: {await self._stderr()}")
        reply: dict[str, Any] = json.loads(line)
        if not reply.get("ok"):
            raise BenchError(f"chaos server host: {reply.get('error')}")
        return reply

    async def _stderr(self) -> str:
        proc = self.proc
        if proc is None or proc.stderr is None:
            return ""
        with contextlib.suppress(TimeoutError):
            data = await asyncio.wait_for(proc.stderr.read(4000), 1.0)
            lines = data.decode(errors="replace").strip().splitlines()
            return lines[-1] if lines else "(no message)"
        return "(no message)"

    async def close(self) -> None:
        proc = self.proc
        self.proc = None
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(Exception):
                assert proc.stdin is not None
                proc.stdin.write(b'{"cmd": "quit"}\n')
                await proc.stdin.drain()
                proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), 5.0)
            except TimeoutError:
                proc.kill()
                await proc.wait()


def machine() -> dict[str, Any]:
    """What the figures were measured on (no host name: reports get shared)."""
    return {"python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "platform": platform.platform(terse=True), "cpus": os.cpu_count() or 1}


def _cell_limit(plan: Sequence[Sequence[Any]], concurrency: int, gap: float,
                timeout: float) -> float:
    """The most one cell may take: every request of every wave timing out in turn, plus the
    pauses and start-up (a JVM is slow to start): generous, but finite."""
    total = 20.0
    for i, wave in enumerate(plan):
        total += (gap if i else 0.0) + math.ceil(len(wave) / max(1, concurrency)) * timeout
    return min(total, 600.0)


async def run_bench(*, scenarios: Sequence[BenchScenario], clients: Sequence[str],
                    quick: bool, seed: int = 7, timeout_s: float | None = None,
                    hooks: BenchHooks | None = None) -> dict[str, Any]:
    """Run every available client through every scenario; the ``--json`` document."""
    hooks = hooks or BenchHooks()
    began = time.monotonic()
    infos: list[ClientInfo] = []
    for name in clients:
        if hooks.preparing is not None:
            hooks.preparing(name)
        adapter = get_client(name)
        infos.append(await asyncio.to_thread(adapter.prepare))
    if hooks.clients_ready is not None:
        hooks.clients_ready(infos)
    available = [i.name for i in infos if i.available]
    default_timeout = 3.0 if quick else 10.0
    cells: list[dict[str, Any]] = []
    host = HostProcess()
    await host.start()
    try:
        for sc in scenarios:
            work = sc.workload(quick=quick)
            plan = work.plan()
            per_request = timeout_s if timeout_s is not None else max(default_timeout,
                                                                      sc.timeout or 0.0)
            spec_waves = [[r.to_json() for r in wave] for wave in plan]
            for name in available:
                started_at = await host.command(
                    {"cmd": "start", "scenario": dict(sc.data), "origin": sc.origin,
                     "time_scale": sc.time_scale, "seed": seed})
                spec = {"url": started_at["url"], "ca_file": started_at["ca_file"],
                        "concurrency": work.concurrency, "timeout_s": per_request,
                        "gap_s": work.gap, "waves": spec_waves}
                if hooks.cell_started is not None:
                    hooks.cell_started(name, sc.name, work.requests)

                def on_record(rec: dict[str, object]) -> None:
                    if hooks.request_done is not None:
                        status = rec.get("status")
                        hooks.request_done(rec.get("error") is None and isinstance(status, int)
                                           and 200 <= status < 300)

                limit = _cell_limit(plan, work.concurrency, work.gap, per_request)
                t0 = time.time()
                m0 = time.monotonic()
                problem: str | None = None
                try:
                    run = await get_client(name).run(spec, on_record=on_record, limit_s=limit)
                    records, problem = run.records, run.problem
                except Exception as exc:  # a bug in an adapter must not lose the whole run
                    records, problem = [], f"the client adapter failed: {exc!r}"
                elapsed = time.monotonic() - m0
                await asyncio.sleep(0.05)  # let the server record the last effects
                report = await host.command({"cmd": "stop"})
                result = cell(client=name, scenario=sc.name, plan=plan, records=records,
                              host=report, started=t0, elapsed=elapsed, problem=problem)
                cells.append(result)
                if hooks.cell_done is not None:
                    hooks.cell_done(result)
    finally:
        await host.close()
    from h2guard import __version__

    return {
        "version": RESULT_VERSION,
        "h2guard_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "quick": quick,
        "seed": seed,
        "elapsed_s": round(time.monotonic() - began, 1),
        "machine": machine(),
        "scenarios": [s.to_json(quick=quick) for s in scenarios],
        "clients": [i.to_json() for i in infos],
        "cells": cells,
    }
