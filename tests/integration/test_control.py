"""The chaos control API, driven over loopback with httpx (and curl when it is installed).

Bodies the tests send raw (``content=``) carry ``JSON`` as their content type, as every client
must: the API refuses other types (see the "access" section).
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import sys
from collections.abc import AsyncIterator

import httpx
import pytest

from h2guard.chaos import ChaosServer, ServerConfig, serve
from h2guard.chaos.control import MAX_BODY, ControlBindError, start_control

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def server() -> AsyncIterator[ChaosServer]:
    async with serve(h2c=True, control_port=0, time_scale=0.01) as srv:
        yield srv


@pytest.fixture
async def control(server: ChaosServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.control.url, timeout=10) as client:
        yield client


@pytest.fixture
async def h2(server: ChaosServer) -> AsyncIterator[httpx.AsyncClient]:
    """Cleartext HTTP/2 with prior knowledge to the chaos server itself."""
    async with httpx.AsyncClient(base_url=server.url, http1=False, http2=True,
                                 timeout=10) as client:
        yield client


RST_INTERNAL = {"kind": "rst_stream", "code": "INTERNAL_ERROR", "name": "boom"}
JSON = {"content-type": "application/json"}


# ------------------------------------------------------------------------------ basics


async def test_control_port_zero_picks_a_free_port(server: ChaosServer) -> None:
    assert server.config.control_port == 0
    assert server.control.port not in (0, server.port)
    assert server.control.url == f"http://127.0.0.1:{server.control.port}"


async def test_index_lists_every_endpoint(server: ChaosServer,
                                          control: httpx.AsyncClient) -> None:
    resp = await control.get("/")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/json"
    body = resp.json()
    assert body["url"] == server.url
    pairs = {(e["method"], e["path"]) for e in body["endpoints"]}
    assert {("GET", "/health"), ("GET", "/faults"), ("POST", "/faults"),
            ("DELETE", "/faults"), ("DELETE", "/faults/{id}"), ("GET", "/scenario"),
            ("GET", "/ledger"), ("DELETE", "/ledger"), ("GET", "/events"), ("GET", "/stats"),
            ("GET", "/metrics")} <= pairs


async def test_health(server: ChaosServer, control: httpx.AsyncClient) -> None:
    resp = await control.get("/health")
    assert resp.status_code == 200
    assert resp.json() == {"ok": True, "url": server.url, "scenario": "no-faults"}
    head = await control.head("/health")
    assert head.status_code == 200
    assert head.content == b""
    assert int(head.headers["content-length"]) == len(resp.content)


async def test_unknown_path_404_and_wrong_method_405(control: httpx.AsyncClient) -> None:
    resp = await control.get("/nope")
    assert resp.status_code == 404
    assert "no such endpoint" in resp.json()["error"]
    resp = await control.put("/faults", json={})
    assert resp.status_code == 405
    assert resp.headers["allow"] == "DELETE, GET, HEAD, POST"
    assert "PUT" in resp.json()["error"]
    resp = await control.post("/stats")
    assert resp.status_code == 405
    assert resp.headers["content-type"] == "application/json"


# ------------------------------------------------------------------------------ faults


async def test_runtime_rst_stream_fault_resets_the_next_h2_request(
        server: ChaosServer, control: httpx.AsyncClient, h2: httpx.AsyncClient) -> None:
    ok = await h2.get("/echo")
    assert ok.status_code == 200
    assert ok.http_version == "HTTP/2"

    resp = await control.post("/faults", json=RST_INTERNAL)
    assert resp.status_code == 201
    added = resp.json()
    fid = added["id"]
    assert added["kind"] == "rst_stream"
    assert added["code"] == "INTERNAL_ERROR"
    assert added["fired"] == 0
    assert resp.headers["location"] == f"/faults/{fid}"

    with pytest.raises(httpx.RemoteProtocolError, match="error_code:2"):
        await h2.get("/echo")

    listed = (await control.get("/faults")).json()
    assert [(f["id"], f["fired"], f["name"]) for f in listed] == [(fid, 1, "boom")]

    resp = await control.delete(f"/faults/{fid}")
    assert resp.status_code == 200
    assert resp.json()["removed"] is True
    assert (await control.delete(f"/faults/{fid}")).status_code == 404

    again = await h2.get("/echo")
    assert again.status_code == 200

    events = (await control.get("/events", params={"name": "chaos.fault"})).json()
    assert [(e["event"], e["kind"], e["code"], e["fault_id"]) for e in events["events"]] == [
        ("chaos.fault", "rst_stream", "INTERNAL_ERROR", fid)]

    metrics = await control.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert 'h2guard_chaos_faults_total{code="INTERNAL_ERROR",kind="rst_stream"} 1.0' \
        in metrics.text.splitlines()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_prior_knowledge_sees_the_reset(server: ChaosServer,
                                                   control: httpx.AsyncClient) -> None:
    resp = await control.post("/faults", json={"kind": "rst_stream", "code": "CANCEL",
                                               "when": {"path": "/orders"}})
    assert resp.status_code == 201

    async def curl(*args: str) -> int:
        proc = await asyncio.create_subprocess_exec(
            "curl", "-s", "-o", "/dev/null", "--http2-prior-knowledge", *args,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        return await proc.wait()

    assert await curl("-X", "POST", f"{server.url}/orders") == 92  # HTTP/2 stream error
    assert await curl(f"{server.url}/echo") == 0  # other paths are untouched
    assert server.ledger.total == 0  # reset at request_headers: the app never ran


async def test_fault_listing_get_and_clear(control: httpx.AsyncClient) -> None:
    resp = await control.post("/faults", json=[
        {"kind": "delay", "duration": "250ms", "at": "response_body", "after_bytes": 10},
        {"kind": "goaway", "mode": "drain", "code": "NO_ERROR", "drain_delay": 2},
    ])
    assert resp.status_code == 201
    first, second = resp.json()
    assert first["kind"] == "delay" and first["duration"] == 0.25
    assert second["kind"] == "goaway" and second["mode"] == "drain"

    one = await control.get(f"/faults/{second['id']}")
    assert one.status_code == 200
    assert one.json() == second
    assert (await control.get("/faults/999")).status_code == 404
    assert (await control.get("/faults/abc")).status_code == 404

    cleared = await control.delete("/faults")
    assert cleared.status_code == 200
    assert cleared.json()["removed"] == 2
    assert (await control.get("/faults")).json() == []


async def test_fault_round_trips_through_the_api(control: httpx.AsyncClient) -> None:
    """What GET /faults shows (minus id and fired) can be POSTed back as is."""
    spec = {"kind": "rst_stream", "code": "REFUSED_STREAM", "at": "response_body",
            "after_bytes": 100, "when": {"probability": 0.5, "path": "/bytes/*",
                                         "headers": {"x-chaos": "on"}, "max_fires": 3}}
    first = (await control.post("/faults", json=spec)).json()
    echo = {k: v for k, v in first.items() if k not in ("id", "fired")}
    second = (await control.post("/faults", json=echo)).json()
    assert {k: v for k, v in second.items() if k != "id"} == \
        {k: v for k, v in first.items() if k != "id"}


async def test_malformed_json_is_400_with_the_parse_error(control: httpx.AsyncClient) -> None:
    resp = await control.post("/faults", content=b'{"kind": "rst_stream",', headers=JSON)
    assert resp.status_code == 400
    assert resp.headers["content-type"] == "application/json"
    error = resp.json()["error"]
    assert error.startswith("malformed JSON: ")
    assert "line 1 column" in error

    resp = await control.post("/faults", content=b"", headers=JSON)
    assert resp.status_code == 400
    assert "empty" in resp.json()["error"]

    resp = await control.post("/faults", content=b"\xff\xfe{", headers=JSON)
    assert resp.status_code == 400
    assert "malformed JSON" in resp.json()["error"]


async def test_invalid_fault_is_400_with_the_scenario_error(control: httpx.AsyncClient) -> None:
    resp = await control.post("/faults", json={"kind": "rst_stream", "code": "REFUSD"})
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error.startswith("fault.code: unknown error code 'REFUSD'")
    assert "\n" not in error

    resp = await control.post("/faults", json={"code": "CANCEL"})
    assert resp.status_code == 400
    assert "kind" in resp.json()["error"]

    resp = await control.post("/faults", json=[RST_INTERNAL, {"kind": "nope"}])
    assert resp.status_code == 400
    assert resp.json()["error"].startswith("faults[1]")
    assert (await control.get("/faults")).json() == []  # all or nothing

    resp = await control.post("/faults", json=42)
    assert resp.status_code == 400
    assert "JSON object" in resp.json()["error"]


async def test_body_over_one_mib_is_413(control: httpx.AsyncClient) -> None:
    resp = await control.post("/faults", content=b" " * (MAX_BODY + 1), headers=JSON)
    assert resp.status_code == 413
    assert "too large" in resp.json()["error"]

    async def chunks() -> AsyncIterator[bytes]:  # no content-length: counted as it arrives
        for _ in range(20):
            yield b" " * 65536

    resp = await control.post("/faults", content=chunks(), headers=JSON)
    assert resp.status_code == 413
    # the API still answers afterwards
    assert (await control.get("/health")).status_code == 200


# ------------------------------------------------------------------------------ views


async def test_scenario_endpoint_shows_the_profile() -> None:
    async with serve(profile="nginx", h2c=True, control_port=0, time_scale=0.01) as srv, \
            httpx.AsyncClient(base_url=srv.control.url) as control:
        resp = await control.get("/scenario")
        assert resp.status_code == 200
        body = resp.json()
        assert body["name"] == "nginx"
        assert {f["kind"] for f in body["faults"]} >= {"idle_timeout", "request_cap"}
        live = (await control.get("/faults")).json()
        assert [f["kind"] for f in live] == [f["kind"] for f in body["faults"]]


async def test_ledger_after_post_orders(server: ChaosServer, control: httpx.AsyncClient,
                                        h2: httpx.AsyncClient) -> None:
    for _ in range(2):
        resp = await h2.post("/orders", headers={"idempotency-key": "k-1"})
        assert resp.status_code == 201

    ledger = (await control.get("/ledger")).json()
    assert ledger["total_effects"] == 2
    assert ledger["duplicate_keys"] == {"k-1": 2}
    assert "effects" not in ledger

    full = (await control.get("/ledger", params={"effects": "1"})).json()
    assert [e["idempotency_key"] for e in full["effects"]] == ["k-1", "k-1"]
    assert (await control.get("/ledger", params={"effects": "maybe"})).status_code == 400

    reset = await control.delete("/ledger")
    assert reset.status_code == 200
    assert reset.json()["removed_effects"] == 2
    assert (await control.get("/ledger")).json()["total_effects"] == 0
    assert server.ledger.total == 0


async def test_events_since_name_and_limit(server: ChaosServer,
                                           control: httpx.AsyncClient,
                                           h2: httpx.AsyncClient) -> None:
    start = (await control.get("/events")).json()
    assert start["events"][0]["event"] == "chaos.server.started"
    mark = start["last_seq"]

    for _ in range(3):
        await h2.get("/echo")
    newer = (await control.get("/events", params={"since": mark})).json()
    assert all(e["seq"] > mark for e in newer["events"])
    assert newer["last_seq"] == server.events.last_seq
    assert "chaos.connection.opened" in [e["event"] for e in newer["events"]]

    only = (await control.get("/events", params={"name": "chaos.connection"})).json()
    assert {e["event"] for e in only["events"]} <= {"chaos.connection.opened",
                                                     "chaos.connection.closed"}

    page = (await control.get("/events", params={"limit": 1})).json()
    assert len(page["events"]) == 1
    assert page["more"] is True
    assert page["events"][0]["seq"] == 1

    for bad in ({"since": "x"}, {"since": "-1"}, {"limit": "0"}, {"limit": "10000000"}):
        resp = await control.get("/events", params=bad)
        assert resp.status_code == 400, bad
        assert "query parameter" in resp.json()["error"]


async def test_stats(server: ChaosServer, control: httpx.AsyncClient,
                     h2: httpx.AsyncClient) -> None:
    await control.post("/faults", json={**RST_INTERNAL, "when": {"max_fires": 1}})
    with pytest.raises(httpx.RemoteProtocolError):
        await h2.get("/echo")
    stats = (await control.get("/stats")).json()
    assert stats["url"] == server.url
    assert stats["faults"] == [{"kind": "rst_stream", "code": "INTERNAL_ERROR", "count": 1}]
    assert json.loads(json.dumps(server.stats()))["faults"] == stats["faults"]


async def test_metrics_connections_and_ledger(server: ChaosServer, control: httpx.AsyncClient,
                                              h2: httpx.AsyncClient) -> None:
    await h2.post("/orders")
    lines = (await control.get("/metrics")).text.splitlines()
    assert "h2guard_chaos_connections_total 1.0" in lines
    assert "h2guard_chaos_open_connections 1.0" in lines
    assert "h2guard_chaos_ledger_effects_total 1.0" in lines
    await h2.aclose()
    for _ in range(100):
        if server.connections == 0:
            break
        await asyncio.sleep(0.01)
    lines = (await control.get("/metrics")).text.splitlines()
    assert "h2guard_chaos_open_connections 0.0" in lines


async def test_metrics_without_prometheus_client_is_501(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import now fails
    async with serve(h2c=True, control_port=0) as srv, \
            httpx.AsyncClient(base_url=srv.control.url) as control:
        resp = await control.get("/metrics")
        assert resp.status_code == 501
        assert "h2guard[metrics]" in resp.json()["error"]
        assert (await control.get("/health")).status_code == 200


# ------------------------------------------------------------------------------ HTTP/1.1


async def test_keep_alive_serves_many_requests_on_one_connection(
        server: ChaosServer, control: httpx.AsyncClient) -> None:
    for path in ("/health", "/faults", "/stats", "/events", "/ledger", "/scenario", "/"):
        assert (await control.get(path)).status_code == 200
    await control.post("/faults", json=RST_INTERNAL)
    await control.post("/faults", content=b"{", headers=JSON)  # errors keep it too
    await control.delete("/faults")
    assert server.control.accepted == 1


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_reuses_the_connection(server: ChaosServer) -> None:
    url = server.control.url
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sv", f"{url}/health", f"{url}/stats", f"{url}/faults",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0
    assert b"Re-using existing connection" in err
    assert out.count(b"\n") == 3
    assert server.control.accepted == 1


async def _wait_no_connections(server: ChaosServer) -> None:
    for _ in range(200):
        if server.control.connections == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{server.control.connections} control connection(s) left open")


@pytest.mark.parametrize("partial", [
    b"GET /hea",
    b"POST /faults HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{\"kind\":",
    b"POST /faults HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\n{\"ki",
    b"",
])
async def test_client_disconnecting_mid_request_leaks_nothing(
        server: ChaosServer, partial: bytes) -> None:
    for _ in range(3):
        _, writer = await asyncio.open_connection("127.0.0.1", server.control.port)
        writer.write(partial)
        await writer.drain()
        await asyncio.sleep(0.01)
        writer.close()
        await writer.wait_closed()
    await _wait_no_connections(server)
    assert server.control.accepted == 3
    assert server.faults.items() == []  # nothing half-parsed was applied
    async with httpx.AsyncClient(base_url=server.control.url) as control:
        assert (await control.get("/health")).status_code == 200


async def test_garbage_gets_400_and_a_close(server: ChaosServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.control.port)
    writer.write(b"NOT HTTP AT ALL\r\n\r\n")
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    await writer.wait_closed()
    assert data.startswith(b"HTTP/1.1 400 ")
    assert b"connection: close" in data.lower()
    await _wait_no_connections(server)


async def test_stop_closes_idle_keep_alive_connections(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="asyncio")
    srv = ChaosServer(config=ServerConfig(h2c=True, control_port=0))
    await srv.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.control.port)
    writer.write(f"GET /health HTTP/1.1\r\nhost: 127.0.0.1:{srv.control.port}\r\n\r\n"
                 .encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200 ")
    assert srv.control.connections == 1
    await asyncio.wait_for(srv.stop(), 5)
    assert srv.control.connections == 0
    rest = await asyncio.wait_for(reader.read(), 5)  # EOF, not a hang
    assert rest.endswith(b"}\n")
    writer.close()
    assert not [r for r in caplog.records if r.name == "asyncio"]


# ------------------------------------------------------------------------------ binding


async def test_non_loopback_bind_is_refused() -> None:
    srv = ChaosServer(config=ServerConfig(h2c=True))
    await srv.start()
    try:
        for host in ("0.0.0.0", "::", "192.0.2.10", "example.com"):
            with pytest.raises(ValueError, match="allow_remote=True"):
                await start_control(srv, host=host, port=0)
    finally:
        await srv.stop()


async def test_server_with_a_remote_control_host_fails_to_start_and_leaks_nothing() -> None:
    srv = ChaosServer(config=ServerConfig(h2c=True, control_host="0.0.0.0", control_port=0))
    with pytest.raises(ValueError, match="non-loopback"):
        await srv.start()
    assert srv.control is None
    with pytest.raises(OSError):  # the chaos port was released
        await asyncio.open_connection("127.0.0.1", srv.port)


async def test_allow_remote_binds_anyway() -> None:
    srv = ChaosServer(config=ServerConfig(h2c=True))
    await srv.start()
    try:
        ctl = await start_control(srv, host="0.0.0.0", port=0, allow_remote=True)
        try:
            async with httpx.AsyncClient() as client:
                resp = await client.get(f"http://127.0.0.1:{ctl.port}/health")
                assert resp.json()["ok"] is True
        finally:
            await ctl.close()
    finally:
        await srv.stop()


async def test_localhost_is_loopback(server: ChaosServer) -> None:
    ctl = await start_control(server, host="localhost", port=0)
    try:
        assert ctl.url.startswith("http://127.0.0.1:")
    finally:
        await ctl.close()


# ------------------------------------------------------------------------------ access


async def test_cross_origin_text_plain_post_adds_nothing(server: ChaosServer,
                                                        control: httpx.AsyncClient) -> None:
    """What a web page on evil.example can make a browser send (a CORS simple request, after
    re-pointing evil.example at 127.0.0.1) is refused; a local JSON POST still works."""
    port = server.control.port
    body = json.dumps(RST_INTERNAL).encode()
    for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1:{port}"):
        resp = await control.post("/faults", content=body, headers={
            "host": host, "origin": "http://evil.example", "content-type": "text/plain"})
        assert 400 <= resp.status_code < 500, host
        assert resp.json()["error"]
    assert server.faults.items() == []
    resp = await control.post("/faults", content=body, headers={
        "host": f"127.0.0.1:{port}", "content-type": "application/json"})
    assert resp.status_code == 201
    assert len(server.faults.items()) == 1


@pytest.mark.parametrize("host", [
    "evil.example", "evil.example:{port}", "127.0.0.1", "localhost", "[::1]",
    "127.0.0.1:{other}", "127.0.0.2:{port}", "127.0.0.1:{port}.evil.example",
    "127.0.0.1:{port}:{port}", "::1:{port}", "127.0.0.1:+{port}", "",
])
async def test_a_host_that_is_not_this_api_is_403(server: ChaosServer,
                                                  control: httpx.AsyncClient,
                                                  host: str) -> None:
    port = server.control.port
    value = host.format(port=port, other=port + 1 if port < 65535 else port - 1)
    resp = await control.post("/faults", json=RST_INTERNAL, headers={"host": value})
    assert resp.status_code == 403, value
    error = resp.json()["error"]
    assert "Host" in error and f"127.0.0.1:{port}" in error
    assert "\n" not in error
    assert (await control.get("/faults", headers={"host": value})).status_code == 403
    assert server.faults.items() == []


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "[::1]:{port}",
                                  "LocalHost:{port}", "[0:0:0:0:0:0:0:1]:{port}",
                                  "localhost.:{port}"])
async def test_the_names_of_this_api_are_accepted(server: ChaosServer,
                                                  control: httpx.AsyncClient,
                                                  host: str) -> None:
    value = host.format(port=server.control.port)
    resp = await control.post("/faults", json=RST_INTERNAL, headers={"host": value})
    assert resp.status_code == 201, value


async def _raw(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        await writer.wait_closed()


async def test_http10_without_host_and_a_foreign_absolute_target_are_403(
        server: ChaosServer) -> None:
    port = server.control.port
    data = await _raw(port, b"GET /faults HTTP/1.0\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 403 ")
    assert b"exactly one Host header" in data
    data = await _raw(port, f"GET http://evil.example/faults HTTP/1.1\r\nhost: 127.0.0.1:"
                            f"{port}\r\nconnection: close\r\n\r\n".encode())
    assert data.startswith(b"HTTP/1.1 403 ")
    assert b"names another host" in data
    data = await _raw(port, f"GET http://127.0.0.1:{port}/health HTTP/1.1\r\nhost: 127.0.0.1:"
                            f"{port}\r\nconnection: close\r\n\r\n".encode())
    assert data.startswith(b"HTTP/1.1 200 ")


@pytest.mark.parametrize("origin", [
    "http://evil.example", "null", "https://127.0.0.1:{port}", "http://127.0.0.1:{other}",
    "http://localhost", "http://127.0.0.1:{port}/x", "http://user@127.0.0.1:{port}", "",
])
async def test_a_foreign_origin_is_403(server: ChaosServer, control: httpx.AsyncClient,
                                       origin: str) -> None:
    port = server.control.port
    value = origin.format(port=port, other=port + 1 if port < 65535 else port - 1)
    resp = await control.post("/faults", json=RST_INTERNAL, headers={"origin": value})
    assert resp.status_code == 403, value
    error = resp.json()["error"]
    assert "cross-origin" in error and f"http://127.0.0.1:{port}" in error
    assert "access-control-allow-origin" not in resp.headers
    assert (await control.delete("/ledger", headers={"origin": value})).status_code == 403
    assert server.faults.items() == []


async def test_a_cors_preflight_from_a_foreign_origin_is_refused(
        server: ChaosServer, control: httpx.AsyncClient) -> None:
    resp = await control.options("/faults", headers={
        "origin": "http://evil.example", "access-control-request-method": "DELETE"})
    assert resp.status_code == 403
    assert not [h for h in resp.headers if h.startswith("access-control-")]


@pytest.mark.parametrize("origin", ["http://127.0.0.1:{port}", "http://localhost:{port}",
                                    "HTTP://LOCALHOST:{port}", "http://[::1]:{port}"])
async def test_the_own_origin_is_accepted(server: ChaosServer, control: httpx.AsyncClient,
                                          origin: str) -> None:
    value = origin.format(port=server.control.port)
    resp = await control.post("/faults", json=RST_INTERNAL, headers={"origin": value})
    assert resp.status_code == 201, value


@pytest.mark.parametrize("content_type", [
    None, "text/plain", "text/plain; charset=utf-8", "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x", "application/jsonx", "text/json",
])
async def test_a_body_that_is_not_declared_json_is_415(server: ChaosServer,
                                                       control: httpx.AsyncClient,
                                                       content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type is not None else {}
    resp = await control.post("/faults", content=json.dumps(RST_INTERNAL).encode(),
                              headers=headers)
    assert resp.status_code == 415, content_type
    error = resp.json()["error"]
    assert "Content-Type: application/json" in error
    assert "\n" not in error
    assert server.faults.items() == []


async def test_every_post_and_any_body_need_the_json_type(server: ChaosServer,
                                                          control: httpx.AsyncClient) -> None:
    resp = await control.post("/faults")  # no body, no type: still a POST
    assert resp.status_code == 415
    assert "it has none" in resp.json()["error"]
    resp = await control.request("DELETE", "/faults", content=b"x",
                                 headers={"content-type": "text/plain"})
    assert resp.status_code == 415
    assert (await control.delete("/faults")).status_code == 200  # no body: no type needed


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8",
                                          "Application/JSON ; charset=UTF-8"])
async def test_json_with_parameters_and_any_case_is_accepted(
        control: httpx.AsyncClient, content_type: str) -> None:
    resp = await control.post("/faults", content=json.dumps(RST_INTERNAL).encode(),
                              headers={"content-type": content_type})
    assert resp.status_code == 201, content_type


# ------------------------------------------------------------------------------ token


@pytest.fixture
async def guarded() -> AsyncIterator[ChaosServer]:
    srv = ChaosServer(config=ServerConfig(h2c=True, control_port=0, control_token="s3cr.et"))
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


async def test_token_missing_or_wrong_is_401_with_www_authenticate(
        guarded: ChaosServer) -> None:
    async with httpx.AsyncClient(base_url=guarded.control.url) as client:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "Bearer"},
                        {"authorization": "Bearer s3cr.e"}, {"authorization": "s3cr.et"},
                        {"authorization": "Basic czNjci5ldA=="}):
            for method, path in (("GET", "/faults"), ("POST", "/faults"), ("GET", "/"),
                                 ("DELETE", "/ledger"), ("GET", "/nope")):
                resp = await client.request(method, path, json=RST_INTERNAL
                                            if method == "POST" else None, headers=headers)
                assert resp.status_code == 401, (headers, method, path)
                assert resp.headers["www-authenticate"].startswith("Bearer")
                assert "token" in resp.json()["error"]
        resp = await client.get("/faults")
        assert "Authorization: Bearer <token>" in resp.json()["error"]
        resp = await client.get("/faults", headers={"authorization": "Bearer wrong"})
        assert resp.json()["error"] == "wrong token in 'Authorization: Bearer'"
    assert guarded.faults.items() == []


async def test_the_right_token_works(guarded: ChaosServer) -> None:
    async with httpx.AsyncClient(base_url=guarded.control.url,
                                 headers={"authorization": "Bearer s3cr.et"}) as client:
        assert (await client.post("/faults", json=RST_INTERNAL)).status_code == 201
        assert len((await client.get("/faults")).json()) == 1
        resp = await client.get("/faults", headers={"authorization": "bearer s3cr.et"})
        assert resp.status_code == 200  # the scheme is case-insensitive
        # the token does not lift the other rules
        resp = await client.post("/faults", json=RST_INTERNAL,
                                 headers={"host": "evil.example"})
        assert resp.status_code == 403
        resp = await client.post("/faults", content=b"{}",
                                 headers={"content-type": "text/plain"})
        assert resp.status_code == 415


async def test_health_needs_no_token_and_tells_nothing_without_it(
        guarded: ChaosServer) -> None:
    async with httpx.AsyncClient(base_url=guarded.control.url) as client:
        resp = await client.get("/health")
        assert resp.status_code == 200
        assert resp.json() == {"ok": True}
        assert (await client.head("/health")).status_code == 200
        full = await client.get("/health", headers={"authorization": "Bearer s3cr.et"})
        assert full.json()["url"] == guarded.url
        assert (await client.get("/health", headers={"host": "evil.example"})).status_code \
            == 403


@pytest.mark.parametrize("token", ["", "has space", "new\nline", "caf\u00e9"])
async def test_a_token_that_cannot_be_sent_is_refused(server: ChaosServer, token: str) -> None:
    with pytest.raises(ValueError, match="control token"):
        await start_control(server, port=0, token=token)


# ------------------------------------------------------------------------------ warnings


async def test_remote_without_a_token_warns(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="h2guard.chaos")
    srv = ChaosServer(config=ServerConfig(h2c=True, control_host="0.0.0.0", control_port=0,
                                          control_allow_remote=True))
    await srv.start()
    try:
        assert srv.control.warning is not None
        assert "no token" in srv.control.warning and "--control-token" in srv.control.warning
        records = [r for r in caplog.records if r.name == "h2guard.chaos"]
        assert [r.levelno for r in records] == [logging.WARNING]
        assert records[0].getMessage() == srv.control.warning
        events = [e for e in srv.events if e.name == "chaos.control_unprotected"]
        assert len(events) == 1
        assert events[0].data["port"] == srv.control.port
        assert events[0].data["host"] == "0.0.0.0"
    finally:
        await srv.stop()


async def test_no_warning_with_a_token_or_on_loopback(server: ChaosServer,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="h2guard.chaos")
    assert server.control.warning is None
    ctl = await start_control(server, host="0.0.0.0", port=0, allow_remote=True,
                              token="t0ken")
    try:
        assert ctl.warning is None
        async with httpx.AsyncClient() as client:
            resp = await client.get(f"http://127.0.0.1:{ctl.port}/faults",
                                    headers={"authorization": "Bearer t0ken"})
            assert resp.status_code == 200
    finally:
        await ctl.close()
    assert not [r for r in caplog.records if r.name == "h2guard.chaos"]
    assert not [e for e in server.events if e.name == "chaos.control_unprotected"]


async def test_a_busy_control_port_names_the_control_api(server: ChaosServer) -> None:
    with pytest.raises(ControlBindError) as info:
        await start_control(server, port=server.control.port)
    assert isinstance(info.value, OSError)
    assert str(info.value) == (f"cannot listen on 127.0.0.1:{server.control.port} for the "
                               "control API: address already in use")
