"""The conservation check: no value created or lost between the mainchain and the note chains.

DESIGN §6's invariant, checked end to end on a running deployment:

- **per note** (live or pooled on CoNETCash): `CoNETCash.outstandingOf(note)` equals the sum of the
  balances on the note's chain — every account that ever appears in it: in the program's event logs
  (holders, receivers of transfers, payees, replaced witnesses), in its roles record (creator,
  witnesses, validators, excluded members) and in the program's `roles()` (CBDC, witnesses, validators'
  pool) — plus the exits already final on the chain whose certificates CoNETCash has not paid yet
  (`exitOf(nonce)` for every nonce below `exitCount()`, not `isExitNonceUsed(note, nonce)`). The chain's
  own books are checked too: Σ balances == funded - exited (`supply()`).
- **per stablecoin**: `CoNETCash.backing(coin)` equals Σ `outstandingOf` of its notes, and the coin
  CoNETCash holds equals backing + open orders + the CBDCs' unclaimed fees.
- **per oDEX receipt and asset** (`check_receipts`): the same per-chain rule against
  `OdexVault.receiptOf(receipt).outstanding`, and what the vault holds of each asset == `custodyOf` ==
  Σ outstanding of its receipts.

The chain is read whole (every block and the state after it) from an archive node — over the DLE's
`chain` call (`http_source`) or from its chain store (`store_source`) — and re-executed block by block
from the program's empty state: each block must reach its header's state root and link to its
parent, and the logs come from that re-execution, not from anyone's word. The head's archive
certificate is checked against the group's current epoch. A broken rule raises `ConservationError`
naming the note (or coin) and the difference; otherwise a `ConservationReport` summarises it all.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial
from typing import Any

from eth_abi.abi import decode
from web3 import Web3
from web3.contract import Contract

from dle_vm.block import Block
from dle_vm.engine import Engine, Log, default_engine
from dle_vm.state import State
from offchain.dle.digests import Domains
from offchain.dle.member import execute
from offchain.dle.messages import ChainDump
from offchain.dle.note import PROGRAM, NoteReader, Program, genesis_state, note_program
from offchain.dle.roles import ArchiveGroup, RolesError
from offchain.dle.store import ChainStore
from offchain.dle.transport import Transport

__all__ = [
    "AssetCheck",
    "ChainSource",
    "CoinCheck",
    "ConservationError",
    "ConservationReport",
    "NoteCheck",
    "ReceiptCheck",
    "ReceiptReport",
    "check_conservation",
    "check_receipts",
    "http_source",
    "store_source",
]

_LIVE, _POOLED = 2, 3

ChainSource = Callable[[bytes], Awaitable[ChainDump]]
"""A whole chain (every block from genesis, with its certificate and post-state) and its roles."""


class ConservationError(RuntimeError):
    """Value was created or lost: `subject` is the note or coin, `difference` what is missing (+) or
    created (-) in the subject's units."""

    def __init__(self, subject: str, difference: int, message: str) -> None:
        super().__init__(f"{subject}: {message} (difference {difference:+d})")
        self.subject = subject
        self.difference = difference


@dataclass(frozen=True)
class NoteCheck:
    note: int
    chain: bytes
    stablecoin: str
    status: str
    height: int
    outstanding: int
    """CoNETCash.outstandingOf(note)."""
    balances: dict[bytes, int]
    """Every non-zero balance on the chain's head."""
    unpaid_exits: tuple[tuple[int, int], ...]
    """(nonce, amount) final on the chain, not yet paid on the mainchain."""
    paid_exits: int
    funded: int
    exited: int


@dataclass(frozen=True)
class CoinCheck:
    stablecoin: str
    backing: int
    outstanding: int
    """Σ outstandingOf over the coin's notes."""
    held: int
    """The coin CoNETCash holds."""
    open_orders: int
    unclaimed_fees: int


