"""DLE consensus in one process: a note chain opened by draw, transfers final with 100% of the
signatures, and every fault of DESIGN §5 injected — creator killed mid-block, a witness killed, a
validator that refuses, a witness that signs a wrong state root, a creator that signs two blocks at one
height, an archive node that rejects a block, the same balance spent through two creators.

After each: no final transfer lost, no value created (Σ balances = funded - exited, read from every
archive node's and witness's stored state), and the offender — only the offender — reported for
slashing. The mainchain side here records what the archive group submits (`RecordingMainchain`); the
same reports are checked against the real DleRegistry and Staking on anvil in test_dle_devnet.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from dle_vm.hashing import keccak
from dle_vm.signature import sign
from offchain.dle.archive import ROLE_CBDC, ROLE_VALIDATOR, ROLE_WITNESS, ArchiveNode
from offchain.dle.authority import RefundLog
from offchain.dle.client import DleClient, DleError
from offchain.dle.digests import Domains
from offchain.dle.local import LocalDle, address_of_secret
from offchain.dle.member import MemberNode, Timeouts
from offchain.dle.messages import Proposal, Validation, Vote
from offchain.dle.note import NoteReader, NoteSigner, NoteTerms, note_program
from offchain.dle.transport import RemoteError

DOMAINS = Domains(43112, b"\x11" * 20, b"\x22" * 20)
VALUE = 100_000_000


def key(name: str) -> bytes:
    return keccak(b"consensus test " + name.encode())


BUYER, ALICE, BOB = key("buyer"), key("alice"), key("bob")


@dataclass
class RecordingMainchain:
    """The archive group's mainchain calls, recorded (every stake counts as meeting the minimum)."""

    registered: list[tuple[Any, ...]] = field(default_factory=list)
    faults: list[tuple[bytes, int, int]] = field(default_factory=list)
    """(offender, role, kind) — kind 0 for equivocation."""

    def meets_minimum(self, address: bytes, role: int) -> bool:
        return True

    def capacity(self, address: bytes, role: int) -> int:
        return 1_000_000

    def register_chain(self, *args: Any) -> None:
        self.registered.append(args)

    offences: set[tuple[bytes, int, int, bytes]] = field(default_factory=set)
    """(chain, height, roles version, signer) of every slash: DleRegistry's one key per offence."""

    def _once(self, chain: bytes, height: int, version: int, signer: bytes) -> None:
        key = (chain, height, version, signer)
        assert key not in self.offences, "EvidenceAlreadyUsed: one offence is slashed once"
        self.offences.add(key)

    def report_equivocation(
        self, chain: bytes, height: int, version: int, role: int, a: bytes, sa: bytes, b: bytes, sb: bytes
    ) -> int:
        """DleRegistry.reportEquivocation's checks: two headers, one signer, one version and role."""
        from dle_vm.signature import recover

        signer = recover(DOMAINS.block(chain, height, version, role, a), sa)
        assert signer == recover(DOMAINS.block(chain, height, version, role, b), sb) and a != b
        self._once(chain, height, version, signer)
        self.faults.append((signer, role, 0))
        return 1

    def report_fault(
        self,
        chain: bytes,
        height: int,
        version: int,
        offender: bytes,
        role: int,
        kind: int,
        header: bytes,
        accused: bytes,
        *rest: Any,
    ) -> int:
        """DleRegistry.reportFault's own check (the group certificate aside): the offender's signed
        refusal (kind 1) or vote (kind 2) of the block, in the role and version reported."""
        from dle_vm.signature import recover

        digest = (DOMAINS.refusal if kind == 1 else DOMAINS.block)(chain, height, version, role, header)
        assert recover(digest, accused) == offender, "NotOffendersSignature"
        self._once(chain, height, version, offender)
        self.faults.append((offender, role, kind))
        return 1


