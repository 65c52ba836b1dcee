"""The sans-IO core, tested by feeding frames between two cores in memory (no sockets)."""

from __future__ import annotations

import struct

import hpack
import pytest

from h2guard.wire.core import MAX_STREAM_ID, PREFACE, H2Core, goaway_frame
from h2guard.wire.events import (
    ConnectionFailed,
    DataReceived,
    Event,
    GoAwayReceived,
    PingAcked,
    RequestReceived,
    ResponseReceived,
    SettingsReceived,
    StreamEnded,
    StreamRefused,
    StreamReset,
    WindowUpdated,
)

GET = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"test"),
       (b":path", b"/")]


class Pair:
    """A client core and a server core wired back to back."""

    def __init__(self, **server_kw: object) -> None:
        self.client = H2Core(client=True)
        self.server = H2Core(client=False, **server_kw)  # type: ignore[arg-type]
        self.client.start(0.0)
        self.server.start(0.0)
        self.now = 0.0
        self.pump()

    def pump(self) -> tuple[list[Event], list[Event]]:
        """Move bytes until both sides are quiet; return (client events, server events)."""
        got_c: list[Event] = []
        got_s: list[Event] = []
        for _ in range(50):
            to_s = self.client.data_to_send()
            to_c = self.server.data_to_send()
            if not to_s and not to_c:
                break
            if to_s:
                got_s += self.server.receive(to_s, self.now)
            if to_c:
                got_c += self.client.receive(to_c, self.now)
        return got_c, got_s

    def request(self, *, end: bool = True) -> int:
        sid = self.client.next_stream_id()
        assert self.client.send_headers(sid, GET, end_stream=end)
        return sid

    def respond(self, sid: int, body: bytes = b"ok") -> None:
        assert self.server.send_headers(sid, [(b":status", b"200")])
        assert self.server.send_data(sid, body, end_stream=True) == len(body)


def of(events: list[Event], kind: type) -> list:  # type: ignore[type-arg]
    return [e for e in events if isinstance(e, kind)]


def test_request_response_round_trip() -> None:
    p = Pair()
    sid = p.request()
    _, s_events = p.pump()
    assert of(s_events, RequestReceived)[0].stream_id == sid
    assert of(s_events, StreamEnded)[0].stream_id == sid
    p.respond(sid, b"hello")
    c_events, _ = p.pump()
    assert of(c_events, ResponseReceived)[0].headers == [(b":status", b"200")]
    assert b"".join(e.data for e in of(c_events, DataReceived)) == b"hello"
    assert p.client.open_streams == 0 and p.server.open_streams == 0


def test_graceful_goaway_lets_streams_at_or_below_last_id_finish() -> None:
    """h2 alone moves to CLOSED on GOAWAY; the core keeps streams <= last_stream_id alive."""
    p = Pair()
    first = p.request()
    second = p.request()
    p.pump()
    assert p.server.goaway(code=0, last_stream_id=first) == first
    c_events, _ = p.pump()
    [goaway] = of(c_events, GoAwayReceived)
    assert goaway.last_stream_id == first
    assert goaway.unprocessed == (second,)  # safe to resend anywhere
    assert not p.client.can_open_stream()
    p.respond(first, b"finished after GOAWAY")
    c_events, _ = p.pump()
    assert b"".join(e.data for e in of(c_events, DataReceived)) == b"finished after GOAWAY"
    assert of(c_events, StreamEnded)[0].stream_id == first


def test_server_refuses_streams_above_its_goaway() -> None:
    p = Pair()
    first = p.request()
    p.pump()
    p.server.goaway(last_stream_id=first)
    # the client has not seen the GOAWAY yet and opens another stream
    late = p.client.next_stream_id()
    p.client.send_headers(late, GET, end_stream=True)
    to_server = p.client.data_to_send()
    s_events = p.server.receive(to_server, 0.0)
    assert of(s_events, StreamRefused) == [StreamRefused(late, "after_goaway")]
    to_client = p.server.data_to_send()
    assert (late, struct.pack(">I", 0x7)) in _frames(to_client, 0x3)
    c_events = p.client.receive(to_client, 0.0)
    # the client learns both ways that the late stream was never processed
    assert late in of(c_events, GoAwayReceived)[0].unprocessed