@dataclass(frozen=True)
class ConservationReport:
    notes: tuple[NoteCheck, ...]
    coins: tuple[CoinCheck, ...]
    decimals: dict[str, int] = field(default_factory=dict)

    def lines(self, names: dict[bytes, str] | None = None) -> list[str]:
        """The report in words; `names` labels known addresses."""
        names = names or {}

        def amount(units: int, coin: str) -> str:
            return f"{Decimal(units).scaleb(-self.decimals.get(coin, 0)).normalize():f}"

        out = []
        for note in self.notes:
            total = sum(note.balances.values())
            unpaid = sum(a for _, a in note.unpaid_exits)
            out.append(
                f"note {note.note} ({note.status}, height {note.height}): outstanding "
                f"{amount(note.outstanding, note.stablecoin)} = balances {amount(total, note.stablecoin)} "
                f"+ unpaid exits {amount(unpaid, note.stablecoin)}; exits paid {note.paid_exits}"
            )
            for account, balance in sorted(note.balances.items(), key=lambda item: -item[1]):
                label = names.get(account, "0x" + account.hex())
                out.append(f"    {label:<44} {amount(balance, note.stablecoin):>12}")
        for coin in self.coins:
            out.append(
                f"coin {coin.stablecoin}: backing {amount(coin.backing, coin.stablecoin)} = Σ outstanding; held "
                f"{amount(coin.held, coin.stablecoin)} = backing + open orders "
                f"{amount(coin.open_orders, coin.stablecoin)} + unclaimed fees "
                f"{amount(coin.unclaimed_fees, coin.stablecoin)}"
            )
        return out


# -- where chains come from -----------------------------------------------------------------------------


def http_source(
    transport: Transport, groups: Callable[[int], ArchiveGroup], domains: Domains, keeper: Callable[[bytes], int]
) -> ChainSource:
    """Chains from their host archive node over the DLE's `chain` call. `keeper(chain)` is the group
    that keeps a chain (DleRegistry.chainOf); the head's certificate is checked against that group's
    epoch, and the blocks below the head are tied to it by their hashes (checked in the replay)."""

    async def fetch(chain: bytes) -> ChainDump:
        group = groups(keeper(chain))
        dump = ChainDump.decode(await transport.call(group.host_of(chain), "chain", chain, timeout=30.0))
        block, certificate, _ = dump.blocks[-1]
        try:
            group.verify(domains.certificate(chain, block.header.height, block.hash), certificate)
        except RolesError as error:
            raise ConservationError(f"chain 0x{chain.hex()}", 0, f"the head is not certified: {error}") from error
        return dump

    return fetch


def store_source(store: ChainStore) -> ChainSource:
    """Chains from an archive node's chain store (a local file; safe beside the running node)."""

    async def fetch(chain: bytes) -> ChainDump:
        from offchain.dle.roles import RolesRecord

        entries = tuple((s.block, s.certificate, s.state) for s in store.blocks(chain))
        return ChainDump(entries, RolesRecord.decode(store.meta(chain)))

    return fetch


# -- the check ------------------------------------------------------------------------------------------


def _addresses_in(program: Program, logs: Iterable[Log]) -> set[bytes]:
    """Every address any of the program's events names (indexed or not)."""
    events = {}
    for item in program.abi:
        if item["type"] == "event":
            topic, types, indexed = program.event(str(item["name"]))
            events[topic] = (types, indexed)
    found: set[bytes] = set()
    for log in logs:
        if log.address != PROGRAM or not log.topics or log.topics[0] not in events:
            continue
        types, indexed = events[log.topics[0]]
        plain = decode([t for t, i in zip(types, indexed, strict=True) if not i], log.data)
        topics = iter(log.topics[1:])
        values = iter(plain)
        for kind, is_indexed in zip(types, indexed, strict=True):
            value: Any = next(topics)[12:] if is_indexed else next(values)
            if kind == "address":
                found.add(value if isinstance(value, bytes) else bytes.fromhex(str(value)[2:]))
    return found


def _replay(engine: Engine, chain: bytes, blocks: Iterable[tuple[Block, bytes, State]]) -> tuple[State, list[Log]]:
    """Re-execute the chain from the program's empty state: each block must reach its root."""
    pre = genesis_state()
    parent = bytes(32)
    logs: list[Log] = []
    height = -1
    for block, _certificate, stored in blocks:
        header = block.header
        height += 1
        if header.height != height or header.parent_hash != parent or header.chain_id != chain:
            raise ConservationError(f"chain 0x{chain.hex()}", 0, f"block {header.height} does not link to its parent")
        post, receipts = execute(engine, pre, header, block.transactions)
        if post.root != header.state_root or stored.root != header.state_root:
            raise ConservationError(f"chain 0x{chain.hex()}", 0, f"block {header.height} re-executes to another root")
        logs += [log for receipt in receipts for log in receipt.logs]
        pre, parent = post, block.hash
    if height < 0:
        raise ConservationError(f"chain 0x{chain.hex()}", 0, "the archive node sent no blocks")
    return pre, logs


def _addr(value: Any) -> bytes:
    return bytes.fromhex(str(value)[2:])


def _exit_paid(payer: Contract, asset_id: int, nonce: int) -> bool:
    return bool(payer.functions.isExitNonceUsed(asset_id, nonce).call())


