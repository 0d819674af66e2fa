"""A DLE transaction: one message call into the chain's program.

    rlp([sender (20 bytes), to (20 bytes), data (bytes), gas_limit (uint64)])
    hash = keccak256(rlp(transaction))

There is no value field (DLE chains have no native coin: every call carries value 0), no nonce and no
signature: a transaction is authorised by the block's signatures and, where a holder must consent, by
a signature the program itself checks inside `data`. Executing a transaction does not change the
sender's account (no nonce increment, no fee), so the senders of a chain never enter its state.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from dle_vm.encoding import (
    MAX_UINT64,
    RLPItem,
    check_bytes,
    check_length,
    check_uint,
    decode_rlp,
    encode_rlp,
    fixed_bytes,
    raw_bytes,
    rlp_list,
    uint,
    uint_bytes,
)
from dle_vm.hashing import keccak

__all__ = ["ADDRESS_SIZE", "Transaction"]

ADDRESS_SIZE = 20
_FIELDS = 4


@dataclass(frozen=True)
class Transaction:
    """A call from `sender` to `to` with calldata `data`, allowed to burn at most `gas_limit` gas.

    `gas_limit` includes the intrinsic cost (21,000 plus 16 per non-zero and 4 per zero byte of
    `data`), exactly as on Ethereum.
    """

    sender: bytes
    to: bytes
    data: bytes
    gas_limit: int

    def __post_init__(self) -> None:
        check_length(self.sender, ADDRESS_SIZE, "transaction sender")
        check_length(self.to, ADDRESS_SIZE, "transaction to")
        check_bytes(self.data, "transaction data")
        check_uint(self.gas_limit, "transaction gas_limit", MAX_UINT64)

    def to_rlp(self) -> list[RLPItem]:
        """The RLP structure (a list of four fields) that `encode()` serialises."""
        return [self.sender, self.to, self.data, uint_bytes(self.gas_limit)]

    @classmethod
    def from_rlp(cls, item: RLPItem) -> Transaction:
        """The transaction in an already decoded RLP structure (a block's transaction list)."""
        sender, to, data, gas_limit = rlp_list(item, _FIELDS, "transaction")
        return cls(
            sender=fixed_bytes(sender, ADDRESS_SIZE, "transaction sender"),
            to=fixed_bytes(to, ADDRESS_SIZE, "transaction to"),
            data=raw_bytes(data, "transaction data"),
            gas_limit=uint(gas_limit, "transaction gas_limit", MAX_UINT64),
        )

    def encode(self) -> bytes:
        """The canonical encoding."""
        return self._encoded

    @classmethod
    def decode(cls, data: bytes) -> Transaction:
        """The transaction `data` encodes; any other bytes raise an `EncodingError`."""
        return cls.from_rlp(decode_rlp(data))

    @cached_property
    def _encoded(self) -> bytes:
        return encode_rlp(self.to_rlp())

    @cached_property
    def hash(self) -> bytes:
        """keccak256 of the encoding."""
        return keccak(self._encoded)
