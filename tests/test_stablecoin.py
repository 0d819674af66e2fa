"""MockStablecoin: 6 decimals, open minting only on local chain ids."""

from __future__ import annotations

from typing import Any

import ape


def test_six_decimals_and_open_mint_on_the_local_chain(stablecoin: Any, alice: Any, bob: Any, chain: Any) -> None:
    assert chain.chain_id == 1337
    assert stablecoin.decimals() == 6
    assert stablecoin.isLocalChain()
    stablecoin.mint(bob, 100 * 10**6, sender=alice)
    assert stablecoin.balanceOf(bob) == 100 * 10**6
    assert stablecoin.totalSupply() == 100 * 10**6
    assert (stablecoin.name(), stablecoin.symbol()) == ("Mock USD Coin", "mUSDC")
