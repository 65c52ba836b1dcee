"""Bench scenarios: chaos scenario files plus the traffic every client sends through them.

A bench scenario is a chaos scenario file (``h2guard/bench/scenario-files/*.toml``, the same format
as ``h2guard chaos serve --scenario``) with one extra table, ``[bench]``, that says what traffic
to send: how many logical requests, how many at once, in how many waves with what pause, and
the mix of methods, paths and body sizes. Every client gets exactly the same list of requests
(same ids, same order, same waves), so cells differ only by the client.

The packaged middlebox profiles (``h2guard chaos --profile``) are scenarios too: they get a
default workload that exceeds a 128-stream limit and pauses past the profile's idle timeout
(scaled by ``time_scale``), which is where stock set-ups hurt real clients.
"""

from __future__ import annotations

import importlib.resources
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from h2guard.chaos.model import IdleTimeout, Scenario
from h2guard.chaos.scenario import (
    ScenarioError,
    parse_duration,
    parse_scenario,
    profile_names,
)

__all__ = [
    "BenchRequest",
    "BenchScenario",
    "Mix",
    "Workload",
    "all_scenarios",
    "load_bench_scenario",
    "select_scenarios",
]

SCENARIO_DIR = "scenario-files"
"""Where the packaged bench scenarios live, inside ``h2guard.bench``."""


@dataclass(frozen=True, slots=True)
class BenchRequest:
    """One logical request: its id travels as ``x-request-id`` on every attempt."""

    id: str
    method: str
    path: str
    body_size: int = 0

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "method": self.method, "path": self.path,
                "body_size": self.body_size}


@dataclass(frozen=True, slots=True)
class Mix:
    """One kind of request in the mix, drawn ``weight`` times per round."""

    method: str
    path: str
    body_size: int = 0
    weight: int = 1


@dataclass(frozen=True, slots=True)
class Workload:
    """What to send: ``requests`` logical requests, ``concurrency`` at a time, in ``waves``
    separated by ``gap`` real seconds (a gap is what lets an idle timeout strike)."""

    requests: int
    concurrency: int
    waves: int
    gap: float
    mix: tuple[Mix, ...]

    def plan(self) -> list[list[BenchRequest]]:
        """The waves of requests, deterministic: the mix is interleaved by weight (2:1 ->
        POST, POST, GET, ...), then cut into waves of (nearly) equal size."""
        pattern = [m for m in self.mix for _ in range(m.weight)]
        reqs = [BenchRequest(f"r{n:05d}", pattern[n % len(pattern)].method,
                             pattern[n % len(pattern)].path,
                             pattern[n % len(pattern)].body_size)
                for n in range(self.requests)]
        waves: list[list[BenchRequest]] = []
        start = 0
        for w in range(self.waves):
            end = (self.requests * (w + 1)) // self.waves
            waves.append(reqs[start:end])
            start = end
        return [w for w in waves if w]

    def methods(self) -> dict[str, int]:
        """How many requests of each method the plan holds."""
        out: dict[str, int] = {}
        for wave in self.plan():
            for r in wave:
                out[r.method] = out.get(r.method, 0) + 1
        return out

    def to_json(self) -> dict[str, object]:
        return {"requests": self.requests, "concurrency": self.concurrency,
                "waves": self.waves, "gap_s": self.gap, "methods": self.methods(),
                "mix": [{"method": m.method, "path": m.path, "body_size": m.body_size,
                         "weight": m.weight} for m in self.mix]}


@dataclass(frozen=True, slots=True)
class BenchScenario:
    """A chaos scenario and the traffic for it, in a full and a ``--quick`` size."""

    name: str
    title: str
    description: str
    source: str
    kind: Literal["targeted", "middlebox"]
    data: Mapping[str, Any]
    """The chaos scenario as TOML data (without ``[bench]``): what the server host parses."""
    scenario: Scenario
    time_scale: float
    quick: bool
    full: Workload
    small: Workload
    origin: str = ""
    tags: tuple[str, ...] = field(default=())
    timeout: float | None = None
    """The least per-request timeout that lets a correct client through (a black hole is
    found by a PING timeout, which takes seconds); ``--timeout`` overrides it."""

    def workload(self, *, quick: bool) -> Workload:
        return self.small if quick else self.full

    def to_json(self, *, quick: bool) -> dict[str, object]:
        return {"name": self.name, "title": self.title, "description": self.description,
                "source": self.source, "kind": self.kind, "time_scale": self.time_scale,
                "timeout_s": self.timeout, "workload": self.workload(quick=quick).to_json()}


