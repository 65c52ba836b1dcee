"""h2guard's transports as a drop-in for httpx's: errors a user can act on, and the same options.

* A missing or unreadable CA file (``verify=``) or client certificate (``cert=``) fails when
  the transport or client is built, with the exception type httpx 0.28 raises for the same
  argument (FileNotFoundError, ssl.SSLError), but naming the file; a good CA file still works.
* ``http2_prior_knowledge=True`` against a server that does not speak HTTP/2 (it answers the
  preface in HTTP/1.x) is one line saying so, raised at once: one connection, no retry, from
  the bare transports and from h2guard's clients (whose retry layer must not take it for a
  connect failure, "nothing was sent, so a retry is safe").
* A request not resent only because its body is a one-shot stream raises
  BodyNotReplayableError from the transport, not ConnectionLostError.
* ``HTTPTransport`` has the same typed, keyword-only signature as ``AsyncHTTPTransport``: a
  misspelt option is a TypeError naming the class, and a mypy error.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import h2guard
from h2guard.chaos import serve
from h2guard.chaos.model import RstStream, Scenario, Trigger
from h2guard.errors import BodyNotReplayableError, H2ProtocolError, failure_of
from h2guard.events import EventLog
from h2guard.retry.classify import classify

pytestmark = pytest.mark.timeout(60)

_REFUSED_STREAM = 0x7


def _build(name: str, **options: Any) -> Any:
    """Build one of the four h2guard entry points (and close it again if that worked)."""
    if name == "AsyncHTTPTransport":
        return h2guard.AsyncHTTPTransport(**options)
    if name == "HTTPTransport":
        built = h2guard.HTTPTransport(**options)
        built.close()
        return built
    if name == "AsyncClient":
        return h2guard.AsyncClient(**options)
    client = h2guard.Client(**options)
    client.close()
    return client


def _httpx_raises(**options: Any) -> type[BaseException] | None:
    """What httpx 0.28's own transport raises for the same ``verify``/``cert``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # verify=<str> is deprecated there
        try:
            httpx.HTTPTransport(**options)
        except Exception as exc:
            return type(exc)
    return None


ENTRY_POINTS = ["AsyncHTTPTransport", "HTTPTransport", "AsyncClient", "Client"]


# --------------------------------------------------------------------------- CA and cert files


