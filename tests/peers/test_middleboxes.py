"""Real nginx and HAProxy against the chaos server's models of them, and the chaos proxy in
front of a real upstream.

A middlebox profile is a claim: "this is what nginx (or HAProxy) puts on the wire". Here the
same raw HTTP/2 client (``tests/integration/rawclient.py``) talks to the real program and to a
chaos server configured the same way, and the frames are compared: the SETTINGS, which streams
get RST_STREAM REFUSED_STREAM, the GOAWAY at a request cap (last_stream_id, code, and where it
falls among the responses), and how long an idle connection lives and how it ends. Where the two
legitimately differ, each side's behaviour is asserted on its own with a comment saying how.

Then the production topologies: a client -> HAProxy -> a chaos backend that resets streams, and
a client -> chaos proxy -> real nginx, where the client's stream is reset although nginx's access
log shows the request was processed (the duplicate-write case).

Everything runs on loopback; configuration, logs and pid files live in the test's temporary
directory, and nginx / HAProxy run in the foreground as child processes stopped at teardown.
Measured with nginx 1.22.1 (nginx-light) and HAProxy 2.6.12 from Debian 12; the module's
findings, in short:

* nginx: SETTINGS_MAX_CONCURRENT_STREAMS is ``http2_max_concurrent_streams``; streams above it
  get REFUSED_STREAM at once and do not count towards ``keepalive_requests``; the request that
  reaches the cap gets GOAWAY(last_stream_id = its own stream, NO_ERROR) *before* its response,
  is answered, and then the connection is closed; idle after a request means GOAWAY(last = the
  last stream, NO_ERROR) and FIN at ``keepalive_timeout``. The chaos server matches all of it.
  One difference: before its first request an nginx connection is timed by
  ``client_header_timeout`` (60 s by default), not ``keepalive_timeout``.
* HAProxy: SETTINGS_MAX_CONCURRENT_STREAMS 100; idle means GOAWAY(last, NO_ERROR) and FIN at
  ``timeout client`` (or ``timeout http-keep-alive``, when set, once a request was served). A
  backend RST_STREAM of *any* code before the response headers reaches the client as
  REFUSED_STREAM, even when the backend had processed the request; it is not retried unless
  ``retry-on`` says so, and ``retry-on empty-response`` replays a POST the backend already ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from servers import Daemon
from servers import daemon as _daemon
from servers import nginx as _nginx

from h2guard.chaos import serve
from h2guard.chaos.model import (
    IdleTimeout,
    MaxConcurrentStreams,
    RequestCap,
    RstStream,
    Scenario,
    Trigger,
)
from h2guard.chaos.scenario import resolve

# tests/ is not a package and peers/ has no __init__.py, so the raw client is importable only as
# pytest itself imports it for tests/integration: as the package `integration`, from tests/.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from integration.rawclient import (
    GOAWAY,
    HEADERS,
    RST_STREAM,
    SETTINGS,
    RawClient,
)

pytestmark = [pytest.mark.peers, pytest.mark.timeout(60)]

NO_ERROR, INTERNAL_ERROR, REFUSED_STREAM = 0x0, 0x2, 0x7
MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE = 0x3, 0x4, 0x5


# ------------------------------------------------------------------------------------ daemons
# Starting and stopping them lives in tests/peers/servers.py (shared with test_client_nginx).


@contextlib.asynccontextmanager
async def _haproxy(peer: Any, workdir: Path, nports: int,
                   sections: Callable[[list[int]], str]) -> AsyncIterator[Daemon]:
    binary = peer.need("haproxy")

    def configure(ports: list[int]) -> list[str]:
        cfg = workdir / "haproxy.cfg"
        cfg.write_text("global\n    maxconn 256\n\n" + sections(ports))
        return [binary, "-f", str(cfg), "-db"]

    async with _daemon("haproxy", workdir, nports, configure) as daemon:
        yield daemon


# ------------------------------------------------------------------------------------ probes


@dataclasses.dataclass(frozen=True)
class Target:
    """One side of a comparison: where it listens, and two paths it answers with 200."""

    name: str
    url: str
    ok: str  # answered at once
    slow: str  # answered after 300 ms


def _settings(client: RawClient) -> dict[int, int]:
    return client.frames_of(SETTINGS, 0, ack=False)[0].settings


def _goaway(frame: Any) -> tuple[int, int]:
    return frame.last_stream_id, frame.error_code


@dataclasses.dataclass(frozen=True)
class IdleEnd:
    """How an idle connection ended, timed from the moment it went idle."""

    goaway: tuple[int, int] | None  # (last_stream_id, code)
    goaway_after: float | None
    closed_after: float
    reset: bool  # TCP RST rather than FIN


async def _idle_end(url: str, path: str | None, timeout: float) -> IdleEnd:
    """Open a connection, send one request on ``path`` (or none), then wait in silence until
    the peer ends the connection."""
    async with RawClient(url) as client:
        if path is not None:
            sid = client.open_stream("GET", path)
            st = await client.wait_response(sid, 2.0)
            assert st.status == 200, client.describe()
            assert st.ended_at is not None
            start = st.ended_at
        else:
            assert client.connected_at is not None
            start = client.connected_at
        closed = await client.wait_closed(timeout)
        frames = client.frames_of(GOAWAY)
        assert len(frames) <= 1, client.describe()
        return IdleEnd(_goaway(frames[0]) if frames else None,
                       frames[0].at - start if frames else None, closed - start,
                       client.reset_at is not None)


def _assert_idle(end: IdleEnd, *, last: int, after: float, what: str) -> None:
    """GOAWAY(last, NO_ERROR) ``after`` seconds (+-) into the silence, then FIN at once."""
    assert end.goaway == (last, NO_ERROR), f"{what}: {end}"
    assert end.goaway_after is not None
    assert after - 0.2 <= end.goaway_after <= after + 0.6, f"{what}: {end}"
    assert end.closed_after - end.goaway_after < 0.25, f"{what}: FIN long after GOAWAY: {end}"
    assert not end.reset, f"{what}: closed with a TCP RST, not a FIN: {end}"


# ------------------------------------------------------------------------------------ nginx


def _tight_nginx_profile() -> Scenario:
    """The packaged nginx profile with the numbers of docs/facts.md §7's tight set-up: so what is
    compared is the profile's structure (kinds, codes, actions), not a hand-written copy."""
    base = resolve("nginx", None)
    faults: list[Any] = []
    for fault in base.faults:
        if isinstance(fault, MaxConcurrentStreams):
            faults.append(dataclasses.replace(fault, limit=4))
        elif isinstance(fault, RequestCap):
            faults.append(dataclasses.replace(fault, max_requests=5))
        elif isinstance(fault, IdleTimeout):
            faults.append(dataclasses.replace(fault, after=2.0))
        else:
            raise AssertionError(f"the nginx profile has a fault this test does not model: "
                                 f"{fault}")
    assert sorted(type(f).__name__ for f in faults) == [
        "IdleTimeout", "MaxConcurrentStreams", "RequestCap"], base
    return dataclasses.replace(base, name="nginx-tight", faults=tuple(faults))


