"""CoNET governance: `ape run governance COMMAND`.

    propose add-stablecoin ADDRESS | remove-stablecoin ADDRESS | set-parameter NAME VALUE
            | list-odex-asset ADDRESS | delist-odex-asset ADDRESS
    delegate                 make the account's CoNET count as votes (before proposals you vote on)
    vote ID [for|against|abstain]
    queue ID                 a succeeded proposal into the timelock
    execute ID               a queued proposal once the timelock delay has passed
    show ID                  a proposal's state, votes and times
    wait ID                  local chains: move time to the proposal's next step
    enact ACTION ...         local chains: delegate, propose, vote, queue and execute in one run

On a local chain the treasury (first test account) acts unless --account says otherwise.
"""

import click
from ape.cli import ConnectedProviderCommand, account_option

from offchain.chain import governance as gov
from offchain.chain.contracts import ContractsError, advance_time, connect, is_local
from offchain.chain.deployer import CONET
from offchain.toolchain import configure_environment

configure_environment()

SUPPORT = {"for": gov.Support.FOR, "against": gov.Support.AGAINST, "abstain": gov.Support.ABSTAIN}


def _client(account):
    from ape import accounts

    contracts = connect()
    if account is None:
        if not is_local():
            raise click.UsageError("--account is required on a public network")
        account = accounts.test_accounts[0]
    return gov.GovernanceClient(contracts), account


def _action(client, kind, args):
    params = client.params
    builders = {
        "add-stablecoin": (1, lambda a: gov.add_stablecoin(params, a[0])),
        "remove-stablecoin": (1, lambda a: gov.remove_stablecoin(params, a[0])),
        "set-parameter": (2, lambda a: gov.set_parameter(params, a[0], int(a[1]))),
        "list-odex-asset": (1, lambda a: gov.list_odex_asset(params, a[0])),
        "delist-odex-asset": (1, lambda a: gov.delist_odex_asset(params, a[0])),
    }
    if kind not in builders:
        raise click.UsageError(f"unknown action {kind!r}; one of {', '.join(builders)}")
    count, build = builders[kind]
    if len(args) != count:
        raise click.UsageError(f"{kind} takes {count} argument(s)")
    return build(args)


def _show(proposal):
    click.echo(f"proposal {proposal.id}")
    click.echo(f"  {proposal.description}")
    click.echo(f"  state     {proposal.state.name.lower()}")
    click.echo(
        f"  votes     for {proposal.votes_for / CONET:,.0f}, against {proposal.votes_against / CONET:,.0f}, "
        f"abstain {proposal.votes_abstain / CONET:,.0f} (quorum {proposal.quorum / CONET:,.0f})"
    )
    click.echo(
        f"  snapshot  {proposal.snapshot}, voting ends {proposal.deadline}"
        + (f", executable from {proposal.eta}" if proposal.eta else "")
    )


def _guarded(step):
    try:
        return step()
    except (gov.GovernanceError, ContractsError) as exc:
        raise click.ClickException(str(exc)) from exc


@click.group(short_help="Propose, vote, queue and execute governance proposals")
def cli():
    """CoNET governance."""


@cli.command(cls=ConnectedProviderCommand)
@account_option(prompt=False)
@click.argument("kind")
@click.argument("args", nargs=-1)
def propose(ecosystem, network, account, kind, args):
    """Propose an ACTION (add-stablecoin, remove-stablecoin, set-parameter, list-odex-asset, delist-odex-asset)."""

    def step():
        client, sender = _client(account)
        proposal_id = client.propose(sender, _action(client, kind, args))
        click.echo(f"proposed {proposal_id}")
        _show(client.proposal(proposal_id))

    _guarded(step)


@cli.command(cls=ConnectedProviderCommand)
@account_option(prompt=False)
def delegate(ecosystem, network, account):
    """Delegate the account's votes to itself."""

    def step():
        client, sender = _client(account)
        client.delegate(sender)
        click.echo(
            f"delegated {client.token.balanceOf(sender.address) / CONET:,.0f} CONET of votes to {sender.address}"
        )

    _guarded(step)


