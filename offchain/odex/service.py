"""The oDEX order book as devnet processes: `python -m offchain.odex.service creator|member --config FILE`.

One market per book (the devnet runs mETH/AVAX). The book's group is the creator and its members
(offchain/odex/group.py), each its own process on 127.0.0.1 talking over the DLE's `HttpTransport`:

- **creator** (the book's operator; its key is the payee of every order's authorization): admits signed
  orders and cancels over a small HTTP API, seals them into batches every `batch_interval` seconds with
  every member's signature (`BookCreator.propose` + `seal`: final only with 100%), and hands each final
  batch's fills to the `Settler` (offchain/odex/settlement.py; on a thread and event loop of its own),
  which writes the two `deductTo` legs of each fill on the traders' receipt chains through the archive
  nodes (`DleClient` over HTTP) and journals them in `settlement.sqlite`.
- **member** (a witness or a validator of the book): serves `odex.endorse` / `odex.final` on
  `POST /dle/<method>`, replaying every proposed batch on its own replica and signing only what replays.

The creator's HTTP API (docs/protocols.md, "oDEX book service"):

    POST /odex/order    body: SignedOrder wire bytes  → JSON: the order's hash, its batch, its fills and
                                                         whether it rests (waits for the batch to be final)
    POST /odex/cancel   body: SignedCancel wire bytes → JSON: the batch that took the order off the book
    GET  /odex/book                                    → JSON: depth (bids, asks) and the resting orders
    GET  /odex/trades                                  → JSON: every fill with its settlement status

Refusals are JSON `{"code", "message"}` with status 400 (the order's fault: its `OrderError` class as
the code, or `wrong-receipt`), 409 (`not-final`: the group did not sign the batch) or 504 (`timeout`).

Admission adds one check the matching program cannot make: the receipt chain an order draws on must be
a receipt of the vault in the right asset (the base asset for a SELL, the quote asset for a BUY), read
from DleRegistry's chain record and the vault's receipt. Otherwise a SELL drawing on an AVAX receipt
would deliver AVAX as if it were the base asset. Members repeat the check on every batch they are asked
to sign (`ReceiptAssets`), so a creator cannot slip such an order past them.

Limits of the devnet service: the book's group is fixed by the devnet's config (not drawn from a pool),
and the book lives in memory: a restarted creator starts an empty book (the settlement journal persists
and resumes its pending legs). Every loop is bounded by timeouts; SIGTERM or SIGINT stops cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from dle_vm.engine import default_engine
from offchain.chain.addressbook import AddressBook
from offchain.chain.dle import DleChainClient
from offchain.chain.web3_contracts import connect, load_contract
from offchain.dle.auth import Forbidden, caller
from offchain.dle.client import DleClient
from offchain.dle.digests import Domains
from offchain.dle.local import address_of_secret
from offchain.dle.mainchain import ArchiveGroups
from offchain.dle.service import ServiceError, log_to_stdout, read_key, serve_until_stopped, stop_on_signals
from offchain.dle.transport import HttpTransport, RemoteError, http_app
from offchain.odex.book import Fill, OrderBook
from offchain.odex.group import (
    ENDORSE,
    Batch,
    BatchRefused,
    BatchStore,
    BookCreator,
    BookMember,
    Input,
    InputKind,
    book_chain_id,
)
from offchain.odex.order import Order, OrderDomain, OrderError, Side, SignedCancel, SignedOrder, market_id
from offchain.odex.settlement import FillReport, FillStatus, SettlementJournal, Settler

__all__ = ["ROLES", "BookConfig", "BookError", "main"]

log = logging.getLogger("conet.odex.service")

ROLES = ("creator", "member")
LOOPBACK = "127.0.0.1"
WAIT = 30.0
"""Seconds an order's POST waits for its batch to be final."""


SWEEP_INTERVAL = 1
"""Seconds between checks for expired resting orders."""
BATCHES = "batches.sqlite"
"""The book's final batches in each book process's data directory (group.BatchStore)."""


class BookError(ServiceError):
    """The book service cannot start: bad config, missing key, no vault."""


def _hex(data: bytes) -> str:
    return "0x" + data.hex()


def _address(text: str) -> bytes:
    value = bytes.fromhex(text.removeprefix("0x"))
    if len(value) != 20:
        raise ValueError(f"{text} is not a 20-byte address")
    return value


