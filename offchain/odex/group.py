"""The order book's group: every member re-runs the matching program, and a batch of fills is settled
only when all of them signed it.

An order book is a DLE chain of its own (chain id `DleChainId.compute(vault, uint256(market))`,
registered in DleRegistry like any chain), whose blocks are `Batch`es: the signed orders and cancels
the creator sequenced, with their times, the fills the matching program (offchain/odex/book.py) made
of them and the book's state digest afterwards. Members — the creator (the book's operator, payee of
every order's authorization), witnesses and a validator — each keep a replica of the book, replay a
proposed batch's inputs on it and sign only when they reach the same fills and the same state digest.
What they sign is `DleRegistry.blockDigest(bookChain, height, BOOK_ROLES_VERSION, WITNESS, batchHash)`,
the digest every DLE member signs for a block (the book's group is a fixed set, never role-changed yet:
roles version 0, and every member serves with its WITNESS stake), so two batches at one height signed
by one key are equivocation evidence the registry slashes as it is, and a certified fault on the book
chain is judged like any other chain's (with the offender's own signature of the batch).

Why Python and not EVM bytecode for the matching: the goal is ≥ 100,000 orders matched per second
in-process and every member re-computes every batch; a deterministic program over integers gives
that, and its determinism is exactly what the group's re-execution checks (docs/protocols.md).

Faults (DESIGN §5, applied to the book):
- a batch not signed by 100% is not final and nothing of it is settled;
- a member refusing a batch that replays correctly, or signing one that does not, is judged by the
  archive group (`judge`), which re-runs the batch from the last final state and certifies a
  `FaultReport` for each offender (`certify`); DleRegistry.reportFault slashes its stake.

Transport: members serve `odex.endorse` and `odex.final` over the DLE `Transport`
(offchain/dle/transport.py), in-process in tests and over HTTP in a devnet.

Durability: a member given a `BatchStore` writes every final batch to SQLite (WAL, synchronous FULL)
before it takes it into its book, and rebuilds the book from the store when it starts, so a killed
member or creator comes back with the book it had. A member that comes back behind the group answers
`behind` to the next batch; the creator then sends it the final batches it missed, and asks again.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path

from dle_vm.encoding import (
    EncodingError,
    RLPItem,
    decode_rlp,
    encode_rlp,
    fixed_bytes,
    list_of,
    raw_bytes,
    rlp_list,
    uint,
    uint_bytes,
)
from dle_vm.hashing import keccak
from dle_vm.signature import SIGNATURE_SIZE, BadSignature, recover, sign
from offchain.chain.dle import FaultKind
from offchain.dle.digests import Domains
from offchain.dle.note import chain_id_of
from offchain.dle.transport import RemoteError, Transport, TransportError
from offchain.odex.book import Fill, OrderBook, decode_fills, encode_fills
from offchain.odex.order import OrderDomain, OrderError, SignedCancel, SignedOrder

__all__ = [
    "BOOK_ROLE",
    "BOOK_ROLES_VERSION",
    "ENDORSE",
    "FINAL",
    "Batch",
    "BatchRefused",
    "BatchStore",
    "BookCreator",
    "BookMember",
    "FinalBatch",
    "Input",
    "InputKind",
    "Judgement",
    "WrongBatch",
    "book_chain_id",
    "certify",
    "judge",
]

ZERO_HASH = bytes(32)
ENDORSE = "odex.endorse"
FINAL = "odex.final"
BEHIND = "behind"
BOOK_ROLES_VERSION = 0
"""The roles version book members sign batches under: the book's group is a fixed set (issue 12)."""
BOOK_ROLE = 2
"""Role.WITNESS: the stake every book member signs its batches in, and is slashed in."""
"""A member's refusal code when it lacks final batches; its message is its height."""
_MAX_INPUTS = 10_000


class InputKind(IntEnum):
    ORDER = 0
    CANCEL = 1
    EXPIRE = 2
    """A sweep of expired resting orders at the input's time (no payload)."""


class WrongBatch(ValueError):
    """A batch that does not follow the last final one, or does not replay to what it claims."""


@dataclass(frozen=True)
class Input:
    """One sequenced event of the book: a signed order or cancel (its wire encoding) at `time`."""

    kind: InputKind
    time: int
    payload: bytes

    def to_rlp(self) -> list[RLPItem]:
        return [uint_bytes(int(self.kind)), uint_bytes(self.time), self.payload]

    @classmethod
    def from_rlp(cls, item: RLPItem) -> Input:
        kind, time, payload = rlp_list(item, 3, "input")
        number = uint(kind, "input kind", maximum=max(InputKind))
        return cls(InputKind(number), uint(time, "input time", maximum=2**64 - 1), raw_bytes(payload, "payload"))


