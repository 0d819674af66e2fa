"""The DLE's mainchain client: what archive nodes and holders do on DleRegistry and CoNETCash.

`DleChainClient` registers chains on their genesis certificate, submits exit certificates, reports
equivocations and certified faults, refreshes archive-group epochs and reads epochs and chain records.
It uses plain web3.py and signs with a local key (the DLE services are separate light processes).

Every transaction is checked first in Python against what the contract would refuse — the same checks
in the same order, raising `ContractRevert` with the contract's own error name and arguments — because
a node need not return the revert data of a failed call; a refusal that still reaches the node is
decoded into the same exception. The EIP-712 digests the DLE signs are computed in pure Python
(`Digests`); the client's `*_digest` methods ask the contracts for the same values, so a test can hold
the two equal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from functools import cached_property
from typing import Any

import sha3
from eth_abi.abi import encode
from eth_keys.datatypes import Signature
from eth_keys.exceptions import BadSignature
from eth_utils.crypto import keccak
from web3 import Web3
from web3.contract import Contract

from offchain.chain.deployer import Role
from offchain.chain.web3_contracts import (
    DEFAULT_RECEIPT_TIMEOUT,
    ContractRevert,
    DeploymentClient,
    events_of,
    load_contract,
)

SIGNATURE_LENGTH = 65
MAX_GROUP_SIZE = 64
"""DleRegistry.MAX_GROUP_SIZE: more signatures than this are never an epoch's."""
_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_LIVE = 2  # CoNETCash.Status.Live

_DOMAIN_TYPE = b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
_GENESIS_TYPE = b"ChainGenesis(bytes32 chain,bytes32 genesisHash,address asset,uint256 assetId,uint256 group)"
_BLOCK_TYPE = b"BlockSignature(bytes32 chain,uint256 height,uint256 rolesVersion,uint8 role,bytes32 headerHash)"
_REFUSAL_TYPE = b"Refusal(bytes32 chain,uint256 height,uint256 rolesVersion,uint8 role,bytes32 headerHash)"
_CERTIFICATE_TYPE = b"BlockCertificate(bytes32 chain,uint256 height,bytes32 headerHash)"
_CBDC_DRAW_TYPE = b"CbdcDraw(uint256 id,address cbdc,bytes32 selection,uint256 group)"
_EXIT_TYPE = (
    b"ExitCertificate(uint256 note,bytes32 chain,uint256 height,address holder,address receiver,"
    b"uint256 amount,uint256 nonce,bytes32 exitedBefore)"
)
_FAULT_TYPE = (
    b"FaultReport(bytes32 chain,uint256 height,uint256 rolesVersion,address offender,uint8 role,uint8 kind,"
    b"bytes32 headerHash,bytes32 evidenceHash,address reporter)"
)


class FaultKind(IntEnum):
    """DleRegistry's FaultReport.kind."""

    REFUSED_VALID_BLOCK = 1
    SIGNED_INVALID_BLOCK = 2


@dataclass(frozen=True)
class ExitCertificate:
    """CertifiedExits.ExitCertificate: an exit finalized on DLE chain `chain` (a CoNETCash note chain, or
    an OdexVault receipt chain with `note` = the receipt id), certified by its archive group."""

    note: int
    chain: bytes
    height: int
    holder: str
    receiver: str
    amount: int
    nonce: int
    exited_before: bytes = bytes(32)
    """The head of the chain's exit history before this exit (zero for the first): the mainchain pays
    a chain's exits in nonce order and only along one history (CertifiedExits.exitHistoryOf)."""

    def as_tuple(self) -> tuple[Any, ...]:
        return (
            self.note,
            self.chain,
            self.height,
            self.holder,
            self.receiver,
            self.amount,
            self.nonce,
            self.exited_before,
        )

    @property
    def struct_hash(self) -> bytes:
        """The certificate's EIP-712 struct hash (the same in every paying contract's domain)."""
        return _exit_struct_hash(self)

    @property
    def exited_after(self) -> bytes:
        """The history's head once this exit is paid: the next exit's `exited_before`."""
        return exit_history_head(self.struct_hash)


