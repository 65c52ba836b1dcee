"""Prometheus metrics: a view of events, never a separate code path.

See docs/architecture.md, principle 6.

``prometheus-client`` is an optional extra (``pip install 'h2guard[metrics]'``). It is imported
only when a metrics object is built; without it that raises :class:`RuntimeError` with the
install hint (:data:`INSTALL_HINT`), so everything else in h2guard works without it.

Every metrics object owns its own ``CollectorRegistry``: several chaos servers (or clients) in
one process never collide on metric names, and nothing leaks into the process-global default
registry. :class:`EventMetrics` is the generic part: a registry, helpers to declare counters and
gauges on it, and a table of event-name handlers fed by :meth:`EventMetrics.attach`.
:class:`ChaosMetrics` declares the chaos server's metrics::

    h2guard_chaos_faults_total{code,kind}     one per ``chaos.fault`` event (code "" when None)
    h2guard_chaos_connections_total           ``chaos.connection.opened`` events
    h2guard_chaos_open_connections            opened minus closed, by connection id
    h2guard_chaos_client_resets_total{code}   RST_STREAM received from clients
    h2guard_chaos_limits_exceeded_total{limit}   connections cut off by a self-protection limit
    h2guard_chaos_malformed_requests_total    malformed requests (RST_STREAM PROTOCOL_ERROR)
    h2guard_chaos_ledger_effects_total        the ledger's effect count, read when scraped
    h2guard_chaos_ledger_duplicate_keys       idempotency keys with more than one effect

Usage::

    metrics = ChaosMetrics(server.events, ledger_effects=lambda: server.ledger.total)
    body, content_type = metrics.render()

The client side can subclass :class:`EventMetrics` the same way (``counter(...)`` in
``__init__``, ``self.on("client.stream.reset", handler)``) for series such as
``h2guard_stream_resets_total{code,origin}``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from h2guard.events import Event, EventLog

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["INSTALL_HINT", "ChaosMetrics", "ClientMetrics", "EventMetrics", "IdempotencyMetrics",
           "metrics_available"]

INSTALL_HINT = ("prometheus-client is not installed; install h2guard[metrics] "
                "(pip install 'h2guard[metrics]') to export Prometheus metrics")

EventHandler = Callable[[Event], None]


def metrics_available() -> bool:
    """Whether ``prometheus-client`` can be imported."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


def _require() -> None:
    try:
        import prometheus_client  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(INSTALL_HINT) from exc


