"""FastDecoder against hpack.Decoder: same fields, same table state, same errors."""

from __future__ import annotations

import hpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from h2guard.wire.hpack_codec import FastDecoder

# errors h2's _decode_headers turns into COMPRESSION_ERROR / a DoS error
DECODE_ERRORS = (hpack.HPACKError, IndexError, TypeError, UnicodeDecodeError)

NGINX_FIRST = bytes.fromhex(
    "20887689aa6355e580ae212e1f6196dd6d5f4a084a693f75040138a083702f5c6d953168df5f901d75d062"
    "0d263d4c1c892a56426c28e95c023136")


def _plain(fields: object) -> list[tuple[bytes, bytes, bool]]:
    return [(bytes(n), bytes(v), isinstance(f, hpack.NeverIndexedHeaderTuple))
            for f in fields for n, v in [f]]  # type: ignore[attr-defined]


def _both(blocks: list[bytes], *, max_list: int = 65536) -> None:
    ref = hpack.Decoder(max_header_list_size=max_list)
    fast = FastDecoder(max_list)
    for block in blocks:
        try:
            want = _plain(ref.decode(block, raw=True))
        except DECODE_ERRORS:
            with pytest.raises(DECODE_ERRORS):
                fast.decode(block, raw=True)
            return  # the connection is dead after a decoding error: stop comparing
        assert _plain(fast.decode(block, raw=True)) == want
        assert list(fast._dynamic) == [tuple(e) for e in ref.header_table.dynamic_entries]
        assert fast._size == ref.header_table._current_size


names = st.sampled_from([b"server", b"date", b"x-a", b"x-b", b"content-type", b"cookie",
                         b":status", b"cache-control", b"set-cookie"])
values = st.one_of(st.sampled_from([b"", b"200", b"nginx", b"no-cache", b"text/html"]),
                   st.binary(min_size=0, max_size=40).map(lambda b: b.replace(b"\x00", b"a")))
field = st.tuples(names, values, st.booleans())  # (name, value, sensitive)
block = st.tuples(st.lists(field, min_size=1, max_size=8), st.booleans(),
                  st.one_of(st.none(), st.integers(0, 4096)))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(block, min_size=1, max_size=12))
def test_same_fields_and_table_as_hpack_for_what_an_encoder_sends(spec: list) -> None:
    enc = hpack.Encoder()
    blocks = []
    for fields, huffman, new_size in spec:
        if new_size is not None:
            enc.header_table_size = new_size
        headers = [hpack.NeverIndexedHeaderTuple(n, v) if s else (n, v) for n, v, s in fields]
        blocks.append(enc.encode(headers, huffman=huffman))
        blocks.append(blocks[-1] if new_size is None else b"")  # a repeat hits the block memo
    _both([b for b in blocks if b])


@settings(max_examples=500)
@given(st.lists(st.binary(min_size=1, max_size=30), min_size=1, max_size=4))
def test_arbitrary_bytes_give_the_same_result_or_both_fail(blocks: list[bytes]) -> None:
    _both([NGINX_FIRST, *blocks])


def test_nginx_blocks_repeat_from_the_memo_and_keep_the_table_in_step() -> None:
    fast, ref = FastDecoder(), hpack.Decoder()
    first = fast.decode(NGINX_FIRST, raw=True)  # nginx opens with a table size of 0 ...
    assert first == ref.decode(NGINX_FIRST, raw=True)
    assert not fast._dynamic
    fast, ref = FastDecoder(), hpack.Decoder()  # ... so, for a table that keeps entries:
    again = NGINX_FIRST[1:]  # the same fields with incremental indexing, no size update
    for _ in range(50):
        assert fast.decode(again, raw=True) == ref.decode(again, raw=True)
    assert again in fast._blocks  # served from the memo
    assert list(fast._dynamic) == [tuple(e) for e in ref.header_table.dynamic_entries]
    # a block that points into the dynamic table decodes the same after all those replays
    indexed = bytes([0x80 | 62, 0x80 | 65])
    assert fast.decode(indexed, raw=True) == ref.decode(indexed, raw=True)
    assert indexed not in fast._blocks  # depends on table state: never memoised


