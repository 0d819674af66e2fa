"""Settlement of oDEX fills on the traders' receipt chains: two `deductTo` legs per fill.

A `Fill` (offchain/odex/book.py) is settled by the order book's key — the payee of every order's
authorization — as two DLE transactions of the note program (contracts/dle/NoteLedger.sol):

* the **base leg**, on the seller's base receipt chain: `deductTo(seller, sell_authorization, buyer,
  base)` — the buyer now holds `base` on the seller's receipt, the seller paid base + fee;
* the **quote leg**, on the buyer's quote receipt chain: `deductTo(buyer, buy_authorization, seller,
  quote)` — the seller now holds `quote` on the buyer's receipt, the buyer paid quote + fee.

Each `DeductTo` is signed by the book with its own sequential nonce on that chain, read from the chain's
certified head (`DleClient.head`); the legs of one batch on one chain go in ONE submission (one block).

Order and failure (docs/protocols.md, "oDEX settlement"). The two legs live on two chains, so they cannot
be atomic. The settler narrows the gap in three steps:
1. **Check both legs before either is submitted**: every leg of the batch is executed, in order, on its
   chain's certified head state with the real program (the same engine the members run), signed with the
   nonce it will carry. A fill with a leg the program refuses (authorization revoked — the order was
   cancelled on chain —, expired, over its limit, the holder's balance short) is refused with the
   program's reason and neither leg is submitted; the check is repeated until no other fill's nonces
   moved.
2. **Base legs first**: the base legs of the checked fills are submitted and waited for until final. A
   chain whose submission is refused (something changed since the check) is retried leg by leg, so a
   refusal costs only the fills that really fail; a fill whose base leg is refused is refused, cleanly.
3. **Quote legs next**, checked again on fresh heads and submitted the same way.

Residual risk: between step 3's check and its block, a buyer can still revoke its authorization or spend
its quote balance on its own receipt chain; the fill is then **half settled** (the seller delivered, the
buyer did not pay). It is reported as `HALF` with the program's reason and kept in the journal for the
book's operator; the window is one DLE round. Doing the quote leg first would move the same risk to the
seller's side.

Idempotence. Every fill is journaled (SQLite, like offchain/si/settlement.py) under its id, the hash of
its encoding: a fill already settled, refused or half settled is answered from the journal and never
submitted again. Every signed leg is written to the journal before the DLE sees it; a run that ends
without an answer (timeout, crash) leaves it in flight, and the next `settle` resolves it first: the
book's nonce on the chain moved past the leg's → it is final (the book signs nothing else with that
nonce while the entry is in flight); otherwise the same bytes are submitted again, or, once they expired,
dropped and the leg is planned anew.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from dle_vm.encoding import encode_rlp
from dle_vm.engine import BlockContext, Engine, InvalidTransaction, apply_transactions, default_engine
from dle_vm.hashing import keccak
from dle_vm.state import State
from dle_vm.transaction import Transaction
from offchain.dle.client import DleClient, DleError
from offchain.dle.digests import Domains
from offchain.dle.local import address_of_secret
from offchain.dle.note import NoteReader, NoteSigner, NoteTerms, Program, note_program
from offchain.odex.book import Fill

__all__ = [
    "EXPIRY_MARGIN",
    "FillReport",
    "FillStatus",
    "Leg",
    "LegReport",
    "SettlementJournal",
    "Settler",
    "fill_id",
]

log = logging.getLogger("conet.odex.settlement")

EXPIRY_MARGIN = 120
"""Seconds past a signed leg's expiry before an in-flight leg is given up: a block's timestamp may run
ahead of this clock."""


class Leg(StrEnum):
    BASE = "base"
    """On the seller's base receipt chain: `base` from the seller to the buyer."""
    QUOTE = "quote"
    """On the buyer's quote receipt chain: `quote` from the buyer to the seller."""


class FillStatus(StrEnum):
    SETTLED = "settled"
    """Both legs final."""
    REFUSED = "refused"
    """No leg moved: the program refuses a leg (the reason says which and why)."""
    HALF = "half"
    """The base leg is final, the quote leg was refused after it: see the module's residual risk."""
    PENDING = "pending"
    """A leg is in flight without a final answer (the DLE unreachable); the next `settle` resolves it."""


def fill_id(fill: Fill) -> bytes:
    """The fill's identity in the journal: the hash of its RLP encoding (sequence and market included)."""
    return keccak(encode_rlp(fill.to_rlp()))


