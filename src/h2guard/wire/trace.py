"""Sans-IO HTTP/2 frame tracing: one line (or one JSON object) per frame.

The chaos server's event log, the doctor's ``trace`` command and the test suite all need to say
*what was on the wire*, not what h2 made of it: when a reset storm or a GOAWAY race goes wrong,
h2 has often already raised or merged the evidence away. So this module parses raw bytes itself,
independently of any connection state machine, and never raises on what a peer sends:

* :class:`FrameParser` splits a byte stream into frames across arbitrary chunk boundaries, strips
  the client preface, keeps its own HPACK decoder (one parser per direction, so one decoder per
  direction) and turns each complete frame into a :class:`TracedFrame`.
* :func:`format_frame` does the same for a :class:`hyperframe.frame.Frame` a caller already has.
* :meth:`TracedFrame.line` renders e.g. ``recv RST_STREAM stream=3 error=REFUSED_STREAM (0x7)``;
  :meth:`TracedFrame.to_json` gives a dict with stable keys for event logs.

Robustness rules, because a tracer must not take down (or be taken down by) what it observes:

* A malformed payload becomes ``malformed="..."`` in the details, a protocol violation the
  tracer can see on its own (a frame on the wrong stream, an interrupted header block) becomes
  ``violation="..."``, and an HPACK failure becomes ``headers=<undecodable: reason>``.
* Memory is bounded: the parser buffers at most one incomplete frame (the 24-bit length field
  caps that at 16 MiB + 9 bytes, and nothing is pre-allocated from the length field). DATA and
  unknown frame types are not buffered at all, only counted, since their payload is never shown.
  Header blocks, decoded header lists, header values and debug data have caps of their own.
* A bad client preface is reported as a single ``BAD_PREFACE`` frame, after which the parser
  ignores the stream (see :class:`FrameParser`); :class:`TraceError` is only raised for caller
  mistakes such as an invalid ``direction``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, Literal, TypeAlias

from hpack import Decoder
from hyperframe.flags import Flag
from hyperframe.frame import (
    FRAMES,
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

from h2guard.codes import code_name, setting_name

__all__ = [
    "PREFACE",
    "Direction",
    "FrameParser",
    "TraceError",
    "TracedFrame",
    "format_frame",
    "frame_type_name",
]

Direction: TypeAlias = Literal["send", "recv"]

#: The client connection preface (RFC 9113 §3.4) that precedes the client's first frame.
PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

#: Header names and values longer than this many bytes are cut and end in ``...``, so one huge
#: cookie cannot flood an event log.
MAX_VALUE_CHARS: Final = 60
#: GOAWAY debug data and ALTSVC/PRIORITY_UPDATE text are cut at this many bytes.
MAX_TEXT_CHARS: Final = 200
#: At most this many decoded headers are kept per block; the rest are counted as
#: ``headers_omitted``.
MAX_SHOWN_HEADERS: Final = 100
#: A header block (HEADERS/PUSH_PROMISE plus CONTINUATIONs) larger than this is not decoded.
#: Without a cap a CONTINUATION flood would grow the parser without bound.
MAX_HEADER_BLOCK: Final = 1 << 20
#: The HPACK decoder's limits. The tracer is not the enforcer (the peers' own SETTINGS are on
#: the other direction's stream, which one parser does not see), so these are generous; they
#: exist so a hostile peer cannot make the tracer inflate or store unbounded header data.
MAX_HEADER_LIST: Final = 1 << 20
MAX_HPACK_TABLE: Final = 1 << 20

_HEADER_LEN: Final = 9

_FRAME_NAMES: Final[dict[int, str]] = {
    0x0: "DATA",
    0x1: "HEADERS",
    0x2: "PRIORITY",
    0x3: "RST_STREAM",
    0x4: "SETTINGS",
    0x5: "PUSH_PROMISE",
    0x6: "PING",
    0x7: "GOAWAY",
    0x8: "WINDOW_UPDATE",
    0x9: "CONTINUATION",
    0xA: "ALTSVC",  # RFC 7838
    0xC: "ORIGIN",  # RFC 8336
    0x10: "PRIORITY_UPDATE",  # RFC 9218, sent by current browsers
}
_PRIORITY_UPDATE: Final = 0x10
_HAS_STREAM: Final = frozenset({0x0, 0x1, 0x2, 0x3, 0x5, 0x9})
_NO_STREAM: Final = frozenset({0x4, 0x6, 0x7, 0x10})
#: Types whose payload is parsed, so buffered; DATA and unknown types are only counted.
_BUFFERED: Final = frozenset(FRAMES) - {0x0} | {_PRIORITY_UPDATE}
_HEADER_TYPES: Final = frozenset({"HEADERS", "PUSH_PROMISE", "CONTINUATION"})
#: Types whose line summarises the payload, so the length would only be noise.
_SUMMARISED: Final = frozenset({
    "HEADERS", "PUSH_PROMISE", "CONTINUATION", "PRIORITY", "RST_STREAM", "SETTINGS", "PING",
    "GOAWAY", "WINDOW_UPDATE", "ALTSVC", "PRIORITY_UPDATE",
})
#: Details that are free text from the peer: always quoted, so a line stays unambiguous.
_ALWAYS_QUOTED: Final = frozenset({
    "debug", "malformed", "violation", "received", "guess", "origin", "field", "priority",
})
_BASE_KEYS: Final = frozenset({"t", "dir", "type", "stream", "flags", "length"})

# Printable ASCII stays as is, a backslash doubles, CR/LF/TAB read as \r \n \t and every other
# byte becomes \xNN: unambiguous and identical however the bytes were chunked, unlike a lenient
# UTF-8 decode.
_ESCAPE: Final[tuple[str, ...]] = tuple(
    {0x5C: "\\\\", 0x0D: "\\r", 0x0A: "\\n", 0x09: "\\t"}.get(b)
    or (chr(b) if 0x20 <= b < 0x7F else f"\\x{b:02x}")
    for b in range(256)
)
_HTTP1_METHOD: Final = re.compile(rb"^[A-Z]{1,10}( |$)")


class TraceError(ValueError):
    """A caller mistake (such as an invalid direction). Peer bytes never cause it."""


def frame_type_name(frame_type: int) -> str:
    """The RFC name of a frame type byte, or ``UNKNOWN(0xNN)`` for an unregistered one."""
    return _FRAME_NAMES.get(frame_type, f"UNKNOWN(0x{frame_type:02x})")


@dataclass(frozen=True, slots=True)
class TracedFrame:
    """One frame as seen on the wire, ready to print or log.

    ``details`` holds the type-specific fields (error codes with their names, settings by name,
    decoded headers, ...) as plain data so that tests can assert on them and event logs can
    serialise them without knowing about hyperframe. ``at`` is whatever time the caller passed
    in: this module reads no clock, so traces are deterministic under test.
    """

    direction: Direction
    type: str
    stream_id: int
    flags: tuple[str, ...] = ()
    length: int = 0
    details: dict[str, object] = field(default_factory=dict, hash=False)
    at: float | None = None

    def line(self) -> str:
        """The one-line form, e.g. ``recv DATA stream=1 flags=END_STREAM length=12``.

        Layout: optional ``+0.123s`` timestamp, direction, type, ``stream=``, ``flags=`` (when
        any), ``length=`` (only when the payload is not otherwise summarised: DATA, unknown
        types, malformed frames, header frames whose headers are not shown), then the details.
        Free text from the peer is quoted; header values are quoted when they contain a space
        or a quote or are empty.
        """
        parts: list[str] = []
        if self.at is not None:
            parts.append(f"{self.at:+.3f}s")
        parts += [self.direction, self.type, f"stream={self.stream_id}"]
        if self.flags:
            parts.append("flags=" + ",".join(self.flags))
        if self._shows_length():
            parts.append(f"length={self.length}")
        details = self.details
        for key, value in details.items():
            if key == "error_code" and "error" in details:
                continue
            if key == "error":
                parts.append(_error_part(value, details.get("error_code")))
            elif key == "settings" and isinstance(value, dict):
                parts += [f"{name}={val}" for name, val in value.items()]
            elif key == "headers" and isinstance(value, list | tuple):
                parts += [_header_part(pair) for pair in value]
            elif key == "headers_error":
                parts.append(f"headers=<undecodable: {value}>")
            elif key in _ALWAYS_QUOTED:
                parts.append(f"{key}={_quote(str(value))}")
            else:
                parts.append(f"{key}={_plain(value)}")
        return " ".join(parts)

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict: ``t, dir, type, stream, flags, length``, then the details.

        The six base keys are always present (``t`` is ``None`` without a time); details are
        merged in at top level so a log query can say ``error == "REFUSED_STREAM"``. Tuples
        become lists and bytes become hex. A detail key that would clash with a base key (only
        possible for hand-built frames) is kept as ``detail_<key>``.
        """
        out: dict[str, object] = {
            "t": self.at,
            "dir": self.direction,
            "type": self.type,
            "stream": self.stream_id,
            "flags": list(self.flags),
            "length": self.length,
        }
        for key, value in self.details.items():
            out[f"detail_{key}" if key in _BASE_KEYS else key] = _jsonable(value)
        return out

    def _shows_length(self) -> bool:
        if self.type not in _SUMMARISED or "malformed" in self.details:
            return True
        return self.type in _HEADER_TYPES and not (
            "headers" in self.details or "headers_error" in self.details
        )


