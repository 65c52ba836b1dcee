"""The core's h2 connection against plain h2 on frames for closed streams.

``_Connection._receive_frame`` replaces h2's (which formats a trace line per frame even with
logging off): it must send and report exactly what h2 does, including the edge cases of frames
that arrive for streams closed by RST_STREAM, by END_STREAM, or never opened."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.exceptions
import hyperframe.frame as hf
import pytest

from h2guard.wire.core import _Connection


def _pair() -> list[h2.connection.H2Connection]:
    conns = []
    for cls in (h2.connection.H2Connection, _Connection):
        conn = cls(config=h2.config.H2Configuration(client_side=True, header_encoding=None))
        conn.initiate_connection()
        conn.receive_data(hf.SettingsFrame(0).serialize())
        conn.data_to_send()
        conns.append(conn)
    return conns


def _headers_frame(sid: int, *, end: bool = False) -> bytes:
    import hpack

    frame = hf.HeadersFrame(sid)
    frame.data = hpack.Encoder().encode([(b":status", b"200")])
    frame.flags.add("END_HEADERS")
    if end:
        frame.flags.add("END_STREAM")
    return frame.serialize()


def _data_frame(sid: int, data: bytes = b"x", *, end: bool = False) -> bytes:
    frame = hf.DataFrame(sid, data)
    if end:
        frame.flags.add("END_STREAM")
    return frame.serialize()


def _window(sid: int) -> bytes:
    return hf.WindowUpdateFrame(sid, window_increment=10).serialize()


def _run(conn: h2.connection.H2Connection, setup: str, frames: list[bytes]) -> list[object]:
    """What the connection does: events (by type and stream) or the error, and bytes sent."""
    conn.send_headers(1, [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"),
                          (b":authority", b"x")], end_stream=True)
    conn.send_headers(3, [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"),
                          (b":authority", b"x")], end_stream=True)
    if setup == "reset":
        conn.reset_stream(1, 0x8)
    elif setup == "ended":
        conn.receive_data(_headers_frame(1, end=True))
    conn.data_to_send()
    out: list[object] = []
    for data in frames:
        try:
            events = conn.receive_data(data)
            out.append([(type(e).__name__, getattr(e, "stream_id", None)) for e in events])
        except h2.exceptions.ProtocolError as exc:
            out.append((type(exc).__name__, getattr(exc, "error_code", None)))
            break
        out.append(conn.data_to_send())
    return out


@pytest.mark.parametrize("setup", ["reset", "ended", "open"])
@pytest.mark.parametrize("frames", [
    [_headers_frame(1)],
    [_data_frame(1)],
    [_window(1)],
    [hf.RstStreamFrame(1, error_code=0x8).serialize()],
    [_headers_frame(3), _data_frame(3, end=True), _data_frame(3)],
    [_headers_frame(3, end=True), _headers_frame(1)],
    [_data_frame(5)],
    [_headers_frame(1), _data_frame(1, end=True), _window(1), _data_frame(1)],
], ids=["headers", "data", "window", "rst", "data-after-end", "late-headers", "unopened",
        "full-then-more"])
def test_same_frames_sent_and_events_reported_as_h2(setup: str, frames: list[bytes]) -> None:
    plain, ours = _pair()
    expected = _run(plain, setup, frames)
    if setup == "reset":
        # the one deliberate difference: frames on a stream we reset were in flight, and RFC
        # 9113 section 5.1 says ignore them; h2 answers RST_STREAM STREAM_CLOSED
        expected = [_without_rst(item, 1) if isinstance(item, bytes) else item
                    for item in expected]
    assert _run(ours, setup, frames) == expected


def _without_rst(data: bytes, stream_id: int) -> bytes:
    out, pos = b"", 0
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 3], "big")
        frame = data[pos:pos + 9 + length]
        sid = int.from_bytes(frame[5:9], "big") & 0x7FFFFFFF
        if not (frame[3] == 0x3 and sid == stream_id):
            out += frame
        pos += 9 + length
    return out


# ---------------------------------------------------------------------------- request HEADERS


def _configured_pair() -> list[h2.connection.H2Connection]:
    """Plain h2 and the core's connection, configured as the core does (FastEncoder, no
    outbound validation or normalisation), so their bytes must match exactly."""
    from h2guard.wire.hpack_codec import FastEncoder

    conns = []
    for cls in (h2.connection.H2Connection, _Connection):
        conn = cls(config=h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False,
            normalize_outbound_headers=False))
        conn.encoder = FastEncoder()
        conn.initiate_connection()
        conn.receive_data(hf.SettingsFrame(0).serialize())
        conn.data_to_send()
        conns.append(conn)
    return conns


def _request(method: bytes, extra: int = 0) -> list[tuple[bytes, bytes]]:
    headers = [(b":method", method), (b":scheme", b"https"), (b":authority", b"api.test"),
               (b":path", b"/orders?x=1"), (b"accept", b"*/*"), (b"user-agent", b"t/1")]
    headers += [(f"x-h{i}".encode(), b"v" * 1000 + str(i).encode()) for i in range(extra)]
    return headers


@pytest.mark.parametrize("method", [b"GET", b"POST", b"HEAD"])
@pytest.mark.parametrize("end_stream", [True, False])
@pytest.mark.parametrize("extra", [0, 40])  # 40 x 1 KB: HEADERS + CONTINUATION frames
def test_request_headers_same_bytes_and_state_as_h2(method: bytes, end_stream: bool,
                                                     extra: int) -> None:
    plain, ours = _configured_pair()
    for sid in (1, 3):
        for conn in (plain, ours):
            conn.send_headers(sid, _request(method, extra), end_stream=end_stream)
        sent_plain, sent_ours = plain.data_to_send(), ours.data_to_send()
        assert sent_ours == sent_plain
        a, b = plain.streams[sid], ours.streams[sid]
        assert b.state_machine.state == a.state_machine.state
        assert (b._authority, b.request_method) == (a._authority, a.request_method)
    assert ours.highest_outbound_stream_id == plain.highest_outbound_stream_id == 3
    # what follows behaves the same: a body (if open), then the response
    if not end_stream:
        for conn in (plain, ours):
            conn.send_data(1, b"body", end_stream=True)
        assert ours.data_to_send() == plain.data_to_send()
    import hpack

    block = hpack.Encoder().encode([(b":status", b"200"), (b"content-length", b"5")])
    frame = hf.HeadersFrame(1, block)
    frame.flags.add("END_HEADERS")
    if method == b"HEAD":
        frame.flags.add("END_STREAM")
    results = []
    for conn in (plain, ours):
        results.append([(type(e).__name__, getattr(e, "stream_id", None))
                        for e in conn.receive_data(frame.serialize())])
    assert results[0] == results[1]


def test_trailers_and_server_headers_still_go_through_h2() -> None:
    plain, ours = _configured_pair()
    for conn in (plain, ours):
        conn.send_headers(1, _request(b"POST"), end_stream=False)
        conn.send_headers(1, [(b"x-checksum", b"abc")], end_stream=True)  # trailers
    assert ours.data_to_send() == plain.data_to_send()


def test_closed_request_streams_are_forgotten() -> None:
    from h2guard.wire.core import H2Core

    client, server = H2Core(client=True), H2Core(client=False)
    client.start(0.0)
    server.start(0.0)
    server.receive(client.data_to_send(), 0.0)
    client.receive(server.data_to_send(), 0.0)
    for _ in range(500):
        sid = client.next_stream_id()
        client.send_headers(sid, _request(b"GET"), end_stream=True)
        server.receive(client.data_to_send(), 0.0)
        server.respond(sid, [(b":status", b"200"), (b"content-length", b"2")], b"ok")
        client.receive(server.data_to_send(), 0.0)
    assert len(client._conn.streams) < 64  # swept every 32 new streams, not kept forever


@pytest.mark.parametrize("block", [
    [(b":status", b"200"), (b"server", b"x"), (b"cookie", b"a=1"), (b"cookie", b"b=2")],
    [(b":status", b"200"), (b"Upper", b"x")],                  # invalid: uppercase name
    [(b":status", b"200"), (b"x", b" padded ")],               # invalid: surrounding space
    [(b":status", b"200"), (b"connection", b"close")],         # invalid: connection-specific
    [(b"x", b"1"), (b":status", b"200")],                      # invalid: pseudo after regular
    [(b":status", b"200"), (b":path", b"/")],                  # invalid: request pseudo
])
def test_received_header_blocks_validated_as_h2_does_also_when_seen_again(block: list) -> None:
    import hpack

    for _round in range(3):  # the second and third time come from the memo (if valid)
        plain, ours = _pair()
        outcome = []
        for conn in (plain, ours):
            conn.send_headers(1, [(b":method", b"GET"), (b":path", b"/"),
                                  (b":scheme", b"http"), (b":authority", b"x")],
                              end_stream=True)
            conn.data_to_send()
            frame = hf.HeadersFrame(1, hpack.Encoder().encode(block))
            frame.flags.add("END_HEADERS")
            try:
                events = conn.receive_data(frame.serialize())
                outcome.append([(type(e).__name__, getattr(e, "headers", None))
                                for e in events])
            except h2.exceptions.ProtocolError as exc:
                # ours raises its stream-error subclass of exactly ProtocolError
                kind = type(exc).__mro__[1] if type(exc).__name__ == "_Malformed" else type(exc)
                outcome.append(kind.__name__)
        assert outcome[1] == outcome[0]
