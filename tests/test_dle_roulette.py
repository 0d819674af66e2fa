"""The verifiable roulette: commit-then-reveal among the archive group, the seeded shuffle, the draw
record (encoding, hash, group signatures) and re-running a draw from its record alone."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest
from coincurve import PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from dle_vm.encoding import EncodingError
from dle_vm.hashing import keccak
from dle_vm.signature import address_of
from offchain.dle.poh import ProofOfHistory
from offchain.dle.pool import PoolSnapshot, WaitingPool
from offchain.dle.roulette import (
    BadGroupSignature,
    CommitReveal,
    DrawMismatch,
    DrawRecord,
    DuplicateCommitment,
    MissingCommitment,
    MissingReveal,
    MissingSignature,
    RevealMismatch,
    Slot,
    UnknownNode,
    check,
    commitment,
    draw,
    random_word,
    rerun,
    seed_of,
    shuffle,
    sign_record,
    verify_signatures,
)

WITNESS, VALIDATOR = 2, 3  # contracts/types/Role.sol
NOTE_GROUP = (Slot(WITNESS, 5, standbys=2), Slot(VALIDATOR, 1, standbys=1))
DRAW_ID = keccak(b"draw 1")
KEYS = [(n + 1).to_bytes(32, "big") for n in range(3)]
ARCHIVE = sorted(address_of(PrivateKey(key).public_key) for key in KEYS)
KEY_OF = {address_of(PrivateKey(key).public_key): key for key in KEYS}


def address(n: int) -> bytes:
    return (0x1000 + n).to_bytes(20, "big")


def secret(n: int) -> bytes:
    return keccak(b"secret %d" % n)


def committed_round(draw_id: bytes = DRAW_ID, group: Sequence[bytes] = ARCHIVE) -> CommitReveal:
    round_ = CommitReveal(draw_id, group)
    for n, node in enumerate(round_.group):
        round_.commit(node, commitment(secret(n), node, draw_id))
    return round_


def revealed_round() -> CommitReveal:
    round_ = committed_round()
    for n, node in enumerate(round_.group):
        round_.reveal(node, secret(n))
    return round_


def pool_snapshot(witnesses: int = 12, validators: int = 4) -> PoolSnapshot:
    pool = WaitingPool(ProofOfHistory())
    for n in range(witnesses + validators):
        pool.join(address(n), WITNESS if n < witnesses else VALIDATOR)
    return pool.snapshot()


def everyone(_address: bytes, _role: int) -> bool:
    return True


def note_draw(**changes: object) -> DrawRecord:
    arguments: dict[str, object] = {
        "chain_id": 7,
        "randomness": revealed_round(),
        "snapshot": pool_snapshot(),
        "slots": NOTE_GROUP,
        "eligible": everyone,
    }
    arguments.update(changes)
    return draw(**arguments)  # type: ignore[arg-type]


# --- commit, then reveal ------------------------------------------------------------------------


def test_happy_path_seed_is_the_sum_of_the_reveals() -> None:
    round_ = revealed_round()
    assert round_.seed() == sum(int.from_bytes(secret(n), "big") for n in range(3)) % 2**256
    assert round_.commitments() == tuple(commitment(secret(n), node, DRAW_ID) for n, node in enumerate(ARCHIVE))


def test_reveals_wait_for_every_commitment() -> None:
    round_ = CommitReveal(DRAW_ID, ARCHIVE)
    round_.commit(ARCHIVE[0], commitment(secret(0), ARCHIVE[0], DRAW_ID))
    with pytest.raises(MissingCommitment) as caught:
        round_.reveal(ARCHIVE[0], secret(0))
    assert caught.value.node == ARCHIVE[1]
    with pytest.raises(DuplicateCommitment):
        round_.commit(ARCHIVE[0], commitment(secret(0), ARCHIVE[0], DRAW_ID))
    with pytest.raises(UnknownNode):
        round_.commit(address(1), bytes(32))


def test_a_changed_reveal_aborts_naming_the_node() -> None:
    round_ = committed_round()
    with pytest.raises(RevealMismatch) as caught:
        round_.reveal(ARCHIVE[1], secret(99))
    assert caught.value.node == ARCHIVE[1]
    # A commitment bound to another node or another draw does not open here either.
    other = committed_round(draw_id=keccak(b"draw 2"))
    with pytest.raises(RevealMismatch):
        other.reveal(ARCHIVE[0], secret(1))


def test_a_missing_reveal_aborts_naming_the_node() -> None:
    round_ = committed_round()
    round_.reveal(ARCHIVE[0], secret(0))
    round_.reveal(ARCHIVE[2], secret(2))
    with pytest.raises(MissingReveal) as caught:
        round_.seed()
    assert caught.value.node == ARCHIVE[1]
    with pytest.raises(MissingReveal):
        note_draw(randomness=round_)


def test_the_last_revealer_cannot_choose_the_outcome() -> None:
    round_ = committed_round()
    last = ARCHIVE[-1]
    for n, node in enumerate(ARCHIVE[:-1]):
        round_.reveal(node, secret(n))
    # Having seen every other secret, the last node tries the secrets that would give it the seed it
    # likes best: only its committed one is accepted.
    for attempt in range(20):
        with pytest.raises(RevealMismatch):
            round_.reveal(last, secret(100 + attempt))
    round_.reveal(last, secret(len(ARCHIVE) - 1))
    # And the seed depends on every reveal: changing any one secret (committed anew) changes it.
    base = round_.seed()
    for changed in range(len(ARCHIVE)):
        secrets_ = [secret(n) for n in range(len(ARCHIVE))]
        secrets_[changed] = secret(200)
        assert seed_of(secrets_) != base


# --- the shuffle and the draw -------------------------------------------------------------------


def test_shuffle_is_the_documented_fisher_yates() -> None:
    seed = 12345
    items = list(range(10))
    expected = list(items)
    for i in range(9, 0, -1):
        j = int.from_bytes(keccak(seed.to_bytes(32, "big") + i.to_bytes(32, "big")), "big") % (i + 1)
        expected[i], expected[j] = expected[j], expected[i]
    assert shuffle(items, seed) == expected
    assert random_word(seed, 3) == int.from_bytes(keccak(seed.to_bytes(32, "big") + (3).to_bytes(32, "big")), "big")
    assert sorted(shuffle(items, seed)) == items and shuffle(items, seed + 1) != shuffle(items, seed)


def test_the_draw_is_deterministic_and_reruns_from_its_record() -> None:
    record = note_draw()
    assert record == note_draw()
    assert [pick.role for pick in record.chosen].count(WITNESS) == 5
    assert [pick.role for pick in record.chosen].count(VALIDATOR) == 1
    assert len(record.standbys) == 3
    result = rerun(record)
    assert result.chosen == record.chosen and result.standbys == record.standbys
    check(record)
    decoded = DrawRecord.decode(record.encode())
    assert decoded == record and decoded.hash == record.hash
    check(decoded)


def test_draws_are_taken_from_the_pool_and_standbys_return() -> None:
    pool = WaitingPool(ProofOfHistory())
    for n in range(10):
        pool.join(address(n), WITNESS if n < 8 else VALIDATOR)
    record = note_draw(snapshot=pool.snapshot())
    pool.take(pick.address for pick in (*record.chosen, *record.standbys))
    pool.remove(pick.address for pick in record.chosen)
    pool.release(pick.address for pick in record.standbys)
    waiting = [candidate.address for candidate in pool.order()]
    # Drawn nodes are gone; standbys are back in their PoH places among the rest.
    assert waiting == [c.address for c in record.snapshot if c.address not in {p.address for p in record.chosen}]


def test_ineligible_and_excluded_candidates_are_skipped() -> None:
    snapshot = pool_snapshot()
    unstaked = {address(0), address(3), address(13)}
    dissolved = [address(5), address(1), address(12)]
    asked: list[bytes] = []

    def stake_check(candidate: bytes, role: int) -> bool:
        asked.append(candidate)
        return candidate not in unstaked

    record = note_draw(snapshot=snapshot, eligible=stake_check, excluded=dissolved)
    drawn = {pick.address for pick in (*record.chosen, *record.standbys)}
    assert not drawn & unstaked and not drawn & set(dissolved)
    assert record.excluded == tuple(sorted(dissolved))
    assert set(record.ineligible) <= unstaked and set(asked).isdisjoint(dissolved)
    check(record)
    # Dropping an ineligible mark (or adding a padding one) no longer re-runs to the record.
    if record.ineligible:
        with pytest.raises(DrawMismatch):
            check(replace(record, ineligible=record.ineligible[1:]))
    with pytest.raises(DrawMismatch):
        check(replace(record, ineligible=(*record.ineligible, address(99))))


def test_too_few_candidates_fill_what_they_can() -> None:
    record = note_draw(snapshot=pool_snapshot(witnesses=3, validators=0))
    assert [pick.role for pick in record.chosen] == [WITNESS] * 3 and record.standbys == ()
    check(record)


def test_a_tampered_record_does_not_rerun() -> None:
    record = note_draw()
    with pytest.raises(DrawMismatch):
        check(replace(record, chosen=tuple(reversed(record.chosen))))
    with pytest.raises(DrawMismatch):
        rerun(replace(record, seed=record.seed + 1))
    with pytest.raises(DrawMismatch):
        rerun(replace(record, snapshot=record.snapshot[1:]))
    with pytest.raises(RevealMismatch) as caught:
        rerun(replace(record, reveals=(secret(50), *record.reveals[1:])))
    assert caught.value.node == record.group[0]
    with pytest.raises(EncodingError):
        DrawRecord.decode(record.encode()[:-1])
    with pytest.raises(EncodingError):
        replace(record, group=tuple(reversed(record.group)))


def test_every_archive_node_signs_the_record() -> None:
    record = note_draw()
    signatures = {node: sign_record(record, KEY_OF[node]) for node in record.group}
    verify_signatures(record, signatures)
    verify_signatures(record, [signatures[node] for node in record.group])
    missing = dict(signatures)
    del missing[record.group[1]]
    with pytest.raises(MissingSignature) as caught:
        verify_signatures(record, missing)
    assert caught.value.node == record.group[1]
    swapped = {**signatures, record.group[0]: signatures[record.group[2]]}
    with pytest.raises(BadGroupSignature) as bad:
        verify_signatures(record, swapped)
    assert bad.value.node == record.group[0]
    other = replace(record, chain_id=8)
    with pytest.raises(BadGroupSignature):
        verify_signatures(other, signatures)
    with pytest.raises(BadGroupSignature):
        verify_signatures(record, {**signatures, record.group[0]: b"\x00" * 65})


# --- property: any pool, any reveals ------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    roles=st.lists(st.sampled_from([WITNESS, VALIDATOR]), max_size=30),
    secrets_=st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=4),
    witnesses=st.integers(0, 8),
    validators=st.integers(0, 3),
    standbys=st.integers(0, 2),
    unstaked=st.sets(st.integers(0, 29)),
    dissolved=st.sets(st.integers(0, 40)),
)
def test_any_draw_is_unique_sized_and_reruns(
    roles: list[int],
    secrets_: list[bytes],
    witnesses: int,
    validators: int,
    standbys: int,
    unstaked: set[int],
    dissolved: set[int],
) -> None:
    pool = WaitingPool(ProofOfHistory())
    for n, role in enumerate(roles):
        pool.join(address(n), role)
    group = [(0xA000 + n).to_bytes(20, "big") for n in range(len(secrets_))]
    round_ = CommitReveal(DRAW_ID, group)
    for node, value in zip(round_.group, secrets_, strict=True):
        round_.commit(node, commitment(value, node, DRAW_ID))
    for node, value in zip(round_.group, secrets_, strict=True):
        round_.reveal(node, value)
    slots = (Slot(WITNESS, witnesses, standbys), Slot(VALIDATOR, validators, standbys))
    barred = {address(n) for n in dissolved}
    rejected = {address(n) for n in unstaked}
    record = draw(
        chain_id=1,
        randomness=round_,
        snapshot=pool.snapshot(),
        slots=slots,
        eligible=lambda candidate, _role: candidate not in rejected,
        excluded=barred,
    )
    picks = [pick.address for pick in (*record.chosen, *record.standbys)]
    assert len(picks) == len(set(picks))
    for role, count in ((WITNESS, witnesses), (VALIDATOR, validators)):
        fit = sum(1 for n, r in enumerate(roles) if r == role and address(n) not in barred | rejected)
        assert sum(1 for pick in record.chosen if pick.role == role) == min(count, fit)
        assert sum(1 for pick in record.standbys if pick.role == role) == min(standbys, max(fit - count, 0))
    assert not set(picks) & (barred | rejected)
    assert rerun(record).chosen == record.chosen
    assert DrawRecord.decode(record.encode()) == record
    check(record)