def format_frame(
    frame: Frame,
    *,
    direction: Direction,
    now: float | None = None,
    decoder: Decoder | None = None,
) -> TracedFrame:
    """Trace a hyperframe ``Frame`` the caller already has (parsed or built).

    With a ``decoder``, a HEADERS or PUSH_PROMISE frame that carries END_HEADERS has its block
    decoded with it (this updates the decoder's dynamic table, as decoding must). A
    CONTINUATION, or a HEADERS without END_HEADERS, holds only a fragment that cannot be
    decoded alone: use :class:`FrameParser`, which joins the fragments, for such streams.
    Decode failures show as ``headers=<undecodable: ...>``; this function does not raise for
    any frame content.
    """
    _check_direction(direction)
    frame_type = frame.type if frame.type is not None else -1
    if isinstance(frame, ExtensionFrame):
        flags: tuple[str, ...] = (f"0x{frame.flag_byte:02x}",) if frame.flag_byte else ()
    else:
        flags = _flags_from_set(frame.defined_flags, frame.flags)
    details = _describe(frame)
    _stream_violation(frame_type, frame.stream_id, details)
    if (decoder is not None and isinstance(frame, HeadersFrame | PushPromiseFrame)
            and "END_HEADERS" in frame.flags):
        headers, error = _decode_block(decoder, frame.data)
        _put_headers(details, headers, error)
    return TracedFrame(direction, frame_type_name(frame_type), frame.stream_id, flags,
                       _payload_length(frame), details, now)


