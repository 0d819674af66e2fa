"""`conet odex …`: the oDEX on the DLE devnet, from a wallet (the same wallets as `conet cash`).

    conet odex deposit ASSET AMOUNT              deposit into the vault; wait for each receipt's chain
    conet odex balance                           the wallet's balances on every receipt chain
    conet odex order buy|sell AMOUNT PRICE       authorize the book on a receipt chain, sign and post
                     [--receipt N]               the order (PRICE: quote per 1 base, e.g. 63.799)
    conet odex cancel ORDER                      revoke the order's authorization; take it off the book
    conet odex book                              the book's depth and resting orders
    conet odex trades                            every fill and its settlement
    conet odex withdraw RECEIPT AMOUNT [--to A]  exit from a receipt chain; the vault pays the certificate

ASSET is `mETH` (the devnet's 18-decimal MockToken), `AVAX` (native) or a listed asset's 0x address. The
devnet's market is mETH/AVAX: a SELL draws on a mETH receipt, a BUY on an AVAX receipt. The fee (0.01%)
is paid on top of every trade leg by its payer, so a receipt must hold the amount plus its fee. Orders a
wallet placed are remembered in `<devnet>/wallets/NAME.orders.json` (for `cancel`).
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from functools import cached_property, partial
from pathlib import Path
from typing import Any, TypeVar

import click
from web3 import Web3

from dle_vm.hashing import keccak
from offchain.chain.cash import CashError, format_amount, parse_amount
from offchain.chain.odex import OdexVaultClient
from offchain.chain.web3_contracts import ChainError, Sender
from offchain.devnet.dle import (
    WALLET_FUNDER,
    DevnetClient,
    DevnetError,
    default_dir,
    dev_account_key,
    load_wallet,
    send_eth,
)
from offchain.devnet.wallet_cli import DevnetWallet, WalletSettings, explained_group, wait_for, wallet_options
from offchain.dle.client import DleError
from offchain.dle.digests import mainchain_certificate
from offchain.dle.transport import TransportError
from offchain.dle.wallet import NoteChain, WalletError
from offchain.odex.order import (
    PRICE_SCALE,
    Cancel,
    Order,
    OrderDomain,
    Side,
    fee_of,
    market_id,
    required_authorization,
)

__all__ = ["OdexWallet", "odex"]

T = TypeVar("T")
_ERRORS = (DevnetError, WalletError, CashError, ChainError, DleError, TransportError)
NATIVE = bytes(20)
ORDER_TTL = 3600
HTTP_TIMEOUT = 45.0
"""Seconds to wait for the book: it answers an order once its batch is final (within 30 s)."""


@dataclass
class OdexWallet(DevnetWallet):
    """A wallet on the devnet's oDEX."""

    name: str

    @cached_property
    def vault(self) -> OdexVaultClient:
        return OdexVaultClient(self.client.w3, self.client.state.contracts, self.secret)

    @property
    def base(self) -> bytes:
        return bytes.fromhex(self.client.state.contracts["MockToken"][2:])

    @property
    def market(self) -> bytes:
        return market_id(self.base, NATIVE)

    @property
    def domain(self) -> OrderDomain:
        vault = self.client.domains.vault
        if vault is None:
            raise DevnetError("the devnet's deployment has no OdexVault")
        return OrderDomain(self.client.state.chain_id, vault)

    def asset(self, name: str) -> tuple[bytes, str]:
        """(address, symbol) of an asset named mETH, AVAX or by its 0x address; listed by governance."""
        if name.upper() == "AVAX":
            address = NATIVE
        elif name.lower() == "meth":
            address = self.base
        elif name.startswith("0x") and Web3.is_address(name):
            address = bytes.fromhex(name[2:])
        else:
            raise click.BadParameter(f"{name!r} is no asset: use mETH, AVAX or a listed asset's 0x address")
        if not self.vault.is_listed("0x" + address.hex()):
            raise DevnetError(f"{name} (0x{address.hex()}) is not listed as an oDEX asset")
        return address, self.symbol(address)

    def symbol(self, asset: bytes) -> str:
        if asset == NATIVE:
            return "AVAX"
        if asset == self.base:
            return "mETH"
        return "0x" + asset.hex()

    def decimals(self, asset: bytes) -> int:
        if asset == NATIVE:
            return 18
        token = self.client.contract("MockToken", Web3.to_checksum_address("0x" + asset.hex()))
        return int(token.functions.decimals().call())

    # -- receipts -------------------------------------------------------------------------------------

    def receipt_chain(self, receipt: int) -> tuple[bytes, int]:
        """Receipt `receipt`'s chain and the archive group that keeps it; DevnetError if it has none."""
        held = self.vault.receipt(receipt)
        if not held.issued:
            raise DevnetError(f"receipt {receipt} does not exist")
        if not self.client.chain.is_registered(held.chain):
            raise DevnetError(f"receipt {receipt}'s chain is not open yet")
        return held.chain, self.client.chain.chain_record(held.chain).group

    def on_receipt(self, receipt: int, work: Callable[[NoteChain], Awaitable[T]]) -> T:
        chain, group = self.receipt_chain(receipt)

        async def run() -> T:
            async with self.client.transport(self.secret) as transport:
                wallet = NoteChain.connect(
                    transport, self.client.groups.group_of, self.client.domains, receipt, chain, group
                )
                return await work(wallet)

        return asyncio.run(run())

    def balances(self, asset: bytes | None = None) -> list[tuple[int, bytes, int, int]]:
        """(receipt, asset, this wallet's balance, fee bps) on every open receipt chain (of `asset`)."""
        vault = self.vault
        receipts = [vault.receipt(r) for r in range(1, vault.next_receipt())]
        wanted = [
            r
            for r in receipts
            if (asset is None or bytes.fromhex(r.asset[2:]) == asset) and self.client.chain.is_registered(r.chain)
        ]

        async def run() -> list[tuple[int, bytes, int, int]]:
            out = []
            async with self.client.transport(self.secret) as transport:
                for r in wanted:
                    group = self.client.chain.chain_record(r.chain).group
                    wallet = NoteChain.connect(
                        transport, self.client.groups.group_of, self.client.domains, r.receipt, r.chain, group
                    )
                    try:
                        units = await wallet.balance(self.address)
                    except DleError as error:
                        if error.code != "forbidden":
                            raise
                        # The archive node answers only a chain's participants, and anyone holding a
                        # balance there is one: refused means this wallet holds nothing on that chain.
                        units = 0
                    out.append((r.receipt, bytes.fromhex(r.asset[2:]), units, r.fee_bps))
            return out

        return asyncio.run(run())

    # -- the book -------------------------------------------------------------------------------------

    def book_url(self) -> str:
        return self.client.state.book().url

    def book_address(self) -> bytes:
        return bytes.fromhex(self.client.state.book().address[2:])

    def call_book(self, path: str, body: bytes | None = None) -> Any:
        url = f"{self.book_url()}{path}"
        request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
        if body is not None:
            request.add_header("Content-Type", "application/octet-stream")
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            try:
                refusal = json.loads(error.read())
                message = f"{refusal['code']}: {refusal['message']}"
            except (ValueError, KeyError, TypeError):
                message = f"HTTP {error.code}"
            raise DevnetError(f"the book refused: {message}") from None
        except (OSError, urllib.error.URLError) as error:
            raise DevnetError(f"the oDEX book at {url} does not answer ({error}): is the devnet up?") from None

    # -- remembered orders ----------------------------------------------------------------------------

    @property
    def _orders_file(self) -> Path:
        return self.client.directory / "wallets" / f"{self.name}.orders.json"

    def orders(self) -> list[dict[str, Any]]:
        try:
            data = json.loads(self._orders_file.read_text())
        except FileNotFoundError:
            return []
        return list(data)

    def remember(self, record: dict[str, Any]) -> None:
        self._orders_file.parent.mkdir(parents=True, exist_ok=True)
        self._orders_file.write_text(json.dumps([*self.orders(), record], indent=2) + "\n")


