"""The two DLE engines against each other: py-evm (the reference) and revm must reach the same state
root, receipts (success, gas used, return data) and logs for any sequence of transactions.

The program is `tests/programs/DleLedger.sol`, compiled here with py-solc-x (not ape, so this test
never depends on the project's contracts compiling).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import solcx
from eth_abi.abi import decode, encode
from eth_utils.address import to_canonical_address
from eth_utils.crypto import keccak
from hypothesis import given, settings
from hypothesis import strategies as st

from dle_vm.block import Block, Header, transactions_root
from dle_vm.engine import (
    BLOCK_GAS_LIMIT,
    BlockContext,
    Engine,
    InvalidTransaction,
    Receipt,
    StateRootMismatch,
    apply_block,
    apply_transactions,
    block_hash,
    default_engine,
    evm_chain_id,
    intrinsic_gas,
)
from dle_vm.pyevm_engine import PyEvmEngine
from dle_vm.revm_engine import RevmEngine
from dle_vm.state import Account, State
from dle_vm.transaction import Message, Transaction
from offchain.toolchain import SOLC_VERSION, configure_environment

# py-evm warns on every SELFDESTRUCT; the program uses it on purpose (EIP-6780 paths).
pytestmark = pytest.mark.filterwarnings("ignore:SELFDESTRUCT opcode:DeprecationWarning")

SOURCE = Path(__file__).with_name("programs") / "DleLedger.sol"
PROGRAM = bytes.fromhex("d1e0" * 10)
ISSUER = bytes.fromhex("15" * 20)
HOLDERS = [ISSUER, bytes.fromhex("a1" * 20), bytes.fromhex("b0" * 20), bytes.fromhex("c0" * 20)]
ISSUER_SLOT = 4
ENGINES: list[Engine] = [PyEvmEngine(), RevmEngine()]


@dataclass(frozen=True)
class Program:
    runtime: bytes
    child_creation: bytes
    selectors: dict[str, bytes]

    def call(self, signature: str, *args: Any) -> bytes:
        """Calldata for `signature` (e.g. "transfer(address,uint256)") with `args`."""
        inner = signature[signature.index("(") + 1 : -1]
        return self.selectors[signature] + encode(inner.split(",") if inner else [], list(args))

    def child_address(self, salt: int) -> bytes:
        """Where CREATE2 puts the child the program spawns with `salt`."""
        return keccak(b"\xff" + PROGRAM + salt.to_bytes(32, "big") + keccak(self.child_creation))[12:]


@pytest.fixture(scope="module")
def program() -> Program:
    configure_environment()
    out = solcx.compile_standard(
        {
            "language": "Solidity",
            "sources": {"DleLedger.sol": {"content": SOURCE.read_text()}},
            "settings": {
                "evmVersion": "cancun",
                "optimizer": {"enabled": True, "runs": 200},
                "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"]}},
            },
        },
        solc_version=SOLC_VERSION,
    )
    ledger = out["contracts"]["DleLedger.sol"]["DleLedger"]
    child = out["contracts"]["DleLedger.sol"]["DleChild"]
    selectors = {}
    for item in ledger["abi"]:
        if item["type"] == "function":
            signature = f"{item['name']}({','.join(str(i['type']) for i in item['inputs'])})"
            selectors[signature] = keccak(text=signature)[:4]
    return Program(
        runtime=bytes.fromhex(ledger["evm"]["deployedBytecode"]["object"]),
        child_creation=bytes.fromhex(child["evm"]["bytecode"]["object"]),
        selectors=selectors,
    )


def balance_slot(holder: bytes) -> int:
    return int.from_bytes(keccak(encode(["address", "uint256"], [holder, 0])), "big")


def genesis(program: Program) -> State:
    storage = {ISSUER_SLOT: int.from_bytes(ISSUER, "big"), 2: 1_500}
    storage[balance_slot(HOLDERS[1])] = 1_000
    storage[balance_slot(HOLDERS[2])] = 500
    return State({PROGRAM: Account(nonce=1, code=program.runtime, storage=storage)})


# -- transactions ------------------------------------------------------------------------------------

holders = st.sampled_from(HOLDERS)
amounts = st.sampled_from([0, 1, 7, 499, 500, 1_000, 2_000, 2**255])
salts = st.integers(0, 3)
extra_gas = st.sampled_from([0, 2_500, 25_000, 80_000, 200_000, 200_000, 1_000_000, 1_000_000])


def calls(p: Program) -> st.SearchStrategy[tuple[bytes, bytes]]:
    """(to, calldata) pairs."""

    def call(signature: str, *args: st.SearchStrategy[Any]) -> st.SearchStrategy[tuple[bytes, bytes]]:
        return st.tuples(*args).map(lambda values: (PROGRAM, p.call(signature, *values)))

    salt_words = salts.map(lambda salt: salt.to_bytes(32, "big"))
    child_calls = st.sampled_from([keccak(text=f)[:4] for f in ("owner()", "pings()", "ping()", "destroy()")])
    return st.one_of(
        call("mint(address,uint256)", holders, amounts),
        call("transfer(address,uint256)", holders, amounts),
        call("approve(address,uint256)", holders, amounts),
        call("transferFrom(address,address,uint256)", holders, holders, amounts),
        call("close(address[])", st.lists(holders, max_size=3)),
        call("spin(uint256)", st.integers(0, 400)),
        call("bump()"),
        call("nest(uint256,uint256)", st.integers(0, 6), st.integers(0, 8)),
        call("spawn(bytes32)", salt_words),
        call("spawnAndDestroy(bytes32)", salt_words),
        call("destroyChild(address)", salts.map(p.child_address)),
        call("env()"),
        call("hashOf(uint256)", st.integers(0, 1_100)),
        st.tuples(st.just(PROGRAM), st.binary(max_size=40)),
        # A spawned child's own functions, and an account without code.
        st.tuples(salts.map(p.child_address), child_calls),
        st.tuples(holders, st.binary(max_size=8)),
    )


def transactions(program: Program) -> st.SearchStrategy[Message]:
    return st.builds(
        lambda sender, call, extra: Message(
            sender=sender, to=call[0], data=call[1], gas_limit=intrinsic_gas(call[1]) + extra
        ),
        holders,
        calls(program),
        extra_gas,
    )


contexts = st.builds(
    BlockContext,
    chain_id=st.binary(min_size=32, max_size=32),
    height=st.integers(0, 1_000),
    timestamp=st.integers(0, 2**40),
)


def run_both(state: State, txs: list[Message], context: BlockContext) -> tuple[State, tuple[Receipt, ...]]:
    """Apply on both engines, assert they agree, return the reference's result."""
    (ref_state, ref_receipts), (fast_state, fast_receipts) = (e.apply(state, txs, context) for e in ENGINES)
    for i, (ref, fast) in enumerate(zip(ref_receipts, fast_receipts, strict=True)):
        assert ref == fast, f"transaction {i} ({txs[i].data[:4].hex()}): py-evm {ref} != revm {fast}"
    assert fast_state.encode() == ref_state.encode()
    assert fast_state.root == ref_state.root
    return ref_state, ref_receipts