def apply_input(book: OrderBook, entry: Input) -> list[Fill]:
    """Feed one input to a replica; OrderError (changing nothing) when the book refuses it."""
    if entry.kind is InputKind.ORDER:
        return book.submit(SignedOrder.decode(entry.payload), entry.time)
    if entry.kind is InputKind.CANCEL:
        book.cancel(SignedCancel.decode(entry.payload), entry.time)
        return []
    if entry.payload:
        raise WrongBatch("an expiry sweep carries no payload")
    book.expire(entry.time)
    return []


@dataclass(frozen=True)
class Batch:
    """A block of the book chain. `parent` is the previous final batch's hash (zero before the first);
    `fills` are what replaying `inputs` on the book after `parent` makes, `state` its digest after."""

    market: bytes
    height: int
    parent: bytes
    inputs: tuple[Input, ...]
    fills: tuple[Fill, ...]
    state: bytes

    def encode(self) -> bytes:
        return encode_rlp(
            [
                self.market,
                uint_bytes(self.height),
                self.parent,
                [entry.to_rlp() for entry in self.inputs],
                encode_fills(self.fills),
                self.state,
            ]
        )

    @classmethod
    def decode(cls, data: bytes) -> Batch:
        """The batch `data` canonically encodes; WrongBatch (caused by the precise error) otherwise."""
        try:
            market, height, parent, inputs, fills, state = rlp_list(decode_rlp(data), 6, "batch")
            entries = list_of(inputs, "inputs")
            if len(entries) > _MAX_INPUTS:
                raise WrongBatch(f"a batch carries at most {_MAX_INPUTS} inputs")
            return cls(
                fixed_bytes(market, 32, "market"),
                uint(height, "height", maximum=2**64 - 1),
                fixed_bytes(parent, 32, "parent"),
                tuple(Input.from_rlp(entry) for entry in entries),
                tuple(decode_fills(raw_bytes(fills, "fills"))),
                fixed_bytes(state, 32, "state"),
            )
        except (EncodingError, OrderError) as error:
            raise WrongBatch(f"malformed batch: {error}") from error

    @property
    def hash(self) -> bytes:
        return keccak(self.encode())


@dataclass(frozen=True)
class FinalBatch:
    """A batch with the signature of every member of the book's group, in the group's order."""

    batch: Batch
    signatures: tuple[bytes, ...]

    def encode(self) -> bytes:
        return encode_rlp([self.batch.encode(), list(self.signatures)])

    @classmethod
    def decode(cls, data: bytes) -> FinalBatch:
        try:
            batch, signatures = rlp_list(decode_rlp(data), 2, "final batch")
            return cls(
                Batch.decode(raw_bytes(batch, "batch")),
                tuple(fixed_bytes(s, SIGNATURE_SIZE, "signature") for s in list_of(signatures, "signatures")),
            )
        except EncodingError as error:
            raise WrongBatch(f"malformed final batch: {error}") from error


def book_chain_id(domains: Domains, vault: bytes, market: bytes) -> bytes:
    """The book's DLE chain id: DleChainId.compute(vault, uint256(market)), as DleRegistry derives it."""
    return chain_id_of(domains.mainchain_id, vault, int.from_bytes(market, "big"))


