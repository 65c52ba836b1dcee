"""The chaos server's HTTP control API: change faults, read events, the ledger and metrics.

It listens on its own port (``ServerConfig.control_port``; ``0`` picks a free one), on loopback
only unless ``allow_remote=True``: whoever reaches it can change what the chaos server does and
erase its ledger. It speaks HTTP/1.1 with keep-alive (asyncio streams + h11) and JSON::

    GET    /                     this index
    GET    /health               {"ok": true, "url": <chaos server url>, ...}
    GET    /faults               [{"id", "fired", "kind", ...}, ...]
    POST   /faults               one fault table (the keys of a TOML [[faults]] entry) or a list
                                 of them -> 201 {"id", "fired", ...} (or a list)
    DELETE /faults               remove every fault -> {"removed": N}
    GET    /faults/{id}          one fault
    DELETE /faults/{id}          remove one fault -> 200, or 404
    GET    /scenario             the scenario the server started with
    GET    /ledger?effects=1     the side-effect ledger (effects=1 lists every effect)
    DELETE /ledger               reset the ledger
    GET    /events?since=SEQ&name=PREFIX&limit=N
                                 {"last_seq", "more", "events": [...]}, oldest first
    GET    /stats                the server's totals
    GET    /metrics              Prometheus text format (501 without prometheus-client)

For example::

    curl -s localhost:9901/faults -H 'content-type: application/json' \\
         -d '{"kind": "rst_stream", "code": "INTERNAL_ERROR",
              "when": {"path": "/orders", "max_fires": 1}}'
    curl -s 'localhost:9901/events?since=0&name=chaos.fault'

(curl 7.82 and later: ``curl --json '{...}' localhost:9901/faults`` sets the header itself.)

A per-stream fault added here applies to the very next stream. A connection-level fault
(``idle_timeout``, ``max_age``, ``max_concurrent_streams``, ``request_cap``) applies to
connections opened afterwards, and the newest of each kind wins over the scenario's.

Loopback is not a boundary for a browser: any web page the user opens can send requests to
``127.0.0.1``. So every request must also pass these rules, in this order:

* ``Host`` (and the authority of an absolute request target) must name this API, port
  included: ``127.0.0.1:PORT``, ``localhost:PORT``, ``[::1]:PORT``, the bound address, the
  address the connection arrived at, or (bound beyond loopback) this machine's host name;
  case does not matter. Anything else is 403: that defeats DNS rebinding, where a page on
  ``evil.example`` re-points its own name at 127.0.0.1 and talks to us "same-origin".
* An ``Origin`` header, if present, must be this API's own origin (``http://`` + one of the
  names above): else 403, so a cross-origin page cannot drive it. Clients that send no Origin
  (curl, scripts, httpx) are fine.
* With a token (``ServerConfig.control_token``, ``start_control(token=...)``), every request but
  ``GET /health`` needs ``Authorization: Bearer <token>``: else 401 with
  ``WWW-Authenticate: Bearer``. Without the token ``/health`` answers only ``{"ok": true}``.
* POST, PUT, PATCH and any request with a body need ``Content-Type: application/json``
  (parameters such as ``; charset=utf-8`` are fine): else 415. A browser sends a cross-origin
  ``text/plain`` (or form) POST without asking first (a CORS "simple request"); JSON it does not.
  (An unknown path or method, 404 or 405, is reported before this.)

Bound beyond loopback (``allow_remote=True``) without a token, the API warns loudly: a
``logging`` warning on ``h2guard.chaos`` and a ``chaos.control_unprotected`` event, and
:attr:`ControlServer.warning` holds the text.

Errors are ``{"error": "..."}`` with 400 (malformed JSON, an invalid fault: the
:class:`~h2guard.chaos.scenario.ScenarioError` message, a bad query parameter), 401, 403, 404,
405 (with ``Allow``), 413 (request bodies are limited to 1 MiB) or 415.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import http
import ipaddress
import json
import logging
import os
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

import h11

from h2guard.chaos.scenario import ScenarioError, fault_to_dict, parse_fault, scenario_to_dict

if TYPE_CHECKING:
    from h2guard.chaos.faults import FaultSet
    from h2guard.chaos.ledger import Ledger
    from h2guard.chaos.model import Fault, Scenario
    from h2guard.events import EventLog
    from h2guard.metrics import ChaosMetrics


class ControlledServer(Protocol):
    """What the control API reads and changes of a chaos server (passed in, so this module
    never imports the server)."""

    events: EventLog
    faults: FaultSet
    ledger: Ledger
    scenario: Scenario

    @property
    def url(self) -> str: ...

    def stats(self) -> dict[str, Any]: ...

__all__ = ["MAX_BODY", "ControlBindError", "ControlServer", "check_token", "describe_os_error",
           "start_control"]

log = logging.getLogger("h2guard.chaos")

MAX_BODY = 1 << 20
"""Largest accepted request body (1 MiB)."""
MAX_EVENTS = 100_000
DEFAULT_EVENTS = 1000
_MAX_HEAD = 64 * 1024
_READ_SIZE = 65536
_KEEPALIVE_TIMEOUT = 75.0  # an idle keep-alive connection is closed after this
_REQUEST_TIMEOUT = 30.0  # reading one request, or writing one response, may take this long
_LINGER_TIME = 2.0  # after a 413, read and drop what the client still sends, this long at most
_LINGER_BYTES = 16 * MAX_BODY
_JSON = "application/json"
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")  # visible ASCII: what fits an Authorization header
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


# --------------------------------------------------------------------------------------------
# requests and replies


@dataclass(slots=True)
class _Request:
    method: str
    path: str
    query: dict[str, list[str]]
    body: bytes
    param: str = ""
    authorized: bool = True


@dataclass(slots=True)
class _Reply:
    status: int
    body: bytes
    content_type: str = _JSON
    headers: list[tuple[str, str]] = field(default_factory=list)


class _HTTPError(Exception):
    def __init__(self, status: int, message: str,
                 headers: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = list(headers)


def _json_reply(status: int, payload: object,
                headers: Sequence[tuple[str, str]] = ()) -> _Reply:
    body = json.dumps(payload, default=_jsonable).encode() + b"\n"
    return _Reply(status, body, _JSON, list(headers))


def _jsonable(value: object) -> object:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    return str(value)


def _error(status: int, message: str, headers: Sequence[tuple[str, str]] = ()) -> _Reply:
    return _json_reply(status, {"error": message}, headers)


Handler = Callable[[_Request], _Reply]


# --------------------------------------------------------------------------------------------
# the server


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def describe_os_error(exc: OSError) -> str:
    """The cause of ``exc`` in a few words ("address already in use").

    asyncio wraps a bind error in a long sentence ("error while attempting to bind on address
    ('127.0.0.1', 9901): ..."), so the errno is turned back into its plain text; a resolver
    error (:class:`socket.gaierror`) has no such errno and keeps its own text.
    """
    if isinstance(exc, socket.gaierror) or not exc.errno or exc.errno < 0:
        text = exc.strerror or str(exc) or type(exc).__name__
    else:
        text = os.strerror(exc.errno)
    return text[:1].lower() + text[1:]


class ControlBindError(OSError):
    """The control API could not listen on ``host:port``.

    An :class:`OSError` (callers that catch one still do) that says which listener failed, so
    a busy control port is not reported as a busy chaos port.
    """

    def __init__(self, host: str, port: int, cause: OSError) -> None:
        self.host = host
        self.port = port
        self.reason = describe_os_error(cause)
        super().__init__(cause.errno, self.reason)

    def __str__(self) -> str:
        return (f"cannot listen on {_authority(self.host, self.port)} for the control API: "
                f"{self.reason}")


async def start_control(server: ControlledServer, *, host: str = "127.0.0.1", port: int = 0,
                        allow_remote: bool = False, token: str | None = None) -> ControlServer:
    """Start the control API of ``server`` on ``host:port`` (``port=0`` picks a free port).

    ``token``, when set, is required as ``Authorization: Bearer <token>`` on every request but
    ``GET /health``. Raises :class:`ValueError` for a host that is not loopback unless
    ``allow_remote``, or for a token that cannot travel in a header, and
    :class:`ControlBindError` when the address cannot be bound. Bound beyond loopback without a
    token, it warns (see the module docstring): that is allowed, but rarely what one wants.
    """
    if not allow_remote and not _is_loopback(host):
        raise ValueError(
            f"refusing to bind the chaos control API to non-loopback host {host!r}: anyone who "
            "can reach it can change the faults and reset the ledger; use 127.0.0.1 or ::1, "
            "or pass allow_remote=True (CLI: --allow-remote-control)")
    if not 0 <= port <= 65535:
        raise ValueError(f"control port must be within 0..65535, got {port}")
    check_token(token)
    bind = "127.0.0.1" if host.lower() == "localhost" else host.strip("[]")
    control = ControlServer(server, bind, token=token)
    await control._start(port)
    if token is None and not _is_loopback(bind):
        control._warn_unprotected()
    return control


def check_token(token: str | None) -> None:
    """Raise :class:`ValueError` for a token a client could not send back.

    It travels in an ``Authorization`` header, so it must be visible ASCII with no spaces; an
    empty one would protect nothing while looking like it does.
    """
    if token is None:
        return
    if not token:
        raise ValueError("the control token is empty: give a real one, or none at all")
    if not _TOKEN_CHARS.fullmatch(token):
        raise ValueError("the control token must be visible ASCII with no spaces (it is sent "
                         "as 'Authorization: Bearer <token>')")


class ControlServer:
    """A running control API (see the module docstring). ``close()`` stops it and closes every
    keep-alive connection. ``token`` is the bearer token every request but ``GET /health``
    must carry (None: no token is asked for)."""

    def __init__(self, server: ControlledServer, host: str, *, token: str | None = None) -> None:
        check_token(token)
        self.chaos = server
        self.host = host
        self.port = 0
        self.accepted = 0
        """Connections accepted so far."""
        self.warning: str | None = None
        """Set when the API is open to the network without a token (see start_control)."""
        self._token = token.encode("ascii") if token is not None else None
        # the names a Host header may use (the port is checked apart): a browser sends the name
        # the page used, so a rebound evil.example shows up here as exactly that
        self._names = {"127.0.0.1", "localhost", "::1", _norm_host(host)}
        if not _is_loopback(host):
            self._names.add(_norm_host(socket.gethostname()))
        self._names.discard("0.0.0.0")
        self._names.discard("::")
        self._names.discard("")
        self.metrics: ChaosMetrics | None = None
        self.metrics_error: str | None = None
        self._server: asyncio.Server | None = None
        self._tasks: dict[asyncio.Task[Any], asyncio.WriteTransport] = {}
        self._closed = False
        self._routes: dict[str, dict[str, tuple[Handler, str]]] = {}
        self._route("/", "GET", self._index, "this index")
        self._route("/health", "GET", self._health, "liveness and the chaos server's URL")
        self._route("/faults", "GET", self._list_faults, "the live faults, with ids and counts")
        self._route("/faults", "POST", self._add_faults,
                    "add a fault (a JSON object with the keys of a TOML [[faults]] entry), "
                    "or a list of them")
        self._route("/faults", "DELETE", self._clear_faults, "remove every fault")
        self._route("/faults/{id}", "GET", self._get_fault, "one fault")
        self._route("/faults/{id}", "DELETE", self._remove_fault, "remove one fault")
        self._route("/scenario", "GET", self._scenario, "the scenario the server started with")
        self._route("/ledger", "GET", self._ledger,
                    "the side-effect ledger; ?effects=1 lists every effect")
        self._route("/ledger", "DELETE", self._reset_ledger, "reset the ledger")
        self._route("/events", "GET", self._events,
                    "events, oldest first: ?since=SEQ&name=PREFIX&limit=N")
        self._route("/stats", "GET", self._stats, "the server's totals")
        self._route("/metrics", "GET", self._metrics, "Prometheus text format")

    def _route(self, path: str, method: str, handler: Handler, description: str) -> None:
        self._routes.setdefault(path, {})[method] = (handler, description)

    async def _start(self, port: int) -> None:
        try:
            from h2guard.metrics import ChaosMetrics

            ledger = self.chaos.ledger
            self.metrics = ChaosMetrics(
                self.chaos.events, ledger_effects=lambda: float(ledger.total),
                ledger_duplicates=lambda: float(len(ledger.duplicate_keys)))
        except RuntimeError as exc:
            self.metrics_error = str(exc)
        try:
            self._server = await asyncio.start_server(self._connection, self.host, port,
                                                      limit=_READ_SIZE, reuse_address=True)
        except BaseException as exc:
            if self.metrics is not None:
                self.metrics.detach()
            if isinstance(exc, OSError):
                raise ControlBindError(self.host, port, exc) from exc
            raise
        self.port = self._server.sockets[0].getsockname()[1]

    def _warn_unprotected(self) -> None:
        self.warning = (
            f"the chaos control API listens on {_authority(self.host, self.port)}, beyond "
            "loopback, with no token: anyone who can reach it can change the faults and reset "
            "the ledger; set one (ServerConfig.control_token; CLI: --control-token or "
            "H2GUARD_CONTROL_TOKEN)")
        log.warning("%s", self.warning)
        self.chaos.events.emit("chaos.control_unprotected", host=self.host, port=self.port,
                               message=self.warning)

    @property
    def url(self) -> str:
        return f"http://{_authority(self.host, self.port)}"

    @property
    def connections(self) -> int:
        """Connections open right now."""
        return len(self._tasks)

    async def close(self) -> None:
        """Stop listening, close every connection, stop following the event log."""
        if self._closed:
            return
        self._closed = True
        if self._server is not None:
            self._server.close()
        # abort the sockets: every connection task then sees EOF (or a reset) and ends by
        # itself; cancelling is only the fallback for one stuck elsewhere
        for transport in list(self._tasks.values()):
            transport.abort()
        tasks = list(self._tasks)
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=1.0)
            for task in stuck:
                task.cancel()
            if stuck:
                await asyncio.wait(stuck, timeout=1.0)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
        if self.metrics is not None:
            self.metrics.detach()

    async def __aenter__(self) -> ControlServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---------------------------------------------------------------- HTTP/1.1

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self._closed:
            writer.transport.abort()
            return
        self._tasks[task] = writer.transport
        self.accepted += 1
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEAD)
        sockname = writer.get_extra_info("sockname")
        local = _norm_host(str(sockname[0])) if isinstance(sockname, tuple) else ""
        try:
            await self._serve(conn, reader, writer, local)
        except (OSError, TimeoutError, h11.ProtocolError):
            pass  # the client went away, stalled or broke the protocol: just close
        except asyncio.CancelledError:
            writer.transport.abort()
            if not self._closed:
                raise
            # cancelled by close(): end quietly (asyncio's stream callback would otherwise
            # log the cancelled task as an error on Python 3.11)
        finally:
            self._tasks.pop(task, None)
            writer.close()

    async def _serve(self, conn: h11.Connection, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter, local: str) -> None:
        while True:
            try:
                event = await self._next_event(conn, reader, writer, _KEEPALIVE_TIMEOUT)
                if isinstance(event, h11.ConnectionClosed):
                    return
                if not isinstance(event, h11.Request):  # pragma: no cover - h11 guarantees
                    return
                request = event
                declared = _content_length(request)
                if declared is not None and declared > MAX_BODY:
                    await self._too_large(conn, reader, writer, request)
                    return
                body = bytearray()
                while True:
                    event = await self._next_event(conn, reader, writer, _REQUEST_TIMEOUT)
                    if isinstance(event, h11.Data):
                        body += event.data
                        if len(body) > MAX_BODY:
                            await self._too_large(conn, reader, writer, request)
                            return
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    else:  # ConnectionClosed mid-request (h11 usually raises instead)
                        return
            except h11.RemoteProtocolError as exc:
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    reply = _error(exc.error_status_hint, f"bad request: {exc}")
                    await self._send(conn, writer, reply, head=False, close=True)
                return
            method = request.method.decode("ascii", errors="replace").upper()
            reply = self._dispatch(method, request.target.decode("latin-1"), request.headers,
                                   bytes(body), local)
            await self._send(conn, writer, reply, head=method == "HEAD", close=False)
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _next_event(self, conn: h11.Connection, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter, timeout: float) -> Any:
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            if conn.they_are_waiting_for_100_continue:
                writer.write(conn.send(h11.InformationalResponse(
                    status_code=100, headers=[], reason=b"Continue")) or b"")
            data = await asyncio.wait_for(reader.read(_READ_SIZE), timeout)
            conn.receive_data(data)

    async def _send(self, conn: h11.Connection, writer: asyncio.StreamWriter, reply: _Reply,
                    *, head: bool, close: bool) -> None:
        headers = [("content-type", reply.content_type),
                   ("content-length", str(len(reply.body))),
                   ("cache-control", "no-store"), *reply.headers]
        if close:
            headers.append(("connection", "close"))
        try:
            reason = http.HTTPStatus(reply.status).phrase
        except ValueError:
            reason = ""
        out = conn.send(h11.Response(status_code=reply.status, headers=headers,
                                     reason=reason)) or b""
        if reply.body and not head:
            out += conn.send(h11.Data(data=reply.body)) or b""
        out += conn.send(h11.EndOfMessage()) or b""
        writer.write(out)
        await asyncio.wait_for(writer.drain(), _REQUEST_TIMEOUT)

    async def _too_large(self, conn: h11.Connection, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter, request: h11.Request) -> None:
        """Answer 413, then read and drop what the client still sends for a moment (a lingering
        close), so that it sees the answer instead of a reset."""
        reply = _error(413, f"request body too large: the limit is {MAX_BODY} bytes")
        await self._send(conn, writer, reply, head=request.method == b"HEAD", close=True)
        with contextlib.suppress(OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _LINGER_TIME
        dropped = 0
        while dropped < _LINGER_BYTES:
            left = deadline - loop.time()
            if left <= 0:
                return
            try:
                data = await asyncio.wait_for(reader.read(_READ_SIZE), left)
            except TimeoutError:
                return
            if not data:
                return
            dropped += len(data)

    # ---------------------------------------------------------------- routing

    def _dispatch(self, method: str, target: str, headers: Sequence[tuple[bytes, bytes]],
                  body: bytes, local: str = "") -> _Reply:
        denied = self._refuse_foreign(target, headers, local)
        if denied is not None:
            return denied
        url = urlsplit(target)
        path = unquote(url.path) or "/"
        if len(path) > 1:
            path = path.rstrip("/") or "/"
        key, param = path, ""
        if path.startswith("/faults/"):
            key, param = "/faults/{id}", path[len("/faults/"):]
        problem = self._token_problem(headers)
        if problem is not None and not (key == "/health" and method in ("GET", "HEAD")):
            return _error(401, problem, [("www-authenticate",
                                          'Bearer realm="h2guard chaos control"')])
        methods = self._routes.get(key)
        if methods is None:
            return _error(404, f"no such endpoint: {path}; GET / lists them")
        entry = methods.get("GET" if method == "HEAD" else method)
        if entry is None:
            allow = sorted({*methods, "HEAD"} if "GET" in methods else methods)
            return _error(405, f"method {method} not allowed on {path}; use "
                               f"{', '.join(allow)}", [("allow", ", ".join(allow))])
        if method in _BODY_METHODS or body:
            media = _media_type(headers)
            if media != _JSON:
                got = f"got {media!r}" if media else "it has none, or several"
                return _error(415, f"{method} {path} needs Content-Type: application/json "
                                   f"({got}); with curl: -H 'content-type: application/json'")
        request = _Request(method, path, parse_qs(url.query, keep_blank_values=True), body,
                           param, authorized=problem is None)
        try:
            return entry[0](request)
        except _HTTPError as exc:
            return _error(exc.status, exc.message, exc.headers)
        except Exception as exc:  # a bug here must not take the connection (or server) down
            return _error(500, f"internal error: {type(exc).__name__}: {exc}")

    def _refuse_foreign(self, target: str, headers: Sequence[tuple[bytes, bytes]],
                        local: str) -> _Reply | None:
        """403 unless Host (and an absolute target, and any Origin) name this very API.

        A browser fills these in from the page's URL and a script cannot forge them, so they
        tell a request from curl or a test apart from one a web page was made to send.
        """
        hosts = _values(headers, b"host")
        if len(hosts) != 1:
            return _error(403, "a request needs exactly one Host header naming this control "
                               f"API ({self._expected()})")
        if not self._is_us(_split_authority(hosts[0]), local):
            return _error(403, f"Host {hosts[0]!r} is not this control API: use "
                               f"{self._expected()} (other names are refused, against DNS "
                               "rebinding)")
        if not target.startswith("/") and target != "*":
            netloc = urlsplit(target).netloc
            if not self._is_us(_split_authority(netloc), local):
                return _error(403, f"request target {target!r} names another host; send "
                                   f"the path only, to {self._expected()}")
        origins = _values(headers, b"origin")
        if len(origins) > 1 or (origins and not self._is_us(_origin_authority(origins[0]),
                                                             local)):
            return _error(403, f"cross-origin request from Origin {origins[0]!r} refused: the "
                               f"control API answers only its own origin "
                               f"(http://{self._expected()}) and clients that send no Origin")
        return None

    def _is_us(self, authority: tuple[str, int] | None, local: str) -> bool:
        if authority is None:
            return False
        name, port = authority
        return port == self.port and (name in self._names or name == local)

    def _expected(self) -> str:
        """The address to suggest in an error (a wildcard bind answers on 127.0.0.1 too)."""
        wildcard = self.host in ("0.0.0.0", "::", "")
        return _authority("127.0.0.1" if wildcard else self.host, self.port)

    def _token_problem(self, headers: Sequence[tuple[bytes, bytes]]) -> str | None:
        """None when the request may go on; else why it may not (for the 401)."""
        if self._token is None:
            return None
        values = _values(headers, b"authorization")
        if not values:
            return ("this control API needs a token: send 'Authorization: Bearer <token>' "
                    "(the server's --control-token / H2GUARD_CONTROL_TOKEN)")
        scheme, _, credential = values[-1].strip().partition(" ")
        if len(values) > 1 or scheme.lower() != "bearer":
            return "send the token as exactly one 'Authorization: Bearer <token>' header"
        if not hmac.compare_digest(credential.strip().encode("latin-1"), self._token):
            return "wrong token in 'Authorization: Bearer'"
        return None

    # ---------------------------------------------------------------- endpoints

    def _index(self, req: _Request) -> _Reply:
        endpoints = [{"method": method, "path": path, "description": description}
                     for path, methods in self._routes.items()
                     for method, (_, description) in methods.items()]
        return _json_reply(200, {"service": "h2guard chaos control API", "url": self.chaos.url,
                                 "control": self.url, "endpoints": endpoints})

    def _health(self, req: _Request) -> _Reply:
        if not req.authorized:  # a liveness probe needs no token, and learns no more
            return _json_reply(200, {"ok": True})
        return _json_reply(200, {"ok": True, "url": self.chaos.url,
                                 "scenario": self.chaos.scenario.name})

    def _fault_entry(self, fid: int, fault: Fault) -> dict[str, object]:
        return {"id": fid, "fired": self.chaos.faults.fired(fid), **fault_to_dict(fault)}

    def _list_faults(self, req: _Request) -> _Reply:
        return _json_reply(200, [self._fault_entry(fid, fault)
                                 for fid, fault in self.chaos.faults.items()])

    def _add_faults(self, req: _Request) -> _Reply:
        data = _parse_json(req.body)
        if isinstance(data, list):
            parsed = [_parse_fault(item, f"faults[{i}]") for i, item in enumerate(data)]
            added = [(self.chaos.faults.add(fault), fault) for fault in parsed]
            self._emit_change("add", [fid for fid, _ in added])
            return _json_reply(201, [self._fault_entry(fid, fault) for fid, fault in added])
        fault = _parse_fault(data, "fault")
        fid = self.chaos.faults.add(fault)
        self._emit_change("add", [fid])
        return _json_reply(201, self._fault_entry(fid, fault), [("location", f"/faults/{fid}")])

    def _clear_faults(self, req: _Request) -> _Reply:
        ids = [fid for fid, _ in self.chaos.faults.items()]
        self.chaos.faults.clear()
        self._emit_change("clear", ids)
        return _json_reply(200, {"removed": len(ids), "ids": ids})

    def _find_fault(self, param: str) -> tuple[int, Fault]:
        fid = int(param) if param.isdigit() and len(param) < 19 else None
        for key, fault in self.chaos.faults.items():
            if key == fid:
                return key, fault
        raise _HTTPError(404, f"no fault with id {param!r}; GET /faults lists them")

    def _get_fault(self, req: _Request) -> _Reply:
        fid, fault = self._find_fault(req.param)
        return _json_reply(200, self._fault_entry(fid, fault))

    def _remove_fault(self, req: _Request) -> _Reply:
        fid, fault = self._find_fault(req.param)
        entry = self._fault_entry(fid, fault)
        self.chaos.faults.remove(fid)
        self._emit_change("remove", [fid])
        return _json_reply(200, {"removed": True, **entry})

    def _emit_change(self, action: str, ids: list[int]) -> None:
        self.chaos.events.emit("chaos.control.faults", action=action, ids=ids)

    def _scenario(self, req: _Request) -> _Reply:
        return _json_reply(200, scenario_to_dict(self.chaos.scenario))

    def _ledger(self, req: _Request) -> _Reply:
        effects = _flag(req.query, "effects")
        return _json_reply(200, self.chaos.ledger.summary(with_effects=effects))

    def _reset_ledger(self, req: _Request) -> _Reply:
        before = self.chaos.ledger.total
        self.chaos.ledger.reset()
        self.chaos.events.emit("chaos.control.ledger_reset", removed_effects=before)
        return _json_reply(200, {"ok": True, "removed_effects": before})

    def _events(self, req: _Request) -> _Reply:
        since = _int_param(req.query, "since", 0, minimum=0)
        limit = _int_param(req.query, "limit", DEFAULT_EVENTS, minimum=1, maximum=MAX_EVENTS)
        name = _last(req.query, "name") or None
        log = self.chaos.events
        last_seq = log.last_seq
        found = log.since(since, name=name)
        return _json_reply(200, {"last_seq": last_seq, "more": len(found) > limit,
                                 "events": [e.to_json() for e in found[:limit]]})

    def _stats(self, req: _Request) -> _Reply:
        return _json_reply(200, self.chaos.stats())

    def _metrics(self, req: _Request) -> _Reply:
        if self.metrics is None:
            return _error(501, self.metrics_error or "metrics are not available")
        body, content_type = self.metrics.render()
        return _Reply(200, body, content_type)


# --------------------------------------------------------------------------------------------
# helpers


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _norm_host(host: str) -> str:
    """A host name or address as a Host header would have it, made comparable: lower case, no
    brackets or trailing dot, an IP address in its one canonical spelling."""
    host = host.strip().strip("[]").lower()
    if host.endswith(".") and not host.endswith(".."):
        host = host[:-1]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)  # an IPv4 client of a dual-stack "::" listener
    return str(address)


def _split_authority(value: str) -> tuple[str, int] | None:
    """``host:port`` (``[v6]:port``) -> (normalised host, port); None without a valid port."""
    value = value.strip()
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or value[end + 1:end + 2] != ":":
            return None
        host, digits = value[1:end], value[end + 2:]
    else:
        host, sep, digits = value.rpartition(":")
        if not sep or ":" in host:  # no port, or an IPv6 address without brackets
            return None
    if not host or not (digits.isascii() and digits.isdigit()) or len(digits) > 5:
        return None
    port = int(digits)
    return (_norm_host(host), port) if port <= 65535 else None


def _origin_authority(origin: str) -> tuple[str, int] | None:
    """``http://host[:port]`` -> (host, port); None for any other scheme, ``null`` or junk."""
    scheme, sep, rest = origin.strip().partition("://")
    if not sep or scheme.lower() != "http" or not rest or any(c in rest for c in "/?#@"):
        return None
    if ":" not in rest.rpartition("]")[2]:
        rest += ":80"
    return _split_authority(rest)


def _values(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> list[str]:
    return [value.decode("latin-1") for key, value in headers if key == name]


def _media_type(headers: Sequence[tuple[bytes, bytes]]) -> str:
    """The media type of the single Content-Type header, lower case, without parameters
    (``""`` when there is none, or more than one)."""
    values = _values(headers, b"content-type")
    if len(values) != 1:
        return ""
    return values[0].partition(";")[0].strip().lower()


def _content_length(request: h11.Request) -> int | None:
    for name, value in request.headers:
        if name == b"content-length":
            return int(value)  # h11 has validated it
    return None


def _parse_json(body: bytes) -> object:
    if not body.strip():
        raise _HTTPError(400, "empty request body; send a JSON object")
    try:
        return json.loads(body)
    except UnicodeDecodeError as exc:
        raise _HTTPError(400, f"malformed JSON: the body is not UTF-8 ({exc.reason})") from exc
    except ValueError as exc:  # json.JSONDecodeError
        raise _HTTPError(400, f"malformed JSON: {exc}") from exc


def _parse_fault(data: object, where: str) -> Fault:
    if not isinstance(data, dict):
        raise _HTTPError(400, f"{where}: expected a JSON object (a fault table), "
                              f"got {type(data).__name__}")
    try:
        return parse_fault(data, where=where)
    except ScenarioError as exc:
        raise _HTTPError(400, str(exc)) from exc


def _last(query: dict[str, list[str]], key: str) -> str | None:
    values = query.get(key)
    return values[-1] if values else None


def _flag(query: dict[str, list[str]], key: str) -> bool:
    value = _last(query, key)
    if value is None:
        return False
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise _HTTPError(400, f"query parameter {key}={value!r}: use 1 or 0")


def _int_param(query: dict[str, list[str]], key: str, default: int, *, minimum: int,
               maximum: int | None = None) -> int:
    value = _last(query, key)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise _HTTPError(400, f"query parameter {key}={value!r}: not an integer") from None
    if number < minimum or (maximum is not None and number > maximum):
        bound = f"{minimum}..{maximum}" if maximum is not None else f">= {minimum}"
        raise _HTTPError(400, f"query parameter {key}={number}: must be {bound}")
    return number
