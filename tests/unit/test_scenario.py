"""Scenario files and middlebox profiles: parsing, every error path, round trips, fuzzing."""

from __future__ import annotations

import dataclasses
import json
import math
import textwrap
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from h2guard.chaos import model, scenario
from h2guard.chaos.model import (
    Delay,
    FlowControl,
    GoAway,
    IdleTimeout,
    MaxAge,
    MaxConcurrentStreams,
    RequestCap,
    RstStream,
    Scenario,
    ServerSettings,
    Trigger,
)
from h2guard.chaos.scenario import (
    ScenarioError,
    fault_to_dict,
    list_profiles,
    load_profile,
    load_scenario,
    parse_fault,
    parse_scenario,
    resolve,
    scenario_to_dict,
)

REQUIRED_PROFILES = ("aws-alb", "aws-nlb", "gcp-lb", "azure-lb", "nginx", "haproxy", "envoy",
                     "nghttpx", "cloudflare")


def toml(text: str) -> Scenario:
    return parse_scenario(tomllib.loads(textwrap.dedent(text)), origin="test.toml")


def fault(text: str) -> model.Fault:
    """The single fault of a ``[[faults]]`` snippet."""
    parsed = toml(text)
    assert len(parsed.faults) == 1
    return parsed.faults[0]


def error_of(text: str) -> str:
    with pytest.raises(ScenarioError) as info:
        toml(text)
    message = str(info.value)
    assert len(message.splitlines()) == 1
    return message


# ------------------------------------------------------------------------------------------
# good files


def test_empty_scenario() -> None:
    assert parse_scenario({}) == Scenario()
    assert resolve(None, None) == Scenario()


def test_top_level_and_settings() -> None:
    parsed = toml("""
        name = "tight"
        description = "a tight server"
        source = "made up"
        [settings]
        max_concurrent_streams = 4
        initial_window_size = 0
        max_frame_size = 16777215
        max_header_list_size = 8192
        header_table_size = 0
        connection_window = 65535
    """)
    assert parsed == Scenario(
        name="tight", description="a tight server", source="made up",
        settings=ServerSettings(max_concurrent_streams=4, initial_window_size=0,
                                max_frame_size=16777215, max_header_list_size=8192,
                                header_table_size=0, connection_window=65535))


def test_rst_stream_with_full_trigger() -> None:
    got = fault("""
        [[faults]]
        kind = "rst_stream"
        code = "refused_stream"
        at = "response_body"
        after_bytes = 100
        name = "refuse orders"
        [faults.when]
        probability = 0.2
        every_nth_stream = 10
        after_requests = 5
        min_age = "2s"
        path = "/orders*"
        method = "post"
        headers = { "X-Chaos" = "on", ":authority" = "*.example" }
        max_fires = 100
    """)
    assert got == RstStream(
        code=0x7, at="response_body", after_bytes=100, name="refuse orders",
        when=Trigger(probability=0.2, every_nth_stream=10, after_requests=5, min_age=2.0,
                     path="/orders*", method="POST",
                     headers=(("x-chaos", "on"), (":authority", "*.example")), max_fires=100))


def test_rst_stream_defaults() -> None:
    assert fault('[[faults]]\nkind = "rst_stream"\ncode = 8') == RstStream(code=0x8)


def test_goaway_modes() -> None:
    assert fault("""
        [[faults]]
        kind = "goaway"
        mode = "drain"
        code = "0x0"
        debug = "bye \u00e9"
        drain_delay = "5s"
        close_after = 1
        at = "after_app"
        when = { every_nth_stream = 3 }
    """) == GoAway(mode="drain", code=0, debug="bye \u00e9".encode(), drain_delay=5.0,
                   close_after=1.0, at="after_app", when=Trigger(every_nth_stream=3))
    assert fault("""
        [[faults]]
        kind = "goaway"
        mode = "abrupt"
        code = "INTERNAL_ERROR"
        last_stream_id = 0
    """) == GoAway(mode="abrupt", code=2, last_stream_id=0)
    assert fault('[[faults]]\nkind = "goaway"') == GoAway()


def test_idle_timeout_and_max_age() -> None:
    assert fault("""
        [[faults]]
        kind = "idle_timeout"
        after = "1.5m"
        action = "goaway"
        ping_resets = false
        only_without_streams = false
        code = "ENHANCE_YOUR_CALM"
    """) == IdleTimeout(after=90.0, ping_resets=False, only_without_streams=False, code=0xB)
    assert fault("""
        [[faults]]
        kind = "max_age"
        after = "1h"
        action = "rst"
        jitter = 0.1
    """) == MaxAge(after=3600.0, action="rst", jitter=0.1)


