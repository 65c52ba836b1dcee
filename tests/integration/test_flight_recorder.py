"""The flight recorder in the client: a failure carries the last frames of its connection."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys

import httpx
import pytest

import h2guard
from h2guard.chaos import serve
from h2guard.chaos.model import RstStream, Scenario, Trigger
from h2guard.errors import failure_of

pytestmark = pytest.mark.timeout(60)

CRASH = Scenario(name="crash", faults=(RstStream(code=0x2, at="after_app",
                                                 when=Trigger(path="/orders")),))


def _check(exc: BaseException) -> None:
    assert isinstance(exc, httpx.RemoteProtocolError)
    failure = failure_of(exc)
    assert failure is not None and failure.trace
    assert "\n" not in str(exc)  # the message stays one line
    resets = [line for line in failure.trace if " recv RST_STREAM " in line]
    assert resets and resets[-1].endswith("error=INTERNAL_ERROR (0x2)"), failure.trace
    assert failure.trace[0].startswith("+0.000s send SETTINGS")
    assert any(" send HEADERS stream=" in line for line in failure.trace)
    assert "secret" not in "\n".join(failure.trace)
    assert failure.to_dict()["trace"] == list(failure.trace)


async def test_a_reset_after_the_app_ran_carries_the_rst_stream_frame_async() -> None:
    async with serve(CRASH, h2c=True) as server, h2guard.AsyncClient(
            http2_prior_knowledge=True, timeout=5) as client:
        with pytest.raises(httpx.RemoteProtocolError) as info:
            await client.post(server.url + "/orders", content=b"{}",
                              headers={"authorization": "Bearer secret"})
    _check(info.value)


async def test_the_same_in_sync() -> None:
    async with serve(CRASH, h2c=True) as server:
        def call() -> BaseException:
            with h2guard.Client(http2_prior_knowledge=True, timeout=5) as client:
                try:
                    client.post(server.url + "/orders", content=b"{}",
                                headers={"authorization": "Bearer secret"})
                except httpx.HTTPError as exc:
                    return exc
            raise AssertionError("no error")

        _check(await asyncio.to_thread(call))


async def test_the_recorder_can_be_turned_off() -> None:
    async with serve(CRASH, h2c=True) as server, httpx.AsyncClient(
            transport=h2guard.AsyncHTTPTransport(http2_prior_knowledge=True,
                                                 flight_recorder=0), timeout=5) as client:
        with pytest.raises(httpx.RemoteProtocolError) as info:
            await client.post(server.url + "/orders", content=b"{}")
    failure = failure_of(info.value)
    assert failure is not None and failure.trace == ()
    with pytest.raises(ValueError, match="flight_recorder"):
        h2guard.AsyncHTTPTransport(flight_recorder=-1)


async def test_frames_log_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="h2guard.frames")
    async with serve(CRASH, h2c=True) as server, httpx.AsyncClient(
            transport=h2guard.AsyncHTTPTransport(http2_prior_knowledge=True),
            timeout=5) as client:
        await client.get(server.url + "/echo")
    lines = [r.getMessage() for r in caplog.records if r.name == "h2guard.frames"]
    assert any(" recv HEADERS stream=1" in line for line in lines)
    assert all(line.startswith(server.url) for line in lines)


def test_the_env_var_turns_frame_logging_on_without_code() -> None:
    code = ("import logging, h2guard.client.connection as c; "
            "print(c.frames_log.level == logging.DEBUG, bool(c.frames_log.handlers))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "H2GUARD_FRAME_LOG": "1"}, timeout=30)
    assert out.stdout.split() == ["True", "True"], out.stderr
