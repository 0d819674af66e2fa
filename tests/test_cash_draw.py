"""The CBDC draw certificate, off chain and on chain: `Digests.cbdc_draw` (what every archive node of the
group signs in `ArchiveNode._endorse_cbdc_draw`) equals `CoNETCash.cbdcDrawDigest`, a certificate names
one CBDC, one order, one draw and one group; and `CoNETCash.fill` takes a fill only from the CBDC the
order's archive group drew, on the certificate of every member of that group's epoch. Every refused
fill leaves the order, the backing, the balances and the CoNET supply exactly as they were."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import (
    MIN_STAKE,
    Draws,
    group_of,
    restake_archive,
    reverts_with,
    reverts_with_wrong_signers,
    set_prices,
    stake,
)

from offchain.chain.deployer import CONET, Role
from offchain.chain.dle import Digests

SELECTION = b"\x5e" * 32
USDC = 10**6
MAX_UINT = 2**256 - 1


def test_the_cbdc_draw_digest_matches_the_contract(chain: Any, cash: Any, dle: Any, alice: Any, bob: Any) -> None:
    digests = Digests(chain.chain_id, dle.address, cash.address)
    digest = digests.cbdc_draw(7, alice.address, SELECTION, 1)
    assert bytes(cash.cbdcDrawDigest((7, alice.address, SELECTION, 1))) == digest
    others = {
        digests.cbdc_draw(8, alice.address, SELECTION, 1),
        digests.cbdc_draw(7, bob.address, SELECTION, 1),
        digests.cbdc_draw(7, alice.address, b"\x5f" * 32, 1),
        digests.cbdc_draw(7, alice.address, SELECTION, 0),
        Digests(chain.chain_id + 1, dle.address, cash.address).cbdc_draw(7, alice.address, SELECTION, 1),
    }
    assert digest not in others and len(others) == 5


# ---------------------------------------------------------------- fill only from the drawn CBDC


@pytest.fixture(scope="module")
def rival(accounts: Any, admin: Any, treasury: Any, token: Any, staking: Any, cash: Any) -> Any:
    """A second staked CBDC, with CoNET to burn and an allowance: everything but the draw."""
    account = accounts.generate_test_account()
    admin.transfer(account, "10 ether")
    token.transfer(account, MIN_STAKE[Role.CBDC] + 1_000_000 * CONET, sender=treasury)
    stake(staking, token, account, Role.CBDC, MIN_STAKE[Role.CBDC])
    token.approve(cash, MAX_UINT, sender=account)
    return account


@pytest.fixture(scope="module", autouse=True)
def market(
    admin: Any,
    token: Any,
    oracle: Any,
    params: Any,
    stablecoin: Any,
    dle: Any,
    cash: Any,
    cbdc: Any,
    rival: Any,
    archive_nodes: list[Any],
    alice: Any,
) -> None:
    """The stablecoin listed and priced, Alice funded, both archive groups' first epoch open."""
    params.listStablecoin(stablecoin, sender=admin)
    set_prices(oracle, admin, token, stablecoin)
    stablecoin.mint(alice, 10_000 * USDC, sender=alice)
    stablecoin.approve(cash, MAX_UINT, sender=alice)
    for group in (0, 1):
        dle.refreshGroup(group, sender=admin)


def _order(cash: Any, stablecoin: Any, alice: Any) -> int:
    receipt = cash.buy(stablecoin, 10 * USDC, sender=alice)
    return int(receipt.events.filter(cash.OrderPlaced)[0].id)


def _world(cash: Any, token: Any, stablecoin: Any, order: int, accounts: list[Any]) -> tuple[Any, ...]:
    """Everything a fill changes: the order, the backing and open value, the deposits, the NFTs, the
    CoNET balances and supply, and the next id."""
    return (
        tuple(cash.noteOf(order)),
        cash.backing(stablecoin),
        cash.openOrderValue(stablecoin),
        stablecoin.balanceOf(cash),
        token.totalSupply(),
        tuple((token.balanceOf(a), cash.balanceOf(a), stablecoin.balanceOf(a)) for a in accounts),
        cash.nextId(),
    )


@pytest.fixture
def order(cash: Any, stablecoin: Any, alice: Any) -> int:
    return _order(cash, stablecoin, alice)


