"""DLE node processes: `python -m offchain.dle.service archive|member|cbdc --config FILE`.

Each process is one node serving the DLE wire protocol (`transport.http_app`: `POST /dle/<method>`) on
127.0.0.1, talking to its peers over `HttpTransport` and to the mainchain over JSON-RPC (web3.py):

- **archive**: an `ArchiveNode` of the archive group whose current epoch counts its key; the waiting
  pool's long-poll hook (`/pool/info`, `/pool/join`, `/pool/wait`: candidates join with a signed
  request, only when staked for their role on the mainchain, and get an assignment when drawn); and
  the chain mirror (`offchain/chain/mirror.py`), followed from its own SQLite cursor: for every
  `NoteIssued` it opens the note's chain when this node hosts it — its group keeps the note (note id
  modulo the groups with an epoch) and `host_of(chain)` is this node — from the mirror's genesis terms
  (mainchain id, CoNETCash, value, holder, CBDC, the transfer fee in force at the mint), which draws
  the witnesses and validators, has the CBDC sign the genesis block and registers the chain on
  DleRegistry. An oDEX receipt (OdexVault's `ReceiptIssued`) opens its receipt chain the same way, from
  `offchain.odex.receipts.receipt_terms` (the vault as `cash`, the depositor as holder, the oDEX fee),
  with a staked CBDC as its creator (`receipt_creator`: a deterministic pick). A chain that cannot open
  yet (pool not filled, a peer down) is retried; pending chains are keyed by chain id.
- **member**: a `MemberNode` (creator, witness and validator in one); with a role in its config
  (2 witness, 3 validator) it waits in the pool of every archive node listed, and joins again after
  each assignment.
- **cbdc**: a member node (the notes' creator) plus an order filler. It waits as a CBDC (role 0) in
  the pool of every archive node listed, so the archive groups can draw it; for each open CoNETCash
  order it asks the host archive node of the order's group for the certified draw (`cbdc_draw`) and
  fills the orders drawn for it (`fill(draw, epoch, signatures)`, signed by its key).

Every DLE request a node serves or sends is signed (offchain/dle/auth.py): each node signs with its
own key and answers only callers its authorisation table admits. Every node also answers
`GET /devnet/info` (JSON: address, chains, and for an archive node its group
and pool) for `conet devnet status`. The config file is JSON, written by `offchain/devnet/dle.py`;
see `NodeConfig`. SIGTERM or SIGINT stops the node cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from web3 import Web3
from web3.contract import Contract

from dle_vm.encoding import decode_rlp, encode_rlp, fixed_bytes, raw_bytes, rlp_list, uint, uint_bytes
from dle_vm.engine import Engine, default_engine
from offchain.chain.addressbook import AddressBook
from offchain.chain.cash import CertifiedDraw, Status
from offchain.chain.deployer import Role
from offchain.chain.dle import DleChainClient
from offchain.chain.mirror import (
    GenesisTerms,
    Mirror,
    MirrorError,
    MirrorEvent,
    NoteIssued,
    NoteRefunded,
    ReceiptIssued,
    ReceiptState,
)
from offchain.chain.web3_contracts import ChainError, Sender, connect
from offchain.dle import roulette
from offchain.dle.archive import ROLE_CBDC, ArchiveNode
from offchain.dle.authority import ChainRefundLog, NoteAuthority
from offchain.dle.digests import Domains
from offchain.dle.local import address_of_secret
from offchain.dle.mainchain import ArchiveGroups, ChainMainchain, NoArchiveGroup
from offchain.dle.member import MemberNode, Timeouts
from offchain.dle.note import NoteTerms, chain_id_of
from offchain.dle.pool_hook import VALIDATOR, WITNESS, PoolHook, PoolHookError, wait_for_assignment
from offchain.dle.roles import WITNESS_COUNT
from offchain.dle.store import ChainStore
from offchain.dle.transport import HttpTransport, RemoteError, Transport, TransportError, http_app, start_guarded
from offchain.odex.receipts import ReceiptIssued as OdexReceipt
from offchain.odex.receipts import receipt_terms

__all__ = [
    "KINDS",
    "ChainOpener",
    "NodeConfig",
    "NoteOpener",
    "ServiceError",
    "log_to_stdout",
    "main",
    "read_key",
    "receipt_creator",
    "serve_until_stopped",
    "stop_on_signals",
]

log = logging.getLogger("conet.dle.service")

KINDS = ("archive", "member", "cbdc")
LOOPBACK = "127.0.0.1"


class ServiceError(RuntimeError):
    """A node cannot start: bad config, missing key, not staked or not in a group."""


@dataclass(frozen=True)
class NodeConfig:
    """One node's config file (JSON, keys as below)."""

    name: str
    kind: str
    """archive, member or cbdc."""
    key_file: Path
    """The node's secp256k1 key, hex (64 characters, optional 0x)."""
    port: int
    rpc: str
    """The mainchain's JSON-RPC URL."""
    address_book: Path
    data_dir: Path
    """Chain store, mirror database."""
    directory: dict[bytes, str]
    """Every DLE node's address → its base URL (http://127.0.0.1:port)."""
    archives: tuple[str, ...] = ()
    """Base URLs of the archive nodes whose pools a witness or validator waits in."""
    role: int | None = None
    """A member's pool role: 2 witness, 3 validator; None: waits in no pool (a CBDC)."""
    host: str = LOOPBACK
    pool_hold: float = 10.0
    pool_grace: float = 5.0
    poll_interval: float = 0.5
    """Mirror and order polling."""
    groups_interval: float = 5.0
    """How often archive-group epochs are re-read from the mainchain."""
    confirmations: int = 0
    """How deep a mainchain event must be before this node signs a DLE block it proves (a re-funding);
    0 on a devnet's instant-mining anvil, more on a public chain."""
    timeouts: Timeouts = field(default_factory=Timeouts)

    @classmethod
    def load(cls, path: Path) -> NodeConfig:
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ServiceError(f"cannot read the config {path}: {error}") from error
        try:
            config = cls(
                name=str(data["name"]),
                kind=str(data["kind"]),
                key_file=Path(data["key_file"]),
                port=int(data["port"]),
                rpc=str(data["rpc"]),
                address_book=Path(data["address_book"]),
                data_dir=Path(data["data_dir"]),
                directory={bytes.fromhex(a.removeprefix("0x")): str(u) for a, u in data["directory"].items()},
                archives=tuple(str(u) for u in data.get("archives", ())),
                role=None if data.get("role") is None else int(data["role"]),
                host=str(data.get("host", LOOPBACK)),
                pool_hold=float(data.get("pool_hold", 10.0)),
                pool_grace=float(data.get("pool_grace", 5.0)),
                poll_interval=float(data.get("poll_interval", 0.5)),
                groups_interval=float(data.get("groups_interval", 5.0)),
                confirmations=int(data.get("confirmations", 0)),
                timeouts=Timeouts(**data.get("timeouts", {})),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ServiceError(f"malformed config {path}: {error!r}") from error
        if config.kind not in KINDS:
            raise ServiceError(f"{path}: kind must be one of {', '.join(KINDS)}, not {config.kind!r}")
        if config.confirmations < 0:
            raise ServiceError(f"{path}: confirmations must be 0 or more, not {config.confirmations}")
        if config.role not in (None, WITNESS, VALIDATOR):
            raise ServiceError(f"{path}: a member waits as witness ({WITNESS}) or validator ({VALIDATOR})")
        return config

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "key_file": str(self.key_file),
            "port": self.port,
            "rpc": self.rpc,
            "address_book": str(self.address_book),
            "data_dir": str(self.data_dir),
            "directory": {"0x" + a.hex(): u for a, u in self.directory.items()},
            "archives": list(self.archives),
            "role": self.role,
            "host": self.host,
            "pool_hold": self.pool_hold,
            "pool_grace": self.pool_grace,
            "poll_interval": self.poll_interval,
            "groups_interval": self.groups_interval,
            "confirmations": self.confirmations,
            "timeouts": {
                "vote": self.timeouts.vote,
                "accept": self.timeouts.accept,
                "archive": self.timeouts.archive,
                "final": self.timeouts.final,
                "not_yet_wait": self.timeouts.not_yet_wait,
                "not_yet_retries": self.timeouts.not_yet_retries,
            },
        }


