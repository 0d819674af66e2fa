"""Staking: stake, unbonding, withdrawal, slashing with a reporter's share, parameters, views, paging."""

from __future__ import annotations

import itertools
from typing import Any

import ape
import pytest
from conftest import MIN_STAKE, REPORTER_BPS, UNBONDING, UNIT, stake
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from offchain.chain.deployer import CONET, Role

ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"
MAX_UINT256 = 2**256 - 1
EVIDENCE = b"\x11" * 32
OTHER_EVIDENCE = b"\x22" * 32
_evidence_counter = itertools.count(1)


@pytest.fixture(scope="module", autouse=True)
def _deployed(staking: Any, funded: list[Any], alice: Any, bob: Any, carol: Any) -> None:
    """Set up the module's fixtures before ape's per-test snapshots start (else ape warns and rebases)."""


def block_time(chain: Any, receipt: Any) -> int:
    return int(chain.blocks[receipt.block_number].timestamp)


def fresh_evidence() -> bytes:
    return next(_evidence_counter).to_bytes(32, "big")


def position(staking: Any, node: Any, role: Role) -> tuple[int, int, int]:
    """(staked, unbonding, releaseAt)."""
    amount, release_at = staking.unbondingOf(node, int(role))
    return staking.stakeOf(node, int(role)), amount, release_at


# ---------------------------------------------------------------- constructor


def test_constructor_sets_the_parameters(staking: Any, token: Any, admin: Any, treasury: Any) -> None:
    assert staking.token() == token.address
    assert staking.incomePool() == treasury.address
    assert staking.unbondingDelay() == UNBONDING
    assert staking.reporterRewardBps() == REPORTER_BPS
    assert staking.BPS() == 10_000
    assert staking.hasRole(staking.DEFAULT_ADMIN_ROLE(), admin)
    assert staking.hasRole(staking.SLASHER_ROLE(), admin)


def test_constructor_emits_its_parameters(project: Any, admin: Any, treasury: Any, token: Any, chain: Any) -> None:
    contract = admin.deploy(project.Staking, token, admin, treasury, 123, 456)
    receipt = chain.get_receipt(contract.txn_hash)
    names = [event.event_name for event in receipt.events]
    assert names.count("IncomePoolSet") == 1
    assert receipt.events.filter(contract.IncomePoolSet)[0].pool == treasury.address
    assert receipt.events.filter(contract.UnbondingDelaySet)[0].delay == 123
    assert receipt.events.filter(contract.ReporterRewardSet)[0].bps == 456


def test_constructor_rejects_a_zero_token(project: Any, admin: Any, treasury: Any) -> None:
    with ape.reverts(project.Staking.ZeroAddress):
        admin.deploy(project.Staking, ZERO_ADDRESS, admin, treasury, UNBONDING, REPORTER_BPS)


def test_constructor_rejects_a_zero_income_pool(project: Any, admin: Any, token: Any) -> None:
    with ape.reverts(project.Staking.ZeroAddress):
        admin.deploy(project.Staking, token, admin, ZERO_ADDRESS, UNBONDING, REPORTER_BPS)


def test_constructor_rejects_a_reporter_share_above_100_percent(
    project: Any, admin: Any, treasury: Any, token: Any
) -> None:
    with ape.reverts(project.Staking.InvalidBps, bps=10_001):
        admin.deploy(project.Staking, token, admin, treasury, UNBONDING, 10_001)
    contract = admin.deploy(project.Staking, token, admin, treasury, UNBONDING, 10_000)
    assert contract.reporterRewardBps() == 10_000


# ---------------------------------------------------------------- stake


def test_stake_bonds_tokens_and_emits(staking: Any, token: Any, alice: Any) -> None:
    before = token.balanceOf(alice)
    token.approve(staking, 3 * CONET, sender=alice)
    receipt = staking.stake(int(Role.WITNESS), 1 * CONET, sender=alice)
    events = receipt.events.filter(staking.Staked)
    assert len(events) == 1
    assert events[0].node == alice.address
    assert events[0].role == Role.WITNESS
    assert events[0].amount == 1 * CONET
    assert events[0].total == 1 * CONET

    receipt = staking.stake(int(Role.WITNESS), 2 * CONET, sender=alice)
    event = receipt.events.filter(staking.Staked)[0]
    assert (event.amount, event.total) == (2 * CONET, 3 * CONET)
    assert staking.stakeOf(alice, int(Role.WITNESS)) == 3 * CONET
    assert token.balanceOf(alice) == before - 3 * CONET
    assert token.balanceOf(staking) == 3 * CONET


def test_stake_is_per_role(staking: Any, token: Any, alice: Any) -> None:
    stake(staking, token, alice, Role.CBDC, 5 * CONET)
    assert staking.stakeOf(alice, int(Role.CBDC)) == 5 * CONET
    assert staking.stakeOf(alice, int(Role.ARCHIVE)) == 0
    assert staking.stakedNodeCount(int(Role.CBDC)) == 1
    assert staking.stakedNodeCount(int(Role.ARCHIVE)) == 0


def test_stake_adds_the_node_to_the_set_once(staking: Any, token: Any, alice: Any, bob: Any) -> None:
    assert staking.stakedNodeCount(int(Role.VALIDATOR)) == 0
    stake(staking, token, alice, Role.VALIDATOR, CONET)
    stake(staking, token, alice, Role.VALIDATOR, CONET)
    assert staking.stakedNodeCount(int(Role.VALIDATOR)) == 1
    stake(staking, token, bob, Role.VALIDATOR, CONET)
    assert staking.stakedNodeCount(int(Role.VALIDATOR)) == 2
    assert list(staking.stakedNodes(int(Role.VALIDATOR), 0, 10)) == [alice.address, bob.address]


