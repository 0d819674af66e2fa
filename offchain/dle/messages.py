"""The messages DLE nodes exchange, each one RLP list with one encoding (docs/protocols.md, "DLE consensus").

Every message travels as the body of one transport call (`offchain/dle/transport.py`); the method name
says which message it is. Authentication is by the signatures inside (block signatures, archive
certificates), never by the transport: a message relayed by anyone is judged on what it carries.
"""

from __future__ import annotations

from dataclasses import dataclass

from dle_vm.block import Block, Header
from dle_vm.encoding import (
    EncodingError,
    RLPItem,
    decode_rlp,
    encode_rlp,
    fixed_bytes,
    list_of,
    raw_bytes,
    rlp_list,
    uint,
    uint_bytes,
)
from dle_vm.engine import Log, Receipt
from dle_vm.state import State
from dle_vm.transaction import Transaction
from offchain.dle.roles import RolesRecord

__all__ = [
    "Acceptance",
    "ChainDump",
    "Commit",
    "Evidence",
    "ExitRequest",
    "ExitSignature",
    "Final",
    "Outcome",
    "Proposal",
    "Rejection",
    "Submit",
    "TimeoutReport",
    "Validation",
    "Vote",
]

ADDRESS = 20
HASH = 32
SIGNATURE = 65


def _bytes(item: RLPItem, what: str) -> bytes:
    return raw_bytes(item, what)


def _block(item: RLPItem) -> Block:
    return Block.decode(_bytes(item, "block"))


@dataclass(frozen=True)
class Submit:
    """A client's transactions for one chain (method `submit`, to the chain's creator)."""

    chain: bytes
    transactions: tuple[Transaction, ...]

    def encode(self) -> bytes:
        return encode_rlp([self.chain, [tx.to_rlp() for tx in self.transactions]])

    @classmethod
    def decode(cls, data: bytes) -> Submit:
        chain, txs = rlp_list(decode_rlp(data), 2, "submit")
        return cls(fixed_bytes(chain, HASH, "chain"), tuple(Transaction.from_rlp(t) for t in list_of(txs, "txs")))


def _receipt_rlp(receipt: Receipt) -> RLPItem:
    logs: list[RLPItem] = [[log.address, list(log.topics), log.data] for log in receipt.logs]
    return [b"\x01" if receipt.success else b"", uint_bytes(receipt.gas_used), receipt.output, logs]


def _receipt_from(item: RLPItem) -> Receipt:
    success, gas, output, logs = rlp_list(item, 4, "receipt")
    return Receipt(
        success=_bytes(success, "success") == b"\x01",
        gas_used=uint(gas, "gas used"),
        output=_bytes(output, "output"),
        logs=tuple(
            Log(
                address=fixed_bytes(address, ADDRESS, "log address"),
                topics=tuple(fixed_bytes(t, HASH, "topic") for t in list_of(topics, "topics")),
                data=_bytes(data, "log data"),
            )
            for address, topics, data in (rlp_list(log, 3, "log") for log in list_of(logs, "logs"))
        ),
    )


@dataclass(frozen=True)
class Outcome:
    """What `submit` answers once the block holding the transactions is final: the block, the archive
    certificate, one receipt per submitted transaction (in submission order), and for each exit in the
    block the archive group's certificate over its ExitCertificate digest."""

    block: Block
    certificate: bytes
    receipts: tuple[Receipt, ...]
    exit_certificates: tuple[bytes, ...]

    def encode(self) -> bytes:
        return encode_rlp(
            [
                self.block.encode(),
                self.certificate,
                [_receipt_rlp(r) for r in self.receipts],
                list(self.exit_certificates),
            ]
        )

    @classmethod
    def decode(cls, data: bytes) -> Outcome:
        block, certificate, receipts, exits = rlp_list(decode_rlp(data), 4, "outcome")
        return cls(
            _block(block),
            _bytes(certificate, "certificate"),
            tuple(_receipt_from(r) for r in list_of(receipts, "receipts")),
            tuple(_bytes(e, "exit certificate") for e in list_of(exits, "exit certificates")),
        )


@dataclass(frozen=True)
class Proposal:
    """A block signed by its creator, for a witness to re-execute and sign (method `propose`)."""

    roles_version: int
    block: Block

    def encode(self) -> bytes:
        return encode_rlp([uint_bytes(self.roles_version), self.block.encode()])

    @classmethod
    def decode(cls, data: bytes) -> Proposal:
        version, block = rlp_list(decode_rlp(data), 2, "proposal")
        return cls(uint(version, "roles version"), _block(block))


