"""Proof of History and the waiting pool of an archive node: the chain recomputes, any tampering is
caught, and the pool's order is the PoH order of joins (a reconnect goes to the back)."""

from __future__ import annotations

import time
from dataclasses import replace
from hashlib import sha256

import pytest

from dle_vm.encoding import EncodingError
from offchain.dle.poh import (
    GENESIS_HASH,
    PohAnchorError,
    PohEntry,
    PohMismatch,
    PohOrderError,
    PohRecord,
    ProofOfHistory,
    event_hash,
    is_valid,
    verify,
)
from offchain.dle.pool import NotInPool, PoolSnapshot, SnapshotError, WaitingPool

WITNESS, VALIDATOR = 2, 3  # contracts/types/Role.sol


def address(n: int) -> bytes:
    return n.to_bytes(20, "big")


def sample_chain() -> tuple[ProofOfHistory, PohRecord]:
    poh = ProofOfHistory()
    poh.tick(3)
    poh.stamp(b"first")
    poh.stamp(b"second")
    poh.tick(5)
    poh.stamp(b"third")
    return poh, poh.record()


def test_stamp_mixes_the_event_hash_into_the_chain() -> None:
    poh = ProofOfHistory()
    after_tick = poh.tick()
    assert after_tick == sha256(GENESIS_HASH).digest() and poh.index == 1
    entry = poh.stamp(b"event")
    assert entry == PohEntry(
        index=2, hash=sha256(after_tick + sha256(b"event").digest()).digest(), event_hash=event_hash(b"event")
    )
    assert poh.hash == entry.hash


def test_a_valid_record_verifies_and_roundtrips() -> None:
    _, record = sample_chain()
    assert [entry.index for entry in record.entries] == [4, 5, 11]
    verify(record, GENESIS_HASH)
    assert is_valid(record, GENESIS_HASH)
    assert PohRecord.decode(record.encode()) == record
    with pytest.raises(EncodingError):
        PohRecord.decode(record.encode() + b"\x00")


def test_a_tampered_event_is_detected() -> None:
    _, record = sample_chain()
    entries = list(record.entries)
    entries[1] = replace(entries[1], event_hash=event_hash(b"forged"))
    with pytest.raises(PohMismatch) as caught:
        verify(replace(record, entries=tuple(entries)), GENESIS_HASH)
    assert caught.value.position == 1


def test_a_reordered_pair_is_detected() -> None:
    _, record = sample_chain()
    first, second, third = record.entries
    # Swap the two events but keep the indices in order, as a forger would.
    swapped = (replace(second, index=first.index), replace(first, index=second.index), third)
    with pytest.raises(PohMismatch) as caught:
        verify(replace(record, entries=swapped), GENESIS_HASH)
    assert caught.value.position == 0
    # Swapped as they are, the first listed no longer recomputes; an index going back is an order error.
    with pytest.raises(PohMismatch):
        verify(replace(record, entries=(second, first, third)), GENESIS_HASH)
    with pytest.raises(PohOrderError):
        verify(replace(record, entries=(first, second, replace(third, index=first.index))), GENESIS_HASH)


@pytest.mark.parametrize("shift", [-1, 1, 7])
def test_a_wrong_tick_count_is_detected(shift: int) -> None:
    _, record = sample_chain()
    entries = list(record.entries)
    entries[2] = replace(entries[2], index=entries[2].index + shift)
    assert not is_valid(replace(record, entries=tuple(entries)), GENESIS_HASH)


def test_a_record_from_another_start_is_refused() -> None:
    _, record = sample_chain()
    with pytest.raises(PohAnchorError):
        verify(record, sha256(b"elsewhere").digest())
    assert not is_valid(replace(record, start_index=1), GENESIS_HASH)


def test_partial_records_and_pruning() -> None:
    poh, whole = sample_chain()
    tail = poh.record(5)
    assert tail.entries == whole.entries[1:] and tail.start_hash == whole.entries[0].hash
    verify(tail, whole.entries[0].hash)
    poh.prune(11)
    assert poh.anchor == (5, whole.entries[1].hash)
    with pytest.raises(ValueError):
        poh.record(5)
    verify(poh.record(), whole.entries[1].hash)


def test_ticking_is_a_tight_loop() -> None:
    poh = ProofOfHistory()
    began = time.perf_counter()
    poh.tick(200_000)
    elapsed = time.perf_counter() - began
    entry = poh.stamp(b"after many ticks")
    verify(poh.record(), GENESIS_HASH)
    assert entry.index == 200_001
    assert elapsed < 2.0, f"200k ticks took {elapsed:.2f}s"


