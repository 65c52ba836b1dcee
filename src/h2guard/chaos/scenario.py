"""Scenario files: TOML in, a validated :class:`~h2guard.chaos.model.Scenario` out.

A scenario is data (docs/architecture.md, principle 4): server settings plus an ordered list of
faults. A middlebox profile (``h2guard chaos --profile nginx``) is simply a scenario file packaged
in ``h2guard/chaos/profiles/``. Everything a file can say is shown here::

    name = "nginx"
    description = "nginx 1.22 defaults"
    source = "nginx docs: keepalive_requests 1000, keepalive_timeout 75s, http2_max_concu..."

    [settings]                      # -> ServerSettings, every key optional
    max_concurrent_streams = 128    # 0 .. 2**31-1
    initial_window_size = 65536     # 0 .. 2**31-1
    max_frame_size = 16384          # 16384 .. 16777215
    max_header_list_size = 65536    # 0 .. 2**32-1
    header_table_size = 4096        # 0 .. 2**32-1
    connection_window = 1048576     # 65535 .. 2**31-1

    [limits]                        # -> Limits: self-protection, on by default (real seconds,
    enabled = true                  #    never scaled); past a limit: GOAWAY(code), then close
    handshake_timeout = "10s"       # accept -> client preface + first SETTINGS
    idle_timeout = "5m"             # silence with no stream open; false: never
    max_resets_per_second = 200     # RST_STREAM from the peer (Rapid Reset)
    max_control_frames_per_second = 2000  # PING SETTINGS WINDOW_UPDATE PRIORITY empty DATA
    max_pending_output = 1048576    # bytes of acks queued for a peer that does not read
    max_header_list_size = 65536    # largest request header block (advertised)
    max_stream_buffer = 262144      # bytes of body one stream may hold in the server
    code = "ENHANCE_YOUR_CALM"

    [[faults]]
    kind = "rst_stream"             # see the kinds below
    code = "REFUSED_STREAM"         # a name (any case), a number, or "0x7"; unknown numbers allowed
    at = "request_headers"          # a moment: request_headers, request_end, after_app,
                                    #   response_headers, response_body
    after_bytes = 0                 # only with at = "response_body"
    name = "optional label"
    [faults.when]                   # -> Trigger; every condition given must hold
    probability = 0.2               # 0 .. 1
    every_nth_stream = 10           # >= 1
    after_requests = 5              # >= 1
    min_age = "2s"                  # connection age, a duration
    path = "/orders*"               # fnmatch glob on the path without the query string
    method = "POST"                 # case-insensitive
    headers = { "x-chaos" = "on" }  # lower-case names, glob values
    max_fires = 100                 # >= 1

    [[faults]]
    kind = "goaway"
    mode = "drain"                  # graceful | drain | abrupt
    code = "NO_ERROR"
    debug = "shutting down"         # UTF-8 text, at most 16376 bytes
    drain_delay = "5s"              # only with mode = "drain"
    close_after = "1s"              # FIN this long after the final GOAWAY
    process_above = false           # true: still run the app for streams above last_stream_id
                                    #   (a real server bug: Node.js session.goaway(0, id))
    # last_stream_id = 1            # only with mode = "abrupt"
    at = "request_headers"
    when = { every_nth_stream = 100 }

    [[faults]]
    kind = "idle_timeout"           # at most one per scenario
    after = "75s"
    action = "goaway"               # goaway | fin | rst | blackhole
    ping_resets = true
    only_without_streams = true
    code = "NO_ERROR"               # the GOAWAY's code: only with action = "goaway"

    [[faults]]
    kind = "max_age"                # at most one per scenario
    after = "10m"
    action = "goaway"
    jitter = 0.1                    # a fraction, 0 .. 1
    code = 0

    [[faults]]
    kind = "max_concurrent_streams" # at most one per scenario
    limit = 128
    enforce = true
    lower_to = 4                    # below limit; needs exactly one of the next two
    lower_after_requests = 50
    # lower_after = "30s"

    [[faults]]
    kind = "request_cap"            # at most one per scenario
    max_requests = 1000
    code = "NO_ERROR"
    close_after = "1s"

    [[faults]]
    kind = "flow_control"
    withhold_updates = "3s"
    error = false
    overrun = false                 # error and overrun exclude each other
    at = "request_end"

    [[faults]]
    kind = "delay"
    duration = "250ms"
    jitter = "50ms"
    at = "response_body"
    after_bytes = 1024

    [[faults]]
    kind = "enhance_your_calm"      # shorthand: RST_STREAM ENHANCE_YOUR_CALM (0xb); with
    scope = "connection"            # scope = "connection" a graceful GOAWAY with that code
    when = { probability = 0.01 }

    [[faults]]
    kind = "http_1_1_required"      # shorthand: RST_STREAM HTTP_1_1_REQUIRED at request_headers
    when = { path = "/legacy/*" }

Keys map one to one onto the dataclass fields in :mod:`h2guard.chaos.model`; a missing key
takes the dataclass default. Durations are a number of seconds or a string with a unit (``ms``,
``s``, ``m`` or ``min``, ``h``), e.g. ``"250ms"``, ``"1.5m"``, ``"1m30s"``; they may not be
negative. A value the fault would ignore (``after_bytes`` before the response body,
``drain_delay`` outside ``mode = "drain"``, ``last_stream_id`` outside ``mode = "abrupt"``, a
``code`` for an idle action that sends no GOAWAY) is an error rather than silently dropped.

Every problem raises :class:`ScenarioError`, a ``ValueError`` whose message is one line naming
the file, the field and the problem::

    scenario.toml: faults[2].code: unknown error code 'REFUSD'; use one of NO_ERROR, ... or a number

:func:`fault_to_dict` and :func:`scenario_to_dict` turn the records back into JSON-able dicts
that :func:`parse_fault` and :func:`parse_scenario` read back to equal records (the HTTP control
API speaks this form).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
import math
import os
import re
import tomllib
from collections.abc import Callable, Collection, Mapping
from datetime import date, datetime, time
from typing import Literal, TypeVar

from h2guard.chaos.model import (
    MOMENTS,
    Delay,
    Fault,
    FlowControl,
    GoAway,
    IdleAction,
    IdleTimeout,
    Limits,
    MaxAge,
    MaxConcurrentStreams,
    Moment,
    RequestCap,
    RstStream,
    Scenario,
    ServerSettings,
    Trigger,
)
from h2guard.codes import ERROR_CODES, parse_error_code

__all__ = [
    "KINDS",
    "ScenarioError",
    "fault_to_dict",
    "list_profiles",
    "load_profile",
    "load_scenario",
    "parse_duration",
    "parse_fault",
    "parse_scenario",
    "profile_names",
    "resolve",
    "scenario_to_dict",
]

_T = TypeVar("_T")

PROFILES_PACKAGE = "h2guard.chaos.profiles"

_MAX_STREAM_ID = 2**31 - 1
_MAX_WINDOW = 2**31 - 1
_MAX_SETTING = 2**32 - 1
_MAX_COUNT = 2**63 - 1
_MAX_DURATION = 1e9  # seconds (about 31 years): anything larger is a typo
_MAX_DEBUG_BYTES = 16384 - 8  # GOAWAY payload in the smallest legal frame, minus the 8 fixed bytes

_MOMENT_BY_NAME: dict[str, Moment] = {m: m for m in MOMENTS}
_ACTIONS: dict[str, IdleAction] = {
    "goaway": "goaway", "fin": "fin", "rst": "rst", "blackhole": "blackhole"}
_GoAwayMode = Literal["graceful", "drain", "abrupt"]
_GOAWAY_MODES: dict[str, _GoAwayMode] = {
    "graceful": "graceful", "drain": "drain", "abrupt": "abrupt"}

_TRIGGER_KEYS = ("probability", "every_nth_stream", "after_requests", "min_age", "path",
                 "method", "headers", "max_fires")
_RST_KEYS = ("kind", "code", "at", "after_bytes", "when", "name")
_GOAWAY_KEYS = ("kind", "mode", "code", "debug", "last_stream_id", "drain_delay", "close_after",
                "process_above", "at", "when", "name")
_KIND_KEYS: dict[str, tuple[str, ...]] = {
    "rst_stream": _RST_KEYS,
    "goaway": _GOAWAY_KEYS,
    "idle_timeout": ("kind", "after", "action", "ping_resets", "only_without_streams", "code",
                     "name"),
    "max_age": ("kind", "after", "action", "jitter", "code", "name"),
    "max_concurrent_streams": ("kind", "limit", "enforce", "lower_to", "lower_after_requests",
                               "lower_after", "name"),
    "request_cap": ("kind", "max_requests", "code", "close_after", "name"),
    "flow_control": ("kind", "withhold_updates", "error", "overrun", "at", "when", "name"),
    "delay": ("kind", "duration", "jitter", "at", "after_bytes", "when", "name"),
    "enhance_your_calm": ("kind", "scope", "at", "after_bytes", "when", "name"),
    "http_1_1_required": ("kind", "at", "after_bytes", "when", "name"),
}
KINDS: tuple[str, ...] = tuple(_KIND_KEYS)
"""Every ``kind`` a fault table may name: the model's kinds plus the two shorthands."""

