"""SI billing on the DLE note chains: authorizations checked on chain, bills settled as deductions.

DESIGN §7: "The node answers 200 only after it has verified the authorization on the note chain", and
charges "settle in batches as deductions on the note chains (never one chain transaction per
message)". Two pieces, both over the DLE as a wallet reaches it (`NoteChains`: the archive groups and
the note↔chain map from the mainchain, the DLE nodes over HTTP, every answer checked against the
archive group's certificate by `DleClient`):

* `NoteChainVerifier` — the node's `AuthorizationVerifier`. A registration names an authorization by
  (holder, nonce) on a note chain; the verifier reads the chain's certified head and, through the note
  program's `authorizationOf` view, requires that it exists, pays this node, is not revoked, has
  exactly the limit and expiry the registration claims, has something left, and that the holder's
  balance covers at least `min_balance` plus its fee. Only then does the node record the client and
  answer 200. A DLE that cannot be reached is `AuthorizationUnverifiable` (503), never a 200.
* `Settler` — takes what the node's clients have vouched and not settled (`NodeState.settlement_due`)
  and submits, per client and batch, ONE `deduct(holder, authorization, amount, nonce, expiry,
  signature)` signed by the node's key (the authorization's payee) to the client's note chain. The node
  records the deduction as settled (`NodeState.record_settlement`) only once the DLE's `Outcome` is
  final and checked.

Idempotence. The payee's nonce on the note chain is strictly sequential (`nonces(node)`), read from the
chain's head before signing, so at most one deduction signed with a given nonce can ever be applied.
Before submitting, the settler writes the signed transaction to its journal (`settlement.db` beside
`node.db`, fsynced). A round that ends without a final answer (a timeout, a crash, the node stopped)
leaves the entry there, and the next round resolves it from the chain before doing anything else on
that chain: the authorization's `spent` grew by the amount → it landed, record it; the payee's nonce
moved on without it → it can never land, drop it (the amount stays owed and goes in the next batch);
its signed expiry is past → the same; otherwise submit the very same bytes again. At most one entry
per note chain is in flight, so the payee's nonce there is never contended by the settler itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from eth_utils.address import to_canonical_address, to_checksum_address

from dle_vm.engine import Engine, default_engine
from dle_vm.state import State
from dle_vm.transaction import Transaction
from offchain.dle.client import DleClient, DleError
from offchain.dle.digests import Domains
from offchain.dle.note import NoteReader, NoteSigner, note_program
from offchain.dle.roles import ArchiveGroup, RolesError
from offchain.dle.transport import Transport, TransportError
from offchain.dle.wallet import NoteChain, WalletError
from offchain.si.ecies import KeyPair
from offchain.si.registration import (
    Authorization,
    AuthorizationRejected,
    AuthorizationUnverifiable,
    AuthorizationVerifier,
    OfflineAuthorizationVerifier,
)

if TYPE_CHECKING:
    from offchain.si.node import Deduction

__all__ = [
    "EXPIRY_MARGIN",
    "JOURNAL_FILE",
    "DleSettings",
    "InFlight",
    "NodeSettlement",
    "NoteChainVerifier",
    "NoteChains",
    "RoundRecord",
    "SettledDeduction",
    "SettlementError",
    "SettlementFailure",
    "SettlementHistory",
    "SettlementJournal",
    "SettlementRound",
    "SettlementState",
    "Settler",
    "UnknownNoteChain",
    "add_arguments",
    "open_settlement",
    "settlement_history",
]

log = logging.getLogger("offchain.si.settlement")
_T = TypeVar("_T")

JOURNAL_FILE = "settlement.db"
EXPIRY_MARGIN = 120
"""Seconds past a signed deduction's expiry before the settler gives it up: a block's timestamp may run
up to 60 s ahead of an archive node's clock, and clocks differ."""
_MAX_UINT64 = (1 << 64) - 1
_MAX_UINT128 = (1 << 128) - 1


class SettlementError(RuntimeError):
    """The settlement machinery cannot do what was asked (not a refused deduction: see `SettlementFailure`)."""


class SettlementConfigError(SettlementError, ValueError):
    """The node's DLE options do not fit together (a `ValueError`, so `node.main` reports it in one line)."""


class UnknownNoteChain(SettlementError):
    """The id names no CoNETCash note chain registered on the mainchain's DleRegistry."""


# -- the DLE as the SI node reaches it ---------------------------------------------------------------


class _Groups(Protocol):
    """`offchain.dle.mainchain.ArchiveGroups`: the current epoch of each archive group (cached)."""

    def refresh(self) -> dict[int, ArchiveGroup]: ...

    def group_of(self, group: int) -> ArchiveGroup: ...


