"""Run a CBDC: `ape run cbdc [--account NAME] [--once] [--interval SECONDS]`.

Stakes the CBDC minimum, registers the CBDC node NFT, lets CoNETCash burn its CoNET, then watches the
open orders. CoNETCash takes a fill only from the CBDC an order's archive group drew, on the group's
certificate; this script has no archive-node client, so it reports each open order as waiting for its
draw and fills none (the devnet's CBDC process, `offchain/dle/service.py`, asks the host archive node
for its draws and fills). On a local chain the contracts are deployed if missing, the second test account
serves unless --account says otherwise, and it is funded with CoNET from the treasury when short.
"""

import click
from ape.cli import ConnectedProviderCommand, account_option

from offchain.cbdc.service import CbdcService
from offchain.chain.cash import CashClient, CashError
from offchain.chain.contracts import ContractsError, connect, is_local
from offchain.chain.deployer import CONET, Role
from offchain.toolchain import configure_environment

configure_environment()

# Enough CoNET beyond the stake to burn for thousands of $100 notes at $0.05.
LOCAL_BURN_BUDGET = 1_000_000 * CONET


@click.command(cls=ConnectedProviderCommand, short_help="Stake as a CBDC and watch CoNETCash orders")
@account_option(prompt=False)
@click.option("--once", is_flag=True, help="One pass over the open orders, then exit.")
@click.option("--interval", default=2.0, show_default=True, help="Seconds between passes.")
@click.option("--endpoint", default="https://cbdc.conet.invalid", show_default=True, help="URL the CBDC answers on.")
@click.option("--region", default="local", show_default=True)
def cli(ecosystem, network, account, once, interval, endpoint, region):
    """Stake, register and fill orders."""
    from ape import accounts

    try:
        contracts = connect()
        client = CashClient(contracts)
        minimum = int(contracts["Staking"].minimumStake(int(Role.CBDC)))
        if account is None:
            if not is_local():
                raise click.UsageError("--account is required on a public network")
            account = accounts.test_accounts[1]
            _fund_locally(contracts["CoNETToken"], accounts.test_accounts[0], account, minimum + LOCAL_BURN_BUDGET)
        service = CbdcService(client, account, log=click.echo)
        service.start(minimum, endpoint, region)
        filled = service.run(interval, once)
    except (CashError, ContractsError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"filled {filled} order(s)" + (f", {len(service.failures)} failed" if service.failures else ""))
    if service.failures:
        raise SystemExit(1)


def _fund_locally(token, treasury, account, target):
    held = int(token.balanceOf(account.address))
    if held < target:
        token.transfer(account.address, target - held, sender=treasury)
        click.echo(f"funded   {account.address} with {(target - held) / CONET:,.0f} CONET from the treasury")