@dataclass
class Note:
    dle: LocalDle
    mainchain: RecordingMainchain
    terms: NoteTerms
    client: DleClient
    signer: NoteSigner
    nonces: dict[bytes, int] = field(default_factory=dict)

    @property
    def chain(self) -> bytes:
        return self.terms.chain

    def transfer(self, holder: bytes, to: bytes, amount: int) -> Any:
        address = address_of_secret(holder)
        nonce = self.nonces.get(address, 0)
        self.nonces[address] = nonce + 1
        return self.signer.transfer(holder, address, address_of_secret(to), amount, nonce, int(time.time()) + 3600)

    async def pay(self, holder: bytes, to: bytes, amount: int) -> None:
        outcome = await self.client.submit(self.chain, [self.transfer(holder, to, amount)])
        assert all(r.success for r in outcome.receipts)

    def balance(self, who: bytes) -> int:
        archive = next(iter(self.dle.archives.values()))
        state = archive.store.head(self.chain).state
        return NoteReader(self.dle.engine).balance(state, self.chain, address_of_secret(who))

    def check_conservation(self) -> None:
        """Every archive node and every witness holding the chain agrees on the head, and the head's
        balances (holders and fee recipients) add up to funded - exited."""
        reader = NoteReader(self.dle.engine)
        nodes = [*self.dle.archives.values(), *self.dle.members.values()]
        heads = {n.store.head(self.chain).block.hash for n in nodes if self.chain in n.store.chains()}
        archive = next(iter(self.dle.archives.values()))
        head = archive.store.head(self.chain)
        assert len(heads) <= 2  # a witness replaced mid-way may lag; none may fork
        assert head.block.hash in heads
        roles = archive.roles(self.chain).roles
        accounts = {address_of_secret(k) for k in (BUYER, ALICE, BOB)} | set(self.dle.members)
        accounts |= {roles.creator, *roles.witnesses, *roles.validators}
        total = sum(reader.balance(head.state, self.chain, a) for a in accounts)
        funded, exited = reader.supply(head.state, self.chain)
        assert total == funded - exited == VALUE


Factory = Callable[..., MemberNode]


async def open_note(
    tmp_path: Path,
    *,
    member_cls: dict[str, Factory] | None = None,
    archive_cls: Callable[..., ArchiveNode] = ArchiveNode,
    witnesses: int = 12,
    validators: int = 6,
    refunds: RefundLog | None = None,
) -> Note:
    """Two archive nodes, a CBDC, a pool of witnesses and validators, and one note opened by draw."""
    member_cls = member_cls or {}
    mainchain = RecordingMainchain()
    dle = LocalDle(
        tmp_path,
        DOMAINS,
        mainchain,
        timeouts=Timeouts(vote=1.0, accept=1.0, final=1.0, archive=10.0),
        refunds=refunds,
    )
    dle.add_archives([key("archive 1"), key("archive 2")], cls=archive_cls)
    dle.add_member(key("cbdc"), cls=member_cls.get("cbdc", MemberNode))
    for i in range(witnesses):
        dle.add_member(key(f"witness {i}"), role=ROLE_WITNESS, cls=member_cls.get(f"witness {i}", MemberNode))
    for i in range(validators):
        dle.add_member(key(f"validator {i}"), role=ROLE_VALIDATOR, cls=member_cls.get(f"validator {i}", MemberNode))
    terms = NoteTerms(
        7,
        DOMAINS.mainchain_id,
        DOMAINS.cash,
        VALUE,
        address_of_secret(BUYER),
        address_of_secret(key("cbdc")),
        (),
        bytes(20),
        5,
    )
    genesis = await dle.open_note(terms)
    assert genesis.block.header.height == 0
    client = dle.client(terms.holder, submit_timeout=3.0)
    roles = (await client.roles(terms.chain)).roles
    full = replace(terms, witnesses=roles.witnesses, validators_pool=roles.validators[0])
    return Note(dle, mainchain, full, client, NoteSigner(full, note_program()))


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 120))  # type: ignore[arg-type]


def test_a_note_opens_by_draw_and_transfers_become_final(tmp_path: Path) -> None:
    async def scenario() -> None:
        note = await open_note(tmp_path)
        assert note.mainchain.registered and note.mainchain.registered[0][1] == 7
        for _ in range(3):
            await note.pay(BUYER, ALICE, 1_000)
        await note.pay(ALICE, BOB, 500)
        assert note.balance(ALICE) == 3_000 - 500 - 1
        assert note.balance(BOB) == 500
        note.check_conservation()
        assert note.mainchain.faults == []

    run(scenario())


def test_a_reverting_transfer_is_refused_with_its_reason_and_never_enters_a_block(tmp_path: Path) -> None:
    async def scenario() -> None:
        note = await open_note(tmp_path)
        height = next(iter(note.dle.archives.values())).store.height(note.chain)
        with pytest.raises(DleError, match="InsufficientBalance"):
            await note.client.submit(note.chain, [note.transfer(ALICE, BOB, 10)])
        assert next(iter(note.dle.archives.values())).store.height(note.chain) == height
        note.check_conservation()

    run(scenario())


def test_a_replayed_transfer_is_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        note = await open_note(tmp_path)
        tx = note.transfer(BUYER, ALICE, 1_000)
        await note.client.submit(note.chain, [tx])
        # The DLE transaction's own nonce is spent: the creator refuses the copy before executing it.
        with pytest.raises(DleError, match="used nonce 0, its next nonce is 1"):
            await note.client.submit(note.chain, [tx])
        assert note.balance(ALICE) == 1_000
        note.check_conservation()

    run(scenario())


