"""CoNETCash under attack: re-entry through a note receiver and through a stablecoin's transfer hooks,
exit certificates that are replayed, forged, incomplete or stale, and every refused argument of buy,
fill, cancel, exit and claim, each by its custom error and arguments. Also the re-issue cap: a claim
owed more CoNET than burns have removed gets what is left, and the rest is withheld."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import (
    CONET_PRICE,
    DAY,
    DOLLAR,
    MIN_STAKE,
    ORDER_TIMEOUT,
    Draws,
    dle_chain_id,
    exit_digest,
    group_of,
    group_signatures,
    public_key,
    restake_archive,
    reverts_with,
    reverts_with_wrong_signers,
    set_prices,
    sign_digest,
    stake,
)
from eth_utils.crypto import keccak

from offchain.chain.deployer import CONET, Role

USDC = 10**6
CAP = 100 * USDC
MAX_UINT = 2**256 - 1
GUARD = keccak(text="ReentrancyGuardReentrantCall()")[:4]


@pytest.fixture(scope="module")
def market(
    admin: Any,
    token: Any,
    oracle: Any,
    params: Any,
    stablecoin: Any,
    dle: Any,
    cash: Any,
    cbdc: Any,
    archive_nodes: list[Any],
    funded: list[Any],
) -> None:
    """The stablecoin listed and priced, three funded buyers, both archive groups' first epoch open."""
    params.listStablecoin(stablecoin, sender=admin)
    set_prices(oracle, admin, token, stablecoin)
    for buyer in funded[:3]:
        stablecoin.mint(buyer, 10_000 * USDC, sender=buyer)
        stablecoin.approve(cash, MAX_UINT, sender=buyer)
    for group in (0, 1):
        dle.refreshGroup(group, sender=admin)


@pytest.fixture(scope="module")
def receiver(project: Any, admin: Any, stablecoin: Any, cash: Any, market: None) -> Any:
    """A buyer contract that re-enters CoNETCash when it receives a note."""
    contract = admin.deploy(project.ReentrantReceiver, cash)
    stablecoin.mint(contract, 10_000 * USDC, sender=admin)
    contract.approve(stablecoin, cash, MAX_UINT, sender=admin)
    return contract


class Hooked:
    """CallbackToken listed as a stablecoin, with a live registered note N (partly exited, so its CBDC
    has earnings in it) and an expired order E, both Alice's."""

    def __init__(self, token: Any, note: int, order: int) -> None:
        self.token, self.note, self.order = token, note, order


@pytest.fixture(scope="module")
def hooked(
    draws: Draws,
    project: Any,
    chain: Any,
    admin: Any,
    oracle: Any,
    params: Any,
    cash: Any,
    dle: Any,
    registry: Any,
    cbdc: Any,
    archive_nodes: list[Any],
    alice: Any,
    market: None,
) -> Hooked:
    coin = admin.deploy(project.CallbackToken)
    params.listStablecoin(coin, sender=admin)
    oracle.setPrice(coin, DOLLAR, sender=admin)
    coin.mint(alice, 10_000 * USDC, sender=admin)
    coin.approve(cash, MAX_UINT, sender=alice)
    order = _order_id(cash.buy(coin, 5 * USDC, sender=alice))
    note = issue(draws, cash, coin, alice, cbdc, 50 * USDC)
    register(dle, cash, registry, archive_nodes, note)
    certificate, signatures = exit_of(chain, cash, registry, archive_nodes, note, alice, 10 * USDC, 0)
    cash.exit(certificate, 1, signatures, sender=alice)
    chain.pending_timestamp += ORDER_TIMEOUT
    return Hooked(coin, note, order)


@pytest.fixture(scope="module", autouse=True)
def _deployed(
    market: None,
    receiver: Any,
    hooked: Hooked,
    funded: list[Any],
    admin: Any,
    alice: Any,
    bob: Any,
    carol: Any,
    staking: Any,
    registry: Any,
) -> None:
    """Set up the module's fixtures before ape's per-test snapshots start."""


# ---------------------------------------------------------------- helpers


def _order_id(receipt: Any) -> int:
    for log in receipt.decode_logs():
        if log.event_name == "OrderPlaced":
            return int(log.id)
    raise AssertionError("no OrderPlaced event")


def issue(draws: Draws, cash: Any, coin: Any, buyer: Any, cbdc: Any, amount: int) -> int:
    """A live note of `amount` bought by `buyer` and filled by `cbdc`, drawn for it."""
    note = _order_id(cash.buy(coin, amount, sender=buyer))
    draws.fill(cash, note, cbdc)
    return note


def members_of(registry: Any, archive_nodes: list[Any], note: int) -> list[Any]:
    return group_of(registry, archive_nodes, note % 2)


