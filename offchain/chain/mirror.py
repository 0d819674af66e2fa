"""The chain mirror: the mainchain's events the DLE acts on, followed in order and kept in SQLite.

The DLE services run as light processes beside a node, so the mirror uses plain web3.py. It reads the
logs of CoNETCash, Staking, NodeRegistry, DleRegistry and ParameterStore — and OdexVault's receipts when
the deployment has a vault — with bounded `eth_getLogs` ranges, `confirmations` blocks behind the head
(0 on anvil), turns each into a typed frozen dataclass and applies it to queryable state: notes, oDEX
receipts, nodes, stakes, archive-group epochs, chains, parameters and stablecoins. `Mirror.poll()`
returns the newly applied events in chain order; `Mirror.events()` reads them back from the database
for a consumer that keeps its own position.

**Cursor rule.** The cursor holds the position `(block_number, log_index)` of the last applied event
and `scanned_to`, the last block whose logs are all applied, with that block's hash. One block range
is applied in one SQLite transaction together with the new cursor: after a crash or a kill the
database holds either the whole range or none of it, and the next poll resumes at `scanned_to + 1`.
A log at or before the cursor's position is never applied again. If the block at `scanned_to` no
longer has the recorded hash, the chain reorganized deeper than `confirmations`: the mirror stops
with `MirrorReorgError` rather than guess (docs/drafts/dle-mainchain.md).
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from eth_abi.abi import encode
from eth_utils.crypto import keccak
from hexbytes import HexBytes
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractLogicError, Web3Exception
from web3.types import LogReceipt

from offchain.chain.addressbook import AddressBook
from offchain.chain.deployer import Role
from offchain.chain.web3_contracts import addresses_of, load_contract

MIRRORED_CONTRACTS = ("CoNETCash", "Staking", "NodeRegistry", "DleRegistry", "ParameterStore")
OPTIONAL_CONTRACTS = ("OdexVault",)
"""Mirrored when the addresses name them: a deployment from before the oDEX has no vault."""
DEFAULT_MAX_RANGE = 2_000
"""Blocks per `eth_getLogs`: public Avalanche endpoints refuse ranges above 2,048."""

TRANSFER_FEE_BPS = "TRANSFER_FEE_BPS"
SCHEMA_VERSION = 1


class MirrorError(RuntimeError):
    """The mirror cannot go on: wrong database, missing note, unusable node answer."""


class MirrorReorgError(MirrorError):
    """The chain changed below the confirmation depth: a block already mirrored is no longer there."""


# ---------------------------------------------------------------- events


@dataclass(frozen=True, kw_only=True)
class MirrorEvent:
    """One mainchain event, at its place in the chain."""

    block_number: int
    log_index: int
    tx_hash: str

    source: ClassVar[tuple[str, str]]
    """(contract, event) on the mainchain."""

    @property
    def position(self) -> tuple[int, int]:
        return (self.block_number, self.log_index)


@dataclass(frozen=True)
class NoteIssued(MirrorEvent):
    """CoNETCash.NoteMinted: note `note` starts its DLE chain `chain` with `face_value` for `buyer`."""

    note: int
    chain: bytes
    buyer: str
    cbdc: str
    stablecoin: str
    face_value: int
    burned: int
    selection: bytes
    source: ClassVar[tuple[str, str]] = ("CoNETCash", "NoteMinted")


@dataclass(frozen=True)
class NoteRefunded(MirrorEvent):
    """CoNETCash.NoteRefunded: pooled note `note` was re-funded with `amount` for `buyer`."""

    note: int
    buyer: str
    stablecoin: str
    amount: int
    source: ClassVar[tuple[str, str]] = ("CoNETCash", "NoteRefunded")


@dataclass(frozen=True)
class NoteExited(MirrorEvent):
    """CoNETCash.NoteExited: exit certificate `nonce` of `note` was paid."""

    note: int
    holder: str
    receiver: str
    amount: int
    fee: int
    nonce: int
    source: ClassVar[tuple[str, str]] = ("CoNETCash", "NoteExited")


@dataclass(frozen=True)
class NotePooled(MirrorEvent):
    """CoNETCash.NotePooled: `note` is fully exited and waits in the pool."""

    note: int
    stablecoin: str
    source: ClassVar[tuple[str, str]] = ("CoNETCash", "NotePooled")


@dataclass(frozen=True)
class ReceiptIssued(MirrorEvent):
    """OdexVault.ReceiptIssued: receipt `receipt` of `amount` of `asset` (the zero address: native AVAX)
    for `owner`, whose DLE chain is `chain`, trading at `fee_bps`."""

    receipt: int
    asset: str
    owner: str
    amount: int
    chain: bytes
    fee_bps: int
    source: ClassVar[tuple[str, str]] = ("OdexVault", "ReceiptIssued")


@dataclass(frozen=True)
class ReceiptWithdrawn(MirrorEvent):
    """OdexVault.ReceiptWithdrawn: exit certificate `nonce` of receipt `receipt` paid `amount`."""

    receipt: int
    holder: str
    receiver: str
    asset: str
    amount: int
    nonce: int
    source: ClassVar[tuple[str, str]] = ("OdexVault", "ReceiptWithdrawn")


@dataclass(frozen=True)
class Staked(MirrorEvent):
    node: str
    role: Role
    amount: int
    total: int
    source: ClassVar[tuple[str, str]] = ("Staking", "Staked")


@dataclass(frozen=True)
class UnstakeRequested(MirrorEvent):
    node: str
    role: Role
    amount: int
    release_at: int
    source: ClassVar[tuple[str, str]] = ("Staking", "UnstakeRequested")


@dataclass(frozen=True)
class StakeWithdrawn(MirrorEvent):
    node: str
    role: Role
    amount: int
    source: ClassVar[tuple[str, str]] = ("Staking", "Withdrawn")


@dataclass(frozen=True)
class Slashed(MirrorEvent):
    node: str
    role: Role
    amount: int
    evidence_hash: bytes
    reporter: str
    reward: int
    source: ClassVar[tuple[str, str]] = ("Staking", "Slashed")


@dataclass(frozen=True)
class NodeRegistered(MirrorEvent):
    token_id: int
    owner: str
    role: Role
    source: ClassVar[tuple[str, str]] = ("NodeRegistry", "NodeRegistered")


@dataclass(frozen=True)
class NodeUpdated(MirrorEvent):
    token_id: int
    source: ClassVar[tuple[str, str]] = ("NodeRegistry", "NodeUpdated")


@dataclass(frozen=True)
class NodeDeregistered(MirrorEvent):
    token_id: int
    owner: str
    role: Role
    source: ClassVar[tuple[str, str]] = ("NodeRegistry", "NodeDeregistered")


@dataclass(frozen=True)
class ArchiveGroupJoined(MirrorEvent):
    token_id: int
    group: int
    source: ClassVar[tuple[str, str]] = ("NodeRegistry", "ArchiveGroupJoined")


@dataclass(frozen=True)
class ArchiveGroupLeft(MirrorEvent):
    token_id: int
    group: int
    source: ClassVar[tuple[str, str]] = ("NodeRegistry", "ArchiveGroupLeft")


@dataclass(frozen=True)
class ArchiveGroupOpened(MirrorEvent):
    group_count: int
    source: ClassVar[tuple[str, str]] = ("NodeRegistry", "ArchiveGroupOpened")


@dataclass(frozen=True)
class EpochStarted(MirrorEvent):
    group: int
    epoch: int
    members_hash: bytes
    members: tuple[str, ...]
    source: ClassVar[tuple[str, str]] = ("DleRegistry", "EpochStarted")


@dataclass(frozen=True)
class ChainRegistered(MirrorEvent):
    chain: bytes
    asset: str
    asset_id: int
    genesis_hash: bytes
    group: int
    source: ClassVar[tuple[str, str]] = ("DleRegistry", "ChainRegistered")


@dataclass(frozen=True)
class EquivocationReported(MirrorEvent):
    chain: bytes
    height: int
    signer: str
    reporter: str
    slashed: int
    source: ClassVar[tuple[str, str]] = ("DleRegistry", "EquivocationReported")


@dataclass(frozen=True)
class FaultReported(MirrorEvent):
    chain: bytes
    height: int
    offender: str
    role: Role
    kind: int
    evidence_hash: bytes
    reporter: str
    slashed: int
    source: ClassVar[tuple[str, str]] = ("DleRegistry", "FaultReported")


@dataclass(frozen=True)
class ParameterSet(MirrorEvent):
    key: str
    """The parameter's name, e.g. "TRANSFER_FEE_BPS" (the bytes32 key without its padding)."""
    value: int
    source: ClassVar[tuple[str, str]] = ("ParameterStore", "ParameterSet")


