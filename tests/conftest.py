"""Fixtures every test folder can use (unit, integration, peers, idempotency).

It also makes ``tests/`` importable as a path entry, so shared helpers such as
:mod:`frames` import the same way everywhere (``from frames import FrameFactory``): pytest's
default ``prepend`` import mode already puts this directory on ``sys.path`` for a rootdir
conftest, but ``--import-mode=importlib`` would not, and a helper that imports in one mode
only is a trap.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from frames import FrameFactory  # noqa: E402  (needs the path entry above)


@pytest.fixture
def frame_factory() -> FrameFactory:
    """A fresh :class:`frames.FrameFactory` (so a fresh HPACK encoder) for each test: one
    test's dynamic table never leaks into another's header blocks."""
    return FrameFactory()
