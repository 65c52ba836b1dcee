"""What does ``IdempotencyMiddleware`` add per request? Per store, against no middleware, same run.

The ASGI app is driven in-process: the benchmark calls the ASGI callable itself with a scope
and ``receive`` / ``send`` callables (no server, no sockets, no httpx), from ``--concurrency``
asyncio tasks on one event loop. The handler is small and realistic: it reads the JSON body
of ``POST /orders`` and answers ``201`` with a ~200-byte JSON body. Variants:

* ``none``: the bare handler;
* ``memory``: the middleware over a dict in this process (a reference point, not a store to
  deploy): the middleware's own cost, response serialisation included, with no I/O behind it;
* ``sqlite``: ``IdempotencyMiddleware(handler, store=SQLiteStore(<a file in a temp dir>))``;
* ``redis``: ``RedisStore`` to a redis-server started here;
* ``postgres``: ``PostgresStore`` (default pool of 10) to a PostgreSQL started here.

The servers are ``tests/idempotency/store_servers.py``'s (loopback, fresh temporary data
directory, PostgreSQL as its own system user when run as root, fsync off; stopped at exit, on
Ctrl-C and on SIGTERM / SIGHUP). A store whose server cannot start is reported as
``{"error": ...}`` and the others go on. Middleware options are the defaults.

Two request kinds, each a fresh ``Idempotency-Key`` per request:

* ``first``: the key is new: claim, run the handler, store the response, send it;
* ``replay``: the same keys again, just after: the claim finds them completed and the stored
  response is replayed (the handler does not run; checked: ``handler_calls`` is 0). For
  ``none`` both kinds are the same bare request (measured twice: each kind's own baseline).

All variants share one event loop and one process, so with ``--concurrency`` tasks a request's
latency is mostly its wait behind the others (about concurrency / req/s once the process is
CPU-bound); ``--concurrency 1`` gives the unloaded per-request cost.

Every response is checked (status 201, ``Idempotent-Replayed: true`` exactly on replays);
a failed one counts as an error and is left out of the latencies. After a warm-up per variant
(connections, Lua scripts, worker threads, the schema), each round runs every kind for every
variant, ``--requests`` each, the variant order rotating every round so that this machine's
drift hits all alike. Per variant and kind: req/s, p50/p99 latency (ms, per request, from the
ASGI call to its last ``send``), CPU time of this process per request (the servers' own CPU is
not in it; SQLite's worker threads are), and against ``none`` of the same kind and round: added
p50/p99 (ms) and the req/s ratio, each the median over rounds of the per-round figures. The
store servers run on this machine's CPUs too (``environment.cpus``).

Prints one JSON object; never asserts on time.

    .venv/bin/python benchmarks/idempotency_overhead.py [--requests 5000] [--rounds 3]
        [--concurrency 32] [--stores memory,sqlite,redis,postgres] [--max-seconds 120]
        [--quiet]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib
import importlib.metadata
import itertools
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import client_throughput as ct

STORES = ("memory", "sqlite", "redis", "postgres")
VARIANTS = ("none", *STORES)
KINDS = ("first", "replay")
PATH = "/orders"
STORE_SERVERS_DIR = Path(__file__).resolve().parent.parent / "tests" / "idempotency"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


# ===================================================================================== the app


class OrdersApp:
    """``POST /orders``: reads the JSON order, answers 201 with a ~200-byte JSON body.
    ``calls`` counts the handler's runs (a replay must not add to it)."""

    def __init__(self) -> None:
        self.calls = 0
        self._ids = itertools.count(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        order = json.loads(b"".join(chunks))
        order_id = f"ord_{next(self._ids):012d}"
        quantity = sum(item["quantity"] for item in order["items"])
        body = json.dumps({
            "id": order_id, "status": "accepted", "customer": order["customer"],
            "items": len(order["items"]), "quantity": quantity,
            "total_cents": 1999 * quantity, "currency": order["currency"],
            "created_at": "2024-05-01T12:00:00Z", "links": {"self": f"{PATH}/{order_id}"},
        }, separators=(",", ":")).encode()
        await send({"type": "http.response.start", "status": 201, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"location", f"{PATH}/{order_id}".encode())]})
        await send({"type": "http.response.body", "body": body, "more_body": False})