class EventMetrics:
    """A private Prometheus registry fed by one or more event logs.

    Subclasses declare their metrics with :meth:`counter` / :meth:`gauge` and map event names to
    handlers with :meth:`on`. A handler that raises is dropped by the :class:`EventLog` (a
    broken metric never breaks serving), as for any hook.
    """

    def __init__(self, *, registry: CollectorRegistry | None = None) -> None:
        _require()
        from prometheus_client import CollectorRegistry

        self.registry: CollectorRegistry = registry if registry is not None \
            else CollectorRegistry(auto_describe=True)
        self._handlers: dict[str, list[EventHandler]] = {}
        self._unsubscribe: list[Callable[[], None]] = []

    # ------------------------------------------------------------ declaring

    def counter(self, name: str, documentation: str,
                labels: Sequence[str] = ()) -> Counter:
        """A counter on this registry. Label names are sorted, so the exposition is canonical
        whatever order they are declared in. (``prometheus-client`` appends ``_total``.)"""
        from prometheus_client import Counter

        return Counter(name, documentation, sorted(labels), registry=self.registry)

    def gauge(self, name: str, documentation: str, labels: Sequence[str] = (), *,
              function: Callable[[], float] | None = None) -> Gauge:
        """A gauge on this registry; with ``function`` (no labels) its value is read from the
        callback at every scrape."""
        from prometheus_client import Gauge

        if function is not None and labels:
            raise ValueError("a gauge read from a callback cannot have labels")
        gauge = Gauge(name, documentation, sorted(labels), registry=self.registry)
        if function is not None:
            gauge.set_function(function)
        return gauge

    def histogram(self, name: str, documentation: str, labels: Sequence[str] = (), *,
                  buckets: Sequence[float]) -> Histogram:
        """A histogram on this registry (label names sorted, as for counters)."""
        from prometheus_client import Histogram

        return Histogram(name, documentation, sorted(labels), registry=self.registry,
                         buckets=tuple(buckets))

    def on(self, name: str, handler: EventHandler) -> None:
        """Call ``handler`` for every event named exactly ``name``."""
        self._handlers.setdefault(name, []).append(handler)

    # ------------------------------------------------------------ feeding

    def handle(self, event: Event) -> None:
        """Update the metrics from one event (the hook :meth:`attach` subscribes)."""
        for handler in self._handlers.get(event.name, ()):
            handler(event)

    __call__ = handle

    def attach(self, events: EventLog, *, replay: bool = True) -> None:
        """Follow ``events`` from now on; with ``replay``, first count the events it still holds
        (so metrics created after a server started agree with its log)."""
        if replay:
            self.feed(events)
        self._unsubscribe.append(events.subscribe(self.handle))

    def feed(self, events: Iterable[Event]) -> None:
        """Count past events (a log, or any iterable of events)."""
        for event in events:
            self.handle(event)

    def detach(self) -> None:
        """Stop following every attached log."""
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()

    # ------------------------------------------------------------ exposing

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition of this registry: ``(body, content_type)``."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class ChaosMetrics(EventMetrics):
    """The chaos server's metrics, derived from its :class:`EventLog`.

    ``ledger_effects`` / ``ledger_duplicates`` are callbacks read at scrape time (the ledger is
    state, not events). ``events=None`` builds an unattached instance: call :meth:`attach`.
    """

    def __init__(self, events: EventLog | None = None, *,
                 ledger_effects: Callable[[], float] | None = None,
                 ledger_duplicates: Callable[[], float] | None = None,
                 registry: CollectorRegistry | None = None, replay: bool = True) -> None:
        super().__init__(registry=registry)
        self._open: set[object] = set()
        self.faults = self.counter(
            "h2guard_chaos_faults", "Faults injected by the chaos server, by kind and error code.",
            ("kind", "code"))
        self.connections = self.counter(
            "h2guard_chaos_connections", "Connections accepted by the chaos server.")
        self.open_connections = self.gauge(
            "h2guard_chaos_open_connections", "Connections currently open on the chaos server.",
            function=lambda: float(len(self._open)))
        self.client_resets = self.counter(
            "h2guard_chaos_client_resets", "RST_STREAM frames received from clients, by code.",
            ("code",))
        self.limits = self.counter(
            "h2guard_chaos_limits_exceeded",
            "Connections the chaos server cut off for exceeding a self-protection limit "
            "(Rapid Reset, floods, slow handshakes, ...), by limit.", ("limit",))
        self.malformed = self.counter(
            "h2guard_chaos_malformed_requests",
            "Malformed requests answered with RST_STREAM PROTOCOL_ERROR (a stream error).")
        if ledger_effects is not None:
            self.gauge("h2guard_chaos_ledger_effects_total",
                       "Side effects recorded in the ledger (POST /orders) since its last reset.",
                       function=ledger_effects)
        if ledger_duplicates is not None:
            self.gauge("h2guard_chaos_ledger_duplicate_keys",
                       "Idempotency keys with more than one effect in the ledger.",
                       function=ledger_duplicates)
        self.on("chaos.fault", self._on_fault)
        self.on("chaos.connection.opened", self._on_opened)
        self.on("chaos.connection.closed", self._on_closed)
        self.on("chaos.stream.reset_by_client", self._on_client_reset)
        self.on("chaos.limit_exceeded", self._on_limit)
        self.on("chaos.stream.malformed", lambda _event: self.malformed.inc())
        if events is not None:
            self.attach(events, replay=replay)

    def _on_fault(self, event: Event) -> None:
        code = event.data.get("code")
        kind = event.data.get("kind")
        self.faults.labels(kind="" if kind is None else str(kind),
                           code="" if code is None else str(code)).inc()

    def _on_opened(self, event: Event) -> None:
        self.connections.inc()
        self._open.add(event.data.get("connection", event.seq))

    def _on_closed(self, event: Event) -> None:
        # keyed by connection id: a "closed" without an "opened" (a socket that never spoke)
        # cannot drive the gauge below zero
        self._open.discard(event.data.get("connection"))

    def _on_limit(self, event: Event) -> None:
        self.limits.labels(limit=str(event.data.get("limit", ""))).inc()

    def _on_client_reset(self, event: Event) -> None:
        code = event.data.get("code")
        self.client_resets.labels(code="" if code is None else str(code)).inc()