@pytest.fixture
def not_pem(tmp_path: Path) -> str:
    path = tmp_path / "ca-bundle.pem"
    path.write_text("this is not a PEM certificate\n")
    return str(path)


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_a_missing_ca_file_fails_at_construction_naming_it(entry: str, tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.pem")
    with pytest.raises(FileNotFoundError) as caught:
        _build(entry, verify=missing)
    assert _httpx_raises(verify=missing) is FileNotFoundError  # the type httpx raises too
    text = str(caught.value)
    assert missing in text and "verify=" in text and "\n" not in text, text
    assert caught.value.filename == missing


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_a_ca_file_that_is_not_pem_fails_at_construction_naming_it(entry: str,
                                                                   not_pem: str) -> None:
    with pytest.raises(ssl.SSLError) as caught:
        _build(entry, verify=not_pem)
    assert _httpx_raises(verify=not_pem) is ssl.SSLError
    text = str(caught.value)
    assert not_pem in text and "verify=" in text and "\n" not in text, text


@pytest.mark.parametrize("entry", ["AsyncHTTPTransport", "HTTPTransport"])
def test_a_missing_or_bad_client_certificate_fails_at_construction(entry: str, tmp_path: Path,
                                                                   not_pem: str) -> None:
    missing = str(tmp_path / "client.pem")
    with pytest.raises(FileNotFoundError) as caught:
        _build(entry, cert=missing)
    assert _httpx_raises(cert=missing) is FileNotFoundError
    assert missing in str(caught.value) and "cert=" in str(caught.value)
    with pytest.raises(FileNotFoundError) as caught:  # the key file of a pair, by name
        _build(entry, cert=(not_pem, missing))
    assert missing in str(caught.value)
    with pytest.raises(ssl.SSLError) as bad:
        _build(entry, cert=not_pem)
    assert _httpx_raises(cert=not_pem) is ssl.SSLError
    assert not_pem in str(bad.value) and "\n" not in str(bad.value)


def test_a_ca_directory_is_taken_as_httpx_takes_it(tmp_path: Path) -> None:
    """httpx 0.28 reads a directory as ``capath``: so does h2guard (no error)."""
    assert _httpx_raises(verify=str(tmp_path)) is None
    h2guard.AsyncHTTPTransport(verify=str(tmp_path))
    h2guard.HTTPTransport(verify=str(tmp_path)).close()


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_paths_are_taken_as_the_files_they_name(entry: str, tmp_path: Path,
                                                not_pem: str) -> None:
    """A ``pathlib.Path`` for ``verify`` or ``cert`` is the file it names, never "no CA given"
    (which would trust the default bundle instead of the user's own CA, and fail later with a
    verification error naming nothing); a value of another type is a TypeError at once."""
    missing = tmp_path / "ca.pem"
    with pytest.raises(FileNotFoundError) as caught:
        _build(entry, verify=missing)
    assert str(missing) in str(caught.value) and "verify=" in str(caught.value)
    with pytest.raises(ssl.SSLError):
        _build(entry, verify=Path(not_pem))
    with pytest.raises(FileNotFoundError) as caught:
        _build(entry, cert=(Path(not_pem), tmp_path / "key.pem"))
    assert str(tmp_path / "key.pem") in str(caught.value)
    _build(entry, verify=tmp_path)  # a folder of CAs, as a str would be
    for bad in ({"verify": 1}, {"cert": 1}):
        with pytest.raises(TypeError) as wrong:
            _build(entry, **bad)
        assert f"{next(iter(bad))}= takes" in str(wrong.value)


async def test_a_ca_file_given_as_a_path_verifies_the_server() -> None:
    async with serve(Scenario(), time_scale=0.01) as server:
        assert server.ca_file is not None
        ca = Path(server.ca_file)
        async with h2guard.AsyncClient(verify=ca) as client:
            response = await client.get(f"{server.url}/bytes/10")
        assert response.status_code == 200 and response.http_version == "HTTP/2"


def test_a_failed_sync_construction_leaves_no_loop_thread(tmp_path: Path) -> None:
    def loops() -> int:
        return sum(1 for t in threading.enumerate() if t.name == "h2guard-loop")

    before = loops()
    for _ in range(3):
        with pytest.raises(FileNotFoundError):
            h2guard.HTTPTransport(verify=str(tmp_path / "nope.pem"))
    assert loops() == before


async def test_a_good_ca_file_still_verifies_the_server() -> None:
    async with serve(Scenario(), time_scale=0.01) as server:
        assert server.ca_file is not None
        ca_file = server.ca_file
        async with httpx.AsyncClient(transport=h2guard.AsyncHTTPTransport(verify=ca_file)) as c:
            response = await c.get(f"{server.url}/bytes/10")
            assert response.status_code == 200 and response.http_version == "HTTP/2"

        def sync() -> httpx.Response:
            with h2guard.Client(verify=ca_file) as client:
                return client.get(f"{server.url}/bytes/10")

        response = await asyncio.to_thread(sync)
        assert response.status_code == 200 and response.http_version == "HTTP/2"


# --------------------------------------------------------------------------- prior knowledge


class Http1Server:
    """A server that speaks only HTTP/1.x, on a thread (async and sync clients alike).

    ``status_line`` answers whatever arrives with a full HTTP/1.1 400; ``stdlib`` is Python's
    http.server, which answers the preface's "HTTP/2.0" version with an HTTP/0.9-style error
    page (a body, no status line)."""

    def __init__(self, style: str) -> None:
        self.style = style
        self.connections = 0
        self._lock = threading.Lock()
        if style == "stdlib":
            import http.server

            outer = self

            class Handler(http.server.BaseHTTPRequestHandler):
                def setup(self) -> None:
                    with outer._lock:
                        outer.connections += 1
                    super().setup()

                def log_message(self, format: str, *args: Any) -> None:
                    pass

            self._server: Any = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
            self.port = self._server.server_address[1]
            self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        else:
            self._sock = socket.create_server(("127.0.0.1", 0))
            self._sock.settimeout(0.2)
            self.port = self._sock.getsockname()[1]
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            with self._lock:
                self.connections += 1
            with conn:
                conn.settimeout(2)
                with contextlib.suppress(OSError):
                    conn.recv(65536)
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n"
                                 b"Content-Length: 11\r\nConnection: close\r\n\r\nBad Request")

    def close(self) -> None:
        if self.style == "stdlib":
            self._server.shutdown()
            self._server.server_close()
        else:
            self._stop.set()
            self._thread.join(timeout=5)
            self._sock.close()


