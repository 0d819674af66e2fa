"""Headers and blocks of a DLE chain.

    header = rlp([chain_id (32 bytes), height (uint64), parent_hash (32), state_root (32),
                  transactions_root (32), timestamp (uint64, seconds), poh_tick (uint64),
                  group_id (uint256)])
    header hash = keccak256(header)
    block = rlp([header fields, [transaction fields, ...], [signature (65 bytes), ...]])
    transactions_root = keccak256(rlp([transaction fields, ...]))

The transactions root is the hash of the block's own transaction list exactly as it is encoded inside
the block (a plain list needs no Merkle-Patricia trie: nobody proves one transaction out of a block of
a few). Signatures are not part of the header hash, so members sign the same header and a block
gathers signatures without changing its identity.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import cached_property

from dle_vm.encoding import (
    MAX_UINT64,
    MAX_UINT256,
    EncodingError,
    RLPItem,
    check_length,
    check_uint,
    decode_rlp,
    encode_rlp,
    encode_rlp_list,
    fixed_bytes,
    list_item_encodings,
    list_of,
    rlp_list,
    uint,
    uint_bytes,
)
from dle_vm.hashing import keccak
from dle_vm.signature import SIGNATURE_SIZE, recover
from dle_vm.transaction import Transaction

__all__ = ["HASH_SIZE", "Block", "Header", "TransactionsRootError", "transactions_root"]

HASH_SIZE = 32
_HEADER_FIELDS = 8
_BLOCK_FIELDS = 3


class TransactionsRootError(EncodingError):
    """A block whose header does not commit to the transactions it carries."""


def transactions_root(transactions: Iterable[Transaction]) -> bytes:
    """keccak256 of the RLP list of the transactions (keccak256(0xc0) for none)."""
    return keccak(_transactions_rlp(transactions))


def _transactions_rlp(transactions: Iterable[Transaction]) -> bytes:
    # Each transaction caches its own encoding; blocks are built and decoded many times per round.
    return encode_rlp_list([tx.encode() for tx in transactions])


@dataclass(frozen=True)
class Header:
    """What a block's signers commit to."""

    chain_id: bytes
    """The chain's 32-byte id (the mainchain derives it from the asset: `DleChainId.compute`)."""
    height: int
    """0 for the genesis block, then +1 per block."""
    parent_hash: bytes
    """Hash of the previous header; 32 zero bytes in the genesis block."""
    state_root: bytes
    """`State.root` after executing this block's transactions."""
    transactions_root: bytes
    timestamp: int
    """Unix seconds; what the program reads as `block.timestamp`."""
    poh_tick: int
    """The archive node's Proof-of-History tick that stamped this block."""
    group_id: int
    """The archive group the chain belongs to."""

    def __post_init__(self) -> None:
        check_length(self.chain_id, HASH_SIZE, "header chain_id")
        check_uint(self.height, "header height", MAX_UINT64)
        check_length(self.parent_hash, HASH_SIZE, "header parent_hash")
        check_length(self.state_root, HASH_SIZE, "header state_root")
        check_length(self.transactions_root, HASH_SIZE, "header transactions_root")
        check_uint(self.timestamp, "header timestamp", MAX_UINT64)
        check_uint(self.poh_tick, "header poh_tick", MAX_UINT64)
        check_uint(self.group_id, "header group_id", MAX_UINT256)

    def to_rlp(self) -> list[RLPItem]:
        """The RLP structure (a list of eight fields) that `encode()` serialises."""
        return [
            self.chain_id,
            uint_bytes(self.height),
            self.parent_hash,
            self.state_root,
            self.transactions_root,
            uint_bytes(self.timestamp),
            uint_bytes(self.poh_tick),
            uint_bytes(self.group_id),
        ]

    @classmethod
    def from_rlp(cls, item: RLPItem) -> Header:
        """The header in an already decoded RLP structure."""
        fields = rlp_list(item, _HEADER_FIELDS, "header")
        return cls(
            chain_id=fixed_bytes(fields[0], HASH_SIZE, "header chain_id"),
            height=uint(fields[1], "header height", MAX_UINT64),
            parent_hash=fixed_bytes(fields[2], HASH_SIZE, "header parent_hash"),
            state_root=fixed_bytes(fields[3], HASH_SIZE, "header state_root"),
            transactions_root=fixed_bytes(fields[4], HASH_SIZE, "header transactions_root"),
            timestamp=uint(fields[5], "header timestamp", MAX_UINT64),
            poh_tick=uint(fields[6], "header poh_tick", MAX_UINT64),
            group_id=uint(fields[7], "header group_id", MAX_UINT256),
        )

    def encode(self) -> bytes:
        """The canonical encoding."""
        return self._encoded

    @classmethod
    def decode(cls, data: bytes) -> Header:
        """The header `data` encodes; any other bytes raise an `EncodingError`."""
        return cls.from_rlp(decode_rlp(data))

    @cached_property
    def _encoded(self) -> bytes:
        return encode_rlp(self.to_rlp())

    @cached_property
    def hash(self) -> bytes:
        """keccak256 of the encoding: the block's identity."""
        return keccak(self._encoded)


