"""The fault engine: which fault fires for which stream, decided from data alone.

A :class:`FaultSet` holds the live faults of a server (a scenario's, plus any added through the
control API), indexed by moment so that a stream with no matching fault costs one dict lookup
per moment. Trigger decisions are deterministic for a given ``seed``: the random draw for a
fault is keyed by (seed, connection, stream, fault id), not by the order in which the event loop
happened to run things.
"""

from __future__ import annotations

import fnmatch
import hashlib
import threading
from dataclasses import dataclass

from h2guard.chaos.model import (
    MOMENTS,
    Delay,
    Fault,
    FlowControl,
    GoAway,
    IdleTimeout,
    MaxAge,
    MaxConcurrentStreams,
    Moment,
    RequestCap,
    RstStream,
    Scenario,
    Trigger,
)

__all__ = ["FaultSet", "StreamFault", "StreamInfo"]

StreamFault = RstStream | GoAway | FlowControl | Delay


@dataclass(slots=True)
class StreamInfo:
    """What a trigger may look at."""

    connection_id: int
    stream_id: int
    method: str
    path: str
    headers: list[tuple[bytes, bytes]]
    request_number: int  # 1 for the first request on its connection
    age: float  # connection age in (scaled) seconds


class FaultSet:
    """The live, mutable set of faults of one chaos server.

    Connection-level faults (idle timeout, max age, stream limit, request cap) are read by each
    connection when it opens; per-stream faults are consulted live at every moment, so a fault
    added through the control API applies to the very next stream.
    """

    def __init__(self, scenario: Scenario, *, seed: int | None = None,
                 time_scale: float = 1.0) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be above 0")
        self.scenario = scenario
        self.seed = seed
        self.time_scale = time_scale
        self._lock = threading.Lock()
        self._faults: dict[int, Fault] = {}
        self._next_id = 1
        self._nth: dict[int, int] = {}
        self._fired: dict[int, int] = {}
        self.by_moment: dict[Moment, list[tuple[int, StreamFault]]] = {m: [] for m in MOMENTS}
        self.idle: IdleTimeout | None = None
        self.max_age: MaxAge | None = None
        self.stream_limit: MaxConcurrentStreams | None = None
        self.request_cap: RequestCap | None = None
        self.quiet = True  # no per-stream fault: the server may skip the step machine
        for fault in scenario.faults:
            self.add(fault)

    # ------------------------------------------------------------ editing

    def add(self, fault: Fault) -> int:
        """Add a fault; returns its id (for :meth:`remove`)."""
        with self._lock:
            fid = self._next_id
            self._next_id += 1
            self._faults[fid] = fault
            self._reindex()
            return fid

    def remove(self, fault_id: int) -> bool:
        with self._lock:
            found = self._faults.pop(fault_id, None) is not None
            self._nth.pop(fault_id, None)
            self._fired.pop(fault_id, None)
            self._reindex()
            return found

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
            self._nth.clear()
            self._fired.clear()
            self._reindex()

    def items(self) -> list[tuple[int, Fault]]:
        with self._lock:
            return list(self._faults.items())

    def fired(self, fault_id: int) -> int:
        """How often a fault has fired."""
        return self._fired.get(fault_id, 0)

    def _reindex(self) -> None:
        by_moment: dict[Moment, list[tuple[int, StreamFault]]] = {m: [] for m in MOMENTS}
        idle = max_age = limit = cap = None
        for fid, fault in self._faults.items():
            if isinstance(fault, FlowControl) and fault.withhold_updates:
                # withholding must start when the request opens, whatever ``at`` says
                by_moment["request_headers"].append((fid, fault))
                if (fault.error or fault.overrun) and fault.at != "request_headers":
                    by_moment[fault.at].append((fid, fault))
            elif isinstance(fault, (RstStream, GoAway, FlowControl, Delay)):
                by_moment[fault.at].append((fid, fault))
            elif isinstance(fault, IdleTimeout):
                idle = fault
            elif isinstance(fault, MaxAge):
                max_age = fault
            elif isinstance(fault, MaxConcurrentStreams):
                limit = fault
            elif isinstance(fault, RequestCap):
                cap = fault
        self.by_moment = by_moment
        self.quiet = not any(by_moment.values())
        self.idle, self.max_age, self.stream_limit, self.request_cap = idle, max_age, limit, cap

    # ------------------------------------------------------------ deciding

    def scaled(self, seconds: float) -> float:
        """A scenario duration on this server's clock."""
        return seconds * self.time_scale

    def draw(self, *keys: object) -> float:
        """A number in [0, 1) that depends only on the seed and ``keys``."""
        material = f"{self.seed}:" + ":".join(map(str, keys))
        digest = hashlib.blake2b(material.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64

    def fires(self, fault_id: int, trigger: Trigger, info: StreamInfo) -> bool:
        """Whether the fault fires for this stream (and count it if so)."""
        if trigger.method is not None and trigger.method.upper() != info.method:
            return False
        if trigger.path is not None:
            path = info.path.split("?", 1)[0]
            if not fnmatch.fnmatchcase(path, trigger.path):
                return False
        if trigger.headers:
            for name, pattern in trigger.headers:
                raw = name.encode()
                if not any(k == raw and fnmatch.fnmatchcase(v.decode("latin-1"), pattern)
                           for k, v in info.headers):
                    return False
        if trigger.after_requests is not None and info.request_number <= trigger.after_requests:
            return False
        if trigger.min_age is not None and info.age < self.scaled(trigger.min_age):
            return False
        with self._lock:
            if trigger.every_nth_stream is not None:
                n = self._nth.get(fault_id, 0) + 1
                self._nth[fault_id] = n
                if n % trigger.every_nth_stream:
                    return False
            if trigger.probability < 1.0 and (
                    trigger.probability <= 0.0
                    or self.draw(info.connection_id, info.stream_id, fault_id)
                    >= trigger.probability):
                return False
            if trigger.max_fires is not None and \
                    self._fired.get(fault_id, 0) >= trigger.max_fires:
                return False
            self._fired[fault_id] = self._fired.get(fault_id, 0) + 1
        return True