@pytest.fixture
async def tight(peer: Any, tmp_path: Path) -> AsyncIterator[tuple[Target, Target]]:
    """(real nginx, chaos) in docs/facts.md §7's tight set-up: keepalive_requests 5,
    http2_max_concurrent_streams 4, keepalive_timeout 2s.

    nginx-light has no module that answers slowly, so nginx's slow location proxies to a
    chaos server's ``/delay/300``. ``client_header_timeout 3s`` (default 60 s) makes the
    first-request timer, which differs from the idle one (see the idle test), testable."""
    async with serve(h2c=True) as slow_backend:
        def servers(ports: list[int]) -> str:
            return f"""
    server {{
        listen 127.0.0.1:{ports[0]} http2;
        keepalive_requests 5;
        http2_max_concurrent_streams 4;
        keepalive_timeout 2s;
        client_header_timeout 3s;
        location = /ok {{ return 200 "ok"; }}
        location = /slow {{ proxy_pass http://127.0.0.1:{slow_backend.port}/delay/300; }}
    }}"""

        async with _nginx(peer, tmp_path, 1, servers) as nginx, \
                serve(_tight_nginx_profile(), h2c=True, time_scale=1.0) as chaos:
            yield (Target("nginx", nginx.url, "/ok", "/slow"),
                   Target("chaos", chaos.url, "/status/200", "/delay/300"))


