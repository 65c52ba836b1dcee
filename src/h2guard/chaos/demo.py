"""``make demo``: reproduce the production "stream was reset" incident on a laptop, then fix it.

It starts a chaos server in-process (TLS, ALPN h2, a fresh CA) for each of a few middlebox set-ups
from docs/facts.md (§3, §7), drives plain ``httpx`` (HTTP/2) at it the way a service would, and
prints what broke, why (from the faults the server injected), and what the server's ledger says
really happened. Then the same traffic again, on a fresh server with the same faults, through
``h2guard.AsyncClient`` (automatic Idempotency-Keys, against a server that honours them), and a
before/after table. No external server is needed.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from h2guard.chaos.model import (
    IdleTimeout,
    MaxConcurrentStreams,
    RequestCap,
    RstStream,
    Scenario,
    Trigger,
)
from h2guard.chaos.server import ChaosServer, ServerConfig
from h2guard.codes import ERROR_CODES

__all__ = ["DemoCase", "default_cases", "run_demo"]


@dataclass(frozen=True, slots=True)
class DemoCase:
    """One set-up: a scenario, how to drive it, and what a reader should take away."""

    title: str
    scenario: Scenario
    method: str
    path: str
    waves: int
    per_wave: int
    concurrency: int
    gap: float
    time_scale: float
    lesson: str
    tags: tuple[str, ...] = field(default=())


def default_cases() -> list[DemoCase]:
    """The set-ups of docs/facts.md §7 and §3, scaled so the whole demo takes ~15 s."""
    tight = Scenario(
        name="nginx-tight",
        description="nginx with keepalive_requests 5; http2_max_concurrent_streams 4; "
                    "keepalive_timeout 2s",
        faults=(RequestCap(max_requests=5), MaxConcurrentStreams(limit=4),
                IdleTimeout(after=2.0, action="goaway")),
    )
    alb = Scenario(
        name="aws-alb-idle",
        description="AWS ALB: 60 s idle timeout (GOAWAY+FIN), PING not counted",
        faults=(IdleTimeout(after=60.0, action="goaway", ping_resets=False,
                            only_without_streams=False),
                MaxConcurrentStreams(limit=128)),
    )
    crash = Scenario(
        name="reset-after-app",
        description="a proxy resets 10% of POST /orders with INTERNAL_ERROR after the app ran",
        faults=(RstStream(code=0x2, at="after_app",
                          when=Trigger(path="/orders", method="POST", probability=0.1)),),
    )
    return [
        DemoCase("nginx, tightened (the measured incident)", tight, "POST", "/orders", 3, 100, 20,
                 2.5, 0.25,
                 "A request cap and a stream limit end streams with GOAWAY and REFUSED_STREAM; "
                 "neither request was processed, so every one was safe to resend — httpx "
                 "resends none."),
        DemoCase("AWS ALB idle timeout (60 s, scaled to 0.6 s)", alb, "GET", "/echo", 4, 40,
                 10, 70.0, 0.01,
                 "The pool kept connections longer than the load balancer's idle timeout: "
                 "the classic stale connection. A pool idle limit below 60 s avoids it."),
        DemoCase("INTERNAL_ERROR after the app ran", crash, "POST", "/orders", 1, 200, 20, 0.0,
                 1.0,
                 "These failed requests DID write an order. A blind retry writes it twice; "
                 "an Idempotency-Key makes the retry safe."),
    ]


_NUMBERS = re.compile(r"\b\d+\b")


def _label(exc: BaseException) -> str:
    text = str(exc) or repr(exc)
    text = _NUMBERS.sub("N", text.splitlines()[0] if text else "")
    if len(text) > 90:
        text = text[:87] + "..."
    return f"{type(exc).__name__}: {text}"


def _client(which: str, server: ChaosServer, case: DemoCase) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=case.concurrency)
    verify = ssl.create_default_context(cafile=server.ca_file) if server.ca_file else True
    if which == "httpx":
        return httpx.AsyncClient(http2=True, verify=verify, limits=limits, timeout=10.0)
    import h2guard

    # keys make the crashed POSTs retryable: this demo's server honours them (run with
    # honour_idempotency_keys), as h2guard.idempotency would in a real service
    return h2guard.AsyncClient(verify=verify, timeout=10.0, seed=7,
                               policy=h2guard.RetryPolicy(idempotency_keys=True, attempts=5))


async def _drive(case: DemoCase, server: ChaosServer, progress: Progress,
                 which: str = "httpx") -> Counter[str]:
    outcomes: Counter[str] = Counter()
    total = case.waves * case.per_wave
    task = progress.add_task(case.title, total=total)
    async with _client(which, server, case) as client:
        sem = asyncio.Semaphore(case.concurrency)

        async def one() -> None:
            async with sem:
                headers = {"x-request-id": uuid.uuid4().hex}
                try:
                    if case.method == "POST":
                        resp = await client.post(server.url + case.path, headers=headers,
                                                 content=b'{"item": "book"}')
                    else:
                        resp = await client.get(server.url + case.path, headers=headers)
                    outcomes[f"HTTP {resp.status_code}"] += 1
                except httpx.HTTPError as exc:
                    outcomes[_label(exc)] += 1
                finally:
                    progress.advance(task)

        for wave in range(case.waves):
            if wave:
                await asyncio.sleep(case.gap * case.time_scale)
            await asyncio.gather(*(one() for _ in range(case.per_wave)))
    return outcomes


def _why(server: ChaosServer) -> list[str]:
    lines = []
    for (kind, code), n in sorted(server.fault_counts.items(), key=lambda kv: -kv[1]):
        meaning = ""
        for entry in ERROR_CODES.values():
            if entry.name == code:
                meaning = f" — {entry.meaning}"
                if entry.fixes:
                    meaning += f"; {entry.fixes[0]}"
        lines.append(f"{n:>5} x {kind} {code}{meaning}")
    return lines


async def _run_case(case: DemoCase, console: Console, which: str = "httpx") -> dict[str, int]:
    fixed = which == "h2guard"
    config = ServerConfig(port=0, time_scale=case.time_scale, seed=7,
                          honour_idempotency_keys=fixed)
    server = ChaosServer(case.scenario, config=config)
    await server.start()
    try:
        if not fixed:
            console.rule(f"[bold]{case.title}")
            console.print(f"[dim]{case.scenario.description}[/]")
        name = "h2guard.AsyncClient" if fixed else "httpx (http2=True)"
        console.print(f"{name}: {case.waves} wave(s) of {case.per_wave} "
                      f"{case.method} {case.path}, concurrency {case.concurrency}"
                      + (f", {case.gap * case.time_scale:g} s apart" if case.waves > 1 else ""))
        with Progress(TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(),
                      console=console, transient=True) as progress:
            outcomes = await _drive(case, server, progress, which)
        await asyncio.sleep(0.05)
        total = sum(outcomes.values())
        ok = sum(n for k, n in outcomes.items() if k.startswith("HTTP 2"))
        table = Table(title_justify="left", show_edge=False)
        table.add_column("what the client saw")
        table.add_column("requests", justify="right")
        for label, n in outcomes.most_common():
            style = "green" if label.startswith("HTTP 2") else "red"
            table.add_row(f"[{style}]{label}[/]", str(n))
        console.print(table)
        style = "green" if ok == total else "bold"
        console.print(f"[{style}]{total - ok} of {total} failed[/]")
        why = _why(server)
        if why and not fixed:
            console.print("what the server injected:")
            for line in why:
                console.print("  " + line)
        twice = len(server.ledger.duplicate_requests)
        if case.method == "POST":
            effects = server.ledger.total
            console.print(f"ledger: {effects} orders written for {ok} successful responses"
                          + (f" — [yellow]{effects - ok} written although the client saw a "
                             "failure[/]" if effects > ok else "")
                          + (f" — [red]{twice} written twice[/]" if twice else ""))
        if not fixed:
            console.print(f"[cyan]lesson:[/] {case.lesson}\n")
        else:
            console.print()
        return {"total": total, "failed": total - ok, "effects": server.ledger.total,
                "duplicates": twice}
    finally:
        await server.stop()


async def run_demo(*, console: Console | None = None, cases: list[DemoCase] | None = None,
                   fix: bool = True) -> dict[str, dict[str, dict[str, int]]]:
    """Run every case with plain httpx, then (``fix``) with h2guard; figures by scenario."""
    console = console or Console()
    started = time.monotonic()
    console.print("[bold]h2guard chaos demo[/]: production HTTP/2 failures, reproduced "
                  "against plain httpx" + (", then fixed with h2guard" if fix else "") + "\n")
    cases = cases or default_cases()
    results: dict[str, dict[str, dict[str, int]]] = {}
    for case in cases:
        figures = {"httpx": await _run_case(case, console)}
        if fix:
            figures["h2guard"] = await _run_case(case, console, "h2guard")
        results[case.scenario.name] = figures
    if fix:
        table = Table(title="before / after", title_justify="left")
        table.add_column("set-up")
        table.add_column("plain httpx failed", justify="right")
        table.add_column("h2guard failed", justify="right")
        table.add_column("orders written twice (h2guard)", justify="right")
        for case in cases:
            got = results[case.scenario.name]
            table.add_row(case.title, f"[red]{got['httpx']['failed']}[/]",
                          f"[green]{got['h2guard']['failed']}[/]",
                          str(got["h2guard"]["duplicates"]) if case.method == "POST" else "-")
        console.print(table)
    console.print(f"[dim]done in {time.monotonic() - started:.1f} s. Reproduce any of these: "
                  "h2guard chaos serve --profile nginx --time-scale 0.01[/]")
    return results
