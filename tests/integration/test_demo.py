"""``make demo`` (``h2guard chaos demo``): every set-up breaks plain httpx and not h2guard."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from h2guard.chaos.demo import default_cases, run_demo

pytestmark = pytest.mark.timeout(120)


async def test_the_demo_breaks_httpx_and_h2guard_fixes_every_case() -> None:
    out = io.StringIO()
    results = await run_demo(console=Console(file=out, width=120, force_terminal=False))
    assert set(results) == {case.scenario.name for case in default_cases()}
    for name, figures in results.items():
        assert figures["httpx"]["failed"] > 0, name  # the incident, reproduced
        assert figures["h2guard"]["failed"] == 0, name
        assert figures["h2guard"]["duplicates"] == 0, name
    crash = results["reset-after-app"]
    assert crash["httpx"]["effects"] > crash["httpx"]["total"] - crash["httpx"]["failed"]
    assert crash["h2guard"]["effects"] == crash["h2guard"]["total"]  # exactly once each
    text = out.getvalue()
    assert "before / after" in text and "lesson:" in text