async def _stream_limit(target: Target) -> dict[str, Any]:
    """(a) SETTINGS; (b) six slow streams at once on one connection (the client ignores the
    advertised limit, as Node does before the server's SETTINGS arrive), then a fifth
    *request* on the same connection."""
    async with RawClient(target.url, ignore_stream_limit=True) as client:
        settings = _settings(client)
        with client.corked():  # one write: the server reads all six HEADERS at once
            sids = [client.open_stream("GET", target.slow) for _ in range(6)]
        for sid in sids:
            await client.wait_response(sid, 3.0)
        refused = [sid for sid in sids if client.rst_code(sid) is not None]
        codes = {client.rst_code(sid) for sid in refused}
        refused_within = max((client.streams[s].reset_at or 0.0) - client.streams[s].opened_at
                             for s in refused) if refused else None
        served = {sid: client.streams[sid].status for sid in sids if sid not in refused}
        goaway_during = [_goaway(f) for f in client.frames_of(GOAWAY)]
        # Four requests were processed: a fifth reaches keepalive_requests only if the
        # refused streams did not count.
        fifth = client.open_stream("GET", target.ok)
        st = await client.wait_response(fifth, 2.0)
        goaway = await client.wait_frame(GOAWAY, 0, timeout=2.0)
        await client.wait_closed(2.0)
        return {
            "max_concurrent_streams": settings.get(MAX_CONCURRENT_STREAMS),
            "refused": refused, "codes": codes, "served": served,
            "refused_before_responses": refused_within is not None and refused_within < 0.25,
            "goaway_during": goaway_during,
            "fifth": (fifth, st.status), "goaway_at_fifth": _goaway(goaway),
            "settings": settings,
            "connection_window_update": [f.increment for f in client.received
                                         if f.name == "WINDOW_UPDATE" and f.stream_id == 0],
        }


async def test_nginx_stream_limit_and_settings_match_chaos(
        tight: tuple[Target, Target]) -> None:
    nginx_target, chaos_target = tight
    nginx = await _stream_limit(nginx_target)
    chaos = await _stream_limit(chaos_target)
    print(f"\nnginx: {nginx}\nchaos: {chaos}")
    # Real nginx 1.22: SETTINGS says 4; streams 9 and 11 (the 5th and 6th) are refused with
    # REFUSED_STREAM at once, before any response; 1-7 are answered after 300 ms; no GOAWAY,
    # because refused streams do not count towards keepalive_requests: the next request,
    # stream 13, is the 5th and gets GOAWAY(13, NO_ERROR).
    expected = {
        "max_concurrent_streams": 4, "refused": [9, 11], "codes": {REFUSED_STREAM},
        "served": {1: 200, 3: 200, 5: 200, 7: 200}, "refused_before_responses": True,
        "goaway_during": [], "fifth": (13, 200), "goaway_at_fifth": (13, NO_ERROR),
    }
    for side in (nginx, chaos):
        assert {k: side[k] for k in expected} == expected
    # nginx's other SETTINGS: INITIAL_WINDOW_SIZE 65536 (http2_body_preread_size) and
    # MAX_FRAME_SIZE 2^24-1, and a WINDOW_UPDATE opening the connection window to 2^31-1 at
    # once. The profile's [settings] say the same. (The chaos server also advertises
    # settings nginx leaves out: HEADER_TABLE_SIZE 4096, ENABLE_PUSH 0 and
    # ENABLE_CONNECT_PROTOCOL 0, all no-ops from a server, and MAX_HEADER_LIST_SIZE 65536.)
    assert nginx["settings"] == {MAX_CONCURRENT_STREAMS: 4, INITIAL_WINDOW_SIZE: 65536,
                                 MAX_FRAME_SIZE: 2**24 - 1}
    assert nginx["connection_window_update"] == [2**31 - 1 - 65535]
    assert {k: chaos["settings"].get(k) for k in nginx["settings"]} == nginx["settings"]
    assert chaos["connection_window_update"] == nginx["connection_window_update"]


async def _request_cap(target: Target) -> dict[str, Any]:
    """(c) five sequential requests on one connection."""
    async with RawClient(target.url) as client:
        goaway_before_fifth = []
        for n in range(5):
            sid = client.open_stream("GET", target.ok)
            st = await client.wait_response(sid, 2.0)
            assert st.status == 200, client.describe()
            if n < 4:
                goaway_before_fifth += client.frames_of(GOAWAY)
        assert st.ended_at is not None
        goaway = await client.wait_frame(GOAWAY, 0, timeout=2.0)
        closed = await client.wait_closed(2.0)
        response = client.frames_of(HEADERS, sid)[0]
        return {
            "goaway_before_fifth": goaway_before_fifth,
            "goaway": _goaway(goaway), "debug": goaway.debug_data, "last_sid": sid,
            # nginx queues the GOAWAY when it reads the 5th request, before answering it
            "goaway_before_its_response": client.index_of(goaway) < client.index_of(response),
            "fin_soon_after_response": closed - st.ended_at < 0.25,
            "reset": client.reset_at is not None,
            "rst_streams": client.frames_of(RST_STREAM),
        }