# --- the waiting pool ---------------------------------------------------------------------------


def order(pool: WaitingPool) -> list[bytes]:
    return [candidate.address for candidate in pool.order()]


def test_pool_order_is_join_order_and_snapshots_verify() -> None:
    poh = ProofOfHistory()
    pool = WaitingPool(poh)
    for n in range(1, 6):
        pool.join(address(n), WITNESS if n % 2 else VALIDATOR)
        poh.tick(n)
    assert order(pool) == [address(n) for n in range(1, 6)]
    snapshot = pool.snapshot()
    assert [c.address for c in snapshot.candidates] == order(pool)
    snapshot.verify(GENESIS_HASH)
    assert snapshot == pool.snapshot() and snapshot.hash == pool.snapshot().hash  # deterministic


def test_reconnecting_moves_to_the_back_provably() -> None:
    poh = ProofOfHistory()
    pool = WaitingPool(poh)
    for n in (1, 2, 3):
        pool.join(address(n), WITNESS)
    stale = pool.snapshot()
    pool.join(address(1), WITNESS)  # the long-poll dropped and came back
    assert order(pool) == [address(2), address(3), address(1)]
    fresh = pool.snapshot()
    # The snapshot starts just before its first candidate's stamp: at address 1's first join.
    assert fresh.poh.start_hash == stale.candidates[0].stamp.hash
    fresh.verify(fresh.poh.start_hash)
    # Claiming the old place for address 1 with the newer record is caught: it rejoined later.
    forged = PoolSnapshot(candidates=stale.candidates, poh=poh.record(stale.candidates[0].stamp.index))
    with pytest.raises(SnapshotError, match="rejoined"):
        forged.verify(GENESIS_HASH)
    with pytest.raises(SnapshotError, match="not in the PoH record"):
        # address 1's old stamp lies before the fresh record's start
        replace(fresh, candidates=(stale.candidates[0], *fresh.candidates[:2])).verify(fresh.poh.start_hash)
    # So is a reordered list, and a stamp given to the wrong candidate.
    with pytest.raises(SnapshotError, match="order"):
        replace(fresh, candidates=tuple(reversed(fresh.candidates))).verify(fresh.poh.start_hash)
    first, *rest = fresh.candidates
    with pytest.raises(SnapshotError, match="join event"):
        replace(fresh, candidates=(replace(first, role=VALIDATOR), *rest)).verify(fresh.poh.start_hash)


def test_drawn_nodes_leave_and_standbys_return_to_their_place() -> None:
    poh = ProofOfHistory()
    pool = WaitingPool(poh)
    for n in range(1, 7):
        pool.join(address(n), WITNESS)
    held = pool.take([address(2), address(4), address(5)])
    assert [c.address for c in held] == [address(2), address(4), address(5)]
    assert order(pool) == [address(1), address(3), address(6)]
    pool.join(address(7), WITNESS)
    pool.remove([address(2), address(4)])  # drawn: gone
    pool.release([address(5)])  # an unused standby: back in its old place, ahead of 6 and 7
    assert order(pool) == [address(1), address(3), address(5), address(6), address(7)]
    assert pool.held == ()
    pool.snapshot().verify(GENESIS_HASH)
    first_two = pool.take_first(2)
    assert [c.address for c in first_two] == [address(1), address(3)]
    pool.release([address(1), address(3)])
    assert order(pool)[:2] == [address(1), address(3)]


def test_pool_refusals_and_reconnect_while_held() -> None:
    pool = WaitingPool(ProofOfHistory())
    for n in (1, 2, 3):
        pool.join(address(n), WITNESS)
    with pytest.raises(NotInPool):
        pool.take([address(1), address(9)])
    assert len(pool) == 3  # all or none
    pool.take([address(1)])
    with pytest.raises(NotInPool):
        pool.take([address(1)])
    with pytest.raises(NotInPool):
        pool.release([address(2)])
    pool.join(address(1), WITNESS)  # reconnected during the draw: its place is now the back
    pool.release([address(1)])
    assert order(pool) == [address(2), address(3), address(1)]
    pool.leave(address(2))
    assert address(2) not in pool
    with pytest.raises(NotInPool):
        pool.leave(address(2))
    with pytest.raises(EncodingError):
        pool.join(b"short", WITNESS)