def read_key(path: Path) -> bytes:
    """A 32-byte key from a hex file."""
    try:
        text = path.read_text().strip().removeprefix("0x")
        key = bytes.fromhex(text)
    except (OSError, ValueError) as error:
        raise ServiceError(f"cannot read a key from {path}: {error}") from error
    if len(key) != 32:
        raise ServiceError(f"{path} holds {len(key)} bytes, not a 32-byte key")
    return key


@dataclass
class _Context:
    """What every node builds from its config: key, mainchain, groups, domains, transport."""

    config: NodeConfig
    secret: bytes
    address: bytes
    w3: Web3
    book: AddressBook
    chain: DleChainClient
    mainchain: ChainMainchain
    groups: ArchiveGroups
    domains: Domains
    engine: Engine
    transport: HttpTransport

    def authority(self) -> NoteAuthority:
        """The proof check of system transactions, against this node's own reading of the mainchain."""
        return NoteAuthority(
            self.engine, ChainRefundLog(self.chain, self.domains.cash, confirmations=self.config.confirmations)
        )

    @classmethod
    def build(cls, config: NodeConfig) -> _Context:
        if config.host != LOOPBACK:
            raise ServiceError(f"a devnet node listens on {LOOPBACK} only, not {config.host}")
        secret = read_key(config.key_file)
        w3 = connect(config.rpc)
        try:
            book = AddressBook.from_json(json.loads(config.address_book.read_text()))
        except (OSError, ValueError) as error:
            raise ServiceError(f"cannot read the address book {config.address_book}: {error}") from error
        chain = DleChainClient.from_address_book(w3, book, secret)
        address = address_of_secret(secret)
        vault = book.contracts.get("OdexVault")
        domains = Domains(
            int(w3.eth.chain_id),
            bytes.fromhex(book.address("DleRegistry")[2:]),
            bytes.fromhex(book.address("CoNETCash")[2:]),
            # Receipt chains' exits are certified in the vault's domain.
            None if vault is None else bytes.fromhex(vault.address[2:]),
        )
        transport = HttpTransport(config.directory, secret=secret)
        return cls(
            config, secret, address, w3, book, chain, ChainMainchain(chain), ArchiveGroups(chain), domains,
            default_engine(), transport,
        )  # fmt: skip


