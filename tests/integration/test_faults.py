"""Every chaos fault kind and moment, observed frame by frame by a raw HTTP/2 client.

Each test starts a chaos server with one scenario on a scaled clock (``SCALE``: 10 scenario
seconds are 0.2 s here) and asserts what arrived on the wire: frame types, stream ids, error
codes, GOAWAY last_stream_id and debug data, SETTINGS values, WINDOW_UPDATE timing, DATA
lengths, EOF versus TCP reset, and when. Timing bounds are tight below (the scaled duration
minus ``EPS``) and generous above (``SLACK``): the machine is small and shared.

Every test also checks the ``chaos.fault`` event the injection produced.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from h2guard.chaos import ChaosServer, serve
from h2guard.chaos.model import (
    MOMENTS,
    Delay,
    Fault,
    FlowControl,
    GoAway,
    IdleTimeout,
    MaxAge,
    MaxConcurrentStreams,
    Moment,
    RequestCap,
    RstStream,
    Scenario,
    ServerSettings,
    Trigger,
)
from h2guard.chaos.scenario import parse_fault
from h2guard.codes import code_name

from .rawclient import (
    DATA,
    GOAWAY,
    HEADERS,
    PING,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    Frame,
    RawClient,
)

pytestmark = pytest.mark.timeout(20)

SCALE = 0.02
"""Scenario seconds -> real seconds."""
EPS = 0.005
"""How much earlier than the scaled duration an observation may be (clock granularity,
loopback transit in the other direction)."""
SLACK = 0.5
"""How much later: generous, the machine has 2 cores and other work."""
MAX_ID = 2**31 - 1

NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
REFUSED_STREAM, CANCEL, ENHANCE_YOUR_CALM, HTTP_1_1_REQUIRED = 0x7, 0x8, 0xB, 0xD
UNKNOWN_CODE = 0x1234
MCS, INITIAL_WINDOW = 0x3, 0x4


# ------------------------------------------------------------------------------- helpers


@contextlib.asynccontextmanager
async def chaos(*faults: Fault, settings: ServerSettings | None = None, scale: float = SCALE,
                seed: int | None = None, tls: bool = False) -> AsyncIterator[ChaosServer]:
    scenario = Scenario(name="test", settings=settings or ServerSettings(), faults=faults)
    async with serve(scenario, h2c=not tls, time_scale=scale, seed=seed) as server:
        yield server


@contextlib.asynccontextmanager
async def connected(server: ChaosServer, **options: Any) -> AsyncIterator[RawClient]:
    client = RawClient(server.url, ca_file=server.ca_file, **options)
    await client.connect()
    try:
        yield client
    finally:
        await client.close()


def fault_events(server: ChaosServer, kind: str | None = None) -> list[dict[str, Any]]:
    return [dict(e.data) for e in server.events.since(name="chaos.fault")
            if kind is None or e.data.get("kind") == kind]


def assert_event(server: ChaosServer, kind: str, **expected: Any) -> dict[str, Any]:
    """Exactly one ``chaos.fault`` event of ``kind`` matches ``expected``; return it."""
    events = fault_events(server, kind)
    hits = [e for e in events if all(e.get(k) == v for k, v in expected.items())]
    assert len(hits) == 1, f"expected one {kind} event with {expected}, got {events}"
    return hits[0]


async def until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll a condition outside the client (server events, the ledger)."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.005)


def assert_timing(elapsed: float, expected: float, what: str) -> None:
    assert expected - EPS <= elapsed <= expected + SLACK, \
        f"{what}: {elapsed:.4f}s, expected {expected:.3f}s (-{EPS}/+{SLACK})"


def before(client: RawClient, a: Frame, b: Frame) -> bool:
    return client.index_of(a) < client.index_of(b)


def headers_sent_at(client: RawClient, sid: int) -> float:
    return client.sent_of(HEADERS, sid)[0].at


def end_sent_at(client: RawClient, sid: int) -> float:
    return next(f for f in client.sent_of(None, sid) if f.end_stream).at


async def get(client: RawClient, path: str, timeout: float = 2.0) -> int:
    """A request that must complete; returns its stream id."""
    sid = client.open_stream("GET", path)
    st = await client.wait_response(sid, timeout)
    assert st.reset_code is None, f"stream {sid} reset with 0x{st.reset_code:x}"
    return sid


# ------------------------------------------------------------------------------- rst_stream


@pytest.mark.parametrize("code", [INTERNAL_ERROR, UNKNOWN_CODE], ids=["INTERNAL_ERROR", "0x1234"])
@pytest.mark.parametrize("moment", MOMENTS)
async def test_rst_stream_at_each_moment(moment: Moment, code: int) -> None:
    after_bytes = 20000 if moment == "response_body" else 0
    fault = RstStream(code=code, at=moment, after_bytes=after_bytes,
                      when=Trigger(max_fires=1))
    async with chaos(fault) as server, connected(server) as c:
        if moment == "response_body":
            sid = c.open_stream("GET", "/bytes/50000")
        else:
            sid = c.open_stream("POST", "/orders", b'{"item": 1}',
                                headers=[("x-request-id", "order-a")], end_stream=False)
            if moment != "request_headers":
                # nothing may happen before the request ends
                await asyncio.sleep(0.05)
                assert not c.frames_of(None, sid), c.describe()
                c.end_stream(sid)
        rst = await c.wait_frame(RST_STREAM, sid)
        assert rst.error_code == code
        await asyncio.sleep(0.02)  # nothing more may follow on the stream
        assert len(c.frames_of(RST_STREAM, sid)) == 1
        on_stream = c.frames_of(None, sid)
        assert on_stream[-1] is rst, c.describe()
        headers = c.frames_of(HEADERS, sid)

        if moment in ("request_headers", "request_end"):
            assert headers == []
            assert server.ledger.total == 0  # the app never ran
        if moment == "request_headers":
            assert not any(f.end_stream for f in c.sent_of(None, sid))  # reset before the end
        if moment == "after_app":
            # the duplicate-write case: the effect happened, no response came
            assert headers == []
            effects = server.ledger.effects()
            assert [(e.request_id, e.stream_id) for e in effects] == [("order-a", sid)]
        if moment == "response_headers":
            assert len(headers) == 1 and before(c, headers[0], rst)
            assert c.frames_of(DATA, sid) == []
            assert c.streams[sid].status == 201
            assert server.ledger.total == 1
        if moment == "response_body":
            assert len(headers) == 1 and before(c, headers[0], rst)
            assert c.data_bytes(sid) == after_bytes
            assert not any(f.end_stream for f in c.frames_of(DATA, sid))
        assert c.streams[sid].reset_code == code

        event = assert_event(server, "rst_stream", stream=sid, moment=moment,
                             code=code_name(code))
        if moment == "response_body":
            assert event["sent_bytes"] == after_bytes
        assert not c.closed_by_peer  # a stream fault leaves the connection alone
        assert await get(c, "/echo")


@pytest.mark.parametrize("kind, code", [("enhance_your_calm", ENHANCE_YOUR_CALM),
                                        ("http_1_1_required", HTTP_1_1_REQUIRED)])
async def test_rst_stream_named_kinds(kind: str, code: int) -> None:
    fault = parse_fault({"kind": kind, "at": "request_end"})
    async with chaos(fault) as server, connected(server) as c:
        sid = c.open_stream("GET", "/echo")
        rst = await c.wait_frame(RST_STREAM, sid)
        assert rst.error_code == code
        assert c.frames_of(HEADERS, sid) == []
        assert_event(server, "rst_stream", stream=sid, code=code_name(code),
                     moment="request_end")


async def test_enhance_your_calm_connection_scope_sends_goaway() -> None:
    fault = parse_fault({"kind": "enhance_your_calm", "scope": "connection",
                         "debug": "calm down"})
    async with chaos(fault) as server, connected(server) as c:
        sid = c.open_stream("GET", "/echo")
        goaway = await c.wait_frame(GOAWAY, 0)
        assert (goaway.error_code, goaway.last_stream_id, goaway.debug_data) == \
            (ENHANCE_YOUR_CALM, sid, b"calm down")
        await c.wait_response(sid)
        assert c.streams[sid].status == 200
        assert_event(server, "goaway", stream=sid, code="ENHANCE_YOUR_CALM")


async def test_rst_stream_over_tls_with_alpn_h2() -> None:
    async with chaos(RstStream(code=CANCEL), tls=True) as server, connected(server) as c:
        assert server.url.startswith("https://") and c.alpn == "h2"
        sid = c.open_stream("GET", "/echo")
        assert (await c.wait_frame(RST_STREAM, sid)).error_code == CANCEL
        assert_event(server, "rst_stream", stream=sid, code="CANCEL")


# ------------------------------------------------------------------------------- triggers


async def outcomes(c: RawClient, requests: list[tuple[str, str, list[tuple[str, str]]]]
                   ) -> list[int | None]:
    """Send requests one after another; the RST_STREAM code of each (None: answered)."""
    out: list[int | None] = []
    for method, path, headers in requests:
        sid = c.open_stream(method, path, b"" if method == "POST" else None, headers=headers)
        st = await c.wait_response(sid)
        assert (st.reset_code is None) == (st.status is not None and st.ended_at is not None)
        out.append(c.rst_code(sid))
    return out


async def test_trigger_path_glob_ignores_query() -> None:
    fault = RstStream(code=CANCEL, when=Trigger(path="/orders*"))
    async with chaos(fault) as server, connected(server) as c:
        got = await outcomes(c, [("GET", "/echo", []), ("POST", "/orders?x=1", []),
                                 ("GET", "/echo?p=/orders", []), ("POST", "/orders/7", [])])
        assert got == [None, CANCEL, None, CANCEL]
        assert [e["path"] for e in fault_events(server)] == ["/orders?x=1", "/orders/7"]
        assert server.ledger.total == 0


async def test_trigger_method_is_case_insensitive() -> None:
    fault = RstStream(code=CANCEL, when=Trigger(method="post"))
    async with chaos(fault) as server, connected(server) as c:
        got = await outcomes(c, [("GET", "/echo", []), ("POST", "/echo", []),
                                 ("GET", "/orders", [])])
        assert got == [None, CANCEL, None]
        assert [e["stream"] for e in fault_events(server)] == [3]


async def test_trigger_header_glob() -> None:
    fault = RstStream(code=CANCEL, when=Trigger(headers=(("x-chaos", "on*"),)))
    async with chaos(fault) as server, connected(server) as c:
        got = await outcomes(c, [("GET", "/echo", []),
                                 ("GET", "/echo", [("x-chaos", "on-please")]),
                                 ("GET", "/echo", [("x-chaos", "off")]),
                                 ("GET", "/echo", [("x-other", "on")]),
                                 ("GET", "/echo", [("x-chaos", "on")])])
        assert got == [None, CANCEL, None, None, CANCEL]
        assert [e["stream"] for e in fault_events(server)] == [3, 9]


async def test_trigger_every_nth_stream_counts_only_matching_streams() -> None:
    fault = RstStream(code=CANCEL, when=Trigger(every_nth_stream=2, path="/echo"))
    async with chaos(fault) as server, connected(server) as c:
        got = await outcomes(c, [("GET", "/echo", []), ("GET", "/status/204", []),
                                 ("GET", "/echo", []), ("GET", "/status/204", []),
                                 ("GET", "/echo", []), ("GET", "/echo", [])])
        assert got == [None, None, CANCEL, None, None, CANCEL]
        assert [e["stream"] for e in fault_events(server)] == [5, 11]


async def test_trigger_after_requests_is_per_connection() -> None:
    fault = RstStream(code=REFUSED_STREAM, when=Trigger(after_requests=2))
    four = [("GET", "/echo", [])] * 4
    async with chaos(fault) as server:
        async with connected(server) as c:
            assert await outcomes(c, four) == [None, None, REFUSED_STREAM, REFUSED_STREAM]
        async with connected(server) as c:
            assert await outcomes(c, four[:3]) == [None, None, REFUSED_STREAM]
        assert [(e["connection"], e["stream"]) for e in fault_events(server)] == \
            [(1, 5), (1, 7), (2, 5)]


async def test_trigger_min_age() -> None:
    fault = RstStream(code=CANCEL, when=Trigger(min_age=5))  # 0.1 s
    async with chaos(fault) as server, connected(server) as c:
        assert await outcomes(c, [("GET", "/echo", [])]) == [None]
        assert c.connect_started_at is not None
        await asyncio.sleep(max(0.0, c.connect_started_at + 0.1 + 0.02 - time.monotonic()))
        assert await outcomes(c, [("GET", "/echo", [])]) == [CANCEL]
        assert_event(server, "rst_stream", stream=3)


async def test_trigger_max_fires() -> None:
    fault = RstStream(code=CANCEL, when=Trigger(max_fires=2))
    async with chaos(fault) as server, connected(server) as c:
        got = await outcomes(c, [("GET", "/echo", [])] * 5)
        assert got == [CANCEL, CANCEL, None, None, None]
        assert server.faults.fired(1) == 2 and len(fault_events(server)) == 2


async def probability_pattern(seed: int, *, concurrent: bool) -> list[bool]:
    fault = RstStream(code=CANCEL, when=Trigger(probability=0.5))
    async with chaos(fault, seed=seed) as server, connected(server) as c:
        if concurrent:
            with c.corked():
                sids = [c.open_stream("GET", "/echo") for _ in range(16)]
            for sid in sids:
                await c.wait_response(sid)
        else:
            sids = []
            for _ in range(16):
                sid = c.open_stream("GET", "/echo")
                await c.wait_response(sid)
                sids.append(sid)
        pattern = [c.rst_code(sid) == CANCEL for sid in sids]
        assert [e["stream"] for e in fault_events(server)] == \
            [sid for sid, hit in zip(sids, pattern, strict=True) if hit]
        return pattern


async def test_trigger_probability_is_deterministic_for_a_seed() -> None:
    first = await probability_pattern(7, concurrent=False)
    again = await probability_pattern(7, concurrent=True)  # scheduling does not matter
    assert first == again
    assert 0 < sum(first) < len(first)
    assert await probability_pattern(8, concurrent=False) != first


# ------------------------------------------------------------------------------- goaway


async def test_goaway_graceful_lets_in_flight_streams_finish() -> None:
    fault = GoAway(mode="graceful", when=Trigger(path="/goaway"))
    async with chaos(fault) as server, connected(server) as c:
        slow = c.open_stream("GET", "/delay/200")
        trigger = c.open_stream("GET", "/goaway")
        goaway = await c.wait_frame(GOAWAY, 0)
        assert (goaway.last_stream_id, goaway.error_code, goaway.debug_data) == \
            (trigger, NO_ERROR, b"")
        st = await c.wait_response(slow, 2.0)
        assert st.status == 200 and json.loads(st.body) == {"delayed_ms": 200}
        assert before(c, goaway, c.frames_of(HEADERS, slow)[0])
        assert (await c.wait_response(trigger)).status == 404
        closed_at = await c.wait_closed()
        assert c.eof_at is not None and closed_at >= st.ended_at  # type: ignore[operator]
        assert c.frames_of(RST_STREAM) == [] and len(c.frames_of(GOAWAY)) == 1
        assert_event(server, "goaway", stream=trigger, mode="graceful",
                     last_stream_id=trigger, code="NO_ERROR", moment="request_headers")


@pytest.mark.parametrize("moment", MOMENTS)
async def test_goaway_graceful_at_each_moment(moment: Moment) -> None:
    fault = GoAway(mode="graceful", at=moment, when=Trigger(path="/echo"))
    body = b"x" * 1000
    async with chaos(fault) as server, connected(server) as c:
        sid = c.open_stream("POST", "/echo", body, end_stream=False)
        if moment == "request_headers":
            goaway = await c.wait_frame(GOAWAY, 0)
            c.end_stream(sid)
        else:
            await asyncio.sleep(0.05)
            assert c.frames_of(GOAWAY) == [], c.describe()
            c.end_stream(sid)
            goaway = await c.wait_frame(GOAWAY, 0)
        assert goaway.last_stream_id == sid and goaway.error_code == NO_ERROR
        st = await c.wait_response(sid)
        assert st.status == 200 and bytes(st.body) == body  # finished in full
        headers = c.frames_of(HEADERS, sid)[0]
        data = c.frames_of(DATA, sid)[0]
        if moment in ("request_headers", "request_end", "after_app"):
            assert before(c, goaway, headers)
        else:
            assert before(c, headers, goaway) and before(c, goaway, data)
        await c.wait_closed()
        assert c.eof_at is not None
        assert_event(server, "goaway", stream=sid, moment=moment, last_stream_id=sid)


async def test_goaway_new_streams_above_last_stream_id_are_refused() -> None:
    fault = GoAway(mode="graceful", when=Trigger(path="/goaway"))
    async with chaos(fault) as server, connected(server) as c:
        slow = c.open_stream("GET", "/delay/200")
        trigger = c.open_stream("GET", "/goaway")
        goaway = await c.wait_frame(GOAWAY, 0)
        assert goaway.last_stream_id == trigger
        late = c.open_stream("POST", "/orders", b"{}")
        rst = await c.wait_frame(RST_STREAM, late)
        assert rst.error_code == REFUSED_STREAM
        assert c.frames_of(HEADERS, late) == []
        assert (await c.wait_response(slow)).status == 200
        await c.wait_closed()
        assert server.ledger.total == 0  # the refused POST never reached the app
        assert_event(server, "goaway", stream=late, code="REFUSED_STREAM",
                     reason="after_goaway")


async def test_goaway_drain_sends_max_id_then_the_real_id() -> None:
    fault = GoAway(mode="drain", drain_delay=5, when=Trigger(path="/goaway"))  # 0.1 s
    async with chaos(fault) as server, connected(server) as c:
        trigger = c.open_stream("GET", "/goaway")
        first = await c.wait_frame(GOAWAY, 0)
        assert (first.last_stream_id, first.error_code) == (MAX_ID, NO_ERROR)
        assert (await c.wait_response(trigger)).status == 404
        # during the drain new streams are still served
        during = c.open_stream("GET", "/echo")
        assert (await c.wait_response(during)).status == 200
        await c.wait_for(lambda: len(c.frames_of(GOAWAY)) == 2, 2.0, "the second GOAWAY")
        second = c.frames_of(GOAWAY)[1]
        assert (second.last_stream_id, second.error_code) == (during, NO_ERROR)
        assert_timing(second.at - first.at, 5 * SCALE, "drain delay")
        await c.wait_closed()
        assert c.eof_at is not None and c.eof_at >= second.at
        assert_event(server, "goaway", mode="drain", last_stream_id=MAX_ID, stream=trigger)
        assert_event(server, "goaway", mode="drain_final", last_stream_id=during,
                     moment="drain")


async def test_goaway_abrupt_drops_in_flight_streams() -> None:
    fault = GoAway(mode="abrupt", when=Trigger(path="/goaway"))
    async with chaos(fault) as server, connected(server) as c:
        done = await get(c, "/echo")
        slow = c.open_stream("GET", "/delay/150")
        trigger = c.open_stream("GET", "/goaway")
        goaway = await c.wait_frame(GOAWAY, 0)
        assert goaway.last_stream_id == done < slow < trigger  # below the in-flight streams
        await c.wait_closed()
        await asyncio.sleep(0.2)  # past the delay: nothing ever answers
        assert c.frames_of(HEADERS, slow) == [] and c.frames_of(HEADERS, trigger) == []
        assert c.streams[slow].unprocessed and c.streams[trigger].unprocessed
        assert_event(server, "goaway", mode="abrupt", last_stream_id=done, stream=trigger)


async def test_goaway_abrupt_with_explicit_last_stream_id() -> None:
    fault = GoAway(mode="abrupt", last_stream_id=3, when=Trigger(path="/goaway"))
    async with chaos(fault) as server, connected(server) as c:
        first = await get(c, "/echo")
        kept = c.open_stream("GET", "/delay/100")
        dropped = c.open_stream("GET", "/delay/100")
        trigger = c.open_stream("GET", "/goaway")
        assert (first, kept, dropped, trigger) == (1, 3, 5, 7)
        goaway = await c.wait_frame(GOAWAY, 0)
        assert goaway.last_stream_id == 3
        st = await c.wait_response(kept)
        assert st.status == 200 and before(c, goaway, c.frames_of(HEADERS, kept)[0])
        await c.wait_closed()
        assert c.frames_of(HEADERS, dropped) == [] and c.frames_of(HEADERS, trigger) == []
        assert_event(server, "goaway", mode="abrupt", last_stream_id=3)


@pytest.mark.parametrize("code, debug", [(ENHANCE_YOUR_CALM, b"slow down"),
                                         (UNKNOWN_CODE, "caf\u00e9 \u2615".encode())],
                         ids=["ENHANCE_YOUR_CALM-ascii", "0x1234-utf8"])
async def test_goaway_code_and_debug_data(code: int, debug: bytes) -> None:
    fault = GoAway(code=code, debug=debug)
    async with chaos(fault) as server, connected(server) as c:
        sid = c.open_stream("GET", "/echo")
        goaway = await c.wait_frame(GOAWAY, 0)
        assert (goaway.error_code, goaway.last_stream_id, goaway.debug_data) == \
            (code, sid, debug)
        assert (await c.wait_response(sid)).status == 200
        assert_event(server, "goaway", code=code_name(code), stream=sid)


async def test_goaway_close_after() -> None:
    fault = GoAway(close_after=5)  # 0.1 s
    async with chaos(fault) as server, connected(server) as c:
        sid = c.open_stream("GET", "/echo")
        goaway = await c.wait_frame(GOAWAY, 0)
        assert (await c.wait_response(sid)).status == 200
        closed_at = await c.wait_closed()
        assert c.eof_at is not None
        assert_timing(closed_at - goaway.at, 5 * SCALE, "FIN after the GOAWAY")
        assert_event(server, "goaway", stream=sid)


# ------------------------------------------------------------------------------- idle_timeout


@pytest.mark.parametrize("action", ["goaway", "fin", "rst"])
async def test_idle_timeout_actions(action: str) -> None:
    fault = IdleTimeout(after=10, action=action)  # type: ignore[arg-type]  # 0.2 s
    async with chaos(fault) as server, connected(server) as c:
        sid = await get(c, "/echo")
        closed_at = await c.wait_closed(2.0)
        goaways = c.frames_of(GOAWAY)
        if action == "goaway":
            assert len(goaways) == 1
            assert (goaways[0].last_stream_id, goaways[0].error_code) == (sid, NO_ERROR)
            fired = goaways[0].at
            assert c.eof_at is not None and c.eof_at >= fired
        else:
            assert goaways == []
            fired = closed_at
            if action == "fin":
                assert c.eof_at is not None and c.reset_at is None
            else:
                assert c.reset_at is not None and isinstance(c.read_error, ConnectionResetError)
        assert_timing(fired - c.last_activity_before(fired), 10 * SCALE, "idle time")
        assert_event(server, "idle_timeout", action=action, moment="idle", stream=0,
                     code="NO_ERROR" if action == "goaway" else None)


async def test_idle_timeout_goaway_code() -> None:
    async with chaos(IdleTimeout(after=5, code=ENHANCE_YOUR_CALM)) as server, \
            connected(server) as c:
        goaway = await c.wait_frame(GOAWAY, 0)
        assert (goaway.error_code, goaway.last_stream_id) == (ENHANCE_YOUR_CALM, 0)
        assert_timing(goaway.at - c.last_activity_before(goaway.at), 5 * SCALE, "idle time")
        await c.wait_closed()
        assert_event(server, "idle_timeout", action="goaway", code="ENHANCE_YOUR_CALM")


async def test_idle_timeout_blackhole() -> None:
    fault = IdleTimeout(after=5, action="blackhole")  # 0.1 s
    async with chaos(fault) as server, connected(server) as c:
        ping = c.ping(b"before!!")
        await c.wait_for(lambda: c.ping_acked(ping), 1.0, "the PING ACK")
        await until(lambda: fault_events(server, "idle_timeout"), 2.0, "the idle fault")
        fired = time.monotonic()
        assert fired - c.last_activity_before(fired) >= 5 * SCALE - EPS
        ping = c.ping(b"anybody?")
        sid = c.open_stream("GET", "/echo")
        await asyncio.sleep(0.3)
        assert c.ping_acked(ping) is None
        assert c.frames_of(None, sid) == []
        assert not c.closed_by_peer  # the socket stays open: a black hole, not a close
        assert c.frames_of(GOAWAY) == []
        assert_event(server, "idle_timeout", action="blackhole")


@pytest.mark.parametrize("ping_resets", [True, False])
async def test_idle_timeout_ping_resets(ping_resets: bool) -> None:
    idle = 10 * SCALE  # 0.2 s
    fault = IdleTimeout(after=10, ping_resets=ping_resets)
    async with chaos(fault) as server, connected(server) as c:
        start = time.monotonic()
        n = 0
        while time.monotonic() - start < 3 * idle and not c.frames_of(GOAWAY):
            c.ping(f"keep{n:04d}".encode())
            n += 1
            await asyncio.sleep(idle / 3)
        if ping_resets:
            assert c.frames_of(GOAWAY) == [] and not c.closed_by_peer
            assert len(c.frames_of(PING, 0, ack=True)) >= n - 1
            assert fault_events(server) == []
        else:
            goaway = await c.wait_frame(GOAWAY, 0)
            busy = max(f.at for f in c.received + c.sent if f.type != PING and f.at < goaway.at)
            assert_timing(goaway.at - busy, idle, "idle time ignoring PINGs")
            await c.wait_closed()
            assert_event(server, "idle_timeout", action="goaway")


@pytest.mark.parametrize("only_without_streams", [True, False])
async def test_idle_timeout_only_without_streams(only_without_streams: bool) -> None:
    idle = 10 * SCALE  # 0.2 s, while /delay/400 keeps a stream open for 0.4 s
    fault = IdleTimeout(after=10, only_without_streams=only_without_streams)
    async with chaos(fault) as server, connected(server) as c:
        sid = c.open_stream("GET", "/delay/400")
        goaway = await c.wait_frame(GOAWAY, 0, timeout=2.0)
        st = c.streams[sid]
        if only_without_streams:
            assert st.ended_at is not None and st.status == 200
            assert before(c, c.frames_of(DATA, sid)[-1], goaway)
            assert_timing(goaway.at - st.ended_at, idle, "idle after the stream ended")
        else:
            assert c.frames_of(HEADERS, sid) == []  # the stream was still in flight
            assert_timing(goaway.at - headers_sent_at(c, sid), idle, "idle with a stream")
        assert goaway.last_stream_id == sid
        await c.wait_closed()
        assert_event(server, "idle_timeout", action="goaway")


# ------------------------------------------------------------------------------- max_age


async def test_max_age_goaway_lets_the_stream_finish() -> None:
    async with chaos(MaxAge(after=10)) as server, connected(server) as c:  # 0.2 s
        sid = c.open_stream("GET", "/delay/300")
        goaway = await c.wait_frame(GOAWAY, 0)
        assert c.connect_started_at is not None
        assert_timing(goaway.at - c.connect_started_at, 10 * SCALE, "connection age")
        assert (goaway.last_stream_id, goaway.error_code) == (sid, NO_ERROR)
        st = await c.wait_response(sid)
        assert st.status == 200 and before(c, goaway, c.frames_of(HEADERS, sid)[0])
        closed_at = await c.wait_closed()
        assert c.eof_at is not None and st.ended_at is not None and closed_at >= st.ended_at
        assert_event(server, "max_age", action="goaway", moment="age")


@pytest.mark.parametrize("action", ["fin", "rst", "blackhole"])
async def test_max_age_other_actions(action: str) -> None:
    fault = MaxAge(after=5, action=action)  # type: ignore[arg-type]  # 0.1 s
    async with chaos(fault) as server, connected(server) as c:
        assert c.connect_started_at is not None
        if action == "blackhole":
            await until(lambda: fault_events(server, "max_age"), 2.0, "the max_age fault")
            assert time.monotonic() - c.connect_started_at >= 5 * SCALE - EPS
            ping = c.ping()
            await asyncio.sleep(0.2)
            assert c.ping_acked(ping) is None and not c.closed_by_peer
        else:
            closed_at = await c.wait_closed()
            assert_timing(closed_at - c.connect_started_at, 5 * SCALE, "connection age")
            if action == "fin":
                assert c.eof_at is not None
            else:
                assert isinstance(c.read_error, ConnectionResetError)
        assert c.frames_of(GOAWAY) == []
        assert_event(server, "max_age", action=action)


async def test_max_age_jitter_and_code() -> None:
    fault = MaxAge(after=10, jitter=0.5, code=ENHANCE_YOUR_CALM)
    async with chaos(fault, seed=3) as server, connected(server) as c:
        expected = 10 * SCALE * (1 + 0.5 * server.faults.draw("max_age", 1))
        assert expected > 10 * SCALE
        goaway = await c.wait_frame(GOAWAY, 0)
        assert goaway.error_code == ENHANCE_YOUR_CALM
        assert c.connect_started_at is not None
        assert_timing(goaway.at - c.connect_started_at, expected, "jittered age")
        assert_event(server, "max_age", code="ENHANCE_YOUR_CALM")


# ---------------------------------------------------------------------- max_concurrent_streams


async def test_max_concurrent_streams_advertised_and_enforced() -> None:
    async with chaos(MaxConcurrentStreams(limit=3)) as server, \
            connected(server, ignore_stream_limit=True) as c:
        assert c.frames_of(SETTINGS, 0, ack=False)[0].settings[MCS] == 3
        with c.corked():
            sids = [c.open_stream("GET", "/delay/150") for _ in range(5)]
        for sid in sids:
            await c.wait_response(sid)
        assert [c.rst_code(s) for s in sids] == [None, None, None, REFUSED_STREAM,
                                                  REFUSED_STREAM]
        assert [c.streams[s].status for s in sids[:3]] == [200, 200, 200]
        for s in sids[3:]:
            assert c.frames_of(HEADERS, s) == []
        assert await get(c, "/echo") == 11  # slots free again
        for s in sids[3:]:
            assert_event(server, "max_concurrent_streams", stream=s, code="REFUSED_STREAM",
                         reason="stream_limit")


async def test_max_concurrent_streams_not_enforced() -> None:
    async with chaos(MaxConcurrentStreams(limit=2, enforce=False)) as server, \
            connected(server, ignore_stream_limit=True) as c:
        assert c.frames_of(SETTINGS, 0, ack=False)[0].settings[MCS] == 2
        with c.corked():
            sids = [c.open_stream("GET", "/delay/100") for _ in range(5)]
        for sid in sids:
            assert (await c.wait_response(sid)).status == 200
        assert c.frames_of(RST_STREAM) == [] and fault_events(server) == []


async def test_max_concurrent_streams_lowered_after_requests() -> None:
    fault = MaxConcurrentStreams(limit=4, lower_to=1, lower_after_requests=2)
    async with chaos(fault) as server, connected(server, ignore_stream_limit=True) as c:
        assert c.frames_of(SETTINGS, 0, ack=False)[0].settings[MCS] == 4
        await get(c, "/echo")
        assert len(c.frames_of(SETTINGS, 0, ack=False)) == 1
        second = await get(c, "/echo")
        lowered = await c.wait_frame(SETTINGS, 0, ack=False, settings={MCS: 1})
        assert before(c, lowered, c.frames_of(HEADERS, second)[0])
        with c.corked():
            sids = [c.open_stream("GET", "/delay/100") for _ in range(3)]
        for sid in sids:
            await c.wait_response(sid)
        assert [c.rst_code(s) for s in sids] == [None, REFUSED_STREAM, REFUSED_STREAM]
        assert_event(server, "max_concurrent_streams", action="lower", limit=1,
                     moment="settings")


async def test_max_concurrent_streams_lowered_after_time() -> None:
    fault = MaxConcurrentStreams(limit=4, lower_to=1, lower_after=5)  # 0.1 s
    async with chaos(fault) as server, connected(server, ignore_stream_limit=True) as c:
        with c.corked():
            early = [c.open_stream("GET", "/delay/20") for _ in range(2)]
        for sid in early:
            assert (await c.wait_response(sid)).status == 200
        lowered = await c.wait_frame(SETTINGS, 0, ack=False, settings={MCS: 1})
        assert c.connect_started_at is not None
        assert_timing(lowered.at - c.connect_started_at, 5 * SCALE, "lower_after")
        with c.corked():
            late = [c.open_stream("GET", "/delay/50") for _ in range(2)]
        for sid in late:
            await c.wait_response(sid)
        assert [c.rst_code(s) for s in late] == [None, REFUSED_STREAM]
        assert_event(server, "max_concurrent_streams", action="lower")


# ------------------------------------------------------------------------------- request_cap


async def test_request_cap() -> None:
    async with chaos(RequestCap(max_requests=3)) as server, connected(server) as c:
        await get(c, "/echo")
        await get(c, "/echo")
        assert c.frames_of(GOAWAY) == []
        capped = c.open_stream("GET", "/delay/150")
        goaway = await c.wait_frame(GOAWAY, 0)
        assert (goaway.last_stream_id, goaway.error_code) == (capped, NO_ERROR)
        late = c.open_stream("GET", "/echo")
        assert (await c.wait_frame(RST_STREAM, late)).error_code == REFUSED_STREAM
        st = await c.wait_response(capped)
        assert st.status == 200 and json.loads(st.body) == {"delayed_ms": 150}
        closed_at = await c.wait_closed()
        assert c.eof_at is not None and st.ended_at is not None and closed_at >= st.ended_at
        assert_event(server, "request_cap", stream=capped, code="NO_ERROR", max_requests=3)
        assert_event(server, "goaway", stream=late, code="REFUSED_STREAM")


async def test_request_cap_refuses_streams_that_arrive_with_the_capped_one() -> None:
    async with chaos(RequestCap(max_requests=2)) as server, connected(server) as c:
        await get(c, "/echo")
        with c.corked():  # the server reads both HEADERS in one go
            capped = c.open_stream("POST", "/orders", b"{}", headers=[("x-request-id", "a")])
            extra = c.open_stream("POST", "/orders", b"{}", headers=[("x-request-id", "b")])
        goaway = await c.wait_frame(GOAWAY, 0)
        assert goaway.last_stream_id == capped < extra
        assert (await c.wait_response(capped)).status == 201
        assert (await c.wait_frame(RST_STREAM, extra)).error_code == REFUSED_STREAM
        assert c.frames_of(HEADERS, extra) == []
        await c.wait_closed()
        # a stream above last_stream_id must never have been processed
        assert [e.request_id for e in server.ledger.effects()] == ["a"]


async def test_request_cap_close_after() -> None:
    async with chaos(RequestCap(max_requests=1, close_after=5)) as server, \
            connected(server) as c:
        sid = c.open_stream("GET", "/echo")
        goaway = await c.wait_frame(GOAWAY, 0)
        assert goaway.last_stream_id == sid
        assert (await c.wait_response(sid)).status == 200
        closed_at = await c.wait_closed()
        assert_timing(closed_at - goaway.at, 5 * SCALE, "FIN after the cap's GOAWAY")
        assert_event(server, "request_cap", stream=sid)


# ------------------------------------------------------------------------------- flow_control


async def test_small_initial_window_makes_the_upload_wait() -> None:
    settings = ServerSettings(initial_window_size=1024)
    body = bytes(range(256)) * 20  # 5120 bytes
    async with chaos(settings=settings) as server, connected(server) as c:
        assert c.frames_of(SETTINGS, 0, ack=False)[0].settings[INITIAL_WINDOW] == 1024
        sid = c.open_stream("POST", "/echo", body)
        st = await c.wait_response(sid)
        assert st.status == 200 and bytes(st.body) == body
        first_update = c.frames_of(WINDOW_UPDATE, sid)[0]
        early = sum(f.data_length for f in c.sent_of(DATA, sid) if f.at < first_update.at)
        assert early == 1024  # exactly the advertised window, then a wait
        assert sum(f.data_length for f in c.sent_of(DATA, sid)) == len(body)
        assert fault_events(server) == []


async def test_flow_control_withhold_updates() -> None:
    settings = ServerSettings(initial_window_size=1024)
    fault = FlowControl(withhold_updates=5)  # 0.1 s
    body = b"u" * 3000
    async with chaos(fault, settings=settings) as server, connected(server) as c:
        sid = c.open_stream("POST", "/echo", body)
        opened = headers_sent_at(c, sid)
        update = await c.wait_frame(WINDOW_UPDATE, sid)
        assert_timing(update.at - opened, 5 * SCALE, "withheld WINDOW_UPDATE")
        conn_updates = [f for f in c.frames_of(WINDOW_UPDATE, 0) if f.at < update.at]
        assert conn_updates == []  # the connection window was withheld too
        stalled = sum(f.data_length for f in c.sent_of(DATA, sid) if f.at < update.at)
        assert stalled == 1024
        st = await c.wait_response(sid)
        assert bytes(st.body) == body
        event = assert_event(server, "flow_control", stream=sid,
                             action="withhold_window_update", moment="request_headers")
        assert event["seconds"] == pytest.approx(5 * SCALE)


@pytest.mark.parametrize("moment", MOMENTS)
async def test_flow_control_error_at_each_moment(moment: Moment) -> None:
    fault = FlowControl(error=True, at=moment)
    async with chaos(fault) as server, connected(server) as c:
        sid = c.open_stream("POST", "/orders", b"{}")
        rst = await c.wait_frame(RST_STREAM, sid)
        assert rst.error_code == FLOW_CONTROL_ERROR
        has_headers = moment in ("response_headers", "response_body")
        assert bool(c.frames_of(HEADERS, sid)) == has_headers
        assert c.frames_of(DATA, sid) == []
        ran = moment not in ("request_headers", "request_end")
        assert server.ledger.total == int(ran)
        assert_event(server, "flow_control", stream=sid, code="FLOW_CONTROL_ERROR",
                     action="rst_stream", moment=moment)


@pytest.mark.parametrize("moment, window, auto_ack", [
    # With the default 65,535 window the burst takes four frames; a client that re-opens its
    # window between reads may legitimately never see a violation, so this one reads nothing.
    ("request_headers", None, False), ("request_end", None, False),
    ("after_app", None, False), ("request_end", 1000, True),
    # After the app's HEADERS (content-length: 100) the overrun must be in the first frame, or
    # the client sees the body overrun its content-length first: a window below one frame.
    ("response_headers", 1000, True), ("response_body", 1000, True)])
async def test_flow_control_overrun_is_detected_by_the_client(
        moment: Moment, window: int | None, auto_ack: bool) -> None:
    fault = FlowControl(overrun=True, at=moment)
    options: dict[str, Any] = {"auto_ack": auto_ack}
    if window:
        options["settings"] = {INITIAL_WINDOW: window}
    async with chaos(fault) as server, connected(server, **options) as c:
        advertised = c.sent_of(SETTINGS, 0)[0].settings.get(INITIAL_WINDOW, 65535)
        assert advertised == (window or 65535)
        sid = c.open_stream("GET", "/bytes/100")
        await c.wait_for(lambda: c.failure is not None, 2.0, "the client to fail")
        assert c.failure is not None and c.failure.error_code == FLOW_CONTROL_ERROR, \
            c.failure
        await c.wait_for(lambda: sum(f.flow_controlled_length for f in c.frames_of(DATA, sid))
                         > advertised, 1.0, "DATA beyond the window")
        [headers] = c.frames_of(HEADERS, sid)
        assert not headers.end_stream and before(c, headers, c.frames_of(DATA, sid)[0])
        sent_goaway = c.sent_of(GOAWAY, 0)
        assert sent_goaway and sent_goaway[0].error_code == FLOW_CONTROL_ERROR
        assert_event(server, "flow_control", stream=sid, action="overrun", moment=moment)


async def test_server_settings_are_advertised() -> None:
    settings = ServerSettings(max_concurrent_streams=7, initial_window_size=4096,
                              max_frame_size=32768, max_header_list_size=8192,
                              header_table_size=0, connection_window=1 << 20)
    async with chaos(settings=settings) as server, connected(server) as c:
        first = c.frames_of(SETTINGS, 0, ack=False)[0]
        assert {k: first.settings[k] for k in (1, 3, 4, 5, 6)} == \
            {1: 0, 3: 7, 4: 4096, 5: 32768, 6: 8192}
        update = await c.wait_frame(WINDOW_UPDATE, 0)
        assert update.increment == (1 << 20) - 65535  # the connection window opened at once
        assert before(c, first, update)
        body = b"w" * 100_000  # above 65,535: needs the bigger connection window
        sid = c.open_stream("POST", "/echo", body)
        assert bytes((await c.wait_response(sid)).body) == body


# ------------------------------------------------------------------------------- delay


async def test_delay_at_request_headers_runs_from_the_headers() -> None:
    delay = 5 * SCALE  # 0.1 s
    async with chaos(Delay(duration=5, at="request_headers")) as server, \
            connected(server) as c:
        sid = c.open_stream("POST", "/echo", b"abc", end_stream=False)
        await asyncio.sleep(delay + 0.05)
        assert c.frames_of(None, sid) == []
        c.end_stream(sid)
        st = await c.wait_response(sid)
        assert bytes(st.body) == b"abc"
        headers = c.frames_of(HEADERS, sid)[0]
        assert_timing(headers.at - headers_sent_at(c, sid), delay, "delay from HEADERS")
        # the delay had elapsed: the answer follows the end of the request promptly
        assert headers.at - end_sent_at(c, sid) < delay
        assert_event(server, "delay", stream=sid, moment="request_headers")


async def test_delay_at_request_end_runs_from_the_end() -> None:
    delay = 5 * SCALE
    async with chaos(Delay(duration=5, at="request_end")) as server, connected(server) as c:
        sid = c.open_stream("POST", "/echo", b"abc", end_stream=False)
        await asyncio.sleep(delay + 0.05)
        c.end_stream(sid)
        st = await c.wait_response(sid)
        assert bytes(st.body) == b"abc"
        headers = c.frames_of(HEADERS, sid)[0]
        assert_timing(headers.at - end_sent_at(c, sid), delay, "delay from the end")
        assert_event(server, "delay", stream=sid, moment="request_end")


async def test_delay_after_app_holds_a_response_already_recorded() -> None:
    delay = 5 * SCALE
    async with chaos(Delay(duration=5, at="after_app")) as server, connected(server) as c:
        sid = c.open_stream("POST", "/orders", b"{}")
        await until(lambda: server.ledger.total == 1, 1.0, "the effect")
        assert c.frames_of(HEADERS, sid) == []
        st = await c.wait_response(sid)
        assert st.status == 201
        assert_timing(c.frames_of(HEADERS, sid)[0].at - end_sent_at(c, sid), delay,
                      "delay after the app")
        assert_event(server, "delay", stream=sid, moment="after_app")


async def test_delay_at_response_headers() -> None:
    delay = 5 * SCALE
    async with chaos(Delay(duration=5)) as server, connected(server) as c:
        sid = c.open_stream("GET", "/bytes/1000")
        st = await c.wait_response(sid)
        assert st.status == 200 and len(st.body) == 1000
        headers = c.frames_of(HEADERS, sid)[0]
        data = c.frames_of(DATA, sid)[0]
        assert not headers.end_stream
        assert_timing(data.at - headers.at, delay, "HEADERS to DATA")
        assert_event(server, "delay", stream=sid, moment="response_headers")


async def test_delay_at_response_body_after_bytes() -> None:
    delay = 5 * SCALE
    fault = Delay(duration=5, at="response_body", after_bytes=16384)
    async with chaos(fault) as server, connected(server) as c:
        sid = c.open_stream("GET", "/bytes/40000")
        st = await c.wait_response(sid, 3.0)
        assert st.status == 200 and len(st.body) == 40000
        data = [f for f in c.frames_of(DATA, sid) if f.data_length]
        assert [f.data_length for f in data] == [16384, 16384, 7232]
        assert data[0].at - c.frames_of(HEADERS, sid)[0].at < delay  # the first N bytes
        assert_timing(data[1].at - data[0].at, delay, "delay before the 2nd DATA")
        assert_timing(data[2].at - data[1].at, delay, "delay before the 3rd DATA")
        assert c.frames_of(DATA, sid)[-1].end_stream
        assert_event(server, "delay", stream=sid, moment="response_body", after_bytes=16384)


async def test_delay_with_trigger_only_delays_matching_streams() -> None:
    delay = 5 * SCALE
    fault = Delay(duration=5, when=Trigger(path="/slow*"))
    async with chaos(fault) as server, connected(server) as c:
        with c.corked():
            slow = c.open_stream("GET", "/slow")
            fast = c.open_stream("GET", "/echo")
        await c.wait_response(slow)
        await c.wait_response(fast)
        assert c.streams[fast].ended_at < c.streams[slow].ended_at  # type: ignore[operator]
        assert_timing(c.frames_of(DATA, slow)[0].at - c.frames_of(HEADERS, slow)[0].at,
                      delay, "delayed stream")
        assert [e["stream"] for e in fault_events(server, "delay")] == [slow]


# ------------------------------------------------------------------------------- coverage


def test_every_moment_and_kind_is_covered() -> None:
    """A guard: if model.py grows a moment or a fault kind, this file must grow with it."""
    assert MOMENTS == ("request_headers", "request_end", "after_app", "response_headers",
                       "response_body")
    kinds = {t.__name__ for t in (RstStream, GoAway, IdleTimeout, MaxAge,
                                  MaxConcurrentStreams, RequestCap, FlowControl, Delay)}
    assert kinds == {t.__name__ for t in Fault.__args__}  # type: ignore[attr-defined]


async def delay_run(seed: int) -> tuple[float, float]:
    """(the delay the server chose, the HEADERS -> DATA gap observed)."""
    async with chaos(Delay(duration=5, jitter=5), seed=seed) as server, \
            connected(server) as c:
        sid = c.open_stream("GET", "/bytes/10")
        await c.wait_response(sid)
        gap = c.frames_of(DATA, sid)[0].at - c.frames_of(HEADERS, sid)[0].at
        return assert_event(server, "delay", stream=sid)["seconds"], gap


async def test_delay_jitter_is_seeded() -> None:
    chosen, gap = await delay_run(11)
    assert 5 * SCALE < chosen < 10 * SCALE
    assert_timing(gap, chosen, "jittered delay")
    assert (await delay_run(11))[0] == chosen


async def test_goaway_process_above_still_runs_the_app_for_streams_above_the_id() -> None:
    """The Node.js bug as a fault: GOAWAY(last_stream_id=N) while the app still runs the
    streams above N, so what RFC 9113 §6.8 calls unprocessed has in fact been written."""
    fault = GoAway(mode="graceful", process_above=True,
                   when=Trigger(path="/orders", every_nth_stream=2, max_fires=1))
    async with chaos(fault) as server, connected(server) as c:
        with c.corked():
            sids = [c.open_stream("POST", "/orders", b"{}",
                                  headers=[("x-request-id", f"r{i}")]) for i in range(3)]
        goaway = await c.wait_frame(GOAWAY, 0)
        assert goaway.last_stream_id == sids[0] and goaway.error_code == NO_ERROR
        await c.wait_for(lambda: server.ledger.total == 3, 2.0)
        # every stream reached the app, the two "unprocessed" ones included
        assert sorted(e.stream_id for e in server.ledger.effects()) == sids
        assert_event(server, "goaway", stream=sids[1], mode="graceful",
                     last_stream_id=sids[0], process_above=True)


async def test_goaway_process_above_makes_a_trusting_client_write_twice() -> None:
    """What the fault is for: a client that resends the streams a GOAWAY called unprocessed
    (as RFC 9113 allows; h2guard with trust_goaway=True) duplicates POSTs on such a server.
    (tests/integration/test_goaway_trust.py: the default learns not to.)"""
    import httpx

    import h2guard

    fault = GoAway(mode="graceful", process_above=True,
                   when=Trigger(path="/orders", every_nth_stream=4))
    async with chaos(fault) as server:
        async with httpx.AsyncClient(
                transport=h2guard.AsyncHTTPTransport(http2_prior_knowledge=True,
                                                     trust_goaway=True),
                base_url=server.url, timeout=5) as client:
            results = await asyncio.gather(*(
                client.post("/orders", content=b"{}", headers={"x-request-id": f"r{i}"})
                for i in range(20)), return_exceptions=True)
        assert all(isinstance(r, httpx.Response) and r.status_code == 201 for r in results)
        assert server.ledger.duplicate_requests, server.ledger.summary()