def register(dle: Any, cash: Any, registry: Any, archive_nodes: list[Any], note: int, epoch: int = 1) -> None:
    """The note's archive group (note % 2) registers the note's chain."""
    genesis = keccak(note.to_bytes(32, "big"))
    digest = dle.genesisDigest(cash, note, genesis, note % 2)
    signatures = group_signatures(members_of(registry, archive_nodes, note), digest)
    dle.registerChain(cash, note, genesis, note % 2, epoch, signatures, sender=archive_nodes[0])


def exit_of(
    chain: Any,
    cash: Any,
    registry: Any,
    archive_nodes: list[Any],
    note: int,
    receiver: Any,
    amount: int,
    nonce: int,
    signers: list[Any] | None = None,
) -> tuple[tuple[Any, ...], bytes]:
    """An exit certificate of `note` and the signatures of its group (or of `signers`)."""
    certificate = (note, cash.chainOf(note), 100 + nonce, receiver.address, receiver.address, amount, nonce)
    digest = cash.exitDigest(certificate)
    assert digest == exit_digest(chain.chain_id, cash, certificate)  # the off-chain digest agrees
    signers = members_of(registry, archive_nodes, note) if signers is None else signers
    return certificate, group_signatures(signers, digest)


# ---------------------------------------------------------------- re-entry through a note receiver


def _reentry(
    draws: Draws,
    cash: Any,
    dle: Any,
    chain: Any,
    registry: Any,
    archive_nodes: list[Any],
    target: str,
    receiver: Any,
    alice: Any,
    cbdc: Any,
    stablecoin: Any,
) -> tuple[bytes, Any]:
    """Calldata that re-enters `target`, each a call that would succeed or fail differently outside a
    guarded call; and a check to run afterwards that shows what the call does unguarded."""
    if target == "buy":
        data = cash.buy.encode_input(stablecoin, 3 * USDC)

        def after() -> None:
            receiver.call(data, sender=alice)  # unguarded, the receiver's buy goes through
            assert cash.openOrderValue(stablecoin) == 3 * USDC

        return data, after
    if target == "cancel":
        expired = _order_id(receiver.call(cash.buy.encode_input(stablecoin, 4 * USDC), sender=alice))
        chain.pending_timestamp += ORDER_TIMEOUT
        data = cash.cancel.encode_input(expired)

        def after() -> None:
            before = stablecoin.balanceOf(receiver)
            receiver.call(data, sender=alice)
            assert stablecoin.balanceOf(receiver) == before + 4 * USDC

        return data, after
    if target == "exit":
        note = issue(draws, cash, stablecoin, alice, cbdc, 20 * USDC)
        register(dle, cash, registry, archive_nodes, note)
        certificate, signatures = exit_of(chain, cash, registry, archive_nodes, note, alice, 5 * USDC, 0)
        data = cash.exit.encode_input(certificate, 1, signatures)

        def after() -> None:
            receiver.call(data, sender=alice)
            assert cash.outstandingOf(note) == 15 * USDC

        return data, after
    if target == "claim":
        data = cash.claim.encode_input(stablecoin)

        def after() -> None:
            with reverts_with(cash.NothingToClaim, stablecoin=stablecoin):
                receiver.call(data, sender=alice)

        return data, after
    # A draw of the receiver itself, certified: the guard, not the draw, is what stops it re-entering.
    order = _order_id(cash.buy(stablecoin, 2 * USDC, sender=alice))
    data = cash.fill.encode_input(*draws.certify(cash, order, receiver))

    def after() -> None:
        with reverts_with(cash.NotStakedCbdc, caller=receiver):
            receiver.call(data, sender=alice)

    return data, after


@pytest.mark.parametrize("target", ["buy", "cancel", "exit", "claim", "fill"])
def test_a_receiver_re_entering_when_its_order_is_filled_is_refused(
    chain: Any,
    cash: Any,
    dle: Any,
    registry: Any,
    archive_nodes: list[Any],
    stablecoin: Any,
    receiver: Any,
    alice: Any,
    cbdc: Any,
    target: str,
    draws: Draws,
) -> None:
    data, after = _reentry(draws, cash, dle, chain, registry, archive_nodes, target, receiver, alice, cbdc, stablecoin)
    order = _order_id(receiver.call(cash.buy.encode_input(stablecoin, 10 * USDC), sender=alice))
    receiver.setReentry(data, sender=alice)

    draws.fill(cash, order, cbdc)

    assert cash.ownerOf(order) == receiver.address  # the fill itself went through
    assert receiver.reentered() is False
    assert bytes(receiver.reentryError()) == GUARD
    receiver.setReentry(b"", sender=alice)
    after()