@dataclass(frozen=True)
class BookConfig:
    """A book process's config file (JSON), written by offchain/devnet/dle.py."""

    name: str
    role: str
    """creator or member."""
    key_file: Path
    port: int
    rpc: str
    address_book: Path
    data_dir: Path
    directory: dict[bytes, str]
    """Every node's address → base URL: the archive nodes, the receipt chains' members, the book's group."""
    members: tuple[bytes, ...]
    """The book's group in signing order, the creator first."""
    base: bytes
    quote: bytes
    """The market's assets (address(0) = native AVAX)."""
    host: str = LOOPBACK
    batch_interval: float = 0.2
    seal_timeout: float = 5.0

    @classmethod
    def load(cls, path: Path) -> BookConfig:
        try:
            data = json.loads(path.read_text())
            config = cls(
                name=str(data["name"]),
                role=str(data["role"]),
                key_file=Path(data["key_file"]),
                port=int(data["port"]),
                rpc=str(data["rpc"]),
                address_book=Path(data["address_book"]),
                data_dir=Path(data["data_dir"]),
                directory={_address(a): str(u) for a, u in data["directory"].items()},
                members=tuple(_address(m) for m in data["members"]),
                base=_address(data["base"]),
                quote=_address(data["quote"]),
                host=str(data.get("host", LOOPBACK)),
                batch_interval=float(data.get("batch_interval", 0.2)),
                seal_timeout=float(data.get("seal_timeout", 5.0)),
            )
        except (OSError, json.JSONDecodeError) as error:
            raise BookError(f"cannot read the config {path}: {error}") from error
        except (KeyError, TypeError, ValueError) as error:
            raise BookError(f"malformed config {path}: {error!r}") from error
        if config.role not in ROLES:
            raise BookError(f"{path}: role must be one of {', '.join(ROLES)}, not {config.role!r}")
        if config.host != LOOPBACK:
            raise BookError(f"a devnet book listens on {LOOPBACK} only, not {config.host}")
        if len(config.members) < 2:
            raise BookError(f"{path}: a book's group has its creator and at least one member")
        return config

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "key_file": str(self.key_file),
            "port": self.port,
            "rpc": self.rpc,
            "address_book": str(self.address_book),
            "data_dir": str(self.data_dir),
            "directory": {_hex(a): u for a, u in self.directory.items()},
            "members": [_hex(m) for m in self.members],
            "base": _hex(self.base),
            "quote": _hex(self.quote),
            "host": self.host,
            "batch_interval": self.batch_interval,
            "seal_timeout": self.seal_timeout,
        }


@dataclass
class _Context:
    config: BookConfig
    secret: bytes
    address: bytes
    chain: DleChainClient
    groups: ArchiveGroups
    domains: Domains
    domain: OrderDomain
    market: bytes
    book_chain: bytes
    transport: HttpTransport

    @classmethod
    def build(cls, config: BookConfig) -> _Context:
        secret = read_key(config.key_file)
        address = address_of_secret(secret)
        if address not in config.members:
            raise BookError(f"0x{address.hex()} is not a member of the book's group {config.members}")
        if (config.role == "creator") != (config.members[0] == address):
            raise BookError("the creator is the first of the book's members, and only it")
        w3 = connect(config.rpc)
        try:
            book = AddressBook.from_json(json.loads(config.address_book.read_text()))
        except (OSError, ValueError) as error:
            raise BookError(f"cannot read the address book {config.address_book}: {error}") from error
        if "OdexVault" not in book.contracts:
            raise BookError("the deployment has no OdexVault")
        vault = _address(book.address("OdexVault"))
        mainchain_id = int(w3.eth.chain_id)
        domains = Domains(
            mainchain_id, _address(book.address("DleRegistry")), _address(book.address("CoNETCash")), vault
        )
        market = market_id(config.base, config.quote)
        chain = DleChainClient.from_address_book(w3, book)
        return cls(
            config, secret, address, chain, ArchiveGroups(chain), domains, OrderDomain(mainchain_id, vault), market,
            book_chain_id(domains, vault, market), HttpTransport(config.directory, secret=secret),
        )  # fmt: skip