async def _refresh_groups(context: _Context) -> None:
    """Re-read archive-group epochs now and then (a group changes when an archive node (un)stakes)."""
    while True:
        await asyncio.sleep(context.config.groups_interval)
        try:
            await asyncio.to_thread(context.groups.refresh)
        except Exception as error:  # the node stays up with the last groups it read
            log.warning("could not refresh the archive groups: %s", error)


def _hex(data: bytes) -> str:
    return "0x" + data.hex()


# -- archive node ---------------------------------------------------------------------------------------


class DevnetArchiveNode(ArchiveNode):
    """An archive node that tells drawn candidates through the pool hook (their long poll answers)."""

    hook: PoolHook | None = None

    async def run_draw(
        self, chain: bytes, slots: Sequence[roulette.Slot], excluded: Sequence[bytes]
    ) -> tuple[roulette.DrawRecord, dict[int, tuple[bytes, ...]]]:
        record, picks = await super().run_draw(chain, slots, excluded)
        if self.hook is not None:
            for role, addresses in picks.items():
                for address in addresses:
                    payload = encode_rlp([chain, uint_bytes(role), record.hash])
                    if not self.hook.assign(address, payload):
                        # It serves anyway (it is called by the creator); it just was not listening.
                        log.info("drawn 0x%s has no live ticket for its assignment", address.hex()[:8])
        return record, picks


