"""Self-protection of the chaos server: what one hostile or broken peer may cost it.

A chaos server is still a server. ``Scenario(limits=Limits(...))`` (see the ``Limits``
docstring) bounds what one connection may cost: past a limit the server sends GOAWAY with
``limits.code`` (ENHANCE_YOUR_CALM) and closes; a peer that stops reading is aborted once its
unread answers pass ``max_pending_output``; a silent connection is ended by ``idle_timeout``
(GOAWAY NO_ERROR) and one that never finishes its preface by ``handshake_timeout``. Every
cut-off is a ``chaos.limit_exceeded`` event (``connection``, ``limit``, ``code``) and a
``server.fault_counts[("limit_exceeded", limit)]`` count.

The attacks are the published ones: Rapid Reset (CVE-2023-44487), the 2019 flood family
(CVE-2019-9512 PING, -9515 SETTINGS, -9518 empty frames, plus WINDOW_UPDATE, PRIORITY and
unknown frame types), an acknowledgement backlog from a peer that never reads, slowloris, a
thousand silent sockets and an oversize header block. Each attacker is a raw socket writing
frames from :class:`frames.FrameFactory` (one HPACK context per connection) and parsing the
server's bytes with :class:`FrameParser`, so nothing in between can smooth the abuse over.
While an attack runs, a well-behaved client (h2guard's own transport, on its own connection)
must keep being served: a limit that protects the server by starving everyone else is no
protection. And the limits must be limits, not tripwires: they can be turned off, and a busy
but honest client never trips the defaults.

Everything is loopback, in one event loop (server, attacker and probe share it, so an attack
that stalls the server shows up as unanswered probes). Every wait has a timeout and every
attack loop is bounded in frames and seconds. Limits are real seconds (never scaled).
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import hpack
import httpx
import pytest

import h2guard
from frames import FrameFactory
from h2guard.chaos import ChaosServer, serve
from h2guard.chaos.model import Limits, Scenario
from h2guard.events import Event

from .load import gather_bounded
from .rawclient import (
    CONTINUATION,
    GOAWAY,
    HEADERS,
    PING,
    RST_STREAM,
    SETTINGS,
    Frame,
    FrameParser,
)

pytestmark = pytest.mark.timeout(45)

HOST = "127.0.0.1"

NO_ERROR, PROTOCOL_ERROR, REFUSED_STREAM, CANCEL, ENHANCE_YOUR_CALM = 0x0, 0x1, 0x7, 0x8, 0xB
SETTINGS_MAX_HEADER_LIST_SIZE = 0x6
FLAG_PADDED, FLAG_PRIORITY, FLAG_END_HEADERS = 0x8, 0x20, 0x4

LIMIT_EVENT = "chaos.limit_exceeded"

CUT_OFF_WITHIN = 3.0
"""Seconds from the start of an attack to GOAWAY and close (the spec says ~1-2 s; the rest is
slack for two shared cores)."""

PROBES = 20
PROBE_TIMEOUT = 1.0
PROBE_GAP = 0.05
MIN_ANSWERED = 0.8
"""A well-behaved client on its own connection: PROBES sequential GET /echo during an attack,
each given PROBE_TIMEOUT seconds; at least MIN_ANSWERED of them must be answered."""

SMALL_RCVBUF = 4096
"""SO_RCVBUF of a peer that does not read (the kernel doubles it): the server's answers pile
up on its side, not in our receive buffer."""


# --------------------------------------------------------------------------- raw peers


class RawPeer:
    """One raw TCP connection to the server: bytes out, the server's frames in.

    A plain non-blocking socket, not an asyncio stream, because a stream reads ahead on its own
    (64 KiB and more) and a test of a peer that *does not read* must really not read: with
    ``read=False`` nothing calls ``recv`` until :meth:`start_reading`. Frames are built by
    ``ff`` (the test's ``frame_factory``: one HPACK encoder, as one connection has)."""

    def __init__(self, sock: socket.socket, ff: FrameFactory | None = None) -> None:
        self.sock = sock
        self.ff = ff if ff is not None else FrameFactory()
        self.loop = asyncio.get_running_loop()
        self.connected_at = time.monotonic()
        self.received: list[Frame] = []
        self.goaways: list[Frame] = []
        self.eof_at: float | None = None
        self.reset_at: float | None = None
        self.write_error: BaseException | None = None
        self.write_stalled = False
        self.bytes_sent = 0
        self.bytes_received = 0
        self._parser = FrameParser()
        self._changed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, port: int, *, ff: FrameFactory | None = None, read: bool = True,
                   rcvbuf: int | None = None, timeout: float = 2.0) -> RawPeer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if rcvbuf is not None:  # before connect(), so the window scale reflects it
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            await asyncio.wait_for(loop.sock_connect(sock, (HOST, port)), timeout)
        except BaseException:
            sock.close()
            raise
        peer = cls(sock, ff)
        if read:
            peer.start_reading()
        return peer

    @property
    def local_port(self) -> int:
        return int(self.sock.getsockname()[1])

    @property
    def closed_at(self) -> float | None:
        """When the server's FIN or TCP reset was seen (reading), or a write failed."""
        times = [t for t in (self.eof_at, self.reset_at) if t is not None]
        return min(times) if times else None

    @property
    def closed(self) -> bool:
        return self.closed_at is not None

    def start_reading(self) -> None:
        if self._reader is None:
            self._reader = self.loop.create_task(self._read_loop())

    async def _read_loop(self) -> None:
        try:
            while True:
                try:
                    data = await self.loop.sock_recv(self.sock, 1 << 16)
                except OSError:
                    self.reset_at = time.monotonic()
                    return
                now = time.monotonic()
                if not data:
                    self.eof_at = now
                    return
                self.bytes_received += len(data)
                frames = self._parser.feed(data, now)
                self.received.extend(frames)
                self.goaways.extend(f for f in frames if f.type == GOAWAY)
                self._changed.set()
        finally:
            self._changed.set()

    async def send(self, data: bytes, timeout: float = 2.0) -> bool:
        """Write all of ``data``; False once that is impossible: the server reset the
        connection (``write_error``) or stopped taking bytes for ``timeout`` seconds
        (``write_stalled``; the last frame may then be cut)."""
        if self.write_error is not None or self.write_stalled:
            return False
        try:
            await asyncio.wait_for(self.loop.sock_sendall(self.sock, data), timeout)
        except TimeoutError:  # before OSError: TimeoutError is one
            self.write_stalled = True
            return False
        except OSError as exc:
            self.write_error = exc
            return False
        self.bytes_sent += len(data)
        return True

    async def wait_for(self, predicate: Callable[[], Any], timeout: float) -> bool:
        """Wait until ``predicate()`` holds (checked after every read), at most ``timeout``."""
        deadline = time.monotonic() + timeout
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._changed.clear()
            if self._reader is None or self._reader.done():
                await asyncio.sleep(min(left, 0.01))  # nothing will set the event: poll
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)
        return True

    async def wait_closed(self, timeout: float) -> bool:
        self.start_reading()
        return await self.wait_for(lambda: self.closed, timeout)

    async def handshake(self, timeout: float = 2.0) -> None:
        """Preface and SETTINGS, then ACK the server's SETTINGS: a well-behaved start."""
        assert await self.send(self.ff.hello()), self.describe()
        assert await self.wait_for(lambda: self.frames(SETTINGS, ack=False), timeout), \
            f"no SETTINGS from the server\n{self.describe()}"
        assert await self.send(self.ff.settings_ack()), self.describe()

    def frames(self, ftype: int | None = None, stream_id: int | None = None,
               **match: Any) -> list[Frame]:
        return [f for f in self.received
                if (ftype is None or f.type == ftype)
                and (stream_id is None or f.stream_id == stream_id)
                and all(getattr(f, k) == v for k, v in match.items())]

    def describe(self) -> str:
        lines = [f"peer :{self.local_port}: received {len(self.received)} frames "
                 f"({self.bytes_received} bytes), sent {self.bytes_sent} bytes; "
                 f"eof_at={_rel(self.eof_at, self.connected_at)} "
                 f"reset_at={_rel(self.reset_at, self.connected_at)} "
                 f"write_error={self.write_error!r} write_stalled={self.write_stalled}"]
        lines += [f"  {f}" for f in self.received[:5]]
        if len(self.received) > 10:
            lines.append("  ...")
        lines += [f"  {f}" for f in self.received[max(5, len(self.received) - 5):]]
        return "\n".join(lines)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        self.sock.close()


