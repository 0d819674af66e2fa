"""The EIP-712 digests DLE members sign, in the byte-address terms the DLE works in.

Members sign blocks with `DleRegistry.blockDigest` (so two signed blocks at one height are evidence the
registry accepts as is), the archive group signs genesis records (`registerChain`), exit certificates
(`CoNETCash.exit`) and fault reports (`DleRegistry.reportFault`). The computation itself is
`offchain.chain.dle.Digests` — one implementation, checked against the contracts' own views in
tests/test_chain_dle.py; this adapter only converts addresses and decodes the program's exit log.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from eth_utils.address import to_checksum_address

from dle_vm.hashing import keccak
from offchain.chain.deployer import Role
from offchain.chain.dle import Digests, ExitCertificate, FaultReport

__all__ = ["Domains", "archive_roles_digest"]


@dataclass(frozen=True)
class Domains:
    """The mainchain a DLE deployment anchors to."""

    mainchain_id: int
    registry: bytes
    """The DleRegistry contract (EIP-712 domain "CoNET DLE" v1)."""
    cash: bytes
    """The CoNETCash contract (EIP-712 domain "CoNETCash" v1)."""

    @cached_property
    def _digests(self) -> Digests:
        return Digests(self.mainchain_id, to_checksum_address(self.registry), to_checksum_address(self.cash))

    def block(self, chain: bytes, height: int, header_hash: bytes) -> bytes:
        """`DleRegistry.blockDigest`: what every member and archive node signs for a block."""
        return self._digests.block(chain, height, header_hash)

    def genesis(self, chain: bytes, genesis_hash: bytes, asset: bytes, asset_id: int, group: int) -> bytes:
        """`DleRegistry.genesisDigest`: the archive group's consent to register a chain."""
        digest = self._digests.genesis(to_checksum_address(asset), asset_id, genesis_hash, group)
        if self._digests.chain_id_of(to_checksum_address(asset), asset_id) != chain:
            raise ValueError("the chain id is not the one the mainchain derives for the asset")
        return digest

    def exit(self, certificate_data: bytes) -> bytes:
        """`CoNETCash.exitDigest` of the certificate whose `abi.encode` is `certificate_data` (the
        program's `Exited` log data)."""
        from offchain.dle.note import ExitCertificate as NoteExit

        exit_ = NoteExit.decode(certificate_data)
        return self._digests.exit(
            ExitCertificate(
                exit_.note,
                exit_.chain,
                exit_.height,
                to_checksum_address(exit_.holder),
                to_checksum_address(exit_.receiver),
                exit_.amount,
                exit_.nonce,
            )
        )

    def fault(
        self, chain: bytes, height: int, offender: bytes, role: int, kind: int, evidence_hash: bytes, reporter: bytes
    ) -> bytes:
        """`DleRegistry.faultDigest`: the archive group's certificate that a member must be slashed."""
        report = FaultReport(
            chain, height, to_checksum_address(offender), Role(role), kind, evidence_hash, to_checksum_address(reporter)
        )
        return self._digests.fault(report)


def archive_roles_digest(encoded_roles: bytes) -> bytes:
    """What the archive group signs to make a role set (or a change of it) authoritative. Not an
    EIP-712 message: the mainchain never sees role sets, only the signatures they produce."""
    return keccak(b"CoNET DLE roles\x00" + encoded_roles)
