"""The state of one DLE chain: its accounts (the program, and anything the program creates).

    state = rlp([[address (20 bytes), nonce, balance, code, [[slot, value], ...]], ...])

Accounts are listed in ascending address order and slots in ascending slot order; zero storage values
and empty accounts (nonce 0, balance 0, no code, no storage) are absent, exactly as they are absent
from the state root. Integers are RLP's big-endian without leading zeros. So every state has one
encoding, and a validator that receives the pre-state with a block can check it against the parent
header's state root before executing.

The state root is Ethereum's: the Merkle-Patricia trie root of keccak256(address) →
rlp([nonce, balance, storage_root, keccak256(code)]), each storage root the trie root of
keccak256(slot as 32 bytes) → rlp(value). Both engines produce a `State` and the root is computed
from it here, so the engines agree on the root exactly when they agree on the contents; and the root
is what any Ethereum tool computes for the same accounts, which lets a holder prove one storage slot
(its balance) against a signed header with an ordinary Merkle proof.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property, lru_cache
from types import MappingProxyType

from dle_vm.encoding import (
    MAX_UINT64,
    MAX_UINT256,
    NonCanonicalError,
    RLPItem,
    check_bytes,
    check_length,
    check_uint,
    decode_rlp,
    encode_rlp,
    fixed_bytes,
    list_of,
    raw_bytes,
    rlp_list,
    strictly_increasing,
    uint,
    uint_bytes,
)
from dle_vm.hashing import keccak
from dle_vm.mpt import EMPTY_TRIE_ROOT, trie_root
from dle_vm.transaction import ADDRESS_SIZE

__all__ = ["EMPTY_CODE_HASH", "EMPTY_TRIE_ROOT", "Account", "State"]

EMPTY_CODE_HASH = keccak(b"")
_ACCOUNT_FIELDS = 5
_SLOT_FIELDS = 2


@dataclass(frozen=True)
class Account:
    """One account: nonce, balance, code and non-zero storage slots.

    Balances exist because the account format is Ethereum's; DLE chains carry no native value, so they
    stay zero unless a genesis sets them.
    """

    nonce: int = 0
    balance: int = 0
    code: bytes = b""
    storage: Mapping[int, int] = field(default_factory=dict)
    """slot → value; zero values are dropped on construction (a zero slot is an absent slot)."""

    def __post_init__(self) -> None:
        check_uint(self.nonce, "account nonce", MAX_UINT64)
        check_uint(self.balance, "account balance", MAX_UINT256)
        check_bytes(self.code, "account code")
        storage: dict[int, int] = {}
        for slot, value in self.storage.items():
            # Inline range checks: engines build an account per changed account per transaction.
            if not (type(slot) is int and 0 <= slot <= MAX_UINT256):
                check_uint(slot, "storage slot", MAX_UINT256)
            if not (type(value) is int and 0 <= value <= MAX_UINT256):
                check_uint(value, "storage value", MAX_UINT256)
            if value:
                storage[slot] = value
        # A private copy behind a read-only view: nobody can change a state after its root was taken.
        object.__setattr__(self, "storage", MappingProxyType(storage))

    def __hash__(self) -> int:
        return hash(self.to_rlp_bytes())

    @property
    def is_empty(self) -> bool:
        """No nonce, balance, code or storage: such an account is not part of the state (EIP-161)."""
        return not (self.nonce or self.balance or self.code or self.storage)

    @property
    def code_hash(self) -> bytes:
        """keccak256 of the code."""
        return _code_hash(self.code)

    @cached_property
    def storage_root(self) -> bytes:
        """The Merkle-Patricia root of the storage."""
        if not self.storage:
            return EMPTY_TRIE_ROOT
        return _storage_root(frozenset(self.storage.items()))

    def trie_value(self) -> bytes:
        """The account as the state trie holds it: rlp([nonce, balance, storage_root, code_hash])."""
        return encode_rlp([uint_bytes(self.nonce), uint_bytes(self.balance), self.storage_root, self.code_hash])

    def with_storage(self, changes: Mapping[int, int]) -> Account:
        """The account with `changes` written to its storage (a zero value deletes the slot)."""
        return replace(self, storage={**self.storage, **changes})

    def to_rlp_bytes(self) -> bytes:
        """The account's fields in the state encoding, without its address."""
        return encode_rlp(self._fields())

    def _fields(self) -> list[RLPItem]:
        return [
            uint_bytes(self.nonce),
            uint_bytes(self.balance),
            self.code,
            [[uint_bytes(slot), uint_bytes(self.storage[slot])] for slot in sorted(self.storage)],
        ]