async def test_nginx_request_cap_matches_chaos(tight: tuple[Target, Target]) -> None:
    nginx = await _request_cap(tight[0])
    chaos = await _request_cap(tight[1])
    print(f"\nnginx: {nginx}\nchaos: {chaos}")
    # Real nginx 1.22: nothing until the 5th request (stream 9); then GOAWAY(9, NO_ERROR, no
    # debug data) ahead of stream 9's HEADERS, stream 9 answered in full, then FIN.
    expected = {
        "goaway_before_fifth": [], "goaway": (9, NO_ERROR), "debug": b"", "last_sid": 9,
        "goaway_before_its_response": True, "fin_soon_after_response": True, "reset": False,
        "rst_streams": [],
    }
    assert nginx == expected
    assert chaos == expected


async def test_nginx_idle_timeout_matches_chaos(tight: tuple[Target, Target]) -> None:
    nginx_target, chaos_target = tight
    # (d) all four connections idle at the same time: the test waits ~3 s, not ~10 s
    nginx_after, nginx_fresh, chaos_after, chaos_fresh = await asyncio.gather(
        _idle_end(nginx_target.url, nginx_target.ok, 5.0),
        _idle_end(nginx_target.url, None, 5.0),
        _idle_end(chaos_target.url, chaos_target.ok, 5.0),
        _idle_end(chaos_target.url, None, 5.0))
    print(f"\nnginx after a request: {nginx_after}\nnginx fresh: {nginx_fresh}"
          f"\nchaos after a request: {chaos_after}\nchaos fresh: {chaos_fresh}")
    # Real nginx: 2.0 s after the response (keepalive_timeout), GOAWAY(1, NO_ERROR) then FIN
    # within a millisecond. The chaos profile (time_scale 1) does the same.
    _assert_idle(nginx_after, last=1, after=2.0, what="nginx, idle after a request")
    _assert_idle(chaos_after, last=1, after=2.0, what="chaos, idle after a request")
    # Legitimate difference: before its first request an nginx connection is timed by
    # client_header_timeout (3 s here, 60 s by default), not keepalive_timeout, and ends with
    # GOAWAY(0, NO_ERROR) + FIN. The chaos idle_timeout runs from the moment the connection
    # opens, so it ends a request-less connection after keepalive_timeout (2 s here; 75 s in
    # the stock profile where stock nginx would take 60 s). The model has no first-request
    # timer.
    _assert_idle(nginx_fresh, last=0, after=3.0, what="nginx, no request at all")
    _assert_idle(chaos_fresh, last=0, after=2.0, what="chaos, no request at all")


# ------------------------------------------------------------------------------------ haproxy


HAPROXY_DEFAULTS = """defaults
    mode http
    timeout connect 2s
    timeout client 2s
    timeout server 5s
"""


