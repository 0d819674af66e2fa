"""Who keeps a DLE chain: its archive group, creator, witnesses and validator roster, and how that changes.

A `ChainRoles` is signed by every archive node of the chain's group (`RolesRecord`); members act only on
the record with the highest version they have seen, so a creator that was replaced can no longer get a
block signed (DESIGN §5, "the same balance spent through two creators").

    roles = rlp([chain (32 bytes), group, version, creator, [witness, ...], [validator, ...],
                 [excluded, ...], draw_hash (32 bytes), cbdc (20 bytes)])

Every member signature of a block binds the roles version and the signer's stake role in this set
(`stake_role`: the note's CBDC creating its chain serves with its CBDC stake, a witness — or a promoted
witness creating — with its witness stake, the validator with its validator stake), so the mainchain
slashes the role the signature shows, and a height re-signed under a newer version is no equivocation.

The validator of a block is drawn from the roster by the parent block's hash, which nobody knows before
the parent is final: validator(parent) = roster[int(keccak256(chain ‖ parent_hash)) mod len(roster)].

The rules of change (DESIGN §5), each a pure function here:
- creator timeout: the first witness becomes creator; the last block's validator takes its witness place;
- witness timeout: the witness is removed; the last block's validator takes its place;
- dissolution (a refusal, an invalid signature, two blocks at one height, an archive node's rejection):
  every witness and validator is replaced by a fresh draw that excludes all of them; the creator stays
  unless it is the offender, then the first new witness becomes creator and a drawn standby witness
  fills its place.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from dle_vm.encoding import (
    RLPItem,
    check_length,
    decode_rlp,
    encode_rlp,
    fixed_bytes,
    list_of,
    rlp_list,
    uint,
    uint_bytes,
)
from dle_vm.hashing import keccak
from dle_vm.signature import BadSignature, recover
from offchain.dle.digests import archive_roles_digest

__all__ = [
    "ROLE_CBDC",
    "ROLE_VALIDATOR",
    "ROLE_WITNESS",
    "WITNESS_COUNT",
    "ArchiveGroup",
    "ChainRoles",
    "DecodedRecords",
    "RolesError",
    "RolesRecord",
    "certificate_signers",
    "join_certificate",
    "split_certificate",
]

WITNESS_COUNT = 5
ROLE_CBDC = 0
"""contracts/types/Role.sol: the stake roles a member signs a block in."""
ROLE_WITNESS = 2
ROLE_VALIDATOR = 3
ADDRESS_SIZE = 20
SIGNATURE_SIZE = 65


class RolesError(ValueError):
    """A role set or its certificate that does not hold."""


@dataclass(frozen=True)
class ArchiveGroup:
    """One epoch of an archive group as the mainchain's DleRegistry records it."""

    group: int
    epoch: int
    members: tuple[bytes, ...]
    """Sorted ascending: the order of the signatures in a group certificate."""

    def __post_init__(self) -> None:
        if list(self.members) != sorted(set(self.members)) or not self.members:
            raise RolesError("archive group members must be distinct, non-empty and sorted")

    def host_of(self, chain: bytes) -> bytes:
        """The member that coordinates `chain`'s draws and role changes."""
        return self.members[int.from_bytes(chain, "big") % len(self.members)]

    def verify(self, digest: bytes, certificate: bytes) -> None:
        """Demand the signature of every member, and only members, in ascending order over `digest`."""
        signers = certificate_signers(digest, certificate)
        if signers != self.members:
            raise RolesError(
                f"certificate signed by {[f'0x{s.hex()}' for s in signers]}, "
                f"not by archive group {self.group} epoch {self.epoch}"
            )


def split_certificate(certificate: bytes) -> list[bytes]:
    if len(certificate) % SIGNATURE_SIZE:
        raise RolesError(f"a certificate is 65-byte signatures; {len(certificate)} bytes is not")
    return [certificate[i : i + SIGNATURE_SIZE] for i in range(0, len(certificate), SIGNATURE_SIZE)]