Locate = Callable[[bytes], tuple[int, int] | None]
"""Blocking: a note chain id → (the note's id, the archive group keeping its chain), None if unknown."""


class NoteChains:
    """Note chains by id, each reached through its archive group's `DleClient` (as a wallet does).

    `locate` and `groups.refresh` talk to the mainchain (web3, blocking) and run in threads; the DLE
    calls go over `transport`. Views run in `engine` on the certified head's state, never written back."""

    def __init__(
        self,
        transport: Transport,
        groups: _Groups,
        domains: Domains,
        locate: Locate,
        *,
        engine: Engine | None = None,
        submit_timeout: float = 20.0,
        close: Callable[[], Any] | None = None,
    ) -> None:
        self.transport = transport
        self.groups = groups
        self.domains = domains
        self._locate = locate
        self._engine = engine or default_engine()
        self._submit_timeout = submit_timeout
        self._chains: dict[bytes, NoteChain] = {}
        self._close = close

    @classmethod
    def from_devnet(cls, directory: Path, *, submit_timeout: float = 20.0) -> NoteChains:
        """The DLE devnet described by `directory/devnet.json` (offchain/devnet/dle.py): its anvil, its
        contracts, and every DLE node's URL. Blocking (it asks anvil for its chain id)."""
        from offchain.devnet.dle import DevnetClient, DevnetError

        try:
            client = DevnetClient.open(directory)
        except DevnetError as error:
            raise SettlementConfigError(str(error)) from error
        cash = client.domains.cash

        def locate(chain: bytes) -> tuple[int, int] | None:
            if not client.chain.is_registered(chain):
                return None
            record = client.chain.chain_record(chain)
            # Another asset's chain (an order book, an NFT) runs another program: not a note.
            if to_canonical_address(record.asset) != cash:
                return None
            return record.asset_id, record.group

        note_program()  # loaded (compiled if stale) here, in a thread, not at the first registration
        transport = client.transport()
        return cls(
            transport, client.groups, client.domains, locate, submit_timeout=submit_timeout, close=transport.aclose
        )

    async def refresh(self) -> None:
        """Re-read the archive groups' epochs (a group changes when an archive node (un)stakes)."""
        await asyncio.to_thread(self.groups.refresh)

    async def open(self, note_chain: bytes) -> NoteChain:
        """A wallet view of the note chain `note_chain`; `UnknownNoteChain` if it is not a registered note's."""
        chain = self._chains.get(note_chain)
        if chain is not None:
            return chain
        located = await asyncio.to_thread(self._locate, note_chain)
        if located is None:
            raise UnknownNoteChain(f"0x{note_chain.hex()} is no registered CoNETCash note chain")
        note, group = located
        # Read the group now (blocking, in a thread): DleClient looks it up synchronously later.
        await asyncio.to_thread(self.groups.group_of, group)
        client = DleClient(
            self.transport, self.groups.group_of, self.domains, group=group, submit_timeout=self._submit_timeout
        )
        program = note_program()
        reader = NoteReader(self._engine, program)
        chain = NoteChain(note, note_chain, group, self.domains, client, self.groups.group_of, reader, program)
        self._chains[note_chain] = chain
        return chain

    async def aclose(self) -> None:
        if self._close is not None:
            result = self._close()
            if asyncio.iscoroutine(result):
                await result


@dataclass(frozen=True)
class _OnChain:
    """An authorization as the note program records it (`authorizationOf`), and the head it was read at."""

    height: int
    payee: bytes
    expiry: int
    revoked: bool
    limit: int
    spent: int

    @property
    def exists(self) -> bool:
        return self.payee != bytes(20)


def _authorization_of(chain: NoteChain, state: State, holder: bytes, nonce: int, height: int) -> _OnChain:
    ((payee, expiry, revoked, limit, spent),) = chain.reader.view(state, chain.chain, "authorizationOf", holder, nonce)
    return _OnChain(height, to_canonical_address(payee), int(expiry), bool(revoked), int(limit), int(spent))


def _fee_of(chain: NoteChain, state: State, amount: int) -> int:
    return int(chain.reader.view(state, chain.chain, "feeOf", amount)[0])


_UNREACHABLE = (DleError, WalletError, TransportError, RolesError, OSError, TimeoutError)


# -- 1. the authorization, verified on the note chain -------------------------------------------------


