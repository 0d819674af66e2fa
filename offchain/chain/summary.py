"""Human-readable views of an address book and, when connected, of the deployed state."""

from __future__ import annotations

from typing import Any

from offchain.chain.addressbook import AddressBook
from offchain.chain.deployer import CONET, USD, Role


def describe_book(book: AddressBook) -> list[str]:
    """The address book as lines of text."""
    lines = [
        f"network   {book.network} (chain id {book.chain_id})",
        f"deployer  {book.deployer}",
        f"commit    {book.commit}",
    ]
    for name, deployment in sorted(book.contracts.items()):
        lines.append(f"  {name:<16} {deployment.address}  block {deployment.block}")
    return lines


def describe(book: AddressBook, contracts: dict[str, Any]) -> list[str]:
    """The address book, then what the deployed contracts say about themselves."""
    lines = describe_book(book)
    token = contracts["CoNETToken"]
    staking = contracts["Staking"]
    oracle = contracts["PriceOracle"]
    lines += [
        "",
        f"CoNET supply      {token.totalSupply() / CONET:,.0f} of {token.GENESIS_SUPPLY() / CONET:,.0f}",
        f"treasury balance  {token.balanceOf(book.deployer) / CONET:,.0f} CONET",
        f"unbonding delay   {staking.unbondingDelay() / 3600:g} h",
        f"reporter reward   {staking.reporterRewardBps() / 100:g}% of a slash",
    ]
    for role in Role:
        minimum = staking.minimumStake(int(role)) / CONET
        unit = staking.capacityUnit(int(role)) / CONET
        lines.append(f"  stake {role.name:<13} minimum {minimum:>9,.0f} CONET, capacity unit {unit:,.0f}")
    priced = [("CONET", token.address)]
    if "MockStablecoin" in contracts:
        priced.append(("mUSDC", contracts["MockStablecoin"].address))
    for symbol, address in priced:
        round_id, answer, _, updated, _ = oracle.latestRoundData(address)
        shown = f"${answer / USD:,.4f} (round {round_id}, updated {updated})" if round_id else "not set"
        lines.append(f"price {symbol:<6} {shown}")
    if "ParameterStore" in contracts:
        lines += _economy(contracts)
    return lines


def _economy(contracts: dict[str, Any]) -> list[str]:
    params = contracts["ParameterStore"]
    lines = ["", "parameters (owned by governance)"]
    for key in params.parameterKeys():
        name = bytes(key).rstrip(b"\0").decode()
        lines.append(f"  {name:<24} {params.value(key):,}")
    coins = params.backingStablecoins()
    lines.append(f"backing stablecoins  {', '.join(coins) if coins else 'none listed'}")
    if "CoNETGovernor" in contracts:
        governor = contracts["CoNETGovernor"]
        timelock = contracts["CoNETTimelock"]
        lines.append(
            f"governance           vote after {governor.votingDelay():,} s for {governor.votingPeriod():,} s, "
            f"quorum {governor.quorumNumerator()}% of supply, timelock {timelock.getMinDelay():,} s"
        )
    return lines