def test_stake_rejects_zero(staking: Any, token: Any, alice: Any) -> None:
    token.approve(staking, CONET, sender=alice)
    with ape.reverts(staking.ZeroAmount):
        staking.stake(int(Role.CBDC), 0, sender=alice)


def test_stake_needs_an_allowance(staking: Any, token: Any, alice: Any) -> None:
    with ape.reverts(token.ERC20InsufficientAllowance):
        staking.stake(int(Role.CBDC), CONET, sender=alice)
    assert staking.stakeOf(alice, int(Role.CBDC)) == 0


def test_stake_needs_the_balance(staking: Any, token: Any, accounts: Any) -> None:
    poor = accounts[9]
    balance = token.balanceOf(poor)
    token.approve(staking, balance + 1, sender=poor)
    with ape.reverts(token.ERC20InsufficientBalance):
        staking.stake(int(Role.CBDC), balance + 1, sender=poor)


# ---------------------------------------------------------------- requestUnstake


def test_request_unstake_moves_stake_to_unbonding(staking: Any, token: Any, alice: Any, chain: Any) -> None:
    stake(staking, token, alice, Role.CBDC, 10 * CONET)
    receipt = staking.requestUnstake(int(Role.CBDC), 4 * CONET, sender=alice)
    release_at = block_time(chain, receipt) + UNBONDING
    assert position(staking, alice, Role.CBDC) == (6 * CONET, 4 * CONET, release_at)
    event = receipt.events.filter(staking.UnstakeRequested)[0]
    assert event.node == alice.address
    assert event.role == Role.CBDC
    assert event.amount == 4 * CONET
    assert event.releaseAt == release_at
    # Still bonded: stays in the set, and the tokens stay in the contract.
    assert staking.stakedNodeCount(int(Role.CBDC)) == 1
    assert token.balanceOf(staking) == 10 * CONET


def test_request_unstake_of_everything_leaves_the_staked_set(staking: Any, token: Any, alice: Any, bob: Any) -> None:
    stake(staking, token, alice, Role.CBDC, 10 * CONET)
    stake(staking, token, bob, Role.CBDC, 10 * CONET)
    staking.requestUnstake(int(Role.CBDC), 10 * CONET, sender=alice)
    assert staking.stakedNodeCount(int(Role.CBDC)) == 1
    assert list(staking.stakedNodes(int(Role.CBDC), 0, 10)) == [bob.address]
    assert staking.stakeOf(alice, int(Role.CBDC)) == 0
    assert not staking.meetsMinimum(alice, int(Role.CBDC))


def test_request_unstake_rejects_more_than_staked(staking: Any, token: Any, alice: Any) -> None:
    with ape.reverts(staking.InsufficientStake, requested=1, available=0):
        staking.requestUnstake(int(Role.CBDC), 1, sender=alice)
    stake(staking, token, alice, Role.CBDC, 10 * CONET)
    with ape.reverts(staking.InsufficientStake, requested=10 * CONET + 1, available=10 * CONET):
        staking.requestUnstake(int(Role.CBDC), 10 * CONET + 1, sender=alice)
    # Unbonding stake is not available to unstake again.
    staking.requestUnstake(int(Role.CBDC), 7 * CONET, sender=alice)
    with ape.reverts(staking.InsufficientStake, requested=4 * CONET, available=3 * CONET):
        staking.requestUnstake(int(Role.CBDC), 4 * CONET, sender=alice)


def test_request_unstake_rejects_zero(staking: Any, token: Any, alice: Any) -> None:
    stake(staking, token, alice, Role.CBDC, CONET)
    with ape.reverts(staking.ZeroAmount):
        staking.requestUnstake(int(Role.CBDC), 0, sender=alice)


def test_request_unstake_restarts_the_delay_for_everything_unbonding(
    staking: Any, token: Any, alice: Any, chain: Any
) -> None:
    stake(staking, token, alice, Role.CBDC, 10 * CONET)
    first = staking.requestUnstake(int(Role.CBDC), 2 * CONET, sender=alice)
    chain.mine(1, timestamp=block_time(chain, first) + 3 * 24 * 3600)
    second = staking.requestUnstake(int(Role.CBDC), 3 * CONET, sender=alice)
    release_at = block_time(chain, second) + UNBONDING
    assert release_at > block_time(chain, first) + UNBONDING
    assert position(staking, alice, Role.CBDC) == (5 * CONET, 5 * CONET, release_at)
    # The first request's release time no longer frees anything.
    chain.pending_timestamp = block_time(chain, first) + UNBONDING
    with ape.reverts(staking.UnbondingNotFinished, releaseAt=release_at):
        staking.withdraw(int(Role.CBDC), sender=alice)


# ---------------------------------------------------------------- withdraw


def test_withdraw_with_nothing_unbonding_reverts(staking: Any, token: Any, alice: Any) -> None:
    with ape.reverts(staking.NothingToWithdraw):
        staking.withdraw(int(Role.CBDC), sender=alice)
    stake(staking, token, alice, Role.CBDC, CONET)  # bonded stake is not withdrawable
    with ape.reverts(staking.NothingToWithdraw):
        staking.withdraw(int(Role.CBDC), sender=alice)