@dataclass(frozen=True)
class Block:
    """A header, the transactions it commits to, and the members' signatures over it."""

    header: Header
    transactions: tuple[Transaction, ...]
    signatures: tuple[bytes, ...] = ()
    """65-byte r ‖ s ‖ v signatures (`dle_vm.signature`), in the order the members gave them."""

    def __post_init__(self) -> None:
        if not isinstance(self.header, Header):
            raise TypeError("a block's header must be a Header")
        if not isinstance(self.transactions, tuple) or not all(isinstance(tx, Transaction) for tx in self.transactions):
            raise TypeError("a block's transactions must be a tuple of Transaction")
        if not isinstance(self.signatures, tuple):
            raise TypeError("a block's signatures must be a tuple of bytes")
        for signature in self.signatures:
            check_length(signature, SIGNATURE_SIZE, "block signature")
        if transactions_root(self.transactions) != self.header.transactions_root:
            raise TransactionsRootError("the header's transactions_root does not match the block's transactions")

    @property
    def hash(self) -> bytes:
        """The header hash (signatures are not part of it)."""
        return self.header.hash

    def with_signatures(self, signatures: Iterable[bytes]) -> Block:
        """The same block carrying `signatures` instead of its own."""
        return replace(self, signatures=tuple(signatures))

    def signers(self, digest: bytes | None = None) -> tuple[bytes, ...]:
        """The address behind each signature, in order, over `digest` (by default the header hash).

        Raises `BadSignature` for the first signature that is malformed or recovers no key.
        """
        message = self.header.hash if digest is None else digest
        return tuple(recover(message, signature) for signature in self.signatures)

    def to_rlp(self) -> list[RLPItem]:
        """The RLP structure that `encode()` serialises."""
        return [self.header.to_rlp(), [tx.to_rlp() for tx in self.transactions], list(self.signatures)]

    def encode(self) -> bytes:
        """The canonical encoding."""
        return self._encoded

    @cached_property
    def _encoded(self) -> bytes:
        # A block is immutable and sent to every member, archive node and store: encode it once.
        return encode_rlp_list(
            [self.header.encode(), _transactions_rlp(self.transactions), encode_rlp(list(self.signatures))]
        )

    @classmethod
    def decode(cls, data: bytes) -> Block:
        """The block `data` encodes; any other bytes raise an `EncodingError`."""
        header_item, transactions, signatures = rlp_list(decode_rlp(data), _BLOCK_FIELDS, "block")
        header = Header.from_rlp(header_item)
        txs = tuple(Transaction.from_rlp(tx) for tx in list_of(transactions, "block transactions"))
        # The input is canonical (decode_rlp and the field decoders refuse anything else), so each part's
        # bytes are exactly its encoding: keep them rather than encode the header and every transaction
        # again for the header hash and the transactions root (every member decodes every block).
        header_bytes, transactions_bytes, _ = list_item_encodings(bytes(data))
        header.__dict__["_encoded"] = header_bytes
        for tx, encoded in zip(txs, list_item_encodings(transactions_bytes), strict=True):
            tx.__dict__["_encoded"] = encoded
        return cls(
            header=header,
            transactions=txs,
            signatures=tuple(
                fixed_bytes(signature, SIGNATURE_SIZE, "block signature")
                for signature in list_of(signatures, "block signatures")
            ),
        )