def test_a_receiver_re_entering_when_a_pooled_note_is_refunded_to_it_is_refused(
    draws: Draws,
    chain: Any,
    cash: Any,
    dle: Any,
    registry: Any,
    archive_nodes: list[Any],
    stablecoin: Any,
    receiver: Any,
    alice: Any,
    cbdc: Any,
) -> None:
    note = issue(draws, cash, stablecoin, alice, cbdc, 10 * USDC)
    register(dle, cash, registry, archive_nodes, note)
    certificate, signatures = exit_of(chain, cash, registry, archive_nodes, note, alice, 10 * USDC, 0)
    cash.exit(certificate, 1, signatures, sender=alice)
    assert cash.poolSize(stablecoin) == 1
    inner = cash.buy.encode_input(stablecoin, 1 * USDC)
    receiver.setReentry(inner, sender=alice)
    next_id = cash.nextId()

    receipt = receiver.call(cash.buy.encode_input(stablecoin, 7 * USDC), sender=alice)

    assert [log.event_name for log in receipt.decode_logs() if log.event_name == "NoteRefunded"] == ["NoteRefunded"]
    assert cash.ownerOf(note) == receiver.address
    assert cash.outstandingOf(note) == 7 * USDC
    assert receiver.reentered() is False
    assert bytes(receiver.reentryError()) == GUARD
    assert cash.nextId() == next_id  # the inner buy placed no order
    assert cash.openOrderValue(stablecoin) == 0


# ---------------------------------------------------------------- re-entry through a stablecoin's hooks


def _hook_call(
    chain: Any, cash: Any, registry: Any, archive_nodes: list[Any], hooked: Hooked, target: str, alice: Any
) -> bytes:
    if target == "cancel":
        return cash.cancel.encode_input(hooked.order)
    if target == "exit":
        certificate, signatures = exit_of(chain, cash, registry, archive_nodes, hooked.note, alice, 3 * USDC, 7)
        return cash.exit.encode_input(certificate, 1, signatures)
    if target == "claim":
        return cash.claim.encode_input(hooked.token)
    return cash.buy.encode_input(hooked.token, 1 * USDC)


@pytest.mark.parametrize("outer", ["buy", "cancel", "exit", "claim"])
@pytest.mark.parametrize("target", ["cancel", "exit", "claim", "buy"])
def test_a_stablecoin_re_entering_from_its_transfer_hook_is_refused(
    chain: Any,
    cash: Any,
    registry: Any,
    archive_nodes: list[Any],
    hooked: Hooked,
    alice: Any,
    bob: Any,
    cbdc: Any,
    outer: str,
    target: str,
) -> None:
    coin = hooked.token
    coin.setCallback(cash, _hook_call(chain, cash, registry, archive_nodes, hooked, target, alice), sender=alice)
    held = coin.balanceOf(cash)

    if outer == "buy":
        cash.buy(coin, 2 * USDC, sender=alice)
        assert coin.balanceOf(cash) == held + 2 * USDC
    elif outer == "cancel":
        cash.cancel(hooked.order, sender=alice)
        assert coin.balanceOf(cash) == held - 5 * USDC
    elif outer == "exit":
        certificate, signatures = exit_of(chain, cash, registry, archive_nodes, hooked.note, bob, 4 * USDC, 1)
        cash.exit(certificate, 1, signatures, sender=bob)
        assert coin.balanceOf(bob) == 4 * USDC - 8_000
    else:
        cash.claim(coin, sender=cbdc)
        assert coin.balanceOf(cbdc) == 20_000  # the fee on the 10-unit exit

    assert coin.reentered() is False
    assert bytes(coin.reentryError()) == GUARD
    assert cash.outstandingOf(hooked.note) == (40 if outer != "exit" else 36) * USDC


def test_the_stablecoin_hook_does_re_enter_outside_a_guarded_call(
    chain: Any, cash: Any, registry: Any, archive_nodes: list[Any], hooked: Hooked, alice: Any, bob: Any
) -> None:
    """Control: the same hook, fired by a plain transfer, runs the exit: the refusals above are the guard's."""
    coin = hooked.token
    coin.setCallback(cash, _hook_call(chain, cash, registry, archive_nodes, hooked, "exit", alice), sender=alice)
    coin.transfer(bob, 1, sender=alice)
    assert coin.reentered() is True
    assert cash.outstandingOf(hooked.note) == 37 * USDC


# ---------------------------------------------------------------- certificates