def test_max_concurrent_streams_and_request_cap() -> None:
    assert fault("""
        [[faults]]
        kind = "max_concurrent_streams"
        limit = 100
        enforce = false
        lower_to = 1
        lower_after_requests = 50
    """) == MaxConcurrentStreams(limit=100, enforce=False, lower_to=1, lower_after_requests=50)
    assert fault('[[faults]]\nkind = "max_concurrent_streams"\nlimit = 0') == (
        MaxConcurrentStreams(limit=0))
    assert fault("""
        [[faults]]
        kind = "request_cap"
        max_requests = 1
        code = 0
        close_after = "0s"
    """) == RequestCap(max_requests=1, close_after=0.0)


def test_lower_to_zero() -> None:
    got = fault("""
        [[faults]]
        kind = "max_concurrent_streams"
        limit = 10
        lower_to = 0
        lower_after = "250ms"
    """)
    assert got == MaxConcurrentStreams(limit=10, lower_to=0, lower_after=0.25)


def test_flow_control_and_delay() -> None:
    assert fault("""
        [[faults]]
        kind = "flow_control"
        withhold_updates = "3s"
        overrun = true
        at = "response_headers"
    """) == FlowControl(withhold_updates=3.0, overrun=True, at="response_headers")
    assert fault('[[faults]]\nkind = "flow_control"\nerror = true') == FlowControl(error=True)
    assert fault("""
        [[faults]]
        kind = "delay"
        duration = "250ms"
        jitter = 0.05
        at = "response_body"
        after_bytes = 1024
    """) == Delay(duration=0.25, jitter=0.05, at="response_body", after_bytes=1024)


def test_shorthand_kinds() -> None:
    assert fault('[[faults]]\nkind = "enhance_your_calm"') == RstStream(code=0xB)
    assert fault("""
        [[faults]]
        kind = "enhance_your_calm"
        scope = "stream"
        at = "after_app"
        when = { probability = 0.5 }
    """) == RstStream(code=0xB, at="after_app", when=Trigger(probability=0.5))
    assert fault("""
        [[faults]]
        kind = "enhance_your_calm"
        scope = "connection"
        debug = "calm down"
    """) == GoAway(code=0xB, mode="graceful", debug=b"calm down")
    assert fault('[[faults]]\nkind = "http_1_1_required"') == RstStream(code=0xD,
                                                                          at="request_headers")


def test_docstring_example_parses() -> None:
    doc = scenario.__doc__
    assert doc is not None
    block = doc.split("::\n", 1)[1].split("\nKeys map", 1)[0]
    parsed = parse_scenario(tomllib.loads(textwrap.dedent(block)))
    assert parsed.name == "nginx"
    kinds = [f.kind for f in parsed.faults]
    assert kinds == ["rst_stream", "goaway", "idle_timeout", "max_age", "max_concurrent_streams",
                     "request_cap", "flow_control", "delay", "goaway", "rst_stream"]
    assert parse_scenario(scenario_to_dict(parsed)) == parsed


@pytest.mark.parametrize(("text", "seconds"), [
    (0, 0.0), (2, 2.0), (0.5, 0.5), ("250ms", 0.25), ("2s", 2.0), ("1.5m", 90.0),
    ("1h", 3600.0), ("350s", 350.0), ("3", 3.0), (" 2 s ", 2.0), ("1m30s", 90.0),
    ("1h 1m 1s", 3661.0), ("2min", 120.0), ("1e3ms", 1.0), (".5s", 0.5), ("+4s", 4.0),
])
def test_durations(text: object, seconds: float) -> None:
    got = parse_fault({"kind": "delay", "duration": text})
    assert isinstance(got, Delay)
    assert got.duration == pytest.approx(seconds)


@pytest.mark.parametrize(("code", "value"), [
    ("REFUSED_STREAM", 7), ("refused_stream", 7), (" Cancel ", 8), (7, 7), ("0x7", 7),
    ("0xd", 0xD), ("13", 13), (0xFFFFFFFF, 0xFFFFFFFF), ("0x1234", 0x1234), (0, 0),
])
def test_codes(code: object, value: int) -> None:
    got = parse_fault({"kind": "rst_stream", "code": code})
    assert isinstance(got, RstStream)
    assert got.code == value


def test_load_scenario_file_and_default_name(tmp_path: Path) -> None:
    path = tmp_path / "slow-orders.toml"
    path.write_text('[[faults]]\nkind = "delay"\nduration = "2s"\n', encoding="utf-8")
    loaded = load_scenario(path)
    assert loaded.name == "slow-orders"
    assert loaded.faults == (Delay(duration=2.0),)
    assert resolve(None, str(path)) == loaded
    named = tmp_path / "x.toml"
    named.write_text('name = "given"\n', encoding="utf-8")
    assert load_scenario(str(named)).name == "given"


