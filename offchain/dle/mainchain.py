"""The DLE's mainchain: `archive.Mainchain` on DleRegistry and Staking, and the archive groups' epochs.

`ChainMainchain` adapts `offchain.chain.dle.DleChainClient` (plain web3.py, a local key) to what an
archive node asks of the mainchain: whether a candidate meets its role's minimum stake, registering a
chain on its group's genesis certificate, and the two slashing paths (`reportEquivocation`, proven by
the registry itself, and `reportFault`, proven by the group's certificate). The archive node calls it
from worker threads; transactions are serialised here because `Sender` reads the account's nonce from
the node before each one, and two in flight at once would take the same nonce.

`ArchiveGroups` reads the current epoch of every archive group (DleRegistry) as the `ArchiveGroup`
values the consensus code verifies certificates against. Reads are cached and refreshed by the
service on a timer: consensus code looks groups up synchronously, on the event loop.

Which group keeps a note's chain: the groups with a current epoch, ascending, and note id modulo their
count (DESIGN §5: "a chain belongs to the group its NFT token id maps to"). With two groups, odd notes
go to group 1 and even ones to group 0.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from web3 import Web3
from web3.contract import Contract

from offchain.chain.deployer import Role
from offchain.chain.dle import DleChainClient, FaultReport, SignedBlock
from offchain.chain.web3_contracts import load_contract
from offchain.dle.roles import ArchiveGroup

__all__ = ["UNLIMITED_CAPACITY", "ArchiveGroups", "ChainMainchain", "MainchainAdapterError", "NoArchiveGroup"]

log = logging.getLogger("conet.dle.mainchain")


UNLIMITED_CAPACITY = 2**256 - 1
"""The capacity of a role whose capacity unit is not set."""


class MainchainAdapterError(RuntimeError):
    """The mainchain answered something the DLE cannot act on."""


class NoArchiveGroup(MainchainAdapterError):
    """A group without a current epoch (no staked archive node), or an address in no group."""


def _checksum(address: bytes) -> str:
    return Web3.to_checksum_address("0x" + address.hex())


class ChainMainchain:
    """archive.py's `Mainchain` protocol over DleRegistry and Staking (blocking calls)."""

    def __init__(self, client: DleChainClient) -> None:
        self.client = client
        # One transaction at a time per key: Sender takes the nonce from the node's pending count.
        self._send_lock = threading.Lock()

    def meets_minimum(self, address: bytes, role: int) -> bool:
        return bool(self.client.staking.functions.meetsMinimum(_checksum(address), int(role)).call())

    def capacity(self, address: bytes, role: int) -> int:
        """Staking.capacity: stake / the role's capacity unit; a role with no unit set has no limit
        (the call would revert CapacityUnitNotSet)."""
        staking = self.client.staking.functions
        if int(staking.capacityUnit(int(role)).call()) == 0:
            return UNLIMITED_CAPACITY
        return int(staking.capacity(_checksum(address), int(role)).call())

    def register_chain(
        self, asset: bytes, asset_id: int, genesis_hash: bytes, group: int, epoch: int, certificate: bytes
    ) -> None:
        chain = self.client.chain_id_of(_checksum(asset), asset_id)
        with self._send_lock:
            if self.client.is_registered(chain):
                # A retry after a crash between the transaction and its answer: the same genesis is done.
                recorded = self.client.chain_record(chain)
                if recorded.genesis_hash == genesis_hash and recorded.group == group:
                    log.info("chain 0x%s was registered already", chain.hex()[:12])
                    return
                raise MainchainAdapterError(
                    f"chain 0x{chain.hex()} is registered with genesis 0x{recorded.genesis_hash.hex()} "
                    f"of group {recorded.group}, not 0x{genesis_hash.hex()} of group {group}"
                )
            self.client.register_chain(_checksum(asset), asset_id, genesis_hash, group, epoch, certificate)
        log.info("registered chain 0x%s (asset #%d, group %d, epoch %d)", chain.hex()[:12], asset_id, group, epoch)

    def report_equivocation(
        self,
        chain: bytes,
        height: int,
        roles_version: int,
        role: int,
        hash_a: bytes,
        signature_a: bytes,
        hash_b: bytes,
        signature_b: bytes,
    ) -> int:
        a = SignedBlock(chain, height, roles_version, Role(role), hash_a, signature_a)
        b = SignedBlock(chain, height, roles_version, Role(role), hash_b, signature_b)
        with self._send_lock:
            slashed = self.client.report_equivocation(a, b)
        log.info("equivocation on 0x%s at %d: slashed %d (role %d)", chain.hex()[:12], height, slashed, role)
        return slashed

    def report_fault(
        self,
        chain: bytes,
        height: int,
        roles_version: int,
        offender: bytes,
        role: int,
        kind: int,
        header_hash: bytes,
        accused_signature: bytes,
        evidence_hash: bytes,
        reporter: bytes,
        epoch: int,
        certificate: bytes,
    ) -> int:
        report = FaultReport(
            chain=chain,
            height=height,
            roles_version=roles_version,
            offender=_checksum(offender),
            role=Role(role),
            kind=kind,
            header_hash=header_hash,
            evidence_hash=evidence_hash,
            reporter=_checksum(reporter),
        )
        with self._send_lock:
            slashed = self.client.report_fault(report, accused_signature, epoch, certificate)
        log.info(
            "fault kind %d of 0x%s on 0x%s at %d: slashed %d", kind, offender.hex(), chain.hex()[:12], height, slashed
        )
        return slashed