@pytest.fixture
def live(
    draws: Draws,
    chain: Any,
    cash: Any,
    dle: Any,
    registry: Any,
    archive_nodes: list[Any],
    stablecoin: Any,
    alice: Any,
    cbdc: Any,
) -> int:
    """A registered live note of 50 units of Alice's."""
    note = issue(draws, cash, stablecoin, alice, cbdc, 50 * USDC)
    register(dle, cash, registry, archive_nodes, note)
    return note


def test_the_off_chain_digests_match_the_contracts(
    chain: Any, cash: Any, dle: Any, registry: Any, archive_nodes: list[Any], live: int, alice: Any
) -> None:
    certificate, _ = exit_of(chain, cash, registry, archive_nodes, live, alice, 1, 0)
    assert cash.exitDigest(certificate) == exit_digest(chain.chain_id, cash, certificate)
    assert cash.chainOf(live) == dle_chain_id(chain.chain_id, cash, live)
    assert dle.chainIdOf(cash, live) == cash.chainOf(live)


def test_a_certificate_signed_for_another_chain_id_is_refused(
    chain: Any, cash: Any, dle: Any, registry: Any, archive_nodes: list[Any], live: int, alice: Any
) -> None:
    assert chain.chain_id != 1
    certificate, _ = exit_of(chain, cash, registry, archive_nodes, live, alice, 5 * USDC, 0)
    # The group signs the same certificate under an EIP-712 domain with chain id 1.
    foreign = exit_digest(1, cash, certificate)
    signatures = group_signatures(members_of(registry, archive_nodes, live), foreign)
    with reverts_with_wrong_signers(dle, cash.exitDigest(certificate), signatures, live % 2, 1):
        cash.exit(certificate, 1, signatures, sender=alice)

    # A certificate made wholly for chain id 1 names that chain's note chain, which is not this one's.
    other_chain = dle_chain_id(1, cash, live)
    certificate = (live, other_chain, 100, alice.address, alice.address, 5 * USDC, 0)
    signatures = group_signatures(members_of(registry, archive_nodes, live), exit_digest(1, cash, certificate))
    with reverts_with(cash.WrongChain, expected=cash.chainOf(live), given=other_chain):
        cash.exit(certificate, 1, signatures, sender=alice)
    assert cash.outstandingOf(live) == 50 * USDC


def test_a_certificate_for_another_cash_contract_is_refused(
    draws: Draws,
    project: Any,
    chain: Any,
    admin: Any,
    token: Any,
    oracle: Any,
    staking: Any,
    params: Any,
    stablecoin: Any,
    dle: Any,
    cash: Any,
    registry: Any,
    archive_nodes: list[Any],
    live: int,
    alice: Any,
    cbdc: Any,
) -> None:
    other = admin.deploy(project.CoNETCash, token, oracle, staking, params, dle)
    token.grantRole(token.REISSUER_ROLE(), other, sender=admin)
    stablecoin.approve(other, MAX_UINT, sender=alice)
    token.approve(other, MAX_UINT, sender=cbdc)
    while other.nextId() < live:  # orders, until the other contract's next note has the same id
        other.buy(stablecoin, 1, sender=alice)
    twin = issue(draws, other, stablecoin, alice, cbdc, 50 * USDC)
    assert twin == live  # the same note id in both contracts
    register(dle, other, registry, archive_nodes, twin)
    group = live % 2

    # This contract's certificate, as it is, names this contract's note chain.
    certificate, signatures = exit_of(chain, cash, registry, archive_nodes, live, alice, 5 * USDC, 0)
    with reverts_with(other.WrongChain, expected=other.chainOf(twin), given=cash.chainOf(live)):
        other.exit(certificate, 1, signatures, sender=alice)

    # Pointed at the other contract's chain but signed under this contract's domain.
    retargeted = (twin, other.chainOf(twin), *certificate[2:])
    signatures = group_signatures(
        members_of(registry, archive_nodes, live), exit_digest(chain.chain_id, cash, retargeted)
    )
    with reverts_with_wrong_signers(dle, other.exitDigest(retargeted), signatures, group, 1):
        other.exit(retargeted, 1, signatures, sender=alice)

    # Signed for the other contract, it pays there and only there.
    signatures = group_signatures(members_of(registry, archive_nodes, live), other.exitDigest(retargeted))
    other.exit(retargeted, 1, signatures, sender=alice)
    assert other.outstandingOf(twin) == 45 * USDC
    assert cash.outstandingOf(live) == 50 * USDC