def _rel(at: float | None, since: float) -> str:
    return "None" if at is None else f"+{at - since:.3f}s"


@contextlib.asynccontextmanager
async def raw_peer(port: int, **options: Any) -> AsyncIterator[RawPeer]:
    peer = await RawPeer.open(port, **options)
    try:
        yield peer
    finally:
        await peer.close()


@dataclass
class Flood:
    """What an attack loop did: when it ran, how many frames (or streams) got out, why it
    stopped ("cut off", "write failed", "stalled", "frames", "seconds")."""

    started: float
    ended: float = 0.0
    sent: int = 0
    stopped_by: str = ""


async def flood(peer: RawPeer, batch: Callable[[int], tuple[bytes, int]], *,
                max_items: int, max_seconds: float, stop: Callable[[], bool]) -> Flood:
    """Write ``batch(sent)`` (bytes, items in them) as fast as the server takes them, until
    ``stop()`` (the server cut us off), a write fails, or ``max_items``/``max_seconds``."""
    out = Flood(started=time.monotonic())
    deadline = out.started + max_seconds
    while True:
        if stop():
            out.stopped_by = "cut off"
            break
        if out.sent >= max_items:
            out.stopped_by = "frames"
            break
        left = deadline - time.monotonic()
        if left <= 0:
            out.stopped_by = "seconds"
            break
        data, items = batch(out.sent)
        if not await peer.send(data, timeout=min(left, 2.0)):
            out.stopped_by = "stalled" if peer.write_stalled else "write failed"
            break
        out.sent += items
        # sock_sendall does not yield while the kernel takes everything: let the server (same
        # loop) read, and the probe run
        await asyncio.sleep(0)
    out.ended = time.monotonic()
    return out


# --------------------------------------------------------------------------- server side


def limit_events(server: ChaosServer) -> list[Event]:
    return server.events.since(0, name=LIMIT_EVENT)


def cid_of(server: ChaosServer, peer: RawPeer) -> int | None:
    """The server's connection id for our socket, from its ``chaos.connection.opened`` event
    (None before the server has one: it names a connection once it knows it speaks h2)."""
    want = f"{HOST}:{peer.local_port}"
    for ev in server.events.since(0, name="chaos.connection.opened"):
        if ev.data.get("peer") == want:
            return int(ev.data["connection"])
    return None


def events_for(server: ChaosServer, cid: int | None) -> list[Event]:
    return [e for e in limit_events(server) if cid is None or e.data.get("connection") == cid]


