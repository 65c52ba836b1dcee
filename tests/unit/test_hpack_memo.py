"""The HPACK codec's memos: a block decoded against the same dynamic table, a field encoded
from a plain tuple. Each must give exactly what decoding or encoding afresh gives."""

from __future__ import annotations

from typing import Any

import hpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from h2guard.wire.hpack_codec import FastDecoder, FastEncoder

MEMO = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DECODE_ERRORS = (hpack.HPACKError, IndexError, TypeError, UnicodeDecodeError)

_SETS = [
    [(b":method", b"GET"), (b":path", b"/bytes/16"), (b":scheme", b"http"),
     (b":authority", b"127.0.0.1:8080"), (b"user-agent", b"h2load nghttp2/1.59.0")],
    [(b":method", b"GET"), (b":path", b"/a"), (b":scheme", b"http"),
     (b":authority", b"127.0.0.1:8080"), (b"user-agent", b"h2load nghttp2/1.59.0")],
    [(b":status", b"200"), (b"server", b"nginx"), (b"content-type", b"text/html")],
    [(b"x-long", b"v" * 300), (b"x-b", b"2")],
    [(b"cookie", b"session=abc"), (b"x-b", b"2")],
]


def _fields(decoded: Any) -> list[tuple[bytes, bytes, bool]]:
    return [(bytes(f[0]), bytes(f[1]), isinstance(f, hpack.NeverIndexedHeaderTuple))
            for f in decoded]


_steps = st.lists(st.one_of(
    st.tuples(st.just("block"), st.integers(0, len(_SETS) - 1), st.booleans(),
              st.integers(1, 3)),
    st.tuples(st.just("encoder_size"), st.sampled_from([0, 64, 256, 4096])),
    st.tuples(st.just("decoder_size"), st.sampled_from([0, 100, 4096])),
    st.tuples(st.just("list_limit"), st.sampled_from([60, 400, 65536])),
), min_size=1, max_size=25)


@MEMO
@given(steps=_steps)
def test_blocks_against_the_dynamic_table_decode_as_hpack_does(steps: list[Any]) -> None:
    """A client's second request is all references to entries its first one added: such
    blocks are remembered with the table's version, and a table changed in any way (an
    entry added or evicted, a new size) is never served a stale result."""
    enc = hpack.Encoder()
    ref = hpack.Decoder()
    fast = FastDecoder()
    for step in steps:
        if step[0] == "encoder_size":
            enc.header_table_size = step[1]
            continue
        if step[0] == "decoder_size":  # our own SETTINGS_HEADER_TABLE_SIZE, acknowledged
            ref.header_table_size = fast.header_table_size = step[1]
            continue
        if step[0] == "list_limit":
            ref.max_header_list_size = fast.max_header_list_size = step[1]
            continue
        _, index, sensitive, repeat = step
        headers = [hpack.NeverIndexedHeaderTuple(n, v) if sensitive and n == b"cookie"
                   else (n, v) for n, v in _SETS[index]]
        block = bytes(enc.encode(headers))
        for _ in range(repeat):  # the same bytes again: a hit when the table is unchanged
            try:
                want = _fields(ref.decode(block, raw=True))
            except DECODE_ERRORS:
                with pytest.raises(DECODE_ERRORS):
                    fast.decode(block, raw=True)
                return
            assert _fields(fast.decode(block, raw=True)) == want
            assert list(fast._dynamic) == [tuple(e) for e in ref.header_table.dynamic_entries]
            assert fast._size == ref.header_table._current_size


def test_a_remembered_block_is_not_used_once_the_table_changed() -> None:
    enc = hpack.Encoder()
    fast = FastDecoder()
    first = bytes(enc.encode([(b"x-a", b"1")]))
    fast.decode(first, raw=True)
    again = bytes(enc.encode([(b"x-a", b"1")]))  # one indexed field: the dynamic entry
    assert fast.decode(again, raw=True) == [(b"x-a", b"1")]
    assert again in fast._dynamic_blocks
    assert fast.decode(again, raw=True) == [(b"x-a", b"1")]  # from the memo
    other = bytes(hpack.Encoder().encode([(b"x-b", b"2")]))  # adds x-b: x-a is now 63
    fast.decode(other, raw=True)
    assert fast.decode(again, raw=True) == [(b"x-b", b"2")]  # index 62 is x-b now
    fast.header_table_size = 0  # evicts everything
    with pytest.raises(hpack.InvalidTableIndexError):
        fast.decode(again, raw=True)


# ---------------------------------------------------------------------------- encoder


class _NoPlain(dict):  # type: ignore[type-arg]
    """A plain-field memo that never remembers: every field takes the general path."""

    def __setitem__(self, key: object, value: object) -> None:
        pass


_names = st.sampled_from([b":method", b":path", b"accept", b"user-agent", b"cookie",
                          b"authorization", b"x-custom", b"content-length", b"date"])
_values = st.sampled_from([b"GET", b"/", b"*/*", b"python-httpx/0.28", b"a" * 30, b"",
                           b"v" * 600, b"1"])
_forms = st.sampled_from(["tuple", "tuple", "tuple", "str", "header", "never", "triple"])


def _form(name: bytes, value: bytes, form: str) -> Any:
    if form == "str":
        return (name.decode(), value.decode())
    if form == "header":
        return hpack.HeaderTuple(name, value)
    if form == "never":
        return hpack.NeverIndexedHeaderTuple(name, value)
    if form == "triple":
        return (name, value, True)  # h2's (name, value, sensitive)
    return (name, value)


@MEMO
@given(spec=st.lists(st.tuples(st.lists(st.tuples(_names, _values, _forms), max_size=8),
                               st.one_of(st.none(), st.sampled_from([0, 100, 4096]))),
                     min_size=1, max_size=15))
def test_plain_fields_encode_exactly_as_the_general_path_does(spec: list[Any]) -> None:
    fast, general, dec = FastEncoder(), FastEncoder(), hpack.Decoder()
    general._plain = _NoPlain()
    for fields, size in spec:
        if size is not None:
            fast.header_table_size = general.header_table_size = size
        headers = [_form(n, v, f) for n, v, f in fields]
        data = fast.encode(headers)
        assert data == general.encode(headers)
        assert list(fast._entries) == list(general._entries)
        decoded = dec.decode(data, raw=True)
        assert [(bytes(n), bytes(v)) for n, v in decoded] == [(n, v) for n, v, _ in fields]
        for (name, _, form), got in zip(fields, decoded, strict=True):
            if form in ("never", "triple"):
                assert isinstance(got, hpack.NeverIndexedHeaderTuple), (name, form)
