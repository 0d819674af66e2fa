"""oDEX on an in-process DLE: receipt chains opened from vault `ReceiptIssued` terms, traders' wallets on
them, and the book's settler (tests/test_odex_settlement.py, tests/test_odex_story.py).

The DLE is the real one (offchain/dle/local.py: archive nodes and member nodes, real signatures, the
note program in the VM); only the mainchain is recorded rather than run (`RecordingMainchain`, as in
tests/test_dle_consensus.py): the archive group's chain registrations are what it records.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from dle_vm.hashing import keccak
from offchain.dle.archive import ROLE_VALIDATOR, ROLE_WITNESS
from offchain.dle.digests import Domains
from offchain.dle.local import LocalDle, address_of_secret
from offchain.dle.member import Timeouts
from offchain.dle.note import NoteReader, chain_id_of, note_program
from offchain.dle.roles import ChainRoles
from offchain.dle.wallet import NoteChain
from offchain.odex.receipts import ReceiptIssued, receipt_terms
from offchain.odex.settlement import SettlementJournal, Settler

MAINCHAIN_ID = 43112
REGISTRY = b"\x11" * 20
CASH = b"\x22" * 20
VAULT = b"\x0d" * 20
DOMAINS = Domains(MAINCHAIN_ID, REGISTRY, CASH, VAULT)
FEE_BPS = 1  # ODEX_FEE_BPS: 0.01%
NATIVE = bytes(20)  # AVAX-like
ETH = b"\xee" * 20  # an ETH-like ERC-20
UNIT = 10**18

T = TypeVar("T")


def key(name: str) -> bytes:
    return keccak(b"odex test " + name.encode())


ALICE, BOB, CAROL, BOOK = key("alice"), key("bob"), key("carol"), key("book")


@dataclass
class RecordingMainchain:
    registered: list[tuple[Any, ...]] = field(default_factory=list)

    def meets_minimum(self, address: bytes, role: int) -> bool:
        return True

    def capacity(self, address: bytes, role: int) -> int:
        return 1_000_000

    def register_chain(self, *args: Any) -> None:
        self.registered.append(args)

    def report_equivocation(self, *args: Any) -> int:
        raise AssertionError(f"no equivocation expected: {args}")

    def report_fault(self, *args: Any) -> int:
        raise AssertionError(f"no fault expected: {args}")


@dataclass
class Receipt:
    """A receipt chain, as its depositor's wallet and the test's bookkeeping see it."""

    receipt: int
    asset: bytes
    owner: bytes
    amount: int
    chain: bytes
    roles: ChainRoles
    wallet: NoteChain

    @property
    def fee_recipients(self) -> list[bytes]:
        return [self.roles.creator, *self.roles.witnesses, self.roles.validators[0]]


@dataclass
class Odex:
    dle: LocalDle
    mainchain: RecordingMainchain
    receipts: list[Receipt] = field(default_factory=list)

    @property
    def reader(self) -> NoteReader:
        return NoteReader(self.dle.engine, note_program())

    async def deposit(self, owner: bytes, asset: bytes, amount: int) -> Receipt:
        """What the vault's `ReceiptIssued` starts: the receipt chain opened by the archive group's draw."""
        receipt = len(self.receipts) + 1
        issued = ReceiptIssued(
            receipt, asset, address_of_secret(owner), amount, chain_id_of(MAINCHAIN_ID, VAULT, receipt), FEE_BPS
        )
        terms = receipt_terms(issued, mainchain_id=MAINCHAIN_ID, vault=VAULT, cbdc=address_of_secret(key("cbdc")))
        await self.dle.open_note(terms)
        client = self.dle.client(issued.owner, submit_timeout=5.0)
        roles = (await client.roles(terms.chain)).roles
        wallet = NoteChain(
            receipt,
            terms.chain,
            0,
            DOMAINS,
            client,
            self.dle.group_of,
            self.reader,
            note_program(),
        )
        made = Receipt(receipt, asset, issued.owner, amount, terms.chain, roles, wallet)
        self.receipts.append(made)
        return made

    def head_state(self, chain: bytes) -> Any:
        archive = next(iter(self.dle.archives.values()))
        return archive.store.head(chain).state

    def balance(self, receipt: Receipt, who: bytes) -> int:
        address = who if len(who) == 20 else address_of_secret(who)
        return self.reader.balance(self.head_state(receipt.chain), receipt.chain, address)

    def accounts(self) -> set[bytes]:
        people = {address_of_secret(k) for k in (ALICE, BOB, CAROL, BOOK)}
        return people | set(self.dle.members) | {r for rec in self.receipts for r in rec.fee_recipients}

    def check_conservation(self, receipt: Receipt) -> None:
        """Σ balances + Σ exited == funded on the receipt chain, read from the archive's final head."""
        state = self.head_state(receipt.chain)
        total = sum(self.reader.balance(state, receipt.chain, a) for a in self.accounts())
        funded, exited = self.reader.supply(state, receipt.chain)
        assert funded == receipt.amount
        assert total + exited == funded

    def settler(self, journal: Path, **kwargs: Any) -> Settler:
        return Settler(
            self.dle.client(address_of_secret(BOOK), submit_timeout=5.0),
            DOMAINS,
            BOOK,
            SettlementJournal(journal),
            self.dle.engine,
            **kwargs,
        )


def local_odex(directory: Path) -> Odex:
    """Two archive nodes, a CBDC, 6 witnesses and 3 validators in one process."""
    mainchain = RecordingMainchain()
    dle = LocalDle(directory, DOMAINS, mainchain, timeouts=Timeouts(vote=2.0, accept=2.0, final=2.0, archive=10.0))
    dle.add_archives([key("archive 1"), key("archive 2")])
    dle.add_member(key("cbdc"))
    for i in range(6):
        dle.add_member(key(f"witness {i}"), role=ROLE_WITNESS)
    for i in range(3):
        dle.add_member(key(f"validator {i}"), role=ROLE_VALIDATOR)
    return Odex(dle, mainchain)


def run(coro: Awaitable[T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, 120)

    return asyncio.run(bounded())