@dataclass(slots=True)
class _Header:
    """The fixed 9-byte frame header, parsed by hand so odd stream ids cannot make us raise."""

    length: int
    type: int
    flag_byte: int
    stream_id: int
    reserved: bool


@dataclass(slots=True)
class _Counting:
    """A frame whose payload is counted, not buffered (DATA and types we never display)."""

    header: _Header
    remaining: int
    padded: bool  # a PADDED DATA frame: its first payload byte is the pad length
    pad_length: int | None = None


@dataclass(slots=True)
class _Block:
    """An open header block: HEADERS/PUSH_PROMISE without END_HEADERS, awaiting CONTINUATION."""

    stream_id: int
    data: bytearray
    too_big: bool = False


class FrameParser:
    """Incremental frame parser for one direction of one connection.

    Feed it bytes as they were sent or received, in any chunking: :meth:`feed` returns the
    frames completed by that chunk, each stamped with that call's ``now``. Splitting a stream
    byte by byte gives the same frames as feeding it whole (a frame's ``at`` is the ``now`` of
    the call that completed it).

    ``expect_preface=True`` (client-to-server bytes of a fresh connection) strips the 24-byte
    client preface. A stream that does not start with it is reported as **one** ``BAD_PREFACE``
    frame as soon as the first wrong byte arrives, rather than raising: the chaos server and
    the doctor want to log "this client spoke HTTP/1.1 or TLS to an h2c port", not crash. Its
    details hold up to 24 ``received`` bytes (as many as were buffered when the mismatch was
    seen, so this one detail depends on chunking) and, when recognisable, a ``guess``. After
    that the parser is :attr:`stopped` and ignores further bytes: they are not HTTP/2 frames.

    HEADERS/PUSH_PROMISE/CONTINUATION blocks are decoded with the parser's own HPACK decoder
    (``decode_headers=True``). Decoded headers are attached to the frame that completes the
    block: the HEADERS or PUSH_PROMISE itself with END_HEADERS, else the final CONTINUATION.
    Once a block cannot be decoded (or was never seen whole, e.g. a malformed HEADERS), the
    HPACK dynamic table is out of sync for good, so later blocks show
    ``headers=<undecodable: HPACK state lost: ...>`` instead of wrong headers.
    """

    def __init__(
        self,
        *,
        direction: Direction,
        expect_preface: bool = False,
        decode_headers: bool = True,
    ) -> None:
        _check_direction(direction)
        self.direction: Direction = direction
        self._buf = bytearray()
        self._preface_seen = 0 if expect_preface else len(PREFACE)
        self._stopped = False
        self._counting: _Counting | None = None
        self._block: _Block | None = None
        self._decoder: Decoder | None = None
        self._hpack_lost: str | None = None
        if decode_headers:
            self._decoder = Decoder(max_header_list_size=MAX_HEADER_LIST)
            self._decoder.max_allowed_table_size = MAX_HPACK_TABLE

    @property
    def buffered(self) -> int:
        """Bytes held between calls: at most one incomplete frame (header plus payload)."""
        return len(self._buf)

    @property
    def stopped(self) -> bool:
        """True after a ``BAD_PREFACE``: the stream is not HTTP/2 and further bytes are ignored."""
        return self._stopped

    def feed(self, data: bytes, *, now: float | None = None) -> list[TracedFrame]:
        """Add bytes; return the frames they complete, in wire order. Never raises on content."""
        if self._stopped or not data:
            return []
        self._buf += data
        out: list[TracedFrame] = []
        if self._preface_seen < len(PREFACE) and not self._strip_preface(out, now):
            return out
        buf = self._buf
        offset = 0
        while True:
            counting = self._counting
            if counting is not None:
                available = len(buf) - offset
                if counting.padded and counting.pad_length is None and available:
                    counting.pad_length = buf[offset]
                take = min(available, counting.remaining)
                offset += take
                counting.remaining -= take
                if counting.remaining:
                    break
                self._counting = None
                out.append(self._finish_counted(counting, now))
                continue
            if len(buf) - offset < _HEADER_LEN:
                break
            header = _parse_header(buf, offset)
            if header.type not in _BUFFERED:
                padded = header.type == 0x0 and bool(header.flag_byte & 0x08)
                self._counting = _Counting(header, header.length, padded and header.length > 0)
                offset += _HEADER_LEN
                continue
            end = offset + _HEADER_LEN + header.length
            if len(buf) < end:
                break
            payload = bytes(buf[offset + _HEADER_LEN:end])
            offset = end
            out.append(self._finish_buffered(header, payload, now))
        del buf[:offset]
        return out

    def _strip_preface(self, out: list[TracedFrame], now: float | None) -> bool:
        """Match the preface incrementally; False while incomplete or after a mismatch."""
        seen = self._preface_seen
        take = min(len(self._buf), len(PREFACE) - seen)
        chunk = bytes(self._buf[:take])
        if chunk == PREFACE[seen:seen + take]:
            self._preface_seen = seen + take
            del self._buf[:take]
            return self._preface_seen == len(PREFACE)
        received = PREFACE[:seen] + chunk
        details: dict[str, object] = {"received": _show(received, len(PREFACE))}
        guess = _guess_protocol(received)
        if guess:
            details["guess"] = guess
        out.append(TracedFrame(self.direction, "BAD_PREFACE", 0, (), len(received), details, now))
        self._stopped = True
        self._buf.clear()
        return False

    def _finish_counted(self, counting: _Counting, now: float | None) -> TracedFrame:
        header = counting.header
        details: dict[str, object] = {}
        if header.type == 0x0:
            flags = _flags_from_byte(DataFrame.defined_flags, header.flag_byte)
            if "PADDED" in flags:
                pad = counting.pad_length
                if pad is None:
                    details["malformed"] = "PADDED DATA frame has no pad length byte"
                elif pad >= header.length:
                    details["malformed"] = (
                        f"pad length {pad} does not fit a {header.length}-byte payload")
                else:
                    details["padding"] = pad
        else:
            flags = (f"0x{header.flag_byte:02x}",) if header.flag_byte else ()
        self._common(header, details)
        return TracedFrame(self.direction, frame_type_name(header.type), header.stream_id,
                           flags, header.length, details, now)

    def _finish_buffered(self, header: _Header, payload: bytes, now: float | None) -> TracedFrame:
        if header.type == _PRIORITY_UPDATE:
            details = _priority_update(payload)
            self._common(header, details)
            flags = (f"0x{header.flag_byte:02x}",) if header.flag_byte else ()
            return TracedFrame(self.direction, "PRIORITY_UPDATE", header.stream_id, flags,
                               header.length, details, now)
        frame = _instantiate(FRAMES[header.type], header.stream_id)
        frame.parse_flags(header.flag_byte)
        malformed: str | None = None
        try:
            frame.parse_body(memoryview(payload))
        except Exception as exc:  # hyperframe's errors, and whatever a future version raises
            malformed = str(exc) or type(exc).__name__
        details = {"malformed": malformed} if malformed is not None else _describe(frame)
        self._common(header, details)
        self._track_headers(frame, malformed is not None, details)
        return TracedFrame(self.direction, frame_type_name(header.type), header.stream_id,
                           _flags_from_set(frame.defined_flags, frame.flags), header.length,
                           details, now)

    def _common(self, header: _Header, details: dict[str, object]) -> None:
        """Checks every frame gets: stream association, reserved bit, interrupted blocks."""
        if header.reserved:
            details["reserved_bit"] = 1
        _stream_violation(header.type, header.stream_id, details)
        if self._block is not None and header.type != 0x9:
            _add_violation(details, "interrupts the header block open on stream "
                                    f"{self._block.stream_id}")
            self._block = None
            self._lose_hpack("a header block was interrupted")

    def _track_headers(self, frame: Frame, malformed: bool, details: dict[str, object]) -> None:
        """Follow header blocks across CONTINUATIONs and decode them when complete."""
        if isinstance(frame, HeadersFrame | PushPromiseFrame):
            if malformed:
                kind = "HEADERS" if isinstance(frame, HeadersFrame) else "PUSH_PROMISE"
                self._lose_hpack(f"a malformed {kind} frame")
            elif "END_HEADERS" in frame.flags:
                self._decode_into(frame.data, details)
            else:
                self._block = _Block(frame.stream_id, bytearray())
                self._extend_block(frame.data)
        elif isinstance(frame, ContinuationFrame):
            block = self._block
            if block is None or block.stream_id != frame.stream_id:
                where = "no header block is open" if block is None else (
                    f"the header block open is on stream {block.stream_id}")
                _add_violation(details, f"CONTINUATION but {where}")
                self._block = None
                self._lose_hpack("a CONTINUATION outside its header block")
                return
            self._extend_block(frame.data)
            if "END_HEADERS" in frame.flags:
                self._block = None
                if block.too_big:
                    self._lose_hpack(f"a header block larger than {MAX_HEADER_BLOCK} bytes")
                    self._decode_into(b"", details)
                else:
                    self._decode_into(bytes(block.data), details)

    def _extend_block(self, fragment: bytes) -> None:
        block = self._block
        if block is None or self._decoder is None or block.too_big:
            return  # without decoding there is nothing to keep: only the block's state matters
        if len(block.data) + len(fragment) > MAX_HEADER_BLOCK:
            block.too_big = True
            block.data = bytearray()
        else:
            block.data += fragment

    def _decode_into(self, block: bytes, details: dict[str, object]) -> None:
        if self._decoder is None:
            return
        if self._hpack_lost is not None:
            details["headers_error"] = f"HPACK state lost: {self._hpack_lost}"
            return
        if len(block) > MAX_HEADER_BLOCK:
            self._lose_hpack(f"a header block larger than {MAX_HEADER_BLOCK} bytes")
            details["headers_error"] = f"header block larger than {MAX_HEADER_BLOCK} bytes"
            return
        headers, error = _decode_block(self._decoder, block)
        if error is not None:
            self._lose_hpack("an earlier header block failed to decode")
        _put_headers(details, headers, error)

    def _lose_hpack(self, reason: str) -> None:
        if self._decoder is not None and self._hpack_lost is None:
            self._hpack_lost = reason


