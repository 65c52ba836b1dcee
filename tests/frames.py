"""The one HTTP/2 frame factory for h2guard's tests: use it instead of packing frames by hand.

Unit tests (feeding :class:`h2guard.wire.core.H2Core`), integration tests (raw sockets against
the chaos server) and peer tests all build client frames here, so there is one place that knows
the wire format and one HPACK encoder per simulated connection::

    from frames import FrameFactory          # tests/ is on sys.path (see tests/conftest.py)

    ff = FrameFactory()
    wire = ff.hello() + ff.request(1, path="/echo") + ff.ping(b"12345678")

or take the ``frame_factory`` fixture (a fresh factory, hence a fresh encoder, per test).

Every builder packs the bytes itself (``struct``), not through hyperframe, because conformance
and robustness tests must be able to send what hyperframe refuses to build: a length that lies
(:meth:`FrameFactory.raw`), the reserved bit set (``reserved=True``), a Pad Length that exceeds
the payload (``pad_length=``), a PING of 7 bytes, a SETTINGS ACK with a payload. Valid
arguments give exactly the bytes hyperframe would serialize (``FrameFactory.parse`` reads them
back through hyperframe, to check that or to inspect a frame in a unit test).

The encoder is shared by every HEADERS, CONTINUATION and PUSH_PROMISE the factory builds,
exactly as one connection's encoder is: a header indexed into the dynamic table by one request
is referenced by index in the next. Call :meth:`FrameFactory.refresh_encoder` when a test
opens a second connection with the same factory.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import hpack
from h2.errors import ErrorCodes
from h2.settings import SettingCodes

__all__ = [
    "ACK",
    "CONTINUATION",
    "DATA",
    "END_HEADERS",
    "END_STREAM",
    "GOAWAY",
    "HEADERS",
    "PADDED",
    "PING",
    "PREFACE",
    "PRIORITY",
    "PRIORITY_FLAG",
    "PUSH_PROMISE",
    "RST_STREAM",
    "SETTINGS",
    "WINDOW_UPDATE",
    "ErrorCodes",
    "FrameFactory",
    "HeaderList",
    "Priority",
    "SettingCodes",
]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
"""The client connection preface (RFC 9113 §3.4), without the SETTINGS frame that follows it."""

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)

END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

RESERVED_BIT = 0x80000000
"""The R bit in front of a stream identifier (and of a WINDOW_UPDATE increment)."""

HeaderList = Sequence[tuple[str | bytes, str | bytes]]
"""What :meth:`FrameFactory.encode` takes: name/value pairs, str or bytes, in wire order.
``hpack.NeverIndexedHeaderTuple`` entries work too (they are tuples)."""


@dataclass(frozen=True, slots=True)
class Priority:
    """A priority block (HEADERS with PRIORITY, or a PRIORITY frame's payload).

    ``weight`` is the RFC's 1..256; the wire carries ``weight - 1``. Values outside that range
    are packed modulo 256 rather than refused, so a test can send them."""

    depends_on: int = 0
    weight: int = 16
    exclusive: bool = False

    def pack(self) -> bytes:
        dep = (self.depends_on & 0x7FFFFFFF) | (RESERVED_BIT if self.exclusive else 0)
        return struct.pack(">IB", dep, (self.weight - 1) & 0xFF)


PriorityLike = Priority | tuple[int, int, bool] | tuple[int, int] | None


class FrameFactory:
    """Builds client-side HTTP/2 frames as wire bytes, with one HPACK encoder per instance.

    Builders never validate their arguments: validity is the test's business, and an invalid
    frame is often the point. ``huffman`` is the default for header encoding (off, so a test
    can read a header block in a failure message); each encoding call can override it.
    """

    def __init__(self, *, huffman: bool = False) -> None:
        self.huffman = huffman
        self.encoder = hpack.Encoder()

    # ----------------------------------------------------------------------- HPACK

    def refresh_encoder(self) -> None:
        """Start a new HPACK context: the next header block assumes an empty dynamic table,
        as a new connection's first block must."""
        self.encoder = hpack.Encoder()

    def encode(self, headers: HeaderList, *, huffman: bool | None = None) -> bytes:
        """Encode a header block with the shared encoder (its dynamic table changes)."""
        use_huffman = self.huffman if huffman is None else huffman
        return bytes(self.encoder.encode(list(headers), huffman=use_huffman))

    def _block(self, headers: HeaderList | bytes, huffman: bool | None) -> bytes:
        # bytes are a header block (fragment) as is: the way to send invalid HPACK.
        if isinstance(headers, bytes | bytearray | memoryview):
            return bytes(headers)
        return self.encode(headers, huffman=huffman)

    # ----------------------------------------------------------------------- framing

    @staticmethod
    def raw(length: int, frame_type: int, flags: int, stream_id: int,
            payload: bytes = b"") -> bytes:
        """A frame header with whatever ``length`` says, then ``payload``: the way to lie
        about a frame's length (or to send a header whose payload follows in a later write).
        ``stream_id`` is packed as 32 bits, so ``stream_id | RESERVED_BIT`` sets the R bit."""
        return (struct.pack(">I", length & 0xFFFFFF)[1:]
                + struct.pack(">BBI", frame_type & 0xFF, flags & 0xFF, stream_id & 0xFFFFFFFF)
                + payload)

    @classmethod
    def frame(cls, frame_type: int, flags: int, stream_id: int, payload: bytes = b"", *,
              reserved: bool = False) -> bytes:
        """Any frame with its true length; ``reserved`` sets the R bit, which receivers
        MUST ignore (RFC 9113 §4.1)."""
        sid = stream_id | (RESERVED_BIT if reserved else 0)
        return cls.raw(len(payload), frame_type, flags, sid, payload)

    @classmethod
    def unknown(cls, frame_type: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
        """An extension frame (type 0x0a and up, say): receivers MUST ignore unknown types
        (RFC 9113 §4.1, §5.5). Same bytes as :meth:`frame`; the name says what the test
        means."""
        return cls.frame(frame_type, flags, stream_id, payload)

    @staticmethod
    def _padded(body: bytes, padding: int | None, pad_length: int | None) -> tuple[bytes, int]:
        """Payload and PADDED flag. ``padding`` bytes of zeros are appended; ``pad_length``
        overrides the Pad Length field only (the padding bytes stay ``padding``), to send a
        Pad Length the payload cannot hold. Either one set means PADDED."""
        if padding is None and pad_length is None:
            return body, 0
        pad = padding or 0
        pad_field = pad if pad_length is None else pad_length
        return bytes([pad_field & 0xFF]) + body + b"\0" * pad, PADDED

    # ----------------------------------------------------------------------- connection

    @staticmethod
    def preface() -> bytes:
        """The 24-byte client magic (RFC 9113 §3.4); a SETTINGS frame must follow it."""
        return PREFACE

    def hello(self, settings: Mapping[int, int] | None = None) -> bytes:
        """What every well-behaved client sends first: the magic and its SETTINGS."""
        return self.preface() + self.settings(settings)

    @classmethod
    def settings(cls, settings: Mapping[int, int] | Iterable[tuple[int, int]] | None = None,
                 ack: bool = False, *, stream_id: int = 0) -> bytes:
        """SETTINGS. A mapping or (identifier, value) pairs (pairs allow duplicates, which
        are legal: the last one wins). ``ack=True`` with settings builds the invalid "ACK
        with a payload"; a length that is not a multiple of 6 needs :meth:`frame`."""
        pairs = settings.items() if isinstance(settings, Mapping) else (settings or ())
        payload = b"".join(struct.pack(">HI", ident & 0xFFFF, value & 0xFFFFFFFF)
                           for ident, value in pairs)
        return cls.frame(SETTINGS, ACK if ack else 0, stream_id, payload)

    @classmethod
    def settings_ack(cls) -> bytes:
        return cls.settings(None, ack=True)

    @classmethod
    def ping(cls, payload: bytes = b"\0" * 8, ack: bool = False, *, stream_id: int = 0) -> bytes:
        """PING. The payload is sent as given: anything but 8 bytes is a FRAME_SIZE_ERROR
        (RFC 9113 §6.7), which is what a test passing 7 bytes wants."""
        return cls.frame(PING, ACK if ack else 0, stream_id, payload)

    @classmethod
    def goaway(cls, last_stream_id: int, code: int = 0, debug: bytes = b"", *,
               stream_id: int = 0) -> bytes:
        return cls.frame(GOAWAY, 0, stream_id,
                         struct.pack(">II", last_stream_id & 0xFFFFFFFF, code & 0xFFFFFFFF)
                         + debug)

    @classmethod
    def window_update(cls, stream_id: int, increment: int) -> bytes:
        """WINDOW_UPDATE; ``increment`` is packed as 32 bits (0 and the R bit are sendable)."""
        return cls.frame(WINDOW_UPDATE, 0, stream_id, struct.pack(">I", increment & 0xFFFFFFFF))

    # ----------------------------------------------------------------------- streams

    def headers(self, stream_id: int, headers: HeaderList | bytes, *,
                end_stream: bool = False, end_headers: bool = True,
                padding: int | None = None, pad_length: int | None = None,
                priority: PriorityLike = None, huffman: bool | None = None,
                flags: int = 0) -> bytes:
        """HEADERS. ``headers`` is a header list (encoded now) or a ready block fragment
        (``bytes``: invalid HPACK, or one piece of a block split by hand). ``priority`` is a
        :class:`Priority` or ``(depends_on, weight[, exclusive])``. ``flags`` are OR-ed in
        (unknown flags MUST be ignored, RFC 9113 §4.1)."""
        body = self._block(headers, huffman)
        fl = flags
        prio = _priority(priority)
        if prio is not None:
            body = prio.pack() + body
            fl |= PRIORITY_FLAG
        payload, padded = self._padded(body, padding, pad_length)
        fl |= padded
        if end_stream:
            fl |= END_STREAM
        if end_headers:
            fl |= END_HEADERS
        return self.frame(HEADERS, fl, stream_id, payload)

    def continuation(self, stream_id: int, fragment: HeaderList | bytes, *,
                     end_headers: bool = True, flags: int = 0) -> bytes:
        """CONTINUATION carrying a block fragment (``bytes``) or a header list encoded now."""
        fl = flags | (END_HEADERS if end_headers else 0)
        return self.frame(CONTINUATION, fl, stream_id, self._block(fragment, None))

    def headers_split(self, stream_id: int, headers: HeaderList | bytes, *, chunk: int = 16,
                      end_stream: bool = False, huffman: bool | None = None) -> bytes:
        """One header block as HEADERS plus CONTINUATIONs of ``chunk`` bytes each, END_HEADERS
        on the last frame only: a valid header block in several frames (RFC 9113 §4.3)."""
        block = self._block(headers, huffman)
        pieces = [block[i : i + chunk] for i in range(0, len(block), chunk)] or [b""]
        out = [self.headers(stream_id, pieces[0], end_stream=end_stream,
                            end_headers=len(pieces) == 1)]
        for n, piece in enumerate(pieces[1:], start=2):
            out.append(self.continuation(stream_id, piece, end_headers=n == len(pieces)))
        return b"".join(out)

    @classmethod
    def data(cls, stream_id: int, data: bytes = b"", *, end_stream: bool = False,
             padding: int | None = None, pad_length: int | None = None,
             flags: int = 0) -> bytes:
        """DATA. ``padding`` adds that many zero bytes (they count against flow control);
        ``pad_length`` alone lies in the Pad Length field."""
        payload, padded = cls._padded(data, padding, pad_length)
        fl = flags | padded | (END_STREAM if end_stream else 0)
        return cls.frame(DATA, fl, stream_id, payload)

    @classmethod
    def rst_stream(cls, stream_id: int, code: int = 0) -> bytes:
        return cls.frame(RST_STREAM, 0, stream_id, struct.pack(">I", code & 0xFFFFFFFF))

    @classmethod
    def priority(cls, stream_id: int, depends_on: int = 0, weight: int = 16,
                 exclusive: bool = False) -> bytes:
        """PRIORITY (deprecated by RFC 9113 §5.3.2 but still parsed: a stream depending on
        itself is a stream error PROTOCOL_ERROR)."""
        return cls.frame(PRIORITY, 0, stream_id,
                         Priority(depends_on, weight, exclusive).pack())

    def push_promise(self, stream_id: int, promised_stream_id: int,
                     headers: HeaderList | bytes, *, end_headers: bool = True,
                     padding: int | None = None, pad_length: int | None = None,
                     huffman: bool | None = None) -> bytes:
        """PUSH_PROMISE, which a client MUST NOT send (RFC 9113 §8.4): a server receiving one
        treats it as a connection error PROTOCOL_ERROR. Also for client-side unit tests."""
        body = struct.pack(">I", promised_stream_id & 0xFFFFFFFF) + self._block(headers, huffman)
        payload, padded = self._padded(body, padding, pad_length)
        fl = padded | (END_HEADERS if end_headers else 0)
        return self.frame(PUSH_PROMISE, fl, stream_id, payload)

    # ----------------------------------------------------------------------- requests

    @staticmethod
    def request_headers(method: str = "GET", path: str = "/", authority: str = "localhost",
                        scheme: str = "http",
                        extra: Iterable[tuple[str | bytes, str | bytes]] = ()
                        ) -> list[tuple[str | bytes, str | bytes]]:
        """A request's header list: the four pseudo-headers in the usual order, then
        ``extra`` as given (names are not lowercased: an uppercase name is a test's choice)."""
        return [(":method", method), (":scheme", scheme), (":authority", authority),
                (":path", path), *extra]

    def request(self, stream_id: int, method: str = "GET", path: str = "/",
                authority: str = "localhost", scheme: str = "http",
                extra: Iterable[tuple[str | bytes, str | bytes]] = (),
                end_stream: bool = True) -> bytes:
        """The HEADERS frame of a request (END_STREAM by default: a GET with no body)."""
        return self.headers(stream_id, self.request_headers(method, path, authority, scheme,
                                                            extra),
                            end_stream=end_stream)

    # ----------------------------------------------------------------------- reading back

    @staticmethod
    def parse(data: bytes) -> list[Any]:
        """Valid frames in ``data`` as hyperframe ``Frame`` objects (unit tests inspect what
        a core wrote this way; it raises on what hyperframe considers invalid)."""
        from hyperframe.frame import Frame  # only the readers need hyperframe

        out = []
        view = memoryview(data)
        while len(view) >= 9:
            frame, length = Frame.parse_frame_header(view[:9])
            frame.parse_body(view[9 : 9 + length])
            out.append(frame)
            view = view[9 + length :]
        if len(view):
            raise ValueError(f"{len(view)} bytes left over after the last whole frame")
        return out


def _priority(priority: PriorityLike) -> Priority | None:
    if priority is None or isinstance(priority, Priority):
        return priority
    return Priority(*priority)
