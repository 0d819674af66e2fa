"""What executing a DLE block means, independent of the EVM implementation that does it.

An `Engine` applies a block's transactions to a state and returns the post-state and one receipt per
transaction. Two engines implement it: `PyEvmEngine` (py-evm, the reference) and `RevmEngine` (pyrevm,
the fast one); a differential test holds them to identical roots, receipts and logs. The rules both
follow, and that this module fixes for them:

- Each transaction is an Ethereum Cancun message call from `sender` to `to` with value 0 and gas price
  0, charged Ethereum's gas: the intrinsic 21,000 plus calldata (`intrinsic_gas`), execution, and the
  refund capped at a fifth of the gas used (EIP-3529). Warm/cold access (EIP-2929), original storage
  values (EIP-2200) and transient storage (EIP-1153) are per transaction, as on Ethereum.
- `Engine.apply` executes calls and does not touch the sender's account (no fee: there is no coin to
  pay it in). Signatures and nonces are `apply_transactions`': each transaction is signed for its chain
  with its sender's next nonce, and the nonce moves once the block ran.
- A transaction that reverts or halts gets a failed receipt, its changes are undone, and the block goes
  on. A transaction that could not be included in an Ethereum block at all (`check_transaction`: gas
  limit below its intrinsic gas or above the block gas limit, a sender with code) makes the whole block
  invalid: `InvalidTransaction`.
- Block environment: NUMBER is the height, TIMESTAMP the header's, CHAINID `evm_chain_id(chain_id)`,
  COINBASE the zero address, GASLIMIT `BLOCK_GAS_LIMIT`, BASEFEE 0, PREVRANDAO 0, BLOBBASEFEE 1, and
  BLOCKHASH `block_hash` (a placeholder: programs must not rely on it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from dle_vm.block import HASH_SIZE, Block, Header
from dle_vm.encoding import MAX_UINT64, check_length, check_uint
from dle_vm.hashing import keccak
from dle_vm.state import State
from dle_vm.transaction import Call, Transaction

__all__ = [
    "BLOCK_GAS_LIMIT",
    "COINBASE",
    "BlockContext",
    "Engine",
    "EngineError",
    "InvalidTransaction",
    "Log",
    "Receipt",
    "StateRootMismatch",
    "apply_block",
    "apply_transactions",
    "block_hash",
    "check_transaction",
    "default_engine",
    "evm_chain_id",
    "intrinsic_gas",
]

BLOCK_GAS_LIMIT = 30_000_000
"""What GASLIMIT returns, and the most gas one transaction may be given."""

COINBASE = bytes(20)
"""What COINBASE returns: nobody collects fees on a DLE chain."""

TX_GAS = 21_000
TX_DATA_ZERO_GAS = 4
TX_DATA_NONZERO_GAS = 16
_BLOCK_HASH_HISTORY = 256


class InvalidTransaction(ValueError):
    """A transaction no valid block may contain; the block carrying it is invalid."""


class EngineError(RuntimeError):
    """An engine failed in a way the rules do not allow (a bug, never a property of the input)."""


class StateRootMismatch(ValueError):
    """Executing a block did not reach the state root its header claims."""


def evm_chain_id(chain_id: bytes) -> int:
    """The CHAINID a program sees: the chain id's first 8 bytes, big-endian, with the top bit cleared.

    EVM chain ids are integers and revm holds them in 64 bits; clearing the top bit keeps them within
    EIP-2294's bound (2**63 - 1). The id is a keccak256 output, so the 63 bits are as unpredictable as
    the rest; programs that need the full id store it at genesis.
    """
    check_length(chain_id, HASH_SIZE, "chain_id")
    return int.from_bytes(chain_id[:8], "big") & (2**63 - 1)


def block_hash(height: int, number: int) -> bytes:
    """What BLOCKHASH(number) returns at `height`: keccak256 of `number` in decimal ASCII for the 256
    heights below, zero otherwise.

    An engine executes one block without the chain behind it, and revm's in-memory database answers
    BLOCKHASH with exactly this; py-evm is made to answer the same. It is no block hash: programs
    must not use BLOCKHASH.
    """
    if 0 < height - number <= _BLOCK_HASH_HISTORY:
        return keccak(str(number).encode("ascii"))
    return bytes(32)


def intrinsic_gas(data: bytes) -> int:
    """Gas a call costs before any code runs (Ethereum since Istanbul: EIP-2028 calldata prices)."""
    zeros = data.count(0)
    return TX_GAS + TX_DATA_ZERO_GAS * zeros + TX_DATA_NONZERO_GAS * (len(data) - zeros)


def check_transaction(transaction: Call, sender_code: bytes) -> None:
    """Refuse a transaction no block may include (see the module's rules); `sender_code` is the code
    at the sender's address in the state the transaction would run on."""
    needed = intrinsic_gas(transaction.data)
    if transaction.gas_limit < needed:
        raise InvalidTransaction(f"gas limit {transaction.gas_limit} is below the intrinsic gas {needed}")
    if transaction.gas_limit > BLOCK_GAS_LIMIT:
        raise InvalidTransaction(f"gas limit {transaction.gas_limit} is above the block gas limit {BLOCK_GAS_LIMIT}")
    if sender_code:
        # EIP-3607: a transaction's sender is an externally owned account.
        raise InvalidTransaction(f"sender 0x{transaction.sender.hex()} has code")


@dataclass(frozen=True)
class BlockContext:
    """The block environment a program sees."""

    chain_id: bytes
    height: int
    timestamp: int

    def __post_init__(self) -> None:
        check_length(self.chain_id, HASH_SIZE, "chain_id")
        check_uint(self.height, "height", MAX_UINT64)
        check_uint(self.timestamp, "timestamp", MAX_UINT64)

    @classmethod
    def of(cls, header: Header) -> BlockContext:
        """The environment of the block with `header`."""
        return cls(chain_id=header.chain_id, height=header.height, timestamp=header.timestamp)

    @property
    def evm_chain_id(self) -> int:
        """CHAINID (`evm_chain_id`)."""
        return evm_chain_id(self.chain_id)


@dataclass(frozen=True)
class Log:
    """An event: the emitting account, up to four 32-byte topics, and the data."""

    address: bytes
    topics: tuple[bytes, ...]
    data: bytes


@dataclass(frozen=True)
class Receipt:
    """The outcome of one transaction."""

    success: bool
    gas_used: int
    """Gas charged, intrinsic gas included, refund deducted: what an Ethereum receipt would show."""
    output: bytes
    """Return data; the revert data of a reverted call; empty after an exceptional halt."""
    logs: tuple[Log, ...] = ()
    """Events in emission order; none when the transaction failed."""


class Engine(Protocol):
    """Executes a block's transactions on a state."""

    name: str

    def apply(
        self, state: State, transactions: Sequence[Call], context: BlockContext
    ) -> tuple[State, tuple[Receipt, ...]]:
        """The post-state and one receipt per call; `state` itself is left unchanged.

        Executes the calls as messages from their senders and nothing more: signatures and nonces are
        `apply_transactions`' part. Raises `InvalidTransaction` when a call makes the block invalid.
        """
        ...


def apply_transactions(
    engine: Engine, state: State, transactions: Sequence[Transaction], context: BlockContext
) -> tuple[State, tuple[Receipt, ...]]:
    """Execute a block's signed transactions: what every member and archive node runs.

    Before any code runs, each transaction must be for this chain, carry a signature that recovers
    its sender (or be a system transaction), and use its sender's next nonce — the sender's account
    nonce in `state`, plus one for each earlier transaction of the same sender in the block. Any
    failure makes the block invalid (`InvalidTransaction`), as a bad nonce does on Ethereum. After
    execution each sender's nonce is its next one, whether its call succeeded or reverted.

    The nonces are written after the whole block ran: a sender's account is not touched by the call
    itself, so no program can tell (programs must not read their callers' nonces or code hashes).
    """
    next_nonce: dict[bytes, int] = {}
    for index, tx in enumerate(transactions):
        if tx.chain_id != context.chain_id:
            raise InvalidTransaction(
                f"transaction {index} is signed for chain 0x{tx.chain_id.hex()}, not 0x{context.chain_id.hex()}"
            )
        sender = tx.sender_or_none()
        if sender is None:
            raise InvalidTransaction(f"transaction {index}: its signature recovers no sender")
        if tx.is_system:
            continue
        expected = next_nonce.get(sender, state[sender].nonce)
        if tx.nonce != expected:
            raise InvalidTransaction(
                f"transaction {index}: sender 0x{sender.hex()} used nonce {tx.nonce}, its next nonce is {expected}"
            )
        if expected >= MAX_UINT64:
            raise InvalidTransaction(f"transaction {index}: sender 0x{sender.hex()} has used every nonce")
        next_nonce[sender] = expected + 1
    post, receipts = engine.apply(state, transactions, context)
    if next_nonce:
        post = post.with_accounts({sender: replace(post[sender], nonce=nonce) for sender, nonce in next_nonce.items()})
    return post, receipts


def apply_block(engine: Engine, state: State, block: Block) -> tuple[State, tuple[Receipt, ...]]:
    """Re-execute `block` on its pre-state and check the state root its header claims."""
    post, receipts = apply_transactions(engine, state, block.transactions, BlockContext.of(block.header))
    if post.root != block.header.state_root:
        raise StateRootMismatch(
            f"block {block.header.height} claims state root 0x{block.header.state_root.hex()}, "
            f"execution reached 0x{post.root.hex()}"
        )
    return post, receipts


def default_engine() -> Engine:
    """revm where pyrevm is installed (the production engine), else py-evm."""
    try:
        from dle_vm.revm_engine import RevmEngine
    except ImportError:
        from dle_vm.pyevm_engine import PyEvmEngine

        return PyEvmEngine()
    return RevmEngine()