def decode_assignment(payload: bytes) -> tuple[bytes, int, bytes]:
    """(chain, role, draw record hash) of an assignment."""
    chain, role, draw = rlp_list(decode_rlp(payload), 3, "assignment")
    return fixed_bytes(chain, 32, "chain"), uint(role, "role"), fixed_bytes(draw, 32, "draw")


@dataclass
class _Pending:
    """A chain to open: its genesis terms (the draw fills in the witnesses and the validators' pool)."""

    label: str
    """"note 3" or "receipt 1": note ids and receipt ids overlap, so pending work is keyed by chain id."""
    asset_id: int
    terms: NoteTerms
    next_try: float = 0.0
    failures: int = 0


def _note_pending(terms: GenesisTerms) -> _Pending:
    return _Pending(
        f"note {terms.note}",
        terms.note,
        NoteTerms(**terms.raw_addresses(), witnesses=(), validators_pool=bytes(20)),
    )


def receipt_creator(receipt: int, cbdcs: Sequence[bytes]) -> bytes:
    """The creator of receipt `receipt`'s chain: the vault's event names no CBDC, so the host archive
    node picks one, deterministically (every archive node, and anyone checking, picks the same): the
    CBDC-role stakers the mirror knows, ordered by address, taken round-robin by receipt id."""
    if not cbdcs:
        raise ValueError(f"receipt {receipt}: no staked CBDC to create its chain")
    ordered = sorted(cbdcs)
    return ordered[receipt % len(ordered)]


def _receipt_pending(mirror: Mirror, state: ReceiptState) -> _Pending:
    staked = [bytes.fromhex(s.node[2:]) for s in mirror.stakes(Role.CBDC) if s.staked > 0]
    issued = OdexReceipt(
        state.receipt,
        bytes.fromhex(state.asset[2:]),
        bytes.fromhex(state.owner[2:]),
        state.amount,
        state.chain,
        state.fee_bps,
    )
    vault = bytes.fromhex(mirror.contracts["OdexVault"].address[2:])
    terms = receipt_terms(
        issued, mainchain_id=mirror.chain_id, vault=vault, cbdc=receipt_creator(state.receipt, staked)
    )
    return _Pending(f"receipt {state.receipt}", state.receipt, terms)