def _odex(ctx: click.Context) -> OdexWallet:
    settings = ctx.obj
    assert isinstance(settings, WalletSettings)
    if settings.wallet is None:
        client = DevnetClient.open(settings.directory or default_dir())
        name = settings.key_file.stem if settings.key_file is not None else settings.name
        settings.wallet = OdexWallet(client, load_wallet(client, settings.name, settings.key_file), name)
    return settings.wallet


@click.group(cls=explained_group(_ERRORS))
@wallet_options
@click.pass_context
def odex(ctx: click.Context, directory: Path | None, name: str, key_file: Path | None) -> None:
    """The oDEX on the DLE devnet: the vault, receipt chains and the mETH/AVAX book (`conet devnet up` first)."""
    ctx.obj = WalletSettings[OdexWallet](directory, name, key_file)


@odex.command()
@click.argument("asset")
@click.argument("amount")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for the receipt chains.")
@click.pass_context
def deposit(ctx: click.Context, asset: str, amount: str, timeout: float) -> None:
    """Deposit AMOUNT of ASSET into the vault (the devnet mints mETH and gives AVAX to the wallet first)."""
    wallet = _odex(ctx)
    client = wallet.client
    address, symbol = wallet.asset(asset)
    decimals = wallet.decimals(address)
    units = parse_amount(amount, decimals)
    vault = wallet.vault
    if address == NATIVE:
        # The devnet's faucet: a development account tops the wallet up to the deposit plus 1 AVAX of gas.
        held = int(client.w3.eth.get_balance(Web3.to_checksum_address(wallet.checksum)))
        if held < units + 10**18:
            send_eth(client.w3, dev_account_key(WALLET_FUNDER), wallet.checksum, units + 10**18 - held)
    elif address == wallet.base:
        token = client.contract("MockToken")
        held = int(token.functions.balanceOf(wallet.checksum).call())
        if held < units:
            Sender(client.w3, wallet.secret).transact(token.functions.mint(wallet.checksum, units - held))
    issued = vault.deposit("0x" + address.hex(), units)
    for receipt in issued:
        click.echo(
            f"receipt {receipt.receipt}: {format_amount(receipt.amount, decimals)} {symbol} deposited by "
            f"{wallet.name} ({wallet.checksum}), fee {receipt.fee_bps} bps; waiting for its chain"
        )
    for receipt in issued:
        wait_for(
            f"the DLE to open receipt {receipt.receipt}'s chain",
            timeout,
            lambda r=receipt: client.chain.is_registered(r.chain),  # type: ignore[misc]
        )
        balance = wallet.on_receipt(receipt.receipt, lambda nc: nc.balance(wallet.address))
        group = client.chain.chain_record(receipt.chain).group
        click.echo(
            f"receipt {receipt.receipt}: chain 0x{receipt.chain.hex()} open (archive group {group}); "
            f"balance {format_amount(balance, decimals)} {symbol}"
        )


