"""What makes two requests "the same" for an Idempotency-Key: the key itself, who sent it, and
the request's fingerprint.

* :func:`parse_key`: the header's value is an sf-string (``"..."``, as the IETF draft writes it)
  or a bare token (as Stripe's clients send it); at most 255 characters of printable ASCII.
* :func:`principal_from_authorization`: keys are scoped per principal, so one client can never
  read another's stored response; the default is a digest of the Authorization header.
* :func:`fingerprint`: method, raw path and query, chosen headers and a digest of the body. A key
  reused with a different fingerprint is answered 422, never with the first request's response.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, MutableMapping
from typing import Any

__all__ = ["MAX_KEY_LENGTH", "fingerprint", "parse_key", "principal_from_authorization"]

Scope = MutableMapping[str, Any]

MAX_KEY_LENGTH = 255


class _BadKey(ValueError):
    pass


def parse_key(raw: str) -> str:
    """The key from a header value: an sf-string (``"..."``, as the draft writes it) or a bare
    token (as Stripe's clients send it). Raises ValueError with the reason otherwise."""
    text = raw.strip()
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        out: list[str] = []
        chars = iter(text[1:-1])
        for ch in chars:
            if ch == "\\":
                nxt = next(chars, "")
                if nxt not in ('"', "\\"):
                    raise _BadKey("a backslash in the key escapes only \" or \\")
                out.append(nxt)
            elif ch == '"':
                raise _BadKey("an unescaped quote inside the key")
            else:
                out.append(ch)
        key = "".join(out)
    else:
        if '"' in text:
            raise _BadKey("a quote in a key that is not a quoted string")
        key = text
    if not key:
        raise _BadKey("the key is empty")
    if len(key) > MAX_KEY_LENGTH:
        raise _BadKey(f"the key has {len(key)} characters; at most {MAX_KEY_LENGTH}")
    if any(not 0x20 <= ord(ch) <= 0x7E for ch in key):
        raise _BadKey("the key must be printable ASCII")
    return key


def principal_from_authorization(scope: Scope) -> str:
    """The default principal: a digest of the Authorization header (never the credential
    itself), or ``anonymous``."""
    for name, value in scope.get("headers", ()):
        if name.lower() == b"authorization":
            return "auth:" + hashlib.sha256(bytes(value)).hexdigest()[:32]
    return "anonymous"


def fingerprint(scope: Scope, body: bytes, *, headers: Collection[bytes] = ()) -> str:
    """A digest of what must match for a replay: method, raw path and query string, the
    ``headers`` named (lower-case bytes), and the body."""
    digest = hashlib.sha256()
    digest.update(scope["method"].upper().encode())
    digest.update(b"\x00")
    digest.update(scope.get("raw_path") or scope.get("path", "").encode("utf-8"))
    digest.update(b"?")
    digest.update(scope.get("query_string", b""))
    if headers:
        seen = sorted((bytes(n).lower(), bytes(v)) for n, v in scope.get("headers", ())
                      if bytes(n).lower() in headers)
        for name, value in seen:
            digest.update(b"\x00" + name + b":" + value)
    digest.update(b"\x00")
    digest.update(hashlib.sha256(body).digest())
    return digest.hexdigest()
