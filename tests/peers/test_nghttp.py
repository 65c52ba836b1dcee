"""nghttp (nghttp2-client) against the chaos server: the frames a reference HTTP/2 client sees.

``nghttp -nv`` prints every frame it sends and receives; these tests parse that trace and check
the exact RST_STREAM and GOAWAY frames each fault puts on the wire, over h2c and over TLS.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from h2guard.chaos import serve
from h2guard.chaos.model import GoAway, RstStream, Scenario, Trigger
from h2guard.chaos.server import ChaosServer

pytestmark = pytest.mark.peers

UNKNOWN_CODE = 0x1337BEEF


def _on(name: str) -> Trigger:
    return Trigger(headers=(("x-fault", name),))


SCENARIO = Scenario(name="nghttp-peer", faults=(
    RstStream(code=0x7, when=_on("refused")),
    RstStream(code=0x2, when=_on("internal")),
    RstStream(code=UNKNOWN_CODE, when=_on("unknown")),
    RstStream(code=0x8, at="response_body", after_bytes=1000, when=_on("mid-body")),
    GoAway(mode="graceful", code=0x0, debug=b"maintenance", when=_on("graceful")),
    GoAway(mode="abrupt", code=0xB, debug=b"calm down", last_stream_id=1,
           when=_on("abrupt")),
))


@dataclass
class Frame:
    direction: str  # "send" | "recv"
    type: str
    length: int
    flags: int
    stream_id: int
    lines: list[str]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@dataclass
class Trace:
    output: str
    errors: str
    frames: list[Frame]

    def sent_stream(self) -> int:
        """The stream of the one request nghttp sent."""
        headers = [f for f in self.frames if f.direction == "send" and f.type == "HEADERS"]
        assert len(headers) == 1, self.output
        return headers[0].stream_id

    def received(self, ftype: str) -> list[Frame]:
        return [f for f in self.frames if f.direction == "recv" and f.type == ftype]

    def statuses(self) -> list[tuple[int, int]]:
        return [(int(sid), int(code)) for sid, code in _STATUS.findall(self.output)]


_FRAME = re.compile(r"^\[\s*[\d.]+\] (send|recv) (\w+) frame <length=(\d+), flags=(0x[0-9a-f]+), "
                    r"stream_id=(\d+)>")
_ERROR = re.compile(r"error_code=(\w+)\((0x[0-9a-f]+)\)")
_GOAWAY = re.compile(r"\(last_stream_id=(\d+), error_code=(\w+)\((0x[0-9a-f]+)\), "
                     r"opaque_data\((\d+)\)=\[(.*)\]\)")
_STATUS = re.compile(r"recv \(stream_id=(\d+)\) :status: (\d+)")


def parse_frames(output: str) -> list[Frame]:
    """Split an ``nghttp -v`` trace into frames with their indented detail lines."""
    frames: list[Frame] = []
    for line in output.splitlines():
        match = _FRAME.match(line)
        if match:
            direction, ftype, length, flags, sid = match.groups()
            frames.append(Frame(direction, ftype, int(length), int(flags, 16), int(sid), []))
        elif frames and line.startswith(" "):
            frames[-1].lines.append(line.strip())
    return frames


@pytest.fixture(params=["h2c", "tls"])
async def server(request: pytest.FixtureRequest, peer: Any) -> AsyncIterator[ChaosServer]:
    peer.need("nghttp")
    async with serve(SCENARIO, h2c=request.param == "h2c", seed=7) as srv:
        yield srv
    assert srv.connections == 0


async def nghttp(peer: Any, server: ChaosServer, fault: str | None,
                 path: str = "/echo") -> Trace:
    args = ["nghttp", "-nv", "--timeout=5"]
    if fault is not None:
        args += ["-H", f"x-fault: {fault}"]
    result = await peer.run([*args, server.url + path], timeout=10)
    assert result.returncode == 0, result.describe()
    trace = Trace(result.stdout, result.stderr, parse_frames(result.stdout))
    assert trace.frames, result.describe()
    await peer.settle(server)
    return trace


async def test_plain_request_gets_200_and_body(peer: Any, server: ChaosServer) -> None:
    trace = await nghttp(peer, server, None)
    sid = trace.sent_stream()
    assert trace.statuses() == [(sid, 200)]
    data = trace.received("DATA")
    assert data and data[-1].stream_id == sid and data[-1].flags & 0x1  # END_STREAM
    length = re.search(rf"recv \(stream_id={sid}\) content-length: (\d+)", trace.output)
    assert length is not None
    assert sum(f.length for f in data if f.stream_id == sid) == int(length.group(1)) > 0
    assert not trace.received("RST_STREAM")
    assert not trace.received("GOAWAY")


@pytest.mark.parametrize(("fault", "name", "code"), [
    ("refused", "REFUSED_STREAM", 0x07),
    ("internal", "INTERNAL_ERROR", 0x02),
    ("unknown", "unknown", UNKNOWN_CODE),
])
async def test_rst_stream_code_on_the_wire(peer: Any, server: ChaosServer, fault: str,
                                           name: str, code: int) -> None:
    trace = await nghttp(peer, server, fault)
    sid = trace.sent_stream()
    rst = trace.received("RST_STREAM")
    assert len(rst) == 1, trace.output
    assert (rst[0].stream_id, rst[0].length, rst[0].flags) == (sid, 4, 0)
    match = _ERROR.search(rst[0].text)
    assert match is not None, rst[0].text
    assert match.group(1) == name
    assert int(match.group(2), 16) == code
    assert trace.statuses() == []  # reset before any response
    assert not trace.received("GOAWAY")  # a stream error, not a connection error
    events = peer.fault_events(server, kind="rst_stream", stream=sid)
    assert len(events) == 1 and events[0]["moment"] == "request_headers"


async def test_rst_stream_after_part_of_the_body(peer: Any, server: ChaosServer) -> None:
    trace = await nghttp(peer, server, "mid-body", "/bytes/100000")
    sid = trace.sent_stream()
    assert trace.statuses() == [(sid, 200)]
    assert sum(f.length for f in trace.received("DATA") if f.stream_id == sid) == 1000
    rst = trace.received("RST_STREAM")
    assert len(rst) == 1 and rst[0].stream_id == sid
    match = _ERROR.search(rst[0].text)
    assert match is not None and match.groups() == ("CANCEL", "0x08")


async def test_graceful_goaway_lets_the_stream_finish(peer: Any, server: ChaosServer) -> None:
    trace = await nghttp(peer, server, "graceful")
    sid = trace.sent_stream()
    goaway = trace.received("GOAWAY")
    assert len(goaway) == 1 and goaway[0].stream_id == 0
    match = _GOAWAY.search(goaway[0].text)
    assert match is not None, goaway[0].text
    last, name, code, debug_len, debug = match.groups()
    assert int(last) == sid  # the request in flight is covered, so it completes
    assert (name, int(code, 16)) == ("NO_ERROR", 0)
    assert (int(debug_len), debug) == (len("maintenance"), "maintenance")
    assert trace.statuses() == [(sid, 200)]
    data = trace.received("DATA")
    assert data and data[-1].stream_id == sid and data[-1].flags & 0x1
    assert not trace.received("RST_STREAM")
    events = peer.fault_events(server, kind="goaway", stream=sid)
    assert len(events) == 1
    assert (events[0]["mode"], events[0]["last_stream_id"]) == ("graceful", sid)


async def test_abrupt_goaway_with_explicit_last_stream_id(peer: Any,
                                                          server: ChaosServer) -> None:
    trace = await nghttp(peer, server, "abrupt")
    sid = trace.sent_stream()
    assert sid > 1
    goaway = trace.received("GOAWAY")
    assert len(goaway) == 1 and goaway[0].stream_id == 0
    match = _GOAWAY.search(goaway[0].text)
    assert match is not None, goaway[0].text
    last, name, code, debug_len, debug = match.groups()
    assert int(last) == 1
    assert (name, int(code, 16)) == ("ENHANCE_YOUR_CALM", 0xB)
    assert (int(debug_len), debug) == (len("calm down"), "calm down")
    assert trace.statuses() == []  # the stream above last_stream_id is dropped unanswered
    assert not trace.received("DATA")
    assert "Some requests were not processed. total=1, processed=0" in trace.errors
    events = peer.fault_events(server, kind="goaway", stream=sid)
    assert len(events) == 1
    assert (events[0]["mode"], events[0]["last_stream_id"]) == ("abrupt", 1)