class _Replica:
    """A member's copy of the book: the final batches' inputs and the book they produce. A proposed
    batch is replayed on the live book; if it is abandoned or wrong, the book is rebuilt from the final
    inputs (rare: only a fault or a lost batch costs a rebuild)."""

    def __init__(self, market: bytes, domain: OrderDomain) -> None:
        self.market, self.domain = market, domain
        self.book = OrderBook(market, domain)
        self.height = 0
        self.head = ZERO_HASH
        self._final_inputs: list[Input] = []
        self._pending: Batch | None = None

    def replay(self, inputs: Sequence[Input]) -> tuple[list[Fill], bytes]:
        """Apply `inputs` on the live book; the fills and the state digest. Raises what the book raises."""
        fills: list[Fill] = []
        for entry in inputs:
            fills.extend(apply_input(self.book, entry))
        return fills, self.book.state_digest()

    def check(self, batch: Batch) -> None:
        """Replay `batch` on the book after the last final batch; WrongBatch unless it is what it claims.
        On success the book stays at the batch's state until it is finalized or abandoned."""
        if self._pending is not None and self._pending.hash == batch.hash:
            return
        self.abandon()
        if batch.market != self.market:
            raise WrongBatch(f"batch of market 0x{batch.market.hex()}")
        if batch.height != self.height + 1 or batch.parent != self.head:
            raise WrongBatch(f"batch {batch.height} on 0x{batch.parent.hex()}, the book is at {self.height}")
        try:
            fills, state = self.replay(batch.inputs)
        except (OrderError, WrongBatch) as error:
            self._rebuild()
            raise WrongBatch(f"input refused by the book: {error}") from error
        if tuple(fills) != batch.fills or state != batch.state:
            self._rebuild()
            raise WrongBatch("the batch's fills or state differ from the book's re-computation")
        self._pending = batch

    def finalize(self, batch: Batch) -> None:
        self.check(batch)
        self._final_inputs.extend(batch.inputs)
        self.height, self.head, self._pending = batch.height, batch.hash, None

    def abandon(self) -> None:
        if self._pending is not None:
            self._pending = None
            self._rebuild()

    def _rebuild(self) -> None:
        self.book = OrderBook(self.market, self.domain)
        for entry in self._final_inputs:
            apply_input(self.book, entry)


class BatchStore:
    """The final batches of one book, in height order, in SQLite (WAL, synchronous FULL): what a member
    replays its book from after a restart. A batch is appended only as the next height."""

    def __init__(self, path: Path | str) -> None:
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS final (height INTEGER PRIMARY KEY, market BLOB, body BLOB)")

    def load(self, market: bytes) -> list[FinalBatch]:
        """Every stored final batch; WrongBatch if the store holds another market's book or a gap."""
        rows = self._db.execute("SELECT height, market, body FROM final ORDER BY height").fetchall()
        finals = []
        for expected, (height, stored_market, body) in enumerate(rows, start=1):
            if bytes(stored_market) != market:
                raise WrongBatch(f"the batch store holds the book of market 0x{bytes(stored_market).hex()}")
            if height != expected:
                raise WrongBatch(f"the batch store has no batch {expected}")
            finals.append(FinalBatch.decode(bytes(body)))
        return finals

    def append(self, final: FinalBatch) -> None:
        batch = final.batch
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT INTO final (height, market, body) VALUES (?, ?, ?)",
                (batch.height, batch.market, final.encode()),
            )

    def close(self) -> None:
        self._db.close()


@dataclass
class BookMember:
    """A member of the book's group (witness or validator): endorses a batch only if it replays."""

    secret: bytes
    address: bytes
    market: bytes
    domain: OrderDomain
    domains: Domains
    chain: bytes
    final: list[FinalBatch] = field(default_factory=list)
    members: tuple[bytes, ...] = ()
    """The group in signing order, the creator first, as this member was configured (a member with no
    group signs nothing). Not yet drawn and certified by an archive group: a fixed set (issue 12)."""
    store: BatchStore | None = None
    """Where final batches are kept across restarts; None keeps them in memory only."""

    def __post_init__(self) -> None:
        self._replica = _Replica(self.market, self.domain)
        if self.store is not None:
            for final in self.store.load(self.market):
                self._replica.finalize(final.batch)
                self.final.append(final)

    @property
    def book(self) -> OrderBook:
        return self._replica.book

    @property
    def height(self) -> int:
        return self._replica.height

    def digest(self, batch: Batch) -> bytes:
        return self.domains.block(self.chain, batch.height, BOOK_ROLES_VERSION, BOOK_ROLE, batch.hash)

    def request_digest(self, batch: Batch) -> bytes:
        """What the creator signs to ask for endorsements: not the block digest, so a batch it proposed
        and that never became final (refused, re-proposed otherwise) is no equivocation evidence."""
        return keccak(_REQUEST_TAG + self.chain + batch.height.to_bytes(32, "big") + batch.hash)

    def endorse(self, batch: Batch) -> bytes:
        """This member's signature of `batch`, after replaying it; WrongBatch if it does not replay."""
        self._replica.check(batch)
        return sign(self.secret, self.digest(batch))

    def accept(self, final: FinalBatch) -> None:
        """Record a final batch after checking every member's signature over it."""
        if len(final.signatures) != len(self.members):
            raise WrongBatch(f"{len(final.signatures)} signatures for a group of {len(self.members)}")
        digest = self.digest(final.batch)
        for member, signature in zip(self.members, final.signatures, strict=True):
            try:
                if recover(digest, signature) != member:
                    raise WrongBatch(f"the signature of 0x{member.hex()} is not its own")
            except BadSignature as error:
                raise WrongBatch(f"the signature of 0x{member.hex()} does not recover: {error}") from error
        self._replica.check(final.batch)
        if self.store is not None:
            self.store.append(final)
        self._replica.finalize(final.batch)
        self.final.append(final)

    def authenticate(self, body: bytes) -> Batch:
        """The batch of an `odex.endorse` request, if it comes from this member's group's creator:
        `RemoteError` otherwise (checked before any other work is done for the request)."""
        try:
            members, batch, creator_signature = _decode_endorse(body)
        except WrongBatch as error:
            raise RemoteError("wrong-batch", str(error)) from error
        if not self.members:
            raise RemoteError("no-group", "this member knows no group: it signs no batch")
        if members != self.members:
            raise RemoteError("wrong-group", "the batch names another group than this member's")
        # Only the book's creator proposes: a batch from anyone else is never signed.
        if not _signed_by(self.request_digest(batch), creator_signature, self.members[0]):
            raise RemoteError("not-creator", "the batch is not signed by the book's creator")
        return batch

    async def handle(self, method: str, body: bytes) -> bytes:
        """The member's `Handler` on the DLE transport."""
        try:
            if method == ENDORSE:
                batch = self.authenticate(body)
                if batch.height > self.height + 1:
                    raise RemoteError(BEHIND, str(self.height))
                return self.endorse(batch)
            if method == FINAL:
                self.accept(FinalBatch.decode(body))
                return b""
        except WrongBatch as error:
            raise RemoteError("wrong-batch", str(error)) from error
        raise RemoteError("unknown-method", f"no method {method}")


