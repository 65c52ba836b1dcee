"""The bench's server host: chaos servers in a process of their own, one per cell.

The bench runs the chaos server in a separate process so that a client under test (Python ones
run in the bench's own process) never shares a core or an event loop with the server that
injects its faults. The host speaks JSON lines on stdin/stdout:

``{"cmd": "start", "scenario": {...TOML data...}, "time_scale": 0.01, "seed": 7}``
    start a fresh chaos server (TLS with ALPN h2, a fresh CA, Idempotency-Key honoured: the
    service behind it runs ``h2guard.idempotency``) -> ``{"ok": true, "url", "ca_file"}``
``{"cmd": "stop"}``
    stop it and report what happened -> ``{"ok": true, "attempts": {rid: n}, "effects":
    {rid: n}, "effects_total", "requests", "faults": [[time, label], ...], "fault_counts":
    [[kind, code, n], ...]}``
``{"cmd": "quit"}``
    stop and exit (so does end of input)

Every failure is ``{"ok": false, "error": "one line"}``; the host never dies on a bad command.
Run it with ``python -m h2guard.bench.host``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
from typing import Any

from h2guard.chaos.scenario import ScenarioError, parse_scenario
from h2guard.chaos.server import ChaosServer, ServerConfig
from h2guard.events import Event

__all__ = ["main"]

_MAX_FAULTS = 2000
"""Fault events kept per cell for the timeline (the counts stay exact)."""


class _Host:
    def __init__(self) -> None:
        self.server: ChaosServer | None = None
        self.faults: list[tuple[float, str]] = []
        self.dropped = 0
        self.cells = 0
        self.ca_dir = tempfile.TemporaryDirectory(prefix="h2guard-bench-")

    def _record(self, event: Event) -> None:
        if event.name == "chaos.fault" or event.name == "chaos.limit_exceeded":
            if len(self.faults) >= _MAX_FAULTS:
                self.dropped += 1
                return
            data = event.data
            label = str(data.get("kind") or data.get("limit") or event.name)
            code = data.get("code")
            action = data.get("action")
            if action and label == "idle_timeout":
                label = f"{label} {action}"
            if code:
                label = f"{label} {code}"
            self.faults.append((round(event.at, 6), label))

    async def start(self, msg: dict[str, Any]) -> dict[str, Any]:
        if self.server is not None:
            await self.stop()
        data = msg.get("scenario")
        if not isinstance(data, dict):
            return {"ok": False, "error": "start needs a scenario table"}
        try:
            scenario = parse_scenario(data, origin=str(msg.get("origin") or "<bench>"))
        except ScenarioError as exc:
            return {"ok": False, "error": str(exc)}
        scale = msg.get("time_scale", 1.0)
        seed = msg.get("seed", 7)
        if not isinstance(scale, int | float) or not isinstance(seed, int):
            return {"ok": False, "error": "time_scale must be a number and seed an integer"}
        # a fresh CA per cell, in a file of its own: some clients cache what they loaded by
        # file name, and must not meet the previous cell's CA under the same name
        self.cells += 1
        ca_dir = os.path.join(self.ca_dir.name, f"cell-{self.cells}")
        config = ServerConfig(port=0, time_scale=float(scale), seed=seed,
                              honour_idempotency_keys=True, ca_dir=ca_dir)
        server = ChaosServer(scenario, config=config)
        self.faults = []
        self.dropped = 0
        server.events.subscribe(self._record)
        try:
            await server.start()
        except OSError as exc:
            return {"ok": False, "error": f"chaos server did not start: {exc}"}
        self.server = server
        return {"ok": True, "url": server.url, "ca_file": server.ca_file}

    async def stop(self) -> dict[str, Any]:
        server = self.server
        if server is None:
            return {"ok": False, "error": "no server running"}
        self.server = None
        await server.stop()
        ledger = server.ledger
        return {
            "ok": True,
            "attempts": ledger.attempts(),
            "effects": ledger.effects_per_request(),
            "effects_total": ledger.total,
            "requests": server.requests,
            "faults": self.faults,
            "faults_dropped": self.dropped,
            "fault_counts": [[k, c, n] for (k, c), n in sorted(server.fault_counts.items())],
        }


async def _serve() -> None:
    host = _Host()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=16 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            try:
                msg = json.loads(line)
                if not isinstance(msg, dict):
                    raise ValueError("a command is a JSON object")
            except ValueError as exc:
                reply: dict[str, Any] = {"ok": False, "error": f"bad command: {exc}"}
            else:
                cmd = msg.get("cmd")
                if cmd == "start":
                    reply = await host.start(msg)
                elif cmd == "stop":
                    reply = await host.stop()
                elif cmd == "quit":
                    break
                else:
                    reply = {"ok": False, "error": f"unknown command {cmd!r}; use start, stop "
                                                   "or quit"}
            out.write(json.dumps(reply, separators=(",", ":")) + "\n")
            out.flush()
    finally:
        if host.server is not None:
            await host.stop()
        host.ca_dir.cleanup()


def main() -> None:
    """Entry point of ``python -m h2guard.bench.host``."""
    try:
        asyncio.run(_serve())
    except KeyboardInterrupt:  # pragma: no cover - interactive use
        pass


if __name__ == "__main__":
    main()
