"""One timer per client connection: read deadlines and the PING watchdog, decided without I/O.

A connection with requests in flight must notice two things in bounded time: a stream whose
response HEADERS did not arrive within its read timeout, and a connection that went silent (a
black hole: a load balancer dropped it without a FIN or RST). Arming an event-loop timer per
request for the first costs a heap push and a cancel on every request's path; this keeps the
deadlines in a dict (streams are opened in deadline order when they share a timeout, so the
earliest is almost always the oldest) and tells the one moment to wake up.
:class:`~h2guard.wire.core.H2Core` owns one per connection and exposes it as
``expect_response`` / ``get_timer()`` / ``handle_timer(now)``:

* :meth:`due` — when to call :meth:`expire` next (``None``: nothing to watch);
* :meth:`expire` — at ``now``: the streams whose deadline passed, whether to send a PING, and
  whether the connection is dead (a PING sent ``ping_timeout`` ago is unanswered).

The owner keeps the clock and the sockets; this class keeps only numbers, so every rule is
unit-tested by feeding times.
"""

from __future__ import annotations

from collections.abc import Container

__all__ = ["Liveness", "Verdict"]

_NEVER = float("inf")


class Verdict:
    """What :meth:`Liveness.expire` decided at one moment."""

    __slots__ = ("dead", "expired", "ping")

    def __init__(self, expired: list[tuple[int, float]], ping: bool, dead: bool) -> None:
        self.expired = expired  # (stream id, its timeout) whose deadline passed, oldest first
        self.ping = ping  # send a PING now (the connection has been silent too long)
        self.dead = dead  # a PING went unanswered for ping_timeout: abandon the connection


class Liveness:
    """Read deadlines per stream and the silent-connection PING check, as one timer.

    ``ping_interval`` <= 0 turns the PING watchdog off (deadlines still apply).
    """

    __slots__ = ("_deadlines", "_floor", "_since", "ping_deadline", "ping_interval",
                 "ping_timeout")

    def __init__(self, *, ping_interval: float, ping_timeout: float) -> None:
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self._deadlines: dict[int, tuple[float, float]] = {}  # id -> (deadline, timeout)
        self._floor = _NEVER  # <= every deadline in _deadlines (lazy: may be stale-low)
        self.ping_deadline: float | None = None  # a PING is out; unanswered by then: dead
        self._since = 0.0  # when requests started waiting (silence counts from then)

    # ------------------------------------------------------------------ feeding

    def watch(self, stream_id: int, deadline: float, timeout: float = 0.0) -> bool:
        """The response to ``stream_id`` must start by ``deadline`` (``timeout`` seconds after
        it was asked, for the report). True if this is earlier than anything watched before,
        so the owner must re-arm its timer sooner."""
        self._deadlines[stream_id] = (deadline, timeout)
        if deadline < self._floor:
            self._floor = deadline
            return True
        return False

    def answered(self, stream_id: int) -> None:
        """The stream's response started (or the stream ended): its deadline no longer
        applies. Leaves ``_floor`` as it is: at worst the timer wakes once for nothing."""
        self._deadlines.pop(stream_id, None)

    def keep_only(self, open_streams: Container[int]) -> None:
        """Forget the deadlines of streams that ended without a response (reset, refused):
        they would go only when their deadline passes."""
        deadlines = self._deadlines
        for sid in [sid for sid in deadlines if sid not in open_streams]:
            del deadlines[sid]

    def __len__(self) -> int:
        return len(self._deadlines)

    def start(self, now: float) -> None:
        """Requests start waiting at ``now`` (none did before): silence counts from here, so
        a connection that sat idle is not PINGed the moment it is used again."""
        self._since = now

    def pong(self) -> None:
        """A PING was answered: the connection is alive."""
        self.ping_deadline = None

    # ------------------------------------------------------------------ deciding

    def due(self, last_frame_at: float, *, waiting: bool) -> float | None:
        """The next moment :meth:`expire` has something to decide (None: nothing).
        ``waiting``: requests are in flight (the PING watchdog runs only then)."""
        when = self._floor if self._deadlines else _NEVER
        if waiting and self.ping_interval > 0:
            ping_due = self.ping_deadline if self.ping_deadline is not None \
                else max(last_frame_at, self._since) + self.ping_interval
            when = min(when, ping_due)
        return None if when == _NEVER else when

    def expire(self, now: float, last_frame_at: float, *, waiting: bool) -> Verdict:
        """Decide at ``now``; ``last_frame_at`` is when the peer last sent any frame."""
        expired: list[tuple[int, float]] = []
        deadlines = self._deadlines
        if deadlines and now >= self._floor:
            floor = _NEVER
            for sid, (deadline, timeout) in deadlines.items():
                if deadline <= now:
                    expired.append((sid, timeout))
                elif deadline < floor:
                    floor = deadline
            for sid, _ in expired:
                del deadlines[sid]
            self._floor = floor
        ping = dead = False
        if waiting and self.ping_interval > 0:
            if self.ping_deadline is not None:
                dead = now >= self.ping_deadline
            elif now - max(last_frame_at, self._since) >= self.ping_interval:
                ping = True
                self.ping_deadline = now + self.ping_timeout
        elif not waiting:
            self.ping_deadline = None  # nobody waits: an unanswered watchdog PING is moot
        return Verdict(expired, ping, dead)