def test_withdraw_waits_for_the_unbonding_delay(staking: Any, token: Any, alice: Any, chain: Any) -> None:
    stake(staking, token, alice, Role.ARCHIVE, 10 * CONET)
    receipt = staking.requestUnstake(int(Role.ARCHIVE), 4 * CONET, sender=alice)
    release_at = block_time(chain, receipt) + UNBONDING
    with ape.reverts(staking.UnbondingNotFinished, releaseAt=release_at):
        staking.withdraw(int(Role.ARCHIVE), sender=alice)
    chain.pending_timestamp = release_at - 1
    with ape.reverts(staking.UnbondingNotFinished, releaseAt=release_at):
        staking.withdraw(int(Role.ARCHIVE), sender=alice)

    before = token.balanceOf(alice)
    chain.pending_timestamp = release_at
    receipt = staking.withdraw(int(Role.ARCHIVE), sender=alice)
    assert block_time(chain, receipt) == release_at
    assert token.balanceOf(alice) == before + 4 * CONET
    assert token.balanceOf(staking) == 6 * CONET
    assert position(staking, alice, Role.ARCHIVE) == (6 * CONET, 0, 0)
    event = receipt.events.filter(staking.Withdrawn)[0]
    assert (event.node, event.role, event.amount) == (alice.address, Role.ARCHIVE, 4 * CONET)
    with ape.reverts(staking.NothingToWithdraw):
        staking.withdraw(int(Role.ARCHIVE), sender=alice)


def test_withdraw_is_per_node_and_role(staking: Any, token: Any, alice: Any, bob: Any, chain: Any) -> None:
    stake(staking, token, alice, Role.CBDC, 10 * CONET)
    staking.requestUnstake(int(Role.CBDC), 10 * CONET, sender=alice)
    chain.mine(1, timestamp=chain.pending_timestamp + UNBONDING + 1)
    with ape.reverts(staking.NothingToWithdraw):
        staking.withdraw(int(Role.CBDC), sender=bob)
    with ape.reverts(staking.NothingToWithdraw):
        staking.withdraw(int(Role.ARCHIVE), sender=alice)
    staking.withdraw(int(Role.CBDC), sender=alice)
    assert token.balanceOf(staking) == 0


def test_a_later_delay_change_does_not_move_a_pending_release(
    staking: Any, token: Any, admin: Any, alice: Any, chain: Any
) -> None:
    stake(staking, token, alice, Role.CBDC, 10 * CONET)
    receipt = staking.requestUnstake(int(Role.CBDC), 10 * CONET, sender=alice)
    release_at = block_time(chain, receipt) + UNBONDING
    staking.setUnbondingDelay(UNBONDING * 10, sender=admin)
    assert staking.unbondingOf(alice, int(Role.CBDC))[1] == release_at
    chain.pending_timestamp = release_at
    staking.withdraw(int(Role.CBDC), sender=alice)


def test_a_zero_delay_allows_withdrawing_in_the_next_block(
    staking: Any, token: Any, admin: Any, alice: Any, chain: Any
) -> None:
    staking.setUnbondingDelay(0, sender=admin)
    stake(staking, token, alice, Role.CBDC, 10 * CONET)
    receipt = staking.requestUnstake(int(Role.CBDC), 10 * CONET, sender=alice)
    assert staking.unbondingOf(alice, int(Role.CBDC))[1] == block_time(chain, receipt)
    staking.withdraw(int(Role.CBDC), sender=alice)
    assert staking.unbondingOf(alice, int(Role.CBDC)) == (0, 0)


# ---------------------------------------------------------------- slash


def test_only_the_slasher_slashes(staking: Any, token: Any, alice: Any, bob: Any) -> None:
    stake(staking, token, alice, Role.CBDC, 10 * CONET)
    role = staking.SLASHER_ROLE()
    with ape.reverts(staking.AccessControlUnauthorizedAccount, account=bob.address, neededRole=role):
        staking.slash(alice, int(Role.CBDC), CONET, EVIDENCE, bob, sender=bob)
    assert staking.stakeOf(alice, int(Role.CBDC)) == 10 * CONET
    assert not staking.isEvidenceUsed(EVIDENCE)


def test_a_granted_slasher_can_slash_and_a_revoked_one_cannot(
    staking: Any, token: Any, admin: Any, alice: Any, bob: Any, carol: Any
) -> None:
    stake(staking, token, alice, Role.CBDC, 10 * CONET)
    role = staking.SLASHER_ROLE()
    with ape.reverts(staking.AccessControlUnauthorizedAccount, account=carol.address):
        staking.grantRole(role, carol, sender=carol)
    staking.grantRole(role, carol, sender=admin)
    staking.slash(alice, int(Role.CBDC), CONET, EVIDENCE, ZERO_ADDRESS, sender=carol)
    staking.revokeRole(role, carol, sender=admin)
    with ape.reverts(staking.AccessControlUnauthorizedAccount, account=carol.address, neededRole=role):
        staking.slash(alice, int(Role.CBDC), CONET, OTHER_EVIDENCE, ZERO_ADDRESS, sender=carol)
    assert staking.stakeOf(alice, int(Role.CBDC)) == 9 * CONET


def test_slash_rejects_zero(staking: Any, token: Any, admin: Any, alice: Any) -> None:
    stake(staking, token, alice, Role.CBDC, 10 * CONET)
    with ape.reverts(staking.ZeroAmount):
        staking.slash(alice, int(Role.CBDC), 0, EVIDENCE, ZERO_ADDRESS, sender=admin)


