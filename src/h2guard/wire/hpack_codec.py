"""Faster HPACK coding, plugged into h2 in place of ``hpack.Decoder`` and ``hpack.Encoder``.

Why: decoding a response's header block was the largest single cost of a small request in
``benchmarks/client_throughput.py`` (about 44 µs per nginx response with ``hpack.Decoder``,
whose per-field logging, per-field objects and memoryview slicing dominate). Servers send
nearly the same block on every response (nginx: ``:status``, ``server``, ``date``,
``content-type``, ``content-length``, all but ``date`` identical), so this decoder:

* decodes a block in one loop over the bytes, with no per-field calls but the Huffman decoder;
* remembers recent Huffman strings (bytes in, bytes out: a pure function);
* remembers recent whole blocks that reference no dynamic-table entry. The fields of such a
  block are a pure function of its bytes; what it does to the dynamic table (entries added by
  "literal with incremental indexing") is replayed on every hit, so the table stays exactly
  in step with the peer's encoder.

It is a drop-in for what h2 uses (``decode(data, raw=True)``, ``max_header_list_size``,
``max_allowed_table_size``, ``header_table_size``), returns the same fields as
``hpack.Decoder`` (never-indexed fields as ``hpack.NeverIndexedHeaderTuple``, so a proxy keeps
their sensitivity), and raises hpack's own exceptions for bad input, which h2 turns into
COMPRESSION_ERROR. ``tests/unit/test_hpack_codec.py`` checks it against ``hpack.Decoder``
field by field and error by error.

:class:`FastEncoder` is the matching encoder (hpack's costs about 20 µs for a request's seven
fields). Encodings that do not depend on the table are memoised; besides speed it makes two
choices hpack leaves to the caller: ``authorization``, ``proxy-authorization`` and short
``cookie`` values are never indexed (as nghttp2 and Firefox do; h2 would do it only with its
outbound normalisation, which the core turns off), and values that are unique per request
(``:path``, ``content-length``, ``idempotency-key``, trace ids) are sent without indexing, so
they do not push reusable entries out of the peer's table.
"""

from __future__ import annotations

from collections import deque

from hpack import (
    HeaderTuple,
    HPACKDecodingError,
    InvalidTableIndexError,
    InvalidTableSizeError,
    NeverIndexedHeaderTuple,
    OversizedHeaderListError,
)
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

__all__ = ["FastDecoder", "FastEncoder"]

_STATIC: tuple[tuple[bytes, bytes], ...] = tuple(HeaderTable.STATIC_TABLE)
_STATIC_LEN = len(_STATIC)  # 61
_ENTRY_OVERHEAD = 32  # RFC 7541 §4.1
_HUFFMAN_MEMO_MAX = 512
_HUFFMAN_MEMO_MAX_LEN = 256  # longer strings are rarely repeated byte for byte
_BLOCK_MEMO_MAX = 128
_BLOCK_MEMO_MAX_LEN = 2048

Field = tuple[bytes, bytes]


