"""``h2guard.AsyncClient`` and ``h2guard.Client``: httpx clients with h2guard inside.

The one line most users copy::

    client = h2guard.AsyncClient(base_url="https://api.example.com")

is ``httpx.AsyncClient`` whose transport is ``RetryTransport(AsyncHTTPTransport(...))``: the
HTTP/2 transport that loses nothing to GOAWAY, stream limits and stale connections, under a
retry policy that resends only what is safe. Everything httpx's client takes still works
(``base_url``, ``headers``, ``timeout``, ``auth``, ``event_hooks``, ...).

Automatic Idempotency-Keys are off by default: a key makes a POST retryable, which is only
right when the server honours the key (``h2guard.idempotency`` on the server side, Stripe-like
APIs). Turn them on with ``policy=h2guard.RetryPolicy(idempotency_keys=True)``.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable
from typing import Any

import httpx

from h2guard.client.sync import HTTPTransport
from h2guard.client.transport import AsyncHTTPTransport
from h2guard.events import EventLog
from h2guard.retry.policy import RetryPolicy
from h2guard.retry.transport import RetryInfo, RetryTransport

__all__ = ["AsyncClient", "Client"]


class AsyncClient(httpx.AsyncClient):
    """``httpx.AsyncClient`` over h2guard's transport with a safe retry policy.

    ``verify``, ``cert``, ``limits`` and ``http2_prior_knowledge`` configure the transport as
    they would httpx's; ``transport_options`` passes any other
    :class:`~h2guard.AsyncHTTPTransport` option (``max_idle``, ``ping_interval``, ...).
    ``policy`` is the :class:`~h2guard.RetryPolicy`; ``events`` collects transport and retry
    events alike (``client.events``), for :mod:`h2guard.metrics`; ``tracer`` (OpenTelemetry)
    gives every logical request a span (:mod:`h2guard.otel`).
    """

    def __init__(self, *, policy: RetryPolicy | None = None,
                 verify: ssl.SSLContext | str | os.PathLike[str] | bool = True, cert: Any = None,
                 limits: httpx.Limits | None = None, http2_prior_knowledge: bool = False,
                 transport_options: dict[str, Any] | None = None,
                 events: EventLog | None = None,
                 on_retry: Callable[[RetryInfo], None] | None = None,
                 seed: int | None = None, tracer: Any = None, **httpx_options: Any) -> None:
        self.events, self.retry = _parts(
            "AsyncClient", AsyncHTTPTransport, httpx_options, policy=policy, events=events,
            on_retry=on_retry, seed=seed, tracer=tracer, transport_options=transport_options,
            verify=verify,
            cert=cert, limits=limits, http2_prior_knowledge=http2_prior_knowledge)
        super().__init__(transport=self.retry, **httpx_options)


class Client(httpx.Client):
    """The sync twin of :class:`AsyncClient` (``httpx.Client``), same options."""

    def __init__(self, *, policy: RetryPolicy | None = None,
                 verify: ssl.SSLContext | str | os.PathLike[str] | bool = True, cert: Any = None,
                 limits: httpx.Limits | None = None, http2_prior_knowledge: bool = False,
                 transport_options: dict[str, Any] | None = None,
                 events: EventLog | None = None,
                 on_retry: Callable[[RetryInfo], None] | None = None,
                 seed: int | None = None, tracer: Any = None, **httpx_options: Any) -> None:
        self.events, self.retry = _parts(
            "Client", HTTPTransport, httpx_options, policy=policy, events=events,
            on_retry=on_retry, seed=seed, tracer=tracer, transport_options=transport_options,
            verify=verify,
            cert=cert, limits=limits, http2_prior_knowledge=http2_prior_knowledge)
        super().__init__(transport=self.retry, **httpx_options)


def _parts(name: str, transport_cls: Any, httpx_options: dict[str, Any], *,
           policy: RetryPolicy | None, events: EventLog | None,
           on_retry: Callable[[RetryInfo], None] | None, seed: int | None,
           transport_options: dict[str, Any] | None, tracer: Any = None, **transport: Any
           ) -> tuple[EventLog, RetryTransport]:
    """The event log and the RetryTransport(h2guard transport) both clients are built on."""
    if "transport" in httpx_options:
        base = "httpx.AsyncClient" if name == "AsyncClient" else "httpx.Client"
        raise TypeError(f"h2guard.{name} builds its own transport; to wrap another one use "
                        f"{base}(transport=h2guard.RetryTransport(...))")
    # httpx would route proxy= around our transport (its own proxy mounts): the transport
    # tunnels instead, with HTTP/2 inside; trust_env too, which httpx ignores with a transport
    for key in ("proxy", "trust_env"):
        if key in httpx_options:
            transport[key] = httpx_options.pop(key) if key == "proxy" else httpx_options[key]
    log = events if events is not None else EventLog(maxlen=10_000)
    inner = transport_cls(events=log, seed=seed, **transport, **(transport_options or {}))
    return log, RetryTransport(inner, policy=policy, events=log, on_retry=on_retry, seed=seed,
                               tracer=tracer)