@dataclass
class NoteChainVerifier:
    """`AuthorizationVerifier` that requires the authorization final on its note chain (see the module).

    Refusals travel in clear through the relay, so they name no holder, payee or chain: only numbers."""

    chains: NoteChains
    node: bytes
    """This node's address: the payee the authorization must name on the chain."""
    min_balance: int = 1
    """The holder's balance must cover this much plus its transfer fee, or the node would serve for nothing."""
    final_on_chain: bool = field(default=True, init=False)

    async def verify(self, authorization: Authorization, *, now: int) -> None:
        # The registration's signature first (cheap, offline): the holder signed exactly these terms.
        await OfflineAuthorizationVerifier().verify(authorization, now=now)
        domains = self.chains.domains
        if (authorization.chain_id, authorization.cash) != (domains.mainchain_id, domains.cash):
            raise AuthorizationRejected("the authorization is for another main chain or CoNETCash than this node's DLE")
        try:
            chain = await self.chains.open(authorization.note_chain)
            terms = await chain.signing_terms()  # checks the chain's program signs under this domain
            if terms.chain != authorization.note_chain:
                raise AuthorizationRejected("the note chain's program is not the note it claims")
            height, state = await chain.head()
            recorded = _authorization_of(chain, state, authorization.holder, authorization.nonce, height)
            balance = chain.reader.balance(state, chain.chain, authorization.holder)
            fee = _fee_of(chain, state, self.min_balance)
        except UnknownNoteChain as error:
            raise AuthorizationRejected("the note chain is no CoNETCash note chain known to the mainchain") from error
        except WalletError as error:
            if "signs under another domain" in str(error):
                raise AuthorizationRejected("the note chain signs under another EIP-712 domain") from error
            raise AuthorizationUnverifiable(f"the note chain could not be read: {error}") from error
        except _UNREACHABLE as error:
            raise AuthorizationUnverifiable(f"the DLE could not be reached: {type(error).__name__}") from error
        self._check(authorization, recorded, balance, fee, now)
        log.info(
            "authorization %d verified on the note chain at height %d (limit %d, %d spent, balance %d)",
            authorization.nonce,
            height,
            recorded.limit,
            recorded.spent,
            balance,
        )

    def _check(self, authorization: Authorization, recorded: _OnChain, balance: int, fee: int, now: int) -> None:
        nonce = authorization.nonce
        if not recorded.exists:
            raise AuthorizationRejected(
                f"no authorization {nonce} of the registering client is final on the note chain "
                f"(height {recorded.height}): submit it there first"
            )
        if recorded.payee != self.node:
            raise AuthorizationRejected(f"authorization {nonce} on the note chain pays another payee, not this node")
        if recorded.revoked:
            raise AuthorizationRejected(f"authorization {nonce} is revoked on the note chain")
        # The program clamps what it stores (limit to 128 bits, expiry to 64): compare like with like.
        claimed = (min(authorization.limit, _MAX_UINT128), min(authorization.expiry, _MAX_UINT64))
        if (recorded.limit, recorded.expiry) != claimed:
            raise AuthorizationRejected(
                f"authorization {nonce} on the note chain has limit {recorded.limit} and expiry {recorded.expiry}, "
                f"the registration claims {authorization.limit} and {authorization.expiry}"
            )
        if recorded.expiry <= now:
            raise AuthorizationRejected(f"authorization {nonce} expired at {recorded.expiry}")
        if recorded.spent >= recorded.limit:
            raise AuthorizationRejected(f"authorization {nonce} is used up ({recorded.spent} of {recorded.limit})")
        if balance < self.min_balance + fee:
            raise AuthorizationRejected(
                f"the holder's balance on the note chain, {balance}, does not cover {self.min_balance} "
                f"plus its fee {fee}"
            )


# -- 2. settlement ---------------------------------------------------------------------------------------


class SettlementState(Protocol):
    """What the settler needs of the node's state (`node.NodeState`)."""

    async def run(self, function: Callable[..., _T], *args: Any) -> _T: ...

    def settlement_due(self, *, now: int) -> list[Deduction]: ...

    def record_settlement(
        self, note_chain: bytes, holder: bytes, authorization_nonce: int, settled_total: int
    ) -> int: ...


@dataclass(frozen=True)
class InFlight:
    """A deduction signed and (about to be) submitted, not yet known final: the journal's `in_flight` row."""

    note_chain: bytes
    holder: bytes
    authorization: int
    amount: int
    settled_total: int
    """What the client's settled total becomes once this lands (its voucher's cumulative amount)."""
    payee_nonce: int
    spent_before: int
    """The authorization's `spent` on the chain when it was signed: it landed iff spent ≥ this + amount."""
    expiry: int
    """The signed Deduct message's expiry (Unix seconds)."""
    transaction: bytes
    """`Transaction.encode()`: resubmitted byte for byte."""
    created_at: int
    attempts: int = 0
    uncertain: bool = False
    """A submission ended without a clear answer: a copy may still be on its way to a block."""