def _check_direction(direction: object) -> None:
    if direction not in ("send", "recv"):
        raise TraceError(f"direction must be 'send' or 'recv', not {direction!r}")


def _parse_header(buf: bytearray, offset: int) -> _Header:
    raw_stream = int.from_bytes(buf[offset + 5:offset + 9], "big")
    return _Header(
        length=int.from_bytes(buf[offset:offset + 3], "big"),
        type=buf[offset + 3],
        flag_byte=buf[offset + 4],
        stream_id=raw_stream & 0x7FFFFFFF,
        reserved=bool(raw_stream >> 31),
    )


def _instantiate(cls: type[Frame], stream_id: int) -> Frame:
    """Build an empty frame even for a stream id hyperframe's constructor rejects.

    The wrong id is a protocol violation worth tracing, not a reason to lose the payload, so
    build with an id the constructor accepts and put the real one back.
    """
    try:
        return cls(stream_id)
    except Exception:
        frame = cls(1 if stream_id == 0 else 0)
        frame.stream_id = stream_id
        return frame


def _stream_violation(frame_type: int, stream_id: int, details: dict[str, object]) -> None:
    if frame_type in _HAS_STREAM and stream_id == 0:
        _add_violation(details, f"{frame_type_name(frame_type)} frame on stream 0")
    elif frame_type in _NO_STREAM and stream_id != 0:
        _add_violation(details, f"{frame_type_name(frame_type)} frame on stream {stream_id}, "
                                "must be stream 0")