def server_view(server: ChaosServer) -> str:
    limits = [dict(e.data) for e in limit_events(server)][:5]
    faults = {f"{k}/{c}": n for (k, c), n in server.fault_counts.items()}
    return (f"server: {server.connections} connections, limit events {limits} "
            f"(of {len(limit_events(server))}), fault_counts {faults}")


def assert_limit_event(server: ChaosServer, cid: int | None, limits: set[str],
                       code: str = "ENHANCE_YOUR_CALM") -> Event:
    """The connection's cut-off was reported: event fields and the counter."""
    found = events_for(server, cid)
    assert found, f"no {LIMIT_EVENT} event for connection {cid}; {server_view(server)}"
    ev = found[0]
    assert {"connection", "limit", "code"} <= set(ev.data), ev
    assert ev.data["limit"] in limits, ev
    assert ev.data["code"] == code, ev
    assert server.fault_counts.get(("limit_exceeded", ev.data["limit"]), 0) >= 1, \
        server_view(server)
    return ev


async def eventually(predicate: Callable[[], Any], timeout: float) -> bool:
    """Poll a server-side condition (the server runs in this loop) for at most ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def scenario(name: str, limits: Limits | None) -> Scenario:
    return Scenario(name=name) if limits is None else Scenario(name=name, limits=limits)


@pytest.fixture(autouse=True)
async def no_callback_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """An exception escaping a protocol callback (asyncio logs and swallows it) fails the
    test: abuse must be handled, not survived by accident."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        yield errors
    finally:
        loop.set_exception_handler(previous)
    assert not errors, errors


# --------------------------------------------------------------------------- probes


@dataclass
class Probes:
    answered: int = 0
    failures: list[str] = field(default_factory=list)
    slowest: float = 0.0

    @property
    def total(self) -> int:
        return self.answered + len(self.failures)

    def __str__(self) -> str:
        return (f"{self.answered}/{self.total} probes answered (slowest {self.slowest:.3f}s); "
                f"failures {self.failures[:5]}")


@contextlib.asynccontextmanager
async def well_behaved_client(server: ChaosServer, **options: Any
                              ) -> AsyncIterator[httpx.AsyncClient]:
    """h2guard's client on its own connection, connected (one answered GET) before the attack
    starts, so the probes measure serving, not connecting."""
    transport = h2guard.AsyncHTTPTransport(http2_prior_knowledge=True, **options)
    async with httpx.AsyncClient(transport=transport, base_url=server.url,
                                 timeout=PROBE_TIMEOUT) as client:
        warm = await asyncio.wait_for(client.get("/echo"), 2.0)
        assert warm.status_code == 200
        yield client


async def probe(client: httpx.AsyncClient, count: int = PROBES) -> Probes:
    """``count`` GET /echo one after another, each bounded by PROBE_TIMEOUT."""
    out = Probes()
    for i in range(count):
        started = time.monotonic()
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                resp = await client.get("/echo", params={"probe": str(i)})
            if resp.status_code == 200:
                out.answered += 1
            else:
                out.failures.append(f"#{i}: HTTP {resp.status_code}")
        except (httpx.HTTPError, TimeoutError) as exc:
            out.failures.append(f"#{i}: {type(exc).__name__}: {exc}")
        out.slowest = max(out.slowest, time.monotonic() - started)
        await asyncio.sleep(PROBE_GAP)
    return out


@contextlib.asynccontextmanager
async def probing(client: httpx.AsyncClient) -> AsyncIterator[asyncio.Task[Probes]]:
    """Run the probes in the background for the block (cancelled if the block fails)."""
    task = asyncio.get_running_loop().create_task(probe(client))
    try:
        yield task
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def probe_result(task: asyncio.Task[Probes]) -> Probes:
    return await asyncio.wait_for(task, PROBES * (PROBE_TIMEOUT + PROBE_GAP) + 5.0)


def assert_served(probes: Probes) -> None:
    assert probes.total == PROBES, probes
    assert probes.answered >= MIN_ANSWERED * PROBES, \
        f"the well-behaved client was starved during the attack: {probes}"


# --------------------------------------------------------------------------- 1 + 7: Rapid Reset

RAPID_RESET_STREAMS = 20_000
RAPID_RESET_SECONDS = 5.0
RAPID_RESET_BATCH = 100
"""Streams (HEADERS + RST_STREAM CANCEL) per write."""


def rapid_reset_batch(peer: RawPeer, port: int) -> Callable[[int], tuple[bytes, int]]:
    """Streams 1, 3, 5, ...: HEADERS GET /delay/1000 END_STREAM, at once RST_STREAM CANCEL
    (the request is in flight in the app when it is cancelled: that is what costs)."""
    ff = peer.ff
    authority = f"{HOST}:{port}"

    def batch(done: int) -> tuple[bytes, int]:
        parts = []
        for n in range(done, done + RAPID_RESET_BATCH):
            sid = 2 * n + 1
            parts.append(ff.request(sid, "GET", "/delay/1000", authority=authority))
            parts.append(ff.rst_stream(sid, CANCEL))
        return b"".join(parts), RAPID_RESET_BATCH

    return batch


