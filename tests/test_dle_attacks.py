"""The DLE under attack, in one process (the in-process DLE of test_dle_consensus.py): a stranger or a
lying host archive node opening a chain the mainchain never minted, a forged timeout role change, a
host that buries reports, and a creator colluding with a holder to end with two certified blocks at
one height. Each attack fails with a clear error, and the chains, roles and registrations are as before.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import pytest
from test_dle_consensus import ALICE, BOB, BUYER, DOMAINS, VALUE, RecordingMainchain, key, open_note, run

from dle_vm.block import Block, Header, transactions_root
from dle_vm.encoding import decode_rlp, encode_rlp
from dle_vm.signature import sign
from offchain.dle.archive import ROLE_VALIDATOR, ROLE_WITNESS, ArchiveNode
from offchain.dle.client import DleError
from offchain.dle.local import LocalDle, MintLedger, address_of_secret
from offchain.dle.member import MemberNode, Timeouts
from offchain.dle.messages import REFUSED, Acceptance, Commit, Evidence, Proposal, TimeoutReport, Validation, Vote
from offchain.dle.note import NoteTerms
from offchain.dle.roles import join_certificate
from offchain.dle.store import ChainStore
from offchain.dle.transport import RemoteError

VAULT = b"\x33" * 20
ATTACK_DOMAINS = replace(DOMAINS, vault=VAULT)
STRANGER = key("stranger")


def note_terms(note: int, holder: bytes, *, cash: bytes = DOMAINS.cash, value: int = VALUE) -> NoteTerms:
    return NoteTerms(
        note, DOMAINS.mainchain_id, cash, value, address_of_secret(holder), address_of_secret(key("cbdc")),
        (), bytes(20), 5,
    )  # fmt: skip


async def group_without_notes(tmp_path: Path, *, lying_host_for: NoteTerms | None = None) -> LocalDle:
    """Two archive nodes (the one hosting `lying_host_for` with a mirror that shows those terms as
    minted), a CBDC and a pool of witnesses and validators; no chain open yet."""
    dle = LocalDle(
        tmp_path, ATTACK_DOMAINS, RecordingMainchain(), timeouts=Timeouts(vote=1.0, accept=1.0, final=1.0, archive=10.0)
    )
    secrets = [key("archive 1"), key("archive 2")]
    mints: dict[bytes, MintLedger] = {}
    if lying_host_for is not None:
        addresses = sorted(address_of_secret(s) for s in secrets)
        host = addresses[int.from_bytes(lying_host_for.chain, "big") % len(addresses)]
        mints[host] = MintLedger()
        mints[host].mint(lying_host_for)
    dle.add_archives(secrets, mints=mints)
    dle.add_member(key("cbdc"))
    for i in range(8):
        dle.add_witnesses([key(f"witness {i}")])
    for i in range(3):
        dle.add_validators([key(f"validator {i}")])
    return dle


def nothing_opened(dle: LocalDle, chain: bytes) -> None:
    mainchain = dle.mainchain
    assert isinstance(mainchain, RecordingMainchain)
    assert mainchain.registered == []
    for node in [*dle.archives.values(), *dle.members.values()]:
        assert chain not in node.store.chains()


@pytest.mark.parametrize(
    ("what", "forged", "minted", "reason"),
    [
        ("a note not minted yet", note_terms(8, STRANGER), None, "never minted"),
        ("a receipt never issued", note_terms(8, STRANGER, cash=VAULT), None, "never minted"),
        ("a minted note, other holder", note_terms(8, STRANGER), note_terms(8, BUYER), "holder differ"),
        ("a minted note, other value", note_terms(8, BUYER, value=VALUE * 10), note_terms(8, BUYER), "value differ"),
    ],
)
def test_a_stranger_cannot_open_a_chain_the_mainchain_did_not_mint(
    tmp_path: Path, what: str, forged: NoteTerms, minted: NoteTerms | None, reason: str
) -> None:
    async def scenario() -> None:
        dle = await group_without_notes(tmp_path)
        if minted is not None:
            dle.mints.mint(minted)
        with pytest.raises(RemoteError, match=reason):
            await dle.host(forged.chain).open_note(forged)
        nothing_opened(dle, forged.chain)
        # The victim's real chain opens afterwards, on the minted terms.
        real = minted or replace(forged, holder=address_of_secret(BUYER), value=VALUE)
        outcome = await dle.open_note(real)
        assert outcome.block.header.chain_id == real.chain
        for archive in dle.archives.values():
            assert real.chain in archive.store.chains()

    run(scenario())


def test_a_lying_host_archive_node_cannot_open_a_chain_the_others_never_saw_minted(tmp_path: Path) -> None:
    async def scenario() -> None:
        forged = note_terms(8, STRANGER)
        dle = await group_without_notes(tmp_path, lying_host_for=forged)
        host = dle.host(forged.chain)
        with pytest.raises(RemoteError, match="never minted"):
            await host.open_note(forged)
        nothing_opened(dle, forged.chain)
        # The honest archive node refuses the registration of a chain it does not hold, too.
        honest = next(a for a in dle.archives.values() if a is not host)
        body = encode_rlp([forged.chain, forged.cash, forged.note.to_bytes(1, "big")])
        with pytest.raises(RemoteError, match="holds no final genesis"):
            await honest.handle("endorse_registration", body)
        # The real note 8 (minted to the buyer) opens: the lying host's own record aside, the group
        # signs only the mainchain's terms.
        real = note_terms(8, BUYER)
        dle.mints.mint(real)
        host.minted = dle.mints  # the host's mirror catches up with the mainchain
        await dle.open_note(real)
        assert all(real.chain in a.store.chains() for a in dle.archives.values())

    run(scenario())


def test_a_forged_timeout_role_change_is_refused_by_every_archive_node(tmp_path: Path) -> None:
    async def scenario() -> None:
        note = await open_note(tmp_path)
        await note.pay(BUYER, ALICE, 1_000)
        archive = next(iter(note.dle.archives.values()))
        before = archive.roles(note.chain).roles
        dead = before.witnesses[2]
        note.dle.kill(dead)
        stranger = address_of_secret(STRANGER)
        forged = replace(before, version=before.version + 1, creator=stranger)
        alive_creator = encode_rlp([b"timeout", before.creator, b""])
        dead_witness = encode_rlp([b"timeout", dead, b""])
        for node in note.dle.archives.values():
            # The named member is really down, but the set is not what the rule gives.
            with pytest.raises(RemoteError, match="not what the timeout rule gives"):
                await node.handle("endorse_roles", encode_rlp([forged.encode(), dead_witness]))
            # The rule's set for a creator timeout, while the creator answers this node's own probe.
            rule = node._after_timeout(before, before.creator, b"")
            with pytest.raises(RemoteError, match="answers"):
                await node.handle("endorse_roles", encode_rlp([rule.encode(), alive_creator]))
            assert node.roles(note.chain).roles == before
        # The honest report gives exactly the rule's result, and the chain goes on.
        await note.pay(BUYER, ALICE, 1_000)
        last_validator = before.validator_for(archive.store.block(note.chain, 1).block.header.parent_hash)
        assert archive.roles(note.chain).roles == before.after_witness_timeout(dead, last_validator)
        assert note.balance(ALICE) == 2_000
        note.check_conservation()

    run(scenario())


class BuriesReports(ArchiveNode):
    """An archive node that co-signs when asked but drops every report it is sent as a chain's host."""

    async def _report_timeout(self, body: bytes) -> bytes:
        if self._group().host_of(TimeoutReport.decode(body).chain) == self.address:
            raise RemoteError("busy", "not now")
        return await super()._report_timeout(body)