class _Reader:
    """Typed access to the ``[bench]`` table, with errors that name the file and key."""

    def __init__(self, table: Mapping[str, Any], origin: str) -> None:
        self.t = table
        self.origin = origin

    def fail(self, key: str, problem: str) -> ScenarioError:
        return ScenarioError(f"bench.{key}: {problem}", origin=self.origin)

    def whole(self, key: str, default: int | None = None, *, low: int = 1,
              high: int = 100_000) -> int:
        value = self.t.get(key, default)
        if value is None:
            raise self.fail(key, "is required")
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise self.fail(key, f"must be a whole number from {low} to {high}, "
                                 f"got {value!r}")
        return value

    def text(self, key: str, default: str | None = None) -> str:
        value = self.t.get(key, default)
        if not isinstance(value, str):
            raise self.fail(key, f"must be a string, got {value!r}")
        return value

    def seconds(self, key: str, default: float) -> float:
        value = self.t.get(key, default)
        try:
            return parse_duration(value, f"bench.{key}")
        except ScenarioError as exc:
            raise ScenarioError(str(exc), origin=self.origin) from None

    def number(self, key: str, default: float) -> float:
        value = self.t.get(key, default)
        if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value <= 10:
            raise self.fail(key, f"must be a number above 0 and at most 10, got {value!r}")
        return float(value)

    def mix(self) -> tuple[Mix, ...]:
        raw = self.t.get("mix")
        if not isinstance(raw, list) or not raw:
            raise self.fail("mix", "must be a non-empty list of {method, path, body_size, "
                                   "weight} tables")
        out = []
        for i, entry in enumerate(raw):
            if not isinstance(entry, dict):
                raise self.fail(f"mix[{i}]", "must be a table")
            unknown = set(entry) - {"method", "path", "body_size", "weight"}
            if unknown:
                raise self.fail(f"mix[{i}]", f"unknown key {sorted(unknown)[0]!r}; use "
                                             "method, path, body_size, weight")
            r = _Reader(entry, self.origin)
            method = r.text("method", "GET").upper()
            if method not in ("GET", "POST", "PUT", "DELETE", "HEAD", "PATCH"):
                raise self.fail(f"mix[{i}].method", f"unsupported method {method!r}")
            path = r.text("path", "/echo")
            if not path.startswith("/"):
                raise self.fail(f"mix[{i}].path", f"must start with '/', got {path!r}")
            out.append(Mix(method, path, r.whole("body_size", 0, low=0, high=64 << 20),
                           r.whole("weight", 1, high=100)))
        return tuple(out)


_BENCH_KEYS = {"title", "quick", "time_scale", "requests", "quick_requests", "concurrency",
               "quick_concurrency", "waves", "gap", "mix", "tags", "timeout"}