# -- the differential test ---------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_engines_agree_on_random_blocks(program: Program, data: st.DataObject) -> None:
    state = genesis(program)
    for _ in range(data.draw(st.integers(1, 2), label="blocks")):
        txs = data.draw(st.lists(transactions(program), min_size=3, max_size=16), label="transactions")
        context = data.draw(contexts, label="context")
        post, _ = run_both(state, txs, context)
        # Validators receive the pre-state as bytes: the next block starts from a decoded copy.
        state = State.decode(post.encode())
        assert state == post


# -- directed cases: the rules both engines share ----------------------------------------------------


def tx(data: bytes, *, sender: bytes = HOLDERS[1], to: bytes = PROGRAM, gas: int = 200_000) -> Message:
    return Message(sender=sender, to=to, data=data, gas_limit=gas)


CONTEXT = BlockContext(chain_id=bytes(range(32)), height=42, timestamp=1_700_000_000)


def test_a_transfer_moves_balance_and_logs_with_indexed_topics(program: Program) -> None:
    call = program.call("transfer(address,uint256)", HOLDERS[2], 300)
    post, (receipt,) = run_both(genesis(program), [tx(call)], CONTEXT)
    assert receipt.success and decode(["bool"], receipt.output) == (True,)
    assert post.storage_at(PROGRAM, balance_slot(HOLDERS[1])) == 700
    assert post.storage_at(PROGRAM, balance_slot(HOLDERS[2])) == 800
    (log,) = receipt.logs
    assert log.address == PROGRAM
    assert log.topics == (
        keccak(text="Transfer(address,address,uint256)"),
        HOLDERS[1].rjust(32, b"\0"),
        HOLDERS[2].rjust(32, b"\0"),
    )
    assert decode(["uint256"], log.data) == (300,)