class ClientMetrics(EventMetrics):
    """The client's metrics, derived from its :class:`EventLog` (``transport.events``, or
    ``client.events`` of :class:`h2guard.AsyncClient`, which also carries the retry events).

    ``h2guard_stream_resets_total{code,origin}`` and ``h2guard_goaway_total{code,origin}`` count
    what servers did; the others count what the transport did about it::

        metrics = ClientMetrics(transport.events)
        body, content_type = metrics.render()
    """

    def __init__(self, events: EventLog | None = None, *,
                 registry: CollectorRegistry | None = None, replay: bool = True) -> None:
        super().__init__(registry=registry)
        self.resets = self.counter("h2guard_stream_resets",
                                   "RST_STREAM received, by error code and origin.",
                                   ("code", "origin"))
        self.goaways = self.counter("h2guard_goaway", "GOAWAY received, by error code and origin.",
                                    ("code", "origin"))
        self.moves = self.counter("h2guard_transparent_retries",
                                  "Requests moved to another connection because the server "
                                  "provably never processed them, by reason.",
                                  ("reason", "origin"))
        self.opened = self.counter("h2guard_connections_opened", "Connections opened.",
                                   ("origin",))
        self.retired = self.counter("h2guard_connections_retired",
                                    "Connections taken out of use (refused twice, max age).",
                                    ("origin", "reason"))
        self.idle_closed = self.counter("h2guard_connections_idle_closed",
                                        "Connections closed by the pool for sitting idle.",
                                        ("origin",))
        self.ping_timeouts = self.counter("h2guard_ping_timeouts",
                                          "Connections abandoned for not answering PING.",
                                          ("origin",))
        self.health_checks = self.counter("h2guard_health_checks",
                                          "PINGs sent before reusing an idle connection.",
                                          ("origin",))
        self.downgrades = self.counter("h2guard_downgrades",
                                       "Origins switched to HTTP/1.1.", ("origin",))
        self.on("client.stream_reset", self._on_reset)
        self.on("client.goaway", self._on_goaway)
        self.on("client.transparent_retry", lambda e: self.moves.labels(
            reason=str(e.data.get("reason", "")), origin=_origin(e)).inc())
        self.on("client.connection_opened",
                lambda e: self.opened.labels(origin=_origin(e)).inc())
        self.on("client.connection_retired", lambda e: self.retired.labels(
            origin=_origin(e), reason=str(e.data.get("reason", ""))).inc())
        self.on("client.connection_idle_closed",
                lambda e: self.idle_closed.labels(origin=_origin(e)).inc())
        self.on("client.ping_timeout",
                lambda e: self.ping_timeouts.labels(origin=_origin(e)).inc())
        self.on("client.health_check",
                lambda e: self.health_checks.labels(origin=_origin(e)).inc())
        self.on("client.downgrade", lambda e: self.downgrades.labels(origin=_origin(e)).inc())
        # RetryTransport (and so h2guard.AsyncClient / Client, which share one event log)
        self.retries = self.counter("h2guard_retries",
                                    "Retries by RetryTransport, by retry_on condition.",
                                    ("reason", "origin"))
        self.budget_exhausted = self.counter(
            "h2guard_retry_budget_exhausted",
            "Retries refused because the origin's retry budget was spent.", ("origin",))
        self.gave_up = self.counter("h2guard_retry_gave_up",
                                    "Failures raised without a retry, by failure kind.",
                                    ("kind", "origin"))
        self.on("retry.attempt", lambda e: self.retries.labels(
            reason=str(e.data.get("reason", "")), origin=_origin(e)).inc())
        self.on("retry.budget_exhausted",
                lambda e: self.budget_exhausted.labels(origin=_origin(e)).inc())
        self.on("retry.gave_up", lambda e: self.gave_up.labels(
            kind=str(e.data.get("kind", "")), origin=_origin(e)).inc())
        if events is not None:
            self.attach(events, replay=replay)

    def _on_reset(self, event: Event) -> None:
        self.resets.labels(code=_code(event), origin=_origin(event)).inc()

    def _on_goaway(self, event: Event) -> None:
        self.goaways.labels(code=_code(event), origin=_origin(event)).inc()


