"""Governance: the parameter store (bounds, unknown names, owner only, the stablecoin and oDEX lists) and
the governor with its timelock (voting power fixed at the proposal's snapshot, quorum as 4% of the supply
at the snapshot, proposal states, a parameter changed by a passed proposal, a delisted stablecoin that
refuses new notes while the notes it backs still exit)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from conftest import (
    ORDER_TIMEOUT,
    Draws,
    group_of,
    group_signatures,
    reverts_with,
    set_prices,
)
from eth_utils.crypto import keccak

from offchain.chain.deployer import CONET

ZERO = "0x0000000000000000000000000000000000000000"
USDC = 10**6
MAX_UINT = 2**256 - 1
VOTING_DELAY = 10
VOTING_PERIOD = 300
TIMELOCK_DELAY = 60
QUORUM_PERCENT = 4
AGAINST, FOR, ABSTAIN = 0, 1, 2
PENDING, ACTIVE, CANCELED, DEFEATED, SUCCEEDED, QUEUED, EXPIRED, EXECUTED = range(8)
SUPPLY = 500_000_000 * CONET
QUORUM = SUPPLY * QUORUM_PERCENT // 100

# name -> (default, min, max); ORDER_TIMEOUT's default is the conftest fixture's constructor argument.
PARAMETERS = {
    "TRANSFER_FEE_BPS": (5, 0, 1_000),
    "EXIT_FEE_BPS": (20, 0, 1_000),
    "CBDC_BURN_BPS": (2_000, 0, 10_000),
    "ODEX_FEE_BPS": (1, 0, 1_000),
    "WITNESSES_PER_NOTE": (5, 1, 32),
    "NOTE_CAP_UNITS": (100, 1, 1_000_000),
    "ORDER_TIMEOUT": (ORDER_TIMEOUT, 60, 30 * 24 * 3600),
    "ODEX_RECEIPT_CAP_UNITS": (1_000_000, 1, 1_000_000_000),
    "MIN_ARCHIVE_GROUP_SIZE": (2, 2, 64),
}


def key(name: str) -> bytes:
    return name.encode().ljust(32, b"\x00")


def bitmap(*states: int) -> bytes:
    """OZ Governor's and TimelockController's bytes32 bitmap of expected states."""
    return sum(1 << state for state in states).to_bytes(32, "big")


@pytest.fixture(scope="module")
def governance(project: Any, admin: Any, token: Any) -> tuple[Any, Any]:
    """A governor and timelock wired as the deployer wires them (the store is handed over per test)."""
    timelock = admin.deploy(project.CoNETTimelock, TIMELOCK_DELAY, [], [ZERO], admin)
    governor = admin.deploy(project.CoNETGovernor, token, timelock, VOTING_DELAY, VOTING_PERIOD, 0, QUORUM_PERCENT)
    timelock.grantRole(timelock.PROPOSER_ROLE(), governor, sender=admin)
    timelock.grantRole(timelock.CANCELLER_ROLE(), governor, sender=admin)
    timelock.renounceRole(timelock.DEFAULT_ADMIN_ROLE(), admin, sender=admin)
    return governor, timelock


@pytest.fixture(scope="module", autouse=True)
def _deployed(
    governance: tuple[Any, Any],
    params: Any,
    cash: Any,
    cbdc: Any,
    archive_nodes: list[Any],
    funded: list[Any],
    admin: Any,
    treasury: Any,
    alice: Any,
    bob: Any,
    carol: Any,
    staking: Any,
    oracle: Any,
    stablecoin: Any,
    dle: Any,
    registry: Any,
) -> None:
    """Set up the module's fixtures before ape's per-test snapshots start."""


def advance(chain: Any, seconds: int) -> None:
    chain.mine(1, timestamp=chain.pending_timestamp + seconds)


@dataclass
class Proposal:
    id: int
    targets: list[str]
    values: list[int]
    calldatas: list[bytes]
    description: str
    snapshot: int
    deadline: int

    @property
    def description_hash(self) -> bytes:
        return keccak(text=self.description)

    @property
    def actions(self) -> tuple[list[str], list[int], list[bytes], bytes]:
        return self.targets, self.values, self.calldatas, self.description_hash


def propose(governor: Any, proposer: Any, calls: list[tuple[Any, bytes]], description: str) -> Proposal:
    targets = [contract.address for contract, _ in calls]
    calldatas = [data for _, data in calls]
    receipt = governor.propose(targets, [0] * len(calls), calldatas, description, sender=proposer)
    created = receipt.events.filter(governor.ProposalCreated)[0]
    return Proposal(
        created.proposalId, targets, [0] * len(calls), calldatas, description, created.voteStart, created.voteEnd
    )


def timelock_salt(governor: Any, proposal: Proposal) -> bytes:
    """GovernorTimelockControl's salt: bytes20(governor) ^ descriptionHash."""
    padded = bytes.fromhex(governor.address[2:]).ljust(32, b"\x00")
    return bytes(a ^ b for a, b in zip(padded, proposal.description_hash, strict=True))


