"""oDEX matching: orders matched per second in-process, against the signature-verification bound.

A realistic random flow on one market: `--traders` traders send limit orders around a mid price that
drifts slowly; buys are priced from 1% below to 0.5% above the mid and sells from 0.5% below to 1% above,
so about a third cross on arrival and the rest rest, with amounts from 0.01 to 5 base units. Every order
is signed in advance (not measured) and then:

- (b) verification: `SignedOrder.verify` of every order — the EIP-712 hash and the secp256k1 recovery
  through `dle_vm.signature` (coincurve) that admission costs, one core;
- (a) matching: every verified order through `OrderBook.place` (goal >= 100,000 orders/s), one core;

and the ratio (a)/(b): how many times faster matching is than admitting the same orders, i.e. how far
signature checking, not matching, bounds the book. Each phase is a function taking the prepared flow,
so the end-to-end phase through the DLE (settlement of the fills on receipt chains) can be added as
another one. Times are CPU seconds of this process (`time.process_time`), the best of `--rounds` runs
(a fresh book each), so other work on the machine does not count against either phase.

    .venv/bin/python bench/odex.py [--orders 100000] [--traders 1000]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from coincurve import PrivateKey  # noqa: E402

from dle_vm.hashing import keccak  # noqa: E402
from dle_vm.signature import address_of  # noqa: E402
from offchain.odex.book import Fill, OrderBook  # noqa: E402
from offchain.odex.order import (  # noqa: E402
    PRICE_SCALE,
    Order,
    OrderDomain,
    Side,
    SignedOrder,
    VerifiedOrder,
    market_id,
)

DOMAIN = OrderDomain(mainchain_id=43112, vault=keccak(b"bench vault")[12:])
MARKET = market_id(keccak(b"bench ETH-like")[12:], bytes(20))
MID = 2_000 * PRICE_SCALE  # 2,000 quote units per base unit
TICK = PRICE_SCALE // 100  # prices on a 0.01 grid
T0 = 1_700_000_000


@dataclass(frozen=True)
class Flow:
    """The prepared orders, each with the time it arrives."""

    signed: list[tuple[SignedOrder, int]]


def prepare(orders: int, traders: int, seed: int) -> Flow:
    rng = random.Random(seed)
    secrets = [keccak(b"bench trader %d" % i) for i in range(traders)]
    addresses = [address_of(PrivateKey(s).public_key) for s in secrets]
    nonces = [0] * traders
    mid = MID
    flow = []
    for i in range(orders):
        mid += rng.randint(-2, 2) * TICK
        t = rng.randrange(traders)
        side = Side(rng.getrandbits(1))
        offset = rng.uniform(-0.01, 0.005) if side is Side.BUY else rng.uniform(-0.005, 0.01)
        price = int(mid * (1 + offset)) // TICK * TICK
        amount = rng.randint(1, 500) * PRICE_SCALE // 100
        order = Order(
            market=MARKET,
            trader=addresses[t],
            side=side,
            price=price,
            amount=amount,
            receipt_chain=keccak(b"receipt %d %d" % (t, side)),
            authorization=nonces[t],
            nonce=nonces[t],
            expiry=T0 + 86_400,
        )
        nonces[t] += 1
        flow.append((order.sign(secrets[t], DOMAIN), T0 + i // 1000))
    return Flow(flow)


def verification(flow: Flow) -> tuple[float, list[tuple[VerifiedOrder, int]]]:
    """Seconds to verify every order of the flow, and the verified orders."""
    start = time.process_time()
    verified = [(signed.verify(DOMAIN, MARKET, now), now) for signed, now in flow.signed]
    return time.process_time() - start, verified


def matching(verified: list[tuple[VerifiedOrder, int]]) -> tuple[float, list[Fill], OrderBook]:
    """Seconds to place every verified order on a fresh book, the fills and the book."""
    book = OrderBook(MARKET, DOMAIN)
    place = book.place
    fills: list[Fill] = []
    extend = fills.extend
    start = time.process_time()
    for order, now in verified:
        extend(place(order, now))
    return time.process_time() - start, fills, book


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=100_000)
    parser.add_argument("--traders", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=6)
    args = parser.parse_args()

    start = time.perf_counter()
    flow = prepare(args.orders, args.traders, args.seed)
    print(
        f"prepared and signed {args.orders:,} orders of {args.traders:,} traders in {time.perf_counter() - start:.1f} s"
    )

    verify_seconds, verified = min((verification(flow) for _ in range(args.rounds)), key=lambda r: r[0])
    match_seconds, fills, book = min((matching(verified) for _ in range(args.rounds)), key=lambda r: r[0])
    matched = args.orders / match_seconds
    bound = args.orders / verify_seconds
    depth = book.depth()
    print(
        f"flow: {len(fills):,} fills ({len(fills) / args.orders:.2f} per order), "
        f"{len(book):,} orders resting at the end on {len(depth.bids)} bid and {len(depth.asks)} ask levels"
    )
    print()
    print(f"{'phase':<44} {'orders/s':>12} {'us/order':>9} {'goal':>18}")
    goal = ">= 100,000 " + ("met" if matched >= 100_000 else "MISSED")
    print(f"{'(a) matching, OrderBook.place (one core)':<44} {matched:>12,.0f} {1e6 / matched:>9.2f} {goal:>18}")
    print(f"{'(b) verification, SignedOrder.verify (one core)':<44} {bound:>12,.0f} {1e6 / bound:>9.2f} {'':>18}")
    print(f"{'ratio (a)/(b)':<44} {matched / bound:>12.1f}x")


if __name__ == "__main__":
    main()
