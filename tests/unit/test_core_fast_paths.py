"""The core's fast paths against h2's own paths: the same bytes, events and state.

For the common frames (request and response HEADERS, DATA, WINDOW_UPDATE) and a server's whole
small response, the core makes h2's state changes itself (``_fast_paths_match_h2``). Here the
same conversations run twice, fast paths on and off (``_FAST``), and after every step the two
must agree on everything: what was reported, what went on the wire, and the state h2 keeps
(stream state machines, windows, content lengths, how streams closed, HPACK tables).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import hpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import h2guard.wire.core as core_module
from h2guard.wire.core import PREFACE, H2Core

DIFF = settings(max_examples=250, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def frame(ftype: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return (struct.pack(">I", len(payload))[1:] + bytes([ftype, flags])
            + struct.pack(">I", stream_id & 0xFFFFFFFF) + payload)


@contextmanager
def fast_paths(on: bool) -> Iterator[None]:
    saved = core_module._FAST
    core_module._FAST = on
    try:
        yield
    finally:
        core_module._FAST = saved


def test_the_installed_h2_takes_the_fast_paths() -> None:
    assert core_module._fast_paths_match_h2()
    assert core_module._FAST


def test_a_different_h2_table_turns_the_fast_paths_off(monkeypatch: pytest.MonkeyPatch) -> None:
    import h2.stream

    table = dict(h2.stream._transitions)
    key = (h2.stream.StreamState.OPEN, h2.stream.StreamInputs.RECV_END_STREAM)
    table[key] = (None, h2.stream.StreamState.CLOSED)
    monkeypatch.setattr(h2.stream, "_transitions", table)
    assert not core_module._fast_paths_match_h2()


# ------------------------------------------------------------------------------ state


def _vars(obj: Any) -> dict[str, Any]:
    return {k: v for k, v in vars(obj).items() if k not in ("config", "state_machine",
                                                             "_inbound_window_manager")}


def _state(core: H2Core) -> dict[str, Any]:
    conn = core._conn
    streams = {
        sid: (_vars(s), vars(s.state_machine), vars(s._inbound_window_manager))
        for sid, s in conn.streams.items()
    }
    return {
        "connection": conn.state_machine.state,
        "streams": streams,
        "closed": dict(conn._closed_streams),
        "ids": (conn.highest_inbound_stream_id, conn.highest_outbound_stream_id),
        "windows": (conn.outbound_flow_control_window,
                    vars(conn._inbound_flow_control_window_manager)),
        "decoder": (list(conn.decoder._dynamic), conn.decoder._size,
                    conn.decoder.header_table_size),
        "encoder": (list(conn.encoder._entries), conn.encoder._size),
        "buffered": bytes(conn.incoming_buffer._data),
        "core": (dict(core._streams), dict(core._withheld), list(core._pending_acks),
                 core.control_frames, core.resets_received, core.requests_seen, core.closed,
                 core.goaway_sent, core.goaway_received, core.last_frame_at,
                 core.last_nonping_at),
    }


def _described(events: list[Any]) -> list[Any]:
    """Events with the exact type of every header field (a never-indexed one is kept so)."""
    out = []
    for ev in events:
        headers = getattr(ev, "headers", None)
        kinds = [type(h).__name__ for h in headers] if headers is not None else None
        out.append((type(ev).__name__, ev, kinds))
    return out


class Twins:
    """The same core twice, one with the fast paths and one without."""

    def __init__(self, *, client: bool, **kw: Any) -> None:
        self.cores = {}
        for on in (False, True):
            with fast_paths(on):
                core = H2Core(client=client, **kw)
                core.start(0.0)
                core.data_to_send()
                self.cores[on] = core

    def run(self, fn: Any) -> Any:
        results = {}
        for on, core in self.cores.items():
            with fast_paths(on):
                try:
                    got = fn(core)
                except Exception as exc:  # a command refused (on a closed connection): alike
                    got = (type(exc), str(exc))
                results[on] = (got, core.data_to_send())
        slow, fast = results[False], results[True]
        if isinstance(slow[0], list):
            assert _described(fast[0]) == _described(slow[0])
        else:
            assert fast[0] == slow[0]
        assert fast[1] == slow[1]
        assert _state(self.cores[True]) == _state(self.cores[False])
        return fast[0]

    def receive(self, data: bytes, now: float = 1.0) -> list[Any]:
        return list(self.run(lambda core: core.receive(data, now)))


# ------------------------------------------------------------------------------ conversations

_REQUESTS = [
    [(":method", "GET"), (":path", "/bytes/16"), (":scheme", "http"), (":authority", "x")],
    [(":method", "POST"), (":path", "/echo"), (":scheme", "http"), (":authority", "x"),
     ("content-length", "5")],
    [(":method", "HEAD"), (":path", "/"), (":scheme", "http"), (":authority", "x")],
    [(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", "x"),
     ("user-agent", "h2load"), ("cookie", "a=1")],
    [(":method", "GET"), (":path", "/"), (":scheme", "http")],  # no :authority: fine
    [(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", "x"),
     ("Upper", "bad")],  # malformed: a stream error
    [(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", "x"),
     ("content-length", "x")],  # malformed
    [(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", "x"),
     ("content-length", "3")],  # malformed when the headers end the stream
    [(":status", "100"), (":method", "GET"), (":path", "/")],  # informational in a request
    [("x-trailer", "1")],  # trailers on an open stream, a bad request on a new one
]
_RESPONSES = [
    [(":status", "200"), ("content-length", "16")],
    [(":status", "200"), ("server", "nginx"), ("content-type", "text/plain")],
    [(":status", "204")],
    [(":status", "100")],  # informational
    [(":status", "103"), ("link", "</a>; rel=preload")],
    [(":status", "200"), ("content-length", "0")],
    [(":status", "200"), ("Bad", "x")],  # malformed
    [(":status", "200"), ("connection", "close")],  # malformed
    [("grpc-status", "0")],  # trailers (or a malformed response)
    [(":method", "GET")],  # a request pseudo-header in a response
]

_step = st.one_of(
    st.tuples(st.just("headers"),
              st.one_of(st.integers(0, 4), st.integers(0, len(_REQUESTS) - 1)),
              st.integers(0, 9), st.sampled_from([0x4, 0x5, 0x4, 0x5, 0x4, 0x0, 0x25, 0x0D]),
              st.sampled_from([True, True, False])),
    st.tuples(st.just("exchange"), st.integers(0, 4), st.sampled_from([0, 3, 5, 16]),
              st.booleans()),
    st.tuples(st.just("data"), st.integers(0, 9),
              st.sampled_from([0, 1, 5, 16, 16, 300, 16384, 16385]), st.booleans(),
              st.sampled_from([False, False, False, True])),
    st.tuples(st.just("window"), st.integers(0, 9),
              st.sampled_from([0, 1, 100, 2**16, 2**31 - 1, 2**31 + 5]), st.booleans()),
    st.tuples(st.just("rst"), st.integers(0, 9), st.sampled_from([0, 8])),
    st.tuples(st.just("misc"), st.sampled_from(["ping", "settings", "settings_window",
                                                "priority", "goaway", "continuation"])),
    st.tuples(st.just("respond"), st.integers(0, 9), st.sampled_from([0, 16, 100, 20000]),
              st.sampled_from([b"200", b"204", b"100"]),
              st.sampled_from(["plain", "plain", "header", "never", "triple", "str"])),
    st.tuples(st.just("send"), st.integers(0, 9), st.sampled_from([0, 16, 70000]),
              st.booleans()),
    st.tuples(st.just("command"), st.sampled_from(["ack", "withhold", "release", "goaway",
                                                   "reset", "settings", "open"]),
              st.integers(0, 9)),
)


class Conversation:
    """Turns drawn steps into frames and commands, for one role, and plays them on twins."""

    def __init__(self, twins: Twins, *, client: bool) -> None:
        self.twins = twins
        self.client = client
        self.encoder = hpack.Encoder()
        self.sids: list[int] = []
        self.next_sid = 1
        self.pending = b""
        if client:
            self.pending = frame(0x4, 0, 0)

    def sid(self, pick: int) -> int:
        """Mostly a stream opened earlier (the newest ones most often), now and then one that
        is not (the connection, an even or idle stream)."""
        if self.sids and pick < 9:
            return self.sids[-1 - pick % min(len(self.sids), 4)]
        return [0, 2, 7 + 2 * len(self.sids), 2**31 - 1][pick % 4]

    def block(self, index: int) -> bytes:
        fields = (_RESPONSES if self.client else _REQUESTS)[index]
        return bytes(self.encoder.encode(fields))

    def flush(self) -> None:
        if self.pending:
            data, self.pending = self.pending, b""
            self.twins.receive(data)

    def step(self, step: tuple[Any, ...], cut: bool) -> None:
        kind = step[0]
        if kind == "headers":
            _, index, pick, flags, new = step
            if new and not self.client:
                sid = self.next_sid
                self.next_sid += 2
                self.sids.append(sid)
            else:
                sid = self.sid(pick)
            payload = self.block(index)
            if flags & 0x20:
                payload = b"\x00\x00\x00\x00\x10" + payload
            if flags & 0x08:
                payload = b"\x02" + payload + b"\x00\x00"
            if flags & 0x4 or len(payload) < 2:
                self.pending += frame(0x1, flags, sid, payload)
            else:  # a block split with CONTINUATION
                self.pending += frame(0x1, flags, sid, payload[:1])
                self.pending += frame(0x9, 0x4, sid, payload[1:])
        elif kind == "exchange":  # a whole request or response: HEADERS, DATA with END_STREAM
            _, index, size, twice = step
            if self.client:
                sid = self.sid(0)
            else:
                sid = self.next_sid
                self.next_sid += 2
                self.sids.append(sid)
            self.pending += frame(0x1, 0x4, sid, self.block(index))
            if twice:
                self.pending += frame(0x0, 0, sid, b"w" * size)
            self.pending += frame(0x0, 0x1, sid, b"v" * size)
        elif kind == "data":
            _, pick, size, end, padded = step
            payload = b"x" * size
            flags = 0x1 if end else 0
            if padded:
                payload = b"\x03" + payload + b"\x00\x00\x00"
                flags |= 0x8
            self.pending += frame(0x0, flags, self.sid(pick), payload)
        elif kind == "window":
            _, pick, increment, connection = step
            sid = 0 if connection else self.sid(pick)
            self.pending += frame(0x8, 0, sid, struct.pack(">I", increment & 0xFFFFFFFF))
        elif kind == "rst":
            self.pending += frame(0x3, 0, self.sid(step[1]), struct.pack(">I", step[2]))
        elif kind == "misc":
            what = step[1]
            if what == "ping":
                self.pending += frame(0x6, 0, 0, b"12345678")
            elif what == "settings":
                self.pending += frame(0x4, 0, 0, struct.pack(">HI", 0x5, 20000))
            elif what == "settings_window":
                self.pending += frame(0x4, 0, 0, struct.pack(">HI", 0x4, 10))
            elif what == "priority":
                self.pending += frame(0x2, 0, self.sid(0), b"\x00\x00\x00\x00\x10")
            elif what == "goaway":
                self.pending += frame(0x7, 0, 0, struct.pack(">II", self.sid(0), 0))
            else:  # a CONTINUATION out of the blue
                self.pending += frame(0x9, 0x4, self.sid(0), b"\x82")
        else:
            self.flush()
            self.command(step)
        if cut:
            self.flush()

    def command(self, step: tuple[Any, ...]) -> None:
        kind = step[0]
        twins = self.twins
        if kind == "respond":
            _, pick, size, status, form = step
            sid = self.sid(pick)
            length: Any = (b"content-length", str(size).encode())
            if form == "header":
                length = hpack.HeaderTuple(*length)
            elif form == "never":
                length = hpack.NeverIndexedHeaderTuple(*length)
            elif form == "triple":
                length = (*length, True)
            elif form == "str":
                length = tuple(part.decode() for part in length)
            headers = [(b":status", status), length, (b"server", b"h2guard")]
            twins.run(lambda core: core.respond(sid, headers, b"y" * size))
        elif kind == "send":
            _, pick, size, end = step
            sid = self.sid(pick)
            twins.run(lambda core: core.send_data(sid, b"z" * size, end_stream=end))
        else:
            _, what, pick = step
            sid = self.sid(pick)
            if what == "ack":
                twins.run(lambda core: core.acknowledge(sid, 100))
            elif what == "withhold":
                twins.run(lambda core: core.withhold_window(sid))
            elif what == "release":
                twins.run(lambda core: core.release_window(sid))
            elif what == "goaway":
                twins.run(lambda core: core.goaway(code=0))
            elif what == "reset":
                twins.run(lambda core: core.reset_stream(sid, 0x8))
            elif what == "settings":
                twins.run(lambda core: core.update_settings({0x3: 2}))
            elif self.client:  # open a request
                new = self.next_sid
                fields = [(b":method", b"GET" if pick % 3 else b"HEAD"), (b":path", b"/"),
                          (b":scheme", b"http"), (b":authority", b"x")]
                if twins.run(lambda core: core.send_headers(new, fields,
                                                            end_stream=pick % 2 == 0)):
                    self.sids.append(new)
                self.next_sid += 2


def _play(client: bool, steps: list[tuple[Any, ...]], cuts: list[bool], **kw: Any) -> None:
    twins = Twins(client=client, **kw)
    talk = Conversation(twins, client=client)
    if not client:
        twins.receive(PREFACE + frame(0x4, 0, 0))
    elif steps:  # a client has a request in flight before the server talks
        talk.command(("command", "open", 0))
    for step, cut in zip(steps, [*cuts, *([False] * len(steps))], strict=False):
        talk.step(step, cut)
    talk.flush()


@DIFF
@given(steps=st.lists(_step, max_size=30), cuts=st.lists(st.booleans(), max_size=30))
def test_server_fast_paths_agree_with_h2(steps: list[tuple[Any, ...]],
                                          cuts: list[bool]) -> None:
    _play(False, steps, cuts)


@DIFF
@given(steps=st.lists(_step, max_size=30), cuts=st.lists(st.booleans(), max_size=30))
def test_client_fast_paths_agree_with_h2(steps: list[tuple[Any, ...]],
                                          cuts: list[bool]) -> None:
    _play(True, steps, cuts)


@DIFF
@given(steps=st.lists(_step, max_size=20), cuts=st.lists(st.booleans(), max_size=20))
def test_client_without_automatic_acks_agrees_with_h2(steps: list[tuple[Any, ...]],
                                                       cuts: list[bool]) -> None:
    twins = Twins(client=True, settings={0x2: 0, 0x4: 1 << 20}, connection_window=16 << 20)
    for core in twins.cores.values():
        core.auto_ack = False
    talk = Conversation(twins, client=True)
    talk.command(("command", "open", 0))
    for step, cut in zip(steps, [*cuts, *([False] * len(steps))], strict=False):
        talk.step(step, cut)
    talk.flush()


def test_a_busy_server_connection_agrees_with_h2() -> None:
    """Many requests in one read, answered in one go, the way a load generator drives it:
    the periodic sweep of closed streams and the HPACK tables stay in step too."""
    twins = Twins(client=False)
    twins.receive(PREFACE + frame(0x4, 0, 0) + frame(0x8, 0, 0, struct.pack(">I", 2**30)))
    encoder = hpack.Encoder()
    sid = 1
    for _batch in range(20):
        chunk = b""
        sids = []
        for _ in range(50):
            block = bytes(encoder.encode(_REQUESTS[0]))
            chunk += frame(0x1, 0x5, sid, block)
            sids.append(sid)
            sid += 2
        events = twins.receive(chunk)
        assert sum(type(ev).__name__ == "RequestReceived" for ev in events) == 50
        for one in sids:
            assert twins.run(lambda core, one=one: core.respond(one, _OK, b"b" * 16)) == 1


_OK = [(b":status", b"200"), (b"content-type", b"application/octet-stream"),
       (b"content-length", b"16")]


# ------------------------------------------------------------------------------ streams


def _connection(settings: dict[int, int] | None = None) -> Any:
    core = H2Core(client=True, settings=settings)
    core.start(0.0)
    return core._conn


def test_a_stream_built_the_fast_way_is_the_one_h2_builds() -> None:
    assert core_module._streams_match_h2()
    # with settings that differ from the defaults, both ways, and after they changed
    conn = _connection({0x4: 1 << 20})
    conn.remote_settings[0x4] = 12345
    conn.remote_settings.acknowledge()
    conn.max_outbound_frame_size = 20000
    for sid in (1, 3):
        fast = conn._fresh_stream(sid, outbound=True)
        slow = core_module.h2.stream.H2Stream(sid + 100, conn.config, 1 << 20, 12345)
        slow.max_outbound_frame_size = 20000
        slow.__class__ = core_module._Stream
        slow.stream_id = slow.state_machine.stream_id = sid
        assert core_module._layout(fast) == core_module._layout(slow)
        assert fast.inbound_flow_control_window == 1 << 20
        assert fast.outbound_flow_control_window == 12345
        assert conn.streams[sid] is fast and conn.highest_outbound_stream_id == sid
    conn.remote_settings[0x4] = 777  # a new value is in force only once acknowledged
    assert conn._fresh_stream(5, outbound=True).outbound_flow_control_window == 12345
    conn.remote_settings.acknowledge()
    assert conn._fresh_stream(7, outbound=True).outbound_flow_control_window == 777


def test_another_stream_layout_turns_the_fast_paths_off(monkeypatch: pytest.MonkeyPatch) -> None:
    import h2.stream

    init = h2.stream.H2StreamStateMachine.__init__

    def more(self: Any, stream_id: int) -> None:
        init(self, stream_id)
        self.something_new = None

    monkeypatch.setattr(h2.stream.H2StreamStateMachine, "__init__", more)
    assert not core_module._streams_match_h2()
    assert not core_module._fast_paths_match_h2()


def test_another_config_layout_turns_the_fast_paths_off(monkeypatch: pytest.MonkeyPatch) -> None:
    import h2.config

    option = h2.config._BooleanConfigOption("validate_inbound_headers")
    option.attr_name = "_kept_elsewhere"  # the value is no longer where the core reads it
    monkeypatch.setattr(h2.config.H2Configuration, "validate_inbound_headers", option,
                        raising=False)
    assert not core_module._fast_paths_match_h2()


_STATES = list(core_module.StreamState)
_CLOSERS = [None, *core_module.h2.stream.StreamClosedBy]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_STATES), st.sampled_from(_CLOSERS)), max_size=40),
       st.integers(0, 1))
def test_the_sweep_forgets_what_h2_forgets(streams: list[Any], remainder: int) -> None:
    """The core's walk over the streams (``_open_streams``, and the periodic ``_sweep`` that
    uses it) against h2's own: the same count, the same streams forgotten, recorded in the
    same order."""
    conns = [_connection() for _ in range(3)]
    for conn in conns:
        conn._closed_streams[999] = None  # one recorded before
        for i, (state, closer) in enumerate(streams):
            stream = core_module._new_stream(i + 1, conn.config, 65535, 65535, 16384)
            stream.state_machine.state = state
            stream.state_machine.stream_closed_by = closer
            conn.streams[i + 1] = stream

    def seen(conn: Any) -> Any:
        return list(conn.streams), list(conn._closed_streams.items())

    ours, h2s, forgetting = conns
    assert ours._open_streams(remainder) == \
        core_module.h2.connection.H2Connection._open_streams(h2s, remainder)
    forgetting._h2guard_new = forgetting._SWEEP - 1  # the next new stream is due a sweep
    forgetting._sweep()
    assert seen(ours) == seen(h2s) == seen(forgetting)


def test_the_sweep_runs_every_few_new_streams_both_ways() -> None:
    """A client opening many streams that close: h2's count with the fast paths off, the
    core's walk with them on, and h2 ends up holding and remembering the same streams."""
    twins = Twins(client=True)
    twins.receive(frame(0x4, 0, 0))
    encoder = hpack.Encoder()
    for sid in range(1, 400, 2):
        fields = [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"),
                  (b":authority", b"x")]
        assert twins.run(lambda core, sid=sid, fields=fields:
                         core.send_headers(sid, fields, end_stream=True))
        block = bytes(encoder.encode([(":status", "200"), ("content-length", "4")]))
        twins.receive(frame(0x1, 0x4, sid, block) + frame(0x0, 0x1, sid, b"abcd"))
    conn = twins.cores[True]._conn
    assert len(conn.streams) <= 32 and len(conn._closed_streams) == 200 - len(conn.streams)