@pytest.mark.parametrize("flaw", ["missing", "extra", "duplicate", "reversed", "stranger"])
def test_a_signature_set_that_is_not_exactly_the_group_is_refused(
    chain: Any,
    cash: Any,
    dle: Any,
    registry: Any,
    archive_nodes: list[Any],
    live: int,
    alice: Any,
    carol: Any,
    flaw: str,
) -> None:
    certificate, _ = exit_of(chain, cash, registry, archive_nodes, live, alice, 5 * USDC, 0)
    digest = cash.exitDigest(certificate)
    members = sorted(members_of(registry, archive_nodes, live), key=lambda a: int(a.address, 16))
    group = live % 2
    if flaw == "missing":
        signatures, expected = sign_digest(members[0], digest), reverts_with(dle.SignersNotGroup, group=group, epoch=1)
    elif flaw == "extra":  # every member, and a non-member
        signatures = group_signatures([*members, carol], digest)
        expected = reverts_with(dle.SignersNotGroup, group=group, epoch=1)
    elif flaw == "duplicate":
        signatures = sign_digest(members[0], digest) * 2 + sign_digest(members[1], digest)
        expected = reverts_with(dle.UnsortedSigners, index=1)
    elif flaw == "reversed":
        signatures = sign_digest(members[1], digest) + sign_digest(members[0], digest)
        expected = reverts_with(dle.UnsortedSigners, index=1)
    else:  # as many signatures as members, one of them a stranger's
        signatures = group_signatures([members[0], carol], digest)
        expected = reverts_with(dle.SignersNotGroup, group=group, epoch=1)
    with expected:
        cash.exit(certificate, 1, signatures, sender=alice)
    assert not cash.isExitNonceUsed(live, 0)


@pytest.mark.parametrize("length", [0, 64, 66, 131])
def test_signatures_of_a_malformed_length_are_refused(
    chain: Any, cash: Any, dle: Any, registry: Any, archive_nodes: list[Any], live: int, alice: Any, length: int
) -> None:
    certificate, signatures = exit_of(chain, cash, registry, archive_nodes, live, alice, 5 * USDC, 0)
    malformed = (signatures * 2)[:length]
    with reverts_with(dle.MalformedSignatures, length=length):
        cash.exit(certificate, 1, malformed, sender=alice)


def test_more_signatures_than_a_group_can_hold_are_refused_before_recovery(
    chain: Any, cash: Any, dle: Any, registry: Any, archive_nodes: list[Any], live: int, alice: Any
) -> None:
    certificate, signatures = exit_of(chain, cash, registry, archive_nodes, live, alice, 5 * USDC, 0)
    assert dle.MAX_GROUP_SIZE() == 64
    with reverts_with(dle.SignersNotGroup, group=live % 2, epoch=1):
        cash.exit(certificate, 1, signatures[:65] * 65, sender=alice)


def test_an_unrecoverable_signature_is_refused(
    chain: Any, cash: Any, dle: Any, registry: Any, archive_nodes: list[Any], live: int, alice: Any
) -> None:
    certificate, signatures = exit_of(chain, cash, registry, archive_nodes, live, alice, 5 * USDC, 0)
    broken = signatures[:64] + b"\x05" + signatures[65:]  # v is neither 27 nor 28
    with reverts_with(dle.ECDSAInvalidSignature):
        cash.exit(certificate, 1, broken, sender=alice)


def test_a_certificate_naming_another_notes_chain_is_refused(
    draws: Draws,
    chain: Any,
    cash: Any,
    registry: Any,
    archive_nodes: list[Any],
    stablecoin: Any,
    live: int,
    alice: Any,
    cbdc: Any,
) -> None:
    other = issue(draws, cash, stablecoin, alice, cbdc, 10 * USDC)
    certificate, _ = exit_of(chain, cash, registry, archive_nodes, live, alice, 5 * USDC, 0)
    forged = (live, cash.chainOf(other), *certificate[2:])
    signatures = group_signatures(members_of(registry, archive_nodes, live), cash.exitDigest(forged))
    with reverts_with(cash.WrongChain, expected=cash.chainOf(live), given=cash.chainOf(other)):
        cash.exit(forged, 1, signatures, sender=alice)


@pytest.mark.parametrize("amount", [0, 50 * USDC + 1])
def test_an_exit_of_nothing_or_above_the_outstanding_value_is_refused(
    chain: Any, cash: Any, registry: Any, archive_nodes: list[Any], live: int, alice: Any, amount: int
) -> None:
    certificate, signatures = exit_of(chain, cash, registry, archive_nodes, live, alice, amount, 0)
    with reverts_with(cash.InvalidExitAmount, amount=amount, outstanding=50 * USDC):
        cash.exit(certificate, 1, signatures, sender=alice)


def test_an_exit_above_what_is_left_after_an_earlier_exit_is_refused(
    chain: Any, cash: Any, registry: Any, archive_nodes: list[Any], live: int, alice: Any
) -> None:
    first, signatures = exit_of(chain, cash, registry, archive_nodes, live, alice, 30 * USDC, 0)
    cash.exit(first, 1, signatures, sender=alice)
    second, signatures = exit_of(chain, cash, registry, archive_nodes, live, alice, 30 * USDC, 1)
    with reverts_with(cash.InvalidExitAmount, amount=30 * USDC, outstanding=20 * USDC):
        cash.exit(second, 1, signatures, sender=alice)