@dataclass(frozen=True)
class SettledDeduction:
    """A deduction final on its note chain (the journal's `settled` row)."""

    note_chain: bytes
    holder: str
    authorization: int
    amount: int
    fee: int | None
    """Charged to the holder on top (None when found final by reading the chain after a lost answer)."""
    payee_nonce: int
    height: int | None
    """The block that holds it (None: found final at a later head, the block not observed)."""
    block_hash: bytes | None
    settled_at: int


@dataclass(frozen=True)
class SettlementFailure:
    """A deduction the note chain refused (it stays owed) or that could not be submitted this round."""

    note_chain: bytes
    holder: str
    amount: int
    reason: str


@dataclass
class SettlementRound:
    """What one round did."""

    number: int
    started_at: int
    trigger: str = "demand"
    """Why it ran: "start" (the loop's first), "schedule" (every --settle-every) or "demand" (woken)."""
    submitted: int = 0
    """Deduction transactions sent to the DLE (a resubmission of the same bytes counts again)."""
    settled: list[SettledDeduction] = field(default_factory=list)
    failed: list[SettlementFailure] = field(default_factory=list)
    pending: int = 0
    """Entries left in flight (resolved in a later round)."""
    deferred: int = 0
    """Due deductions left for a later round (their note chain had an entry in flight)."""

    def summary(self) -> str:
        settled = sum(s.amount for s in self.settled)
        return (
            f"round {self.number} ({self.trigger}): {self.submitted} deductions submitted, {len(self.settled)} final "
            f"({settled} units), {len(self.failed)} refused, {self.pending} in flight, {self.deferred} deferred"
        )


_JOURNAL_SCHEMA = """
CREATE TABLE IF NOT EXISTS in_flight (     -- at most one per note chain: the payee's nonce there is ours
    note_chain     BLOB PRIMARY KEY CHECK (length(note_chain) = 32),
    holder         BLOB    NOT NULL CHECK (length(holder) = 20),
    authorization  TEXT    NOT NULL,
    amount         TEXT    NOT NULL,
    settled_total  TEXT    NOT NULL,
    payee_nonce    TEXT    NOT NULL,
    spent_before   TEXT    NOT NULL,
    expiry         INTEGER NOT NULL,
    tx             BLOB    NOT NULL,
    created_at     INTEGER NOT NULL,
    attempts       INTEGER NOT NULL,
    uncertain      INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS settled (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    note_chain     BLOB    NOT NULL,
    holder         BLOB    NOT NULL,
    authorization  TEXT    NOT NULL,
    amount         TEXT    NOT NULL,
    fee            TEXT,
    payee_nonce    TEXT    NOT NULL,
    height         INTEGER,
    block_hash     BLOB,
    settled_at     INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS rounds (     -- the latest rounds (older ones are pruned)
    number      INTEGER PRIMARY KEY,
    started_at  INTEGER NOT NULL,
    trigger     TEXT    NOT NULL,
    submitted   INTEGER NOT NULL,
    settled     INTEGER NOT NULL,
    failed      INTEGER NOT NULL,
    pending     INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
) WITHOUT ROWID;
"""
_ROUNDS_KEPT = 1000


def _connect(path: Path, *, read_only: bool = False) -> sqlite3.Connection:
    if read_only:
        return sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    db = sqlite3.connect(path, isolation_level=None, timeout=10, check_same_thread=False)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")  # an entry written before a submission survives a crash
    db.executescript(_JOURNAL_SCHEMA)
    return db


def _in_flight_of(row: Sequence[Any]) -> InFlight:
    chain, holder, auth, amount, total, nonce, spent, expiry, tx, created, attempts, uncertain = row
    return InFlight(
        bytes(chain),
        bytes(holder),
        int(auth),
        int(amount),
        int(total),
        int(nonce),
        int(spent),
        int(expiry),
        bytes(tx),
        int(created),
        int(attempts),
        bool(uncertain),
    )


def _settled_of(row: Sequence[Any]) -> SettledDeduction:
    chain, holder, auth, amount, fee, nonce, height, block_hash, at = row
    return SettledDeduction(
        bytes(chain),
        to_checksum_address(bytes(holder)),
        int(auth),
        int(amount),
        None if fee is None else int(fee),
        int(nonce),
        height,
        None if block_hash is None else bytes(block_hash),
        int(at),
    )