def delegate(token: Any, holder: Any) -> None:
    token.invoke_transaction("delegate", holder, sender=holder)  # ape shadows `delegate`


def pass_and_queue(chain: Any, governor: Any, proposal: Proposal, voter: Any) -> None:
    """Votes `proposal` through with `voter`, queues it and waits out the timelock delay."""
    advance(chain, VOTING_DELAY + 1)
    governor.castVote(proposal.id, FOR, sender=voter)
    advance(chain, VOTING_PERIOD + 1)
    governor.queue(*proposal.actions, sender=voter)
    advance(chain, TIMELOCK_DELAY + 1)


# ---------------------------------------------------------------- the parameter store


def test_every_parameter_has_its_default_and_bounds(params: Any) -> None:
    assert [bytes(k) for k in params.parameterKeys()] == [key(name) for name in PARAMETERS]
    for name, (default, low, high) in PARAMETERS.items():
        assert params.value(key(name)) == default
        assert params.boundsOf(key(name)) == (low, high)
        assert getattr(params, name)() == key(name)


@pytest.mark.parametrize("name", list(PARAMETERS))
def test_a_parameter_takes_any_value_within_its_bounds_and_none_outside(params: Any, admin: Any, name: str) -> None:
    _, low, high = PARAMETERS[name]
    for value in (low, high, (low + high) // 2):
        receipt = params.setParameter(key(name), value, sender=admin)
        (event,) = receipt.events.filter(params.ParameterSet)
        assert (bytes(event.key), event.value) == (key(name), value)
        assert params.value(key(name)) == value
    for value in (high + 1, 2**256 - 1, *([low - 1] if low > 0 else [])):
        with reverts_with(params.ParameterOutOfBounds, key=key(name), value=value, min=low, max=high):
            params.setParameter(key(name), value, sender=admin)
    assert params.value(key(name)) == (low + high) // 2


def test_an_unknown_parameter_is_refused(params: Any, admin: Any) -> None:
    for unknown in (key("NO_SUCH_PARAMETER"), key("exit_fee_bps"), b"\x00" * 32):
        with reverts_with(params.UnknownParameter, key=unknown):
            params.setParameter(unknown, 1, sender=admin)
        with reverts_with(params.UnknownParameter, key=unknown):
            params.value(unknown)
        with reverts_with(params.UnknownParameter, key=unknown):
            params.boundsOf(unknown)


def test_an_order_timeout_out_of_bounds_is_refused_at_deployment(project: Any, admin: Any) -> None:
    with reverts_with(
        project.ParameterStore.ParameterOutOfBounds, key=key("ORDER_TIMEOUT"), value=59, min=60, max=30 * 24 * 3600
    ):
        admin.deploy(project.ParameterStore, admin, 59)


def test_only_the_owner_changes_the_store(params: Any, admin: Any, alice: Any, stablecoin: Any) -> None:
    assert params.owner() == admin.address
    calls = [
        lambda: params.setParameter(key("EXIT_FEE_BPS"), 1, sender=alice),
        lambda: params.listStablecoin(stablecoin, sender=alice),
        lambda: params.delistStablecoin(stablecoin, sender=alice),
        lambda: params.listOdexAsset(ZERO, sender=alice),
        lambda: params.delistOdexAsset(ZERO, sender=alice),
        lambda: params.transferOwnership(alice, sender=alice),
    ]
    for call in calls:
        with reverts_with(params.OwnableUnauthorizedAccount, account=alice):
            call()
    assert params.value(key("EXIT_FEE_BPS")) == 20


def test_stablecoins_are_listed_and_delisted_once(params: Any, admin: Any, stablecoin: Any) -> None:
    assert params.noteTerms(stablecoin) == (False, 0, 100)  # unlisted: no decimals known
    receipt = params.listStablecoin(stablecoin, sender=admin)
    (event,) = receipt.events.filter(params.StablecoinListed)
    assert (event.stablecoin, event.decimals) == (stablecoin.address, 6)
    assert params.isBackingStablecoin(stablecoin)
    assert params.backingStablecoins() == [stablecoin.address]
    assert params.stablecoinDecimals(stablecoin) == 6
    assert params.noteTerms(stablecoin) == (True, 6, 100 * USDC)
    with reverts_with(params.StablecoinAlreadyListed, stablecoin=stablecoin):
        params.listStablecoin(stablecoin, sender=admin)

    params.setParameter(key("NOTE_CAP_UNITS"), 7, sender=admin)
    assert params.noteTerms(stablecoin) == (True, 6, 7 * USDC)

    receipt = params.delistStablecoin(stablecoin, sender=admin)
    assert receipt.events.filter(params.StablecoinDelisted)[0].stablecoin == stablecoin.address
    assert not params.isBackingStablecoin(stablecoin)
    assert params.backingStablecoins() == []
    assert params.noteTerms(stablecoin) == (False, 6, 7 * USDC)  # the decimals are kept
    with reverts_with(params.StablecoinNotListed, stablecoin=stablecoin):
        params.delistStablecoin(stablecoin, sender=admin)
    params.listStablecoin(stablecoin, sender=admin)  # and listed again
    assert params.isBackingStablecoin(stablecoin)


def test_only_an_erc20_with_at_most_18_decimals_may_be_a_stablecoin(
    project: Any, params: Any, admin: Any, alice: Any, staking: Any
) -> None:
    assert params.MAX_STABLECOIN_DECIMALS() == 18
    too_precise = admin.deploy(project.TestAggregator, 19)  # anything with decimals() will do
    for invalid in (alice.address, ZERO, staking.address, too_precise.address):
        with reverts_with(params.InvalidStablecoin, stablecoin=invalid):
            params.listStablecoin(invalid, sender=admin)
    for decimals in (18, 0):
        coin = admin.deploy(project.TestAggregator, decimals)
        params.listStablecoin(coin, sender=admin)
        assert params.noteTerms(coin) == (True, decimals, 100 * 10**decimals)
    assert len(params.backingStablecoins()) == 2


def test_odex_assets_include_the_native_coin(params: Any, admin: Any, token: Any) -> None:
    assert params.NATIVE_ASSET() == ZERO
    assert not params.isOdexAsset(ZERO)
    receipt = params.listOdexAsset(ZERO, sender=admin)
    assert receipt.events.filter(params.OdexAssetListed)[0].asset == ZERO
    params.listOdexAsset(token, sender=admin)
    assert params.isOdexAsset(ZERO) and params.isOdexAsset(token)
    assert params.odexAssets() == [ZERO, token.address]
    for asset in (ZERO, token.address):
        with reverts_with(params.OdexAssetAlreadyListed, asset=asset):
            params.listOdexAsset(asset, sender=admin)
    receipt = params.delistOdexAsset(ZERO, sender=admin)
    assert receipt.events.filter(params.OdexAssetDelisted)[0].asset == ZERO
    assert params.odexAssets() == [token.address]
    with reverts_with(params.OdexAssetNotListed, asset=ZERO):
        params.delistOdexAsset(ZERO, sender=admin)
    # oDEX assets and backing stablecoins are separate lists.
    assert not params.isBackingStablecoin(token)


# ---------------------------------------------------------------- the governor


def test_the_governor_counts_time_in_seconds_and_quorum_in_percent(governance: tuple[Any, Any], token: Any) -> None:
    governor, timelock = governance
    assert governor.CLOCK_MODE() == token.CLOCK_MODE() == "mode=timestamp"
    assert (governor.votingDelay(), governor.votingPeriod(), governor.proposalThreshold()) == (
        VOTING_DELAY,
        VOTING_PERIOD,
        0,
    )
    assert (governor.quorumNumerator(), governor.quorumDenominator()) == (QUORUM_PERCENT, 100)
    assert governor.timelock() == timelock.address
    assert timelock.getMinDelay() == TIMELOCK_DELAY


def test_votes_are_counted_at_the_snapshot_not_when_cast(
    chain: Any,
    governance: tuple[Any, Any],
    token: Any,
    params: Any,
    treasury: Any,
    alice: Any,
    bob: Any,
    carol: Any,
) -> None:
    """Bob's 30M votes are delegated before the snapshot; after it he hands his tokens to Carol, who
    delegates them and votes too. The tokens vote once, with Bob."""
    governor, _ = governance
    token.transfer(bob, 30_000_000 * CONET - token.balanceOf(bob), sender=treasury)
    delegate(token, bob)
    proposal = propose(
        governor, alice, [(params, params.setParameter.encode_input(key("EXIT_FEE_BPS"), 30))], "Exit fee 0.30%"
    )
    assert proposal.snapshot == chain.blocks[-1].timestamp + VOTING_DELAY
    advance(chain, VOTING_DELAY + 1)
    token.transfer(carol, token.balanceOf(bob), sender=bob)
    delegate(token, carol)
    assert token.getVotes(carol) == token.balanceOf(carol) == 30_000_000 * CONET + 100_000 * CONET  # funded
    assert token.getVotes(bob) == 0
    assert governor.getVotes(bob, proposal.snapshot) == 30_000_000 * CONET
    assert governor.getVotes(carol, proposal.snapshot) == 0

    bob_vote = governor.castVote(proposal.id, FOR, sender=bob).events.filter(governor.VoteCast)[0]
    carol_vote = governor.castVote(proposal.id, FOR, sender=carol).events.filter(governor.VoteCast)[0]

    assert (bob_vote.voter, bob_vote.weight) == (bob.address, 30_000_000 * CONET)
    assert (carol_vote.voter, carol_vote.weight) == (carol.address, 0)
    assert governor.proposalVotes(proposal.id) == (0, 30_000_000 * CONET, 0)
    advance(chain, VOTING_PERIOD + 1)
    assert governor.state(proposal.id) == SUCCEEDED


def test_votes_bought_after_the_snapshot_cannot_carry_a_proposal(
    chain: Any, governance: tuple[Any, Any], token: Any, params: Any, treasury: Any, alice: Any
) -> None:
    governor, _ = governance
    call = (params, params.setParameter.encode_input(key("EXIT_FEE_BPS"), 1_000))
    late = propose(governor, alice, [call], "Exit fee 10%")
    advance(chain, VOTING_DELAY + 1)
    token.transfer(alice, 100_000_000 * CONET, sender=treasury)  # far above quorum
    delegate(token, alice)
    assert governor.getVotes(alice, late.snapshot) == 0
    receipt = governor.castVote(late.id, FOR, sender=alice)
    assert receipt.events.filter(governor.VoteCast)[0].weight == 0
    # The same votes carry a proposal made after they were bought.
    timely = propose(governor, alice, [call], "Exit fee 10%, again")
    advance(chain, VOTING_DELAY + 1)
    governor.castVote(timely.id, FOR, sender=alice)
    advance(chain, VOTING_PERIOD + 1)
    assert governor.proposalVotes(late.id) == (0, 0, 0)
    assert governor.state(late.id) == DEFEATED
    assert governor.state(timely.id) == SUCCEEDED
    with reverts_with(
        governor.GovernorUnexpectedProposalState, proposalId=late.id, current=DEFEATED, expectedStates=bitmap(SUCCEEDED)
    ):
        governor.queue(*late.actions, sender=alice)


def test_quorum_is_4_percent_of_the_supply_at_the_snapshot_for_or_abstain(
    chain: Any, governance: tuple[Any, Any], token: Any, params: Any, treasury: Any, alice: Any, bob: Any
) -> None:
    """Alice holds one wei less than quorum, Bob one wei. Alice alone fails; with Bob abstaining, the
    proposal reaches quorum exactly and passes."""
    governor, _ = governance
    assert token.totalSupply() == SUPPLY
    token.transfer(alice, QUORUM - 1 - token.balanceOf(alice), sender=treasury)
    token.transfer(treasury, token.balanceOf(bob) - 1, sender=bob)
    assert (token.balanceOf(alice), token.balanceOf(bob)) == (QUORUM - 1, 1)
    delegate(token, alice)
    delegate(token, bob)
    call = (params, params.setParameter.encode_input(key("EXIT_FEE_BPS"), 25))
    alone = propose(governor, alice, [call], "Alone")
    together = propose(governor, alice, [call], "Together")
    advance(chain, VOTING_DELAY + 1)
    assert governor.quorum(alone.snapshot) == QUORUM == 20_000_000 * CONET
    governor.castVote(alone.id, FOR, sender=alice)
    governor.castVote(together.id, FOR, sender=alice)
    governor.castVote(together.id, ABSTAIN, sender=bob)
    advance(chain, VOTING_PERIOD + 1)
    assert governor.proposalVotes(alone.id) == (0, QUORUM - 1, 0)
    assert governor.state(alone.id) == DEFEATED
    assert governor.proposalVotes(together.id) == (0, QUORUM - 1, 1)
    assert governor.state(together.id) == SUCCEEDED


def test_quorum_follows_the_supply_at_the_snapshot(
    chain: Any, governance: tuple[Any, Any], token: Any, params: Any, treasury: Any, alice: Any
) -> None:
    governor, _ = governance
    before = propose(governor, alice, [(params, params.setParameter.encode_input(key("EXIT_FEE_BPS"), 21))], "A")
    advance(chain, VOTING_DELAY + 1)
    token.burn(100_000_000 * CONET, sender=treasury)
    after = propose(governor, alice, [(params, params.setParameter.encode_input(key("EXIT_FEE_BPS"), 22))], "B")
    advance(chain, VOTING_DELAY + 1)
    assert governor.quorum(before.snapshot) == QUORUM
    assert governor.quorum(after.snapshot) == 400_000_000 * CONET * QUORUM_PERCENT // 100


def test_a_proposal_goes_pending_active_succeeded_queued_executed(
    chain: Any, governance: tuple[Any, Any], token: Any, params: Any, admin: Any, treasury: Any, alice: Any
) -> None:
    governor, timelock = governance
    params.transferOwnership(timelock, sender=admin)
    delegate(token, treasury)
    proposal = propose(
        governor, alice, [(params, params.setParameter.encode_input(key("EXIT_FEE_BPS"), 50))], "Exit fee 0.50%"
    )
    assert governor.state(proposal.id) == PENDING
    with reverts_with(
        governor.GovernorUnexpectedProposalState, proposalId=proposal.id, current=PENDING, expectedStates=bitmap(ACTIVE)
    ):
        governor.castVote(proposal.id, FOR, sender=treasury)

    advance(chain, VOTING_DELAY + 1)
    assert governor.state(proposal.id) == ACTIVE
    governor.castVote(proposal.id, FOR, sender=treasury)
    assert governor.hasVoted(proposal.id, treasury)
    with reverts_with(governor.GovernorAlreadyCastVote, voter=treasury):
        governor.castVote(proposal.id, AGAINST, sender=treasury)
    with reverts_with(
        governor.GovernorUnexpectedProposalState,
        proposalId=proposal.id,
        current=ACTIVE,
        expectedStates=bitmap(SUCCEEDED),
    ):
        governor.queue(*proposal.actions, sender=alice)

    advance(chain, VOTING_PERIOD + 1)
    assert governor.state(proposal.id) == SUCCEEDED
    governor.queue(*proposal.actions, sender=alice)
    assert governor.state(proposal.id) == QUEUED
    operation = timelock.hashOperationBatch(
        proposal.targets, proposal.values, proposal.calldatas, b"\x00" * 32, timelock_salt(governor, proposal)
    )
    assert timelock.isOperationPending(operation)
    with reverts_with(timelock.TimelockUnexpectedOperationState, operationId=operation, expectedStates=bitmap(2)):
        governor.execute(*proposal.actions, sender=alice)
    assert params.value(key("EXIT_FEE_BPS")) == 20

    advance(chain, TIMELOCK_DELAY + 1)
    receipt = governor.execute(*proposal.actions, sender=alice)
    assert governor.state(proposal.id) == EXECUTED
    assert receipt.events.filter(governor.ProposalExecuted)[0].proposalId == proposal.id
    (changed,) = receipt.events.filter(params.ParameterSet)
    assert (bytes(changed.key), changed.value) == (key("EXIT_FEE_BPS"), 50)
    assert params.value(key("EXIT_FEE_BPS")) == 50
    # The store now answers to the timelock alone.
    with reverts_with(params.OwnableUnauthorizedAccount, account=admin):
        params.setParameter(key("EXIT_FEE_BPS"), 20, sender=admin)


def test_a_proposal_voted_down_is_defeated(
    chain: Any, governance: tuple[Any, Any], token: Any, params: Any, treasury: Any, alice: Any, bob: Any
) -> None:
    governor, _ = governance
    token.transfer(bob, QUORUM - token.balanceOf(bob), sender=treasury)
    token.transfer(alice, QUORUM - token.balanceOf(alice), sender=treasury)
    delegate(token, alice)
    delegate(token, bob)
    proposal = propose(governor, alice, [(params, params.setParameter.encode_input(key("EXIT_FEE_BPS"), 1))], "Tie")
    advance(chain, VOTING_DELAY + 1)
    governor.castVote(proposal.id, FOR, sender=alice)
    governor.castVote(proposal.id, AGAINST, sender=bob)
    advance(chain, VOTING_PERIOD + 1)
    assert governor.proposalVotes(proposal.id) == (QUORUM, QUORUM, 0)
    assert governor.state(proposal.id) == DEFEATED  # a tie is not a majority


def test_a_passed_proposal_out_of_bounds_fails_to_execute(
    chain: Any, governance: tuple[Any, Any], token: Any, params: Any, admin: Any, treasury: Any, alice: Any
) -> None:
    governor, timelock = governance
    params.transferOwnership(timelock, sender=admin)
    delegate(token, treasury)
    proposal = propose(
        governor, alice, [(params, params.setParameter.encode_input(key("EXIT_FEE_BPS"), 1_001))], "Exit fee 10.01%"
    )
    pass_and_queue(chain, governor, proposal, treasury)
    with reverts_with(params.ParameterOutOfBounds, key=key("EXIT_FEE_BPS"), value=1_001, min=0, max=1_000):
        governor.execute(*proposal.actions, sender=alice)
    assert governor.state(proposal.id) == QUEUED
    assert params.value(key("EXIT_FEE_BPS")) == 20


# ---------------------------------------------------------------- delisting through governance


def test_a_delisted_stablecoin_refuses_new_notes_but_its_notes_still_exit(
    chain: Any,
    governance: tuple[Any, Any],
    token: Any,
    oracle: Any,
    params: Any,
    stablecoin: Any,
    dle: Any,
    cash: Any,
    registry: Any,
    archive_nodes: list[Any],
    draws: Draws,
    cbdc: Any,
    admin: Any,
    treasury: Any,
    alice: Any,
    bob: Any,
) -> None:
    governor, timelock = governance
    params.listStablecoin(stablecoin, sender=admin)
    set_prices(oracle, admin, token, stablecoin)
    stablecoin.mint(alice, 1_000 * USDC, sender=alice)
    stablecoin.approve(cash, MAX_UINT, sender=alice)
    for group in (0, 1):  # both archive groups draw CBDCs: the note's and the order's
        dle.refreshGroup(group, sender=admin)
    buy = cash.buy(stablecoin, 50 * USDC, sender=alice)
    note = buy.events.filter(cash.OrderPlaced)[0].id
    draws.fill(cash, note, cbdc, selection=b"\x01" * 32)
    order = cash.buy(stablecoin, 20 * USDC, sender=alice).events.filter(cash.OrderPlaced)[0].id
    waiting = cash.buy(stablecoin, 10 * USDC, sender=alice).events.filter(cash.OrderPlaced)[0].id
    group = note % 2
    members = group_of(registry, archive_nodes, group)
    genesis = keccak(b"genesis")
    dle.registerChain(
        cash,
        note,
        genesis,
        group,
        1,
        group_signatures(members, dle.genesisDigest(cash, note, genesis, group)),
        sender=admin,
    )

    params.transferOwnership(timelock, sender=admin)
    delegate(token, treasury)
    proposal = propose(governor, alice, [(params, params.delistStablecoin.encode_input(stablecoin))], "Delist mUSDC")
    pass_and_queue(chain, governor, proposal, treasury)
    receipt = governor.execute(*proposal.actions, sender=alice)
    assert receipt.events.filter(params.StablecoinDelisted)[0].stablecoin == stablecoin.address
    assert not params.isBackingStablecoin(stablecoin)

    # No new notes or orders...
    with reverts_with(cash.StablecoinNotListed, stablecoin=stablecoin):
        cash.buy(stablecoin, 1 * USDC, sender=alice)
    # ... but the live note exits, the open order is still filled, the other cancelled, the CBDC claims.
    certificate = (note, cash.chainOf(note), 1, alice.address, bob.address, 30 * USDC, 0)
    cash.exit(certificate, 1, group_signatures(members, cash.exitDigest(certificate)), sender=bob)
    assert stablecoin.balanceOf(bob) == 30 * USDC - 60_000
    assert cash.outstandingOf(note) == 20 * USDC
    draws.fill(cash, order, cbdc, selection=b"\x02" * 32)
    assert cash.ownerOf(order) == alice.address
    chain.pending_timestamp = max(chain.pending_timestamp, cash.orderDeadline(waiting))
    cash.cancel(waiting, sender=alice)
    claimed = cash.claim(stablecoin, sender=cbdc).events.filter(cash.EarningsClaimed)[0]
    assert claimed.fees == 60_000
    assert stablecoin.balanceOf(cash) == 40 * USDC  # the note's 20 left and the filled order's 20
    assert cash.backing(stablecoin) == 40 * USDC
