"""keccak256, the one hash of DLE encodings and state roots.

Roots hash every trie node of a state for every block, so this binds the fastest Keccak available:
safe-pysha3's C implementation (under a microsecond for a trie node; eth-hash's dispatch costs ~5 µs).
"""

from __future__ import annotations

import sha3

__all__ = ["keccak"]


def keccak(data: bytes) -> bytes:
    """keccak256 of `data` (Ethereum's Keccak, not NIST SHA3-256)."""
    digest: bytes = sha3.keccak_256(data).digest()
    return digest
