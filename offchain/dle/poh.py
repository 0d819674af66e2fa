"""Proof of History: a sequential SHA-256 hash chain into which an archive node stamps events.

Each step of the chain is one SHA-256 of the previous hash, so the chain cannot be computed faster
than one hash after another: an event mixed in at step i provably happened after every event mixed in
before step i. Whoever holds the record of a stretch of the chain (its starting point and the entries
in it) re-derives every hash and so checks both the events and their order.

    tick:   next = sha256(prev)
    stamp:  next = sha256(prev ‖ sha256(event))

The index of a hash is its distance from the chain's start (the start hash has index 0); a plain
tick and a stamp each advance it by one. A record keeps only the stamps; the number of plain ticks
between two stamps is the difference of their indices minus one, so the record is compact and any
change to a tick count changes a recomputed hash.

Pure computation: no clock and no I/O. The archive node decides when to tick (a ticker task) and where
to keep records.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from hashlib import sha256
from itertools import repeat

from dle_vm.encoding import (
    MAX_UINT64,
    RLPItem,
    check_length,
    check_uint,
    decode_rlp,
    encode_rlp,
    fixed_bytes,
    list_of,
    rlp_list,
    uint,
    uint_bytes,
)

__all__ = [
    "GENESIS_HASH",
    "HASH_SIZE",
    "PohAnchorError",
    "PohEntry",
    "PohError",
    "PohMismatch",
    "PohOrderError",
    "PohRecord",
    "ProofOfHistory",
    "event_hash",
    "is_valid",
    "verify",
]

HASH_SIZE = 32
GENESIS_HASH = sha256(b"CoNET DLE proof of history").digest()
"""The conventional start of an archive node's chain; any 32 bytes may serve (the node announces it)."""


class PohError(ValueError):
    """A Proof of History record that does not recompute."""


class PohMismatch(PohError):
    """An entry whose hash is not what the chain computes: a tampered event, hash or tick count, or
    entries swapped. `position` is the entry's position in the record."""

    def __init__(self, position: int, message: str) -> None:
        super().__init__(f"entry {position}: {message}")
        self.position = position


class PohAnchorError(PohError):
    """A record that does not start at the hash the verifier trusts."""


class PohOrderError(PohError):
    """An entry whose index does not come after the one before it (or the record's start)."""

    def __init__(self, position: int, message: str) -> None:
        super().__init__(f"entry {position}: {message}")
        self.position = position


def event_hash(event: bytes) -> bytes:
    """sha256 of an event: the chain mixes in the event's hash, so records never carry event bytes."""
    return sha256(event).digest()


@dataclass(frozen=True)
class PohEntry:
    """One stamp: the chain's hash at `index` is `hash`, and the event mixed into it hashes to `event_hash`."""

    index: int
    hash: bytes
    event_hash: bytes

    def __post_init__(self) -> None:
        check_uint(self.index, "PoH index", MAX_UINT64)
        check_length(self.hash, HASH_SIZE, "PoH hash")
        check_length(self.event_hash, HASH_SIZE, "PoH event hash")

    def to_rlp(self) -> RLPItem:
        return [uint_bytes(self.index), self.event_hash, self.hash]

    @classmethod
    def from_rlp(cls, item: RLPItem) -> PohEntry:
        index, event, digest = rlp_list(item, 3, "PoH entry")
        return cls(
            index=uint(index, "PoH index", MAX_UINT64),
            hash=fixed_bytes(digest, HASH_SIZE, "PoH hash"),
            event_hash=fixed_bytes(event, HASH_SIZE, "PoH event hash"),
        )


@dataclass(frozen=True)
class PohRecord:
    """A stretch of the chain: it starts at (`start_index`, `start_hash`) and holds every stamp after it
    in order. Leaving a stamp out makes the ones after it fail to recompute, so a record is all or
    nothing from its start."""

    start_index: int
    start_hash: bytes
    entries: tuple[PohEntry, ...]

    def __post_init__(self) -> None:
        check_uint(self.start_index, "PoH start index", MAX_UINT64)
        check_length(self.start_hash, HASH_SIZE, "PoH start hash")

    @property
    def end_index(self) -> int:
        """The index of the last stamp (the start when there is none)."""
        return self.entries[-1].index if self.entries else self.start_index

    def encode(self) -> bytes:
        """rlp([start_index, start_hash, [[index, event_hash, hash], …]])."""
        return encode_rlp([uint_bytes(self.start_index), self.start_hash, [entry.to_rlp() for entry in self.entries]])

    @classmethod
    def decode(cls, data: bytes) -> PohRecord:
        """The record `encode` made; any other bytes raise an `EncodingError`."""
        start_index, start_hash, entries = rlp_list(decode_rlp(data), 3, "PoH record")
        return cls(
            start_index=uint(start_index, "PoH start index", MAX_UINT64),
            start_hash=fixed_bytes(start_hash, HASH_SIZE, "PoH start hash"),
            entries=tuple(PohEntry.from_rlp(entry) for entry in list_of(entries, "PoH entries")),
        )


