"""Shared fixtures. Contract tests run on ape's embedded chain (`avalanche:local:test`), with ape's
snapshot isolation reverting each test's transactions; deploy and gas tests start their own anvil."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
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


# ---------------------------------------------------------------- the CoNETCash economy

ORDER_TIMEOUT = 3_600
EPOCH_GRACE = DAY
CONET_PRICE = 5 * 10**6  # $0.05 with 8 decimals
DOLLAR = 10**8  # $1.00 with 8 decimals
ARCHIVE_NODES = 4  # two archive groups of two


def sign_digest(account: Any, digest: bytes) -> bytes:
    """A 65-byte r ‖ s ‖ v signature of `digest` by an ape test account's key."""
    from eth_account import Account

    signed = Account.unsafe_sign_hash(digest, account.private_key)
    return bytes(signed.signature)


def group_signatures(signers: Sequence[Any], digest: bytes) -> bytes:
    """The signatures of `signers`, concatenated in ascending order of address, as DleRegistry wants."""
    ordered = sorted(signers, key=lambda account: int(account.address, 16))
    return b"".join(sign_digest(account, digest) for account in ordered)


@pytest.fixture(scope="module")
def params(project: Any, admin: Any) -> Any:
    """The parameter store, owned by admin (governance takes it over in the deploy and story tests)."""
    return admin.deploy(project.ParameterStore, admin, ORDER_TIMEOUT)


@pytest.fixture(scope="module")
def dle(project: Any, admin: Any, registry: Any, staking: Any) -> Any:
    contract = admin.deploy(project.DleRegistry, registry, staking, EPOCH_GRACE)
    staking.grantRole(staking.SLASHER_ROLE(), contract, sender=admin)
    return contract


@pytest.fixture(scope="module")
def cash(project: Any, admin: Any, token: Any, oracle: Any, staking: Any, params: Any, dle: Any) -> Any:
    contract = admin.deploy(project.CoNETCash, token, oracle, staking, params, dle)
    token.grantRole(token.REISSUER_ROLE(), contract, sender=admin)
    return contract


@pytest.fixture(scope="module")
def archive_nodes(accounts: Any, admin: Any, treasury: Any, token: Any, staking: Any, registry: Any) -> list[Any]:
    """ARCHIVE_NODES fresh staked and registered archive nodes (token ids alternate between the two
    groups), with both groups' first epoch opened in the DLE registry by the `dle` fixture's users."""
    nodes = []
    for _ in range(ARCHIVE_NODES):
        account = accounts.generate_test_account()
        admin.transfer(account, "1 ether")
        token.transfer(account, MIN_STAKE[Role.ARCHIVE], sender=treasury)
        stake(staking, token, account, Role.ARCHIVE, MIN_STAKE[Role.ARCHIVE])
        registry.register(int(Role.ARCHIVE), public_key(account), ["https://archive.example"], (0, 0, 0, 0), "eu",
                          sender=account)
        nodes.append(account)
    return nodes


def group_of(registry: Any, nodes: Sequence[Any], group: int) -> list[Any]:
    """The archive nodes among `nodes` that are members of `group`."""
    return [node for node in nodes if registry.archiveGroupOf(registry.tokenOf(node, int(Role.ARCHIVE))) == group]


@pytest.fixture(scope="module")
def cbdc(accounts: Any, admin: Any, treasury: Any, token: Any, staking: Any, cash: Any) -> Any:
    """A fresh staked CBDC holding 1,000,000 CoNET beyond its stake, with an allowance to CoNETCash."""
    account = accounts.generate_test_account()
    admin.transfer(account, "10 ether")
    token.transfer(account, MIN_STAKE[Role.CBDC] + 1_000_000 * CONET, sender=treasury)
    stake(staking, token, account, Role.CBDC, MIN_STAKE[Role.CBDC])
    token.approve(cash, 2**256 - 1, sender=account)
    return account


def set_prices(oracle: Any, admin: Any, token: Any, *stablecoins: Any) -> None:
    """CoNET at $0.05, each stablecoin at $1.00."""
    oracle.setPrice(token, CONET_PRICE, sender=admin)
    for coin in stablecoins:
        oracle.setPrice(coin, DOLLAR, sender=admin)
