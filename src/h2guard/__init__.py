"""h2guard: make HTTP/2 stream resets boring.

The public API is what ``__all__`` names and nothing else; the parts live in subpackages
(``h2guard.chaos``, ``h2guard.client``, ``h2guard.retry``; the doctor, idempotency
middleware and bench follow).
"""

from __future__ import annotations

from h2guard.client.sync import HTTPTransport
from h2guard.client.transport import AsyncHTTPTransport
from h2guard.clients import AsyncClient, Client
from h2guard.errors import Failure, failure_of
from h2guard.retry import RetryPolicy, RetryTransport

__version__ = "0.1.0"

__all__ = ["AsyncClient", "AsyncHTTPTransport", "Client", "Failure", "HTTPTransport",
           "RetryPolicy", "RetryTransport", "__version__", "failure_of"]