class ChainOpener:
    """The mirror → genesis wiring of one archive node (see the module docstring): note chains from
    CoNETCash's `NoteMinted`, oDEX receipt chains from OdexVault's `ReceiptIssued`, the same way.

    It is also the node's `archive.MintedAssets`: every genesis this archive node endorses, whoever
    hosts it, is checked against the terms this node's own mirror derives from the minting event."""

    def __init__(self, node: ArchiveNode, groups: ArchiveGroups, mirror: Callable[[], Mirror], interval: float) -> None:
        self._node = node
        self._groups = groups
        self._make_mirror = mirror
        self._interval = interval
        # The mirror's SQLite connection belongs to the thread that opened it: one thread, always.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mirror")
        self._mirror: Mirror | None = None
        self.pending: dict[bytes, _Pending] = {}
        self.opened: list[str] = []
        self._lookup_polled = 0.0

    async def _in_mirror_thread(self, work: Callable[[Mirror], Any]) -> Any:
        def run() -> Any:
            if self._mirror is None:
                self._mirror = self._make_mirror()
            return work(self._mirror)

        return await asyncio.get_running_loop().run_in_executor(self._executor, run)

    async def terms(self, cash: bytes, asset_id: int) -> NoteTerms | None:
        """`archive.MintedAssets`: the genesis terms of asset `asset_id` of `cash` as this node's mirror
        derives them (polled once more when not found: the host may have seen the event first)."""

        def look(mirror: Mirror) -> tuple[NoteTerms | None, list[_Pending]]:
            found = self._minted_terms(mirror, cash, asset_id)
            # At most one extra poll per interval: asking for unminted ids is no way to flood the node.
            if found is not None or time.monotonic() < self._lookup_polled + self._interval:
                return found, []
            self._lookup_polled = time.monotonic()
            # Events this poll brings are the opener's too: hand them over with the answer.
            fresh = self._to_open(mirror, mirror.poll())
            return self._minted_terms(mirror, cash, asset_id), fresh

        found, fresh = await self._in_mirror_thread(look)
        for pending in fresh:
            self.pending[pending.terms.chain] = pending
        return found  # type: ignore[no-any-return]

    @staticmethod
    def _minted_terms(mirror: Mirror, cash: bytes, asset_id: int) -> NoteTerms | None:
        if cash == bytes.fromhex(mirror.contracts["CoNETCash"].address[2:]):
            try:
                return _note_pending(mirror.genesis_terms(asset_id)).terms
            except MirrorError:
                return None  # not minted (or not mirrored yet)
        vault = mirror.contracts.get("OdexVault")
        if vault is None or cash != bytes.fromhex(vault.address[2:]):
            return None
        state = mirror.receipt(asset_id)
        if state is None:
            return None
        try:
            return _receipt_pending(mirror, state).terms
        except ValueError:  # no chain can open from this receipt
            return None

    @staticmethod
    def _to_open(mirror: Mirror, events: Sequence[MirrorEvent]) -> list[_Pending]:
        found: list[_Pending] = []
        for event in events:
            if isinstance(event, NoteIssued):
                found.append(_note_pending(mirror.genesis_terms(event.note)))
            elif isinstance(event, ReceiptIssued):
                state = mirror.receipt(event.receipt)
                if state is None:
                    raise MirrorError(f"receipt {event.receipt} is not in the mirror")
                try:
                    found.append(_receipt_pending(mirror, state))
                except ValueError as error:  # an event no chain can open from: say so, go on
                    log.error("receipt %d: cannot open its chain: %s", event.receipt, error)
            elif isinstance(event, NoteRefunded):
                log.warning("note %d was re-funded from the pool: the devnet does not re-fund chains", event.note)
        return found

    async def run(self) -> None:
        def everything_so_far(mirror: Mirror) -> list[_Pending]:
            mirror.poll()
            return self._to_open(mirror, mirror.events(kinds=[NoteIssued, ReceiptIssued]))

        def new_ones(mirror: Mirror) -> list[_Pending]:
            return self._to_open(mirror, mirror.poll())

        try:
            for pending in await self._in_mirror_thread(everything_so_far):
                self.pending[pending.terms.chain] = pending
            while True:
                try:
                    for pending in await self._in_mirror_thread(new_ones):
                        self.pending[pending.terms.chain] = pending
                    await self._open_due()
                except Exception:
                    log.exception("mirror pass failed; trying again")
                await asyncio.sleep(self._interval)
        finally:
            if self._mirror is not None:
                self._executor.submit(self._mirror.close)
            self._executor.shutdown(wait=False, cancel_futures=False)

    def _pool_ready(self) -> bool:
        roles = [candidate.role for candidate in self._node.pool.order()]
        return roles.count(WITNESS) >= WITNESS_COUNT and roles.count(VALIDATOR) >= 1

    async def _open_due(self) -> None:
        for chain, pending in sorted(self.pending.items(), key=lambda item: (item[1].asset_id, item[0])):
            try:
                keeper = self._groups.keeper_of(pending.asset_id)
            except NoArchiveGroup as error:
                log.warning("%s: %s", pending.label, error)
                continue
            if self._node.address not in keeper.members or keeper.host_of(chain) != self._node.address:
                del self.pending[chain]  # another archive node hosts it
                continue
            if chain in self._node.store.chains():
                del self.pending[chain]
                continue
            if time.monotonic() < pending.next_try or not self._pool_ready():
                continue
            try:
                outcome = await self._node.open_note(pending.terms)
            except Exception as error:
                pending.failures += 1
                pending.next_try = time.monotonic() + min(10.0, 0.5 * 2**pending.failures)
                log.warning("%s: could not open its chain (attempt %d): %s", pending.label, pending.failures, error)
                continue
            del self.pending[chain]
            self.opened.append(pending.label)
            log.info(
                "opened %s: chain 0x%s, genesis 0x%s, group %d, registered on the mainchain",
                pending.label, chain.hex(), outcome.block.hash.hex(), keeper.group,
            )  # fmt: skip


