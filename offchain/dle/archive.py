"""An archive node: stores every chain of its group, checks every block, and has the final say.

DESIGN §5. An archive node
- accepts a block (`accept`) only after its quality check: the block extends the stored head, carries
  exactly its members' signatures (creator, 5 witnesses, the validator drawn from the roster by the
  parent hash), re-executes to the state root its header claims, its timestamp does not run backwards
  or ahead of this node's clock by more than `max_drift`, its PoH tick does not precede the parent's,
  and this node signed no other block at that height under any roles (kept durably in the chain
  store; only another archive node's signed rejection of that block releases it, and a signed block
  left unfinished is certified by the group and made final instead). It stamps the header into its
  Proof of History, signs the block digest and every exit certificate in it;
- stores a block once the whole group signed it (`final`);
- for the chains it hosts (`ArchiveGroup.host_of`), or when the host does not act, turns reports into
  role changes: a timeout (the rule's result on each co-signer's own head, probed by every archive node
  before it co-signs), or evidence of a fault, which every archive node judges
  by re-executing before it co-signs the FaultReport that slashes the offender on the mainchain and
  the new roles of a freshly drawn group (old members excluded); an archive node's signed rejection
  dissolves the group the same way, without slashing;
- draws groups with the verifiable roulette (the host's pool snapshot first, checked by every archive
  node against its own pool, then commit and reveal from every archive node of the group, the record
  signed by all after each re-checked it) and every archive node appends every record to its copy of
  the group's Selection Chain;
- opens note chains: draws the group, has the CBDC produce the genesis block, and registers the chain
  on the mainchain with the group's ChainGenesis certificate — every archive node checking the terms
  against its own mirror of the minting event (`MintedAssets`) first.

The mainchain is handed in as a `Mainchain` (offchain/chain/dle.py's client in production); calls to it
run in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import NoReturn, Protocol

from coincurve import PrivateKey

from dle_vm.block import Block, Header, transactions_root
from dle_vm.encoding import (
    EncodingError,
    decode_rlp,
    encode_rlp,
    fixed_bytes,
    list_of,
    raw_bytes,
    rlp_list,
    uint,
    uint_bytes,
)
from dle_vm.engine import Engine, InvalidTransaction, Receipt
from dle_vm.hashing import keccak
from dle_vm.signature import BadSignature, address_of, recover, sign
from dle_vm.state import State
from dle_vm.transaction import Transaction
from offchain.dle import roulette
from offchain.dle.auth import ArchiveAccess, Forbidden, as_caller, caller
from offchain.dle.authority import NOT_YET, AuthorityError, BlockAuthority, NoteAuthority, NotYetSeen
from offchain.dle.digests import Domains
from offchain.dle.member import check_final, execute, member_signers
from offchain.dle.messages import (
    EQUIVOCATION,
    REFUSED,
    REJECTED,
    WRONG_VOTE,
    Acceptance,
    ChainDump,
    Commit,
    Evidence,
    ExitRequest,
    ExitSignature,
    Final,
    Outcome,
    Rejection,
    TimeoutReport,
)
from offchain.dle.note import (
    PROGRAM,
    ExitCertificate,
    NoteReader,
    NoteTerms,
    chain_id_of,
    genesis_state,
    note_program,
)
from offchain.dle.poh import ProofOfHistory
from offchain.dle.pool import WaitingPool
from offchain.dle.roles import (
    ArchiveGroup,
    ChainRoles,
    DecodedRecords,
    RolesError,
    RolesRecord,
    join_certificate,
)
from offchain.dle.store import ChainStore, NotExtendingHead, UnknownChain
from offchain.dle.transport import PeerTimeout, PeerUnavailable, RemoteError, Transport

__all__ = [
    "ROLE_CBDC",
    "ROLE_VALIDATOR",
    "ROLE_WITNESS",
    "ArchiveNode",
    "Mainchain",
    "MintedAssets",
    "Verdict",
    "selection_chain_id",
]

log = logging.getLogger("conet.dle.archive")

ROLE_CBDC = 0
ROLE_ARCHIVE = 1
ROLE_WITNESS = 2
ROLE_VALIDATOR = 3
# The same numbers as offchain/dle/roles.py's (contracts/types/Role.sol): a member's stake role.

FAULT_REFUSED = 1
FAULT_INVALID = 2

VALIDATOR_ROSTER = 3
SELECTION_LOG = keccak(b"CoNET DLE selection chain")[12:]
"""The code-less address Selection Chain transactions are sent to: a record is calldata, no state."""


def selection_chain_id(group: int) -> bytes:
    """The Selection Chain of an archive group: where every draw record of the group is kept."""
    return keccak(b"CoNET DLE selection chain\x00" + group.to_bytes(32, "big"))


class Mainchain(Protocol):
    """What an archive node needs of the mainchain (blocking calls; run in a thread)."""

    def meets_minimum(self, address: bytes, role: int) -> bool: ...

    def capacity(self, address: bytes, role: int) -> int:
        """How many chains `address` may serve at once in `role` (Staking.capacity)."""
        ...

    def register_chain(
        self, asset: bytes, asset_id: int, genesis_hash: bytes, group: int, epoch: int, certificate: bytes
    ) -> None: ...

    def report_equivocation(
        self,
        chain: bytes,
        height: int,
        roles_version: int,
        role: int,
        hash_a: bytes,
        signature_a: bytes,
        hash_b: bytes,
        signature_b: bytes,
    ) -> int:
        """DleRegistry.reportEquivocation of two BlockSignatures of one signer at one height, one roles
        version, one role (the role both signatures name is the one slashed)."""
        ...

    def report_fault(
        self,
        chain: bytes,
        height: int,
        roles_version: int,
        offender: bytes,
        role: int,
        kind: int,
        header_hash: bytes,
        accused_signature: bytes,
        evidence_hash: bytes,
        reporter: bytes,
        epoch: int,
        certificate: bytes,
    ) -> int:
        """DleRegistry.reportFault: the group's certificate and the offender's own signed refusal (kind
        1) or block signature (kind 2) of `header_hash` under `roles_version` in `role`."""
        ...


_CBDC_SLOTS = (roulette.Slot(ROLE_CBDC, 1),)
"""A CBDC draw: one CBDC for the note an order becomes."""

_KEPT_DRAWS = 1024
"""Draws a node remembers while they run; an abandoned one is forgotten once this many are newer."""


@dataclass
class _DrawState:
    """What this node committed to in one draw: its secret, the host's snapshot it checked, the
    commitments it revealed against, and the record it endorsed."""

    secret: bytes
    snapshot_hash: bytes
    commitments: tuple[bytes, ...] | None = None
    endorsed: bytes | None = None


class MintedAssets(Protocol):
    """The mainchain's minting events as this archive node's OWN mirror of them sees them (the service:
    offchain/chain/mirror.py; in-process: `offchain.dle.local.MintLedger`). A chain opens only on terms
    this answers: CoNETCash's `NoteMinted` for a note, OdexVault's `ReceiptIssued` for a receipt."""

    async def terms(self, cash: bytes, asset_id: int) -> NoteTerms | None:
        """The genesis terms the minting event of asset `asset_id` of contract `cash` gives (note or
        receipt id, mainchain id, contract, value, holder, CBDC, fee rate), with no witnesses and a zero
        validators' pool (the draw fills those in); None when no such event is mirrored."""
        ...


def _without_draw(terms: NoteTerms) -> NoteTerms:
    return replace(terms, witnesses=(), validators_pool=bytes(20))


@dataclass(frozen=True)
class Verdict:
    """What the evidence proves: who is at fault (None: nobody is slashed) and the FaultReport kind
    (None for equivocation, which the mainchain proves itself); the stake role the offender's own
    signature names, the block it refused or signed (`header_hash`), and that signature (its signed
    refusal for kind 1, its BlockSignature for kind 2): what the mainchain checks before it slashes."""

    offender: bytes | None
    kind: int | None
    role: int
    header_hash: bytes = b""
    accused_signature: bytes = b""


