"""The EIP-712 digests DLE members sign, computed exactly as the mainchain contracts compute them.

Members sign blocks with `DleRegistry.blockDigest` (so two signed blocks at one height are evidence the
registry accepts as is), the archive group signs genesis records (`registerChain`), exit certificates
(`CoNETCash.exit`) and fault reports (`DleRegistry.reportFault`). Pure computation: the mainchain's
chain id and the two contract addresses come in a `Domains`; no I/O. A test checks every digest here
against the contract's own view function.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from eth_abi.abi import encode

from dle_vm.hashing import keccak

__all__ = ["Domains", "archive_roles_digest"]

_DOMAIN_TYPE = b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
_BLOCK_TYPE = b"BlockSignature(bytes32 chain,uint256 height,bytes32 headerHash)"
_GENESIS_TYPE = b"ChainGenesis(bytes32 chain,bytes32 genesisHash,address asset,uint256 assetId,uint256 group)"
_EXIT_TYPE = (
    b"ExitCertificate(uint256 note,bytes32 chain,uint256 height,address holder,address receiver,"
    b"uint256 amount,uint256 nonce)"
)
_FAULT_TYPE = (
    b"FaultReport(bytes32 chain,uint256 height,address offender,uint8 role,uint8 kind,bytes32 evidenceHash,"
    b"address reporter)"
)


def _separator(name: bytes, chain_id: int, contract: bytes) -> bytes:
    return keccak(
        encode(
            ["bytes32", "bytes32", "bytes32", "uint256", "address"],
            [keccak(_DOMAIN_TYPE), keccak(name), keccak(b"1"), chain_id, contract],
        )
    )


def _typed(separator: bytes, struct_hash: bytes) -> bytes:
    return keccak(b"\x19\x01" + separator + struct_hash)


@dataclass(frozen=True)
class Domains:
    """The mainchain a DLE deployment anchors to."""

    mainchain_id: int
    registry: bytes
    """The DleRegistry contract (EIP-712 domain "CoNET DLE" v1)."""
    cash: bytes
    """The CoNETCash contract (EIP-712 domain "CoNETCash" v1)."""

    @cached_property
    def _registry_separator(self) -> bytes:
        return _separator(b"CoNET DLE", self.mainchain_id, self.registry)

    @cached_property
    def _cash_separator(self) -> bytes:
        return _separator(b"CoNETCash", self.mainchain_id, self.cash)

    def block(self, chain: bytes, height: int, header_hash: bytes) -> bytes:
        """`DleRegistry.blockDigest`: what every member and archive node signs for a block."""
        struct = encode(["bytes32", "bytes32", "uint256", "bytes32"], [keccak(_BLOCK_TYPE), chain, height, header_hash])
        return _typed(self._registry_separator, keccak(struct))

    def genesis(self, chain: bytes, genesis_hash: bytes, asset: bytes, asset_id: int, group: int) -> bytes:
        """`DleRegistry.genesisDigest`: the archive group's consent to register a chain."""
        struct = encode(
            ["bytes32", "bytes32", "bytes32", "address", "uint256", "uint256"],
            [keccak(_GENESIS_TYPE), chain, genesis_hash, asset, asset_id, group],
        )
        return _typed(self._registry_separator, keccak(struct))

    def exit(self, certificate_data: bytes) -> bytes:
        """`CoNETCash.exitDigest` of the certificate whose `abi.encode` is `certificate_data` (the
        program's `Exited` log data)."""
        return _typed(self._cash_separator, keccak(keccak(_EXIT_TYPE) + certificate_data))

    def fault(
        self, chain: bytes, height: int, offender: bytes, role: int, kind: int, evidence_hash: bytes, reporter: bytes
    ) -> bytes:
        """`DleRegistry.faultDigest`: the archive group's certificate that a member must be slashed."""
        struct = encode(
            ["bytes32", "bytes32", "uint256", "address", "uint8", "uint8", "bytes32", "address"],
            [keccak(_FAULT_TYPE), chain, height, offender, role, kind, evidence_hash, reporter],
        )
        return _typed(self._registry_separator, keccak(struct))


def archive_roles_digest(encoded_roles: bytes) -> bytes:
    """What the archive group signs to make a role set (or a change of it) authoritative. Not an
    EIP-712 message: the mainchain never sees role sets, only the signatures they produce."""
    return keccak(b"CoNET DLE roles\x00" + encoded_roles)