_IN_FLIGHT_COLUMNS = (
    "note_chain, holder, authorization, amount, settled_total, payee_nonce, spent_before, expiry, tx, "
    "created_at, attempts, uncertain"
)
_SETTLED_COLUMNS = "note_chain, holder, authorization, amount, fee, payee_nonce, height, block_hash, settled_at"


class SettlementJournal:
    """The settler's SQLite file (`settlement.db`, WAL, synchronous FULL): deductions in flight, the
    deductions settled (with their blocks), and the round counter. Each method is one transaction."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = _connect(self.path)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def in_flight(self) -> list[InFlight]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_IN_FLIGHT_COLUMNS} FROM in_flight ORDER BY note_chain").fetchall()
        return [_in_flight_of(row) for row in rows]

    def put(self, entry: InFlight) -> None:
        """Record `entry` before its first submission (refused if its chain has one in flight already)."""
        with self._write() as db:
            db.execute(
                f"INSERT INTO in_flight ({_IN_FLIGHT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    entry.note_chain,
                    entry.holder,
                    str(entry.authorization),
                    str(entry.amount),
                    str(entry.settled_total),
                    str(entry.payee_nonce),
                    str(entry.spent_before),
                    entry.expiry,
                    entry.transaction,
                    entry.created_at,
                    entry.attempts,
                    int(entry.uncertain),
                ),
            )

    def attempted(self, entry: InFlight, *, uncertain: bool) -> InFlight:
        """Count a submission; `uncertain` once any ended without a clear answer (it stays so)."""
        updated = dataclasses.replace(entry, attempts=entry.attempts + 1, uncertain=entry.uncertain or uncertain)
        with self._write() as db:
            db.execute(
                "UPDATE in_flight SET attempts = ?, uncertain = ? WHERE note_chain = ?",
                (updated.attempts, int(updated.uncertain), entry.note_chain),
            )
        return updated

    def drop(self, entry: InFlight) -> None:
        with self._write() as db:
            db.execute("DELETE FROM in_flight WHERE note_chain = ?", (entry.note_chain,))

    def finish(self, entry: InFlight, settled: SettledDeduction) -> None:
        """The entry landed: out of flight and into the settled history, in one transaction."""
        with self._write() as db:
            db.execute("DELETE FROM in_flight WHERE note_chain = ?", (entry.note_chain,))
            db.execute(
                f"INSERT INTO settled ({_SETTLED_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    settled.note_chain,
                    to_canonical_address(settled.holder),
                    str(settled.authorization),
                    str(settled.amount),
                    None if settled.fee is None else str(settled.fee),
                    str(settled.payee_nonce),
                    settled.height,
                    settled.block_hash,
                    settled.settled_at,
                ),
            )

    def next_round(self) -> int:
        with self._write() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'rounds'").fetchone()
            number = (int(row[0]) if row else 0) + 1
            db.execute(
                "INSERT INTO meta VALUES ('rounds', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(number),),
            )
        return number

    def end_round(self, report: SettlementRound) -> None:
        with self._write() as db:
            db.execute(
                "INSERT OR REPLACE INTO rounds VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    report.number,
                    report.started_at,
                    report.trigger,
                    report.submitted,
                    len(report.settled),
                    len(report.failed),
                    report.pending,
                ),
            )
            db.execute("DELETE FROM rounds WHERE number <= ?", (report.number - _ROUNDS_KEPT,))

    def settled(self) -> list[SettledDeduction]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_SETTLED_COLUMNS} FROM settled ORDER BY id").fetchall()
        return [_settled_of(row) for row in rows]


@dataclass(frozen=True)
class RoundRecord:
    """A finished round as the journal keeps it."""

    number: int
    started_at: int
    trigger: str
    submitted: int
    settled: int
    failed: int
    pending: int


@dataclass(frozen=True)
class SettlementHistory:
    """A node's settlement journal as `conet si earnings` shows it."""

    rounds: int
    """Rounds started so far."""
    recent: list[RoundRecord]
    """The latest finished rounds, oldest first."""
    settled: list[SettledDeduction]
    in_flight: list[InFlight]