class FastDecoder:
    """An HPACK decoder with the attributes h2 sets on ``hpack.Decoder``."""

    __slots__ = ("_blocks", "_dynamic", "_dynamic_blocks", "_huffman", "_maxsize", "_size",
                 "_version", "max_allowed_table_size", "max_header_list_size")

    def __init__(self, max_header_list_size: int = 65536) -> None:
        self.max_header_list_size = max_header_list_size
        self.max_allowed_table_size = 4096
        self._maxsize = 4096
        self._size = 0
        self._dynamic: deque[Field] = deque()  # newest first: index 62 is _dynamic[0]
        self._huffman: dict[bytes, bytes] = {}
        # block -> (fields, entries it adds to the table with their RFC 7541 §4.1 sizes,
        # decompressed size)
        self._blocks: dict[bytes, tuple[tuple[Field, ...], tuple[tuple[Field, int], ...],
                                        int]] = {}
        # Blocks that reference the dynamic table and leave it as it was (indexed fields and
        # literals without indexing only: what a client sends from its second request on):
        # block -> (table version, fields, decompressed size). The version counts every change
        # of the table, so a hit is a block decoded against exactly the same table.
        self._dynamic_blocks: dict[bytes, tuple[int, tuple[Field, ...], int]] = {}
        self._version = 0

    # ------------------------------------------------------------------ table

    @property
    def header_table_size(self) -> int:
        return self._maxsize

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        self._version += 1
        self._maxsize = value
        self._evict()

    def _evict(self) -> None:
        dynamic = self._dynamic
        while self._size > self._maxsize and dynamic:
            name, value = dynamic.pop()
            self._size -= len(name) + len(value) + _ENTRY_OVERHEAD

    def _add(self, name: bytes, value: bytes) -> None:
        self._version += 1
        size = len(name) + len(value) + _ENTRY_OVERHEAD
        if size > self._maxsize:  # RFC 7541 §4.4: an oversize entry empties the table
            self._dynamic.clear()
            self._size = 0
            return
        self._dynamic.appendleft((name, value))
        self._size += size
        self._evict()

    def _entry(self, index: int) -> Field:
        if 0 < index <= _STATIC_LEN:
            return _STATIC[index - 1]
        position = index - _STATIC_LEN - 1
        if 0 <= position < len(self._dynamic):
            return self._dynamic[position]
        raise InvalidTableIndexError(f"Invalid table index {index}")

    # ------------------------------------------------------------------ decoding

    def decode(self, data: bytes, raw: bool = False) -> list[tuple[bytes, bytes]]:
        """Decode one complete header block into ``(name, value)`` byte pairs."""
        if not raw:  # h2 always asks for bytes; str output is hpack's job
            raise TypeError("FastDecoder only decodes to bytes (raw=True)")
        data = bytes(data)
        memo = self._blocks.get(data)
        if memo is not None:
            fields, adds, inflated = memo
            if inflated > self.max_header_list_size:
                raise OversizedHeaderListError(
                    f"A header list larger than {self.max_header_list_size} has been received")
            if adds:  # what _add does for each entry, in one loop (4 entries per nginx block)
                dynamic = self._dynamic
                size = self._size
                maxsize = self._maxsize
                for field, entry_size in adds:
                    if entry_size > maxsize:  # RFC 7541 §4.4: the table empties
                        dynamic.clear()
                        size = 0
                        continue
                    dynamic.appendleft(field)
                    size += entry_size
                    while size > maxsize and dynamic:
                        name, value = dynamic.pop()
                        size -= len(name) + len(value) + _ENTRY_OVERHEAD
                self._size = size
                self._version += len(adds)
            if self._maxsize > self.max_allowed_table_size:
                raise InvalidTableSizeError(
                    "Encoder did not shrink table size to within the max")
            return list(fields)
        hit = self._dynamic_blocks.get(data)
        if hit is not None and hit[0] == self._version:
            _, fields, inflated = hit
            if inflated > self.max_header_list_size:
                raise OversizedHeaderListError(
                    f"A header list larger than {self.max_header_list_size} has been received")
            if self._maxsize > self.max_allowed_table_size:
                raise InvalidTableSizeError(
                    "Encoder did not shrink table size to within the max")
            return list(fields)
        return self._decode(data)

    def _decode(self, data: bytes) -> list[tuple[bytes, bytes]]:
        fields: list[tuple[bytes, bytes]] = []
        adds: list[tuple[Field, int]] = []
        inflated = 0
        version = self._version
        limit = self.max_header_list_size
        pure = len(data) <= _BLOCK_MEMO_MAX_LEN  # no dynamic reference, no size update
        pos = 0
        end = len(data)
        while pos < end:
            first = data[pos]
            if first & 0x80:  # indexed field
                index, pos = _integer(data, pos, 7)
                if index > _STATIC_LEN:
                    pure = False
                elif index == 0:
                    raise InvalidTableIndexError("Invalid table index 0")
                field: tuple[bytes, bytes] = self._entry(index)
            elif first & 0x40:  # literal with incremental indexing
                field, pos, dyn = self._literal(data, pos, 6)
                if dyn:
                    pure = False
                self._add(field[0], field[1])
                adds.append((field, len(field[0]) + len(field[1]) + _ENTRY_OVERHEAD))
            elif first & 0x20:  # dynamic table size update
                if fields:
                    raise HPACKDecodingError("Table size update not at the start of the block")
                size, pos = _integer(data, pos, 5)
                if size > self.max_allowed_table_size:
                    raise InvalidTableSizeError("Encoder exceeded max allowable table size")
                self.header_table_size = size
                pure = False
                continue
            else:  # literal without indexing (0x00) or never indexed (0x10)
                field, pos, dyn = self._literal(data, pos, 4)
                if dyn:
                    pure = False
                if first & 0x10:
                    field = NeverIndexedHeaderTuple(field[0], field[1])
            fields.append(field)
            inflated += len(field[0]) + len(field[1]) + _ENTRY_OVERHEAD
            if inflated > limit:
                raise OversizedHeaderListError(
                    f"A header list larger than {limit} has been received")
        if self._maxsize > self.max_allowed_table_size:
            raise InvalidTableSizeError("Encoder did not shrink table size to within the max")
        if pure:
            blocks = self._blocks
            if len(blocks) >= _BLOCK_MEMO_MAX:
                blocks.clear()
            blocks[data] = (tuple(fields), tuple(adds), inflated)
        elif self._version == version and len(data) <= _BLOCK_MEMO_MAX_LEN:
            dynamic_blocks = self._dynamic_blocks
            if len(dynamic_blocks) >= _BLOCK_MEMO_MAX:
                dynamic_blocks.clear()
            dynamic_blocks[data] = (version, tuple(fields), inflated)
        return fields

    def _literal(self, data: bytes, pos: int, prefix: int) -> tuple[Field, int, bool]:
        """One literal field at ``pos``; also says whether its name came from the dynamic
        table (then the block's result depends on table state)."""
        index, pos = _integer(data, pos, prefix)
        dynamic_name = False
        if index:
            name = self._entry(index)[0]
            dynamic_name = index > _STATIC_LEN
        else:
            name, pos = self._string(data, pos)
        value, pos = self._string(data, pos)
        return (name, value), pos, dynamic_name

    def _string(self, data: bytes, pos: int) -> tuple[bytes, int]:
        if pos >= len(data):
            raise HPACKDecodingError("Truncated header block")
        huffman = data[pos] & 0x80
        length, pos = _integer(data, pos, 7)
        stop = pos + length
        if stop > len(data):
            raise HPACKDecodingError("Truncated header block")
        raw = data[pos:stop]
        if not huffman:
            return raw, stop
        memo = self._huffman
        text = memo.get(raw)
        if text is None:
            text = decode_huffman(raw)
            if length <= _HUFFMAN_MEMO_MAX_LEN:
                if len(memo) >= _HUFFMAN_MEMO_MAX:
                    memo.clear()
                memo[raw] = text
        return text, stop


