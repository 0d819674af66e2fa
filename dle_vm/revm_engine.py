"""The fast engine: revm (Rust) through pyrevm 0.3.7, under the rules of `dle_vm.engine`.

pyrevm's `EVM.message_call` is an Ethereum call without the fee and nonce bookkeeping — the DLE rules
exactly — but it never finalises revm's journal: within one `EVM` object, accounts and slots stay warm
and original storage values stay those of the first call, across transactions. So each transaction
runs on a fresh `EVM` loaded with the current state (a few microseconds per slot), which gives
Ethereum's per-transaction semantics, identical to py-evm's.

What pyrevm 0.3.7 does not expose, and how this module gets it:

- Storage enumeration and the slots a call wrote: the text of revm's journal (`EVM.journal_str`, the
  `Debug` form of `JournaledState`) lists each write as `StorageChange { address, key, had_value:
  Some(..) }`; the keys are parsed from it and their values read with `EVM.storage`. Writes a revert
  undid are gone from the journal, and a slot written back to its old value reads as that value.
- Accounts destroyed in the transaction that created them (EIP-6780): their `AccountStatus` in the
  same text says `SelfDestructed`.
- Loading storage as pre-state: `insert_account_storage` writes to the database only while the
  account is not in the journal; once it is, the write goes through the journal and the slot's
  original value becomes 0, which changes SSTORE gas. Each insert is therefore wrapped in a journal
  checkpoint and reverted, which unloads the account from the journal and keeps the database write.
- Revert data: a failed call raises `RuntimeError("Revert { gas_used: .., output: 0x.. }")`; the
  output is parsed from that text, and the gas and kind from `EVM.result`.
- Created contracts' code: revm pads analysed code with zero bytes; the exact code is the prefix
  whose keccak256 is the account's code hash.

The journal text is revm's debug output, pinned by the pyrevm version (revm 8.0); the differential
test against py-evm is what notices if it changes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from pyrevm import EVM, AccountInfo, BlockEnv, CfgEnv, Env

from dle_vm.engine import (
    BLOCK_GAS_LIMIT,
    COINBASE,
    BlockContext,
    EngineError,
    Log,
    Receipt,
    check_transaction,
)
from dle_vm.hashing import keccak
from dle_vm.state import EMPTY_CODE_HASH, Account, State
from dle_vm.transaction import Call

__all__ = ["RevmEngine"]

_SPEC = "Cancun"
"""pyrevm maps spec names as revm spells them; an unknown name silently means LATEST."""

_STORAGE_WRITE = re.compile(r"StorageChange \{ address: (0x[0-9a-fA-F]{40}), key: (\d+), had_value: Some")
_ACCOUNT_STATUS = re.compile(
    r"(0x[0-9a-fA-F]{40}): Account \{ info: .*?, status: AccountStatus\(([^)]*)\) \}", re.DOTALL
)
_REVERT_OUTPUT = re.compile(r"^Revert \{ gas_used: \d+, output: 0x([0-9a-fA-F]*) \}$")


class RevmEngine:
    """revm through pyrevm (the fast engine)."""

    name = "revm"

    def apply(
        self, state: State, transactions: Sequence[Call], context: BlockContext
    ) -> tuple[State, tuple[Receipt, ...]]:
        env = Env(
            cfg=CfgEnv(chain_id=context.evm_chain_id),
            block=BlockEnv(
                number=context.height,
                coinbase=_hex(COINBASE),
                timestamp=context.timestamp,
                difficulty=0,
                prevrandao=bytes(32),
                basefee=0,
                gas_limit=BLOCK_GAS_LIMIT,
                excess_blob_gas=0,
            ),
        )
        accounts = dict(state.accounts)
        receipts: list[Receipt] = []
        for tx in transactions:
            check_transaction(tx, accounts[tx.sender].code if tx.sender in accounts else b"")
            # A fresh EVM per transaction: pyrevm never ends a transaction within one (module docstring).
            evm = EVM(env=env, gas_limit=BLOCK_GAS_LIMIT, spec_id=_SPEC)
            _load(evm, accounts)
            receipts.append(_call(evm, tx))
            _read_back(evm, accounts)
        return State(accounts), tuple(receipts)


def _hex(address: bytes) -> str:
    return "0x" + address.hex()


def _load(evm: EVM, accounts: dict[bytes, Account]) -> None:
    for address, account in accounts.items():
        target = _hex(address)
        evm.insert_account_info(target, AccountInfo(nonce=account.nonce, code=account.code))
        for slot, value in account.storage.items():
            checkpoint = evm.snapshot()
            evm.insert_account_storage(target, slot, value)
            evm.revert(checkpoint)
        if account.balance:
            # set_balance loads the account into the journal, so it comes after the storage.
            evm.set_balance(target, account.balance)


def _call(evm: EVM, tx: Call) -> Receipt:
    try:
        output = evm.message_call(
            _hex(tx.sender), _hex(tx.to), calldata=tx.data, value=0, gas=tx.gas_limit, gas_price=0
        )
    except RuntimeError as error:
        result = evm.result
        if result is None:
            # check_transaction admitted it, so revm refusing it is a rules mismatch, not a failed call.
            raise EngineError(f"revm refused a transaction: {error}") from error
        revert = _REVERT_OUTPUT.match(str(error))
        return Receipt(
            success=False,
            gas_used=result.gas_used,
            output=bytes.fromhex(revert.group(1)) if revert and result.reason == "Revert" else b"",
        )
    result = evm.result
    if result is None:
        raise EngineError("revm returned no result for a successful call")
    logs = tuple(
        Log(
            address=bytes.fromhex(log.address[2:]),
            topics=tuple(bytes.fromhex(topic[2:]) for topic in log.topics),
            data=bytes(log.data[1]),
        )
        for log in result.logs
    )
    return Receipt(success=True, gas_used=result.gas_used, output=bytes(output), logs=logs)


def _read_back(evm: EVM, accounts: dict[bytes, Account]) -> None:
    """Update `accounts` with what the last call changed."""
    journal = evm.journal_str
    written: dict[bytes, set[int]] = {}
    for address, key in _STORAGE_WRITE.findall(journal):
        written.setdefault(bytes.fromhex(address[2:]), set()).add(int(key))
    destroyed: set[bytes] = set()
    if "SelfDestructed" in journal:
        destroyed = {
            bytes.fromhex(address[2:])
            for address, status in _ACCOUNT_STATUS.findall(journal)
            if "SelfDestructed" in status
        }
    for address_text, info in evm.journal_state.items():
        address = bytes.fromhex(address_text[2:])
        before = accounts.get(address, _EMPTY)
        if address in destroyed:
            accounts.pop(address, None)
            continue
        code_hash = info.code_hash or EMPTY_CODE_HASH
        slots = written.get(address, set())
        unchanged = info.nonce == before.nonce and info.balance == before.balance and code_hash == before.code_hash
        if unchanged and not slots:
            continue
        account = Account(
            nonce=info.nonce,
            balance=info.balance,
            code=before.code if code_hash == before.code_hash else _exact_code(evm.get_code(address_text), code_hash),
            storage={**before.storage, **{slot: evm.storage(address_text, slot) for slot in slots}},
        )
        if account.is_empty:
            accounts.pop(address, None)
        else:
            accounts[address] = account


def _exact_code(padded: bytes | None, code_hash: bytes) -> bytes:
    code = padded or b""
    while keccak(code) != code_hash:
        if not code or code[-1] != 0:
            raise EngineError("revm reported code that does not match its code hash")
        code = code[:-1]
    return code


_EMPTY = Account()
