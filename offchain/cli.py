"""The `conet` command line."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from offchain import __version__
from offchain.cash_cli import cash
from offchain.chain import addressbook
from offchain.chain.summary import describe_book
from offchain.devnet import anvil
from offchain.odex.cli import odex
from offchain.si import cli as si_cli


@click.group()
@click.version_option(__version__, prog_name="conet")
def main() -> None:
    """CoNET: wallet-addressed networking paid for with stablecoin-backed e-cash."""


main.add_command(si_cli.si)
main.add_command(cash)
main.add_command(odex)


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


_devnet_dir = click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The devnet directory (default: $CONET_DEVNET_DIR or .devnet in the project).",
)


@devnet.command("up")
@_devnet_dir
@click.option("--archives", default=4, show_default=True, help="Archive nodes (NodeRegistry splits them in groups).")
@click.option("--witnesses", default=6, show_default=True, help="Witnesses (a note chain draws 5).")
@click.option("--validators", default=2, show_default=True, help="Validators.")
def devnet_up(directory: Path | None, archives: int, witnesses: int, validators: int) -> None:
    """Start the DLE devnet: anvil, the contracts, and every node as its own process."""
    from offchain.devnet import dle

    try:
        dle.up(directory, dle.DevnetSpec(archives=archives, witnesses=witnesses, validators=validators), click.echo)
    except (dle.DevnetError, anvil.AnvilError) as exc:
        raise click.ClickException(str(exc)) from exc


@devnet.command("status")
@_devnet_dir
def devnet_status(directory: Path | None) -> None:
    """Show the devnet's nodes, note chains and waiting pools."""
    from offchain.devnet import dle

    try:
        click.echo("\n".join(dle.describe_status(dle.status(directory))))
    except dle.DevnetError as exc:
        raise click.ClickException(str(exc)) from exc


@devnet.command("down")
@_devnet_dir
def devnet_down(directory: Path | None) -> None:
    """Stop every process of the devnet (its directory stays, with the logs)."""
    from offchain.devnet import dle

    try:
        dle.down(directory, click.echo)
    except dle.DevnetError as exc:
        raise click.ClickException(str(exc)) from exc


@devnet.command("check")
@_devnet_dir
def devnet_check(directory: Path | None) -> None:
    """The conservation check: every note's and oDEX receipt's outstanding value against its chain, every
    coin's backing and every oDEX asset's custody."""
    from offchain.devnet import dle
    from offchain.dle.conservation import ConservationError

    try:
        report, receipts, names = dle.check(directory)
    except (dle.DevnetError, ConservationError) as exc:
        raise click.ClickException(f"conservation check failed: {exc}") from exc
    click.echo("\n".join(report.lines(names)))
    click.echo(f"conservation holds: {len(report.notes)} notes, {len(report.coins)} stablecoins")
    if receipts is not None:
        click.echo("\n".join(receipts.lines(names)))
        click.echo(f"conservation holds: {len(receipts.receipts)} oDEX receipts, {len(receipts.assets)} assets")