def test_an_exit_of_an_unregistered_chain_is_refused(
    draws: Draws,
    chain: Any,
    cash: Any,
    dle: Any,
    registry: Any,
    archive_nodes: list[Any],
    stablecoin: Any,
    alice: Any,
    cbdc: Any,
) -> None:
    note = issue(draws, cash, stablecoin, alice, cbdc, 10 * USDC)
    certificate, signatures = exit_of(chain, cash, registry, archive_nodes, note, alice, 5 * USDC, 0)
    with reverts_with(dle.ChainNotRegistered, chain=cash.chainOf(note)):
        cash.exit(certificate, 1, signatures, sender=alice)


def test_an_exit_of_an_order_a_pooled_note_or_no_note_is_refused(
    chain: Any,
    cash: Any,
    registry: Any,
    archive_nodes: list[Any],
    stablecoin: Any,
    live: int,
    alice: Any,
) -> None:
    order = _order_id(cash.buy(stablecoin, 10 * USDC, sender=alice))
    certificate, signatures = exit_of(chain, cash, registry, archive_nodes, live, alice, 50 * USDC, 0)
    cash.exit(certificate, 1, signatures, sender=alice)  # pooled
    for note in (order, live, cash.nextId()):
        certificate, signatures = exit_of(chain, cash, registry, archive_nodes, note, alice, 1, 5)
        with reverts_with(cash.NoteNotLive, id=note):
            cash.exit(certificate, 1, signatures, sender=alice)


def test_exit_nonces_are_single_use_across_words(
    chain: Any, cash: Any, registry: Any, archive_nodes: list[Any], live: int, alice: Any
) -> None:
    """Nonces are kept 255 to a storage word: 254 is the last of word 0, 255 the first of word 1."""
    for nonce in (254, 255, 10_000):
        certificate, signatures = exit_of(chain, cash, registry, archive_nodes, live, alice, 1 * USDC, nonce)
        cash.exit(certificate, 1, signatures, sender=alice)
        assert cash.isExitNonceUsed(live, nonce)
        with reverts_with(cash.CertificateUsed, note=live, nonce=nonce):
            cash.exit(certificate, 1, signatures, sender=alice)
    for unused in (0, 253, 256, 9_999, 10_001, 10_000 + 255):
        assert not cash.isExitNonceUsed(live, unused)
    assert cash.outstandingOf(live) == 47 * USDC


@pytest.mark.parametrize("epoch", [0, 2])
def test_an_unknown_epoch_is_refused(
    chain: Any, cash: Any, dle: Any, registry: Any, archive_nodes: list[Any], live: int, alice: Any, epoch: int
) -> None:
    certificate, signatures = exit_of(chain, cash, registry, archive_nodes, live, alice, 5 * USDC, 0)
    with reverts_with(dle.UnknownEpoch, group=live % 2, epoch=epoch):
        cash.exit(certificate, epoch, signatures, sender=alice)


@pytest.mark.parametrize("leaves_by", ["unbonding", "deregistering"])
def test_an_ended_epoch_pays_no_exit_and_a_lone_member_none_either(
    chain: Any,
    admin: Any,
    cash: Any,
    dle: Any,
    registry: Any,
    staking: Any,
    token: Any,
    treasury: Any,
    archive_nodes: list[Any],
    live: int,
    alice: Any,
    leaves_by: str,
) -> None:
    group = live % 2
    old = members_of(registry, archive_nodes, live)
    leaver, stayer = old
    certificate, signatures = exit_of(chain, cash, registry, archive_nodes, live, alice, 5 * USDC, 0, old)
    if leaves_by == "unbonding":
        staking.requestUnstake(int(Role.ARCHIVE), MIN_STAKE[Role.ARCHIVE], sender=leaver)
    else:
        registry.deregister(registry.tokenOf(leaver, int(Role.ARCHIVE)), sender=leaver)
    receipt = dle.refreshGroup(group, sender=admin)
    assert dle.currentEpoch(group) == 2
    assert dle.epochOf(group, 1).endedAt == chain.blocks[receipt.block_number].timestamp
    assert dle.epochMembers(group, 2) == [stayer.address]
    outstanding = cash.outstandingOf(live)

    # The pair signed while both were members; once the leaver is out, that certificate pays nothing:
    # the members who stayed could otherwise sign now what the leaver would have refused.
    with reverts_with(dle.EpochEnded, group=group, epoch=1, current=2):
        cash.exit(certificate, 1, signatures, sender=alice)
    # Epoch 2 is the one remaining member, alone: no group, whoever signs.
    with reverts_with(dle.SignersNotGroup, group=group, epoch=2):
        cash.exit(certificate, 2, signatures, sender=alice)
    alone, lone = exit_of(chain, cash, registry, archive_nodes, live, alice, 5 * USDC, 0, [stayer])
    with reverts_with(dle.GroupTooSmall, group=group, epoch=2, size=1, minimum=2):
        cash.exit(alone, 2, lone, sender=alice)
    assert cash.outstandingOf(live) == outstanding and not cash.isExitNonceUsed(live, 0)

    # The leaver is back (stakes again, or registers anew and joins the smaller group): epoch 3, of
    # both, re-certifies the exit and it is paid once.
    if leaves_by == "unbonding":
        restake_archive(staking, token, treasury, leaver)
    else:
        registry.register(
            int(Role.ARCHIVE), public_key(leaver), ["https://archive.example"], (0, 0, 0, 0), "eu", sender=leaver
        )
        assert registry.archiveGroupOf(registry.tokenOf(leaver, int(Role.ARCHIVE))) == group
    dle.refreshGroup(group, sender=admin)
    cash.exit(certificate, 3, signatures, sender=alice)
    assert cash.outstandingOf(live) == outstanding - 5 * USDC


