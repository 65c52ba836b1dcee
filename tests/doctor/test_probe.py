"""``h2guard doctor probe``: it measures what the chaos profiles and real nginx / HAProxy enforce.

Every chaos profile runs at a time scale that puts its idle timeout at 1.2 to 1.8 s, and the
expected numbers come from the profile itself (``resolve(name)``), not from a copy: the stream
limit, the request cap, the idle timeout (within 10% or 100 ms), how an idle connection ends
(``blackhole`` is the probe's ``silent``) and whether PING keeps it alive (``ping_resets``). One
profile and the acceptance run go through the real command (``python -m h2guard``, bounded);
the others through :func:`run_probe`. Real nginx and HAProxy are started with non-default limits
(stated in ``probe_peers``) and the probe must find them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from h2guard.chaos import serve
from h2guard.chaos.model import Delay, IdleTimeout, MaxConcurrentStreams, RequestCap, Scenario
from h2guard.chaos.scenario import resolve
from h2guard.cli import app
from h2guard.doctor.connection import DoctorError
from h2guard.doctor.probe import _grid, parse_header, run_probe
from h2guard.doctor.report import (
    IdleProbe,
    ProbeResult,
    RequestCapProbe,
    StreamProbe,
    findings,
    recommend,
    to_json,
)

from .probe_peers import HAPROXY_LIMITS, NGINX_LIMITS, describe, haproxy, nginx

pytestmark = pytest.mark.timeout(40)

SRC = str(Path(__file__).resolve().parents[2] / "src")
ENV = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
       "COLUMNS": "200"}
ENV.pop("FORCE_COLOR", None)
IDLE_MAX = 3.0  # above every scaled idle timeout below, and short
TIMEOUT = 3.0

# time scales that put each profile's idle timeout between 1.2 and 1.8 s
SCALES = {"aws-alb": 0.02, "aws-nlb": 0.005, "azure-lb": 0.005, "cloudflare": 0.004,
          "envoy": 0.0005, "gcp-lb": 0.002, "haproxy": 0.03, "nghttpx": 0.008, "nginx": 0.02}
CHAOS_DEFAULT_STREAMS = 100  # what the chaos server advertises (and enforces) by default


def expected(profile: str) -> dict[str, Any]:
    """What the probe must report for a profile, read from the profile."""
    scenario = resolve(profile, None)
    out: dict[str, Any] = {"max_concurrent_streams": CHAOS_DEFAULT_STREAMS, "request_cap": None}
    for fault in scenario.faults:
        if isinstance(fault, MaxConcurrentStreams):
            out["max_concurrent_streams"] = fault.limit
        elif isinstance(fault, RequestCap):
            out["request_cap"] = fault.max_requests
        elif isinstance(fault, IdleTimeout):
            out["idle_timeout_s"] = fault.after * SCALES[profile]
            out["idle_close"] = "silent" if fault.action == "blackhole" else fault.action
            out["ping_keeps_alive"] = fault.ping_resets
    return out


def check(doc: dict[str, Any], want: dict[str, Any], what: str, *,
          lateness: float = 0.0) -> None:
    """``lateness``: how late the probe's event loop ran at worst (see ``loop_lateness``),
    which the idle timeout it measured may be off by, beyond the 10% allowed."""
    msg = f"{what}: {describe(doc)}"
    limit = want["max_concurrent_streams"]
    assert doc["max_concurrent_streams"] == limit, msg
    if limit + 3 <= 200:  # --streams-max: the extra streams were tried
        assert doc["streams_enforced"] == limit, msg
        assert doc["streams_over_limit"] == "refused", msg
    else:  # Envoy's 2^31-1: nothing to exceed, nothing refused among the 200 opened
        assert (doc["streams_enforced"], doc["streams_over_limit"]) == (None, None), msg
        assert doc["details"]["streams"]["opened"] == 200, msg
    assert doc["request_cap"] == want["request_cap"], msg
    assert doc["idle_close"] == want["idle_close"], msg
    idle = want["idle_timeout_s"]
    assert doc["idle_timeout_s"] is not None, msg
    assert abs(doc["idle_timeout_s"] - idle) <= max(0.1 * idle, 0.1) + lateness, \
        f"{msg} (loop up to {lateness:.3f} s late)"
    assert doc["ping_keeps_alive"] is want["ping_keeps_alive"], msg
    assert doc["ping_rtt_ms"] is not None and doc["ping_rtt_ms"] < 100, msg
    assert doc["settings"]["MAX_CONCURRENT_STREAMS"] == limit, msg


@contextlib.asynccontextmanager
async def loop_lateness() -> AsyncIterator[list[float]]:
    """Yield ``[worst]``: the most a 10 ms sleep of this event loop overslept while the block
    ran. A probe that shares its loop with the chaos server stamps the response that starts
    an idle spell when the loop gets to it: on a loaded machine that can be a tenth of a
    second after the server started counting, and the idle timeout measures that much short
    (seen once: 1.43 s for 1.6 s)."""
    loop = asyncio.get_running_loop()
    worst = [0.0]

    async def watch() -> None:
        while True:
            before = loop.time()
            await asyncio.sleep(0.01)
            worst[0] = max(worst[0], loop.time() - before - 0.01)

    task = asyncio.create_task(watch())
    try:
        yield worst
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _probe_cli(*args: str, timeout: float) -> tuple[int, str, str]:
    """Run ``python -m h2guard doctor probe ...``; kill it if it outlives ``timeout``."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "h2guard", "doctor", "probe", *args, env=ENV,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=True)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"the probe did not finish within {timeout} s")
    return int(proc.returncode or 0), out.decode(), err.decode()