@dataclass(frozen=True)
class _Snapshot:
    groups: dict[int, ArchiveGroup]
    count: int
    read_at: float


class ArchiveGroups:
    """The current epoch of every archive group, read from DleRegistry and NodeRegistry and cached.

    `refresh()` (blocking: run it in a thread) re-reads them; lookups never touch the network unless a
    group was never read."""

    def __init__(self, client: DleChainClient) -> None:
        self.client = client
        nodes_address = self.client.registry.functions.nodeRegistry().call()
        self.nodes: Contract = load_contract(client.w3, "NodeRegistry", nodes_address)
        self._snapshot = _Snapshot({}, 0, 0.0)

    def refresh(self) -> dict[int, ArchiveGroup]:
        """Read every group's current epoch; returns them (groups without one are left out)."""
        count = int(self.nodes.functions.groupCount().call())
        groups: dict[int, ArchiveGroup] = {}
        for group in range(count):
            found = self._read(group)
            if found is not None:
                groups[group] = found
        self._snapshot = _Snapshot(groups, count, time.monotonic())
        return dict(groups)

    def _read(self, group: int) -> ArchiveGroup | None:
        """The current epoch of `group`, or None when it has none or one that certifies nothing (fewer
        members than the minimum it opened with, e.g. a lone survivor or an emptied group): a block that
        such an epoch signed is no more final here than on the mainchain."""
        epoch = self.client.current_epoch(group)
        if epoch == 0:
            return None
        record = self.client.epoch(group, epoch)
        if record.size < record.minimum:
            return None
        members = sorted(bytes.fromhex(m[2:]) for m in self.client.epoch_members(group, epoch))
        return ArchiveGroup(group, epoch, tuple(members))

    def groups(self) -> dict[int, ArchiveGroup]:
        if not self._snapshot.read_at:
            self.refresh()
        return dict(self._snapshot.groups)

    def group_of(self, group: int) -> ArchiveGroup:
        """The current epoch of `group` (member.py's `GroupOf`)."""
        found = self._snapshot.groups.get(group)
        if found is None:
            # Never read (or empty when last read): ask once now.
            self.refresh()
            found = self._snapshot.groups.get(group)
        if found is None:
            raise NoArchiveGroup(f"archive group {group} has no current epoch on the mainchain")
        return found

    def group_with(self, address: bytes) -> ArchiveGroup:
        """The group whose current epoch counts `address` as a member (an archive node's own group)."""
        for group in self.groups().values():
            if address in group.members:
                return group
        raise NoArchiveGroup(
            f"0x{address.hex()} is in no archive group's current epoch: stake, register, then refreshGroup"
        )

    def keeper_of(self, asset_id: int) -> ArchiveGroup:
        """The group that opens (and keeps) the chain of note (or other asset) `asset_id` now: the
        mainchain's rule, `DleRegistry.groupFor`, asset id modulo the node registry's group count. A
        chain already registered keeps the group its record names, even after the count grew."""
        if not self._snapshot.read_at:
            self.refresh()
        count = self._snapshot.count
        if count == 0:
            raise NoArchiveGroup("the node registry has no archive group: no chain can be kept")
        return self.group_of(asset_id % count)