def _add_violation(details: dict[str, object], message: str) -> None:
    previous = details.get("violation")
    details["violation"] = f"{previous}; {message}" if previous else message


def _flags_from_byte(defined: list[Flag], flag_byte: int) -> tuple[str, ...]:
    """Flag names in bit order, so ``END_STREAM,END_HEADERS`` reads the same every time."""
    return tuple(flag.name for flag in sorted(defined, key=lambda f: f.bit)
                 if flag_byte & flag.bit)


def _flags_from_set(defined: list[Flag], present: Iterable[str]) -> tuple[str, ...]:
    """Flag names of a hyperframe ``Flags`` set, in bit order (the set itself is unordered)."""
    names = set(present)
    return tuple(flag.name for flag in sorted(defined, key=lambda f: f.bit) if flag.name in names)


def _describe(frame: Frame) -> dict[str, object]:
    """The type-specific details of a parsed or built hyperframe frame, in display order."""
    details: dict[str, object] = {}
    if isinstance(frame, PushPromiseFrame):
        details["promised_stream_id"] = frame.promised_stream_id & 0x7FFFFFFF
    if isinstance(frame, PriorityFrame) or (
            isinstance(frame, HeadersFrame) and "PRIORITY" in frame.flags):
        details["depends_on"] = frame.depends_on
        details["weight"] = frame.stream_weight + 1  # the wire carries weight - 1 (RFC 9113)
        details["exclusive"] = bool(frame.exclusive)
    if isinstance(frame, DataFrame | HeadersFrame | PushPromiseFrame) and "PADDED" in frame.flags:
        details["padding"] = frame.pad_length
    if isinstance(frame, RstStreamFrame):
        details["error_code"] = frame.error_code
        details["error"] = code_name(frame.error_code)
    elif isinstance(frame, SettingsFrame):
        if "ACK" not in frame.flags or frame.settings:
            details["settings"] = {setting_name(k): v for k, v in frame.settings.items()}
    elif isinstance(frame, PingFrame):
        details["opaque"] = bytes(frame.opaque_data).hex()
    elif isinstance(frame, GoAwayFrame):
        details["last_stream_id"] = frame.last_stream_id & 0x7FFFFFFF
        details["error_code"] = frame.error_code
        details["error"] = code_name(frame.error_code)
        if frame.additional_data:
            details["debug"] = _show(bytes(frame.additional_data), MAX_TEXT_CHARS)
    elif isinstance(frame, WindowUpdateFrame):
        details["increment"] = frame.window_increment
    elif isinstance(frame, AltSvcFrame):
        if frame.origin:
            details["origin"] = _show(frame.origin, MAX_TEXT_CHARS)
        details["field"] = _show(frame.field, MAX_TEXT_CHARS)
    return details