async def _check_chain(
    subject: str,
    chain: bytes,
    outstanding: int,
    payer: str,
    is_paid: Callable[[int], bool],
    source: ChainSource,
    engine: Engine,
    reader: NoteReader,
    program: Program,
) -> tuple[int, dict[bytes, int], tuple[tuple[int, int], ...], int, int, int]:
    """One note or receipt chain against the `outstanding` value its payer holds for it: the chain's own
    books (Σ balances == funded - exited), then outstanding == Σ balances + the exits final on the chain
    that the payer has not paid (`is_paid(nonce)` false). (height, balances, unpaid exits, exits paid,
    funded, exited); ConservationError naming `subject` otherwise."""
    try:
        dump = await source(chain)
    except ConservationError:
        raise
    except Exception as error:
        raise ConservationError(subject, outstanding, f"its chain cannot be read: {error}") from error
    head, logs = _replay(engine, chain, dump.blocks)
    roles = dump.roles.roles
    cbdc, witnesses, pool = reader.view(head, chain, "roles")
    accounts = _addresses_in(program, logs) | {roles.creator, *roles.witnesses, *roles.validators, *roles.excluded}
    accounts |= {_addr(cbdc), _addr(pool), *(_addr(w) for w in witnesses)}
    balances = {a: reader.balance(head, chain, a) for a in sorted(accounts)}
    balances = {a: b for a, b in balances.items() if b}
    funded, exited = reader.supply(head, chain)
    total = sum(balances.values())
    if total != funded - exited:
        raise ConservationError(
            subject, funded - exited - total, f"the chain's balances add up to {total}, its books to {funded - exited}"
        )
    (count,) = reader.view(head, chain, "exitCount")
    unpaid, paid = [], 0
    for nonce in range(int(count)):
        ((_note, _chain, _height, _holder, _receiver, amount, _nonce, _before),) = reader.view(
            head, chain, "exitOf", nonce
        )
        if is_paid(nonce):
            paid += 1
        else:
            unpaid.append((nonce, int(amount)))
    expected = total + sum(a for _, a in unpaid)
    if outstanding != expected:
        raise ConservationError(
            subject,
            outstanding - expected,
            f"{payer} holds {outstanding} outstanding, the chain accounts for {expected} "
            f"({total} in balances + {expected - total} in unpaid exits)",
        )
    return len(dump.blocks) - 1, balances, tuple(unpaid), paid, funded, exited


async def check_conservation(
    cash: Contract,
    source: ChainSource,
    *,
    engine: Engine | None = None,
    tokens: Callable[[str], Contract] | None = None,
) -> ConservationReport:
    """Check every note and coin of `cash` (see the module docstring); raise `ConservationError`.

    `tokens(address)` gives an ERC-20 contract for a stablecoin (default: the MockStablecoin ABI, which
    has balanceOf and decimals like any ERC-20)."""
    from offchain.chain.web3_contracts import load_contract

    engine = engine or default_engine()
    program = note_program()
    reader = NoteReader(engine, program)
    w3: Web3 = cash.w3
    erc20 = tokens or (lambda address: load_contract(w3, "MockStablecoin", address))
    functions = cash.functions
    notes: list[NoteCheck] = []
    by_coin: dict[str, int] = {}
    cbdcs: dict[str, set[str]] = {}
    for note in range(1, int(functions.nextId().call())):
        view = functions.noteOf(note).call()
        status, stablecoin, party, chain = int(view[0]), str(view[1]), str(view[4]), bytes(view[9])
        if status not in (_LIVE, _POOLED):
            continue
        by_coin.setdefault(stablecoin, 0)
        cbdcs.setdefault(stablecoin, set()).add(party)
        outstanding = int(functions.outstandingOf(note).call())
        by_coin[stablecoin] += outstanding
        height, balances, unpaid, paid, funded, exited = await _check_chain(
            f"note {note}", chain, outstanding, "CoNETCash", partial(_exit_paid, cash, note), source, engine, reader,
            program,
        )  # fmt: skip
        notes.append(
            NoteCheck(
                note, chain, stablecoin, "live" if status == _LIVE else "pooled", height,
                outstanding, balances, unpaid, paid, funded, exited,
            )
        )  # fmt: skip
    coins = []
    decimals = {}
    for stablecoin, outstanding in sorted(by_coin.items()):
        token = erc20(stablecoin)
        decimals[stablecoin] = int(token.functions.decimals().call())
        backing = int(functions.backing(stablecoin).call())
        if backing != outstanding:
            raise ConservationError(
                f"coin {stablecoin}", backing - outstanding, f"backing {backing} but Σ outstanding {outstanding}"
            )
        held = int(token.functions.balanceOf(cash.address).call())
        orders = int(functions.openOrderValue(stablecoin).call())
        fees = sum(int(functions.earningsOf(c, stablecoin).call()[0]) for c in cbdcs[stablecoin])
        if held != backing + orders + fees:
            raise ConservationError(
                f"coin {stablecoin}",
                held - backing - orders - fees,
                f"CoNETCash holds {held}, backing {backing} + open orders {orders} + unclaimed fees {fees}",
            )
        coins.append(CoinCheck(stablecoin, backing, outstanding, held, orders, fees))
    return ConservationReport(tuple(notes), tuple(coins), decimals)