async def test_haproxy_settings_and_idle_match_chaos(peer: Any, tmp_path: Path) -> None:
    async with serve(h2c=True) as backend:
        def sections(ports: list[int]) -> str:
            return HAPROXY_DEFAULTS + f"""
frontend fe
    bind 127.0.0.1:{ports[0]} proto h2
    default_backend chaos

frontend fe_keepalive
    bind 127.0.0.1:{ports[1]} proto h2
    timeout http-keep-alive 1s
    default_backend chaos

backend chaos
    server s1 127.0.0.1:{backend.port} proto h2
"""

        # the haproxy profile's 50 s `timeout client` squeezed into the 2 s configured above
        async with _haproxy(peer, tmp_path, 2, sections) as haproxy, \
                serve(profile="haproxy", h2c=True, time_scale=2.0 / 50.0) as chaos:
            keepalive_url = f"http://127.0.0.1:{haproxy.ports[1]}"
            async with RawClient(haproxy.url) as h, RawClient(chaos.url) as c:
                haproxy_settings, chaos_settings = _settings(h), _settings(c)
            ends = await asyncio.gather(
                _idle_end(haproxy.url, "/echo", 5.0), _idle_end(haproxy.url, None, 5.0),
                _idle_end(keepalive_url, "/echo", 5.0),
                _idle_end(chaos.url, "/echo", 5.0), _idle_end(chaos.url, None, 5.0))
    haproxy_after, haproxy_fresh, haproxy_keepalive, chaos_after, chaos_fresh = ends
    print(f"\nhaproxy SETTINGS {haproxy_settings}; chaos {chaos_settings}"
          f"\nhaproxy after a request: {haproxy_after}\nhaproxy fresh: {haproxy_fresh}"
          f"\nhaproxy with http-keep-alive 1s: {haproxy_keepalive}"
          f"\nchaos after a request: {chaos_after}\nchaos fresh: {chaos_fresh}")
    # Real HAProxy 2.6: MAX_CONCURRENT_STREAMS 100 (tune.h2.max-concurrent-streams), as the
    # profile says. (Its only other setting is ENABLE_CONNECT_PROTOCOL 1, for RFC 8441.)
    assert haproxy_settings[MAX_CONCURRENT_STREAMS] == 100
    assert chaos_settings[MAX_CONCURRENT_STREAMS] == 100
    # Idle for `timeout client`, whether or not a request was ever sent: GOAWAY(last stream
    # seen, NO_ERROR) then FIN at once. The chaos profile does the same.
    _assert_idle(haproxy_after, last=1, after=2.0, what="haproxy, idle after a request")
    _assert_idle(haproxy_fresh, last=0, after=2.0, what="haproxy, no request at all")
    _assert_idle(chaos_after, last=1, after=2.0, what="chaos, idle after a request")
    _assert_idle(chaos_fresh, last=0, after=2.0, what="chaos, no request at all")
    # Not in the profile: once a request was served, `timeout http-keep-alive` (when set)
    # replaces `timeout client` as the idle timeout.
    _assert_idle(haproxy_keepalive, last=1, after=1.0, what="haproxy, http-keep-alive 1s")


def _fault(value: str) -> tuple[tuple[str, str], ...]:
    return (("x-fault", value),)


BACKEND = Scenario(name="haproxy-backend", faults=(
    RstStream(code=INTERNAL_ERROR, at="after_app",
              when=Trigger(method="POST", path="/orders", headers=_fault("crash"))),
    RstStream(code=INTERNAL_ERROR, at="after_app",
              when=Trigger(method="POST", path="/orders", headers=_fault("crash-once"),
                           max_fires=1)),
    RstStream(code=REFUSED_STREAM, at="request_headers", when=Trigger(headers=_fault("refuse"))),
    RstStream(code=REFUSED_STREAM, at="request_headers",
              when=Trigger(headers=_fault("refuse-once"), max_fires=1)),
))


async def _through(client: RawClient, method: str, path: str, *headers: tuple[str, str],
                   body: bytes | None = None) -> tuple[int | None, int | None, int]:
    """(status, reset code, HEADERS frames received) of one request."""
    sid = client.open_stream(method, path, body, headers=headers)
    st = await client.wait_response(sid, 5.0)
    return st.status, st.reset_code, len(client.frames_of(HEADERS, sid))