def _request(key: str, n: int) -> tuple[Scope, bytes]:
    body = json.dumps({"customer": "cus_4242", "currency": "EUR", "note": f"bench order {n}",
                       "items": [{"sku": "SKU-1234", "quantity": 2},
                                 {"sku": "SKU-5678", "quantity": 1}]},
                      separators=(",", ":")).encode()
    scope: Scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1", "method": "POST", "scheme": "http", "path": PATH,
        "raw_path": PATH.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"host", b"api.example"), (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"authorization", b"Bearer bench-token-0123456789abcdef"),
                    (b"idempotency-key", key.encode())],
        "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
    }
    return scope, body


def _requests(prefix: str, n: int) -> list[tuple[Scope, bytes]]:
    """``n`` requests with keys ``prefix-0``... (fresh scopes: one ASGI call each)."""
    return [_request(f"{prefix}-{i}", i) for i in range(n)]


# ===================================================================================== driver


async def _call(app: ASGIApp, scope: Scope, body: bytes) -> tuple[int, bool, bool]:
    """One request: (status, replayed, response complete)."""
    delivered = False
    status = 0
    replayed = False
    complete = False

    async def receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal status, replayed, complete
        if message["type"] == "http.response.start":
            status = message["status"]
            for name, value in message.get("headers", ()):
                if name == b"idempotent-replayed":
                    replayed = value == b"true"
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            complete = True

    await app(scope, receive, send)
    return status, replayed, complete


async def _drive(app: ASGIApp, requests: list[tuple[Scope, bytes]], concurrency: int,
                 max_seconds: float, expect_replay: bool) -> dict[str, Any]:
    """Every request once, through client_throughput's driver (same stopping rules and
    latency figures as the other benchmarks)."""

    async def one(i: int) -> str | None:
        scope, body = requests[i]
        status, replayed, complete = await _call(app, scope, body)
        if status != 201 or not complete:
            return f"status {status}" + ("" if complete else ", incomplete")
        if replayed != expect_replay:
            return "replayed" if replayed else "not replayed"
        return None

    return await ct.drive(one, len(requests), concurrency, max_seconds)


async def _run(app: ASGIApp, handler: OrdersApp, requests: list[tuple[Scope, bytes]],
               args: argparse.Namespace, expect_replay: bool) -> dict[str, Any]:
    gc.collect()
    handler.calls = 0
    cpu0 = time.process_time()
    try:
        result = await asyncio.wait_for(
            _drive(app, requests, args.concurrency, args.max_seconds, expect_replay),
            args.max_seconds + 30)
    except TimeoutError:
        return {"error": f"the run did not finish within {args.max_seconds + 30:g} s"}
    cpu = time.process_time() - cpu0
    result["cpu_us_per_request"] = round(cpu / result["ok"] * 1e6, 1) if result["ok"] else None
    result["handler_calls"] = handler.calls
    return result


# ===================================================================================== stores


class MemoryStore:
    """The ``memory`` variant: records in a dict, serialised as the real stores do; no expiry
    but the lock's, one process only. What the middleware costs with no store I/O behind it."""

    def __init__(self) -> None:
        # key -> [fingerprint, state, token, locked_until (monotonic), response bytes]
        self._records: dict[str, list[Any]] = {}

    async def claim(self, key: str, fingerprint: str, *, token: str, lock_ttl: float,
                    ttl: float) -> Any:
        from h2guard.idempotency import Claim, StoredResponse

        rec = self._records.get(key)
        if rec is None or (rec[1] == "in_progress" and rec[3] <= time.monotonic()):
            self._records[key] = [fingerprint, "in_progress", token,
                                  time.monotonic() + lock_ttl, None]
            return Claim("claimed", fingerprint)
        if rec[1] == "completed":
            return Claim("completed", rec[0], StoredResponse.from_bytes(rec[4]))
        return Claim("in_progress", rec[0])

    async def complete(self, key: str, token: str, response: Any, *, ttl: float) -> bool:
        rec = self._records.get(key)
        if rec is None or rec[1] != "in_progress" or rec[2] != token:
            return False
        rec[1] = "completed"
        rec[4] = response.to_bytes()
        return True

    async def purge_expired(self) -> int:
        return 0

    async def aclose(self) -> None:
        self._records.clear()


