"""Safe retries: classification, idempotency keys, backoff, budget, deadline.

``RetryTransport(inner, policy=RetryPolicy(...))`` wraps any httpx transport; ``classify``
turns any transport exception into a :class:`~h2guard.errors.Failure`; ``set_testing`` removes
waits for test suites. See :mod:`h2guard.retry.policy` for the decision matrix and the budget.
"""

from __future__ import annotations

from h2guard.retry.classify import classify
from h2guard.retry.policy import RETRY_ON, RetryBudget, RetryPolicy, parse_retry_after
from h2guard.retry.transport import RetryInfo, RetryTransport, set_testing

__all__ = ["RETRY_ON", "RetryBudget", "RetryInfo", "RetryPolicy", "RetryTransport", "classify",
           "parse_retry_after", "set_testing"]