async def test_rapid_reset_is_cut_off_and_others_are_served(frame_factory: FrameFactory) -> None:
    """CVE-2023-44487: every stream is opened and cancelled at once, so no stream limit ever
    binds and the server does the work of a request per 2 frames. Only a reset rate can stop
    it, and it must stop this connection, not the service."""
    limits = Limits(max_resets_per_second=100)
    async with serve(scenario("rapid-reset", limits), h2c=True, seed=1) as server, \
            well_behaved_client(server) as client, \
            raw_peer(server.port, ff=frame_factory) as peer:
        await peer.handshake()
        cid = cid_of(server, peer)
        async with probing(client) as probes_task:
            attack = await flood(peer, rapid_reset_batch(peer, server.port),
                                 max_items=RAPID_RESET_STREAMS, max_seconds=RAPID_RESET_SECONDS,
                                 stop=lambda: bool(peer.goaways) or peer.closed)
            await peer.wait_closed(max(0.1, attack.started + CUT_OFF_WITHIN - time.monotonic()))
            probes = await probe_result(probes_task)
        print(f"\nrapid reset: {attack.sent} streams in {attack.ended - attack.started:.2f}s "
              f"({attack.stopped_by}); {probes}")
        context = f"{attack}\n{peer.describe()}\n{server_view(server)}"
        assert peer.goaways, f"Rapid Reset was not cut off (no GOAWAY)\n{context}"
        goaway = peer.goaways[0]
        assert goaway.error_code == ENHANCE_YOUR_CALM, context
        assert 0 <= goaway.last_stream_id <= 2 * attack.sent - 1, context
        assert goaway.at - attack.started < CUT_OFF_WITHIN, context
        assert peer.closed, f"GOAWAY but no close\n{context}"
        assert peer.closed_at is not None and peer.closed_at - attack.started < CUT_OFF_WITHIN
        assert_limit_event(server, cid, {"resets"})
        assert_served(probes)


async def test_rapid_reset_is_not_cut_off_when_limits_are_disabled(
        frame_factory: FrameFactory) -> None:
    """``enabled=False`` really turns the limits off: the same attack at a rate far above
    ``max_resets_per_second`` runs 2 s untouched, and the server is still answering it."""
    seconds = 2.0
    limits = Limits(enabled=False, max_resets_per_second=100)
    async with serve(scenario("rapid-reset-unlimited", limits), h2c=True, seed=1) as server, \
            raw_peer(server.port, ff=frame_factory) as peer:
        await peer.handshake()
        attack = await flood(peer, rapid_reset_batch(peer, server.port),
                             max_items=RAPID_RESET_STREAMS, max_seconds=seconds,
                             stop=lambda: bool(peer.goaways) or peer.closed)
        # everything sent was processed once the PING behind it is answered
        assert await peer.send(peer.ff.ping(b"the-end!")), peer.describe()
        answered = await peer.wait_for(
            lambda: peer.frames(PING, 0, ack=True, payload=b"the-end!") or peer.closed, 5.0)
        print(f"\nrapid reset, limits off: {attack.sent} streams in "
              f"{attack.ended - attack.started:.2f}s ({attack.stopped_by})")
        context = f"{attack}\n{peer.describe()}\n{server_view(server)}"
        assert not peer.goaways and not peer.closed, f"cut off with limits disabled\n{context}"
        assert answered, f"the server stopped answering\n{context}"
        assert attack.stopped_by in ("seconds", "frames"), context
        # well above the 100/s bucket (100 at once + 100 per second): the limit was exceeded
        assert attack.sent > 3 * 100 * (1 + seconds), context
        assert limit_events(server) == [], server_view(server)


# --------------------------------------------------------------------------- 2: floods

FLOOD_FRAMES = 100_000
FLOOD_SECONDS = 5.0
FLOOD_BATCH = 2048
CONTROL_RATE = 1000


@dataclass(frozen=True)
class FloodCase:
    build: Callable[[RawPeer, int], bytes]
    """The n-th flood frame."""
    read: bool = True
    limits: frozenset[str] = frozenset({"control_frames"})
    setup: Callable[[RawPeer], bytes] | None = None
    """Frames sent after the handshake, before the flood (opening a stream)."""


def _open_post(peer: RawPeer) -> bytes:
    return peer.ff.request(1, "POST", "/echo", end_stream=False)


FLOODS = {
    # the peer does not read either: the acks pile up in the server
    "ping-no-read": FloodCase(lambda p, n: p.ff.ping(struct.pack(">Q", n)), read=False,
                              limits=frozenset({"control_frames", "pending_output"})),
    "settings": FloodCase(lambda p, n: p.ff.settings()),
    "window-update": FloodCase(lambda p, n: p.ff.window_update(0, 1)),
    "empty-data": FloodCase(lambda p, n: p.ff.data(1, b""), setup=_open_post),
    "priority": FloodCase(lambda p, n: p.ff.priority(2 * (n % 100) + 3, 0, 16)),
    "unknown-frame-type": FloodCase(lambda p, n: p.ff.unknown(0xFA, 0, 0, b"flood!!!")),
}


async def _no_read_handshake(server: ChaosServer, peer: RawPeer) -> None:
    """Preface and SETTINGS without reading a byte; the server has the connection once its
    ``chaos.connection.opened`` names our port (or, failing that, after a moment)."""
    assert await peer.send(peer.ff.hello() + peer.ff.settings_ack()), peer.describe()
    await eventually(lambda: cid_of(server, peer) is not None, 1.0)