@odex.command()
@click.pass_context
def balance(ctx: click.Context) -> None:
    """The wallet's balances on the receipt chains, and what it holds of each asset on the mainchain."""
    wallet = _odex(ctx)
    shown = 0
    for receipt, asset, units, _fee in wallet.balances():
        if units:
            click.echo(f"receipt {receipt}: {format_amount(units, wallet.decimals(asset))} {wallet.symbol(asset)}")
            shown += 1
    if not shown:
        click.echo("no balance on any receipt")
    vault = wallet.vault
    for asset in (wallet.base, NATIVE):
        held = vault.balance_of("0x" + asset.hex(), wallet.checksum)
        click.echo(f"mainchain: {format_amount(held, wallet.decimals(asset))} {wallet.symbol(asset)}")


def _price_units(price: str, base_decimals: int, quote_decimals: int) -> int:
    """PRICE (quote per one whole base unit) as the order's integer: quote units per 10**18 base units."""
    try:
        value = Decimal(price)
    except ArithmeticError:
        raise click.BadParameter(f"{price!r} is not a price") from None
    units = value.scaleb(quote_decimals) * PRICE_SCALE / (Decimal(10) ** base_decimals)
    if units != units.to_integral_value() or units <= 0:
        raise click.BadParameter(f"price {price} is not a positive whole number of quote units per 1e18 base units")
    return int(units)