# ------------------------------------------------------------------------------ chaos profiles


async def test_cli_json_against_the_nginx_profile() -> None:
    async with serve(profile="nginx", time_scale=SCALES["nginx"], h2c=True) as server:
        code, out, err = await _probe_cli(
            server.url + "/", "--h2c", "--json", "--idle-max", str(IDLE_MAX), "--timeout",
            str(TIMEOUT), "--download-path", "/bytes/1000000", timeout=30)
    assert code == 0, err
    assert err == "", err  # no progress display with --json (and stderr is not a TTY)
    doc = json.loads(out)
    check(doc, expected("nginx"), "nginx profile via the CLI")
    assert doc["schema"] == "h2guard.doctor.probe/1"
    for key in ("alpn", "tls_version", "settings", "max_concurrent_streams",
                "streams_over_limit", "request_cap", "idle_timeout_s", "idle_close",
                "ping_keeps_alive", "ping_rtt_ms", "findings", "recommended"):
        assert key in doc, key
    assert (doc["alpn"], doc["tls_version"]) == (None, None)  # h2c: prior knowledge
    assert doc["details"]["idle"]["goaway_code"] == "NO_ERROR"
    assert doc["details"]["request_cap"]["goaway_code"] == "NO_ERROR"
    download = doc["details"]["flow_control"]["download"]
    assert download["complete"] and download["bytes"] == 1_000_000, download
    assert download["window_updates_sent"] > 0, download
    flow = doc["details"]["flow_control"]
    # the profile's [settings]: 64 KiB stream window, connection window opened to 2^31-1
    assert (flow["peer_initial_window"], flow["peer_connection_window"]) == (65536, 2**31 - 1)
    assert all(set(f) == {"severity", "title", "detail"} for f in doc["findings"])
    ranks = ["high", "medium", "low", "info"]
    assert [ranks.index(f["severity"]) for f in doc["findings"]] == sorted(
        ranks.index(f["severity"]) for f in doc["findings"])
    rec = doc["recommended"]
    assert rec["basis"]["max_idle_s"] == pytest.approx(0.8 * 1.5, abs=0.15)
    assert rec["basis"]["max_concurrent_streams"] == 128
    assert rec["basis"]["retire_after_requests"] == 900
    names = {c: {s["name"] for s in rec[c]["settings"]} for c in
             ("h2guard", "httpx", "java", "go", "node", "okhttp", "grpc")}
    assert {"max_idle", "health_check_after", "ping_timeout"} <= names["h2guard"]
    assert "jdk.httpclient.keepalive.timeout.h2" in names["java"]
    assert {"http.Transport.IdleConnTimeout", "http2.Transport.PingTimeout"} <= names["go"]
    # nginx does not count PING as activity (measured against real nginx, and the profile
    # says so): a PING health check would not keep the connection, so none is advised
    assert doc["ping_keeps_alive"] is False
    assert "http2.Transport.ReadIdleTimeout" not in names["go"]
    assert "undici.Agent maxRequestsPerClient" in names["node"]
    assert "ConnectionPool keepAliveDuration" in names["okhttp"]
    assert names["grpc"]  # (no keepalive PINGs advised: they would not keep nginx's)
    assert not any(n.startswith("GRPC_ARG_KEEPALIVE_TIME_MS") for n in names["grpc"])