@pytest.mark.parametrize("name", list(FLOODS))
async def test_flood_is_cut_off_and_others_are_served(name: str,
                                                      frame_factory: FrameFactory) -> None:
    """CVE-2019-9512/9515/9518 and kin: frames that cost the server work (an ack, a lookup, a
    wake-up) but carry no request. Each kind alone must trip the control-frame bucket."""
    case = FLOODS[name]
    limits = Limits(max_control_frames_per_second=CONTROL_RATE)
    rcvbuf = None if case.read else SMALL_RCVBUF
    async with serve(scenario(f"flood-{name}", limits), h2c=True, seed=1) as server, \
            well_behaved_client(server) as client, \
            raw_peer(server.port, ff=frame_factory, read=case.read,
                     rcvbuf=rcvbuf) as peer:
        if case.read:
            await peer.handshake()
        else:
            await _no_read_handshake(server, peer)
        if case.setup is not None:
            assert await peer.send(case.setup(peer)), peer.describe()
        cid = cid_of(server, peer)

        def batch(done: int) -> tuple[bytes, int]:
            return b"".join(case.build(peer, n) for n in range(done, done + FLOOD_BATCH)), \
                FLOOD_BATCH

        def cut_off() -> bool:
            if case.read:
                return bool(peer.goaways) or peer.closed
            return bool(events_for(server, cid))  # we do not read: ask the server

        async with probing(client) as probes_task:
            attack = await flood(peer, batch, max_items=FLOOD_FRAMES,
                                 max_seconds=FLOOD_SECONDS, stop=cut_off)
            # a peer that did not read starts now: what the server queued, then EOF or reset
            await peer.wait_closed(max(0.1, attack.started + CUT_OFF_WITHIN - time.monotonic()))
            probes = await probe_result(probes_task)
        print(f"\n{name} flood: {attack.sent} frames in {attack.ended - attack.started:.2f}s "
              f"({attack.stopped_by}); {probes}")
        context = f"{attack}\n{peer.describe()}\n{server_view(server)}"
        assert attack.stopped_by in ("cut off", "write failed"), \
            f"the {name} flood was not cut off\n{context}"
        assert peer.closed, f"the connection was not closed\n{context}"
        assert peer.closed_at is not None
        assert peer.closed_at - attack.started < CUT_OFF_WITHIN, context
        if case.read:
            assert peer.goaways, f"closed without GOAWAY\n{context}"
            goaway = peer.goaways[0]
            assert goaway.error_code == ENHANCE_YOUR_CALM, context
            assert goaway.at - attack.started < CUT_OFF_WITHIN, context
            assert goaway.last_stream_id <= (1 if case.setup is not None else 0), context
        else:  # aborted (the GOAWAY may be lost) or a GOAWAY ENHANCE_YOUR_CALM
            assert all(g.error_code == ENHANCE_YOUR_CALM for g in peer.goaways), context
        assert_limit_event(server, cid, set(case.limits))
        assert_served(probes)


# --------------------------------------------------------------------------- 3: ack backlog

BACKLOG_PINGS = 600_000
"""200,000 PINGs (3.4 MB of acks) is barely more than loopback's autotuned send buffer (up to
tcp_wmem's 4 MiB) absorbs before a byte waits in the server's own buffer (about 3 MB,
measured), so the limit might never see a backlog. 600,000 (10 MB) leaves no doubt; the loop
ends at the abort, about 180,000 PINGs in."""
BACKLOG_BATCH = 8192
"""PINGs per write: 139 KB, the large writes of an attacker."""
BACKLOG_SECONDS = 15.0


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_ack_backlog_of_a_peer_that_never_reads_is_aborted(
        frame_factory: FrameFactory) -> None:
    """Only ``max_pending_output`` can stop this peer (the control-frame rate is 10^9/s): the
    server must not buffer unbounded PING acks for a socket nobody reads."""
    limits = Limits(max_control_frames_per_second=10**9, max_pending_output=65536)
    async with serve(scenario("ack-backlog", limits), h2c=True, seed=1) as server, \
            well_behaved_client(server) as client, \
            raw_peer(server.port, ff=frame_factory, read=False,
                     rcvbuf=SMALL_RCVBUF) as peer:
        await _no_read_handshake(server, peer)
        cid = cid_of(server, peer)
        pings = b"".join(peer.ff.ping(struct.pack(">Q", n)) for n in range(BACKLOG_BATCH))
        async with probing(client) as probes_task:
            attack = await flood(peer, lambda _done: (pings, BACKLOG_BATCH),
                                 max_items=BACKLOG_PINGS, max_seconds=BACKLOG_SECONDS,
                                 stop=lambda: bool(events_for(server, cid)))
            closed = await peer.wait_closed(3.0)
            probes = await probe_result(probes_task)
        print(f"\nack backlog: {attack.sent} PINGs ({attack.sent * 17 / 1e6:.1f} MB) in "
              f"{attack.ended - attack.started:.2f}s ({attack.stopped_by}); peer read "
              f"{peer.bytes_received} bytes afterwards; during it {probes}")
        context = f"{attack}\n{peer.describe()}\n{server_view(server)}"
        assert attack.stopped_by in ("cut off", "write failed"), \
            f"the peer that never reads was not cut off\n{context}"
        assert closed, f"the connection was not closed\n{context}"
        assert all(g.error_code == ENHANCE_YOUR_CALM for g in peer.goaways), context
        assert_limit_event(server, cid, {"pending_output"})
        # the server is still answering others: the connection it had, and a new one
        assert probes.answered >= 1, probes
        resp = await asyncio.wait_for(client.get("/echo"), 2.0)
        assert resp.status_code == 200
        async with well_behaved_client(server):
            pass
        assert await eventually(lambda: server.connections <= 1, 3.0), server_view(server)


# --------------------------------------------------------------------------- 4: slowloris


