"""The EIP-712 digests DLE members sign, in the byte-address terms the DLE works in.

Members sign blocks with `DleRegistry.blockDigest` under a roles version in a stake role (so two signed
blocks at one height under one version are evidence the registry accepts as is, and the role it slashes
is the signature's), and refuse them with `DleRegistry.refusalDigest` (the accused's own word a refusal
fault needs); archive nodes certify a block final with "BlockCertificate" (no role, no version: an
archive node signs one block per height whatever the roles). The archive group signs genesis records
(`registerChain`), exit certificates (`CoNETCash.exit`, or `OdexVault.withdraw` for a receipt chain)
and fault reports (`DleRegistry.reportFault`). The computation itself is `offchain.chain.dle.Digests` — one
implementation, checked against the contracts' own views in tests/test_chain_dle.py; this adapter only
converts addresses, decodes the program's exit log and picks the exit's domain.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from eth_utils.address import to_checksum_address

from dle_vm.hashing import keccak
from offchain.chain.deployer import Role
from offchain.chain.dle import Digests, ExitCertificate, FaultReport

if TYPE_CHECKING:
    from offchain.dle.note import ExitCertificate as NoteExit

__all__ = ["Domains", "archive_roles_digest", "mainchain_certificate"]


@dataclass(frozen=True)
class Domains:
    """The mainchain a DLE deployment anchors to."""

    mainchain_id: int
    registry: bytes
    """The DleRegistry contract (EIP-712 domain "CoNET DLE" v1)."""
    cash: bytes
    """The CoNETCash contract (EIP-712 domain "CoNETCash" v1)."""
    vault: bytes | None = None
    """The OdexVault contract (EIP-712 domain "CoNET oDEX" v1), when the deployment has one: the payer of
    receipt chains' exits."""

    @cached_property
    def _digests(self) -> Digests:
        vault = None if self.vault is None else to_checksum_address(self.vault)
        return Digests(self.mainchain_id, to_checksum_address(self.registry), to_checksum_address(self.cash), vault)

    def payer_of(self, chain: bytes, asset_id: int) -> bytes:
        """The contract that pays exits of `chain`, the DLE chain of asset id `asset_id` (a note id or a
        receipt id): the one whose address the chain id was derived from (`Genesis.cash`). ValueError
        when it is neither CoNETCash nor the vault."""
        from offchain.dle.note import chain_id_of

        if self.vault is not None and chain_id_of(self.mainchain_id, self.vault, asset_id) == chain:
            return self.vault
        if chain_id_of(self.mainchain_id, self.cash, asset_id) == chain:
            return self.cash
        raise ValueError(f"chain 0x{chain.hex()} is no chain of CoNETCash or the vault for asset id {asset_id}")

    def block(self, chain: bytes, height: int, roles_version: int, role: int, header_hash: bytes) -> bytes:
        """`DleRegistry.blockDigest`: a member's vote for a block under roles version `roles_version`, in
        stake role `role` (`ChainRoles.stake_role`)."""
        return self._digests.block(chain, height, roles_version, role, header_hash)

    def refusal(self, chain: bytes, height: int, roles_version: int, role: int, header_hash: bytes) -> bytes:
        """`DleRegistry.refusalDigest`: a member's signed refusal of a block it found invalid."""
        return self._digests.refusal(chain, height, roles_version, role, header_hash)

    def certificate(self, chain: bytes, height: int, header_hash: bytes) -> bytes:
        """What every archive node signs to make a block final (the archive certificate)."""
        return self._digests.certificate(chain, height, header_hash)

    def genesis(self, chain: bytes, genesis_hash: bytes, asset: bytes, asset_id: int, group: int) -> bytes:
        """`DleRegistry.genesisDigest`: the archive group's consent to register a chain."""
        digest = self._digests.genesis(to_checksum_address(asset), asset_id, genesis_hash, group)
        if self._digests.chain_id_of(to_checksum_address(asset), asset_id) != chain:
            raise ValueError("the chain id is not the one the mainchain derives for the asset")
        return digest

    def exit(self, certificate_data: bytes) -> bytes:
        """The exit digest of the certificate whose `abi.encode` is `certificate_data` (the program's
        `Exited` log data), in the domain of the contract that pays it: `OdexVault.exitDigest` when the
        certificate's chain is a receipt chain of the vault (its id derives from the vault's address and
        the receipt id, which the program's genesis checked), `CoNETCash.exitDigest` otherwise."""
        from offchain.dle.note import ExitCertificate as NoteExit
        from offchain.dle.note import chain_id_of

        exit_ = NoteExit.decode(certificate_data)
        vault = self.vault
        receipt_chain = vault is not None and chain_id_of(self.mainchain_id, vault, exit_.note) == exit_.chain
        digest = self._digests.vault_exit if receipt_chain else self._digests.exit
        return digest(mainchain_certificate(exit_))

    def cbdc_draw(self, order: int, cbdc: bytes, selection: bytes, group: int) -> bytes:
        """The archive group's consent that `cbdc` was drawn to fill CoNETCash order `order`."""
        return self._digests.cbdc_draw(order, to_checksum_address(cbdc), selection, group)

    def fault(
        self,
        chain: bytes,
        height: int,
        roles_version: int,
        offender: bytes,
        role: int,
        kind: int,
        header_hash: bytes,
        evidence_hash: bytes,
        reporter: bytes,
    ) -> bytes:
        """`DleRegistry.faultDigest`: the archive group's certificate that a member must be slashed."""
        report = FaultReport(
            chain,
            height,
            roles_version,
            to_checksum_address(offender),
            Role(role),
            kind,
            header_hash,
            evidence_hash,
            to_checksum_address(reporter),
        )
        return self._digests.fault(report)


def mainchain_certificate(certificate: NoteExit) -> ExitCertificate:
    """The program's exit certificate (`Exited`) as the mainchain client submits it: the same fields."""
    return ExitCertificate(
        certificate.note,
        certificate.chain,
        certificate.height,
        to_checksum_address(certificate.holder),
        to_checksum_address(certificate.receiver),
        certificate.amount,
        certificate.nonce,
        certificate.exited_before,
    )


def archive_roles_digest(encoded_roles: bytes) -> bytes:
    """What the archive group signs to make a role set (or a change of it) authoritative. Not an
    EIP-712 message: the mainchain never sees role sets, only the signatures they produce."""
    return keccak(b"CoNET DLE roles\x00" + encoded_roles)