# ------------------------------------------------------------------------------ windows


@pytest.mark.parametrize("auto_ack", [True, False])
def test_acknowledging_closed_streams_updates_the_connection_window_as_h2_does(
        auto_ack: bool) -> None:
    """Bodies handed back as their streams close: h2's WINDOW_UPDATE every half window."""
    twins = Twins(client=True)
    for core in twins.cores.values():
        core.auto_ack = auto_ack
    twins.receive(frame(0x4, 0, 0))
    encoder = hpack.Encoder()
    updates = 0
    for sid in range(1, 40, 2):
        fields = [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"),
                  (b":authority", b"x")]
        twins.run(lambda core, sid=sid, fields=fields:
                  core.send_headers(sid, fields, end_stream=True))
        block = bytes(encoder.encode([(":status", "200")]))
        data = (frame(0x1, 0x4, sid, block) + frame(0x0, 0x0, sid, b"a" * 5000)
                + frame(0x0, 0x1, sid, b"b" * 3000))
        sent = twins.run(lambda core, data=data: (core.receive(data, 1.0),
                                                  core.data_to_send())[1])
        updates += sent.count(bytes([0, 0, 4, 0x8, 0, 0, 0, 0, 0]))
    assert updates >= 3


# ------------------------------------------------------------------------------ chunks


