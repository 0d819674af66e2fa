"""Deploys the CoNET contracts in dependency order and records them in the network's address book.

Re-running is safe: a contract the book lists is kept when the chain still holds exactly the code
recorded for it and every contract it depends on was kept too; anything else is deployed anew.
Parameters and roles are then brought to the configured values, touching only what differs. The
book is written after every deployment, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from eth_utils.crypto import keccak

from offchain.chain import addressbook
from offchain.chain.addressbook import AddressBook, Deployment
from offchain.toolchain import project_root

# Chain ids where the mock stablecoin is deployed and minting is open (MockStablecoin.isLocalChain).
LOCAL_CHAIN_IDS = frozenset({1337, 31337, 43112})
LOCAL_MOCKS = ("MockStablecoin", "MockToken")
"""Contracts deployed on local chains only: an address book of a public chain never lists them."""
NATIVE_ASSET = "0x" + "00" * 20
"""ParameterStore.NATIVE_ASSET: the native coin (AVAX) in the oDEX asset list."""

CONET = 10**18
USD = 10**8  # oracle prices have 8 decimals


class Role(IntEnum):
    """contracts/types/Role.sol, in the same order."""

    CBDC = 0
    ARCHIVE = 1
    WITNESS = 2
    VALIDATOR = 3
    SI_NODE = 4
    DCC_PROVIDER = 5


class DeployError(RuntimeError):
    """The deployment cannot go ahead as asked."""


@dataclass(frozen=True)
class DeployConfig:
    """What the deploy script sets up. Governance takes these over once it exists."""

    oracle_max_age: int = 24 * 3600
    unbonding_delay: int = 7 * 24 * 3600
    reporter_reward_bps: int = 1_000
    minimum_stakes: dict[Role, int] = field(
        default_factory=lambda: {
            Role.CBDC: 100_000 * CONET,
            Role.ARCHIVE: 50_000 * CONET,
            Role.WITNESS: 1_000 * CONET,
            Role.VALIDATOR: 1_000 * CONET,
            Role.SI_NODE: 5_000 * CONET,
            Role.DCC_PROVIDER: 5_000 * CONET,
        }
    )
    # Stake per chain served at once: a witness with 10,000 CoNET may witness 10 chains.
    capacity_units: dict[Role, int] = field(
        default_factory=lambda: {
            Role.CBDC: 1_000 * CONET,
            Role.ARCHIVE: 100 * CONET,
            Role.WITNESS: 1_000 * CONET,
            Role.VALIDATOR: 1_000 * CONET,
            Role.SI_NODE: 1_000 * CONET,
            Role.DCC_PROVIDER: 1_000 * CONET,
        }
    )
    # Starting prices on local chains only; public networks are priced by their operators or feeds.
    local_conet_price: int = 5 * USD // 100
    local_stablecoin_price: int = 1 * USD
    order_timeout: int = 24 * 3600
    governance: GovernanceConfig | None = None
    """None: PUBLIC_GOVERNANCE on public chains, LOCAL_GOVERNANCE on local ones."""


@dataclass(frozen=True)
class GovernanceConfig:
    """The governor's and timelock's numbers. Times are seconds (the token's clock is a timestamp)."""

    voting_delay: int
    voting_period: int
    timelock_delay: int
    proposal_threshold: int
    quorum_percent: int = 4


PUBLIC_GOVERNANCE = GovernanceConfig(
    voting_delay=24 * 3600,
    voting_period=7 * 24 * 3600,
    timelock_delay=2 * 24 * 3600,
    proposal_threshold=100_000 * CONET,
)
# Small on local chains so a whole proposal runs in a test or a demo (time is advanced, not waited).
LOCAL_GOVERNANCE = GovernanceConfig(voting_delay=1, voting_period=60, timelock_delay=30, proposal_threshold=0)
ZERO_ADDRESS = "0x" + "00" * 20


@dataclass
class Deployed:
    """The result of a deploy: the book and the live contract handles."""

    book: AddressBook
    contracts: dict[str, Any]
    deployed: list[str]
    """Names deployed by this run (the rest were confirmed and kept)."""


Log = Callable[[str], None]


def git_commit() -> str:
    """The commit the contracts were built from; `-dirty` when the work tree differs."""
    root = project_root()
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "contracts"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}-dirty" if dirty else head


