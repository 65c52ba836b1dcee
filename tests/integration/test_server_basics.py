"""The chaos server's app, protocols and command line, over real loopback sockets."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from h2guard.chaos import ChaosServer, serve

PY = sys.executable


async def test_app_endpoints_over_http2_with_tls() -> None:
    async with serve() as server, httpx.AsyncClient(http2=True, verify=_trust(server)
                                                    ) as client:
        echo = await client.get(f"{server.url}/echo?x=1")
        assert echo.http_version == "HTTP/2"
        assert echo.json()["path"] == "/echo?x=1"
        posted = await client.post(f"{server.url}/echo", content=b"abc" * 1000)
        assert posted.content == b"abc" * 1000
        data = await client.get(f"{server.url}/bytes/300000")
        assert len(data.content) == 300000
        assert (await client.get(f"{server.url}/status/503")).status_code == 503
        assert (await client.get(f"{server.url}/delay/50")).json() == {"delayed_ms": 50}
        head = await client.head(f"{server.url}/bytes/1000")
        assert head.headers["content-length"] == "1000" and head.content == b""
        for key in ("k1", "k1", "k2"):
            resp = await client.post(f"{server.url}/orders", headers={"idempotency-key": key})
            assert resp.status_code == 201
        ledger = (await client.get(f"{server.url}/ledger")).json()
        assert ledger["total_effects"] == 3
        assert ledger["duplicate_keys"] == {"k1": 2}
        assert (await client.get(f"{server.url}/nope")).status_code == 404
        assert (await client.get(f"{server.url}/bytes/abc")).status_code == 400


async def test_http1_is_served_by_alpn_and_by_sniffing() -> None:
    async with serve() as tls, httpx.AsyncClient(verify=_trust(tls)) as client:
        resp = await client.get(f"{tls.url}/echo")
        assert resp.http_version == "HTTP/1.1" and resp.json()["http_version"] == "1.1"
        head = await client.head(f"{tls.url}/bytes/10")
        assert head.headers["content-length"] == "10"
    async with serve(h2c=True) as plain:
        reader, writer = await asyncio.open_connection("127.0.0.1", plain.port)
        writer.write(b"G")  # a first read too short to decide must not be taken for HTTP/2
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"ET /status/204 HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        assert await asyncio.wait_for(reader.readline(), 2) == b"HTTP/1.1 204 \r\n"
        writer.close()


def _trust(server: ChaosServer) -> ssl.SSLContext:
    assert server.ca_file is not None
    return ssl.create_default_context(cafile=server.ca_file)


def _start_cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([PY, "-m", "h2guard", "chaos", "serve", "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_cli_prints_url_first_and_summarises_on_ctrl_c(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    proc = _start_cli("--h2c", "--events", str(events), "--scenario",
                      str(_scenario(tmp_path)))
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        with httpx.Client(http1=False, http2=True) as client, \
                pytest.raises(httpx.RemoteProtocolError):
            client.get(f"{url}/status/200")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert "rst_stream" in err and "INTERNAL_ERROR" in err  # the summary table
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    fault = next(e for e in lines if e["event"] == "chaos.fault")
    assert {k: fault[k] for k in ("kind", "code", "moment", "stream")} == {
        "kind": "rst_stream", "code": "INTERNAL_ERROR", "moment": "request_headers",
        "stream": 1}
    assert isinstance(fault["time"], float) and fault["connection"] >= 1


def test_cli_bad_scenario_is_one_line_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[faults]]\nkind = "rst_stream"\ncode = "REFUSD_STREAM"\n')
    proc = subprocess.run([PY, "-m", "h2guard", "chaos", "serve", "--scenario", str(bad)],
                          capture_output=True, text=True, timeout=30,
                          env={**os.environ, "COLUMNS": "300"})
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "faults[0].code" in lines[0] and "REFUSD_STREAM" in lines[0]
    assert "Traceback" not in proc.stderr


def test_cli_port_in_use_is_a_clear_error() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        proc = subprocess.run([PY, "-m", "h2guard", "chaos", "serve", "--port", str(port)],
                              capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert "cannot listen" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_profiles_one_line_each() -> None:
    out = subprocess.run([PY, "-m", "h2guard", "chaos", "profiles"], capture_output=True,
                         text=True, timeout=30, check=True).stdout.splitlines()
    names = [line.split()[0] for line in out]
    assert names == sorted(["aws-alb", "aws-nlb", "gcp-lb", "azure-lb", "nginx", "haproxy",
                            "envoy", "nghttpx", "cloudflare"])


def _scenario(folder: Path) -> Path:
    path = folder / "reset.toml"
    path.write_text('name = "reset"\n[[faults]]\nkind = "rst_stream"\ncode = "INTERNAL_ERROR"\n'
                    'at = "request_headers"\n')
    return path