@dataclass(frozen=True)
class LegReport:
    """One leg as it ended: final (with its block height and fee; None when found final after a crash),
    or not, with the program's reason."""

    leg: Leg
    chain: bytes
    holder: bytes
    to: bytes
    amount: int
    final: bool
    height: int | None = None
    fee: int | None = None
    reason: str | None = None


@dataclass(frozen=True)
class FillReport:
    fill: Fill
    status: FillStatus
    base: LegReport | None = None
    quote: LegReport | None = None
    reason: str | None = None
    replayed: bool = False
    """True when the fill was already in the journal: this report is the recorded one, nothing was sent."""


@dataclass
class _Leg:
    """A leg being planned or in flight."""

    fill: bytes
    leg: Leg
    chain: bytes
    holder: bytes
    authorization: int
    to: bytes
    amount: int
    nonce: int = -1
    expiry: int = 0
    tx: bytes = b""
    height: int | None = None
    fee: int | None = None
    reason: str | None = None

    def report(self, final: bool) -> LegReport:
        return LegReport(
            self.leg, self.chain, self.holder, self.to, self.amount, final, self.height, self.fee, self.reason
        )


def _legs_of(fill: Fill, key: bytes) -> tuple[_Leg, _Leg]:
    return (
        _Leg(key, Leg.BASE, fill.sell_receipt_chain, fill.seller, fill.sell_authorization, fill.buyer, fill.base),
        _Leg(key, Leg.QUOTE, fill.buy_receipt_chain, fill.buyer, fill.buy_authorization, fill.seller, fill.quote),
    )


# -- the journal ------------------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS fills (
    id BLOB PRIMARY KEY,        -- fill_id(fill)
    sequence INTEGER NOT NULL,
    fill BLOB NOT NULL,         -- RLP of the fill
    status TEXT NOT NULL,       -- pending | settled | refused | half
    reason TEXT
);
CREATE TABLE IF NOT EXISTS legs (
    fill BLOB NOT NULL,
    leg TEXT NOT NULL,          -- base | quote
    chain BLOB NOT NULL,
    nonce INTEGER NOT NULL,     -- the book's nonce on the chain
    expiry INTEGER NOT NULL,    -- the signed DeductTo's expiry
    tx BLOB NOT NULL,           -- Transaction.encode()
    state TEXT NOT NULL,        -- flight | final
    height INTEGER,
    fee INTEGER,
    PRIMARY KEY (fill, leg)
);
"""


class SettlementJournal:
    """The settler's SQLite journal (one writer: the settler's lock). Writes commit at once, so whatever
    the DLE may have seen is on disk first (`synchronous=FULL`)."""

    def __init__(self, path: Path | str) -> None:
        self._db = sqlite3.connect(str(path), isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def status(self, key: bytes) -> tuple[FillStatus, str | None] | None:
        row = self._db.execute("SELECT status, reason FROM fills WHERE id = ?", (key,)).fetchone()
        return None if row is None else (FillStatus(row[0]), row[1])

    def add(self, key: bytes, fill: Fill) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO fills (id, sequence, fill, status) VALUES (?, ?, ?, ?)",
            (key, fill.sequence, encode_rlp(fill.to_rlp()), FillStatus.PENDING.value),
        )

    def finish(self, key: bytes, status: FillStatus, reason: str | None) -> None:
        self._db.execute("UPDATE fills SET status = ?, reason = ? WHERE id = ?", (status.value, reason, key))

    def pending(self) -> list[Fill]:
        from dle_vm.encoding import decode_rlp

        rows = self._db.execute(
            "SELECT fill FROM fills WHERE status = ? ORDER BY sequence", (FillStatus.PENDING.value,)
        ).fetchall()
        return [Fill.from_rlp(decode_rlp(bytes(row[0]))) for row in rows]

    def put_legs(self, legs: Sequence[_Leg]) -> None:
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR REPLACE INTO legs (fill, leg, chain, nonce, expiry, tx, state) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(g.fill, g.leg.value, g.chain, g.nonce, g.expiry, g.tx, "flight") for g in legs],
            )

    def final(self, leg: _Leg) -> None:
        self._db.execute(
            "UPDATE legs SET state = 'final', height = ?, fee = ? WHERE fill = ? AND leg = ?",
            (leg.height, leg.fee, leg.fill, leg.leg.value),
        )

    def drop(self, leg: _Leg) -> None:
        self._db.execute("DELETE FROM legs WHERE fill = ? AND leg = ?", (leg.fill, leg.leg.value))

    def leg(self, key: bytes, leg: Leg) -> tuple[str, int, int, bytes, int | None, int | None] | None:
        """(state, nonce, expiry, tx, height, fee) of a journaled leg."""
        row = self._db.execute(
            "SELECT state, nonce, expiry, tx, height, fee FROM legs WHERE fill = ? AND leg = ?", (key, leg.value)
        ).fetchone()
        if row is None:
            return None
        return str(row[0]), int(row[1]), int(row[2]), bytes(row[3]), row[4], row[5]


# -- the settler ------------------------------------------------------------------------------------------


@dataclass
class _ChainView:
    """A receipt chain's certified head, and the terms the book signs under there."""

    height: int
    state: State
    terms: NoteTerms


