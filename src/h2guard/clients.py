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

import ssl
from collections.abc import Callable
from typing import Any

import httpx

from h2guard.client.transport import AsyncHTTPTransport, HTTPTransport
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
    events alike (``client.events``), for :mod:`h2guard.metrics`.
    """

    def __init__(self, *, policy: RetryPolicy | None = None,
                 verify: ssl.SSLContext | str | bool = True, cert: Any = None,
                 limits: httpx.Limits | None = None, http2_prior_knowledge: bool = False,
                 transport_options: dict[str, Any] | None = None,
                 events: EventLog | None = None,
                 on_retry: Callable[[RetryInfo], None] | None = None,
                 seed: int | None = None, **httpx_options: Any) -> None:
        if "transport" in httpx_options:
            raise TypeError("h2guard.AsyncClient builds its own transport; to wrap another "
                            "one use httpx.AsyncClient(transport=h2guard.RetryTransport(...))")
        self.events = events if events is not None else EventLog(maxlen=10_000)
        inner = AsyncHTTPTransport(verify=verify, cert=cert, limits=limits,
                                   http2_prior_knowledge=http2_prior_knowledge,
                                   events=self.events, seed=seed, **(transport_options or {}))
        self.retry = RetryTransport(inner, policy=policy, events=self.events,
                                    on_retry=on_retry, seed=seed)
        super().__init__(transport=self.retry, **httpx_options)


class Client(httpx.Client):
    """The sync twin of :class:`AsyncClient` (``httpx.Client``), same options."""

    def __init__(self, *, policy: RetryPolicy | None = None,
                 verify: ssl.SSLContext | str | bool = True, cert: Any = None,
                 limits: httpx.Limits | None = None, http2_prior_knowledge: bool = False,
                 transport_options: dict[str, Any] | None = None,
                 events: EventLog | None = None,
                 on_retry: Callable[[RetryInfo], None] | None = None,
                 seed: int | None = None, **httpx_options: Any) -> None:
        if "transport" in httpx_options:
            raise TypeError("h2guard.Client builds its own transport; to wrap another one use "
                            "httpx.Client(transport=h2guard.RetryTransport(...))")
        self.events = events if events is not None else EventLog(maxlen=10_000)
        inner = HTTPTransport(verify=verify, cert=cert, limits=limits,
                              http2_prior_knowledge=http2_prior_knowledge, events=self.events,
                              seed=seed, **(transport_options or {}))
        self.retry = RetryTransport(inner, policy=policy, events=self.events,
                                    on_retry=on_retry, seed=seed)
        super().__init__(transport=self.retry, **httpx_options)