# ------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize(("text", "expected"), [
    # unknown kind, with and without a suggestion
    ('[[faults]]\nkind = "go_away"',
     "test.toml: faults[0].kind: unknown kind 'go_away' (did you mean 'goaway'?); use one of "
     "rst_stream, goaway, "),
    ('[[faults]]\nkind = "explode"', "faults[0].kind: unknown kind 'explode'; use one of"),
    ("[[faults]]\ncode = 7", "faults[0]: missing required key 'kind'"),
    ('[[faults]]\nkind = 7', "faults[0].kind: expected kind (a string), got an integer 7"),
    # unknown keys
    ('[[faults]]\nkind = "rst_stream"\ncode = 7\n[faults.when]\nprobabilty = 0.5',
     "faults[0].when.probabilty: unknown key 'probabilty' (did you mean 'probability'?); "
     "valid keys for a trigger (when): probability, every_nth_stream, "),
    ('[[faults]]\nkind = "rst_stream"\ncode = 7\ncodes = 1',
     "faults[0].codes: unknown key 'codes' (did you mean 'code'?); valid keys for kind "
     "'rst_stream': kind, code, at, after_bytes, when, name"),
    ('[[faults]]\nkind = "rst_stream"\ncode = 7\nzzz = 1',
     "faults[0].zzz: unknown key 'zzz'; valid keys for kind 'rst_stream': kind, code, at, "),
    ('[[faults]]\nkind = "rst_stream"\ncode = 7\nmode = "drain"',
     "faults[0].mode: 'mode' does not apply to kind 'rst_stream'; its keys are: kind, code, "),
    ('[[faults]]\nkind = "idle_timeout"\nafter = 1\nwhen = {}',
     "faults[0].when: 'when' does not apply to kind 'idle_timeout'"),
    ('[[fault]]\nkind = "rst_stream"', "test.toml: fault: unknown key 'fault' (did you mean "
                                       "'faults'?); valid keys for a scenario: name, "),
    ("[settings]\nmax_concurent_streams = 1",
     "settings.max_concurent_streams: unknown key 'max_concurent_streams' (did you mean "
     "'max_concurrent_streams'?); valid keys for [settings]: "),
    ('[[faults]]\nkind = "rst_stream"\ncode = 7\nwhen = { headers = { "bad name" = "x" } }',
     "faults[0].when.headers.\"bad name\": 'bad name' is not a header name"),
    # codes
    ('[[faults]]\nkind = "rst_stream"\ncode = "REFUSD"',
     "test.toml: faults[0].code: unknown error code 'REFUSD'; use one of NO_ERROR, "),
    ('[[faults]]\nkind = "rst_stream"\ncode = "REFUSD"',
     "or a number (did you mean 'REFUSED_STREAM'?)"),
    ('[[faults]]\nkind = "rst_stream"\ncode = -1', "faults[0].code: error code -1 is outside"),
    ('[[faults]]\nkind = "rst_stream"\ncode = 0x100000000', "is outside 0..0xFFFFFFFF"),
    ('[[faults]]\nkind = "rst_stream"\ncode = true', "faults[0].code: error code must be"),
    ('[[faults]]\nkind = "rst_stream"\ncode = 7.0', "faults[0].code: error code must be"),
    ('[[faults]]\nkind = "rst_stream"', "faults[0]: missing required key 'code'"),
    ('[[faults]]\nkind = "enhance_your_calm"\ncode = 1',
     "faults[0].code: kind 'enhance_your_calm' always uses ENHANCE_YOUR_CALM"),
    ('[[faults]]\nkind = "http_1_1_required"\ncode = 1',
     "faults[0].code: kind 'http_1_1_required' always uses HTTP_1_1_REQUIRED"),
    # durations
    ('[[faults]]\nkind = "delay"\nduration = "-2s"',
     "faults[0].duration: negative durations are not allowed"),
    ('[[faults]]\nkind = "delay"\nduration = -0.5', "negative durations are not allowed"),
    ('[[faults]]\nkind = "delay"\nduration = "2 parsecs"',
     "faults[0].duration: cannot read '2 parsecs' as a duration"),
    ('[[faults]]\nkind = "delay"\nduration = "1m30"', "cannot read '1m30' as a duration"),
    ('[[faults]]\nkind = "delay"\nduration = nan', "a duration cannot be NaN"),
    ('[[faults]]\nkind = "delay"\nduration = inf', "is too large"),
    ('[[faults]]\nkind = "delay"\nduration = "1e999s"', "is too large"),
    ('[[faults]]\nkind = "delay"\nduration = true', "faults[0].duration: expected a duration"),
    ('[[faults]]\nkind = "delay"\nduration = 1979-05-27',
     "expected a duration (seconds, or a string such as \"250ms\", \"2s\", \"1.5m\", \"1h\"), "
     "got a date"),
    ('[[faults]]\nkind = "idle_timeout"\nafter = 0', "faults[0].after: must be longer than 0"),
    ('[[faults]]\nkind = "delay"', "faults[0]: missing required key 'duration'"),
    # types: bool is not int, float is not int
    ('[[faults]]\nkind = "request_cap"\nmax_requests = true',
     "faults[0].max_requests: expected an integer, got a boolean true"),
    ('[[faults]]\nkind = "request_cap"\nmax_requests = 10.0',
     "expected an integer, got a float 10.0 (write 10 without the decimal point)"),
    ('[[faults]]\nkind = "request_cap"\nmax_requests = "10"',
     "expected an integer, got a string '10' (write 10 without quotes)"),
    ('[[faults]]\nkind = "max_concurrent_streams"\nlimit = 1\nenforce = "yes"',
     "faults[0].enforce: expected true or false, got a string 'yes'"),
    ('[[faults]]\nkind = "max_concurrent_streams"\nlimit = 1\nenforce = 1',
     "faults[0].enforce: expected true or false, got an integer 1"),
    ('[[faults]]\nkind = "delay"\nduration = 1\nwhen = { probability = true }',
     "faults[0].when.probability: expected a number from 0 to 1, got a boolean true"),
    ("faults = 3", "test.toml: faults: expected an array of tables ([[faults]])"),
    ("faults = [3]", "test.toml: faults[0]: expected a table, got an integer 3"),
    ("settings = 3", "settings: expected a table, got an integer 3"),
    ("name = 3", "name: expected a string, got an integer 3"),
    ('name = ""', "name: must not be empty"),
    ('description = "two\\nlines"', "description: must be one line of printable text"),
    # ranges
    ('[[faults]]\nkind = "delay"\nduration = 1\nwhen = { probability = 1.5 }',
     "faults[0].when.probability: must be between 0 and 1, got 1.5"),
    ('[[faults]]\nkind = "delay"\nduration = 1\nwhen = { probability = -0.1 }',
     "must be between 0 and 1"),
    ('[[faults]]\nkind = "delay"\nduration = 1\nwhen = { probability = nan }',
     "must be between 0 and 1, got nan"),
    ('[[faults]]\nkind = "delay"\nduration = 1\nwhen = { every_nth_stream = 0 }',
     "faults[0].when.every_nth_stream: must be at least 1, got 0"),
    ('[[faults]]\nkind = "delay"\nduration = 1\nwhen = { max_fires = -3 }',
     "must be at least 1"),
    ('[[faults]]\nkind = "delay"\nduration = 1\nwhen = { after_requests = 0 }',
     "must be at least 1"),
    ('[[faults]]\nkind = "delay"\nduration = 1\nwhen = { path = "orders" }',
     "faults[0].when.path: a path pattern starts with '/'"),
    ('[[faults]]\nkind = "delay"\nduration = 1\nwhen = { method = "PO ST" }',
     "faults[0].when.method: 'PO ST' is not an HTTP method name"),
    ('[[faults]]\nkind = "delay"\nduration = 1\nwhen = { headers = { a = "1", A = "2" } }',
     "faults[0].when.headers.A: header 'a' is given twice"),
    ('[[faults]]\nkind = "max_concurrent_streams"\nlimit = -1', "faults[0].limit: must be at "
                                                               "least 0, got -1"),
    ('[[faults]]\nkind = "max_concurrent_streams"\nlimit = 2147483648',
     "must be at most 2147483647, got 2147483648"),
    ('[[faults]]\nkind = "request_cap"\nmax_requests = 0', "faults[0].max_requests: must be at "
                                                           "least 1"),
    ('[[faults]]\nkind = "max_age"\nafter = 1\njitter = 2', "faults[0].jitter: must be between"),
    ("[settings]\nmax_frame_size = 1000", "settings.max_frame_size: must be at least 16384"),
    ("[settings]\nmax_frame_size = 16777216", "must be at most 16777215"),
    ("[settings]\ninitial_window_size = 2147483648", "must be at most 2147483647"),
    ("[settings]\nconnection_window = 1000", "settings.connection_window: must be at least 65535"),
    ("[settings]\nheader_table_size = 4294967296", "must be at most 4294967295"),
    ('[[faults]]\nkind = "goaway"\nmode = "abrupt"\nlast_stream_id = 2147483648',
     "faults[0].last_stream_id: must be at most 2147483647"),
    ('[[faults]]\nkind = "goaway"\ndebug = "' + "x" * 16377 + '"',
     "faults[0].debug: debug is 16377 bytes in UTF-8; a GOAWAY frame carries at most 16376"),
    # moments and choices
    ('[[faults]]\nkind = "rst_stream"\ncode = 7\nat = "request_header"',
     "faults[0].at: unknown moment 'request_header' (did you mean 'request_headers'?); use one "
     "of request_headers, request_end, after_app, response_headers, response_body"),
    ('[[faults]]\nkind = "idle_timeout"\nafter = 1\naction = "close"',
     "faults[0].action: unknown action 'close'"),
    ('[[faults]]\nkind = "goaway"\nmode = "polite"', "faults[0].mode: unknown GOAWAY mode"),
    ('[[faults]]\nkind = "enhance_your_calm"\nscope = "everything"', "faults[0].scope: unknown"),
    # values the fault would ignore
    ('[[faults]]\nkind = "rst_stream"\ncode = 7\nafter_bytes = 10',
     'faults[0].after_bytes: after_bytes = 10 only applies with at = "response_body" '
     '(this fault fires at "request_headers")'),
    ('[[faults]]\nkind = "delay"\nduration = 1\nafter_bytes = 10', "only applies with at ="),
    ('[[faults]]\nkind = "goaway"\nafter_bytes = 10',
     "faults[0].after_bytes: 'after_bytes' does not apply to kind 'goaway'"),
    ('[[faults]]\nkind = "goaway"\nlast_stream_id = 1',
     'faults[0].last_stream_id: last_stream_id only applies with mode = "abrupt"'),
    ('[[faults]]\nkind = "goaway"\ndrain_delay = "5s"',
     'faults[0].drain_delay: drain_delay only applies with mode = "drain"'),
    ('[[faults]]\nkind = "idle_timeout"\nafter = 1\naction = "fin"\ncode = 2',
     'faults[0].code: code only applies with action = "goaway"'),
    ('[[faults]]\nkind = "max_age"\nafter = 1\naction = "blackhole"\ncode = 2',
     "code only applies"),
    ('[[faults]]\nkind = "enhance_your_calm"\nmode = "drain"',
     "faults[0].mode: 'mode' applies to a GOAWAY: add scope = \"connection\""),
    ('[[faults]]\nkind = "enhance_your_calm"\nscope = "connection"\nafter_bytes = 1',
     "'after_bytes' does not apply to kind 'enhance_your_calm' with scope 'connection'"),
    # combinations
    ('[[faults]]\nkind = "flow_control"', "faults[0]: a flow_control fault does nothing"),
    ('[[faults]]\nkind = "flow_control"\nerror = true\noverrun = true',
     "faults[0].overrun: error and overrun exclude each other"),
    ('[[faults]]\nkind = "max_concurrent_streams"\nlimit = 4\nlower_to = 8\nlower_after = 1',
     "faults[0].lower_to: lower_to (8) must be below limit (4)"),
    ('[[faults]]\nkind = "max_concurrent_streams"\nlimit = 4\nlower_to = 1',
     "faults[0].lower_to: lower_to needs lower_after_requests or lower_after"),
    ('[[faults]]\nkind = "max_concurrent_streams"\nlimit = 4\nlower_to = 1\nlower_after = 1\n'
     "lower_after_requests = 1", "give lower_after_requests or lower_after, not both"),
    ('[[faults]]\nkind = "max_concurrent_streams"\nlimit = 4\nlower_after = 1',
     "faults[0].lower_after: lower_after needs lower_to"),
    ('[settings]\nmax_concurrent_streams = 100\n[[faults]]\nkind = "max_concurrent_streams"\n'
     "limit = 128", "settings.max_concurrent_streams: 100 conflicts with the "
                    "max_concurrent_streams fault's limit (128) in faults[0]"),
])
def test_errors(text: str, expected: str) -> None:
    assert expected in error_of(text)


