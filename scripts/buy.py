"""Buy a CoNETCash note from a fresh wallet: `ape run buy [--amount 25.5] [--stablecoin ADDRESS]`.

A fresh keyfile account is made for every purchase (DESIGN §6: a new wallet per order, so notes are not
linked to each other), encrypted with the passphrase from CONET_WALLET_PASSPHRASE or a prompt, and
saved in ape's accounts folder (or --wallet-dir) under the printed alias. The funding account pays its
gas and, on a public network, its stablecoin; on a local chain the mock stablecoin is minted to it.
"""

import json
import os
from pathlib import Path

import click
from ape.cli import ConnectedProviderCommand, account_option
from eth_account import Account

from offchain.chain.cash import CashClient, CashError, format_amount, parse_amount
from offchain.chain.contracts import ContractsError, connect, is_local
from offchain.toolchain import configure_environment

configure_environment()

GAS_MONEY = "0.05 ether"


@click.command(cls=ConnectedProviderCommand, short_help="Buy a CoNETCash note from a fresh wallet")
@account_option(prompt=False)
@click.option("--amount", default="100", show_default=True, help="Face value, in whole stablecoin units (≤ 100).")
@click.option("--stablecoin", default=None, help="Backing stablecoin address (local default: the mock).")
@click.option("--wallet-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
def cli(ecosystem, network, account, amount, stablecoin, wallet_dir):
    """Make a fresh wallet, fund it, and buy a note with it."""
    from ape import accounts, project
    from ape_accounts import KeyfileAccount

    try:
        contracts = connect()
        client = CashClient(contracts)
        local = is_local()
        if account is None:
            if not local:
                raise click.UsageError("--account (the funding account) is required on a public network")
            account = accounts.test_accounts[0]
        if stablecoin is None:
            if "MockStablecoin" not in contracts:
                raise click.UsageError("--stablecoin is required on a public network")
            stablecoin = contracts["MockStablecoin"].address
        decimals, _cap = client.note_terms(stablecoin)
        client.check_price(stablecoin)
        units = parse_amount(amount, decimals)
        # The mock's ABI is a plain ERC-20 plus mint: it speaks to any listed stablecoin.
        coin = project.MockStablecoin.at(stablecoin)

        passphrase = os.environ.get("CONET_WALLET_PASSPHRASE") or click.prompt(
            "passphrase for the new wallet", hide_input=True, confirmation_prompt=True
        )
        fresh = Account.create()
        alias = f"buyer-{fresh.address[2:10].lower()}"
        folder = wallet_dir or accounts.containers["accounts"].data_folder
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{alias}.json"
        path.write_text(json.dumps(Account.encrypt(fresh.key, passphrase)))
        wallet = KeyfileAccount(keyfile_path=path)
        wallet.set_autosign(True, passphrase=passphrase)
        click.echo(f"wallet   {alias} {wallet.address} ({path})")

        account.transfer(wallet, GAS_MONEY)
        if local:
            coin.mint(wallet.address, units, sender=wallet)
        else:
            coin.transfer(wallet.address, units, sender=account)
        click.echo(f"funded   {wallet.address} with {amount} of {stablecoin} and {GAS_MONEY} for gas")
        bought = client.buy(wallet, coin, units)
    except (CashError, ContractsError) as exc:
        raise click.ClickException(str(exc)) from exc
    shown = format_amount(bought.amount, decimals)
    if bought.assigned:
        click.echo(f"note     #{bought.id} of {shown} assigned at once from the pool (tx {bought.tx_hash})")
    else:
        click.echo(f"order    #{bought.id} of {shown} waits for a CBDC (tx {bought.tx_hash})")