@dataclass(frozen=True)
class StablecoinListed(MirrorEvent):
    stablecoin: str
    decimals: int
    source: ClassVar[tuple[str, str]] = ("ParameterStore", "StablecoinListed")


@dataclass(frozen=True)
class StablecoinDelisted(MirrorEvent):
    stablecoin: str
    source: ClassVar[tuple[str, str]] = ("ParameterStore", "StablecoinDelisted")


EVENT_TYPES: tuple[type[MirrorEvent], ...] = (
    NoteIssued,
    NoteRefunded,
    NoteExited,
    NotePooled,
    ReceiptIssued,
    ReceiptWithdrawn,
    Staked,
    UnstakeRequested,
    StakeWithdrawn,
    Slashed,
    NodeRegistered,
    NodeUpdated,
    NodeDeregistered,
    ArchiveGroupJoined,
    ArchiveGroupLeft,
    ArchiveGroupOpened,
    EpochStarted,
    ChainRegistered,
    EquivocationReported,
    FaultReported,
    ParameterSet,
    StablecoinListed,
    StablecoinDelisted,
)
_BY_NAME = {cls.__name__: cls for cls in EVENT_TYPES}

# Solidity argument name → dataclass field, where they differ.
_RENAMES: dict[str, dict[str, str]] = {
    "NoteIssued": {"id": "note", "issuer": "cbdc", "faceValue": "face_value"},
    "NoteRefunded": {"id": "note"},
    "NoteExited": {"id": "note"},
    "NotePooled": {"id": "note"},
    "ReceiptIssued": {"feeBps": "fee_bps"},
    "UnstakeRequested": {"releaseAt": "release_at"},
    "Slashed": {"evidenceHash": "evidence_hash"},
    "NodeRegistered": {"tokenId": "token_id"},
    "NodeUpdated": {"tokenId": "token_id"},
    "NodeDeregistered": {"tokenId": "token_id"},
    "ArchiveGroupJoined": {"tokenId": "token_id"},
    "ArchiveGroupLeft": {"tokenId": "token_id"},
    "ArchiveGroupOpened": {"groupCount": "group_count"},
    "EpochStarted": {"membersHash": "members_hash"},
    "ChainRegistered": {"assetId": "asset_id", "genesisHash": "genesis_hash"},
    "FaultReported": {"evidenceHash": "evidence_hash"},
}