async def test_haproxy_in_front_of_resetting_backend(peer: Any, tmp_path: Path) -> None:
    async with serve(BACKEND, h2c=True) as backend:
        def sections(ports: list[int]) -> str:
            return HAPROXY_DEFAULTS + f"""
frontend fe
    bind 127.0.0.1:{ports[0]} proto h2
    use_backend chaos_retry if {{ req.hdr(x-lb) -m str retry }}
    default_backend chaos

backend chaos
    server s1 127.0.0.1:{backend.port} proto h2

backend chaos_retry
    retry-on empty-response
    server s1 127.0.0.1:{backend.port} proto h2
"""

        async with _haproxy(peer, tmp_path, 1, sections) as haproxy, \
                RawClient(haproxy.url) as client:
            def faults(name: str) -> list[dict[str, object]]:
                return [e for e in peer.fault_events(backend) if e.get("fault_id") is not None
                        and BACKEND.faults[int(e["fault_id"]) - 1].when.headers == _fault(name)]

            # 1. The backend ran POST /orders, then reset the stream with INTERNAL_ERROR.
            crash = await _through(client, "POST", "/orders", ("x-fault", "crash"),
                                   ("x-request-id", "crash-1"), body=b'{"sku": 1}')
            # 2. The backend refused a stream (REFUSED_STREAM: certainly not processed).
            requests_before = backend.requests
            refused = await _through(client, "GET", "/echo", ("x-fault", "refuse"))
            refused_attempts = backend.requests - requests_before
            # 3. and 4.: the same through a backend with `retry-on empty-response`.
            requests_before = backend.requests
            retried = await _through(client, "GET", "/echo", ("x-fault", "refuse-once"),
                                     ("x-lb", "retry"))
            retried_attempts = backend.requests - requests_before
            replayed = await _through(client, "POST", "/orders", ("x-fault", "crash-once"),
                                      ("x-request-id", "dup-1"), ("x-lb", "retry"),
                                      body=b'{"sku": 2}')
            print(f"\ncrash: {crash}\nrefused: {refused} ({refused_attempts} attempts)"
                  f"\nretried: {retried} ({retried_attempts} attempts)\nreplayed: {replayed}"
                  f"\nledger: {backend.ledger.effects()}\nhaproxy output:\n{haproxy.log()}")

            # 1. No 502: HAProxy's h2 mux resets a client stream on which it has sent no
            # HEADERS yet with REFUSED_STREAM "to let the client retry", whatever the backend
            # said. But the order WAS written: RFC 9113 §8.7 promises a REFUSED_STREAM was not
            # processed, so a client that resends on REFUSED_STREAM (docs/facts.md §1, Go,
            # OkHttp, curl) writes it twice behind HAProxy.
            assert crash == (None, REFUSED_STREAM, 0)
            assert [e["code"] for e in faults("crash")] == ["INTERNAL_ERROR"]
            assert faults("crash")[0]["moment"] == "after_app"
            assert backend.ledger.effects()[0].request_id == "crash-1"
            # 2. Default retry-on (conn-failure): no retry; the REFUSED_STREAM passes through.
            assert refused == (None, REFUSED_STREAM, 0)
            assert refused_attempts == 1
            assert [e["code"] for e in faults("refuse")] == ["REFUSED_STREAM"]
            # 3. retry-on empty-response retries a refused stream: the client sees a clean
            # 200 and the backend saw two attempts, the first refused.
            assert retried == (200, None, 1)
            assert retried_attempts == 2
            assert [e["code"] for e in faults("refuse-once")] == ["REFUSED_STREAM"]
            # 4. ... and replays a POST the backend had already run: the client sees one
            # clean 201, the ledger shows the order written twice.
            assert replayed == (201, None, 1)
            assert [e["code"] for e in faults("crash-once")] == ["INTERNAL_ERROR"]
            assert backend.ledger.duplicate_requests == {"dup-1": 2}
            assert backend.ledger.total == 3


# ------------------------------------------------------------------------------------ chaos proxy


async def test_chaos_proxy_resets_after_nginx_processed(peer: Any, tmp_path: Path) -> None:
    def servers(ports: list[int]) -> str:
        return f"""
    server {{
        listen 127.0.0.1:{ports[0]};
        location = /ok {{ return 200 "ok"; }}
        location = /orders {{ return 201 "created"; }}
    }}"""

    scenario = Scenario(name="reset-after-upstream", faults=(
        RstStream(code=INTERNAL_ERROR, at="after_app",
                  when=Trigger(method="POST", path="/orders")),))
    async with _nginx(peer, tmp_path, 1, servers) as nginx, \
            serve(scenario, h2c=True, upstream=nginx.url) as proxy, \
            RawClient(proxy.url) as client:
        rid = f"order-{uuid.uuid4().hex}"
        ok = await _through(client, "GET", "/ok", ("x-request-id", "probe"))
        order = await _through(client, "POST", "/orders", ("x-request-id", rid),
                               body=b'{"sku": 3}')
        access_log = tmp_path / "access.log"
        deadline = time.monotonic() + 3.0
        lines: list[str] = []
        while time.monotonic() < deadline:  # nginx writes the line as it finishes the request
            lines = [line for line in access_log.read_text().splitlines() if rid in line] \
                if access_log.exists() else []
            if lines:
                break
            await asyncio.sleep(0.02)
        events = peer.fault_events(proxy, kind="rst_stream")
        print(f"\nok: {ok}\norder: {order}\naccess log:\n{access_log.read_text()}"
              f"\nevents: {events}")
        assert ok[:2] == (200, None)  # the proxy path works
        # The client's stream was reset with no response at all ...
        assert order == (None, INTERNAL_ERROR, 0)
        assert [(e["moment"], e["code"], e["path"]) for e in events] == [
            ("after_app", "INTERNAL_ERROR", "/orders")]
        # ... yet nginx processed it: its access log has the request with its 201.
        assert lines == [f"POST /orders 201 rid={rid} HTTP/1.1"]
        assert proxy.ledger.total == 0  # the effect lived upstream, not in chaos's own app