def test_never_indexed_fields_keep_their_marker() -> None:
    enc = hpack.Encoder()
    data = enc.encode([hpack.NeverIndexedHeaderTuple(b"authorization", b"secret")])
    out = FastDecoder().decode(data, raw=True)
    assert out == [(b"authorization", b"secret")]
    assert isinstance(out[0], hpack.NeverIndexedHeaderTuple)


def test_oversize_header_list_is_refused_also_when_replayed_from_the_memo() -> None:
    fast = FastDecoder(max_header_list_size=200)
    data = hpack.Encoder().encode([(b"x-big", b"v" * 100)])
    assert fast.decode(data, raw=True) == [(b"x-big", b"v" * 100)]
    fast.max_header_list_size = 100
    with pytest.raises(hpack.OversizedHeaderListError):
        fast.decode(data, raw=True)


def test_table_size_updates_are_bounded_and_only_at_the_start() -> None:
    fast = FastDecoder()
    with pytest.raises(hpack.InvalidTableSizeError):
        fast.decode(b"\x3f\xe2\x1f", raw=True)  # size update to 4097 > 4096 allowed
    with pytest.raises(hpack.HPACKDecodingError):
        FastDecoder().decode(b"\x88\x20", raw=True)  # an update after a field
    fast = FastDecoder()
    block = hpack.Encoder().encode([(b"x-a", b"1")])
    fast.decode(block, raw=True)
    fast.max_allowed_table_size = 0  # our SETTINGS lowered it; the peer never shrank
    with pytest.raises(hpack.InvalidTableSizeError):
        fast.decode(bytes([0x88]), raw=True)


@pytest.mark.parametrize("data", [b"\x80", b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
                                  b"\x40\x05ab", b"\x00\x01a\x7f", b"\xc0", b"\x00\x81\xff"])
def test_broken_blocks_raise_what_h2_turns_into_compression_error(data: bytes) -> None:
    with pytest.raises(DECODE_ERRORS):
        FastDecoder().decode(data, raw=True)


def test_h2_core_uses_it() -> None:
    from h2guard.wire.core import H2Core

    assert isinstance(H2Core(client=True)._conn.decoder, FastDecoder)


# ---------------------------------------------------------------------------- encoder

enc_names = st.sampled_from([b":method", b":path", b":authority", b"accept", b"user-agent",
                             b"cookie", b"authorization", b"x-custom", b"content-length",
                             b"idempotency-key", b"accept-encoding"])
enc_values = st.one_of(st.sampled_from([b"GET", b"/", b"gzip, deflate", b"*/*", b"",
                                        b"python-httpx/0.28", b"a" * 30]),
                       st.binary(max_size=60), st.binary(min_size=500, max_size=700))
enc_block = st.tuples(st.lists(st.tuples(enc_names, enc_values, st.booleans()), max_size=10),
                      st.one_of(st.none(), st.integers(0, 8192)))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(enc_block, min_size=1, max_size=15))
def test_encoder_output_decodes_to_the_same_fields_with_hpack(spec: list) -> None:
    from h2guard.wire.hpack_codec import FastEncoder

    enc, dec = FastEncoder(), hpack.Decoder()
    for fields, new_size in spec:
        if new_size is not None:
            enc.header_table_size = new_size  # the peer's SETTINGS_HEADER_TABLE_SIZE
            dec.max_allowed_table_size = new_size
        headers = [hpack.NeverIndexedHeaderTuple(n, v) if s else (n, v) for n, v, s in fields]
        decoded = dec.decode(enc.encode(headers), raw=True)
        assert [(bytes(n), bytes(v)) for n, v in decoded] == [(n, v) for n, v, _ in fields]
        for (name, value, secret), got in zip(fields, decoded, strict=True):
            if not value and name in (b"cookie", b"authorization"):
                continue  # a full static-table match: one byte, and nothing secret in it
            if secret or name == b"authorization" or (name == b"cookie" and len(value) < 20):
                assert isinstance(got, hpack.NeverIndexedHeaderTuple), name
        assert enc.header_table_size <= 4096