@pytest.fixture
def before(cash: Any, token: Any, stablecoin: Any, order: int, alice: Any, cbdc: Any, rival: Any) -> tuple[Any, ...]:
    return _world(cash, token, stablecoin, order, [alice, cbdc, rival])


def _unchanged(
    cash: Any, token: Any, stablecoin: Any, order: int, accounts: list[Any], before: tuple[Any, ...]
) -> None:
    assert _world(cash, token, stablecoin, order, accounts) == before
    assert int(cash.noteOf(order).status) == 1  # still an open order, still the buyer's
    assert cash.noteOf(order).party == accounts[0].address


def test_the_drawn_cbdc_fills_and_the_draw_is_recorded(
    cash: Any, token: Any, stablecoin: Any, draws: Draws, order: int, alice: Any, cbdc: Any
) -> None:
    burn = cash.burnFor(stablecoin, 10 * USDC)
    supply, balance = token.totalSupply(), token.balanceOf(cbdc)
    receipt = draws.fill(cash, order, cbdc, selection=b"\x42" * 32)
    minted = receipt.events.filter(cash.NoteMinted)[0]
    assert (minted.id, minted.issuer, bytes(minted.selection)) == (order, cbdc.address, b"\x42" * 32)
    assert cash.ownerOf(order) == alice.address and cash.noteOf(order).party == cbdc.address
    assert token.totalSupply() == supply - burn and token.balanceOf(cbdc) == balance - burn
    assert cash.backing(stablecoin) == 10 * USDC and cash.openOrderValue(stablecoin) == 0


def test_a_staked_cbdc_that_was_not_drawn_cannot_fill(
    cash: Any,
    dle: Any,
    token: Any,
    stablecoin: Any,
    draws: Draws,
    order: int,
    before: tuple[Any, ...],
    alice: Any,
    cbdc: Any,
    rival: Any,
) -> None:
    # The drawn CBDC's own certificate, sent by another staked CBDC.
    draw, epoch, signatures = draws.certify(cash, order, cbdc)
    with reverts_with(cash.NotDrawnCbdc, id=order, drawn=cbdc, caller=rival):
        cash.fill(draw, epoch, signatures, sender=rival)
    # The same certificate with the draw rewritten to name the rival: the group never signed that.
    forged = (order, rival.address, draw[2], draw[3])
    with reverts_with_wrong_signers(dle, cash.cbdcDrawDigest(forged), signatures, draw[3], epoch):
        cash.fill(forged, epoch, signatures, sender=rival)
    _unchanged(cash, token, stablecoin, order, [alice, cbdc, rival], before)
    draws.fill(cash, order, cbdc)  # the drawn CBDC still fills it
    assert cash.noteOf(order).party == cbdc.address


def test_a_draw_for_another_order_does_not_fill_this_one(
    cash: Any,
    dle: Any,
    token: Any,
    stablecoin: Any,
    draws: Draws,
    order: int,
    alice: Any,
    cbdc: Any,
    rival: Any,
) -> None:
    # Two orders later the id maps to the same group: only the id tells the two draws apart.
    _order(cash, stablecoin, alice)
    later = _order(cash, stablecoin, alice)
    assert draws.group_for(later) == draws.group_for(order)
    before = _world(cash, token, stablecoin, order, [alice, cbdc, rival])
    draw, epoch, signatures = draws.certify(cash, later, cbdc)
    moved = (order, *draw[1:])
    with reverts_with_wrong_signers(dle, cash.cbdcDrawDigest(moved), signatures, draw[3], epoch):
        cash.fill(moved, epoch, signatures, sender=cbdc)
    _unchanged(cash, token, stablecoin, order, [alice, cbdc, rival], before)
    assert int(cash.noteOf(later).status) == 1


def test_a_draw_by_another_group_is_refused(
    cash: Any,
    token: Any,
    stablecoin: Any,
    draws: Draws,
    order: int,
    before: tuple[Any, ...],
    alice: Any,
    cbdc: Any,
    rival: Any,
) -> None:
    # Signed by every member of the other group, about that group: a whole certificate, of the wrong group.
    expected = draws.group_for(order)
    other = 1 - expected
    with reverts_with(cash.WrongDrawGroup, id=order, given=other, expected=expected):
        draws.fill(cash, order, cbdc, group=other)
    _unchanged(cash, token, stablecoin, order, [alice, cbdc, rival], before)