_SINGLETON_KINDS = ("idle_timeout", "max_age", "max_concurrent_streams", "request_cap")
_SCENARIO_KEYS = ("name", "description", "source", "settings", "limits", "faults")
_LIMIT_KEYS = ("enabled", "handshake_timeout", "idle_timeout", "max_resets_per_second",
               "max_control_frames_per_second", "max_pending_output", "max_header_list_size",
               "max_stream_buffer", "code")
_SETTINGS_LIMITS: dict[str, tuple[int, int]] = {
    "max_concurrent_streams": (0, _MAX_STREAM_ID),
    "initial_window_size": (0, _MAX_WINDOW),
    "max_frame_size": (16384, 16777215),
    "max_header_list_size": (0, _MAX_SETTING),
    "header_table_size": (0, _MAX_SETTING),
    "connection_window": (65535, _MAX_WINDOW),
}

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER_NAME = re.compile(r":?[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_NUMBER = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_UNIT = r"(?:ms|s|min|m|h)"
_DURATION_SINGLE = re.compile(rf"({_NUMBER}(?:[eE][+-]?[0-9]+)?)\s*({_UNIT})?")
_DURATION_COMPOUND = re.compile(rf"(?:{_NUMBER}\s*{_UNIT}\s*)+")
_DURATION_PART = re.compile(rf"({_NUMBER})\s*({_UNIT})")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


# --------------------------------------------------------------------------------------------
# the error


class ScenarioError(ValueError):
    """A scenario, fault or profile that cannot be used. ``str()`` is one line:
    ``<origin>: <field path>: <problem>``, leaving out the parts that are not known.

    ``origin`` is the file (or ``<scenario>``), ``path`` the field (``faults[2].code``) and
    ``problem`` what is wrong with it.
    """

    def __init__(self, problem: str, *, origin: str | None = None,
                 path: str | None = None) -> None:
        self.problem = problem
        self.origin = origin
        self.path = path
        parts = [part for part in (origin, path) if part]
        super().__init__(_one_line(": ".join([*parts, problem])))


def _one_line(text: str) -> str:
    """Escape every non-printable character (newlines included), so a message is one line."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def _fail(path: str, problem: str) -> ScenarioError:
    return ScenarioError(problem, path=path or None)


def _with_origin(error: ScenarioError, origin: str | None) -> ScenarioError:
    return ScenarioError(error.problem, origin=origin, path=error.path)


# --------------------------------------------------------------------------------------------
# showing values and paths in messages


def _type_name(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, datetime):
        return "a date-time"
    if isinstance(value, date):
        return "a date"
    if isinstance(value, time):
        return "a time"
    if value is None:
        return "null"
    return f"a {type(value).__name__}"


def _show(value: object) -> str:
    """A short, safe rendering of a user's value for a message (never a huge or nested one)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value) if value.bit_length() <= 64 else "a very large integer"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    return _type_name(value)


def _got(value: object) -> str:
    """``a string 'x'`` / ``a table``: the type, and the value when it is short."""
    if isinstance(value, bool | int | float | str):
        return f"{_type_name(value)} {_show(value)}"
    return _type_name(value)


def _join(path: str, key: str) -> str:
    if len(key) > 60:
        key = key[:57] + "..."
    shown = key if _BARE_KEY.fullmatch(key) else _quote(key)
    return f"{path}.{shown}" if path else shown


def _quote(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in escaped) + '"'


def _index(path: str, i: int) -> str:
    return f"{path}[{i}]"


def _suggest(word: str, choices: Collection[str]) -> str | None:
    if len(word) > 100:
        return None
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    if not matches:
        matches = difflib.get_close_matches(word.lower(), list(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None


def _did_you_mean(word: str, choices: Collection[str]) -> str:
    """`` (did you mean 'x'?)`` for a close match, else ``""``."""
    match = _suggest(word, choices)
    return f" (did you mean {match!r}?)" if match is not None else ""


# --------------------------------------------------------------------------------------------
# scalar converters: (value, path) -> checked value, or raise ScenarioError


def _table(value: object, path: str) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        raise _fail(path, f"expected a table, got {_got(value)}")
    for key in value:
        if not isinstance(key, str):
            raise _fail(path, f"table keys must be strings, got {_got(key)}")
    return value


def _int(value: object, path: str, *, minimum: int, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        hint = ""
        if isinstance(value, str) and value.strip().isdigit() and len(value) < 30:
            hint = f" (write {value.strip()} without quotes)"
        elif isinstance(value, float) and value.is_integer():
            hint = f" (write {int(value)} without the decimal point)"
        raise _fail(path, f"expected an integer, got {_got(value)}{hint}")
    if value < minimum:
        raise _fail(path, f"must be at least {minimum}, got {_show(value)}")
    if value > maximum:
        raise _fail(path, f"must be at most {maximum}, got {_show(value)}")
    return value


def _count(value: object, path: str) -> int:
    return _int(value, path, minimum=1, maximum=_MAX_COUNT)


def _fraction(value: object, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(path, f"expected a number from 0 to 1, got {_got(value)}")
    number = float(value) if isinstance(value, float) or abs(value) <= 2 else 2.0
    if not 0.0 <= number <= 1.0:
        raise _fail(path, f"must be between 0 and 1, got {_show(value)}")
    return number


def parse_duration(value: object, path: str) -> float:
    """A duration as a scenario file writes it (``2``, ``0.5``, ``"250ms"``, ``"1m30s"``), in
    seconds; :class:`ScenarioError` naming ``path`` otherwise. Other files that embed
    scenario-style settings (the bench's ``[bench]`` table) use it to read the same way."""
    return _duration(value, path)


def _duration(value: object, path: str, *, positive: bool = False) -> float:
    """A number of seconds, or a string such as ``"250ms"``, ``"2s"``, ``"1.5m"``, ``"1m30s"``."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _fail(path, 'expected a duration (seconds, or a string such as "250ms", "2s", '
                          f'"1.5m", "1h"), got {_got(value)}')
    seconds: float
    if isinstance(value, int):
        if value < 0:
            raise _fail(path, f"negative durations are not allowed, got {_show(value)}")
        if value > _MAX_DURATION:
            raise _fail(path, f"duration {_show(value)} is too large (at most 1e9 seconds)")
        seconds = float(value)
    elif isinstance(value, float):
        seconds = value
    else:
        seconds = _parse_duration_text(value, path)
    seconds += 0.0  # -0.0 -> 0.0
    if math.isnan(seconds):
        raise _fail(path, "a duration cannot be NaN")
    if seconds < 0:
        raise _fail(path, f"negative durations are not allowed, got {_show(value)}")
    if seconds > _MAX_DURATION:
        raise _fail(path, f"duration {_show(value)} is too large (at most 1e9 seconds)")
    if positive and seconds == 0:
        raise _fail(path, "must be longer than 0 seconds")
    return seconds


def _parse_duration_text(value: str, path: str) -> float:
    text = value.strip()
    if text.startswith("-"):
        raise _fail(path, f"negative durations are not allowed, got {_show(value)}")
    text = text.removeprefix("+")
    single = _DURATION_SINGLE.fullmatch(text)
    if single is not None:
        number, unit = single.group(1), single.group(2) or "s"
        return _scale(float(number), unit)
    if _DURATION_COMPOUND.fullmatch(text) is not None:
        return sum(_scale(float(m.group(1)), m.group(2))
                   for m in _DURATION_PART.finditer(text))
    raise _fail(path, f"cannot read {_show(value)} as a duration; write seconds as a number "
                      'or a string with a unit: "250ms", "2s", "1.5m", "1h", "1m30s"')


def _scale(number: float, unit: str) -> float:
    if unit == "ms":
        return number / 1000.0
    return number * _UNIT_SECONDS[unit]


def _bool(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        hint = ""
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            hint = f" (write {value.strip().lower()} without quotes)"
        raise _fail(path, f"expected true or false, got {_got(value)}{hint}")
    return value


def _text(value: object, path: str, *, one_line: bool = True, empty: bool = True) -> str:
    if not isinstance(value, str):
        raise _fail(path, f"expected a string, got {_got(value)}")
    if not empty and not value.strip():
        raise _fail(path, "must not be empty")
    if one_line and not value.isprintable():
        raise _fail(path, "must be one line of printable text")
    return value


def _label(value: object, path: str) -> str:
    return _text(value, path)


def _choice(value: object, path: str, choices: Collection[str], what: str) -> str:
    if not isinstance(value, str):
        raise _fail(path, f"expected {what} (a string), got {_got(value)}")
    if value not in choices:
        raise _fail(path, f"unknown {what} {_show(value)}{_did_you_mean(value, choices)}; "
                          f"use one of {', '.join(choices)}")
    return value


def _moment(value: object, path: str) -> Moment:
    return _MOMENT_BY_NAME[_choice(value, path, _MOMENT_BY_NAME, "moment")]


def _action(value: object, path: str) -> IdleAction:
    return _ACTIONS[_choice(value, path, _ACTIONS, "action")]


def _code(value: object, path: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and not 0 <= value <= 0xFFFFFFFF:
        raise _fail(path, f"error code {_show(value)} is outside 0..0xFFFFFFFF")
    if isinstance(value, str) and len(value) > 40:
        raise _fail(path, f"unknown error code {_show(value)}; use a name such as "
                          "REFUSED_STREAM or a number")
    try:
        return parse_error_code(value)
    except ValueError as exc:
        names = [c.name for c in ERROR_CODES.values()]
        hint = _did_you_mean(value.strip().upper(), names) if isinstance(value, str) else ""
        raise _fail(path, f"{exc}{hint}") from None


# --------------------------------------------------------------------------------------------
# tables


class _Fields:
    """A table being read: typed getters that know the path of every key."""

    __slots__ = ("data", "path")

    def __init__(self, data: Mapping[str, object], path: str) -> None:
        self.data = data
        self.path = path

    def has(self, key: str) -> bool:
        return key in self.data

    def at(self, key: str) -> str:
        return _join(self.path, key)

    def get(self, key: str, convert: Callable[[object, str], _T], default: _T) -> _T:
        if key not in self.data:
            return default
        return convert(self.data[key], self.at(key))

    def opt(self, key: str, convert: Callable[[object, str], _T]) -> _T | None:
        if key not in self.data:
            return None
        return convert(self.data[key], self.at(key))

    def need(self, key: str, convert: Callable[[object, str], _T], what: str) -> _T:
        if key not in self.data:
            raise _fail(self.path, f"missing required key {key!r} ({what})")
        return convert(self.data[key], self.at(key))

    def check_keys(self, allowed: Collection[str], context: str,
                   others: Collection[str] = ()) -> None:
        """Reject the first unknown key, suggesting a close one; ``others`` are keys that are
        valid elsewhere (another kind), which get a "does not apply" message instead."""
        for key in self.data:
            if key in allowed:
                continue
            valid = ", ".join(allowed)
            if key in others:
                problem = f"{key!r} does not apply to {context}; its keys are: {valid}"
            else:
                problem = (f"unknown key {_show(key)}{_did_you_mean(key, allowed)}; "
                           f"valid keys for {context}: {valid}")
            raise _fail(self.at(key), problem)


_ALL_FAULT_KEYS = frozenset(k for keys in _KIND_KEYS.values() for k in keys)


def _trigger(value: object, path: str) -> Trigger:
    f = _Fields(_table(value, path), path)
    f.check_keys(_TRIGGER_KEYS, "a trigger (when)")
    return Trigger(
        probability=f.get("probability", _fraction, 1.0),
        every_nth_stream=f.opt("every_nth_stream", _count),
        after_requests=f.opt("after_requests", _count),
        min_age=f.opt("min_age", _duration),
        path=f.opt("path", _path_glob),
        method=f.opt("method", _method),
        headers=f.get("headers", _headers, ()),
        max_fires=f.opt("max_fires", _count),
    )


def _path_glob(value: object, path: str) -> str:
    text = _text(value, path, empty=False)
    if not text.startswith(("/", "*")):
        raise _fail(path, f"a path pattern starts with '/' (or a glob such as '*'), "
                          f"got {_show(text)}")
    return text


def _method(value: object, path: str) -> str:
    text = _text(value, path, empty=False)
    if _TOKEN.fullmatch(text) is None:
        raise _fail(path, f"{_show(text)} is not an HTTP method name")
    return text.upper()


def _headers(value: object, path: str) -> tuple[tuple[str, str], ...]:
    table = _table(value, path)
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    for key, glob in table.items():
        where = _join(path, key)
        if _HEADER_NAME.fullmatch(key) is None:
            raise _fail(where, f"{_show(key)} is not a header name")
        lower = key.lower()
        if lower in seen:
            raise _fail(where, f"header {lower!r} is given twice (names are case-insensitive)")
        seen.add(lower)
        pairs.append((lower, _text(glob, where)))
    return tuple(pairs)


def _settings(value: object, path: str) -> ServerSettings:
    f = _Fields(_table(value, path), path)
    f.check_keys(tuple(_SETTINGS_LIMITS), "[settings]")
    values: dict[str, int | None] = {}
    for key, (low, high) in _SETTINGS_LIMITS.items():
        values[key] = (_int(f.data[key], f.at(key), minimum=low, maximum=high)
                       if key in f.data else None)
    return ServerSettings(
        max_concurrent_streams=values["max_concurrent_streams"],
        initial_window_size=values["initial_window_size"],
        max_frame_size=values["max_frame_size"],
        max_header_list_size=values["max_header_list_size"],
        header_table_size=values["header_table_size"],
        connection_window=values["connection_window"],
    )


def _limits(value: object, path: str) -> Limits:
    f = _Fields(_table(value, path), path)
    f.check_keys(_LIMIT_KEYS, "[limits]")
    default = Limits()

    def rate(v: object, p: str) -> int:
        return _int(v, p, minimum=1, maximum=_MAX_COUNT)

    def size(v: object, p: str) -> int:
        return _int(v, p, minimum=1024, maximum=_MAX_SETTING)

    def idle(v: object, p: str) -> float | None:
        if v is False:
            return None
        return _duration(v, p, positive=True)

    return Limits(
        enabled=f.get("enabled", _bool, default.enabled),
        handshake_timeout=f.get("handshake_timeout",
                                lambda v, p: _duration(v, p, positive=True),
                                default.handshake_timeout),
        idle_timeout=f.get("idle_timeout", idle, default.idle_timeout),
        max_resets_per_second=f.get("max_resets_per_second", rate,
                                    default.max_resets_per_second),
        max_control_frames_per_second=f.get("max_control_frames_per_second", rate,
                                            default.max_control_frames_per_second),
        max_pending_output=f.get("max_pending_output", size, default.max_pending_output),
        max_header_list_size=f.opt("max_header_list_size",
                                   lambda v, p: _int(v, p, minimum=0, maximum=_MAX_SETTING)),
        max_stream_buffer=f.get("max_stream_buffer", size, default.max_stream_buffer),
        code=f.get("code", _code, default.code),
    )


# --------------------------------------------------------------------------------------------
# faults


def parse_fault(data: Mapping[str, object], *, where: str = "fault") -> Fault:
    """Validate one fault table (a ``[[faults]]`` entry, or a JSON object from the control API).

    ``where`` prefixes the field paths in error messages (``fault.code: ...``).
    """
    f = _Fields(_table(data, where), where)
    if not f.has("kind"):
        raise _fail(where, f"missing required key 'kind'; use one of {', '.join(KINDS)}")
    kind = _choice(f.data["kind"], f.at("kind"), KINDS, "kind")
    builder = _BUILDERS[kind]
    return builder(f, kind)


def _stream_common(f: _Fields, default_at: Moment) -> tuple[Moment, int, Trigger, str]:
    """``at``, ``after_bytes``, ``when`` and ``name`` of a per-stream fault (``after_bytes`` is
    0 for a kind without that key: ``check_keys`` has already rejected it there)."""
    at = f.get("at", _moment, default_at)
    after_bytes = f.get("after_bytes",
                        lambda v, p: _int(v, p, minimum=0, maximum=_MAX_COUNT), 0)
    if after_bytes and at != "response_body":
        raise _fail(f.at("after_bytes"),
                    f'after_bytes = {after_bytes} only applies with at = "response_body" '
                    f'(this fault fires at "{at}")')
    when = f.get("when", _trigger, Trigger())
    name = f.get("name", _label, "")
    return at, after_bytes, when, name


def _no_code(f: _Fields, kind: str, fixed: str) -> None:
    if f.has("code"):
        raise _fail(f.at("code"), f"kind {kind!r} always uses {fixed}; use kind 'rst_stream' "
                                  "or 'goaway' to choose another code")


def _build_rst_stream(f: _Fields, kind: str) -> Fault:
    f.check_keys(_RST_KEYS, "kind 'rst_stream'", _ALL_FAULT_KEYS)
    code = f.need("code", _code, "the RST_STREAM error code, e.g. \"REFUSED_STREAM\"")
    at, after_bytes, when, name = _stream_common(f, "request_headers")
    return RstStream(code=code, at=at, after_bytes=after_bytes, when=when, name=name)


def _build_enhance_your_calm(f: _Fields, kind: str) -> Fault:
    _no_code(f, kind, "ENHANCE_YOUR_CALM (0xb)")
    scope = f.get("scope", lambda v, p: _choice(v, p, ("stream", "connection"), "scope"),
                  "stream")
    if scope == "connection":
        allowed = (*(k for k in _GOAWAY_KEYS if k != "code"), "scope")
        f.check_keys(allowed, "kind 'enhance_your_calm' with scope 'connection'",
                     _ALL_FAULT_KEYS)
        return _goaway_from(f, code=0xB)
    for key in f.data:
        if key in _GOAWAY_KEYS and key not in _KIND_KEYS[kind]:
            raise _fail(f.at(key), f"{key!r} applies to a GOAWAY: add scope = \"connection\" "
                                   "(the default scope \"stream\" sends RST_STREAM)")
    f.check_keys(_KIND_KEYS[kind], "kind 'enhance_your_calm'", _ALL_FAULT_KEYS)
    at, after_bytes, when, name = _stream_common(f, "request_headers")
    return RstStream(code=0xB, at=at, after_bytes=after_bytes, when=when, name=name)


def _build_http_1_1_required(f: _Fields, kind: str) -> Fault:
    _no_code(f, kind, "HTTP_1_1_REQUIRED (0xd)")
    f.check_keys(_KIND_KEYS[kind], "kind 'http_1_1_required'", _ALL_FAULT_KEYS)
    at, after_bytes, when, name = _stream_common(f, "request_headers")
    return RstStream(code=0xD, at=at, after_bytes=after_bytes, when=when, name=name)


def _build_goaway(f: _Fields, kind: str) -> Fault:
    f.check_keys(_GOAWAY_KEYS, "kind 'goaway'", _ALL_FAULT_KEYS)
    return _goaway_from(f, code=f.get("code", _code, 0))


def _goaway_from(f: _Fields, *, code: int) -> GoAway:
    mode = _GOAWAY_MODES[f.get(
        "mode", lambda v, p: _choice(v, p, _GOAWAY_MODES, "GOAWAY mode"), "graceful")]
    debug_text = f.get("debug", lambda v, p: _text(v, p, one_line=False), "")
    try:
        debug = debug_text.encode("utf-8")
    except UnicodeEncodeError:
        raise _fail(f.at("debug"), "debug must be valid Unicode text (no lone surrogates)"
                    ) from None
    if len(debug) > _MAX_DEBUG_BYTES:
        raise _fail(f.at("debug"), f"debug is {len(debug)} bytes in UTF-8; a GOAWAY frame "
                                   f"carries at most {_MAX_DEBUG_BYTES}")
    last_stream_id = f.opt("last_stream_id",
                           lambda v, p: _int(v, p, minimum=0, maximum=_MAX_STREAM_ID))
    if last_stream_id is not None and mode != "abrupt":
        raise _fail(f.at("last_stream_id"),
                    f'last_stream_id only applies with mode = "abrupt" (mode is "{mode}")')
    drain_delay = f.get("drain_delay", _duration, 1.0)
    if f.has("drain_delay") and drain_delay != 1.0 and mode != "drain":
        raise _fail(f.at("drain_delay"),
                    f'drain_delay only applies with mode = "drain" (mode is "{mode}")')
    close_after = f.opt("close_after", _duration)
    process_above = f.get("process_above", _bool, False)
    at, _, when, name = _stream_common(f, "request_headers")
    return GoAway(mode=mode, code=code, debug=debug, last_stream_id=last_stream_id,
                  drain_delay=drain_delay, close_after=close_after,
                  process_above=process_above, at=at, when=when, name=name)


def _code_only_for_goaway(f: _Fields, action: IdleAction) -> int:
    code = f.get("code", _code, 0)
    if code and action != "goaway":
        raise _fail(f.at("code"), f'code only applies with action = "goaway" '
                                  f'(action is "{action}": no GOAWAY is sent)')
    return code


def _build_idle_timeout(f: _Fields, kind: str) -> Fault:
    f.check_keys(_KIND_KEYS[kind], "kind 'idle_timeout'", _ALL_FAULT_KEYS)
    after = f.need("after", lambda v, p: _duration(v, p, positive=True),
                   'the idle time, e.g. "60s"')
    action = f.get("action", _action, _ACTIONS["goaway"])
    return IdleTimeout(after=after, action=action,
                       ping_resets=f.get("ping_resets", _bool, True),
                       only_without_streams=f.get("only_without_streams", _bool, True),
                       code=_code_only_for_goaway(f, action), name=f.get("name", _label, ""))


def _build_max_age(f: _Fields, kind: str) -> Fault:
    f.check_keys(_KIND_KEYS[kind], "kind 'max_age'", _ALL_FAULT_KEYS)
    after = f.need("after", lambda v, p: _duration(v, p, positive=True),
                   'the connection age, e.g. "10m"')
    action = f.get("action", _action, _ACTIONS["goaway"])
    return MaxAge(after=after, action=action, jitter=f.get("jitter", _fraction, 0.0),
                  code=_code_only_for_goaway(f, action), name=f.get("name", _label, ""))


def _build_max_concurrent_streams(f: _Fields, kind: str) -> Fault:
    f.check_keys(_KIND_KEYS[kind], "kind 'max_concurrent_streams'", _ALL_FAULT_KEYS)

    def limit_of(v: object, p: str) -> int:
        return _int(v, p, minimum=0, maximum=_MAX_STREAM_ID)

    limit = f.need("limit", limit_of, "the advertised SETTINGS_MAX_CONCURRENT_STREAMS")
    lower_to = f.opt("lower_to", limit_of)
    lower_after_requests = f.opt("lower_after_requests", _count)
    lower_after = f.opt("lower_after", _duration)
    if lower_to is not None:
        if lower_to >= limit:
            raise _fail(f.at("lower_to"), f"lower_to ({lower_to}) must be below limit ({limit})")
        if lower_after_requests is None and lower_after is None:
            raise _fail(f.at("lower_to"), "lower_to needs lower_after_requests or lower_after "
                                          "(when to send the new SETTINGS)")
        if lower_after_requests is not None and lower_after is not None:
            raise _fail(f.at("lower_after"), "give lower_after_requests or lower_after, "
                                             "not both")
    else:
        for key in ("lower_after_requests", "lower_after"):
            if f.has(key):
                raise _fail(f.at(key), f"{key} needs lower_to (the new limit)")
    return MaxConcurrentStreams(limit=limit, enforce=f.get("enforce", _bool, True),
                                lower_to=lower_to, lower_after_requests=lower_after_requests,
                                lower_after=lower_after, name=f.get("name", _label, ""))


def _build_request_cap(f: _Fields, kind: str) -> Fault:
    f.check_keys(_KIND_KEYS[kind], "kind 'request_cap'", _ALL_FAULT_KEYS)
    return RequestCap(
        max_requests=f.need("max_requests", _count, "requests per connection, e.g. 1000"),
        code=f.get("code", _code, 0),
        close_after=f.opt("close_after", _duration),
        name=f.get("name", _label, ""))


def _build_flow_control(f: _Fields, kind: str) -> Fault:
    f.check_keys(_KIND_KEYS[kind], "kind 'flow_control'", _ALL_FAULT_KEYS)
    withhold = f.get("withhold_updates", _duration, 0.0)
    error = f.get("error", _bool, False)
    overrun = f.get("overrun", _bool, False)
    if error and overrun:
        raise _fail(f.at("overrun"), "error and overrun exclude each other: error resets the "
                                     "stream, overrun makes the client detect the violation")
    if not (withhold or error or overrun):
        raise _fail(f.path, "a flow_control fault does nothing without withhold_updates > 0, "
                            "error = true or overrun = true")
    at, _, when, name = _stream_common(f, "request_end")
    return FlowControl(withhold_updates=withhold, error=error, overrun=overrun, at=at,
                       when=when, name=name)


def _build_delay(f: _Fields, kind: str) -> Fault:
    f.check_keys(_KIND_KEYS[kind], "kind 'delay'", _ALL_FAULT_KEYS)
    duration = f.need("duration", _duration, 'how long to wait, e.g. "250ms"')
    jitter = f.get("jitter", _duration, 0.0)
    at, after_bytes, when, name = _stream_common(f, "response_headers")
    return Delay(duration=duration, jitter=jitter, at=at, after_bytes=after_bytes, when=when,
                 name=name)


_BUILDERS: dict[str, Callable[[_Fields, str], Fault]] = {
    "rst_stream": _build_rst_stream,
    "goaway": _build_goaway,
    "idle_timeout": _build_idle_timeout,
    "max_age": _build_max_age,
    "max_concurrent_streams": _build_max_concurrent_streams,
    "request_cap": _build_request_cap,
    "flow_control": _build_flow_control,
    "delay": _build_delay,
    "enhance_your_calm": _build_enhance_your_calm,
    "http_1_1_required": _build_http_1_1_required,
}


# --------------------------------------------------------------------------------------------
# scenarios


def parse_scenario(data: Mapping[str, object], *, origin: str = "<scenario>") -> Scenario:
    """Validate a decoded TOML table (or the equivalent JSON object) into a :class:`Scenario`.

    ``origin`` names the source in error messages. A missing ``name`` keeps the model's
    default (``"no-faults"``; :func:`load_scenario` uses the file's stem instead).
    """
    try:
        return _parse_scenario(data)
    except ScenarioError as exc:
        raise _with_origin(exc, origin) from None


def _parse_scenario(data: object) -> Scenario:
    f = _Fields(_table(data, ""), "")
    f.check_keys(_SCENARIO_KEYS, "a scenario")
    default = Scenario()
    name = f.get("name", lambda v, p: _text(v, p, empty=False), default.name)
    description = f.get("description", _label, "")
    source = f.get("source", lambda v, p: _text(v, p, one_line=False), "")
    settings = f.get("settings", _settings, ServerSettings())
    limits = f.get("limits", _limits, Limits())
    faults_value = f.data.get("faults", [])
    if not isinstance(faults_value, list | tuple):
        raise _fail("faults", f"expected an array of tables ([[faults]]), got "
                              f"{_got(faults_value)}")
    faults: list[Fault] = []
    first_of: dict[str, str] = {}
    for i, item in enumerate(faults_value):
        where = _index("faults", i)
        fault = parse_fault(_table(item, where), where=where)
        if fault.kind in _SINGLETON_KINDS:
            if fault.kind in first_of:
                raise _fail(where, f"a second {fault.kind} fault (the first is "
                                   f"{first_of[fault.kind]}); a scenario has at most one")
            first_of[fault.kind] = where
        faults.append(fault)
    advertised = settings.max_concurrent_streams
    for fault in faults:
        if (isinstance(fault, MaxConcurrentStreams) and advertised is not None
                and advertised != fault.limit):
            raise _fail("settings.max_concurrent_streams",
                        f"{advertised} conflicts with the max_concurrent_streams fault's limit "
                        f"({fault.limit}) in {first_of['max_concurrent_streams']}; give one")
    return Scenario(name=name, description=description, source=source, settings=settings,
                    faults=tuple(faults), limits=limits)


def _loads(text: str, origin: str) -> Mapping[str, object]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"invalid TOML: {exc}", origin=origin) from None
    except RecursionError:
        raise ScenarioError("invalid TOML: nested too deeply", origin=origin) from None


def load_scenario(path: str | os.PathLike[str]) -> Scenario:
    """Read, decode and validate a scenario file. A file without ``name`` is named after its
    stem (``slow-orders.toml`` -> ``slow-orders``). Every failure is a :class:`ScenarioError`."""
    origin = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise ScenarioError("no such file", origin=origin) from None
    except IsADirectoryError:
        raise ScenarioError("is a directory, not a scenario file", origin=origin) from None
    except OSError as exc:
        raise ScenarioError(f"cannot read: {exc.strerror or exc}", origin=origin) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ScenarioError(f"not UTF-8 text (byte {exc.start})", origin=origin) from None
    data = _loads(text, origin)
    scenario = parse_scenario(data, origin=origin)
    if "name" not in data:
        stem = os.path.splitext(os.path.basename(origin))[0]
        scenario = dataclasses.replace(scenario, name=stem or scenario.name)
    return scenario


# --------------------------------------------------------------------------------------------
# packaged middlebox profiles


def _profile_files() -> dict[str, str]:
    """Profile name -> TOML text, from the packaged ``profiles/*.toml``."""
    root = importlib.resources.files(PROFILES_PACKAGE)
    found: dict[str, str] = {}
    for entry in root.iterdir():
        if entry.name.endswith(".toml") and entry.is_file():
            found[entry.name.removesuffix(".toml")] = entry.read_text(encoding="utf-8")
    return dict(sorted(found.items()))


def profile_names() -> list[str]:
    """The names of the packaged profiles, sorted."""
    return list(_profile_files())


def load_profile(name: str) -> Scenario:
    """The packaged profile ``name`` (``"nginx"``, ``"aws-alb"``, ...)."""
    files = _profile_files()
    if not isinstance(name, str) or name not in files:
        shown = _show(name)
        hint = _did_you_mean(name, files) if isinstance(name, str) else ""
        raise ScenarioError(f"unknown profile {shown}{hint}; available: {', '.join(files)}")
    return _parse_profile(name, files[name])


def _parse_profile(name: str, text: str) -> Scenario:
    origin = f"profiles/{name}.toml"
    scenario = parse_scenario(_loads(text, origin), origin=origin)
    if scenario.name != name:
        raise ScenarioError(f"profile name {scenario.name!r} differs from the file name",
                            origin=origin, path="name")
    return scenario


def list_profiles() -> list[Scenario]:
    """Every packaged profile, sorted by name."""
    return [_parse_profile(name, text) for name, text in _profile_files().items()]


def resolve(profile: str | None, scenario_path: str | None) -> Scenario:
    """What the CLI runs: ``--profile NAME``, ``--scenario FILE``, or neither (no faults)."""
    if profile is not None and scenario_path is not None:
        raise ScenarioError("give a profile or a scenario file, not both")
    if profile is not None:
        return load_profile(profile)
    if scenario_path is not None:
        return load_scenario(scenario_path)
    return Scenario()


# --------------------------------------------------------------------------------------------
# back to plain data


def _code_out(code: int) -> object:
    known = ERROR_CODES.get(code)
    return known.name if known is not None else code


def _trigger_to_dict(trigger: Trigger) -> dict[str, object]:
    out: dict[str, object] = {}
    for fld in dataclasses.fields(trigger):
        value = getattr(trigger, fld.name)
        if value is None:
            continue
        out[fld.name] = dict(value) if fld.name == "headers" else value
    return out


def fault_to_dict(fault: Fault) -> dict[str, object]:
    """A JSON-able dict that :func:`parse_fault` reads back to an equal fault: ``kind`` first,
    codes as names when known, ``debug`` as text, ``None`` fields left out."""
    out: dict[str, object] = {"kind": fault.kind}
    for fld in dataclasses.fields(fault):
        key = fld.name
        value = getattr(fault, key)
        if key == "kind" or value is None:
            continue
        if isinstance(value, Trigger):
            out[key] = _trigger_to_dict(value)
        elif key == "code" and isinstance(value, int):
            out[key] = _code_out(value)
        elif isinstance(value, bytes):
            out[key] = value.decode("utf-8", errors="replace")
        elif not _ignored(fault, key, value):
            out[key] = value
    return out


def _ignored(fault: Fault, key: str, value: object) -> bool:
    """Values the fault ignores, left out so that the parser (which rejects them) reads the
    dict back: a GOAWAY's drain_delay outside drain mode, an after_bytes of 0."""
    if isinstance(fault, GoAway) and key == "drain_delay":
        return fault.mode != "drain"
    return key == "after_bytes" and value == 0


def scenario_to_dict(scenario: Scenario) -> dict[str, object]:
    """A JSON-able dict that :func:`parse_scenario` reads back to an equal scenario."""
    settings = {fld.name: getattr(scenario.settings, fld.name)
                for fld in dataclasses.fields(scenario.settings)
                if getattr(scenario.settings, fld.name) is not None}
    limits: dict[str, object] = {}
    for fld in dataclasses.fields(scenario.limits):
        value = getattr(scenario.limits, fld.name)
        if value is None:
            value = False if fld.name == "idle_timeout" else None
        if value is None:
            continue
        limits[fld.name] = _code_out(value) if fld.name == "code" else value
    return {
        "name": scenario.name,
        "description": scenario.description,
        "source": scenario.source,
        "settings": settings,
        "limits": limits,
        "faults": [fault_to_dict(fault) for fault in scenario.faults],
    }