def certificate_signers(digest: bytes, certificate: bytes) -> tuple[bytes, ...]:
    """The signers of a certificate, in its order; raises on a malformed signature."""
    try:
        return tuple(recover(digest, signature) for signature in split_certificate(certificate))
    except BadSignature as error:
        raise RolesError(f"malformed certificate signature: {error}") from error


def join_certificate(signatures: dict[bytes, bytes]) -> bytes:
    """Signatures by signer → the certificate (ascending signer order, concatenated)."""
    return b"".join(signatures[signer] for signer in sorted(signatures))


def _addresses(item: RLPItem, what: str) -> tuple[bytes, ...]:
    return tuple(fixed_bytes(a, ADDRESS_SIZE, what) for a in list_of(item, what))


@dataclass(frozen=True)
class ChainRoles:
    """The members of one chain from some version on."""

    chain: bytes
    group: int
    version: int
    creator: bytes
    witnesses: tuple[bytes, ...]
    validators: tuple[bytes, ...]
    excluded: tuple[bytes, ...] = ()
    """Members of dissolved groups: never drawn for this chain again."""
    draw_hash: bytes = bytes(32)
    """The Selection Chain record of the draw that produced the current witnesses and roster."""
    cbdc: bytes = bytes(20)
    """The note's CBDC (the genesis creator): while it creates, it serves with its CBDC stake."""

    def __post_init__(self) -> None:
        check_length(self.chain, 32, "roles chain")
        check_length(self.draw_hash, 32, "roles draw hash")
        check_length(self.cbdc, ADDRESS_SIZE, "roles cbdc")
        if len(self.witnesses) != WITNESS_COUNT:
            raise RolesError(f"a chain has {WITNESS_COUNT} witnesses, not {len(self.witnesses)}")
        if not self.validators:
            raise RolesError("a chain needs at least one validator in its roster")
        serving = (self.creator, *self.witnesses)
        if len(set(serving)) != len(serving) or set(serving) & set(self.validators):
            raise RolesError("creator, witnesses and validators must be distinct")
        for address in (*serving, *self.validators, *self.excluded):
            check_length(address, ADDRESS_SIZE, "role address")

    def encode(self) -> bytes:
        return encode_rlp(
            [
                self.chain,
                uint_bytes(self.group),
                uint_bytes(self.version),
                self.creator,
                list(self.witnesses),
                list(self.validators),
                list(self.excluded),
                self.draw_hash,
                self.cbdc,
            ]
        )

    @classmethod
    def decode(cls, data: bytes) -> ChainRoles:
        chain, group, version, creator, witnesses, validators, excluded, draw_hash, cbdc = rlp_list(
            decode_rlp(data), 9, "roles"
        )
        return cls(
            chain=fixed_bytes(chain, 32, "roles chain"),
            group=uint(group, "roles group"),
            version=uint(version, "roles version"),
            creator=fixed_bytes(creator, ADDRESS_SIZE, "roles creator"),
            witnesses=_addresses(witnesses, "roles witnesses"),
            validators=_addresses(validators, "roles validators"),
            excluded=_addresses(excluded, "roles excluded"),
            draw_hash=fixed_bytes(draw_hash, 32, "roles draw hash"),
            cbdc=fixed_bytes(cbdc, ADDRESS_SIZE, "roles cbdc"),
        )

    @property
    def digest(self) -> bytes:
        return archive_roles_digest(self.encode())

    def validator_for(self, parent_hash: bytes) -> bytes:
        index = int.from_bytes(keccak(self.chain + parent_hash), "big") % len(self.validators)
        return self.validators[index]

    def signers_for(self, parent_hash: bytes) -> tuple[bytes, ...]:
        """Who must sign the block after `parent_hash`, in the block's signature order."""
        return (self.creator, *self.witnesses, self.validator_for(parent_hash))

    def stake_role(self, member: bytes) -> int:
        """The stake `member` serves with in this set, which its block signatures bind: the validator
        roster its VALIDATOR stake, the creator its CBDC stake when it is the note's CBDC, every other
        creator (a promoted witness) and witness its WITNESS stake. RolesError for a non-member."""
        if member in self.validators:
            return ROLE_VALIDATOR
        if member == self.creator:
            return ROLE_CBDC if member == self.cbdc else ROLE_WITNESS
        if member in self.witnesses:
            return ROLE_WITNESS
        raise RolesError(f"0x{member.hex()} is no member of roles version {self.version}")

    def members(self) -> frozenset[bytes]:
        return frozenset((self.creator, *self.witnesses, *self.validators))

    # -- the rules of change ----------------------------------------------------------------------

    def _promote(self, last_validator: bytes) -> tuple[bytes, ...]:
        roster = tuple(v for v in self.validators if v != last_validator)
        if not roster:
            raise RolesError("the roster would be empty: a draw must refill it first")
        return roster

    def after_creator_timeout(self, last_validator: bytes) -> ChainRoles:
        """The first witness creates; the last block's validator takes the first witness place."""
        witnesses = (last_validator, *self.witnesses[1:])
        return replace(
            self,
            version=self.version + 1,
            creator=self.witnesses[0],
            witnesses=witnesses,
            validators=self._promote(last_validator),
            excluded=tuple(sorted({*self.excluded, self.creator})),
        )

    def after_witness_timeout(self, witness: bytes, last_validator: bytes) -> ChainRoles:
        """`witness` is removed; the last block's validator takes its place."""
        if witness not in self.witnesses:
            raise RolesError(f"0x{witness.hex()} is not a witness of this chain")
        witnesses = tuple(last_validator if w == witness else w for w in self.witnesses)
        return replace(
            self,
            version=self.version + 1,
            witnesses=witnesses,
            validators=self._promote(last_validator),
            excluded=tuple(sorted({*self.excluded, witness})),
        )

    def dissolved(
        self, witnesses: Sequence[bytes], validators: Sequence[bytes], offender: bytes | None, draw_hash: bytes
    ) -> ChainRoles:
        """A new group from a draw that excluded every old witness and validator (and the offender)."""
        old = {*self.witnesses, *self.validators}
        if offender is not None:
            old.add(offender)
        creator = self.creator
        drawn = list(witnesses)
        if offender == self.creator:
            # The first drawn witness creates; the draw supplies one witness more for its place.
            creator = drawn.pop(0)
        return replace(
            self,
            version=self.version + 1,
            creator=creator,
            witnesses=tuple(drawn),
            validators=tuple(validators),
            excluded=tuple(sorted({*self.excluded, *old})),
            draw_hash=draw_hash,
        )

    def with_roster(self, validators: Iterable[bytes]) -> ChainRoles:
        """The roster refilled by a draw (when promotions emptied it)."""
        return replace(self, version=self.version + 1, validators=tuple(validators))