class Refused(Exception):
    """An input the book does not take: (HTTP status, code, message)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _fill_json(fill: Fill) -> dict[str, Any]:
    return {
        "sequence": fill.sequence,
        "maker": _hex(fill.maker),
        "taker": _hex(fill.taker),
        "buyer": _hex(fill.buyer),
        "seller": _hex(fill.seller),
        "price": str(fill.price),
        "base": str(fill.base),
        "quote": str(fill.quote),
        "buy_receipt_chain": _hex(fill.buy_receipt_chain),
        "sell_receipt_chain": _hex(fill.sell_receipt_chain),
    }


@dataclass
class _Trade:
    fill: Fill
    batch: int
    status: str = FillStatus.PENDING.value
    reason: str | None = None
    base_height: int | None = None
    quote_height: int | None = None
    base_fee: int | None = None
    quote_fee: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            **_fill_json(self.fill),
            "batch": self.batch,
            "status": self.status,
            "reason": self.reason,
            "base_leg": {"height": self.base_height, "fee": None if self.base_fee is None else str(self.base_fee)},
            "quote_leg": {"height": self.quote_height, "fee": None if self.quote_fee is None else str(self.quote_fee)},
        }


@dataclass
class _Queued:
    entry: Input
    answer: asyncio.Future[dict[str, Any]]
    order: bytes
    """The order hash an ORDER carries, or the order a CANCEL takes off."""


class ReceiptAssets:
    """Which asset a receipt chain holds, read once from the mainchain: DleRegistry's record (a chain of
    the vault, and the archive group that keeps it) and the vault's receipt of that id. Blocking (web3)."""

    def __init__(self, context: _Context) -> None:
        self._context = context
        self._known: dict[bytes, tuple[bytes, int]] = {}

    def of(self, chain: bytes) -> tuple[bytes, int]:
        """(asset, archive group) of a registered receipt chain of the vault; Refused otherwise."""
        known = self._known.get(chain)
        if known is not None:
            return known
        context = self._context
        if not context.chain.is_registered(chain):
            raise Refused(400, "wrong-receipt", f"chain 0x{chain.hex()} is not a registered DLE chain")
        record = context.chain.chain_record(chain)
        vault = context.domains.vault
        assert vault is not None
        if _address(record.asset) != vault:
            raise Refused(400, "wrong-receipt", f"chain 0x{chain.hex()} is not a receipt chain of the vault")
        contract = load_contract(context.chain.w3, "OdexVault", _hex(vault))
        asset = _address(str(contract.functions.receiptOf(record.asset_id).call()[0]))
        self._known[chain] = (asset, record.group)
        return asset, record.group

    def check(self, order: Order) -> None:
        """Refused unless `order` draws on a receipt of the base asset (SELL) or the quote asset (BUY)."""
        config = self._context.config
        expected = config.base if order.side is Side.SELL else config.quote
        asset, _group = self.of(order.receipt_chain)
        if asset != expected:
            raise Refused(
                400,
                "wrong-receipt",
                f"a {order.side.name} draws on a receipt of 0x{expected.hex()}; chain 0x{order.receipt_chain.hex()} "
                f"is a receipt of 0x{asset.hex()}",
            )


class SettlementThread:
    """The settler on a thread of its own, with its own event loop: its checks execute every leg in the
    note program (Python), which on the book's loop would stall admission and sealing while a batch
    settles. One thread: fills settle one batch after the other, in the book's order."""

    def __init__(self, make: Callable[[], tuple[Settler, HttpTransport, SettlementJournal]]) -> None:
        self._make = make
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="settler")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._parts: tuple[Settler, HttpTransport, SettlementJournal] | None = None

    def _settle(self, fills: list[Fill]) -> list[FillReport]:
        if self._loop is None or self._parts is None:
            self._loop = asyncio.new_event_loop()
            self._parts = self._make()
        return self._loop.run_until_complete(self._parts[0].settle(fills))

    async def settle(self, fills: Sequence[Fill]) -> list[FillReport]:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._settle, list(fills))

    def _close(self) -> None:
        if self._loop is None or self._parts is None:
            return
        _settler, transport, journal = self._parts
        self._loop.run_until_complete(transport.aclose())
        journal.close()
        self._loop.close()

    async def aclose(self) -> None:
        """Close the transport and the journal on their thread, after the batch in hand (bounded)."""
        future = asyncio.get_running_loop().run_in_executor(self._executor, self._close)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(future), 5.0)
        self._executor.shutdown(wait=False, cancel_futures=True)


