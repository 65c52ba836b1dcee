"""Tests of ``h2guard doctor``. A package (as tests/integration is), so that its module names
cannot clash with same-named modules elsewhere (tests/unit/test_trace.py)."""
