"""Against a real Node.js http2 server whose app calls ``session.goaway(0, stream.id)`` and
still runs the streams above that id: h2guard's default learns after the first proof and
writes nothing twice from then on; ``trust_goaway=False`` writes nothing twice at all."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import h2guard

pytestmark = [pytest.mark.peers, pytest.mark.timeout(90)]

SERVER = Path(__file__).parent / "node" / "goaway_server.js"


@contextlib.asynccontextmanager
async def node_server(every: int = 5) -> AsyncIterator[str]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("PEER MISSING: node not found: scripts/install-peers.sh installs nodejs")
    proc = await asyncio.create_subprocess_exec(node, str(SERVER), str(every),
                                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 15)
        assert line.startswith(b"listening "), line
        yield f"http://127.0.0.1:{int(line.split()[1])}"
    finally:
        proc.kill()
        await proc.wait()


async def _ledger(url: str) -> dict[str, int]:
    async with httpx.AsyncClient(transport=h2guard.AsyncHTTPTransport(
            http2_prior_knowledge=True)) as c:
        data: dict[str, int] = json.loads((await c.get(url + "/ledger")).content)
        return data


async def _batches(transport: h2guard.AsyncHTTPTransport, url: str, n: int,
                   learned_at: list[int] | None = None) -> list[Any]:
    """``n`` batches of 20 POSTs; ``learned_at`` gets the first batch after which the
    transport had learned not to trust this origin's GOAWAYs."""
    out: list[Any] = []
    async with httpx.AsyncClient(transport=transport, timeout=5) as client:
        for b in range(n):
            out.append(await asyncio.gather(*(
                client.post(url + "/orders", content=b"{}",
                            headers={"x-request-id": f"b{b}-{i}"}) for i in range(20)),
                return_exceptions=True))
            await asyncio.sleep(0.05)
            if learned_at is not None and not learned_at and transport.goaway_trust.learned:
                learned_at.append(b)
    return out


def _dups(ledger: dict[str, int], batch: int) -> int:
    return sum(1 for rid, n in ledger.items() if rid.startswith(f"b{batch}-") and n > 1)


async def test_learns_from_a_real_node_server() -> None:
    batches = 8
    learned_at: list[int] = []
    async with node_server() as url:
        transport = h2guard.AsyncHTTPTransport(http2_prior_knowledge=True)
        await _batches(transport, url, batches, learned_at)
        ledger = await _ledger(url)
    assert learned_at, "the violation was never seen"
    per_batch = [_dups(ledger, b) for b in range(batches)]
    # duplicates only until the first proof was seen: every batch after it has none (the proof
    # is a second GOAWAY raising last_stream_id, which Node sends only when its timing allows)
    assert all(d == 0 for d in per_batch[learned_at[0] + 1:]), (learned_at, per_batch)
    assert any(e.name == "client.goaway_violation" for e in transport.events)


async def test_trust_goaway_false_never_duplicates_on_a_real_node_server() -> None:
    async with node_server() as url:
        transport = h2guard.AsyncHTTPTransport(http2_prior_knowledge=True, trust_goaway=False)
        results = await _batches(transport, url, 4)
        ledger = await _ledger(url)
    assert sum(1 for n in ledger.values() if n > 1) == 0, ledger
    assert any(isinstance(r, Exception) for batch in results for r in batch)