@dataclass
class BookService:
    """The creator's work: admission, sealing, settlement, and what the API reads."""

    context: _Context
    creator: BookCreator
    settler: SettlementThread
    trades: list[_Trade] = field(default_factory=list)
    batches: int = 0
    refused_batches: int = 0
    _queue: list[_Queued] = field(default_factory=list)
    _next_sweep: int = 0
    _settle: asyncio.Queue[list[Fill]] = field(default_factory=asyncio.Queue)
    receipts: ReceiptAssets = field(init=False)

    def __post_init__(self) -> None:
        self.receipts = ReceiptAssets(self.context)

    # -- admission ------------------------------------------------------------------------------------

    def group_of_chain(self, chain: bytes) -> int:
        """The archive group that keeps a receipt chain (the settler's DleClient routes by it)."""
        return self.receipts.of(chain)[1]

    async def order(self, body: bytes) -> dict[str, Any]:
        context = self.context
        now = int(time.time())
        try:
            signed = SignedOrder.decode(body)
            verified = signed.verify(context.domain, context.market, now)
        except OrderError as error:
            raise Refused(400, type(error).__name__, str(error)) from error
        await asyncio.to_thread(self.receipts.check, signed.order)
        return await self._enqueue(Input(InputKind.ORDER, now, body), verified.hash)

    async def cancel(self, body: bytes) -> dict[str, Any]:
        now = int(time.time())
        try:
            signed = SignedCancel.decode(body)
            signed.signer(self.context.domain, now)
        except OrderError as error:
            raise Refused(400, type(error).__name__, str(error)) from error
        return await self._enqueue(Input(InputKind.CANCEL, now, body), signed.cancel.order)

    async def _enqueue(self, entry: Input, order: bytes) -> dict[str, Any]:
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Queued(entry, answer, order))
        try:
            return await asyncio.wait_for(asyncio.shield(answer), WAIT)
        except TimeoutError:
            raise Refused(504, "timeout", f"no final batch within {WAIT:.0f} s") from None

    def resume(self) -> None:
        """After a restart: the trades of the stored final batches, and their fills handed to the
        settler again (its journal answers those already settled without submitting anything)."""
        for final in self.creator.final:
            fills = final.batch.fills
            self.trades.extend(_Trade(fill, final.batch.height) for fill in fills)
            if fills:
                self._settle.put_nowait(list(fills))
        self.batches = len(self.creator.final)

    # -- sealing --------------------------------------------------------------------------------------

    async def seal_once(self) -> None:
        """Seal what is queued into one batch, final with every member's signature; answer each input."""
        taken, self._queue = self._queue, []
        sweep = self._sweep_due()
        if not taken and sweep is None:
            return
        for queued in taken:
            self.creator.admit(queued.entry)
        if sweep is not None:
            self.creator.admit(sweep)
        batch, refused = self.creator.propose()
        reasons = {id(entry): reason for entry, reason in refused}
        try:
            await self.creator.seal(batch, self.context.config.members)
        except BatchRefused as error:
            self.refused_batches += 1
            log.warning("%s", error)
            for queued in taken:
                _answer(queued, Refused(409, "not-final", str(error)))
            return
        except Exception as error:
            self.refused_batches += 1
            log.exception("sealing batch %d failed", batch.height)
            for queued in taken:
                _answer(queued, Refused(409, "not-final", f"batch {batch.height}: {error}"))
            return
        self.batches += 1
        if batch.fills:
            self.trades.extend(_Trade(fill, batch.height) for fill in batch.fills)
            self._settle.put_nowait(list(batch.fills))
        log.info("batch %d final: %d inputs, %d fills", batch.height, len(batch.inputs), len(batch.fills))
        book = self.creator.book
        for queued in taken:
            reason = reasons.get(id(queued.entry))
            if reason is not None:
                _answer(queued, Refused(400, "refused-by-book", reason))
                continue
            fills = [f for f in batch.fills if queued.order in (f.maker, f.taker)]
            resting = book.resting(queued.order)
            _answer(
                queued,
                {
                    "order": _hex(queued.order),
                    "kind": queued.entry.kind.name.lower(),
                    "batch": batch.height,
                    "fills": [_fill_json(f) for f in fills],
                    "resting": None if resting is None else str(resting.remaining),
                },
            )

    def _sweep_due(self) -> Input | None:
        """An expiry sweep, at most every SWEEP_INTERVAL seconds and only when a resting order expired:
        otherwise an expired order would leave the book only when a new order met it."""
        now = int(time.time())
        if now < self._next_sweep:
            return None
        self._next_sweep = now + SWEEP_INTERVAL
        return Input(InputKind.EXPIRE, now, b"") if self.creator.book.expired(now) else None

    async def seal_loop(self) -> None:
        while True:
            await asyncio.sleep(self.context.config.batch_interval)
            await self.seal_once()

    # -- settlement -----------------------------------------------------------------------------------

    async def settle_loop(self) -> None:
        """Settle final batches' fills in order; a failed round is retried (the journal makes it safe)."""
        await self.settler.settle([])  # legs left in flight by an earlier run
        while True:
            fills = await self._settle.get()
            while True:
                try:
                    reports = await self.settler.settle(fills)
                except Exception:
                    log.exception("settling fills %d..%d failed; retrying", fills[0].sequence, fills[-1].sequence)
                    await asyncio.sleep(1.0)
                    continue
                if all(r.status is not FillStatus.PENDING for r in reports):
                    break
                self._record(reports)
                await asyncio.sleep(1.0)  # a leg in flight without an answer: resolve it again
            self._record(reports)

    def _record(self, reports: Sequence[FillReport]) -> None:
        by_sequence = {t.fill.sequence: t for t in self.trades}
        for report in reports:
            trade = by_sequence.get(report.fill.sequence)
            if trade is None:
                continue
            trade.status, trade.reason = report.status.value, report.reason
            if report.base is not None and report.base.final:
                trade.base_height, trade.base_fee = report.base.height, report.base.fee
            if report.quote is not None and report.quote.final:
                trade.quote_height, trade.quote_fee = report.quote.height, report.quote.fee

    # -- reading --------------------------------------------------------------------------------------

    def depth(self) -> dict[str, Any]:
        book: OrderBook = self.creator.book
        snapshot = book.depth()
        return {
            "market": _hex(self.context.market),
            "base": _hex(self.context.config.base),
            "quote": _hex(self.context.config.quote),
            "sequence": snapshot.sequence,
            "height": self.creator.height,
            "bids": [[str(level.price), str(level.base), level.orders] for level in snapshot.bids],
            "asks": [[str(level.price), str(level.base), level.orders] for level in snapshot.asks],
            "orders": [
                {
                    "hash": _hex(o.hash),
                    "trader": _hex(o.trader),
                    "side": o.side.name,
                    "price": str(o.price),
                    "remaining": str(o.remaining),
                }
                for o in book.orders()
            ],
        }

    def info(self) -> dict[str, Any]:
        statuses = [t.status for t in self.trades]
        return {
            "resting": len(self.creator.book),
            "batches": self.batches,
            "refused_batches": self.refused_batches,
            "fills": len(self.trades),
            "settled": statuses.count(FillStatus.SETTLED.value),
            "unsettled": len(statuses) - statuses.count(FillStatus.SETTLED.value),
        }