NoteOpener = ChainOpener
"""The name it had while it opened note chains only."""


async def _archive(context: _Context, stop: asyncio.Event) -> None:
    config = context.config
    await asyncio.to_thread(context.groups.refresh)
    own = context.groups.group_with(context.address)
    log.info("archive node 0x%s of group %d epoch %d", context.address.hex(), own.group, own.epoch)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    store = ChainStore(config.data_dir / "chains.sqlite")
    node = DevnetArchiveNode(
        context.secret,
        context.transport,
        store,
        lambda: context.groups.group_with(context.address),
        context.domains,
        context.engine,
        context.mainchain,
        authority=context.authority(),
    )

    async def admit(address: bytes, role: int) -> bool:
        return await asyncio.to_thread(context.mainchain.meets_minimum, address, role)

    # CBDCs wait here too: the group draws each order's CBDC from them (ArchiveNode.draw_cbdc).
    hook = PoolHook(
        node.pool,
        config.pool_hold,
        config.pool_grace,
        archive=node.address,
        admit=admit,
        roles=(ROLE_CBDC, WITNESS, VALIDATOR),
    )
    node.hook = hook
    opener = ChainOpener(
        node,
        context.groups,
        lambda: Mirror.from_address_book(context.w3, context.book, config.data_dir / "mirror.sqlite"),
        config.poll_interval,
    )
    node.minted = opener

    async def info(request: web.Request) -> web.Response:
        group = context.groups.group_with(context.address)
        return web.json_response(
            {
                "name": config.name,
                "kind": config.kind,
                "address": _hex(node.address),
                "group": group.group,
                "epoch": group.epoch,
                "members": [_hex(m) for m in group.members],
                "chains": [_hex(c) for c in store.chains() if _is_note_chain(store, c)],
                "pool": [{"address": _hex(c.address), "role": c.role} for c in node.pool.order()],
                "listening": sorted(_hex(a) for a in hook.waiting()),
                "opened": opener.opened,
                "pending": sorted(p.label for p in opener.pending.values()),
                "slashed": [[_hex(a), r, amount] for a, r, amount in node.slashed],
            }
        )

    app = http_app(node.handle, address=node.address)
    hook.add_routes(app)
    app.router.add_get("/devnet/info", info)
    tasks = [asyncio.create_task(opener.run()), asyncio.create_task(_refresh_groups(context))]
    await _serve(app, config, stop, tasks)
    store.close()


def _is_note_chain(store: ChainStore, chain: bytes) -> bool:
    """Note chains have roles as their meta; a Selection Chain has none."""
    return bool(store.meta(chain))


# -- member node ----------------------------------------------------------------------------------------


async def _wait_in_pool(url: str, context: _Context, role: int) -> None:
    """Wait in one archive node's pool for good: join, long-poll, log each assignment, join again."""
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                payload = await wait_for_assignment(session, url, context.secret, role=role)
            except PoolHookError as error:
                log.warning("pool at %s refused: %s", url, error)
                await asyncio.sleep(2.0)
                continue
            except (aiohttp.ClientError, TimeoutError) as error:
                log.info("pool at %s unreachable: %s", url, error)
                await asyncio.sleep(1.0)
                continue
            try:
                chain, drawn_role, draw = decode_assignment(payload)
            except ValueError as error:
                log.warning("a malformed assignment from %s: %s", url, error)
                continue
            log.info("drawn at %s as role %d for chain 0x%s (draw 0x%s)", url, drawn_role, chain.hex(), draw.hex()[:16])


def _member_node(context: _Context) -> tuple[MemberNode, ChainStore]:
    config = context.config
    config.data_dir.mkdir(parents=True, exist_ok=True)
    store = ChainStore(config.data_dir / "chains.sqlite")
    node = MemberNode(
        context.secret,
        context.transport,
        store,
        context.groups.group_of,
        context.domains,
        context.engine,
        timeouts=config.timeouts,
        authority=context.authority(),
    )
    return node, store


