"""The one canonical encoding of DLE messages: RLP, read strictly.

Every refusal is an `EncodingError`, so a node can drop bad input with one `except` and still log the
precise reason. The base class is a `ValueError` because every case is a bad value handed in from
outside. Decoders accept exactly the bytes `encode()` produces: RLP's own canonical rules (shortest
length prefixes, single bytes below 0x80 as themselves), integers without leading zeros, fixed-size
fields at their size, the right number of fields and nothing after the last item. So one value has
one encoding, and a hash over the encoding identifies the value.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import TypeAlias, TypeVar

__all__ = [
    "MAX_UINT64",
    "MAX_UINT256",
    "EncodingError",
    "FieldCountError",
    "FieldLengthError",
    "FieldTypeError",
    "IntegerError",
    "MalformedRLPError",
    "NonCanonicalError",
    "RLPItem",
    "TrailingBytesError",
    "check_bytes",
    "check_length",
    "check_uint",
    "decode_rlp",
    "encode_rlp",
    "encode_rlp_list",
    "fixed_bytes",
    "list_item_encodings",
    "list_of",
    "raw_bytes",
    "rlp_list",
    "strictly_increasing",
    "uint",
    "uint_bytes",
]

MAX_UINT64 = 2**64 - 1
MAX_UINT256 = 2**256 - 1

RLPItem: TypeAlias = bytes | list["RLPItem"]
"""What RLP decodes to: a byte string or a list of items."""

_Key = TypeVar("_Key", bytes, int)
_MAX_DEPTH = 16


class EncodingError(ValueError):
    """Bytes (or field values) that are not the canonical encoding of a DLE message."""


class MalformedRLPError(EncodingError):
    """Not RLP at all, truncated, nested too deeply, or RLP in a non-shortest form."""


class TrailingBytesError(EncodingError):
    """Valid RLP followed by bytes that belong to no item."""


class FieldCountError(EncodingError):
    """A list with the wrong number of fields."""


class FieldTypeError(EncodingError):
    """A list where a byte string belongs, or a byte string where a list belongs."""


class FieldLengthError(EncodingError):
    """A fixed-size field (address, hash, signature) of the wrong size."""


class IntegerError(EncodingError):
    """An integer with leading zero bytes, or out of its field's range."""


class NonCanonicalError(EncodingError):
    """Well-formed fields in a non-canonical arrangement (unsorted, duplicated, zero where absent is meant)."""


def uint_bytes(value: int) -> bytes:
    """An integer as RLP carries it: big-endian without leading zeros, zero as the empty string."""
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def encode_rlp(item: RLPItem) -> bytes:
    """RLP of `item` (the bytes `rlp.encode` makes, without its type inference: a root encodes many nodes)."""
    if isinstance(item, bytes):
        if len(item) == 1 and item[0] < 0x80:
            return item
        return _length_prefix(len(item), 0x80) + item
    if isinstance(item, list):
        payload = b"".join([encode_rlp(child) for child in item])
        return _length_prefix(len(payload), 0xC0) + payload
    raise TypeError(f"RLP encodes bytes and lists, not {type(item).__name__}")


def encode_rlp_list(encoded_items: Sequence[bytes]) -> bytes:
    """RLP of a list whose items are already RLP-encoded (`encode_rlp([a, b]) ==
    encode_rlp_list([encode_rlp(a), encode_rlp(b)])`): objects that cache their own encoding are
    embedded without encoding their fields again."""
    payload = b"".join(encoded_items)
    return _length_prefix(len(payload), 0xC0) + payload


def list_item_encodings(data: bytes) -> list[bytes]:
    """The encodings of the items of the RLP list `data`, which `decode_rlp` has already accepted
    (so it is canonical and well formed: this only finds where each item starts and ends). A decoder
    keeps them as the decoded objects' own encodings instead of encoding the objects again."""
    prefix = data[0]
    position = 1 if prefix <= 0xF7 else 1 + prefix - 0xF7
    items: list[bytes] = []
    while position < len(data):
        start, first = position, data[position]
        if first < 0x80:
            position += 1
        elif first <= 0xB7:
            position += 1 + first - 0x80
        elif first <= 0xBF:
            size = first - 0xB7
            position += 1 + size + int.from_bytes(data[position + 1 : position + 1 + size], "big")
        elif first <= 0xF7:
            position += 1 + first - 0xC0
        else:
            size = first - 0xF7
            position += 1 + size + int.from_bytes(data[position + 1 : position + 1 + size], "big")
        items.append(data[start:position])
    return items


def _length_prefix(length: int, offset: int) -> bytes:
    if length < 56:
        return bytes([offset + length])
    size = uint_bytes(length)
    return bytes([offset + 55 + len(size)]) + size