def test_two_step_drain_only_lowers_the_id() -> None:
    p = Pair()
    sid = p.request()
    p.pump()
    assert p.server.goaway(last_stream_id=MAX_STREAM_ID) == MAX_STREAM_ID
    c_events, _ = p.pump()
    assert of(c_events, GoAwayReceived)[0].last_stream_id == MAX_STREAM_ID
    # during the drain the client must not open new streams, but the old one still works
    assert not p.client.can_open_stream()
    assert p.server.goaway(last_stream_id=sid) == sid
    assert p.server.goaway(last_stream_id=MAX_STREAM_ID) == sid  # never goes back up
    c_events, _ = p.pump()
    assert [e.last_stream_id for e in of(c_events, GoAwayReceived)] == [sid, sid]
    p.respond(sid)
    c_events, _ = p.pump()
    assert of(c_events, StreamEnded)


def test_stream_limit_is_enforced_with_refused_stream_not_a_connection_error() -> None:
    # the client ignores the limit (as Node does before SETTINGS arrive): write raw HEADERS
    enc = hpack.Encoder()
    raw = b""
    for sid in (1, 3, 5):
        block = enc.encode(GET)
        raw += struct.pack(">I", len(block))[1:] + b"\x01\x05" + struct.pack(">I", sid) + block
    server = H2Core(client=False, settings={0x3: 2})
    server.start(0.0)
    events = server.receive(PREFACE + _settings_frame() + raw, 0.0)
    assert [e.stream_id for e in of(events, RequestReceived)] == [1, 3]
    assert of(events, StreamRefused) == [StreamRefused(5, "stream_limit")]
    assert not of(events, ConnectionFailed)
    out = server.data_to_send()
    assert _frames(out, 0x3) == [(5, struct.pack(">I", 0x7))]


def test_lowering_the_limit_mid_connection_applies_at_once() -> None:
    p = Pair(settings={0x3: 10})
    p.request(end=False)
    p.pump()
    p.server.update_settings({0x3: 1})
    c_events, _ = p.pump()
    assert of(c_events, SettingsReceived)[-1].changed == {0x3: 1}
    assert p.server.stream_limit == 1


def test_events_before_a_connection_error_are_not_lost() -> None:
    """h2 drops the events of a chunk when a later frame in it raises; the core does not."""
    server = H2Core(client=False)
    server.start(0.0)
    enc = hpack.Encoder()
    block = enc.encode(GET)
    headers = struct.pack(">I", len(block))[1:] + b"\x01\x05" + struct.pack(">I", 1) + block
    bad = b"\x00\x00\x04\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00"  # WINDOW_UPDATE of 0
    events = server.receive(PREFACE + _settings_frame() + headers + bad, 0.0)
    assert of(events, RequestReceived)[0].stream_id == 1
    [failed] = of(events, ConnectionFailed)
    assert failed.error_code == 0x1
    assert server.closed
    assert server.receive(b"more", 0.0) == []


def test_bad_preface_gets_goaway_protocol_error() -> None:
    server = H2Core(client=False)
    server.start(0.0)
    events = server.receive(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 0.0)
    assert of(events, ConnectionFailed)[0].error_code == 0x1
    [(stream, payload)] = _frames(server.data_to_send(), 0x7)
    assert stream == 0 and struct.unpack(">II", payload[:8])[1] == 0x1


def test_oversize_headers_get_goaway_protocol_error() -> None:
    server = H2Core(client=False, max_header_list_size=1024)
    server.start(0.0)
    block = hpack.Encoder().encode([*GET, (b"x-big", b"v" * 4000)])
    frame = struct.pack(">I", len(block))[1:] + b"\x01\x05" + struct.pack(">I", 1) + block
    events = server.receive(PREFACE + _settings_frame() + frame, 0.0)
    assert of(events, ConnectionFailed)[0].error_code == 0x1
    codes = [struct.unpack(">II", p[:8])[1] for _, p in _frames(server.data_to_send(), 0x7)]
    assert codes == [0x1]


def test_unknown_error_codes_pass_through() -> None:
    p = Pair()
    sid = p.request()
    p.pump()
    assert p.server.reset_stream(sid, 0x1234)
    c_events, _ = p.pump()
    assert of(c_events, StreamReset) == [StreamReset(sid, 0x1234, True)]


def test_send_data_respects_the_window_and_resumes_on_update() -> None:
    p = Pair()
    sid = p.request()
    p.pump()
    p.server.send_headers(sid, [(b":status", b"200")])
    body = b"x" * 100_000
    sent = p.server.send_data(sid, body, end_stream=True)
    assert sent == 65535  # the default window
    c_events, s_events = p.pump()
    assert of(s_events, WindowUpdated)  # the client acknowledged automatically
    sent += p.server.send_data(sid, body[sent:], end_stream=True)
    assert sent == len(body)
    c_events, _ = p.pump()
    assert of(c_events, StreamEnded)