def test_a_killed_witness_is_replaced_by_the_last_validator(tmp_path: Path) -> None:
    async def scenario() -> None:
        note = await open_note(tmp_path)
        await note.pay(BUYER, ALICE, 1_000)
        archive = next(iter(note.dle.archives.values()))
        before = archive.roles(note.chain).roles
        dead = before.witnesses[2]
        note.dle.kill(dead)
        await note.pay(BUYER, ALICE, 1_000)
        after = archive.roles(note.chain).roles
        assert dead not in after.witnesses and after.witnesses[2] in before.validators
        assert note.balance(ALICE) == 2_000
        # The note program's fee share follows the witness (replaceWitness in the next block).
        reader = NoteReader(note.dle.engine)
        _, witnesses, _ = reader.view(archive.store.head(note.chain).state, note.chain, "roles")
        assert bytes.fromhex(witnesses[2][2:]) == after.witnesses[2]
        note.check_conservation()
        assert note.mainchain.faults == []  # a crash is not slashed

    run(scenario())


class DiesMidBlock(MemberNode):
    """A creator that has its block signed by the members, then dies before the archive group sees it."""

    armed = False

    async def _attempt(self, record: Any, block: Any, post: Any, parent: Any, genesis_pre: Any) -> Any:
        if not self.armed:
            return await super()._attempt(record, block, post, parent, genesis_pre)
        roles = record.roles
        for witness in roles.witnesses:
            await self._call(witness, "propose", Proposal(roles.version, block).encode(), 1.0)
        self._die()
        await asyncio.sleep(3600)

    def _die(self) -> None:
        raise NotImplementedError


def test_the_creator_killed_mid_block_loses_no_final_transfer(tmp_path: Path) -> None:
    async def scenario() -> None:
        note = await open_note(tmp_path, member_cls={"cbdc": DiesMidBlock})
        await note.pay(BUYER, ALICE, 1_000)
        cbdc = note.dle.members[address_of_secret(key("cbdc"))]
        assert isinstance(cbdc, DiesMidBlock)
        cbdc.armed = True
        cbdc._die = lambda: note.dle.kill(cbdc.address)  # type: ignore[method-assign]
        archive = next(iter(note.dle.archives.values()))
        before = archive.roles(note.chain).roles
        tx = note.transfer(BUYER, ALICE, 1_000)
        outcome = await note.client.submit(note.chain, [tx])  # the client reports the timeout, resubmits
        assert outcome.receipts[0].success
        after = archive.roles(note.chain).roles
        assert after.creator == before.witnesses[0]
        assert note.balance(ALICE) == 2_000  # counted once
        await note.pay(BUYER, ALICE, 1_000)
        assert note.balance(ALICE) == 3_000
        note.check_conservation()
        assert note.mainchain.faults == []

    run(scenario())


class Refuses(MemberNode):
    """A validator that refuses every block, valid or not, with its signed refusal (it says the block is
    invalid: the archive group's re-execution finds it is not)."""

    refuse = False

    async def _validate(self, body: bytes) -> bytes:
        if self.refuse:
            request = Validation.decode(body)
            raise self._refuse(request.block, request.roles.roles, RemoteError("invalid-block", "I sign nothing"))
        return await super()._validate(body)


def test_a_validator_that_refuses_a_valid_block_is_slashed_and_the_group_redrawn(tmp_path: Path) -> None:
    async def scenario() -> None:
        note = await open_note(tmp_path, member_cls={f"validator {i}": Refuses for i in range(6)})
        archive = next(iter(note.dle.archives.values()))
        before = archive.roles(note.chain).roles
        refuser = before.validator_for(archive.store.head(note.chain).block.hash)
        node = note.dle.members[refuser]
        assert isinstance(node, Refuses)
        node.refuse = True
        await note.pay(BUYER, ALICE, 1_000)
        after = archive.roles(note.chain).roles
        assert note.balance(ALICE) == 1_000
        assert note.mainchain.faults == [(refuser, ROLE_VALIDATOR, 1)]
        assert not set(after.witnesses) & set(before.witnesses)
        assert set(before.witnesses) | set(before.validators) <= set(after.excluded)
        assert after.creator == before.creator
        note.check_conservation()

    run(scenario())