def _field_value(kind: str, value: Any) -> Any:
    """A decoded argument as the dataclass field of type `kind` holds it."""
    if kind == "bytes":
        return bytes(value)
    if kind == "Role":
        return Role(int(value))
    if kind == "tuple[str, ...]":
        return tuple(Web3.to_checksum_address(v) for v in value)
    if kind == "str" and isinstance(value, str) and value.startswith("0x") and len(value) == 42:
        return Web3.to_checksum_address(value)
    if kind == "str" and isinstance(value, bytes | bytearray):
        return bytes(value).rstrip(b"\0").decode()
    return int(value) if kind == "int" else value


def _to_json(event: MirrorEvent) -> str:
    def plain(value: Any) -> Any:
        if isinstance(value, bytes):
            return "0x" + value.hex()
        if isinstance(value, tuple):
            return list(value)
        if isinstance(value, Role):
            return int(value)
        return value

    return json.dumps({f.name: plain(getattr(event, f.name)) for f in dataclasses.fields(event)})


def _from_json(kind: str, payload: str) -> MirrorEvent:
    cls = _BY_NAME[kind]
    data = json.loads(payload)
    values = {}
    for f in dataclasses.fields(cls):
        value = data[f.name]
        if f.type == "bytes":
            value = bytes.fromhex(value[2:])
        values[f.name] = _field_value(str(f.type), value)
    return cls(**values)


# ---------------------------------------------------------------- state


@dataclass(frozen=True)
class Cursor:
    """Where the mirror stands: the last applied event and the last fully applied block."""

    block_number: int
    log_index: int
    scanned_to: int
    scanned_hash: str


@dataclass(frozen=True)
class NoteState:
    note: int
    chain: bytes
    stablecoin: str
    face_value: int
    """The amount of the last issue or re-funding."""
    outstanding: int
    buyer: str
    """Who the note was last issued or re-funded to."""
    cbdc: str
    status: str
    """"live" or "pooled"."""
    exits: int


@dataclass(frozen=True)
class ReceiptState:
    """An oDEX receipt as the vault's events left it."""

    receipt: int
    chain: bytes
    asset: str
    owner: str
    amount: int
    outstanding: int
    """`amount` minus the withdrawals paid."""
    fee_bps: int
    block_number: int
    """The block of ReceiptIssued."""


@dataclass(frozen=True)
class Prices:
    outbound_per_mb: int
    storage_per_mb_hour: int
    per_vcpu: int
    per_mb_memory: int


@dataclass(frozen=True)
class NodeState:
    token_id: int
    owner: str
    role: Role
    public_key: bytes
    endpoints: tuple[str, ...]
    prices: Prices
    region: str
    archive_group: int | None


@dataclass(frozen=True)
class StakeState:
    node: str
    role: Role
    staked: int
    unbonding: int
    release_at: int


@dataclass(frozen=True)
class EpochState:
    group: int
    epoch: int
    members_hash: bytes
    members: tuple[str, ...]
    block_number: int


@dataclass(frozen=True)
class ChainState:
    chain: bytes
    asset: str
    asset_id: int
    genesis_hash: bytes
    group: int
    block_number: int


@dataclass(frozen=True)
class StablecoinState:
    stablecoin: str
    decimals: int
    listed: bool