def test_slash_with_nothing_staked_reverts(staking: Any, token: Any, admin: Any, alice: Any) -> None:
    with ape.reverts(staking.NothingToSlash, node=alice.address, role=int(Role.CBDC)):
        staking.slash(alice, int(Role.CBDC), CONET, EVIDENCE, ZERO_ADDRESS, sender=admin)
    stake(staking, token, alice, Role.ARCHIVE, 10 * CONET)  # another role's stake does not count
    with ape.reverts(staking.NothingToSlash, node=alice.address, role=int(Role.CBDC)):
        staking.slash(alice, int(Role.CBDC), CONET, EVIDENCE, ZERO_ADDRESS, sender=admin)
    assert not staking.isEvidenceUsed(EVIDENCE)


def test_evidence_is_usable_once(staking: Any, token: Any, admin: Any, alice: Any, bob: Any) -> None:
    stake(staking, token, alice, Role.CBDC, 10 * CONET)
    stake(staking, token, bob, Role.CBDC, 10 * CONET)
    assert not staking.isEvidenceUsed(EVIDENCE)
    staking.slash(alice, int(Role.CBDC), CONET, EVIDENCE, ZERO_ADDRESS, sender=admin)
    assert staking.isEvidenceUsed(EVIDENCE)
    assert not staking.isEvidenceUsed(OTHER_EVIDENCE)
    with ape.reverts(staking.EvidenceAlreadyUsed, evidenceHash=EVIDENCE):
        staking.slash(alice, int(Role.CBDC), CONET, EVIDENCE, ZERO_ADDRESS, sender=admin)
    # Not even against another node or role.
    with ape.reverts(staking.EvidenceAlreadyUsed, evidenceHash=EVIDENCE):
        staking.slash(bob, int(Role.CBDC), CONET, EVIDENCE, ZERO_ADDRESS, sender=admin)
    staking.slash(alice, int(Role.CBDC), CONET, OTHER_EVIDENCE, ZERO_ADDRESS, sender=admin)
    assert staking.stakeOf(alice, int(Role.CBDC)) == 8 * CONET


def test_slash_pays_the_reporter_and_the_pool(
    staking: Any, token: Any, admin: Any, treasury: Any, alice: Any, bob: Any
) -> None:
    stake(staking, token, alice, Role.WITNESS, 50 * CONET)
    pool_before = token.balanceOf(treasury)
    reporter_before = token.balanceOf(bob)
    # The return value, read with a call first (the embedded chain does not trace receipts).
    assert staking.slash.call(alice, int(Role.WITNESS), 20 * CONET, EVIDENCE, bob, sender=admin) == 20 * CONET
    receipt = staking.slash(alice, int(Role.WITNESS), 20 * CONET, EVIDENCE, bob, sender=admin)
    reward = 20 * CONET * REPORTER_BPS // 10_000
    assert reward == 2 * CONET
    assert token.balanceOf(bob) == reporter_before + reward
    assert token.balanceOf(treasury) == pool_before + 20 * CONET - reward
    assert token.balanceOf(staking) == 30 * CONET
    assert staking.stakeOf(alice, int(Role.WITNESS)) == 30 * CONET

    event = receipt.events.filter(staking.Slashed)[0]
    assert event.node == alice.address
    assert event.role == Role.WITNESS
    assert event.amount == 20 * CONET
    assert event.evidenceHash == EVIDENCE
    assert event.reporter == bob.address
    assert event.reward == reward
    # Both payouts are CoNET transfers out of the staking contract.
    transfers = receipt.events.filter(token.Transfer)
    assert [(t["from"], t.to, t.value) for t in transfers] == [
        (staking.address, bob.address, reward),
        (staking.address, treasury.address, 20 * CONET - reward),
    ]


def test_slash_without_a_reporter_sends_everything_to_the_pool(
    staking: Any, token: Any, admin: Any, treasury: Any, alice: Any
) -> None:
    stake(staking, token, alice, Role.CBDC, 10 * CONET)
    pool_before = token.balanceOf(treasury)
    receipt = staking.slash(alice, int(Role.CBDC), 7 * CONET, EVIDENCE, ZERO_ADDRESS, sender=admin)
    assert token.balanceOf(treasury) == pool_before + 7 * CONET
    event = receipt.events.filter(staking.Slashed)[0]
    assert (event.amount, event.reporter, event.reward) == (7 * CONET, ZERO_ADDRESS, 0)
    assert len(receipt.events.filter(token.Transfer)) == 1


def test_slash_rounds_the_reward_down(
    staking: Any, token: Any, admin: Any, treasury: Any, alice: Any, bob: Any
) -> None:
    stake(staking, token, alice, Role.CBDC, 19)
    pool_before = token.balanceOf(treasury)
    reporter_before = token.balanceOf(bob)
    receipt = staking.slash(alice, int(Role.CBDC), 19, EVIDENCE, bob, sender=admin)
    assert receipt.events.filter(staking.Slashed)[0].reward == 1  # 19 * 10% = 1.9
    assert token.balanceOf(bob) == reporter_before + 1
    assert token.balanceOf(treasury) == pool_before + 18
    # A slash too small for a reward pays no reporter transfer at all.
    stake(staking, token, alice, Role.WITNESS, 9)
    receipt = staking.slash(alice, int(Role.WITNESS), 9, OTHER_EVIDENCE, bob, sender=admin)
    assert receipt.events.filter(staking.Slashed)[0].reward == 0
    assert [t.to for t in receipt.events.filter(token.Transfer)] == [treasury.address]