async def test_slowloris_preface_is_closed_by_the_handshake_timeout(
        frame_factory: FrameFactory) -> None:
    """One byte every 0.3 s keeps a naive server's connection slot forever: the handshake
    timeout counts from accept, whatever trickles in."""
    limits = Limits(handshake_timeout=1.0)
    async with serve(scenario("slowloris", limits), h2c=True, seed=1) as server, \
            raw_peer(server.port, ff=frame_factory) as peer:
        preface = peer.ff.preface()
        for i in range(len(preface)):  # 24 bytes, 0.3 s apart: 7.2 s at most
            if peer.closed or not await peer.send(preface[i : i + 1]):
                break
            await peer.wait_for(lambda: peer.closed, 0.3)
        await peer.wait_closed(1.0)
        context = f"{peer.describe()}\n{server_view(server)}"
        assert peer.closed, f"slowloris kept its connection for 7 s\n{context}"
        assert peer.closed_at is not None
        lifetime = peer.closed_at - peer.connected_at
        assert 0.8 <= lifetime <= 3.0, f"closed after {lifetime:.3f}s\n{context}"
        assert [g.error_code for g in peer.goaways] == [ENHANCE_YOUR_CALM], context
        assert_limit_event(server, None, {"handshake_timeout"})


async def test_silent_connection_gets_goaway_no_error_after_idle_timeout(
        frame_factory: FrameFactory) -> None:
    """A finished handshake and then nothing: a forgotten connection is ended politely
    (NO_ERROR, last_stream_id 0: nothing was processed), not held for ever."""
    limits = Limits(idle_timeout=1.0)
    async with serve(scenario("idle", limits), h2c=True, seed=1) as server, \
            raw_peer(server.port, ff=frame_factory) as peer:
        await peer.handshake()
        # the server's SETTINGS ACK: after it, neither side has anything to say
        assert await peer.wait_for(lambda: peer.frames(SETTINGS, ack=True), 2.0), \
            peer.describe()
        cid = cid_of(server, peer)
        quiet_since = time.monotonic()
        await peer.wait_for(lambda: peer.goaways or peer.closed, 4.0)
        await peer.wait_closed(max(0.1, quiet_since + 3.5 - time.monotonic()))
        context = f"{peer.describe()}\n{server_view(server)}"
        assert peer.goaways, f"no GOAWAY within 4 s of silence\n{context}"
        goaway = peer.goaways[0]
        assert goaway.error_code == NO_ERROR and goaway.last_stream_id == 0, context
        silence = goaway.at - max(quiet_since, *(f.at for f in peer.received
                                                 if f.at < goaway.at))
        assert 0.8 <= silence <= 3.0, f"GOAWAY after {silence:.3f}s of silence\n{context}"
        assert peer.closed, f"GOAWAY but no close\n{context}"
        assert peer.closed_at is not None and peer.closed_at - quiet_since <= 3.5, context
        assert_limit_event(server, cid, {"idle_timeout"}, code="NO_ERROR")


# --------------------------------------------------------------------------- 5: 1,000 sockets

SILENT_CONNECTIONS = 1000


