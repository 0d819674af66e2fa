"""A chain member: creator, witness and validator in one node, since the roles move between nodes.

DESIGN §5. A node serves every chain whose roles name it: as a witness it stores the chain, re-executes
each proposal and signs; as the chain's validator for one block it re-executes on the pre-state it is
handed (it stores nothing for that); as the creator it batches submitted transactions into blocks and
drives the round:

1. execute the batch on the head state (a transaction that reverts is answered at once and left out),
   sign the header, and send it to the 5 witnesses (`propose`) and the block's validator (`validate`);
2. with all 7 signatures, send the block to every archive node of the group (`accept`);
3. with every archive signature, the block is final: `final` goes to witnesses and archive nodes, and
   the submitters get their `Outcome` (with exit certificates when the block holds exits).

What goes wrong, and what the creator does (the archive host decides, every archive node co-signs):
- a member does not answer within the timeout → `report_timeout` → new roles (the last block's
  validator takes the place), and the round is retried under them;
- a member refuses, or signs another header → `report_fault` with the evidence → the archive group
  re-executes, slashes the offender on the mainchain, dissolves the group and draws a new one;
- an archive node rejects the block → `report_fault` (kind REJECTED) → dissolved and redrawn; every
  member drops the pending block (the rollback) and the block is re-validated from the last final state.

A member signs at most one header per (chain, height, roles version), binding that version and its
stake role in the signature (`Domains.block`); a creator that asks for a second one is reported with
both signed headers (equivocation, slashed on the mainchain by anyone). A member that re-executes a
block and finds it invalid answers with its signed refusal (`Domains.refusal`, code "refused"): the
evidence a refusal fault needs, so nobody is slashed for a refusal it never signed.

Transport, store, archive directory and clock are handed in (offchain/dle/transport.py, store.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

from coincurve import PrivateKey

from dle_vm.block import Block, Header, transactions_root
from dle_vm.encoding import EncodingError
from dle_vm.engine import BlockContext, Engine, InvalidTransaction, Receipt, apply_transactions
from dle_vm.signature import BadSignature, address_of, recover, sign
from dle_vm.state import State
from dle_vm.transaction import Transaction
from offchain.dle.auth import MemberAccess, as_caller
from offchain.dle.authority import (
    MAX_BLOCK_TRANSACTIONS,
    MAX_SUBMIT_TRANSACTIONS,
    NOT_YET,
    AuthorityError,
    BlockAuthority,
    NoteAuthority,
    NotYetSeen,
)
from offchain.dle.digests import Domains
from offchain.dle.messages import (
    EQUIVOCATION,
    REFUSED,
    REJECTED,
    WRONG_VOTE,
    Acceptance,
    ChainDump,
    Commit,
    Evidence,
    Final,
    Outcome,
    Proposal,
    Rejection,
    Submit,
    TimeoutReport,
    Validation,
    Vote,
)
from offchain.dle.roles import (
    ArchiveGroup,
    ChainRoles,
    DecodedRecords,
    RolesError,
    RolesRecord,
    join_certificate,
)
from offchain.dle.store import ChainStore, UnknownChain
from offchain.dle.transport import PeerTimeout, PeerUnavailable, RemoteError, Transport

__all__ = ["ConsensusFailed", "MemberNode", "Timeouts", "check_final", "execute", "member_signers", "signed_refusal"]

log = logging.getLogger("conet.dle.member")

GroupOf = Callable[[int], ArchiveGroup]
"""The current epoch of an archive group (from the chain mirror, or fixed in tests)."""


class ConsensusFailed(RuntimeError):
    """A round could not finish within its attempts."""


@dataclass(frozen=True)
class Timeouts:
    """Seconds a node waits for each kind of answer."""

    vote: float = 5.0
    accept: float = 5.0
    archive: float = 30.0
    """For role changes, faults and draws, which involve every archive node and the mainchain."""
    final: float = 5.0
    batch_window: float = 0.0
    """How long a creator waits for more transactions before starting a block."""
    max_batch: int = 64
    attempts: int = 6
    not_yet_wait: float = 0.5
    """Between asks of a member or archive node that answered `not-yet` (its mainchain view does not show
    a proof the block needs yet): it is asked again, the same request, up to `not_yet_retries` times."""
    not_yet_retries: int = 10


def execute(
    engine: Engine, state: State, header: Header, transactions: Sequence[Transaction]
) -> tuple[State, tuple[Receipt, ...]]:
    """Run a block's signed transactions on `state` in the block's environment (signatures and nonces
    checked: `apply_transactions`)."""
    return apply_transactions(engine, state, transactions, BlockContext.of(header))


def check_final(
    block: Block,
    certificate: bytes,
    roles: ChainRoles,
    group: ArchiveGroup,
    domains: Domains,
    *,
    members_checked: bool = False,
) -> None:
    """Demand that `block` carries exactly its members' signatures and the archive group's certificate.

    Finality is the archive certificate: every archive node recovered every member signature before it
    signed. A node that itself checked this header's member signatures, or re-executed and signed it
    (`members_checked`), needs only the certificate."""
    certified = domains.certificate(block.header.chain_id, block.header.height, block.hash)
    if members_checked:
        group.verify(certified, certificate)
        return
    try:
        signers = member_signers(block, roles, domains)
    except BadSignature as error:
        raise RolesError(f"block {block.header.height}: malformed member signature: {error}") from error
    expected = roles.signers_for(block.header.parent_hash)
    if signers != expected:
        raise RolesError(f"block {block.header.height} is not signed by exactly its members")
    group.verify(certified, certificate)


def member_signers(block: Block, roles: ChainRoles, domains: Domains) -> tuple[bytes, ...]:
    """The signer behind each of `block`'s member signatures, each recovered over the digest of the
    stake role its place holds under `roles` (creator, 5 witnesses, the block's validator) and
    `roles.version`; a signature given in another role or version recovers another address. Raises
    BadSignature for a malformed one."""
    header = block.header
    expected = roles.signers_for(header.parent_hash)
    if len(block.signatures) != len(expected):
        return tuple(recover(header.hash, s) for s in block.signatures)  # the count already fails
    return tuple(
        recover(domains.block(header.chain_id, header.height, roles.version, roles.stake_role(m), block.hash), s)
        for m, s in zip(expected, block.signatures, strict=True)
    )


def signed_refusal(error: RemoteError) -> bytes | None:
    """The member's signed refusal a "refused" answer carries (its first word, hex), or None."""
    if error.code != "refused":
        return None
    word = error.message.split(" ", 1)[0]
    try:
        signature = bytes.fromhex(word)
    except ValueError:
        return None
    return signature if len(signature) == 65 else None


@dataclass(frozen=True)
class _Stalled:
    """A block this creator signed and sent whose round failed (an archive node could not yet check it,
    or did not answer): members may hold votes for it, so the next block at its height under its roles
    version must be this very block, or they would take a second header for equivocation."""

    height: int
    roles_version: int
    parent_hash: bytes
    block: Block
    post: State


@dataclass
class _Pending:
    """A header this node signed and the post-state it reached, until the block is final or dropped."""

    roles_version: int
    header: Header
    signature: bytes
    post: State
    creator_signature: bytes


@dataclass
class _Job:
    transactions: tuple[Transaction, ...]
    done: asyncio.Future[bytes]


@dataclass
class _ChainWork:
    queue: list[_Job] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class MemberNode:
    """One member node: serves `propose`, `validate`, `final`, `roles`, `submit`, `ping`."""

    def __init__(
        self,
        secret: bytes,
        transport: Transport,
        store: ChainStore,
        group_of: GroupOf,
        domains: Domains,
        engine: Engine,
        *,
        timeouts: Timeouts | None = None,
        authority: BlockAuthority | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._secret = secret
        # Every block's system transactions are proven before this node re-executes or signs it.
        self._authority = authority or NoteAuthority(engine)
        self.address = address_of(PrivateKey(secret).public_key)
        self._transport = transport
        self.store = store
        self._group_of = group_of
        self._domains = domains
        self._engine = engine
        self.timeouts = timeouts or Timeouts()
        self._clock = clock
        self._pending: dict[tuple[bytes, int], _Pending] = {}
        self._stalled: dict[bytes, _Stalled] = {}
        self._seen_validation: dict[tuple[bytes, int, int], Header] = {}
        self._work: dict[bytes, _ChainWork] = {}
        self._poh: dict[bytes, int] = {}
        self._lock: dict[bytes, asyncio.Lock] = {}
        self._genesis_records: dict[bytes, RolesRecord] = {}
        self._records = DecodedRecords()
        self.rounds = 0
        self.access = MemberAccess(group_of, self._known_roles, self._roles_for)
        """Who may call which method (offchain/dle/auth.py): checked before every handler."""

    # -- dispatch ---------------------------------------------------------------------------------

    async def handle(self, method: str, body: bytes) -> bytes:
        name = _METHODS.get(method)
        if name is None:
            raise RemoteError("unknown-method", f"no method {method!r}")
        handler: Callable[[bytes], Awaitable[bytes]] = getattr(self, name)
        try:
            await self.access.check(method, body)
            return await handler(body)
        except EncodingError as error:
            raise RemoteError("bad-request", f"malformed {method}: {error}") from error

    def _known_roles(self, chain: bytes) -> RolesRecord | None:
        """The chain's roles as this node holds them: stored, or of the genesis it validated; or None."""
        try:
            return self.roles(chain)
        except UnknownChain:
            return self._genesis_records.get(chain)

    async def _ping(self, body: bytes) -> bytes:
        return self.address

    # -- roles ------------------------------------------------------------------------------------

    def roles(self, chain: bytes) -> RolesRecord:
        return self._records.decode(self.store.meta(chain))

    def _chain_lock(self, chain: bytes) -> asyncio.Lock:
        return self._lock.setdefault(chain, asyncio.Lock())

    async def _roles_message(self, body: bytes) -> bytes:
        """A new roles record from the archive group: adopt it if newer (and drop older pending)."""
        record = RolesRecord.decode(body)
        await self.adopt(record)
        return b""

    async def adopt(self, record: RolesRecord) -> None:
        """Take `record` as the chain's roles if it is newer and certified; sync the chain if needed."""
        chain = record.roles.chain
        record.verify(self._group_of(record.roles.group))
        try:
            current = self.roles(chain).roles.version
        except UnknownChain:
            await self._sync(chain, record)
            return
        if record.roles.version <= current:
            return
        self.store.set_meta(chain, record.encode())
        # A pending header of an older roles version can never become final: the rollback.
        for key in [k for k, p in self._pending.items() if k[0] == chain and p.roles_version < record.roles.version]:
            del self._pending[key]

    async def _sync(self, chain: bytes, record: RolesRecord) -> None:
        """Fetch the chain from its host archive node (a member newly drawn or promoted)."""
        group = self._group_of(record.roles.group)
        body = await self._transport.call(group.host_of(chain), "chain", chain, timeout=self.timeouts.archive)
        dump = ChainDump.decode(body)
        newest = dump.roles if dump.roles.roles.version >= record.roles.version else record
        newest.verify(group)
        for index, (block, certificate, state) in enumerate(dump.blocks):
            if block.header.height != index or state.root != block.header.state_root:
                raise RolesError("the archive node sent an inconsistent chain")
            group.verify(self._domains.certificate(chain, block.header.height, block.hash), certificate)
            if index == 0:
                self.store.create_chain(block, state, certificate, newest.encode())
            else:
                self.store.append(chain, block, state, certificate)
        self.store.set_meta(chain, newest.encode())

    # -- witness ----------------------------------------------------------------------------------

    async def _propose(self, body: bytes) -> bytes:
        proposal = Proposal.decode(body)
        block = proposal.block
        chain = block.header.chain_id
        async with self._chain_lock(chain):
            roles = await self._roles_for(chain, proposal.roles_version, block.header.group_id)
            if self.address not in roles.witnesses:
                raise RemoteError("not-member", "this node is not a witness of the chain")
            head = self.store.head(chain)
            if block.header.height > head.block.header.height + 1:
                await self._catch_up(chain, block.header.group_id)
                head = self.store.head(chain)
            self._check_creator(block, roles)
            self._check_equivocation(block, roles)
            if block.header.height != head.block.header.height + 1 or block.header.parent_hash != head.block.hash:
                raise RemoteError("not-head", f"the head is at {head.block.header.height}")
            post = self._reexecute(head.state, block, roles)
            vote = await self._vote(block.header, roles, post, block.signatures[0])
            return vote.encode()

    async def _roles_for(self, chain: bytes, version: int, group: int) -> ChainRoles:
        """The chain's roles at `version`, fetching newer ones (and the chain) from the host first."""
        try:
            roles: ChainRoles | None = self.roles(chain).roles
        except UnknownChain:
            roles = None
        if roles is None or version > roles.version:
            host = self._group_of(group).host_of(chain)
            record = RolesRecord.decode(await self._transport.call(host, "roles", chain, timeout=self.timeouts.archive))
            await self.adopt(record)
            roles = self.roles(chain).roles
        if version != roles.version:
            raise RemoteError("stale-roles", f"roles version {version}, current is {roles.version}")
        return roles

    async def _catch_up(self, chain: bytes, group: int) -> None:
        """Take the final blocks this node missed from the host archive node."""
        host = self._group_of(group).host_of(chain)
        dump = ChainDump.decode(await self._transport.call(host, "chain", chain, timeout=self.timeouts.archive))
        archive_group = self._group_of(group)
        height = self.store.height(chain)
        for block, certificate, state in dump.blocks[height + 1 :]:
            archive_group.verify(self._domains.certificate(chain, block.header.height, block.hash), certificate)
            self.store.append(chain, block, state, certificate)

    def _check_creator(self, block: Block, roles: ChainRoles) -> None:
        header = block.header
        digest = self._domains.block(
            header.chain_id, header.height, roles.version, roles.stake_role(roles.creator), block.hash
        )
        try:
            signer = recover(digest, block.signatures[0]) if block.signatures else None
        except BadSignature:
            signer = None
        if signer != roles.creator:
            raise RemoteError("not-creator", "the block is not signed by the chain's creator")

    def _check_equivocation(self, block: Block, roles: ChainRoles) -> None:
        pending = self._pending.get((block.header.chain_id, block.header.height))
        if pending is None or pending.roles_version != roles.version or pending.header == block.header:
            return
        # The creator signed two headers at one height: refuse, and hand the proof to the archive host.
        evidence = Evidence(
            kind=EQUIVOCATION,
            roles_version=roles.version,
            member=roles.creator,
            block=block,
            other=pending.header,
            other_signature=pending.creator_signature,
        )
        asyncio.get_running_loop().create_task(self._report(roles, "report_fault", evidence.encode()))
        raise RemoteError("equivocation", "the creator already signed another block at this height")

    def _sign_vote(self, header: Header, roles: ChainRoles) -> bytes:
        """This node's BlockSignature of `header` under `roles`: its version and this node's stake role."""
        role = roles.stake_role(self.address)
        return sign(self._secret, self._domains.block(header.chain_id, header.height, roles.version, role, header.hash))

    def _refuse(self, block: Block, roles: ChainRoles, error: RemoteError) -> RemoteError:
        """The refusal of a block this node re-executed and found invalid, signed (`Domains.refusal`):
        the accused's own word a refusal fault needs. An honest node signs it only for a block that is
        invalid on the state it was given, so the archive group's re-execution clears it."""
        header = block.header
        try:
            role = roles.stake_role(self.address)
        except RolesError:
            return error  # not a member of these roles (a final block re-executed): nothing to refuse as
        digest = self._domains.refusal(header.chain_id, header.height, roles.version, role, block.hash)
        return RemoteError("refused", f"{sign(self._secret, digest).hex()} {error.code}: {error.message}")

    def _reexecute(self, pre: State, block: Block, roles: ChainRoles) -> State:
        try:
            return self._reexecute_or_raise(pre, block, roles)
        except RemoteError as error:
            if error.code not in _SIGNED_REFUSALS:
                raise  # not-yet: this node cannot tell yet, it refuses nothing
            raise self._refuse(block, roles, error) from error

    def _reexecute_or_raise(self, pre: State, block: Block, roles: ChainRoles) -> State:
        try:
            self._authority.check(pre, block, roles.witnesses)
        except NotYetSeen as error:
            # Maybe right, maybe not: this node cannot tell before its mainchain view catches up.
            raise RemoteError(NOT_YET, str(error)) from error
        except AuthorityError as error:
            raise RemoteError("unauthorised", f"the block is not authorised: {error}") from error
        try:
            post, receipts = execute(self._engine, pre, block.header, block.transactions)
        except InvalidTransaction as error:
            raise RemoteError("invalid-block", f"invalid transaction: {error}") from error
        failed = next((i for i, receipt in enumerate(receipts) if not receipt.success), None)
        if failed is not None:
            # Creators leave reverting transactions out; one in a block would move its sender's DLE nonce
            # without its program nonce, and a sender's two nonces move together (note.NoteSigner).
            raise RemoteError("invalid-block", f"transaction {failed} reverts")
        if post.root != block.header.state_root:
            raise RemoteError("invalid-block", "executing the block reaches another state root")
        return post

    async def _vote(self, header: Header, roles: ChainRoles, post: State, creator_signature: bytes = b"") -> Vote:
        """Sign `header` (an honest node signs exactly what it re-executed), and no other header at its
        height under these roles, even after a restart (the durable record in the store)."""
        key = (header.chain_id, header.height)
        pending = self._pending.get(key)
        if pending is not None and pending.header == header and pending.roles_version == roles.version:
            return Vote(header, pending.signature)
        await self._sign_once(header, roles.version)
        signature = self._sign_vote(header, roles)
        self._pending[key] = _Pending(roles.version, header, signature, post, creator_signature)
        return Vote(header, signature)

    async def _sign_once(self, header: Header, version: int) -> None:
        signed = await self.store.sign_once(header.chain_id, header.height, header.hash, version)
        if signed != header.hash:
            raise RemoteError(
                "equivocation",
                f"this member signed block 0x{signed.hex()} at height {header.height} under roles version "
                f"{version}: the creator asks for a second one",
            )

    # -- validator --------------------------------------------------------------------------------

    async def _validate(self, body: bytes) -> bytes:
        request = Validation.decode(body)
        block, parent = request.block, request.parent
        roles = request.roles.roles
        chain = block.header.chain_id
        group = self._group_of(roles.group)
        try:
            request.roles.verify(group)
        except RolesError as error:
            raise RemoteError("bad-roles", str(error)) from error
        if roles.chain != chain or roles.validator_for(block.header.parent_hash) != self.address:
            raise RemoteError("not-member", "this node is not the block's validator")
        if parent.hash != block.header.parent_hash or parent.header.height + 1 != block.header.height:
            raise RemoteError("not-head", "the parent does not precede the block")
        if request.pre_state.root != parent.header.state_root:
            raise RemoteError("bad-pre-state", "the pre-state is not the parent's post-state")
        try:
            group.verify(
                self._domains.certificate(chain, parent.header.height, parent.hash), request.parent_certificate
            )
        except RolesError as error:
            raise RemoteError("bad-parent", f"the parent is not final: {error}") from error
        self._check_creator(block, roles)
        seen_key = (chain, block.header.height, roles.version)
        seen = self._seen_validation.get(seen_key)
        if seen is not None and seen != block.header:
            raise RemoteError("equivocation", "the creator already asked to validate another block at this height")
        self._reexecute(request.pre_state, block, roles)
        await self._sign_once(block.header, roles.version)
        self._seen_validation[seen_key] = block.header
        signature = self._sign_vote(block.header, roles)
        return Vote(block.header, signature).encode()

    # -- final ------------------------------------------------------------------------------------

    async def _final(self, body: bytes) -> bytes:
        final = Final.decode(body)
        await self.accept_final(final)
        return b""

    async def accept_final(self, final: Final) -> None:
        """Store a final block (after checking both signature sets); idempotent."""
        block = final.block
        chain = block.header.chain_id
        async with self._chain_lock(chain):
            if block.header.height == 0 and chain in self._genesis_records:
                self._store_genesis(final)
                return
            record = self.roles(chain)
            head = self.store.head(chain)
            if block.header.height <= head.block.header.height:
                return
            if block.header.height != head.block.header.height + 1:
                raise RemoteError("not-head", "a final block beyond the next height: sync first")
            pending = self._pending.get((chain, block.header.height))
            signed_it = pending is not None and pending.header == block.header
            group = self._group_of(record.roles.group)
            earlier_roles = False
            try:
                check_final(block, final.certificate, record.roles, group, self._domains, members_checked=signed_it)
            except RolesError:
                # Signed by the members of roles this node no longer holds (a block the archive group
                # certified before a role change and finished after it): the archive certificate is the
                # proof of finality, every archive node having checked the members and the block's
                # authority under the roles of its time (as `_catch_up` takes blocks).
                group.verify(self._domains.certificate(chain, block.header.height, block.hash), final.certificate)
                earlier_roles = True
            pending = self._pending.pop((chain, block.header.height), None)
            if pending is not None and pending.header == block.header:
                post = pending.post
            elif earlier_roles:
                post, _ = execute(self._engine, head.state, block.header, block.transactions)
                if post.root != block.header.state_root:
                    raise RemoteError("invalid-block", "executing the final block reaches another state root")
            else:
                post = self._reexecute(head.state, block, record.roles)
            # Group-committed with the node's other chains; held under the chain lock until durable.
            await self.store.append_async(chain, block, post, final.certificate)
            self._seen_validation = {
                k: v for k, v in self._seen_validation.items() if k[0] != chain or k[1] > block.header.height
            }

    def _store_genesis(self, final: Final) -> None:
        chain = final.block.header.chain_id
        record = self._genesis_records[chain]
        check_final(final.block, final.certificate, record.roles, self._group_of(record.roles.group), self._domains)
        pending = self._pending.pop((chain, 0), None)
        if pending is None or pending.header != final.block.header:
            raise RemoteError("not-head", "a final genesis block this node did not validate: sync instead")
        self.store.create_chain(final.block, pending.post, final.certificate, record.encode())
        del self._genesis_records[chain]

    async def _rollback(self, body: bytes) -> bytes:
        """The archive group dropped a block that was never final: forget what was signed for it."""
        record = RolesRecord.decode(body)
        await self.adopt(record)
        chain = record.roles.chain
        for key in [k for k in self._pending if k[0] == chain]:
            del self._pending[key]
        return b""

    # -- creator ----------------------------------------------------------------------------------

    async def _submit(self, body: bytes) -> bytes:
        submit = Submit.decode(body)
        try:
            roles = self.roles(submit.chain).roles
        except UnknownChain:
            raise RemoteError("unknown-chain", "this node does not keep the chain") from None
        if roles.creator != self.address:
            raise RemoteError("not-creator", f"0x{roles.creator.hex()}")
        if not submit.transactions:
            raise RemoteError("bad-request", "no transactions")
        if len(submit.transactions) > MAX_SUBMIT_TRANSACTIONS:
            raise RemoteError("bad-request", f"at most {MAX_SUBMIT_TRANSACTIONS} transactions per submission")
        head = self.store.head(submit.chain)
        for tx in submit.transactions:
            # Refused here, one submitter at a time, so nobody's bad transaction costs the batch it joins.
            if tx.is_system:
                raise RemoteError("unauthorised", "system transactions are the protocol's own: nobody submits one")
            if tx.chain_id != submit.chain:
                raise RemoteError("invalid-transaction", "a transaction signed for another chain")
            if tx.sender_or_none() is None:
                raise RemoteError("invalid-transaction", "a transaction whose signature recovers no sender")
            try:
                self._authority.admit(head.state, head.block.header.height + 1, tx)
            except AuthorityError as error:
                raise RemoteError("unauthorised", str(error)) from error
        work = self._work.setdefault(submit.chain, _ChainWork())
        job = _Job(submit.transactions, asyncio.get_running_loop().create_future())
        work.queue.append(job)
        work.wake.set()
        if work.task is None or work.task.done():
            work.task = asyncio.get_running_loop().create_task(self._creator_loop(submit.chain, work))
        return await job.done

    async def open_chain(
        self, genesis_transactions: Sequence[Transaction], state: State, record: RolesRecord, poh_tick: int
    ) -> Outcome:
        """Produce a chain's genesis block (the archive host hands the terms and the drawn roles)."""
        chain = record.roles.chain
        self._poh[chain] = poh_tick
        return await self._round(chain, tuple(genesis_transactions), genesis=(state, record))

    async def _creator_loop(self, chain: bytes, work: _ChainWork) -> None:
        while work.queue:
            if self.timeouts.batch_window:
                await asyncio.sleep(self.timeouts.batch_window)
            # At most max_batch submissions, and never more transactions than a block may hold.
            take, count = 0, 0
            while take < min(self.timeouts.max_batch, len(work.queue)):
                count += len(work.queue[take].transactions)
                if take and count > MAX_BLOCK_TRANSACTIONS:
                    break
                take += 1
            jobs, work.queue = work.queue[:take], work.queue[take:]
            work.wake.clear()
            await self._produce(chain, jobs)

    async def _produce(self, chain: bytes, jobs: list[_Job]) -> None:
        txs = tuple(tx for job in jobs for tx in job.transactions)
        try:
            outcome = await self._round(chain, txs, jobs=jobs)
        except RemoteError as error:
            for job in jobs:
                if not job.done.done():
                    job.done.set_exception(error)
            return
        except Exception as error:
            log.exception("round on chain 0x%s failed", chain.hex()[:12])
            for job in jobs:
                if not job.done.done():
                    job.done.set_exception(RemoteError("failed", str(error)))
            return
        start = 0
        for job in jobs:
            if job.done.done():
                continue
            count = len(job.transactions)
            receipts = outcome.receipts[start : start + count]
            start += count
            job.done.set_result(
                Outcome(outcome.block, outcome.certificate, receipts, outcome.exit_certificates).encode()
            )

    def _drop_failing(
        self,
        pre: State,
        header: Header,
        prefix: tuple[Transaction, ...],
        txs: tuple[Transaction, ...],
        jobs: list[_Job],
    ) -> tuple[tuple[Transaction, ...], tuple[State, tuple[Receipt, ...]] | None]:
        """Answer the submitters of reverting or misnumbered transactions now; keep the rest (whole jobs
        only). Returns the kept transactions and their execution.

        Dropping a job can make a later one revert (it spent what the dropped one paid it) or misnumber
        it, so this repeats until the kept jobs execute with every transaction succeeding: exactly what
        every member and archive node demands of the block (a creator must never sign a block they
        would refuse, or it is the one judged for it)."""
        from offchain.dle.note import note_program

        while True:
            self._drop_misnumbered(pre, jobs)
            txs = tuple(tx for job in jobs for tx in job.transactions)
            if not jobs:
                return (), None
            try:
                executed = execute(self._engine, pre, header, prefix + txs)
            except InvalidTransaction as error:
                for job in jobs:
                    job.done.set_exception(RemoteError("invalid-transaction", str(error)))
                jobs.clear()
                return (), None
            receipts = executed[1]
            if not all(r.success for r in receipts[: len(prefix)]):
                raise RemoteError("failed", "the system transactions the roles demand revert")
            start, dropped = len(prefix), False
            for job in list(jobs):
                count = len(job.transactions)
                failed = [r for r in receipts[start : start + count] if not r.success]
                start += count
                if failed:
                    reason = note_program().decode_error(failed[0].output)
                    job.done.set_exception(RemoteError("reverted", reason))
                    jobs.remove(job)
                    dropped = True
            if not dropped:
                return txs, executed

    @staticmethod
    def _drop_misnumbered(pre: State, jobs: list[_Job]) -> None:
        """Answer the submitters whose transactions do not use their senders' next nonces (after the jobs
        before them); the others stay in the batch in their order."""
        next_nonce: dict[bytes, int] = {}
        for job in list(jobs):
            mine = dict(next_nonce)
            wrong = None
            for tx in job.transactions:
                expected = mine.get(tx.sender, pre[tx.sender].nonce)
                if tx.nonce != expected:
                    wrong = f"sender 0x{tx.sender.hex()} used nonce {tx.nonce}, its next nonce is {expected}"
                    break
                mine[tx.sender] = expected + 1
            if wrong is None:
                next_nonce = mine
            else:
                job.done.set_exception(RemoteError("invalid-transaction", wrong))
                jobs.remove(job)

    async def _round(
        self,
        chain: bytes,
        txs: tuple[Transaction, ...],
        *,
        jobs: list[_Job] | None = None,
        genesis: tuple[State, RolesRecord] | None = None,
    ) -> Outcome:
        for _attempt in range(self.timeouts.attempts):
            if genesis is not None:
                pre, record = genesis
                parent = None
                height, parent_hash, parent_time, parent_tick = 0, bytes(32), 0, 0
            else:
                record = self.roles(chain)
                head = self.store.head(chain)
                parent = head
                pre = head.state
                height = head.block.header.height + 1
                parent_hash, parent_time = head.block.hash, head.block.header.timestamp
                parent_tick = head.block.header.poh_tick
            roles = record.roles
            if roles.creator != self.address:
                raise RemoteError("not-creator", f"0x{roles.creator.hex()}")
            # Finish a stalled block first (the same bytes, the same signature), and put this round's
            # transactions in the block after it. A stalled block is superseded when the roles changed
            # (members' votes under the old version are void) or the head moved on.
            stalled = self._stalled.pop(chain, None)
            if (
                genesis is None
                and stalled is not None
                and (stalled.height, stalled.roles_version, stalled.parent_hash) == (height, roles.version, parent_hash)
            ):
                finished = await self._attempt_keeping(chain, record, stalled.block, stalled.post, parent, pre)
                if isinstance(finished, RolesRecord):
                    await self.adopt(finished)
                    continue
                # A submitter whose transactions the stalled block holds (it asked again after the failed
                # round) is answered with that block: they must not go in twice.
                _, receipts = execute(self._engine, pre, stalled.block.header, stalled.block.transactions)
                receipt_of = {tx.encode(): r for tx, r in zip(stalled.block.transactions, receipts, strict=True)}
                if jobs is not None:
                    for job in [job for job in jobs if _held(receipt_of, job.transactions)]:
                        jobs.remove(job)
                        if not job.done.done():
                            job.done.set_result(_answer(finished, receipt_of, job.transactions).encode())
                    if not jobs:
                        return _answer(finished, receipt_of, ())
                elif _held(receipt_of, txs):
                    return _answer(finished, receipt_of, txs)
                continue
            # The witness replacements the certified roles demand, computed from the state (so a new
            # creator that learned of the change from a client, not from its own round, makes them too).
            try:
                prefix = self._authority.required(pre, chain, height, roles.witnesses)
            except AuthorityError as error:
                raise RemoteError("unauthorised", str(error)) from error
            timestamp = max(int(self._clock()), parent_time)
            draft = Header(
                chain,
                height,
                parent_hash,
                bytes(32),
                transactions_root(()),
                timestamp,
                max(self._poh.get(chain, 0), parent_tick),
                roles.group,
            )
            executed = None
            if jobs is not None:
                txs = tuple(tx for job in jobs for tx in job.transactions)
                txs, executed = self._drop_failing(pre, draft, prefix, txs, jobs)
                if not jobs:
                    raise RemoteError("reverted", "every transaction of the batch reverted")
            all_txs = prefix + txs
            # The execution does not depend on the header's roots, only on its context (height, time).
            post, receipts = executed or execute(self._engine, pre, draft, all_txs)
            header = Header(
                chain,
                height,
                parent_hash,
                post.root,
                transactions_root(all_txs),
                timestamp,
                draft.poh_tick,
                roles.group,
            )
            block = Block(header, all_txs, (self._sign_header(header, roles),))
            self.rounds += 1
            outcome = await self._attempt_keeping(chain, record, block, post, parent, pre)
            if isinstance(outcome, RolesRecord):
                if genesis is not None:
                    genesis = (pre, outcome)
                else:
                    await self.adopt(outcome)
                continue
            return Outcome(outcome.block, outcome.certificate, receipts[len(prefix) :], outcome.exit_certificates)
        raise ConsensusFailed(f"no final block for chain 0x{chain.hex()[:12]} after {self.timeouts.attempts} attempts")

    async def _attempt_keeping(
        self, chain: bytes, record: RolesRecord, block: Block, post: State, parent: object, pre: State
    ) -> RolesRecord | _FinalOutcome:
        """`_attempt`, keeping the block as stalled when its round fails, however (see `_Stalled`)."""
        try:
            return await self._attempt(record, block, post, parent, pre)
        except Exception:
            if parent is not None:
                header = block.header
                self._stalled[chain] = _Stalled(header.height, record.roles.version, header.parent_hash, block, post)
            raise

    async def _ask_until_seen(
        self, asks: Sequence[Callable[[], Awaitable[bytes | Exception]]], block: Block
    ) -> list[bytes | Exception]:
        """Every node's answer to its request. When `block` carries a re-funding, a node that answers
        `not-yet` — its mainchain view does not show the event yet — is asked the same again,
        `not_yet_wait` apart, at most `not_yet_retries` times; what it answers last is returned. The block
        is the same every time: a node that voted keeps one vote. A `not-yet` to a block with nothing to
        prove is no answer the protocol knows and is returned at once (the caller takes it as a refusal)."""
        answers = list(await asyncio.gather(*(ask() for ask in asks)))
        if not self._authority.proves_mainchain_events(block):
            return answers
        for _ in range(self.timeouts.not_yet_retries):
            waiting = [i for i, answer in enumerate(answers) if _is_not_yet(answer)]
            if not waiting:
                break
            await asyncio.sleep(self.timeouts.not_yet_wait)
            for i, answer in zip(waiting, await asyncio.gather(*(asks[i]() for i in waiting)), strict=True):
                answers[i] = answer
        return answers

    def _sign_header(self, header: Header, roles: ChainRoles) -> bytes:
        return self._sign_vote(header, roles)

    async def _attempt(
        self, record: RolesRecord, block: Block, post: State, parent: object, genesis_pre: State
    ) -> RolesRecord | _FinalOutcome:
        """One try at finality under `record`; a new roles record when the group changed on the way."""
        roles = record.roles
        header = block.header
        validator = roles.validator_for(header.parent_hash)
        asks: list[Callable[[], Awaitable[bytes | Exception]]]
        if parent is None:
            # Genesis: nothing precedes it; every member re-executes from the program's empty state.
            request = encode_genesis(block, genesis_pre, record)
            asks = [
                partial(self._call, m, "validate_genesis", request, self.timeouts.vote)
                for m in (*roles.witnesses, validator)
            ]
        else:
            proposal = Proposal(roles.version, block).encode()
            asks = [partial(self._call, w, "propose", proposal, self.timeouts.vote) for w in roles.witnesses]
            from offchain.dle.store import StoredBlock

            assert isinstance(parent, StoredBlock)
            validation = Validation(block, parent.block, parent.certificate, parent.state, record)
            asks.append(partial(self._call, validator, "validate", validation.encode(), self.timeouts.vote))
        members = (*roles.witnesses, validator)
        answers = await self._ask_until_seen(asks, block)
        proves = self._authority.proves_mainchain_events(block)
        signatures = [block.signatures[0]]
        for member, answer in zip(members, answers, strict=True):
            # A member whose mainchain view still does not show the block's re-funding can neither sign
            # nor be blamed: it is reported as timed out, and the archive nodes' own probes decide (one
            # that answers them is not replaced, and the round fails with the block kept as stalled).
            if isinstance(answer, (PeerTimeout, PeerUnavailable)) or (proves and _is_not_yet(answer)):
                return await self._report(
                    roles, "report_timeout", TimeoutReport(roles.chain, roles.version, member).encode(), record=True
                )
            if isinstance(answer, Exception):  # a refusal (RemoteError) or anything else unexpected
                if isinstance(answer, RemoteError) and answer.code in ("stale-roles", "equivocation"):
                    # Someone else moved on, or a witness caught this creator's key signing twice and
                    # reported it: either way the archive group decides, and the round follows.
                    return await self._newer_roles(roles)
                refusal = signed_refusal(answer) if isinstance(answer, RemoteError) else None
                if refusal is None:
                    # No signed refusal, no refusal fault (nobody is slashed on the creator's word): an
                    # answer that is no vote is handled like no answer, by the timeout rule.
                    return await self._report(
                        roles, "report_timeout", TimeoutReport(roles.chain, roles.version, member).encode(), record=True
                    )
                evidence = Evidence(REFUSED, roles.version, member, block, other_signature=refusal, reason=str(answer))
                return await self._report(roles, "report_fault", evidence.encode(), record=True)
            vote = Vote.decode(answer)
            digest = self._domains.block(
                header.chain_id, header.height, roles.version, roles.stake_role(member), block.hash
            )
            if vote.header != header or _recover(digest, vote.signature) != member:
                evidence = Evidence(
                    WRONG_VOTE, roles.version, member, block, other=vote.header, other_signature=vote.signature
                )
                return await self._report(roles, "report_fault", evidence.encode(), record=True)
            signatures.append(vote.signature)
        signed = block.with_signatures(signatures)
        group = self._group_of(roles.group)
        commit = Commit(signed).encode()
        accepts = await self._ask_until_seen(
            [partial(self._call, node, "accept", commit, self.timeouts.accept) for node in group.members], signed
        )
        archive_signatures: dict[bytes, bytes] = {}
        exit_signatures: dict[bytes, tuple[bytes, ...]] = {}
        ticks: dict[bytes, int] = {}
        for node, answer in zip(group.members, accepts, strict=True):
            if isinstance(answer, RemoteError) and answer.code == "rejected":
                rejection = Rejection.decode(bytes.fromhex(answer.message.split(" ", 1)[0]))
                evidence = Evidence(REJECTED, roles.version, node, signed, reason=rejection.reason, rejection=rejection)
                return await self._report(roles, "report_fault", evidence.encode(), record=True)
            if isinstance(answer, Exception):
                raise ConsensusFailed(f"archive node 0x{node.hex()} did not accept: {answer}")
            acceptance = Acceptance.decode(answer)
            archive_signatures[node] = acceptance.signature
            exit_signatures[node] = acceptance.exit_signatures
            ticks[node] = acceptance.poh_tick
        certificate = join_certificate(archive_signatures)
        final = Final(signed, certificate)
        self._poh[roles.chain] = ticks[group.host_of(roles.chain)]
        exits = tuple(
            join_certificate({node: exit_signatures[node][i] for node in group.members})
            for i in range(len(exit_signatures[group.members[0]]))
        )
        if parent is None:
            self.store.create_chain(signed, post, certificate, record.encode())
        else:
            await self.store.append_async(roles.chain, signed, post, certificate)
        others = [w for w in roles.witnesses] + list(group.members)
        await asyncio.gather(*(self._call(peer, "final", final.encode(), self.timeouts.final) for peer in others))
        return _FinalOutcome(signed, certificate, exits)

    async def _newer_roles(self, roles: ChainRoles) -> RolesRecord:
        """The roles after the archive group decided (a slash on the mainchain takes a while): poll the
        host until a newer version than `roles` appears, for at most the archive timeout."""
        deadline = time.monotonic() + self.timeouts.archive
        pause = self.timeouts.vote / 10
        while True:
            await asyncio.sleep(pause)
            record = await self._fetch_roles(roles)
            if record.roles.version > roles.version or time.monotonic() >= deadline:
                return record
            pause = min(pause * 2, 1.0)

    async def _fetch_roles(self, roles: ChainRoles) -> RolesRecord:
        host = self._group_of(roles.group).host_of(roles.chain)
        record = RolesRecord.decode(
            await self._transport.call(host, "roles", roles.chain, timeout=self.timeouts.archive)
        )
        record.verify(self._group_of(roles.group))
        return record

    async def _report(self, roles: ChainRoles, method: str, body: bytes, *, record: bool = False) -> RolesRecord:
        """Hand a timeout or fault report to the chain's host archive node and, if it does not answer
        with newer certified roles, to every other archive node of the group in turn (each checks and
        coordinates the change itself), so a silent or hostile host cannot bury it."""
        group = self._group_of(roles.group)
        host = group.members.index(group.host_of(roles.chain))
        failure: Exception = ConsensusFailed("the archive group has no member")
        for node in group.members[host:] + group.members[:host]:
            try:
                new = RolesRecord.decode(await self._transport.call(node, method, body, timeout=self.timeouts.archive))
                new.verify(self._group_of(new.roles.group))
            except (PeerTimeout, PeerUnavailable, RemoteError, RolesError, EncodingError) as error:
                log.info("archive node 0x%s did not act on %s: %s", node.hex()[:8], method, error)
                failure = error
                continue
            if new.roles.chain == roles.chain and new.roles.version > roles.version:
                return new
            failure = RemoteError("stale-roles", f"0x{node.hex()[:8]} answered roles version {new.roles.version}")
        raise failure

    async def _call(self, peer: bytes, method: str, body: bytes, timeout: float) -> bytes | Exception:
        """A call whose failure is an answer: the round classifies it."""
        if peer == self.address:
            try:
                return await as_caller(self.address, self.handle(method, body))
            except RemoteError as error:
                return error
        try:
            return await self._transport.call(peer, method, body, timeout=timeout)
        except (PeerTimeout, PeerUnavailable, RemoteError) as error:
            return error

    # -- genesis validation -----------------------------------------------------------------------

    async def _open_genesis(self, body: bytes) -> bytes:
        """The archive host asks the note's CBDC to produce the genesis block under drawn roles."""
        from dle_vm.encoding import decode_rlp, raw_bytes, rlp_list, uint
        from offchain.dle.note import NoteTerms, genesis_state

        terms_item, record_bytes, tick = rlp_list(decode_rlp(body), 3, "open genesis")
        terms = NoteTerms.from_rlp(terms_item)
        record = RolesRecord.decode(raw_bytes(record_bytes, "roles"))
        record.verify(self._group_of(record.roles.group))
        if record.roles.creator != self.address or terms.cbdc != self.address or record.roles.chain != terms.chain:
            raise RemoteError("not-creator", "this node is not the note's CBDC")
        outcome = await self.open_chain(
            (terms.initialize(self._secret),), genesis_state(), record, uint(tick, "poh tick")
        )
        return outcome.encode()

    async def _validate_genesis(self, body: bytes) -> bytes:
        """A genesis block for a witness or the validator: it runs on the program's empty state."""
        block, pre, record = decode_genesis(body)
        roles = record.roles
        try:
            record.verify(self._group_of(roles.group))
        except RolesError as error:
            raise RemoteError("bad-roles", str(error)) from error
        if block.header.height != 0 or block.header.chain_id != roles.chain:
            raise RemoteError("bad-request", "not a genesis block of the roles' chain")
        if self.address not in roles.witnesses and roles.validator_for(block.header.parent_hash) != self.address:
            raise RemoteError("not-member", "this node is not a member of the chain")
        self._check_creator(block, roles)
        from offchain.dle.note import genesis_state

        if pre.root != genesis_state().root:
            raise RemoteError("bad-pre-state", "a note chain starts from the program's empty state")
        post = self._reexecute(pre, block, roles)
        if self.address in roles.witnesses:
            self._genesis_records[roles.chain] = record
        return (await self._vote(block.header, roles, post, block.signatures[0])).encode()


@dataclass(frozen=True)
class _FinalOutcome:
    block: Block
    certificate: bytes
    exit_certificates: tuple[bytes, ...]


def _recover(digest: bytes, signature: bytes) -> bytes | None:
    try:
        return recover(digest, signature)
    except BadSignature:
        return None


def encode_genesis(block: Block, pre: State, record: RolesRecord) -> bytes:
    from dle_vm.encoding import encode_rlp

    return encode_rlp([block.encode(), pre.encode(), record.encode()])


def decode_genesis(data: bytes) -> tuple[Block, State, RolesRecord]:
    from dle_vm.encoding import decode_rlp, raw_bytes, rlp_list

    block, pre, record = rlp_list(decode_rlp(data), 3, "genesis validation")
    return (
        Block.decode(raw_bytes(block, "block")),
        State.decode(raw_bytes(pre, "state")),
        RolesRecord.decode(raw_bytes(record, "roles")),
    )


_METHODS: dict[str, str] = {
    "ping": "_ping",
    "roles": "_roles_message",
    "propose": "_propose",
    "validate": "_validate",
    "validate_genesis": "_validate_genesis",
    "final": "_final",
    "rollback": "_rollback",
    "submit": "_submit",
    "open_genesis": "_open_genesis",
}


_SIGNED_REFUSALS = ("invalid-block", "unauthorised")
"""The verdicts of re-execution a member signs its refusal for: the block is invalid on its pre-state."""


def _is_not_yet(answer: bytes | Exception) -> bool:
    return isinstance(answer, RemoteError) and answer.code == NOT_YET


def _held(receipt_of: dict[bytes, Receipt], transactions: Sequence[Transaction]) -> bool:
    """Whether a stalled block, now final, holds every one of `transactions` (its receipts by encoding)."""
    return bool(transactions) and all(tx.encode() in receipt_of for tx in transactions)


def _answer(final: _FinalOutcome, receipt_of: dict[bytes, Receipt], transactions: Sequence[Transaction]) -> Outcome:
    """The outcome of `transactions` in the final stalled block."""
    receipts = tuple(receipt_of[tx.encode()] for tx in transactions)
    return Outcome(final.block, final.certificate, receipts, final.exit_certificates)