@pytest.mark.parametrize("kind", ["idle_timeout", "max_age", "max_concurrent_streams",
                                  "request_cap"])
def test_singleton_kinds(kind: str) -> None:
    required = {"idle_timeout": "after = 1", "max_age": "after = 1",
                "max_concurrent_streams": "limit = 1", "request_cap": "max_requests = 1"}[kind]
    entry = f'[[faults]]\nkind = "{kind}"\n{required}\n'
    one = '[[faults]]\nkind = "delay"\nduration = 1\n'
    toml(one + entry + one)  # one is fine
    message = error_of(one + entry + one + entry)
    assert message == (f"test.toml: faults[3]: a second {kind} fault (the first is faults[1]); "
                       "a scenario has at most one")


def test_error_attributes() -> None:
    with pytest.raises(ScenarioError) as info:
        toml('[[faults]]\nkind = "rst_stream"\ncode = "REFUSD"')
    err = info.value
    assert isinstance(err, ValueError)
    assert (err.origin, err.path) == ("test.toml", "faults[0].code")
    assert err.problem.startswith("unknown error code 'REFUSD'")


def test_parse_fault_paths() -> None:
    with pytest.raises(ScenarioError, match=r"^fault\.when\.max_fires: must be at least 1"):
        parse_fault({"kind": "delay", "duration": 1, "when": {"max_fires": 0}})
    with pytest.raises(ScenarioError, match=r"^faults\[9\]\.code: "):
        parse_fault({"kind": "rst_stream", "code": "nope"}, where="faults[9]")
    with pytest.raises(ScenarioError, match=r"^fault: expected a table, got an array"):
        parse_fault([], where="fault")  # type: ignore[arg-type]