def test_a_forged_or_partial_group_signature_is_refused(
    accounts: Any,
    cash: Any,
    dle: Any,
    token: Any,
    registry: Any,
    stablecoin: Any,
    draws: Draws,
    archive_nodes: list[Any],
    order: int,
    before: tuple[Any, ...],
    alice: Any,
    cbdc: Any,
    rival: Any,
) -> None:
    group = draws.group_for(order)
    members = group_of(registry, archive_nodes, group)
    outsiders = group_of(registry, archive_nodes, 1 - group)
    strangers = [accounts.generate_test_account() for _ in members]
    assert len(members) == 2
    for signers in ([members[0]], [members[1]], outsiders, strangers, [members[0], outsiders[0]], [cbdc]):
        with reverts_with(dle.SignersNotGroup, group=group, epoch=1):
            draws.fill(cash, order, cbdc, signers=signers)
    # Both members, but one signature twice in place of the other.
    draw, epoch, signatures = draws.certify(cash, order, cbdc)
    with reverts_with(dle.UnsortedSigners, index=1):
        cash.fill(draw, epoch, signatures[:65] * 2, sender=cbdc)
    with reverts_with(dle.MalformedSignatures, length=0):
        cash.fill(draw, epoch, b"", sender=cbdc)
    with reverts_with(dle.UnknownEpoch, group=group, epoch=2):
        cash.fill(draw, 2, signatures, sender=cbdc)
    _unchanged(cash, token, stablecoin, order, [alice, cbdc, rival], before)


def test_a_draw_certified_by_an_ended_epoch_fills_nothing(
    admin: Any,
    treasury: Any,
    cash: Any,
    dle: Any,
    token: Any,
    oracle: Any,
    registry: Any,
    staking: Any,
    stablecoin: Any,
    draws: Draws,
    archive_nodes: list[Any],
    order: int,
    alice: Any,
    cbdc: Any,
    rival: Any,
) -> None:
    group = draws.group_for(order)
    old = group_of(registry, archive_nodes, group)
    draw, _, signatures = draws.certify(cash, order, cbdc, epoch=1)
    staking.requestUnstake(int(Role.ARCHIVE), MIN_STAKE[Role.ARCHIVE], sender=old[0])
    dle.refreshGroup(group, sender=admin)
    assert dle.currentEpoch(group) == 2
    set_prices(oracle, admin, token, stablecoin)  # fresh prices again: only the draw may fail
    before = _world(cash, token, stablecoin, order, [alice, cbdc, rival])
    with reverts_with(dle.EpochEnded, group=group, epoch=1, current=2):
        cash.fill(draw, 1, signatures, sender=cbdc)
    # Epoch 2 is the member left, alone; the old pair's certificate is not its certificate, and its own
    # is no group's.
    with reverts_with(dle.SignersNotGroup, group=group, epoch=2):
        cash.fill(draw, 2, signatures, sender=cbdc)
    alone, _, lone = draws.certify(cash, order, cbdc, epoch=2, signers=[old[1]])
    with reverts_with(dle.GroupTooSmall, group=group, epoch=2, size=1, minimum=2):
        cash.fill(alone, 2, lone, sender=cbdc)
    _unchanged(cash, token, stablecoin, order, [alice, cbdc, rival], before)
    restake_archive(staking, token, treasury, old[0])  # the leaver is back: epoch 3, of both
    dle.refreshGroup(group, sender=admin)
    cash.fill(draw, 3, signatures, sender=cbdc)
    assert cash.noteOf(order).party == cbdc.address


def test_a_drawn_cbdc_that_no_longer_meets_the_stake_cannot_fill(
    cash: Any,
    token: Any,
    staking: Any,
    stablecoin: Any,
    draws: Draws,
    order: int,
    alice: Any,
    cbdc: Any,
    rival: Any,
) -> None:
    # Drawn while staked, it starts unbonding: the certificate alone does not make it a CBDC.
    draw, epoch, signatures = draws.certify(cash, order, cbdc)
    staking.requestUnstake(int(Role.CBDC), 1, sender=cbdc)
    before = _world(cash, token, stablecoin, order, [alice, cbdc, rival])
    with reverts_with(cash.NotStakedCbdc, caller=cbdc):
        cash.fill(draw, epoch, signatures, sender=cbdc)
    _unchanged(cash, token, stablecoin, order, [alice, cbdc, rival], before)