def _advance(digest: bytes, ticks: int) -> bytes:
    # The hot loop of the chain: a local name for sha256 and `repeat` keep it at one C call per hash.
    hasher = sha256
    for _ in repeat(None, ticks):
        digest = hasher(digest).digest()
    return digest


def verify(record: PohRecord, start_hash: bytes) -> None:
    """Recompute `record` from `start_hash` (which the verifier trusts: the node's announced chain start,
    or the end of a record it already checked). Raises a `PohError` naming the first bad entry."""
    if record.start_hash != start_hash:
        raise PohAnchorError(f"the record starts at {record.start_hash.hex()}, not the trusted {start_hash.hex()}")
    digest, index = record.start_hash, record.start_index
    for position, entry in enumerate(record.entries):
        ticks = entry.index - index - 1
        if ticks < 0:
            raise PohOrderError(position, f"index {entry.index} does not follow {index}")
        digest = sha256(_advance(digest, ticks) + entry.event_hash).digest()
        if digest != entry.hash:
            raise PohMismatch(position, f"the chain computes {digest.hex()} at index {entry.index}")
        index = entry.index


def is_valid(record: PohRecord, start_hash: bytes) -> bool:
    """`verify` as a predicate."""
    try:
        verify(record, start_hash)
    except PohError:
        return False
    return True


class ProofOfHistory:
    """An archive node's running chain and the stamps it has made since its anchor.

    The anchor is the oldest point the node can still prove from; `prune` moves it forward once no
    one needs older stamps (memory grows with the stamps otherwise — the archive node decides when)."""

    def __init__(self, start_hash: bytes = GENESIS_HASH, start_index: int = 0) -> None:
        check_length(start_hash, HASH_SIZE, "PoH start hash")
        check_uint(start_index, "PoH start index", MAX_UINT64)
        self._hash = start_hash
        self._index = start_index
        self._anchor_hash = start_hash
        self._anchor_index = start_index
        self._entries: list[PohEntry] = []
        self._indices: list[int] = []  # parallel to _entries, for bisect

    @property
    def hash(self) -> bytes:
        """The chain's current hash."""
        return self._hash

    @property
    def index(self) -> int:
        """The current hash's index."""
        return self._index

    @property
    def anchor(self) -> tuple[int, bytes]:
        """(index, hash) of the oldest point records can start from."""
        return self._anchor_index, self._anchor_hash

    def tick(self, count: int = 1) -> bytes:
        """Advance `count` plain hashes; returns the new hash."""
        if count < 0:
            raise ValueError("a tick count cannot be negative")
        self._hash = _advance(self._hash, count)
        self._index += count
        return self._hash

    def stamp(self, event: bytes) -> PohEntry:
        """Mix `event` into the chain as the next hash and remember the stamp."""
        ev = event_hash(event)
        self._hash = sha256(self._hash + ev).digest()
        self._index += 1
        entry = PohEntry(index=self._index, hash=self._hash, event_hash=ev)
        self._entries.append(entry)
        self._indices.append(entry.index)
        return entry

    def record(self, first_index: int | None = None) -> PohRecord:
        """Every stamp at or after `first_index` (all since the anchor when None), starting from the
        stamp just before it — the shortest record that proves those stamps."""
        if first_index is None:
            position = 0
        else:
            if first_index <= self._anchor_index:
                raise ValueError(f"index {first_index} is at or before the anchor {self._anchor_index}")
            position = bisect_left(self._indices, first_index)
        if position == 0:
            start_index, start_hash = self._anchor_index, self._anchor_hash
        else:
            before = self._entries[position - 1]
            start_index, start_hash = before.index, before.hash
        return PohRecord(start_index=start_index, start_hash=start_hash, entries=tuple(self._entries[position:]))

    def prune(self, first_index: int) -> None:
        """Forget stamps before `first_index`; the last forgotten stamp becomes the anchor."""
        position = bisect_left(self._indices, first_index)
        if position == 0:
            return
        last = self._entries[position - 1]
        self._anchor_index, self._anchor_hash = last.index, last.hash
        del self._entries[:position]
        del self._indices[:position]