_REQUEST_TAG = b"CoNET oDEX endorse request\0"


def _encode_endorse(members: Sequence[bytes], batch: Batch, creator_signature: bytes) -> bytes:
    return encode_rlp([list(members), batch.encode(), creator_signature])


def _decode_endorse(body: bytes) -> tuple[tuple[bytes, ...], Batch, bytes]:
    try:
        members, batch, signature = rlp_list(decode_rlp(body), 3, "endorse")
        return (
            tuple(fixed_bytes(m, 20, "member") for m in list_of(members, "members")),
            Batch.decode(raw_bytes(batch, "batch")),
            fixed_bytes(signature, SIGNATURE_SIZE, "creator signature"),
        )
    except EncodingError as error:
        raise WrongBatch(f"malformed endorse request: {error}") from error


class BatchRefused(RuntimeError):
    """Not every member signed: the batch is not final. `refusals` maps each member that did not sign
    to why; `signatures` are those that came (the evidence the archive group judges)."""

    def __init__(self, batch: Batch, refusals: dict[bytes, str], signatures: dict[bytes, bytes]) -> None:
        names = ", ".join(f"0x{m.hex()}: {why}" for m, why in refusals.items())
        super().__init__(f"batch {batch.height} is not final; refused by {names}")
        self.batch, self.refusals, self.signatures = batch, refusals, signatures


