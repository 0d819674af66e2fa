"""`conet cash …`: CoNETCash notes on the DLE devnet, from a wallet.

A wallet is a key file: `--wallet NAME` (default `default`) is `<devnet>/wallets/NAME.key`, created on
first use; `--key-file PATH` is any hex key. A wallet without gas gets 1 ETH from a development account.

    conet cash buy 10                      mint 10 mock USD, buy a note, wait for its chain
    conet cash balance [--note N]          balances on every live note (or one), and mock USD held
    conet cash transfer N TO AMOUNT        pay AMOUNT on note N (the 0.05% fee is paid on top)
    conet cash authorize N PAYEE LIMIT     let PAYEE deduct up to LIMIT from this wallet on note N
    conet cash deduct N HOLDER AUTH AMOUNT as the payee, deduct AMOUNT under authorization AUTH
    conet cash exit N AMOUNT [--receiver]  exit AMOUNT from note N and get it paid on the mainchain

TO, PAYEE, HOLDER and --receiver are 0x addresses or devnet wallet or node names. Amounts are in the
note's stablecoin (`2.5` of a 6-decimal coin is 2,500,000 units).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

import click
from web3 import Web3

from offchain.chain.cash import CashError, format_amount, parse_amount
from offchain.chain.web3_contracts import ChainError, Sender, events_of
from offchain.devnet.dle import DevnetClient, DevnetError, default_dir, load_wallet
from offchain.devnet.wallet_cli import DevnetWallet, WalletSettings, explained_group, wait_for, wallet_options
from offchain.dle.client import DleError
from offchain.dle.digests import mainchain_certificate
from offchain.dle.local import address_of_secret
from offchain.dle.transport import TransportError
from offchain.dle.wallet import NoteChain, WalletError

__all__ = ["cash"]

T = TypeVar("T")
_ERRORS = (DevnetError, WalletError, CashError, ChainError, DleError, TransportError)
_LIVE, _ORDERED = 2, 1


@dataclass
class _Wallet(DevnetWallet):
    """A wallet on the devnet's CoNETCash notes."""

    def name_of(self, address: bytes) -> str:
        names = {bytes.fromhex(n.address[2:]): n.name for n in self.client.state.nodes}
        wallets = self.client.directory / "wallets"
        if wallets.is_dir():
            for path in wallets.glob("*.key"):
                names[address_of_secret(bytes.fromhex(path.read_text().strip().removeprefix("0x")))] = path.stem
        return names.get(address, "0x" + address.hex())

    def decimals(self, note: int) -> tuple[str, int]:
        """The note's stablecoin and its decimals."""
        stablecoin = str(self.client.chain.cash.functions.noteOf(note).call()[1])
        if int(stablecoin, 16) == 0:
            raise DevnetError(f"note {note} does not exist")
        return stablecoin, int(self.client.contract("MockStablecoin", stablecoin).functions.decimals().call())

    def on_note(self, note: int, work: Callable[[NoteChain], Awaitable[T]]) -> T:
        """Run `work` on note `note`'s chain over the devnet's HTTP transport."""

        async def run() -> T:
            async with self.client.transport(self.secret) as transport:
                return await work(self.client.note_chain(transport, note))

        return asyncio.run(run())


def _wallet(ctx: click.Context) -> _Wallet:
    settings = ctx.obj
    assert isinstance(settings, WalletSettings)
    if settings.wallet is None:
        client = DevnetClient.open(settings.directory or default_dir())
        settings.wallet = _Wallet(client, load_wallet(client, settings.name, settings.key_file))
    return settings.wallet


@click.group(cls=explained_group(_ERRORS))
@wallet_options
@click.pass_context
def cash(ctx: click.Context, directory: Path | None, name: str, key_file: Path | None) -> None:
    """CoNETCash notes on the DLE devnet (`conet devnet up` first)."""
    ctx.obj = WalletSettings[_Wallet](directory, name, key_file)


@cash.command()
@click.pass_context
def address(ctx: click.Context) -> None:
    """Print the wallet's address."""
    click.echo(_wallet(ctx).checksum)