# ---------------------------------------------------------------- fill, buy, cancel, claim


def test_only_a_staked_cbdc_fills(
    draws: Draws, cash: Any, token: Any, staking: Any, stablecoin: Any, alice: Any, bob: Any, cbdc: Any
) -> None:
    order = _order_id(cash.buy(stablecoin, 10 * USDC, sender=alice))
    token.approve(cash, MAX_UINT, sender=bob)
    # Even drawn and certified by the whole group, an unstaked CBDC does not fill.
    with reverts_with(cash.NotStakedCbdc, caller=bob):
        draws.fill(cash, order, bob)
    # Staked below the minimum is not staked; neither is a CBDC whose stake is unbonding.
    stake(staking, token, bob, Role.CBDC, MIN_STAKE[Role.CBDC] - 1)
    with reverts_with(cash.NotStakedCbdc, caller=bob):
        draws.fill(cash, order, bob)
    staking.requestUnstake(int(Role.CBDC), 1, sender=cbdc)
    with reverts_with(cash.NotStakedCbdc, caller=cbdc):
        draws.fill(cash, order, cbdc)
    stake(staking, token, bob, Role.CBDC, 1)
    draws.fill(cash, order, bob)
    assert cash.noteOf(order).party == bob.address


@pytest.mark.parametrize("stale", ["stablecoin", "conet"])
def test_a_fill_at_a_stale_price_is_refused_by_the_oracle(
    chain: Any,
    admin: Any,
    cash: Any,
    token: Any,
    oracle: Any,
    stablecoin: Any,
    alice: Any,
    cbdc: Any,
    draws: Draws,
    stale: str,
) -> None:
    order = _order_id(cash.buy(stablecoin, 10 * USDC, sender=alice))
    chain.pending_timestamp += DAY + 1
    if stale == "stablecoin":
        old = stablecoin
        oracle.setPrice(token, CONET_PRICE, sender=admin)
    else:
        old = token
        oracle.setPrice(stablecoin, DOLLAR, sender=admin)
    updated = oracle.latestRoundData(old)[3]
    with reverts_with(oracle.StalePrice, asset=old, updatedAt=updated, maxAge=DAY):
        draws.fill(cash, order, cbdc)


def test_a_fill_of_anything_but_an_open_order_is_refused(
    draws: Draws, cash: Any, stablecoin: Any, alice: Any, cbdc: Any
) -> None:
    note = issue(draws, cash, stablecoin, alice, cbdc, 10 * USDC)
    for id_ in (note, cash.nextId(), 0):
        with reverts_with(cash.OrderNotOpen, id=id_):
            draws.fill(cash, id_, cbdc)


def test_buying_nothing_or_above_the_cap_is_refused(cash: Any, params: Any, stablecoin: Any, alice: Any) -> None:
    assert params.noteTerms(stablecoin) == (True, 6, CAP)
    with reverts_with(cash.InvalidAmount, amount=0, cap=CAP):
        cash.buy(stablecoin, 0, sender=alice)
    with reverts_with(cash.InvalidAmount, amount=CAP + 1, cap=CAP):
        cash.buy(stablecoin, CAP + 1, sender=alice)
    cash.buy(stablecoin, CAP, sender=alice)
    assert cash.openOrderValue(stablecoin) == CAP


