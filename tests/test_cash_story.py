"""The CoNETCash story in one test (issue 3): governance lists a stablecoin, a user buys a note, a staked
CBDC fills it burning CoNET, the archive group registers the note chain and certifies an exit, the
exit pays out, the same certificate is refused, the CBDC claims its fee and re-issue, the note is
exited to zero, pooled and re-funded for the next buyer."""

from __future__ import annotations

from typing import Any

import ape
import pytest
from conftest import CONET_PRICE, DOLLAR, exit_head, group_of, group_signatures, set_prices
from eth_utils.crypto import keccak

from offchain.chain.deployer import CONET

ZERO = "0x0000000000000000000000000000000000000000"
USDC = 10**6
VOTING_DELAY = 10
VOTING_PERIOD = 300
TIMELOCK_DELAY = 60
QUORUM_PERCENT = 4
FOR = 1


@pytest.fixture(scope="module")
def governance(project: Any, admin: Any, token: Any, params: Any) -> tuple[Any, Any]:
    """A governor and timelock wired as the deployer wires them; the timelock owns the parameter store."""
    timelock = admin.deploy(project.CoNETTimelock, TIMELOCK_DELAY, [], [ZERO], admin)
    governor = admin.deploy(project.CoNETGovernor, token, timelock, VOTING_DELAY, VOTING_PERIOD, 0, QUORUM_PERCENT)
    timelock.grantRole(timelock.PROPOSER_ROLE(), governor, sender=admin)
    timelock.grantRole(timelock.CANCELLER_ROLE(), governor, sender=admin)
    timelock.renounceRole(timelock.DEFAULT_ADMIN_ROLE(), admin, sender=admin)
    params.transferOwnership(timelock, sender=admin)
    return governor, timelock


@pytest.fixture(scope="module", autouse=True)
def _deployed(governance: Any, cash: Any, archive_nodes: list[Any], cbdc: Any, funded: list[Any]) -> None:
    """Set up the module's fixtures before ape's per-test snapshots start."""


def advance(chain: Any, seconds: int) -> None:
    chain.mine(1, timestamp=chain.pending_timestamp + seconds)