@dataclass
class Settler:
    """Settles fills of one order book through `client` (the receipt chains' archive group), signing with
    `secret`, the book's key (the payee of every order's authorization)."""

    client: DleClient
    domains: Domains
    secret: bytes
    journal: SettlementJournal
    engine: Engine = field(default_factory=default_engine)
    clock: Callable[[], float] = time.time
    message_ttl: int = 600
    """Seconds a signed DeductTo stays valid (bounded by nothing else: the authorization has its own)."""
    program: Program = field(default_factory=note_program)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False)

    def __post_init__(self) -> None:
        self.payee = address_of_secret(self.secret)
        self._reader = NoteReader(self.engine, self.program)
        self._signer_terms: dict[bytes, NoteTerms] = {}

    # -- reading the chains ---------------------------------------------------------------------------

    async def _view(self, chain: bytes) -> _ChainView:
        height, state = await self.client.head(chain)
        terms = self._signer_terms.get(chain)
        if terms is None:
            note, chain_of, mainchain_id, cash, fee_bps = self._reader.view(state, chain, "noteTerms")
            cbdc, _witnesses, _pool = self._reader.view(state, chain, "roles")
            vault = self.domains.vault
            cash_bytes = bytes.fromhex(str(cash)[2:])
            if vault is None or cash_bytes != vault or bytes(chain_of) != chain:
                raise ValueError(f"chain 0x{chain.hex()} is not a receipt chain of the vault")
            terms = NoteTerms(
                int(note),
                int(mainchain_id),
                cash_bytes,
                0,
                bytes(20),
                bytes.fromhex(str(cbdc)[2:]),
                (),
                bytes(20),
                int(fee_bps),
            )
            (separator,) = self._reader.view(state, chain, "domainSeparator")
            if bytes(separator) != terms.domain_separator():
                raise ValueError(f"chain 0x{chain.hex()}: its program signs under another domain")
            self._signer_terms[chain] = terms
        return _ChainView(height, state, terms)

    # -- the round ----------------------------------------------------------------------------------------

    async def settle(self, fills: Sequence[Fill]) -> list[FillReport]:
        """Settle `fills` (in the book's order); one report per fill, in the same order. Fills left pending
        by an earlier run are resolved first (their reports are not in the result: `settle([])` returns
        nothing but finishes them)."""
        async with self._lock:
            await self._resume()
            reports: dict[bytes, FillReport] = {}
            fresh: list[tuple[bytes, Fill]] = []
            seen: set[bytes] = set()
            for fill in fills:
                key = fill_id(fill)
                if key in seen:
                    continue
                seen.add(key)
                recorded = self.journal.status(key)
                if recorded is not None and recorded[0] is not FillStatus.PENDING:
                    reports[key] = FillReport(fill, recorded[0], reason=recorded[1], replayed=True)
                    continue
                self.journal.add(key, fill)
                fresh.append((key, fill))
            reports.update(await self._run(fresh))
            return [reports[fill_id(fill)] for fill in fills]

    async def _resume(self) -> None:
        pending = [(fill_id(f), f) for f in self.journal.pending()]
        if pending:
            log.info("resuming %d fills left pending", len(pending))
            await self._run(pending)

    async def _run(self, fills: list[tuple[bytes, Fill]]) -> dict[bytes, FillReport]:
        reports: dict[bytes, FillReport] = {}
        legs = {key: _legs_of(fill, key) for key, fill in fills}
        by_key = dict(fills)
        # Legs in flight from an earlier run: final, or sent again, or (expired) planned anew.
        base_final: dict[bytes, _Leg] = {}
        todo_base: list[bytes] = []
        todo_quote: list[bytes] = []
        for key, _fill in fills:
            base, quote = legs[key]
            state = await self._recover(base)
            if state == "final":
                base_final[key] = base
                quote_state = await self._recover(quote)
                if quote_state == "final":
                    reports[key] = self._finish(by_key[key], FillStatus.SETTLED, base, quote)
                elif quote_state == "pending":
                    reports[key] = FillReport(by_key[key], FillStatus.PENDING, base.report(True), quote.report(False))
                else:
                    todo_quote.append(key)
            elif state == "pending":
                reports[key] = FillReport(by_key[key], FillStatus.PENDING, base.report(False), None)
            else:
                todo_base.append(key)

        # 1. both legs checked on the certified heads; 2. the base legs submitted.
        planned, refused = await self._plan([g for k in todo_base for g in legs[k]])
        for key, reason in refused.items():
            reports[key] = self._finish(by_key[key], FillStatus.REFUSED, reason=reason)
        base_legs = [g for g in planned if g.leg is Leg.BASE]
        failed, unsure = await self._submit(base_legs)
        for leg in base_legs:
            if leg.fill in failed:
                reports[leg.fill] = self._finish(by_key[leg.fill], FillStatus.REFUSED, reason=failed[leg.fill])
            elif leg.fill in unsure:
                reports[leg.fill] = FillReport(
                    by_key[leg.fill], FillStatus.PENDING, leg.report(False), None, unsure[leg.fill]
                )
            else:
                base_final[leg.fill] = leg
                todo_quote.append(leg.fill)

        # 3. the quote legs, checked again on fresh heads, then submitted.
        todo_quote.sort(key=lambda k: by_key[k].sequence)
        planned, refused = await self._plan([legs[k][1] for k in todo_quote])
        for key, reason in refused.items():
            reports[key] = self._finish(by_key[key], FillStatus.HALF, base_final[key], legs[key][1], reason)
        failed, unsure = await self._submit(planned)
        for leg in planned:
            key = leg.fill
            if key in failed:
                reports[key] = self._finish(by_key[key], FillStatus.HALF, base_final[key], leg, failed[key])
            elif key in unsure:
                reports[key] = FillReport(
                    by_key[key], FillStatus.PENDING, base_final[key].report(True), leg.report(False), unsure[key]
                )
            else:
                reports[key] = self._finish(by_key[key], FillStatus.SETTLED, base_final[key], leg)
        return reports

    def _finish(
        self,
        fill: Fill,
        status: FillStatus,
        base: _Leg | None = None,
        quote: _Leg | None = None,
        reason: str | None = None,
    ) -> FillReport:
        self.journal.finish(fill_id(fill), status, reason)
        if status is FillStatus.SETTLED:
            log.info("fill %d settled", fill.sequence)
        else:
            log.warning("fill %d %s: %s", fill.sequence, status.value, reason)
        return FillReport(
            fill,
            status,
            None if base is None else base.report(True),
            None if quote is None else quote.report(status is FillStatus.SETTLED),
            reason,
        )

    # -- recovery --------------------------------------------------------------------------------------

    async def _recover(self, leg: _Leg) -> str:
        """A journaled leg's fate: "final", "pending" (in flight, the DLE not answering), or "none" (never
        signed, or dropped: to be planned)."""
        row = self.journal.leg(leg.fill, leg.leg)
        if row is None:
            return "none"
        state, leg.nonce, leg.expiry, leg.tx, leg.height, leg.fee = row
        if state == "final":
            return "final"
        try:
            view = await self._view(leg.chain)
        except (DleError, ValueError) as error:
            leg.reason = f"the chain could not be read: {error}"
            return "pending"
        if self._reader.nonce(view.state, leg.chain, self.payee) > leg.nonce:
            # Only these bytes were ever signed with this nonce on this chain (the entry was in flight).
            self.journal.final(leg)
            return "final"
        if self.clock() > leg.expiry + EXPIRY_MARGIN:
            self.journal.drop(leg)
            return "none"
        failed, unsure = await self._submit([leg], fresh=False, retry=False)
        if leg.fill in failed:
            self.journal.drop(leg)
            return "none"
        return "pending" if leg.fill in unsure else "final"

    # -- planning: every leg executed on its chain's head ---------------------------------------------

    async def _plan(self, legs: list[_Leg]) -> tuple[list[_Leg], dict[bytes, str]]:
        """Sign each leg with the nonce it will carry and execute the legs, per chain in order, on the
        chain's certified head. Returns the legs that pass (of fills none of whose legs failed) and the
        refused fills with the reason. Repeated until stable: dropping a fill shifts later nonces."""
        refused: dict[bytes, str] = {}
        views: dict[bytes, _ChainView] = {}
        for chain in dict.fromkeys(g.chain for g in legs):
            try:
                views[chain] = await self._view(chain)
            except (DleError, ValueError) as error:
                for g in legs:
                    if g.chain == chain:
                        refused.setdefault(g.fill, f"{g.leg.value} leg: the receipt chain cannot be used: {error}")
        while True:
            before = len(refused)
            for chain, view in views.items():
                self._execute(view, [g for g in legs if g.chain == chain and g.fill not in refused], refused)
            if len(refused) == before:
                return [g for g in legs if g.fill not in refused], refused

    def _execute(self, view: _ChainView, legs: list[_Leg], refused: dict[bytes, str]) -> None:
        if not legs:
            return
        chain = legs[0].chain
        signer = NoteSigner(view.terms, self.program)
        state = view.state
        nonce = self._reader.nonce(state, chain, self.payee)
        now = int(self.clock())
        context = BlockContext(chain_id=chain, height=view.height + 1, timestamp=now)
        for leg in legs:
            expiry = now + self.message_ttl
            tx = signer.deduct_to(
                self.secret,
                self.payee,
                leg.holder,
                leg.authorization,
                leg.to,
                leg.amount,
                nonce,
                expiry,
                tx_nonce=NoteReader.tx_nonce(state, self.payee),
            )
            try:
                post, (receipt,) = apply_transactions(self.engine, state, [tx], context)
            except InvalidTransaction as error:
                refused[leg.fill] = f"{leg.leg.value} leg: {error}"
                continue
            if not receipt.success:
                reason = self.program.decode_error(receipt.output)
                refused[leg.fill] = f"{leg.leg.value} leg: {reason}"
                continue
            state = post
            leg.nonce, leg.expiry, leg.tx = nonce, expiry, tx.encode()
            nonce += 1

    # -- submission ---------------------------------------------------------------------------------------

    async def _submit(
        self, legs: list[_Leg], *, fresh: bool = True, retry: bool = True
    ) -> tuple[dict[bytes, str], dict[bytes, str]]:
        """Submit the legs, one submission per chain (chains in parallel); `fresh` legs are journaled
        first (a recovered leg is in the journal already). Returns the fills whose leg was refused (with
        the reason) and those left in flight without an answer. A refused submission is planned again on
        a fresh head once (`retry`): the legs the program now refuses fail, the rest are submitted again."""
        failed: dict[bytes, str] = {}
        unsure: dict[bytes, str] = {}
        if fresh:
            self.journal.put_legs(legs)
        chains: dict[bytes, list[_Leg]] = {}
        for leg in legs:
            chains.setdefault(leg.chain, []).append(leg)

        async def one_chain(chain: bytes, batch: list[_Leg]) -> None:
            try:
                outcome = await self.client.submit(chain, [Transaction.decode(g.tx) for g in batch])
            except DleError as error:
                # "reverted": the creator executed the batch on its head and a leg failed, so this
                # submission entered no block. Anything else (a timeout, no final block) may yet be final.
                if error.code != "reverted":
                    for g in batch:
                        unsure[g.fill] = f"{g.leg.value} leg: {error.message}"
                    return
                for g in batch:
                    self.journal.drop(g)
                if not retry:
                    for g in batch:
                        failed[g.fill] = f"{g.leg.value} leg: {error.message}"
                    return
                # Something changed since the check: plan again on a fresh head (the refused submission
                # used no nonce), so only the legs the program now refuses fail.
                planned, refused = await self._plan(batch)
                failed.update(refused)
                if planned:
                    again_failed, again_unsure = await self._submit(planned, retry=False)
                    failed.update(again_failed)
                    unsure.update(again_unsure)
                return
            for g, receipt in zip(batch, outcome.receipts, strict=True):
                g.height = outcome.block.header.height
                g.fee = int(self.program.returns("deductTo", receipt.output)[0])
                self.journal.final(g)

        await asyncio.gather(*(one_chain(chain, batch) for chain, batch in chains.items()))
        return failed, unsure