def test_a_host_that_buries_a_timeout_report_does_not_stop_the_role_change(tmp_path: Path) -> None:
    async def scenario() -> None:
        note = await open_note(tmp_path, archive_cls=BuriesReports)
        await note.pay(BUYER, ALICE, 1_000)
        archive = next(iter(note.dle.archives.values()))
        before = archive.roles(note.chain).roles
        dead = before.witnesses[0]
        note.dle.kill(dead)
        await note.pay(BUYER, ALICE, 1_000)  # the creator's report goes on to the other archive node
        after = archive.roles(note.chain).roles
        assert after.version == before.version + 1 and dead not in after.witnesses
        assert note.balance(ALICE) == 2_000
        note.check_conservation()

    run(scenario())


def test_a_host_that_buries_the_clients_report_of_a_dead_creator_does_not_keep_it(tmp_path: Path) -> None:
    async def scenario() -> None:
        note = await open_note(tmp_path, archive_cls=BuriesReports)
        await note.pay(BUYER, ALICE, 1_000)
        archive = next(iter(note.dle.archives.values()))
        before = archive.roles(note.chain).roles
        note.dle.kill(before.creator)
        await note.pay(BUYER, ALICE, 1_000)  # the client's report goes on to the other archive node
        after = archive.roles(note.chain).roles
        assert after.creator == before.witnesses[0] and before.creator in after.excluded
        assert note.balance(ALICE) == 2_000
        note.check_conservation()

    run(scenario())