@odex.command()
@click.argument("side", type=click.Choice(["buy", "sell"]))
@click.argument("amount")
@click.argument("price")
@click.option("--receipt", type=int, help="The receipt to draw on (default: the first holding enough).")
@click.option("--ttl", default=ORDER_TTL, show_default=True, help="Seconds the order stays valid.")
@click.pass_context
def order(ctx: click.Context, side: str, amount: str, price: str, receipt: int | None, ttl: int) -> None:
    """Sign and post an order for AMOUNT mETH at PRICE AVAX per mETH."""
    wallet = _odex(ctx)
    base_decimals, quote_decimals = wallet.decimals(wallet.base), wallet.decimals(NATIVE)
    order_side = Side.BUY if side == "buy" else Side.SELL
    units = parse_amount(amount, base_decimals)
    price_units = _price_units(price, base_decimals, quote_decimals)
    asset = wallet.base if order_side is Side.SELL else NATIVE
    expiry = int(time.time()) + ttl
    draft = Order(wallet.market, wallet.address, order_side, price_units, units, bytes(32), 0, 0, expiry)
    limit = required_authorization(draft)
    candidates = [b for b in wallet.balances(asset) if receipt is None or b[0] == receipt]
    if receipt is not None and not candidates:
        raise DevnetError(f"receipt {receipt} is no open {wallet.symbol(asset)} receipt: a {side} draws on one")
    enough = [b for b in candidates if b[2] >= limit + fee_of(limit, b[3])]
    if not enough:
        held = ", ".join(f"receipt {r}: {format_amount(u, 18)}" for r, _a, u, _f in candidates if u) or "nothing"
        raise DevnetError(
            f"no {wallet.symbol(asset)} receipt of {wallet.name} holds {format_amount(limit, 18)} plus the fee "
            f"(held: {held}); deposit with `conet odex deposit {wallet.symbol(asset)} AMOUNT`"
        )
    chosen = enough[0][0]
    book = wallet.book_address()
    authorization, outcome = wallet.on_receipt(chosen, lambda nc: nc.authorize(wallet.secret, book, limit))
    chain, _group = wallet.receipt_chain(chosen)
    click.echo(
        f"receipt {chosen}: authorization {authorization} lets the book deduct up to "
        f"{format_amount(limit, 18)} {wallet.symbol(asset)}, final in block {outcome.block.header.height}"
    )
    # One order per authorization: its nonce is derived from it, so (trader, nonce) is never reused.
    nonce = int.from_bytes(keccak(chain + authorization.to_bytes(32, "big")), "big")
    made = Order(wallet.market, wallet.address, order_side, price_units, units, chain, authorization, nonce, expiry)
    signed = made.sign(wallet.secret, wallet.domain)
    digest = made.hash(wallet.domain)
    wallet.remember(
        {
            "order": "0x" + digest.hex(),
            "receipt": chosen,
            "authorization": authorization,
            "side": side,
            "amount": amount,
        }
    )
    answer = wallet.call_book("/odex/order", signed.encode())
    click.echo(f"order 0x{digest.hex()}: {side} {amount} mETH at {price} AVAX, final in book batch {answer['batch']}")
    for fill in answer["fills"]:
        click.echo(
            f"  filled {format_amount(int(fill['base']), 18)} mETH for {format_amount(int(fill['quote']), 18)} AVAX "
            f"(fill {fill['sequence']})"
        )
    if answer["resting"] is not None:
        click.echo(f"  resting: {format_amount(int(answer['resting']), 18)} mETH")


@odex.command()
@click.argument("order_hash", metavar="ORDER")
@click.pass_context
def cancel(ctx: click.Context, order_hash: str) -> None:
    """Revoke ORDER's authorization on its receipt chain, then take it off the book."""
    wallet = _odex(ctx)
    wanted = order_hash.lower().removeprefix("0x")
    matches = [o for o in wallet.orders() if str(o["order"]).lower().removeprefix("0x").startswith(wanted)]
    if len(matches) != 1:
        raise DevnetError(f"{wallet.name} placed {len(matches)} orders matching {order_hash} (see `conet odex book`)")
    (record,) = matches
    outcome = wallet.on_receipt(
        int(record["receipt"]), lambda nc: nc.revoke(wallet.secret, int(record["authorization"]))
    )
    click.echo(
        f"receipt {record['receipt']}: authorization {record['authorization']} revoked, final in block "
        f"{outcome.block.header.height}"
    )
    digest = bytes.fromhex(str(record["order"])[2:])
    signed = Cancel(digest, int(time.time()) + 600).sign(wallet.secret, wallet.domain)
    try:
        answer = wallet.call_book("/odex/cancel", signed.encode())
    except DevnetError as error:
        click.echo(f"order {record['order']}: not taken off the book ({error}); nothing can be drawn on it")
        return
    click.echo(f"order {record['order']}: off the book in batch {answer['batch']}")