def _priority_update(payload: bytes) -> dict[str, object]:
    """RFC 9218 PRIORITY_UPDATE: a 31-bit prioritized stream id, then a Priority field value."""
    if len(payload) < 4:
        return {"malformed": f"PRIORITY_UPDATE needs at least 4 bytes, got {len(payload)}"}
    return {
        "prioritized_stream_id": int.from_bytes(payload[:4], "big") & 0x7FFFFFFF,
        "priority": _show(payload[4:], MAX_TEXT_CHARS),
    }


def _payload_length(frame: Frame) -> int:
    if frame.body_len:
        return int(frame.body_len)
    if isinstance(frame, ExtensionFrame):
        return len(frame.body)
    try:
        return len(frame.serialize_body())
    except Exception:  # a hand-built frame hyperframe cannot serialise: its length is unknown
        return 0


def _decode_block(decoder: Decoder, block: bytes
                  ) -> tuple[list[tuple[str, str]], str | None]:
    """Decode one whole header block; (headers, None) or ([], reason). Never raises."""
    try:
        decoded = list(decoder.decode(bytes(block), raw=True))
    except Exception as exc:  # hpack's errors plus e.g. an IndexError from a future version
        return [], str(exc) or type(exc).__name__
    return [(_show(bytes(name), MAX_VALUE_CHARS), _show(bytes(value), MAX_VALUE_CHARS))
            for name, value in decoded], None


