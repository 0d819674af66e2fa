"""The `conet` command line."""

from __future__ import annotations

import json
import time

import click

from offchain import __version__
from offchain.chain import addressbook
from offchain.chain.summary import describe_book
from offchain.devnet import anvil
from offchain.si import cli as si_cli


@click.group()
@click.version_option(__version__, prog_name="conet")
def main() -> None:
    """CoNET: wallet-addressed networking paid for with stablecoin-backed e-cash."""


main.add_command(si_cli.si)


@main.group()
def deployments() -> None:
    """Address books of the deployed contracts."""


@deployments.command("show")
@click.option("--network", default="avalanche:anvil", show_default=True, help="<ecosystem>:<network>")
@click.option("--json", "as_json", is_flag=True, help="Print the book as JSON.")
def deployments_show(network: str, as_json: bool) -> None:
    """Print the address book of NETWORK."""
    try:
        book = addressbook.load(network)
    except addressbook.AddressBookError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(book.to_json(), indent=2))
    else:
        click.echo("\n".join(describe_book(book)))


@main.group()
def devnet() -> None:
    """Local development networks."""


@devnet.command("anvil")
@click.option("--port", default=anvil.DEFAULT_PORT, show_default=True)
@click.option("--chain-id", default=anvil.CHAIN_ID, show_default=True)
def devnet_anvil(port: int, chain_id: int) -> None:
    """Run the project's anvil node on 127.0.0.1 until interrupted."""
    try:
        node = anvil.start_anvil(port=port, chain_id=chain_id)
    except anvil.AnvilError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"anvil on {node.uri}, chain id {chain_id}; Ctrl-C stops it")
    try:
        while node.process.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        node.stop()