def test_slash_uses_the_current_reporter_share_and_pool(
    staking: Any, token: Any, admin: Any, treasury: Any, alice: Any, bob: Any, carol: Any
) -> None:
    stake(staking, token, alice, Role.CBDC, 10 * CONET)
    staking.setReporterRewardBps(10_000, sender=admin)
    staking.setIncomePool(carol, sender=admin)
    carol_before = token.balanceOf(carol)
    bob_before = token.balanceOf(bob)
    staking.slash(alice, int(Role.CBDC), 4 * CONET, EVIDENCE, bob, sender=admin)
    assert token.balanceOf(bob) == bob_before + 4 * CONET  # 100% to the reporter
    assert token.balanceOf(carol) == carol_before
    staking.setReporterRewardBps(0, sender=admin)
    staking.slash(alice, int(Role.CBDC), 4 * CONET, OTHER_EVIDENCE, bob, sender=admin)
    assert token.balanceOf(bob) == bob_before + 4 * CONET
    assert token.balanceOf(carol) == carol_before + 4 * CONET


def test_slash_takes_bonded_stake_first_then_unbonding(
    staking: Any, token: Any, admin: Any, alice: Any, chain: Any
) -> None:
    stake(staking, token, alice, Role.ARCHIVE, 10 * CONET)
    receipt = staking.requestUnstake(int(Role.ARCHIVE), 6 * CONET, sender=alice)
    release_at = block_time(chain, receipt) + UNBONDING
    assert position(staking, alice, Role.ARCHIVE) == (4 * CONET, 6 * CONET, release_at)

    staking.slash(alice, int(Role.ARCHIVE), 3 * CONET, EVIDENCE, ZERO_ADDRESS, sender=admin)
    assert position(staking, alice, Role.ARCHIVE) == (1 * CONET, 6 * CONET, release_at)
    assert staking.stakedNodeCount(int(Role.ARCHIVE)) == 1

    args = (alice, int(Role.ARCHIVE), 3 * CONET, OTHER_EVIDENCE, ZERO_ADDRESS)
    assert staking.slash.call(*args, sender=admin) == 3 * CONET
    receipt = staking.slash(*args, sender=admin)
    assert receipt.events.filter(staking.Slashed)[0].amount == 3 * CONET
    assert position(staking, alice, Role.ARCHIVE) == (0, 4 * CONET, release_at)
    assert staking.stakedNodeCount(int(Role.ARCHIVE)) == 0  # no bonded stake left
    assert token.balanceOf(staking) == 4 * CONET

    # What is left unbonding is still withdrawn after the delay.
    chain.pending_timestamp = release_at
    staking.withdraw(int(Role.ARCHIVE), sender=alice)
    assert token.balanceOf(staking) == 0


def test_slash_reaches_stake_that_is_only_unbonding(staking: Any, token: Any, admin: Any, alice: Any) -> None:
    stake(staking, token, alice, Role.CBDC, 10 * CONET)
    staking.requestUnstake(int(Role.CBDC), 10 * CONET, sender=alice)
    receipt = staking.slash(alice, int(Role.CBDC), 4 * CONET, EVIDENCE, ZERO_ADDRESS, sender=admin)
    assert receipt.events.filter(staking.Slashed)[0].amount == 4 * CONET
    assert staking.unbondingOf(alice, int(Role.CBDC))[0] == 6 * CONET
    assert staking.stakedNodeCount(int(Role.CBDC)) == 0


def test_slash_takes_only_what_the_node_holds(
    staking: Any, token: Any, admin: Any, treasury: Any, alice: Any, bob: Any
) -> None:
    stake(staking, token, alice, Role.CBDC, 10 * CONET)
    staking.requestUnstake(int(Role.CBDC), 4 * CONET, sender=alice)
    pool_before = token.balanceOf(treasury)
    bob_before = token.balanceOf(bob)
    assert staking.slash.call(alice, int(Role.CBDC), 1_000 * CONET, EVIDENCE, bob, sender=admin) == 10 * CONET
    receipt = staking.slash(alice, int(Role.CBDC), 1_000 * CONET, EVIDENCE, bob, sender=admin)
    event = receipt.events.filter(staking.Slashed)[0]
    assert (event.amount, event.reward) == (10 * CONET, CONET)
    assert position(staking, alice, Role.CBDC)[:2] == (0, 0)
    assert token.balanceOf(bob) == bob_before + CONET
    assert token.balanceOf(treasury) == pool_before + 9 * CONET
    assert token.balanceOf(staking) == 0
    assert staking.stakedNodeCount(int(Role.CBDC)) == 0
    with ape.reverts(staking.NothingToSlash, node=alice.address, role=int(Role.CBDC)):
        staking.slash(alice, int(Role.CBDC), CONET, OTHER_EVIDENCE, bob, sender=admin)
    with ape.reverts(staking.NothingToWithdraw):
        staking.withdraw(int(Role.CBDC), sender=alice)


def test_slash_leaves_other_roles_and_nodes_alone(staking: Any, token: Any, admin: Any, alice: Any, bob: Any) -> None:
    stake(staking, token, alice, Role.CBDC, 10 * CONET)
    stake(staking, token, alice, Role.ARCHIVE, 10 * CONET)
    stake(staking, token, bob, Role.CBDC, 10 * CONET)
    staking.slash(alice, int(Role.CBDC), 10 * CONET, EVIDENCE, ZERO_ADDRESS, sender=admin)
    assert staking.stakeOf(alice, int(Role.CBDC)) == 0
    assert staking.stakeOf(alice, int(Role.ARCHIVE)) == 10 * CONET
    assert staking.stakeOf(bob, int(Role.CBDC)) == 10 * CONET
    assert list(staking.stakedNodes(int(Role.CBDC), 0, 10)) == [bob.address]


