"""Deploys the CoNET contracts: `ape run deploy --network avalanche:fuji --account NAME [--fresh]`.

On a local network (the embedded `avalanche:local:test`, or the project's anvil node
`avalanche:anvil`) the first test account deploys unless `--account` says otherwise; on a public
network `--account` names an account from ape's account system (`ape accounts import NAME`).
"""

import click
from ape.cli import ConnectedProviderCommand, account_option

from offchain.chain.deployer import LOCAL_CHAIN_IDS, DeployError, deploy
from offchain.chain.summary import describe
from offchain.toolchain import configure_environment

configure_environment()


@click.command(cls=ConnectedProviderCommand, short_help="Deploy the CoNET contracts")
@account_option(prompt=False)
@click.option("--fresh", is_flag=True, help="Deploy everything anew, ignoring the address book.")
def cli(ecosystem, network, account, fresh):
    """Deploy every contract in dependency order, grant the roles, and write the address book."""
    from ape import accounts, chain

    if account is None:
        if chain.chain_id not in LOCAL_CHAIN_IDS:
            raise click.UsageError(
                f"--account is required on {ecosystem.name}:{network.name}; import one with `ape accounts import NAME`"
            )
        account = accounts.test_accounts[0]
    try:
        result = deploy(account, f"{ecosystem.name}:{network.name}", fresh=fresh, log=click.echo)
    except DeployError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo()
    click.echo("\n".join(describe(result.book, result.contracts)))