def offence_key(chain: bytes, height: int, roles_version: int, signer: str) -> bytes:
    """DleRegistry.offenceKey: the evidence hash Staking records for an offence of `signer` at `height`
    of `chain` under roles version `roles_version` — the same for an equivocation and a certified fault,
    so one offence is slashed once."""
    return keccak(encode(["bytes32", "uint256", "uint256", "address"], [chain, height, roles_version, signer]))


@dataclass(frozen=True)
class SignedBlock:
    """DleRegistry.SignedBlock: `signature` is a member's BlockSignature of `header_hash` at `height` of
    `chain`, under roles version `roles_version`, in `role`."""

    chain: bytes
    height: int
    roles_version: int
    role: Role
    header_hash: bytes
    signature: bytes

    def as_tuple(self) -> tuple[Any, ...]:
        return (self.chain, self.height, self.roles_version, int(self.role), self.header_hash, self.signature)


@dataclass(frozen=True)
class FaultReport:
    """DleRegistry.FaultReport: the archive group's finding that `offender`, in `role` under roles version
    `roles_version`, committed fault `kind` on block `header_hash` at `height` of `chain`."""

    chain: bytes
    height: int
    roles_version: int
    offender: str
    role: Role
    kind: int
    header_hash: bytes
    """The block refused (REFUSED_VALID_BLOCK) or signed (SIGNED_INVALID_BLOCK)."""
    evidence_hash: bytes
    """keccak256 of the off-chain evidence bundle the group judged."""
    reporter: str
    """Receives the reporter's reward."""

    def as_tuple(self) -> tuple[Any, ...]:
        return (
            self.chain,
            self.height,
            self.roles_version,
            self.offender,
            int(self.role),
            int(self.kind),
            self.header_hash,
            self.evidence_hash,
            self.reporter,
        )

    @property
    def evidence_key(self) -> bytes:
        """The evidence hash Staking records: one offence per chain, height, roles version and offender."""
        return offence_key(self.chain, self.height, self.roles_version, self.offender)


@dataclass(frozen=True)
class ChainRecord:
    """DleRegistry.ChainRecord."""

    chain: bytes
    genesis_hash: bytes
    asset: str
    group: int
    registered_at: int
    asset_id: int


@dataclass(frozen=True)
class EpochRecord:
    """DleRegistry.Epoch, with its members."""

    group: int
    epoch: int
    members_hash: bytes
    started_at: int
    ended_at: int
    size: int
    minimum: int
    """The governed minimum group size when the epoch opened: its certificates count only if size >= it."""


def _address(value: str) -> bytes:
    return bytes.fromhex(Web3.to_checksum_address(value)[2:])