# ---------------------------------------------------------------- parameters


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("setMinimumStake", (int(Role.CBDC), 1)),
        ("setCapacityUnit", (int(Role.CBDC), 1)),
        ("setUnbondingDelay", (1,)),
        ("setReporterRewardBps", (1,)),
        ("setIncomePool", ("0x000000000000000000000000000000000000dEaD",)),
    ],
)
def test_setters_are_admin_only(staking: Any, alice: Any, name: str, args: tuple[Any, ...]) -> None:
    admin_role = staking.DEFAULT_ADMIN_ROLE()
    with ape.reverts(staking.AccessControlUnauthorizedAccount, account=alice.address, neededRole=admin_role):
        getattr(staking, name)(*args, sender=alice)


def test_the_slasher_role_alone_does_not_set_parameters(staking: Any, admin: Any, bob: Any) -> None:
    staking.grantRole(staking.SLASHER_ROLE(), bob, sender=admin)
    with ape.reverts(staking.AccessControlUnauthorizedAccount, account=bob.address):
        staking.setMinimumStake(int(Role.CBDC), 0, sender=bob)


def test_set_minimum_stake(staking: Any, admin: Any) -> None:
    receipt = staking.setMinimumStake(int(Role.SI_NODE), 42 * CONET, sender=admin)
    assert staking.minimumStake(int(Role.SI_NODE)) == 42 * CONET
    assert staking.minimumStake(int(Role.CBDC)) == MIN_STAKE[Role.CBDC]
    event = receipt.events.filter(staking.MinimumStakeSet)[0]
    assert (event.role, event.amount) == (Role.SI_NODE, 42 * CONET)
    staking.setMinimumStake(int(Role.SI_NODE), 0, sender=admin)  # zero is allowed
    assert staking.minimumStake(int(Role.SI_NODE)) == 0


def test_set_capacity_unit(staking: Any, admin: Any) -> None:
    receipt = staking.setCapacityUnit(int(Role.DCC_PROVIDER), 7 * CONET, sender=admin)
    assert staking.capacityUnit(int(Role.DCC_PROVIDER)) == 7 * CONET
    assert staking.capacityUnit(int(Role.CBDC)) == UNIT
    event = receipt.events.filter(staking.CapacityUnitSet)[0]
    assert (event.role, event.unit) == (Role.DCC_PROVIDER, 7 * CONET)
    with ape.reverts(staking.ZeroAmount):
        staking.setCapacityUnit(int(Role.DCC_PROVIDER), 0, sender=admin)
    assert staking.capacityUnit(int(Role.DCC_PROVIDER)) == 7 * CONET


def test_set_unbonding_delay(staking: Any, admin: Any) -> None:
    receipt = staking.setUnbondingDelay(3600, sender=admin)
    assert staking.unbondingDelay() == 3600
    assert receipt.events.filter(staking.UnbondingDelaySet)[0].delay == 3600


def test_set_reporter_reward_bps(staking: Any, admin: Any) -> None:
    receipt = staking.setReporterRewardBps(2_500, sender=admin)
    assert staking.reporterRewardBps() == 2_500
    assert receipt.events.filter(staking.ReporterRewardSet)[0].bps == 2_500
    staking.setReporterRewardBps(10_000, sender=admin)
    assert staking.reporterRewardBps() == 10_000
    with ape.reverts(staking.InvalidBps, bps=10_001):
        staking.setReporterRewardBps(10_001, sender=admin)
    with ape.reverts(staking.InvalidBps, bps=65_535):
        staking.setReporterRewardBps(65_535, sender=admin)
    assert staking.reporterRewardBps() == 10_000


def test_set_income_pool(staking: Any, admin: Any, carol: Any) -> None:
    receipt = staking.setIncomePool(carol, sender=admin)
    assert staking.incomePool() == carol.address
    assert receipt.events.filter(staking.IncomePoolSet)[0].pool == carol.address
    with ape.reverts(staking.ZeroAddress):
        staking.setIncomePool(ZERO_ADDRESS, sender=admin)
    assert staking.incomePool() == carol.address


# ---------------------------------------------------------------- views


def test_meets_minimum(staking: Any, token: Any, alice: Any) -> None:
    role = int(Role.VALIDATOR)
    assert not staking.meetsMinimum(alice, role)
    stake(staking, token, alice, Role.VALIDATOR, MIN_STAKE[Role.VALIDATOR] - 1)
    assert not staking.meetsMinimum(alice, role)
    stake(staking, token, alice, Role.VALIDATOR, 1)
    assert staking.meetsMinimum(alice, role)
    assert not staking.meetsMinimum(alice, int(Role.CBDC))
    # Unbonding stake does not count.
    staking.requestUnstake(role, 1, sender=alice)
    assert not staking.meetsMinimum(alice, role)


