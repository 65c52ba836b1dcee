"""Fuzzing the sans-IO core: whatever the peer sends, ``receive`` never raises.

Random bytes, random frames after a valid preface, and the same input cut into random chunks.
Beyond "no exception": a connection failure always puts a GOAWAY with its code on the wire, a
closed core ignores further input, and how the bytes were split never changes what they mean.
"""

from __future__ import annotations

import struct

import hpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from h2guard.wire import events as wire_events
from h2guard.wire.core import PREFACE, H2Core
from h2guard.wire.events import ConnectionFailed

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
EVENT_TYPES = tuple(getattr(wire_events, name) for name in wire_events.__all__
                    if isinstance(getattr(wire_events, name), type))


def frame(ftype: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return (struct.pack(">I", len(payload))[1:] + bytes([ftype, flags])
            + struct.pack(">I", stream_id & 0xFFFFFFFF) + payload)


HELLO = PREFACE + frame(0x4, 0, 0)
RESPONSE_HELLO = frame(0x4, 0, 0)  # a server's first bytes, for a client core

_BLOCKS = [
    bytes(hpack.Encoder().encode([(":method", "GET"), (":path", "/"), (":scheme", "http"),
                                  (":authority", "x")])),
    bytes(hpack.Encoder().encode([(":status", "200"), ("content-length", "3")])),
    bytes(hpack.Encoder().encode([(":method", "POST"), (":path", "/echo"),
                                  (":scheme", "https"), (":authority", "x"),
                                  ("content-length", "5")])),
    b"\x80", b"\xff\xff\xff\x0f", b"\x00\x7f", b"",
]

_frames = st.builds(
    frame,
    st.one_of(st.integers(0, 9), st.integers(10, 255)),
    st.one_of(st.sampled_from([0x0, 0x1, 0x4, 0x5, 0x8, 0x20, 0x25]), st.integers(0, 255)),
    st.one_of(st.sampled_from([0, 1, 2, 3, 5, 2**31 - 1, 2**31 + 1]), st.integers(0, 2**32 - 1)),
    st.one_of(st.sampled_from(_BLOCKS), st.binary(max_size=48),
              st.builds(lambda pairs: b"".join(struct.pack(">HI", k, v) for k, v in pairs),
                        st.lists(st.tuples(st.integers(0, 10), st.integers(0, 2**32 - 1)),
                                 max_size=3))),
)
_oversize = st.builds(lambda n, t: struct.pack(">I", n)[1:] + bytes([t, 0]) + b"\0\0\0\1",
                      st.integers(16385, 2**24 - 1), st.integers(0, 10))
_streams = st.lists(st.one_of(_frames, _frames, _frames, _oversize, st.binary(max_size=30)),
                    min_size=1, max_size=12).map(b"".join)


def _feed(core: H2Core, data: bytes, cuts: list[int]) -> tuple[list[object], bytes]:
    events: list[object] = []
    out = b""
    points = sorted({c % (len(data) + 1) for c in cuts})
    for a, b in zip([0, *points], [*points, len(data)], strict=True):
        got = core.receive(data[a:b], 1.0)
        assert isinstance(got, list)
        assert all(isinstance(ev, EVENT_TYPES) for ev in got), got
        events += got
        out += core.data_to_send()
    return events, out


def _goaway_codes(data: bytes) -> list[int]:
    codes, pos = [], 0
    while len(data) - pos >= 9:
        length = int.from_bytes(data[pos : pos + 3], "big")
        if data[pos + 3] == 0x7:
            codes.append(struct.unpack(">I", data[pos + 13 : pos + 17])[0])
        pos += 9 + length
    assert pos == len(data), "the core wrote a partial frame"
    return codes


def _check(core: H2Core, events: list[object], out: bytes) -> None:
    failures = [ev for ev in events if isinstance(ev, ConnectionFailed)]
    assert len(failures) <= 1
    if failures:
        assert failures[-1] is events[-1]  # nothing is reported after the failure
        assert core.closed and core.failure is failures[0]
        assert failures[0].error_code in _goaway_codes(out)  # the peer is told why
        assert core.receive(HELLO + frame(0x6, 0, 0, b"12345678"), 2.0) == []
        assert core.data_to_send() == b""
    else:
        _goaway_codes(out)


@FUZZ
@given(data=st.binary(max_size=2000), cuts=st.lists(st.integers(0, 2000), max_size=5))
def test_server_random_bytes(data: bytes, cuts: list[int]) -> None:
    core = H2Core(client=False)
    core.start(0.0)
    core.data_to_send()
    events, out = _feed(core, data, cuts)
    _check(core, events, out)
    if data and not PREFACE.startswith(data[: len(PREFACE)]):
        assert core.closed  # a bad preface is always fatal, with a GOAWAY PROTOCOL_ERROR
        assert _goaway_codes(out) == [0x1]


@FUZZ
@given(data=_streams, cuts=st.lists(st.integers(0, 4000), max_size=6))
def test_server_random_frames_after_preface(data: bytes, cuts: list[int]) -> None:
    core = H2Core(client=False)
    core.start(0.0)
    core.data_to_send()
    events, out = _feed(core, HELLO + data, cuts)
    _check(core, events, out)


@FUZZ
@given(data=_streams, cuts=st.lists(st.integers(0, 4000), max_size=6))
def test_client_random_frames_from_server(data: bytes, cuts: list[int]) -> None:
    core = H2Core(client=True)
    core.start(0.0)
    sid = core.next_stream_id()
    core.send_headers(sid, [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"),
                            (b":authority", b"x")], end_stream=True)
    core.data_to_send()
    events, out = _feed(core, RESPONSE_HELLO + data, cuts)
    _check(core, events, out)


@FUZZ
@given(data=_streams, cuts=st.lists(st.integers(0, 4000), min_size=1, max_size=8))
def test_chunking_never_changes_the_meaning(data: bytes, cuts: list[int]) -> None:
    whole = H2Core(client=False)
    whole.start(0.0)
    whole.data_to_send()
    split = H2Core(client=False)
    split.start(0.0)
    split.data_to_send()
    events_whole, out_whole = _feed(whole, HELLO + data, [])
    events_split, out_split = _feed(split, HELLO + data, cuts)
    assert events_split == events_whole
    assert out_split == out_whole