def test_debug_must_encode() -> None:
    with pytest.raises(ScenarioError, match=r"^fault\.debug: debug must be valid Unicode"):
        parse_fault({"kind": "goaway", "debug": "\ud800"})


def test_non_string_keys_and_odd_keys_are_one_line() -> None:
    with pytest.raises(ScenarioError, match="table keys must be strings"):
        parse_scenario({1: 2})  # type: ignore[dict-item]
    with pytest.raises(ScenarioError) as info:
        parse_scenario({"bad\nkey\u2028": 1})
    assert len(str(info.value).splitlines()) == 1
    assert '"bad\\nkey\\u2028"' in str(info.value)


def test_bad_toml_syntax(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('name = "x"\n\n[[faults]]\nkind = \n', encoding="utf-8")
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    message = str(info.value)
    assert message.startswith(f"{path}: invalid TOML: ")
    assert "line 4" in message
    assert len(message.splitlines()) == 1


def test_file_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ScenarioError, match=r"nope\.toml: no such file$"):
        load_scenario(missing)
    with pytest.raises(ScenarioError, match="is a directory"):
        load_scenario(tmp_path)
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b'name = "\xff"\n')
    with pytest.raises(ScenarioError, match="not UTF-8"):
        load_scenario(binary)
    bad = tmp_path / "bad.toml"
    bad.write_text('[[faults]]\nkind = "rst_stream"\ncode = "REFUSD"\n', encoding="utf-8")
    with pytest.raises(ScenarioError) as info:
        load_scenario(bad)
    assert str(info.value).startswith(f"{bad}: faults[0].code: unknown error code 'REFUSD'")