def test_meets_minimum_with_a_zero_minimum_still_needs_some_stake(
    staking: Any, token: Any, admin: Any, alice: Any
) -> None:
    staking.setMinimumStake(int(Role.WITNESS), 0, sender=admin)
    assert not staking.meetsMinimum(alice, int(Role.WITNESS))
    stake(staking, token, alice, Role.WITNESS, 1)
    assert staking.meetsMinimum(alice, int(Role.WITNESS))
    staking.requestUnstake(int(Role.WITNESS), 1, sender=alice)
    assert not staking.meetsMinimum(alice, int(Role.WITNESS))


def test_capacity_is_stake_over_the_unit(staking: Any, token: Any, admin: Any, alice: Any) -> None:
    role = int(Role.ARCHIVE)
    assert staking.capacity(alice, role) == 0
    stake(staking, token, alice, Role.ARCHIVE, UNIT - 1)
    assert staking.capacity(alice, role) == 0
    stake(staking, token, alice, Role.ARCHIVE, 1)
    assert staking.capacity(alice, role) == 1
    stake(staking, token, alice, Role.ARCHIVE, 5 * UNIT + UNIT // 2)
    assert staking.capacity(alice, role) == 6
    staking.setCapacityUnit(role, UNIT * 3, sender=admin)
    assert staking.capacity(alice, role) == 2
    staking.requestUnstake(role, 4 * UNIT, sender=alice)  # unbonding stake gives no capacity
    assert staking.capacity(alice, role) == 0


def test_capacity_without_a_unit_reverts(project: Any, admin: Any, treasury: Any, token: Any, alice: Any) -> None:
    fresh = admin.deploy(project.Staking, token, admin, treasury, UNBONDING, REPORTER_BPS)
    assert fresh.capacityUnit(int(Role.SI_NODE)) == 0
    assert fresh.minimumStake(int(Role.SI_NODE)) == 0
    with ape.reverts(fresh.CapacityUnitNotSet, role=int(Role.SI_NODE)):
        fresh.capacity(alice, int(Role.SI_NODE))
    fresh.setCapacityUnit(int(Role.CBDC), UNIT, sender=admin)
    assert fresh.capacity(alice, int(Role.CBDC)) == 0
    with ape.reverts(fresh.CapacityUnitNotSet, role=int(Role.ARCHIVE)):
        fresh.capacity(alice, int(Role.ARCHIVE))


def test_stake_of_and_unbonding_of_start_empty(staking: Any, alice: Any) -> None:
    for role in Role:
        assert staking.stakeOf(alice, int(role)) == 0
        assert staking.unbondingOf(alice, int(role)) == (0, 0)
        assert staking.stakedNodeCount(int(role)) == 0
        assert staking.minimumStake(int(role)) == MIN_STAKE[role]
        assert staking.capacityUnit(int(role)) == UNIT


def test_staked_nodes_paging(staking: Any, token: Any, funded: list[Any]) -> None:
    role = int(Role.CBDC)
    nodes = funded[:5]
    for node in nodes:
        stake(staking, token, node, Role.CBDC, CONET)
    addresses = [node.address for node in nodes]
    assert staking.stakedNodeCount(role) == 5
    assert list(staking.stakedNodes(role, 0, 5)) == addresses
    assert list(staking.stakedNodes(role, 0, 2)) == addresses[:2]
    assert list(staking.stakedNodes(role, 2, 2)) == addresses[2:4]
    assert list(staking.stakedNodes(role, 4, 2)) == addresses[4:]
    assert list(staking.stakedNodes(role, 3, 100)) == addresses[3:]
    assert list(staking.stakedNodes(role, 1, MAX_UINT256)) == addresses[1:]
    assert list(staking.stakedNodes(role, 4, MAX_UINT256)) == addresses[4:]
    assert list(staking.stakedNodes(role, 0, 0)) == []
    assert list(staking.stakedNodes(role, 5, 1)) == []
    assert list(staking.stakedNodes(role, 5, MAX_UINT256)) == []
    assert list(staking.stakedNodes(role, MAX_UINT256, MAX_UINT256)) == []
    assert list(staking.stakedNodes(int(Role.ARCHIVE), 0, MAX_UINT256)) == []
    # Pages of two walk the whole set exactly once.
    walked: list[str] = []
    offset = 0
    while page := list(staking.stakedNodes(role, offset, 2)):
        walked += page
        offset += 2
    assert walked == addresses


def test_staked_nodes_after_one_leaves(staking: Any, token: Any, funded: list[Any]) -> None:
    role = int(Role.CBDC)
    nodes = funded[:3]
    for node in nodes:
        stake(staking, token, node, Role.CBDC, CONET)
    staking.requestUnstake(role, CONET, sender=nodes[0])
    assert staking.stakedNodeCount(role) == 2
    assert sorted(staking.stakedNodes(role, 0, MAX_UINT256)) == sorted([nodes[1].address, nodes[2].address])
    stake(staking, token, nodes[0], Role.CBDC, CONET)  # rejoining adds it back
    assert staking.stakedNodeCount(role) == 3
    assert nodes[0].address in staking.stakedNodes(role, 0, 3)


# ---------------------------------------------------------------- property


OPERATIONS = st.lists(
    st.tuples(
        st.sampled_from(["stake", "unstake", "slash", "withdraw"]),
        st.integers(min_value=0, max_value=2),  # node
        st.sampled_from([Role.CBDC, Role.ARCHIVE]),
        st.integers(min_value=0, max_value=50 * CONET),
        st.booleans(),  # slash: with a reporter
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPERATIONS)
def test_the_contract_balance_always_equals_the_stakes_it_holds(
    staking: Any,
    token: Any,
    admin: Any,
    treasury: Any,
    funded: list[Any],
    chain: Any,
    ops: list[tuple[str, int, Role, int, bool]],
) -> None:
    """Examples share one chain snapshot, so the model starts from whatever the chain holds."""
    nodes = funded[:3]
    reporter = funded[3]
    roles = (Role.CBDC, Role.ARCHIVE)
    model = {(i, role): list(position(staking, node, role)[:2]) for i, node in enumerate(nodes) for role in roles}

    def held() -> int:
        return sum(staked + unbonding for staked, unbonding in model.values())

    def check_model() -> None:
        for (i, role), (staked, unbonding) in model.items():
            assert position(staking, nodes[i], role)[:2] == (staked, unbonding)
        for role in roles:
            bonded = {nodes[i].address for (i, r), (staked, _) in model.items() if r == role and staked > 0}
            assert staking.stakedNodeCount(role) == len(bonded)
            assert set(staking.stakedNodes(role, 0, MAX_UINT256)) == bonded

    for op, index, role, amount, with_reporter in ops:
        node = nodes[index]
        entry = model[(index, role)]
        if op == "stake":
            amount = min(amount, token.balanceOf(node))
            if amount == 0:
                with ape.reverts(staking.ZeroAmount):
                    staking.stake(int(role), 0, sender=node)
            else:
                stake(staking, token, node, role, amount)
                entry[0] += amount
        elif op == "unstake":
            if amount == 0:
                with ape.reverts(staking.ZeroAmount):
                    staking.requestUnstake(int(role), 0, sender=node)
            elif amount > entry[0]:
                with ape.reverts(staking.InsufficientStake, requested=amount, available=entry[0]):
                    staking.requestUnstake(int(role), amount, sender=node)
            else:
                staking.requestUnstake(int(role), amount, sender=node)
                entry[0] -= amount
                entry[1] += amount
        elif op == "slash":
            evidence = fresh_evidence()
            who = reporter if with_reporter else ZERO_ADDRESS
            if amount == 0:
                with ape.reverts(staking.ZeroAmount):
                    staking.slash(node, int(role), 0, evidence, who, sender=admin)
            elif entry[0] + entry[1] == 0:
                with ape.reverts(staking.NothingToSlash):
                    staking.slash(node, int(role), amount, evidence, who, sender=admin)
            else:
                pool_before = token.balanceOf(treasury)
                reporter_before = token.balanceOf(reporter)
                receipt = staking.slash(node, int(role), amount, evidence, who, sender=admin)
                from_staked = min(amount, entry[0])
                from_unbonding = min(amount - from_staked, entry[1])
                entry[0] -= from_staked
                entry[1] -= from_unbonding
                slashed = from_staked + from_unbonding
                reward = slashed * REPORTER_BPS // 10_000 if with_reporter else 0
                assert receipt.events.filter(staking.Slashed)[0].amount == slashed
                assert token.balanceOf(reporter) == reporter_before + reward
                assert token.balanceOf(treasury) == pool_before + slashed - reward
        else:
            if entry[1] == 0:
                with ape.reverts(staking.NothingToWithdraw):
                    staking.withdraw(int(role), sender=node)
            else:
                release_at = staking.unbondingOf(node, int(role))[1]
                if chain.pending_timestamp < release_at:
                    chain.pending_timestamp = release_at
                staking.withdraw(int(role), sender=node)
                entry[1] = 0
        # The invariant, after every operation: the contract holds exactly the stakes, no more, no less.
        assert token.balanceOf(staking) == held()
    check_model()


# ---------------------------------------------------------------- sharp edges closed


def test_constructor_rejects_a_zero_admin(project: Any, admin: Any, treasury: Any, token: Any) -> None:
    with ape.reverts(project.Staking.ZeroAddress):
        admin.deploy(project.Staking, token, ZERO_ADDRESS, treasury, UNBONDING, REPORTER_BPS)


def test_the_unbonding_delay_is_capped(project: Any, staking: Any, admin: Any, treasury: Any, token: Any) -> None:
    cap = staking.MAX_UNBONDING_DELAY()
    assert cap == 365 * 24 * 3600
    with ape.reverts(staking.InvalidUnbondingDelay, delay=cap + 1):
        staking.setUnbondingDelay(cap + 1, sender=admin)
    with ape.reverts(project.Staking.InvalidUnbondingDelay):
        admin.deploy(project.Staking, token, admin, treasury, 2**64 - 1, REPORTER_BPS)
    staking.setUnbondingDelay(cap, sender=admin)
    assert staking.unbondingDelay() == cap


def test_a_node_cannot_report_itself(staking: Any, token: Any, admin: Any, alice: Any) -> None:
    stake(staking, token, alice, Role.WITNESS, MIN_STAKE[Role.WITNESS])
    with ape.reverts(staking.SelfReport, node=alice.address):
        staking.slash(alice, int(Role.WITNESS), 1, fresh_evidence(), alice, sender=admin)


def test_slashing_all_unbonding_stake_clears_the_release_time(staking: Any, token: Any, admin: Any, alice: Any) -> None:
    stake(staking, token, alice, Role.WITNESS, 10 * CONET)
    staking.requestUnstake(int(Role.WITNESS), 10 * CONET, sender=alice)
    assert position(staking, alice, Role.WITNESS)[2] > 0
    staking.slash(alice, int(Role.WITNESS), 10 * CONET, fresh_evidence(), ZERO_ADDRESS, sender=admin)
    assert position(staking, alice, Role.WITNESS) == (0, 0, 0)