class Withholds(MemberNode):
    """A creator colluding with a holder: it has a block signed by its members and certified by every
    archive node, keeps the certificate and the `final` to itself, and goes silent."""

    armed = False
    withheld: ClassVar[list[tuple[Block, bytes]]] = []

    async def _attempt(self, record: Any, block: Any, post: Any, parent: Any, genesis_pre: Any) -> Any:
        if not self.armed:
            return await super()._attempt(record, block, post, parent, genesis_pre)
        self.armed = False
        roles = record.roles
        signatures = [block.signatures[0]]
        for witness in roles.witnesses:
            answer = await self._transport.call(witness, "propose", Proposal(roles.version, block).encode(), timeout=5)
            signatures.append(Vote.decode(answer).signature)
        validation = Validation(block, parent.block, parent.certificate, parent.state, record)
        validator = roles.validator_for(block.header.parent_hash)
        signatures.append(
            Vote.decode(await self._transport.call(validator, "validate", validation.encode(), timeout=5)).signature
        )
        signed = block.with_signatures(signatures)
        group = self._group_of(roles.group)
        accepted = {
            node: Acceptance.decode(
                await self._transport.call(node, "accept", Commit(signed).encode(), timeout=5)
            ).signature
            for node in group.members
        }
        self.withheld.append((signed, join_certificate(accepted)))
        self._die()
        await asyncio.sleep(3600)

    def _die(self) -> None:
        raise NotImplementedError


def test_a_creator_withholding_final_cannot_get_a_second_block_certified_at_that_height(tmp_path: Path) -> None:
    async def scenario() -> None:
        note = await open_note(tmp_path, member_cls={"cbdc": Withholds})
        await note.pay(BUYER, ALICE, 1_000)
        cbdc = note.dle.members[address_of_secret(key("cbdc"))]
        assert isinstance(cbdc, Withholds)
        cbdc.withheld = []
        cbdc._die = lambda: note.dle.kill(cbdc.address)  # type: ignore[method-assign]
        cbdc.armed = True
        height = 2
        everything = 99_000_000
        to_alice = note.transfer(BUYER, ALICE, everything)
        first = asyncio.create_task(note.client.submit(note.chain, [to_alice]))
        while not cbdc.withheld:
            await asyncio.sleep(0.05)
        first.cancel()
        certified, certificate = cbdc.withheld[0]
        assert certified.header.height == height
        group = note.dle._current_group()
        group.verify(DOMAINS.certificate(note.chain, height, certified.hash), certificate)  # a certified block
        # The holder spends the same balance again (same nonce) through the next creator.
        note.nonces[address_of_secret(BUYER)] -= 1
        to_bob = note.transfer(BUYER, BOB, everything)
        # Refused as a second block at the height, or as a replayed nonce once the first block is final.
        with pytest.raises(DleError, match=r"signed block|InvalidNonce|used nonce"):
            await note.client.submit(note.chain, [to_bob])
        for archive in note.dle.archives.values():
            # Kept durably: a restarted archive node still refuses any other block at that height.
            assert ChainStore(archive.store.path).signed(note.chain, height) == certified.hash
            # The group finished the certified block itself: it is the one block at that height.
            assert archive.store.height(note.chain) == height
            assert archive.store.block(note.chain, height).block.hash == certified.hash
        assert note.balance(ALICE) == 1_000 + everything and note.balance(BOB) == 0
        # The chain goes on from it under the new creator; the withheld certificate adds nothing.
        await note.pay(ALICE, BOB, 500)
        assert note.balance(BOB) == 500
        note.check_conservation()

    run(scenario())


