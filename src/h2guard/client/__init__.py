"""h2guard.client: an httpx transport that loses no request to GOAWAY, stream limits or stale
connections (see :mod:`h2guard.client.transport`)."""

from h2guard.client.sync import HTTPTransport
from h2guard.client.transport import AsyncHTTPTransport

__all__ = ["AsyncHTTPTransport", "HTTPTransport"]