def _member_app(
    context: _Context, node: MemberNode, store: ChainStore, extra: Callable[[], dict[str, Any]]
) -> web.Application:
    async def info(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "name": context.config.name,
                "kind": context.config.kind,
                "address": _hex(node.address),
                "role": context.config.role,
                "chains": [_hex(c) for c in store.chains()],
                "rounds": node.rounds,
                **extra(),
            }
        )

    app = http_app(node.handle, address=node.address)
    app.router.add_get("/devnet/info", info)
    return app


async def _member(context: _Context, stop: asyncio.Event) -> None:
    config = context.config
    await asyncio.to_thread(context.groups.refresh)
    node, store = _member_node(context)
    tasks = [asyncio.create_task(_refresh_groups(context))]
    if config.role is not None:
        tasks += [asyncio.create_task(_wait_in_pool(url, context, config.role)) for url in config.archives]
    log.info("member node 0x%s (pool role %s)", node.address.hex(), config.role)
    await _serve(_member_app(context, node, store, dict), config, stop, tasks)
    store.close()


# -- CBDC -----------------------------------------------------------------------------------------------


DRAW_TIMEOUT = 30.0
"""Seconds a CBDC waits for the host archive node's certified draw (a whole commit-reveal draw)."""


async def fetch_cbdc_draw(
    transport: Transport, groups: ArchiveGroups, domains: Domains, order: int, *, timeout: float = DRAW_TIMEOUT
) -> CertifiedDraw:
    """The certified CBDC draw of CoNETCash order `order`, from the host archive node of the group
    that keeps the order's chain (`ArchiveNode.cbdc_draw`: it draws once, then re-certifies that draw)."""
    chain = chain_id_of(domains.mainchain_id, domains.cash, order)
    host = groups.keeper_of(order).host_of(chain)
    answer = await transport.call(host, "cbdc_draw", encode_rlp([uint_bytes(order)]), timeout=timeout)
    cbdc, selection, group, epoch, certificate = rlp_list(decode_rlp(answer), 5, "CBDC draw")
    return CertifiedDraw(
        order=order,
        cbdc=Web3.to_checksum_address(fixed_bytes(cbdc, 20, "cbdc")),
        selection=fixed_bytes(selection, 32, "selection"),
        group=uint(group, "group"),
        epoch=uint(epoch, "epoch"),
        signatures=raw_bytes(certificate, "certificate"),
    )


class OrderFiller:
    """Fills the open CoNETCash orders its archive groups drew this CBDC for, with one CBDC key: for each
    open order, the certified draw (`fetch`), then `fill(draw, epoch, signatures)` if the draw names it."""

    def __init__(
        self, w3: Web3, cash: Contract, secret: bytes, fetch: Callable[[int], Awaitable[CertifiedDraw]]
    ) -> None:
        self.cash = cash
        self.sender = Sender(w3, secret)
        self.address = Web3.to_checksum_address(address_of_secret(secret))
        self._fetch = fetch
        self._cursor = 1
        self._elsewhere: set[int] = set()
        """Open orders drawn for another CBDC: left to it, and not asked about again."""
        self.filled: list[int] = []

    async def fill_open_orders(self) -> list[int]:
        """One pass from the first id not known settled; returns the ids filled."""
        next_id = int(await asyncio.to_thread(self.cash.functions.nextId().call))
        still_open: list[int] = []
        filled: list[int] = []
        for order in range(self._cursor, next_id):
            status = int((await asyncio.to_thread(self.cash.functions.noteOf(order).call))[0])
            if status != Status.ORDERED:
                continue
            still_open.append(order)
            if order in self._elsewhere:
                continue
            try:
                draw = await self._fetch(order)
            except (TransportError, RemoteError, NoArchiveGroup, ValueError) as error:
                log.info("order %d: no certified CBDC draw yet: %s", order, error)
                continue
            if draw.cbdc != self.address:
                log.info("order %d: drawn for CBDC %s", order, draw.cbdc)
                self._elsewhere.add(order)
                continue
            call = self.cash.functions.fill(draw.draw(), draw.epoch, draw.signatures)
            try:
                await asyncio.to_thread(self.sender.transact, call)
            except ChainError as error:
                log.warning("order %d: could not fill: %s", order, error)
                continue
            log.info("filled order %d (draw 0x%s)", order, draw.selection.hex()[:16])
            still_open.remove(order)
            filled.append(order)
        # Ids below the cursor are settled; an order still open is looked at again next pass.
        self._cursor = min(still_open) if still_open else next_id
        self.filled += filled
        return filled