def _client_script() -> tuple[Twins, list[bytes]]:
    """A client with requests in flight, and the frames that answer them."""
    twins = Twins(client=True)
    encoder = hpack.Encoder()
    wire = [frame(0x4, 0, 0)]
    for i, sid in enumerate(range(1, 24, 2)):
        method = b"HEAD" if i % 5 == 4 else b"GET"
        fields = [(b":method", method), (b":path", b"/"), (b":scheme", b"http"),
                  (b":authority", b"x")]
        twins.run(lambda core, sid=sid, fields=fields:
                  core.send_headers(sid, fields, end_stream=True))
        block = bytes(encoder.encode([(":status", "200"), ("server", "nginx"),
                                      ("content-length", "16")]))
        wire.append(frame(0x1, 0x4, sid, block))
        if i % 3 == 1:
            wire.append(frame(0x8, 0, 0, struct.pack(">I", 1000)))
        if i % 4 == 2:
            wire.append(frame(0x6, 0, 0, b"12345678"))
        if method == b"GET":
            wire += [frame(0x0, 0, sid, b"x" * 10), frame(0x0, 0x1, sid, b"y" * 6)]
    return twins, wire


@DIFF
@given(st.lists(st.integers(1, 60), max_size=40))
def test_chunks_cut_anywhere_agree_with_h2(sizes: list[int]) -> None:
    """Frames split across reads: the fast paths read whole frames straight from a read, or
    from h2's buffer once part of a frame waited there."""
    twins, frames = _client_script()
    wire = b"".join(frames)
    pos = 0
    for size in sizes:
        if pos >= len(wire):
            break
        twins.receive(wire[pos:pos + size])
        pos += size
    if pos < len(wire):
        twins.receive(wire[pos:])