def settlement_history(data_dir: str | Path) -> SettlementHistory | None:
    """The journal of the node in `data_dir`, read without writing; None if the node never settled."""
    path = Path(data_dir) / JOURNAL_FILE
    if not path.exists():
        return None
    db = _connect(path, read_only=True)
    try:
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        recent = [RoundRecord(*row) for row in db.execute("SELECT * FROM rounds ORDER BY number")]
        settled = [_settled_of(r) for r in db.execute(f"SELECT {_SETTLED_COLUMNS} FROM settled ORDER BY id")]
        flying = [_in_flight_of(r) for r in db.execute(f"SELECT {_IN_FLIGHT_COLUMNS} FROM in_flight")]
    finally:
        db.close()
    return SettlementHistory(int(meta.get("rounds", 0)), recent, settled, flying)


class Settler:
    """Settles the node's vouched bills on the note chains, one deduction per client and batch.

    `settle()` runs one round (also on demand); `run(every)` runs rounds every `every` seconds and
    whenever `wake()` is called (the node process wires SIGUSR1 to it). Rounds never overlap."""

    def __init__(
        self,
        state: SettlementState,
        chains: NoteChains,
        key: KeyPair,
        journal: SettlementJournal,
        *,
        clock: Callable[[], float] = time.time,
        message_ttl: int = 600,
    ) -> None:
        self.state = state
        self.chains = chains
        self.key = key
        self.journal = journal
        self.clock = clock
        self.message_ttl = message_ttl
        """Seconds a signed deduction stays valid (never beyond its authorization's expiry)."""
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self.last: SettlementRound | None = None

    def now(self) -> int:
        return int(self.clock())

    def wake(self) -> None:
        """Ask `run` for a round now (on demand)."""
        self._wake.set()

    async def run(self, every: float | None) -> None:
        """A round at once (it finishes what a crash left in flight), then every `every` seconds (None or
        0: only when woken). Runs until cancelled; a failed round is logged and the next one runs."""
        trigger = "start"
        while True:
            try:
                await self.settle(trigger=trigger)
            except Exception:  # the loop must outlive one bad round (a DLE or mainchain hiccup)
                log.exception("settlement round failed")
            try:
                await asyncio.wait_for(self._wake.wait(), every or None)
                trigger = "demand"
            except TimeoutError:
                trigger = "schedule"
            self._wake.clear()

    async def _journal(self, function: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        # Journal writes fsync: off the event loop.
        return await asyncio.to_thread(function, *args, **kwargs)

    async def settle(self, *, trigger: str = "demand") -> SettlementRound:
        """One round: resolve what is in flight, then submit the batch. Returns what it did."""
        async with self._lock:
            report = SettlementRound(await self._journal(self.journal.next_round), self.now(), trigger)
            try:
                await self.chains.refresh()
            except Exception as error:  # the cached groups may still do; a stale one fails verification
                log.warning("settle: could not re-read the archive groups: %s", error)
            for entry in await self._journal(self.journal.in_flight):
                await self._resolve(entry, report)
            busy = {entry.note_chain for entry in await self._journal(self.journal.in_flight)}
            due = await self.state.run(lambda: self.state.settlement_due(now=self.now()))
            for deduction in due:
                if deduction.note_chain in busy:
                    report.deferred += 1
                    continue
                if await self._settle_one(deduction, report):
                    busy.add(deduction.note_chain)
            report.pending = len(await self._journal(self.journal.in_flight))
            await self._journal(self.journal.end_round, report)
            self.last = report
            if report.submitted or report.failed or report.pending:
                log.info("settle: %s", report.summary())
            else:
                log.debug("settle: %s", report.summary())
            return report

    # -- one deduction ----------------------------------------------------------------------------------

    async def _settle_one(self, deduction: Deduction, report: SettlementRound) -> bool:
        """Sign and submit one client's deduction; True if it is left in flight."""
        holder = to_canonical_address(deduction.holder)
        amount = deduction.amount

        def failed(reason: str) -> bool:
            report.failed.append(SettlementFailure(deduction.note_chain, deduction.holder, amount, reason))
            log.warning("settle: %d units of %s not deducted: %s", amount, deduction.holder, reason)
            return False

        try:
            chain = await self.chains.open(deduction.note_chain)
            terms = await chain.signing_terms()
            height, state = await chain.head()
            recorded = _authorization_of(chain, state, holder, deduction.authorization_nonce, height)
            balance = chain.reader.balance(state, chain.chain, holder)
            fee = _fee_of(chain, state, amount)
            nonce = chain.reader.nonce(state, chain.chain, self.key.address)
        except (UnknownNoteChain, *_UNREACHABLE) as error:
            return failed(f"the note chain could not be read: {error}")
        now = self.now()
        # Checked here so a refusal is explained in words (the program would refuse the same, in a revert).
        if recorded.payee != self.key.address:
            return failed(f"authorization {deduction.authorization_nonce} does not pay this node on the chain")
        if recorded.revoked:
            return failed(f"authorization {deduction.authorization_nonce} was revoked")
        if recorded.expiry <= now:
            return failed(f"authorization {deduction.authorization_nonce} expired at {recorded.expiry}")
        if amount > recorded.limit - recorded.spent:
            return failed(f"{amount} is over what the authorization has left, {recorded.limit - recorded.spent}")
        if balance < amount + fee:
            return failed(f"the holder's balance {balance} does not cover {amount} plus the fee {fee}")
        expiry = min(now + self.message_ttl, recorded.expiry)
        tx = NoteSigner(terms, chain.program).deduct(
            self.key.secret, self.key.address, holder, deduction.authorization_nonce, amount, nonce, expiry
        )
        entry = InFlight(
            deduction.note_chain,
            holder,
            deduction.authorization_nonce,
            amount,
            deduction.settled_total,
            nonce,
            recorded.spent,
            expiry,
            tx.encode(),
            now,
        )
        # Written (and fsynced) before the DLE sees it: whatever happens next, the next round can resolve it.
        await self._journal(self.journal.put, entry)
        return await self._submit(entry, chain, report)

    async def _submit(self, entry: InFlight, chain: NoteChain, report: SettlementRound) -> bool:
        """Submit the entry's transaction; True if it stays in flight."""
        report.submitted += 1
        holder = to_checksum_address(entry.holder)
        try:
            outcome = await chain.client.submit(chain.chain, [Transaction.decode(entry.transaction)])
        except DleError as error:
            # "reverted": the creator executed it on the head and it failed, so this submission entered no
            # block. Unless an earlier one of the same bytes is unaccounted for, or the nonce was taken (by
            # our own copy, perhaps, after a retry inside the client), nothing of it can land any more.
            if error.code == "reverted" and not entry.uncertain and "InvalidNonce" not in error.message:
                await self._journal(self.journal.drop, entry)
                report.failed.append(SettlementFailure(entry.note_chain, holder, entry.amount, error.message))
                log.warning("settle: the note chain refused %d units of %s: %s", entry.amount, holder, error.message)
                return False
            await self._journal(self.journal.attempted, entry, uncertain=True)
            log.warning("settle: %d units of %s in flight (%s); resolved next round", entry.amount, holder, error)
            return True
        except Exception as error:  # a timeout or a broken connection: it may or may not be final
            await self._journal(self.journal.attempted, entry, uncertain=True)
            log.warning("settle: %d units of %s in flight (%s); resolved next round", entry.amount, holder, error)
            return True
        (receipt,) = outcome.receipts
        if not receipt.success:  # the creator drops failing transactions, so this should not happen
            await self._journal(self.journal.attempted, entry, uncertain=True)
            log.warning("settle: the deduction of %s failed in a final block; resolved next round", holder)
            return True
        (fee,) = chain.program.returns("deduct", receipt.output)
        await self._record(entry, report, fee=int(fee), height=outcome.block.header.height, block=outcome.block.hash)
        return False

    async def _record(
        self, entry: InFlight, report: SettlementRound, *, fee: int | None, height: int | None, block: bytes | None
    ) -> None:
        """The node's state first, then the journal: a crash between the two re-records nothing (the
        state's record is idempotent by the settled total)."""
        added = await self.state.run(
            self.state.record_settlement, entry.note_chain, entry.holder, entry.authorization, entry.settled_total
        )
        settled = SettledDeduction(
            entry.note_chain,
            to_checksum_address(entry.holder),
            entry.authorization,
            entry.amount,
            fee,
            entry.payee_nonce,
            height,
            block,
            self.now(),
        )
        await self._journal(self.journal.finish, entry, settled)
        report.settled.append(settled)
        log.info(
            "settle: %d units deducted from %s under authorization %d%s (recorded %d)",
            entry.amount,
            settled.holder,
            entry.authorization,
            f", final in block {height}" if height is not None else ", found final on the chain",
            added,
        )

    async def _resolve(self, entry: InFlight, report: SettlementRound) -> None:
        """An entry left in flight by an earlier round: landed, lost, or to be submitted again."""
        try:
            chain = await self.chains.open(entry.note_chain)
            height, state = await chain.head()
            recorded = _authorization_of(chain, state, entry.holder, entry.authorization, height)
            nonce = chain.reader.nonce(state, chain.chain, self.key.address)
        except (UnknownNoteChain, *_UNREACHABLE) as error:
            log.warning("settle: cannot resolve the deduction on 0x%s yet: %s", entry.note_chain.hex()[:12], error)
            return
        if recorded.spent >= entry.spent_before + entry.amount and nonce > entry.payee_nonce:
            await self._record(entry, report, fee=None, height=None, block=None)
            return
        if nonce > entry.payee_nonce or self.now() > entry.expiry + EXPIRY_MARGIN:
            # Its nonce went to something else, or its signature expired: it can never be applied.
            await self._journal(self.journal.drop, entry)
            log.info(
                "settle: the deduction of %d units signed with nonce %d can no longer land; due again",
                entry.amount,
                entry.payee_nonce,
            )
            return
        await self._submit(entry, chain, report)


# -- the node process's options and wiring ---------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`python -m offchain.si.node`'s DLE options. Without `--devnet`: the offline verifier, no settlement."""
    group = parser.add_argument_group("note chains (DLE)")
    group.add_argument(
        "--devnet",
        type=Path,
        default=None,
        help="a DLE devnet directory (devnet.json): verify authorizations on their note chains there",
    )
    group.add_argument(
        "--settle-every",
        type=float,
        default=None,
        metavar="SECONDS",
        help="settle vouched bills on the note chains this often (0: only on SIGUSR1); needs --devnet",
    )
    group.add_argument(
        "--min-balance",
        type=int,
        default=1,
        help="units (plus their fee) a registering holder must hold on its note chain",
    )


@dataclass(frozen=True)
class DleSettings:
    devnet: Path | None = None
    settle_every: float | None = None
    min_balance: int = 1

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> DleSettings:
        settings = cls(
            getattr(args, "devnet", None), getattr(args, "settle_every", None), getattr(args, "min_balance", 1)
        )
        if settings.settle_every is not None and settings.devnet is None:
            raise SettlementConfigError("--settle-every needs --devnet: the note chains to settle on")
        if settings.settle_every is not None and settings.settle_every < 0:
            raise SettlementConfigError("--settle-every is a number of seconds, 0 or more")
        return settings


class NodeSettlement:
    """The node process's DLE side: its verifier and (when asked) its settler. Without a DLE, the
    offline verifier and nothing else, as before."""

    def __init__(
        self, config: Any, verifier: AuthorizationVerifier, chains: NoteChains | None, every: float | None
    ) -> None:
        self.config = config
        """The node's `NodeConfig`, its CoNETCash taken from the DLE when it was left unset."""
        self.verifier = verifier
        self.chains = chains
        self.every = every
        self.settler: Settler | None = None
        self._task: asyncio.Task[None] | None = None
        self._journal: SettlementJournal | None = None

    def start(self, state: SettlementState, data_dir: str | Path, key: KeyPair) -> None:
        """Start the settler's loop (if `--settle-every` was given); SIGUSR1 asks for a round at once."""
        if self.chains is None or self.every is None:
            return
        self._journal = SettlementJournal(Path(data_dir) / JOURNAL_FILE)
        self.settler = Settler(state, self.chains, key, self._journal)
        self._task = asyncio.create_task(self.settler.run(self.every))
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, self.settler.wake)
        log.info(
            "settling on the note chains %s, and on SIGUSR1",
            f"every {self.every:g} s" if self.every else "only on demand",
        )

    async def close(self) -> None:
        if self._task is not None:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGUSR1)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._journal is not None:
            self._journal.close()
        if self.chains is not None:
            await self.chains.aclose()


async def open_settlement(args: argparse.Namespace, key: KeyPair, config: Any) -> NodeSettlement:
    """The DLE side of a node process from its options (`add_arguments`)."""
    settings = DleSettings.from_args(args)
    if settings.devnet is None:
        return NodeSettlement(config, OfflineAuthorizationVerifier(), None, None)
    chains = await asyncio.to_thread(NoteChains.from_devnet, settings.devnet)
    domains = chains.domains
    # The node takes authorizations under its DLE's domain: an unset --cash means the DLE's CoNETCash.
    if config.cash == bytes(20):
        config = dataclasses.replace(config, cash=domains.cash)
    if (config.chain_id, config.cash) != (domains.mainchain_id, domains.cash):
        await chains.aclose()
        raise SettlementConfigError(
            f"--chain-id {config.chain_id} and --cash {to_checksum_address(config.cash)} are not the devnet's "
            f"({domains.mainchain_id}, {to_checksum_address(domains.cash)})"
        )
    await chains.refresh()
    verifier = NoteChainVerifier(chains, key.address, min_balance=settings.min_balance)
    log.info("authorizations are verified on their note chains (DLE devnet %s)", settings.devnet)
    return NodeSettlement(config, verifier, chains, settings.settle_every)
