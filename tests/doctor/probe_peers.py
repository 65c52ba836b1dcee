"""Real nginx and HAProxy for the probe tests, configured with non-default limits.

Starting and stopping a daemon is ``tests/peers/servers.py`` (bounded, own process group, free
loopback ports, configuration in the test's temporary directory); this module only writes the
configurations. A missing program skips the test loudly, naming the Debian package, as
``tests/peers/conftest.py`` does (whose fixture is not visible from here).
"""

from __future__ import annotations

import contextlib
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "peers"))
import servers  # tests/peers is not a package: the same import as its own tests

PACKAGES = {"nginx": "nginx-light", "haproxy": "haproxy"}

# The limits each daemon is started with, stated once: the tests compare the probe with these.
NGINX_LIMITS = {"http2_max_concurrent_streams": 8, "keepalive_requests": 20,
                "keepalive_timeout_s": 2.0}
HAPROXY_LIMITS = {"tune.h2.max-concurrent-streams": 6, "timeout_client_s": 2.0}


class _Peer:
    """What ``servers.nginx`` wants of the peers conftest's fixture: ``need``."""

    @staticmethod
    def need(program: str) -> str:
        path = shutil.which(program) or next(
            (p for p in (f"/usr/sbin/{program}", f"/usr/bin/{program}") if Path(p).exists()),
            None)
        if path is None:
            package = PACKAGES.get(program, program)
            pytest.skip(f"PEER PROGRAM MISSING: `{program}` is not installed, so this test did "
                        f"not run. Install the Debian package `{package}` (apt-get install "
                        f"{package}); `make test` installs it.")
        return path


@contextlib.asynccontextmanager
async def nginx(workdir: Path, backend_port: int) -> AsyncIterator[servers.Daemon]:
    """nginx 1.22 with NGINX_LIMITS, proxying to a chaos backend. nginx buffers a request body
    before it proxies, so a stream whose HEADERS lack END_STREAM stays open (what the probe
    needs to find the stream limit)."""
    lim = NGINX_LIMITS

    def conf(ports: list[int]) -> str:
        return f"""
    server {{
        listen 127.0.0.1:{ports[0]} http2;
        http2_max_concurrent_streams {lim['http2_max_concurrent_streams']};
        keepalive_requests {lim['keepalive_requests']};
        keepalive_timeout {lim['keepalive_timeout_s']:g}s;
        location / {{ proxy_pass http://127.0.0.1:{backend_port}/status/200; }}
    }}"""

    async with servers.nginx(_Peer(), workdir, 1, conf) as daemon:
        yield daemon


@contextlib.asynccontextmanager
async def haproxy(workdir: Path, backend_port: int) -> AsyncIterator[servers.Daemon]:
    """HAProxy 2.6 with HAPROXY_LIMITS in front of a chaos backend (h2 both sides)."""
    binary = _Peer.need("haproxy")
    lim = HAPROXY_LIMITS

    def configure(ports: list[int]) -> list[str]:
        cfg = workdir / "haproxy.cfg"
        cfg.write_text(f"""global
    maxconn 256
    tune.h2.max-concurrent-streams {lim['tune.h2.max-concurrent-streams']}

defaults
    mode http
    timeout connect 2s
    timeout client {lim['timeout_client_s']:g}s
    timeout server 5s

frontend fe
    bind 127.0.0.1:{ports[0]} proto h2
    default_backend chaos

backend chaos
    server s1 127.0.0.1:{backend_port} proto h2
""")
        return [binary, "-f", str(cfg), "-db"]

    async with servers.daemon("haproxy", workdir, 1, configure) as daemon:
        yield daemon


def describe(doc: dict[str, Any]) -> str:
    """The headline numbers of a probe's JSON, for assertion messages."""
    keys = ("max_concurrent_streams", "streams_enforced", "streams_over_limit", "request_cap",
            "idle_timeout_s", "idle_close", "ping_keeps_alive", "ping_rtt_ms")
    return ", ".join(f"{k}={doc.get(k)!r}" for k in keys) + f"\ndetails={doc.get('details')}"