def test_resolve() -> None:
    assert resolve("nginx", None) == load_profile("nginx")
    with pytest.raises(ScenarioError, match="not both"):
        resolve("nginx", "x.toml")
    with pytest.raises(ScenarioError, match="no such file"):
        resolve(None, "/nonexistent/definitely/missing.toml")


# ------------------------------------------------------------------------------------------
# profiles


def test_required_profiles_exist() -> None:
    names = [p.name for p in list_profiles()]
    assert names == sorted(names)
    assert set(REQUIRED_PROFILES) <= set(names)
    assert names == scenario.profile_names()


@pytest.mark.parametrize("name", REQUIRED_PROFILES)
def test_profile_loads_and_round_trips(name: str) -> None:
    profile = load_profile(name)
    assert profile.name == name
    assert profile.description and len(profile.description.splitlines()) == 1
    assert profile.source
    as_dict = scenario_to_dict(profile)
    assert parse_scenario(json.loads(json.dumps(as_dict))) == profile
    idle = [f for f in profile.faults if isinstance(f, IdleTimeout)]
    assert len(idle) == 1


@pytest.mark.parametrize(("name", "after", "action", "ping_resets", "only_without_streams"), [
    ("aws-alb", 60, "goaway", False, False),
    ("aws-nlb", 350, "blackhole", True, False),
    ("gcp-lb", 610, "goaway", True, True),
    ("azure-lb", 240, "blackhole", True, False),
    ("nginx", 75, "goaway", False, True),
    ("haproxy", 50, "goaway", True, True),
    ("envoy", 3600, "goaway", True, True),
    ("nghttpx", 180, "goaway", True, True),
    ("cloudflare", 400, "fin", True, True),
])
def test_profile_idle_timeouts(name: str, after: float, action: str, ping_resets: bool,
                               only_without_streams: bool) -> None:
    (idle,) = [f for f in load_profile(name).faults if isinstance(f, IdleTimeout)]
    assert (idle.after, idle.action, idle.ping_resets, idle.only_without_streams) == (
        after, action, ping_resets, only_without_streams)


@pytest.mark.parametrize(("name", "streams", "cap"), [
    ("aws-alb", 128, 10000), ("nginx", 128, 1000), ("haproxy", 100, None),
    ("envoy", 2**31 - 1, None), ("nghttpx", 100, None), ("aws-nlb", None, None),
    ("cloudflare", None, None),
])
def test_profile_limits(name: str, streams: int | None, cap: int | None) -> None:
    faults = load_profile(name).faults
    limits = [f.limit for f in faults if isinstance(f, MaxConcurrentStreams)]
    caps = [f.max_requests for f in faults if isinstance(f, RequestCap)]
    assert limits == ([] if streams is None else [streams])
    assert caps == ([] if cap is None else [cap])