@pytest.mark.parametrize("profile", [p for p in SCALES if p != "nginx"])
async def test_python_api_against_each_profile(profile: str) -> None:
    async with serve(profile=profile, time_scale=SCALES[profile], h2c=True) as server, \
            loop_lateness() as late:
        want = expected(profile)
        result = await run_probe(server.url + "/", h2c=True, idle_max=IDLE_MAX,
                                 timeout=TIMEOUT, request_cap_max=10_100
                                 if want["request_cap"] else 500)
    doc = to_json(result)
    check(doc, want, profile, lateness=late[0])
    if want["idle_close"] == "silent":  # the black hole was pinned down between two PINGs
        lo, hi = doc["details"]["idle"]["silent_bracket_s"]
        assert hi - lo < 0.2 * want["idle_timeout_s"], describe(doc)
        assert findings(result)[0].severity == "high"


async def test_rst_close_and_an_unenforced_limit() -> None:
    """Two set-ups no profile has: an idle close by TCP RST, and a stream limit that is
    advertised but not enforced (the extra streams are served)."""
    rst = Scenario(name="rst", faults=(IdleTimeout(after=1.2, action="rst"),))
    loose = Scenario(name="loose", faults=(MaxConcurrentStreams(limit=4, enforce=False),
                                           IdleTimeout(after=1.2)))
    async with serve(rst, h2c=True) as a, serve(loose, h2c=True) as b:
        ra, rb = await asyncio.gather(
            run_probe(a.url + "/", h2c=True, idle_max=2.0, timeout=TIMEOUT,
                      request_cap_max=100),
            run_probe(b.url + "/", h2c=True, idle_max=2.0, timeout=TIMEOUT,
                      request_cap_max=100))
    da, db = to_json(ra), to_json(rb)
    assert da["idle_close"] == "rst", describe(da)
    assert abs(da["idle_timeout_s"] - 1.2) <= 0.12, describe(da)
    assert da["findings"][0]["severity"] == "high", da["findings"]  # no GOAWAY: the worst
    assert da["findings"][0]["title"].startswith("Idle connections are closed after")
    assert (db["max_concurrent_streams"], db["streams_over_limit"]) == (4, "answered"), \
        describe(db)
    assert db["streams_enforced"] is None, describe(db)


# ------------------------------------------------------------------------------ acceptance


async def test_idle_max_bounds_the_probe_of_an_endpoint_that_never_idles_out() -> None:
    # The one timing assertion (the acceptance criterion): --idle-max 5 against a server
    # without an idle timeout ends in well under 15 s.
    async with serve(h2c=True) as server:
        started = time.monotonic()
        code, out, err = await _probe_cli(server.url + "/", "--h2c", "--json", "--idle-max",
                                          "5", "--timeout", str(TIMEOUT), timeout=30)
        took = time.monotonic() - started
    assert code == 0, err
    doc = json.loads(out)
    assert took < 15, f"took {took:.1f} s"
    assert (doc["idle_close"], doc["idle_timeout_s"], doc["ping_keeps_alive"]) == (
        "none", None, None), describe(doc)
    assert doc["recommended"]["basis"]["max_idle_s"] is None


# ------------------------------------------------------------------------------ real peers


@contextlib.asynccontextmanager
async def _backend() -> AsyncIterator[Any]:
    async with serve(h2c=True) as backend:
        yield backend