@dataclass(frozen=True)
class State:
    """The accounts of one chain, by 20-byte address. Empty accounts are dropped on construction."""

    accounts: Mapping[bytes, Account] = field(default_factory=dict)

    def __post_init__(self) -> None:
        accounts: dict[bytes, Account] = {}
        for address, account in self.accounts.items():
            check_length(address, ADDRESS_SIZE, "account address")
            if not isinstance(account, Account):
                raise TypeError("state accounts must be Account values")
            if not account.is_empty:
                accounts[address] = account
        object.__setattr__(self, "accounts", MappingProxyType(accounts))

    def __hash__(self) -> int:
        return hash(self.root)

    def __getitem__(self, address: bytes) -> Account:
        """The account at `address` (an empty one where there is none)."""
        return self.accounts.get(address, _EMPTY_ACCOUNT)

    def storage_at(self, address: bytes, slot: int) -> int:
        """The value of one storage slot (0 where unset)."""
        return self[address].storage.get(slot, 0)

    def with_accounts(self, accounts: Mapping[bytes, Account]) -> State:
        """The state with `accounts` replacing (or adding) the accounts at their addresses."""
        return State({**self.accounts, **accounts})

    @cached_property
    def root(self) -> bytes:
        """The Ethereum state root of these accounts."""
        return trie_root({keccak(address): account.trie_value() for address, account in self.accounts.items()})

    def to_rlp(self) -> list[RLPItem]:
        """The RLP structure that `encode()` serialises."""
        return [[address, *self.accounts[address]._fields()] for address in sorted(self.accounts)]

    def encode(self) -> bytes:
        """The canonical encoding."""
        return self._encoded

    @cached_property
    def _encoded(self) -> bytes:
        # A state is immutable; it is encoded for the store and for every validation request.
        return encode_rlp(self.to_rlp())

    @classmethod
    def decode(cls, data: bytes) -> State:
        """The state `data` encodes; any other bytes raise an `EncodingError`."""
        return cls.from_rlp(decode_rlp(data))

    @classmethod
    def from_rlp(cls, item: RLPItem) -> State:
        """The state in an already decoded RLP structure."""
        accounts: dict[bytes, Account] = {}
        addresses: list[bytes] = []
        for entry in list_of(item, "state"):
            address_item, nonce, balance, code, storage_item = rlp_list(entry, _ACCOUNT_FIELDS, "account")
            address = fixed_bytes(address_item, ADDRESS_SIZE, "account address")
            storage = _decode_storage(storage_item)
            account = Account(
                nonce=uint(nonce, "account nonce", MAX_UINT64),
                balance=uint(balance, "account balance", MAX_UINT256),
                code=raw_bytes(code, "account code"),
                storage=storage,
            )
            if account.is_empty:
                raise NonCanonicalError("state: an empty account is listed")
            addresses.append(address)
            accounts[address] = account
        strictly_increasing(addresses, "state accounts")
        return cls(accounts)


def _decode_storage(item: RLPItem) -> dict[int, int]:
    storage: dict[int, int] = {}
    slots: list[int] = []
    for entry in list_of(item, "account storage"):
        slot_item, value_item = rlp_list(entry, _SLOT_FIELDS, "storage slot")
        slot = uint(slot_item, "storage slot", MAX_UINT256)
        value = uint(value_item, "storage value", MAX_UINT256)
        if value == 0:
            raise NonCanonicalError("account storage: a zero value is listed")
        slots.append(slot)
        storage[slot] = value
    strictly_increasing(slots, "account storage")
    return storage


@lru_cache(maxsize=8192)
def _storage_root(storage: frozenset[tuple[int, int]]) -> bytes:
    # A pure function of the slots, memoised: the same storage is rebuilt many times over — every
    # member re-executes the same block, and every read of a stored state re-checks its root — while
    # the trie costs ~0.5 ms in Python. A different storage (a wrong execution, a damaged copy) is a
    # different key, so it is computed and checked like before; only exact repeats are answered here.
    return trie_root({_slot_key(slot): encode_rlp(uint_bytes(value)) for slot, value in storage})


@lru_cache(maxsize=65536)
def _slot_key(slot: int) -> bytes:
    # A program's slots recur in every state of its chain: hash each one once.
    return keccak(slot.to_bytes(32, "big"))


@lru_cache(maxsize=1024)
def _code_hash(code: bytes) -> bytes:
    # A chain's code changes rarely while accounts are rebuilt every transaction; bytes cache their
    # own hash, so a hit costs a dictionary lookup instead of hashing kilobytes of code.
    return keccak(code)


_EMPTY_ACCOUNT = Account()
