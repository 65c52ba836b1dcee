"""Events: the one stream every part of h2guard reports through.

Every reset, GOAWAY, injected fault, retry, downgrade and refusal is an :class:`Event` with a
stable dotted ``name`` (``chaos.fault``, ``chaos.connection.opened``, ...). Metrics, JSON-lines
logs, the chaos control API and test assertions are all views of the same events
(docs/architecture.md, principle 6): a hook is any callable taking an event.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

__all__ = ["Event", "EventLog", "Hook", "JsonLinesHook"]


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened. ``seq`` orders events of one log; ``at`` is wall-clock time."""

    name: str
    at: float
    data: Mapping[str, Any] = field(default_factory=dict)
    seq: int = 0

    def to_json(self) -> dict[str, Any]:
        """A flat JSON object: ``seq``, ``time``, ``event`` and the data fields."""
        out: dict[str, Any] = {"seq": self.seq, "time": round(self.at, 6), "event": self.name}
        out.update(self.data)
        return out


Hook = Callable[[Event], None]


class EventLog:
    """Records events in a bounded ring and fans them out to hooks.

    The ring keeps the newest ``maxlen`` events so a long chaos run holds bounded memory;
    ``counts`` keeps exact totals by name forever. A hook that raises is dropped from the
    log after its first error so that observability can never break the data path.
    """

    def __init__(self, *, maxlen: int = 100_000) -> None:
        self._ring: deque[Event] = deque(maxlen=maxlen)
        self._hooks: list[Hook] = []
        self._seq = 0
        self.counts: dict[str, int] = {}
        self.hook_errors: list[str] = []

    def subscribe(self, hook: Hook) -> Callable[[], None]:
        """Call ``hook`` for every future event; returns a function that unsubscribes."""
        self._hooks.append(hook)

        def unsubscribe() -> None:
            if hook in self._hooks:
                self._hooks.remove(hook)

        return unsubscribe

    def emit(self, name: str, **data: Any) -> Event:
        """Record an event now and pass it to every hook."""
        self._seq += 1
        event = Event(name, time.time(), data, self._seq)
        self._ring.append(event)
        self.counts[name] = self.counts.get(name, 0) + 1
        for hook in tuple(self._hooks):
            try:
                hook(event)
            except Exception as exc:  # a broken sink must not break serving
                self._hooks.remove(hook)
                self.hook_errors.append(f"{hook!r}: {type(exc).__name__}: {exc}")
        return event

    def since(self, seq: int = 0, *, name: str | None = None) -> list[Event]:
        """Events with a sequence number above ``seq`` still in the ring, optionally by name
        (a prefix: ``chaos.fault`` matches only faults, ``chaos`` everything of chaos)."""
        return [e for e in self._ring
                if e.seq > seq and (name is None or e.name == name
                                    or e.name.startswith(name + "."))]

    def __iter__(self) -> Iterator[Event]:
        return iter(tuple(self._ring))

    def __len__(self) -> int:
        return len(self._ring)

    @property
    def last_seq(self) -> int:
        return self._seq


class JsonLinesHook:
    """A hook writing each event as one JSON line to a text stream, flushed per line so that
    ``tail -f`` and a parent process reading a pipe see events as they happen."""

    def __init__(self, stream: IO[str], *, names: tuple[str, ...] | None = None) -> None:
        self._stream = stream
        self._names = names

    def __call__(self, event: Event) -> None:
        if self._names is not None and not event.name.startswith(self._names):
            return
        self._stream.write(json.dumps(event.to_json(), default=str) + "\n")
        self._stream.flush()