@dataclass(frozen=True)
class GenesisTerms:
    """What `NoteLedger.initialize`'s Genesis takes from the mainchain (docs/protocols.md, "Genesis").
    The witnesses and the validators' pool come from the DLE's draw, not from here."""

    note: int
    chain: bytes
    mainchain_id: int
    cash: str
    value: int
    holder: str
    cbdc: str
    transfer_fee_bps: int
    """TRANSFER_FEE_BPS in force when the note was minted."""
    block_number: int
    """The block of NoteMinted."""

    def raw_addresses(self) -> dict[str, Any]:
        """The fields with addresses as 20-byte values, as the DLE's NoteTerms takes them."""
        return {
            "note": self.note,
            "mainchain_id": self.mainchain_id,
            "cash": bytes.fromhex(self.cash[2:]),
            "value": self.value,
            "holder": bytes.fromhex(self.holder[2:]),
            "cbdc": bytes.fromhex(self.cbdc[2:]),
            "transfer_fee_bps": self.transfer_fee_bps,
        }


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cursor (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    block_number INTEGER NOT NULL,
    log_index INTEGER NOT NULL,
    scanned_to INTEGER NOT NULL,
    scanned_hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    block_number INTEGER NOT NULL,
    log_index INTEGER NOT NULL,
    tx_hash TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (block_number, log_index)
);
CREATE TABLE IF NOT EXISTS notes (
    note INTEGER PRIMARY KEY,
    chain TEXT NOT NULL,
    stablecoin TEXT NOT NULL,
    face_value TEXT NOT NULL,
    outstanding TEXT NOT NULL,
    buyer TEXT NOT NULL,
    cbdc TEXT NOT NULL,
    status TEXT NOT NULL,
    exits INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS note_genesis (
    note INTEGER PRIMARY KEY,
    chain TEXT NOT NULL,
    holder TEXT NOT NULL,
    cbdc TEXT NOT NULL,
    value TEXT NOT NULL,
    transfer_fee_bps INTEGER NOT NULL,
    block_number INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS receipts (
    receipt INTEGER PRIMARY KEY,
    chain TEXT NOT NULL,
    asset TEXT NOT NULL,
    owner TEXT NOT NULL,
    amount TEXT NOT NULL,
    outstanding TEXT NOT NULL,
    fee_bps INTEGER NOT NULL,
    block_number INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS nodes (
    token_id INTEGER PRIMARY KEY,
    owner TEXT NOT NULL,
    role INTEGER NOT NULL,
    public_key TEXT NOT NULL,
    endpoints TEXT NOT NULL,
    prices TEXT NOT NULL,
    region TEXT NOT NULL,
    archive_group INTEGER
);
CREATE TABLE IF NOT EXISTS stakes (
    node TEXT NOT NULL,
    role INTEGER NOT NULL,
    staked TEXT NOT NULL,
    unbonding TEXT NOT NULL,
    release_at INTEGER NOT NULL,
    PRIMARY KEY (node, role)
);
CREATE TABLE IF NOT EXISTS epochs (
    grp INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    members_hash TEXT NOT NULL,
    members TEXT NOT NULL,
    block_number INTEGER NOT NULL,
    PRIMARY KEY (grp, epoch)
);
CREATE TABLE IF NOT EXISTS chains (
    chain TEXT PRIMARY KEY,
    asset TEXT NOT NULL,
    asset_id TEXT NOT NULL,
    genesis_hash TEXT NOT NULL,
    grp INTEGER NOT NULL,
    block_number INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS parameters (key TEXT PRIMARY KEY, value TEXT NOT NULL, block_number INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS stablecoins (
    stablecoin TEXT PRIMARY KEY,
    decimals INTEGER NOT NULL,
    listed INTEGER NOT NULL
);
"""


def _hex(value: bytes) -> str:
    return "0x" + value.hex()


def _unhex(value: str) -> bytes:
    return bytes.fromhex(value[2:])


def _abi_type(item: Mapping[str, Any]) -> str:
    kind = str(item["type"])
    if kind.startswith("tuple"):
        return "(" + ",".join(_abi_type(c) for c in item["components"]) + ")" + kind[len("tuple") :]
    return kind


class Mirror:
    """Follows the mainchain from a SQLite cursor; see the module's docstring for the rules.

    `addresses` maps contract names to addresses (the address book's; every one of
    MIRRORED_CONTRACTS is needed). `start_block` is where a new database starts scanning: at or before
    the contracts' deployment, or the state misses what happened earlier."""

    def __init__(
        self,
        w3: Web3,
        addresses: Mapping[str, str],
        database: str | Path,
        *,
        start_block: int = 0,
        confirmations: int = 0,
        max_range: int = DEFAULT_MAX_RANGE,
    ) -> None:
        if confirmations < 0 or max_range < 1:
            raise ValueError("confirmations must be >= 0 and max_range >= 1")
        missing = [name for name in MIRRORED_CONTRACTS if name not in addresses]
        if missing:
            raise MirrorError(f"no address for {', '.join(missing)}")
        self.w3 = w3
        self.confirmations = confirmations
        self.max_range = max_range
        self.contracts: dict[str, Contract] = {
            name: load_contract(w3, name, addresses[name])
            for name in (*MIRRORED_CONTRACTS, *OPTIONAL_CONTRACTS)
            if name in addresses
        }
        self.chain_id = int(w3.eth.chain_id)
        # (address, topic0) → (event class, contract)
        self._routes: dict[tuple[str, bytes], tuple[type[MirrorEvent], Contract]] = {}
        for cls in EVENT_TYPES:
            contract_name, event_name = cls.source
            if contract_name not in self.contracts:
                continue  # an optional contract this deployment does not have
            contract = self.contracts[contract_name]
            self._routes[(contract.address, self._topic(contract, event_name))] = (cls, contract)
        self._db = sqlite3.connect(str(database), isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._bind(start_block)

    @classmethod
    def from_address_book(
        cls,
        w3: Web3,
        book: AddressBook,
        database: str | Path,
        *,
        confirmations: int = 0,
        max_range: int = DEFAULT_MAX_RANGE,
    ) -> Mirror:
        """A mirror of the deployment in `book`, scanning from its earliest contract's block."""
        if book.chain_id != int(w3.eth.chain_id):
            raise MirrorError(f"the address book is for chain {book.chain_id}, the node is chain {w3.eth.chain_id}")
        start = min(
            book.contracts[name].block for name in (*MIRRORED_CONTRACTS, *OPTIONAL_CONTRACTS) if name in book.contracts
        )
        return cls(
            w3, addresses_of(book), database, start_block=start, confirmations=confirmations, max_range=max_range
        )

    def close(self) -> None:
        self._db.close()

    # ---------------------------------------------------------------- following

    def poll(self) -> list[MirrorEvent]:
        """Applies every event up to `confirmations` blocks behind the head, range by range, each range
        in one transaction with the cursor; returns the events applied, in chain order."""
        cursor = self.cursor()
        self._check_reorg(cursor)
        target = int(self.w3.eth.block_number) - self.confirmations
        applied: list[MirrorEvent] = []
        while cursor.scanned_to < target:
            start = cursor.scanned_to + 1
            end, logs = self._logs(start, min(target, start + self.max_range - 1))
            end_hash = HexBytes(self.w3.eth.get_block(end)["hash"]).to_0x_hex()
            events = [
                event
                for event in (self._decode(log) for log in sorted(logs, key=_log_position))
                if event is not None and event.position > (cursor.block_number, cursor.log_index)
            ]
            with self._transaction():
                for event in events:
                    self._apply(event)
                last = events[-1].position if events else (cursor.block_number, cursor.log_index)
                cursor = Cursor(last[0], last[1], end, end_hash)
                self._db.execute(
                    "UPDATE cursor SET block_number = ?, log_index = ?, scanned_to = ?, scanned_hash = ? WHERE id = 1",
                    (cursor.block_number, cursor.log_index, cursor.scanned_to, cursor.scanned_hash),
                )
            applied.extend(events)
        return applied

    def cursor(self) -> Cursor:
        row = self._db.execute("SELECT block_number, log_index, scanned_to, scanned_hash FROM cursor").fetchone()
        return Cursor(int(row[0]), int(row[1]), int(row[2]), str(row[3]))

    def events(
        self, after: tuple[int, int] = (-1, -1), kinds: Sequence[type[MirrorEvent]] | None = None
    ) -> list[MirrorEvent]:
        """The applied events after position (block, log index), in chain order; only `kinds` if given."""
        rows = self._db.execute(
            "SELECT kind, payload FROM events WHERE block_number > ? OR (block_number = ? AND log_index > ?)"
            " ORDER BY block_number, log_index",
            (after[0], after[0], after[1]),
        ).fetchall()
        names = None if kinds is None else {cls.__name__ for cls in kinds}
        return [_from_json(kind, payload) for kind, payload in rows if names is None or kind in names]

    # ---------------------------------------------------------------- state

    def note(self, note: int) -> NoteState | None:
        row = self._db.execute("SELECT * FROM notes WHERE note = ?", (note,)).fetchone()
        return None if row is None else _note_state(row)

    def notes(self, status: str | None = None) -> list[NoteState]:
        rows = self._db.execute(
            "SELECT * FROM notes WHERE ? IS NULL OR status = ? ORDER BY note", (status, status)
        ).fetchall()
        return [_note_state(row) for row in rows]

    def receipt(self, receipt: int) -> ReceiptState | None:
        row = self._db.execute("SELECT * FROM receipts WHERE receipt = ?", (receipt,)).fetchone()
        return None if row is None else _receipt_state(row)

    def receipts(self) -> list[ReceiptState]:
        return [_receipt_state(row) for row in self._db.execute("SELECT * FROM receipts ORDER BY receipt")]

    def node(self, token_id: int) -> NodeState | None:
        row = self._db.execute("SELECT * FROM nodes WHERE token_id = ?", (token_id,)).fetchone()
        return None if row is None else _node_state(row)

    def nodes(self, role: Role | None = None) -> list[NodeState]:
        value = None if role is None else int(role)
        rows = self._db.execute(
            "SELECT * FROM nodes WHERE ? IS NULL OR role = ? ORDER BY token_id", (value, value)
        ).fetchall()
        return [_node_state(row) for row in rows]

    def stake(self, node: str, role: Role) -> StakeState:
        """`node`'s stake in `role` (zeros when it never staked)."""
        address = Web3.to_checksum_address(node)
        row = self._db.execute(
            "SELECT staked, unbonding, release_at FROM stakes WHERE node = ? AND role = ?", (address, int(role))
        ).fetchone()
        if row is None:
            return StakeState(address, Role(role), 0, 0, 0)
        return StakeState(address, Role(role), int(row[0]), int(row[1]), int(row[2]))

    def stakes(self, role: Role | None = None) -> list[StakeState]:
        value = None if role is None else int(role)
        rows = self._db.execute(
            "SELECT node, role, staked, unbonding, release_at FROM stakes WHERE ? IS NULL OR role = ?"
            " ORDER BY role, node",
            (value, value),
        ).fetchall()
        return [StakeState(r[0], Role(r[1]), int(r[2]), int(r[3]), int(r[4])) for r in rows]

    def epoch(self, group: int, epoch: int | None = None) -> EpochState | None:
        """Epoch `epoch` of `group`, or its latest when `epoch` is None."""
        if epoch is None:
            row = self._db.execute(
                "SELECT * FROM epochs WHERE grp = ? ORDER BY epoch DESC LIMIT 1", (group,)
            ).fetchone()
        else:
            row = self._db.execute("SELECT * FROM epochs WHERE grp = ? AND epoch = ?", (group, epoch)).fetchone()
        if row is None:
            return None
        return EpochState(int(row[0]), int(row[1]), _unhex(row[2]), tuple(json.loads(row[3])), int(row[4]))

    def chain(self, chain: bytes) -> ChainState | None:
        row = self._db.execute("SELECT * FROM chains WHERE chain = ?", (_hex(chain),)).fetchone()
        if row is None:
            return None
        return ChainState(_unhex(row[0]), row[1], int(row[2]), _unhex(row[3]), int(row[4]), int(row[5]))

    def parameter(self, key: str) -> int | None:
        row = self._db.execute("SELECT value FROM parameters WHERE key = ?", (key,)).fetchone()
        return None if row is None else int(row[0])

    def parameters(self) -> dict[str, int]:
        return {k: int(v) for k, v in self._db.execute("SELECT key, value FROM parameters ORDER BY key")}

    def stablecoins(self) -> dict[str, StablecoinState]:
        rows = self._db.execute("SELECT stablecoin, decimals, listed FROM stablecoins ORDER BY stablecoin")
        return {r[0]: StablecoinState(r[0], int(r[1]), bool(r[2])) for r in rows}

    def genesis_terms(self, note: int) -> GenesisTerms:
        """The mainchain's part of note `note`'s genesis; MirrorError if its NoteMinted is not mirrored."""
        row = self._db.execute(
            "SELECT chain, holder, cbdc, value, transfer_fee_bps, block_number FROM note_genesis WHERE note = ?",
            (note,),
        ).fetchone()
        if row is None:
            raise MirrorError(f"note {note} has no NoteMinted in the mirror (not minted yet, or not polled)")
        return GenesisTerms(
            note=note,
            chain=_unhex(row[0]),
            mainchain_id=self.chain_id,
            cash=self.contracts["CoNETCash"].address,
            value=int(row[3]),
            holder=row[1],
            cbdc=row[2],
            transfer_fee_bps=int(row[4]),
            block_number=int(row[5]),
        )

    # ---------------------------------------------------------------- internals

    def _bind(self, start_block: int) -> None:
        """Ties a new database to this chain and these contracts; refuses an existing one of others."""
        identity = {
            "schema": str(SCHEMA_VERSION),
            "chain_id": str(self.chain_id),
            "contracts": json.dumps({n: c.address for n, c in sorted(self.contracts.items())}),
        }
        with self._transaction():
            stored = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
            if not stored:
                self._db.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", sorted(identity.items()))
                self._db.execute(
                    "INSERT INTO cursor (id, block_number, log_index, scanned_to, scanned_hash)"
                    " VALUES (1, -1, -1, ?, '')",
                    (start_block - 1,),
                )
            elif stored != identity:
                raise MirrorError(f"the database mirrors another deployment: {stored} (this one: {identity})")

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    @staticmethod
    def _topic(contract: Contract, event: str) -> bytes:
        abi: list[dict[str, Any]] = list(contract.abi)  # type: ignore[arg-type]
        for item in abi:
            if item.get("type") == "event" and item.get("name") == event:
                types = ",".join(_abi_type(i) for i in item.get("inputs", []))
                return keccak(text=f"{event}({types})")
        raise MirrorError(f"{event} is not an event of the contract at {contract.address}")

    def _logs(self, start: int, end: int) -> tuple[int, list[LogReceipt]]:
        """The mirrored logs of blocks start..end; a node refusing the range (too many results, too many
        blocks) is asked again for halves of it. Returns the last block covered and the logs."""
        addresses = sorted({address for address, _ in self._routes})
        topics = sorted({topic for _, topic in self._routes})
        while True:
            try:
                logs = self.w3.eth.get_logs(
                    {
                        "fromBlock": start,
                        "toBlock": end,
                        "address": addresses,  # type: ignore[typeddict-item]
                        "topics": [[HexBytes(t) for t in topics]],
                    }
                )
                return end, list(logs)
            except (Web3Exception, ValueError) as exc:
                if end == start:
                    raise MirrorError(f"eth_getLogs refused block {start}: {exc}") from exc
                end = start + (end - start) // 2

    def _check_reorg(self, cursor: Cursor) -> None:
        if not cursor.scanned_hash:
            return
        block = self.w3.eth.get_block(cursor.scanned_to)
        current = HexBytes(block["hash"]).to_0x_hex()
        if current != cursor.scanned_hash:
            raise MirrorReorgError(
                f"block {cursor.scanned_to} was {cursor.scanned_hash} when mirrored and is {current} now: "
                "the chain reorganized below the confirmation depth; rebuild the mirror with more confirmations"
            )

    def _decode(self, log: LogReceipt) -> MirrorEvent | None:
        topics = log["topics"]
        if not topics:
            return None
        route = self._routes.get((Web3.to_checksum_address(log["address"]), bytes(topics[0])))
        if route is None:
            return None
        cls, contract = route
        args = contract.events[cls.source[1]]().process_log(log)["args"]
        renames = _RENAMES.get(cls.__name__, {})
        values: dict[str, Any] = {renames.get(name, name): value for name, value in args.items()}
        kinds = {f.name: str(f.type) for f in dataclasses.fields(cls)}
        fields = {name: _field_value(kinds[name], value) for name, value in values.items() if name in kinds}
        return cls(
            block_number=int(log["blockNumber"]),
            log_index=int(log["logIndex"]),
            tx_hash=HexBytes(log["transactionHash"]).to_0x_hex(),
            **fields,
        )

    def _apply(self, event: MirrorEvent) -> None:
        self._db.execute(
            "INSERT INTO events (block_number, log_index, tx_hash, kind, payload) VALUES (?, ?, ?, ?, ?)",
            (event.block_number, event.log_index, event.tx_hash, type(event).__name__, _to_json(event)),
        )
        handler = self._HANDLERS.get(type(event))
        if handler is not None:
            handler(self, event)

    # One handler per event kind that changes state; the events table keeps every kind.

    def _note_issued(self, e: NoteIssued) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO notes VALUES (?, ?, ?, ?, ?, ?, ?, 'live', 0)",
            (e.note, _hex(e.chain), e.stablecoin, str(e.face_value), str(e.face_value), e.buyer, e.cbdc),
        )
        self._db.execute(
            "INSERT OR REPLACE INTO note_genesis VALUES (?, ?, ?, ?, ?, ?, ?)",
            (e.note, _hex(e.chain), e.buyer, e.cbdc, str(e.face_value), self._fee_at(e), e.block_number),
        )

    def _fee_at(self, e: NoteIssued) -> int:
        """TRANSFER_FEE_BPS when `e` was minted: the mirrored value (events apply in chain order, so it
        is the one in force), or the ParameterStore read at that block when the mirror started later."""
        value = self.parameter(TRANSFER_FEE_BPS)
        if value is not None:
            return value
        key = TRANSFER_FEE_BPS.encode().ljust(32, b"\0")
        try:
            return int(self.contracts["ParameterStore"].functions.value(key).call(block_identifier=e.block_number))
        except (ContractLogicError, Web3Exception, ValueError) as exc:
            raise MirrorError(f"cannot read {TRANSFER_FEE_BPS} at block {e.block_number}: {exc}") from exc

    def _note_refunded(self, e: NoteRefunded) -> None:
        # A re-funded note keeps its chain and its CBDC; the row exists unless it was minted before
        # the mirror's start, when the chain id is derived and the CBDC is unknown.
        chain = keccak(
            encode(["uint256", "address", "uint256"], [self.chain_id, self.contracts["CoNETCash"].address, e.note])
        )
        self._db.execute(
            "INSERT INTO notes VALUES (?, ?, ?, ?, ?, ?, '', 'live', 0) ON CONFLICT (note) DO UPDATE SET"
            " stablecoin = excluded.stablecoin, face_value = excluded.face_value,"
            " outstanding = excluded.outstanding, buyer = excluded.buyer, status = 'live'",
            (e.note, _hex(chain), e.stablecoin, str(e.amount), str(e.amount), e.buyer),
        )

    def _note_exited(self, e: NoteExited) -> None:
        row = self._db.execute("SELECT outstanding FROM notes WHERE note = ?", (e.note,)).fetchone()
        if row is None:
            return  # minted before the mirror's start: nothing to update
        self._db.execute(
            "UPDATE notes SET outstanding = ?, exits = exits + 1 WHERE note = ?",
            (str(int(row[0]) - e.amount), e.note),
        )

    def _note_pooled(self, e: NotePooled) -> None:
        self._db.execute("UPDATE notes SET status = 'pooled', outstanding = '0' WHERE note = ?", (e.note,))

    def _receipt_issued(self, e: ReceiptIssued) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO receipts VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (e.receipt, _hex(e.chain), e.asset, e.owner, str(e.amount), str(e.amount), e.fee_bps, e.block_number),
        )

    def _receipt_withdrawn(self, e: ReceiptWithdrawn) -> None:
        row = self._db.execute("SELECT outstanding FROM receipts WHERE receipt = ?", (e.receipt,)).fetchone()
        if row is None:
            return  # issued before the mirror's start: nothing to update
        self._db.execute(
            "UPDATE receipts SET outstanding = ? WHERE receipt = ?", (str(int(row[0]) - e.amount), e.receipt)
        )

    def _stake_row(self, node: str, role: Role) -> tuple[int, int, int]:
        row = self._db.execute(
            "SELECT staked, unbonding, release_at FROM stakes WHERE node = ? AND role = ?", (node, int(role))
        ).fetchone()
        return (0, 0, 0) if row is None else (int(row[0]), int(row[1]), int(row[2]))

    def _write_stake(self, node: str, role: Role, staked: int, unbonding: int, release_at: int) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO stakes VALUES (?, ?, ?, ?, ?)",
            (node, int(role), str(staked), str(unbonding), release_at),
        )

    def _staked(self, e: Staked) -> None:
        _, unbonding, release_at = self._stake_row(e.node, e.role)
        self._write_stake(e.node, e.role, e.total, unbonding, release_at)

    def _unstake_requested(self, e: UnstakeRequested) -> None:
        staked, unbonding, _ = self._stake_row(e.node, e.role)
        self._write_stake(e.node, e.role, staked - e.amount, unbonding + e.amount, e.release_at)

    def _withdrawn(self, e: StakeWithdrawn) -> None:
        staked, _, _ = self._stake_row(e.node, e.role)
        self._write_stake(e.node, e.role, staked, 0, 0)

    def _slashed(self, e: Slashed) -> None:
        # Staking.slash takes bonded stake first, then unbonding stake.
        staked, unbonding, release_at = self._stake_row(e.node, e.role)
        from_staked = min(e.amount, staked)
        unbonding -= e.amount - from_staked
        self._write_stake(e.node, e.role, staked - from_staked, unbonding, release_at if unbonding else 0)

    def _node_registered(self, e: NodeRegistered) -> None:
        profile = self._profile(e.token_id, e.block_number)
        self._db.execute(
            "INSERT OR REPLACE INTO nodes VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
            (e.token_id, e.owner, int(e.role), *profile),
        )

    def _node_updated(self, e: NodeUpdated) -> None:
        _public_key, endpoints, prices, region = self._profile(e.token_id, e.block_number)
        self._db.execute(
            "UPDATE nodes SET endpoints = ?, prices = ?, region = ? WHERE token_id = ?",
            (endpoints, prices, region, e.token_id),
        )

    def _profile(self, token_id: int, block: int) -> tuple[str, str, str, str]:
        """(public key, endpoints, prices, region) of node `token_id` as of `block`: events carry only the
        token id. A node deregistered within the same block reads as empty; the deregistration follows."""
        registry = self.contracts["NodeRegistry"].functions
        empty = ("0x", "[]", json.dumps([0, 0, 0, 0]), "")
        try:
            node = registry.nodeOf(token_id).call(block_identifier=block)
        except ContractLogicError:
            return empty
        except (Web3Exception, ValueError):
            # A node that pruned that block's state: the current profile; later updates apply anyway.
            try:
                node = registry.nodeOf(token_id).call()
            except ContractLogicError:
                return empty
        _role, _registered, prices, public_key, region, endpoints = node
        return (_hex(bytes(public_key)), json.dumps(list(endpoints)), json.dumps([int(p) for p in prices]), region)

    def _node_deregistered(self, e: NodeDeregistered) -> None:
        self._db.execute("DELETE FROM nodes WHERE token_id = ?", (e.token_id,))

    def _archive_joined(self, e: ArchiveGroupJoined) -> None:
        self._db.execute("UPDATE nodes SET archive_group = ? WHERE token_id = ?", (e.group, e.token_id))

    def _archive_left(self, e: ArchiveGroupLeft) -> None:
        self._db.execute("UPDATE nodes SET archive_group = NULL WHERE token_id = ?", (e.token_id,))

    def _epoch_started(self, e: EpochStarted) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO epochs VALUES (?, ?, ?, ?, ?)",
            (e.group, e.epoch, _hex(e.members_hash), json.dumps(list(e.members)), e.block_number),
        )

    def _chain_registered(self, e: ChainRegistered) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO chains VALUES (?, ?, ?, ?, ?, ?)",
            (_hex(e.chain), e.asset, str(e.asset_id), _hex(e.genesis_hash), e.group, e.block_number),
        )

    def _parameter_set(self, e: ParameterSet) -> None:
        self._db.execute("INSERT OR REPLACE INTO parameters VALUES (?, ?, ?)", (e.key, str(e.value), e.block_number))

    def _stablecoin_listed(self, e: StablecoinListed) -> None:
        self._db.execute("INSERT OR REPLACE INTO stablecoins VALUES (?, ?, 1)", (e.stablecoin, e.decimals))

    def _stablecoin_delisted(self, e: StablecoinDelisted) -> None:
        self._db.execute("UPDATE stablecoins SET listed = 0 WHERE stablecoin = ?", (e.stablecoin,))

    _HANDLERS: ClassVar[dict[type[MirrorEvent], Callable[[Mirror, Any], None]]] = {
        NoteIssued: _note_issued,
        NoteRefunded: _note_refunded,
        NoteExited: _note_exited,
        NotePooled: _note_pooled,
        ReceiptIssued: _receipt_issued,
        ReceiptWithdrawn: _receipt_withdrawn,
        Staked: _staked,
        UnstakeRequested: _unstake_requested,
        StakeWithdrawn: _withdrawn,
        Slashed: _slashed,
        NodeRegistered: _node_registered,
        NodeUpdated: _node_updated,
        NodeDeregistered: _node_deregistered,
        ArchiveGroupJoined: _archive_joined,
        ArchiveGroupLeft: _archive_left,
        EpochStarted: _epoch_started,
        ChainRegistered: _chain_registered,
        ParameterSet: _parameter_set,
        StablecoinListed: _stablecoin_listed,
        StablecoinDelisted: _stablecoin_delisted,
    }


def _log_position(log: LogReceipt) -> tuple[int, int]:
    return (int(log["blockNumber"]), int(log["logIndex"]))


def _note_state(row: Sequence[Any]) -> NoteState:
    return NoteState(
        note=int(row[0]),
        chain=_unhex(row[1]),
        stablecoin=row[2],
        face_value=int(row[3]),
        outstanding=int(row[4]),
        buyer=row[5],
        cbdc=row[6],
        status=row[7],
        exits=int(row[8]),
    )


def _receipt_state(row: Sequence[Any]) -> ReceiptState:
    return ReceiptState(
        receipt=int(row[0]),
        chain=_unhex(row[1]),
        asset=row[2],
        owner=row[3],
        amount=int(row[4]),
        outstanding=int(row[5]),
        fee_bps=int(row[6]),
        block_number=int(row[7]),
    )


def _node_state(row: Sequence[Any]) -> NodeState:
    return NodeState(
        token_id=int(row[0]),
        owner=row[1],
        role=Role(int(row[2])),
        public_key=_unhex(row[3]),
        endpoints=tuple(json.loads(row[4])),
        prices=Prices(*json.loads(row[5])),
        region=row[6],
        archive_group=None if row[7] is None else int(row[7]),
    )


__all__ = [
    "EVENT_TYPES",
    "MIRRORED_CONTRACTS",
    "OPTIONAL_CONTRACTS",
    "ArchiveGroupJoined",
    "ArchiveGroupLeft",
    "ArchiveGroupOpened",
    "ChainRegistered",
    "ChainState",
    "Cursor",
    "EpochStarted",
    "EpochState",
    "EquivocationReported",
    "FaultReported",
    "GenesisTerms",
    "Mirror",
    "MirrorError",
    "MirrorEvent",
    "MirrorReorgError",
    "NodeDeregistered",
    "NodeRegistered",
    "NodeState",
    "NodeUpdated",
    "NoteExited",
    "NoteIssued",
    "NotePooled",
    "NoteRefunded",
    "NoteState",
    "ParameterSet",
    "Prices",
    "ReceiptIssued",
    "ReceiptState",
    "ReceiptWithdrawn",
    "Slashed",
    "StablecoinDelisted",
    "StablecoinListed",
    "StablecoinState",
    "StakeState",
    "StakeWithdrawn",
    "Staked",
    "UnstakeRequested",
]