class ArchiveNode:
    """One archive node of one archive group."""

    def __init__(
        self,
        secret: bytes,
        transport: Transport,
        store: ChainStore,
        group: Callable[[], ArchiveGroup],
        domains: Domains,
        engine: Engine,
        mainchain: Mainchain,
        *,
        max_drift: int = 60,
        probe_timeout: float = 2.0,
        call_timeout: float = 30.0,
        authority: BlockAuthority | None = None,
        clock: Callable[[], float] = time.time,
        minted: MintedAssets | None = None,
    ) -> None:
        self._secret = secret
        # System transactions are proven against this node's own view before it accepts a block.
        self._authority = authority or NoteAuthority(engine)
        self.address = address_of(PrivateKey(secret).public_key)
        self._transport = transport
        self.store = store
        self._group = group
        self._domains = domains
        self._engine = engine
        self._mainchain = mainchain
        self._max_drift = max_drift
        self._probe_timeout = probe_timeout
        self._call_timeout = call_timeout
        self._clock = clock
        self.poh = ProofOfHistory()
        self.pool = WaitingPool(self.poh)
        self._draws: dict[bytes, _DrawState] = {}
        self._cbdc_draws: dict[int, roulette.DrawRecord] = {}
        """chain id -> the first CBDC draw this node took into its Selection Chain for it."""
        self._cbdc_draws_loaded = False
        self._cbdc_draw_locks: dict[bytes, asyncio.Lock] = {}
        self._host_lock: dict[bytes, asyncio.Lock] = {}
        self._pending_state: dict[tuple[bytes, bytes], State] = {}
        self._genesis: dict[bytes, RolesRecord] = {}
        self._genesis_terms: dict[bytes, NoteTerms] = {}
        """The terms of each chain whose genesis roles this node endorsed (checked against `minted`)."""
        self._signed_blocks: dict[tuple[bytes, int], Block] = {}
        """The block behind each `store.signed` entry not yet final here (for `_finalize_signed`)."""
        self._endorsed_roles: dict[tuple[bytes, int], tuple[bytes, float]] = {}
        """(chain, version) → the digest of the role set this node signed for that version, and when."""
        self._finalize_tried: dict[tuple[bytes, int], float] = {}
        """(chain, height) → when this node last asked the group to certify the block it signed there."""
        self.minted = minted
        """Where genesis terms are checked; None refuses every new chain (no mirror, no genesis)."""
        self._records = DecodedRecords()
        self.slashed: list[tuple[bytes, int, int]] = []
        """(offender, role, amount) of every report this node submitted."""
        self.access = ArchiveAccess(
            group,
            self._known_roles,
            self._head_state,
            engine,
            lambda chain, start: [stored.block for stored in store.blocks(chain, start)],
        )
        """Who may call which method (offchain/dle/auth.py): checked before every handler."""

    # -- dispatch ---------------------------------------------------------------------------------

    async def handle(self, method: str, body: bytes) -> bytes:
        name = _METHODS.get(method)
        if name is None:
            raise RemoteError("unknown-method", f"no method {method!r}")
        handler: Callable[[bytes], Awaitable[bytes]] = getattr(self, name)
        try:
            self.access.check(method, body)
            return await handler(body)
        except (EncodingError, RolesError) as error:
            raise RemoteError("bad-request", f"{method}: {error}") from error

    def _known_roles(self, chain: bytes) -> RolesRecord | None:
        """The chain's roles as this node holds them: stored, or expected for a genesis; None if neither."""
        try:
            return self.roles(chain)
        except UnknownChain:
            return self._genesis.get(chain)

    def _head_state(self, chain: bytes) -> State | None:
        try:
            return self.store.head(chain).state
        except UnknownChain:
            return None

    async def _ping(self, body: bytes) -> bytes:
        return self.address

    def roles(self, chain: bytes) -> RolesRecord:
        return self._records.decode(self.store.meta(chain))

    async def _roles(self, body: bytes) -> bytes:
        try:
            return self.store.meta(body)
        except UnknownChain:
            raise RemoteError("unknown-chain", "this archive node does not keep the chain") from None

    async def _chain(self, body: bytes) -> bytes:
        return self._dump(fixed_bytes(body, 32, "chain"), 0)

    async def _head(self, body: bytes) -> bytes:
        return self._dump(fixed_bytes(body, 32, "chain"), None)

    async def _exit_certificate(self, body: bytes) -> bytes:
        """This node's signature over exit `nonce` of the chain, as its final head records it
        (`NoteLedger.exitOf`). The mainchain pays a chain's exits in order, so the holder of a later
        exit may have to pay an earlier one first; every archive node of the group signs it again
        here, and the caller assembles the group's certificate (`DleClient.exit_certificate`). Safe to
        sign any number of times: it is the exit this node certified when it accepted the block, on
        the one history it keeps (one block per height)."""
        request = ExitRequest.decode(body)
        try:
            state = self.store.head(request.chain).state
        except UnknownChain:
            raise RemoteError("unknown-chain", "this archive node does not keep the chain") from None
        reader = NoteReader(self._engine)
        try:
            count = reader.exit_count(state, request.chain)
            exit_ = reader.exit_of(state, request.chain, request.nonce) if request.nonce < count else None
        except Exception as error:  # a chain without the note program (a Selection Chain) has no exits
            raise RemoteError("unknown-exit", f"the chain has no exits: {error}") from None
        if exit_ is None:
            raise RemoteError("unknown-exit", f"the chain has {count} exits, none with nonce {request.nonce}")
        certificate = exit_.encode()
        return ExitSignature(certificate, sign(self._secret, self._domains.exit(certificate))).encode()

    def _dump(self, chain: bytes, start: int | None) -> bytes:
        try:
            height = self.store.height(chain)
        except UnknownChain:
            raise RemoteError("unknown-chain", "this archive node does not keep the chain") from None
        entries = []
        for h in range(height if start is None else start, height + 1):
            stored = self.store.block(chain, h)
            entries.append((stored.block, stored.certificate, stored.state))
        return ChainDump(tuple(entries), self.roles(chain)).encode()

    # -- the quality check ------------------------------------------------------------------------

    def quality(
        self, block: Block, record: RolesRecord, pre: State, parent: Header | None
    ) -> tuple[State, tuple[Receipt, ...]]:
        """The archive node's check of a fully signed block; raises `RemoteError("rejected", …)`."""
        roles = record.roles
        header = block.header
        try:
            # Each member's signature binds the roles version and its stake role in this set.
            signers = member_signers(block, roles, self._domains)
        except BadSignature:
            return self._reject(block, "a malformed member signature")
        if signers != roles.signers_for(header.parent_hash):
            return self._reject(block, "not signed by exactly the chain's members")
        if parent is not None:
            if header.height != parent.height + 1 or header.parent_hash != parent.hash:
                return self._reject(block, "does not extend the final head")
            if header.timestamp < parent.timestamp or header.poh_tick < parent.poh_tick:
                return self._reject(block, "its time or PoH tick runs backwards")
        if header.timestamp > self._clock() + self._max_drift:
            return self._reject(block, "its timestamp is in the future")
        if header.group_id != roles.group:
            return self._reject(block, "names another archive group")
        try:
            self._authority.check(pre, block, roles.witnesses)
        except NotYetSeen as error:
            # No signed rejection: the block may well be right, this node's mainchain view lags.
            raise RemoteError(NOT_YET, str(error)) from error
        except AuthorityError as error:
            return self._reject(block, f"unauthorised: {error}")
        try:
            post, receipts = execute(self._engine, pre, header, block.transactions)
        except InvalidTransaction as error:
            return self._reject(block, f"an invalid transaction: {error}")
        if post.root != header.state_root:
            return self._reject(block, "executing it reaches another state root")
        if not all(receipt.success for receipt in receipts):
            return self._reject(block, "a transaction in it reverts (creators leave those out)")
        return post, receipts

    def _reject(self, block: Block, reason: str) -> NoReturn:
        rejection = Rejection(block.hash, reason, sign(self._secret, Rejection.digest(block.hash)))
        raise RemoteError("rejected", f"{rejection.encode().hex()} {reason}")

    async def _accept(self, body: bytes) -> bytes:
        block = Commit.decode(body).block
        chain = block.header.chain_id
        if block.header.height == 0:
            record, pre, parent = self._genesis_roles(block), genesis_state(), None
        else:
            try:
                record, head = self.roles(chain), self.store.head(chain)
            except UnknownChain:
                raise RemoteError("unknown-chain", "this archive node does not keep the chain") from None
            pre, parent = head.state, head.block.header
        height = block.header.height
        # One block per height, whatever the roles version: what this node signed is kept durably (the
        # chain store) and outlives role changes and restarts; only a proven rejection releases it.
        signed = self.store.signed(chain, height)
        if signed is not None and signed != block.hash:
            final = await self._finalize_signed(chain, height, signed)
            raise RemoteError(
                "signed-other", self._signed_other(chain, height, signed) + ("; it is final now" if final else "")
            )
        if height == 0:
            self._check_genesis_block(block)
        post, receipts = self.quality(block, record, pre, parent)
        signed = await self.store.sign_once(chain, height, block.hash)
        if signed != block.hash:  # another block at this height won the race while this one executed
            raise RemoteError("signed-other", self._signed_other(chain, height, signed))
        self._pending_state[(chain, block.hash)] = post
        self._signed_blocks[(chain, height)] = block
        exits = [
            sign(self._secret, self._domains.exit(certificate.encode()))
            for receipt in receipts
            for certificate in ExitCertificate.from_logs(receipt.logs)
        ]
        stamp = self.poh.stamp(block.hash)
        signature = sign(self._secret, self._domains.certificate(chain, block.header.height, block.hash))
        return Acceptance(signature, tuple(exits), stamp.index).encode()

    async def _finalize_signed(self, chain: bytes, height: int, signed: bytes) -> bool:
        """The block this node signed at `height` may hold every archive signature already (its creator
        crashed, or withheld `final`, after the group accepted it): ask every archive node for its
        signature over it; with all of them the block is final — here, at every archive node and at
        the chain's current members — and the chain goes on from it. True when it is final now."""
        block = self._signed_blocks.get((chain, height))
        if block is None or block.hash != signed or height == 0:
            return False
        # At most once per probe timeout: a stream of other blocks at the height is no amplifier.
        now = time.monotonic()
        if now < self._finalize_tried.get((chain, height), 0.0) + self._probe_timeout:
            return False
        self._finalize_tried[(chain, height)] = now
        try:
            if self.store.height(chain) != height - 1:
                return self.store.height(chain) >= height
        except UnknownChain:
            return False
        group = self._group()
        body = encode_rlp([chain, uint_bytes(height), signed])

        async def one(node: bytes) -> bytes:
            if node == self.address:
                return await self._certify(body)
            return await self._transport.call(node, "certify", body, timeout=self._probe_timeout)

        answers = await asyncio.gather(*(one(node) for node in group.members), return_exceptions=True)
        signatures = {node: a for node, a in zip(group.members, answers, strict=True) if isinstance(a, bytes)}
        if len(signatures) != len(group.members):
            log.info("block 0x%s at %d of 0x%s is not certified by every archive node", signed.hex()[:8], height,
                     chain.hex()[:12])  # fmt: skip
            return False
        final = Final(block, join_certificate(signatures))
        await self.store_final(final)
        self._signed_blocks.pop((chain, height), None)
        self._finalize_tried.pop((chain, height), None)
        roles = self.roles(chain).roles
        peers = {*group.members, roles.creator, *roles.witnesses} - {self.address}  # who stores the chain
        await asyncio.gather(*(self._quiet(peer, "final", final.encode()) for peer in peers))
        log.info("block 0x%s at %d of 0x%s was certified and left unfinished: final now", signed.hex()[:8], height,
                 chain.hex()[:12])  # fmt: skip
        return True

    async def _certify(self, body: bytes) -> bytes:
        """An archive peer's question: did this node sign that block at that height? Its signature
        again if so (the same digest signed again is no second block)."""
        chain_item, height_item, hash_item = rlp_list(decode_rlp(body), 3, "certify")
        chain, height = fixed_bytes(chain_item, 32, "chain"), uint(height_item, "height")
        block_hash = fixed_bytes(hash_item, 32, "block hash")
        if self.store.signed(chain, height) != block_hash:
            raise RemoteError("not-signed", "this archive node did not sign that block at that height")
        return sign(self._secret, self._domains.certificate(chain, height, block_hash))

    @staticmethod
    def _signed_other(chain: bytes, height: int, signed: bytes) -> str:
        return (
            f"this archive node signed block 0x{signed.hex()} at height {height} of chain 0x{chain.hex()[:12]}; "
            "it signs no other block there unless a rejection of that block is shown"
        )

    def _check_genesis_block(self, block: Block) -> None:
        """A genesis block is exactly `initialize(terms)` on the terms this node endorsed, which it
        checked against its own mirror of the minting event (`_endorse_genesis_roles`)."""
        terms = self._genesis_terms.get(block.header.chain_id)
        if terms is None:
            raise RemoteError("unknown-chain", "this archive node endorsed no genesis terms for this chain")
        expected = note_program().call("initialize", terms.as_tuple())
        txs = block.transactions
        if len(txs) != 1 or txs[0].to != PROGRAM or txs[0].data != expected or txs[0].sender != terms.cbdc:
            self._reject(block, "the genesis block does not initialize the note's endorsed terms")

    async def _release(self, body: bytes) -> bytes:
        """Forget a block this node signed that can never be final: another archive node of the group
        signed its rejection (kind REJECTED evidence). An archive node that signs both a block and its
        rejection is provably faulty; an honest one never does, so the block lacks its signature forever."""
        evidence = Evidence.decode(body)
        rejection = evidence.rejection
        block = evidence.block
        if evidence.kind != REJECTED or rejection is None or rejection.block_hash != block.hash:
            raise RemoteError("bad-evidence", "a release needs an archive node's signed rejection of the block")
        signer = _recover(Rejection.digest(block.hash), rejection.signature)
        if signer not in self._group().members:
            raise RemoteError("bad-evidence", "the rejection is not signed by an archive node of the group")
        if signer == self.address:
            return b""  # this node rejected the block: it never signed it
        self.store.release_signed(block.header.chain_id, block.header.height, block.hash)
        return b""

    def _genesis_roles(self, block: Block) -> RolesRecord:
        record = self._genesis.get(block.header.chain_id)
        if record is None:
            raise RemoteError("unknown-chain", "no genesis is expected for this chain")
        return record

    async def _final(self, body: bytes) -> bytes:
        final = Final.decode(body)
        await self.store_final(final)
        return b""

    async def store_final(self, final: Final) -> None:
        block = final.block
        chain = block.header.chain_id
        if block.header.height == 0:
            if chain in self.store.chains():
                return
            record = self._genesis_roles(block)
            self._check_genesis_block(block)
        else:
            record = self.roles(chain)
            if block.header.height <= self.store.height(chain):
                return
        signed = self.store.signed(chain, block.header.height)
        if signed is not None and signed != block.hash:
            # Certified by the group while this node signed another block there: impossible for an honest
            # group; keep what this node signed and say so.
            raise RemoteError("signed-other", self._signed_other(chain, block.header.height, signed))
        post = self._pending_state.pop((chain, block.hash), None)
        self._signed_blocks.pop((chain, block.header.height), None)
        # An archive node that accepted the block recovered its member signatures then.
        check_final(
            block, final.certificate, record.roles, self._group(), self._domains, members_checked=post is not None
        )
        if post is None:
            pre = genesis_state() if block.header.height == 0 else self.store.head(chain).state
            post, _ = execute(self._engine, pre, block.header, block.transactions)
        if block.header.height == 0:
            self.store.create_chain(block, post, final.certificate, record.encode())
            self._genesis.pop(chain, None)
        else:
            try:
                await self.store.append_async(chain, block, post, final.certificate)
            except NotExtendingHead:
                # The same final delivered twice at once (a retry): the first stored it.
                if self.store.height(chain) < block.header.height:
                    raise

    # -- group decisions (host) -------------------------------------------------------------------

    def _lock(self, chain: bytes) -> asyncio.Lock:
        return self._host_lock.setdefault(chain, asyncio.Lock())

    async def _report_timeout(self, body: bytes) -> bytes:
        report = TimeoutReport.decode(body)
        async with self._lock(report.chain):
            record = self.roles(report.chain)
            if report.roles_version < record.roles.version:
                return record.encode()  # already handled
            roles = record.roles
            if report.member not in roles.members():
                raise RemoteError("not-member", "the reported node is not a member of the chain")
            if not await self._unreachable(report.member):
                raise RemoteError("alive", f"0x{report.member.hex()} answers; no timeout")
            refill = b""
            if self._needs_refill(roles, report.member):
                draw, _ = await self.run_draw(
                    roles.chain,
                    [roulette.Slot(ROLE_VALIDATOR, 1, VALIDATOR_ROSTER - 1)],
                    (*roles.members(), *roles.excluded),
                )
                refill = draw.encode()
            new = self._after_timeout(roles, report.member, refill)
            justification = encode_rlp([b"timeout", report.member, refill])
            return (await self._enact(record, new, justification)).encode()

    def _last_validator(self, roles: ChainRoles) -> bytes:
        try:
            head = self.store.head(roles.chain)
        except UnknownChain:
            raise RemoteError("unknown-chain", "no final block yet: a genesis is re-drawn, not changed") from None
        return roles.validator_for(head.block.header.parent_hash)

    def _in_selection_chain(self, record: bytes, depth: int = 64) -> bool:
        """Whether draw record `record` is among the newest `depth` records this node took into its copy
        of the group's Selection Chain (every archive node does, once the whole group signed it)."""
        chain = selection_chain_id(self._group().group)
        try:
            height = self.store.height(chain)
        except UnknownChain:
            return False
        for stored in reversed(self.store.blocks(chain, max(0, height - depth + 1))):
            for tx in stored.block.transactions:
                kept, _ = rlp_list(decode_rlp(tx.data), 2, "selection record")
                if kept == record:
                    return True
        return False

    def _needs_refill(self, roles: ChainRoles, member: bytes) -> bool:
        """Promoting the last validator (or dropping a timed-out one) must leave one in the roster."""
        leaving = member if member in roles.validators else self._last_validator(roles)
        return not [v for v in roles.validators if v != leaving]

    def _after_timeout(self, roles: ChainRoles, member: bytes, refill: bytes) -> ChainRoles:
        """The paper's rule for `member`'s timeout, on this node's own view of the chain's head (DESIGN
        §5): creator → the first witness creates and the last block's validator takes its witness
        place; witness → removed, the last block's validator takes its place; validator → left out of
        the roster. `refill` is the draw that refilled an emptied roster (b"" when none was needed)."""
        if self._needs_refill(roles, member) != bool(refill):
            raise RemoteError("wrong-roles", "a roster refill is drawn exactly when the rule would empty the roster")
        last = self._last_validator(roles) if member not in roles.validators else member
        if refill:
            draw = roulette.DrawRecord.decode(refill)
            roulette.check(draw)
            if draw.group != self._group().members or draw.chain_id != int.from_bytes(roles.chain, "big"):
                raise RemoteError("wrong-roles", "the refill draw is not this group's for this chain")
            if not {*roles.members(), *roles.excluded} <= set(draw.excluded):
                raise RemoteError("wrong-roles", "the refill draw did not exclude the chain's members")
            if not self._in_selection_chain(refill):
                raise RemoteError("wrong-roles", "the refill draw is not in this node's Selection Chain")
            drawn = tuple(p.address for p in (*draw.chosen, *draw.standbys) if p.role == ROLE_VALIDATOR)
            roles = replace(roles, validators=(*roles.validators, *drawn))
        if member == roles.creator:
            return roles.after_creator_timeout(last)
        if member in roles.witnesses:
            return roles.after_witness_timeout(member, last)
        if member in roles.validators:
            return roles.with_roster(v for v in roles.validators if v != member)
        raise RemoteError("not-member", "the reported node is not a member of the chain")

    async def _unreachable(self, member: bytes) -> bool:
        try:
            await self._transport.call(member, "ping", b"", timeout=self._probe_timeout)
        except (PeerTimeout, PeerUnavailable):
            return True
        except RemoteError:
            return False
        return False

    async def _report_fault(self, body: bytes) -> bytes:
        evidence = Evidence.decode(body)
        chain = evidence.block.header.chain_id
        async with self._lock(chain):
            record = self.roles(chain) if evidence.block.header.height else self._genesis_roles(evidence.block)
            if evidence.roles_version < record.roles.version:
                return record.encode()
            verdict = self.judge(evidence, record)
            log.info(
                "fault on 0x%s at %d: kind %d by 0x%s (%s); offender %s",
                chain.hex()[:12],
                evidence.block.header.height,
                evidence.kind,
                evidence.member.hex()[:8],
                evidence.reason,
                verdict.offender.hex()[:8] if verdict.offender else None,
            )
            roles = record.roles
            exclude = (*roles.members(), *roles.excluded)
            extra = 1 if verdict.offender == roles.creator else 0
            draw, picks = await self.run_draw(
                chain,
                [roulette.Slot(ROLE_WITNESS, 5 + extra), roulette.Slot(ROLE_VALIDATOR, 1, VALIDATOR_ROSTER - 1)],
                exclude,
            )
            new = roles.dissolved(picks[ROLE_WITNESS], picks[ROLE_VALIDATOR], verdict.offender, draw.hash)
            justification = encode_rlp([b"fault", evidence.encode(), draw.encode()])
            signatures = await self._endorse_all("endorse_fault", encode_rlp([new.encode(), justification]))
            certificate = join_certificate({node: sig[65:] for node, sig in signatures.items()})
            roles_certificate = join_certificate({node: sig[:65] for node, sig in signatures.items()})
            new_record = RolesRecord(new, roles_certificate)
            if evidence.kind == REJECTED:
                # The rejected block can never be final: every archive node that signed it may sign
                # the block the new roles produce at that height.
                await asyncio.gather(
                    *(self._quiet_all(node, "release", evidence.encode()) for node in self._group().members)
                )
            await self._slash(evidence, verdict, certificate)
            await self._install(record, new_record)
            return new_record.encode()

    def judge(self, evidence: Evidence, record: RolesRecord) -> Verdict:
        """What `evidence` proves, by re-executing from the last final state (every archive node
        judges for itself before it co-signs). Every signature is checked under the roles it was given
        under (`record`, whose version the evidence must name) and in the stake role the signer holds in
        them: that role is the one slashed. A refusal counts only with the member's own signed refusal
        of the block; without one the member may simply not have answered (a timeout: a role change,
        never a slash)."""
        roles = record.roles
        block = evidence.block
        header = block.header
        chain = header.chain_id
        if evidence.roles_version != roles.version:
            raise RemoteError("bad-evidence", f"the evidence names roles version {evidence.roles_version}, "
                              f"the chain's is {roles.version}")  # fmt: skip
        version = roles.version
        if evidence.kind == REJECTED:
            rejection = evidence.rejection
            if rejection is None or rejection.block_hash != block.hash:
                raise RemoteError("bad-evidence", "a rejection must name the block")
            if _recover(Rejection.digest(block.hash), rejection.signature) not in self._group().members:
                raise RemoteError("bad-evidence", "the rejection is not signed by an archive node of the group")
            return Verdict(None, None, ROLE_ARCHIVE)
        if evidence.member not in roles.members():
            raise RemoteError("bad-evidence", "the accused is no member of the chain's roles")
        role = roles.stake_role(evidence.member)
        creator_role = roles.stake_role(roles.creator)
        creator_digest = self._domains.block(chain, header.height, version, creator_role, block.hash)
        if not block.signatures or _recover(creator_digest, block.signatures[0]) != roles.creator:
            raise RemoteError("bad-evidence", "the block is not signed by the chain's creator")
        creator_fault = Verdict(roles.creator, FAULT_INVALID, creator_role, block.hash, block.signatures[0])
        if evidence.kind == EQUIVOCATION:
            other = evidence.other
            if other is None or other.height != header.height or other.chain_id != chain or other == header:
                raise RemoteError("bad-evidence", "equivocation needs two different headers at one height")
            other_digest = self._domains.block(chain, other.height, version, creator_role, other.hash)
            if _recover(other_digest, evidence.other_signature) != roles.creator:
                raise RemoteError("bad-evidence", "the second header is not signed by the creator in this version")
            return Verdict(roles.creator, None, creator_role)
        if evidence.kind == REFUSED:
            if evidence.member not in roles.signers_for(header.parent_hash):
                raise RemoteError("bad-evidence", "the refusing node is not a member of this block")
            refusal = self._domains.refusal(chain, header.height, version, role, block.hash)
            if _recover(refusal, evidence.other_signature) != evidence.member:
                raise RemoteError("bad-evidence", "a refusal needs the member's own signed refusal of the block")
            if self._valid(block, record):
                return Verdict(evidence.member, FAULT_REFUSED, role, block.hash, evidence.other_signature)
            return creator_fault
        if evidence.kind == WRONG_VOTE:
            other = evidence.other
            if other is None or other == header or other.chain_id != chain or other.height != header.height:
                raise RemoteError("bad-evidence", "a wrong vote needs the header the member signed at that height")
            vote = self._domains.block(chain, other.height, version, role, other.hash)
            if _recover(vote, evidence.other_signature) != evidence.member:
                raise RemoteError("bad-evidence", "the other header is not signed by the member in its role")
            if not self._valid(block, record):
                return creator_fault
            return Verdict(evidence.member, FAULT_INVALID, role, other.hash, evidence.other_signature)
        raise RemoteError("bad-evidence", f"unknown evidence kind {evidence.kind}")

    def _valid(self, block: Block, record: RolesRecord) -> bool:
        header = block.header
        if header.height == 0:
            pre = genesis_state()
        else:
            head = self.store.head(header.chain_id)
            if header.parent_hash != head.block.hash:
                raise RemoteError("bad-evidence", "the block does not extend the final head")
            pre = head.state
        try:
            self._authority.check(pre, block, record.roles.witnesses)
            post, receipts = execute(self._engine, pre, header, block.transactions)
        except NotYetSeen as error:
            # Judging now would call a block wrong that this node cannot yet see is right.
            raise RemoteError(NOT_YET, f"cannot judge the block yet: {error}") from error
        except (AuthorityError, InvalidTransaction):
            return False
        return post.root == header.state_root and all(receipt.success for receipt in receipts)

    async def _slash(self, evidence: Evidence, verdict: Verdict, certificate: bytes) -> None:
        if verdict.offender is None:
            return
        header = evidence.block.header
        if verdict.kind is None:
            other = evidence.other
            assert other is not None
            amount = await asyncio.to_thread(
                self._mainchain.report_equivocation,
                header.chain_id,
                header.height,
                evidence.roles_version,
                verdict.role,
                evidence.block.hash,
                evidence.block.signatures[0],
                other.hash,
                evidence.other_signature,
            )
        else:
            amount = await asyncio.to_thread(
                self._mainchain.report_fault,
                header.chain_id,
                header.height,
                evidence.roles_version,
                verdict.offender,
                verdict.role,
                verdict.kind,
                verdict.header_hash,
                verdict.accused_signature,
                keccak(evidence.encode()),
                self._reporter_for(header.chain_id),
                self._group().epoch,
                certificate,
            )
        self.slashed.append((verdict.offender, verdict.role, amount))
        log.info("slashed 0x%s role %d: %d", verdict.offender.hex(), verdict.role, amount)

    async def _enact(self, record: RolesRecord, new: ChainRoles, justification: bytes) -> RolesRecord:
        signatures = await self._endorse_all("endorse_roles", encode_rlp([new.encode(), justification]))
        new_record = RolesRecord(new, join_certificate(signatures))
        await self._install(record, new_record)
        return new_record

    async def _install(self, old: RolesRecord, new: RolesRecord) -> None:
        """Keep the new roles, and tell every old and new member and archive node (the rollback of
        anything signed under the old roles)."""
        chain = new.roles.chain
        if chain in self.store.chains():
            self.store.set_meta(chain, new.encode())
        else:
            self._genesis[chain] = new
        peers = (old.roles.members() | new.roles.members() | set(self._group().members)) - {self.address}
        await asyncio.gather(*(self._quiet(peer, "rollback", new.encode()) for peer in peers), return_exceptions=True)

    async def _quiet(self, peer: bytes, method: str, body: bytes) -> None:
        try:
            await self._transport.call(peer, method, body, timeout=self._probe_timeout)
        except (PeerTimeout, PeerUnavailable, RemoteError) as error:
            log.info("0x%s did not take %s: %s", peer.hex()[:8], method, error)

    async def _quiet_all(self, node: bytes, method: str, body: bytes) -> None:
        if node != self.address:
            await self._quiet(node, method, body)
            return
        try:
            # As this node itself: it may be serving another caller's request (a member's report).
            await as_caller(self.address, self.handle(method, body))
        except RemoteError as error:
            log.info("this node did not take %s: %s", method, error)

    async def _endorse_all(self, method: str, body: bytes) -> dict[bytes, bytes]:
        """Every archive node's endorsement (this node's own included): 100% or nothing."""
        group = self._group()

        async def one(node: bytes) -> bytes:
            if node == self.address:
                return await as_caller(self.address, self.handle(method, body))
            return await self._transport.call(node, method, body, timeout=self._call_timeout)

        answers = await asyncio.gather(*(one(node) for node in group.members))
        return dict(zip(group.members, answers, strict=True))

    # -- endorsements (every archive node) --------------------------------------------------------

    async def _endorse_roles(self, body: bytes) -> bytes:
        """Co-sign a timeout role change only if it is the rule's result on this node's own view, for a
        member this node's own probe finds unreachable, and the only set this node signs for that
        version."""
        new_bytes, justification = rlp_list(decode_rlp(body), 2, "roles endorsement")
        new = ChainRoles.decode(raw_bytes(new_bytes, "roles"))
        reason, member_item, refill = rlp_list(
            decode_rlp(raw_bytes(justification, "justification")), 3, "timeout justification"
        )
        if raw_bytes(reason, "reason") != b"timeout":
            raise RemoteError("bad-request", "unknown justification")
        member = fixed_bytes(member_item, 20, "member")
        current = self.roles(new.chain).roles
        if new.version != current.version + 1:
            raise RemoteError("stale-roles", "the change does not follow the current roles")
        # Concurrent coordinators (a host that seemed silent, and the next archive node) with two refill
        # draws: one set per version while the first attempt can still complete. After that, a set that
        # never got every signature must not freeze the chain, and one that did moved the version on.
        endorsed = self._endorsed_roles.get((new.chain, new.version))
        if endorsed is not None and endorsed[0] != new.digest and time.monotonic() < endorsed[1]:
            raise RemoteError("wrong-roles", f"this node signed another role set for version {new.version}")
        if member not in current.members():
            raise RemoteError("not-member", "the reported node is not a member of the chain")
        expected = self._after_timeout(current, member, raw_bytes(refill, "refill draw"))
        if new != expected:
            raise RemoteError("wrong-roles", "the proposed roles are not what the timeout rule gives")
        if not await self._unreachable(member):
            raise RemoteError("alive", "the member answers this archive node")
        self._endorsed_roles[(new.chain, new.version)] = (new.digest, time.monotonic() + 2 * self._call_timeout)
        return sign(self._secret, new.digest)

    async def _rollback(self, body: bytes) -> bytes:
        """The host's new roles for a chain: keep them (newer versions only)."""
        record = RolesRecord.decode(body)
        record.verify(self._group())
        chain = record.roles.chain
        if chain in self.store.chains():
            if record.roles.version > self.roles(chain).roles.version:
                self.store.set_meta(chain, record.encode())
        elif chain in self._genesis and record.roles.version > self._genesis[chain].roles.version:
            self._genesis[chain] = record
        # What this node signed under older roles stays signed (store.signed): a block of an older
        # version that every archive node signed is certified whatever roles came after it.
        return b""

    async def _endorse_fault(self, body: bytes) -> bytes:
        new_bytes, justification = rlp_list(decode_rlp(body), 2, "fault endorsement")
        new = ChainRoles.decode(raw_bytes(new_bytes, "roles"))
        reason, evidence_bytes, draw_bytes = rlp_list(
            decode_rlp(raw_bytes(justification, "justification")), 3, "fault justification"
        )
        if raw_bytes(reason, "reason") != b"fault":
            raise RemoteError("bad-request", "unknown justification")
        evidence = Evidence.decode(raw_bytes(evidence_bytes, "evidence"))
        draw = roulette.DrawRecord.decode(raw_bytes(draw_bytes, "draw"))
        chain = new.chain
        record = self.roles(chain) if evidence.block.header.height else self._genesis_roles(evidence.block)
        verdict = self.judge(evidence, record)
        roulette.check(draw)
        if draw.group != self._group().members or draw.hash != new.draw_hash:
            raise RemoteError("bad-request", "the draw is not this group's or not the one the roles name")
        witnesses = [p.address for p in draw.chosen if p.role == ROLE_WITNESS]
        validators = [p.address for p in (*draw.chosen, *draw.standbys) if p.role == ROLE_VALIDATOR]
        expected = record.roles.dissolved(witnesses, validators, verdict.offender, draw.hash)
        if expected != new:
            raise RemoteError("bad-request", "the new roles are not what the evidence and the draw give")
        header = evidence.block.header
        fault = b""
        if verdict.offender is not None and verdict.kind is not None:
            fault = sign(
                self._secret,
                self._domains.fault(
                    chain,
                    header.height,
                    evidence.roles_version,
                    verdict.offender,
                    verdict.role,
                    verdict.kind,
                    verdict.header_hash,
                    keccak(evidence.encode()),
                    self._reporter_for(chain),
                ),
            )
        return sign(self._secret, new.digest) + fault

    def _reporter_for(self, chain: bytes) -> bytes:
        return self._group().host_of(chain)

    # -- the roulette -----------------------------------------------------------------------------
    #
    # Four rounds, host -> every archive node of the group (the host answers its own through `handle`):
    #   draw_commit(draw id, snapshot)   each node checks the snapshot against its own pool, commits;
    #   draw_reveal(draw id, commitments) each node finds its own commitment in the list, reveals;
    #   endorse_draw(record)             each node re-runs the record, checks it holds the snapshot and
    #                                    the commitments it saw before revealing, and re-checks every
    #                                    stake and capacity verdict against its own mainchain view;
    #   draw_final(record, signatures)   each node verifies the whole group signed, appends the record
    #                                    to its own Selection Chain and moves the drawn to the back.
    # So the snapshot is fixed before any secret is out, and no stake verdict is the host's word alone.

    async def _draw_commit(self, body: bytes) -> bytes:
        draw_id_item, snapshot_item = rlp_list(decode_rlp(body), 2, "draw commit")
        draw_id = fixed_bytes(draw_id_item, 32, "draw id")
        if draw_id in self._draws:
            raise RemoteError("bad-request", "already committed to this draw")
        snapshot = roulette.snapshot_from_rlp(snapshot_item)
        try:
            roulette.check_snapshot(snapshot, self.pool.order())
        except roulette.RouletteError as error:
            raise RemoteError("bad-snapshot", f"refused the host's pool snapshot: {error}") from error
        while len(self._draws) >= _KEPT_DRAWS:
            del self._draws[next(iter(self._draws))]  # abandoned draws: the oldest goes first
        state = _DrawState(roulette.new_secret(), roulette.snapshot_hash(snapshot))
        self._draws[draw_id] = state
        return roulette.commitment(state.secret, self.address, draw_id)

    async def _draw_reveal(self, body: bytes) -> bytes:
        draw_id_item, commitments_item = rlp_list(decode_rlp(body), 2, "draw reveal")
        draw_id = fixed_bytes(draw_id_item, 32, "draw id")
        commitments = tuple(fixed_bytes(c, 32, "commitment") for c in list_of(commitments_item, "commitments"))
        state = self._draws.get(draw_id)
        if state is None:
            raise RemoteError("bad-request", "no commitment to this draw")
        group = self._group().members
        if len(commitments) != len(group) or self.address not in group:
            raise RemoteError("bad-draw", "the commitments are not one per member of this group")
        if commitments[group.index(self.address)] != roulette.commitment(state.secret, self.address, draw_id):
            raise RemoteError("bad-draw", "the commitments do not hold this node's own")
        if state.commitments is not None and state.commitments != commitments:
            raise RemoteError("bad-draw", "other commitments than this node revealed against before")
        state.commitments = commitments
        return state.secret

    async def _endorse_draw(self, body: bytes) -> bytes:
        record = roulette.DrawRecord.decode(body)
        state = self._draws.get(record.draw_id)
        if state is None or state.commitments is None:
            raise RemoteError("bad-draw", "this node has not revealed for this draw")
        if record.group != self._group().members:
            raise RemoteError("bad-draw", "the draw is not this group's")
        if record.snapshot_hash != state.snapshot_hash:
            raise RemoteError("bad-draw", "the record's pool snapshot is not the one committed before the reveals")
        if record.commitments != state.commitments:
            raise RemoteError("bad-draw", "the record's commitments are not the ones revealed against")
        if record.reveals[record.group.index(self.address)] != state.secret:
            raise RemoteError("bad-draw", "the record does not hold this node's reveal")
        try:
            roulette.check(record)
        except roulette.RouletteError as error:
            raise RemoteError("bad-draw", f"the record does not re-run: {error}") from error
        # The store is read here, on the loop's thread (it may hold writes not yet committed); only the
        # mainchain calls go to a worker thread.
        await asyncio.to_thread(self._check_verdicts, record, self._eligibility(self.serving()))
        state.endorsed = record.hash
        return roulette.sign_record(record, self._secret)

    def _check_verdicts(self, record: roulette.DrawRecord, eligible: roulette.Eligible) -> None:
        """Every drawn candidate is eligible and every one listed ineligible is not, by this node's own
        mainchain view and the chains it keeps (blocking: mainchain calls)."""
        for pick in (*record.chosen, *record.standbys):
            if not eligible(pick.address, pick.role):
                raise RemoteError(
                    "bad-draw",
                    f"0x{pick.address.hex()} is drawn as role {pick.role} but its stake is below the minimum "
                    "or its capacity is taken",
                )
        roles = {candidate.address: candidate.role for candidate in record.snapshot}
        for address in record.ineligible:
            if eligible(address, roles[address]):
                raise RemoteError("bad-draw", f"0x{address.hex()} is listed ineligible but may serve")

    def serving(self) -> Counter[tuple[bytes, int]]:
        """(address, role) -> how many chains of this group the address serves in that role now: the
        creators, witnesses and validator rosters of every chain this node keeps or expects."""
        count: Counter[tuple[bytes, int]] = Counter()
        records = [self._records.decode(meta) for meta in map(self.store.meta, self.store.chains()) if meta]
        for record in (*records, *self._genesis.values()):
            roles = record.roles
            count[(roles.creator, ROLE_CBDC)] += 1
            count.update((witness, ROLE_WITNESS) for witness in roles.witnesses)
            count.update((validator, ROLE_VALIDATOR) for validator in roles.validators)
        return count

    def _eligibility(self, serving: Counter[tuple[bytes, int]]) -> roulette.Eligible:
        """eligible(address, role): the stake meets the role's minimum and `serving` counts fewer chains
        in the role than Staking's capacity (stake / capacity unit) allows. Blocking: mainchain calls."""
        cache: dict[tuple[bytes, int], bool] = {}

        def eligible(address: bytes, role: int) -> bool:
            key = (address, role)
            if key not in cache:
                cache[key] = self._mainchain.meets_minimum(address, role) and serving[key] < (
                    self._mainchain.capacity(address, role)
                )
            return cache[key]

        return eligible

    async def _draw_final(self, body: bytes) -> bytes:
        record_bytes, signatures_item = rlp_list(decode_rlp(body), 2, "draw final")
        record = roulette.DrawRecord.decode(raw_bytes(record_bytes, "draw record"))
        state = self._draws.get(record.draw_id)
        if state is None or state.endorsed != record.hash:
            raise RemoteError("bad-draw", "this node did not endorse this record")
        signatures = [raw_bytes(sig, "signature") for sig in list_of(signatures_item, "signatures")]
        try:
            roulette.verify_signatures(record, signatures)
        except roulette.RouletteError as error:
            raise RemoteError("bad-draw", f"the record is not signed by the whole group: {error}") from error
        del self._draws[record.draw_id]
        if record.slots == _CBDC_SLOTS:
            self._load_cbdc_draws()
            self._cbdc_draws.setdefault(record.chain_id, record)  # the first CBDC draw of a chain is its draw
        self._append_selection(self._group(), record, dict(zip(record.group, signatures, strict=True)))
        # Drawn members serve and rejoin at the back: a node serves many chains within its capacity.
        for pick in (*record.chosen, *record.standbys):
            if pick.address in self.pool:
                self.pool.leave(pick.address)
                self.pool.join(pick.address, pick.role)
        return b""

    async def run_draw(
        self, chain: bytes, slots: Sequence[roulette.Slot], excluded: Sequence[bytes]
    ) -> tuple[roulette.DrawRecord, dict[int, tuple[bytes, ...]]]:
        """Draw members for `chain` from this node's pool; the record goes to every archive node's
        Selection Chain. The snapshot is taken, and sent to every node, before any commitment."""
        group = self._group()
        snapshot = self.pool.snapshot()
        draw_id = keccak(chain + self.poh.hash + snapshot.hash)
        randomness = roulette.CommitReveal(draw_id, group.members)
        commit = encode_rlp([draw_id, [candidate.to_rlp() for candidate in snapshot.candidates]])
        for node, value in (await self._ask_all("draw_commit", commit)).items():
            randomness.commit(node, value)
        reveal = encode_rlp([draw_id, list(randomness.commitments())])
        for node, value in (await self._ask_all("draw_reveal", reveal)).items():
            randomness.reveal(node, value)
        eligible = self._eligibility(self.serving())
        record = await asyncio.to_thread(
            lambda: roulette.draw(
                chain_id=int.from_bytes(chain, "big"),
                randomness=randomness,
                snapshot=snapshot,
                slots=slots,
                eligible=eligible,
                excluded=excluded,
            )
        )
        wanted = {slot.role: slot.count for slot in slots}
        picks: dict[int, tuple[bytes, ...]] = {}
        for role, count in wanted.items():
            chosen = tuple(p.address for p in record.chosen if p.role == role)
            if len(chosen) < count:
                raise RemoteError(
                    "pool-empty", f"the pool holds {len(chosen)} eligible candidates of role {role}, {count} needed"
                )
            picks[role] = chosen + tuple(p.address for p in record.standbys if p.role == role)
        signatures = await self._ask_all("endorse_draw", record.encode())
        roulette.verify_signatures(record, signatures)
        await self._ask_all("draw_final", encode_rlp([record.encode(), [signatures[n] for n in record.group]]))
        return record, picks

    async def draw_cbdc(self, order: int) -> tuple[roulette.DrawRecord, bytes]:
        """Draw the CBDC that is to fill CoNETCash order `order` from the staked CBDCs waiting in the
        pool, like any draw (snapshot first, every node re-checks stake and capacity), and have every
        archive node of the group certify it: (record, certificate over `Domains.cbdc_draw(order,
        cbdc, record hash, group)`, signatures sorted by signer, for the fill)."""
        chain = chain_id_of(self._domains.mainchain_id, self._domains.cash, order)
        record, picks = await self.run_draw(chain, _CBDC_SLOTS, ())
        signatures = await self._endorse_all("endorse_cbdc_draw", encode_rlp([uint_bytes(order), record.hash]))
        (cbdc,) = picks[ROLE_CBDC]
        digest = self._domains.cbdc_draw(order, cbdc, record.hash, self._group().group)
        for node, signature in signatures.items():
            if _recover(digest, signature) != node:
                raise RemoteError("bad-signature", f"0x{node.hex()} did not certify the CBDC draw")
        return record, join_certificate(signatures)

    async def _cbdc_draw(self, body: bytes) -> bytes:
        """A staked CBDC asks for the certified CBDC draw of order `id`: rlp([id]) →
        rlp([cbdc, selection, group, epoch, certificate]), what `CoNETCash.fill` takes. The host of the
        order's chain draws once (the first CBDC draw of the chain is its draw); later requests, to it
        or to any archive node of the group holding that draw, re-collect the group's certificate of
        that same draw. Every CBDC may ask: the certificate fills only for the CBDC it names."""
        (order_item,) = rlp_list(decode_rlp(body), 1, "CBDC draw request")
        order = uint(order_item, "order")
        who = caller()
        if who is not None and who not in self._group().members:
            staked = await asyncio.to_thread(self._mainchain.meets_minimum, who, ROLE_CBDC)
            if not staked:
                raise Forbidden("forbidden", f"0x{who.hex()} may not call cbdc_draw: only staked CBDCs")
        chain = chain_id_of(self._domains.mainchain_id, self._domains.cash, order)
        lock = self._cbdc_draw_locks.setdefault(chain, asyncio.Lock())
        async with lock:  # one draw per order even when its CBDCs ask at once
            self._load_cbdc_draws()
            record = self._cbdc_draws.get(int.from_bytes(chain, "big"))
            if record is None:
                host = self._group().host_of(chain)
                if host != self.address:
                    raise RemoteError("not-host", f"order {order}'s CBDC is drawn by 0x{host.hex()}")
                record, certificate = await self.draw_cbdc(order)
            else:
                if len(record.chosen) != 1:
                    raise RemoteError("bad-draw", "the draw found no eligible CBDC")
                request = encode_rlp([uint_bytes(order), record.hash])
                signatures = await self._endorse_all("endorse_cbdc_draw", request)
                certificate = join_certificate(signatures)
        group = self._group()
        group.verify(self._domains.cbdc_draw(order, record.chosen[0].address, record.hash, group.group), certificate)
        cbdc = record.chosen[0].address
        return encode_rlp([cbdc, record.hash, uint_bytes(group.group), uint_bytes(group.epoch), certificate])

    async def _endorse_cbdc_draw(self, body: bytes) -> bytes:
        """Certify the CBDC draw of an order: only a record this node endorsed and keeps in its own
        Selection Chain, drawn for that order's chain, of exactly one CBDC."""
        order_item, selection_item = rlp_list(decode_rlp(body), 2, "CBDC draw")
        order, selection = uint(order_item, "order"), fixed_bytes(selection_item, 32, "selection")
        chain = int.from_bytes(chain_id_of(self._domains.mainchain_id, self._domains.cash, order), "big")
        self._load_cbdc_draws()
        record = self._cbdc_draws.get(chain)
        if record is None:
            raise RemoteError("bad-draw", f"no CBDC draw for order {order} in this node's Selection Chain")
        if record.hash != selection:
            # Only the first: a host that re-ran the draw until a CBDC it likes came up gets nothing.
            raise RemoteError("bad-draw", f"order {order}'s CBDC was drawn by 0x{record.hash.hex()}, not this draw")
        if len(record.chosen) != 1:
            raise RemoteError("bad-draw", "the draw found no eligible CBDC")
        drawn = record.chosen[0].address
        return sign(self._secret, self._domains.cbdc_draw(order, drawn, selection, self._group().group))

    def _load_cbdc_draws(self) -> None:
        """Once per process: the first CBDC draw of each chain from this node's own Selection Chain, so
        a restart does not let a second draw of an order count as its first."""
        if self._cbdc_draws_loaded:
            return
        chain = selection_chain_id(self._group().group)
        if chain in self.store.chains():
            for height in range(self.store.height(chain) + 1):
                for tx in self.store.block(chain, height).block.transactions:
                    record_bytes, _ = rlp_list(decode_rlp(tx.data), 2, "selection entry")
                    record = roulette.DrawRecord.decode(raw_bytes(record_bytes, "draw record"))
                    if record.slots == _CBDC_SLOTS:
                        self._cbdc_draws.setdefault(record.chain_id, record)
        self._cbdc_draws_loaded = True

    def _append_selection(
        self, group: ArchiveGroup, record: roulette.DrawRecord, signatures: dict[bytes, bytes]
    ) -> None:
        """The record, with every archive node's signature, as a transaction of this node's copy of the
        Selection Chain. Each archive node appends in the order the records reach it, so the copies
        hold the same group-signed records while their block headers are each node's own."""
        chain = selection_chain_id(group.group)
        try:
            head = self.store.head(chain)
            height, parent, state = head.block.header.height + 1, head.block.hash, head.state
        except UnknownChain:
            height, parent, state = 0, bytes(32), State({})
        # This node signs the entry of its own copy; the Selection Chain is never executed (its state
        # stays empty), so the node's nonce is the height: one entry per block, in order.
        tx = Transaction.signed(
            self._secret,
            chain,
            height,
            SELECTION_LOG,
            encode_rlp([record.encode(), [signatures[n] for n in record.group]]),
            30_000_000,
        )
        header = Header(
            chain, height, parent, state.root, transactions_root((tx,)), int(self._clock()), self.poh.index, group.group
        )
        block = Block(header, (tx,))
        if height == 0:
            self.store.create_chain(block, state, b"".join(signatures[n] for n in record.group), b"")
        else:
            self.store.append(chain, block, state, b"".join(signatures[n] for n in record.group))

    async def _ask_all(self, method: str, body: bytes) -> dict[bytes, bytes]:
        return await self._endorse_all(method, body)

    # -- opening a note chain ---------------------------------------------------------------------

    async def open_note(self, terms_without_roles: NoteTerms) -> Outcome:
        """Draw the note chain's group, have its CBDC produce the genesis block, register the chain.
        The draw fills in the witnesses; the validators' fee share accrues to the first drawn
        validator of the roster (a staked node whose balance it is to pay out)."""
        chain = terms_without_roles.chain
        draw, picks = await self.run_draw(
            chain,
            [roulette.Slot(ROLE_WITNESS, 5), roulette.Slot(ROLE_VALIDATOR, 1, VALIDATOR_ROSTER - 1)],
            (terms_without_roles.cbdc,),
        )
        group = self._group()
        roles = ChainRoles(
            chain,
            group.group,
            0,
            terms_without_roles.cbdc,
            picks[ROLE_WITNESS],
            picks[ROLE_VALIDATOR],
            (),
            draw.hash,
            cbdc=terms_without_roles.cbdc,
        )
        terms = NoteTerms(
            note=terms_without_roles.note,
            mainchain_id=terms_without_roles.mainchain_id,
            cash=terms_without_roles.cash,
            value=terms_without_roles.value,
            holder=terms_without_roles.holder,
            cbdc=terms_without_roles.cbdc,
            witnesses=roles.witnesses,
            validators_pool=picks[ROLE_VALIDATOR][0],
            transfer_fee_bps=terms_without_roles.transfer_fee_bps,
        )
        body = encode_rlp([terms.to_rlp(), roles.encode(), draw.encode()])
        signatures = await self._endorse_all("endorse_genesis_roles", body)
        record = RolesRecord(roles, join_certificate(signatures))
        await self._endorse_all("expect_genesis", record.encode())
        answer = await self._transport.call(
            terms.cbdc,
            "open_genesis",
            encode_rlp([terms.to_rlp(), record.encode(), uint_bytes(self.poh.index)]),
            timeout=self._call_timeout,
        )
        outcome = Outcome.decode(answer)
        genesis = outcome.block
        digest = self._domains.genesis(chain, genesis.hash, terms.cash, terms.note, group.group)
        genesis_sigs = await self._endorse_all(
            "endorse_registration", encode_rlp([chain, terms.cash, uint_bytes(terms.note)])
        )
        del digest
        await asyncio.to_thread(
            self._mainchain.register_chain,
            terms.cash,
            terms.note,
            genesis.hash,
            group.group,
            group.epoch,
            join_certificate(genesis_sigs),
        )
        return outcome

    async def _endorse_genesis_roles(self, body: bytes) -> bytes:
        terms_item, roles_bytes, draw_bytes = rlp_list(decode_rlp(body), 3, "genesis roles")
        roles = ChainRoles.decode(raw_bytes(roles_bytes, "roles"))
        draw = roulette.DrawRecord.decode(raw_bytes(draw_bytes, "draw"))
        terms = NoteTerms.from_rlp(terms_item)
        roulette.check(draw)
        if draw.hash != roles.draw_hash or draw.group != self._group().members or roles.version != 0:
            raise RemoteError("bad-request", "the roles do not come from this group's draw")
        if (
            roles.creator != terms.cbdc
            or roles.cbdc != terms.cbdc
            or roles.chain != terms.chain
            or tuple(terms.witnesses) != roles.witnesses
        ):
            raise RemoteError("bad-request", "the roles do not match the note's terms")
        if terms.validators_pool != roles.validators[0]:
            raise RemoteError("bad-request", "the validators' pool is not the first drawn validator")
        if roles.chain in self.store.chains():
            raise RemoteError("bad-request", "the chain is open already")
        await self._check_minted(terms)
        # The latest endorsed draw's terms (an earlier open may have failed); the genesis block itself
        # is signed once per chain (store.signed at height 0).
        self._genesis_terms[roles.chain] = terms
        return sign(self._secret, roles.digest)

    async def _check_minted(self, terms: NoteTerms) -> None:
        """Refuse unless this node's own mirror of the mainchain holds the minting event of exactly
        these terms (the draw's witnesses and validators' pool aside)."""
        label = f"asset #{terms.note} of 0x{terms.cash.hex()}"
        if terms.mainchain_id != self._domains.mainchain_id:
            raise RemoteError("wrong-terms", f"{label}: mainchain {terms.mainchain_id} is not this deployment's")
        if terms.cash not in (self._domains.cash, self._domains.vault):
            raise RemoteError("wrong-terms", f"{label}: the contract is neither CoNETCash nor OdexVault")
        if self.minted is None:
            raise RemoteError("unknown-asset", f"{label}: this archive node has no mirror of the mainchain")
        expected = await self.minted.terms(terms.cash, terms.note)
        if expected is None:
            raise RemoteError("unknown-asset", f"{label} was never minted (no minting event in this node's mirror)")
        offered = _without_draw(terms)
        if offered != _without_draw(expected):
            wrong = [f.name for f in fields(NoteTerms) if getattr(offered, f.name) != getattr(expected, f.name)]
            raise RemoteError("wrong-terms", f"{label}: {', '.join(wrong)} differ from the minting event")

    async def _expect_genesis(self, body: bytes) -> bytes:
        record = RolesRecord.decode(body)
        record.verify(self._group())
        # A certificate this node signed means it checked the terms; still, only chains it endorsed.
        if record.roles.chain not in self._genesis_terms:
            raise RemoteError("unknown-chain", "this archive node endorsed no genesis terms for this chain")
        self._genesis[record.roles.chain] = record
        return b""

    async def _endorse_registration(self, body: bytes) -> bytes:
        chain_item, cash_item, note_item = rlp_list(decode_rlp(body), 3, "registration")
        chain = fixed_bytes(chain_item, 32, "chain")
        cash, note = fixed_bytes(cash_item, 20, "cash"), uint(note_item, "note")
        if chain_id_of(self._domains.mainchain_id, cash, note) != chain:
            raise RemoteError("wrong-terms", "the chain id is not the asset's")
        try:
            stored = self.store.block(chain, 0)  # only a chain this node holds as final
        except UnknownChain:
            raise RemoteError("unknown-chain", "this archive node holds no final genesis of the chain") from None
        # The stored genesis passed `_check_genesis_block` (terms checked against the mirror) when this
        # node signed or stored it; the asset must still be one the mirror knows.
        if self.minted is None or await self.minted.terms(cash, note) is None:
            raise RemoteError("unknown-asset", f"asset #{note} of 0x{cash.hex()} was never minted")
        return sign(
            self._secret,
            self._domains.genesis(chain, stored.block.hash, cash, note, self._group().group),
        )


def _recover(digest: bytes, signature: bytes) -> bytes | None:
    try:
        return recover(digest, signature)
    except BadSignature:
        return None


_METHODS: dict[str, str] = {
    "ping": "_ping",
    "roles": "_roles",
    "chain": "_chain",
    "head": "_head",
    "exit_certificate": "_exit_certificate",
    "accept": "_accept",
    "final": "_final",
    "report_timeout": "_report_timeout",
    "report_fault": "_report_fault",
    "rollback": "_rollback",
    "endorse_roles": "_endorse_roles",
    "endorse_fault": "_endorse_fault",
    "draw_commit": "_draw_commit",
    "draw_reveal": "_draw_reveal",
    "endorse_draw": "_endorse_draw",
    "draw_final": "_draw_final",
    "endorse_cbdc_draw": "_endorse_cbdc_draw",
    "cbdc_draw": "_cbdc_draw",
    "endorse_genesis_roles": "_endorse_genesis_roles",
    "expect_genesis": "_expect_genesis",
    "endorse_registration": "_endorse_registration",
    "release": "_release",
    "certify": "_certify",
}