class IdempotencyMetrics(EventMetrics):
    """The idempotency middleware's metrics, from its :class:`EventLog` (``middleware.events``)::

        h2guard_idempotency_requests_total{outcome}   claimed, replayed, conflict (409),
                                                      mismatch (422), rejected (400),
                                                      unguarded (store down, fail open)
        h2guard_idempotency_store_errors_total{op}    claim / complete / purge failures
        h2guard_idempotency_store_seconds{op}         latency the store added, per call
        h2guard_idempotency_claims_lost_total         handlers that outlived lock_ttl
        h2guard_idempotency_bodies_omitted_total      responses too large to store
        h2guard_idempotency_released_total{why}       keys let go unstored, so that a retry
                                                      runs the handler again: server_error
                                                      (a 5xx), unfinished (the handler raised
                                                      or ended before its response)
    """

    _OUTCOMES = ("claimed", "replayed", "conflict", "mismatch", "rejected", "unguarded")

    def __init__(self, events: EventLog | None = None, *,
                 registry: CollectorRegistry | None = None, replay: bool = True) -> None:
        super().__init__(registry=registry)
        self.requests = self.counter("h2guard_idempotency_requests",
                                     "Keyed requests, by what the middleware did.", ("outcome",))
        self.store_errors = self.counter("h2guard_idempotency_store_errors",
                                         "Store calls that failed or timed out.", ("op",))
        self.store_seconds = self.histogram(
            "h2guard_idempotency_store_seconds", "Latency added by the store, per call.",
            ("op",), buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                              1.0, 2.5))
        self.claims_lost = self.counter("h2guard_idempotency_claims_lost",
                                        "Handlers that outlived lock_ttl (key claimed again).")
        self.bodies_omitted = self.counter("h2guard_idempotency_bodies_omitted",
                                           "Responses too large to store (replayed bodiless).")
        for outcome in self._OUTCOMES:
            self.on(f"idempotency.{outcome}", self._count_outcome(outcome))
        self.on("idempotency.store_error", lambda e: self.store_errors.labels(
            op=str(e.data.get("op", ""))).inc())
        self.on("idempotency.store", self._on_store)
        self.on("idempotency.claim_lost", lambda e: self.claims_lost.inc())
        self.on("idempotency.too_large", lambda e: self.bodies_omitted.inc())
        self.released = self.counter(
            "h2guard_idempotency_released",
            "Keys released unstored (store_server_errors=False): a retry runs the handler.",
            ("why",))
        self.on("idempotency.released", lambda e: self.released.labels(
            why="unfinished" if e.data.get("status") is None else "server_error").inc())
        if events is not None:
            self.attach(events, replay=replay)

    def _count_outcome(self, outcome: str) -> EventHandler:
        child = self.requests.labels(outcome=outcome)
        return lambda event: child.inc()

    def _on_store(self, event: Event) -> None:
        seconds = event.data.get("seconds")
        if isinstance(seconds, int | float):
            self.store_seconds.labels(op=str(event.data.get("op", ""))).observe(float(seconds))


def _origin(event: Event) -> str:
    return str(event.data.get("origin", ""))


def _code(event: Event) -> str:
    from h2guard.codes import code_name

    code = event.data.get("code")
    return code_name(code) if isinstance(code, int) else str(code or "")