def deploy(
    account: Any,
    network: str,
    *,
    fresh: bool = False,
    config: DeployConfig | None = None,
    log: Log = print,
) -> Deployed:
    """Deploys (or confirms) every contract on the connected network with `account` and writes the
    address book of `network` (`<ecosystem>:<network>`)."""
    from ape import chain, project

    config = config or DeployConfig()
    chain_id = chain.chain_id
    local = chain_id in LOCAL_CHAIN_IDS
    book = _starting_book(network, chain_id, fresh, log)

    run = _Run(account=account, book=book, project=project, chain=chain, log=log, commit=git_commit())
    token = run.ensure("CoNETToken", [], account.address, account.address)
    oracle = run.ensure("PriceOracle", [], account.address, config.oracle_max_age)
    staking = run.ensure(
        "Staking",
        ["CoNETToken"],
        token.address,
        account.address,
        account.address,
        config.unbonding_delay,
        config.reporter_reward_bps,
    )
    nodes = run.ensure("NodeRegistry", ["Staking"], staking.address)
    if local:
        stablecoin = run.ensure("MockStablecoin", [], "Mock USD Coin", "mUSDC")
        # The ETH-like asset the local oDEX trades against AVAX and the stablecoin.
        eth_like = run.ensure("MockToken", [], "Mock Ether", "mETH", 18)
    else:
        for mock in LOCAL_MOCKS:
            if mock in book.contracts:
                raise DeployError(f"the address book of chain {chain_id} lists a {mock}; it never belongs there")
    params = run.ensure("ParameterStore", [], account.address, config.order_timeout)
    dle = run.ensure(
        "DleRegistry", ["NodeRegistry", "Staking", "ParameterStore"], nodes.address, staking.address, params.address
    )
    cash = run.ensure(
        "CoNETCash",
        ["CoNETToken", "PriceOracle", "Staking", "ParameterStore", "DleRegistry"],
        token.address,
        oracle.address,
        staking.address,
        params.address,
        dle.address,
    )
    run.ensure("OdexVault", ["ParameterStore", "DleRegistry"], params.address, dle.address)
    governance = config.governance or (LOCAL_GOVERNANCE if local else PUBLIC_GOVERNANCE)
    timelock = run.ensure("CoNETTimelock", [], governance.timelock_delay, [], [ZERO_ADDRESS], account.address)
    governor = run.ensure(
        "CoNETGovernor",
        ["CoNETToken", "CoNETTimelock"],
        token.address,
        timelock.address,
        governance.voting_delay,
        governance.voting_period,
        governance.proposal_threshold,
        governance.quorum_percent,
    )

    # Parameters first, while the deployer still administers; governance owns them afterwards.
    for role in Role:
        _set_if_different(staking, "minimumStake", "setMinimumStake", role, config.minimum_stakes[role], account, log)
        _set_if_different(staking, "capacityUnit", "setCapacityUnit", role, config.capacity_units[role], account, log)
    if local:
        # Local chains keep a price setter for tests and the devnet; public ones price through governance.
        _grant(oracle, "PRICE_SETTER_ROLE", account.address, account, log)
        _price_if_unset(oracle, token.address, config.local_conet_price, account, log)
        _price_if_unset(oracle, stablecoin.address, config.local_stablecoin_price, account, log)
        if not params.isBackingStablecoin(stablecoin.address):
            _as_owner(params, account, "the stablecoin list").listStablecoin(stablecoin.address, sender=account)
            log(f"listed   {stablecoin.address} as a backing stablecoin")
        for asset in (NATIVE_ASSET, eth_like.address, stablecoin.address):
            if not params.isOdexAsset(asset):
                _as_owner(params, account, "the oDEX asset list").listOdexAsset(asset, sender=account)
                log(f"listed   {asset} as an oDEX asset")

    # Wiring: who may call whom.
    _grant(token, "REISSUER_ROLE", cash.address, account, log)
    _grant(staking, "SLASHER_ROLE", dle.address, account, log)
    _grant(oracle, "PRICE_SETTER_ROLE", timelock.address, account, log)
    _grant(timelock, "PROPOSER_ROLE", governor.address, account, log)
    _grant(timelock, "CANCELLER_ROLE", governor.address, account, log)

    # Hand-over: the timelock owns the parameter store and administers every role. On a public chain
    # the deployer then renounces its admin roles; a local chain keeps it as a second admin, so tests
    # and the devnet can re-run the deploy after changing a contract.
    for contract in (token, staking, oracle):
        _grant(contract, "DEFAULT_ADMIN_ROLE", timelock.address, account, log)
    if params.owner() != timelock.address:
        _as_owner(params, account, "the parameter store").transferOwnership(timelock.address, sender=account)
        log(f"handed   ParameterStore to the timelock {timelock.address}")
    if not local:
        for contract in (token, staking, oracle, timelock):
            role = contract.DEFAULT_ADMIN_ROLE()
            if contract.hasRole(role, account.address):
                contract.renounceRole(role, account.address, sender=account)
                log(f"renounced DEFAULT_ADMIN_ROLE on {contract.address}")

    addressbook.save(book)
    return Deployed(book=book, contracts=run.instances, deployed=run.deployed)