async def test_real_nginx_limits(tmp_path: Path) -> None:
    """nginx with http2_max_concurrent_streams 8, keepalive_requests 20, keepalive_timeout 2s
    (NGINX_LIMITS)."""
    async with _backend() as backend, nginx(tmp_path, backend.port) as daemon:
        result = await run_probe(daemon.url + "/", h2c=True, idle_max=IDLE_MAX,
                                 timeout=TIMEOUT, request_cap_max=200)
    doc = to_json(result)
    msg = f"{describe(doc)}\nnginx output:\n{daemon.log()}"
    assert doc["max_concurrent_streams"] == NGINX_LIMITS["http2_max_concurrent_streams"], msg
    assert doc["streams_enforced"] == NGINX_LIMITS["http2_max_concurrent_streams"], msg
    assert doc["streams_over_limit"] == "refused", msg
    assert doc["request_cap"] == NGINX_LIMITS["keepalive_requests"], msg
    assert doc["details"]["request_cap"]["goaway_code"] == "NO_ERROR", msg
    assert doc["idle_close"] == "goaway", msg
    assert abs(doc["idle_timeout_s"] - NGINX_LIMITS["keepalive_timeout_s"]) <= 0.2, msg
    # Measured: a connection PINGed every 0.1 s still gets GOAWAY at keepalive_timeout, so
    # PING does not keep an nginx 1.22 connection alive (the chaos nginx profile's idle
    # timeout leaves ping_resets at its default, true: it differs from real nginx here).
    assert doc["ping_keeps_alive"] is False, msg
    # nginx's header limit (large_client_header_buffers 4 8k) ends the whole connection
    assert doc["details"]["headers"]["largest_ok"] == 8192, msg
    assert doc["details"]["headers"]["failure"] == "GOAWAY ENHANCE_YOUR_CALM", msg
    print(f"\nnginx: {describe(doc)}")


async def test_real_haproxy_limits(tmp_path: Path) -> None:
    """HAProxy 2.6 with tune.h2.max-concurrent-streams 6 and timeout client 2s
    (HAPROXY_LIMITS). HAProxy 2.6 has no per-connection request cap for HTTP/2 clients
    (tune.h2.fe.max-total-streams came in 2.8), so none is found."""
    async with _backend() as backend, haproxy(tmp_path, backend.port) as daemon:
        result = await run_probe(daemon.url + "/", h2c=True, idle_max=IDLE_MAX,
                                 timeout=TIMEOUT, request_cap_max=300)
    doc = to_json(result)
    msg = f"{describe(doc)}\nhaproxy output:\n{daemon.log()}"
    streams = HAPROXY_LIMITS["tune.h2.max-concurrent-streams"]
    assert doc["max_concurrent_streams"] == streams, msg
    assert doc["streams_enforced"] == streams, msg
    assert doc["streams_over_limit"] == "refused", msg
    assert doc["request_cap"] is None, msg
    assert doc["details"]["request_cap"]["stopped"] == "limit", msg
    assert doc["idle_close"] == "goaway", msg
    assert abs(doc["idle_timeout_s"] - HAPROXY_LIMITS["timeout_client_s"]) <= 0.2, msg
    # Measured: unlike nginx, a PING counts as activity for HAProxy's timeout client
    assert doc["ping_keeps_alive"] is True, msg
    # a header block over tune.bufsize (16 KiB) fails that stream only
    assert doc["details"]["headers"]["largest_ok"] == 8192, msg
    assert doc["details"]["headers"]["failure"] == "RST_STREAM PROTOCOL_ERROR", msg
    print(f"\nhaproxy: {describe(doc)}")