@dataclass(frozen=True)
class Digests:
    """The EIP-712 digests of DleRegistry ("CoNET DLE" v1), CoNETCash ("CoNETCash" v1) and, when `vault`
    is given, OdexVault ("CoNET oDEX" v1), computed off chain: what the DLE's members and archive groups
    sign. No I/O.

    Both CoNETCash and OdexVault pay the same `ExitCertificate`; only the domain differs, so a
    certificate signed for one contract is worthless at the other."""

    mainchain_id: int
    registry: str
    cash: str
    vault: str | None = None
    """OdexVault's address: the verifying contract of receipt-chain exits (`vault_exit`)."""

    @cached_property
    def _registry_separator(self) -> bytes:
        return _separator(b"CoNET DLE", self.mainchain_id, self.registry)

    @cached_property
    def _cash_separator(self) -> bytes:
        return _separator(b"CoNETCash", self.mainchain_id, self.cash)

    @cached_property
    def _vault_separator(self) -> bytes:
        if self.vault is None:
            raise ValueError("these digests have no OdexVault address: pass vault= to compute receipt exits")
        return _separator(b"CoNET oDEX", self.mainchain_id, self.vault)

    def chain_id_of(self, asset: str, asset_id: int) -> bytes:
        """DleChainId.compute(asset, assetId) on this mainchain."""
        return keccak(encode(["uint256", "address", "uint256"], [self.mainchain_id, asset, asset_id]))

    def genesis(self, asset: str, asset_id: int, genesis_hash: bytes, group: int) -> bytes:
        """DleRegistry.genesisDigest."""
        chain = self.chain_id_of(asset, asset_id)
        struct = encode(
            ["bytes32", "bytes32", "bytes32", "address", "uint256", "uint256"],
            [keccak(_GENESIS_TYPE), chain, genesis_hash, asset, asset_id, group],
        )
        return _typed(self._registry_separator, keccak(struct))

    def block(self, chain: bytes, height: int, roles_version: int, role: int, header_hash: bytes) -> bytes:
        """DleRegistry.blockDigest: a member's vote for a block, under a roles version, in a role."""
        return self._words(_BLOCK_TYPE_HASH, chain, height, roles_version, role, header_hash)

    def refusal(self, chain: bytes, height: int, roles_version: int, role: int, header_hash: bytes) -> bytes:
        """DleRegistry.refusalDigest: a member's signed refusal of a block (what a refusal fault needs)."""
        return self._words(_REFUSAL_TYPE_HASH, chain, height, roles_version, role, header_hash)

    def certificate(self, chain: bytes, height: int, header_hash: bytes) -> bytes:
        """What an archive node signs to make a block final: EIP-712 "BlockCertificate" in the registry's
        domain. Not a vote under a role set (an archive node signs one block per height whatever the
        roles version, docs/security.md), so never equivocation evidence: the registry has no view of it."""
        return self._words(_CERTIFICATE_TYPE_HASH, chain, height, None, None, header_hash)

    def _words(
        self, type_hash: bytes, chain: bytes, height: int, version: int | None, role: int | None, header_hash: bytes
    ) -> bytes:
        middle = () if version is None else (version, int(role or 0))
        if (
            type(chain) is bytes
            and len(chain) == 32
            and type(header_hash) is bytes
            and len(header_hash) == 32
            and all(type(word) is int and 0 <= word < 2**256 for word in (height, *middle))
            and (role is None or 0 <= int(role) < 256)
        ):
            # Every member and archive node signs or checks these digests several times per block: with
            # 32-byte words only, abi.encode is plain concatenation, and eth_abi's generic encoder and
            # eth_utils' keccak dispatch cost ~20 times the hashing itself. Same bytes, same digest.
            words = b"".join(word.to_bytes(32, "big") for word in (height, *middle))
            struct = type_hash + chain + words + header_hash
            return _fast_keccak(b"\x19\x01" + self._registry_separator + _fast_keccak(struct))
        types = ["bytes32", "bytes32", "uint256", *(["uint256", "uint8"] if middle else []), "bytes32"]
        struct = encode(types, [type_hash, chain, height, *middle, header_hash])
        return _typed(self._registry_separator, keccak(struct))

    def exit(self, certificate: ExitCertificate) -> bytes:
        """CoNETCash.exitDigest: an exit of a note chain."""
        return _typed(self._cash_separator, _exit_struct_hash(certificate))

    def cbdc_draw(self, order: int, cbdc: str, selection: bytes, group: int) -> bytes:
        """The archive group's certificate that `cbdc` is the CBDC drawn for order `order` by the draw
        whose record hash is `selection` (EIP-712 "CbdcDraw" in the CoNETCash domain; what
        `CoNETCash.fill` verifies, docs/protocols.md "The CBDC draw and CoNETCash fill")."""
        struct = encode(
            ["bytes32", "uint256", "address", "bytes32", "uint256"],
            [keccak(_CBDC_DRAW_TYPE), order, cbdc, selection, group],
        )
        return _typed(self._cash_separator, keccak(struct))

    def vault_exit(self, certificate: ExitCertificate) -> bytes:
        """OdexVault.exitDigest: an exit of a receipt chain (`certificate.note` is the receipt id).
        ValueError if these digests were made without `vault`."""
        return _typed(self._vault_separator, _exit_struct_hash(certificate))

    def exit_for(self, contract: str, certificate: ExitCertificate) -> bytes:
        """The exit digest in the domain of `contract` — CoNETCash or OdexVault — for code that serves
        both (a DLE chain whose `Genesis.cash` names the paying contract). ValueError for any other."""
        target = Web3.to_checksum_address(contract)
        if target == Web3.to_checksum_address(self.cash):
            return self.exit(certificate)
        if self.vault is not None and target == Web3.to_checksum_address(self.vault):
            return self.vault_exit(certificate)
        raise ValueError(f"{target} is neither CoNETCash {self.cash} nor OdexVault {self.vault}")

    def fault(self, report: FaultReport) -> bytes:
        """DleRegistry.faultDigest."""
        struct = encode(
            ["bytes32", "bytes32", "uint256", "uint256", "address", "uint8", "uint8", "bytes32", "bytes32", "address"],
            [keccak(_FAULT_TYPE), *report.as_tuple()],
        )
        return _typed(self._registry_separator, keccak(struct))


