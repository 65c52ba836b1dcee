"""What does the flight recorder cost a request? The client's wire core, sans-IO, with and without.

The client throughput benchmark compares ``h2guard`` with ``h2guard-norec`` over real sockets,
where single rounds spread by 30% or more on a shared machine: far more than the recorder can
cost. This measures the recorder where nothing else moves. A client :class:`H2Core` and a
server one exchange bytes in memory: each batch, the client opens ``--batch`` GET streams (the
header block the transport sends for ``GET /bytes/16``), the server answers each with nginx's
five response fields and 16 bytes, and the client reads the answers in one chunk, as it does
from nginx (about 41 responses a read there). Only the client's calls are timed, and the
client withholds flow-control credit as the transport's connection does (``auto_ack`` off:
credit goes back as each stream ends).

Rounds alternate the order (recorder off, on / on, off / ...); each round reports the best of
``--repeats`` timings per kind, and the result is the median over rounds of the per-round
ratio (on / off, client core time per request) and the recorder's own microseconds a request.
Prints one JSON object; never asserts on time.

    .venv/bin/python benchmarks/recorder_overhead.py [--batches 200] [--batch 41] [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

from h2guard.wire.core import H2Core
from h2guard.wire.events import RequestReceived, ResponseReceived
from h2guard.wire.recorder import FlightRecorder

REQUEST = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"127.0.0.1:8080"),
           (b":path", b"/bytes/16"), (b"accept", b"*/*"),
           (b"accept-encoding", b"gzip, deflate"), (b"user-agent", b"python-httpx/0.28.1")]
RESPONSE = [(b":status", b"200"), (b"server", b"nginx"),
            (b"date", b"Wed, 02 Dec 2026 03:00:00 GMT"),
            (b"content-type", b"application/octet-stream"), (b"content-length", b"16")]
BODY = b"0123456789abcdef"


def _pair(recorder: bool) -> tuple[H2Core, H2Core]:
    client, server = H2Core(client=True), H2Core(client=False)
    client.auto_ack = False  # as client/connection.py runs it
    if recorder:
        client.recorder = FlightRecorder(32)
    client.start(0.0)
    server.start(0.0)
    server.receive(client.data_to_send(), 0.0)
    client.receive(server.data_to_send(), 0.0)
    server.receive(client.data_to_send(), 0.0)
    return client, server


def run(*, recorder: bool, batches: int, batch: int) -> float:
    """Microseconds of client core time a request over ``batches`` batches."""
    client, server = _pair(recorder)
    clock = time.perf_counter
    spent = 0.0
    for _ in range(batches):
        t0 = clock()
        for _ in range(batch):
            client.send_headers(client.next_stream_id(), REQUEST, end_stream=True)
        out = client.data_to_send()
        spent += clock() - t0
        for event in server.receive(out, 1.0):
            if isinstance(event, RequestReceived):
                server.respond(event.stream_id, RESPONSE, BODY)
        back = server.data_to_send()
        t0 = clock()
        events = client.receive(back, 1.0)
        credit = client.data_to_send()
        spent += clock() - t0
        if credit:
            server.receive(credit, 1.0)
        answered = sum(isinstance(e, ResponseReceived) for e in events)
        if answered != batch:
            raise RuntimeError(f"{answered} of {batch} responses arrived: the exchange broke")
    return spent / (batches * batch) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=200, help="batches per timing")
    parser.add_argument("--batch", type=int, default=41,
                        help="requests per batch (and responses per read)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=5,
                        help="timings per kind and round; the best counts")
    args = parser.parse_args()
    if min(args.batches, args.batch, args.rounds, args.repeats) < 1:
        parser.error("--batches, --batch, --rounds and --repeats must be at least 1")
    run(recorder=True, batches=20, batch=args.batch)  # warm-up: memos, allocator
    rounds: list[dict[str, float]] = []
    for rnd in range(args.rounds):
        kinds = (False, True) if rnd % 2 == 0 else (True, False)
        best = {kind: min(run(recorder=kind, batches=args.batches, batch=args.batch)
                          for _ in range(args.repeats)) for kind in kinds}
        rounds.append({"off_us": round(best[False], 3), "on_us": round(best[True], 3)})
        print(f"round {rnd + 1}: off {best[False]:.2f} us, on {best[True]:.2f} us a request",
              file=sys.stderr)
    ratio = statistics.median(r["on_us"] / r["off_us"] for r in rounds)
    cost = statistics.median(r["on_us"] - r["off_us"] for r in rounds)
    print(json.dumps({
        "benchmark": "recorder_overhead",
        "python": platform.python_version(),
        "load": {"batches": args.batches, "batch": args.batch, "rounds": args.rounds,
                 "repeats": args.repeats},
        "rounds": rounds,
        "on_over_off_core_time": round(ratio, 3),
        "recorder_us_per_request": round(cost, 3),
    }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