# ------------------------------------------------------------------------------ failures


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_refused_connection_is_one_line_exit_2() -> None:
    result = CliRunner().invoke(app, ["doctor", "probe", f"http://127.0.0.1:{_free_port()}/",
                                      "--h2c", "--timeout", "2"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "connection refused" in lines[0], result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("args, words", [
    (["-H", "no-colon"], "NAME:VALUE"),
    (["-H", "connection: close"], "connection-specific"),
    (["--idle-max", "0"], "--idle-max"),
    (["--streams-max", "0"], "--streams-max"),
])
def test_bad_options_are_one_line_exit_2(args: list[str], words: str) -> None:
    result = CliRunner().invoke(app, ["doctor", "probe", "http://127.0.0.1:9/", "--h2c", *args])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and words in result.output, \
        result.output


async def test_tls_failure_and_a_server_that_is_not_http2() -> None:
    async def http1(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            await reader.read(1024)
            writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            await writer.drain()
        writer.close()

    h1 = await asyncio.start_server(http1, "127.0.0.1", 0)
    try:
        async with serve() as tls:  # TLS with its own CA, which the probe does not trust
            (c1, _, e1), (c2, _, e2) = await asyncio.gather(
                _probe_cli(tls.url + "/", "--timeout", "3", timeout=20),
                _probe_cli(f"http://127.0.0.1:{h1.sockets[0].getsockname()[1]}/", "--h2c",
                           "--timeout", "3", timeout=20))
            # ... and with its CA the same server is probed over TLS (ALPN h2)
            assert tls.ca_file is not None
            ok = await run_probe(tls.url + "/", ca_file=tls.ca_file, idle_max=0.5,
                                 timeout=TIMEOUT, request_cap_max=20, streams_max=10)
    finally:
        h1.close()
    for code, err, words in ((c1, e1, "certificate"), (c2, e2, "HTTP/2")):
        assert code == 2, err
        assert len(err.strip().splitlines()) == 1 and words in err, err
        assert "Traceback" not in err
    assert ok.alpn == "h2" and ok.tls_version in ("TLSv1.2", "TLSv1.3")


# ------------------------------------------------------------------------------ units


def test_parse_header_and_grid() -> None:
    assert parse_header("X-Token: abc ") == ("x-token", "abc")
    with pytest.raises(DoctorError, match="NAME:VALUE"):
        parse_header("nothing")
    gaps = _grid(120.0)
    assert gaps[0] == 1.2 and gaps[-1] == 120.0 and len(gaps) < 20
    assert all(b / a <= 1.41 for a, b in itertools.pairwise(gaps))


def test_recommendations_follow_the_numbers() -> None:
    """An ALB-like result: 60 s idle, PING does not help, 128 streams, 10,000 requests."""
    r = ProbeResult(url="https://example/")
    r.ping_rtts_ms = [20.0]
    r.streams = StreamProbe(advertised=128, opened=131, enforced=128, refused=3,
                            over_limit="refused")
    r.request_cap = RequestCapProbe(cap=10_000, ended_by="goaway", goaway_code=0)
    r.idle = IdleProbe(timeout_s=60.0, close="goaway", goaway_code=0, ping_keeps_alive=False)
    rec = recommend(r)
    values = {c: {s.name: s.value for s in a.settings} for c, a in rec.items()}
    assert values["h2guard"]["max_idle"] == 48.0
    assert values["httpx"]["httpx.Limits(keepalive_expiry=...)"] == 48.0
    assert values["java"]["jdk.httpclient.keepalive.timeout.h2"] == 48
    assert values["go"]["http.Transport.IdleConnTimeout"] == 48.0
    assert "http2.Transport.ReadIdleTimeout" not in values["go"]  # PING would not help here
    assert values["node"]["undici.Agent maxConcurrentStreams"] == 128
    assert values["node"]["undici.Agent maxRequestsPerClient"] == 9000
    assert values["okhttp"]["ConnectionPool keepAliveDuration"] == 48_000
    assert "OkHttpClient.Builder.pingInterval" not in values["okhttp"]
    assert "48 * time.Second" in rec["go"].snippet
    titles = [f.title for f in findings(r)]
    assert "PING does not keep an idle connection open" in titles
    # a black hole instead: PING at half the timeout, and it is the top risk
    r.idle = IdleProbe(timeout_s=350.0, close="silent", ping_keeps_alive=True)
    values = {c: {s.name: s.value for s in a.settings} for c, a in recommend(r).items()}
    assert values["go"]["http2.Transport.ReadIdleTimeout"] == 175.0
    assert values["okhttp"]["OkHttpClient.Builder.pingInterval"] == 175_000
    assert findings(r)[0].severity == "high" and "black hole" in findings(r)[0].title


async def test_a_server_that_never_answers_bounds_every_part() -> None:
    """SETTINGS and PING work, requests are never answered: each part gives up after its
    --timeout, the report still comes (with the errors), nothing hangs."""
    mute = Scenario(name="mute", faults=(Delay(duration=60.0, at="request_headers"),))
    async with serve(mute, h2c=True) as server:
        result = await asyncio.wait_for(
            run_probe(server.url + "/", h2c=True, idle_max=1.0, timeout=1.0,
                      request_cap_max=50, download_path="/bytes/100"), 20)
    doc = to_json(result)
    details = doc["details"]
    assert "not answered within 1 s" in details["request_cap"]["error"], describe(doc)
    assert "did not answer within 1 s" in details["headers"]["error"], describe(doc)
    assert "stalled" in details["flow_control"]["download"]["error"], describe(doc)
    assert doc["ping_rtt_ms"] is not None and doc["idle_close"] == "none", describe(doc)
    assert doc["streams_over_limit"] == "refused", describe(doc)  # the limit still holds
    assert result.elapsed_s < 10
