"""The roulette under attack by its host archive node (issue 12, deliverable 4).

The host of a draw sends its pool snapshot before any commitment, gathers commitments, then reveals,
then asks every archive node of the group to sign the record. Each attack below is the host trying
to steer the outcome — choosing the snapshot after the reveals, leaving out, reordering or inventing
pool entries, calling an eligible candidate ineligible, swapping its commitment, drawing a node past
its stake capacity — and each is refused by the co-signers with a clear error, leaving their
Selection Chains and pools as they were. The honest draw lands in every archive node's Selection
Chain, and a node is never drawn for more chains than its stake allows.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dle_vm.encoding import RLPItem, decode_rlp, encode_rlp, raw_bytes, rlp_list, uint_bytes
from dle_vm.hashing import keccak
from dle_vm.signature import recover
from offchain.dle import roulette
from offchain.dle.archive import ROLE_CBDC, ROLE_VALIDATOR, ROLE_WITNESS, ArchiveNode, selection_chain_id
from offchain.dle.auth import Forbidden, as_caller
from offchain.dle.digests import Domains
from offchain.dle.local import LocalDle, address_of_secret
from offchain.dle.member import Timeouts
from offchain.dle.note import NoteTerms, chain_id_of
from offchain.dle.pool import Candidate, PoolSnapshot
from offchain.dle.transport import RemoteError

DOMAINS = Domains(43112, b"\x11" * 20, b"\x22" * 20)
CHAIN = keccak(b"draw attack chain")
SLOTS = (roulette.Slot(ROLE_WITNESS, 5), roulette.Slot(ROLE_VALIDATOR, 1, 2))


def key(name: str) -> bytes:
    return keccak(b"draw attack test " + name.encode())


@dataclass
class StakeMainchain:
    """Stake and capacity by address (everyone meets the minimum unless `unstaked`)."""

    unstaked: set[bytes] = field(default_factory=set)
    capacities: dict[int, int] = field(default_factory=dict)
    registered: list[tuple[Any, ...]] = field(default_factory=list)

    def meets_minimum(self, address: bytes, role: int) -> bool:
        return address not in self.unstaked

    def capacity(self, address: bytes, role: int) -> int:
        return self.capacities.get(role, 1_000_000)

    def register_chain(self, *args: Any) -> None:
        self.registered.append(args)

    def report_equivocation(self, *args: Any) -> int:
        raise AssertionError("no fault here")

    def report_fault(self, *args: Any) -> int:
        raise AssertionError("no fault here")


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 120))


def group_of(tmp_path: Path, mainchain: StakeMainchain | None = None, witnesses: int = 12) -> LocalDle:
    dle = LocalDle(tmp_path, DOMAINS, mainchain or StakeMainchain(), timeouts=Timeouts(vote=1.0, accept=1.0, final=1.0))
    dle.add_archives([key(f"archive {i}") for i in range(3)])
    dle.add_member(key("cbdc"))
    dle.add_witnesses([key(f"witness {i}") for i in range(witnesses)])
    dle.add_validators([key(f"validator {i}") for i in range(4)])
    return dle


def host_and_cosigners(dle: LocalDle) -> tuple[ArchiveNode, list[ArchiveNode]]:
    host = dle.host(CHAIN)
    return host, [node for node in dle.archives.values() if node is not host]


def selection_records(node: ArchiveNode) -> list[roulette.DrawRecord]:
    chain = selection_chain_id(0)
    if chain not in node.store.chains():
        return []
    records = []
    for height in range(node.store.height(chain) + 1):
        (tx,) = node.store.block(chain, height).block.transactions
        record_bytes, _ = rlp_list(decode_rlp(tx.data), 2, "selection entry")
        records.append(roulette.DrawRecord.decode(raw_bytes(record_bytes, "record")))
    return records


def pool_view(node: ArchiveNode) -> list[tuple[bytes, int]]:
    return [(c.address, c.role) for c in node.pool.order()]


async def ask(dle: LocalDle, method: str, body: bytes) -> dict[bytes, bytes]:
    """What a (possibly lying) host gets when it sends `body` to every archive node."""
    return {address: await node.handle(method, body) for address, node in dle.archives.items()}


def commit_body(draw_id: bytes, candidates: tuple[Candidate, ...] | list[Candidate]) -> bytes:
    return encode_rlp([draw_id, [candidate.to_rlp() for candidate in candidates]])


async def honest_rounds(dle: LocalDle, host: ArchiveNode, draw_id: bytes) -> tuple[PoolSnapshot, roulette.CommitReveal]:
    """Snapshot, commit and reveal as an honest host would: what the attacker holds before it cheats."""
    snapshot = host.pool.snapshot()
    randomness = roulette.CommitReveal(draw_id, dle.archives)
    for node, value in (await ask(dle, "draw_commit", commit_body(draw_id, snapshot.candidates))).items():
        randomness.commit(node, value)
    reveal = encode_rlp([draw_id, list(randomness.commitments())])
    for node, value in (await ask(dle, "draw_reveal", reveal)).items():
        randomness.reveal(node, value)
    return snapshot, randomness


def everyone(_address: bytes, _role: int) -> bool:
    return True


async def refused_everywhere(cosigners: list[ArchiveNode], method: str, body: bytes, match: str) -> None:
    for node in cosigners:
        with pytest.raises(RemoteError, match=match):
            await node.handle(method, body)


def test_an_honest_draw_lands_in_every_archive_nodes_selection_chain(tmp_path: Path) -> None:
    async def scenario() -> None:
        dle = group_of(tmp_path)
        host, _ = host_and_cosigners(dle)
        record, picks = await host.run_draw(CHAIN, SLOTS, ())
        assert len(picks[ROLE_WITNESS]) == 5 and len(picks[ROLE_VALIDATOR]) == 3
        roulette.check(record)
        for node in dle.archives.values():
            assert selection_records(node) == [record]  # kept by every archive node, not only the host
        views = {tuple(pool_view(node)) for node in dle.archives.values()}
        assert len(views) == 1  # every pool moved the drawn to the back alike
        drawn = {p.address for p in (*record.chosen, *record.standbys)}
        (view,) = views
        assert {address for address, _ in view[-len(drawn) :]} == drawn

    run(scenario())


def test_a_host_that_picks_the_snapshot_after_the_reveals_is_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        dle = group_of(tmp_path)
        host, cosigners = host_and_cosigners(dle)
        before = [pool_view(node) for node in cosigners]
        snapshot, randomness = await honest_rounds(dle, host, keccak(b"late snapshot"))
        honest = roulette.draw(chain_id=1, randomness=randomness, snapshot=snapshot, slots=SLOTS, eligible=everyone)
        # Knowing the seed, the host drops the first chosen witness from the snapshot to change the outcome.
        victim = honest.chosen[0].address
        steered = PoolSnapshot(tuple(c for c in snapshot.candidates if c.address != victim), snapshot.poh)
        record = roulette.draw(chain_id=1, randomness=randomness, snapshot=steered, slots=SLOTS, eligible=everyone)
        roulette.check(record)  # the record is internally consistent: only the co-signers' memory catches it
        assert victim not in {p.address for p in record.chosen}
        await refused_everywhere(cosigners, "endorse_draw", record.encode(), "snapshot is not the one committed")
        assert [selection_records(node) for node in cosigners] == [[], []]
        assert [pool_view(node) for node in cosigners] == before

    run(scenario())


@pytest.mark.parametrize(
    ("cheat", "match"),
    [
        ("omit", "leaves it out"),
        ("reorder", "out of PoH order"),
        ("invent", "not in this node's pool"),
        ("retype", "waits as role"),
    ],
)
def test_a_snapshot_that_is_not_the_pool_is_refused_before_any_commitment(
    tmp_path: Path, cheat: str, match: str
) -> None:
    async def scenario() -> None:
        dle = group_of(tmp_path)
        host, cosigners = host_and_cosigners(dle)
        candidates = list(host.pool.snapshot().candidates)
        if cheat == "omit":
            del candidates[3]
        elif cheat == "reorder":
            candidates[0], candidates[5] = candidates[5], candidates[0]
        elif cheat == "invent":
            stranger = address_of_secret(key("stranger"))
            candidates.append(Candidate(stranger, ROLE_WITNESS, host.poh.stamp(b"stranger")))
        else:
            first = candidates[0]
            candidates[0] = Candidate(first.address, ROLE_VALIDATOR, first.stamp)
        await refused_everywhere(
            cosigners, "draw_commit", commit_body(keccak(cheat.encode()), candidates), f"snapshot: .*{match}"
        )
        # Nothing was committed, so nothing can be revealed for that draw.
        reveal = encode_rlp([keccak(cheat.encode()), [bytes(32)] * 3])
        await refused_everywhere(cosigners, "draw_reveal", reveal, "no commitment")

    run(scenario())


def test_a_host_that_calls_an_eligible_candidate_ineligible_is_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        dle = group_of(tmp_path)
        host, cosigners = host_and_cosigners(dle)
        snapshot, randomness = await honest_rounds(dle, host, keccak(b"ineligible"))
        honest = roulette.draw(chain_id=1, randomness=randomness, snapshot=snapshot, slots=SLOTS, eligible=everyone)
        victim = honest.chosen[0].address
        record = roulette.draw(
            chain_id=1,
            randomness=randomness,
            snapshot=snapshot,
            slots=SLOTS,
            eligible=lambda address, _role: address != victim,
        )
        roulette.check(record)
        assert record.ineligible == (victim,)
        await refused_everywhere(cosigners, "endorse_draw", record.encode(), "listed ineligible but may serve")
        assert [selection_records(node) for node in cosigners] == [[], []]

    run(scenario())


def test_a_host_that_swaps_its_commitment_after_the_reveals_is_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        dle = group_of(tmp_path)
        host, cosigners = host_and_cosigners(dle)
        draw_id = keccak(b"swap")
        snapshot, randomness = await honest_rounds(dle, host, draw_id)
        # The host picks a new secret of its own, with a matching commitment, after seeing the others.
        secret = b"\x07" * 32
        reveals = dict(zip(randomness.group, randomness.reveals(), strict=True))
        reveals[host.address] = secret
        forged = roulette.CommitReveal(draw_id, dle.archives)
        for node in forged.group:
            forged.commit(node, roulette.commitment(reveals[node], node, draw_id))
        for node in forged.group:
            forged.reveal(node, reveals[node])
        record = roulette.draw(chain_id=1, randomness=forged, snapshot=snapshot, slots=SLOTS, eligible=everyone)
        roulette.check(record)
        await refused_everywhere(cosigners, "endorse_draw", record.encode(), "commitments are not the ones revealed")
        # Nor can it re-run the reveal round with the new list: the co-signers hold the first one.
        await refused_everywhere(
            cosigners, "draw_reveal", encode_rlp([draw_id, list(forged.commitments())]), "other commitments"
        )

    run(scenario())


def test_an_unendorsed_or_partly_signed_record_is_not_kept(tmp_path: Path) -> None:
    async def scenario() -> None:
        dle = group_of(tmp_path)
        host, cosigners = host_and_cosigners(dle)
        snapshot, randomness = await honest_rounds(dle, host, keccak(b"final"))
        eligible = host._eligibility(host.serving())
        record = roulette.draw(chain_id=1, randomness=randomness, snapshot=snapshot, slots=SLOTS, eligible=eligible)
        signatures = await ask(dle, "endorse_draw", record.encode())
        partial: list[RLPItem] = [signatures[n] for n in record.group]
        partial[0] = partial[1]
        body = encode_rlp([record.encode(), partial])
        await refused_everywhere(cosigners, "draw_final", body, "not signed by the whole group")
        assert [selection_records(node) for node in cosigners] == [[], []]
        full = encode_rlp([record.encode(), [signatures[n] for n in record.group]])
        for node in dle.archives.values():
            await node.handle("draw_final", full)
            assert selection_records(node) == [record]
        await refused_everywhere(cosigners, "draw_final", full, "did not endorse")  # once only

    run(scenario())


def test_a_node_is_not_drawn_past_its_stake_capacity(tmp_path: Path) -> None:
    async def scenario() -> None:
        mainchain = StakeMainchain(capacities={ROLE_WITNESS: 1})
        dle = group_of(tmp_path, mainchain, witnesses=8)
        terms = NoteTerms(7, DOMAINS.mainchain_id, DOMAINS.cash, 1_000, b"\xb0" * 20, address_of_secret(key("cbdc")),
                          (), bytes(20), 5)  # fmt: skip
        await dle.open_note(terms)
        serving = set(dle.archives[next(iter(dle.archives))].roles(terms.chain).roles.witnesses)
        assert len(serving) == 5
        host, cosigners = host_and_cosigners(dle)
        # 3 witnesses have room: a draw for 3 takes exactly them, and lists any full one it reaches.
        record, picks = await host.run_draw(CHAIN, [roulette.Slot(ROLE_WITNESS, 3)], ())
        assert not set(picks[ROLE_WITNESS]) & serving
        assert set(record.ineligible) <= serving
        # A host that draws a full witness anyway is refused by every co-signer.
        snapshot, randomness = await honest_rounds(dle, host, keccak(b"over capacity"))
        forced = roulette.draw(
            chain_id=1, randomness=randomness, snapshot=snapshot, slots=[roulette.Slot(ROLE_WITNESS, 5)],
            eligible=everyone,
        )  # fmt: skip
        assert {p.address for p in forced.chosen} & serving
        await refused_everywhere(cosigners, "endorse_draw", forced.encode(), "capacity is taken")
        assert [len(selection_records(node)) for node in cosigners] == [2, 2]  # the note's draw and the honest one

    run(scenario())


def test_an_unstaked_candidate_is_passed_over_and_cannot_be_forced_in(tmp_path: Path) -> None:
    async def scenario() -> None:
        dle = group_of(tmp_path)
        host, cosigners = host_and_cosigners(dle)
        dropped = address_of_secret(key("witness 0"))
        dle.mainchain.unstaked.add(dropped)  # type: ignore[attr-defined]
        record, picks = await host.run_draw(CHAIN, [roulette.Slot(ROLE_WITNESS, 11)], ())
        # Listed ineligible if the walk reached it before the 11 places were filled by the others.
        assert dropped not in picks[ROLE_WITNESS] and set(record.ineligible) <= {dropped}
        snapshot, randomness = await honest_rounds(dle, host, keccak(b"unstaked"))
        forced = roulette.draw(
            chain_id=1, randomness=randomness, snapshot=snapshot, slots=[roulette.Slot(ROLE_WITNESS, 12)],
            eligible=everyone,
        )  # fmt: skip
        await refused_everywhere(cosigners, "endorse_draw", forced.encode(), "below the minimum")

    run(scenario())


# -- the CBDC of a new note is drawn too ------------------------------------------------------------


def cbdc_group(tmp_path: Path, mainchain: StakeMainchain | None = None) -> tuple[LocalDle, list[bytes]]:
    dle = group_of(tmp_path, mainchain)
    cbdcs = [address_of_secret(key(f"staked cbdc {i}")) for i in range(4)]
    for cbdc in cbdcs:
        dle.join_pool(cbdc, ROLE_CBDC)
    return dle, cbdcs


def signers(certificate: bytes, digest: bytes) -> list[bytes]:
    return [recover(digest, certificate[i : i + 65]) for i in range(0, len(certificate), 65)]


def test_the_cbdc_of_an_order_is_drawn_and_certified_by_the_whole_group(tmp_path: Path) -> None:
    async def scenario() -> None:
        dle, cbdcs = cbdc_group(tmp_path)
        host = dle.host(chain_id_of(DOMAINS.mainchain_id, DOMAINS.cash, 9))
        record, certificate = await host.draw_cbdc(9)
        roulette.check(record)
        (pick,) = record.chosen
        assert pick.role == ROLE_CBDC and pick.address in cbdcs
        assert record.chain_id == int.from_bytes(chain_id_of(DOMAINS.mainchain_id, DOMAINS.cash, 9), "big")
        group = sorted(dle.archives)
        assert signers(certificate, DOMAINS.cbdc_draw(9, pick.address, record.hash, 0)) == group
        # The certificate names the drawn CBDC only: for any other it is nobody's signature.
        for other in cbdcs:
            if other != pick.address:
                assert not set(signers(certificate, DOMAINS.cbdc_draw(9, other, record.hash, 0))) & set(group)
        for node in dle.archives.values():
            assert record in selection_records(node)  # anyone can re-run the `selection` of the fill

    run(scenario())


def test_a_host_that_redraws_an_orders_cbdc_gets_no_certificate(tmp_path: Path) -> None:
    async def scenario() -> None:
        dle, _ = cbdc_group(tmp_path)
        chain = chain_id_of(DOMAINS.mainchain_id, DOMAINS.cash, 9)
        host = dle.host(chain)
        first, _ = await host.draw_cbdc(9)
        # It runs the draw again, hoping for a CBDC it colludes with: the draw itself goes through (it is
        # recorded for all to see), but no archive node certifies any draw of order 9 but the first.
        second, _ = await host.run_draw(chain, [roulette.Slot(ROLE_CBDC, 1)], ())
        body = encode_rlp([uint_bytes(9), second.hash])
        for node in dle.archives.values():
            with pytest.raises(RemoteError, match="was drawn by"):
                await node.handle("endorse_cbdc_draw", body)
        # Nor does the first draw certify another order.
        for node in dle.archives.values():
            with pytest.raises(RemoteError, match="no CBDC draw for order 10"):
                await node.handle("endorse_cbdc_draw", encode_rlp([uint_bytes(10), first.hash]))

    run(scenario())


def test_an_unstaked_or_full_cbdc_is_not_drawn(tmp_path: Path) -> None:
    async def scenario() -> None:
        mainchain = StakeMainchain(capacities={ROLE_CBDC: 0})
        dle, cbdcs = cbdc_group(tmp_path, mainchain)
        host = dle.host(chain_id_of(DOMAINS.mainchain_id, DOMAINS.cash, 9))
        with pytest.raises(RemoteError, match="holds 0 eligible candidates of role 0"):
            await host.draw_cbdc(9)  # every CBDC's capacity is taken: nobody is drawn
        mainchain.capacities.clear()
        mainchain.unstaked.update(cbdcs[1:])
        record, _ = await host.draw_cbdc(10)
        assert [p.address for p in record.chosen] == [cbdcs[0]]
        assert set(record.ineligible) <= set(cbdcs[1:])

    run(scenario())


def test_a_restarted_archive_node_still_certifies_only_the_first_cbdc_draw(tmp_path: Path) -> None:
    async def scenario() -> None:
        dle, _ = cbdc_group(tmp_path)
        chain = chain_id_of(DOMAINS.mainchain_id, DOMAINS.cash, 9)
        host = dle.host(chain)
        first, _ = await host.draw_cbdc(9)
        second, _ = await host.run_draw(chain, [roulette.Slot(ROLE_CBDC, 1)], ())
        for address, node in list(dle.archives.items()):
            # The same store, a fresh process: what it certifies comes from its Selection Chain.
            restarted = ArchiveNode(
                key_of[address], dle.network.transport(address), node.store, lambda: dle.group_of(0), DOMAINS,
                dle.engine, dle.mainchain,
            )  # fmt: skip
            with pytest.raises(RemoteError, match="was drawn by"):
                await restarted.handle("endorse_cbdc_draw", encode_rlp([uint_bytes(9), second.hash]))
            assert await restarted.handle("endorse_cbdc_draw", encode_rlp([uint_bytes(9), first.hash]))

    key_of = {address_of_secret(key(f"archive {i}")): key(f"archive {i}") for i in range(3)}
    run(scenario())


def test_a_staked_cbdc_gets_its_orders_one_certified_draw_and_a_stranger_gets_nothing(tmp_path: Path) -> None:
    async def scenario() -> None:
        mainchain = StakeMainchain()
        dle, cbdcs = cbdc_group(tmp_path, mainchain)
        chain = chain_id_of(DOMAINS.mainchain_id, DOMAINS.cash, 9)
        host = dle.host(chain)
        others = [node for node in dle.archives.values() if node is not host]
        request = encode_rlp([uint_bytes(9)])
        # Before the host drew it, no other archive node draws the order's CBDC.
        with pytest.raises(RemoteError, match="is drawn by"):
            await as_caller(cbdcs[0], others[0].handle("cbdc_draw", request))
        # A stranger without the CBDC stake learns nothing and starts no draw.
        stranger = address_of_secret(key("stranger"))
        mainchain.unstaked.add(stranger)
        with pytest.raises(Forbidden, match="only staked CBDCs"):
            await as_caller(stranger, host.handle("cbdc_draw", request))
        assert not [r for r in selection_records(host) if r.slots == (roulette.Slot(ROLE_CBDC, 1),)]

        # Two CBDCs ask at once: one draw, the same certified answer for both, and from any archive node.
        answers = await asyncio.gather(
            *(as_caller(cbdc, host.handle("cbdc_draw", request)) for cbdc in cbdcs[:2]),
        )
        answers.append(await as_caller(cbdcs[2], others[1].handle("cbdc_draw", request)))
        decoded = [rlp_list(decode_rlp(answer), 5, "draw") for answer in answers]
        assert all(item == decoded[0] for item in decoded)
        cbdc, selection, group, epoch, certificate = decoded[0]
        assert cbdc in cbdcs and (group, epoch) == (b"", uint_bytes(dle.group_of(0).epoch))
        digest = DOMAINS.cbdc_draw(9, raw_bytes(cbdc, "cbdc"), raw_bytes(selection, "selection"), 0)
        assert signers(raw_bytes(certificate, "certificate"), digest) == sorted(dle.archives)
        for node in dle.archives.values():
            drawn = [r for r in selection_records(node) if r.chain_id == int.from_bytes(chain, "big")]
            assert [r.hash for r in drawn] == [selection]  # drawn once, kept by every archive node

    run(scenario())