def test_unknown_profile() -> None:
    with pytest.raises(ScenarioError) as info:
        load_profile("ngnix")
    message = str(info.value)
    assert message.startswith("unknown profile 'ngnix' (did you mean 'nginx'?); available: ")
    for name in REQUIRED_PROFILES:
        assert name in message
    with pytest.raises(ScenarioError, match="unknown profile"):
        resolve("../etc/passwd", None)


# ------------------------------------------------------------------------------------------
# back to dicts


def test_fault_to_dict_forms() -> None:
    assert fault_to_dict(RstStream(code=0x7)) == {
        "kind": "rst_stream", "code": "REFUSED_STREAM", "at": "request_headers",
        "when": {"probability": 1.0, "headers": {}}, "name": ""}
    unknown = fault_to_dict(GoAway(code=0x1234, debug=b"bye"))
    assert unknown["code"] == 0x1234
    assert unknown["debug"] == "bye"
    assert "drain_delay" not in unknown
    assert fault_to_dict(GoAway(mode="drain", drain_delay=5.0))["drain_delay"] == 5.0
    for kind_fault in (
        RstStream(code=0xB, at="response_body", after_bytes=3,
                  when=Trigger(headers=(("x-a", "1*"),), method="GET", min_age=1.5)),
        GoAway(mode="abrupt", last_stream_id=5, close_after=0.5, code=0x99),
        IdleTimeout(after=1.0, action="rst", ping_resets=False),
        MaxAge(after=3.0, jitter=0.5, code=1),
        MaxConcurrentStreams(limit=5, lower_to=1, lower_after=2.0, enforce=False),
        RequestCap(max_requests=3, close_after=1.0),
        FlowControl(withhold_updates=2.0, error=True, when=Trigger(every_nth_stream=2)),
        Delay(duration=1.0, jitter=0.5, at="response_body", after_bytes=10),
    ):
        as_dict = fault_to_dict(kind_fault)
        assert parse_fault(json.loads(json.dumps(as_dict))) == kind_fault


def test_model_fields_match_the_parser_keys() -> None:
    """A field added to model.py must be added to the parser (and the other way round)."""
    classes: dict[str, type] = {
        "rst_stream": RstStream, "goaway": GoAway, "idle_timeout": IdleTimeout,
        "max_age": MaxAge, "max_concurrent_streams": MaxConcurrentStreams,
        "request_cap": RequestCap, "flow_control": FlowControl, "delay": Delay}
    for kind, cls in classes.items():
        fields = {f.name for f in dataclasses.fields(cls)}
        assert set(scenario._KIND_KEYS[kind]) == fields, kind
    assert set(scenario._TRIGGER_KEYS) == {f.name for f in dataclasses.fields(Trigger)}
    assert set(scenario._SETTINGS_LIMITS) == {f.name for f in dataclasses.fields(ServerSettings)}
    assert set(scenario._ACTIONS) == set(typing.get_args(model.IdleAction))
    assert set(scenario._MOMENT_BY_NAME) == set(model.MOMENTS)
    mode_type = typing.get_type_hints(GoAway)["mode"]
    assert set(scenario._GOAWAY_MODES) == set(typing.get_args(mode_type))


# ------------------------------------------------------------------------------------------
# fuzzing: anything in, a Scenario or a ScenarioError out


SCALARS = (st.none() | st.booleans() | st.integers() | st.integers(-3, 3)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
           | st.sampled_from(["2s", "250ms", "-1s", "1e999s", "0x7", "REFUSED_STREAM", "nan",
                              "response_body", "request_headers", "goaway", "drain", "abrupt",
                              "blackhole", "connection", "/x*", "POST", "1m30s", ""]))
ANY = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                   | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)

FAULT_KEYS = sorted((scenario._ALL_FAULT_KEYS | {"scope", "bogus"}) - {"kind"})
TRIGGER = st.dictionaries(st.sampled_from([*scenario._TRIGGER_KEYS, "bogus"]),
                          SCALARS | st.dictionaries(st.text(max_size=6), SCALARS, max_size=3),
                          max_size=4)
FAULT = st.fixed_dictionaries(
    {"kind": st.sampled_from([*scenario.KINDS, "nope"])},
    optional={key: (TRIGGER if key == "when" else SCALARS) for key in FAULT_KEYS})
SETTINGS = st.dictionaries(st.sampled_from([*scenario._SETTINGS_LIMITS, "bogus"]),
                           SCALARS | st.integers(0, 2**32), max_size=4)
STRUCTURED = st.fixed_dictionaries({}, optional={
    "name": SCALARS, "description": SCALARS, "source": SCALARS, "settings": SETTINGS | ANY,
    "faults": st.lists(FAULT | ANY, max_size=4) | ANY, "bogus": ANY})

DURATION = (st.floats(0, 1e6) | st.integers(0, 10**6)
            | st.sampled_from(["250ms", "2s", "1.5m", "1h", "1m30s", "0"]))
