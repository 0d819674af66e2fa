"""The state of a DLE chain: canonical encoding, and a root that is Ethereum's state root."""

from __future__ import annotations

import random

import pytest
import rlp
from eth.db.account import AccountDB
from eth.db.atomic import AtomicDB
from eth_typing import Address
from hypothesis import given, settings
from hypothesis import strategies as st
from trie import HexaryTrie

from dle_vm.encoding import FieldCountError, NonCanonicalError
from dle_vm.mpt import EMPTY_TRIE_ROOT, trie_root
from dle_vm.state import Account, State

slots = st.one_of(st.integers(0, 10), st.integers(0, 2**256 - 1))
values = st.integers(0, 2**256 - 1)
accounts = st.builds(
    Account,
    nonce=st.integers(0, 2**64 - 1),
    balance=st.one_of(st.just(0), st.integers(0, 2**256 - 1)),
    code=st.binary(max_size=64),
    storage=st.dictionaries(slots, values, max_size=8),
)
states = st.builds(State, st.dictionaries(st.binary(min_size=20, max_size=20), accounts, max_size=5))

PROGRAM = b"\xd1" * 20


def program(storage: dict[int, int]) -> State:
    return State({PROGRAM: Account(nonce=1, code=b"\x60\x00", storage=storage)})


@given(states)
def test_state_round_trip(state: State) -> None:
    encoded = state.encode()
    assert State.decode(encoded) == state
    assert State.decode(encoded).encode() == encoded
    assert State.decode(encoded).root == state.root


@settings(max_examples=50, deadline=None)
@given(states)
def test_the_root_is_pyevms_state_root(state: State) -> None:
    db = AccountDB(AtomicDB())
    for address, account in state.accounts.items():
        db.set_nonce(Address(address), account.nonce)
        db.set_balance(Address(address), account.balance)
        db.set_code(Address(address), account.code)
        for slot, value in account.storage.items():
            db.set_storage(Address(address), slot, value)
    assert state.root == db.make_state_root()


@given(st.dictionaries(st.binary(max_size=4), st.binary(min_size=1, max_size=80), max_size=40))
def test_the_one_pass_trie_root_is_hexary_tries(items: dict[bytes, bytes]) -> None:
    trie = HexaryTrie({})
    for key, value in items.items():
        trie[key] = value
    assert trie_root(items) == trie.root_hash


def test_the_empty_state() -> None:
    assert (
        State().root
        == EMPTY_TRIE_ROOT
        == bytes.fromhex("56e81f171bcc55a6ff8345e692c0f86e5b48e01b996cadc001622fb5e363b421")
    )
    assert State().encode() == b"\xc0"
    # Empty accounts and zero slots are not part of a state.
    assert State({PROGRAM: Account()}) == State()
    assert program({1: 0}) == program({})


def test_the_root_changes_with_storage_and_not_with_insertion_order() -> None:
    storage = {slot: slot * 7 + 1 for slot in range(50)}
    base = program(storage)
    shuffled = list(storage.items())
    random.Random(4).shuffle(shuffled)
    assert program(dict(shuffled)).root == base.root
    assert program(dict(shuffled)).encode() == base.encode()
    assert program({**storage, 3: 5}).root != base.root
    assert program({**storage, 50: 1}).root != base.root
    assert program({**storage, 3: 0}).root != base.root
    assert base[PROGRAM].with_storage({3: 0}) == program({**storage, 3: 0})[PROGRAM]


def test_states_are_immutable() -> None:
    state = program({1: 2})
    with pytest.raises(TypeError):
        state.accounts[PROGRAM] = Account()  # type: ignore[index]
    with pytest.raises(TypeError):
        state[PROGRAM].storage[1] = 3  # type: ignore[index]


def entry(address: bytes, nonce: int = 1, storage: list[list[int]] | None = None) -> list[object]:
    return [address, nonce, 0, b"\x60\x00", storage or []]


@pytest.mark.parametrize(
    ("structure", "error"),
    [
        ([entry(b"\x02" * 20), entry(b"\x01" * 20)], NonCanonicalError),  # unsorted accounts
        ([entry(b"\x01" * 20), entry(b"\x01" * 20)], NonCanonicalError),  # repeated account
        ([[b"\x01" * 20, 0, 0, b"", []]], NonCanonicalError),  # an empty account
        ([entry(b"\x01" * 20, storage=[[2, 1], [1, 1]])], NonCanonicalError),  # unsorted slots
        ([entry(b"\x01" * 20, storage=[[1, 0]])], NonCanonicalError),  # a zero value
        ([entry(b"\x01" * 20)[:4]], FieldCountError),
        ([entry(b"\x01" * 20, storage=[[1, 1, 1]])], FieldCountError),
    ],
)
def test_state_decoder_errors(structure: list[object], error: type[Exception]) -> None:
    with pytest.raises(error):
        State.decode(rlp.encode(structure))
