"""MockStablecoin: 6 decimals, open minting only on local chain ids."""

from __future__ import annotations

from typing import Any

import pytest
from web3 import Web3
from web3.exceptions import ContractCustomError

from offchain.artifacts import contract_artifact
from offchain.devnet.anvil import running_anvil


def test_six_decimals_and_open_mint_on_the_local_chain(stablecoin: Any, alice: Any, bob: Any, chain: Any) -> None:
    assert chain.chain_id == 1337
    assert stablecoin.decimals() == 6
    assert stablecoin.isLocalChain()
    stablecoin.mint(bob, 100 * 10**6, sender=alice)
    assert stablecoin.balanceOf(bob) == 100 * 10**6
    assert stablecoin.totalSupply() == 100 * 10**6
    assert (stablecoin.name(), stablecoin.symbol()) == ("Mock USD Coin", "mUSDC")


@pytest.mark.anvil
def test_minting_is_refused_on_a_public_chain_id() -> None:
    # A real node with Fuji's chain id: the contract itself must refuse, whoever deployed it.
    artifact = contract_artifact("MockStablecoin")
    with running_anvil(chain_id=43113) as node:
        w3 = Web3(Web3.HTTPProvider(node.uri))
        sender = w3.eth.accounts[0]
        factory = w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
        receipt = w3.eth.wait_for_transaction_receipt(
            factory.constructor("Mock USD Coin", "mUSDC").transact({"from": sender}), timeout=30
        )
        coin = w3.eth.contract(address=receipt.contractAddress, abi=artifact.abi)
        assert not coin.functions.isLocalChain().call()
        with pytest.raises(ContractCustomError) as refused:
            coin.functions.mint(sender, 1).call({"from": sender})
        selector = Web3.keccak(text="MintingDisabled(uint256)")[:4]
        assert refused.value.data == "0x" + (selector + (43113).to_bytes(32, "big")).hex()