@pytest.fixture(params=["status_line", "stdlib"])
def http1_server(request: pytest.FixtureRequest) -> Iterator[Http1Server]:
    server = Http1Server(request.param)
    try:
        yield server
    finally:
        server.close()


def _assert_says_not_http2(exc: BaseException, server: Http1Server) -> None:
    assert isinstance(exc, httpx.RemoteProtocolError) and isinstance(exc, H2ProtocolError)
    text = str(exc)
    assert "\n" not in text, text
    assert f"The server at {server.url}" in text and "does not speak HTTP/2" in text, text
    assert "drop http2_prior_knowledge" in text, text
    answer = "b'HTTP/1.1 400 Bad Request'" if server.style == "status_line" else "b'<!DOCTYPE"
    assert answer in text, text
    assert "retry is safe" not in text and "Not retried" not in text, text
    failure = failure_of(exc)
    assert failure is not None and failure.kind == "not_http2" and failure.processed == "no"
    assert failure.origin == server.url
    assert isinstance(exc, httpx.RequestError) and exc.request.url.host == "127.0.0.1"
    assert classify(exc) is None  # a configuration error: RetryTransport never retries it
    assert server.connections == 1, f"{server.connections} connections: it was retried"


def _no_retries(events: EventLog) -> None:
    assert events.counts.get("retry.attempt", 0) == 0
    assert events.counts.get("client.transparent_retry", 0) == 0


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_prior_knowledge_to_http1_async_transport(http1_server: Http1Server,
                                                        method: str) -> None:
    transport = h2guard.AsyncHTTPTransport(http2_prior_knowledge=True)
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(httpx.RemoteProtocolError) as caught:
            await client.request(method, f"{http1_server.url}/orders", content=b"{}")
    _assert_says_not_http2(caught.value, http1_server)
    _no_retries(transport.events)


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_prior_knowledge_to_http1_async_client(http1_server: Http1Server,
                                                     method: str) -> None:
    policy = h2guard.RetryPolicy(idempotency_keys=True)  # every request retryable, if anything
    async with h2guard.AsyncClient(http2_prior_knowledge=True, policy=policy) as client:
        with pytest.raises(httpx.RemoteProtocolError) as caught:
            await client.request(method, f"{http1_server.url}/orders", content=b"{}")
        _no_retries(client.events)
    _assert_says_not_http2(caught.value, http1_server)


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_prior_knowledge_to_http1_sync_transport(http1_server: Http1Server, method: str) -> None:
    transport = h2guard.HTTPTransport(http2_prior_knowledge=True)
    with httpx.Client(transport=transport) as client, \
            pytest.raises(httpx.RemoteProtocolError) as caught:
        client.request(method, f"{http1_server.url}/orders", content=b"{}")
    _assert_says_not_http2(caught.value, http1_server)
    _no_retries(transport.events)


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_prior_knowledge_to_http1_sync_client(http1_server: Http1Server, method: str) -> None:
    policy = h2guard.RetryPolicy(idempotency_keys=True)
    with h2guard.Client(http2_prior_knowledge=True, policy=policy) as client:
        with pytest.raises(httpx.RemoteProtocolError) as caught:
            client.request(method, f"{http1_server.url}/orders", content=b"{}")
        _no_retries(client.events)
    _assert_says_not_http2(caught.value, http1_server)


async def test_prior_knowledge_to_http2_still_works() -> None:
    """The check looks at what failed the connection only: h2c itself is unaffected."""
    async with serve(Scenario(), h2c=True, time_scale=0.01) as server:
        async with h2guard.AsyncClient(http2_prior_knowledge=True) as client:
            response = await client.get(f"{server.url}/bytes/10")
        assert response.status_code == 200 and response.http_version == "HTTP/2"


# --------------------------------------------------------------------------- one-shot bodies


def _refused_after_body() -> Scenario:
    return Scenario(faults=(RstStream(_REFUSED_STREAM, at="request_end",
                                      when=Trigger(path="/orders")),))