def test_buying_with_an_unlisted_coin_is_refused(project: Any, admin: Any, cash: Any, alice: Any) -> None:
    unlisted = admin.deploy(project.MockStablecoin, "Unlisted", "UNL")
    unlisted.mint(alice, CAP, sender=alice)
    unlisted.approve(cash, CAP, sender=alice)
    with reverts_with(cash.StablecoinNotListed, stablecoin=unlisted):
        cash.buy(unlisted, 1, sender=alice)
    with reverts_with(cash.StablecoinNotListed, stablecoin=alice):
        cash.buy(alice, 1, sender=alice)


def test_an_order_is_cancelled_only_by_its_buyer_and_only_after_the_timeout(
    chain: Any, cash: Any, stablecoin: Any, alice: Any, bob: Any
) -> None:
    receipt = cash.buy(stablecoin, 10 * USDC, sender=alice)
    order = _order_id(receipt)
    deadline = chain.blocks[receipt.block_number].timestamp + ORDER_TIMEOUT
    assert cash.orderDeadline(order) == deadline
    with reverts_with(cash.OrderNotExpired, id=order, deadline=deadline):
        cash.cancel(order, sender=alice)
    with reverts_with(cash.NotBuyer, id=order, caller=bob):
        cash.cancel(order, sender=bob)
    # A refused transaction is still mined: the one-second-early attempt is the last before the deadline.
    chain.pending_timestamp = deadline - 1
    with reverts_with(cash.OrderNotExpired, id=order, deadline=deadline):
        cash.cancel(order, sender=alice)
    chain.pending_timestamp = deadline
    before = stablecoin.balanceOf(alice)
    cash.cancel(order, sender=alice)
    assert stablecoin.balanceOf(alice) == before + 10 * USDC
    with reverts_with(cash.OrderNotOpen, id=order):
        cash.cancel(order, sender=alice)


def test_a_filled_order_cannot_be_cancelled(
    draws: Draws, chain: Any, cash: Any, stablecoin: Any, alice: Any, cbdc: Any
) -> None:
    note = issue(draws, cash, stablecoin, alice, cbdc, 10 * USDC)
    chain.pending_timestamp += ORDER_TIMEOUT
    with reverts_with(cash.OrderNotOpen, id=note):
        cash.cancel(note, sender=alice)


def test_claiming_nothing_is_refused(project: Any, admin: Any, cash: Any, stablecoin: Any, cbdc: Any) -> None:
    with reverts_with(cash.NothingToClaim, stablecoin=stablecoin):
        cash.claim(stablecoin, sender=cbdc)
    never_used = admin.deploy(project.MockStablecoin, "Never used", "NEV")
    with reverts_with(cash.NothingToClaim, stablecoin=never_used):
        cash.claim(never_used, sender=cbdc)


def test_a_claim_is_capped_by_what_burns_removed_and_the_rest_withheld(
    chain: Any,
    admin: Any,
    token: Any,
    cash: Any,
    stablecoin: Any,
    registry: Any,
    archive_nodes: list[Any],
    live: int,
    alice: Any,
    cbdc: Any,
) -> None:
    """The note's fill burned 200 CoNET (20% of $50 at $0.05); its $40 exit earns 160 CoNET of re-issue.
    Before the claim, another re-issuer restores all but 100 CoNET of what burns removed."""
    cap = token.GENESIS_SUPPLY()
    assert token.reissuable() >= 200 * CONET  # this note's burn, and the module's other notes'
    certificate, signatures = exit_of(chain, cash, registry, archive_nodes, live, alice, 40 * USDC, 0)
    cash.exit(certificate, 1, signatures, sender=alice)
    token.grantRole(token.REISSUER_ROLE(), admin, sender=admin)
    token.reissue(admin, token.reissuable() - 100 * CONET, sender=admin)
    assert token.reissuable() == 100 * CONET
    balance = token.balanceOf(cbdc)

    receipt = cash.claim(stablecoin, sender=cbdc)

    claimed = receipt.events.filter(cash.EarningsClaimed)[0]
    assert (claimed.cbdc, claimed.stablecoin) == (cbdc.address, stablecoin.address)
    assert (claimed.fees, claimed.reissued, claimed.withheld) == (80_000, 100 * CONET, 60 * CONET)
    assert token.totalSupply() == cap
    assert token.balanceOf(cbdc) == balance + 100 * CONET
    assert stablecoin.balanceOf(cbdc) == 80_000
    # What was withheld is forfeited, not kept for later.
    assert cash.earningsOf(cbdc, stablecoin) == (0, 0)
    with reverts_with(cash.NothingToClaim, stablecoin=stablecoin):
        cash.claim(stablecoin, sender=cbdc)
