"""The flight recorder: the last frames of a connection, kept cheaply, printed on failure.

The first step of every stream-reset post-mortem is "turn on HTTP/2 frame logging and wait for
it to happen again". The recorder makes that unnecessary: each connection keeps its last
``size`` frames in both directions as small raw records (time, direction, type, flags, stream,
length and, for control frames only, the payload: error codes, GOAWAY ids, SETTINGS, PINGs),
and a failure copies them out as lines in the doctor's trace format
(:meth:`h2guard.wire.trace.TracedFrame.line`), e.g.::

    +0.412s recv RST_STREAM stream=7 error=INTERNAL_ERROR (0x2)

Header blocks and DATA payloads are never kept (only their length), so nothing secret --
cookies, tokens, bodies -- ever reaches a log through a trace. The cost while nothing fails is
one walk over the frame headers of each chunk read or written; formatting happens only when
someone asks for :meth:`lines` (and is cached until the next frame), or per frame when a DEBUG
``log`` is given (``h2guard.frames``; ``H2GUARD_FRAME_LOG=1`` switches it on from outside).
"""

from __future__ import annotations

import logging
import struct
from collections import deque

from h2guard.wire.trace import Direction, FrameParser, TracedFrame, frame_type_name

__all__ = ["FlightRecorder"]


_PREFACE_LEN = 24
_DATA, _HEADERS, _PUSH_PROMISE, _CONTINUATION = 0x0, 0x1, 0x5, 0x9
_OPAQUE = frozenset({_DATA, _HEADERS, _PUSH_PROMISE, _CONTINUATION})
_MAX_CONTROL = 64
"""Control-frame payload bytes kept (a GOAWAY's debug text beyond that is cut)."""
_FLAG_NAMES = {
    _DATA: ((0x1, "END_STREAM"), (0x8, "PADDED")),
    _HEADERS: ((0x1, "END_STREAM"), (0x4, "END_HEADERS"), (0x8, "PADDED"), (0x20, "PRIORITY")),
    _PUSH_PROMISE: ((0x4, "END_HEADERS"), (0x8, "PADDED")),
    _CONTINUATION: ((0x4, "END_HEADERS"),),
}

_Record = tuple[float, str, int, int, int, int, bytes]  # at, dir, type, flags, sid, len, payload


_HEAD = struct.Struct(">BHBBL")  # length (24 bits as 8 + 16), type, flags, stream


class _Walker:
    """Finds frame boundaries in one direction's byte stream, across any chunking. The common
    case (whole frames in one chunk) costs one ``unpack_from`` and one tuple per frame."""

    __slots__ = ("frame", "head", "payload", "preface", "want")

    def __init__(self, *, preface: bool) -> None:
        self.preface = _PREFACE_LEN if preface else 0
        self.head = b""      # a partial 9-byte header
        self.want = 0        # payload bytes of the current (split) frame still to come
        self.payload = b""   # its control payload collected so far
        self.frame = (0, 0, 0, 0)  # its type, flags, stream, length

    def walk(self, data: bytes, now: float, direction: str, out: deque[_Record]) -> int:
        """Record the frames ``data`` completes; return how many."""
        pos = 0
        end = len(data)
        n = 0
        if self.preface:
            pos = min(self.preface, end)
            self.preface -= pos
        while pos < end:
            if self.want:  # the rest of a frame split across chunks
                take = min(self.want, end - pos)
                ftype, flags, sid, length = self.frame
                if ftype not in _OPAQUE and len(self.payload) < _MAX_CONTROL:
                    self.payload += data[pos:pos + min(take, _MAX_CONTROL - len(self.payload))]
                self.want -= take
                pos += take
                if not self.want:
                    out.append((now, direction, ftype, flags, sid, length, self.payload))
                    n += 1
                    self.payload = b""
                continue
            if self.head or end - pos < 9:  # a header split across chunks
                need = 9 - len(self.head)
                head = self.head + data[pos:pos + need]
                pos += min(need, end - pos)
                if len(head) < 9:
                    self.head = head
                    return n
                self.head = b""
                hi, lo, ftype, flags, sid = _HEAD.unpack(head)
            else:
                hi, lo, ftype, flags, sid = _HEAD.unpack_from(data, pos)
                pos += 9
            length = (hi << 16) | lo
            sid &= 0x7FFFFFFF
            if pos + length <= end:  # the whole payload is here
                payload = b"" if ftype in _OPAQUE or not length else \
                    data[pos:pos + min(length, _MAX_CONTROL)]
                out.append((now, direction, ftype, flags, sid, length, payload))
                n += 1
                pos += length
            else:
                self.frame = (ftype, flags, sid, length)
                self.want = length
        return n


class FlightRecorder:
    """The last ``size`` frames sent and received on one connection (``size`` >= 1)."""

    __slots__ = ("_cache", "_frames", "_log", "_recv", "_send", "_seq", "_start", "label",
                 "size")

    def __init__(self, size: int = 32, *, client: bool = True,
                 log: logging.Logger | None = None, label: str = "") -> None:
        if size < 1:
            raise ValueError("a flight recorder holds at least one frame (0 turns it off: "
                             "pass no recorder)")
        self.size = size
        self._frames: deque[_Record] = deque(maxlen=size)
        self._send = _Walker(preface=client)
        self._recv = _Walker(preface=not client)
        self._start: float | None = None
        self._cache: tuple[int, tuple[str, ...]] | None = None
        self._seq = 0
        self._log = log if log is not None and log.isEnabledFor(logging.DEBUG) else None
        self.label = label

    def sent(self, data: bytes, now: float) -> None:
        """Bytes written to the peer, in order."""
        self._feed(self._send, "send", data, now)

    def received(self, data: bytes, now: float) -> None:
        """Bytes read from the peer, in order."""
        self._feed(self._recv, "recv", data, now)

    def _feed(self, walker: _Walker, direction: str, data: bytes, now: float) -> None:
        if self._start is None:
            self._start = now
        n = walker.walk(data, now, direction, self._frames)
        if n:
            self._seq += n
            if self._log is not None:
                frames = self._frames
                for rec in list(frames)[max(0, len(frames) - n):]:
                    self._log.debug("%s %s", self.label, self._line(rec))

    def __len__(self) -> int:
        return len(self._frames)

    def lines(self) -> tuple[str, ...]:
        """The recorded frames, oldest first, one trace line each (cached until the next)."""
        key = self._seq
        cached = self._cache
        if cached is not None and cached[0] == key:
            return cached[1]
        lines = tuple(self._line(rec) for rec in self._frames)
        self._cache = (key, lines)
        return lines

    def _line(self, rec: _Record) -> str:
        at = rec[0]
        rel = at - (self._start if self._start is not None else at)
        return _trace(rec, rel).line()


def _trace(rec: _Record, rel: float) -> TracedFrame:
    _, direction, ftype, flags, sid, length, payload = rec
    dir_: Direction = "send" if direction == "send" else "recv"
    if ftype in _OPAQUE:
        names = tuple(name for bit, name in _FLAG_NAMES[ftype] if flags & bit)
        return TracedFrame(dir_, frame_type_name(ftype), sid, names, length, {}, rel)
    body = payload
    if len(body) < length:  # a long GOAWAY debug text was cut: say so in a frame that parses
        length = len(body)
    head = length.to_bytes(3, "big") + bytes((ftype, flags)) + sid.to_bytes(4, "big")
    parser = FrameParser(direction=dir_, decode_headers=False)
    frames = parser.feed(head + body, now=rel)
    if frames:
        return frames[0]
    return TracedFrame(dir_, frame_type_name(ftype), sid, (), length, {}, rel)
