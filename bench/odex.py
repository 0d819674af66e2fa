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

`--e2e` measures the whole path on a devnet instead (`--devnet DIR` to use a running one; otherwise one is
started in a temporary directory and stopped after): `--e2e-traders` traders (half sellers with mETH
receipts, half buyers with AVAX receipts) deposit, sign one `Authorize` naming the book per order on their
receipt chains (batched per chain, not measured) and sign `--e2e-orders` orders around one price (not
measured); then every order is POSTed to the book's creator at once (64 in flight), each answered when its
batch is final with the signatures of the whole book group (creator, witness, validator over HTTP), and
every fill is settled by its two `deductTo` legs on the receipt chains. Reported: orders/s (all orders
final in the book) and fills settled/s (wall-clock from the first POST), the verification bound of the
same signed orders (one core), and the ratio.

    .venv/bin/python bench/odex.py --e2e [--e2e-orders 400] [--e2e-traders 8] [--devnet DIR]
"""

from __future__ import annotations

import argparse
import asyncio
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


# -- end to end on a devnet ----------------------------------------------------------------------------


E2E_MID = 60 * PRICE_SCALE  # 60 AVAX per mETH
E2E_TICK = PRICE_SCALE // 1000


@dataclass
class _Trader:
    secret: bytes
    address: bytes
    side: Side
    orders: list[tuple[int, int]]  # (price, amount)
    receipt: int = 0
    chain: bytes = b""
    group: int = 0


def _e2e_traders(count: int, orders: int, seed: int) -> list[_Trader]:
    """Half sellers, half buyers, prices within 0.5% of the mid: about half the orders cross."""
    rng = random.Random(seed)
    traders = []
    for i in range(count):
        secret = keccak(b"bench e2e trader %d" % i)
        traders.append(_Trader(secret, address_of(PrivateKey(secret).public_key), Side(i % 2), []))
    for i in range(orders):
        trader = traders[i % count]
        offset = rng.uniform(-0.005, 0.003) if trader.side is Side.BUY else rng.uniform(-0.003, 0.005)
        price = int(E2E_MID * (1 + offset)) // E2E_TICK * E2E_TICK
        trader.orders.append((price, rng.randint(1, 50) * PRICE_SCALE // 1000))
    return traders


async def _e2e(directory: Path, traders: list[_Trader], out: list[str]) -> dict[str, float]:
    import aiohttp

    from offchain.chain.odex import OdexVaultClient
    from offchain.chain.web3_contracts import Sender
    from offchain.devnet.dle import WALLET_FUNDER, DevnetClient, dev_account_key, send_eth
    from offchain.dle.note import NoteSigner
    from offchain.dle.wallet import NoteChain
    from offchain.odex.order import fee_of, required_authorization

    client = DevnetClient.open(directory)
    w3, contracts = client.w3, client.state.contracts
    base = bytes.fromhex(contracts["MockToken"][2:])
    market = market_id(base, bytes(20))
    assert client.domains.vault is not None
    domain = OrderDomain(client.state.chain_id, client.domains.vault)
    book = client.state.book()
    payee = bytes.fromhex(book.address[2:])
    token = client.contract("MockToken")
    expiry = int(time.time()) + 3600

    # Deposits: each trader one receipt, big enough for all its orders and their fees.
    setup = time.perf_counter()
    for trader in traders:
        who = "0x" + trader.address.hex()
        drafts = [Order(market, trader.address, trader.side, p, a, bytes(32), 0, 0, expiry) for p, a in trader.orders]
        need = sum(required_authorization(d) + fee_of(required_authorization(d), 1) for d in drafts)
        send_eth(
            w3, dev_account_key(WALLET_FUNDER), who, need + PRICE_SCALE if trader.side is Side.BUY else PRICE_SCALE
        )
        vault = OdexVaultClient(w3, contracts, trader.secret)
        if trader.side is Side.SELL:
            Sender(w3, trader.secret).transact(token.functions.mint(w3.to_checksum_address(who), need))
        (issued,) = vault.deposit(contracts["MockToken"] if trader.side is Side.SELL else "0x" + "00" * 20, need)
        trader.receipt, trader.chain = issued.receipt, issued.chain
    deadline = time.monotonic() + 120
    while not all(client.chain.is_registered(t.chain) for t in traders):
        if time.monotonic() > deadline:
            raise SystemExit("the receipt chains did not open within 120 s")
        await asyncio.sleep(0.2)
    for trader in traders:
        trader.group = client.chain.chain_record(trader.chain).group

    # One Authorize naming the book per order, submitted in blocks of up to 50 per chain; then the orders.
    signed: list[SignedOrder] = []
    async with client.transport() as transport:

        async def authorize(trader: _Trader) -> None:
            wallet = NoteChain.connect(
                transport, client.groups.group_of, client.domains, trader.receipt, trader.chain, trader.group
            )
            signer = NoteSigner(await wallet.signing_terms(), wallet.program)
            txs = []
            for nonce, (price, amount) in enumerate(trader.orders):
                draft = Order(market, trader.address, trader.side, price, amount, trader.chain, nonce, nonce, expiry)
                limit = required_authorization(draft)
                txs.append(signer.authorize(trader.secret, trader.address, payee, limit, nonce, expiry))
                signed.append(draft.sign(trader.secret, domain))
            for start in range(0, len(txs), 50):
                await wallet.client.submit(trader.chain, txs[start : start + 50])

        await asyncio.gather(*(authorize(t) for t in traders))
    signed.sort(key=lambda o: (o.order.trader, o.order.nonce))  # the chains authorized in any order
    random.Random(len(signed)).shuffle(signed)
    out.append(
        f"e2e setup: {len(traders)} traders deposited, {len(signed)} authorizations final and orders signed "
        f"in {time.perf_counter() - setup:.1f} s (not measured)"
    )

    # Measured: every order POSTed at once (64 in flight), then every fill settled.
    refused: list[str] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        gate = asyncio.Semaphore(64)

        async def post(order: SignedOrder) -> None:
            async with gate, session.post(f"{book.url}/odex/order", data=order.encode()) as response:
                if response.status != 200:
                    refused.append(await response.text())

        start = time.perf_counter()
        await asyncio.gather(*(post(o) for o in signed))
        admitted = time.perf_counter() - start
        while True:
            async with session.get(f"{book.url}/odex/trades") as response:
                trades = await response.json()
            if all(t["status"] != "pending" for t in trades):
                break
            if time.perf_counter() - start > 600:
                raise SystemExit("fills not settled within 600 s")
            await asyncio.sleep(0.05)
        settled_at = time.perf_counter() - start
        async with session.get(f"{book.url}/devnet/info") as response:
            info = await response.json()
    statuses = [t["status"] for t in trades]
    if refused:
        out.append(f"refused orders: {len(refused)}, e.g. {refused[0][:200]}")
    settled = statuses.count("settled")
    out.append(
        f"e2e flow: {len(signed)} orders in {info['batches']} final batches, {len(trades)} fills: {settled} settled, "
        f"{statuses.count('refused')} refused, {statuses.count('half')} half"
    )

    # The bound of the same run: verifying the same signed orders, one core.
    now = int(time.time())
    cpu = time.process_time()
    for order in signed:
        order.verify(domain, market, now)
    bound = len(signed) / (time.process_time() - cpu)
    return {
        "orders": len(signed) / admitted,
        "fills": settled / settled_at,
        "bound": bound,
        "admitted": admitted,
        "settled_at": settled_at,
    }


def end_to_end(args: argparse.Namespace) -> None:
    import tempfile

    from offchain.devnet import dle as devnet

    traders = _e2e_traders(args.e2e_traders, args.e2e_orders, args.seed)
    out: list[str] = []
    if args.devnet is not None:
        figures = asyncio.run(_e2e(Path(args.devnet), traders, out))
    else:
        with tempfile.TemporaryDirectory(prefix="odex-bench-") as scratch:
            started = time.perf_counter()
            with devnet.running_devnet(Path(scratch) / "devnet", log=lambda line: None):
                out.append(f"devnet up in {time.perf_counter() - started:.1f} s (not measured)")
                figures = asyncio.run(_e2e(Path(scratch) / "devnet", traders, out))
    print("\n".join(out))
    print()
    print(f"{'phase':<58} {'per second':>12}")
    orders, fills, bound = figures["orders"], figures["fills"], figures["bound"]
    print(f"{'(e) orders final in the book (admitted, sealed with 100%)':<58} {orders:>12,.1f}")
    print(f"{'(f) fills settled on both receipt chains':<58} {fills:>12,.1f}")
    print(f"{'(b) verification bound, SignedOrder.verify (one core)':<58} {bound:>12,.0f}")
    print(f"{'ratio (e)/(b)':<58} {orders / bound:>12.4f}")
    print(
        f"(all orders final after {figures['admitted']:.2f} s, all fills settled after {figures['settled_at']:.2f} s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=100_000)
    parser.add_argument("--traders", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--e2e", action="store_true", help="the end-to-end phase on a devnet instead")
    parser.add_argument("--e2e-orders", type=int, default=400)
    parser.add_argument("--e2e-traders", type=int, default=8)
    parser.add_argument("--devnet", help="a running devnet's directory (default: start one)")
    args = parser.parse_args()
    if args.e2e:
        end_to_end(args)
        return

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
