"""A CBDC at work: it stakes and registers once, then fills open CoNETCash orders as they come.

Until the DLE roulette (issue 4) draws the CBDC for each order, this service fills every open order
it sees and passes an empty selection record; the contract still admits only staked CBDCs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from offchain.chain.cash import ZERO_SELECTION, CashClient, CashError, Filled, format_amount
from offchain.chain.deployer import CONET, Role
from offchain.chain.nodes import ensure_registered

Log = Callable[[str], None]


@dataclass
class CbdcService:
    """One CBDC account filling orders of one deployment."""

    client: CashClient
    account: Any
    log: Log = print
    _cursor: int = 1
    failures: list[tuple[int, str]] = field(default_factory=list)

    def start(self, stake: int, endpoint: str, region: str) -> int:
        """Stakes, registers the CBDC node NFT and approves burns; returns the node's token id."""
        self.client.prepare_cbdc(self.account, stake, self.log)
        token_id, registered = ensure_registered(
            self.client.registry, self.account, Role.CBDC, [endpoint], (0, 0, 0, 0), region
        )
        self.log(f"{'registered' if registered else 'known as'} CBDC node #{token_id} ({self.account.address})")
        return token_id

    def fill_open_orders(self) -> list[Filled]:
        """One pass over the open orders: fills each, logging (not raising) the ones that fail."""
        filled: list[Filled] = []
        orders = self.client.open_orders(self._cursor)
        still_open: list[int] = []
        for order in orders:
            try:
                done = self.client.fill(self.account, order, ZERO_SELECTION)
            except CashError as exc:
                self.failures.append((order.id, str(exc)))
                self.log(f"order {order.id}: {exc}")
                still_open.append(order.id)
                continue
            decimals = int(self.client.params.stablecoinDecimals(order.stablecoin))
            self.log(
                f"filled   order {done.id}: {format_amount(done.amount, decimals)} of {order.stablecoin} "
                f"for {done.buyer}, burned {done.burned / CONET:,.4f} CONET"
            )
            filled.append(done)
        # Ids below the cursor are settled; an order that failed is retried on the next pass.
        self._cursor = min(still_open) if still_open else int(self.client.cash.nextId())
        return filled

    def run(self, interval: float, once: bool) -> int:
        """Fills orders every `interval` seconds (one pass with `once`); returns how many it filled."""
        total = 0
        while True:
            total += len(self.fill_open_orders())
            if once:
                return total
            time.sleep(interval)