@cash.command()
@click.argument("amount")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for the CBDC and the DLE.")
@click.pass_context
def buy(ctx: click.Context, amount: str, timeout: float) -> None:
    """Buy a note of AMOUNT mock USD (minted to the wallet first); wait until its chain is open."""
    wallet = _wallet(ctx)
    client = wallet.client
    coin = client.contract("MockStablecoin")
    cash_contract = client.chain.cash
    decimals = int(coin.functions.decimals().call())
    units = parse_amount(amount, decimals)
    sender = Sender(client.w3, wallet.secret)
    held = int(coin.functions.balanceOf(wallet.checksum).call())
    if held < units:
        sender.transact(coin.functions.mint(wallet.checksum, units - held))
    if int(coin.functions.allowance(wallet.checksum, cash_contract.address).call()) < units:
        sender.transact(coin.functions.approve(cash_contract.address, units))
    receipt = sender.transact(cash_contract.functions.buy(coin.address, units))
    refunded = events_of(cash_contract, "NoteRefunded", receipt)
    if refunded:
        note = int(refunded[0]["id"])
        click.echo(f"note {note} re-funded from the pool (the devnet does not re-fund note chains yet)")
        return
    note = int(events_of(cash_contract, "OrderPlaced", receipt)[0]["id"])
    click.echo(f"order {note}: {amount} mUSDC deposited by {wallet.checksum}; waiting for a CBDC")
    functions = cash_contract.functions
    wait_for(f"a CBDC to fill order {note}", timeout, lambda: int(functions.noteOf(note).call()[0]) != _ORDERED)
    view = functions.noteOf(note).call()
    if int(view[0]) != _LIVE:
        raise DevnetError(f"order {note} was not filled (status {int(view[0])})")
    click.echo(f"note {note}: minted by CBDC {wallet.name_of(bytes.fromhex(str(view[4])[2:]))}")
    chain = bytes(view[9])
    wait_for(f"the DLE to open note {note}'s chain", timeout, lambda: client.chain.is_registered(chain))
    balance = wallet.on_note(note, lambda nc: nc.balance(wallet.address))
    group = client.chain.chain_record(chain).group
    click.echo(
        f"note {note}: chain 0x{chain.hex()} open (archive group {group}); balance {format_amount(balance, decimals)}"
    )


@cash.command()
@click.option("--note", type=int, help="Only this note.")
@click.pass_context
def balance(ctx: click.Context, note: int | None) -> None:
    """The wallet's balances on the note chains, and the mock USD it holds on the mainchain."""
    wallet = _wallet(ctx)
    client = wallet.client
    functions = client.chain.cash.functions
    notes = [note] if note is not None else range(1, int(functions.nextId().call()))
    shown = 0
    for candidate in notes:
        view = functions.noteOf(candidate).call()
        if int(view[0]) != _LIVE or not client.chain.is_registered(bytes(view[9])):
            if note is not None:
                raise DevnetError(f"note {note} is not live with an open chain")
            continue
        _, decimals = wallet.decimals(candidate)
        units = wallet.on_note(candidate, lambda nc: nc.balance(wallet.address))
        if units or note is not None:
            click.echo(f"note {candidate}: {format_amount(units, decimals)}")
            shown += 1
    if not shown:
        click.echo("no balance on any note")
    coin = client.contract("MockStablecoin")
    held = int(coin.functions.balanceOf(wallet.checksum).call())
    click.echo(f"mainchain: {format_amount(held, int(coin.functions.decimals().call()))} mUSDC ({wallet.checksum})")


@cash.command()
@click.argument("note", type=int)
@click.argument("to")
@click.argument("amount")
@click.pass_context
def transfer(ctx: click.Context, note: int, to: str, amount: str) -> None:
    """Pay AMOUNT to TO on note NOTE (the transfer fee comes on top)."""
    wallet = _wallet(ctx)
    _, decimals = wallet.decimals(note)
    units = parse_amount(amount, decimals)
    receiver = wallet.resolve(to)

    async def work(chain: NoteChain) -> tuple[int, int]:
        _, state = await chain.head()
        (fee,) = chain.reader.view(state, chain.chain, "feeOf", units)
        outcome = await chain.transfer(wallet.secret, receiver, units)
        return int(fee), outcome.block.header.height

    fee, height = wallet.on_note(note, work)
    click.echo(
        f"note {note}: {wallet.name_of(wallet.address)} paid {amount} to {wallet.name_of(receiver)} "
        f"(fee {format_amount(fee, decimals)}), final in block {height}"
    )


