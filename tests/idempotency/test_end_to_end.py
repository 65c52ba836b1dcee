"""End to end: h2guard's client -> chaos proxy -> uvicorn app behind IdempotencyMiddleware.

The proxy resets 25% of POST /orders streams with INTERNAL_ERROR *after the upstream processed
them* (the response is lost on the way back: the client cannot know the order was written).
h2guard's client attaches an Idempotency-Key to every POST and retries; the middleware replays
the stored response. Over 1,000 logical requests every order must be written exactly once. A
naive retry (tenacity on httpx.TransportError, no key) over the same path writes duplicates.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import tenacity
from uvicorn_workers import uvicorn_app  # noqa: F401  (a fixture)

import h2guard
from h2guard.chaos import serve
from h2guard.chaos.model import RstStream, Scenario, Trigger
from h2guard.retry import set_testing

# the shared load helper lives with the integration tests, imported (as pytest imports it) as
# the package `integration`, from tests/
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from integration.load import gather_bounded

pytestmark = pytest.mark.timeout(180)

LOGICAL = 1_000
CONCURRENCY = 50


def _scenario() -> Scenario:
    return Scenario(name="reset-after-upstream", faults=(
        RstStream(code=0x2, at="after_app",
                  when=Trigger(path="/orders", method="POST", probability=0.25),
                  name="lose the response after the write"),))


async def _drive(one: Any) -> list[Any]:
    return await gather_bounded(LOGICAL, one, CONCURRENCY)


def _effects(path: Path, prefix: str) -> Counter[str]:
    runs: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        _pid, body = line.split(" ", 1)
        if body.startswith(prefix):
            runs[body] += 1
    return runs


@pytest.mark.parametrize("uvicorn_app", ["sqlite"], indirect=True)
async def test_keys_through_a_resetting_proxy_give_exactly_one_effect_each(
        uvicorn_app: tuple[str, Path]) -> None:  # noqa: F811  (the imported fixture)
    upstream, effects = uvicorn_app
    set_testing(True)
    try:
        async with serve(_scenario(), h2c=True, upstream=upstream, seed=11) as proxy:
            policy = h2guard.RetryPolicy(idempotency_keys=True, attempts=6, budget=False)
            async with h2guard.AsyncClient(base_url=proxy.url, http2_prior_knowledge=True,
                                           policy=policy, timeout=30, seed=3) as client:
                outcomes = await _drive(lambda i: client.post(
                    "/orders", content=f"keyed-{i}".encode()))
                retries = client.events.counts.get("retry.attempt", 0)
            failed = [o for o in outcomes if isinstance(o, Exception)]
            replayed = sum(1 for o in outcomes if isinstance(o, httpx.Response)
                           and o.headers.get("idempotent-replayed") == "true")
            runs = _effects(effects, "keyed-")
            resets = sum(n for (kind, _code), n in proxy.fault_counts.items()
                         if kind == "rst_stream")
            print(f"\nthrough the proxy: {LOGICAL} logical POSTs, {resets} responses lost after "
                  f"the write, {retries} retries, {replayed} replays, {len(failed)} failed; "
                  f"orders written: {sum(runs.values())} for {len(runs)} requests")
            assert resets > 0.15 * LOGICAL
            assert set(runs) == {f"keyed-{i}" for i in range(LOGICAL)}
            assert max(runs.values()) == 1  # exactly one effect per logical request
            assert replayed > 0.15 * LOGICAL
            assert len(failed) <= 3  # 0.25^6 each

            naive_attempts = 0

            @tenacity.retry(retry=tenacity.retry_if_exception_type(httpx.TransportError),
                            stop=tenacity.stop_after_attempt(6), reraise=True)
            async def naive(raw: httpx.AsyncClient, i: int) -> httpx.Response:
                nonlocal naive_attempts
                naive_attempts += 1
                return await raw.post("/orders", content=f"naive-{i}".encode())

            async with httpx.AsyncClient(base_url=proxy.url, http1=False, http2=True,
                                         timeout=30) as raw:
                await _drive(lambda i: naive(raw, i))
            naive_runs = _effects(effects, "naive-")
            twice = sum(1 for n in naive_runs.values() if n > 1)
            print(f"naive retry, no key: {naive_attempts} attempts, "
                  f"{sum(naive_runs.values())} orders written, {twice} written twice or more")
            assert twice > 0
    finally:
        set_testing(False)