def _answer(queued: _Queued, result: dict[str, Any] | Refused) -> None:
    if queued.answer.done():
        return
    if isinstance(result, Refused):
        queued.answer.set_exception(result)
    else:
        queued.answer.set_result(result)


def _refusal(error: Refused) -> web.Response:
    return web.json_response({"code": error.code, "message": error.message}, status=error.status)


# -- processes -----------------------------------------------------------------------------------------


def _dle_handler(
    address: bytes, members: Sequence[bytes], member: BookMember | None, receipts: ReceiptAssets | None = None
) -> Callable[[str, bytes], Awaitable[bytes]]:
    """The book node's DLE entry point: `ping` for any authenticated caller; everything else only from
    the book's own members (its peers), whoever else signs the request (403)."""
    peers = frozenset(members)

    async def handle(method: str, body: bytes) -> bytes:
        who = caller()
        if method == "ping":
            return address
        if who is not None and who not in peers:  # None: called directly in this process
            raise Forbidden("forbidden", f"0x{who.hex()} is no member of this book; only members call {method}")
        if member is None:
            raise RemoteError("unknown-method", f"the book's creator serves no {method}")
        if method == ENDORSE and receipts is not None:
            # The creator's signature first: nobody else gets the receipts checked on the mainchain.
            await _check_receipts(member.authenticate(body), receipts)
        return await member.handle(method, body)

    return handle


async def _check_receipts(batch: Batch, receipts: ReceiptAssets) -> None:
    """A member signs no batch with an order drawing on a receipt of the wrong asset: the matching program
    cannot see it, so the creator's admission check is repeated here (malformed orders are left to the
    replay, which refuses them)."""
    try:
        orders = [SignedOrder.decode(e.payload).order for e in batch.inputs if e.kind is InputKind.ORDER]
    except OrderError:
        return
    for order in orders:
        try:
            await asyncio.to_thread(receipts.check, order)
        except Refused as error:
            raise RemoteError("wrong-batch", f"order of 0x{order.trader.hex()}: {error.message}") from error


