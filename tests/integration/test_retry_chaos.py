"""Acceptance tests of safe retries against the chaos server (issue: safe retries).

* POST /orders reset with INTERNAL_ERROR *after the app ran*: without a key h2guard does not
  retry and says why; with automatic keys and a server that honours them, exactly one ledger
  effect per logical request over 1,000 requests; a naive retry (tenacity on
  httpx.TransportError) on the same scenario writes duplicates.
* Overload (50% of streams refused): attempts per logical request stay <= 1.2 under the retry
  budget; the naive retry's figure is measured and printed beside it.
* RetryTransport around httpx's *own* HTTP/2 transport: REFUSED_STREAM is recognised from
  httpx's exception (no h2guard transport involved) and retried.

Run with ``-s`` to see the figures.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Any

import httpx
import pytest
import tenacity

import h2guard
from h2guard.chaos import serve
from h2guard.chaos.model import RstStream, Scenario, Trigger
from h2guard.events import EventLog
from h2guard.retry import set_testing
from integration.load import gather_bounded

pytestmark = pytest.mark.timeout(120)

INTERNAL_ERROR, REFUSED_STREAM = 0x2, 0x7
LOGICAL = 1_000
CONCURRENCY = 50


def _reset_after_app(probability: float) -> Scenario:
    return Scenario(name="reset-after-app", faults=(
        RstStream(code=INTERNAL_ERROR, at="after_app",
                  when=Trigger(path="/orders", method="POST", probability=probability),
                  name="crash after the write"),))


def _refuse(probability: float) -> Scenario:
    return Scenario(name="refuse", faults=(
        RstStream(code=REFUSED_STREAM, at="request_headers",
                  when=Trigger(probability=probability), name="shed load"),))


async def _gather_bounded(n: int, one: Any, concurrency: int = CONCURRENCY) -> list[Any]:
    return await gather_bounded(n, one, concurrency)


@pytest.fixture(autouse=True)
def _no_waits() -> Any:
    set_testing(True)  # decisions unchanged, backoff sleeps skipped: the suite stays fast
    yield
    set_testing(False)


async def test_unkeyed_post_reset_after_the_app_ran_is_not_retried_and_says_why() -> None:
    async with serve(_reset_after_app(1.0), h2c=True, seed=1) as server, \
            h2guard.AsyncClient(base_url=server.url, http2_prior_knowledge=True) as c:
        with pytest.raises(httpx.RemoteProtocolError) as caught:
            await c.post("/orders", content=b'{"item": 1}',
                         headers={"x-request-id": "order-1"})
        failure = h2guard.failure_of(caught.value)
        assert failure is not None
        assert failure.processed == "maybe"
        assert failure.code_name == "INTERNAL_ERROR"
        assert failure.attempts == 1
        message = str(caught.value)
        assert "Idempotency-Key" in message and "Not retried" in message
        assert server.ledger.total == 1
        # a GET on the same server is idempotent: its reset would be retried (none here)
        assert (await c.get("/bytes/3")).status_code == 200
        assert c.events.counts.get("retry.attempt", 0) == 0


async def test_auto_keys_give_exactly_one_effect_and_a_naive_retry_duplicates() -> None:
    async with serve(_reset_after_app(0.25), h2c=True, seed=7,
                     honour_idempotency_keys=True) as server:
        # a quarter of writes crash: more retries than the default budget (10%) would allow,
        # and exactly-once is the point here, not load shedding (tested below)
        policy = h2guard.RetryPolicy(idempotency_keys=True, attempts=6, budget=False)
        async with h2guard.AsyncClient(base_url=server.url, http2_prior_knowledge=True,
                                       policy=policy, seed=1) as client:
            async def keyed(i: int) -> httpx.Response:
                return await client.post("/orders", content=b'{"item": %d}' % i,
                                         headers={"x-request-id": f"keyed-{i}"})

            outcomes = await _gather_bounded(LOGICAL, keyed)
            retries = client.events.counts.get("retry.attempt", 0)
        failed = [o for o in outcomes if isinstance(o, Exception)]
        per_request = Counter(e.request_id for e in server.ledger.effects())
        print(f"\nauto keys: {LOGICAL} logical POSTs, {retries} retries, {len(failed)} failed "
              f"after {policy.attempts} attempts, ledger effects {server.ledger.total}")
        assert retries > 0.15 * LOGICAL  # the fault really fired and was retried
        assert server.ledger.total == LOGICAL
        assert set(per_request) == {f"keyed-{i}" for i in range(LOGICAL)}
        assert max(per_request.values()) == 1
        assert server.ledger.duplicate_keys == {}
        assert len(failed) <= 3  # 0.25^6 per request: almost surely none
        replayed = sum(1 for o in outcomes if isinstance(o, httpx.Response)
                       and o.headers.get("idempotent-replayed") == "true")
        assert replayed > 0.15 * LOGICAL

        # the same scenario, a naive retry loop on httpx.TransportError, no keys
        server.ledger.reset()
        naive_attempts = 0

        @tenacity.retry(retry=tenacity.retry_if_exception_type(httpx.TransportError),
                        stop=tenacity.stop_after_attempt(6), reraise=True)
        async def naive_post(raw: httpx.AsyncClient, i: int) -> httpx.Response:
            nonlocal naive_attempts
            naive_attempts += 1
            return await raw.post("/orders", content=b'{"item": %d}' % i,
                                  headers={"x-request-id": f"naive-{i}"})

        async with httpx.AsyncClient(base_url=server.url, http1=False, http2=True,
                                     timeout=10) as raw:
            await _gather_bounded(LOGICAL, lambda i: naive_post(raw, i))
        duplicates = server.ledger.duplicate_requests
        print(f"naive tenacity retry: {naive_attempts} attempts, {server.ledger.total} effects "
              f"for {LOGICAL} logical POSTs, {len(duplicates)} requests written twice or more")
        assert len(duplicates) > 0
        assert server.ledger.total > LOGICAL


async def test_overload_attempts_stay_bounded_by_the_budget() -> None:
    async with serve(_refuse(0.5), h2c=True, seed=3) as server:
        async with h2guard.AsyncClient(base_url=server.url, http2_prior_knowledge=True,
                                       seed=2) as client:
            outcomes = await _gather_bounded(LOGICAL, lambda i: client.get("/bytes/8"))
            retries = client.events.counts.get("retry.attempt", 0)
            exhausted = client.events.counts.get("retry.budget_exhausted", 0)
        failed = [o for o in outcomes if isinstance(o, Exception)]
        attempts = (LOGICAL + retries) / LOGICAL
        kinds = Counter(f.kind for o in failed if (f := h2guard.failure_of(o)) is not None)
        refused_seen = sum(n for (kind, code), n in server.fault_counts.items()
                           if kind == "rst_stream")

        naive_attempts = 0

        @tenacity.retry(retry=tenacity.retry_if_exception_type(httpx.TransportError),
                        stop=tenacity.stop_after_attempt(10), reraise=True)
        async def naive_get(raw: httpx.AsyncClient) -> httpx.Response:
            nonlocal naive_attempts
            naive_attempts += 1
            return await raw.get("/bytes/8")

        async with httpx.AsyncClient(base_url=server.url, http1=False, http2=True,
                                     timeout=10) as raw:
            naive = await _gather_bounded(LOGICAL, lambda i: naive_get(raw))
        naive_failed = sum(1 for o in naive if isinstance(o, Exception))
        print(f"\noverload (50% REFUSED_STREAM): h2guard {attempts:.3f} attempts per logical "
              f"request, {len(failed)} failed ({dict(kinds)}), budget exhausted {exhausted}x; "
              f"naive tenacity {naive_attempts / LOGICAL:.3f} attempts per request, "
              f"{naive_failed} failed")
        assert refused_seen >= 0.4 * LOGICAL  # the server really shed half the load
        assert attempts <= 1.2
        assert set(kinds) <= {"retry_budget"}  # every failure is the budget speaking
        assert exhausted == len(failed) > 0
        assert naive_attempts / LOGICAL > 1.5  # what the budget saves the server from


@pytest.mark.parametrize("mode", ["async", "sync"])
async def test_refused_stream_from_httpx_own_transport_is_recognised_and_retried(
        mode: str) -> None:
    async with serve(_refuse(0.2), h2c=True, seed=5) as server:
        events = EventLog()
        policy = h2guard.RetryPolicy(budget=False)
        if mode == "async":
            transport = h2guard.RetryTransport(
                httpx.AsyncHTTPTransport(http1=False, http2=True), policy=policy,
                events=events)
            async with httpx.AsyncClient(transport=transport, base_url=server.url) as client:
                # few workers: httpx's own transport races with itself at high concurrency
                outcomes = await _gather_bounded(300, lambda i: client.post(
                    "/orders", headers={"x-request-id": str(uuid.uuid4())}), concurrency=4)
        else:
            transport = h2guard.RetryTransport(
                httpx.HTTPTransport(http1=False, http2=True), policy=policy, events=events)

            def run() -> list[Any]:
                out: list[Any] = []
                with httpx.Client(transport=transport, base_url=server.url) as client:
                    for _ in range(150):
                        try:
                            out.append(client.post("/orders", headers={
                                "x-request-id": str(uuid.uuid4())}))
                        except httpx.TransportError as exc:
                            out.append(exc)
                return out

            outcomes = await asyncio.to_thread(run)
        # httpx's transport also loses some requests to its own race: h2 raises
        # StreamClosedError when httpcore sends on a stream id that a concurrent request already
        # passed, and the reset's code is lost with it. Nothing then proves "not processed", so
        # those POSTs are (rightly) not retried: they must be the only failures, and say so.
        failed = [o for o in outcomes if isinstance(o, Exception)]
        records = [h2guard.failure_of(o) for o in failed]
        print(f"\nRetryTransport over httpx's own transport ({mode}): {len(outcomes)} POSTs, "
              f"{events.counts.get('retry.attempt', 0)} retries, {len(failed)} failed "
              "(StreamClosedError inside httpcore)")
        assert all(f is not None and f.code is None and "still being sent" in f.detail
                   for f in records), [str(o)[:200] for o in failed[:3]]
        assert len(failed) < 0.5 * len(outcomes)
        # POSTs without keys were retried: only because REFUSED_STREAM proves "not processed"
        assert events.counts.get("retry.attempt", 0) > 0.1 * len(outcomes)
        assert server.ledger.duplicate_requests == {}
        # every success wrote once; the StreamClosedError ones were in truth refused, unwritten
        assert server.ledger.total == len(outcomes) - len(failed)


async def test_a_transport_told_not_to_trust_refused_stream_does_not_move_a_post() -> None:
    async with serve(_refuse(1.0), h2c=True, seed=5) as server:
        transport = h2guard.AsyncHTTPTransport(http2_prior_knowledge=True,
                                               trust_refused_stream=False)
        async with httpx.AsyncClient(transport=transport, base_url=server.url) as client:
            with pytest.raises(httpx.RemoteProtocolError) as caught:
                await client.post("/orders", content=b"x")
        failure = h2guard.failure_of(caught.value)
        assert failure is not None
        assert (failure.kind, failure.processed, failure.attempts) == \
            ("refused_stream", "maybe", 1)
        assert "does not trust" in str(caught.value)
        assert transport.events.counts.get("client.transparent_retry", 0) == 0
