"""CoNETToken: genesis supply, burn, re-issue under the cap, votes with a timestamp clock, permit."""

from __future__ import annotations

from typing import Any

import ape
import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

GENESIS = 500_000_000 * 10**18


def sign_typed(token: Any, signer: Any, primary: str, fields: list[tuple[str, str]], message: dict[str, Any]) -> Any:
    """Signs an EIP-712 message in the token's own domain, as a wallet would."""
    _, name, version, chain_id, verifying, _, _ = token.eip712Domain()
    typed = {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
                {"name": "verifyingContract", "type": "address"},
            ],
            primary: [{"name": n, "type": t} for n, t in fields],
        },
        "primaryType": primary,
        "domain": {"name": name, "version": version, "chainId": chain_id, "verifyingContract": verifying},
        "message": message,
    }
    return Account.sign_message(encode_typed_data(full_message=typed), signer.private_key)


@pytest.fixture(scope="module")
def reissuer(token: Any, admin: Any, accounts: Any) -> Any:
    account = accounts[9]
    token.grantRole(token.REISSUER_ROLE(), account, sender=admin)
    return account


@pytest.fixture(scope="module", autouse=True)
def _deployed(token: Any, reissuer: Any) -> None:
    """Set up the module's fixtures before ape's per-test snapshots start (else ape warns and rebases)."""


def test_genesis_supply_goes_to_the_treasury(token: Any, treasury: Any) -> None:
    assert token.GENESIS_SUPPLY() == GENESIS
    assert token.totalSupply() == GENESIS
    assert token.balanceOf(treasury) == GENESIS
    assert token.cap() == GENESIS
    assert token.reissuable() == 0
    assert (token.name(), token.symbol(), token.decimals()) == ("CoNET", "CONET", 18)


def test_zero_treasury_is_rejected(project: Any, admin: Any) -> None:
    with ape.reverts(project.CoNETToken.InvalidTreasury):
        admin.deploy(project.CoNETToken, "0x0000000000000000000000000000000000000000", admin)


def test_burn_lowers_supply_and_makes_room_to_reissue(token: Any, treasury: Any) -> None:
    token.burn(1_000, sender=treasury)
    assert token.totalSupply() == GENESIS - 1_000
    assert token.reissuable() == 1_000


def test_burn_from_spends_the_allowance(token: Any, treasury: Any, alice: Any) -> None:
    token.approve(alice, 500, sender=treasury)
    token.burnFrom(treasury, 400, sender=alice)
    assert token.allowance(treasury, alice) == 100
    with ape.reverts(token.ERC20InsufficientAllowance):
        token.burnFrom(treasury, 101, sender=alice)


def test_reissue_restores_only_what_was_burned(token: Any, treasury: Any, reissuer: Any, bob: Any) -> None:
    with ape.reverts(token.ReissueExceedsBurned, requested=1, available=0):
        token.reissue(bob, 1, sender=reissuer)
    token.burn(10**18, sender=treasury)
    receipt = token.reissue(bob, 6 * 10**17, sender=reissuer)
    assert token.balanceOf(bob) == 6 * 10**17
    assert receipt.events[-1].event_name == "Reissued"
    assert receipt.events[-1].amount == 6 * 10**17
    with ape.reverts(token.ReissueExceedsBurned, requested=5 * 10**17, available=4 * 10**17):
        token.reissue(bob, 5 * 10**17, sender=reissuer)
    token.reissue(bob, 4 * 10**17, sender=reissuer)
    assert token.totalSupply() == GENESIS


def test_only_the_reissuer_reissues(token: Any, treasury: Any, alice: Any) -> None:
    token.burn(10, sender=treasury)
    with ape.reverts(token.AccessControlUnauthorizedAccount):
        token.reissue(alice, 1, sender=alice)


def test_only_the_admin_grants_the_reissuer_role(token: Any, alice: Any) -> None:
    role = token.REISSUER_ROLE()
    with ape.reverts(token.AccessControlUnauthorizedAccount):
        token.grantRole(role, alice, sender=alice)


def test_votes_use_a_timestamp_clock(token: Any, treasury: Any, alice: Any, chain: Any) -> None:
    assert token.CLOCK_MODE() == "mode=timestamp"
    token.transfer(alice, 1_000, sender=treasury)
    # `delegate` is shadowed by an attribute of ape's ContractInstance; call the method by name.
    token.invoke_transaction("delegate", alice, sender=alice)
    assert token.getVotes(alice) == 1_000
    assert token.delegates(alice) == alice.address
    assert abs(token.clock() - chain.pending_timestamp) <= 1
    chain.mine(1, timestamp=chain.pending_timestamp + 10)
    assert token.getPastVotes(alice, token.clock() - 1) == 1_000