def test_list_buy_fill_exit_claim_pool_refund(
    chain: Any,
    admin: Any,
    treasury: Any,
    alice: Any,
    bob: Any,
    token: Any,
    oracle: Any,
    stablecoin: Any,
    params: Any,
    registry: Any,
    dle: Any,
    cash: Any,
    cbdc: Any,
    archive_nodes: list[Any],
    governance: tuple[Any, Any],
) -> None:
    governor, timelock = governance
    set_prices(oracle, admin, token, stablecoin)

    # 1. Governance lists the stablecoin: propose, vote, queue, execute.
    token.invoke_transaction("delegate", treasury, sender=treasury)
    targets, values = [params.address], [0]
    calldatas = [params.listStablecoin.encode_input(stablecoin)]
    description = "List mUSDC as a backing stablecoin"
    receipt = governor.propose(targets, values, calldatas, description, sender=alice)
    proposal = receipt.events.filter(governor.ProposalCreated)[0].proposalId
    with ape.reverts(cash.StablecoinNotListed):
        cash.buy(stablecoin, 1, sender=alice)
    advance(chain, VOTING_DELAY + 1)
    governor.castVote(proposal, FOR, sender=treasury)
    advance(chain, VOTING_PERIOD + 1)
    description_hash = keccak(text=description)
    governor.queue(targets, values, calldatas, description_hash, sender=alice)
    with ape.reverts():
        governor.execute(targets, values, calldatas, description_hash, sender=alice)
    advance(chain, TIMELOCK_DELAY + 1)
    governor.execute(targets, values, calldatas, description_hash, sender=alice)
    assert params.isBackingStablecoin(stablecoin)
    assert params.owner() == timelock.address

    # 2. Alice buys a $100 note: no pooled note yet, so an order waits.
    stablecoin.mint(alice, 100 * USDC, sender=alice)
    stablecoin.approve(cash, 100 * USDC, sender=alice)
    receipt = cash.buy(stablecoin, 100 * USDC, sender=alice)
    note = receipt.events.filter(cash.OrderPlaced)[0].id
    assert cash.openOrderValue(stablecoin) == 100 * USDC
    assert stablecoin.balanceOf(cash) == 100 * USDC

    # 3. The note's archive group opens its epoch and draws the CBDC, which fills the order with that
    # certified draw, burning CoNET worth 20% of $100 at $0.05: 400 CoNET.
    group = note % registry.groupCount()
    members = group_of(registry, archive_nodes, group)
    assert len(members) == 2
    dle.refreshGroup(group, sender=admin)
    epoch = dle.currentEpoch(group)
    supply = token.totalSupply()
    balance = token.balanceOf(cbdc)
    expected_burn = 20 * DOLLAR * CONET // CONET_PRICE
    assert expected_burn == 400 * CONET
    draw = (note, cbdc.address, b"\x11" * 32, group)
    receipt = cash.fill(draw, epoch, group_signatures(members, cash.cbdcDrawDigest(draw)), sender=cbdc)
    minted = receipt.events.filter(cash.NoteMinted)[0]
    assert minted.burned == expected_burn
    assert bytes(minted.selection) == b"\x11" * 32  # the draw anyone can re-run
    assert token.totalSupply() == supply - expected_burn
    assert token.balanceOf(cbdc) == balance - expected_burn
    assert cash.ownerOf(note) == alice.address
    facts = cash.noteOf(note)
    assert (facts.stablecoin, facts.faceValue, facts.outstanding, facts.party) == (
        stablecoin.address,
        100 * USDC,
        100 * USDC,
        cbdc.address,
    )
    assert facts.stamp == receipt.block_number
    assert cash.backing(stablecoin) == 100 * USDC and cash.openOrderValue(stablecoin) == 0

    # 4. The note's archive group registers the note chain.
    genesis = b"\x22" * 32
    digest = dle.genesisDigest(cash, note, genesis, group)
    dle.registerChain(cash, note, genesis, group, epoch, group_signatures(members, digest), sender=admin)
    chain_id = cash.chainOf(note)
    assert dle.chainOf(chain_id).genesisHash == genesis

    # 5. Alice exits $40 to Bob on the group's certificate: $39.92 paid, $0.08 credited to the CBDC.
    certificate = (note, chain_id, 7, alice.address, bob.address, 40 * USDC, 0, bytes(32))
    signatures = group_signatures(members, cash.exitDigest(certificate))
    cash.exit(certificate, epoch, signatures, sender=bob)
    assert stablecoin.balanceOf(bob) == 40 * USDC - 80_000
    assert cash.outstandingOf(note) == 60 * USDC
    assert cash.earningsOf(cbdc, stablecoin) == (80_000, 8 * USDC)  # re-issue value: 20% of $40
    assert stablecoin.balanceOf(cash) == 60 * USDC + 80_000

    # 6. The same certificate again is refused.
    with ape.reverts(cash.CertificateUsed, note=note, nonce=0):
        cash.exit(certificate, epoch, signatures, sender=bob)

    # 7. The CBDC claims: the fee in stablecoin, and 20% of $40 re-issued at $0.05 = 160 CoNET.
    supply = token.totalSupply()
    receipt = cash.claim(stablecoin, sender=cbdc)
    claimed = receipt.events.filter(cash.EarningsClaimed)[0]
    assert (claimed.fees, claimed.reissued, claimed.withheld) == (80_000, 160 * CONET, 0)
    assert token.totalSupply() == supply + 160 * CONET
    assert stablecoin.balanceOf(cbdc) == 80_000

    # 8. The rest is exited; the note goes to the pool and the next buyer gets it at once.
    # The second exit names the first: exits are paid in order along the chain's one exit history.
    rest = (note, chain_id, 9, alice.address, alice.address, 60 * USDC, 1, exit_head(certificate))
    cash.exit(rest, epoch, group_signatures(members, cash.exitDigest(rest)), sender=alice)
    assert cash.poolSize(stablecoin) == 1
    assert cash.backing(stablecoin) == 0
    stablecoin.mint(bob, 50 * USDC, sender=bob)
    stablecoin.approve(cash, 50 * USDC, sender=bob)
    receipt = cash.buy(stablecoin, 50 * USDC, sender=bob)
    refunded = receipt.events.filter(cash.NoteRefunded)[0]
    assert refunded.id == note
    assert cash.ownerOf(note) == bob.address
    assert cash.poolSize(stablecoin) == 0
    assert cash.noteOf(note).reissuable is False  # no CBDC burned for the re-fund: no re-issue on its exit
    # Backing: the re-funded $50 plus the CBDC's unclaimed fee on the $60 exit.
    assert stablecoin.balanceOf(cash) == 50 * USDC + 120_000