@cli.command(cls=ConnectedProviderCommand)
@account_option(prompt=False)
@click.argument("proposal_id", type=int)
@click.argument("support", type=click.Choice(list(SUPPORT)), default="for")
def vote(ecosystem, network, account, proposal_id, support):
    """Vote on a proposal."""

    def step():
        client, sender = _client(account)
        weight = client.vote(sender, proposal_id, SUPPORT[support])
        click.echo(f"voted    {support} on {proposal_id} with {weight / CONET:,.0f} votes")

    _guarded(step)


@cli.command(cls=ConnectedProviderCommand)
@account_option(prompt=False)
@click.argument("proposal_id", type=int)
def queue(ecosystem, network, account, proposal_id):
    """Queue a succeeded proposal in the timelock."""

    def step():
        client, sender = _client(account)
        eta = client.queue(sender, proposal_id)
        click.echo(f"queued   {proposal_id}; executable from {eta}")

    _guarded(step)


@cli.command(cls=ConnectedProviderCommand)
@account_option(prompt=False)
@click.argument("proposal_id", type=int)
def execute(ecosystem, network, account, proposal_id):
    """Execute a queued proposal."""
    from ape import chain

    def step():
        client, sender = _client(account)
        client.execute(sender, proposal_id, chain.blocks.head.timestamp)
        click.echo(f"executed {proposal_id}")

    _guarded(step)


@cli.command(cls=ConnectedProviderCommand)
@click.argument("proposal_id", type=int)
def show(ecosystem, network, proposal_id):
    """Show a proposal's state."""
    _guarded(lambda: _show(gov.GovernanceClient(connect()).proposal(proposal_id)))


@cli.command(cls=ConnectedProviderCommand)
@click.argument("proposal_id", type=int)
def wait(ecosystem, network, proposal_id):
    """On a local chain, move time to the proposal's next step."""
    from ape import chain

    def step():
        client = gov.GovernanceClient(connect())
        _advance_to(client, client.proposal(proposal_id), chain)
        _show(client.proposal(proposal_id))

    _guarded(step)


@cli.command(cls=ConnectedProviderCommand)
@account_option(prompt=False)
@click.argument("kind")
@click.argument("args", nargs=-1)
def enact(ecosystem, network, account, kind, args):
    """On a local chain: delegate, propose, vote for, queue and execute an ACTION in one run."""
    from ape import chain

    def step():
        if not is_local():
            raise click.UsageError("enact moves time and runs only on a local chain")
        client, sender = _client(account)
        client.delegate(sender)
        advance_time(1)  # votes count from the block after the delegation
        proposal_id = client.propose(sender, _action(client, kind, args))
        click.echo(f"proposed {proposal_id}")
        _advance_to(client, client.proposal(proposal_id), chain)
        client.vote(sender, proposal_id, gov.Support.FOR)
        click.echo(f"voted    for {proposal_id}")
        _advance_to(client, client.proposal(proposal_id), chain)
        client.queue(sender, proposal_id)
        click.echo(f"queued   {proposal_id}")
        _advance_to(client, client.proposal(proposal_id), chain)
        client.execute(sender, proposal_id, chain.blocks.head.timestamp)
        click.echo(f"executed {proposal_id}")
        _show(client.proposal(proposal_id))

    _guarded(step)


def _advance_to(client, proposal, chain):
    target = client.next_step_at(proposal)
    if target is None:
        click.echo(f"proposal {proposal.id} is {proposal.state.name.lower()}: nothing waits on time")
        return
    now = chain.blocks.head.timestamp
    if target > now:
        if not is_local():
            raise click.ClickException(f"proposal {proposal.id} moves on in {target - now} s; wait until then")
        advance_time(target - now)