@dataclass(frozen=True)
class Validation:
    """What a stateless validator needs (method `validate`): the proposal, the final parent with its
    archive certificate, the pre-state, and the chain's current roles record."""

    block: Block
    parent: Block
    parent_certificate: bytes
    pre_state: State
    roles: RolesRecord

    def encode(self) -> bytes:
        return encode_rlp(
            [
                self.block.encode(),
                self.parent.encode(),
                self.parent_certificate,
                self.pre_state.encode(),
                self.roles.encode(),
            ]
        )

    @classmethod
    def decode(cls, data: bytes) -> Validation:
        block, parent, certificate, state, roles = rlp_list(decode_rlp(data), 5, "validation")
        return cls(
            _block(block),
            _block(parent),
            _bytes(certificate, "parent certificate"),
            State.decode(_bytes(state, "pre-state")),
            RolesRecord.decode(_bytes(roles, "roles")),
        )


@dataclass(frozen=True)
class Vote:
    """A member's answer: the header it signed and its signature over that header's block digest. An
    honest member signs exactly the proposed header; a different one is evidence against it."""

    header: Header
    signature: bytes

    def encode(self) -> bytes:
        return encode_rlp([self.header.encode(), self.signature])

    @classmethod
    def decode(cls, data: bytes) -> Vote:
        header, signature = rlp_list(decode_rlp(data), 2, "vote")
        return cls(Header.decode(_bytes(header, "header")), fixed_bytes(signature, SIGNATURE, "signature"))


@dataclass(frozen=True)
class Commit:
    """A block with every member's signature, for the archive group's check (method `accept`)."""

    block: Block

    def encode(self) -> bytes:
        return self.block.encode()

    @classmethod
    def decode(cls, data: bytes) -> Commit:
        return cls(Block.decode(data))


@dataclass(frozen=True)
class Acceptance:
    """An archive node's signature over the block digest, its signatures over the block's exit
    certificates, and the Proof-of-History tick at which it stamped the block."""

    signature: bytes
    exit_signatures: tuple[bytes, ...]
    poh_tick: int

    def encode(self) -> bytes:
        return encode_rlp([self.signature, list(self.exit_signatures), uint_bytes(self.poh_tick)])

    @classmethod
    def decode(cls, data: bytes) -> Acceptance:
        signature, exits, tick = rlp_list(decode_rlp(data), 3, "acceptance")
        return cls(
            fixed_bytes(signature, SIGNATURE, "signature"),
            tuple(fixed_bytes(e, SIGNATURE, "exit signature") for e in list_of(exits, "exit signatures")),
            uint(tick, "poh tick"),
        )


@dataclass(frozen=True)
class Rejection:
    """An archive node's signed refusal of a block (its quality check failed): grounds to dissolve."""

    block_hash: bytes
    reason: str
    signature: bytes

    @staticmethod
    def digest(block_hash: bytes) -> bytes:
        from dle_vm.hashing import keccak

        return keccak(b"CoNET DLE rejection\x00" + block_hash)

    def encode(self) -> bytes:
        return encode_rlp([self.block_hash, self.reason.encode(), self.signature])

    @classmethod
    def decode(cls, data: bytes) -> Rejection:
        block_hash, reason, signature = rlp_list(decode_rlp(data), 3, "rejection")
        return cls(
            fixed_bytes(block_hash, HASH, "block hash"),
            _bytes(reason, "reason").decode("utf-8", "replace"),
            fixed_bytes(signature, SIGNATURE, "signature"),
        )


@dataclass(frozen=True)
class Final:
    """A final block and its archive certificate (method `final`, to every member and archive node)."""

    block: Block
    certificate: bytes

    def encode(self) -> bytes:
        return encode_rlp([self.block.encode(), self.certificate])

    @classmethod
    def decode(cls, data: bytes) -> Final:
        block, certificate = rlp_list(decode_rlp(data), 2, "final")
        return cls(_block(block), _bytes(certificate, "certificate"))


@dataclass(frozen=True)
class TimeoutReport:
    """A member that did not answer (method `report_timeout`, to the chain's host archive node)."""

    chain: bytes
    roles_version: int
    member: bytes

    def encode(self) -> bytes:
        return encode_rlp([self.chain, uint_bytes(self.roles_version), self.member])

    @classmethod
    def decode(cls, data: bytes) -> TimeoutReport:
        chain, version, member = rlp_list(decode_rlp(data), 3, "timeout report")
        return cls(fixed_bytes(chain, HASH, "chain"), uint(version, "version"), fixed_bytes(member, ADDRESS, "member"))