def _store_servers() -> ModuleType:
    """``tests/idempotency/store_servers.py`` (needs pytest: it skips tests when a program is
    missing)."""
    if str(STORE_SERVERS_DIR) not in sys.path:
        sys.path.insert(0, str(STORE_SERVERS_DIR))
    return importlib.import_module("store_servers")


def start_server(store: str) -> Any:
    """The redis-server / PostgreSQL for ``store`` (a ``store_servers.Server``); raises
    RuntimeError with the reason if it cannot start."""
    try:
        servers = _store_servers()
        import pytest
    except ImportError as exc:
        raise RuntimeError(f"cannot use tests/idempotency/store_servers.py: {exc}") from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "program missing" comes back as the skip reason
            if store == "redis":
                return servers.start_redis(name="redis-server (benchmark)")
            return servers.start_postgres(name="postgres (benchmark)", database="h2guard_bench")
    except (Exception, pytest.skip.Exception) as exc:
        text = str(getattr(exc, "msg", None) or exc)
        raise RuntimeError(f"{type(exc).__name__}: {text}"[:2000]) from exc


def make_store(store: str, server: Any, workdir: Path) -> Any:
    if store == "memory":
        return MemoryStore()
    if store == "sqlite":
        from h2guard.idempotency import SQLiteStore

        return SQLiteStore(workdir / "idempotency.sqlite3")
    if store == "redis":
        from h2guard.idempotency.stores.redis import RedisStore

        return RedisStore(server.url, prefix=f"bench:{uuid.uuid4().hex[:8]}:")
    from h2guard.idempotency.stores.postgres import PostgresStore

    return PostgresStore(server.url)


def store_config(store: str, server: Any, workdir: Path) -> dict[str, Any]:
    if store == "memory":
        return {"kind": "a dict in this process (reference: no store I/O)"}
    if store == "sqlite":
        return {"path": str(workdir / "idempotency.sqlite3"), "journal_mode": "wal",
                "synchronous": "normal"}
    out: dict[str, Any] = {"url": server.url, "startup_seconds": round(server.startup_seconds, 2)}
    if store == "redis":
        out["server_options"] = "no persistence (--save '' --appendonly no)"
    else:
        out["pool_size"] = 10
        out["server_options"] = "fsync=off synchronous_commit=off full_page_writes=off"
    return out