PLAUSIBLE: dict[str, st.SearchStrategy[object]] = {
    "code": st.sampled_from(["NO_ERROR", "REFUSED_STREAM", "cancel", "0x7", 0, 7, 0xB, 0x1234]),
    "at": st.sampled_from(model.MOMENTS),
    "after_bytes": st.integers(0, 2000),
    "when": st.fixed_dictionaries({}, optional={
        "probability": st.floats(0, 1), "every_nth_stream": st.integers(1, 10),
        "after_requests": st.integers(1, 10), "min_age": DURATION,
        "path": st.sampled_from(["/", "/x*", "*"]), "method": st.sampled_from(["GET", "post"]),
        "headers": st.dictionaries(st.sampled_from(["x-a", "X-B", ":path"]),
                                   st.text(max_size=5), max_size=2),
        "max_fires": st.integers(1, 5)}),
    "name": st.text(max_size=10),
    "mode": st.sampled_from(["graceful", "drain", "abrupt"]),
    "debug": st.text(max_size=10),
    "last_stream_id": st.integers(0, 2**31 - 1),
    "drain_delay": DURATION, "close_after": DURATION, "after": DURATION,
    "action": st.sampled_from(typing.get_args(model.IdleAction)),
    "ping_resets": st.booleans(), "only_without_streams": st.booleans(),
    "jitter": st.floats(0, 1), "limit": st.integers(0, 200), "enforce": st.booleans(),
    "lower_to": st.integers(0, 200), "lower_after_requests": st.integers(1, 100),
    "lower_after": DURATION, "max_requests": st.integers(1, 10**6),
    "withhold_updates": DURATION, "error": st.booleans(), "overrun": st.booleans(),
    "duration": DURATION, "scope": st.sampled_from(["stream", "connection"]),
    "process_above": st.booleans(),
}
REQUIRED_KEYS = {"after", "limit", "max_requests", "duration"}


@st.composite
def plausible_fault(draw: st.DrawFn) -> dict[str, object]:
    """A fault table that is usually valid, sometimes with one value swapped for junk."""
    kind = draw(st.sampled_from(scenario.KINDS))
    keys = [k for k in scenario._KIND_KEYS[kind] if k != "kind"]
    if kind == "enhance_your_calm":
        keys += [k for k in scenario._GOAWAY_KEYS if k not in ("kind", "code", *keys)]
    out: dict[str, object] = {"kind": kind}
    for key in keys:
        required = key in REQUIRED_KEYS or (kind == "rst_stream" and key == "code")
        if required or draw(st.integers(0, 2)) == 0:
            out[key] = draw(PLAUSIBLE[key])
    if draw(st.integers(0, 4)) == 0:
        out[draw(st.sampled_from(sorted(out)))] = draw(ANY)
    return out


PLAUSIBLE_SCENARIO = st.fixed_dictionaries({"faults": st.lists(plausible_fault(), max_size=4)},
                                           optional={"name": st.text(min_size=1, max_size=8),
                                                     "settings": SETTINGS})


def check_anything(data: object) -> None:
    try:
        parsed = parse_scenario(data)  # type: ignore[arg-type]
    except ScenarioError as exc:
        assert len(str(exc).splitlines()) == 1, str(exc)
        return
    assert isinstance(parsed, Scenario)
    as_dict = scenario_to_dict(parsed)
    text = json.dumps(as_dict, allow_nan=False)
    assert parse_scenario(json.loads(text)) == parsed


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ANY)
def test_fuzz_arbitrary(data: object) -> None:
    check_anything(data)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(STRUCTURED)
def test_fuzz_structured(data: Mapping[str, object]) -> None:
    check_anything(data)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(PLAUSIBLE_SCENARIO)
def test_fuzz_plausible(data: Mapping[str, object]) -> None:
    check_anything(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(FAULT)
def test_fuzz_single_fault(data: Mapping[str, object]) -> None:
    try:
        got = parse_fault(data)
    except ScenarioError as exc:
        assert len(str(exc).splitlines()) == 1
        return
    assert parse_fault(json.loads(json.dumps(fault_to_dict(got), allow_nan=False))) == got


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_fuzz_toml_text(text: str) -> None:
    try:
        parsed = parse_scenario(tomllib.loads(text))
    except tomllib.TOMLDecodeError:
        return
    except ScenarioError as exc:
        assert len(str(exc).splitlines()) == 1
        return
    assert isinstance(parsed, Scenario)


def test_duration_limits() -> None:
    got = parse_fault({"kind": "delay", "duration": "999999999s"})
    assert isinstance(got, Delay) and math.isfinite(got.duration)
    for huge in (10**400, 2e9, "1e10s", float("inf")):
        with pytest.raises(ScenarioError, match="too large"):
            parse_fault({"kind": "delay", "duration": huge})
