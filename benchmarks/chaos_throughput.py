"""How much does the fault engine cost? h2load against `h2guard chaos serve` vs a bare h2 loop.

Both servers run as subprocesses on this machine, with the same event loop (uvloop when
installed), the same h2 configuration and the same response (``GET /bytes/16``); h2load drives
each in alternating rounds so that machine noise hits both alike. The chaos server runs twice:
with its default self-protection limits (the headline: how users run it) and with
``[limits] enabled = false``, so the cost of the limits is a figure too. Prints one JSON object:
req/s per round, the medians and the ratio chaos / bare (the median of per-round ratios)
(target >= 1.5 with the limits on: the chaos server, faults engine, self-protection and all,
answers at least half as many requests again as the least an asyncio + h2 server does, because
its core handles the common frames without h2's general path). Never asserts on time: it
reports.

    python benchmarks/chaos_throughput.py [--requests 50000] [--clients 1] [--streams 50]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGET_RATIO = 1.5
_RATE = re.compile(r"finished in [\d.]+m?s, ([\d.]+) req/s")
_DONE = re.compile(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, "
                   r"(\d+) failed")


def _start(cmd: list[str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 20
    line = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline().strip()
        if line.startswith("http"):
            return proc, line
        if proc.poll() is not None:
            break
    proc.kill()
    raise SystemExit(f"server did not start: {' '.join(cmd)} (last line: {line!r})")


def _h2load(url: str, *, requests: int, clients: int, streams: int) -> dict[str, float]:
    out = subprocess.run(
        ["h2load", "-n", str(requests), "-c", str(clients), "-m", str(streams),
         f"{url}/bytes/16"], capture_output=True, text=True, timeout=300, check=False).stdout
    rate = _RATE.search(out)
    done = _DONE.search(out)
    if rate is None or done is None:
        raise SystemExit(f"could not parse h2load output:\n{out}")
    return {"req_per_s": float(rate.group(1)), "succeeded": int(done.group(3)),
            "failed": int(done.group(4))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=30_000)
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if shutil.which("h2load") is None:
        print(json.dumps({"error": "h2load not found: apt-get install nghttp2-client "
                                   "(make peers)"}))
        return 2
    py = sys.executable
    env_note = {"python": sys.version.split()[0], "cpus": os.cpu_count()}
    try:
        import uvloop  # noqa: F401
        env_note["loop"] = "uvloop"
    except ImportError:
        env_note["loop"] = "asyncio"
    no_limits = Path(tempfile.mkdtemp(prefix="h2guard-bench-")) / "no-limits.toml"
    no_limits.write_text('name = "no-limits"\n[limits]\nenabled = false\n')
    chaos = [py, "-m", "h2guard", "chaos", "serve", "--h2c", "--port", "0", "--quiet"]
    servers = {
        "bare_h2_loop": [py, str(HERE / "bare_h2_server.py"), "0"],
        "chaos_serve": chaos,
        "chaos_serve_limits_off": [*chaos, "--scenario", str(no_limits)],
    }
    procs = {}
    try:
        urls = {}
        for name, cmd in servers.items():
            procs[name], urls[name] = _start(cmd)
        for url in urls.values():  # warm up: imports, caches, connection set-up
            _h2load(url, requests=2000, clients=args.clients, streams=args.streams)
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
        for _ in range(args.rounds):
            for name, url in urls.items():
                rounds[name].append(_h2load(url, requests=args.requests, clients=args.clients,
                                            streams=args.streams))
    finally:
        for proc in procs.values():
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
    medians = {name: statistics.median(r["req_per_s"] for r in rs)
               for name, rs in rounds.items()}
    # Each round runs the two servers back to back, so a round's ratio shares its noise
    # (this machine's speed drifts by 10-20% over minutes); the headline is their median.
    per_round = [c["req_per_s"] / b["req_per_s"]
                 for b, c in zip(rounds["bare_h2_loop"], rounds["chaos_serve"], strict=True)]
    ratio = statistics.median(per_round)
    limits_cost = statistics.median(
        on["req_per_s"] / off["req_per_s"]
        for on, off in zip(rounds["chaos_serve"], rounds["chaos_serve_limits_off"],
                           strict=True))
    print(json.dumps({
        "benchmark": "chaos_throughput",
        "load": {"tool": "h2load", "requests": args.requests, "clients": args.clients,
                 "max_concurrent_streams": args.streams, "path": "/bytes/16",
                 "rounds": args.rounds},
        "environment": env_note,
        "req_per_s": {name: [r["req_per_s"] for r in rs] for name, rs in rounds.items()},
        "failed": {name: sum(int(r["failed"]) for r in rs) for name, rs in rounds.items()},
        "median_req_per_s": medians,
        "ratio_per_round": [round(r, 3) for r in per_round],
        "ratio_of_medians": round(medians["chaos_serve"] / medians["bare_h2_loop"], 3),
        "ratio_chaos_vs_bare": round(ratio, 3),
        "ratio_limits_on_vs_off": round(limits_cost, 3),
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio >= TARGET_RATIO,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
