"""May a failed attempt be sent again? The one rule both retry loops apply.

Two loops send a request again: the transport moves a request the server provably never
processed to another connection (REFUSED_STREAM, above a GOAWAY's last_stream_id), whatever
its method; :class:`h2guard.RetryTransport` retries by its policy, and may resend what was
*maybe* processed only for an idempotent method or an ``Idempotency-Key``. Both must agree on
what is safe, so both ask :func:`why_not_resend`, which looks only at what the failure proves
and at the body. Limits (how many moves, attempts, budget, deadline) stay with each loop.
"""

from __future__ import annotations

from typing import Literal

from h2guard.errors import Failure

__all__ = ["Refusal", "why_not_resend"]

Refusal = Literal["maybe_processed", "one_shot_body"]
"""``maybe_processed``: the server may have acted on it and the request is not safe to repeat
(not idempotent, no key); ``one_shot_body``: part of a body that cannot be rewound was sent."""


def why_not_resend(failure: Failure | None, *, safe: bool, body_resendable: bool,
                   trust_refused_stream: bool = True) -> Refusal | None:
    """None if the request may be sent again after ``failure``; else why not. ``failure``
    None: a response came (a status the policy retries), so the request was processed.

    ``safe``: repeating it cannot apply it twice (an idempotent method, or an
    Idempotency-Key the server honours). ``body_resendable``: its body can be sent again from
    the start (bytes, a seekable file, or nothing of a one-shot stream was taken yet).
    ``trust_refused_stream=False`` counts REFUSED_STREAM as maybe processed (some proxies send
    it after the application ran).
    """
    unprocessed = failure is not None and failure.processed == "no" and (
        trust_refused_stream or failure.kind != "refused_stream")
    if not unprocessed and not safe:
        return "maybe_processed"
    if not body_resendable:
        return "one_shot_body"
    return None