@contextlib.contextmanager
def _servers_stopped_at_exit(servers: dict[str, Any]) -> Iterator[None]:
    """Stop every server in ``servers`` on the way out, also on SIGTERM / SIGHUP (and Ctrl-C:
    KeyboardInterrupt passes through here; store_servers' atexit hook is the last resort)."""
    def on_signal(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for server in list(servers.values()):
            with contextlib.suppress(Exception):
                server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# ===================================================================================== bench


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


async def bench(variants: list[str], servers: dict[str, Any], workdir: Path,
                args: argparse.Namespace, log: Callable[[str], None],
                report: dict[str, Any]) -> None:
    from h2guard.idempotency import IdempotencyMiddleware

    handler = OrdersApp()
    apps: dict[str, ASGIApp] = {"none": handler}
    stores: dict[str, Any] = {}
    run_id = uuid.uuid4().hex[:8]
    try:
        for name in [v for v in variants if v != "none"]:
            try:
                stores[name] = make_store(name, servers.get(name), workdir)
            except Exception as exc:
                report["stores"][name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
                log(f"{name}: {report['stores'][name]['error']}")
                continue
            apps[name] = IdempotencyMiddleware(handler, store=stores[name])
        # Warm-up: connections, Lua scripts, the schema, worker threads, lazy imports.
        warm_n = max(2 * args.concurrency, 200)
        for name, app in list(apps.items()):
            reqs = _requests(f"{run_id}-warm-{name}", warm_n)
            warm = await _run(app, handler, reqs, args, expect_replay=False)
            again = await _run(app, handler, _requests(f"{run_id}-warm-{name}", warm_n), args,
                               expect_replay=name != "none")
            bad = next((r for r in (warm, again) if "error" in r or r["ok"] < warm_n), None)
            if bad is not None:
                err = bad.get("error") or "; ".join(bad["first_errors"]) or "requests failed"
                report["stores"][name] = {"error": f"warm-up failed: {err}"}
                log(f"{name}: warm-up failed: {err}")
                del apps[name]
        names = [v for v in variants if v in apps]
        results: dict[str, dict[str, list[dict[str, Any]]]] = {
            v: {k: [] for k in KINDS} for v in names}
        report["order_per_round"] = []
        for rnd in range(args.rounds):
            order = names[rnd % len(names):] + names[:rnd % len(names)]
            report["order_per_round"].append(order)
            for kind in KINDS:
                for name in order:
                    prefix = f"{run_id}-r{rnd}-{name}"
                    reqs = _requests(prefix, args.requests)
                    res = await _run(apps[name], handler, reqs, args,
                                     expect_replay=kind == "replay" and name != "none")
                    results[name][kind].append(res)
                    log(f"round {rnd + 1}/{args.rounds} {kind:6} {name:8}: "
                        + (res["error"] if "error" in res else
                           f"{res['req_per_s']:>8} req/s p50 {res['p50_ms']} ms "
                           f"p99 {res['p99_ms']} ms cpu {res['cpu_us_per_request']} us/req "
                           f"errors {res['errors']} handler {res['handler_calls']}"))
        report["variants"] = summarise(results, args.rounds)
    finally:
        for store in stores.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(store.aclose(), 10)


def _good(run: dict[str, Any]) -> bool:
    return "error" not in run and run["ok"] > 0


def summarise(results: dict[str, dict[str, list[dict[str, Any]]]],
              rounds: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, kinds in results.items():
        out[name] = {}
        for kind, runs in kinds.items():
            good = [r for r in runs if _good(r)]
            entry: dict[str, Any] = {
                "median_req_per_s": _median([r["req_per_s"] for r in good]),
                "median_p50_ms": _median([r["p50_ms"] for r in good]),
                "median_p99_ms": _median([r["p99_ms"] for r in good]),
                "median_cpu_us_per_request": _median([r["cpu_us_per_request"] for r in good]),
                "errors": sum(r.get("errors", 0) for r in runs),
            }
            if len(good) < len(runs):
                entry["failed_rounds"] = len(runs) - len(good)
            if name != "none" and "none" in results:
                base = results["none"][kind]
                per_round: dict[str, list[float | None]] = {
                    "added_p50_ms": [], "added_p99_ms": [], "req_per_s_ratio": []}
                for rnd in range(rounds):
                    a, b = base[rnd], runs[rnd]
                    if not (_good(a) and _good(b)):
                        for values in per_round.values():
                            values.append(None)
                        continue
                    per_round["added_p50_ms"].append(round(b["p50_ms"] - a["p50_ms"], 3))
                    per_round["added_p99_ms"].append(round(b["p99_ms"] - a["p99_ms"], 3))
                    per_round["req_per_s_ratio"].append(round(b["req_per_s"] / a["req_per_s"], 4))
                entry["vs_none"] = {
                    key: _median([v for v in values if v is not None])
                    for key, values in per_round.items()}
                entry["vs_none"]["per_round"] = per_round
            entry["rounds"] = runs
            out[name][kind] = entry
    return out


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    """The headline figures: per store and kind, req/s, added p50/p99 and the req/s ratio."""
    out: dict[str, Any] = {}
    for name in VARIANTS:
        if name in report["variants"]:
            out[name] = {}
            for kind, entry in report["variants"][name].items():
                line = {"req_per_s": entry["median_req_per_s"],
                        "p50_ms": entry["median_p50_ms"], "p99_ms": entry["median_p99_ms"]}
                if "vs_none" in entry:
                    vs = entry["vs_none"]
                    line.update(added_p50_ms=vs["added_p50_ms"], added_p99_ms=vs["added_p99_ms"],
                                req_per_s_ratio=vs["req_per_s_ratio"])
                out[name][kind] = line
        elif name in report["stores"] and "error" in report["stores"][name]:
            out[name] = {"error": report["stores"][name]["error"]}
    return out


def _program_version(args: list[str]) -> str | None:
    try:
        text = subprocess.run(args, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return text or None


def _versions(servers: dict[str, Any]) -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": sys.version.split()[0],
                                  "sqlite": sqlite3.sqlite_version}
    for dist in ("h2guard", "anyio", "redis", "psycopg", "psycopg-binary"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    out["redis_server"] = None
    out["postgresql"] = None
    if "redis" in servers:
        text = _program_version([servers["redis"].proc.args[0], "--version"])
        if text:
            out["redis_server"] = next((w[2:] for w in text.split() if w.startswith("v=")),
                                       text)
    if "postgres" in servers:
        binary = str(servers["postgres"].proc.args[0])
        text = _program_version([binary, "--version"])
        # "postgres (PostgreSQL) 15.8 (Debian 15.8-0+deb12u1)"
        words = (text or "").split()
        out["postgresql"] = words[2] if len(words) > 2 else text
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000,
                        help="timed requests per variant per kind per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32, help="asyncio tasks")
    parser.add_argument("--stores", default=",".join(STORES),
                        help="comma list of memory, sqlite, redis, postgres (default: all)")
    parser.add_argument("--max-seconds", type=float, default=120.0,
                        help="a run stops starting requests after this long (reported as "
                        "truncated)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args()
    if args.requests < 1 or args.rounds < 1 or args.concurrency < 1 or args.max_seconds <= 0:
        parser.error("--requests, --rounds, --concurrency and --max-seconds must be positive")
    wanted = [s.strip() for s in args.stores.split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(STORES))
    if unknown:
        parser.error(f"unknown store(s) {', '.join(unknown)}; choose from {', '.join(STORES)}")
    variants = ["none", *[s for s in STORES if s in wanted]]

    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    sample_scope, sample_body = _request("sample", 0)
    report: dict[str, Any] = {
        "benchmark": "idempotency_overhead",
        "load": {"requests": args.requests, "rounds": args.rounds,
                 "concurrency": args.concurrency, "kinds": list(KINDS),
                 "max_seconds_per_run": args.max_seconds,
                 "driver": "ASGI callable called directly, in-process, asyncio tasks on one "
                           "event loop",
                 "request": {"method": "POST", "path": PATH, "body_bytes": len(sample_body),
                             "headers": len(sample_scope["headers"])},
                 "response": {"status": 201, "body_bytes": None},
                 "middleware": "IdempotencyMiddleware(app, store=...) with its defaults"},
        "environment": {"cpus": os.cpu_count(),
                        "cpus_usable": len(os.sched_getaffinity(0))
                        if hasattr(os, "sched_getaffinity") else None,
                        "loop": "asyncio", "versions": {}},
        "stores": {},
        "variants": {},
    }
    servers: dict[str, Any] = {}
    workdir = Path(tempfile.mkdtemp(prefix="h2guard-idem-bench-"))
    try:
        with _servers_stopped_at_exit(servers):
            for store in variants[1:]:
                if store in ("redis", "postgres"):
                    try:
                        servers[store] = start_server(store)
                    except RuntimeError as exc:
                        report["stores"][store] = {"error": str(exc)}
                        log(f"{store}: cannot start: {str(exc).splitlines()[0]}")
                        continue
                    log(f"{store}: {servers[store].url} (ready in "
                        f"{servers[store].startup_seconds:.2f} s)")
                report["stores"][store] = store_config(store, servers.get(store), workdir)
            usable = ["none", *[s for s in variants[1:] if "error" not in report["stores"][s]]]
            report["environment"]["versions"] = _versions(servers)
            # the response size, for the record
            probe: dict[str, Any] = {}

            async def measure_response() -> None:
                async def send(message: Message) -> None:
                    if message["type"] == "http.response.body":
                        probe["bytes"] = len(message.get("body", b""))

                async def receive() -> Message:
                    return {"type": "http.request", "body": sample_body, "more_body": False}

                await OrdersApp()(dict(sample_scope), receive, send)

            asyncio.run(measure_response())
            report["load"]["response"]["body_bytes"] = probe.get("bytes")
            asyncio.run(bench(usable, servers, workdir, args, log, report))
    except KeyboardInterrupt:
        log("interrupted: servers stopped")
        return 130
    except SystemExit:
        log("terminated: servers stopped")
        raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report["summary"] = _summary(report)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
