"""The sans-IO HTTP/2 connection core shared by the client, the chaos server and the doctor.

Bytes and ``now`` go in, :mod:`h2guard.wire.events` and bytes come out; there are no sockets and
no clocks here, so every behaviour is tested by feeding frames.

It wraps ``h2.connection.H2Connection`` and fixes what h2 does not do:

* **GOAWAY drains instead of killing.** h2 moves the whole connection to CLOSED when a GOAWAY is
  sent *or* received, so streams at or below last_stream_id cannot finish ("Invalid input
  ConnectionInputs.RECV_HEADERS in state ConnectionState.CLOSED"). Each core gives its own h2
  connection a transition table in which the two GOAWAY inputs leave the open states unchanged,
  and then does itself what that leaves undone: it never opens a stream after GOAWAY, refuses the
  peer's streams above the id it announced, and reports which of its own streams the peer's
  GOAWAY left unprocessed. (A per-instance table, not a fork of h2 and not a global patch.)
* **No event is lost to an exception.** h2 raises in the middle of ``receive_data`` and drops
  the events it had already parsed from that chunk. The core feeds h2 one frame at a time, so a
  connection error becomes a :class:`ConnectionFailed` event after everything that preceded it.
* **REFUSED_STREAM instead of a connection error.** h2 treats a stream over our advertised
  SETTINGS_MAX_CONCURRENT_STREAMS as a connection error; servers in the field (nginx, nghttpx)
  answer RST_STREAM REFUSED_STREAM, which the client may retry safely. The core enforces the
  limit itself, and can lower it mid-connection.
* **Malformed messages are stream errors.** h2 raises a connection-wide ProtocolError for an
  uppercase or connection-specific header field, a bad pseudo-header or a wrong
  content-length; RFC 9113 §8.1.1 makes each a stream error. The header block has been decoded
  by then (the HPACK tables stay in step), so the core resets that one stream with
  PROTOCOL_ERROR and the connection goes on.
* **Oversize headers** get GOAWAY PROTOCOL_ERROR, and the core never raises to its owner for
  anything the peer sends.
* **Frames are counted** for self-protection: control frames (PING, SETTINGS, WINDOW_UPDATE,
  PRIORITY, unknown types, empty DATA without END_STREAM) and RST_STREAM frames, so the owner
  can cut off a flood (CVE-2019-9512/9515/9518, Rapid Reset CVE-2023-44487).
* **The common frames take a short path.** HEADERS that open a request or carry a response,
  DATA and WINDOW_UPDATE on open streams, a client's request HEADERS and a server's whole
  small response skip hyperframe's frame objects and h2's general dispatch: the core reads
  and writes those frames itself and makes the state changes h2's state machines would make,
  with h2's own checks (HPACK errors, content-length, header validation, windows) in h2's
  order. Everything else, including every error case that is not one of those checks, goes
  through h2 as before. :func:`_fast_paths_match_h2` checks at import that h2's tables still
  say what the short paths do (else h2 does all the work), and
  ``tests/unit/test_core_fast_paths.py`` runs random conversations both ways and compares
  bytes, events and h2's state after every step. About 4x less time per request on a busy
  server connection, 2-4x on a client's.
"""

from __future__ import annotations

import collections
import inspect
import struct
from collections.abc import Iterable, Mapping
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h2.stream
import h2.utilities
import h2.windows
import hpack.exceptions
import hyperframe.frame
from h2.connection import ConnectionInputs, ConnectionState
from h2.stream import StreamInputs, StreamState

