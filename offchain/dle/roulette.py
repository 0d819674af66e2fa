"""The verifiable roulette: commit-then-reveal randomness from every archive node of a group, and a
deterministic draw from the waiting pool keyed by the summed seed, recorded so anyone can re-run it.

Randomness. Each archive node of the group picks a 32-byte secret and first sends only

    commitment = keccak256(secret ‖ node address ‖ draw id)

Reveals are accepted only once every node has committed, and each must match its commitment. So the
last node to reveal already saw the other secrets but can no longer change its own: it can only
withhold it, and that aborts the draw naming it (the archive node treats it as a refusal). The address
in the commitment stops a node from copying another's commitment; the draw id stops replaying a reveal
from an earlier draw.

    seed = (Σ int(secret)) mod 2²⁵⁶        (secrets read as big-endian unsigned integers)

The draw. The pool snapshot (candidates in PoH order) is shuffled with Fisher-Yates keyed by the seed:

    word(i) = int(keccak256(seed as 32 bytes ‖ i as 32 bytes))       (big-endian)
    for i = n-1 down to 1:  j = word(i) mod (i+1);  swap(order[i], order[j])

then walked in shuffled order: a candidate is skipped if it is excluded (a member of a dissolved
group), or its role has no open place; otherwise the `eligible` callback (the stake check
`Staking.meetsMinimum`, evaluated by the caller at draw time) is asked, a rejected one is listed as
ineligible, an accepted one fills the role's next place — first its `count` chosen places, then its
`standbys`. The walk stops when every place is filled. (The modulo bias is below n/2²⁵⁶: none.)

The record lists every input and output, its keccak256 is signed by every archive node of the group,
and `rerun` recomputes the draw from the record alone. The record cannot prove that an ineligible
candidate really lacked stake: a verifier with chain access checks `meetsMinimum` for those at the
draw's block.

The snapshot is fixed before any secret: the host sends it first and every archive node checks it
against its own pool (`check_snapshot`) and signs only a record that holds it (offchain/dle/archive.py).

No I/O here: the archive node gathers commitments, reveals and signatures over its transport.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from dle_vm.encoding import (
    MAX_UINT256,
    NonCanonicalError,
    RLPItem,
    check_length,
    check_uint,
    decode_rlp,
    encode_rlp,
    fixed_bytes,
    list_of,
    rlp_list,
    strictly_increasing,
    uint,
    uint_bytes,
)
from dle_vm.hashing import keccak
from dle_vm.signature import BadSignature, recover, sign
from offchain.dle.poh import HASH_SIZE, PohEntry, event_hash
from offchain.dle.pool import ADDRESS_SIZE, ROLE_COUNT, Candidate, PoolSnapshot, encode_candidates, join_event

__all__ = [
    "SECRET_SIZE",
    "BadGroupSignature",
    "CommitReveal",
    "DrawMismatch",
    "DrawRecord",
    "DrawResult",
    "DuplicateCommitment",
    "DuplicateReveal",
    "Eligible",
    "MissingCommitment",
    "MissingReveal",
    "MissingSignature",
    "NodeError",
    "Pick",
    "RevealMismatch",
    "RouletteError",
    "Slot",
    "SnapshotMismatch",
    "UnknownNode",
    "check",
    "check_snapshot",
    "commitment",
    "draw",
    "new_secret",
    "random_word",
    "rerun",
    "seed_of",
    "select",
    "shuffle",
    "sign_record",
    "snapshot_from_rlp",
    "snapshot_hash",
    "verify_signatures",
]

SECRET_SIZE = 32
_MODULUS = 2**256

Eligible = Callable[[bytes, int], bool]
"""eligible(address, role): may this candidate serve (its stake meets the role's minimum now)?"""

_T = TypeVar("_T")


class RouletteError(ValueError):
    """A draw that cannot go ahead, or a record that does not re-run."""


class NodeError(RouletteError):
    """A fault of one archive node (or candidate), which `node` names."""

    def __init__(self, node: bytes, message: str) -> None:
        super().__init__(f"0x{node.hex()}: {message}")
        self.node = node


class UnknownNode(NodeError):
    """A commitment, reveal or signature from a node outside the group."""


class DuplicateCommitment(NodeError):
    """A second commitment from one node: a node commits once."""


class DuplicateReveal(NodeError):
    """A second reveal from one node."""


class MissingCommitment(NodeError):
    """A reveal came while this node had not committed yet: reveals wait for every commitment."""


class MissingReveal(NodeError):
    """The seed was asked for while this node had not revealed: the draw aborts."""


class RevealMismatch(NodeError):
    """This node revealed a secret that does not match its commitment: the draw aborts."""


class MissingSignature(NodeError):
    """A record without this group member's signature."""


class BadGroupSignature(NodeError):
    """A signature in this member's place that is malformed or made by another key."""


class DrawMismatch(RouletteError):
    """A record whose stored outcome is not what re-running it computes."""


class SnapshotMismatch(RouletteError):
    """A host's pool snapshot that is not this archive node's own view of the pool."""


def new_secret() -> bytes:
    """A fresh 32-byte secret from the OS's CSPRNG."""
    return secrets.token_bytes(SECRET_SIZE)


def commitment(secret: bytes, node: bytes, draw_id: bytes) -> bytes:
    """keccak256(secret ‖ node address ‖ draw id)."""
    check_length(secret, SECRET_SIZE, "secret")
    check_length(node, ADDRESS_SIZE, "node address")
    check_length(draw_id, HASH_SIZE, "draw id")
    return keccak(secret + node + draw_id)


def seed_of(reveals: Iterable[bytes]) -> int:
    """(Σ secrets) mod 2²⁵⁶. A sum, so one honest uniform secret makes the seed uniform."""
    return sum(int.from_bytes(secret, "big") for secret in reveals) % _MODULUS


def _group(nodes: Iterable[bytes]) -> tuple[bytes, ...]:
    group = tuple(sorted(nodes))
    if not group:
        raise RouletteError("an archive group has at least one node")
    for node in group:
        check_length(node, ADDRESS_SIZE, "group member")
    strictly_increasing(group, "archive group")
    return group


class CommitReveal:
    """One draw's randomness round among the archive nodes of a group (held by the hosting node)."""

    def __init__(self, draw_id: bytes, group: Iterable[bytes]) -> None:
        check_length(draw_id, HASH_SIZE, "draw id")
        self.draw_id = draw_id
        self.group = _group(group)
        self._commitments: dict[bytes, bytes] = {}
        self._reveals: dict[bytes, bytes] = {}

    def _member(self, node: bytes) -> None:
        if node not in self.group:
            raise UnknownNode(node, "not a member of the archive group")

    @property
    def all_committed(self) -> bool:
        return len(self._commitments) == len(self.group)

    def commit(self, node: bytes, value: bytes) -> None:
        """Record `node`'s commitment (before any reveal is accepted)."""
        self._member(node)
        check_length(value, HASH_SIZE, "commitment")
        if node in self._commitments:
            raise DuplicateCommitment(node, "already committed")
        self._commitments[node] = value

    def reveal(self, node: bytes, secret: bytes) -> None:
        """Accept `node`'s secret: only after every node committed, and only the committed secret."""
        self._member(node)
        check_length(secret, SECRET_SIZE, "secret")
        for member in self.group:
            if member not in self._commitments:
                raise MissingCommitment(member, "has not committed; no reveal is accepted yet")
        if node in self._reveals:
            raise DuplicateReveal(node, "already revealed")
        if commitment(secret, node, self.draw_id) != self._commitments[node]:
            raise RevealMismatch(node, "the reveal does not match its commitment")
        self._reveals[node] = secret

    def commitments(self) -> tuple[bytes, ...]:
        """Every commitment, in group order."""
        for member in self.group:
            if member not in self._commitments:
                raise MissingCommitment(member, "has not committed")
        return tuple(self._commitments[member] for member in self.group)

    def reveals(self) -> tuple[bytes, ...]:
        """Every reveal, in group order; a missing one aborts the draw."""
        self.commitments()
        for member in self.group:
            if member not in self._reveals:
                raise MissingReveal(member, "has not revealed")
        return tuple(self._reveals[member] for member in self.group)

    def seed(self) -> int:
        return seed_of(self.reveals())


def random_word(seed: int, i: int) -> int:
    """The i-th random word of a draw: keccak256(seed ‖ i), both as 32-byte big-endian integers."""
    return int.from_bytes(keccak(seed.to_bytes(32, "big") + i.to_bytes(32, "big")), "big")


def shuffle(items: Sequence[_T], seed: int) -> list[_T]:
    """Fisher-Yates from the back, j = word(i) mod (i+1)."""
    order = list(items)
    for i in range(len(order) - 1, 0, -1):
        j = random_word(seed, i) % (i + 1)
        order[i], order[j] = order[j], order[i]
    return order


@dataclass(frozen=True)
class Slot:
    """Places of one role in a draw: `count` chosen, then `standbys` in reserve."""

    role: int
    count: int
    standbys: int = 0

    def __post_init__(self) -> None:
        check_uint(self.role, "slot role", ROLE_COUNT - 1)
        check_uint(self.count, "slot count", 2**16 - 1)
        check_uint(self.standbys, "slot standbys", 2**16 - 1)


@dataclass(frozen=True)
class Pick:
    """A drawn candidate and the role it serves in."""

    address: bytes
    role: int

    def __post_init__(self) -> None:
        check_length(self.address, ADDRESS_SIZE, "drawn address")
        check_uint(self.role, "drawn role", ROLE_COUNT - 1)


@dataclass(frozen=True)
class DrawResult:
    """What a draw yields: chosen and standbys in shuffled order, and the candidates found ineligible."""

    chosen: tuple[Pick, ...]
    standbys: tuple[Pick, ...]
    ineligible: tuple[bytes, ...]


def _slots(slots: Sequence[Slot]) -> tuple[Slot, ...]:
    roles = [slot.role for slot in slots]
    if len(set(roles)) != len(roles):
        # An encoding error, so a decoder refuses it like any other non-canonical record.
        raise NonCanonicalError("each role has one slot")
    return tuple(slots)


def select(
    candidates: Sequence[Candidate],
    seed: int,
    slots: Sequence[Slot],
    eligible: Eligible,
    excluded: Iterable[bytes] = (),
) -> DrawResult:
    """The draw itself: shuffle `candidates` (PoH order) by `seed` and walk them (see the module doc)."""
    barred = frozenset(excluded)
    open_places = {slot.role: slot.count for slot in _slots(slots)}
    spare_places = {slot.role: slot.standbys for slot in slots}
    remaining = sum(open_places.values()) + sum(spare_places.values())
    chosen: list[Pick] = []
    standbys: list[Pick] = []
    ineligible: list[bytes] = []
    for candidate in shuffle(candidates, seed):
        if remaining == 0:
            break  # no more callbacks: the stake check runs only for candidates that could be placed
        role = candidate.role
        if candidate.address in barred or open_places.get(role, 0) + spare_places.get(role, 0) == 0:
            continue
        if not eligible(candidate.address, role):
            ineligible.append(candidate.address)
            continue
        pick = Pick(candidate.address, role)
        if open_places[role] > 0:
            open_places[role] -= 1
            chosen.append(pick)
        else:
            spare_places[role] -= 1
            standbys.append(pick)
        remaining -= 1
    return DrawResult(chosen=tuple(chosen), standbys=tuple(standbys), ineligible=tuple(ineligible))


def _pick_rlp(pick: Pick) -> RLPItem:
    return [pick.address, uint_bytes(pick.role)]


def _pick_from(item: RLPItem, what: str) -> Pick:
    address, role = rlp_list(item, 2, what)
    return Pick(fixed_bytes(address, ADDRESS_SIZE, what), uint(role, what, ROLE_COUNT - 1))


def _candidate_from(item: RLPItem) -> Candidate:
    address, role, index, digest = rlp_list(item, 4, "snapshot candidate")
    address_ = fixed_bytes(address, ADDRESS_SIZE, "snapshot candidate address")
    role_ = uint(role, "snapshot candidate role", ROLE_COUNT - 1)
    # The stamp's event hash is implied by the candidate (the record leaves it out).
    stamp = PohEntry(
        index=uint(index, "snapshot stamp index", 2**64 - 1),
        hash=fixed_bytes(digest, HASH_SIZE, "snapshot stamp hash"),
        event_hash=event_hash(join_event(address_, role_)),
    )
    return Candidate(address=address_, role=role_, stamp=stamp)


def snapshot_from_rlp(item: RLPItem) -> tuple[Candidate, ...]:
    """The candidate list of a snapshot as `encode_candidates` lays it out (a draw commit carries it)."""
    return tuple(_candidate_from(entry) for entry in list_of(item, "snapshot"))


def snapshot_hash(candidates: Sequence[Candidate]) -> bytes:
    """keccak256(encode_candidates(candidates)): the `snapshot_hash` of a record drawn from them."""
    return keccak(encode_candidates(candidates))


def check_snapshot(candidates: Sequence[Candidate], own: Iterable[Candidate]) -> None:
    """A co-signer's check of the host's snapshot against its own pool, before it commits: the same
    candidates in the same roles (none left out, none added) and listed in the host's PoH stamp order.
    Every candidate waits at every archive node of the group, so an honest host's pool holds what this
    node's holds; stamps are the host's own, so only their order is checkable here. Raises
    `SnapshotMismatch`."""
    previous = -1
    listed: dict[bytes, int] = {}
    for candidate in candidates:
        if candidate.address in listed:
            raise SnapshotMismatch(f"0x{candidate.address.hex()} is listed twice")
        if candidate.stamp.index <= previous:
            raise SnapshotMismatch(f"0x{candidate.address.hex()} is out of PoH order")
        previous = candidate.stamp.index
        listed[candidate.address] = candidate.role
    mine = {candidate.address: candidate.role for candidate in own}
    for address, role in mine.items():
        if address not in listed:
            raise SnapshotMismatch(f"0x{address.hex()} waits in this node's pool but the snapshot leaves it out")
        if listed[address] != role:
            raise SnapshotMismatch(f"0x{address.hex()} waits as role {role}, the snapshot says {listed[address]}")
    for address in listed:
        if address not in mine:
            raise SnapshotMismatch(f"0x{address.hex()} is in the snapshot but not in this node's pool")


@dataclass(frozen=True)
class DrawRecord:
    """Everything a draw used and produced; its `hash` is what the archive group signs."""

    draw_id: bytes
    chain_id: int
    group: tuple[bytes, ...]
    slots: tuple[Slot, ...]
    snapshot_hash: bytes
    snapshot: tuple[Candidate, ...]
    commitments: tuple[bytes, ...]
    reveals: tuple[bytes, ...]
    seed: int
    excluded: tuple[bytes, ...]
    ineligible: tuple[bytes, ...]
    chosen: tuple[Pick, ...]
    standbys: tuple[Pick, ...]

    def __post_init__(self) -> None:
        # Structure only, so one record has one encoding; whether its contents agree is `check`'s job.
        check_length(self.draw_id, HASH_SIZE, "draw id")
        check_uint(self.chain_id, "chain id")
        for node in self.group:
            check_length(node, ADDRESS_SIZE, "group member")
        strictly_increasing(self.group, "archive group")
        _slots(self.slots)
        check_length(self.snapshot_hash, HASH_SIZE, "snapshot hash")
        if len(self.commitments) != len(self.group) or len(self.reveals) != len(self.group):
            raise NonCanonicalError("a record has one commitment and one reveal per group member")
        for value in self.commitments:
            check_length(value, HASH_SIZE, "commitment")
        for secret in self.reveals:
            check_length(secret, SECRET_SIZE, "reveal")
        check_uint(self.seed, "seed", MAX_UINT256)
        for address in (*self.excluded, *self.ineligible):
            check_length(address, ADDRESS_SIZE, "excluded or ineligible address")
        strictly_increasing(self.excluded, "excluded addresses")

    def encode(self) -> bytes:
        """The canonical RLP encoding (docs/dle-roulette.md)."""
        return encode_rlp(
            [
                self.draw_id,
                uint_bytes(self.chain_id),
                list(self.group),
                [[uint_bytes(slot.role), uint_bytes(slot.count), uint_bytes(slot.standbys)] for slot in self.slots],
                self.snapshot_hash,
                [candidate.to_rlp() for candidate in self.snapshot],
                list(self.commitments),
                list(self.reveals),
                uint_bytes(self.seed),
                list(self.excluded),
                list(self.ineligible),
                [_pick_rlp(pick) for pick in self.chosen],
                [_pick_rlp(pick) for pick in self.standbys],
            ]
        )

    @property
    def hash(self) -> bytes:
        """keccak256 of the encoding: what every archive node of the group signs."""
        return keccak(self.encode())

    @classmethod
    def decode(cls, data: bytes) -> DrawRecord:
        """The record `encode` made; any other bytes raise an `EncodingError`."""
        fields = rlp_list(decode_rlp(data), 13, "draw record")
        (draw_id, chain_id, group, slots, snapshot_hash, snapshot, commitments, reveals, seed) = fields[:9]
        excluded, ineligible, chosen, standbys = fields[9:]
        return cls(
            draw_id=fixed_bytes(draw_id, HASH_SIZE, "draw id"),
            chain_id=uint(chain_id, "chain id"),
            group=tuple(fixed_bytes(node, ADDRESS_SIZE, "group member") for node in list_of(group, "group")),
            slots=tuple(
                Slot(*(uint(value, "slot field", 2**16 - 1) for value in rlp_list(slot, 3, "slot")))
                for slot in list_of(slots, "slots")
            ),
            snapshot_hash=fixed_bytes(snapshot_hash, HASH_SIZE, "snapshot hash"),
            snapshot=snapshot_from_rlp(snapshot),
            commitments=tuple(fixed_bytes(c, HASH_SIZE, "commitment") for c in list_of(commitments, "commitments")),
            reveals=tuple(fixed_bytes(r, SECRET_SIZE, "reveal") for r in list_of(reveals, "reveals")),
            seed=uint(seed, "seed"),
            excluded=tuple(fixed_bytes(a, ADDRESS_SIZE, "excluded") for a in list_of(excluded, "excluded")),
            ineligible=tuple(fixed_bytes(a, ADDRESS_SIZE, "ineligible") for a in list_of(ineligible, "ineligible")),
            chosen=tuple(_pick_from(item, "chosen") for item in list_of(chosen, "chosen")),
            standbys=tuple(_pick_from(item, "standby") for item in list_of(standbys, "standbys")),
        )


def draw(
    *,
    chain_id: int,
    randomness: CommitReveal,
    snapshot: PoolSnapshot,
    slots: Sequence[Slot],
    eligible: Eligible,
    excluded: Iterable[bytes] = (),
) -> DrawRecord:
    """Run a draw once every reveal is in (a missing one raises `MissingReveal` naming the node)."""
    reveals = randomness.reveals()
    seed = seed_of(reveals)
    barred = tuple(sorted(set(excluded)))
    result = select(snapshot.candidates, seed, slots, eligible, barred)
    return DrawRecord(
        draw_id=randomness.draw_id,
        chain_id=chain_id,
        group=randomness.group,
        slots=tuple(slots),
        snapshot_hash=snapshot.hash,
        snapshot=snapshot.candidates,
        commitments=randomness.commitments(),
        reveals=reveals,
        seed=seed,
        excluded=barred,
        ineligible=result.ineligible,
        chosen=result.chosen,
        standbys=result.standbys,
    )


def rerun(record: DrawRecord) -> DrawResult:
    """Re-run the draw from the record alone: check the snapshot hash, every reveal against its
    commitment and the seed, then shuffle and walk again, taking the recorded ineligible candidates as
    the ones the stake check rejected. Raises `RevealMismatch` naming a node, or `DrawMismatch`."""
    if keccak(encode_candidates(record.snapshot)) != record.snapshot_hash:
        raise DrawMismatch("the snapshot does not hash to the recorded snapshot hash")
    for node, value, secret in zip(record.group, record.commitments, record.reveals, strict=True):
        if commitment(secret, node, record.draw_id) != value:
            raise RevealMismatch(node, "the recorded reveal does not match its commitment")
    seed = seed_of(record.reveals)
    if seed != record.seed:
        raise DrawMismatch("the recorded seed is not the sum of the reveals")
    rejected = frozenset(record.ineligible)
    return select(record.snapshot, seed, record.slots, lambda address, _role: address not in rejected, record.excluded)


def check(record: DrawRecord) -> None:
    """`rerun` and compare with the recorded outcome (chosen, standbys and the ineligible in walk order:
    an ineligible entry the walk never reached is padding, and refused)."""
    result = rerun(record)
    if result.chosen != record.chosen:
        raise DrawMismatch("re-running the draw chooses other candidates")
    if result.standbys != record.standbys:
        raise DrawMismatch("re-running the draw yields other standbys")
    if result.ineligible != record.ineligible:
        raise DrawMismatch("the recorded ineligible candidates are not the ones the walk reaches")


def sign_record(record: DrawRecord, private_key: bytes) -> bytes:
    """A group member's 65-byte signature (r ‖ s ‖ v, dle_vm.signature) over the record hash."""
    return sign(private_key, record.hash)


def verify_signatures(record: DrawRecord, signatures: Mapping[bytes, bytes] | Sequence[bytes]) -> None:
    """Demand a valid signature of every group member over the record hash (100% of the group).
    `signatures` is by member address, or a sequence in group order."""
    by_member = (
        dict(signatures) if isinstance(signatures, Mapping) else dict(zip(record.group, signatures, strict=False))
    )
    for node in by_member:
        if node not in record.group:
            raise UnknownNode(node, "signed but is not a member of the archive group")
    digest = record.hash
    for node in record.group:
        signature = by_member.get(node)
        if signature is None:
            raise MissingSignature(node, "has not signed the draw record")
        try:
            signer = recover(digest, signature)
        except BadSignature as error:
            raise BadGroupSignature(node, f"malformed signature: {error}") from error
        if signer != node:
            raise BadGroupSignature(node, f"the signature is by 0x{signer.hex()}")