@dataclass(frozen=True)
class RolesRecord:
    """A role set with the certificate of its archive group (every member's signature)."""

    roles: ChainRoles
    certificate: bytes

    def verify(self, group: ArchiveGroup) -> None:
        if group.group != self.roles.group:
            raise RolesError(f"roles of group {self.roles.group} checked against group {group.group}")
        group.verify(self.roles.digest, self.certificate)

    def encode(self) -> bytes:
        return encode_rlp([self.roles.encode(), self.certificate])

    @classmethod
    def decode(cls, data: bytes) -> RolesRecord:
        roles, certificate = rlp_list(decode_rlp(data), 2, "roles record")
        if not isinstance(roles, bytes) or not isinstance(certificate, bytes):
            raise RolesError("a roles record is [roles, certificate]")
        return cls(ChainRoles.decode(roles), certificate)


class DecodedRecords:
    """Roles records decoded by their exact bytes, for one node.

    A node reads a chain's roles from its store several times per block (each request checks them
    afresh); decoding is a pure function of the bytes and a record is immutable, so a repeat is
    answered from memory. Bytes never seen are decoded (and refused if malformed) as always."""

    def __init__(self, kept: int = 4096) -> None:
        self._kept = kept
        self._records: dict[bytes, RolesRecord] = {}

    def decode(self, data: bytes) -> RolesRecord:
        record = self._records.get(data)
        if record is None:
            record = RolesRecord.decode(data)
            if len(self._records) >= self._kept:
                del self._records[next(iter(self._records))]
            self._records[data] = record
        return record
