"""A DLE transaction: one message call into the chain's program, signed by its sender.

    rlp([chain_id (32 bytes), nonce (uint64), to (20 bytes), data (bytes), gas_limit (uint64),
         signature (65 bytes, or empty for a system transaction)])
    hash = keccak256(rlp(transaction))

The sender is not written down: it is recovered from the signature over the EIP-712 digest of

    DleTransaction(bytes32 chain,uint64 nonce,address to,bytes data,uint64 gasLimit)

in the domain {name: "CoNET DLE", version: "1"} (`signing_digest`). The digest binds the chain id (a
transaction signed for one chain is no transaction of another), the sender's nonce (each nonce is
used once, in order: `dle_vm.engine.apply_transactions`) and the whole call, so a node that relays a
transaction can neither change it nor make one in anybody else's name.

A *system transaction* has no signature and its sender is `SYSTEM_SENDER`, an address nobody holds a
key for. It is how the protocol itself calls the program's privileged functions (a re-fund the
mainchain ordered, a witness replaced by a certified role change): no key carries that authority, so
its proof is checked instead, by every member and every archive node against its own view
(`offchain/dle/authority.py`). A system transaction's nonce is 0 and no account's nonce moves for it.

There is no value field (DLE chains have no native coin: every call carries value 0). Executing a
transaction does not change the sender's account beyond its nonce (no fee: there is no coin).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

from dle_vm.encoding import (
    MAX_UINT64,
    EncodingError,
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
from dle_vm.signature import SIGNATURE_SIZE, BadSignature, recover, sign

__all__ = [
    "ADDRESS_SIZE",
    "DOMAIN_SEPARATOR",
    "SYSTEM_SENDER",
    "TRANSACTION_TYPEHASH",
    "Call",
    "Message",
    "Transaction",
    "signing_digest",
]

ADDRESS_SIZE = 20
_CHAIN_SIZE = 32
_FIELDS = 6

SYSTEM_SENDER = keccak(b"CoNET DLE system transaction")[12:]
"""The sender of every system transaction: a hash, so nobody holds its key and no signature recovers it."""

DOMAIN_SEPARATOR = keccak(keccak(b"EIP712Domain(string name,string version)") + keccak(b"CoNET DLE") + keccak(b"1"))
"""EIP-712 domain of DLE transactions; the chain is in the struct, so one domain serves every chain."""

TRANSACTION_TYPEHASH = keccak(b"DleTransaction(bytes32 chain,uint64 nonce,address to,bytes data,uint64 gasLimit)")


_SENDERS: dict[bytes, bytes] = {}
"""Recovered senders by transaction encoding, oldest first (bounded: `_SENDERS_KEPT`)."""
_SENDERS_KEPT = 65_536


class Call(Protocol):
    """What an engine executes: a message call from `sender` to `to` (a `Transaction` or a `Message`)."""

    @property
    def sender(self) -> bytes: ...

    @property
    def to(self) -> bytes: ...

    @property
    def data(self) -> bytes: ...

    @property
    def gas_limit(self) -> int: ...


@dataclass(frozen=True)
class Message:
    """An unsigned call, for views and engine tests: never part of a block (blocks carry `Transaction`s)."""

    sender: bytes
    to: bytes
    data: bytes
    gas_limit: int

    def __post_init__(self) -> None:
        check_length(self.sender, ADDRESS_SIZE, "message sender")
        check_length(self.to, ADDRESS_SIZE, "message to")
        check_bytes(self.data, "message data")
        check_uint(self.gas_limit, "message gas_limit", MAX_UINT64)


def signing_digest(chain_id: bytes, nonce: int, to: bytes, data: bytes, gas_limit: int) -> bytes:
    """The EIP-712 digest a sender signs (the module docstring)."""
    struct_hash = keccak(
        TRANSACTION_TYPEHASH
        + chain_id
        + nonce.to_bytes(32, "big")
        + bytes(12)
        + to
        + keccak(data)
        + gas_limit.to_bytes(32, "big")
    )
    return keccak(b"\x19\x01" + DOMAIN_SEPARATOR + struct_hash)


@dataclass(frozen=True)
class Transaction:
    """A call to `to` with calldata `data` on chain `chain_id`, allowed to burn at most `gas_limit` gas,
    signed by its sender (or a system transaction: empty `signature`, nonce 0).

    `gas_limit` includes the intrinsic cost (21,000 plus 16 per non-zero and 4 per zero byte of
    `data`), exactly as on Ethereum.
    """

    chain_id: bytes
    nonce: int
    to: bytes
    data: bytes
    gas_limit: int
    signature: bytes

    def __post_init__(self) -> None:
        check_length(self.chain_id, _CHAIN_SIZE, "transaction chain_id")
        check_uint(self.nonce, "transaction nonce", MAX_UINT64)
        check_length(self.to, ADDRESS_SIZE, "transaction to")
        check_bytes(self.data, "transaction data")
        check_uint(self.gas_limit, "transaction gas_limit", MAX_UINT64)
        check_bytes(self.signature, "transaction signature")
        if self.signature:
            check_length(self.signature, SIGNATURE_SIZE, "transaction signature")
        elif self.nonce:
            raise EncodingError("a system transaction (no signature) has nonce 0")

    @classmethod
    def signed(cls, secret: bytes, chain_id: bytes, nonce: int, to: bytes, data: bytes, gas_limit: int) -> Transaction:
        """The transaction `secret`'s owner sends with `nonce` on `chain_id`."""
        digest = signing_digest(chain_id, nonce, to, data, gas_limit)
        return cls(chain_id, nonce, to, data, gas_limit, sign(secret, digest))

    @classmethod
    def system(cls, chain_id: bytes, to: bytes, data: bytes, gas_limit: int) -> Transaction:
        """A system transaction (sender `SYSTEM_SENDER`): valid only with the proof nodes check for it."""
        return cls(chain_id, 0, to, data, gas_limit, b"")

    @property
    def is_system(self) -> bool:
        return not self.signature

    @cached_property
    def digest(self) -> bytes:
        """What the sender signed."""
        return signing_digest(self.chain_id, self.nonce, self.to, self.data, self.gas_limit)

    @cached_property
    def sender(self) -> bytes:
        """The signer (`SYSTEM_SENDER` for a system transaction); `BadSignature` when none recovers.

        A node decodes one transaction several times (in the proposal, the final block, the store), and
        the sender is a pure function of the encoding: it is recovered once per process and encoding
        (`_SENDERS`), and a signature that recovers nothing is never remembered."""
        if not self.signature:
            return SYSTEM_SENDER
        encoded = self._encoded
        known = _SENDERS.get(encoded)
        if known is None:
            known = recover(self.digest, self.signature)
            if len(_SENDERS) >= _SENDERS_KEPT:
                _SENDERS.pop(next(iter(_SENDERS)))
            _SENDERS[encoded] = known
        return known

    def sender_or_none(self) -> bytes | None:
        """The sender, or None when the signature recovers no key."""
        try:
            return self.sender
        except BadSignature:
            return None

    def to_rlp(self) -> list[RLPItem]:
        """The RLP structure (a list of six fields) that `encode()` serialises."""
        return [self.chain_id, uint_bytes(self.nonce), self.to, self.data, uint_bytes(self.gas_limit), self.signature]

    @classmethod
    def from_rlp(cls, item: RLPItem) -> Transaction:
        """The transaction in an already decoded RLP structure (a block's transaction list)."""
        chain_id, nonce, to, data, gas_limit, signature = rlp_list(item, _FIELDS, "transaction")
        signature_bytes = raw_bytes(signature, "transaction signature")
        if signature_bytes:
            signature_bytes = fixed_bytes(signature, SIGNATURE_SIZE, "transaction signature")
        return cls(
            chain_id=fixed_bytes(chain_id, _CHAIN_SIZE, "transaction chain_id"),
            nonce=uint(nonce, "transaction nonce", MAX_UINT64),
            to=fixed_bytes(to, ADDRESS_SIZE, "transaction to"),
            data=raw_bytes(data, "transaction data"),
            gas_limit=uint(gas_limit, "transaction gas_limit", MAX_UINT64),
            signature=signature_bytes,
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