def _exit_struct_hash(certificate: ExitCertificate) -> bytes:
    struct = encode(
        ["bytes32", "uint256", "bytes32", "uint256", "address", "address", "uint256", "uint256", "bytes32"],
        [keccak(_EXIT_TYPE), *certificate.as_tuple()],
    )
    return keccak(struct)


EXIT_HEAD_BYTES = 27
"""CertifiedExits keeps the exit history's head as bytes27 (one slot with the next nonce)."""


def exit_history_head(struct_hash: bytes) -> bytes:
    """The exit history's head after the certificate with `struct_hash`: its first 27 bytes, zero-padded."""
    return struct_hash[:EXIT_HEAD_BYTES] + bytes(32 - EXIT_HEAD_BYTES)


def check_exit_order(note: int, certificate_nonce: int, exited_before: bytes, history: tuple[int, bytes]) -> None:
    """CertifiedExits' order check in Python: `history` is `exitHistoryOf(note)` (next nonce, head).
    ContractRevert `CertificateUsed`, `ExitOutOfOrder` (an earlier exit is unpaid: pay it first) or
    `ExitHistoryMismatch` (the certificate is of another history: a fork)."""
    expected, head = history
    if certificate_nonce < expected:
        raise ContractRevert("CertificateUsed", {"note": note, "nonce": certificate_nonce})
    if certificate_nonce > expected:
        raise ContractRevert(
            "ExitOutOfOrder",
            {"note": note, "expected": expected, "given": certificate_nonce},
            f"pay exit {expected} of {note} first (exits are paid in order)",
        )
    if exited_before != head:
        raise ContractRevert(
            "ExitHistoryMismatch",
            {"note": note, "expected": head, "given": exited_before},
            "the certificate is of another exit history than the one paid (a fork of the chain)",
        )


def _separator(name: bytes, chain_id: int, contract: str) -> bytes:
    return keccak(
        encode(
            ["bytes32", "bytes32", "bytes32", "uint256", "address"],
            [keccak(_DOMAIN_TYPE), keccak(name), keccak(b"1"), chain_id, contract],
        )
    )


_BLOCK_TYPE_HASH = keccak(_BLOCK_TYPE)
_REFUSAL_TYPE_HASH = keccak(_REFUSAL_TYPE)
_CERTIFICATE_TYPE_HASH = keccak(_CERTIFICATE_TYPE)


def _fast_keccak(data: bytes) -> bytes:
    digest: bytes = sha3.keccak_256(data).digest()
    return digest


def _typed(separator: bytes, struct_hash: bytes) -> bytes:
    return keccak(b"\x19\x01" + separator + struct_hash)


