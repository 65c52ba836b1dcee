"""What does ``RetryTransport`` cost when nothing fails? One connection, 50 concurrent GETs.

Against a real nginx (h2c, prior knowledge) and optionally ``h2guard chaos serve --h2c`` (no
faults configured: the happy path), the same load is driven by two clients:

* ``transport``: ``httpx.AsyncClient(transport=h2guard.AsyncHTTPTransport(
  http2_prior_knowledge=True))``, the bare transport;
* ``retry``: the same transport wrapped in ``h2guard.RetryTransport(...,
  policy=h2guard.RetryPolicy())`` (default policy: budget on, no deadline, no attempt
  timeout).

Each run happens in a fresh child process, which opens one connection, sends a warm-up wave,
then times ``--requests`` GETs of a 16-byte body with ``--concurrency`` workers. It reports
req/s, per-request latency (p50/p99) and the CPU time the child spent per request
(``time.process_time`` around the timed part only). Rounds alternate the order (transport,
retry / retry, transport / ...) so that this machine's drift hits both alike. The overhead is
``1 - median over rounds of (retry / transport) req/s`` and, for CPU,
``median over rounds of (retry / transport) CPU per request - 1``; target: both <= 5 %
(``meets_target`` is the req/s one; the CPU one is reported beside it). Server-side
connection counts come from nginx's access log and the chaos server's ``/stats``; the retry
child also counts responses that took more than one attempt (should be 0 here).

Server start-up and the request driver are ``client_throughput.py``'s. Prints one JSON
object; never asserts on time.

    .venv/bin/python benchmarks/retry_overhead.py [--requests 20000] [--rounds 5]
        [--concurrency 50] [--target nginx|chaos|both] [--loop asyncio|uvloop] [--quiet]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent))
import client_throughput as ct

CLIENTS = ("transport", "retry")
TARGET_OVERHEAD = 0.05
WARMUP_SECONDS = 10.0


# ===================================================================================== worker
# Runs in a child process: one client, one connection, one measurement, one JSON line.


async def _worker(name: str, base: str, n: int, concurrency: int,
                  max_seconds: float) -> dict[str, Any]:
    try:
        import httpx

        import h2guard

        inner = h2guard.AsyncHTTPTransport(http2_prior_knowledge=True)
        transport: httpx.AsyncBaseTransport = inner
        if name == "retry":
            transport = h2guard.RetryTransport(inner, policy=h2guard.RetryPolicy())
    except (ImportError, AttributeError) as exc:
        return {"error": f"h2guard is not usable here: {type(exc).__name__}: {exc}"}
    retried = {"responses": 0, "attempts": 0, "more_than_one": 0}

    async def get(path: str) -> tuple[int, int, str]:
        r = await client.get(path)
        attempts = r.extensions.get("h2guard_attempts")
        if attempts is not None:
            retried["responses"] += 1
            retried["attempts"] += attempts
            if attempts > 1:
                retried["more_than_one"] += 1
        return r.status_code, len(r.content), r.http_version

    try:
        async with httpx.AsyncClient(transport=transport, base_url=base, timeout=30) as client:
            # Warm-up: the connection, the server's SETTINGS, lazy imports, caches.
            warm = await ct._drive(get, 2 * concurrency, concurrency, WARMUP_SECONDS)
            if warm["ok"] == 0:
                return {"error": "warm-up failed: " + "; ".join(warm["first_errors"])}
            retried.update(responses=0, attempts=0, more_than_one=0)
            cpu0 = time.process_time()
            result = await asyncio.wait_for(ct._drive(get, n, concurrency, max_seconds),
                                            max_seconds + 30)
            cpu = time.process_time() - cpu0
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"[:500]}
    result["cpu_seconds"] = round(cpu, 4)
    result["cpu_us_per_request"] = round(cpu / result["ok"] * 1e6, 2) if result["ok"] else None
    if name == "retry":
        # Every response through RetryTransport carries h2guard_attempts: proof it was wrapped.
        result["retry_attempts"] = dict(retried)
    return result


def worker_main(args: argparse.Namespace) -> int:
    out = ct._run_loop(args.loop, _worker(args.worker, args.url, args.requests,
                                          args.concurrency, args.max_seconds))
    print(json.dumps(out), flush=True)
    return 0


# ===================================================================================== parent


def run_client(target: ct.Target, client: str, args: argparse.Namespace) -> dict[str, Any]:
    """One measurement in a fresh child process (killed, group and all, if it overstays)."""
    if target.server.proc.poll() is not None:
        return {"error": f"{target.name} exited: {target.server.log()[-300:]}"}
    mark = target.mark()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", client, "--url",
           target.url, "--requests", str(args.requests), "--concurrency",
           str(args.concurrency), "--max-seconds", str(args.max_seconds), "--loop", args.loop]
    limit = args.max_seconds + WARMUP_SECONDS + 60
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=ct.STOP_TIMEOUT)
        return {"error": f"worker timed out after {limit:.0f} s"}
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if not lines:
        return {"error": f"worker exited {proc.returncode}: {err.strip()[-500:]}"}
    result = cast(dict[str, Any], json.loads(lines[-1]))
    if "error" not in result:
        result.update(target.observed(mark))
    return result


def _per_round(clients: dict[str, dict[str, Any]], key: str, rounds: int) -> list[float | None]:
    """retry / transport of ``key`` in each round (None where either run failed)."""
    out: list[float | None] = []
    for rnd in range(rounds):
        a = _value(clients["transport"], rnd, key)
        b = _value(clients["retry"], rnd, key)
        out.append(round(b / a, 4) if a and b is not None else None)
    return out


def _value(client: dict[str, Any], rnd: int, key: str) -> float | None:
    runs = client["rounds"]
    if rnd >= len(runs) or "error" in runs[rnd]:
        return None
    return cast("float | None", runs[rnd].get(key))


def _overhead(ratios: list[float | None], *, higher_is_better: bool) -> dict[str, Any]:
    valid = [r for r in ratios if r is not None]
    med = ct._median(valid) if valid else None
    if med is None:
        return {"per_round_ratio": ratios, "median_ratio": None, "overhead": None,
                "target": TARGET_OVERHEAD, "meets_target": None}
    overhead = round(1 - med if higher_is_better else med - 1, 4)
    return {"per_round_ratio": ratios, "median_ratio": med, "overhead": overhead,
            "target": TARGET_OVERHEAD, "meets_target": overhead <= TARGET_OVERHEAD}


def bench_target(target: ct.Target, args: argparse.Namespace,
                 log: Callable[[str], None]) -> dict[str, Any]:
    clients: dict[str, dict[str, Any]] = {c: {"rounds": []} for c in CLIENTS}
    for rnd in range(args.rounds):
        order = CLIENTS if rnd % 2 == 0 else CLIENTS[::-1]
        for client in order:
            res = run_client(target, client, args)
            clients[client]["rounds"].append(res)
            log(f"{target.name} round {rnd + 1}/{args.rounds} {client}: "
                + (res["error"] if "error" in res else
                   f"{res['req_per_s']} req/s p50 {res['p50_ms']} ms p99 {res['p99_ms']} ms "
                   f"cpu {res['cpu_us_per_request']} us/req errors {res['errors']} "
                   f"conns {res.get('server_connections')}"))
    for client in CLIENTS:
        entry = clients[client]
        rounds = entry["rounds"]
        good = [r for r in rounds if "error" not in r]
        for key, name in (("req_per_s", "median_req_per_s"), ("p50_ms", "median_p50_ms"),
                          ("p99_ms", "median_p99_ms"),
                          ("cpu_us_per_request", "median_cpu_us_per_request")):
            entry[name] = ct._median([r[key] for r in good if r.get(key) is not None])
        entry["req_per_s_per_round"] = [r.get("req_per_s") for r in rounds]
        entry["cpu_us_per_request_per_round"] = [r.get("cpu_us_per_request") for r in rounds]
        if len(good) < len(rounds):
            entry["failed_rounds"] = len(rounds) - len(good)
        if not good:
            entry["error"] = rounds[0]["error"] if rounds else "no rounds"
    throughput = _overhead(_per_round(clients, "req_per_s", args.rounds), higher_is_better=True)
    cpu = _overhead(_per_round(clients, "cpu_us_per_request", args.rounds),
                    higher_is_better=False)
    log(f"{target.name}: overhead req/s {throughput['overhead']}, cpu/request {cpu['overhead']}")
    return {"url": target.url, "clients": clients,
            "overhead": {"req_per_s": throughput, "cpu_per_request": cpu},
            "meets_target": throughput["meets_target"]}


def _versions(nginx: str | None) -> dict[str, str | None]:
    return {"python": sys.version.split()[0],
            **ct._versions(nginx, ("httpx", "h2", "h2guard", "anyio", "uvloop"))}


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000, help="timed requests per run")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--target", choices=("nginx", "chaos", "both"), default="nginx")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio",
                        help="event loop of the clients (asyncio: what asyncio.run gives)")
    parser.add_argument("--max-seconds", type=float, default=120.0,
                        help="a run stops starting requests after this long (reported as "
                        "truncated)")
    parser.add_argument("--nginx", metavar="PATH",
                        help="the nginx binary (default: nginx on PATH, else /usr/sbin/nginx)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument("--worker", choices=CLIENTS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker_main(args)
    if args.requests < 1 or args.rounds < 1 or args.concurrency < 1 or args.max_seconds <= 0:
        parser.error("--requests, --rounds, --concurrency and --max-seconds must be positive")
    if args.loop == "uvloop":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            parser.error("uvloop is not installed (pip install 'h2guard[speed]')")

    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    report: dict[str, Any] = {
        "benchmark": "retry_overhead",
        "load": {"requests": args.requests, "concurrency": args.concurrency,
                 "connections_per_client": 1, "path": ct.PATH, "body_bytes": ct.BODY_LEN,
                 "method": "GET", "rounds": args.rounds, "max_seconds_per_run": args.max_seconds,
                 "clients": {
                     "transport": "AsyncHTTPTransport(http2_prior_knowledge=True)",
                     "retry": "RetryTransport(AsyncHTTPTransport(http2_prior_knowledge=True), "
                              "policy=RetryPolicy())"}},
        "environment": {"cpus": os.cpu_count(),
                        "cpus_usable": len(os.sched_getaffinity(0))
                        if hasattr(os, "sched_getaffinity") else None,
                        "loop": args.loop,
                        "versions": _versions(ct._nginx_binary(args.nginx))},
        "target_overhead": TARGET_OVERHEAD,
        "targets": {},
    }
    names = ("nginx", "chaos") if args.target == "both" else (args.target,)
    workdir = Path(tempfile.mkdtemp(prefix="h2guard-retry-bench-"))
    try:
        with ct._servers_stopped_at_exit():
            for name in names:
                try:
                    if name == "nginx":
                        server, url = ct.start_nginx(workdir, args.nginx)
                        target = ct.Target(name, url, server, access_log=workdir / "access.log")
                    else:
                        server, url, control = ct.start_chaos(workdir)
                        target = ct.Target(name, url, server, control_port=control)
                except RuntimeError as exc:
                    report["targets"][name] = {"error": str(exc)}
                    log(f"{name}: {exc}")
                    continue
                log(f"{name}: {url}")
                try:
                    report["targets"][name] = bench_target(target, args, log)
                finally:
                    server.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    verdicts = [t.get("meets_target") for t in report["targets"].values()]
    report["meets_target"] = (all(verdicts) if verdicts and None not in verdicts else None)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