async def test_a_one_shot_body_not_resent_raises_body_not_replayable_async() -> None:
    async with serve(_refused_after_body(), h2c=True, time_scale=0.01) as server:
        async def body() -> AsyncIterator[bytes]:
            yield b'{"order": '
            yield b"1}"

        transport = h2guard.AsyncHTTPTransport(http2_prior_knowledge=True)
        async with httpx.AsyncClient(transport=transport) as client:
            with pytest.raises(BodyNotReplayableError) as caught:
                await client.post(f"{server.url}/orders", content=body())
    _assert_body_not_replayable(caught.value)


async def test_a_one_shot_body_not_resent_raises_body_not_replayable_sync() -> None:
    async with serve(_refused_after_body(), h2c=True, time_scale=0.01) as server:
        def body() -> Iterator[bytes]:
            yield b'{"order": '
            yield b"1}"

        def run() -> BaseException:
            transport = h2guard.HTTPTransport(http2_prior_knowledge=True)
            with httpx.Client(transport=transport) as client:
                try:
                    client.post(f"{server.url}/orders", content=body())
                except httpx.TransportError as exc:
                    return exc
            raise AssertionError("the POST succeeded")

        exc = await asyncio.to_thread(run)
    assert isinstance(exc, BodyNotReplayableError)
    _assert_body_not_replayable(exc)


def _assert_body_not_replayable(exc: BaseException) -> None:
    assert isinstance(exc, httpx.RemoteProtocolError)
    assert not isinstance(exc, h2guard.errors.ConnectionLostError)
    failure = failure_of(exc)
    assert failure is not None and failure.kind == "body_not_replayable"
    assert failure.processed == "no" and "one-shot" in str(exc) and "\n" not in str(exc)


# --------------------------------------------------------------------------- the sync signature


def _parameters(cls: type) -> list[tuple[str, Any, Any, Any]]:
    signature = inspect.signature(cls.__init__)  # type: ignore[misc]
    return [(p.name, p.kind, p.default, p.annotation)
            for p in signature.parameters.values() if p.name != "self"]


def test_the_sync_transport_takes_exactly_the_async_transports_options() -> None:
    sync, async_ = _parameters(h2guard.HTTPTransport), _parameters(h2guard.AsyncHTTPTransport)
    assert sync == async_
    assert all(kind is inspect.Parameter.KEYWORD_ONLY for _, kind, _, _ in sync)


@pytest.mark.parametrize("build", [
    lambda: h2guard.HTTPTransport(max_idel=3),  # type: ignore[call-arg]
    lambda: h2guard.Client(transport_options={"max_idel": 3}),
], ids=["HTTPTransport", "Client"])
def test_a_misspelt_sync_option_is_a_type_error_naming_the_class(
        build: Callable[[], Any]) -> None:
    loops = sum(1 for t in threading.enumerate() if t.name == "h2guard-loop")
    with pytest.raises(TypeError, match=r"HTTPTransport.*'max_idel'") as caught:
        build()
    assert "AsyncHTTPTransport" not in str(caught.value)
    assert sum(1 for t in threading.enumerate() if t.name == "h2guard-loop") == loops


def test_a_misspelt_async_option_is_a_type_error_naming_the_class() -> None:
    with pytest.raises(TypeError, match=r"AsyncHTTPTransport.*'max_idel'"):
        h2guard.AsyncHTTPTransport(max_idel=3)  # type: ignore[call-arg]


def test_the_sync_transport_accepts_every_option() -> None:
    transport = h2guard.HTTPTransport(
        verify=False, http2_prior_knowledge=True, limits=httpx.Limits(max_connections=3),
        max_idle=3.0, max_age=60.0, max_age_jitter=0.0, health_check_after=1.0,
        ping_interval=2.0, ping_timeout=1.0, stream_window=65535, connection_window=65535,
        transparent_retries=2, trust_refused_stream=False, trust_goaway=False,
        events=EventLog(maxlen=10), seed=1)
    transport.close()


@pytest.mark.slow
def test_mypy_catches_a_misspelt_sync_option(tmp_path: Path) -> None:
    if shutil.which("mypy", path=os.path.dirname(sys.executable)) is None:
        pytest.skip("mypy is not installed")
    program = tmp_path / "typo.py"
    program.write_text("import h2guard\n\nh2guard.HTTPTransport(max_idel=3)\n")
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental",
         "--cache-dir", str(tmp_path / "cache"), str(program)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert 'Unexpected keyword argument "max_idel" for "HTTPTransport"' in done.stdout, \
        done.stdout