@cash.command()
@click.argument("note", type=int)
@click.argument("payee")
@click.argument("limit")
@click.pass_context
def authorize(ctx: click.Context, note: int, payee: str, limit: str) -> None:
    """Let PAYEE deduct up to LIMIT from this wallet on note NOTE."""
    wallet = _wallet(ctx)
    _, decimals = wallet.decimals(note)
    units = parse_amount(limit, decimals)
    who = wallet.resolve(payee)
    authorization, outcome = wallet.on_note(note, lambda nc: nc.authorize(wallet.secret, who, units))
    click.echo(
        f"note {note}: authorization {authorization} lets {wallet.name_of(who)} deduct up to {limit} from "
        f"{wallet.name_of(wallet.address)}, final in block {outcome.block.header.height}"
    )


@cash.command()
@click.argument("note", type=int)
@click.argument("holder")
@click.argument("authorization", type=int)
@click.argument("amount")
@click.pass_context
def deduct(ctx: click.Context, note: int, holder: str, authorization: int, amount: str) -> None:
    """As the payee, deduct AMOUNT from HOLDER under AUTHORIZATION on note NOTE."""
    wallet = _wallet(ctx)
    _, decimals = wallet.decimals(note)
    units = parse_amount(amount, decimals)
    who = wallet.resolve(holder)
    outcome = wallet.on_note(note, lambda nc: nc.deduct(wallet.secret, who, authorization, units))
    click.echo(
        f"note {note}: {wallet.name_of(wallet.address)} deducted {amount} from {wallet.name_of(who)} "
        f"under authorization {authorization}, final in block {outcome.block.header.height}"
    )


@cash.command("exit")
@click.argument("note", type=int)
@click.argument("amount")
@click.option("--receiver", help="Who is paid on the mainchain (default: this wallet).")
@click.pass_context
def exit_(ctx: click.Context, note: int, amount: str, receiver: str | None) -> None:
    """Exit AMOUNT from note NOTE: final on the DLE, then paid by CoNETCash to the receiver."""
    wallet = _wallet(ctx)
    stablecoin, decimals = wallet.decimals(note)
    units = parse_amount(amount, decimals)
    paid_to = wallet.resolve(receiver) if receiver else wallet.address
    result = wallet.on_note(note, lambda nc: nc.exit(wallet.secret, units, paid_to))
    cert = result.certificate
    click.echo(
        f"note {note}: exit {cert.nonce} of {amount} final in block {cert.height}, "
        f"certified by archive group epoch {result.epoch}"
    )
    client = wallet.client
    sender = client.sender(wallet.secret)
    # CoNETCash pays a note's exits in order: pay the earlier ones still unpaid first (their receivers
    # are paid, this wallet pays the gas), each certified by the note's archive group on request.
    for earlier in range(sender.exit_history(note)[0], cert.nonce):
        prior, signatures, epoch = wallet.on_note(note, partial(NoteChain.certified_exit, nonce=earlier))
        sender.submit_exit(mainchain_certificate(prior), epoch, signatures)
        click.echo(
            f"note {note}: paid the earlier exit {earlier} ({format_amount(prior.amount, decimals)} to "
            f"{wallet.name_of(prior.receiver)}) first: exits are paid in order"
        )
    coin = client.contract("MockStablecoin", stablecoin)
    receiver_address = Web3.to_checksum_address("0x" + paid_to.hex())
    before = int(coin.functions.balanceOf(receiver_address).call())
    payout = sender.submit_exit(mainchain_certificate(cert), result.epoch, result.signatures)
    after = int(coin.functions.balanceOf(receiver_address).call())
    click.echo(
        f"note {note}: CoNETCash paid {format_amount(payout, decimals)} mUSDC to {wallet.name_of(paid_to)} "
        f"(fee {format_amount(units - payout, decimals)}); its balance {format_amount(before, decimals)} -> "
        f"{format_amount(after, decimals)}"
    )