def test_withheld_window_stalls_the_peer_until_released() -> None:
    p = Pair()
    sid = p.client.next_stream_id()
    p.client.send_headers(sid, [(b":method", b"POST"), *GET[1:]])
    p.pump()
    p.server.withhold_window(sid)
    assert p.client.send_data(sid, b"y" * 70_000) == 65535
    _, s_events = p.pump()
    assert sum(len(e.data) for e in of(s_events, DataReceived)) == 65535
    assert p.client.window(sid) == 0
    p.server.release_window(sid)
    c_events, _ = p.pump()
    assert of(c_events, WindowUpdated)
    assert p.client.window(sid) > 0


def test_ping_round_trip_and_activity_clock() -> None:
    p = Pair()
    p.now = 5.0
    p.client.ping(b"12345678", 5.0)
    p.now = 5.25
    c_events, _ = p.pump()
    [ack] = of(c_events, PingAcked)
    assert ack.payload == b"12345678" and ack.rtt == pytest.approx(0.25)
    assert p.server.last_frame_at == 5.25
    assert p.server.last_nonping_at == 0.0  # a PING is not activity for ALB-style idle timers


def test_frames_split_at_any_byte_boundary() -> None:
    server = H2Core(client=False)
    server.start(0.0)
    block = hpack.Encoder().encode(GET)
    data = PREFACE + _settings_frame() + struct.pack(">I", len(block))[1:] + b"\x01\x05" \
        + struct.pack(">I", 1) + block
    events: list[Event] = []
    for i in range(len(data)):
        events += server.receive(data[i : i + 1], 0.0)
    assert of(events, RequestReceived)[0].stream_id == 1


def test_goaway_frame_helper_round_trips() -> None:
    p = Pair()
    c_events = p.client.receive(goaway_frame(0, 0xB, b"calm down"), 0.0)
    assert of(c_events, GoAwayReceived) == [GoAwayReceived(0xB, 0, b"calm down", ())]


def _settings_frame() -> bytes:
    return b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def _frames(data: bytes, ftype: int) -> list[tuple[int, bytes]]:
    out = []
    pos = 0
    while pos + 9 <= len(data):
        length = int.from_bytes(data[pos : pos + 3], "big")
        if data[pos + 3] == ftype:
            sid = int.from_bytes(data[pos + 5 : pos + 9], "big") & MAX_STREAM_ID
            out.append((sid, data[pos + 9 : pos + 9 + length]))
        pos += 9 + length
    return out


def test_a_response_above_the_peers_goaway_is_reported_as_a_violation() -> None:
    """A server that answers a stream its own GOAWAY called unprocessed did process it: the
    client core says so once (GoAwayViolated), acknowledges the DATA, and delivers nothing."""
    from h2guard.wire.events import GoAwayViolated

    p = Pair()
    first = p.request()
    second = p.request()
    p.pump()
    p.server.goaway(code=0, last_stream_id=first, keep_streams=True)
    c_events, _ = p.pump()
    assert of(c_events, GoAwayReceived)[0].unprocessed == (second,)
    p.respond(second, b"x" * 1000)  # the app ran it anyway (the Node.js bug)
    p.respond(first, b"fine")
    c_events, _ = p.pump()
    assert of(c_events, GoAwayViolated) == [GoAwayViolated(second, first, "HEADERS")]
    assert [e.stream_id for e in of(c_events, DataReceived)] == [first]
    assert [e.stream_id for e in of(c_events, ResponseReceived)] == [first]


def test_a_goaway_that_raises_last_stream_id_proves_the_moved_streams_were_run() -> None:
    """Node.js http2: GOAWAY(last=1), then GOAWAY(last=5), and the app ran 3 and 5 without
    answering them. The client had handed 3 and 5 back as unprocessed: both are violations."""
    from h2guard.wire.core import goaway_frame
    from h2guard.wire.events import GoAwayViolated

    client = H2Core(client=True)
    client.start(0.0)
    client.data_to_send()
    client.receive(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00", 0.0)  # empty server SETTINGS
    for _ in range(4):
        assert client.send_headers(client.next_stream_id(), GET, end_stream=True)
    client.data_to_send()
    events = client.receive(goaway_frame(1, 0), 0.0)
    assert of(events, GoAwayReceived)[0].unprocessed == (3, 5, 7)
    events = client.receive(goaway_frame(5, 0), 0.0)
    assert of(events, GoAwayViolated) == [GoAwayViolated(3, 1, "GOAWAY"),
                                          GoAwayViolated(5, 1, "GOAWAY")]
    assert client.goaway_received == 1  # the id never goes up
