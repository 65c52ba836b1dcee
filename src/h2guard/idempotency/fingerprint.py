"""What makes two requests "the same" for an Idempotency-Key: the key itself, who sent it, and
the request's fingerprint.

* :func:`parse_key`: the header's value is an sf-string (``"..."``, as the IETF draft writes it)
  or a bare token (as Stripe's clients send it); at most 255 characters of printable ASCII.
* :func:`principal_from_authorization`: keys are scoped per principal, so one client can never
  read another's stored response; the default is a digest of the Authorization header, its
  auth-scheme compared case-insensitively as RFC 9110 §11.1 says (``bearer X`` and
  ``Bearer X`` are one principal; the credentials after the scheme stay case-sensitive).
* :func:`fingerprint`: method, raw path and query, chosen headers and a digest of the body. A key
  reused with a different fingerprint is answered 422, never with the first request's response.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, MutableMapping
from typing import Any

__all__ = ["MAX_KEY_LENGTH", "fingerprint", "normalize_credentials", "parse_key",
           "principal_from_authorization"]

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


_CREDENTIAL_HEADERS = frozenset({b"authorization", b"proxy-authorization"})


def normalize_credentials(value: bytes) -> bytes:
    """An Authorization (or Proxy-Authorization) value in one canonical form, so that values
    RFC 9110 calls equal compare equal.

    ``credentials = auth-scheme [ 1*SP ( token68 / #auth-param ) ]`` (§11.4) and "the
    auth-scheme is case-insensitive" (§11.1): the scheme is folded to one spelling (first
    letter upper case, the rest lower: ``Bearer``, ``Basic``, ``Digest``, ``Negotiate``, which
    is how those schemes are usually written, so the digest of such a value does not change),
    the spaces after it become one, and the credentials are kept byte for byte (a token68 such
    as a bearer token is case-sensitive). Surrounding whitespace is not part of a field value
    (RFC 9110 §5.5)."""
    text = bytes(value).strip(b" \t")
    scheme, sep, rest = text.partition(b" ")
    if not scheme:
        return text
    scheme = scheme.decode("latin-1").capitalize().encode("latin-1")
    rest = rest.lstrip(b" ")
    return scheme + b" " + rest if sep and rest else scheme


def principal_from_authorization(scope: Scope) -> str:
    """The default principal: a digest of the Authorization header (never the credential
    itself), or ``anonymous``. The scheme is compared case-insensitively
    (:func:`normalize_credentials`), the credentials exactly."""
    for name, value in scope.get("headers", ()):
        if name.lower() == b"authorization":
            canonical = normalize_credentials(bytes(value))
            return "auth:" + hashlib.sha256(canonical).hexdigest()[:32]
    return "anonymous"


def fingerprint(scope: Scope, body: bytes, *, headers: Collection[bytes] = ()) -> str:
    """A digest of what must match for a replay: method, raw path and query string, the
    ``headers`` named (lower-case bytes), and the body. An Authorization or
    Proxy-Authorization header among them is compared as :func:`normalize_credentials` says
    (scheme case-insensitive)."""
    digest = hashlib.sha256()
    digest.update(scope["method"].upper().encode())
    digest.update(b"\x00")
    digest.update(scope.get("raw_path") or scope.get("path", "").encode("utf-8"))
    digest.update(b"?")
    digest.update(scope.get("query_string", b""))
    if headers:
        seen = sorted((name, normalize_credentials(value) if name in _CREDENTIAL_HEADERS
                       else value)
                      for name, value in ((bytes(n).lower(), bytes(v))
                                          for n, v in scope.get("headers", ()))
                      if name in headers)
        for name, value in seen:
            digest.update(b"\x00" + name + b":" + value)
    digest.update(b"\x00")
    digest.update(hashlib.sha256(body).digest())
    return digest.hexdigest()
