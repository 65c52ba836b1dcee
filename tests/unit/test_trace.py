"""Frame tracing: exact lines for every frame type, chunking independence, robustness."""

from __future__ import annotations

import json

import h2.config
import h2.connection
import pytest
from hpack import Decoder, Encoder
from hyperframe.frame import (
    AltSvcFrame,
    ContinuationFrame,
    DataFrame,
    ExtensionFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    PushPromiseFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from h2guard.wire.trace import (
    PREFACE,
    FrameParser,
    TracedFrame,
    TraceError,
    format_frame,
    frame_type_name,
)

REQUEST = [(":method", "GET"), (":path", "/echo"), (":scheme", "http"), (":authority", "x")]


def raw_frame(frame_type: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    """Hand-built bytes, for frames hyperframe refuses to build."""
    return (len(payload).to_bytes(3, "big") + bytes([frame_type, flags])
            + stream_id.to_bytes(4, "big") + payload)


def lines(data: bytes, **kwargs: object) -> list[str]:
    parser = FrameParser(direction="recv", **kwargs)  # type: ignore[arg-type]
    out = [f.line() for f in parser.feed(data)]
    assert parser.buffered == 0
    return out


def one(frame: Frame | bytes, **kwargs: object) -> str:
    data = frame if isinstance(frame, bytes) else frame.serialize()
    [line] = lines(data, **kwargs)
    return line


def pair() -> tuple[h2.connection.H2Connection, h2.connection.H2Connection]:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    client.initiate_connection()
    server.initiate_connection()
    return client, server


# ---------------------------------------------------------------------------- one line per type


def test_data() -> None:
    assert one(DataFrame(1, b"hello world!", flags=["END_STREAM"])) == (
        "recv DATA stream=1 flags=END_STREAM length=12")
    assert one(DataFrame(3, b"")) == "recv DATA stream=3 length=0"


def test_data_padded_and_bad_padding() -> None:
    assert one(DataFrame(1, b"abc", pad_length=4, flags=["PADDED"])) == (
        "recv DATA stream=1 flags=PADDED length=8 padding=4")
    assert one(raw_frame(0x0, 0x08, 1, b"\x05abcd")) == (
        'recv DATA stream=1 flags=PADDED length=5 '
        'malformed="pad length 5 does not fit a 5-byte payload"')
    assert one(raw_frame(0x0, 0x08, 1, b"")) == (
        'recv DATA stream=1 flags=PADDED length=0 '
        'malformed="PADDED DATA frame has no pad length byte"')


def test_headers_decoded() -> None:
    block = Encoder().encode(REQUEST)
    frame = HeadersFrame(1, block, flags=["END_STREAM", "END_HEADERS"])
    assert one(frame) == ("recv HEADERS stream=1 flags=END_STREAM,END_HEADERS "
                          ":method=GET :path=/echo :scheme=http :authority=x")


def test_headers_without_decoding_show_length() -> None:
    block = Encoder().encode(REQUEST)
    frame = HeadersFrame(1, block, flags=["END_HEADERS"])
    assert one(frame, decode_headers=False) == (
        f"recv HEADERS stream=1 flags=END_HEADERS length={len(block)}")


def test_headers_with_priority_and_quoting_and_truncation() -> None:
    block = Encoder().encode([(":status", "200"), ("server", "a b"), ("x-empty", ""),
                              ("x-long", "v" * 61), ("x-sixty", "s" * 60)])
    frame = HeadersFrame(5, block, depends_on=3, stream_weight=15, exclusive=True,
                         flags=["END_HEADERS", "PRIORITY"])
    assert one(frame) == (
        "recv HEADERS stream=5 flags=END_HEADERS,PRIORITY depends_on=3 weight=16 "
        'exclusive=true :status=200 server="a b" x-empty="" '
        f"x-long={'v' * 60}... x-sixty={'s' * 60}")


def test_priority() -> None:
    assert one(PriorityFrame(3, depends_on=1, stream_weight=255)) == (
        "recv PRIORITY stream=3 depends_on=1 weight=256 exclusive=false")


def test_rst_stream_known_and_unknown_codes() -> None:
    assert one(RstStreamFrame(3, error_code=7)) == (
        "recv RST_STREAM stream=3 error=REFUSED_STREAM (0x7)")
    assert one(RstStreamFrame(3, error_code=0x1234)) == (
        "recv RST_STREAM stream=3 error=UNKNOWN(0x1234)")


def test_settings_and_ack_and_unknown_setting() -> None:
    frame = SettingsFrame(settings={3: 4, 4: 65535})
    assert one(frame) == "recv SETTINGS stream=0 MAX_CONCURRENT_STREAMS=4 INITIAL_WINDOW_SIZE=65535"
    assert one(SettingsFrame(flags=["ACK"])) == "recv SETTINGS stream=0 flags=ACK"
    assert one(SettingsFrame(settings={0x99: 1})) == (
        "recv SETTINGS stream=0 UNKNOWN_SETTING(0x99)=1")
    assert one(SettingsFrame()) == "recv SETTINGS stream=0"


def test_push_promise() -> None:
    block = Encoder().encode(REQUEST[:2])
    frame = PushPromiseFrame(1, promised_stream_id=2, data=block, flags=["END_HEADERS"])
    assert one(frame) == (
        "recv PUSH_PROMISE stream=1 flags=END_HEADERS promised_stream_id=2 "
        ":method=GET :path=/echo")


def test_ping_and_ack() -> None:
    opaque = bytes(range(1, 9))
    assert one(PingFrame(opaque_data=opaque)) == "recv PING stream=0 opaque=0102030405060708"
    assert one(PingFrame(opaque_data=opaque, flags=["ACK"])) == (
        "recv PING stream=0 flags=ACK opaque=0102030405060708")


def test_goaway() -> None:
    assert one(GoAwayFrame(last_stream_id=5, error_code=0, additional_data=b"bye")) == (
        'recv GOAWAY stream=0 last_stream_id=5 error=NO_ERROR (0x0) debug="bye"')
    assert one(GoAwayFrame(last_stream_id=7, error_code=0xB)) == (
        "recv GOAWAY stream=0 last_stream_id=7 error=ENHANCE_YOUR_CALM (0xb)")
    assert one(GoAwayFrame(error_code=0xABCDEF, additional_data=b'say "hi"\r\n\xff')) == (
        r'recv GOAWAY stream=0 last_stream_id=0 error=UNKNOWN(0xabcdef) '
        r'debug="say \"hi\"\r\n\xff"')


def test_window_update() -> None:
    assert one(WindowUpdateFrame(0, window_increment=983041)) == (
        "recv WINDOW_UPDATE stream=0 increment=983041")
    assert one(WindowUpdateFrame(1, window_increment=1000)) == (
        "recv WINDOW_UPDATE stream=1 increment=1000")


def test_continuation_headers_attach_to_last_frame() -> None:
    block = Encoder().encode(REQUEST)
    first, middle, last = block[:3], block[3:6], block[6:]
    data = (HeadersFrame(1, first, flags=["END_STREAM"]).serialize()
            + ContinuationFrame(1, middle).serialize()
            + ContinuationFrame(1, last, flags=["END_HEADERS"]).serialize())
    assert lines(data) == [
        "recv HEADERS stream=1 flags=END_STREAM length=3",
        "recv CONTINUATION stream=1 length=3",
        "recv CONTINUATION stream=1 flags=END_HEADERS "
        ":method=GET :path=/echo :scheme=http :authority=x",
    ]


def test_unknown_type_and_extensions() -> None:
    assert one(raw_frame(0x20, 0x05, 0, b"abcd")) == (
        "recv UNKNOWN(0x20) stream=0 flags=0x05 length=4")
    assert one(raw_frame(0x0B, 0, 9, b"")) == "recv UNKNOWN(0x0b) stream=9 length=0"
    assert one(raw_frame(0x0C, 0, 0, b"\x00\x03a.b")) == "recv ORIGIN stream=0 length=5"
    assert one(raw_frame(0x10, 0, 0, b"\x00\x00\x00\x05u=1, i")) == (
        'recv PRIORITY_UPDATE stream=0 prioritized_stream_id=5 priority="u=1, i"')
    assert one(AltSvcFrame(0, origin=b"example.com", field=b'h2=":443"')) == (
        'recv ALTSVC stream=0 origin="example.com" field="h2=\\":443\\""')
    assert frame_type_name(0xFF) == "UNKNOWN(0xff)"


# ---------------------------------------------------------------------------- odd and bad frames


def test_malformed_payloads_do_not_raise() -> None:
    assert one(raw_frame(0x6, 0, 0, b"abc")) == (
        'recv PING stream=0 length=3 malformed="PING frame must have 8 byte length: got 3"')
    assert one(raw_frame(0x8, 0, 0, b"\x00\x00\x00\x00")) == (
        "recv WINDOW_UPDATE stream=0 length=4 "
        'malformed="WINDOW_UPDATE increment must be between 1 to 2^31-1"')
    assert one(raw_frame(0x4, 0, 0, b"\x00\x03\x00")) == (
        'recv SETTINGS stream=0 length=3 malformed="Invalid SETTINGS body"')
    assert one(raw_frame(0x3, 0, 1, b"\x00")).startswith(
        "recv RST_STREAM stream=1 length=1 malformed=")


def test_wrong_stream_and_reserved_bit_are_violations() -> None:
    assert one(raw_frame(0x3, 0, 0, (8).to_bytes(4, "big"))) == (
        'recv RST_STREAM stream=0 error=CANCEL (0x8) violation="RST_STREAM frame on stream 0"')
    assert one(raw_frame(0x4, 1, 3, b"")) == (
        'recv SETTINGS stream=3 flags=ACK violation="SETTINGS frame on stream 3, must be stream 0"')
    assert one(raw_frame(0x0, 0, 0x80000001, b"x")) == (
        "recv DATA stream=1 length=1 reserved_bit=1")


def test_undecodable_headers_then_hpack_state_lost() -> None:
    bad = HeadersFrame(1, b"\xff\xff\xff\xff\x0f", flags=["END_HEADERS"]).serialize()
    good = HeadersFrame(3, Encoder().encode(REQUEST), flags=["END_HEADERS"]).serialize()
    first, second = lines(bad + good)
    assert first.startswith("recv HEADERS stream=1 flags=END_HEADERS headers=<undecodable: ")
    assert second == ("recv HEADERS stream=3 flags=END_HEADERS headers=<undecodable: "
                      "HPACK state lost: an earlier header block failed to decode>")


def test_interrupted_header_block_and_stray_continuation() -> None:
    block = Encoder().encode(REQUEST)
    data = (HeadersFrame(1, block[:4]).serialize() + PingFrame(opaque_data=b"12345678").serialize()
            + ContinuationFrame(1, block[4:], flags=["END_HEADERS"]).serialize())
    assert lines(data) == [
        "recv HEADERS stream=1 length=4",
        'recv PING stream=0 opaque=3132333435363738 '
        'violation="interrupts the header block open on stream 1"',
        'recv CONTINUATION stream=1 flags=END_HEADERS length=' + str(len(block) - 4)
        + ' violation="CONTINUATION but no header block is open"',
    ]
    # Everything after an interrupted block is decoded against a stale table: say so.
    later = HeadersFrame(3, Encoder().encode(REQUEST), flags=["END_HEADERS"]).serialize()
    parser = FrameParser(direction="recv")
    parser.feed(data)
    [frame] = parser.feed(later)
    assert frame.details == {
        "headers_error": "HPACK state lost: a header block was interrupted"}


def test_malformed_headers_lose_hpack_state() -> None:
    bad = raw_frame(0x1, 0x0C, 1, b"\x09abc")  # PADDED, pad length longer than the payload
    good = HeadersFrame(3, Encoder().encode(REQUEST), flags=["END_HEADERS"]).serialize()
    first, second = lines(bad + good)
    assert first == ('recv HEADERS stream=1 flags=END_HEADERS,PADDED length=4 '
                     'malformed="Padding is too long."')
    assert second.endswith("headers=<undecodable: HPACK state lost: a malformed HEADERS frame>")


# ---------------------------------------------------------------------------- TracedFrame itself


def test_timestamp_and_json() -> None:
    parser = FrameParser(direction="send")
    [frame] = parser.feed(RstStreamFrame(3, error_code=7).serialize(), now=0.1234)
    assert frame.line() == "+0.123s send RST_STREAM stream=3 error=REFUSED_STREAM (0x7)"
    assert frame.to_json() == {"t": 0.1234, "dir": "send", "type": "RST_STREAM", "stream": 3,
                               "flags": [], "length": 4, "error_code": 7,
                               "error": "REFUSED_STREAM"}
    json.dumps(frame.to_json())


def test_json_of_headers_and_settings_is_serialisable() -> None:
    data = (SettingsFrame(settings={3: 100}).serialize()
            + HeadersFrame(1, Encoder().encode(REQUEST), flags=["END_HEADERS"]).serialize())
    settings_frame, headers_frame = FrameParser(direction="recv").feed(data)
    assert settings_frame.details == {"settings": {"MAX_CONCURRENT_STREAMS": 100}}
    assert headers_frame.to_json()["headers"] == [list(h) for h in REQUEST]
    assert headers_frame.to_json()["t"] is None
    json.dumps(headers_frame.to_json())


def test_hand_built_traced_frame() -> None:
    frame = TracedFrame("recv", "RST_STREAM", 3, (), 4, {"error_code": 0x1234,
                                                        "error": "UNKNOWN(0x1234)"}, at=2.5)
    assert frame.line() == "+2.500s recv RST_STREAM stream=3 error=UNKNOWN(0x1234)"
    clash = TracedFrame("send", "DATA", 1, details={"length": 9, "note": "a b"})
    assert clash.to_json()["detail_length"] == 9
    assert clash.line() == 'send DATA stream=1 length=0 length=9 note="a b"'


def test_bad_direction_is_a_trace_error() -> None:
    with pytest.raises(TraceError):
        FrameParser(direction="sent")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="direction"):
        format_frame(PingFrame(), direction="out")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- format_frame


def test_format_frame_matches_parser() -> None:
    frames: list[Frame] = [
        DataFrame(1, b"abc", flags=["END_STREAM"]), RstStreamFrame(1, error_code=8),
        SettingsFrame(settings={1: 4096}), SettingsFrame(flags=["ACK"]),
        PingFrame(opaque_data=b"\x00" * 8), GoAwayFrame(last_stream_id=3, error_code=2),
        WindowUpdateFrame(0, window_increment=5), PriorityFrame(3, depends_on=1),
    ]
    for frame in frames:
        parsed = FrameParser(direction="send").feed(frame.serialize())
        assert [format_frame(frame, direction="send")] == parsed


def test_format_frame_with_decoder() -> None:
    encoder, decoder = Encoder(), Decoder()
    frame = HeadersFrame(1, encoder.encode(REQUEST), flags=["END_HEADERS"])
    traced = format_frame(frame, direction="send", now=1.0, decoder=decoder)
    assert traced.line() == ("+1.000s send HEADERS stream=1 flags=END_HEADERS "
                             ":method=GET :path=/echo :scheme=http :authority=x")
    # The decoder's dynamic table carries over, as it must between blocks.
    again = HeadersFrame(3, encoder.encode(REQUEST), flags=["END_HEADERS"])
    assert format_frame(again, direction="send", decoder=decoder).details["headers"] == REQUEST
    # A lone fragment cannot be decoded: length instead, and no exception.
    cont = ContinuationFrame(1, b"\x82", flags=["END_HEADERS"])
    assert format_frame(cont, direction="send", decoder=decoder).line() == (
        "send CONTINUATION stream=1 flags=END_HEADERS length=1")
    assert format_frame(ExtensionFrame(0x33, 1, 0x01, b"zz"), direction="recv").line() == (
        "recv UNKNOWN(0x33) stream=1 flags=0x01 length=2")


# ---------------------------------------------------------------------------- real h2 peers


def conversation() -> tuple[bytes, bytes]:
    """Bytes a real h2 client and server exchange: request, refusal, retry, answer, GOAWAY."""
    client, server = pair()
    client.send_headers(1, REQUEST, end_stream=True)
    client.send_headers(3, [*REQUEST, ("x-retry", "1")], end_stream=True)
    client.ping(b"pingpong")
    client.increment_flow_control_window(983041)
    client_bytes = client.data_to_send()
    server.receive_data(client_bytes)
    server.reset_stream(1, error_code=7)
    server.send_headers(3, [(":status", "200"), ("content-type", "text/plain")])
    server.send_data(3, b"hello world!", end_stream=True)
    server.close_connection(error_code=0, additional_data=b"bye", last_stream_id=3)
    server_bytes = server.data_to_send()
    client.receive_data(server_bytes)
    return client_bytes + client.data_to_send(), server_bytes


def test_real_h2_exchange() -> None:
    client_bytes, server_bytes = conversation()
    sent = [f.line() for f in FrameParser(direction="send", expect_preface=True)
            .feed(client_bytes)]
    assert sent == [
        "send SETTINGS stream=0 HEADER_TABLE_SIZE=4096 ENABLE_PUSH=1 INITIAL_WINDOW_SIZE=65535 "
        "MAX_FRAME_SIZE=16384 ENABLE_CONNECT_PROTOCOL=0 MAX_CONCURRENT_STREAMS=100 "
        "MAX_HEADER_LIST_SIZE=65536",
        "send HEADERS stream=1 flags=END_STREAM,END_HEADERS "
        ":method=GET :path=/echo :scheme=http :authority=x",
        # The second block uses HPACK's dynamic table: decoding must carry state over.
        "send HEADERS stream=3 flags=END_STREAM,END_HEADERS "
        ":method=GET :path=/echo :scheme=http :authority=x x-retry=1",
        "send PING stream=0 opaque=70696e67706f6e67",
        "send WINDOW_UPDATE stream=0 increment=983041",
    ]
    received = [f.line() for f in FrameParser(direction="recv").feed(server_bytes)]
    assert received[0].startswith("recv SETTINGS stream=0 ")
    assert received[1:] == [
        "recv SETTINGS stream=0 flags=ACK",
        "recv PING stream=0 flags=ACK opaque=70696e67706f6e67",
        "recv RST_STREAM stream=1 error=REFUSED_STREAM (0x7)",
        "recv HEADERS stream=3 flags=END_HEADERS :status=200 content-type=text/plain",
        "recv DATA stream=3 flags=END_STREAM length=12",
        'recv GOAWAY stream=0 last_stream_id=3 error=NO_ERROR (0x0) debug="bye"',
    ]


@pytest.mark.parametrize("expect_preface", [True, False])
def test_byte_at_a_time_equals_whole(expect_preface: bool) -> None:
    client_bytes, server_bytes = conversation()
    data = client_bytes if expect_preface else server_bytes
    whole = FrameParser(direction="send", expect_preface=expect_preface).feed(data, now=1.0)
    parser = FrameParser(direction="send", expect_preface=expect_preface)
    single: list[TracedFrame] = []
    for i in range(len(data)):
        single += parser.feed(data[i:i + 1], now=1.0)
        assert parser.buffered < 9 + 100
    assert single == whole
    assert len(whole) >= 5


# ---------------------------------------------------------------------------- preface and bounds


def test_preface_is_stripped_across_chunks() -> None:
    parser = FrameParser(direction="recv", expect_preface=True)
    data = PREFACE + SettingsFrame(flags=["ACK"]).serialize()
    assert parser.feed(data[:5]) == []
    assert parser.feed(data[5:30]) == []
    assert [f.line() for f in parser.feed(data[30:])] == ["recv SETTINGS stream=0 flags=ACK"]


def test_bad_preface_is_one_frame_then_stopped() -> None:
    parser = FrameParser(direction="recv", expect_preface=True)
    [bad] = parser.feed(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n")
    assert bad.line() == (
        r'recv BAD_PREFACE stream=0 length=24 received="GET / HTTP/1.1\r\nHost: ex" '
        'guess="HTTP/1.x request: the client did not use HTTP/2 prior knowledge"')
    assert parser.stopped
    assert parser.feed(PingFrame().serialize()) == []
    assert parser.buffered == 0


def test_bad_preface_after_a_matching_start_and_tls() -> None:
    parser = FrameParser(direction="recv", expect_preface=True)
    assert parser.feed(b"PRI * HTTP/2") == []
    [bad] = parser.feed(b".1\r\n")
    assert bad.details == {"received": r"PRI * HTTP/2.1\r\n",
                           "guess": "damaged HTTP/2 client preface"}
    [tls] = FrameParser(direction="recv", expect_preface=True).feed(b"\x16\x03\x01\x00\xa5")
    assert tls.line() == (r'recv BAD_PREFACE stream=0 length=5 received="\x16\x03\x01\x00\xa5" '
                          'guess="TLS handshake: a TLS client on a cleartext (h2c) port"')


def test_huge_length_fields_are_not_preallocated() -> None:
    parser = FrameParser(direction="recv")
    # A 16 MiB HEADERS: only what has arrived is buffered.
    assert parser.feed(b"\xff\xff\xff\x01\x04\x00\x00\x00\x01" + b"abc") == []
    assert parser.buffered == 12
    # A 16 MiB DATA frame is counted, never buffered.
    counted = FrameParser(direction="recv")
    header = b"\xff\xff\xff\x00\x01\x00\x00\x00\x01"
    assert counted.feed(header) == []
    chunk = bytes(1 << 20)
    for _ in range(15):
        assert counted.feed(chunk) == []
        assert counted.buffered == 0
    [frame] = counted.feed(bytes((1 << 20) - 1) + PingFrame().serialize()[:4])
    assert frame.line() == f"recv DATA stream=1 flags=END_STREAM length={(1 << 24) - 1}"
    assert counted.buffered == 4


def test_continuation_flood_is_bounded() -> None:
    parser = FrameParser(direction="recv")
    parser.feed(HeadersFrame(1, b"\x82").serialize())
    fragment = ContinuationFrame(1, b"\x00" * 60000).serialize()
    for _ in range(20):
        parser.feed(fragment)
    [last] = parser.feed(ContinuationFrame(1, b"", flags=["END_HEADERS"]).serialize())
    assert "HPACK state lost: a header block larger than 1048576 bytes" in last.line()


# ---------------------------------------------------------------------------- never raises


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000), st.lists(st.integers(0, 2000), max_size=8))
def test_arbitrary_bytes_never_raise(data: bytes, cuts: list[int]) -> None:
    parser = FrameParser(direction="recv", expect_preface=True)
    assert parser.feed(PREFACE) == []
    frames: list[TracedFrame] = []
    start = 0
    for cut in [*sorted(cuts), len(data)]:
        frames += parser.feed(data[start:cut], now=0.0)
        start = max(start, cut)
        assert parser.buffered < 9 + (1 << 24)
    for frame in frames:
        assert isinstance(frame.line(), str)
        json.dumps(frame.to_json())
    assert frames == FrameParser(direction="recv").feed(data, now=0.0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 0x12), st.integers(0, 255), st.integers(0, 7),
                          st.binary(max_size=40)), max_size=12))
def test_well_framed_garbage_never_raises(frames: list[tuple[int, int, int, bytes]]) -> None:
    """Valid frame headers around random payloads reach every payload parser."""
    data = b"".join(raw_frame(t, f, s, p) for t, f, s, p in frames)
    traced = FrameParser(direction="send").feed(data)
    assert len(traced) == len(frames)
    for frame in traced:
        assert frame.line().startswith("send ")
        json.dumps(frame.to_json())
