"""RFC 9113 error codes and settings: names, numbers, meaning, likely causes and fixes.

One table serves every part of h2guard: the chaos scenario loader resolves ``"REFUSED_STREAM"``
or ``7`` or ``"0x7"`` through it, the frame tracer prints names from it, and the doctor's
explanations read the meaning and the fixes from it. Unknown codes are legal on the wire
(RFC 9113 §7: "unknown or unsupported error codes MUST NOT trigger any special behavior") and are
treated like INTERNAL_ERROR, so every lookup here accepts them.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ERROR_CODES",
    "SETTINGS",
    "ErrorCode",
    "code_name",
    "error_code",
    "parse_error_code",
    "setting_name",
]


@dataclass(frozen=True, slots=True)
class ErrorCode:
    """One RFC 9113 §7 error code and what it usually means in production."""

    value: int
    name: str
    meaning: str
    causes: tuple[str, ...] = ()
    fixes: tuple[str, ...] = ()


ERROR_CODES: dict[int, ErrorCode] = {
    c.value: c
    for c in (
        ErrorCode(0x0, "NO_ERROR", "graceful shutdown or no error",
                  ("a proxy closing a connection at its request cap or idle timeout",),
                  ("finish streams at or below GOAWAY's last_stream_id, resend the rest",)),
        ErrorCode(0x1, "PROTOCOL_ERROR", "the peer saw a protocol violation",
                  ("header or size policy violation, often from a WAF or proxy",),
                  ("check header names and sizes the proxy allows",)),
        ErrorCode(0x2, "INTERNAL_ERROR", "the peer hit an internal error",
                  ("an upstream or app crash mid-response", "a proxy's generic kill"),
                  ("retry only idempotent or keyed requests",)),
        ErrorCode(0x3, "FLOW_CONTROL_ERROR", "a flow-control window was exceeded",
                  ("a peer sending beyond the advertised window",),
                  ("check window sizes and WINDOW_UPDATE handling",)),
        ErrorCode(0x4, "SETTINGS_TIMEOUT", "SETTINGS were not acknowledged in time",
                  ("a peer that stopped reading",), ()),
        ErrorCode(0x5, "STREAM_CLOSED", "a frame arrived for a half-closed stream",
                  ("a race between a reset and late frames",), ()),
        ErrorCode(0x6, "FRAME_SIZE_ERROR", "a frame had an invalid size",
                  ("a frame larger than SETTINGS_MAX_FRAME_SIZE",), ()),
        ErrorCode(0x7, "REFUSED_STREAM", "the stream was refused before any processing",
                  ("more concurrent streams than SETTINGS_MAX_CONCURRENT_STREAMS",
                   "a server shedding load"),
                  ("resend on another or a new connection: always safe",)),
        ErrorCode(0x8, "CANCEL", "the stream is no longer needed",
                  ("the client (or a browser fetch abort) gave up",), ()),
        ErrorCode(0x9, "COMPRESSION_ERROR", "the HPACK state could not be maintained", (), ()),
        ErrorCode(0xA, "CONNECT_ERROR", "a CONNECT tunnel was reset or closed", (), ()),
        ErrorCode(0xB, "ENHANCE_YOUR_CALM", "the peer thinks we are abusive",
                  ("too many requests, resets or pings",), ("back off hard",)),
        ErrorCode(0xC, "INADEQUATE_SECURITY", "the TLS setup is not acceptable", (), ()),
        ErrorCode(0xD, "HTTP_1_1_REQUIRED", "the endpoint requires HTTP/1.1",
                  ("a route that cannot be served over HTTP/2",),
                  ("resend over HTTP/1.1",)),
    )
}

_BY_NAME: dict[str, int] = {c.name: c.value for c in ERROR_CODES.values()}

SETTINGS: dict[int, str] = {
    0x1: "HEADER_TABLE_SIZE",
    0x2: "ENABLE_PUSH",
    0x3: "MAX_CONCURRENT_STREAMS",
    0x4: "INITIAL_WINDOW_SIZE",
    0x5: "MAX_FRAME_SIZE",
    0x6: "MAX_HEADER_LIST_SIZE",
    0x8: "ENABLE_CONNECT_PROTOCOL",
    0x9: "NO_RFC7540_PRIORITIES",
}


def code_name(value: int) -> str:
    """The RFC name of an error code, or ``UNKNOWN(0x..)`` for a code outside §7."""
    known = ERROR_CODES.get(int(value))
    return known.name if known is not None else f"UNKNOWN(0x{int(value):x})"


def error_code(value: int) -> ErrorCode:
    """The table entry; an unknown code gets INTERNAL_ERROR's meaning, as RFC 9113 asks."""
    known = ERROR_CODES.get(int(value))
    if known is not None:
        return known
    internal = ERROR_CODES[0x2]
    return ErrorCode(int(value), code_name(value),
                     "unknown error code, treated like INTERNAL_ERROR",
                     internal.causes, internal.fixes)


def parse_error_code(value: object) -> int:
    """Resolve a name (``"REFUSED_STREAM"``, case-insensitive), a number or ``"0x7"`` to an int.

    Any 32-bit number is allowed, known or not; anything else raises ``ValueError`` with a
    message that lists the names, so a scenario file gets a one-line explanation.
    """
    if isinstance(value, bool):
        raise ValueError(f"error code must be a name or a number, not {value!r}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str):
        text = value.strip()
        upper = text.upper()
        if upper in _BY_NAME:
            return _BY_NAME[upper]
        try:
            number = int(text, 0)
        except ValueError:
            names = ", ".join(sorted(_BY_NAME, key=_BY_NAME.__getitem__))
            raise ValueError(f"unknown error code {value!r}; use one of {names} "
                             "or a number") from None
    else:
        raise ValueError(f"error code must be a name or a number, not {value!r}")
    if not 0 <= number <= 0xFFFFFFFF:
        raise ValueError(f"error code {number} is outside 0..0xFFFFFFFF")
    return number


def setting_name(identifier: int) -> str:
    """The RFC name of a SETTINGS identifier, or ``UNKNOWN_SETTING(0x..)``."""
    return SETTINGS.get(int(identifier), f"UNKNOWN_SETTING(0x{int(identifier):x})")