def decode_rlp(data: bytes) -> RLPItem:
    """The single RLP item `data` holds, refusing anything but its canonical encoding."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedRLPError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    item, end = _decode_item(data, 0, len(data), 0)
    if end != len(data):
        raise TrailingBytesError(f"{len(data) - end} bytes after the RLP item")
    return item


def _decode_item(data: bytes, start: int, limit: int, depth: int) -> tuple[RLPItem, int]:
    """The item at `start`, which must end by `limit` (its parent's end), and where the next begins."""
    if start >= limit:
        raise MalformedRLPError("truncated RLP")
    prefix = data[start]
    if prefix < 0x80:
        return data[start : start + 1], start + 1
    if prefix <= 0xB7:
        begin, length = start + 1, prefix - 0x80
        if length == 1 and begin < limit and data[begin] < 0x80:
            raise MalformedRLPError("a single byte below 0x80 must be encoded as itself")
    elif prefix <= 0xBF:
        begin, length = _long_length(data, start, prefix - 0xB7, limit)
    elif prefix <= 0xF7:
        begin, length = start + 1, prefix - 0xC0
    else:
        begin, length = _long_length(data, start, prefix - 0xF7, limit)
    end = begin + length
    if end > limit:
        raise MalformedRLPError("truncated RLP")
    if prefix <= 0xBF:
        return data[begin:end], end
    if depth >= _MAX_DEPTH:
        # DLE messages nest four lists deep; a bound keeps crafted input from exhausting the stack.
        raise MalformedRLPError(f"RLP lists nested deeper than {_MAX_DEPTH}")
    items: list[RLPItem] = []
    position = begin
    while position < end:
        item, position = _decode_item(data, position, end, depth + 1)
        items.append(item)
    return items, end


def _long_length(data: bytes, start: int, size: int, limit: int) -> tuple[int, int]:
    """(payload start, payload length) of a long-form prefix whose length takes `size` bytes."""
    begin = start + 1 + size
    if begin > limit:
        raise MalformedRLPError("truncated RLP")
    if data[start + 1] == 0:
        raise MalformedRLPError("RLP length with a leading zero byte")
    length = int.from_bytes(data[start + 1 : begin], "big")
    if length < 56:
        raise MalformedRLPError("RLP long form used for a length below 56")
    return begin, length


def rlp_list(item: RLPItem, count: int, what: str) -> list[RLPItem]:
    """`item` as a list of exactly `count` fields."""
    if not isinstance(item, list):
        raise FieldTypeError(f"{what}: expected a list of {count} fields, got a byte string")
    if len(item) != count:
        raise FieldCountError(f"{what}: expected {count} fields, got {len(item)}")
    return item


def list_of(item: RLPItem, what: str) -> list[RLPItem]:
    """`item` as a list of any length."""
    if not isinstance(item, list):
        raise FieldTypeError(f"{what}: expected a list, got a byte string")
    return item


def raw_bytes(item: RLPItem, what: str) -> bytes:
    """`item` as a byte string of any length."""
    if not isinstance(item, bytes):
        raise FieldTypeError(f"{what}: expected a byte string, got a list")
    return item


def fixed_bytes(item: RLPItem, size: int, what: str) -> bytes:
    """`item` as a byte string of exactly `size` bytes."""
    value = raw_bytes(item, what)
    check_length(value, size, what)
    return value


def uint(item: RLPItem, what: str, maximum: int = MAX_UINT256) -> int:
    """`item` as an unsigned integer: big-endian, no leading zeros, zero as the empty string."""
    value = raw_bytes(item, what)
    if value[:1] == b"\x00":
        raise IntegerError(f"{what}: integer with a leading zero byte")
    number = int.from_bytes(value, "big")
    check_uint(number, what, maximum)
    return number


def check_length(value: bytes, size: int, what: str) -> None:
    """Refuse a fixed-size field of another size (constructors share this with decoders)."""
    if not isinstance(value, bytes):
        raise FieldTypeError(f"{what}: expected bytes, got {type(value).__name__}")
    if len(value) != size:
        raise FieldLengthError(f"{what}: expected {size} bytes, got {len(value)}")


def check_uint(value: int, what: str, maximum: int = MAX_UINT256) -> None:
    """Refuse an integer outside 0..maximum (bool is refused: it is no integer on the wire)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise IntegerError(f"{what}: expected an integer, got {type(value).__name__}")
    if not 0 <= value <= maximum:
        raise IntegerError(f"{what}: {value} is outside 0..{maximum}")


def check_bytes(value: bytes, what: str) -> None:
    """Refuse a variable-size field that is not bytes."""
    if not isinstance(value, bytes):
        raise FieldTypeError(f"{what}: expected bytes, got {type(value).__name__}")


def strictly_increasing(keys: Sequence[_Key], what: str) -> None:
    """Refuse keys that are unsorted or repeated: a canonical encoding lists each key once, in order."""
    for before, after in pairwise(keys):
        if not before < after:
            raise NonCanonicalError(f"{what}: keys must be strictly increasing")
