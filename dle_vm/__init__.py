"""The DLE VM: blocks, headers and state of per-asset chains, executed on an EVM engine.

This package depends on nothing in `offchain`: a chain's program arrives as bytecode.

- `encoding`: the canonical RLP encoding and its errors (`EncodingError` and subclasses).
- `transaction`, `block`: transactions, headers, blocks; `signature`: members' signatures.
- `state`, `mpt`: a chain's accounts and their Ethereum state root.
- `engine`: the execution rules and the `Engine` interface; `pyevm_engine` (the reference) and
  `revm_engine` (the fast one) implement it. Engines are imported from their modules, so that
  decoding a block does not load an EVM.
"""

from dle_vm.block import Block, Header, transactions_root
from dle_vm.encoding import EncodingError
from dle_vm.state import Account, State
from dle_vm.transaction import Transaction

__all__ = ["Account", "Block", "EncodingError", "Header", "State", "Transaction", "transactions_root"]
