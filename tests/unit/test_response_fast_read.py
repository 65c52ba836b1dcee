"""A response whose body arrived whole is read without httpx's reading loop, with the same result.

The transport hands httpx an ``httpx.Response`` subclass whose ``read()`` / ``aread()`` take a
body that is already here (and not content-encoded) at once. Everything a caller can see must
be what httpx's own reading leaves: the content, ``is_closed``, ``is_stream_consumed``,
``num_bytes_downloaded``, ``elapsed`` (set by the client's closing wrapper), errors for a second
raw read; and streaming reads, content-encoded bodies and bodies still arriving stay httpx's own.
Each case runs the same response through httpx's plain ``Response(stream=ByteStream(...))`` (what
any httpx transport returns) and through h2guard's, side by side, with ``httpx.Client`` and
``httpx.AsyncClient``.
"""

from __future__ import annotations

import gzip
import pickle
from collections import deque
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from h2guard.client.transport import _response

_BODY = b"0123456789abcdef" * 3
_FIELDS = [(b"content-type", b"application/octet-stream"), (b"content-length", b"48")]


def _state(body: bytes, fields: list[tuple[bytes, bytes]], *, ended: bool = True) -> Any:
    """The parts of a finished stream's state that building its response reads."""
    return SimpleNamespace(status=200, headers=list(fields), ended=ended, failure=None,
                           chunks=deque([body[:5], body[5:]]), sid=1)


def _plain(body: bytes, fields: list[tuple[bytes, bytes]]) -> httpx.Response:
    return httpx.Response(200, headers=fields, stream=httpx.ByteStream(body),
                          extensions={"http_version": b"HTTP/2"})


class _Async(httpx.AsyncBaseTransport):
    def __init__(self, make: Any) -> None:
        self.make = make

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return self.make()  # type: ignore[no-any-return]


class _Sync(httpx.BaseTransport):
    def __init__(self, make: Any) -> None:
        self.make = make

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self.make()  # type: ignore[no-any-return]


def _makers(body: bytes, fields: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {"httpx": lambda: _plain(body, fields),
            "h2guard": lambda: _response(_state(body, fields), {}, 1)}


def _seen(r: httpx.Response) -> dict[str, Any]:
    return {"status": r.status_code, "content": r.content, "closed": r.is_closed,
            "consumed": r.is_stream_consumed, "downloaded": r.num_bytes_downloaded,
            "elapsed": r.elapsed.total_seconds() >= 0, "headers": r.headers.multi_items()}


def test_the_fast_path_is_taken_for_a_whole_plain_body() -> None:
    r = _response(_state(_BODY, _FIELDS), {}, 1)
    assert r._h2guard_whole == _BODY  # type: ignore[attr-defined]
    assert isinstance(r, httpx.Response)
    gz = _response(_state(gzip.compress(_BODY), [(b"content-encoding", b"gzip")]), {}, 1)
    assert gz._h2guard_whole is None  # type: ignore[attr-defined]  # httpx must decode it


@pytest.mark.parametrize("fields,body", [
    (_FIELDS, _BODY),
    ([(b"content-encoding", b"gzip")], gzip.compress(_BODY)),
    ([], b""),
], ids=["plain", "gzip", "empty"])
async def test_async_client_reads_the_same(fields: list[tuple[bytes, bytes]], body: bytes) -> None:
    seen = {}
    for name, make in _makers(body, fields).items():
        async with httpx.AsyncClient(transport=_Async(make), base_url="http://t") as client:
            r = await client.get("/")
            seen[name] = _seen(r)
            with pytest.raises(httpx.StreamConsumed):
                async for _ in r.aiter_raw():
                    pass
            assert [c async for c in r.aiter_bytes()] == ([r.content] if r.content else [])
            assert await r.aread() == r.content
    assert seen["h2guard"] == seen["httpx"]
    assert seen["h2guard"]["content"] == (_BODY if body else b"")


@pytest.mark.parametrize("fields,body", [
    (_FIELDS, _BODY),
    ([(b"content-encoding", b"gzip")], gzip.compress(_BODY)),
], ids=["plain", "gzip"])
def test_sync_client_reads_the_same(fields: list[tuple[bytes, bytes]], body: bytes) -> None:
    seen = {}
    for name, make in _makers(body, fields).items():
        with httpx.Client(transport=_Sync(make), base_url="http://t") as client:
            r = client.get("/")
            seen[name] = _seen(r)
            with pytest.raises(httpx.StreamConsumed):
                for _ in r.iter_raw():
                    pass
            assert r.read() == r.content
    assert seen["h2guard"] == seen["httpx"]


async def test_a_streamed_response_is_httpxs_own_reading() -> None:
    for name, make in _makers(_BODY, _FIELDS).items():
        async with httpx.AsyncClient(transport=_Async(make), base_url="http://t") as client, \
                client.stream("GET", "/") as r:
            assert not r.is_stream_consumed and not r.is_closed, name
            raw = b"".join([c async for c in r.aiter_raw(chunk_size=7)])
            assert raw == _BODY, name
            assert r.is_stream_consumed and r.is_closed, name
            assert r.num_bytes_downloaded == len(_BODY), name
            with pytest.raises(httpx.StreamConsumed):
                await r.aread()
            assert r.elapsed.total_seconds() >= 0


def test_a_sync_read_of_an_async_clients_response_fails_as_httpxs_does() -> None:
    async def fetch(make: Any) -> httpx.Response:
        async with httpx.AsyncClient(transport=_Async(make), base_url="http://t") as client, \
                client.stream("GET", "/") as r:
            return r

    import asyncio

    errors = {}
    for name, make in _makers(_BODY, _FIELDS).items():
        r = asyncio.run(fetch(make))
        with pytest.raises(Exception) as info:
            r.read()
        errors[name] = type(info.value)
    assert errors["h2guard"] is errors["httpx"]


def test_a_read_response_pickles_as_httpxs_does() -> None:
    with httpx.Client(transport=_Sync(_makers(_BODY, _FIELDS)["h2guard"]),
                      base_url="http://t") as client:
        r = client.get("/")
    again = pickle.loads(pickle.dumps(r))
    assert again.content == _BODY and again.status_code == 200
    assert again.headers["content-type"] == "application/octet-stream"


def test_the_response_built_without_httpxs_constructors_is_httpxs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from h2guard.client import transport

    assert transport._built_matches_httpx()  # the installed httpx: the direct build is used
    seen = []
    for direct in (True, False):
        monkeypatch.setattr(transport, "_BUILD_DIRECTLY", direct)
        r = _response(_state(_BODY, _FIELDS), {}, 3)
        assert type(r) is transport._Response
        seen.append((r.status_code, r.headers.multi_items(), r.headers.raw, r.extensions,
                     r.history, r.is_closed, r.is_stream_consumed, r.default_encoding,
                     r.read(), r.num_bytes_downloaded, sorted(vars(r))))
    assert seen[0] == seen[1]
