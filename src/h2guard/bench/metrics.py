"""One scoreboard cell from what a client reported and what the server's ledger saw.

Pure functions, no I/O: the runner hands in the plan, the client's outcome records and the
server host's report; out comes the cell of the ``--json`` document. The definitions:

- **success**: a 2xx response for the logical request (one record per planned id; a request
  the client never reported is a failure);
- **duplicates**: logical requests whose ``POST /orders`` ran more than once (the ledger counts
  effects by ``x-request-id``; a retry that the server answered from its Idempotency-Key store
  is not an effect);
- **attempts per request**: request arrivals the server saw (refused streams included) divided
  by the logical requests: 1.0 is one try each; below 1 means requests failed inside the
  client without ever reaching the server;
- **p50/p99**: latency of the successful requests, first byte sent to last byte read, retries
  included;
- **throughput**: successful requests per busy second (the pauses between waves left out).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from h2guard.bench.scenarios import BenchRequest

__all__ = ["cell", "normalise_error", "percentile"]

_MAX_LATENCIES = 400
_MAX_FAILED = 200
_MAX_MARKS = 500
_ADDRESS = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b|\[[0-9a-fA-F:]+\](?::\d+)?")
_IDS = re.compile(r"((?:stream|stream_id|last_stream_id|port|id)[ :=#]+)\d+", re.IGNORECASE)
_HEX = re.compile(r"\b0x[0-9a-fA-F]{3,}\b")
_NUMBER = re.compile(r"(?<![A-Za-z_.])(?:\d{3,}(?:\.\d+)?|\d+\.\d+)")
_MISSING = "no outcome reported by the client"


def normalise_error(text: str) -> str:
    """An error text with what varies between attempts (stream ids, addresses, ports, large
    numbers and durations) replaced by ``N``, so that the same failure on different streams
    counts as one kind; small numbers stay (error codes 0-13, limits such as "is 8, 8 open").
    At most 160 characters."""
    text = " ".join(text.split())
    text = _ADDRESS.sub("ADDR", text)
    text = _IDS.sub(lambda m: m.group(1) + "N", text)
    text = _HEX.sub("0xN", text)
    text = _NUMBER.sub("N", text)
    if len(text) <= 160:
        return text
    head, sep, why = text.partition(" Not retried: ")
    if sep:  # h2guard says why it gave up at the end: keep that part
        why = why if len(why) <= 76 else why[:73] + "..."
        return head[:160 - len(sep) - len(why) - 3] + "..." + sep + why
    return text[:157] + "..."


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of ``values`` by linear interpolation; ``None`` when empty."""
    if not values:
        return None
    data = sorted(values)
    pos = (len(data) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def _subsample(values: list[float], n: int) -> list[float]:
    values = sorted(values)
    if len(values) <= n:
        return [round(v, 2) for v in values]
    step = (len(values) - 1) / (n - 1)
    return [round(values[round(i * step)], 2) for i in range(n)]


def _float(value: object, default: float) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) \
        else default


def cell(*, client: str, scenario: str, plan: Sequence[Sequence[BenchRequest]],
         records: Sequence[Mapping[str, Any]], host: Mapping[str, Any], started: float,
         elapsed: float, problem: str | None = None) -> dict[str, Any]:
    """The scoreboard cell for one client in one scenario.

    ``started`` is the wall-clock time the cell began (the timeline's zero); ``host`` is the
    server host's stop report (``attempts``, ``effects``, ``faults``)."""
    ids = [r.id for wave in plan for r in wave]
    posts = {r.id for wave in plan for r in wave if r.method == "POST" and
             r.path.split("?")[0] == "/orders"}
    by_id: dict[str, Mapping[str, Any]] = {}
    rec: Mapping[str, Any] | None
    for rec in records:
        rid = rec.get("id")
        if isinstance(rid, str) and rid not in by_id:
            by_id[rid] = rec
    ok_latency: list[float] = []
    all_latency: list[float] = []
    failed_latency: list[float] = []
    errors: Counter[str] = Counter()
    error_marks: list[list[object]] = []
    succeeded = 0
    for rid in ids:
        rec = by_id.get(rid)
        if rec is None:
            errors[_MISSING] += 1
            continue
        start = _float(rec.get("start"), started)
        end = _float(rec.get("end"), start)
        latency = max(0.0, (end - start) * 1000)
        all_latency.append(latency)
        status = rec.get("status")
        error = rec.get("error")
        if error is None and isinstance(status, int) and 200 <= status < 300:
            succeeded += 1
            ok_latency.append(latency)
            continue
        failed_latency.append(latency)
        label = normalise_error(str(error)) if error is not None else f"HTTP {status}"
        errors[label] += 1
        if len(error_marks) < _MAX_MARKS:
            error_marks.append([round(end - started, 4), label])
    requests = len(ids)
    attempts = host.get("attempts") or {}
    effects = host.get("effects") or {}
    duplicates = sum(1 for rid in posts if int(effects.get(rid, 0)) > 1)
    effects_total = sum(int(effects.get(rid, 0)) for rid in ids)
    attempt_total = sum(int(attempts.get(rid, 0)) for rid in ids)
    # busy time: each wave from its first start to its last end
    wave_starts: list[float] = []
    busy = 0.0
    for wave in plan:
        recs = [by_id[r.id] for r in wave if r.id in by_id]
        if not recs:
            continue
        first = min(_float(r.get("start"), started) for r in recs)
        last = max(_float(r.get("end"), first) for r in recs)
        wave_starts.append(round(first - started, 4))
        busy += max(0.0, last - first)
    faults: list[list[Any]] = [[round(float(t) - started, 4), str(label)]
                               for t, label in (host.get("faults") or [])[:_MAX_MARKS]]
    p50 = percentile(ok_latency, 0.5)
    p99 = percentile(ok_latency, 0.99)
    ends = [_float(r.get("end"), started) for r in by_id.values()]
    duration = max([elapsed, *[e - started for e in ends], *[float(f[0]) for f in faults]])
    return {
        "client": client,
        "scenario": scenario,
        "requests": requests,
        "succeeded": succeeded,
        "failed": requests - succeeded,
        "success_rate": round(succeeded / requests, 4) if requests else 0.0,
        "duplicates": duplicates,
        "effects": effects_total,
        "posts": len(posts),
        "p50_ms": None if p50 is None else round(p50, 2),
        "p99_ms": None if p99 is None else round(p99, 2),
        "attempts_per_request": round(attempt_total / requests, 3) if requests else None,
        "throughput_rps": round(succeeded / busy, 1) if busy > 0 else 0.0,
        "errors": [{"text": t, "count": n} for t, n in errors.most_common(5)],
        "latencies_ms": _subsample(all_latency, _MAX_LATENCIES),
        "failed_latencies_ms": _subsample(failed_latency, _MAX_FAILED),
        "timeline": {"duration_s": round(duration, 3), "faults": faults,
                     "errors": error_marks, "waves": wave_starts},
        "fault_counts": [list(x) for x in host.get("fault_counts") or []],
        "elapsed_s": round(elapsed, 3),
        "problem": problem,
    }