async def _fill_orders(filler: OrderFiller, interval: float) -> None:
    while True:
        try:
            await filler.fill_open_orders()
        except Exception:
            log.exception("order pass failed; trying again")
        await asyncio.sleep(interval)


async def _cbdc(context: _Context, stop: asyncio.Event) -> None:
    config = context.config
    await asyncio.to_thread(context.groups.refresh)
    node, store = _member_node(context)

    async def fetch(order: int) -> CertifiedDraw:
        return await fetch_cbdc_draw(context.transport, context.groups, context.domains, order)

    filler = OrderFiller(context.w3, context.chain.cash, context.secret, fetch)
    tasks = [
        asyncio.create_task(_refresh_groups(context)),
        asyncio.create_task(_fill_orders(filler, config.poll_interval)),
        *(asyncio.create_task(_wait_in_pool(url, context, ROLE_CBDC)) for url in config.archives),
    ]
    log.info("CBDC 0x%s filling orders of CoNETCash %s", node.address.hex(), context.chain.cash.address)
    app = _member_app(context, node, store, lambda: {"filled": filler.filled})
    await _serve(app, config, stop, tasks)
    store.close()


# -- process --------------------------------------------------------------------------------------------


async def serve_until_stopped(
    app: web.Application,
    name: str,
    kind: str,
    host: str,
    port: int,
    stop: asyncio.Event,
    tasks: Sequence[Awaitable[None]],
) -> None:
    """Serve `app` until `stop` is set, running `tasks` beside it: a task that dies stops the process
    with ServiceError rather than leaving a node that answers but no longer works. Shared by every node
    process (the DLE's here, the oDEX book's in offchain/odex/service.py). The server runs behind
    `transport.ServerLimits` (bounded connections, idle and slow-body timeouts)."""
    runner, _site = await start_guarded(app, host, port)
    log.info("%s (%s) serving on http://%s:%d", name, kind, host, port)
    running = [asyncio.ensure_future(task) for task in tasks]
    try:
        waiter = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait([waiter, *running], return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        for task in done:
            if task is not waiter and task.exception() is not None:
                raise ServiceError(f"{name}: a background task died") from task.exception()
    finally:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        await runner.cleanup()
        log.info("%s stopped", name)


async def _serve(
    app: web.Application, config: NodeConfig, stop: asyncio.Event, tasks: list[asyncio.Task[None]]
) -> None:
    await serve_until_stopped(app, config.name, config.kind, config.host, config.port, stop, tasks)


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT: how `conet devnet down` asks a node process to stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return stop


def log_to_stdout() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout, force=True
    )


_RUNNERS: dict[str, Callable[[_Context, asyncio.Event], Awaitable[None]]] = {
    "archive": _archive,
    "member": _member,
    "cbdc": _cbdc,
}


async def run(config: NodeConfig) -> None:
    """Run the node of `config` until SIGTERM or SIGINT."""
    stop = stop_on_signals()
    context = _Context.build(config)
    try:
        await _RUNNERS[config.kind](context, stop)
    finally:
        await context.transport.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m offchain.dle.service", description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--config", required=True, type=Path, help="the node's JSON config")
    args = parser.parse_args(argv)
    log_to_stdout()
    try:
        config = NodeConfig.load(args.config)
        if config.kind != args.kind:
            raise ServiceError(f"{args.config} configures a {config.kind} node, not a {args.kind} node")
        asyncio.run(run(config))
    except (ServiceError, NoArchiveGroup) as error:
        log.error("%s", error)
        return 2
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