@dataclass
class BookCreator(BookMember):
    """The book's operator: admits signed orders and cancels, sequences them into batches, and makes a
    batch final by collecting every member's signature over the transport."""

    transport: Transport | None = None
    timeout: float = 5.0
    clock: Callable[[], int] = field(default=lambda: 0)
    _queue: list[Input] = field(default_factory=list)

    def admit(self, entry: Input) -> None:
        """Queue an input if the book would accept it now (checked on a scratch replay at seal time);
        a malformed payload is refused at once with the book's error."""
        if entry.kind is InputKind.ORDER:
            SignedOrder.decode(entry.payload)
        elif entry.kind is InputKind.CANCEL:
            SignedCancel.decode(entry.payload)
        self._queue.append(entry)

    def propose(self) -> tuple[Batch, list[tuple[Input, str]]]:
        """The next batch from the queued inputs, in arrival order, leaving out (and returning with the
        reason) each input the book refuses; the queue is emptied."""
        queued, self._queue = self._queue, []
        replica = self._replica
        replica.abandon()
        accepted: list[Input] = []
        refused: list[tuple[Input, str]] = []
        fills: list[Fill] = []
        for entry in queued:
            try:
                fills.extend(apply_input(replica.book, entry))
            except (OrderError, WrongBatch) as error:
                refused.append((entry, str(error)))
                continue
            accepted.append(entry)
        batch = Batch(
            self.market, replica.height + 1, replica.head, tuple(accepted), tuple(fills), replica.book.state_digest()
        )
        replica._pending = batch
        return batch, refused

    async def seal(self, batch: Batch, members: Sequence[bytes]) -> FinalBatch:
        """Collect every member's signature of `batch` (this node's own included, `members` in signing
        order); distribute the final batch. BatchRefused when anyone does not sign."""
        if self.transport is None:
            raise RuntimeError("the creator needs a transport")
        transport = self.transport
        self.members = tuple(members)
        if not self.members or self.members[0] != self.address:
            raise RuntimeError("the creator is the first of the book's members")
        own = self.endorse(batch)
        request = _encode_endorse(members, batch, sign(self.secret, self.request_digest(batch)))

        async def ask(member: bytes) -> bytes:
            if member == self.address:
                return own
            try:
                return await transport.call(member, ENDORSE, request, timeout=self.timeout)
            except RemoteError as error:
                if error.code != BEHIND or not error.message.isdigit():
                    raise
                # The member came back without the batches final since it left: send them, ask again.
                for final in self.final[int(error.message) :]:
                    await transport.call(member, FINAL, final.encode(), timeout=self.timeout)
                return await transport.call(member, ENDORSE, request, timeout=self.timeout)

        answers = await asyncio.gather(*(ask(m) for m in members), return_exceptions=True)
        digest = self.digest(batch)
        signatures: dict[bytes, bytes] = {}
        refusals: dict[bytes, str] = {}
        for member, answer in zip(members, answers, strict=True):
            if isinstance(answer, bytes) and _signed_by(digest, answer, member):
                signatures[member] = answer
            elif isinstance(answer, bytes):
                refusals[member] = "answered with a signature that is not its own"
            elif isinstance(answer, TransportError | WrongBatch):
                refusals[member] = str(answer)
            else:
                raise answer
        if refusals:
            self._replica.abandon()
            raise BatchRefused(batch, refusals, signatures)
        final = FinalBatch(batch, tuple(signatures[m] for m in members))
        self.accept(final)
        body = final.encode()
        await asyncio.gather(
            *(transport.call(m, FINAL, body, timeout=self.timeout) for m in members if m != self.address),
            return_exceptions=True,
        )
        return final


def _signed_by(digest: bytes, signature: bytes, member: bytes) -> bool:
    try:
        return recover(digest, signature) == member
    except BadSignature:
        return False


@dataclass(frozen=True)
class Judgement:
    """The archive group's finding on a batch that did not become final: whether it replays correctly
    on the last final state, and who committed which fault."""

    valid: bool
    reason: str
    offenders: tuple[tuple[bytes, FaultKind], ...]


def judge(
    final: Sequence[FinalBatch],
    market: bytes,
    domain: OrderDomain,
    batch: Batch,
    signatures: dict[bytes, bytes],
    members: Sequence[bytes],
    digest: bytes,
) -> Judgement:
    """Re-run `batch` from the book's final history: if it replays, every member whose valid signature
    is missing refused a valid block; if not, every member whose signature is there signed an invalid
    one. Only signatures that recover to their member count as evidence."""
    replica = _Replica(market, domain)
    for done in final:
        replica.finalize(done.batch)
    signed = {m for m, s in signatures.items() if m in members and _signed_by(digest, s, m)}
    try:
        replica.check(batch)
    except WrongBatch as error:
        return Judgement(False, str(error), tuple((m, FaultKind.SIGNED_INVALID_BLOCK) for m in members if m in signed))
    return Judgement(True, "replays", tuple((m, FaultKind.REFUSED_VALID_BLOCK) for m in members if m not in signed))


def evidence_hash(batch: Batch, signatures: dict[bytes, bytes]) -> bytes:
    """keccak256 of the bundle the group judged: the batch and the signatures that came, by member."""
    return keccak(encode_rlp([batch.encode(), [[m, s] for m, s in sorted(signatures.items())]]))


def certify(
    archive_secret: bytes,
    domains: Domains,
    chain: bytes,
    batch: Batch,
    offender: bytes,
    role: int,
    kind: FaultKind,
    evidence: bytes,
    reporter: bytes,
) -> bytes:
    """One archive node's signature of the FaultReport DleRegistry.reportFault takes (on `batch`, under
    the book's roles version). Each archive node calls `judge` itself first; the group's signatures
    together are the certificate. The report is slashable only with the offender's own signature: its
    BlockSignature of the batch for SIGNED_INVALID_BLOCK (book members sign no refusals yet, so a
    refused valid batch is judged but not slashed on chain: docs/security.md)."""
    digest = domains.fault(
        chain, batch.height, BOOK_ROLES_VERSION, offender, role, int(kind), batch.hash, evidence, reporter
    )
    return sign(archive_secret, digest)
