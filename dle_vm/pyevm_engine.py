"""The reference engine: py-evm's Cancun computation, driven message by message.

py-evm's chain machinery (a `Chain`, blocks, a transaction executor, a state root per transaction)
costs ~40 times what the EVM itself does here. This engine keeps only the state and the computation:
it loads the pre-state into a `CancunState` on an in-memory database, runs each transaction as one
top-level message (`Computation.apply_message`, which snapshots and reverts on failure by itself),
charges gas the way `CancunTransactionExecutor` would minus the fee and nonce bookkeeping (see
`dle_vm.engine` for the rules), and reads the post-state back into a `State`, whose root is
computed once.

py-evm's account database stores storage under hashed keys, so it cannot list an account's slots;
`_RecordingAccountDB` notes every slot and account written, and the post-state is read for those and
the pre-state's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from eth.constants import BLANK_ROOT_HASH
from eth.db.account import AccountDB
from eth.db.atomic import AtomicDB
from eth.vm.execution_context import ExecutionContext
from eth.vm.forks.cancun.state import CancunState
from eth.vm.forks.cancun.transaction_context import CancunTransactionContext
from eth.vm.message import Message
from eth_typing import Address, BlockNumber, Hash32

from dle_vm.engine import (
    BLOCK_GAS_LIMIT,
    COINBASE,
    BlockContext,
    Log,
    Receipt,
    block_hash,
    check_transaction,
    intrinsic_gas,
)
from dle_vm.state import Account, State
from dle_vm.transaction import Call

__all__ = ["PyEvmEngine"]

_MAX_REFUND_QUOTIENT = 5
"""EIP-3529: the refund is at most a fifth of the gas used."""


class _RecordingAccountDB(AccountDB):
    """An `AccountDB` that remembers which accounts and storage slots were written."""

    def __init__(self, db: AtomicDB, state_root: Hash32 = BLANK_ROOT_HASH) -> None:
        super().__init__(db, state_root)
        self.written_accounts: set[Address] = set()
        self.written_slots: dict[Address, set[int]] = {}

    def set_storage(self, address: Address, slot: int, value: int) -> None:
        self.written_slots.setdefault(address, set()).add(slot)
        super().set_storage(address, slot, value)

    def set_balance(self, address: Address, balance: int) -> None:
        self.written_accounts.add(address)
        super().set_balance(address, balance)

    def set_nonce(self, address: Address, nonce: int) -> None:
        self.written_accounts.add(address)
        super().set_nonce(address, nonce)

    def set_code(self, address: Address, code: bytes) -> None:
        self.written_accounts.add(address)
        super().set_code(address, code)

    def touch_account(self, address: Address) -> None:
        self.written_accounts.add(address)
        super().touch_account(address)


class _DleState(CancunState):
    """Cancun, minus what a DLE chain does not have."""

    account_db_class = _RecordingAccountDB

    def set_system_contracts(self) -> None:
        # Cancun installs the beacon-roots contract (EIP-4788); a DLE chain has no beacon chain, and
        # the account would be in no other engine's state.
        pass

    def get_ancestor_hash(self, block_number: int) -> Hash32:
        return Hash32(block_hash(self.block_number, block_number))

    @property
    def recorder(self) -> _RecordingAccountDB:
        return cast(_RecordingAccountDB, self._account_db)


class PyEvmEngine:
    """py-evm (the reference engine)."""

    name = "py-evm"

    def apply(
        self, state: State, transactions: Sequence[Call], context: BlockContext
    ) -> tuple[State, tuple[Receipt, ...]]:
        vm_state = _DleState(AtomicDB(), _execution_context(context), BLANK_ROOT_HASH)
        for address, account in state.accounts.items():
            _load(vm_state, Address(address), account)
        # From here on the pre-state is each slot's "original value" (EIP-2200) for the first transaction.
        vm_state.lock_changes()
        receipts = tuple(self._apply_transaction(vm_state, tx) for tx in transactions)
        return _read_back(vm_state, state), receipts

    @staticmethod
    def _apply_transaction(vm_state: _DleState, tx: Call) -> Receipt:
        sender, to = Address(tx.sender), Address(tx.to)
        check_transaction(tx, vm_state.get_code(sender))
        message = Message(
            gas=tx.gas_limit - intrinsic_gas(tx.data),
            to=to,
            sender=sender,
            value=0,
            data=tx.data,
            code=vm_state.get_code(to),
        )
        # What BerlinTransactionExecutor.build_computation warms before running (EIP-2929); the
        # coinbase and precompiles are warmed by the computation itself.
        vm_state.mark_address_warm(sender)
        vm_state.mark_address_warm(to)
        computation = vm_state.computation_class.apply_message(
            vm_state, message, CancunTransactionContext(gas_price=0, origin=sender)
        )
        gas_used = tx.gas_limit - computation.get_gas_remaining()
        gas_used -= min(computation.get_gas_refund(), gas_used // _MAX_REFUND_QUOTIENT)
        # EIP-6780: only accounts created in this transaction are registered for deletion.
        for address in computation.get_accounts_for_deletion():
            vm_state.delete_account(address)
        logs = tuple(
            Log(address=bytes(address), topics=tuple(topic.to_bytes(32, "big") for topic in topics), data=bytes(data))
            for address, topics, data in computation.get_log_entries()
        )
        receipt = Receipt(
            success=computation.is_success, gas_used=gas_used, output=bytes(computation.output), logs=logs
        )
        # End of transaction: access lists, original values and transient storage start afresh.
        vm_state.clear_transient_storage()
        vm_state.lock_changes()
        return receipt


def _execution_context(context: BlockContext) -> ExecutionContext:
    return ExecutionContext(
        coinbase=Address(COINBASE),
        timestamp=context.timestamp,
        block_number=BlockNumber(context.height),
        difficulty=0,
        mix_hash=Hash32(bytes(32)),
        gas_limit=BLOCK_GAS_LIMIT,
        prev_hashes=(),
        chain_id=context.evm_chain_id,
        base_fee_per_gas=0,
        excess_blob_gas=0,
    )


def _load(vm_state: _DleState, address: Address, account: Account) -> None:
    if account.nonce:
        vm_state.set_nonce(address, account.nonce)
    if account.balance:
        vm_state.set_balance(address, account.balance)
    if account.code:
        vm_state.set_code(address, account.code)
    for slot, value in account.storage.items():
        vm_state.set_storage(address, slot, value)


def _read_back(vm_state: _DleState, pre: State) -> State:
    recorder = vm_state.recorder
    addresses = set(pre.accounts) | recorder.written_accounts | set(recorder.written_slots)
    accounts: dict[bytes, Account] = {}
    for raw in addresses:
        address = Address(raw)
        before = pre[address]
        slots = set(before.storage) | recorder.written_slots.get(address, set())
        account = Account(
            nonce=vm_state.get_nonce(address),
            balance=vm_state.get_balance(address),
            code=before.code if vm_state.get_code_hash(address) == before.code_hash else vm_state.get_code(address),
            storage={slot: vm_state.get_storage(address, slot) for slot in slots},
        )
        # Keep unchanged accounts as they were: their storage roots are already computed.
        accounts[address] = before if account == before else account
    return State(accounts)