@odex.command()
@click.pass_context
def book(ctx: click.Context) -> None:
    """The book's depth (asks above bids) and its resting orders."""
    wallet = _odex(ctx)
    depth = wallet.call_book("/odex/book")
    click.echo(f"mETH/AVAX  market {depth['market'][:18]}…  batch {depth['height']}, fills {depth['sequence']}")
    asks, bids = depth["asks"], depth["bids"]
    for price, base, count in reversed(asks):
        click.echo(
            f"  ask {format_amount(int(price), 18):>12} AVAX  {format_amount(int(base), 18):>12} mETH  ({count})"
        )
    if not asks and not bids:
        click.echo("  (empty)")
    for price, base, count in bids:
        click.echo(
            f"  bid {format_amount(int(price), 18):>12} AVAX  {format_amount(int(base), 18):>12} mETH  ({count})"
        )
    for o in depth["orders"]:
        click.echo(
            f"  order {o['hash'][:18]}… {o['side']:<4} {format_amount(int(o['remaining']), 18)} mETH at "
            f"{format_amount(int(o['price']), 18)} by {o['trader']}"
        )


@odex.command()
@click.pass_context
def trades(ctx: click.Context) -> None:
    """Every fill the book's group made final, and its settlement on the receipt chains."""
    wallet = _odex(ctx)
    fills = wallet.call_book("/odex/trades")
    if not fills:
        click.echo("no trades")
    for f in fills:
        click.echo(
            f"fill {f['sequence']} (batch {f['batch']}): {format_amount(int(f['base']), 18)} mETH from "
            f"{f['seller']} to {f['buyer']} for {format_amount(int(f['quote']), 18)} AVAX at "
            f"{format_amount(int(f['price']), 18)}: {f['status']}" + (f" ({f['reason']})" if f["reason"] else "")
        )


@odex.command()
@click.argument("receipt", type=int)
@click.argument("amount")
@click.option("--to", "receiver", help="Who the vault pays (default: this wallet).")
@click.pass_context
def withdraw(ctx: click.Context, receipt: int, amount: str, receiver: str | None) -> None:
    """Exit AMOUNT of this wallet's balance on RECEIPT's chain; the vault pays the certificate."""
    wallet = _odex(ctx)
    vault = wallet.vault
    held = vault.receipt(receipt)
    if not held.issued:
        raise DevnetError(f"receipt {receipt} does not exist")
    asset = bytes.fromhex(held.asset[2:])
    decimals, symbol = wallet.decimals(asset), wallet.symbol(asset)
    units = parse_amount(amount, decimals)
    paid_to = wallet.resolve(receiver) if receiver else wallet.address
    try:
        have = wallet.on_receipt(receipt, lambda nc: nc.balance(wallet.address))
    except DleError as error:
        if error.code != "forbidden":
            raise
        have = 0  # archive nodes answer only a chain's participants: refused means nothing held there
    if have < units:
        raise DevnetError(
            f"{wallet.name} holds {format_amount(have, decimals)} {symbol} on receipt {receipt}, not {amount}"
        )
    result = wallet.on_receipt(receipt, lambda nc: nc.exit(wallet.secret, units, paid_to))
    cert = result.certificate
    click.echo(
        f"receipt {receipt}: exit {cert.nonce} of {amount} {symbol} final in block {cert.height}, "
        f"certified by archive group epoch {result.epoch}"
    )
    # The vault pays a receipt's exits in order: pay the earlier ones still unpaid first (their
    # receivers are paid, this wallet pays the gas), each certified by the archive group on request.
    for earlier in range(vault.exit_history(receipt)[0], cert.nonce):
        prior, signatures, epoch = wallet.on_receipt(receipt, partial(NoteChain.certified_exit, nonce=earlier))
        vault.withdraw(mainchain_certificate(prior), epoch, signatures)
        click.echo(
            f"receipt {receipt}: paid the earlier exit {earlier} ({format_amount(prior.amount, decimals)} {symbol} "
            f"to 0x{prior.receiver.hex()}) first: exits are paid in order"
        )
    to = Web3.to_checksum_address("0x" + paid_to.hex())
    before = vault.balance_of(held.asset, to)
    paid = vault.withdraw(mainchain_certificate(cert), result.epoch, result.signatures)
    after = vault.balance_of(held.asset, to)
    click.echo(
        f"receipt {receipt}: the vault paid {format_amount(paid.amount, decimals)} {symbol} to {to}; its balance "
        f"{format_amount(before, decimals)} -> {format_amount(after, decimals)}"
        + (" (less the gas it paid)" if asset == NATIVE and paid_to == wallet.address else "")
    )
