"""Signed DLE transactions, and the proof behind the program's privileged calls.

First the VM's rules (`dle_vm.engine.apply_transactions`): the sender is who signed, for this chain,
with its next nonce. Then the attacks of issue 12 on an in-process DLE (the same node classes the
devnet runs): an outsider with no stake and no role sends the CBDC-only calls (`refund`,
`replaceWitness`) as system transactions, under his own key, or by re-using somebody's signature; a
creator slips a re-funding or a witness replacement into a block without the proof. Each fails with a
clear error, and afterwards every balance, the supply and the roles are exactly as before, and no
honest node is reported.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from test_dle_consensus import ALICE, BUYER, DOMAINS, VALUE, Note, key, open_note, run

from dle_vm.block import Block, transactions_root
from dle_vm.engine import BlockContext, InvalidTransaction, apply_transactions, default_engine
from dle_vm.hashing import keccak
from dle_vm.state import State
from dle_vm.transaction import SYSTEM_SENDER, Transaction
from offchain.dle.authority import AuthorityError, ChainRefundLog, NoteAuthority, NotYetSeen, Refund
from offchain.dle.client import DleError
from offchain.dle.local import address_of_secret
from offchain.dle.member import ConsensusFailed, MemberNode
from offchain.dle.note import (
    GAS_LIMIT,
    PROGRAM,
    NoteReader,
    genesis_state,
    note_program,
    refund_transaction,
)
from offchain.dle.wallet import NoteChain

MALLORY, CAROL = key("mallory"), key("carol")
CHAIN = keccak(b"signed transaction test chain")
OTHER_CHAIN = keccak(b"another chain")
REFUSED = r"unauthorised|not authorised|rejected|no final block|not-creator"
"""How a creator's own round ends when the group refuses its block (or replaced it meanwhile)."""
NOT_A_USER_ACTION = "none of the note program's"


# -- the VM's rules ----------------------------------------------------------------------------------


def _call(to: bytes = PROGRAM) -> bytes:
    return note_program().call("balanceOf", to)


def test_the_sender_is_who_signed_and_a_changed_transaction_is_someone_elses() -> None:
    tx = Transaction.signed(ALICE, CHAIN, 0, PROGRAM, _call(), GAS_LIMIT)
    assert tx.sender == address_of_secret(ALICE)
    assert Transaction.decode(tx.encode()).sender == tx.sender
    tampered = replace(tx, data=_call(b"\x01" * 20))
    assert tampered.sender != tx.sender  # nobody can alter a transaction and keep its sender
    other_chain = replace(tx, chain_id=OTHER_CHAIN)
    assert other_chain.sender != tx.sender
    assert Transaction.system(CHAIN, PROGRAM, _call(), GAS_LIMIT).sender == SYSTEM_SENDER


def test_apply_transactions_demands_this_chain_a_signature_and_the_next_nonce_in_order() -> None:
    engine = default_engine()
    pre = genesis_state()
    context = BlockContext(CHAIN, 1, int(time.time()))
    alice, bob = address_of_secret(ALICE), address_of_secret(BUYER)

    def tx(secret: bytes, nonce: int, chain: bytes = CHAIN) -> Transaction:
        return Transaction.signed(secret, chain, nonce, PROGRAM, _call(), GAS_LIMIT)

    post, receipts = apply_transactions(engine, pre, [tx(ALICE, 0), tx(BUYER, 0), tx(ALICE, 1)], context)
    assert len(receipts) == 3
    assert (post[alice].nonce, post[bob].nonce) == (2, 1)
    assert post.root != pre.root and pre[alice].nonce == 0
    for txs, message in [
        ([tx(ALICE, 1)], "used nonce 1, its next nonce is 0"),
        ([tx(ALICE, 0), tx(ALICE, 0)], "used nonce 0, its next nonce is 1"),
        ([tx(ALICE, 0, OTHER_CHAIN)], "signed for chain"),
        ([replace(tx(ALICE, 0), signature=bytes(64) + b"\x1b")], "recovers no sender"),
    ]:
        with pytest.raises(InvalidTransaction, match=message):
            apply_transactions(engine, pre, txs, context)
    # On the post-state the next nonces follow on; a system transaction moves no nonce.
    system = Transaction.system(CHAIN, PROGRAM, _call(), GAS_LIMIT)
    again, _ = apply_transactions(engine, post, [tx(ALICE, 2), system], context)
    assert again[alice].nonce == 3 and again[SYSTEM_SENDER].nonce == 0