def test_a_restarted_witness_never_signs_a_second_block_at_one_height_under_one_roles_version(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        note = await open_note(tmp_path)
        await note.pay(BUYER, ALICE, 1_000)
        archive = next(iter(note.dle.archives.values()))
        roles = archive.roles(note.chain).roles
        head = archive.store.head(note.chain)
        cbdc = note.dle.members[roles.creator]
        witness = roles.witnesses[0]
        secret = next(key(f"witness {i}") for i in range(12) if address_of_secret(key(f"witness {i}")) == witness)

        def proposal(timestamp: int) -> bytes:
            header = Header(
                note.chain, head.block.header.height + 1, head.block.hash, head.state.root, transactions_root(()),
                timestamp, head.block.header.poh_tick, roles.group,
            )  # fmt: skip
            return Proposal(roles.version, Block(header, (), (cbdc._sign_header(header, roles),))).encode()

        transport = note.dle.network.transport(cbdc.address)
        first = Vote.decode(await transport.call(witness, "propose", proposal(head.block.header.timestamp), timeout=5))
        # The witness restarts: everything in memory is gone, its chain store is not.
        old = note.dle.members[witness]
        restarted = MemberNode(
            secret, note.dle.network.transport(witness), ChainStore(old.store.path), note.dle.group_of,
            note.dle.domains, note.dle.engine, timeouts=note.dle.timeouts,
        )  # fmt: skip
        note.dle.members[witness] = restarted
        note.dle.network.register(witness, restarted.handle)
        with pytest.raises(RemoteError, match="signed block"):
            await transport.call(witness, "propose", proposal(head.block.header.timestamp + 1), timeout=5)
        # The same block again is the same signature, not a second one.
        again = Vote.decode(await transport.call(witness, "propose", proposal(head.block.header.timestamp), timeout=5))
        assert again == first
        assert archive.store.height(note.chain) == head.block.header.height

    run(scenario())


class SwapsHolder(MemberNode):
    """A CBDC that produces the genesis block of the drawn roles on terms naming another holder."""

    async def _open_genesis(self, body: bytes) -> bytes:
        terms_item, record, tick = decode_rlp(body)
        terms = NoteTerms.from_rlp(terms_item)
        swapped = replace(terms, holder=address_of_secret(STRANGER))
        return await super()._open_genesis(encode_rlp([swapped.to_rlp(), record, tick]))


def test_a_cbdc_cannot_initialize_a_chain_on_terms_other_than_the_minted_ones(tmp_path: Path) -> None:
    async def scenario() -> None:
        dle = await group_without_notes(tmp_path)
        dle.members[address_of_secret(key("cbdc"))] = cbdc = SwapsHolder(
            key("cbdc"), dle.network.transport(address_of_secret(key("cbdc"))),
            ChainStore(tmp_path / "swapping-cbdc.sqlite"), dle.group_of, dle.domains, dle.engine,
            timeouts=Timeouts(vote=1.0, accept=1.0, final=1.0, archive=10.0, attempts=2),
        )  # fmt: skip
        dle.network.register(cbdc.address, cbdc.handle)
        terms = note_terms(8, BUYER)
        dle.mints.mint(terms)
        # Every archive node rejects the genesis ("does not initialize the note's endorsed terms"); the
        # dissolutions that follow redraw until the pool of fresh witnesses runs out. Nothing opens.
        with pytest.raises(RemoteError):
            await dle.host(terms.chain).open_note(terms)
        nothing_opened(dle, terms.chain)
        for archive in dle.archives.values():
            assert archive.store.signed(terms.chain, 0) is None  # no archive node signed that genesis

    run(scenario())


def test_a_timeout_that_empties_the_roster_is_co_signed_with_its_refill_draw_checked(tmp_path: Path) -> None:
    async def scenario() -> None:
        note = await open_note(tmp_path, validators=1)
        for i in range(3):
            note.dle.add_member(key(f"late validator {i}"), role=ROLE_VALIDATOR)
        archive = next(iter(note.dle.archives.values()))
        before = archive.roles(note.chain).roles
        assert len(before.validators) == 1
        dead = before.witnesses[1]
        note.dle.kill(dead)
        await note.pay(BUYER, ALICE, 1_000)
        after = archive.roles(note.chain).roles
        assert after.witnesses[1] == before.validators[0] and dead in after.excluded
        assert after.validators and not set(after.validators) & {*before.members(), *before.excluded}
        # A refill smuggled into a change that needs none (the roster is full again) is refused.
        assert len(after.validators) > 1
        rule = archive._after_timeout(after, after.witnesses[0], b"")
        justification = encode_rlp([b"timeout", after.witnesses[0], b"\x01"])
        for node in note.dle.archives.values():
            with pytest.raises(RemoteError, match="refill is drawn exactly when"):
                await node.handle("endorse_roles", encode_rlp([rule.encode(), justification]))
            assert node.roles(note.chain).roles == after
        assert note.balance(ALICE) == 1_000
        note.check_conservation()

    run(scenario())


def test_a_refusal_report_without_the_accuseds_signed_refusal_is_refused_and_slashes_nothing(tmp_path: Path) -> None:
    """A creator (or anyone) reports that an honest witness refused a block: with no signed refusal, with
    the creator's own signature in its place, or with the witness's vote offered as its refusal, every
    archive node refuses the evidence; nobody is slashed and the roles stay. (A member's own signed
    refusal of a valid block is slashed: test_dle_consensus.py, test_dle_devnet.py.)"""

    async def scenario() -> None:
        note = await open_note(tmp_path)
        await note.pay(BUYER, ALICE, 1_000)
        archive = next(iter(note.dle.archives.values()))
        before = archive.roles(note.chain).roles
        block = archive.store.block(note.chain, 1).block  # a valid block, signed under version 0
        witness = before.witnesses[1]
        refusal_digest = DOMAINS.refusal(note.chain, 1, before.version, ROLE_WITNESS, block.hash)
        creator_secret = next(s for s in (key("cbdc"),) if address_of_secret(s) == before.creator)
        witness_secret = next(
            key(f"witness {i}") for i in range(12) if address_of_secret(key(f"witness {i}")) == witness
        )
        vote = DOMAINS.block(note.chain, 1, before.version, ROLE_WITNESS, block.hash)
        forged = {
            "no signed refusal": b"",
            "the creator's word": sign(creator_secret, refusal_digest),
            "the witness's vote": sign(witness_secret, vote),
            "its refusal under another version": sign(
                witness_secret, DOMAINS.refusal(note.chain, 1, before.version + 1, ROLE_WITNESS, block.hash)
            ),
            "its refusal in another role": sign(
                witness_secret, DOMAINS.refusal(note.chain, 1, before.version, ROLE_VALIDATOR, block.hash)
            ),
        }
        for what, signature in forged.items():
            evidence = Evidence(REFUSED, before.version, witness, block, other_signature=signature, reason=what)
            for node in note.dle.archives.values():
                with pytest.raises(RemoteError, match="signed refusal"):
                    node.judge(evidence, node.roles(note.chain))
            with pytest.raises(RemoteError, match="signed refusal"):
                await archive.handle("report_fault", evidence.encode())
        mainchain = note.dle.mainchain
        assert isinstance(mainchain, RecordingMainchain)
        assert mainchain.faults == []
        for node in note.dle.archives.values():
            assert node.roles(note.chain).roles == before

    run(scenario())
