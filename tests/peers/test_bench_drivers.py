"""The external bench clients (Go, Java, OkHttp, Node, curl) against the chaos server, for real.

``h2guard bench`` puts these libraries on its scoreboard, so their drivers must (a) do plain
HTTP/2 traffic exactly as the spec says (waves, concurrency, bodies, ids, one record each),
(b) survive a hostile server and report what each library did by itself, (c) turn a bad spec
into a clear problem and (d) never outlive their time limit. What (b) asserts per library held
in each of 20 runs of the scenario (15 with a slightly different mix, 5 with this one; see
``LIBRARY_BEHAVIOUR``); counts that vary from run to run are bounded, not pinned.

A client whose runtime is missing skips loudly, naming the Debian package; a driver that does
not build fails (that is our bug, not the machine's). Builds are cached by ``prepare()``.
"""

from __future__ import annotations

import asyncio
import collections
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from h2guard.bench import drivers
from h2guard.chaos.scenario import parse_scenario
from h2guard.chaos.server import ChaosServer, ServerConfig

pytestmark = [pytest.mark.peers, pytest.mark.timeout(90)]

CLIENTS = drivers.EXTERNAL_CLIENTS
BYTES = 200_000
ECHOED = 1000
MIX: tuple[tuple[str, str, int], ...] = (("POST", "/orders", 16), ("GET", "/echo", 0),
                                         ("GET", f"/bytes/{BYTES}", 0))
"""The traffic of the refusal scenario, the one its per-library figures were measured with."""
PLAIN_MIX = (*MIX, ("POST", "/echo", ECHOED))
"""Plain traffic also echoes a body: the bytes that come back are the bytes that were sent."""

REFUSING = {"name": "refusing", "faults": [
    {"kind": "max_concurrent_streams", "limit": 4},
    {"kind": "rst_stream", "code": "REFUSED_STREAM",
     "when": {"path": "/orders", "probability": 0.3}},
]}


async def ready(name: str) -> None:
    """Skip loudly if the client's runtime is missing; fail if our driver does not build."""
    info = await asyncio.to_thread(drivers.probe, name)
    if not info.available:
        pytest.skip(f"PEER MISSING: {info.reason}")
    built = await asyncio.to_thread(drivers.prepare, name)
    assert built.available, f"the {name} driver does not build: {built.reason}"