def recover_signer(digest: bytes, signature: bytes) -> str:
    """The address OpenZeppelin's ECDSA.recover finds for a 65-byte r ‖ s ‖ v signature, refusing what it
    refuses (v other than 27/28, high s, no recoverable key) with its error names."""
    if len(signature) != SIGNATURE_LENGTH:
        raise ContractRevert("ECDSAInvalidSignatureLength", {"length": len(signature)})
    r, s, v = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:64], "big"), signature[64]
    if s > _SECP256K1_N // 2:
        raise ContractRevert("ECDSAInvalidSignatureS", {"s": signature[32:64]})
    if v not in (27, 28):
        raise ContractRevert("ECDSAInvalidSignature")
    try:
        key = Signature(vrs=(v - 27, r, s)).recover_public_key_from_msg_hash(digest)
    except (BadSignature, ValueError) as exc:
        raise ContractRevert("ECDSAInvalidSignature") from exc
    address: str = key.to_checksum_address()
    return address


def members_hash(members: Sequence[str]) -> bytes:
    """bytes20(keccak256(abi.encodePacked(address[]))) of the sorted members, as DleRegistry stores it."""
    return keccak(b"".join(_address(m).rjust(32, b"\0") for m in members))[:20]


class DleChainClient(DeploymentClient):
    """DleRegistry and CoNETCash for the DLE. `private_key` signs transactions; without one, only the
    views and digests work."""

    def __init__(
        self,
        w3: Web3,
        addresses: Mapping[str, str],
        private_key: bytes | str | None = None,
        *,
        receipt_timeout: float = DEFAULT_RECEIPT_TIMEOUT,
    ) -> None:
        super().__init__(w3, private_key, receipt_timeout)
        self.registry: Contract = load_contract(w3, "DleRegistry", addresses["DleRegistry"])
        self.cash: Contract = load_contract(w3, "CoNETCash", addresses["CoNETCash"])
        self.staking: Contract = load_contract(w3, "Staking", addresses["Staking"])
        self.digests = Digests(int(w3.eth.chain_id), self.registry.address, self.cash.address)

    # ---------------------------------------------------------------- views

    def current_epoch(self, group: int) -> int:
        return int(self.registry.functions.currentEpoch(group).call())

    def epoch(self, group: int, epoch: int) -> EpochRecord:
        members_hash_, started, ended, size, minimum = self.registry.functions.epochOf(group, epoch).call()
        return EpochRecord(group, epoch, bytes(members_hash_), int(started), int(ended), int(size), int(minimum))

    def epoch_members(self, group: int, epoch: int) -> list[str]:
        return [Web3.to_checksum_address(a) for a in self.registry.functions.epochMembers(group, epoch).call()]

    def is_registered(self, chain: bytes) -> bool:
        return bool(self.registry.functions.isRegistered(chain).call())

    def chain_record(self, chain: bytes) -> ChainRecord:
        """The record of `chain`; ContractRevert ChainNotRegistered if there is none."""
        if not self.is_registered(chain):
            raise ContractRevert("ChainNotRegistered", {"chain": chain})
        genesis, asset, group, registered_at, asset_id = self.registry.functions.chainOf(chain).call()
        return ChainRecord(chain, bytes(genesis), asset, int(group), int(registered_at), int(asset_id))

    def note_refunds(self, note: int, *, confirmations: int = 0) -> list[tuple[bytes, int]]:
        """(buyer, amount) of every `CoNETCash.NoteRefunded` of note `note` at least `confirmations`
        blocks deep, in chain order (this node's own reading of the mainchain: what a DLE node checks a
        re-funding against)."""
        head = int(self.w3.eth.block_number)
        if head < confirmations:
            return []
        events = self.cash.events.NoteRefunded.get_logs(
            from_block=0, to_block=head - confirmations, argument_filters={"id": note}
        )
        ordered = sorted(events, key=lambda e: (e["blockNumber"], e["logIndex"]))
        return [(bytes.fromhex(str(e["args"]["buyer"])[2:]), int(e["args"]["amount"])) for e in ordered]

    def chain_id_of(self, asset: str, asset_id: int) -> bytes:
        return self.digests.chain_id_of(asset, asset_id)

    def genesis_digest(self, asset: str, asset_id: int, genesis_hash: bytes, group: int) -> bytes:
        """DleRegistry.genesisDigest, read from the contract (`digests.genesis` computes it off chain)."""
        return bytes(self.registry.functions.genesisDigest(asset, asset_id, genesis_hash, group).call())

    def block_digest(self, chain: bytes, height: int, roles_version: int, role: Role, header_hash: bytes) -> bytes:
        """DleRegistry.blockDigest, read from the contract (`digests.block` computes it off chain)."""
        return bytes(self.registry.functions.blockDigest(chain, height, roles_version, int(role), header_hash).call())

    def refusal_digest(self, chain: bytes, height: int, roles_version: int, role: Role, header_hash: bytes) -> bytes:
        """DleRegistry.refusalDigest, read from the contract (`digests.refusal` computes it off chain)."""
        return bytes(self.registry.functions.refusalDigest(chain, height, roles_version, int(role), header_hash).call())

    def exit_history(self, note: int) -> tuple[int, bytes]:
        """CoNETCash.exitHistoryOf(note): the nonce of the exit it pays next and the head it must name."""
        nonce, head = self.cash.functions.exitHistoryOf(note).call()
        return int(nonce), bytes(head)

    def exit_digest(self, certificate: ExitCertificate) -> bytes:
        """CoNETCash.exitDigest, read from the contract (`digests.exit` computes it off chain)."""
        return bytes(self.cash.functions.exitDigest(certificate.as_tuple()).call())

    def fault_digest(self, report: FaultReport) -> bytes:
        """DleRegistry.faultDigest, read from the contract (`digests.fault` computes it off chain)."""
        return bytes(self.registry.functions.faultDigest(report.as_tuple()).call())

    def check_certificate(self, group: int, epoch: int, digest: bytes, signatures: bytes) -> list[str]:
        """DleRegistry's group check in Python: every member of epoch `epoch` of `group`, sorted, no
        one else, the epoch current and of at least the governed minimum size. Returns the signers;
        ContractRevert otherwise. (An epoch can still end between this check and the transaction's
        block: the contract then refuses, and the estimate reports it.)"""
        record = self.epoch(group, epoch)
        if record.started_at == 0:
            raise ContractRevert("UnknownEpoch", {"group": group, "epoch": epoch})
        if record.ended_at != 0:
            raise ContractRevert("EpochEnded", {"group": group, "epoch": epoch, "current": self.current_epoch(group)})
        if not signatures or len(signatures) % SIGNATURE_LENGTH:
            raise ContractRevert("MalformedSignatures", {"length": len(signatures)})
        count = len(signatures) // SIGNATURE_LENGTH
        if count > MAX_GROUP_SIZE:
            raise ContractRevert("SignersNotGroup", {"group": group, "epoch": epoch})
        signers: list[str] = []
        for index in range(count):
            signer = recover_signer(digest, signatures[index * SIGNATURE_LENGTH : (index + 1) * SIGNATURE_LENGTH])
            if signers and int(signer, 16) <= int(signers[-1], 16):
                raise ContractRevert("UnsortedSigners", {"index": index})
            signers.append(signer)
        if members_hash(signers) != record.members_hash:
            members = self.epoch_members(group, epoch)
            missing = sorted(set(members) - set(signers))
            strangers = sorted(set(signers) - set(members))
            raise ContractRevert(
                "SignersNotGroup",
                {"group": group, "epoch": epoch},
                f"missing {missing or 'none'}, not members {strangers or 'none'}",
            )
        if count < record.minimum:
            raise ContractRevert(
                "GroupTooSmall", {"group": group, "epoch": epoch, "size": count, "minimum": record.minimum}
            )
        return signers

    def group_for(self, asset_id: int) -> int:
        """DleRegistry.groupFor: the archive group a chain of asset id `asset_id` registers with now."""
        return int(self.registry.functions.groupFor(asset_id).call())

    def min_group_size(self) -> int:
        """DleRegistry.minGroupSize: the fewest members an epoch needs for its certificates to count."""
        return int(self.registry.functions.minGroupSize().call())

    # ---------------------------------------------------------------- transactions

    def refresh_group(self, group: int) -> tuple[int, bool]:
        """Opens a new epoch of `group` if its staked archive nodes changed; sends nothing otherwise.
        Returns (current epoch, whether one was opened)."""
        sender = self._require_sender()
        epoch, changed = sender.call(self.registry.functions.refreshGroup(group))
        if not changed:
            return int(epoch), False
        receipt = sender.transact(self.registry.functions.refreshGroup(group))
        started = events_of(self.registry, "EpochStarted", receipt)
        if not started:
            return self.current_epoch(group), False
        return int(started[0]["epoch"]), True

    def register_chain(
        self,
        asset: str,
        asset_id: int,
        genesis_hash: bytes,
        group: int,
        epoch: int,
        signatures: bytes,
        *,
        precheck: bool = True,
    ) -> bytes:
        """Records the DLE chain of `asset` #`asset_id` on its group's genesis certificate; returns its id."""
        chain = self.chain_id_of(asset, asset_id)
        if precheck:
            if self.is_registered(chain):
                raise ContractRevert("ChainAlreadyRegistered", {"chain": chain})
            expected = self.group_for(asset_id)
            if group != expected:
                raise ContractRevert("WrongGroup", {"assetId": asset_id, "given": group, "expected": expected})
            self.check_certificate(group, epoch, self.digests.genesis(asset, asset_id, genesis_hash, group), signatures)
        function = self.registry.functions.registerChain(asset, asset_id, genesis_hash, group, epoch, signatures)
        receipt = self._transact(function)
        (event,) = events_of(self.registry, "ChainRegistered", receipt)
        return bytes(event["chain"])

    def submit_exit(self, certificate: ExitCertificate, epoch: int, signatures: bytes, *, precheck: bool = True) -> int:
        """Submits an exit certificate to CoNETCash; returns the payout the receiver got (amount minus fee)."""
        if precheck:
            self._check_exit(certificate, epoch, signatures)
        receipt = self._transact(self.cash.functions.exit(certificate.as_tuple(), epoch, signatures))
        (event,) = events_of(self.cash, "NoteExited", receipt)
        return int(event["amount"]) - int(event["fee"])

    def report_equivocation(self, a: SignedBlock, b: SignedBlock, *, precheck: bool = True) -> int:
        """Proves one key signed two blocks at one height of one chain under one roles version; slashes
        its stake in the role both signatures name. Returns what was slashed."""
        if precheck:
            if a.chain != b.chain or a.height != b.height:
                raise ContractRevert(
                    "DifferentHeights",
                    {"firstChain": a.chain, "firstHeight": a.height, "secondChain": b.chain, "secondHeight": b.height},
                )
            if a.roles_version != b.roles_version:
                raise ContractRevert("DifferentRolesVersions", {"first": a.roles_version, "second": b.roles_version})
            if a.role != b.role:
                raise ContractRevert("DifferentRoles", {"first": Role(a.role), "second": Role(b.role)})
            if a.header_hash == b.header_hash:
                raise ContractRevert("SameBlock", {"headerHash": a.header_hash})
            signer = recover_signer(
                self.digests.block(a.chain, a.height, a.roles_version, a.role, a.header_hash), a.signature
            )
            other = recover_signer(
                self.digests.block(b.chain, b.height, b.roles_version, b.role, b.header_hash), b.signature
            )
            if signer != other:
                raise ContractRevert("DifferentSigners", {"first": signer, "second": other})
            self._check_slash(signer, a.role, offence_key(a.chain, a.height, a.roles_version, signer), self.address)
        receipt = self._transact(self.registry.functions.reportEquivocation(a.as_tuple(), b.as_tuple()))
        (event,) = events_of(self.registry, "EquivocationReported", receipt)
        return int(event["slashed"])

    def report_fault(
        self, report: FaultReport, accused_signature: bytes, epoch: int, signatures: bytes, *, precheck: bool = True
    ) -> int:
        """Submits the archive group's certificate of a fault with the offender's own signed refusal
        (REFUSED_VALID_BLOCK) or block signature (SIGNED_INVALID_BLOCK); returns what was slashed."""
        if precheck:
            args = (report.chain, report.height, report.roles_version, report.role, report.header_hash)
            if report.kind == FaultKind.REFUSED_VALID_BLOCK:
                accused = self.digests.refusal(*args)
            elif report.kind == FaultKind.SIGNED_INVALID_BLOCK:
                accused = self.digests.block(*args)
            else:
                raise ContractRevert("UnknownFaultKind", {"kind": report.kind})
            signer = recover_signer(accused, accused_signature)
            if signer != Web3.to_checksum_address(report.offender):
                raise ContractRevert("NotOffendersSignature", {"signer": signer, "offender": report.offender})
            record = self.chain_record(report.chain)
            self.check_certificate(record.group, epoch, self.digests.fault(report), signatures)
            self._check_slash(report.offender, report.role, report.evidence_key, report.reporter)
        function = self.registry.functions.reportFault(report.as_tuple(), accused_signature, epoch, signatures)
        receipt = self._transact(function)
        (event,) = events_of(self.registry, "FaultReported", receipt)
        return int(event["slashed"])

    # ---------------------------------------------------------------- internals

    def _check_exit(self, certificate: ExitCertificate, epoch: int, signatures: bytes) -> None:
        """CoNETCash.exit's refusals, in its order."""
        note = self.cash.functions.noteOf(certificate.note).call()
        status, outstanding = int(note[0]), int(note[3])
        if status != _LIVE:
            raise ContractRevert("NoteNotLive", {"id": certificate.note})
        chain = bytes(self.cash.functions.chainOf(certificate.note).call())
        if certificate.chain != chain:
            raise ContractRevert("WrongChain", {"expected": chain, "given": certificate.chain})
        if certificate.amount == 0 or certificate.amount > outstanding:
            raise ContractRevert("InvalidExitAmount", {"amount": certificate.amount, "outstanding": outstanding})
        check_exit_order(
            certificate.note, certificate.nonce, certificate.exited_before, self.exit_history(certificate.note)
        )
        record = self.chain_record(chain)
        self.check_certificate(record.group, epoch, self.digests.exit(certificate), signatures)

    def _check_slash(self, node: str, role: Role, evidence: bytes, reporter: str) -> None:
        """Staking.slash's refusals, in its order."""
        staking = self.staking.functions
        if staking.isEvidenceUsed(evidence).call():
            raise ContractRevert("EvidenceAlreadyUsed", {"evidenceHash": evidence})
        if Web3.to_checksum_address(reporter) == Web3.to_checksum_address(node):
            raise ContractRevert("SelfReport", {"node": node})
        unbonding, _release = staking.unbondingOf(node, int(role)).call()
        if int(staking.stakeOf(node, int(role)).call()) + int(unbonding) == 0:
            raise ContractRevert("NothingToSlash", {"node": node, "role": Role(role)})


__all__ = [
    "EXIT_HEAD_BYTES",
    "ChainRecord",
    "Digests",
    "DleChainClient",
    "EpochRecord",
    "ExitCertificate",
    "FaultKind",
    "FaultReport",
    "SignedBlock",
    "check_exit_order",
    "exit_history_head",
    "members_hash",
    "offence_key",
    "recover_signer",
]