def _starting_book(network: str, chain_id: int, fresh: bool, log: Log) -> AddressBook:
    if fresh:
        return AddressBook(network=network, chain_id=chain_id)
    if not addressbook.book_path(network).exists():
        log(f"starting a new address book for {network}")
        return AddressBook(network=network, chain_id=chain_id)
    try:
        book = addressbook.load(network)
    except addressbook.AddressBookError as exc:
        # Never start over silently: on a public network that would redeploy everything.
        raise DeployError(f"{exc}; repair the book or use --fresh to start a new one") from exc
    if book.chain_id != chain_id:
        raise DeployError(
            f"the address book of {network} is for chain {book.chain_id}, but the node is chain {chain_id}; "
            "use --fresh to start a new book"
        )
    return book


@dataclass
class _Run:
    account: Any
    book: AddressBook
    project: Any
    chain: Any
    log: Log
    commit: str
    instances: dict[str, Any] = field(default_factory=dict)
    deployed: list[str] = field(default_factory=list)

    def ensure(self, name: str, depends_on: Sequence[str], *args: Any) -> Any:
        contract_type = self.project.get_contract(name)
        entry = self.book.contracts.get(name)
        dependencies_kept = not any(dep in self.deployed for dep in depends_on)
        if entry is not None and dependencies_kept and self._confirmed(entry):
            self.log(f"kept     {name:<16} {entry.address}")
            instance = contract_type.at(entry.address)
        else:
            instance = self.account.deploy(contract_type, *args)
            receipt = self.chain.provider.get_receipt(instance.txn_hash)
            self.book.contracts[name] = Deployment(
                address=instance.address,
                block=receipt.block_number,
                tx_hash=receipt.txn_hash,
                code_hash=self._code_hash(instance.address),
            )
            self.deployed.append(name)
            # The book names who deployed and from which commit; a run that only confirms keeps them.
            self.book.deployer = self.account.address
            self.book.commit = self.commit
            addressbook.save(self.book)
            self.log(f"deployed {name:<16} {instance.address} (block {receipt.block_number})")
        self.instances[name] = instance
        return instance

    def _code_hash(self, address: str) -> str:
        return "0x" + keccak(bytes(self.chain.provider.get_code(address))).hex()

    def _confirmed(self, entry: Deployment) -> bool:
        return self._code_hash(entry.address) == entry.code_hash


def _grant(contract: Any, role_name: str, grantee: str, account: Any, log: Log) -> None:
    role = getattr(contract, role_name)()
    if contract.hasRole(role, grantee):
        return
    if not contract.hasRole(contract.getRoleAdmin(role), account.address):
        raise DeployError(
            f"{grantee} needs {role_name} on {contract.address}, and only governance can grant it now: "
            "propose it with `ape run governance`"
        )
    contract.grantRole(role, grantee, sender=account)
    log(f"granted  {role_name} on {contract.address} to {grantee}")


def _as_owner(contract: Any, account: Any, what: str) -> Any:
    if contract.owner() != account.address:
        raise DeployError(f"{what} ({contract.address}) belongs to governance; change it with a proposal")
    return contract


def _set_if_different(contract: Any, getter: str, setter: str, role: Role, value: int, account: Any, log: Log) -> None:
    if getattr(contract, getter)(int(role)) == value:
        return
    if not contract.hasRole(contract.DEFAULT_ADMIN_ROLE(), account.address):
        raise DeployError(f"Staking.{setter}({role.name}) is governed by the timelock now; propose the change")
    getattr(contract, setter)(int(role), value, sender=account)
    log(f"set      Staking.{setter}({role.name}, {value})")


def _price_if_unset(oracle: Any, asset: str, price: int, account: Any, log: Log) -> None:
    if oracle.latestRoundData(asset)[0] == 0:
        oracle.setPrice(asset, price, sender=account)
        log(f"priced   {asset} at ${price / USD:.2f}")