@dataclass(frozen=True)
class ReceiptCheck:
    receipt: int
    chain: bytes
    asset: str
    height: int
    outstanding: int
    """OdexVault.outstandingOf(receipt)."""
    balances: dict[bytes, int]
    unpaid_exits: tuple[tuple[int, int], ...]
    paid_exits: int
    funded: int
    exited: int


@dataclass(frozen=True)
class AssetCheck:
    asset: str
    custody: int
    """OdexVault.custodyOf(asset): Σ outstanding of its receipts, as the vault counts it."""
    outstanding: int
    held: int
    """What the vault holds of the asset (native: its balance)."""


@dataclass(frozen=True)
class ReceiptReport:
    receipts: tuple[ReceiptCheck, ...]
    assets: tuple[AssetCheck, ...]

    def lines(self, names: dict[bytes, str] | None = None) -> list[str]:
        names = names or {}
        out = []
        for receipt in self.receipts:
            total, unpaid = sum(receipt.balances.values()), sum(a for _, a in receipt.unpaid_exits)
            out.append(
                f"receipt {receipt.receipt} ({receipt.asset}, height {receipt.height}): outstanding "
                f"{receipt.outstanding} = balances {total} + unpaid exits {unpaid}; exits paid {receipt.paid_exits}"
            )
            for account, balance in sorted(receipt.balances.items(), key=lambda item: -item[1]):
                out.append(f"    {names.get(account, '0x' + account.hex()):<44} {balance:>24}")
        for asset in self.assets:
            out.append(
                f"asset {asset.asset}: held {asset.held} = custody {asset.custody} = Σ outstanding {asset.outstanding}"
            )
        return out


async def check_receipts(
    vault: Contract,
    source: ChainSource,
    *,
    engine: Engine | None = None,
    tokens: Callable[[str], Contract] | None = None,
) -> ReceiptReport:
    """The same invariant for the oDEX: every receipt's outstanding value in OdexVault against its
    receipt chain (balances + exits final there and not yet withdrawn), and per asset: what the vault
    holds == `custodyOf` == Σ outstanding. Receipts withdrawn in full are checked too (their chains
    must then hold nothing)."""
    from offchain.chain.web3_contracts import load_contract

    engine = engine or default_engine()
    program = note_program()
    reader = NoteReader(engine, program)
    w3: Web3 = vault.w3
    erc20 = tokens or (lambda address: load_contract(w3, "MockStablecoin", address))
    functions = vault.functions
    receipts: list[ReceiptCheck] = []
    by_asset: dict[str, int] = {}
    for receipt in range(1, int(functions.nextReceipt().call())):
        asset, _depositor, _amount, outstanding, chain, _fee = functions.receiptOf(receipt).call()
        asset, outstanding, chain = str(asset), int(outstanding), bytes(chain)
        by_asset[asset] = by_asset.get(asset, 0) + outstanding
        height, balances, unpaid, paid, funded, exited = await _check_chain(
            f"receipt {receipt}", chain, outstanding, "OdexVault", partial(_exit_paid, vault, receipt), source,
            engine, reader, program,
        )  # fmt: skip
        receipts.append(
            ReceiptCheck(receipt, chain, asset, height, outstanding, balances, unpaid, paid, funded, exited)
        )
    assets = []
    for asset, outstanding in sorted(by_asset.items()):
        custody = int(functions.custodyOf(asset).call())
        if int(asset, 16) == 0:
            held = int(w3.eth.get_balance(vault.address))
        else:
            held = int(erc20(asset).functions.balanceOf(vault.address).call())
        if not held == custody == outstanding:
            raise ConservationError(
                f"asset {asset}",
                held - outstanding,
                f"the vault holds {held}, custody {custody}, Σ outstanding {outstanding}",
            )
        assets.append(AssetCheck(asset, custody, outstanding, held))
    return ReceiptReport(tuple(receipts), tuple(assets))
