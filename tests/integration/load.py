"""Bounded concurrent load for the tests that count outcomes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx


async def gather_bounded(n: int, one: Callable[[int], Awaitable[Any]],
                         concurrency: int) -> list[Any]:
    """Run ``one(i)`` for i < n with ``concurrency`` workers; returns the outcomes in order,
    an ``httpx.TransportError`` standing where a call raised one."""
    results: list[Any] = [None] * n
    pending = iter(range(n))

    async def worker() -> None:
        for i in pending:
            try:
                results[i] = await one(i)
            except httpx.TransportError as exc:
                results[i] = exc

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results