def test_encoder_reuses_the_table_for_repeated_requests_and_keeps_unique_values_out() -> None:
    from h2guard.wire.hpack_codec import FastEncoder

    enc, dec = FastEncoder(), hpack.Decoder()
    request = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"api.example"),
               (b":path", b"/orders/1"), (b"accept", b"*/*"),
               (b"user-agent", b"python-httpx/0.28.1"), (b"idempotency-key", b"k" * 32)]
    first = enc.encode(request)
    again = enc.encode([*request[:3], (b":path", b"/orders/2"), *request[4:6],
                        (b"idempotency-key", b"j" * 32)])
    assert len(again) <= len(first) - 25  # authority, accept, user-agent: one byte each
    dec.decode(first, raw=True)
    assert dec.decode(again, raw=True)[3] == (b":path", b"/orders/2")
    stored = {bytes(n) for n, _ in dec.header_table.dynamic_entries}
    assert b":path" not in stored and b"idempotency-key" not in stored
    assert b"user-agent" in stored


def test_encoder_signals_the_smallest_table_size_then_the_current_one() -> None:
    from h2guard.wire.hpack_codec import FastEncoder

    enc, dec = FastEncoder(), hpack.Decoder()
    dec.decode(enc.encode([(b"x-a", b"1")]), raw=True)
    enc.header_table_size = 0
    enc.header_table_size = 100
    block = enc.encode([(b"x-a", b"1")])
    assert block[:3] == bytes([0x20, 0x3F, 100 - 31])  # size 0, then size 100
    dec.max_allowed_table_size = 100
    assert dec.decode(block, raw=True) == [(b"x-a", b"1")]
    assert dec.header_table_size == 100


def _literal(name: bytes, value: bytes) -> bytes:
    """A literal field with incremental indexing and a new name, no Huffman (both < 127)."""
    return b"\x40" + bytes([len(name)]) + name + bytes([len(value)]) + value


def _size_update(size: int) -> bytes:
    out = bytearray([0x20 | min(size, 31)])
    if size >= 31:
        size -= 31
        while size >= 0x80:
            out.append((size & 0x7F) | 0x80)
            size >>= 7
        out.append(size)
    return bytes(out) + b"\x82"  # and one field (:method GET), so the block is not empty


_REPLAYED = [
    _literal(b"x-a", b"1" * 100) + _literal(b"x-b", b"2" * 50) + b"\x88",
    _literal(b"x-c", b"3" * 120),
    _literal(b"x-d", b"4" * 10) + _literal(b"x-e", b"5" * 10) + _literal(b"x-f", b"6" * 10)
    + _literal(b"x-g", b"7" * 10),
    _literal(b"x-big", b"v" * 120) + _literal(b"x-h", b"8"),  # above a small table: empties it
]


@settings(max_examples=300)
@given(st.lists(st.one_of(st.sampled_from(_REPLAYED),
                          st.sampled_from([0, 40, 64, 150, 170, 400, 4096]).map(_size_update)),
                min_size=1, max_size=30))
def test_replayed_table_entries_evict_as_hpack_does(blocks: list[bytes]) -> None:
    """A remembered block adds its entries to the table again on every hit, evicting the
    oldest (or emptying the table for an entry above its size) exactly as decoding it anew."""
    _both(blocks)


def test_a_remembered_block_replays_its_entries_with_eviction() -> None:
    fast, ref = FastDecoder(), hpack.Decoder()
    sequence = [_size_update(200), *(_REPLAYED * 3), _size_update(150), *_REPLAYED,
                _size_update(4096), *(_REPLAYED * 2)]
    hits = 0
    for block in sequence:
        hits += block in fast._blocks
        assert _plain(fast.decode(block, raw=True)) == _plain(ref.decode(block, raw=True))
        assert list(fast._dynamic) == [tuple(e) for e in ref.header_table.dynamic_entries]
        assert fast._size == ref.header_table._current_size
    assert hits == len(sequence) - 3 - len(_REPLAYED)  # all but the first of each block