def _integer(data: bytes, pos: int, prefix: int) -> tuple[int, int]:
    """RFC 7541 §5.1: the integer starting at ``pos``; returns it and the next position."""
    mask = (1 << prefix) - 1
    value = data[pos] & mask
    pos += 1
    if value < mask:
        return value, pos
    shift = 0
    end = len(data)
    while True:
        if pos >= end:
            raise HPACKDecodingError("Unable to decode HPACK integer representation")
        byte = data[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 56:  # beyond any sane length or index: a malicious or broken encoder
            raise HPACKDecodingError("HPACK integer too large")


# ---------------------------------------------------------------------------- encoding

_HUFFMAN = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)
_STATIC_FULL: dict[Field, int] = {}
_STATIC_NAME: dict[bytes, int] = {}
for _i, (_n, _v) in enumerate(_STATIC, start=1):
    _STATIC_FULL.setdefault((_n, _v), _i)
    _STATIC_NAME.setdefault(_n, _i)
_SECRET_NAMES = frozenset({b"authorization", b"proxy-authorization"})
_UNIQUE_NAMES = frozenset({b":path", b"content-length", b"idempotency-key", b"x-request-id",
                           b"traceparent", b"tracestate", b"x-amzn-trace-id", b"b3",
                           b"x-b3-traceid", b"x-b3-spanid", b"if-modified-since",
                           b"if-none-match", b"date"})
_MAX_INDEXED_VALUE = 512  # longer values are sent as literals: they rarely repeat
_INDEXED = tuple(bytes((0x80 | i,)) for i in range(127))  # an indexed field, by index < 127
_ENCODE_MEMO_MAX = 1024
_OUR_TABLE_MAX = 4096  # never use more than the default, whatever the peer allows


def _int_bytes(value: int, prefix: int, flags: int) -> bytes:
    """RFC 7541 §5.1 with ``flags`` in the first byte's high bits."""
    mask = (1 << prefix) - 1
    if value < mask:
        return bytes((flags | value,))
    out = bytearray((flags | mask,))
    value -= mask
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _str_bytes(raw: bytes) -> bytes:
    """A string literal, Huffman-coded when that is shorter (RFC 7541 §5.2)."""
    coded = _HUFFMAN.encode(raw)
    if len(coded) < len(raw):
        return _int_bytes(len(coded), 7, 0x80) + coded
    return _int_bytes(len(raw), 7, 0) + raw


