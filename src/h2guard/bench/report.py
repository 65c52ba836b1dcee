"""The scoreboard in the terminal (a Rich table), the one-paragraph verdict, and the files.

The verdict is written from the cells, never by hand: per client, what it lost, where, with
which leading error, and which logical POSTs it applied twice; clients with a clean sheet are
named as such. The same text goes into ``--json`` (``"verdict"``), the HTML report and the
README's scoreboard.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

__all__ = ["cell_style", "render_table", "verdict", "write_json"]


def _cells_by(result: Mapping[str, Any]) -> dict[tuple[str, str], Mapping[str, Any]]:
    return {(c["client"], c["scenario"]): c for c in result.get("cells", [])}


def cell_style(c: Mapping[str, Any]) -> str:
    """``ok`` (every request succeeded, nothing written twice), ``warn`` (95% or more),
    ``bad`` (less), ``dup`` (a POST applied twice: the worst, whatever the success rate)."""
    if c.get("duplicates"):
        return "dup"
    rate = float(c.get("success_rate") or 0.0)
    if rate >= 1.0:
        return "ok"
    return "warn" if rate >= 0.95 else "bad"


_STYLES = {"ok": "bold green", "warn": "bold yellow", "bad": "bold red", "dup": "bold magenta"}


def _pct(rate: float) -> str:
    if rate >= 1.0:
        return "100%"
    return f"{min(rate * 100, 99.9):.1f}%" if rate >= 0.995 else f"{rate * 100:.0f}%"


def render_table(result: Mapping[str, Any]) -> Table:
    """Rows are clients, columns scenarios; each cell the success rate, then ``Nx2`` when N
    logical POSTs were applied more than once."""
    table = Table(title="h2guard bench: success rate (and POSTs written twice)",
                  title_justify="left", header_style="bold", show_lines=False,
                  padding=(0, 0 if len(result.get("scenarios", [])) > 5 else 1))
    table.add_column("client", no_wrap=True)
    scenarios = [s["name"] for s in result.get("scenarios", [])]
    for name in scenarios:  # "request-cap" -> "request\ncap": 80 columns hold 6 scenarios
        words = name.split("-")
        table.add_column("\n".join(words), justify="center",
                         min_width=min(9, max(len(w) for w in words)))
    table.add_column("all", justify="right")
    cells = _cells_by(result)
    for client in result.get("clients", []):
        name = client["name"]
        if not client.get("available"):
            continue
        row: list[Text | str] = [Text(name)]
        ok = total = dups = 0
        for sc in scenarios:
            c = cells.get((name, sc))
            if c is None:
                row.append(Text("-", style="dim"))
                continue
            style = _STYLES[cell_style(c)]
            text = Text(_pct(float(c["success_rate"])), style=style)
            if c["duplicates"]:
                text.append(f" {c['duplicates']}x2", style="magenta")
            if c.get("problem"):
                text.append(" !", style="bold red")
            row.append(text)
            ok += int(c["succeeded"])
            total += int(c["requests"])
            dups += int(c["duplicates"])
        summary = Text(_pct(ok / total) if total else "-")
        if dups:
            summary.append(f" {dups}x2", style="magenta")
        row.append(summary)
        table.add_row(*row)
    return table


def _where(items: Sequence[tuple[str, float]]) -> str:
    return ", ".join(f"{name} {value}" for name, value in items)


def verdict(result: Mapping[str, Any]) -> str:
    """One paragraph: who lost requests where (and the leading error), who wrote twice, who
    came through clean. Built only from the cells."""
    cells = _cells_by(result)
    scenarios = [s["name"] for s in result.get("scenarios", [])]
    clients = [c for c in result.get("clients", []) if c.get("available")]
    if not clients or not cells:
        return "No cell ran: no client was available (see the clients' reasons)."
    clean: list[str] = []
    lossy: list[tuple[int, str]] = []
    dup_notes: list[str] = []
    for client in clients:
        name = client["name"]
        mine = [cells[(name, s)] for s in scenarios if (name, s) in cells]
        failed = sum(int(c["failed"]) for c in mine)
        total = sum(int(c["requests"]) for c in mine)
        dups = [(c["scenario"], int(c["duplicates"])) for c in mine if c["duplicates"]]
        if not failed and not dups:
            clean.append(name)
            continue
        if failed:
            worst = sorted((c for c in mine if c["failed"]), key=lambda c: c["success_rate"])
            places = ", ".join(f"{c['scenario']} {_pct(float(c['success_rate']))}"
                               for c in worst[:3])
            more = f" and {len(worst) - 3} more" if len(worst) > 3 else ""
            seen: dict[str, int] = {}
            for c in mine:
                for e in c.get("errors") or []:
                    seen[e["text"]] = seen.get(e["text"], 0) + int(e["count"])
            lead = max(seen, key=lambda k: seen[k]) if seen else ""
            if len(lead) > 80:
                lead = lead[:77] + "..."
            lossy.append((failed, f"{name} lost {failed} of {total} ({places}{more}"
                                  + (f"; mostly \"{lead}\")" if lead else ")")))
        if dups:
            n = sum(d for _, d in dups)
            dup_notes.append(f"{name} {n} ({', '.join(s for s, _ in dups)})")
    parts: list[str] = []
    n_sc = len(scenarios)
    if clean:
        who = ", ".join(clean)
        parts.append(f"{who} {'was' if len(clean) == 1 else 'were'} clean: every request "
                     f"succeeded and no POST was written twice in all {n_sc} scenarios.")
    else:
        parts.append(f"No client came through all {n_sc} scenarios clean.")
    if lossy:
        lossy.sort(key=lambda x: -x[0])
        parts.append("Lost requests: " + "; ".join(text for _, text in lossy) + ".")
    if dup_notes:
        parts.append("POSTs applied twice (the server's ledger): " + "; ".join(dup_notes)
                     + " — a retry that resends what the server may already have processed,"
                       " without an Idempotency-Key.")
    if "h2guard" in {c["name"] for c in clients} and "h2guard" not in clean:
        parts.append("h2guard itself is not clean here: see its cells' errors.")
    return " ".join(parts)


def write_json(result: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write the result document (atomically: a reader never sees half a file)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    tmp.replace(target)
    return target


def print_summary(result: Mapping[str, Any], console: Console) -> None:
    """The table, the clients that could not run, and the verdict."""
    console.print(render_table(result))
    for client in result.get("clients", []):
        if not client.get("available"):
            console.print(f"[dim]not run: {client['name']} — {client.get('reason')}[/]")
    problems = [c for c in result.get("cells", []) if c.get("problem")]
    for c in problems:
        console.print(f"[red]![/] {c['client']} in {c['scenario']}: {c['problem']}")
    console.print()
    console.print(Text(str(result.get("verdict") or verdict(result))))