async def _creator(context: _Context, stop: asyncio.Event) -> None:
    config = context.config
    config.data_dir.mkdir(parents=True, exist_ok=True)
    creator = BookCreator(
        context.secret,
        context.address,
        context.market,
        context.domain,
        context.domains,
        context.book_chain,
        members=config.members,
        store=BatchStore(config.data_dir / BATCHES),
        transport=context.transport,
        timeout=config.seal_timeout,
    )
    service_ref: list[BookService] = []

    def make_settler() -> tuple[Settler, HttpTransport, SettlementJournal]:
        # Built on the settlement thread: its transport, loop and SQLite connection belong to it.
        transport = HttpTransport(config.directory, secret=context.secret)
        journal = SettlementJournal(config.data_dir / "settlement.sqlite")
        client = DleClient(
            transport,
            context.groups.group_of,
            context.domains,
            chain_group=lambda chain: service_ref[0].group_of_chain(chain),
        )
        return Settler(client, context.domains, context.secret, journal, default_engine()), transport, journal

    settlement = SettlementThread(make_settler)
    service = BookService(context, creator, settlement)
    service_ref.append(service)
    service.resume()

    async def post(request: web.Request, work: Callable[[bytes], Awaitable[dict[str, Any]]]) -> web.Response:
        try:
            return web.json_response(await work(await request.read()))
        except Refused as error:
            return _refusal(error)

    async def order(request: web.Request) -> web.Response:
        return await post(request, service.order)

    async def cancel(request: web.Request) -> web.Response:
        return await post(request, service.cancel)

    async def book(request: web.Request) -> web.Response:
        return web.json_response(service.depth())

    async def trades(request: web.Request) -> web.Response:
        return web.json_response([t.to_json() for t in service.trades])

    async def info(request: web.Request) -> web.Response:
        return web.json_response(_info(context, "creator", service.info()))

    app = http_app(_dle_handler(context.address, config.members, None), address=context.address)
    app.router.add_post("/odex/order", order)
    app.router.add_post("/odex/cancel", cancel)
    app.router.add_get("/odex/book", book)
    app.router.add_get("/odex/trades", trades)
    app.router.add_get("/devnet/info", info)
    try:
        await _serve(app, config, stop, [service.seal_loop(), service.settle_loop()])
    finally:
        await settlement.aclose()


def _info(context: _Context, role: str, extra: dict[str, Any]) -> dict[str, Any]:
    config = context.config
    return {
        "name": config.name,
        "kind": "book",
        "role": role,
        "address": _hex(context.address),
        "market": _hex(context.market),
        "book_chain": _hex(context.book_chain),
        "members": [_hex(m) for m in config.members],
        **extra,
    }


async def _member(context: _Context, stop: asyncio.Event) -> None:
    context.config.data_dir.mkdir(parents=True, exist_ok=True)
    member = BookMember(
        context.secret,
        context.address,
        context.market,
        context.domain,
        context.domains,
        context.book_chain,
        members=context.config.members,
        store=BatchStore(context.config.data_dir / BATCHES),
    )

    async def info(request: web.Request) -> web.Response:
        return web.json_response(
            _info(
                context, "member", {"height": member.height, "resting": len(member.book), "batches": len(member.final)}
            )
        )

    app = http_app(
        _dle_handler(context.address, context.config.members, member, ReceiptAssets(context)), address=context.address
    )
    app.router.add_get("/devnet/info", info)
    await _serve(app, context.config, stop, [])


async def _serve(app: web.Application, config: BookConfig, stop: asyncio.Event, work: list[Awaitable[None]]) -> None:
    await serve_until_stopped(app, config.name, config.role, config.host, config.port, stop, work)


async def run(config: BookConfig) -> None:
    """Run the book process of `config` until SIGTERM or SIGINT."""
    stop = stop_on_signals()
    context = _Context.build(config)
    try:
        await (_creator if config.role == "creator" else _member)(context, stop)
    finally:
        await context.transport.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m offchain.odex.service", description=__doc__.split("\n")[0])
    parser.add_argument("role", choices=ROLES)
    parser.add_argument("--config", required=True, type=Path, help="the book process's JSON config")
    args = parser.parse_args(argv)
    log_to_stdout()
    try:
        config = BookConfig.load(args.config)
        if config.role != args.role:
            raise BookError(f"{args.config} configures a book {config.role}, not a {args.role}")
        asyncio.run(run(config))
    except ServiceError as error:
        log.error("%s", error)
        return 2
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
