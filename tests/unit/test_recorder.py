"""The flight recorder: the last frames both ways as trace lines, with nothing secret kept."""

from __future__ import annotations

import logging

import pytest

from h2guard.wire.core import H2Core, goaway_frame
from h2guard.wire.recorder import FlightRecorder

GET = [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"api"),
       (b":path", b"/orders"), (b"authorization", b"Bearer s3cret-token")]


def _pair(size: int = 32) -> tuple[H2Core, H2Core]:
    client = H2Core(client=True)
    client.recorder = FlightRecorder(size)
    server = H2Core(client=False)
    client.start(0.0)
    server.start(0.0)
    for _ in range(5):
        server.receive(client.data_to_send(), 0.0)
        client.receive(server.data_to_send(), 0.0)
    return client, server


def test_a_reset_shows_up_by_name_and_secrets_do_not() -> None:
    client, server = _pair()
    sid = client.next_stream_id()
    client.send_headers(sid, GET, end_stream=False)
    client.send_data(sid, b"card=4111111111111111", end_stream=True)
    server.receive(client.data_to_send(), 0.1)
    server.reset_stream(sid, 0x2)
    client.receive(server.data_to_send(), 0.25)
    assert client.recorder is not None
    lines = client.recorder.lines()
    assert lines[0].startswith("+0.000s send SETTINGS stream=0")
    assert any(" send HEADERS stream=1 flags=END_HEADERS length=" in line for line in lines)
    assert any(" send DATA stream=1 flags=END_STREAM length=21" in line for line in lines)
    assert lines[-1] == "+0.250s recv RST_STREAM stream=1 error=INTERNAL_ERROR (0x2)"
    text = "\n".join(lines)
    assert "s3cret" not in text and "4111" not in text and "Bearer" not in text


def test_goaway_and_settings_are_decoded_and_the_ring_is_bounded() -> None:
    rec = FlightRecorder(3, client=True)
    rec.sent(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 0.0)
    frame = goaway_frame(7, 0x0, b"x" * 500)  # a long debug text is cut, still one line
    for i in range(0, len(frame), 5):  # any chunking
        rec.received(frame[i:i + 5], 1.0)
    assert rec.lines()[-1].startswith("+1.000s recv GOAWAY stream=0 last_stream_id=7 "
                                      "error=NO_ERROR (0x0)")
    settings = bytes.fromhex("000006040000000000") + bytes.fromhex("000300000004")
    for _ in range(5):
        rec.received(settings, 2.0)
    assert len(rec) == 3 and "MAX_CONCURRENT_STREAMS=4" in rec.lines()[-1]
    assert rec.lines() is rec.lines()  # cached until the next frame


def test_debug_logging_emits_every_frame(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("h2guard.frames")
    caplog.set_level(logging.DEBUG, logger="h2guard.frames")
    rec = FlightRecorder(4, client=False, log=log, label="conn 1")
    rec.received(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000"), 0.0)
    assert [r.getMessage() for r in caplog.records] == ["conn 1 +0.000s recv SETTINGS stream=0"]
    with pytest.raises(ValueError, match="at least one frame"):
        FlightRecorder(0)
