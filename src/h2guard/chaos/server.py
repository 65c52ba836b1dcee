"""The chaos server's lifecycle: listen, accept, hand each connection to its adapter, stop.

The parts (docs/architecture.md, principle 1): :mod:`~h2guard.chaos.executor` decides
everything about one HTTP/2 connection with no I/O (faults, limits, streams, proxying);
:mod:`~h2guard.chaos.adapter` moves its bytes and timers over asyncio; :mod:`~h2guard.chaos.h1`
serves HTTP/1.1 clients; :mod:`~h2guard.chaos.upstream` talks to the upstream in proxy mode.
This module owns what they share (the fault set, the event log, the ledger, the counters) and
passes each of them only the small interface it needs, so none of them imports the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import ssl
import tempfile
import time
from pathlib import Path
from typing import Any

from h2guard.chaos.adapter import H2Adapter, SessionLike
from h2guard.chaos.app import App
from h2guard.chaos.config import ServerConfig
from h2guard.chaos.executor import MAX_REQUEST_BODY, ExecutorContext
from h2guard.chaos.faults import FaultSet
from h2guard.chaos.h1 import H1Protocol
from h2guard.chaos.ledger import Ledger
from h2guard.chaos.model import Scenario
from h2guard.events import EventLog

TRUSTME_MISSING = (
    "the chaos server's TLS needs a generated CA, which needs the chaos extra: "
    "pip install 'h2guard[chaos]' (or serve h2c, or give your own certificate and key)")
"""The message of the ImportError raised when TLS needs trustme and it is not installed."""

__all__ = ["MAX_REQUEST_BODY", "ChaosServer", "ServerConfig"]


class ChaosServer:
    """A running chaos server. Create it with :func:`h2guard.chaos.serve` or the CLI.

    ``events`` is the event log (every injected fault is a ``chaos.fault`` event), ``ledger``
    the side-effect ledger of ``POST /orders``, ``faults`` the live fault set.
    """

    def __init__(self, scenario: Scenario | None = None, *,
                 config: ServerConfig | None = None) -> None:
        self.config = config or ServerConfig()
        self.scenario = scenario or Scenario()
        self.faults = FaultSet(self.scenario, seed=self.config.seed,
                               time_scale=self.config.time_scale)
        self.events = EventLog()
        self.ledger = Ledger()
        self.app = App(self.ledger,
                       honour_idempotency_keys=self.config.honour_idempotency_keys)
        self.upstream: Any = None  # h2guard.chaos.upstream.Upstream in proxy mode
        self.fault_counts: dict[tuple[str, str], int] = {}
        self.requests = 0
        self.ca_file: str | None = None
        self.control: Any = None
        self.started_at = 0.0
        self._server: asyncio.Server | None = None
        self._connections: set[Any] = set()  # H2Adapter and H1Protocol, while open
        self._tasks: set[asyncio.Task[Any]] = set()
        self._conn_ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self._ssl: ssl.SSLContext | None = None
        self.port = 0

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Bind and start accepting; the URL is valid when this returns."""
        self._loop = asyncio.get_running_loop()
        cfg = self.config
        if not cfg.h2c:
            self._ssl = self._tls_context()
        if cfg.upstream is not None:
            from h2guard.chaos.upstream import Upstream

            self.upstream = Upstream.from_config(cfg)  # options from cfg.extra
        self._context = ExecutorContext(
            faults=self.faults, app=self.app, emit=self.events.emit,
            count_fault=self.count_fault, count_request=self.count_request,
            count_attempt=self.count_attempt,
            limits=self.scenario.limits, proxy=self.upstream is not None,
            max_header_list_size=cfg.max_header_list_size,
            validate_headers=cfg.validate_headers)
        limits = self.scenario.limits
        # the TLS handshake comes before the executor's own handshake deadline: bound it too
        tls_deadline = limits.handshake_timeout \
            if self._ssl is not None and limits.enabled else None
        self._server = await self._loop.create_server(
            lambda: H2Adapter(self), cfg.host, cfg.port, ssl=self._ssl, backlog=1024,
            ssl_handshake_timeout=tls_deadline, reuse_address=True)
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]
        self.started_at = time.time()
        if cfg.control_port is not None:
            from h2guard.chaos.control import start_control

            try:
                self.control = await start_control(self, host=cfg.control_host,
                                                   port=cfg.control_port,
                                                   allow_remote=cfg.control_allow_remote,
                                                   token=cfg.control_token)
            except BaseException:  # e.g. a non-loopback host or a busy port: do not leak
                await self.stop()
                raise
        self.events.emit("chaos.server.started", url=self.url, scenario=self.scenario.name)

    async def stop(self) -> None:
        """Stop accepting, close every connection (black holes too), cancel proxy work."""
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.control is not None:
            await self.control.close()
        if self.upstream is not None:
            await self.upstream.aclose()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None
        await asyncio.sleep(0)
        self.events.emit("chaos.server.stopped")
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    async def __aenter__(self) -> ChaosServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _tls_context(self) -> ssl.SSLContext:
        cfg = self.config
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        if cfg.certfile:
            ctx.load_cert_chain(cfg.certfile, cfg.keyfile)
            return ctx
        try:
            import trustme
        except ModuleNotFoundError as exc:
            if exc.name != "trustme":
                raise
            raise ModuleNotFoundError(TRUSTME_MISSING, name="trustme") from None

        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost", "::1")
        if cfg.ca_dir:
            folder = Path(cfg.ca_dir)
            folder.mkdir(parents=True, exist_ok=True)
        else:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="h2guard-chaos-")
            folder = Path(self._tmpdir.name)
        ca_path = folder / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_path))
        cert.configure_cert(ctx)
        self.ca_file = str(ca_path)
        return ctx

    # ---------------------------------------------------------------- views

    @property
    def url(self) -> str:
        host = self.config.host
        if ":" in host:
            host = f"[{host}]"
        return f"{'http' if self.config.h2c else 'https'}://{host}:{self.port}"

    @property
    def connections(self) -> int:
        return len(self._connections)

    # ---------------------------------------------------------------- for the connections

    def count_fault(self, kind: str, code: str) -> None:
        """One more fault (or limit) of this kind and code, for the summary and the stats."""
        key = (kind, code)
        self.fault_counts[key] = self.fault_counts.get(key, 0) + 1

    def count_request(self, request_id: str | None = None) -> None:
        """One more request, any protocol; its ``x-request-id`` counts as one attempt."""
        self.requests += 1
        if request_id is not None:
            self.ledger.arrived(request_id)

    def count_attempt(self, request_id: str | None) -> None:
        """A stream refused before it became a request: an attempt all the same."""
        if request_id is not None:
            self.ledger.arrived(request_id)

    def context(self) -> ExecutorContext:
        """What each HTTP/2 connection's executor gets of this server."""
        return self._context

    def next_connection_id(self) -> int:
        return next(self._conn_ids)

    def upstream_session(self) -> SessionLike | None:
        """A new upstream session for one downstream connection (proxy mode), else None."""
        return self.upstream.session() if self.upstream is not None else None

    @property
    def buffer_limit(self) -> int:
        """Bytes of body one stream may hold while the other side is slower."""
        return self.scenario.limits.max_stream_buffer

    def track(self, conn: object, alive: bool) -> None:
        if alive:
            self._connections.add(conn)
        else:
            self._connections.discard(conn)

    def start_h1(self, transport: asyncio.Transport, cid: int, first: bytes) -> None:
        """Hand a connection that speaks HTTP/1.1 to that side."""
        h1 = H1Protocol(self, cid)
        transport.set_protocol(h1)
        h1.connection_made(transport)
        if first:
            h1.data_received(first)

    def keep_task(self, task: asyncio.Task[Any]) -> None:
        """Hold a background task until it ends (the server cancels the rest when it stops)."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def stats(self) -> dict[str, Any]:
        """Totals for the shutdown summary and the control API."""
        return {
            "url": self.url,
            "scenario": self.scenario.name,
            "uptime": round(time.time() - self.started_at, 3) if self.started_at else 0.0,
            "open_connections": self.connections,
            "connections": self.events.counts.get("chaos.connection.opened", 0),
            "requests": self.requests,
            "faults": [{"kind": k, "code": c, "count": n}
                       for (k, c), n in sorted(self.fault_counts.items())],
            "ledger": {"total_effects": self.ledger.total,
                       "duplicate_keys": len(self.ledger.duplicate_keys)},
        }
