"""The proof behind a block's system transactions, checked by every member and archive node.

A system transaction (`dle_vm.transaction.Transaction.system`) carries no signature: nobody's key holds
the authority to re-fund a note or to move a witness's fee share. So a node signs a block holding one
only after it has checked the proof against its own view:

- `refund(index, buyer, amount)` on a note chain: the node's own mirror of the mainchain shows the
  `index`-th `NoteRefunded` event of this note (counted from 0, in chain order) for exactly this buyer
  and amount. The program numbers re-fundings, so an event is applied once and in order. A node handed
  no mirror (`RefundLog`) refuses every re-funding: it cannot prove one.
- `replaceWitness(index, witness)`: exactly the calls that make the program's fee-receiving witnesses
  equal to the witnesses of the chain's certified roles record (`note.role_change_transactions_on` of the
  program's witnesses in the pre-state and the record's) — no more, no fewer, before any user
  transaction. A block of a note chain whose program's witnesses differ from the certified ones must
  carry them, so the fee shares follow the certified role change and nothing else.

Any other system transaction, and any system transaction after a user transaction or in a genesis
block, makes the block unauthorised.

User transactions of a note chain are admitted by the same rule at every node (`NoteAuthority.admit`,
run by the creator at `submit` and by every member and archive node on every block): a call of one of
the program's user actions (`USER_ACTIONS`) and nothing else — no other address, no other selector, no
gas limit above `note.GAS_LIMIT` — and at most `MAX_BLOCK_TRANSACTIONS` of them per block. Without it a
stranger could have members execute and archive nodes keep arbitrary code paths and accounts (a
transaction to an empty address succeeds and creates one), and a creator could build a block that
takes its validators minutes to re-execute. Chains that do not run the note program (the Selection Chain, the
oDEX book chain) accept no system transaction at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from dle_vm.block import Block
from dle_vm.engine import Engine
from dle_vm.state import State
from dle_vm.transaction import Transaction
from offchain.dle.note import GAS_LIMIT, PROGRAM, NoteReader, Program, note_program, role_change_transactions_on

__all__ = [
    "MAX_BLOCK_TRANSACTIONS",
    "MAX_SUBMIT_TRANSACTIONS",
    "NOT_YET",
    "USER_ACTIONS",
    "AuthorityError",
    "BlockAuthority",
    "ChainRefundLog",
    "NotYetSeen",
    "NoteAuthority",
    "Refund",
    "RefundLog",
]

USER_ACTIONS = ("transfer", "authorize", "revoke", "deduct", "deductTo", "exit")
"""The note program's functions a user transaction may call; its views change nothing and are served
by `Message`s, never blocks."""
MAX_BLOCK_TRANSACTIONS = 4096
"""The most user transactions in one block of a note chain: a creator batches at most 64 submissions
(`member.MemberTimeouts.max_batch`) of at most 64 transactions (`MAX_SUBMIT_TRANSACTIONS`)."""
MAX_SUBMIT_TRANSACTIONS = 64
"""The most transactions one `submit` may carry."""
NOT_YET = "not-yet"
"""The `RemoteError` code of a node that cannot check a block's proof before its mainchain view catches
up (`NotYetSeen`): neither a vote nor a refusal; the creator asks again."""


class AuthorityError(ValueError):
    """A block carries a system transaction its proof does not support (or lacks one the rules demand)."""


class NotYetSeen(AuthorityError):
    """The proof a system transaction needs is not in this node's view of the mainchain *yet*: a
    re-funding numbered past the last `NoteRefunded` the node has seen at its confirmation depth. The
    event may be on the mainchain already, so the node neither signs nor calls the block wrong: it
    answers "not yet" and is asked again."""


@dataclass(frozen=True)
class Refund:
    """One mainchain `NoteRefunded` event: `buyer` paid `amount` for the pooled note."""

    buyer: bytes
    amount: int


class RefundLog(Protocol):
    """A node's own view of the mainchain's re-fundings (its chain mirror)."""

    def refunds(self, asset: bytes, note: int) -> Sequence[Refund]:
        """Every `NoteRefunded` of note `note` of the CoNETCash contract `asset`, in chain order."""
        ...


class NoteRefunds(Protocol):
    """The mainchain reading `ChainRefundLog` needs (`offchain.chain.dle.DleChainClient`)."""

    def note_refunds(self, note: int, *, confirmations: int = 0) -> list[tuple[bytes, int]]: ...


class ChainRefundLog:
    """`RefundLog` read from the node's own mainchain RPC, for the one CoNETCash contract `cash`: a
    re-funding of any other asset (an oDEX vault's receipt, another deployment) is never shown. Only
    events at least `confirmations` blocks deep count: a re-funding a reorganization could undo must
    not become DLE balance (the node answers "not yet" until it is deep enough)."""

    def __init__(self, chain: NoteRefunds, cash: bytes, *, confirmations: int = 0) -> None:
        if confirmations < 0:
            raise ValueError("confirmations must be >= 0")
        self._chain = chain
        self._cash = cash
        self._confirmations = confirmations

    def refunds(self, asset: bytes, note: int) -> Sequence[Refund]:
        if asset != self._cash:
            return ()
        events = self._chain.note_refunds(note, confirmations=self._confirmations)
        return tuple(Refund(buyer, amount) for buyer, amount in events)


class BlockAuthority(Protocol):
    """What a member or archive node runs on every block before re-executing it."""

    def check(self, pre: State, block: Block, witnesses: Sequence[bytes]) -> None:
        """Raise `AuthorityError` unless every system transaction of `block` is proven, and the ones the
        certified roles (`witnesses`) demand are there."""
        ...

    def required(self, pre: State, chain: bytes, height: int, witnesses: Sequence[bytes]) -> tuple[Transaction, ...]:
        """The system transactions a creator must put first in the block at `height` on `pre`."""
        ...

    def admit(self, pre: State, height: int, tx: Transaction) -> None:
        """Raise `AuthorityError` unless user transaction `tx` may stand in the block at `height` on `pre`."""
        ...


class NoteAuthority:
    """`BlockAuthority` for note and receipt chains (and any chain without the note program)."""

    def __init__(self, engine: Engine, refunds: RefundLog | None = None, program: Program | None = None) -> None:
        self._program = program or note_program()
        self._reader = NoteReader(engine, self._program)
        self._refunds = refunds
        self._refund_selector = self._program.selector("refund")
        self._replace_selector = self._program.selector("replaceWitness")
        self._user_selectors = frozenset(self._program.selector(name) for name in USER_ACTIONS)

    def _is_note_chain(self, pre: State, height: int) -> bool:
        # A genesis block runs `initialize`, signed by the CBDC: no system transaction has a place there.
        return height > 0 and pre[PROGRAM].code == self._program.runtime

    def required(self, pre: State, chain: bytes, height: int, witnesses: Sequence[bytes]) -> tuple[Transaction, ...]:
        if not self._is_note_chain(pre, height):
            return ()
        held = self._reader.witnesses(pre)
        if len(held) != len(witnesses):
            raise AuthorityError(f"the certified roles name {len(witnesses)} witnesses, the program holds {len(held)}")
        return tuple(role_change_transactions_on(chain, held, witnesses))

    def admit(self, pre: State, height: int, tx: Transaction) -> None:
        if not self._is_note_chain(pre, height):
            return
        if tx.is_system:
            raise AuthorityError("system transactions are the protocol's own: nobody submits one")
        if tx.to != PROGRAM:
            raise AuthorityError(f"a transaction to 0x{tx.to.hex()}: a note chain runs only its program")
        if tx.data[:4] not in self._user_selectors:
            raise AuthorityError(
                f"selector 0x{tx.data[:4].hex()} is none of the note program's {', '.join(USER_ACTIONS)}"
            )
        if tx.gas_limit > GAS_LIMIT:
            raise AuthorityError(f"gas limit {tx.gas_limit} is above the note chain's {GAS_LIMIT}")

    def check(self, pre: State, block: Block, witnesses: Sequence[bytes]) -> None:
        chain = block.header.chain_id
        system = _system_prefix(block.transactions)
        if not self._is_note_chain(pre, block.header.height):
            if system:
                raise AuthorityError("this chain accepts no system transaction")
            return
        users = block.transactions[len(system) :]
        if len(users) > MAX_BLOCK_TRANSACTIONS:
            raise AuthorityError(f"{len(users)} user transactions, above the {MAX_BLOCK_TRANSACTIONS} a block may hold")
        for tx in users:
            self.admit(pre, block.header.height, tx)
        replacements = [tx for tx in system if tx.to == PROGRAM and tx.data[:4] == self._replace_selector]
        refunds = [tx for tx in system if tx.to == PROGRAM and tx.data[:4] == self._refund_selector]
        if len(replacements) + len(refunds) != len(system) or system[: len(replacements)] != tuple(replacements):
            raise AuthorityError("a system transaction other than the witness replacements, then re-fundings")
        expected = self.required(pre, chain, block.header.height, witnesses)
        if [tx.encode() for tx in replacements] != [tx.encode() for tx in expected]:
            raise AuthorityError("the witness replacements are not exactly those the certified role change computes")
        if refunds:
            self._check_refunds(pre, chain, refunds)

    def _check_refunds(self, pre: State, chain: bytes, refunds: Sequence[Transaction]) -> None:
        if self._refunds is None:
            raise AuthorityError("a re-funding, and this node has no mainchain view to prove it")
        note, asset = self._reader.terms(pre, chain)
        events = self._refunds.refunds(asset, note)
        applied = self._reader.refund_count(pre, chain)
        for offset, tx in enumerate(refunds):
            try:
                index, buyer, amount = self._program.decode_call("refund", tx.data)
            except ValueError as error:
                raise AuthorityError(f"a re-funding that does not decode: {error}") from error
            if index != applied + offset:
                raise AuthorityError(f"re-funding {index} out of order: the next is {applied + offset}")
            if index >= len(events):
                raise NotYetSeen(
                    f"this node's mainchain view shows {len(events)} re-fundings of note {note}, not {index + 1} (yet)"
                )
            if events[index] != Refund(buyer, amount):
                raise AuthorityError(f"re-funding {index} of note {note} differs from the mainchain's NoteRefunded")


def _system_prefix(transactions: Sequence[Transaction]) -> tuple[Transaction, ...]:
    """The leading system transactions; raises when one comes after a user transaction."""
    count = 0
    while count < len(transactions) and transactions[count].is_system:
        count += 1
    if any(tx.is_system for tx in transactions[count:]):
        raise AuthorityError("a system transaction after a user transaction")
    return tuple(transactions[:count])