def _put_headers(details: dict[str, object], headers: list[tuple[str, str]],
                 error: str | None) -> None:
    if error is not None:
        details["headers_error"] = error
        return
    details["headers"] = headers[:MAX_SHOWN_HEADERS]
    if len(headers) > MAX_SHOWN_HEADERS:
        details["headers_omitted"] = len(headers) - MAX_SHOWN_HEADERS


def _guess_protocol(received: bytes) -> str | None:
    """A hint for the doctor's most common preface failures."""
    if received[:1] == b"\x16":
        return "TLS handshake: a TLS client on a cleartext (h2c) port"
    if received.startswith(b"HTTP/"):
        return "HTTP/1.x response: the peer does not speak HTTP/2"
    if received.startswith(b"PRI * HTTP/2"):
        return "damaged HTTP/2 client preface"
    if _HTTP1_METHOD.match(received):
        return "HTTP/1.x request: the client did not use HTTP/2 prior knowledge"
    return None


def _show(raw: bytes, limit: int) -> str:
    """Escape bytes for display, cut at ``limit`` bytes with a trailing ``...``."""
    text = "".join(_ESCAPE[b] for b in raw[:limit])
    return text + "..." if len(raw) > limit else text


def _quote(text: str) -> str:
    return '"' + text.replace('"', '\\"') + '"'


def _plain(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    text = value.hex() if isinstance(value, bytes) else str(value)
    return _quote(text) if not text or " " in text or '"' in text else text


def _header_part(pair: object) -> str:
    if isinstance(pair, list | tuple) and len(pair) == 2:
        name, value = str(pair[0]), str(pair[1])
        shown = _quote(value) if not value or " " in value or '"' in value else value
        return f"{name}={shown}"
    return _plain(pair)


def _error_part(name: object, code: object) -> str:
    text = str(name)
    if isinstance(code, int) and not isinstance(code, bool) and not text.startswith("UNKNOWN"):
        return f"error={text} (0x{code:x})"
    return f"error={text}"


def _jsonable(value: object) -> object:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    return str(value)
