"""Real nginx and HAProxy as reverse proxies in front of ``h2guard doctor middlebox``'s upstream.

The daemons start and stop through ``tests/peers/servers.py`` (bounded, own process group,
free loopback ports, config and logs in the test's temporary directory); this module only
writes their configurations. The upstream port is chosen by the test and handed to both the
proxy's configuration and the doctor, which serves the chaos server there: the proxies connect
to their upstream lazily, so it need not listen before they start.

* nginx (nginx-light has ngx_http_grpc_module): an h2c frontend whose ``grpc_pass`` speaks
  HTTP/2 to the upstream, with an upstream keepalive pool so that idle upstream connections
  exist; and one whose ``proxy_pass`` speaks HTTP/1.1, where the chaos server's frame faults do
  not apply (the doctor must say "not injected").
* HAProxy: a TLS frontend (ALPN h2; a trustme CA the doctor is given as --ca-file) and
  ``server s1 127.0.0.1:N proto h2``; a second, h2c frontend goes to the same server through
  a backend with ``retry-on empty-response`` (docs/FINDINGS.md: it replays a reset POST).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme

from peers.servers import Daemon, daemon, nginx  # tests/ is on sys.path (tests/conftest.py)

__all__ = ["haproxy_tls", "need", "nginx_grpc"]

PACKAGES = {"nginx": "nginx-light", "haproxy": "haproxy"}


def need(program: str) -> str:
    """The program's path, or skip loudly naming the Debian package (as tests/peers does)."""
    path = shutil.which(program)
    if path is None:
        package = PACKAGES.get(program, program)
        pytest.skip(f"PEER PROGRAM MISSING: `{program}` is not installed, so this test did not "
                    f"run. Install the Debian package `{package}` (apt-get install {package}); "
                    f"`make test` installs it.")
    return path


class _Peer:
    """What ``servers.nginx`` asks of the peers fixture: ``need``."""

    need = staticmethod(need)


@contextlib.asynccontextmanager
async def nginx_grpc(workdir: Path, upstream_port: int) -> AsyncIterator[Daemon]:
    """nginx listening h2c on two free ports: ``ports[0]`` forwards over HTTP/2
    (``grpc_pass``), ``ports[1]`` over HTTP/1.1 (``proxy_pass``)."""

    def servers(ports: list[int]) -> str:
        return f"""
    upstream chaos {{
        server 127.0.0.1:{upstream_port};
        keepalive 8;
    }}
    server {{
        listen 127.0.0.1:{ports[0]} http2;
        location / {{
            grpc_pass grpc://chaos;
            grpc_connect_timeout 2s;
            grpc_read_timeout 5s;
            grpc_send_timeout 5s;
        }}
    }}
    server {{
        listen 127.0.0.1:{ports[1]} http2;
        location / {{
            proxy_pass http://127.0.0.1:{upstream_port};
            proxy_http_version 1.1;
        }}
    }}"""

    async with nginx(_Peer(), workdir, 2, servers) as running:
        yield running


@contextlib.asynccontextmanager
async def haproxy_tls(workdir: Path, upstream_port: int) -> AsyncIterator[tuple[Daemon, str]]:
    """HAProxy with a TLS (ALPN h2) frontend (``ports[0]``) and an h2c one whose backend has
    ``retry-on empty-response`` (``ports[1]``), both to an h2 backend; yields the daemon and
    the CA file that signed its certificate."""
    binary = need("haproxy")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    pem = workdir / "haproxy.pem"
    pem.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems)
                    + cert.private_key_pem.bytes())
    ca_file = workdir / "haproxy-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))

    def configure(ports: list[int]) -> list[str]:
        cfg = workdir / "haproxy.cfg"
        cfg.write_text(f"""global
    maxconn 256

defaults
    mode http
    timeout connect 2s
    timeout client 5s
    timeout server 5s

frontend fe
    bind 127.0.0.1:{ports[0]} ssl crt {pem} alpn h2
    default_backend chaos

frontend fe_retry
    bind 127.0.0.1:{ports[1]} proto h2
    default_backend chaos_retry

backend chaos
    server s1 127.0.0.1:{upstream_port} proto h2

backend chaos_retry
    retry-on empty-response
    server s1 127.0.0.1:{upstream_port} proto h2
""")
        return [binary, "-f", str(cfg), "-db"]

    async with daemon("haproxy", workdir, 2, configure) as running:
        yield running, str(ca_file)
