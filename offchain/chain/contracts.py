"""The deployed contracts of the connected network, as ape contract instances.

On a local chain (the embedded `avalanche:local:test` or the project's anvil) anything missing is
deployed first: the embedded chain lives only as long as its process, so every script run starts
from an empty chain. On a public network the address book must exist and match the chain.
"""

from __future__ import annotations

from typing import Any

from offchain.chain import addressbook
from offchain.chain.deployer import LOCAL_CHAIN_IDS, DeployError, Log, deploy


class ContractsError(RuntimeError):
    """The connected network has no usable deployment."""


def network_name() -> str:
    """`<ecosystem>:<network>` of the connected provider, the key of its address book."""
    from ape import networks

    network = networks.provider.network
    return f"{network.ecosystem.name}:{network.name}"


def is_local() -> bool:
    """Whether the connected chain is a local one (mock stablecoin, fast governance, time travel)."""
    from ape import chain

    return chain.chain_id in LOCAL_CHAIN_IDS


def connect(deployer: Any | None = None, log: Log | None = None) -> dict[str, Any]:
    """The contracts of the connected network by name. On a local chain, `deployer` (default: the
    first test account) deploys whatever the chain does not hold yet."""
    from ape import accounts, chain, project

    network = network_name()
    if is_local():
        try:
            return deploy(deployer or accounts.test_accounts[0], network, log=log or (lambda _: None)).contracts
        except DeployError as exc:
            raise ContractsError(str(exc)) from exc
    try:
        book = addressbook.load(network)
    except (FileNotFoundError, addressbook.AddressBookError) as exc:
        raise ContractsError(f"no usable address book for {network}: {exc}; run `ape run deploy` first") from exc
    if book.chain_id != chain.chain_id:
        raise ContractsError(f"the address book of {network} is for chain {book.chain_id}, not {chain.chain_id}")
    return {name: project.get_contract(name).at(entry.address) for name, entry in book.contracts.items()}


def advance_time(seconds: int) -> None:
    """Moves a local chain's clock forward by `seconds` and mines a block (governance on a devnet)."""
    from ape import chain

    if not is_local():
        raise ContractsError("time only moves by itself on a public network; wait instead")
    provider = chain.provider
    if provider.name == "test":
        chain.mine(1, timestamp=chain.pending_timestamp + seconds)
    else:  # anvil
        provider.make_request("evm_increaseTime", [seconds])
        provider.make_request("evm_mine", [])