@pytest.mark.parametrize("bad", [
    frame(0x8, 0, 0, struct.pack(">I", 2**31 - 1)),  # the window overflows: h2 decides
    frame(0x1, 0x4, 23, b"\x80"),  # HPACK index 0 on an open stream: the fast path decides
    frame(0x0, 0x1, 23, b"z" * 70000)[:9] + b"z" * 16384,  # above the frame size limit
])
def test_a_connection_error_mid_read_leaves_the_same_bytes_buffered(bad: bytes) -> None:
    twins, frames = _client_script()
    twins.receive(frames[0])  # SETTINGS: then nothing is buffered, and the next read starts
    events = twins.receive(b"".join(frames[1:9]) + bad + b"".join(frames[9:]))  # whole frames
    assert type(events[-1]).__name__ == "ConnectionFailed"


# ------------------------------------------------------------------------------ memos


def test_the_content_length_memo_keeps_head_and_get_apart() -> None:
    """The same response block answers a HEAD (no body: h2 does not parse content-length)
    and a GET (a body of that length), in either order."""
    twins = Twins(client=True)
    twins.receive(frame(0x4, 0, 0))
    encoder = hpack.Encoder()
    core_module._CHECKED.clear()
    for i, method in enumerate([b"HEAD", b"GET", b"HEAD", b"GET", b"GET"]):
        sid = 2 * i + 1
        fields = [(b":method", method), (b":path", b"/"), (b":scheme", b"http"),
                  (b":authority", b"x")]
        twins.run(lambda core, sid=sid, fields=fields:
                  core.send_headers(sid, fields, end_stream=True))
        block = bytes(encoder.encode([(":status", "200"), ("content-length", "5")]))
        body = b"abcde" if i != 4 else b"abc"  # the last one short: a stream error
        events = twins.receive(frame(0x1, 0x4, sid, block) + frame(0x0, 0x1, sid, body))
        kinds = [type(ev).__name__ for ev in events]
        if method == b"HEAD" or i == 4:
            assert "StreamReset" in kinds
        else:
            assert kinds[-1] == "StreamEnded"
    assert core_module._CHECKED  # served from the memo