def test_a_failed_transaction_reverts_only_itself(program: Program) -> None:
    too_much = program.call("transfer(address,uint256)", HOLDERS[2], 5_000)
    fine = program.call("transfer(address,uint256)", HOLDERS[3], 1)
    post, (failed, ok) = run_both(genesis(program), [tx(too_much), tx(fine)], CONTEXT)
    assert not failed.success and failed.logs == ()
    selector = keccak(text="InsufficientBalance(address,uint256,uint256)")[:4]
    assert failed.output == selector + encode(["address", "uint256", "uint256"], [HOLDERS[1], 1_000, 5_000])
    assert failed.gas_used < 200_000
    assert ok.success
    assert post.storage_at(PROGRAM, balance_slot(HOLDERS[1])) == 999


def test_out_of_gas_consumes_the_whole_limit(program: Program) -> None:
    call = program.call("spin(uint256)", 10_000)
    post, (receipt,) = run_both(genesis(program), [tx(call, gas=60_000)], CONTEXT)
    assert (receipt.success, receipt.gas_used, receipt.output) == (False, 60_000, b"")
    assert post == genesis(program)


def test_gas_is_ethereums_intrinsic_plus_execution(program: Program) -> None:
    # A call to an account without code costs exactly the intrinsic gas.
    data = b"\x01\x00\x02"
    _, (receipt,) = run_both(genesis(program), [tx(data, to=HOLDERS[3])], CONTEXT)
    assert receipt == Receipt(success=True, gas_used=21_000 + 16 + 4 + 16, output=b"")


def test_clearing_storage_is_refunded(program: Program) -> None:
    def approve(amount: int) -> Message:
        return tx(program.call("approve(address,uint256)", HOLDERS[2], amount))

    post, (_, set_again) = run_both(genesis(program), [approve(5), approve(1)], CONTEXT)
    post, (_, clear) = run_both(genesis(program), [approve(5), approve(0)], CONTEXT)
    assert set_again.success and clear.success
    # Same SSTORE cost (non-zero original, cold); clearing is refunded 4,800 (EIP-3529) and its
    # calldata has one zero byte (4 gas) where the other has a non-zero one (16).
    assert clear.gas_used == set_again.gas_used - 12 - 4_800
    allowance_slot = int.from_bytes(
        keccak(encode(["address", "bytes32"], [HOLDERS[2], keccak(encode(["address", "uint256"], [HOLDERS[1], 1]))])),
        "big",
    )
    assert allowance_slot not in post[PROGRAM].storage


def test_transient_storage_starts_empty_in_every_transaction(program: Program) -> None:
    bump = program.call("bump()")
    post, receipts = run_both(genesis(program), [tx(bump), tx(bump), tx(bump)], CONTEXT)
    assert [decode(["uint256"], r.output) for r in receipts] == [(1,), (1,), (1,)]
    assert post == genesis(program)


def test_the_block_environment(program: Program) -> None:
    # A balance is no DLE feature, but the account format has one and both engines must carry it.
    funded = genesis(program).with_accounts({PROGRAM: replace(genesis(program)[PROGRAM], balance=10**18)})
    post, (receipt,) = run_both(funded, [tx(program.call("env()"))], CONTEXT)
    types = ["uint256"] * 3 + ["address"] + ["uint256"] * 5 + ["address", "uint256"]
    number, timestamp, chain_id, coinbase, gas_limit, base_fee, prevrandao, blob_fee, gas_price, origin, balance = (
        decode(types, receipt.output)
    )
    assert (number, timestamp, chain_id) == (42, 1_700_000_000, evm_chain_id(CONTEXT.chain_id))
    assert chain_id == int.from_bytes(bytes(range(8)), "big")
    assert (coinbase, gas_limit, base_fee, prevrandao, blob_fee, gas_price) == (
        "0x" + "00" * 20,
        BLOCK_GAS_LIMIT,
        0,
        0,
        1,
        0,
    )
    assert to_canonical_address(origin) == HOLDERS[1]
    assert balance == 10**18 and post == funded