def test_permit_sets_an_allowance_from_a_signature(token: Any, treasury: Any, alice: Any, bob: Any, chain: Any) -> None:
    deadline = chain.pending_timestamp + 3600
    message = {
        "owner": alice.address,
        "spender": bob.address,
        "value": 777,
        "nonce": token.nonces(alice),
        "deadline": deadline,
    }
    fields = [
        ("owner", "address"),
        ("spender", "address"),
        ("value", "uint256"),
        ("nonce", "uint256"),
        ("deadline", "uint256"),
    ]
    signed = sign_typed(token, alice, "Permit", fields, message)
    token.permit(
        alice, bob, 777, deadline, signed.v, signed.r.to_bytes(32, "big"), signed.s.to_bytes(32, "big"), sender=bob
    )
    assert token.allowance(alice, bob) == 777
    assert token.nonces(alice) == 1
    with ape.reverts(token.ERC2612InvalidSigner):  # replaying the same signature: the nonce moved on
        token.permit(
            alice, bob, 777, deadline, signed.v, signed.r.to_bytes(32, "big"), signed.s.to_bytes(32, "big"), sender=bob
        )


operations = st.lists(
    st.tuples(st.sampled_from(["burn", "reissue"]), st.integers(min_value=0, max_value=GENESIS)),
    min_size=1,
    max_size=6,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations)
def test_no_sequence_of_burns_and_reissues_exceeds_the_cap(
    token: Any, treasury: Any, reissuer: Any, ops: list[tuple[str, int]]
) -> None:
    for op, amount in ops:
        supply = token.totalSupply()
        if op == "burn":
            balance = token.balanceOf(treasury)
            if amount > balance:
                with ape.reverts(token.ERC20InsufficientBalance):
                    token.burn(amount, sender=treasury)
            else:
                token.burn(amount, sender=treasury)
                assert token.totalSupply() == supply - amount
        else:
            available = GENESIS - supply
            if amount > available:
                with ape.reverts(token.ReissueExceedsBurned):
                    token.reissue(treasury, amount, sender=reissuer)
            else:
                token.reissue(treasury, amount, sender=reissuer)
                assert token.totalSupply() == supply + amount
        assert token.totalSupply() <= GENESIS
        assert token.reissuable() == GENESIS - token.totalSupply()


def test_transfer_from_spends_the_allowance(token: Any, treasury: Any, alice: Any, bob: Any) -> None:
    token.approve(alice, 300, sender=treasury)
    token.transferFrom(treasury, bob, 200, sender=alice)
    assert token.balanceOf(bob) == 200
    assert token.allowance(treasury, alice) == 100


def test_delegate_by_signature(token: Any, treasury: Any, alice: Any, bob: Any, chain: Any) -> None:
    token.transfer(alice, 5_000, sender=treasury)
    expiry = chain.pending_timestamp + 3600
    fields = [("delegatee", "address"), ("nonce", "uint256"), ("expiry", "uint256")]
    message = {"delegatee": bob.address, "nonce": token.nonces(alice), "expiry": expiry}
    signed = sign_typed(token, alice, "Delegation", fields, message)
    r, s = signed.r.to_bytes(32, "big"), signed.s.to_bytes(32, "big")
    token.delegateBySig(bob, 0, expiry, signed.v, r, s, sender=bob)  # anyone may submit it
    assert token.delegates(alice) == bob.address
    assert token.getVotes(bob) == 5_000
    assert token.numCheckpoints(bob) == 1
    with ape.reverts(token.InvalidAccountNonce):  # replay
        token.delegateBySig(bob, 0, expiry, signed.v, r, s, sender=bob)


def test_past_total_supply_follows_burns(token: Any, treasury: Any, chain: Any) -> None:
    receipt = token.burn(10**18, sender=treasury)
    chain.mine(1, timestamp=chain.pending_timestamp + 10)
    assert token.getPastTotalSupply(receipt.timestamp - 1) == GENESIS
    assert token.getPastTotalSupply(receipt.timestamp) == GENESIS - 10**18


def test_roles_can_be_revoked_and_renounced(token: Any, admin: Any, reissuer: Any, treasury: Any) -> None:
    role = token.REISSUER_ROLE()
    assert token.getRoleAdmin(role) == token.DEFAULT_ADMIN_ROLE()
    token.revokeRole(role, reissuer, sender=admin)
    assert not token.hasRole(role, reissuer)
    token.grantRole(role, reissuer, sender=admin)
    token.renounceRole(role, reissuer, sender=reissuer)
    token.burn(1, sender=treasury)
    with ape.reverts(token.AccessControlUnauthorizedAccount):
        token.reissue(treasury, 1, sender=reissuer)


def test_interfaces_and_domain(token: Any, chain: Any) -> None:
    assert token.supportsInterface(bytes.fromhex("7965db0b"))  # IAccessControl
    assert token.supportsInterface(bytes.fromhex("01ffc9a7"))  # IERC165
    assert not token.supportsInterface(bytes.fromhex("ffffffff"))
    _, name, version, chain_id, verifying, _, _ = token.eip712Domain()
    assert (name, version, chain_id, verifying) == ("CoNET", "1", chain.chain_id, token.address)
    assert len(token.DOMAIN_SEPARATOR()) == 32
