"""``h2guard bench``: the command line of the resilience scoreboard."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from h2guard.bench.clients import CLIENTS, QUICK_CLIENTS

__all__ = ["register"]

_CLIENT_HELP = ("Run only this client (repeat for more): " + ", ".join(CLIENTS) + ".")


def _fail(console: Console, message: str, code: int = 2) -> typer.Exit:
    console.print(f"[red]error:[/] {escape(message)}", soft_wrap=True, highlight=False)
    return typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add ``bench`` to the top-level ``h2guard`` command."""

    @app.command("bench")
    def bench(
        quick: Annotated[bool, typer.Option(
            "--quick", help="The quick set: 6 scenarios, fewer requests, every client but "
                            "OkHttp (about a minute on 2 cores): what `make demo` runs.")] = False,
        scenario: Annotated[list[str] | None, typer.Option(
            "--scenario", "-s", help="Run only this scenario (repeat for more; 'targeted' and "
                                     "'middlebox' name groups). See --list.",
            show_default=False)] = None,
        client: Annotated[list[str] | None, typer.Option(
            "--client", "-c", help=_CLIENT_HELP, show_default=False)] = None,
        scenario_file: Annotated[list[Path] | None, typer.Option(
            "--scenario-file", help="Also run a bench scenario file of your own: a chaos "
                                    "scenario with a \\[bench] table (see docs/bench.md).",
            show_default=False)] = None,
        json_path: Annotated[Path | None, typer.Option(
            "--json", help="Write the result document (h2guard.bench/1) here.",
            show_default=False)] = None,
        html_path: Annotated[Path | None, typer.Option(
            "--html", help="Write the self-contained HTML report here (works offline).",
            show_default=False)] = None,
        seed: Annotated[int, typer.Option(help="Seed for every probabilistic fault: the same "
                                               "seed injects the same faults.")] = 7,
        timeout: Annotated[float | None, typer.Option(
            help="Seconds each request may take (default 3 with --quick, else 10): a client that "
                 "hangs on a dead connection costs this much per request.",
            show_default=False)] = None,
        list_only: Annotated[bool, typer.Option(
            "--list", help="List the scenarios and clients (and which can run here), then "
                           "exit.")] = False,
    ) -> None:
        """Run HTTP/2 clients through failure scenarios, side by side, and score them.

        Each cell is one client against a fresh chaos server with one scenario (REFUSED_STREAM
        bursts, stream limits, request caps, GOAWAY storms, stale idle connections, resets
        after the app ran, servers that run streams above their own GOAWAY, overload,
        flow-control stalls, large bodies, and the stock limits of nginx, haproxy, Envoy and
        cloud load balancers). Every client sends the same requests: success rate, POSTs
        written twice (from the server's side-effect ledger), p50/p99 latency, attempts per
        request and throughput. Clients: h2guard, httpx, httpx with a blind retry, niquests,
        and (when installed) Go net/http, Java HttpClient, OkHttp, Node http2 and curl, run
        as driver programs. `make peers` installs the runtimes.

        Examples: `h2guard bench --quick --html report.html` (what `make demo` runs);
        `h2guard bench -s stream-limit -c java -c h2guard`; `h2guard bench --list`.
        """
        from h2guard.bench.report import print_summary, verdict, write_json
        from h2guard.bench.runner import BenchError, BenchHooks, run_bench
        from h2guard.bench.scenarios import select_scenarios
        from h2guard.chaos.scenario import ScenarioError

        console = Console()
        err = Console(stderr=True)
        try:
            scenarios = select_scenarios(scenario or [], quick=quick,
                                         extra_files=[str(p) for p in scenario_file or []])
        except ScenarioError as exc:
            raise _fail(err, str(exc)) from None
        names = list(client or (QUICK_CLIENTS if quick else CLIENTS))
        unknown = [n for n in names if n not in CLIENTS]
        if unknown:
            raise _fail(err, f"unknown client {unknown[0]!r}; use one of {', '.join(CLIENTS)}")
        if timeout is not None and not 0 < timeout <= 300:
            raise _fail(err, "--timeout takes seconds above 0 and at most 300")
        if list_only:
            _list(console, scenarios, names, quick=quick)
            return
        for target in (json_path, html_path):
            if target is not None and target.is_dir():
                raise _fail(err, f"{target} is a directory; give a file name")

        total_cells = 0
        progress = Progress(TextColumn("{task.description}"), BarColumn(),
                            MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                            transient=True)
        overall: TaskID | None = None
        current: TaskID | None = None
        state: dict[str, Any] = {"available": 0}

        def preparing(name: str) -> None:
            if console.is_terminal:
                console.print(f"[dim]preparing {name}... (a driver builds on first use)[/]",
                              end="\r")

        def clients_ready(infos: list[Any]) -> None:
            nonlocal overall, total_cells
            ready = [i for i in infos if i.available]
            state["available"] = len(ready)
            for i in infos:
                if i.available:
                    console.print(f"[green]✓[/] {i.name:<18} {escape(i.version or '')}")
                else:
                    console.print(f"[yellow]-[/] {i.name:<18} [dim]{escape(i.reason or '')}[/]")
            total_cells = len(ready) * len(scenarios)
            overall = progress.add_task(f"{len(scenarios)} scenarios x {len(ready)} clients",
                                        total=total_cells)
            progress.start()

        def cell_started(name: str, sc: str, requests: int) -> None:
            nonlocal current
            if current is not None:
                progress.remove_task(current)
            current = progress.add_task(f"  {sc} · {name}", total=requests)

        def request_done(ok: bool) -> None:
            if current is not None:
                progress.advance(current)

        def cell_done(cell: dict[str, Any]) -> None:
            if overall is not None:
                progress.advance(overall)
            rate = cell["success_rate"] * 100
            mark = "[green]✓[/]" if rate >= 100 and not cell["duplicates"] else "[red]✗[/]"
            dup = f", [magenta]{cell['duplicates']} written twice[/]" if cell["duplicates"] \
                else ""
            progress.console.print(f"{mark} {cell['scenario']:<16} {cell['client']:<18} "
                                   f"{rate:5.1f}%{dup}", highlight=False)

        hooks = BenchHooks(clients_ready=clients_ready, cell_started=cell_started,
                           request_done=request_done, cell_done=cell_done, preparing=preparing)
        try:
            result = asyncio.run(run_bench(scenarios=scenarios, clients=names, quick=quick,
                                           seed=seed, timeout_s=timeout, hooks=hooks))
        except BenchError as exc:
            progress.stop()
            raise _fail(err, str(exc), 1) from None
        except KeyboardInterrupt:
            progress.stop()
            raise _fail(err, "interrupted", 130) from None
        progress.stop()
        result["verdict"] = verdict(result)
        console.print()
        print_summary(result, console)
        if json_path is not None:
            written = write_json(result, json_path)
            console.print(f"\nJSON: {written}")
        if html_path is not None:
            from h2guard.bench.html import render_html

            html_path.parent.mkdir(parents=True, exist_ok=True)
            html_path.write_text(render_html(result), encoding="utf-8")
            console.print(f"HTML report: {html_path.resolve()}  "
                          f"[dim](open it in a browser: file://{html_path.resolve()})[/]")
        if not state["available"]:
            raise typer.Exit(1)


def _list(console: Console, scenarios: list[Any], names: list[str], *, quick: bool) -> None:
    from rich.table import Table

    from h2guard.bench.clients import get_client

    table = Table(title="scenarios" + (" (--quick)" if quick else ""), title_justify="left")
    for col in ("name", "kind", "what", "requests", "at once"):
        table.add_column(col)
    for s in scenarios:
        w = s.workload(quick=quick)
        table.add_row(s.name, s.kind, s.description, str(w.requests), str(w.concurrency))
    console.print(table)
    clients = Table(title="clients", title_justify="left")
    for col in ("name", "language", "runs here", "version or why not"):
        clients.add_column(col)
    for n in names:
        info = get_client(n).probe()
        clients.add_row(n, info.language, "yes" if info.available else "no",
                        info.version if info.available else (info.reason or ""))
    console.print(clients)
    console.print(f"[dim]cache for built drivers: "
                  f"{os.environ.get('XDG_CACHE_HOME', '~/.cache')}/h2guard/bench[/]")
