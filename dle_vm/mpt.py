"""The root hash of Ethereum's hexary Merkle-Patricia trie, computed in one pass from a whole mapping.

A DLE state is small and rebuilt per block, so the root is computed from the sorted items instead of
by inserting them one by one into a node database (`trie.HexaryTrie` takes 7 times as long for this,
and the tests hold the two equal). Nodes follow the Yellow Paper, appendix D: leaves and extensions
carry a hex-prefix encoded path, a branch has 16 children and a value, and a child whose RLP is
shorter than 32 bytes is embedded instead of referenced by its keccak256.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from dle_vm.encoding import RLPItem, encode_rlp
from dle_vm.hashing import keccak

__all__ = ["EMPTY_TRIE_ROOT", "trie_root"]

EMPTY_TRIE_ROOT = keccak(encode_rlp(b""))
"""Root of the empty trie: 0x56e81f…b421."""

_Items = Sequence[tuple[bytes, bytes]]
"""(key as nibbles — one byte per nibble —, value), sorted by key."""


def trie_root(items: Mapping[bytes, bytes]) -> bytes:
    """The root hash of a trie mapping each key to its value (values must be non-empty)."""
    if not items:
        return EMPTY_TRIE_ROOT
    nibbled = sorted((_nibbles(key), value) for key, value in items.items())
    return keccak(encode_rlp(_node(nibbled, 0)))


_HEX_TO_NIBBLE = bytes.maketrans(b"0123456789abcdef", bytes(range(16)))
_NIBBLE_TO_HEX = bytes.maketrans(bytes(range(16)), b"0123456789abcdef")


def _nibbles(key: bytes) -> bytes:
    return key.hex().encode("ascii").translate(_HEX_TO_NIBBLE)


def _hex_prefix(path: bytes, leaf: bool) -> bytes:
    # Packing nibble pairs goes through hex text (translate + fromhex, both in C): a per-nibble Python
    # loop was the trie's largest own cost, with 64-nibble leaf paths.
    flag = 2 if leaf else 0
    if len(path) % 2:
        return bytes.fromhex(f"{flag + 1:x}" + path.translate(_NIBBLE_TO_HEX).decode("ascii"))
    return bytes.fromhex(f"{flag:x}0" + path.translate(_NIBBLE_TO_HEX).decode("ascii"))


def _reference(node: RLPItem) -> RLPItem:
    """How a parent holds a child: inline when its RLP is under 32 bytes, else by hash."""
    encoded = encode_rlp(node)
    return node if len(encoded) < 32 else keccak(encoded)


def _common_prefix(a: bytes, b: bytes) -> int:
    length = min(len(a), len(b))
    for i in range(length):
        if a[i] != b[i]:
            return i
    return length


def _node(items: _Items, level: int) -> RLPItem:
    """The node holding `items` (at least one), whose keys agree on their first `level` nibbles."""
    if len(items) == 1:
        key, value = items[0]
        return [_hex_prefix(key[level:], leaf=True), value]
    # Keys are sorted, so the prefix all of them share is the one the first and last share.
    shared = _common_prefix(items[0][0][level:], items[-1][0][level:])
    if shared:
        return [_hex_prefix(items[0][0][level : level + shared], leaf=False), _reference(_node(items, level + shared))]
    branch: list[RLPItem] = [b""] * 17
    start = 0
    if len(items[0][0]) == level:
        # A key that ends here sorts first and becomes the branch's value.
        branch[16] = items[0][1]
        start = 1
    while start < len(items):
        nibble = items[start][0][level]
        end = start + 1
        while end < len(items) and items[end][0][level] == nibble:
            end += 1
        branch[nibble] = _reference(_node(items[start:end], level + 1))
        start = end
    return branch
