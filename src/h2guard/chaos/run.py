"""Running a chaos server from the command line: start, print, wait for Ctrl-C, summarise.

Kept apart from ``cli.py`` (which only wires options) so the same runner serves ``h2guard chaos
serve``, ``make demo`` and the benchmarks. The first line on stdout is the server's URL, printed
once it accepts connections, so a parent process (any language) can read one line and go.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from dataclasses import dataclass
from typing import IO, Any

from rich.console import Console
from rich.table import Table

from h2guard.chaos.model import Scenario
from h2guard.chaos.server import ChaosServer, ServerConfig
from h2guard.events import JsonLinesHook

__all__ = ["RunOptions", "run", "summary_table"]


@dataclass(slots=True)
class RunOptions:
    """Everything ``h2guard chaos serve`` takes, validated by the CLI."""

    scenario: Scenario
    config: ServerConfig
    events_path: str | None = None
    quiet: bool = False
    duration: float | None = None


def summary_table(server: ChaosServer) -> Table:
    """What a run did: faults by kind and code, connections, ledger totals."""
    stats = server.stats()
    table = Table(title=f"h2guard chaos: {stats['scenario']}", title_justify="left")
    table.add_column("fault")
    table.add_column("code / action")
    table.add_column("count", justify="right")
    for row in stats["faults"]:
        table.add_row(row["kind"], row["code"] or "-", str(row["count"]))
    if not stats["faults"]:
        table.add_row("(none injected)", "", "")
    table.add_section()
    table.add_row("connections", "", str(stats["connections"]))
    table.add_row("requests", "", str(stats["requests"]))
    ledger = stats["ledger"]
    table.add_row("ledger effects (POST /orders)", "", str(ledger["total_effects"]))
    table.add_row("duplicate idempotency keys", "", str(ledger["duplicate_keys"]))
    return table


def run(options: RunOptions) -> int:
    """Serve until Ctrl-C (or ``duration``); return the process exit code."""
    runner: Any = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop

        runner = uvloop.run
    return int(runner(_main(options)))


async def _main(options: RunOptions) -> int:
    err = Console(stderr=True)
    server = ChaosServer(options.scenario, config=options.config)
    sink: IO[str] | None = None
    try:
        await server.start()
    except OSError as exc:
        err.print(f"[red]error:[/] cannot listen on {options.config.host}:"
                  f"{options.config.port}: {exc.strerror or exc}", soft_wrap=True)
        return 1
    except ValueError as exc:
        err.print(f"[red]error:[/] {exc}", soft_wrap=True, highlight=False)
        return 2
    print(server.url, flush=True)
    if options.events_path and options.events_path != "-":
        sink = open(options.events_path, "a", encoding="utf-8")  # noqa: SIM115
        server.events.subscribe(JsonLinesHook(sink))
    elif not options.quiet:
        server.events.subscribe(JsonLinesHook(sys.stdout, names=("chaos.fault",
                                                                  "chaos.protocol_error")))
    if not options.quiet:
        _describe(err, server, options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        if options.duration is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), options.duration)
        else:
            await stop.wait()
    finally:
        await server.stop()
        if sink is not None:
            sink.close()
        if not options.quiet:
            err.print(summary_table(server))
    return 0


def _describe(err: Console, server: ChaosServer, options: RunOptions) -> None:
    scenario = options.scenario
    cfg = options.config
    err.print(f"[bold]h2guard chaos[/] serving [cyan]{server.url}[/] "
              f"({'h2c prior knowledge + HTTP/1.1' if cfg.h2c else 'TLS, ALPN h2 + http/1.1'})")
    if server.ca_file:
        err.print(f"  trust this CA: {server.ca_file}  "
                  f"(curl --cacert {server.ca_file} --http2 {server.url}/echo)")
    err.print(f"  scenario: [bold]{scenario.name}[/] — {len(scenario.faults)} fault(s)"
              + (f"; {scenario.description}" if scenario.description else ""))
    if cfg.time_scale != 1.0:
        err.print(f"  time scale: {cfg.time_scale} (a 60 s timeout fires after "
                  f"{60 * cfg.time_scale:g} s)")
    if cfg.upstream:
        err.print(f"  proxying to {cfg.upstream}")
    if server.control is not None:
        err.print(f"  control API: {server.control.url}  (GET /faults, POST /faults, "
                  "GET /ledger, GET /events, GET /metrics)")
    err.print("  endpoints: /echo /bytes/N /delay/MS /status/CODE POST /orders /ledger; "
              "Ctrl-C stops and prints a summary")
