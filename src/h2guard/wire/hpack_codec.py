"""A faster HPACK decoder, plugged into h2 in place of ``hpack.Decoder``.

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
"""

from __future__ import annotations

from collections import deque

from hpack import (
    HPACKDecodingError,
    InvalidTableIndexError,
    InvalidTableSizeError,
    NeverIndexedHeaderTuple,
    OversizedHeaderListError,
)
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

__all__ = ["FastDecoder"]

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

    __slots__ = ("_blocks", "_dynamic", "_huffman", "_maxsize", "_size",
                 "max_allowed_table_size", "max_header_list_size")

    def __init__(self, max_header_list_size: int = 65536) -> None:
        self.max_header_list_size = max_header_list_size
        self.max_allowed_table_size = 4096
        self._maxsize = 4096
        self._size = 0
        self._dynamic: deque[Field] = deque()  # newest first: index 62 is _dynamic[0]
        self._huffman: dict[bytes, bytes] = {}
        # block -> (fields, entries it adds to the table, decompressed size)
        self._blocks: dict[bytes, tuple[tuple[Field, ...], tuple[Field, ...], int]] = {}

    # ------------------------------------------------------------------ table

    @property
    def header_table_size(self) -> int:
        return self._maxsize

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        self._maxsize = value
        self._evict()

    def _evict(self) -> None:
        dynamic = self._dynamic
        while self._size > self._maxsize and dynamic:
            name, value = dynamic.pop()
            self._size -= len(name) + len(value) + _ENTRY_OVERHEAD

    def _add(self, name: bytes, value: bytes) -> None:
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
            for name, value in adds:
                self._add(name, value)
            if self._maxsize > self.max_allowed_table_size:
                raise InvalidTableSizeError(
                    "Encoder did not shrink table size to within the max")
            return list(fields)
        return self._decode(data)

    def _decode(self, data: bytes) -> list[tuple[bytes, bytes]]:
        fields: list[tuple[bytes, bytes]] = []
        adds: list[Field] = []
        inflated = 0
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
                adds.append(field)
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
