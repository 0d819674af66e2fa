"""A whole DLE in one process: archive nodes and member nodes on an in-process network.

The same node classes run over HTTP in the devnet (offchain/dle/service.py); here they share an
`InProcessNetwork`, so tests can kill a node (unregister it), slow it down, or replace its class with a
faulty one, and benchmarks measure the protocol without sockets.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from coincurve import PrivateKey

from dle_vm.engine import Engine, default_engine
from dle_vm.signature import address_of
from offchain.dle.archive import ROLE_VALIDATOR, ROLE_WITNESS, ArchiveNode, Mainchain
from offchain.dle.authority import NoteAuthority, RefundLog
from offchain.dle.client import DleClient
from offchain.dle.digests import Domains
from offchain.dle.member import MemberNode, Timeouts
from offchain.dle.messages import Outcome
from offchain.dle.note import NoteTerms
from offchain.dle.roles import ArchiveGroup
from offchain.dle.store import ChainStore
from offchain.dle.transport import InProcessNetwork

__all__ = ["OUTSIDER", "LocalDle", "MintLedger", "address_of_secret"]

OUTSIDER = b"\xc1" * 20
"""An address with no key, no stake and no role."""


def address_of_secret(secret: bytes) -> bytes:
    return address_of(PrivateKey(secret).public_key)


class MintLedger:
    """The mainchain's minting events as an in-process DLE plays them (`archive.MintedAssets`): `mint`
    records an asset's terms as its `NoteMinted` or `ReceiptIssued` would, and an archive node handed
    this ledger opens a chain only on the terms recorded here. A test gives one archive node a ledger
    of its own to model a mirror that saw other events."""

    def __init__(self) -> None:
        self._terms: dict[tuple[bytes, int], NoteTerms] = {}

    def mint(self, terms: NoteTerms) -> None:
        """Record the minting of `terms`' asset (idempotent; ValueError when minted with other terms)."""
        key = (terms.cash, terms.note)
        plain = replace(terms, witnesses=(), validators_pool=bytes(20))
        if self._terms.setdefault(key, plain) != plain:
            raise ValueError(f"asset #{terms.note} of 0x{terms.cash.hex()} was minted with other terms")

    async def terms(self, cash: bytes, asset_id: int) -> NoteTerms | None:
        return self._terms.get((cash, asset_id))


@dataclass
class LocalDle:
    """Archive group 0 and a set of member nodes, wired on one in-process network."""

    directory: Path
    domains: Domains
    mainchain: Mainchain
    engine: Engine = field(default_factory=default_engine)
    timeouts: Timeouts = field(default_factory=Timeouts)
    network: InProcessNetwork = field(default_factory=InProcessNetwork)
    archives: dict[bytes, ArchiveNode] = field(default_factory=dict)
    members: dict[bytes, MemberNode] = field(default_factory=dict)
    group: ArchiveGroup | None = None
    epoch: int = 1
    refunds: RefundLog | None = None
    """Every node's view of the mainchain's re-fundings (none: every re-funding is refused)."""
    mints: MintLedger = field(default_factory=MintLedger)
    """What every archive node (unless handed its own) reads as the mainchain's minting events."""

    def add_archives(
        self,
        secrets: Sequence[bytes],
        *,
        cls: Callable[..., ArchiveNode] = ArchiveNode,
        mints: dict[bytes, MintLedger] | None = None,
    ) -> None:
        """Archive group 0 of these keys; `mints` gives some of them (by address) a ledger of their own."""
        addresses = sorted(address_of_secret(s) for s in secrets)
        self.group = ArchiveGroup(0, self.epoch, tuple(addresses))
        for secret in secrets:
            address = address_of_secret(secret)
            node = cls(
                secret,
                self.network.transport(address),
                ChainStore(self.directory / f"archive-{address.hex()[:8]}.sqlite"),
                self._current_group,
                self.domains,
                self.engine,
                self.mainchain,
                probe_timeout=min(1.0, self.timeouts.vote),
                authority=NoteAuthority(self.engine, self.refunds),
                minted=(mints or {}).get(address, self.mints),
            )
            self.archives[address] = node
            self.network.register(address, node.handle)

    def _current_group(self) -> ArchiveGroup:
        assert self.group is not None, "add the archive nodes first"
        return self.group

    def group_of(self, group: int) -> ArchiveGroup:
        return self._current_group()

    def add_member(
        self, secret: bytes, *, cls: Callable[..., MemberNode] = MemberNode, role: int | None = None
    ) -> MemberNode:
        """A member node; with `role` (witness or validator) it also waits in every archive pool."""
        address = address_of_secret(secret)
        node = cls(
            secret,
            self.network.transport(address),
            ChainStore(self.directory / f"member-{address.hex()[:8]}.sqlite"),
            self.group_of,
            self.domains,
            self.engine,
            timeouts=self.timeouts,
            authority=NoteAuthority(self.engine, self.refunds),
        )
        self.members[address] = node
        self.network.register(address, node.handle)
        if role is not None:
            self.join_pool(address, role)
        return node

    def join_pool(self, address: bytes, role: int) -> None:
        for archive in self.archives.values():
            archive.pool.join(address, role)

    def add_witnesses(self, secrets: Sequence[bytes]) -> None:
        for secret in secrets:
            self.add_member(secret, role=ROLE_WITNESS)

    def add_validators(self, secrets: Sequence[bytes]) -> None:
        for secret in secrets:
            self.add_member(secret, role=ROLE_VALIDATOR)

    def host(self, chain: bytes) -> ArchiveNode:
        return self.archives[self._current_group().host_of(chain)]

    async def open_note(self, terms: NoteTerms) -> Outcome:
        """Mint the note on the mainchain (`mints`), then have its host draw the group and produce the
        genesis block; the terms' witnesses are ignored (the draw picks them) and the validators' pool
        is the first drawn validator."""
        self.mints.mint(terms)
        return await self.host(terms.chain).open_note(terms)

    def client(self, caller: bytes = OUTSIDER, **kwargs: object) -> DleClient:
        """A client calling as `caller` (20 bytes): nodes answer it only as far as their authorisation
        tables admit that address (a holder, a member, an archive node); the default is nobody's."""
        return DleClient(self.network.transport(caller), self.group_of, self.domains, **kwargs)  # type: ignore[arg-type]

    def kill(self, address: bytes) -> None:
        self.network.unregister(address)