from h2guard.wire.events import (
    ConnectionFailed,
    DataReceived,
    Event,
    GoAwayReceived,
    GoAwayViolated,
    Headers,
    PingAcked,
    PingReceived,
    PingTimedOut,
    RequestReceived,
    ResponseReceived,
    ResponseTimedOut,
    SettingsAcked,
    SettingsReceived,
    StreamEnded,
    StreamRefused,
    StreamRejected,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2guard.wire.hpack_codec import FastDecoder, FastEncoder
from h2guard.wire.liveness import Liveness
from h2guard.wire.recorder import FlightRecorder

__all__ = ["MAX_STREAM_ID", "PREFACE", "H2Core", "frame_header", "goaway_frame"]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_STREAM_ID = 2**31 - 1
_MCS = h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS
_IWS = h2.settings.SettingCodes.INITIAL_WINDOW_SIZE
_GOAWAY_TYPE = 0x7
_PingFrame = hyperframe.frame.PingFrame
_H2RequestReceived = h2.events.RequestReceived
_GoAwayFrame = hyperframe.frame.GoAwayFrame
_DataFrame = hyperframe.frame.DataFrame
_SettingsFrame = hyperframe.frame.SettingsFrame
_WindowUpdateFrame = hyperframe.frame.WindowUpdateFrame
_HeadersFrame = hyperframe.frame.HeadersFrame
_PriorityFrame = hyperframe.frame.PriorityFrame
_RstStreamFrame = hyperframe.frame.RstStreamFrame
_CONTROL_FRAMES = frozenset({
    hyperframe.frame.PingFrame, hyperframe.frame.SettingsFrame,
    hyperframe.frame.WindowUpdateFrame, hyperframe.frame.PriorityFrame,
    hyperframe.frame.ExtensionFrame,
})
_REFUSED = 0x7
_RESETS_REMEMBERED = 1024
_PROTOCOL_ERROR = 0x1
_FRAME_SIZE_ERROR = 0x6
_COMPRESSION_ERROR = 0x9


def _draining_table() -> dict[Any, Any]:
    table: dict[Any, Any] = dict(h2.connection.H2ConnectionStateMachine._transitions)
    # IDLE too: a connection that never carried a stream (a client closing an unused
    # connection, an idle timeout) must still answer PING and refuse late streams.
    for state in (ConnectionState.IDLE, ConnectionState.CLIENT_OPEN,
                  ConnectionState.SERVER_OPEN):
        for goaway in (ConnectionInputs.SEND_GOAWAY, ConnectionInputs.RECV_GOAWAY):
            if (state, goaway) not in table:  # pragma: no cover - h2 changed shape
                raise RuntimeError("unsupported h2 version: GOAWAY transitions not found")
            table[(state, goaway)] = (None, state)
    return table


_DRAINING_TRANSITIONS = _draining_table()

_IDLE, _OPEN = StreamState.IDLE, StreamState.OPEN
_HALF_LOCAL, _HALF_REMOTE = StreamState.HALF_CLOSED_LOCAL, StreamState.HALF_CLOSED_REMOTE
_CLOSED = StreamState.CLOSED
_RECV_END = h2.stream.StreamClosedBy.RECV_END_STREAM
_SEND_END = h2.stream.StreamClosedBy.SEND_END_STREAM
_OPEN_CONNECTION = (ConnectionState.CLIENT_OPEN, ConnectionState.SERVER_OPEN)
_REQUEST_FLAGS = h2.utilities.HeaderValidationFlags(
    is_client=False, is_trailer=False, is_response_header=False, is_push_promise=False)
_RESPONSE_FLAGS = h2.utilities.HeaderValidationFlags(
    is_client=True, is_trailer=False, is_response_header=True, is_push_promise=False)
_FRAME_HEAD = struct.Struct(">BHBBL")  # length (24 bits as 8 + 16), type, flags, stream
_MAX_WINDOW = 2**31 - 1
_WINDOW_UPDATE_0 = _FRAME_HEAD.pack(0, 4, 0x8, 0, 0)  # the header of a connection's WINDOW_UPDATE
_decode_headers = h2.connection._decode_headers


def _fast_paths_match_h2() -> bool:
    """Whether h2 still works the way the core's fast paths assume.

    For the frames of nearly every request (HEADERS that open a request or carry a response,
    DATA, WINDOW_UPDATE) and for a server's whole small response, the core makes the state
    changes of h2's state machines itself instead of walking h2's general path: the same
    transitions, the same window arithmetic, the same checks (h2's own functions for content
    length, header validation and HPACK errors), in the same order. This checks that h2's
    tables hold exactly those transitions and that the attributes exist, and (with
    :func:`_streams_match_h2`) that a stream built without h2's ``__init__`` is the one h2
    builds; if not (another h2 version), h2 does all the work, as it did before the fast
    paths."""
    m = h2.stream.H2StreamStateMachine
    stream_table = h2.stream._transitions
    expected: dict[tuple[Any, Any], tuple[Any, Any]] = {
        (_IDLE, StreamInputs.RECV_HEADERS): (m.request_received, _OPEN),
        (_OPEN, StreamInputs.RECV_HEADERS): (m.response_received, _OPEN),
        (_HALF_LOCAL, StreamInputs.RECV_HEADERS): (m.response_received, _HALF_LOCAL),
        (_OPEN, StreamInputs.RECV_END_STREAM): (m.stream_half_closed, _HALF_REMOTE),
        (_HALF_LOCAL, StreamInputs.RECV_END_STREAM): (m.stream_ended, _CLOSED),
        (_OPEN, StreamInputs.RECV_DATA): (m.data_received, _OPEN),
        (_HALF_LOCAL, StreamInputs.RECV_DATA): (m.data_received, _HALF_LOCAL),
        (_HALF_REMOTE, StreamInputs.SEND_HEADERS): (m.response_sent, _HALF_REMOTE),
        (_HALF_REMOTE, StreamInputs.SEND_DATA): (None, _HALF_REMOTE),
        (_HALF_REMOTE, StreamInputs.SEND_END_STREAM): (m.send_end_stream, _CLOSED),
        (_IDLE, StreamInputs.SEND_HEADERS): (m.request_sent, _OPEN),
        (_OPEN, StreamInputs.SEND_END_STREAM): (None, _HALF_LOCAL),
    }
    for state in (_OPEN, _HALF_LOCAL, _HALF_REMOTE):
        expected[(state, StreamInputs.RECV_WINDOW_UPDATE)] = (m.window_updated, state)
    if any(stream_table.get(key) != value for key, value in expected.items()):
        return False
    for conn_state in _OPEN_CONNECTION:
        for conn_input in (ConnectionInputs.RECV_HEADERS, ConnectionInputs.RECV_DATA,
                           ConnectionInputs.RECV_WINDOW_UPDATE, ConnectionInputs.SEND_HEADERS,
                           ConnectionInputs.SEND_DATA):
            if _DRAINING_TRANSITIONS.get((conn_state, conn_input)) != (None, conn_state):
                return False
    conn = h2.connection.H2Connection()
    stream = h2.stream.H2Stream(1, conn.config, 65535, 65535)
    machine = stream.state_machine
    buffer = conn.incoming_buffer
    return (all(hasattr(machine, name) for name in (
                "state", "client", "headers_sent", "headers_received", "stream_closed_by"))
            and all(hasattr(stream, name) for name in (
                "outbound_flow_control_window", "_inbound_window_manager",
                "_expected_content_length", "_initialize_content_length",
                "_track_content_length", "_process_received_headers", "request_method"))
            and hasattr(stream._inbound_window_manager, "window_consumed")
            and hasattr(conn._inbound_flow_control_window_manager, "window_consumed")
            and all(hasattr(conn, name) for name in (
                "outbound_flow_control_window", "highest_inbound_stream_id",
                "highest_outbound_stream_id", "max_outbound_frame_size", "streams", "decoder",
                "encoder", "local_settings", "remote_settings"))
            and list(inspect.signature(h2.stream.H2Stream).parameters) == [
                "stream_id", "config", "inbound_window_size", "outbound_window_size"]
            and type(conn._data_to_send) is bytearray
            and type(buffer._data) is bytearray and type(buffer._headers_buffer) is list
            and hasattr(buffer, "max_frame_size") and type(buffer._preamble_len) is int
            and _streams_match_h2())


class _UnenforcedLimit(h2.settings.Settings):
    """Local settings whose MAX_CONCURRENT_STREAMS is *advertised* but not enforced by h2.

    h2 answers one stream too many with a connection error; the core answers it with
    RST_STREAM REFUSED_STREAM instead, so h2 must not see the limit when it checks."""

    @property  # type: ignore[misc]
    def max_concurrent_streams(self) -> int:
        return 2**32 + 1


_VALIDATED_MAX = 512
_VALIDATED_MAX_BLOCK = 2048


class _Stream(h2.stream.H2Stream):
    """h2's stream, remembering header blocks it already validated.

    h2 validates and normalises every received header block through a chain of ~10
    generators (about 10% of a small response's cost). The outcome is a pure function of the
    fields and the validation flags, and servers send the same block again and again (nginx:
    only ``date`` changes, once a second), so a block seen before is not walked again. Only
    blocks of plain tuples are remembered (a never-indexed field keeps its own type), and only
    valid ones (an invalid block raises every time)."""

    _validated: dict[tuple[object, ...], list[Any]] = {}

    def receive_headers(self, headers: Any, end_stream: bool,
                        header_encoding: Any) -> Any:
        # h2 raises a plain ProtocolError for a malformed message (validation, content-length,
        # trailers without END_STREAM) after its state machines moved on and the block was
        # decoded; a state error is a StreamClosedError or an "Invalid input" ProtocolError.
        try:
            out = super().receive_headers(headers, end_stream, header_encoding)
        except h2.exceptions.ProtocolError as exc:
            raise _malformed(self.stream_id, exc) from exc
        if end_stream and self._expected_content_length:  # h2 checks only DATA against it
            raise _ended_early(self.stream_id, self._expected_content_length)
        return out

    def _process_received_headers(self, headers: Any, header_validation_flags: Any,
                                  header_encoding: Any) -> list[Any]:
        if header_encoding is not None or not _memoisable(headers):
            return super()._process_received_headers(headers, header_validation_flags,
                                                     header_encoding)
        config = self.config
        key = (header_validation_flags, config.validate_inbound_headers,
               config.normalize_inbound_headers, *headers)
        memo = _Stream._validated
        done = memo.get(key)
        if done is None:
            done = super()._process_received_headers(headers, header_validation_flags,
                                                     header_encoding)
            if len(memo) >= _VALIDATED_MAX:
                memo.clear()
            memo[key] = done
        return list(done)


def _memoisable(headers: Any) -> bool:
    """Whether a received header block may be looked up in the validation memos: a list of
    plain tuples (a never-indexed field keeps its own type, but compares equal to a plain
    tuple), not too big (bounded memory: big blocks are rare)."""
    if not isinstance(headers, list):
        return False
    size = 0
    for field in headers:
        if type(field) is not tuple:
            return False
        size += len(field[0]) + len(field[1])
    return size <= _VALIDATED_MAX_BLOCK


_CHECKED: dict[tuple[object, ...], tuple[list[Any], int | None]] = {}


def _checked_headers(stream: h2.stream.H2Stream, headers: Any,
                     header_validation_flags: Any) -> list[Any]:
    """``_initialize_content_length`` then ``_process_received_headers``, as h2's
    ``receive_headers`` calls them (for the fast paths' request and response HEADERS). A
    block that passed both before takes both results from a memo: each is a pure function of
    the fields, the flags and the config, and the content length also of whether the request
    was HEAD (then h2 sets 0 without parsing it). Raises what h2 raises."""
    plain = isinstance(headers, list)
    if plain:
        for field in headers:
            if type(field) is not tuple:  # see _memoisable; its size bound only on a miss
                plain = False
                break
    if not plain:
        stream._initialize_content_length(headers)
        return stream._process_received_headers(headers, header_validation_flags, None)
    config = stream.config
    if _FAST:  # the options' own attributes (see _fast_paths_match_h2), not the descriptors
        key = (header_validation_flags, config._validate_inbound_headers,  # type: ignore[attr-defined]
               config._normalize_inbound_headers,  # type: ignore[attr-defined]
               stream.request_method == b"HEAD", *headers)
    else:
        key = (header_validation_flags, config.validate_inbound_headers,
               config.normalize_inbound_headers, stream.request_method == b"HEAD", *headers)
    done = _CHECKED.get(key)
    if done is None:
        stream._initialize_content_length(headers)  # raises for a bad one: not remembered
        validated = h2.stream.H2Stream._process_received_headers(
            stream, headers, header_validation_flags, None)
        if not _memoisable(headers):
            return validated
        done = (validated, stream._expected_content_length)
        if len(_CHECKED) >= _VALIDATED_MAX:
            _CHECKED.clear()
        _CHECKED[key] = done
    else:
        stream._expected_content_length = done[1]
    return list(done[0])


_CONFIG_READ = ("client_side", "validate_inbound_headers", "normalize_inbound_headers")
_new = object.__new__
_StateMachine = h2.stream.H2StreamStateMachine
_WindowManager = h2.windows.WindowManager
_LARGEST_WINDOW = h2.windows.LARGEST_FLOW_CONTROL_WINDOW


def _new_stream(stream_id: int, config: Any, inbound_window: int, outbound_window: int,
                max_frame_size: int | None) -> _Stream:
    """What ``_Stream(stream_id, config, inbound_window, outbound_window)`` and then setting
    its ``max_outbound_frame_size`` make, without the three ``__init__`` calls (h2's stream,
    its state machine, its window manager): a good part of opening a stream, on every
    request. The same attributes with the same values, set in the same order;
    :func:`_fast_paths_match_h2` checks that against h2's ``__init__`` at import."""
    machine = _new(_StateMachine)
    machine.state = _IDLE
    machine.stream_id = stream_id
    machine.client = None
    machine.headers_sent = None
    machine.trailers_sent = None
    machine.headers_received = None
    machine.trailers_received = None
    machine.stream_closed_by = None
    assert inbound_window <= _LARGEST_WINDOW  # as WindowManager.__init__ asserts
    window = _new(_WindowManager)
    window.max_window_size = inbound_window
    window.current_window_size = inbound_window
    window._bytes_processed = 0
    stream = _new(_Stream)
    stream.state_machine = machine
    stream.stream_id = stream_id
    stream.max_outbound_frame_size = max_frame_size
    stream.request_method = None
    stream.outbound_flow_control_window = outbound_window
    stream._inbound_window_manager = window
    stream._expected_content_length = None
    stream._actual_content_length = 0
    stream._authority = None
    stream.config = config
    return stream


def _layout(stream: h2.stream.H2Stream) -> list[Any]:
    """A stream's attributes, with those of its state machine and window manager: what
    :func:`_new_stream` must reproduce exactly."""
    own = [(k, v) for k, v in vars(stream).items()
           if k not in ("state_machine", "_inbound_window_manager")]
    machine, window = stream.state_machine, stream._inbound_window_manager
    return [type(stream), list(vars(stream)), own, type(machine), list(vars(machine).items()),
            type(window), list(vars(window).items())]


def _streams_match_h2() -> bool:
    """Whether :func:`_new_stream` still builds what h2's ``__init__`` builds, and the
    settings still keep their values where :meth:`_Connection._fresh_stream` reads them."""
    options = h2.config.H2Configuration.__dict__
    if not all(getattr(options.get(name), "attr_name", None) == "_" + name
               for name in _CONFIG_READ):  # what _checked_headers and send_headers read
        return False
    config = h2.config.H2Configuration(client_side=True)
    made = _Stream(7, config=config, inbound_window_size=1000, outbound_window_size=2000)
    made.max_outbound_frame_size = 16384
    if _layout(made) != _layout(_new_stream(7, config, 1000, 2000, 16384)):
        return False
    open_states = (_OPEN, _HALF_LOCAL, _HALF_REMOTE)
    for state in StreamState:  # what _Connection._open_streams reads instead of h2's properties
        made.state_machine.state = state
        made.state_machine.stream_closed_by = _RECV_END
        if (made.open, made.closed, made.closed_by) != (
                state in open_states, state is _CLOSED, _RECV_END):
            return False
    settings = h2.settings.Settings(client=True, initial_values={_IWS: 1234})
    store = getattr(settings, "_settings", None)
    return (type(store) is dict and type(store.get(_IWS)) is collections.deque
            and store[_IWS][0] == settings.initial_window_size == 1234)


_FAST = _fast_paths_match_h2()


class _Malformed(h2.exceptions.ProtocolError):
    """A malformed request or response on one stream (RFC 9113 §8.1.1): a stream error.

    Still a ProtocolError to anyone driving the h2 connection directly."""

    def __init__(self, stream_id: int, message: str) -> None:
        super().__init__(message)
        self.stream_id = stream_id


def _malformed(stream_id: int, exc: h2.exceptions.ProtocolError) -> h2.exceptions.ProtocolError:
    """What h2's ProtocolError from a header block means: a malformed message (validation,
    content-length, trailers without END_STREAM), raised as a plain ProtocolError after the
    state machines moved on and the block was decoded, is a stream error; a state error (a
    StreamClosedError or an "Invalid input" ProtocolError) stays what it was."""
    if type(exc) is h2.exceptions.ProtocolError and not str(exc).startswith("Invalid input"):
        return _Malformed(stream_id, str(exc))
    return exc


def _ended_early(stream_id: int, expected: int) -> _Malformed:
    return _Malformed(stream_id, f"content-length {expected} "
                                 "but the message ended with its headers")


class _Connection(h2.connection.H2Connection):
    """h2's connection, minus an O(n) walk on every new stream.

    h2 counts open streams by walking every stream it holds each time one opens (about 7% of
    a busy server's time at 50 concurrent streams). The core enforces stream limits itself,
    in both roles, so h2 only needs the walk for its side effect of forgetting closed streams;
    doing that once every ``_SWEEP`` new streams bounds memory the same way."""

    _SWEEP = 32
    _h2guard_new = 0

    def __init__(self, config: Any = None) -> None:
        super().__init__(config=config)
        self._h2guard_reset: dict[int, None] = {}

    def _sweep_due(self) -> bool:
        self._h2guard_new += 1
        if self._h2guard_new >= self._SWEEP:
            self._h2guard_new = 0
            return True
        return False

    def _sweep(self) -> None:
        """The periodic sweep where only its side effect matters (the core's own paths, which
        ignore the count): what reading ``open_outbound_streams`` or ``open_inbound_streams``
        does."""
        if self._sweep_due():
            self._open_streams(0)

    def _open_streams(self, remainder: int) -> int:
        # h2's walk, with each stream's state read once instead of through two properties
        # (``open`` and ``closed``); the same count, the same streams forgotten in the same
        # order (h2's own paths still read the count: TooManyStreamsError)
        if not _FAST:
            return super()._open_streams(remainder)
        count = 0
        gone = []
        for sid, stream in self.streams.items():
            state = stream.state_machine.state
            if state is _CLOSED:
                gone.append(sid)
            elif (state is _OPEN or state is _HALF_LOCAL or state is _HALF_REMOTE) \
                    and sid % 2 == remainder:
                count += 1
        streams = self.streams
        record = self._closed_streams
        for sid in gone:
            record[sid] = streams.pop(sid).state_machine.stream_closed_by
        return count

    @property
    def open_inbound_streams(self) -> int:
        # compared with the unenforced limit only (see _UnenforcedLimit)
        return super().open_inbound_streams if self._sweep_due() else 0

    @property
    def open_outbound_streams(self) -> int:
        # Client role: the core checks the peer's limit before it opens a stream
        # (:meth:`H2Core.can_open_stream`), with its own count of the streams it opened.
        return super().open_outbound_streams if self._sweep_due() else 0

    def _fresh_stream(self, stream_id: int, *, outbound: bool) -> _Stream:
        """h2's ``_begin_new_stream`` for an id the caller checked (odd, above every stream
        opened that way before), minus its debug logging, with the stream built by
        :func:`_new_stream` and the two INITIAL_WINDOW_SIZE settings read as h2's
        ``Settings.__getitem__`` reads them, without its property and method calls."""
        inbound_window = self.local_settings._settings[_IWS][0]
        outbound_window = self.remote_settings._settings[_IWS][0]
        if inbound_window is None or outbound_window is None:  # pragma: no cover - h2 raises
            inbound_window = self.local_settings.initial_window_size
            outbound_window = self.remote_settings.initial_window_size
        stream = _new_stream(stream_id, self.config, inbound_window, outbound_window,
                             self.max_outbound_frame_size)
        self.streams[stream_id] = stream
        if outbound:
            self.highest_outbound_stream_id = stream_id
        else:
            self.highest_inbound_stream_id = stream_id
        return stream

    def get_next_available_stream_id(self) -> int:
        # h2's, minus its debug logging (the core's config has no logger)
        highest = self.highest_outbound_stream_id
        if highest:
            next_id: int = highest + 2
        else:
            next_id = 1 if self.config.client_side else 2
        if next_id > self.HIGHEST_ALLOWED_STREAM_ID:
            raise h2.exceptions.NoAvailableStreamIDError("Exhausted allowed stream IDs")
        return next_id

    def _begin_new_stream(self, stream_id: int, allowed_ids: Any) -> h2.stream.H2Stream:
        stream = super()._begin_new_stream(stream_id, allowed_ids)
        stream.__class__ = _Stream  # same object layout; only the method above differs
        return stream

    def _receive_frame(self, frame: Any) -> list[h2.events.Event]:
        # h2's version formats ``repr(frame)`` for a trace log on every frame, even with
        # logging off (~4% of a small request). Same dispatch and the same handling of frames
        # on closed streams, without that.
        events: list[h2.events.Event]
        try:
            frames, events = self._frame_dispatch_table[frame.__class__](frame)
        except h2.exceptions.StreamClosedError as exc:
            if not self._stream_is_closed_by_reset(exc.stream_id):
                raise
            if exc.stream_id not in self._h2guard_reset:
                self._send_rst(exc.stream_id, exc.error_code)
            # else RFC 9113 §5.1: frames the peer sent before it saw our RST_STREAM are ignored
            return list(exc._events)
        except h2.exceptions.StreamIDTooLowError as exc:
            if self._stream_is_closed_by_reset(exc.stream_id):
                self._send_rst(exc.stream_id, h2.errors.ErrorCodes.STREAM_CLOSED)
                return []
            if self._stream_is_closed_by_end(exc.stream_id):
                raise h2.exceptions.StreamClosedError(exc.stream_id) from exc
            raise
        self._prepare_for_sending(frames)
        return events

    def send_headers(self, stream_id: int, headers: Any, end_stream: bool = False,
                     priority_weight: int | None = None, priority_depends_on: int | None = None,
                     priority_exclusive: bool | None = None) -> None:
        # A client's new request is ~30% cheaper done here than through h2's general path,
        # which re-encodes every header to bytes, checks for informational responses, builds
        # validation flags and frame objects: work that is a no-op for request HEADERS of
        # bytes (the transport builds them). The state changes are h2's own: the connection
        # and stream state machines take the same inputs. Anything else goes to h2.
        client = self.config._client_side if _FAST else self.config.client_side  # type: ignore[attr-defined]
        if (not client or stream_id in self.streams
                or priority_weight is not None or priority_depends_on is not None
                or priority_exclusive is not None):
            super().send_headers(stream_id, headers, end_stream, priority_weight,
                                 priority_depends_on, priority_exclusive)
            return
        self._sweep()  # what h2's open_outbound_streams check does besides counting
        if not _FAST:
            self.state_machine.process_input(ConnectionInputs.SEND_HEADERS)
            stream = self._begin_new_stream(stream_id, h2.connection.AllowedStreamIDs.ODD)
            machine = stream.state_machine
            machine.process_input(StreamInputs.SEND_HEADERS)
            block = self.encoder.encode(headers)
            if end_stream:
                machine.process_input(StreamInputs.SEND_END_STREAM)
        else:  # the same transitions, made here (see _fast_paths_match_h2)
            if self.state_machine.state is not ConnectionState.CLIENT_OPEN:
                self.state_machine.process_input(ConnectionInputs.SEND_HEADERS)
            if stream_id & 1 and stream_id > self.highest_outbound_stream_id:
                stream = self._fresh_stream(stream_id, outbound=True)
            else:  # raises as h2 does
                stream = self._begin_new_stream(stream_id, h2.connection.AllowedStreamIDs.ODD)
            machine = stream.state_machine
            machine.client = True  # request_sent: IDLE -> OPEN
            machine.headers_sent = True
            machine.state = _OPEN
            block = self.encoder.encode(headers)
            if end_stream:
                machine.state = _HALF_LOCAL
        for name, value in headers:
            if name == b":authority":
                stream._authority = value
            elif name == b":method":
                stream.request_method = value
            elif name[:1] != b":":
                break
        size = len(block)
        if size <= self.max_outbound_frame_size:  # _write_headers' common case
            out = self._data_to_send
            out += _FRAME_HEAD.pack(size >> 16, size & 0xFFFF, 0x1, 0x5 if end_stream else 0x4,
                                    stream_id)
            out += block
        else:
            self._write_headers(stream_id, block, end_stream)

    def _write_headers(self, stream_id: int, block: bytes, end_stream: bool) -> None:
        """Queue a header block as HEADERS (and CONTINUATION) frames, as h2 frames it."""
        limit = self.max_outbound_frame_size
        size = len(block)
        out = self._data_to_send
        if size <= limit:
            out += _FRAME_HEAD.pack(size >> 16, size & 0xFFFF, 0x1, 0x5 if end_stream else 0x4,
                                    stream_id)
            out += block
            return
        out += frame_header(limit, 0x1, 0x1 if end_stream else 0, stream_id) + block[:limit]
        for start in range(limit, size, limit):  # CONTINUATION frames
            chunk = block[start:start + limit]
            last = start + limit >= size
            out += frame_header(len(chunk), 0x9, 0x4 if last else 0, stream_id) + chunk

    def fast_headers(self, stream_id: int, block: bytes, end_stream: bool,
                     stream: h2.stream.H2Stream | None) -> tuple[int, list[Any]]:
        """A HEADERS frame (END_HEADERS, no padding, no priority) on a connection that is
        open: a request on a new stream (``stream`` None, its id above every earlier one) or
        a block on an open stream of ours. What ``_receive_headers_frame`` and
        ``receive_headers`` do, in their order, with the state changes of h2's tables made
        here for the two common cases (see :func:`_fast_paths_match_h2`): ``(1, headers)`` a
        request, ``(2, headers)`` a response; anything else (trailers, an informational
        response) goes through h2's stream as usual: ``(0, h2 events)``. Raises what h2
        raises, malformed messages as :class:`_Malformed`."""
        if stream is None:
            self._sweep()  # what h2's open_inbound_streams check does besides counting
        headers = _decode_headers(self.decoder, block)
        if stream is None:
            stream = self._fresh_stream(stream_id, outbound=False)
        for name, value in headers:  # h2's is_informational_response
            if name[:1] != b":":
                break
            if name == b":status":
                if value[:1] == b"1":
                    return 0, stream.receive_headers(headers, end_stream, None)[1]
                break
        machine = stream.state_machine
        if machine.state is _IDLE:  # request_received: IDLE -> OPEN
            machine.client = False
            machine.headers_received = True
            machine.state = _OPEN
            flags, kind = _REQUEST_FLAGS, 1
        elif machine.client is True and not machine.headers_received:  # response_received
            machine.headers_received = True
            flags, kind = _RESPONSE_FLAGS, 2
        else:
            return 0, stream.receive_headers(headers, end_stream, None)[1]
        if end_stream:
            if machine.state is _OPEN:  # stream_half_closed
                machine.state = _HALF_REMOTE
            else:  # stream_ended: HALF_CLOSED_LOCAL -> CLOSED
                machine.state = _CLOSED
                machine.stream_closed_by = _RECV_END
        try:
            validated = _checked_headers(stream, headers, flags)
        except h2.exceptions.ProtocolError as exc:
            raise _malformed(stream_id, exc) from exc
        if end_stream and stream._expected_content_length:
            raise _ended_early(stream_id, stream._expected_content_length)
        return kind, validated

    def fast_respond(self, stream_id: int, headers: Any, body: bytes) -> bool:
        """Server role: HEADERS and a body that fits one DATA frame and the windows, ending
        the stream, for a request that has ended; False (nothing done) for anything else.
        ``send_headers`` and ``send_data`` with their state changes made here: the response
        is not informational, so the stream goes HALF_CLOSED_REMOTE -> CLOSED, and the
        windows shrink by the body."""
        stream = self.streams.get(stream_id)
        if stream is None or self.state_machine.state is not ConnectionState.SERVER_OPEN:
            return False
        machine = stream.state_machine
        size = len(body)
        if (machine.state is not _HALF_REMOTE or machine.headers_sent
                or machine.client is not False or type(body) is not bytes or size > 16384
                or size > stream.outbound_flow_control_window
                or size > self.outbound_flow_control_window or not isinstance(headers, list)
                or not headers):
            return False
        status = headers[0]
        if status[0] != b":status" or status[1][:1] == b"1":
            return False
        for field in headers:
            if len(field) != 2:  # h2 drops a third item (sensitive): let it
                return False
        machine.headers_sent = True  # response_sent
        self._write_headers(stream_id, self.encoder.encode(headers), not size)
        if size:
            out = self._data_to_send
            out += _FRAME_HEAD.pack(0, size, 0x0, 0x1, stream_id)
            out += body
            stream.outbound_flow_control_window -= size
            self.outbound_flow_control_window -= size
        machine.state = _CLOSED  # send_end_stream
        machine.stream_closed_by = _SEND_END
        return True

    def _handle_data_on_closed_stream(self, events: Any, exc: Any, frame: Any) -> Any:
        # h2 credits the connection window (keep that) and answers RST_STREAM STREAM_CLOSED;
        # after a reset of ours the DATA was in flight, and RFC 9113 §5.1 says ignore it.
        frames, out = super()._handle_data_on_closed_stream(events, exc, frame)
        if exc.stream_id in self._h2guard_reset:
            frames = [f for f in frames if not isinstance(f, hyperframe.frame.RstStreamFrame)]
        return frames, out

    def reset_stream(self, stream_id: int, error_code: Any = 0) -> None:
        # remember which streams this side reset on purpose (bounded, like h2's own record)
        super().reset_stream(stream_id, error_code)
        done = self._h2guard_reset
        done[stream_id] = None
        if len(done) > _RESETS_REMEMBERED:
            del done[next(iter(done))]

    def _send_rst(self, stream_id: int, code: Any) -> None:
        frame = hyperframe.frame.RstStreamFrame(stream_id)
        frame.error_code = code
        self._prepare_for_sending([frame])


class H2Core:
    """One HTTP/2 connection, client or server role, with no I/O of its own.

    Call :meth:`start`, then :meth:`receive` with every chunk read from the socket, and write
    :meth:`data_to_send` after every call. Commands (:meth:`send_headers`, :meth:`goaway`, ...)
    only queue bytes. The owner keeps the clock: ``now`` is any monotonic float.
    """

    __slots__ = (
        "_awaiting_settings",
        "_conn",
        "_initial_window_target",
        "_liveness",
        "_now",
        "_out",
        "_peer_limit",
        "_pending_acks",
        "_ping_seq",
        "_pings",
        "_stream_limit",
        "_streams",
        "_unprocessed",
        "_unprocessed_last",
        "_violations",
        "_withheld",
        "auto_ack",
        "client",
        "closed",
        "control_frames",
        "failure",
        "goaway_received",
        "goaway_sent",
        "last_frame_at",
        "last_nonping_at",
        "recorder",
        "requests_seen",
        "resets_received",
    )

    def __init__(
        self,
        *,
        client: bool,
        settings: Mapping[int, int] | None = None,
        validate_inbound_headers: bool = True,
        max_header_list_size: int = 65536,
        connection_window: int | None = None,
        ping_interval: float = 0.0,
        ping_timeout: float = 5.0,
    ) -> None:
        config = h2.config.H2Configuration(
            client_side=client,
            header_encoding=None,
            validate_inbound_headers=validate_inbound_headers,
            normalize_inbound_headers=validate_inbound_headers,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        conn = _Connection(config=config)
        conn.state_machine._transitions = _DRAINING_TRANSITIONS
        conn.decoder = FastDecoder(max_header_list_size)  # type: ignore[assignment]
        conn.encoder = FastEncoder()  # type: ignore[assignment]
        self._conn = conn
        self.client = client
        initial: dict[int, int] = {
            _MCS: 100,  # h2's default, made explicit; a scenario overrides it
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: max_header_list_size,
        }
        if settings:
            initial.update(settings)
        # initial_values (not item assignment) so the values go out in the first SETTINGS frame.
        local_cls = h2.settings.Settings if client else _UnenforcedLimit
        conn.local_settings = local_cls(client=client, initial_values=initial)  # type: ignore[arg-type]
        conn.max_inbound_frame_size = conn.local_settings.max_frame_size
        self._stream_limit: int | None = None if client else initial[_MCS]
        self._initial_window_target = connection_window
        self._out: list[bytes] = []
        self._streams: dict[int, list[bool]] = {}  # id -> [recv_closed, send_closed]
        self._withheld: dict[int, int] = {}
        self._pending_acks: list[tuple[int, int]] = []
        self._pings: dict[bytes, float] = {}
        self._liveness = Liveness(ping_interval=ping_interval, ping_timeout=ping_timeout)
        self._ping_seq = 0
        self._peer_limit = 2**32 + 1  # the peer's MAX_CONCURRENT_STREAMS; none until SETTINGS
        self.auto_ack = True
        self.closed = False
        self.failure: ConnectionFailed | None = None
        self.goaway_sent: int | None = None
        self.goaway_received: int | None = None
        self._unprocessed: set[int] = set()
        self._unprocessed_last = 0
        self._violations: set[int] = set()
        self._now = 0.0
        self.recorder: FlightRecorder | None = None
        """Set one (:class:`~h2guard.wire.recorder.FlightRecorder`) to keep the last frames
        both ways; the core feeds it every byte it reads and writes."""
        self.last_frame_at = 0.0
        self.last_nonping_at = 0.0
        self.requests_seen = 0
        self.control_frames = 0
        self.resets_received = 0
        self._awaiting_settings = not client  # RFC 9113 §3.4: the preface's SETTINGS first

    # ------------------------------------------------------------------ output

    def start(self, now: float) -> None:
        """Queue the preface (client) and our SETTINGS, and open the connection window."""
        self.last_frame_at = self.last_nonping_at = self._now = now
        conn = self._conn
        conn.initiate_connection()
        target = self._initial_window_target
        if target is not None and target > 65535:
            conn.increment_flow_control_window(target - 65535)
        self._flush()

    def data_to_send(self) -> bytes:
        """Every byte queued since the last call, in order."""
        if self._pending_acks:
            self._settle_acks()
        self._flush()
        if not self._out:
            return b""
        data = b"".join(self._out)
        self._out.clear()
        if self.recorder is not None:
            self.recorder.sent(data, self._now)
        return data

    def _flush(self) -> None:
        data = self._conn.data_to_send()
        if data:
            self._out.append(data)

    def pending_output(self) -> int:
        """Bytes queued and not yet taken by :meth:`data_to_send`."""
        return sum(map(len, self._out)) + len(self._conn._data_to_send)

    def write_raw(self, data: bytes) -> None:
        """Queue bytes that bypass h2 (a deliberately broken frame, for fault injection)."""
        self._flush()
        self._out.append(data)

    # ------------------------------------------------------------------ input

    def receive(self, data: bytes, now: float) -> list[Event]:
        """Feed bytes read from the peer; return what they meant. Never raises for peer input.

        h2 parses the frames (its frame buffer also joins CONTINUATION blocks), but the core
        hands them to h2's per-frame handler one at a time, so a frame that raises costs only
        its own events, and the error code sent in GOAWAY is the core's choice."""
        if self.closed or not data:
            return []
        self._now = now
        if self.recorder is not None:
            self.recorder.received(data, now)
        events: list[Event] = []
        conn = self._conn
        frames = conn.incoming_buffer
        frames.max_frame_size = conn.max_inbound_frame_size
        if _FAST and not frames._data and not frames._preamble_len \
                and not frames._headers_buffer and not self._awaiting_settings:
            # Nothing buffered (a client's every read, nearly): the common frames are read
            # straight from ``data``, and only what they leave goes into h2's buffer.
            done = self._fast_frames(data, events, now)
            if done:
                if done == len(data):
                    return events
                data = data[done:]
                if self.closed:
                    frames.add_data(data)  # what h2's buffer would hold
                    return events
        try:
            frames.add_data(data)
        except h2.exceptions.ProtocolError as exc:  # a bad preface: h2 queues no GOAWAY here
            self._terminate(_PROTOCOL_ERROR, exc, events)
            return events
        handle = conn._receive_frame
        translate = self._translate
        while True:
            if _FAST and not frames._headers_buffer and not self._awaiting_settings:
                buf = frames._data  # (some h2 versions replace it when they consume a frame)
                done = self._fast_frames(buf, events, now)
                if done:
                    del buf[:done]  # once for every frame taken (not one memmove each)
                    if self.closed:
                        return events
            try:
                frame = next(frames)
            except StopIteration:
                break
            except Exception as exc:  # framing: size, CONTINUATION, padding (not an h2 error)
                fixed = self._body_refused(frames, exc, events)
                if fixed:
                    continue
                if fixed is None:
                    self._terminate(self._code_for(exc), exc, events)
                return events
            kind = type(frame)
            if self._awaiting_settings:
                self._awaiting_settings = False
                if kind is not _SettingsFrame:
                    self._terminate(_PROTOCOL_ERROR, h2.exceptions.ProtocolError(
                        "the client preface must be followed by a SETTINGS frame, got "
                        f"{kind.__name__}"), events)
                    return events
            if kind is _PingFrame:
                self.last_frame_at = now  # a PING may not count as activity (AWS ALB)
                self.control_frames += 1
            else:
                self.last_frame_at = self.last_nonping_at = now
                if kind is _DataFrame:
                    if not frame.data and "END_STREAM" not in frame.flags:  # type: ignore[attr-defined]
                        self.control_frames += 1
                elif kind in _CONTROL_FRAMES:
                    self.control_frames += 1
                elif kind is _RstStreamFrame:
                    self.resets_received += 1
                elif kind is _GoAwayFrame:
                    self._flush()  # h2 clears its outbound buffer on GOAWAY: keep what it had
                # RFC 9113 §5.3.1: a stream that depends on itself is a stream error; h2 would
                # end the connection. HEADERS still go through h2 (HPACK state) without the
                # bad priority, and their request is dropped.
                if (kind is _HeadersFrame or kind is _PriorityFrame) \
                        and getattr(frame, "depends_on", 0) == frame.stream_id \
                        and self._self_dependency(frame, events, now):
                    continue
            try:
                h2_events = handle(frame)
            except _Malformed as exc:
                self._reject(exc.stream_id, str(exc), events)
                continue
            except Exception as exc:
                if self._stream_error(frame, exc, events):
                    continue
                self._terminate(self._code_for(exc), exc, events)
                return events
            if h2_events:
                translate(h2_events, events, now)
        pending = frames._data
        if len(pending) >= 9:
            length = int.from_bytes(pending[:3], "big")
            if length > frames.max_frame_size:
                # h2 judges a frame's length only once all of it arrived: fail it now,
                # instead of buffering up to 16 MiB of a frame that is an error anyway.
                self._terminate(_FRAME_SIZE_ERROR, h2.exceptions.FrameTooLargeError(
                    f"frame of {length} bytes, SETTINGS_MAX_FRAME_SIZE is "
                    f"{frames.max_frame_size}"), events)
        return events

    def _fast_frames(self, buf: bytes | bytearray, events: list[Event], now: float) -> int:
        """The common frames at the head of ``buf``, each whole, handled without h2's frame
        objects and general dispatch (see :func:`_fast_paths_match_h2`): DATA on an open
        stream, HEADERS that open a request or answer one, WINDOW_UPDATE on the connection
        or an open stream. Stops at the first frame that is anything else (h2 parses that
        one: nothing of it was consumed), or when the connection ended; returns how many
        bytes the frames it handled took; the core's own accounting of each is ``_data``,
        ``_response`` and ``_request``, as on the general path."""
        conn = self._conn
        conn_machine = conn.state_machine
        h2_streams = conn.streams
        limit = conn.incoming_buffer.max_frame_size
        client = self.client
        unpack = _FRAME_HEAD.unpack_from
        size = len(buf)
        pos = 0
        while size - pos >= 9 and not self.closed and conn_machine.state in _OPEN_CONNECTION:
            hi, lo, ftype, flags, sid = unpack(buf, pos)
            length = (hi << 16) | lo
            start = pos + 9
            stop = start + length
            if stop > size or length > limit:
                break
            sid &= MAX_STREAM_ID
            if ftype == 0x0:  # DATA
                if flags & 0x8 or not sid:
                    break
                stream = h2_streams.get(sid)
                if stream is None:
                    break
                machine = stream.state_machine
                state = machine.state
                if (state is not _OPEN and state is not _HALF_LOCAL) \
                        or not machine.headers_received:
                    break
                data = bytes(buf[start:stop])
                pos = stop
                self.last_frame_at = self.last_nonping_at = now
                end = bool(flags & 0x1)
                if not length and not end:
                    self.control_frames += 1
                try:  # _receive_data_frame and receive_data, in their order
                    conn._inbound_flow_control_window_manager.window_consumed(length)
                    stream._inbound_window_manager.window_consumed(length)
                    stream._track_content_length(length, end)
                except Exception as exc:
                    frame = _DataFrame(sid, data)
                    if end:
                        frame.flags.add("END_STREAM")
                    if not self._stream_error(frame, exc, events):
                        self._terminate(self._code_for(exc), exc, events)
                    continue
                if end:
                    if state is _OPEN:  # stream_half_closed
                        machine.state = _HALF_REMOTE
                    else:  # stream_ended
                        machine.state = _CLOSED
                        machine.stream_closed_by = _RECV_END
                self._data(sid, data, length, end, events)
            elif ftype == 0x1:  # HEADERS
                if flags & 0x28 or not flags & 0x4 or not sid:  # PADDED, PRIORITY; END_HEADERS
                    break
                stream = None
                if client:
                    stream = h2_streams.get(sid)
                    if stream is None:
                        break
                    state = stream.state_machine.state
                    if state is not _OPEN and state is not _HALF_LOCAL:
                        break
                elif not sid & 1 or sid <= conn.highest_inbound_stream_id:
                    break
                block = bytes(buf[start:stop])
                pos = stop
                self.last_frame_at = self.last_nonping_at = now
                end = bool(flags & 0x1)
                try:
                    kind, result = conn.fast_headers(sid, block, end, stream)
                except _Malformed as exc:
                    self._reject(exc.stream_id, str(exc), events)
                    continue
                except Exception as exc:
                    self._terminate(self._code_for(exc), exc, events)
                    continue
                if kind == 2:
                    self._response(sid, result, end, events)
                elif kind == 1:
                    self._request(sid, result, end, events)
                elif result:
                    self._translate(result, events, now)
            elif ftype == 0x8:  # WINDOW_UPDATE
                if length != 4 or buf[start] & 0x80:
                    break
                increment = int.from_bytes(buf[start:stop], "big")
                if not increment:
                    break
                if sid:
                    stream = h2_streams.get(sid)
                    if stream is None:
                        break
                    state = stream.state_machine.state
                    if state is not _OPEN and state is not _HALF_LOCAL \
                            and state is not _HALF_REMOTE:
                        break
                    window = stream.outbound_flow_control_window + increment
                    if window > _MAX_WINDOW:
                        break  # h2 resets the stream
                    stream.outbound_flow_control_window = window
                else:
                    window = conn.outbound_flow_control_window + increment
                    if window > _MAX_WINDOW:
                        break  # h2 ends the connection
                    conn.outbound_flow_control_window = window
                pos = stop
                self.last_frame_at = self.last_nonping_at = now
                self.control_frames += 1
                events.append(WindowUpdated(sid, increment))
            else:
                break
        return pos

    def _body_refused(self, frames: Any, exc: Exception, events: list[Event]) -> bool | None:
        """A frame body hyperframe refused, where RFC 9113 says something else than "connection
        error PROTOCOL_ERROR". The frame is still at the head of h2's buffer (hyperframe
        consumes a frame only once its body parsed). True: handled, go on; False: the
        connection ended here; None: not one of these, a connection error as usual."""
        pending = frames._data
        if len(pending) < 9 or frames._headers_buffer or \
                str(exc).startswith("Received frame with invalid header"):
            return None  # only a body refused once all of it arrived: chunking cannot matter
        length = int.from_bytes(pending[:3], "big")
        ftype, flags = pending[3], pending[4]
        sid = int.from_bytes(pending[5:9], "big") & MAX_STREAM_ID
        if len(pending) < 9 + length:
            return None
        if ftype == 0x4 and flags & 0x1 and length:  # §6.5: an ACK with a payload
            self._terminate(_FRAME_SIZE_ERROR, exc, events)
            return False
        if ftype == 0x8 and length == 4:
            if pending[9] & 0x80:  # §6.9: the reserved bit MUST be ignored
                pending[9] &= 0x7F
                return True
            if sid and not any(pending[9:13]):  # §6.9: an increment of 0 on a stream
                del pending[:13]
                if sid in self._conn.streams:
                    self._reject(sid, "WINDOW_UPDATE with an increment of 0", events)
                    return True
                self._terminate(_PROTOCOL_ERROR, exc, events)  # on an idle stream: §5.1
                return False
        if ftype == 0x2 and length != 5 and sid:  # §6.3: a stream error FRAME_SIZE_ERROR
            del pending[:9 + length]
            self._raw_rst(sid, _FRAME_SIZE_ERROR)
            return True
        return None

    def _self_dependency(self, frame: Any, events: list[Event], now: float) -> bool:
        """A PRIORITY or HEADERS frame whose stream depends on itself: True if handled."""
        sid = frame.stream_id
        if type(frame) is _PriorityFrame:
            if sid in self._conn.streams:
                self._reject(sid, "a stream cannot depend on itself", events)
            else:
                self._raw_rst(sid, _PROTOCOL_ERROR)
            return True
        frame.depends_on = 0
        try:
            h2_events = self._conn._receive_frame(frame)
        except Exception:
            return False  # let the normal path judge it again and fail the connection
        dropped = [ev for ev in h2_events if getattr(ev, "stream_id", None) != sid]
        if dropped:
            self._translate(dropped, events, now)
        self._reject(sid, "a stream cannot depend on itself", events)
        return True

    def _raw_rst(self, stream_id: int, code: int) -> None:
        """RST_STREAM for a stream h2 does not know (an idle one): written by hand."""
        self._flush()
        self._out.append(frame_header(4, 0x3, 0, stream_id) + struct.pack(">I", code))

    def _stream_error(self, frame: Any, exc: Exception, events: list[Event]) -> bool:
        """The errors h2 raises as connection errors that RFC 9113 makes stream errors on a
        stream that exists: a content-length the DATA does not match (§8.1.1) or a
        WINDOW_UPDATE of 0 (§6.9, when h2 rather than hyperframe sees it). Nothing here
        touches HPACK, so the connection state stays consistent. (A PRIORITY that depends on
        its own stream stays a connection error: h2 has closed its state machine by then.)"""
        sid = frame.stream_id
        if not sid:
            return False
        kind = type(frame)
        if kind is _DataFrame and isinstance(exc, h2.exceptions.InvalidBodyLengthError):
            self._ack(sid, frame.flow_controlled_length)  # the connection window goes on
        elif kind is _WindowUpdateFrame and frame.window_increment == 0:
            pass
        else:
            return False
        self._reject(sid, f"{type(exc).__name__}: {exc}", events)
        return True

    def _reject(self, stream_id: int, message: str, events: list[Event]) -> None:
        """A malformed message: RST_STREAM PROTOCOL_ERROR on that stream only."""
        known = self._streams.pop(stream_id, None) is not None
        self._forget_withheld(stream_id)
        self._reset_quietly(stream_id, _PROTOCOL_ERROR)
        if self.client:
            if known:
                events.append(StreamReset(stream_id, _PROTOCOL_ERROR, False))
        else:
            events.append(StreamRejected(stream_id, message))

    @staticmethod
    def _code_for(exc: Exception) -> int:
        """The GOAWAY code for a connection error h2 raised."""
        if isinstance(exc, h2.exceptions.DenialOfServiceError):
            # A header block above max_header_list_size: h2 would say ENHANCE_YOUR_CALM;
            # oversize headers get PROTOCOL_ERROR (see the module docstring).
            return _PROTOCOL_ERROR
        if isinstance(exc.__cause__, hpack.exceptions.HPACKError):
            return _COMPRESSION_ERROR  # RFC 9113 section 4.3; h2 would say PROTOCOL_ERROR
        if isinstance(exc, h2.exceptions.ProtocolError):
            return int(getattr(exc, "error_code", _PROTOCOL_ERROR) or _PROTOCOL_ERROR)
        return _PROTOCOL_ERROR

    def _terminate(self, code: int, exc: Exception, events: list[Event]) -> None:
        """Queue GOAWAY(code) and close the core, keeping the events gathered so far."""
        self._conn_terminate(code)
        self._fail(code, f"{type(exc).__name__}: {exc}", events)

    def _conn_terminate(self, code: int) -> None:
        try:
            self._conn.close_connection(error_code=code)
        except Exception:  # pragma: no cover - already closed
            pass

    def _fail(self, code: int, message: str, events: list[Event]) -> None:
        self.closed = True
        failure = ConnectionFailed(code, message)
        self.failure = failure
        events.append(failure)

    def _translate(self, h2_events: Iterable[h2.events.Event], out: list[Event],
                   now: float) -> None:
        streams = self._streams
        for ev in h2_events:
            if type(ev) is _H2RequestReceived:  # the hot path: checked first, exactly
                sid = ev.stream_id
                assert sid is not None
                self._request(sid, ev.headers, ev.stream_ended is not None, out)
            elif isinstance(ev, h2.events.DataReceived):
                sid = ev.stream_id
                assert sid is not None
                self._data(sid, ev.data or b"", ev.flow_controlled_length or 0,
                           ev.stream_ended is not None, out)
            elif isinstance(ev, h2.events.StreamEnded):
                sid = ev.stream_id
                assert sid is not None
                state = streams.get(sid)
                if state is not None and not state[0]:
                    state[0] = True
                    out.append(StreamEnded(sid))
                    self._maybe_close(sid, state)
            elif isinstance(ev, (h2.events.ResponseReceived,
                                 h2.events.InformationalResponseReceived)):
                sid = ev.stream_id
                assert sid is not None
                ended = ev.stream_ended is not None if isinstance(
                    ev, h2.events.ResponseReceived) else False
                self._response(sid, _headers(ev.headers), ended, out)
            elif isinstance(ev, h2.events.TrailersReceived):
                sid = ev.stream_id
                assert sid is not None
                state = streams.get(sid)
                if state is not None:
                    out.append(TrailersReceived(sid, _headers(ev.headers)))
                    state[0] = True
                    out.append(StreamEnded(sid))
                    self._maybe_close(sid, state)
            elif isinstance(ev, h2.events.StreamReset):
                sid = ev.stream_id
                assert sid is not None
                if streams.pop(sid, None) is not None:
                    self._forget_withheld(sid)
                    out.append(StreamReset(sid, int(ev.error_code or 0), ev.remote_reset))
            elif isinstance(ev, h2.events.WindowUpdated):
                out.append(WindowUpdated(ev.stream_id or 0, ev.delta or 0))
            elif isinstance(ev, h2.events.ConnectionTerminated):
                last = int(ev.last_stream_id or 0)
                code = int(ev.error_code or 0)
                first = self.goaway_received is None
                if (self.client and not first and self._unprocessed
                        and last > self._unprocessed_last):
                    # a later GOAWAY with a higher last_stream_id (RFC 9113 §6.8 forbids
                    # raising it): the peer now says it may have processed streams it had
                    # called unprocessed, and that we already handed back (a Node.js http2
                    # server does this, and runs them): proof for those streams
                    for sid in sorted(x for x in self._unprocessed if x <= last):
                        self._violated(sid, "GOAWAY", out)
                if self.goaway_received is None or last < self.goaway_received:
                    self.goaway_received = last
                unprocessed: tuple[int, ...] = ()
                if self.client or not first:
                    gone = sorted(s for s in streams if s > last and (s % 2 == 1) == self.client)
                    for s in gone:
                        del streams[s]
                        self._forget_withheld(s)
                    unprocessed = tuple(gone)
                    if self.client and gone:
                        # remembered so that a response on one of them proves the peer did
                        # process it (GoAwayViolated); bounded: streams per connection are
                        self._unprocessed.update(gone)
                        self._unprocessed_last = last
                out.append(GoAwayReceived(code, last, ev.additional_data or b"", unprocessed))
            elif isinstance(ev, h2.events.RemoteSettingsChanged):
                changed = {int(k): v.new_value for k, v in ev.changed_settings.items()}
                if _MCS in changed:
                    self._peer_limit = changed[_MCS]
                out.append(SettingsReceived(changed))
            elif isinstance(ev, h2.events.SettingsAcknowledged):
                out.append(SettingsAcked({int(k): v.new_value
                                          for k, v in ev.changed_settings.items()}))
            elif isinstance(ev, h2.events.PingReceived):
                out.append(PingReceived(ev.ping_data or b""))
            elif isinstance(ev, h2.events.PingAckReceived):
                payload = ev.ping_data or b""
                sent = self._pings.pop(payload, None)
                self._liveness.pong()
                out.append(PingAcked(payload, None if sent is None else now - sent))
            # PRIORITY, ALTSVC, unknown frames: nothing for the owner to do.

    def _request(self, sid: int, headers: Headers, ended: bool, out: list[Event]) -> None:
        """A request opened a stream (server role): refuse it or report it."""
        streams = self._streams
        if self.goaway_sent is not None or (
                self._stream_limit is not None and len(streams) >= self._stream_limit):
            refusal = self._refusal(sid)
            if refusal is not None:
                self._reset_quietly(sid, _REFUSED)
                out.append(StreamRefused(sid, refusal, headers))
                return
        self.requests_seen += 1
        streams[sid] = [ended, False]
        out.append(RequestReceived(sid, headers, ended))
        if ended:
            out.append(StreamEnded(sid))

    def _response(self, sid: int, headers: Headers, ended: bool, out: list[Event]) -> None:
        """Response (or informational) HEADERS on one of our streams (client role)."""
        state = self._streams.get(sid)
        if state is not None:
            if headers and headers[0][1][:1] != b"1":  # a final response: deadline met
                self._liveness.answered(sid)
            out.append(ResponseReceived(sid, headers, ended))
            if ended:
                state[0] = True
                out.append(StreamEnded(sid))
                self._maybe_close(sid, state)
        elif self._unprocessed and sid in self._unprocessed:
            self._violated(sid, "HEADERS", out)

    def _data(self, sid: int, data: bytes, length: int, ended: bool, out: list[Event]) -> None:
        """DATA on a stream: account for its window, report it."""
        state = self._streams.get(sid)
        if length:
            if state is None:
                self._ack(sid, length)
            elif self.auto_ack and sid not in self._withheld:
                self._pending_acks.append((sid, length))  # see _settle_acks
            else:
                self._withheld[sid] = self._withheld.get(sid, 0) + length
        if state is None:
            if self._unprocessed and sid in self._unprocessed:
                self._violated(sid, "DATA", out)
            return
        out.append(DataReceived(sid, data, length, ended))
        if ended:
            state[0] = True
            out.append(StreamEnded(sid))
            self._maybe_close(sid, state)

    def _refusal(self, stream_id: int) -> str | None:
        if self.goaway_sent is not None and stream_id > self.goaway_sent:
            return "after_goaway"
        limit = self._stream_limit
        if limit is not None and len(self._streams) >= limit:
            return "stream_limit"
        return None

    def _ack(self, stream_id: int, length: int) -> None:
        """Hand ``length`` processed bytes back: h2 batches the connection's WINDOW_UPDATEs
        and skips streams that already closed."""
        conn = self._conn
        if _FAST and length > 0:
            stream = conn.streams.get(stream_id)
            if stream is not None and stream.state_machine.state is _CLOSED:
                # acknowledge_received_data on a closed stream (a response just ended: its
                # bytes go back as it closes) only feeds the connection's window manager
                increment = conn._inbound_flow_control_window_manager.process_bytes(length)
                if increment:  # the WINDOW_UPDATE h2 would serialise
                    conn._data_to_send += _WINDOW_UPDATE_0 + (increment & _MAX_WINDOW).to_bytes(
                        4, "big")
                return
        try:
            conn.acknowledge_received_data(length, stream_id)
        except h2.exceptions.NoSuchStreamError:  # never opened: credit the connection alone
            try:
                conn.increment_flow_control_window(length)
            except (h2.exceptions.ProtocolError, ValueError):  # pragma: no cover
                pass
        except h2.exceptions.ProtocolError:  # pragma: no cover - connection already gone
            pass

    def _settle_acks(self) -> None:
        """Acknowledge the DATA received since the last :meth:`data_to_send`, except on streams
        the owner started to withhold meanwhile: it decides that from the very events that
        carried the first DATA (request HEADERS and body read in one chunk)."""
        pending, self._pending_acks = self._pending_acks, []
        for sid, length in pending:
            if sid in self._withheld:
                self._withheld[sid] += length
            else:
                self._ack(sid, length)

    def _maybe_close(self, stream_id: int, state: list[bool]) -> None:
        if state[0] and state[1]:
            del self._streams[stream_id]
            self._forget_withheld(stream_id)

    def _violated(self, sid: int, frame: str, out: list[Event]) -> None:
        """Proof that the peer processed a stream its GOAWAY called unprocessed (a response
        on it, or a later GOAWAY raising last_stream_id above it): report it once."""
        if sid not in self._violations:
            self._violations.add(sid)
            out.append(GoAwayViolated(sid, self._unprocessed_last, frame))

    def _forget_withheld(self, stream_id: int) -> None:
        """A stream closed with DATA never acknowledged: give the connection window back, or
        the whole connection would stall a little more with every such stream."""
        held = self._withheld.pop(stream_id, 0)
        if held and not self.closed:
            # through h2's window manager, which batches: one WINDOW_UPDATE per half window,
            # not one per small response (that was ~5% of a small request's cost)
            self._ack(stream_id, held)

    def _reset_quietly(self, stream_id: int, code: int) -> None:
        try:
            self._conn.reset_stream(stream_id, error_code=code)
        except h2.exceptions.ProtocolError:
            pass

    # ------------------------------------------------------------------ commands

    def send_headers(self, stream_id: int, headers: Headers, *, end_stream: bool = False) -> bool:
        """Send HEADERS; False if the stream is already gone (reset by the peer, say)."""
        state = self._streams.get(stream_id)
        if self.closed or (state is None and not self.client):
            return False
        try:
            self._conn.send_headers(stream_id, headers, end_stream)
        except h2.exceptions.ProtocolError:
            return False
        if state is None:  # a new stream (client role): nothing received on it yet
            self._streams[stream_id] = [False, True] if end_stream else [False, False]
        elif end_stream:
            state[1] = True
            self._maybe_close(stream_id, state)
        return True

    def respond(self, stream_id: int, headers: Headers, body: bytes) -> int:
        """HEADERS and a whole small body in one call: the common response, made cheap.

        Returns 1 when all of it went (the stream is closed on our side), 0 when the HEADERS
        went but the window is too short for the body (send it with :meth:`send_data`), and
        -1 when the stream is gone."""
        state = self._streams.get(stream_id)
        if state is None or state[1] or self.closed:
            return -1
        conn = self._conn
        if _FAST and conn.fast_respond(stream_id, headers, body):
            state[1] = True
            self._maybe_close(stream_id, state)
            return 1
        try:
            conn.send_headers(stream_id, headers, end_stream=not body)
            if body:
                if len(body) > 16384:
                    return 0
                conn.send_data(stream_id, body, end_stream=True)
        except h2.exceptions.FlowControlError:
            return 0
        except h2.exceptions.ProtocolError:
            return -1
        state[1] = True
        self._maybe_close(stream_id, state)
        return 1

    def send_data(self, stream_id: int, data: bytes, *, end_stream: bool = False) -> int:
        """Send as much of ``data`` as the peer's windows allow; return how many bytes went.

        ``end_stream`` applies only when all of ``data`` went. The caller keeps the rest and
        tries again on :class:`WindowUpdated`: large bodies wait for the peer instead of
        failing or buffering without bound."""
        state = self._streams.get(stream_id)
        if state is None or state[1] or self.closed:
            return 0
        conn = self._conn
        total = len(data)
        if total <= 16384:  # fits any frame size: let h2 check the window itself
            try:
                conn.send_data(stream_id, data, end_stream=end_stream)
            except h2.exceptions.FlowControlError:
                pass  # the window is shorter: send what fits below
            except h2.exceptions.ProtocolError:
                return 0
            else:
                if end_stream:
                    state[1] = True
                    self._maybe_close(stream_id, state)
                return total
        sent = 0
        try:
            window = conn.local_flow_control_window(stream_id)
            frame_max = conn.max_outbound_frame_size
            while sent < total and window > 0:
                size = min(frame_max, window, total - sent)
                last = end_stream and sent + size == total
                conn.send_data(stream_id, data[sent : sent + size], end_stream=last)
                sent += size
                window -= size
            if end_stream and total == 0:
                conn.end_stream(stream_id)
        except h2.exceptions.ProtocolError:
            return sent
        if end_stream and sent == total:
            state[1] = True
            self._maybe_close(stream_id, state)
        return sent

    def end_stream(self, stream_id: int) -> None:
        """Close our side of the stream with an empty END_STREAM DATA frame."""
        self.send_data(stream_id, b"", end_stream=True)

    def window(self, stream_id: int) -> int:
        """Bytes we may send on the stream now (stream and connection windows)."""
        try:
            return int(self._conn.local_flow_control_window(stream_id))
        except h2.exceptions.ProtocolError:
            return 0

    def reset_stream(self, stream_id: int, code: int) -> bool:
        """RST_STREAM with any 32-bit code (unknown codes are legal); False if already closed."""
        if self.closed:
            return False
        known = self._streams.pop(stream_id, None) is not None
        self._forget_withheld(stream_id)
        try:
            self._conn.reset_stream(stream_id, error_code=code)
        except h2.exceptions.ProtocolError:
            return False
        return known

    def goaway(self, *, code: int = 0, last_stream_id: int | None = None,
               debug: bytes = b"", keep_streams: bool = False) -> int:
        """Send GOAWAY; streams at or below ``last_stream_id`` may finish, later ones are refused.

        ``None`` means the highest stream the peer has opened (a graceful close). Sending
        2^31-1 first and the real id later is the two-step drain; the id only ever goes down.
        ``keep_streams`` (server role) keeps serving the streams already open above the id, as a
        buggy server does (a fault that models it). Returns the id sent."""
        if last_stream_id is None:
            last_stream_id = self._conn.highest_inbound_stream_id
        if self.goaway_sent is not None:
            last_stream_id = min(last_stream_id, self.goaway_sent)
        self.goaway_sent = last_stream_id
        try:
            self._conn.close_connection(error_code=code, additional_data=debug or None,
                                        last_stream_id=last_stream_id)
        except h2.exceptions.ProtocolError:  # pragma: no cover
            pass
        if not self.client and not keep_streams:
            for sid in [s for s in self._streams if s > last_stream_id]:
                del self._streams[sid]
                self._forget_withheld(sid)
        return last_stream_id

    def ping(self, payload: bytes, now: float) -> None:
        """Send PING; :class:`PingAcked` carries the round trip."""
        payload = payload.ljust(8, b"\0")[:8]
        self._pings[payload] = now
        self._conn.ping(payload)

    # ------------------------------------------------------------------ timers

    def expect_response(self, stream_id: int, timeout: float, now: float) -> bool:
        """Client role: the response to ``stream_id`` must start within ``timeout`` seconds of
        ``now``, else :meth:`handle_timer` reports :class:`ResponseTimedOut`. True if the
        owner must re-arm its timer sooner (see :meth:`get_timer`)."""
        liveness = self._liveness
        if len(liveness) > 2 * len(self._streams) + 64:
            liveness.keep_only(self._streams)
        return liveness.watch(stream_id, now + timeout, timeout)

    def waiting_from(self, now: float) -> None:
        """Client role: requests start waiting at ``now`` after none did; the PING watchdog
        counts the connection's silence from here (an idle spell before is not silence)."""
        self._liveness.start(now)

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must next be called (None: nothing to watch): the
        earliest response deadline, and, while streams are open and ``ping_interval`` is
        set, when the connection will have been silent that long (or a PING sent then
        unanswered for ``ping_timeout``). One timer per connection, whatever the streams."""
        return self._liveness.due(self.last_frame_at, waiting=bool(self._streams))

    def handle_timer(self, now: float) -> list[Event]:
        """The timer from :meth:`get_timer` fired: responses overdue, and the PING watchdog (a
        PING is queued to send when the connection was silent too long)."""
        self._now = now
        verdict = self._liveness.expire(now, self.last_frame_at, waiting=bool(self._streams))
        events: list[Event] = []
        for sid, timeout in verdict.expired:
            if sid in self._streams:
                events.append(ResponseTimedOut(sid, timeout))
        if verdict.dead:
            events.append(PingTimedOut(self._liveness.ping_timeout))
        elif verdict.ping and not self.closed:
            self._ping_seq += 1
            self.ping(self._ping_seq.to_bytes(8, "big"), now)
        return events

    def update_settings(self, settings: Mapping[int, int]) -> None:
        """Send new SETTINGS. A lower MAX_CONCURRENT_STREAMS is enforced at once: streams the
        peer opens before it sees the frame are refused, as servers in the field do."""
        for key, value in settings.items():
            if key == _MCS and not self.client:
                self._stream_limit = value
        self._conn.update_settings(dict(settings))

    def withhold_window(self, stream_id: int) -> None:
        """Stop acknowledging DATA on this stream (the peer's upload will stall)."""
        self._withheld.setdefault(stream_id, 0)

    def release_window(self, stream_id: int) -> None:
        """Acknowledge everything withheld on the stream and resume automatic updates."""
        pending = self._withheld.pop(stream_id, 0)
        if pending:
            self._ack(stream_id, pending)

    def acknowledge(self, stream_id: int, length: int) -> bool:
        """The owner consumed ``length`` bytes of DATA: open the windows by that much.

        With ``auto_ack`` off (the client), a slow reader holds at most one stream window of
        data per stream: the peer cannot send more until the reader catches up. Returns
        whether anything was acknowledged (False: the stream already closed and gave its bytes
        back)."""
        held = self._withheld.get(stream_id)
        if not held or self.closed:
            return False  # already given back (the stream closed): nothing to send
        length = min(length, held)
        if held > length:
            self._withheld[stream_id] = held - length
        else:
            del self._withheld[stream_id]
        self._ack(stream_id, length)
        return True

    def next_stream_id(self) -> int:
        """Client role: the id the next request will use."""
        return self._conn.get_next_available_stream_id()

    def can_open_stream(self) -> bool:
        """Client role: no GOAWAY seen and below the peer's MAX_CONCURRENT_STREAMS."""
        if self.closed or self.goaway_received is not None:
            return False
        return len(self._streams) < self._peer_limit

    # ------------------------------------------------------------------ state

    @property
    def open_streams(self) -> int:
        """Streams that are not fully closed, as this core counts them."""
        return len(self._streams)

    def stream_ids(self) -> list[int]:
        """Ids of the streams still open."""
        return list(self._streams)

    def is_open(self, stream_id: int) -> bool:
        """Whether the stream is still open (not reset, not fully closed)."""
        return stream_id in self._streams

    def set_stream_limit(self, limit: int | None) -> None:
        """Server role: enforce a different limit (``None``: advertise only, refuse nothing)."""
        self._stream_limit = limit

    @property
    def stream_limit(self) -> int | None:
        """Server role: the MAX_CONCURRENT_STREAMS we enforce."""
        return self._stream_limit

    @property
    def highest_inbound_stream_id(self) -> int:
        return int(self._conn.highest_inbound_stream_id)

    @property
    def remote_settings(self) -> dict[int, int]:
        """The peer's settings in force."""
        return {int(k): v for k, v in self._conn.remote_settings.items()}

    def mark_lost(self, message: str) -> ConnectionFailed:
        """The transport died under us (EOF, reset): close the core and say so."""
        self.closed = True
        failure = ConnectionFailed(0, message, local=False)
        if self.failure is None:
            self.failure = failure
        return failure


def _headers(raw: Any) -> Headers:
    return raw if isinstance(raw, list) else list(raw)


def frame_header(length: int, frame_type: int, flags: int, stream_id: int) -> bytes:
    """The 9-byte frame header of RFC 9113 §4.1, for frames written by hand."""
    return _FRAME_HEAD.pack((length >> 16) & 0xFF, length & 0xFFFF, frame_type, flags,
                            stream_id & MAX_STREAM_ID)


def goaway_frame(last_stream_id: int, code: int, debug: bytes = b"") -> bytes:
    """Serialise a GOAWAY frame by hand (for tests and deliberately odd peers)."""
    payload = struct.pack(">II", last_stream_id & MAX_STREAM_ID, code) + debug
    return frame_header(len(payload), _GOAWAY_TYPE, 0, 0) + payload