class FastEncoder:
    """An HPACK encoder with the interface h2 uses on ``hpack.Encoder``."""

    __slots__ = ("_entries", "_index", "_inserted", "_maxsize", "_memo", "_pending_sizes",
                 "_plain", "_size")

    def __init__(self) -> None:
        self._maxsize = 4096
        self._size = 0
        self._entries: deque[tuple[bytes, bytes, int]] = deque()  # newest first, with seq
        self._index: dict[Field, int] = {}  # field -> seq of its newest copy in the table
        self._inserted = 0
        self._pending_sizes: list[int] = []
        # field -> (bytes, whether it enters the dynamic table)
        self._memo: dict[tuple[bytes, bytes, bool], tuple[bytes, bool]] = {}
        # the same for fields given as plain (name, value) tuples of bytes, looked up by the
        # field itself (a HeaderTuple never matches: only exact tuples are looked up)
        self._plain: dict[Field, tuple[bytes, bool]] = {}

    @property
    def header_table_size(self) -> int:
        return self._maxsize

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        new = min(value, _OUR_TABLE_MAX)
        if new != self._maxsize:
            self._maxsize = new
            self._pending_sizes.append(new)
            self._evict()

    def _evict(self) -> None:
        entries = self._entries
        index = self._index
        while self._size > self._maxsize and entries:
            name, value, seq = entries.pop()
            self._size -= len(name) + len(value) + _ENTRY_OVERHEAD
            if index.get((name, value)) == seq:
                del index[(name, value)]

    def _add(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value) + _ENTRY_OVERHEAD
        self._inserted += 1
        if size > self._maxsize:  # RFC 7541 §4.4: the table empties, the entry is not kept
            self._entries.clear()
            self._index.clear()
            self._size = 0
            return
        self._entries.appendleft((name, value, self._inserted))
        self._index[(name, value)] = self._inserted
        self._size += size
        self._evict()

    def encode(self, headers: object, huffman: bool = True) -> bytes:
        """Encode one header block. ``huffman`` is accepted for hpack's signature; string
        literals are Huffman-coded whenever that is shorter."""
        block: list[bytes] = []
        if self._pending_sizes:  # RFC 7541 §4.2: the smallest size since the last block,
            smallest = min(self._pending_sizes)  # then the current one
            block.append(_int_bytes(smallest, 5, 0x20))
            if smallest != self._maxsize:
                block.append(_int_bytes(self._maxsize, 5, 0x20))
            self._pending_sizes.clear()
        memo = self._memo
        plain = self._plain
        index = self._index
        for header in headers:  # type: ignore[attr-defined]
            if type(header) is tuple:  # the common field: skip the checks below
                seq = index.get(header)
                if seq is not None:
                    n = _STATIC_LEN + self._inserted - seq + 1
                    block.append(_INDEXED[n] if n < 127 else _int_bytes(n, 7, 0x80))
                    continue
                done = plain.get(header)
                if done is not None:
                    block.append(done[0])
                    if done[1]:
                        self._add(header[0], header[1])
                    continue
            name, value = header[0], header[1]
            if isinstance(name, str):
                name = name.encode("utf-8")
            if isinstance(value, str):
                value = value.encode("utf-8")
            secret = (isinstance(header, HeaderTuple) and not header.indexable) or (
                len(header) > 2 and bool(header[2]))
            seq = None if secret else index.get((name, value))
            if seq is not None:  # in the dynamic table: one small integer
                block.append(_int_bytes(_STATIC_LEN + self._inserted - seq + 1, 7, 0x80))
                continue
            key = (name, value, secret)
            done = memo.get(key)
            if done is None:
                done = self._literal(name, value, secret)
                if len(memo) >= _ENCODE_MEMO_MAX:
                    memo.clear()
                memo[key] = done
            if type(header) is tuple and not secret and len(header) == 2 and \
                    header[0] is name and header[1] is value:  # bytes as given
                if len(plain) >= _ENCODE_MEMO_MAX:
                    plain.clear()
                plain[header] = done
            data, indexed = done
            block.append(data)
            if indexed:
                self._add(name, value)
        return b"".join(block)

    @staticmethod
    def _literal(name: bytes, value: bytes, secret: bool) -> tuple[bytes, bool]:
        """The table-independent encoding of one field, and whether it adds a table entry."""
        if not secret:
            full = _STATIC_FULL.get((name, value))
            if full is not None:
                return _int_bytes(full, 7, 0x80), False
        if secret or name in _SECRET_NAMES or (name == b"cookie" and len(value) < 20):
            prefix, flags, indexed = 4, 0x10, False  # never indexed
        elif name in _UNIQUE_NAMES or len(value) > _MAX_INDEXED_VALUE:
            prefix, flags, indexed = 4, 0x00, False  # without indexing
        else:
            prefix, flags, indexed = 6, 0x40, True  # with incremental indexing
        name_index = _STATIC_NAME.get(name)
        if name_index is not None:
            head = _int_bytes(name_index, prefix, flags)
        else:
            head = bytes((flags,)) + _str_bytes(name)
        return head + _str_bytes(value), indexed