class Recorder:
    """The chaos app, noting what each request carried on its way in (the server hands its
    app to each connection when it starts, so this goes in before ``start``)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seen: list[dict[str, Any]] = []

    def __call__(self, req: Any) -> Any:
        self.seen.append({"method": req.method, "path": req.path,
                          "id": req.header(b"x-request-id"),
                          "content_type": req.header(b"content-type"),
                          "body": len(req.body), "http_version": req.http_version})
        return self.app(req)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)


@pytest.fixture
async def plain() -> AsyncIterator[ChaosServer]:
    server = ChaosServer(parse_scenario({"name": "plain", "faults": []}),
                         config=ServerConfig(port=0, seed=7))
    server.app = Recorder(server.app)  # type: ignore[assignment]
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def refusing() -> AsyncIterator[ChaosServer]:
    server = ChaosServer(parse_scenario(REFUSING), config=ServerConfig(port=0, seed=7))
    await server.start()
    yield server
    await server.stop()


def make_spec(server: ChaosServer, *, waves: int, per_wave: int, concurrency: int,
              gap_s: float = 0.2, timeout_s: float = 10.0,
              mix: tuple[tuple[str, str, int], ...] = MIX) -> dict[str, Any]:
    plan, n = [], 0
    for _ in range(waves):
        wave = []
        for _ in range(per_wave):
            method, path, size = mix[n % len(mix)]
            n += 1
            wave.append({"id": f"r{n:04d}", "method": method, "path": path, "body_size": size})
        plan.append(wave)
    return {"url": server.url, "ca_file": server.ca_file, "concurrency": concurrency,
            "timeout_s": timeout_s, "gap_s": gap_s, "waves": plan}


def requests_of(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for wave in spec["waves"] for r in wave}


def ok(record: dict[str, object]) -> bool:
    status = record["status"]
    return record["error"] is None and isinstance(status, int) and 200 <= status < 300


def at(record: dict[str, object], key: str) -> float:
    value = record[key]
    assert isinstance(value, float), record
    return value


def max_in_flight(records: list[dict[str, object]]) -> int:
    """The most requests whose [start, end] overlap (an end before a start at equal times)."""
    events = sorted([(at(r, "start"), 1) for r in records] + [(at(r, "end"), 0) for r in records])
    now = peak = 0
    for _, opens in events:
        now += 1 if opens else -1
        peak = max(peak, now)
    return peak


def describe(run: drivers.DriverRun) -> str:
    return (f"problem={run.problem!r} returncode={run.returncode} version={run.version!r}\n"
            f"records={run.records[:5]}...\nstderr tail:\n{run.stderr_tail}")


def effects_by_id(server: ChaosServer) -> collections.Counter[str]:
    return collections.Counter(e.request_id for e in server.ledger.effects())


def check_records(run: drivers.DriverRun, spec: dict[str, Any]) -> None:
    """One record per request, well formed, errors as non-empty text."""
    reqs = requests_of(spec)
    ids = [r["id"] for r in run.records]
    assert sorted(ids) == sorted(reqs), describe(run)
    for r in run.records:
        assert at(r, "start") <= at(r, "end"), r
        if not ok(r):
            assert isinstance(r["error"], str) and r["error"].strip(), r


# --------------------------------------------------------------------------- (a) plain


@pytest.mark.parametrize("name", CLIENTS)
async def test_plain_traffic_over_http2(name: str, plain: ChaosServer) -> None:
    await ready(name)
    spec = make_spec(plain, waves=2, per_wave=10, concurrency=5, mix=PLAIN_MIX)
    seen: list[dict[str, object]] = []
    run = await drivers.run(name, spec, on_record=seen.append, limit_s=60)
    assert run.problem is None, describe(run)
    assert run.returncode == 0, describe(run)
    assert run.version, describe(run)
    assert seen == run.records  # the progress callback saw every record, as it came
    check_records(run, spec)
    reqs = requests_of(spec)
    for r in run.records:
        req = reqs[str(r["id"])]
        assert ok(r), r
        assert r["status"] == (201 if req["path"] == "/orders" else 200), r
        assert r.get("protocol") == "h2", r
        if req["path"].startswith("/bytes/"):
            assert r["bytes"] == BYTES, r
        if req["method"] == "POST" and req["path"] == "/echo":
            assert r["bytes"] == ECHOED, r
    # each request arrived once, over HTTP/2, as the spec says: id, method, path, body and
    # its content-type
    recorder = plain.app
    assert isinstance(recorder, Recorder)
    arrived = {s["id"]: s for s in recorder.seen}
    assert len(recorder.seen) == len(arrived) == len(reqs), recorder.seen
    for rid, req in reqs.items():
        got = arrived[rid]
        assert (got["method"], got["path"], got["body"], got["http_version"]) == \
            (req["method"], req["path"], req["body_size"], "2"), got
        if req["body_size"]:
            assert got["content_type"] == "application/octet-stream", got
    # the server saw each POST exactly once, with its body, and nothing else wrote
    posts = {i for i, req in reqs.items() if req["path"] == "/orders"}
    assert effects_by_id(plain) == dict.fromkeys(posts, 1)
    assert plain.ledger.duplicate_requests == {}
    # HTTP/2 on the server's side too: every connection negotiated h2 by ALPN
    opened = plain.events.since(0, name="chaos.connection.opened")
    assert opened and {e.data["protocol"] for e in opened} == {"h2"}
    # waves in turn, the pause between them, and at most `concurrency` in flight
    first = [r for r in run.records if r["id"] in {q["id"] for q in spec["waves"][0]}]
    second = [r for r in run.records if r not in first]
    assert min(at(r, "start") for r in second) >= \
        max(at(r, "end") for r in first) + spec["gap_s"] - 0.02
    if name != "curl":  # curl's start is derived (arrival minus time_total): not exact
        assert max_in_flight(run.records) <= spec["concurrency"]


# --------------------------------------------------------------------------- (b) refusals

# What each library did against REFUSING (2 waves x 20, concurrency 8, 14 POSTs) in 20 runs;
# the checks held in every one of them.


def _go(records: list[dict[str, object]], connections: int) -> None:
    # net/http replays REFUSED_STREAM by itself (exponential backoff, 1 s, 2 s, 4 s...): a
    # refusal never surfaces; a request refused often enough can run into Client.Timeout
    # (1 in 20 runs, after 11 s).
    for r in records:
        if not ok(r):
            assert "Client.Timeout exceeded" in str(r["error"]), r


def _java(records: list[dict[str, object]], connections: int) -> None:
    # java.net.http neither queues beyond the server's stream limit nor replays refusals:
    # 17 to 25 of 40 fail with "too many concurrent streams", 0 to 3 with the refusal itself
    # (so few POSTs reach the server that some runs meet no refusal at all).
    texts = collections.Counter(str(r["error"]) for r in records if not ok(r))
    assert set(texts) <= {"java.io.IOException: too many concurrent streams",
                          "java.io.IOException: Received RST_STREAM: Stream not processed"}, texts
    assert texts["java.io.IOException: too many concurrent streams"] >= 1, texts


def _okhttp(records: list[dict[str, object]], connections: int) -> None:
    # OkHttp replays refused streams (retryOnConnectionFailure) but not forever: 0 to 2 of
    # 40 fail, with the refusal as a StreamResetException.
    failed = [r for r in records if not ok(r)]
    assert len(failed) <= 4, failed
    for r in failed:
        assert r["error"] == ("okhttp3.internal.http2.StreamResetException: stream was reset: "
                              "REFUSED_STREAM"), r


def _node(records: list[dict[str, object]], connections: int) -> None:
    # Node's http2 replays nothing: every refusal is an error (7 of 40 in every run with this
    # mix: 4 streams opened past the limit before the SETTINGS, 3 seeded refusals), and the one
    # session lives on (no GOAWAY here): exactly one connection.
    failed = [r for r in records if not ok(r)]
    assert failed
    for r in failed:
        assert r["error"] == ("ERR_HTTP2_STREAM_ERROR: Stream closed with error code "
                              "NGHTTP2_REFUSED_STREAM"), r
    assert connections == 1


def _curl(records: list[dict[str, object]], connections: int) -> None:
    # curl replays a refused stream on a fresh connection (up to 5 times): all 40 succeed in
    # 20 of 20 runs, over 9 to 18 connections.
    assert all(ok(r) for r in records), [r for r in records if not ok(r)]
    assert connections > 2


LIBRARY_BEHAVIOUR: dict[str, Callable[[list[dict[str, object]], int], None]] = {
    "go": _go, "java": _java, "okhttp": _okhttp, "node": _node, "curl": _curl}


@pytest.mark.parametrize("name", CLIENTS)
async def test_refused_streams_what_each_library_does(name: str,
                                                      refusing: ChaosServer) -> None:
    await ready(name)
    spec = make_spec(refusing, waves=2, per_wave=20, concurrency=8, gap_s=0.1)
    run = await drivers.run(name, spec, limit_s=60)
    assert run.problem is None, describe(run)
    assert run.returncode == 0, describe(run)
    check_records(run, spec)
    if name != "java":  # java.net.http often sends too few POSTs for a 30 % refusal to hit
        assert refusing.fault_counts, "the scenario injected nothing"
    # every refusal came before the app ran: a success wrote once, a failure never
    effects = effects_by_id(refusing)
    reqs = requests_of(spec)
    for r in run.records:
        if reqs[str(r["id"])]["path"] == "/orders":
            assert effects[str(r["id"])] == (1 if ok(r) else 0), r
    assert refusing.ledger.duplicate_requests == {}
    connections = refusing.events.counts.get("chaos.connection.opened", 0)
    LIBRARY_BEHAVIOUR[name](run.records, connections)


# --------------------------------------------------------------------------- (c) bad spec


@pytest.mark.parametrize("name", CLIENTS)
async def test_bad_spec_is_a_clear_problem(name: str, tmp_path: Path) -> None:
    await ready(name)
    import trustme

    ca = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca))
    good = {"url": "https://127.0.0.1:9", "ca_file": str(ca), "concurrency": 2,
            "timeout_s": 1.0, "gap_s": 0.0,
            "waves": [[{"id": "r1", "method": "GET", "path": "/echo", "body_size": 0}]]}
    no_path = {**good, "waves": [[{"id": "r1", "method": "GET", "body_size": 0}]]}
    for bad, word in (({**good, "concurrency": 0}, "concurrency"), (no_path, "path")):
        began = time.monotonic()
        run = await drivers.run(name, bad, limit_s=20)
        assert time.monotonic() - began < 10
        assert run.records == []
        assert run.returncode == 2, describe(run)
        assert run.problem is not None and "rejected the spec" in run.problem, describe(run)
        assert word in run.problem, describe(run)


# --------------------------------------------------------------------------- (d) limit


def processes_marked(mark: str) -> list[int]:
    """Live processes whose environment carries ``mark`` (children inherit it)."""
    needle = mark.encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.mark.parametrize("name", CLIENTS)
async def test_killed_at_limit_leaves_no_process(name: str, plain: ChaosServer, peer: Any,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    await ready(name)
    mark = f"h2guard-bench-test-{uuid.uuid4()}"
    monkeypatch.setenv("H2GUARD_BENCH_TEST_MARK", mark)
    spec = make_spec(plain, waves=1, per_wave=3, concurrency=3, timeout_s=60.0)
    for r in spec["waves"][0]:
        r.update(method="GET", path="/delay/30000", body_size=0)
    limit = 2.0
    began = time.monotonic()
    run = await drivers.run(name, spec, limit_s=limit)
    elapsed = time.monotonic() - began
    assert run.returncode is None, describe(run)
    assert run.records == []
    assert run.problem is not None and run.problem.startswith(f"killed after {limit:g} s"), \
        describe(run)
    assert "3 of 3 requests unreported" in run.problem
    assert limit <= elapsed < limit + 3.0
    assert processes_marked(mark) == []
    await peer.settle(plain)  # the kill closed its connections too


# --------------------------------------------------------------------------- probe


def test_probe_never_raises_and_names_what_is_missing() -> None:
    unknown = drivers.probe("lynx")
    assert not unknown.available and unknown.reason and "go" in unknown.reason
    for name in CLIENTS:
        info = drivers.probe(name)
        assert info.name == name and info.title and info.language
        if info.available:
            assert info.version and info.reason is None
        else:
            assert info.reason and "install" in info.reason