@dataclass(frozen=True)
class ExitRequest:
    """A participant asks an archive node for its signature over exit `nonce` of `chain` (method
    `exit_certificate`): the mainchain pays a chain's exits in order, so whoever holds a later exit
    may need an earlier one, certified, to pay it first."""

    chain: bytes
    nonce: int

    def encode(self) -> bytes:
        return encode_rlp([self.chain, uint_bytes(self.nonce)])

    @classmethod
    def decode(cls, data: bytes) -> ExitRequest:
        chain, nonce = rlp_list(decode_rlp(data), 2, "exit request")
        return cls(fixed_bytes(chain, HASH, "chain"), uint(nonce, "nonce"))


@dataclass(frozen=True)
class ExitSignature:
    """An archive node's answer to an `ExitRequest`: the certificate as its final head records it
    (`abi.encode`, the `Exited` log data) and its signature over the certificate's exit digest."""

    certificate: bytes
    signature: bytes

    def encode(self) -> bytes:
        return encode_rlp([self.certificate, self.signature])

    @classmethod
    def decode(cls, data: bytes) -> ExitSignature:
        certificate, signature = rlp_list(decode_rlp(data), 2, "exit signature")
        return cls(_bytes(certificate, "certificate"), fixed_bytes(signature, SIGNATURE, "signature"))


REFUSED = 1
"""Evidence kind: `member` refused to sign `block` (FaultReport kind 1 if the block is valid)."""
WRONG_VOTE = 2
"""Evidence kind: `member` signed `other` (a different header) for `block` (kind 2 if `other` is invalid)."""
EQUIVOCATION = 3
"""Evidence kind: the creator signed `block` and `other`, two different headers at one height."""
REJECTED = 4
"""Evidence kind: archive node `member` rejected `block` (`rejection` holds its signed refusal)."""


@dataclass(frozen=True)
class Evidence:
    """What a member sends the host archive node when consensus failed (method `report_fault`)."""

    kind: int
    roles_version: int
    member: bytes
    block: Block
    other: Header | None = None
    other_signature: bytes = b""
    reason: str = ""
    rejection: Rejection | None = None

    def encode(self) -> bytes:
        return encode_rlp(
            [
                uint_bytes(self.kind),
                uint_bytes(self.roles_version),
                self.member,
                self.block.encode(),
                self.other.encode() if self.other else b"",
                self.other_signature,
                self.reason.encode(),
                self.rejection.encode() if self.rejection else b"",
            ]
        )

    @classmethod
    def decode(cls, data: bytes) -> Evidence:
        kind, version, member, block, other, other_sig, reason, rejection = rlp_list(decode_rlp(data), 8, "evidence")
        other_bytes = _bytes(other, "other header")
        rejection_bytes = _bytes(rejection, "rejection")
        evidence = cls(
            kind=uint(kind, "kind", 255),
            roles_version=uint(version, "roles version"),
            member=fixed_bytes(member, ADDRESS, "member"),
            block=_block(block),
            other=Header.decode(other_bytes) if other_bytes else None,
            other_signature=_bytes(other_sig, "other signature"),
            reason=_bytes(reason, "reason").decode("utf-8", "replace"),
            rejection=Rejection.decode(rejection_bytes) if rejection_bytes else None,
        )
        if evidence.kind not in (REFUSED, WRONG_VOTE, EQUIVOCATION, REJECTED):
            raise EncodingError(f"unknown evidence kind {evidence.kind}")
        return evidence


@dataclass(frozen=True)
class ChainDump:
    """A chain from some height on, with its current roles (method `chain`, for a member catching up)."""

    blocks: tuple[tuple[Block, bytes, State], ...]
    roles: RolesRecord

    def encode(self) -> bytes:
        return encode_rlp([[[b.encode(), c, s.encode()] for b, c, s in self.blocks], self.roles.encode()])

    @classmethod
    def decode(cls, data: bytes) -> ChainDump:
        blocks, roles = rlp_list(decode_rlp(data), 2, "chain dump")
        entries = []
        for item in list_of(blocks, "blocks"):
            block, certificate, state = rlp_list(item, 3, "chain entry")
            entries.append((_block(block), _bytes(certificate, "certificate"), State.decode(_bytes(state, "state"))))
        return cls(tuple(entries), RolesRecord.decode(_bytes(roles, "roles")))
