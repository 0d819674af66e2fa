"""A CBDC at work: it stakes and registers once, then fills the open CoNETCash orders it was drawn for.

`CoNETCash.fill` takes a fill only from the CBDC the order's archive group drew, on the group's
certificate of that draw. The service asks `draws` (an order → its `CertifiedDraw`, or None while the
group has none for it) and fills only the orders whose draw names its own account; another CBDC's
order is left to that CBDC. Without a draw source (`ape run cbdc` on a chain with no archive group
reachable) nothing is filled: each open order is reported as waiting for its draw. The devnet's CBDC
process (offchain/dle/service.py) gets its draws from the host archive node (`cbdc_draw`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from offchain.chain.cash import CashClient, CashError, CertifiedDraw, Filled, Order, format_amount
from offchain.chain.deployer import CONET, Role
from offchain.chain.nodes import ensure_registered

Log = Callable[[str], None]
DrawSource = Callable[[Order], CertifiedDraw | None]
"""An order → the archive group's certified draw of its CBDC, or None while there is none."""


@dataclass
class CbdcService:
    """One CBDC account filling orders of one deployment."""

    client: CashClient
    account: Any
    log: Log = print
    draws: DrawSource | None = None
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
                draw = self.draws(order) if self.draws is not None else None
                if draw is None:
                    self.log(f"order {order.id}: waits for its CBDC draw by the archive group")
                    still_open.append(order.id)
                    continue
                if draw.cbdc.lower() != self.account.address.lower():
                    continue  # drawn for another CBDC: that one fills it
                done = self.client.fill(self.account, order, draw)
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
