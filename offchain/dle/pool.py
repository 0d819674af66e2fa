"""The waiting pool of an archive node: witness and validator candidates in Proof of History order.

A candidate joins (its long-poll arrives) and the archive node stamps a join event into its PoH chain;
the pool's order is the order of those stamps. Reconnecting is joining again: a new stamp, so the
candidate goes to the back — a node cannot keep its place by dropping and re-polling. A draw takes
candidates out (`take` / `take_first`); the ones that end up drawn are `remove`d (a leave event is
stamped), and unused standbys are `release`d back to the place their old stamp gives them.

One address holds one place: joining with another role replaces the earlier entry (one party must not
stand in a draw twice). Roles are the values of contracts/types/Role.sol.

Events (hashed into the chain with sha256, see poh.py):

    join  = rlp([b"pool-join", address, role])
    leave = rlp([b"pool-leave", address])

No I/O: the long-poll transport calls `join`/`leave`; the PoH chain is handed in.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from dle_vm.encoding import RLPItem, check_length, check_uint, encode_rlp, uint_bytes
from dle_vm.hashing import keccak
from offchain.dle.poh import PohEntry, PohError, PohRecord, ProofOfHistory, event_hash, verify

__all__ = [
    "ADDRESS_SIZE",
    "ROLE_COUNT",
    "Candidate",
    "NotInPool",
    "PohError",
    "PoolError",
    "PoolSnapshot",
    "SnapshotError",
    "WaitingPool",
    "encode_candidates",
    "join_event",
    "leave_event",
]

ADDRESS_SIZE = 20
ROLE_COUNT = 6
"""contracts/types/Role.sol's ROLE_COUNT: roles are 0..5."""


class PoolError(ValueError):
    """A pool operation that does not fit the pool's state."""


class NotInPool(PoolError):
    """An address the pool does not hold (or does not hold in the state the operation needs)."""

    def __init__(self, address: bytes, message: str) -> None:
        super().__init__(f"0x{address.hex()}: {message}")
        self.address = address


class SnapshotError(PoolError):
    """A snapshot whose order its PoH record does not prove."""


def join_event(address: bytes, role: int) -> bytes:
    """The event stamped when `address` joins (or rejoins) as `role`."""
    return encode_rlp([b"pool-join", address, uint_bytes(role)])


def leave_event(address: bytes) -> bytes:
    """The event stamped when `address` leaves: drawn, or gone."""
    return encode_rlp([b"pool-leave", address])


@dataclass(frozen=True)
class Candidate:
    """A waiting node: its address, the role it waits for, and the stamp of its (latest) join."""

    address: bytes
    role: int
    stamp: PohEntry

    def __post_init__(self) -> None:
        check_length(self.address, ADDRESS_SIZE, "candidate address")
        check_uint(self.role, "candidate role", ROLE_COUNT - 1)

    def to_rlp(self) -> RLPItem:
        return [self.address, uint_bytes(self.role), uint_bytes(self.stamp.index), self.stamp.hash]


def encode_candidates(candidates: Iterable[Candidate]) -> bytes:
    """rlp([[address, role, stamp index, stamp hash], …]) — the snapshot list a draw record carries.
    The stamp's event hash is left out: it is sha256(join_event(address, role))."""
    return encode_rlp([candidate.to_rlp() for candidate in candidates])


@dataclass(frozen=True)
class PoolSnapshot:
    """The pool's available candidates in PoH order, with the stretch of the chain that proves it."""

    candidates: tuple[Candidate, ...]
    poh: PohRecord

    @property
    def hash(self) -> bytes:
        """keccak256(encode_candidates(candidates)): what a draw record names the snapshot by."""
        return keccak(encode_candidates(self.candidates))

    def verify(self, start_hash: bytes) -> None:
        """Check that the order is proven: the PoH record recomputes from `start_hash` (trusted), every
        candidate's stamp is in it and is the stamp of its join event, the candidates are in stamp
        order, and no later join by the same address follows (a rejoin would have moved it back).
        Raises `SnapshotError` (or the `PohError` of the record)."""
        verify(self.poh, start_hash)
        by_index = {entry.index: entry for entry in self.poh.entries}
        join_positions: dict[bytes, int] = {}  # event hash -> last index it was stamped at
        for entry in self.poh.entries:
            join_positions[entry.event_hash] = entry.index
        previous = -1
        seen: set[bytes] = set()
        for candidate in self.candidates:
            stamp = candidate.stamp
            if by_index.get(stamp.index) != stamp:
                raise SnapshotError(f"0x{candidate.address.hex()}: its stamp is not in the PoH record")
            if stamp.event_hash != event_hash(join_event(candidate.address, candidate.role)):
                raise SnapshotError(f"0x{candidate.address.hex()}: its stamp is not its join event")
            if stamp.index <= previous:
                raise SnapshotError(f"0x{candidate.address.hex()}: out of PoH order")
            if candidate.address in seen:
                raise SnapshotError(f"0x{candidate.address.hex()}: listed twice")
            # A later join in any role means the candidate rejoined and its place is the later one.
            for role in range(ROLE_COUNT):
                if join_positions.get(event_hash(join_event(candidate.address, role)), -1) > stamp.index:
                    raise SnapshotError(f"0x{candidate.address.hex()}: rejoined later, its place is further back")
            previous = stamp.index
            seen.add(candidate.address)