@contextlib.contextmanager
def raised_nofile_limit(needed: int) -> Iterator[None]:
    """The soft RLIMIT_NOFILE raised to the hard limit for the block (skip if even the hard
    one is too low: both ends of every connection live in this process)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"RLIMIT_NOFILE hard limit is {hard}; {SILENT_CONNECTIONS} connections "
                    f"need {needed} descriptors (both ends, plus slack)")
    wanted = 65536 if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_thousand_silent_connections_are_closed_by_the_handshake_timeout() -> None:
    """A crowd that connects and sends nothing (a port scanner, a half-open load balancer, a
    connection-exhaustion attack): every one is let go after the handshake timeout, with a
    FIN, and the server holds no connection afterwards."""
    limits = Limits(handshake_timeout=1.0)
    with raised_nofile_limit(2500):
        async with serve(scenario("silent-crowd", limits), h2c=True, seed=1) as server:
            started = time.monotonic()
            opened = await asyncio.gather(
                *(RawPeer.open(server.port, timeout=5.0) for _ in range(SILENT_CONNECTIONS)),
                return_exceptions=True)
            peers = [p for p in opened if isinstance(p, RawPeer)]
            try:
                all_open = time.monotonic()
                assert len(peers) == SILENT_CONNECTIONS, \
                    [e for e in opened if not isinstance(e, RawPeer)][:3]
                await eventually(lambda: all(p.closed for p in peers), 5.0)
                still_open = [p for p in peers if not p.closed]
                resets = [p for p in peers if p.reset_at is not None]
                lifetimes = [p.closed_at - p.connected_at for p in peers
                             if p.closed_at is not None]
                print(f"\n{SILENT_CONNECTIONS} silent connections: opened in "
                      f"{all_open - started:.2f}s; closed {len(lifetimes)}, lifetimes "
                      f"{min(lifetimes, default=0):.2f}-{max(lifetimes, default=0):.2f}s, "
                      f"{len(resets)} by reset")
                assert not still_open, (f"{len(still_open)} of {SILENT_CONNECTIONS} still "
                                        f"open {time.monotonic() - started:.1f}s after the "
                                        f"first connect; {server_view(server)}")
                assert not resets, f"{len(resets)} connections reset instead of closed"
                assert min(lifetimes) >= 0.8, "closed before the handshake timeout"
                assert max(lifetimes) <= 4.0, f"a connection lived {max(lifetimes):.2f}s"
                assert await eventually(lambda: server.connections == 0, 2.0), \
                    server_view(server)
                timeouts = [e for e in limit_events(server)
                            if e.data.get("limit") == "handshake_timeout"]
                assert len(timeouts) == SILENT_CONNECTIONS, server_view(server)
                assert server.fault_counts.get(("limit_exceeded", "handshake_timeout")) \
                    == SILENT_CONNECTIONS, server_view(server)
            finally:
                await asyncio.gather(*(p.close() for p in peers))


# --------------------------------------------------------------------------- 6: header size

HEADER_LIMIT = 8192
BIG_VALUE = 20_000


def response_status(peer: RawPeer, sid: int) -> int | None:
    """The :status of the response on ``sid``: HEADERS (+ CONTINUATION) decoded with a fresh
    HPACK decoder (the first header block the server sent on this connection)."""
    block = b""
    for f in peer.received:
        if f.stream_id != sid or f.type not in (HEADERS, CONTINUATION):
            continue
        payload = f.payload
        if f.type == HEADERS:
            pad = 0
            if f.flags & FLAG_PADDED:
                pad, payload = payload[0], payload[1:]
            if f.flags & FLAG_PRIORITY:
                payload = payload[5:]
            payload = payload[: len(payload) - pad]
        block += payload
        if f.flags & FLAG_END_HEADERS:
            headers = hpack.Decoder().decode(block, raw=True)
            return int(dict(headers)[b":status"])
    return None


async def test_oversize_header_list_is_rejected_and_others_are_served(
        frame_factory: FrameFactory) -> None:
    """A header block is buffered whole before anything can be decided, so its size is the
    server's memory: past ``max_header_list_size`` the request is refused (RFC 9113 §10.5.1
    allows a stream error or a connection error), and only that request or connection."""
    limits = Limits(max_header_list_size=HEADER_LIMIT)
    async with serve(scenario("header-size", limits), h2c=True, seed=1) as server, \
            well_behaved_client(server) as client, \
            raw_peer(server.port, ff=frame_factory) as peer:
        await peer.handshake()
        cid = cid_of(server, peer)
        headers = peer.ff.request_headers("GET", "/echo", f"{HOST}:{server.port}",
                                          extra=[("x-big", "a" * BIG_VALUE)])
        wire = peer.ff.headers_split(1, headers, chunk=8000, end_stream=True)
        assert wire.count(bytes([CONTINUATION])) >= 2  # HEADERS + 2 CONTINUATION
        assert await peer.send(wire), peer.describe()

        def answered() -> bool:
            return bool(peer.goaways or peer.closed or peer.frames(RST_STREAM, 1)
                        or response_status(peer, 1) is not None)

        await peer.wait_for(answered, 2.0)
        context = f"{peer.describe()}\n{server_view(server)}"
        status = response_status(peer, 1)
        rst = peer.frames(RST_STREAM, 1)
        print(f"\n{BIG_VALUE} B header vs limit {HEADER_LIMIT}: status {status}, "
              f"rst {[f.error_code for f in rst]}, goaway "
              f"{[(g.error_code, g.last_stream_id) for g in peer.goaways]}")
        if peer.goaways:  # a connection error (RFC 9113 §10.5.1 allows it)
            goaway = peer.goaways[0]
            assert goaway.error_code in (PROTOCOL_ERROR, ENHANCE_YOUR_CALM), context
            assert await peer.wait_closed(2.0), f"GOAWAY but no close\n{context}"
            name = "PROTOCOL_ERROR" if goaway.error_code == PROTOCOL_ERROR \
                else "ENHANCE_YOUR_CALM"
            assert_limit_event(server, cid, {"header_list_size"}, code=name)
        elif rst:  # a stream error
            assert rst[0].error_code in (REFUSED_STREAM, PROTOCOL_ERROR), context
        else:
            assert status == 431, (f"a {BIG_VALUE}-byte header above the {HEADER_LIMIT}-byte "
                                   f"limit got {status}, not a rejection\n{context}")
        # the limit is advertised, so a client can know it before it is refused
        first = peer.frames(SETTINGS, 0, ack=False)[0]
        assert first.settings.get(SETTINGS_MAX_HEADER_LIST_SIZE) == HEADER_LIMIT, first
        # and the server goes on serving: the connection that was there, and a new one
        resp = await asyncio.wait_for(client.get("/echo"), 2.0)
        assert resp.status_code == 200
        async with well_behaved_client(server):
            pass


# --------------------------------------------------------------------------- 8: defaults

HONEST_REQUESTS = 2000
HONEST_CONCURRENCY = 50


@pytest.mark.timeout(60)
async def test_default_limits_never_cut_off_a_busy_honest_client() -> None:
    """2,000 requests over one connection at concurrency 50 (GETs, 20 KB downloads the client
    acknowledges with WINDOW_UPDATEs, small uploads, 204s): no default limit may trip."""
    async with serve(Scenario(name="default-limits"), h2c=True, seed=1) as server:
        transport = h2guard.AsyncHTTPTransport(http2_prior_knowledge=True,
                                               max_connections_per_origin=1)
        async with httpx.AsyncClient(transport=transport, base_url=server.url,
                                     timeout=10.0) as client:

            async def one(i: int) -> tuple[int, int]:
                kind = i % 4
                if kind == 0:
                    resp = await client.get("/echo", params={"i": str(i)})
                elif kind == 1:
                    resp = await client.get("/bytes/20000")
                elif kind == 2:
                    resp = await client.post("/echo", content=b"x" * 2048)
                else:
                    resp = await client.get("/status/204")
                return resp.status_code, len(resp.content)

            started = time.monotonic()
            results = await asyncio.wait_for(
                gather_bounded(HONEST_REQUESTS, one, HONEST_CONCURRENCY), 75.0)
            elapsed = time.monotonic() - started
        failed = [r for r in results if not isinstance(r, tuple)]
        print(f"\nhonest client: {HONEST_REQUESTS} requests in {elapsed:.2f}s, "
              f"{len(failed)} failed; client goaways "
              f"{transport.events.counts.get('client.goaway', 0)}")
        assert limit_events(server) == [], server_view(server)
        assert not failed, failed[:5]
        expected = {0: 200, 1: 200, 2: 200, 3: 204}
        wrong = [(i, r) for i, r in enumerate(results)
                 if isinstance(r, tuple) and r[0] != expected[i % 4]]
        assert not wrong, wrong[:5]
        assert all(r[1] == 20000 for r in results[1::4] if isinstance(r, tuple))
        assert server.events.counts.get("chaos.connection.opened") == 1, server_view(server)
        assert transport.events.counts.get("client.goaway", 0) == 0


# --------------------------------------------------------------------------- HTTP/1.1 and TLS


async def _wait_eof(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """Everything the server sends until it closes (bounded)."""
    got = b""
    async with asyncio.timeout(timeout):
        while chunk := await reader.read(65536):
            got += chunk
    return got


async def test_http1_slow_request_head_gets_408_and_a_close() -> None:
    """Slowloris on the HTTP/1.1 side: a head that never completes is cut off after
    handshake_timeout, with a 408."""
    limits = Limits(handshake_timeout=0.5)
    async with serve(scenario("h1-slowloris", limits), h2c=True) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        start = time.monotonic()
        writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        got = await _wait_eof(reader, 5.0)
        elapsed = time.monotonic() - start
        writer.close()
        assert got.startswith(b"HTTP/1.1 408"), got[:100]
        assert 0.4 <= elapsed <= 3.0, elapsed
        assert any(e.data.get("limit") == "handshake_timeout" for e in limit_events(server))


async def test_http1_idle_keepalive_connection_is_closed() -> None:
    limits = Limits(idle_timeout=0.5)
    async with serve(scenario("h1-idle", limits), h2c=True) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /bytes/3 HTTP/1.1\r\nHost: x\r\n\r\n")
        start = time.monotonic()
        got = await _wait_eof(reader, 5.0)
        elapsed = time.monotonic() - start
        writer.close()
        assert got.startswith(b"HTTP/1.1 200") and got.endswith(b"\r\n\r\n" + bytes(range(3)))
        assert 0.4 <= elapsed <= 3.0, elapsed
        assert any(e.data.get("limit") == "idle_timeout" for e in limit_events(server))


async def test_tls_handshake_that_never_starts_is_closed() -> None:
    """Before any HTTP/2 byte, a TLS peer that sends nothing is bounded by the same deadline."""
    limits = Limits(handshake_timeout=0.5)
    async with serve(scenario("tls-silent", limits)) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        start = time.monotonic()
        with contextlib.suppress(ConnectionError):
            await _wait_eof(reader, 5.0)
        elapsed = time.monotonic() - start
        writer.close()
        assert 0.4 <= elapsed <= 3.0, elapsed


# --------------------------------------------------------------------------- busy, not hostile


def _pycurl_burst(url: str, n: int, concurrency: int) -> tuple[list[int], int]:
    """libcurl (nghttp2) multiplexing ``n`` GETs on one prior-knowledge connection, as fast
    as it goes: it sends a WINDOW_UPDATE with every stream, so a naive control-frame limit
    would call it a flood. Returns the statuses and the connections libcurl opened."""
    import io

    import pycurl

    multi = pycurl.CurlMulti()
    multi.setopt(pycurl.M_PIPELINING, pycurl.PIPE_MULTIPLEX)
    multi.setopt(pycurl.M_MAX_HOST_CONNECTIONS, 1)
    statuses: list[int] = []
    connects = 0
    started = 0
    free: list[Any] = []
    for _ in range(concurrency):
        handle = pycurl.Curl()
        handle.setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE)
        handle.setopt(pycurl.PIPEWAIT, 1)
        handle.setopt(pycurl.TIMEOUT, 20)
        free.append(handle)
    deadline = time.monotonic() + 60  # bounded whatever happens
    while len(statuses) < n and time.monotonic() < deadline:
        while free and started < n:
            handle = free.pop()
            handle.setopt(pycurl.URL, f"{url}/bytes/16?i={started}")
            handle.setopt(pycurl.WRITEDATA, io.BytesIO())
            multi.add_handle(handle)
            started += 1
        multi.perform()
        _queued, ok, failed = multi.info_read()
        for handle in ok:
            statuses.append(handle.getinfo(pycurl.RESPONSE_CODE))
            connects += handle.getinfo(pycurl.NUM_CONNECTS)
            multi.remove_handle(handle)
            free.append(handle)
        for handle, _code, _message in failed:
            statuses.append(0)
            multi.remove_handle(handle)
            free.append(handle)
        multi.select(0.05)
    return statuses, connects


async def test_a_busy_libcurl_client_is_not_a_control_frame_flood() -> None:
    """A real client at full speed is served, not cut off: every request earns the control
    frames a client sends with it (libcurl: a WINDOW_UPDATE per stream)."""
    pytest.importorskip("pycurl", reason="pycurl is in the dev extra: pip install -e '.[dev]'")
    # a limit low enough that 1,500 requests' WINDOW_UPDATEs would pass it within a second
    limits = Limits(max_control_frames_per_second=300)
    async with serve(scenario("busy-libcurl", limits), h2c=True, seed=1) as server:
        statuses, connects = await asyncio.to_thread(_pycurl_burst, server.url, 1500, 50)
        cut = {key: n for key, n in server.fault_counts.items() if key[0] == "limit_exceeded"}
    assert statuses.count(200) == 1500, f"{statuses.count(200)} of 1500 served, cut off: {cut}"
    assert connects == 1
    assert not cut
