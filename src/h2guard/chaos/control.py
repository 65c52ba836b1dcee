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

    curl -s localhost:9901/faults -d '{"kind": "rst_stream", "code": "INTERNAL_ERROR",
                                       "when": {"path": "/orders", "max_fires": 1}}'
    curl -s 'localhost:9901/events?name=chaos.fault&since=0'

A per-stream fault added here applies to the very next stream. A connection-level fault
(``idle_timeout``, ``max_age``, ``max_concurrent_streams``, ``request_cap``) applies to
connections opened afterwards, and the newest of each kind wins over the scenario's.

Errors are ``{"error": "..."}`` with 400 (malformed JSON, an invalid fault: the
:class:`~h2guard.chaos.scenario.ScenarioError` message, a bad query parameter), 404, 405 (with
``Allow``) or 413 (request bodies are limited to 1 MiB).
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import ipaddress
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

import h11

from h2guard.chaos.scenario import ScenarioError, fault_to_dict, parse_fault, scenario_to_dict

if TYPE_CHECKING:
    from h2guard.chaos.model import Fault
    from h2guard.chaos.server import ChaosServer
    from h2guard.metrics import ChaosMetrics

__all__ = ["MAX_BODY", "ControlServer", "start_control"]

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


async def start_control(server: ChaosServer, *, host: str = "127.0.0.1", port: int = 0,
                        allow_remote: bool = False) -> ControlServer:
    """Start the control API of ``server`` on ``host:port`` (``port=0`` picks a free port).

    Raises :class:`ValueError` for a host that is not loopback unless ``allow_remote``.
    """
    if not allow_remote and not _is_loopback(host):
        raise ValueError(
            f"refusing to bind the chaos control API to non-loopback host {host!r}: anyone who "
            "can reach it can change the faults and reset the ledger; use 127.0.0.1 or ::1, "
            "or pass allow_remote=True (CLI: --allow-remote-control)")
    if not 0 <= port <= 65535:
        raise ValueError(f"control port must be within 0..65535, got {port}")
    bind = "127.0.0.1" if host.lower() == "localhost" else host.strip("[]")
    control = ControlServer(server, bind)
    await control._start(port)
    return control


class ControlServer:
    """A running control API (see the module docstring). ``close()`` stops it and closes every
    keep-alive connection."""

    def __init__(self, server: ChaosServer, host: str) -> None:
        self.chaos = server
        self.host = host
        self.port = 0
        self.accepted = 0
        """Connections accepted so far."""
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
        except BaseException:
            if self.metrics is not None:
                self.metrics.detach()
            raise
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

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
        try:
            await self._serve(conn, reader, writer)
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
                     writer: asyncio.StreamWriter) -> None:
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
            reply = self._dispatch(method, request.target.decode("latin-1"), bytes(body))
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

    def _dispatch(self, method: str, target: str, body: bytes) -> _Reply:
        url = urlsplit(target)
        path = unquote(url.path) or "/"
        if len(path) > 1:
            path = path.rstrip("/") or "/"
        key, param = path, ""
        if path.startswith("/faults/"):
            key, param = "/faults/{id}", path[len("/faults/"):]
        methods = self._routes.get(key)
        if methods is None:
            return _error(404, f"no such endpoint: {path}; GET / lists them")
        entry = methods.get("GET" if method == "HEAD" else method)
        if entry is None:
            allow = sorted({*methods, "HEAD"} if "GET" in methods else methods)
            return _error(405, f"method {method} not allowed on {path}; use "
                               f"{', '.join(allow)}", [("allow", ", ".join(allow))])
        request = _Request(method, path, parse_qs(url.query, keep_blank_values=True), body,
                           param)
        try:
            return entry[0](request)
        except _HTTPError as exc:
            return _error(exc.status, exc.message, exc.headers)
        except Exception as exc:  # a bug here must not take the connection (or server) down
            return _error(500, f"internal error: {type(exc).__name__}: {exc}")

    # ---------------------------------------------------------------- endpoints

    def _index(self, req: _Request) -> _Reply:
        endpoints = [{"method": method, "path": path, "description": description}
                     for path, methods in self._routes.items()
                     for method, (_, description) in methods.items()]
        return _json_reply(200, {"service": "h2guard chaos control API", "url": self.chaos.url,
                                 "control": self.url, "endpoints": endpoints})

    def _health(self, req: _Request) -> _Reply:
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