class WrongRoot(MemberNode):
    wrong = False

    async def _propose(self, body: bytes) -> bytes:
        vote = Vote.decode(await super()._propose(body))
        if not self.wrong:
            return vote.encode()
        header = replace(vote.header, state_root=keccak(b"a root nobody reached"))
        roles = self.roles(header.chain_id).roles
        digest = self._domains.block(
            header.chain_id, header.height, roles.version, roles.stake_role(self.address), header.hash
        )
        return Vote(header, sign(self._secret, digest)).encode()


def test_a_witness_signing_a_wrong_state_root_is_slashed(tmp_path: Path) -> None:
    async def scenario() -> None:
        note = await open_note(tmp_path, member_cls={f"witness {i}": WrongRoot for i in range(12)})
        await note.pay(BUYER, ALICE, 1_000)
        node = note.dle.members[note.terms.witnesses[1]]
        assert isinstance(node, WrongRoot)
        node.wrong = True
        await note.pay(BUYER, ALICE, 1_000)
        assert note.mainchain.faults == [(node.address, ROLE_WITNESS, 2)]
        assert note.balance(ALICE) == 2_000
        note.check_conservation()

    run(scenario())


class Equivocates(MemberNode):
    """A creator that shows one witness another block at the same height first."""

    armed = False

    async def _attempt(self, record: Any, block: Any, post: Any, parent: Any, genesis_pre: Any) -> Any:
        if self.armed:
            self.armed = False
            header = replace(block.header, timestamp=block.header.timestamp + 1)
            other = type(block)(header, block.transactions, (self._sign_header(header, record.roles),))
            roles = record.roles
            await self._call(roles.witnesses[0], "propose", Proposal(roles.version, other).encode(), 1.0)
        return await super()._attempt(record, block, post, parent, genesis_pre)


def test_a_creator_signing_two_blocks_at_one_height_is_slashed_and_replaced(tmp_path: Path) -> None:
    async def scenario() -> None:
        note = await open_note(tmp_path, member_cls={"cbdc": Equivocates})
        cbdc = note.dle.members[address_of_secret(key("cbdc"))]
        assert isinstance(cbdc, Equivocates)
        cbdc.armed = True
        await note.pay(BUYER, ALICE, 1_000)
        archive = next(iter(note.dle.archives.values()))
        assert note.mainchain.faults == [(cbdc.address, ROLE_CBDC, 0)]
        assert archive.roles(note.chain).roles.creator != cbdc.address
        assert note.balance(ALICE) == 1_000
        note.check_conservation()

    run(scenario())


class RejectsOnce(ArchiveNode):
    rejected = 0

    def quality(self, block: Any, record: Any, pre: Any, parent: Any) -> Any:
        if block.header.height == 2 and not self.rejected:
            self.rejected += 1
            return self._reject(block, "test: unqualified")
        return super().quality(block, record, pre, parent)


def test_an_archive_rejection_rolls_back_and_redraws_without_slashing(tmp_path: Path) -> None:
    async def scenario() -> None:
        note = await open_note(tmp_path, archive_cls=RejectsOnce)
        await note.pay(BUYER, ALICE, 1_000)
        archive = next(iter(note.dle.archives.values()))
        before = archive.roles(note.chain).roles
        await note.pay(BUYER, ALICE, 1_000)
        after = archive.roles(note.chain).roles
        assert after.version == before.version + 1
        assert not set(after.witnesses) & set(before.witnesses)
        assert note.mainchain.faults == []
        assert note.balance(ALICE) == 2_000
        note.check_conservation()

    run(scenario())


def test_the_same_balance_spent_through_two_creators_is_final_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        note = await open_note(tmp_path)
        await note.pay(BUYER, ALICE, 1_000)
        archive = next(iter(note.dle.archives.values()))
        old = archive.roles(note.chain).roles.creator
        old_node = note.dle.members[old]
        note.dle.kill(old)
        everything = 99_900_000  # with its 0.05% fee within the balance; twice is far beyond it
        spend_bob = note.transfer(BUYER, BOB, everything)
        outcome = await note.client.submit(note.chain, [spend_bob])  # through the new creator
        assert outcome.receipts[0].success
        # The old creator comes back with the same balance spent to Alice (same nonce, other payee).
        note.dle.network.register(old, old_node.handle)
        note.nonces[address_of_secret(BUYER)] -= 1
        spend_alice = note.transfer(BUYER, ALICE, everything)
        from offchain.dle.messages import Submit

        with pytest.raises(RemoteError):
            await note.dle.network.transport(b"\x99" * 20).call(
                old, "submit", Submit(note.chain, (spend_alice,)).encode(), timeout=10
            )
        assert note.balance(BOB) == everything
        assert note.balance(ALICE) == 1_000
        note.check_conservation()

    run(scenario())