# -- the proof of system transactions, unit by unit --------------------------------------------------


@dataclass
class Refunds:
    """A node's view of the mainchain's `NoteRefunded` events (in the devnet: its own RPC reading)."""

    events: dict[tuple[bytes, int], list[Refund]] = field(default_factory=dict)

    def refunds(self, asset: bytes, note: int) -> Sequence[Refund]:
        return self.events.get((asset, note), [])


def _block_on(note: Note, transactions: Sequence[Transaction]) -> tuple[State, Block]:
    """The final head's state and an (unsigned) block on it carrying `transactions`."""
    head = next(iter(note.dle.archives.values())).store.head(note.chain)
    parent = head.block
    header = replace(
        parent.header,
        height=parent.header.height + 1,
        parent_hash=parent.hash,
        transactions_root=transactions_root(transactions),
    )
    return head.state, Block(header, tuple(transactions))


def test_the_authority_proves_refunds_against_the_mainchain_and_replacements_against_the_roles(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        note = await open_note(tmp_path)
        engine = note.dle.engine
        witnesses = note.terms.witnesses
        view = Refunds()
        authority = NoteAuthority(engine, view)
        refund = refund_transaction(note.chain, 0, address_of_secret(CAROL), 5)
        pre, block = _block_on(note, [refund])
        with pytest.raises(AuthorityError, match="shows 0 re-fundings"):
            authority.check(pre, block, witnesses)
        with pytest.raises(AuthorityError, match="no mainchain view"):
            NoteAuthority(engine).check(pre, block, witnesses)
        view.events[(note.terms.cash, note.terms.note)] = [Refund(address_of_secret(MALLORY), 5)]
        with pytest.raises(AuthorityError, match="differs from the mainchain"):
            authority.check(pre, block, witnesses)
        view.events[(note.terms.cash, note.terms.note)] = [Refund(address_of_secret(CAROL), 5)]
        authority.check(pre, block, witnesses)  # proven (the program itself still demands a fully exited note)
        # A witness replacement nobody certified, or one too few after a certified change.
        newcomer = address_of_secret(key("newcomer"))
        replace_call = note_program().call("replaceWitness", 2, newcomer)
        injected = Transaction.system(note.chain, PROGRAM, replace_call, GAS_LIMIT)
        pre, block = _block_on(note, [injected])
        with pytest.raises(AuthorityError, match="not exactly those"):
            authority.check(pre, block, witnesses)
        certified = (*witnesses[:2], newcomer, *witnesses[3:])
        authority.check(pre, block, certified)
        pre, empty = _block_on(note, [note.transfer(BUYER, ALICE, 1)])
        with pytest.raises(AuthorityError, match="not exactly those"):
            authority.check(pre, empty, certified)
        # A system transaction after a user one, or of any other call, is never accepted.
        user = note.transfer(BUYER, ALICE, 1)
        for txs, message in [
            ([user, injected], "after a user transaction"),
            ([Transaction.system(note.chain, PROGRAM, _call(), GAS_LIMIT)], "other than"),
        ]:
            pre, block = _block_on(note, txs)
            with pytest.raises(AuthorityError, match=message):
                authority.check(pre, block, certified)

    run(scenario())


# -- the attacks on a running DLE ----------------------------------------------------------------------


def _snapshot(note: Note) -> list[Any]:
    """What must not move: every archive node's head (height, hash), the supply and balances, the roles."""
    reader = NoteReader(note.dle.engine)
    out: list[Any] = []
    for archive in note.dle.archives.values():
        head = archive.store.head(note.chain)
        out.append((head.block.header.height, head.block.hash, reader.supply(head.state, note.chain)))
        out.append([reader.balance(head.state, note.chain, address_of_secret(k)) for k in (BUYER, ALICE, MALLORY)])
        out.append(reader.witnesses(head.state))
        out.append(archive.roles(note.chain).roles)
    return out


def test_an_outsider_cannot_send_the_cbdc_only_calls(tmp_path: Path) -> None:
    async def scenario() -> None:
        note = await open_note(tmp_path)
        await note.pay(BUYER, ALICE, 1_000)
        before = _snapshot(note)
        program = note_program()
        mallory = address_of_secret(MALLORY)
        refund_call = program.call("refund", 0, mallory, VALUE)
        replace_call = program.call("replaceWitness", 0, mallory)
        honest = note.transfer(BUYER, ALICE, 1)  # signed by the buyer, never submitted by the buyer
        attempts = [
            # As a system transaction: nobody submits one.
            (refund_transaction(note.chain, 0, mallory, VALUE), "system transactions are the protocol's own"),
            (Transaction.system(note.chain, PROGRAM, replace_call, GAS_LIMIT), "system transactions"),
            # Under his own key, or the buyer's signature on other calldata (then nobody's key): a call
            # that is none of the program's user actions is not admitted (and the program would see
            # Mallory, not the system: NotSystem, held by test_note_ledger).
            (Transaction.signed(MALLORY, note.chain, 0, PROGRAM, refund_call, GAS_LIMIT), NOT_A_USER_ACTION),
            (Transaction.signed(MALLORY, note.chain, 0, PROGRAM, replace_call, GAS_LIMIT), NOT_A_USER_ACTION),
            (replace(honest, data=refund_call, nonce=0), NOT_A_USER_ACTION),
            # Signed for another chain.
            (Transaction.signed(MALLORY, OTHER_CHAIN, 0, PROGRAM, refund_call, GAS_LIMIT), "another chain"),
        ]
        for tx, message in attempts:
            with pytest.raises(DleError, match=message):
                await note.client.submit(note.chain, [tx])
        assert _snapshot(note) == before
        assert note.mainchain.faults == []
        note.check_conservation()

    run(scenario())


def test_a_note_chain_admits_only_its_programs_user_actions_sent_by_their_signers(tmp_path: Path) -> None:
    async def scenario() -> None:
        note = await open_note(tmp_path)
        await note.pay(BUYER, ALICE, 1_000)
        before = _snapshot(note)
        program = note_program()
        honest = note.transfer(BUYER, ALICE, 7)  # the buyer's, not submitted yet
        elsewhere = address_of_secret(MALLORY)
        attempts = [
            # Anything but a call of the note program's user actions: no other address (an empty one
            # would create an account), no view, no initialize, no gas limit above the chain's.
            (Transaction.signed(MALLORY, note.chain, 0, elsewhere, b"", GAS_LIMIT), "runs only its program"),
            (
                Transaction.signed(MALLORY, note.chain, 0, PROGRAM, program.call("balanceOf", elsewhere), GAS_LIMIT),
                NOT_A_USER_ACTION,
            ),
            (Transaction.signed(MALLORY, note.chain, 0, PROGRAM, b"\xde\xad", GAS_LIMIT), NOT_A_USER_ACTION),
            (Transaction.signed(MALLORY, note.chain, 0, PROGRAM, honest.data, GAS_LIMIT + 1), "above the note chain's"),
        ]
        for tx, message in attempts:
            with pytest.raises(DleError, match=message):
                await note.client.submit(note.chain, [tx])
        too_many = [Transaction.signed(MALLORY, note.chain, i, PROGRAM, honest.data, GAS_LIMIT) for i in range(65)]
        with pytest.raises(DleError, match="at most 64 transactions"):
            await note.client.submit(note.chain, too_many)
        # The buyer's signed message wrapped in Mallory's own transaction: the program refuses any sender
        # but the message's signer, so the creator drops it, and the buyer's nonce stays the buyer's.
        wrapped = Transaction.signed(MALLORY, note.chain, 0, PROGRAM, honest.data, GAS_LIMIT)
        with pytest.raises(DleError, match="NotSigner"):
            await note.client.submit(note.chain, [wrapped])
        assert _snapshot(note) == before
        # A creator that built such a block anyway would find every node refusing it.
        authority = NoteAuthority(note.dle.engine)
        for tx, message in attempts:
            pre, block = _block_on(note, [tx])
            with pytest.raises(AuthorityError, match=message):
                authority.check(pre, block, note.terms.witnesses)
        outcome = await note.client.submit(note.chain, [honest])
        assert outcome.receipts[0].success and note.balance(ALICE) == 1_007
        assert note.mainchain.faults == []
        note.check_conservation()

    run(scenario())


def test_the_cbdc_spends_its_fee_share_from_a_wallet_though_its_two_nonces_differ(tmp_path: Path) -> None:
    async def scenario() -> None:
        note = await open_note(tmp_path)
        await note.pay(BUYER, ALICE, 100_000)
        cbdc_key = key("cbdc")
        cbdc = address_of_secret(cbdc_key)
        earned = note.balance(cbdc_key)
        archive = next(iter(note.dle.archives.values()))
        head = archive.store.head(note.chain).state
        reader = NoteReader(note.dle.engine)
        # `initialize` was the CBDC's DLE transaction 0, and no message of its own.
        assert earned > 0 and (reader.nonce(head, note.chain, cbdc), NoteReader.tx_nonce(head, cbdc)) == (0, 1)
        client = note.dle.client(cbdc, submit_timeout=3.0)
        wallet = NoteChain(note.terms.note, note.chain, 0, DOMAINS, client, note.dle.group_of, reader, note_program())
        alice_before = note.balance(ALICE)
        outcome = await wallet.transfer(cbdc_key, address_of_secret(ALICE), earned // 2)
        assert outcome.receipts[0].success and note.balance(ALICE) == alice_before + earned // 2
        note.check_conservation()

    run(scenario())


class Injecting(NoteAuthority):
    """A creator's authority that puts `extra` system transactions in front of its next block."""

    extra: tuple[Transaction, ...] = ()

    def required(self, pre: State, chain: bytes, height: int, witnesses: Sequence[bytes]) -> tuple[Transaction, ...]:
        return (*super().required(pre, chain, height, witnesses), *self.extra)


def _injecting_cbdc(note_refunds: Refunds) -> Any:
    def make(*args: Any, **kwargs: Any) -> MemberNode:
        engine = args[5]
        return MemberNode(*args, **{**kwargs, "authority": Injecting(engine, note_refunds)})

    return make


def test_a_creator_cannot_slip_an_unproven_refund_or_witness_change_into_a_block(tmp_path: Path) -> None:
    async def scenario() -> None:
        view = Refunds()
        note = await open_note(tmp_path, member_cls={"cbdc": _injecting_cbdc(view)}, refunds=view)
        await note.pay(BUYER, ALICE, 1_000)
        cbdc = note.dle.members[address_of_secret(key("cbdc"))]
        authority = cbdc._authority
        assert isinstance(authority, Injecting)
        mallory = address_of_secret(MALLORY)
        program = note_program()
        # The mainchain shows a re-funding — to Carol: the creator's version pays Mallory.
        view.events[(note.terms.cash, note.terms.note)] = [Refund(address_of_secret(CAROL), 10)]
        for injected in (
            refund_transaction(note.chain, 0, mallory, 10),
            Transaction.system(note.chain, PROGRAM, program.call("replaceWitness", 0, mallory), GAS_LIMIT),
        ):
            authority.extra = (injected,)
            paid = note.balance(ALICE)
            try:
                # Refused by every witness; the group judges the creator, dissolves, and a new group may
                # then carry the transfer alone.
                await note.client.submit(note.chain, [note.transfer(BUYER, ALICE, 1)])
                paid += 1
            except DleError:
                note.nonces[address_of_secret(BUYER)] -= 1  # the refused transfer never landed
            reader = NoteReader(note.dle.engine)
            for archive in note.dle.archives.values():
                state = archive.store.head(note.chain).state
                assert reader.balance(state, note.chain, mallory) == 0
                assert mallory not in reader.witnesses(state)
                assert reader.refund_count(state, note.chain) == 0
                assert reader.supply(state, note.chain) == (VALUE, 0)
            assert note.balance(ALICE) == paid
            note.check_conservation()
        # Only the creator that signed the unauthorised block is reported, never a witness that refused it.
        assert note.mainchain.faults and {offender for offender, _, _ in note.mainchain.faults} == {cbdc.address}

    run(scenario())


def test_a_proven_refund_is_applied_once_and_a_wrong_one_never(tmp_path: Path) -> None:
    async def scenario() -> None:
        view = Refunds()
        # Each refused block dissolves the group and draws a new one from the pool: keep it deep.
        note = await open_note(tmp_path, refunds=view, witnesses=30, validators=20)
        # The buyer exits the whole note: it is pooled on the mainchain, and may be re-funded.
        expiry = int(time.time()) + 3600
        buyer = address_of_secret(BUYER)
        exit_tx = note.signer.exit(BUYER, buyer, buyer, VALUE, 0, expiry)
        outcome = await note.client.submit(note.chain, [exit_tx])
        assert outcome.receipts[0].success
        carol = address_of_secret(CAROL)

        def creator() -> MemberNode:
            # A creator that signed a refused block is judged and replaced: ask whoever creates now, and
            # let it try once (each refused attempt dissolves the group and draws a new one).
            node = note.dle.members[next(iter(note.dle.archives.values())).roles(note.chain).roles.creator]
            node.timeouts = replace(node.timeouts, attempts=1)
            return node

        view.events[(note.terms.cash, note.terms.note)] = [Refund(carol, 20_000_000)]
        reader = NoteReader(note.dle.engine)
        for wrong in (
            refund_transaction(note.chain, 0, address_of_secret(MALLORY), 20_000_000),
            refund_transaction(note.chain, 0, carol, 20_000_001),
            refund_transaction(note.chain, 1, carol, 20_000_000),
        ):
            with pytest.raises(Exception, match=REFUSED):
                await creator()._round(note.chain, (wrong,))
        for archive in note.dle.archives.values():
            state = archive.store.head(note.chain).state
            assert reader.refund_count(state, note.chain) == 0 and reader.balance(state, note.chain, carol) == 0
        await creator()._round(note.chain, (refund_transaction(note.chain, 0, carol, 20_000_000),))
        with pytest.raises(Exception, match=REFUSED):
            await creator()._round(note.chain, (refund_transaction(note.chain, 0, carol, 20_000_000),))
        for archive in note.dle.archives.values():
            state = archive.store.head(note.chain).state
            assert reader.refund_count(state, note.chain) == 1
            assert reader.balance(state, note.chain, carol) == 20_000_000
            assert reader.supply(state, note.chain) == (VALUE + 20_000_000, VALUE)

    run(scenario())


async def _pooled_note_with_a_refund(tmp_path: Path) -> tuple[Note, Refunds, Transaction]:
    """A note whose buyer exited it whole (pooled on the mainchain), a view in which the mainchain shows
    its re-funding to Carol, and the system transaction that applies it."""
    view = Refunds()
    note = await open_note(tmp_path, refunds=view)
    buyer = address_of_secret(BUYER)
    exit_tx = note.signer.exit(BUYER, buyer, buyer, VALUE, 0, int(time.time()) + 3600)
    assert (await note.client.submit(note.chain, [exit_tx])).receipts[0].success
    view.events[(note.terms.cash, note.terms.note)] = [Refund(address_of_secret(CAROL), 20_000_000)]
    return note, view, refund_transaction(note.chain, 0, address_of_secret(CAROL), 20_000_000)


def _lagging(note: Note) -> tuple[Refunds, MemberNode]:
    """Gives the chain's first witness and one archive node a mainchain view that shows no re-funding
    yet; returns that view and the chain's creator."""
    archives = list(note.dle.archives.values())
    roles = archives[0].roles(note.chain).roles
    behind = Refunds()
    note.dle.members[roles.witnesses[0]]._authority = NoteAuthority(note.dle.engine, behind)
    archives[1]._authority = NoteAuthority(note.dle.engine, behind)
    return behind, note.dle.members[roles.creator]


def test_a_node_whose_mainchain_view_lags_says_not_yet_and_signs_once_it_has_seen_the_refund(
    tmp_path: Path,
) -> None:
    """Review finding (c): a member or archive node that has not seen the `NoteRefunded` yet neither
    signs nor refuses (a refusal would get the honest creator judged): it answers `not-yet`, is asked the
    same block again, and signs once its view shows the event. Nobody is reported."""

    async def scenario() -> None:
        note, view, refund = await _pooled_note_with_a_refund(tmp_path)
        behind, creator = _lagging(note)
        version = creator.roles(note.chain).roles.version
        creator.timeouts = replace(creator.timeouts, not_yet_wait=0.1, not_yet_retries=30)

        async def catch_up() -> None:
            await asyncio.sleep(0.5)
            behind.events.update(view.events)

        caught_up = asyncio.create_task(catch_up())
        await creator._round(note.chain, (refund,))
        await caught_up
        reader = NoteReader(note.dle.engine)
        for archive in note.dle.archives.values():
            state = archive.store.head(note.chain).state
            assert reader.refund_count(state, note.chain) == 1
            assert reader.balance(state, note.chain, address_of_secret(CAROL)) == 20_000_000
        assert note.mainchain.faults == []
        assert creator.roles(note.chain).roles.version == version

    run(scenario())


def test_a_node_whose_view_never_shows_the_refund_stalls_the_round_and_nobody_is_judged(tmp_path: Path) -> None:
    async def scenario() -> None:
        note, _, refund = await _pooled_note_with_a_refund(tmp_path)
        _, creator = _lagging(note)
        version = creator.roles(note.chain).roles.version
        creator.timeouts = replace(creator.timeouts, not_yet_wait=0.05, not_yet_retries=3)
        with pytest.raises(ConsensusFailed, match="do not see the block's mainchain proof yet"):
            await creator._round(note.chain, (refund,))
        reader = NoteReader(note.dle.engine)
        for archive in note.dle.archives.values():
            state = archive.store.head(note.chain).state
            assert reader.refund_count(state, note.chain) == 0
            assert reader.balance(state, note.chain, address_of_secret(CAROL)) == 0
        assert note.mainchain.faults == []
        assert creator.roles(note.chain).roles.version == version

    run(scenario())


class _Log:
    """`NoteRefunds` over a fixed list of (block number, buyer, amount) and a head."""

    def __init__(self, head: int, events: list[tuple[int, bytes, int]]) -> None:
        self.head, self.events = head, events

    def note_refunds(self, note: int, *, confirmations: int = 0) -> list[tuple[bytes, int]]:
        return [(buyer, amount) for number, buyer, amount in self.events if number <= self.head - confirmations]


def test_a_refund_counts_only_once_it_is_confirmations_deep() -> None:
    cash, carol = b"\xca" * 20, address_of_secret(CAROL)
    log = _Log(head=10, events=[(9, carol, 5)])
    assert ChainRefundLog(log, cash).refunds(cash, 7) == (Refund(carol, 5),)
    deep = ChainRefundLog(log, cash, confirmations=3)
    assert deep.refunds(cash, 7) == ()
    assert deep.refunds(b"\x0d" * 20, 7) == ()  # another contract's asset: never shown
    log.head = 12
    assert deep.refunds(cash, 7) == (Refund(carol, 5),)
    with pytest.raises(ValueError, match="confirmations"):
        ChainRefundLog(log, cash, confirmations=-1)
    # The authority tells "not yet" from "wrong".
    assert issubclass(NotYetSeen, AuthorityError)


def test_a_job_that_fails_once_another_is_dropped_is_dropped_too_and_nobody_is_reported(tmp_path: Path) -> None:
    async def scenario() -> None:
        note = await open_note(tmp_path)
        cbdc = note.dle.members[address_of_secret(key("cbdc"))]
        cbdc.timeouts = replace(cbdc.timeouts, batch_window=0.2)  # both jobs land in one batch
        bob = key("bob")
        # Job A pays Alice, then tries to overspend: it is dropped. Job B spends what A paid Alice: with A
        # gone it reverts too, and must be dropped before the creator signs (or it would be judged).
        job_a = [note.transfer(BUYER, ALICE, 1_000), note.transfer(BUYER, ALICE, 2 * VALUE)]
        job_b = [note.transfer(ALICE, bob, 500)]
        results = await asyncio.gather(
            note.client.submit(note.chain, job_a), note.client.submit(note.chain, job_b), return_exceptions=True
        )
        assert all(isinstance(r, DleError) and "reverted" in str(r) for r in results), results
        assert note.balance(ALICE) == 0 and note.balance(bob) == 0
        assert note.mainchain.faults == []
        note.nonces = {}
        await note.pay(BUYER, ALICE, 1_000)  # the chain goes on, and its nonces are the buyer's first
        note.check_conservation()

    run(scenario())