def test_a_bad_content_length_is_refused_every_time() -> None:
    twins = Twins(client=True)
    twins.receive(frame(0x4, 0, 0))
    encoder = hpack.Encoder()
    for sid in (1, 3, 5):
        fields = [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"),
                  (b":authority", b"x")]
        twins.run(lambda core, sid=sid, fields=fields:
                  core.send_headers(sid, fields, end_stream=True))
        block = bytes(encoder.encode([(":status", "200"), ("content-length", "x")]))
        events = twins.receive(frame(0x1, 0x4, sid, block))
        assert [type(ev).__name__ for ev in events] == ["StreamReset"]


def test_a_big_response_block_is_checked_every_time_and_not_remembered() -> None:
    twins = Twins(client=True)
    twins.receive(frame(0x4, 0, 0))
    encoder = hpack.Encoder()
    core_module._CHECKED.clear()
    for sid, value in ((1, "v" * 3000), (3, "v" * 3000), (5, "V" * 3000)):
        fields = [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"),
                  (b":authority", b"x")]
        twins.run(lambda core, sid=sid, fields=fields:
                  core.send_headers(sid, fields, end_stream=True))
        block = bytes(encoder.encode([(":status", "200"), ("x-big", value),
                                      ("content-length", "1")]))
        events = twins.receive(frame(0x1, 0x4, sid, block) + frame(0x0, 0x1, sid, b"a"))
        names = [type(ev).__name__ for ev in events]
        assert names == ["ResponseReceived", "DataReceived", "StreamEnded"]
        assert events[0].headers[1] == (b"x-big", value.encode())
    assert not core_module._CHECKED