def load_bench_scenario(text: str, *, origin: str) -> BenchScenario:
    """Parse one bench scenario file. Every problem is a :class:`ScenarioError` naming
    ``origin`` and the key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"not valid TOML: {exc}", origin=origin) from None
    bench = data.pop("bench", None)
    if not isinstance(bench, dict):
        raise ScenarioError("a bench scenario needs a [bench] table (the traffic to send)",
                            origin=origin)
    unknown = sorted(set(bench) - _BENCH_KEYS)
    if unknown:
        raise ScenarioError(f"bench: unknown key {unknown[0]!r}; use one of "
                            f"{', '.join(sorted(_BENCH_KEYS))}", origin=origin)
    scenario = parse_scenario(data, origin=origin)
    r = _Reader(bench, origin)
    mix = r.mix()
    concurrency = r.whole("concurrency", 10, high=1000)
    waves = r.whole("waves", 1, high=100)
    gap = r.seconds("gap", 0.2)
    requests = r.whole("requests")
    quick_requests = r.whole("quick_requests", min(requests, 60))
    quick = bench.get("quick", False)
    if not isinstance(quick, bool):
        raise r.fail("quick", f"must be true or false, got {quick!r}")
    tags = bench.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise r.fail("tags", "must be a list of strings")
    return BenchScenario(
        name=scenario.name, title=r.text("title", scenario.name),
        description=scenario.description, source=scenario.source, kind="targeted",
        data=data, scenario=scenario, time_scale=r.number("time_scale", 1.0), quick=quick,
        full=Workload(requests, concurrency, waves, gap, mix),
        small=Workload(quick_requests, r.whole("quick_concurrency", concurrency, high=1000),
                       waves, gap, mix),
        origin=origin, tags=tuple(tags),
        timeout=r.seconds("timeout", 0.0) or None)


_MIDDLEBOX_MIX = (Mix("POST", "/orders", 64, 1), Mix("GET", "/echo", 0, 1))


def _middlebox(name: str, text: str) -> BenchScenario:
    """A packaged profile with the default middlebox workload: 150 at once (above the common
    128-stream limit), two waves, the pause just past the profile's (scaled) idle timeout."""
    origin = f"profiles/{name}.toml"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:  # pragma: no cover - packaged files are tested
        raise ScenarioError(f"not valid TOML: {exc}", origin=origin) from None
    scenario = parse_scenario(data, origin=origin)
    idle = next((f.after for f in scenario.faults if isinstance(f, IdleTimeout)), None)
    scale = 0.01
    gap = 0.2
    if idle is not None:
        if idle * scale > 3.0:
            scale = 3.0 / idle
        gap = idle * scale * 1.15
    return BenchScenario(
        name=name, title=f"{name} (stock limits)", description=scenario.description,
        source=scenario.source, kind="middlebox", data=data, scenario=scenario,
        time_scale=scale, quick=False,
        full=Workload(300, 150, 2, gap, _MIDDLEBOX_MIX),
        small=Workload(150, 150, 2, gap, _MIDDLEBOX_MIX), origin=origin)


def _files(package: str, sub: str | None = None) -> dict[str, str]:
    root = importlib.resources.files(package)
    if sub is not None:
        root = root.joinpath(sub)
    return {e.name.removesuffix(".toml"): e.read_text(encoding="utf-8")
            for e in sorted(root.iterdir(), key=lambda e: e.name)
            if e.name.endswith(".toml") and e.is_file()}


_ORDER = ("refused-burst", "stream-limit", "request-cap", "goaway-storm", "stale-goaway",
          "stale-fin", "stale-rst", "stale-blackhole", "reset-after-app", "process-above",
          "overload", "flow-stall", "large-bodies")


def all_scenarios() -> list[BenchScenario]:
    """The targeted scenarios (in a reading order), then the middlebox profiles."""
    files = _files("h2guard.bench", SCENARIO_DIR)
    names = [n for n in _ORDER if n in files] + sorted(n for n in files if n not in _ORDER)
    out = [load_bench_scenario(files[n], origin=f"bench/scenario-files/{n}.toml") for n in names]
    profiles = _files("h2guard.chaos.profiles")
    out.extend(_middlebox(n, profiles[n]) for n in profile_names())
    return out


def select_scenarios(names: Sequence[str], *, quick: bool,
                     extra_files: Sequence[str] = ()) -> list[BenchScenario]:
    """The scenarios to run: the named ones (in the order given; ``targeted`` and
    ``middlebox`` name groups), else the quick set or everything; ``extra_files`` are bench
    scenario files of the user's own."""
    known = all_scenarios()
    own: list[BenchScenario] = []
    for path in extra_files:
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise ScenarioError(f"cannot read: {exc.strerror or exc}", origin=path) from None
        own.append(load_bench_scenario(text, origin=path))
    known += own
    by_name = {s.name: s for s in known}
    if not names:  # the user's own files always run, quick or not
        chosen = [s for s in known if s.quick or not quick]
        return chosen + [s for s in own if s not in chosen]
    out: list[BenchScenario] = []
    for name in names:
        if name in ("targeted", "middlebox"):
            out.extend(s for s in known if s.kind == name and s not in out)
        elif name in by_name:
            if by_name[name] not in out:
                out.append(by_name[name])
        else:
            import difflib

            close = difflib.get_close_matches(name, list(by_name), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ScenarioError(f"unknown scenario {name!r}{hint}; available: "
                                f"{', '.join(by_name)}, or the groups targeted, middlebox")
    return out
