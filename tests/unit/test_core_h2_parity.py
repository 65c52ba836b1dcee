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
    assert _run(ours, setup, frames) == _run(plain, setup, frames)
