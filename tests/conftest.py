"""Shared fixtures. Contract tests run on ape's embedded chain (`avalanche:local:test`), with ape's
snapshot isolation reverting each test's transactions; deploy and gas tests start their own anvil."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from coincurve import PrivateKey

from offchain.chain.addressbook import AddressBook, Deployment
from offchain.chain.deployer import CONET, Role
from offchain.toolchain import configure_environment

configure_environment()

DAY = 24 * 3600
MIN_STAKE = {role: 1_000 * CONET for role in Role}
UNIT = 100 * CONET
UNBONDING = 7 * DAY
REPORTER_BPS = 1_000


ADDRESS = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
HASH = "0x" + "ab" * 32


def sample_book() -> AddressBook:
    """A small valid address book for Fuji."""
    book = AddressBook(network="avalanche:fuji", chain_id=43113, deployer=ADDRESS, commit="abc")
    book.contracts["CoNETToken"] = Deployment(address=ADDRESS, block=7, tx_hash=HASH, code_hash=HASH)
    return book


def public_key(account: Any) -> bytes:
    """The 64-byte uncompressed secp256k1 public key (x ‖ y) of an ape test account."""
    key = PrivateKey(bytes.fromhex(account.private_key.removeprefix("0x")))
    return key.public_key.format(compressed=False)[1:]


@pytest.fixture(scope="session")
def admin(accounts: Any) -> Any:
    return accounts[0]


@pytest.fixture(scope="session")
def treasury(accounts: Any) -> Any:
    return accounts[1]


@pytest.fixture(scope="session")
def alice(accounts: Any) -> Any:
    return accounts[2]


@pytest.fixture(scope="session")
def bob(accounts: Any) -> Any:
    return accounts[3]


@pytest.fixture(scope="session")
def carol(accounts: Any) -> Any:
    return accounts[4]


@pytest.fixture(scope="module")
def token(project: Any, admin: Any, treasury: Any) -> Any:
    return admin.deploy(project.CoNETToken, treasury, admin)


@pytest.fixture(scope="module")
def oracle(project: Any, admin: Any) -> Any:
    contract = admin.deploy(project.PriceOracle, admin, DAY)
    contract.grantRole(contract.PRICE_SETTER_ROLE(), admin, sender=admin)
    return contract


@pytest.fixture(scope="module")
def stablecoin(project: Any, admin: Any) -> Any:
    return admin.deploy(project.MockStablecoin, "Mock USD Coin", "mUSDC")


@pytest.fixture(scope="module")
def staking(project: Any, admin: Any, treasury: Any, token: Any) -> Any:
    contract = admin.deploy(project.Staking, token, admin, treasury, UNBONDING, REPORTER_BPS)
    for role in Role:
        contract.setMinimumStake(int(role), MIN_STAKE[role], sender=admin)
        contract.setCapacityUnit(int(role), UNIT, sender=admin)
    contract.grantRole(contract.SLASHER_ROLE(), admin, sender=admin)
    return contract


@pytest.fixture(scope="module")
def registry(project: Any, admin: Any, staking: Any) -> Any:
    return admin.deploy(project.NodeRegistry, staking)


@pytest.fixture(scope="module")
def funded(token: Any, treasury: Any, accounts: Any) -> Iterator[list[Any]]:
    """Accounts 2..9 each hold 100,000 CoNET."""
    for account in accounts[2:10]:
        token.transfer(account, 100_000 * CONET, sender=treasury)
    yield list(accounts[2:10])


def stake(staking: Any, token: Any, node: Any, role: Role, amount: int) -> None:
    token.approve(staking, amount, sender=node)
    staking.stake(int(role), amount, sender=node)