@pytest.mark.parametrize("number", [0, 41, 42, 43, 42 - 256, 42 - 257])
def test_blockhash_is_the_documented_placeholder(program: Program, number: int) -> None:
    context = BlockContext(chain_id=bytes(32), height=300, timestamp=0)
    n = 300 - 42 + number
    _, (receipt,) = run_both(genesis(program), [tx(program.call("hashOf(uint256)", n))], context)
    assert receipt.output == block_hash(300, n)


def test_contracts_created_and_destroyed(program: Program) -> None:
    spawn = program.call("spawn(bytes32)", (1).to_bytes(32, "big"))
    ephemeral = program.call("spawnAndDestroy(bytes32)", (2).to_bytes(32, "big"))
    child = program.child_address(1)
    ping = tx(keccak(text="ping()")[:4], to=child)
    destroy = program.call("destroyChild(address)", child)
    post, receipts = run_both(genesis(program), [tx(spawn), tx(spawn), ping, tx(ephemeral), tx(destroy)], CONTEXT)
    assert [r.success for r in receipts] == [True, False, True, True, True]
    assert to_canonical_address(decode(["address"], receipts[0].output)[0]) == child
    # The child lives on (EIP-6780: destroyed outside its creating transaction), the ephemeral one not.
    assert post[child].code and post[child].nonce == 1
    assert post[child].storage == {0: int.from_bytes(PROGRAM, "big"), 1: 1}  # owner, pings
    assert program.child_address(2) not in post.accounts
    assert post[PROGRAM].nonce == 3  # two successful creations


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda data: tx(data, gas=intrinsic_gas(data) - 1), "below the intrinsic gas"),
        (lambda data: tx(data, gas=BLOCK_GAS_LIMIT + 1), "above the block gas limit"),
        (lambda data: tx(data, sender=PROGRAM), "has code"),
    ],
)
def test_invalid_transactions_invalidate_the_block(
    program: Program, make: Callable[[bytes], Message], reason: str
) -> None:
    bad = make(program.call("bump()"))
    for engine in ENGINES:
        with pytest.raises(InvalidTransaction, match=reason):
            engine.apply(genesis(program), [tx(b""), bad], CONTEXT)


def test_engines_leave_the_pre_state_alone(program: Program) -> None:
    # An externally owned account with a nonce and a balance (from a genesis) sends and stays as it is.
    sender = Account(nonce=5, balance=7)
    state = genesis(program).with_accounts({HOLDERS[1]: sender})
    root = state.root
    call = program.call("transfer(address,uint256)", HOLDERS[2], 300)
    post, (receipt,) = run_both(state, [tx(call)], CONTEXT)
    assert receipt.success and post[HOLDERS[1]] == sender
    assert state.root == root and state == genesis(program).with_accounts({HOLDERS[1]: sender})


def test_apply_block_checks_the_claimed_state_root(program: Program) -> None:
    pre = genesis(program)
    secret = keccak(b"differential test signer")
    call = program.call("transfer(address,uint256)", HOLDERS[2], 0)
    txs = (Transaction.signed(secret, CONTEXT.chain_id, 0, PROGRAM, call, 200_000),)
    post, _ = apply_transactions(default_engine(), pre, txs, CONTEXT)
    assert post[txs[0].sender].nonce == 1  # the signer's nonce moved, and is part of the root
    header = Header(
        chain_id=CONTEXT.chain_id,
        height=CONTEXT.height,
        parent_hash=bytes(32),
        state_root=post.root,
        transactions_root=transactions_root(txs),
        timestamp=CONTEXT.timestamp,
        poh_tick=1,
        group_id=0,
    )
    for engine in ENGINES:
        assert apply_block(engine, pre, Block(header=header, transactions=txs))[0] == post
        wrong = Block(header=replace(header, state_root=pre.root), transactions=txs)
        with pytest.raises(StateRootMismatch):
            apply_block(engine, pre, wrong)