class WaitingPool:
    """Candidates waiting at one archive node, ordered by the PoH stamps of their joins."""

    def __init__(self, poh: ProofOfHistory) -> None:
        self._poh = poh
        self._waiting: dict[bytes, Candidate] = {}  # available to a draw
        self._held: dict[bytes, Candidate] = {}  # taken by a draw that is not settled yet

    def __len__(self) -> int:
        return len(self._waiting)

    def __contains__(self, address: object) -> bool:
        return address in self._waiting

    def __iter__(self) -> Iterator[Candidate]:
        return iter(self.order())

    def order(self) -> list[Candidate]:
        """The available candidates, first in line first."""
        return sorted(self._waiting.values(), key=lambda candidate: candidate.stamp.index)

    @property
    def held(self) -> tuple[Candidate, ...]:
        """Candidates taken by an unsettled draw, in PoH order."""
        return tuple(sorted(self._held.values(), key=lambda candidate: candidate.stamp.index))

    def join(self, address: bytes, role: int) -> Candidate:
        """Stamp a join; a candidate already present (waiting or held) moves to the back."""
        check_length(address, ADDRESS_SIZE, "candidate address")
        check_uint(role, "candidate role", ROLE_COUNT - 1)
        candidate = Candidate(address=address, role=role, stamp=self._poh.stamp(join_event(address, role)))
        if address in self._held:
            # Reconnecting during a draw: the new place applies if the draw returns it as a standby.
            self._held[address] = candidate
        else:
            self._waiting[address] = candidate
        return candidate

    def leave(self, address: bytes) -> None:
        """A waiting or held candidate goes away (its long-poll closed); the leave is stamped."""
        if self._waiting.pop(address, None) is None and self._held.pop(address, None) is None:
            raise NotInPool(address, "not in the pool")
        self._poh.stamp(leave_event(address))

    def take_first(self, count: int) -> tuple[Candidate, ...]:
        """Hold the first `count` candidates in line (fewer if fewer wait)."""
        first = heapq.nsmallest(count, self._waiting.values(), key=lambda candidate: candidate.stamp.index)
        for candidate in first:
            self._held[candidate.address] = self._waiting.pop(candidate.address)
        return tuple(first)

    def take(self, addresses: Iterable[bytes]) -> tuple[Candidate, ...]:
        """Hold the given candidates (a draw's chosen and standbys); all or none."""
        wanted = list(dict.fromkeys(addresses))
        for address in wanted:
            if address not in self._waiting:
                raise NotInPool(address, "not waiting")
        taken = tuple(self._waiting.pop(address) for address in wanted)
        for candidate in taken:
            self._held[candidate.address] = candidate
        return taken

    def release(self, addresses: Iterable[bytes]) -> None:
        """Return held candidates (unused standbys) to the place their stamp gives them."""
        wanted = list(dict.fromkeys(addresses))
        for address in wanted:
            if address not in self._held:
                raise NotInPool(address, "not held by a draw")
        for address in wanted:
            self._waiting[address] = self._held.pop(address)

    def remove(self, addresses: Iterable[bytes]) -> None:
        """Held candidates that were drawn leave the pool; each leave is stamped."""
        wanted = list(dict.fromkeys(addresses))
        for address in wanted:
            if address not in self._held:
                raise NotInPool(address, "not held by a draw")
        for address in wanted:
            del self._held[address]
            self._poh.stamp(leave_event(address))

    def snapshot(self) -> PoolSnapshot:
        """The available candidates in order and the PoH stretch from the first one's stamp on."""
        order = self.order()
        try:
            poh = self._poh.record(order[0].stamp.index) if order else self._poh.record(self._poh.index + 1)
        except ValueError as error:
            raise PoolError("the PoH chain was pruned past a waiting candidate's stamp") from error
        return PoolSnapshot(candidates=tuple(order), poh=poh)
