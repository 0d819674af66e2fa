"""oDEX orders and the matching program (offchain/odex/order.py, offchain/odex/book.py).

The properties run the book against a deliberately naive reference matcher written here from the rules
(a list scanned for the best price, then the oldest order), over random sequences of orders, cancels,
sweeps and clock steps, and check the rules on the fills themselves: no trade outside either limit,
price-time priority, conservation of base and quote, authorizations never exceeded, no self-trade, no
expired order traded, determinism of fills and state digests across replicas. Property tests place
`VerifiedOrder`s made directly (the book does no signature work); signing, verification, the wire
encoding and the attacks on them are tested separately with real signatures.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, replace
from random import Random
from typing import Any

import pytest
from coincurve import PrivateKey
from eth_account.messages import encode_typed_data
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dle_vm.encoding import (
    FieldCountError,
    FieldLengthError,
    IntegerError,
    MalformedRLPError,
    TrailingBytesError,
    encode_rlp,
    uint_bytes,
)
from dle_vm.engine import BlockContext
from dle_vm.hashing import keccak
from dle_vm.revm_engine import RevmEngine
from dle_vm.signature import address_of
from offchain.dle.note import NoteReader, NoteTerms, genesis_state, note_program
from offchain.odex.book import Fill, OrderBook, decode_fills, encode_fills, fill_digest
from offchain.odex.order import (
    PRICE_SCALE,
    AuthorizationReused,
    BadOrderSignature,
    Cancel,
    DustOrder,
    ExpiredOrder,
    MalformedOrder,
    Order,
    OrderDomain,
    ReplayedOrder,
    Side,
    SignedCancel,
    SignedOrder,
    UnknownOrder,
    VerifiedOrder,
    WrongMarket,
    WrongTrader,
    ZeroAmount,
    ZeroPrice,
    fee_of,
    fee_split,
    market_id,
    quote_of,
    required_authorization,
)

MAINCHAIN_ID = 43112
VAULT = keccak(b"odex test vault")[12:]
DOMAIN = OrderDomain(MAINCHAIN_ID, VAULT)
BASE = keccak(b"ETH-like")[12:]
QUOTE = bytes(20)  # native AVAX
MARKET = market_id(BASE, QUOTE)
T0 = 1_700_000_000
E = PRICE_SCALE


@dataclass(frozen=True)
class Key:
    name: str
    secret: bytes
    address: bytes

    @classmethod
    def of(cls, name: str) -> Key:
        secret = keccak(b"odex test key " + name.encode())
        return cls(name, secret, address_of(PrivateKey(secret).public_key))


ALICE, BOB, CAROL, DAVE, MALLORY = (Key.of(n) for n in ("alice", "bob", "carol", "dave", "mallory"))
TRADERS = [ALICE, BOB, CAROL, DAVE]


def receipt(key: Key, side: Side) -> bytes:
    """The trader's receipt chain an order of `side` draws on (base for SELL, quote for BUY)."""
    return keccak(b"receipt " + key.address + bytes([side]))


def order(
    key: Key, side: Side, price: int, amount: int, nonce: int, *, expiry: int = T0 + 3600, **change: Any
) -> Order:
    made = Order(MARKET, key.address, side, price, amount, receipt(key, side), nonce, nonce, expiry)
    return replace(made, **change)


def signed(key: Key, side: Side, price: int, amount: int, nonce: int, **kwargs: Any) -> SignedOrder:
    return order(key, side, price, amount, nonce, **kwargs).sign(key.secret, DOMAIN)


def unsigned(made: Order) -> VerifiedOrder:
    """A VerifiedOrder for property tests: the book trusts its admission and never looks at signatures."""
    return VerifiedOrder(made, bytes(65), made.hash(DOMAIN))


def new_book() -> OrderBook:
    return OrderBook(MARKET, DOMAIN)


# -- the reference matcher ----------------------------------------------------------------------------


@dataclass
class _Ref:
    hash: bytes
    order: Order
    arrival: int
    remaining: int
    spendable: int


@dataclass
class Reference:
    """The rules, naively: scan every resting order for the best (price, arrival) each time."""

    resting: list[_Ref] = field(default_factory=list)
    used: set[tuple[bytes, int]] = field(default_factory=set)
    authorizations: set[tuple[bytes, bytes, int]] = field(default_factory=set)
    sequence: int = 0
    arrivals: int = 0

    def place(self, verified: VerifiedOrder, now: int) -> list[Fill] | type[Exception]:
        o = verified.order
        if now > o.expiry:
            return ExpiredOrder
        if (o.trader, o.nonce) in self.used:
            return ReplayedOrder
        if (o.trader, o.receipt_chain, o.authorization) in self.authorizations:
            return AuthorizationReused
        self.used.add((o.trader, o.nonce))
        self.authorizations.add((o.trader, o.receipt_chain, o.authorization))
        buying = o.side is Side.BUY
        remaining, spendable = o.amount, required_authorization(o)
        fills: list[Fill] = []
        dust = False
        while remaining:
            crossing = [
                r
                for r in self.resting
                if r.order.side != o.side and (r.order.price <= o.price if buying else r.order.price >= o.price)
            ]
            if not crossing:
                break
            best = min(crossing, key=lambda r: ((r.order.price if buying else -r.order.price), r.arrival))
            if now > best.order.expiry or best.order.trader == o.trader:
                self.resting.remove(best)
                continue
            base = min(remaining, best.remaining)
            quote = base * best.order.price // E
            if quote == 0:
                dust = True
                break
            buy, sell = (o, best.order) if buying else (best.order, o)
            fills.append(
                Fill(
                    self.sequence,
                    MARKET,
                    best.hash,
                    verified.hash,
                    buy.trader,
                    sell.trader,
                    best.order.price,
                    base,
                    quote,
                    buy.receipt_chain,
                    buy.authorization,
                    sell.receipt_chain,
                    sell.authorization,
                )
            )
            self.sequence += 1
            remaining -= base
            spendable -= quote if buying else base
            best.remaining -= base
            best.spendable -= base if buying else quote
            if best.remaining * best.order.price < E:
                self.resting.remove(best)
        if remaining and not dust and remaining * o.price >= E:
            self.resting.append(_Ref(verified.hash, o, self.arrivals, remaining, spendable))
        self.arrivals += 1
        return fills

    def cancel(self, target: bytes) -> bool:
        for r in self.resting:
            if r.hash == target:
                self.resting.remove(r)
                return True
        return False

    def expire(self, now: int) -> None:
        self.resting = [r for r in self.resting if now <= r.order.expiry]

    def orders(self) -> list[tuple[bytes, int, int]]:
        def priority(r: _Ref) -> tuple[int, int, int]:
            side = r.order.side
            return (side, -r.order.price if side is Side.BUY else r.order.price, r.arrival)

        return [(r.hash, r.remaining, r.spendable) for r in sorted(self.resting, key=priority)]


# -- random flows -------------------------------------------------------------------------------------

# Prices on a coarse grid so levels collide; amounts from dust-prone to large. amount >= 10 with price
# >= 0.1 keeps every order worth at least one quote unit (what `verify` demands), while remainders
# after partial fills still reach the dust cases.
prices = st.integers(1, 12).map(lambda tick: tick * E // 10)
amounts = st.one_of(
    st.integers(10, 60).map(lambda n: n * E // 10),
    # Near-equal amounts leave remainders of a few units: the dust cases.
    st.tuples(st.integers(10, 12), st.integers(0, 9)).map(lambda t: t[0] * E // 10 + t[1]),
    st.integers(10, 10**19),
)
place_ops = st.tuples(
    st.just("place"), st.integers(0, 3), st.sampled_from(Side), prices, amounts, st.integers(0, 60), st.integers(0, 3)
)
cancel_ops = st.tuples(st.just("cancel"), st.integers(0, 100))
expire_ops = st.tuples(st.just("expire"))
replay_ops = st.tuples(st.just("replay"), st.integers(0, 100))


def random_flow(seed: int, length: int) -> list[tuple[Any, ...]]:
    """A busy flow drawn from a seeded generator: hypothesis's own lists lean towards simple values (one
    trader, one side), which rarely cross; these cross often and reach partial fills and dust."""
    rng = Random(seed)
    flow: list[tuple[Any, ...]] = []
    for _ in range(length):
        kind = rng.random()
        if kind < 0.8:
            tick = rng.randint(4, 8)
            amount = rng.choice([rng.randint(10, 30) * E // 10 + rng.randint(0, 9), rng.randint(10, 10**19)])
            flow.append(
                (
                    "place",
                    rng.randrange(4),
                    Side(rng.getrandbits(1)),
                    tick * E // 10,
                    amount,
                    rng.randint(0, 60),
                    rng.randint(0, 2),
                )
            )
        elif kind < 0.9:
            flow.append(("cancel", rng.randrange(100)))
        elif kind < 0.95:
            flow.append(("expire",))
        else:
            flow.append(("replay", rng.randrange(100)))
    return flow


flows = st.one_of(
    st.lists(
        st.one_of(place_ops, place_ops, place_ops, place_ops, place_ops, cancel_ops, expire_ops, replay_ops),
        min_size=8,
        max_size=60,
    ),
    st.builds(random_flow, st.integers(0, 2**32), st.integers(10, 80)),
)


@dataclass
class Run:
    """A flow played on the book (and the reference): every order placed, fills, and per-step checks."""

    book: OrderBook
    placed: list[VerifiedOrder] = field(default_factory=list)
    fills: list[Fill] = field(default_factory=list)
    per_taker: list[tuple[VerifiedOrder, int, list[Fill]]] = field(default_factory=list)
    digests: list[bytes] = field(default_factory=list)


def play(flow: list[tuple[Any, ...]], reference: Reference | None = None) -> Run:
    run = Run(new_book())
    book = run.book
    nonces = [0] * len(TRADERS)
    now = T0
    for op in flow:
        if op[0] == "place":
            _, who, side, price, amount, life, step = op
            now += step
            key = TRADERS[who]
            verified = unsigned(order(key, side, price, amount, nonces[who], expiry=now + life))
            nonces[who] += 1
            fills = book.place(verified, now)
            if reference is not None:
                assert reference.place(verified, now) == fills
            run.placed.append(verified)
            run.fills.extend(fills)
            run.per_taker.append((verified, now, fills))
        elif op[0] == "replay" and run.placed:
            again = run.placed[op[1] % len(run.placed)]
            with pytest.raises((ReplayedOrder, ExpiredOrder)):
                book.place(again, now)
        elif op[0] == "cancel" and run.placed:
            target = run.placed[op[1] % len(run.placed)]
            who = TRADERS.index(next(k for k in TRADERS if k.address == target.order.trader))
            cancel = Cancel(target.hash, now).sign(TRADERS[who].secret, DOMAIN)
            resting = book.resting(target.hash) is not None
            if resting:
                book.cancel(cancel, now)
            else:
                with pytest.raises(UnknownOrder):
                    book.cancel(cancel, now)
            if reference is not None:
                assert reference.cancel(target.hash) == resting
        elif op[0] == "expire":
            book.expire(now)
            if reference is not None:
                reference.expire(now)
        if reference is not None:
            assert [(o.hash, o.remaining, o.authorization_left) for o in book.orders()] == reference.orders()
        depth = book.depth()
        if depth.bids and depth.asks:
            assert depth.bids[0].price < depth.asks[0].price, "the book is crossed"
        run.digests.append(book.state_digest())
    return run


SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(flows)
def test_the_book_matches_the_reference_matcher(flow: list[tuple[Any, ...]]) -> None:
    play(flow, Reference())


@SETTINGS
@given(flows)
def test_trades_respect_both_limits_priority_and_conservation(flow: list[tuple[Any, ...]]) -> None:
    run = play(flow)
    by_hash = {v.hash: v.order for v in run.placed}
    arrival = {v.hash: i for i, v in enumerate(run.placed)}
    base_filled: dict[bytes, int] = defaultdict(int)
    quote_spent: dict[bytes, int] = defaultdict(int)
    assert [f.sequence for f in run.fills] == list(range(len(run.fills)))
    for taker, now, fills in run.per_taker:
        for f in fills:
            maker = by_hash[f.maker]
            buying = taker.order.side is Side.BUY
            buy, sell = (taker.order, maker) if buying else (maker, taker.order)
            buy_hash, sell_hash = (taker.hash, f.maker) if buying else (f.maker, taker.hash)
            assert f.taker == taker.hash and maker.side != taker.order.side
            # No trade outside both limits; the trade is at the maker's price.
            assert buy.price >= f.price >= sell.price and f.price == maker.price
            assert (f.buyer, f.seller) == (buy.trader, sell.trader) and f.buyer != f.seller
            assert (f.buy_receipt_chain, f.buy_authorization) == (buy.receipt_chain, buy.authorization)
            assert (f.sell_receipt_chain, f.sell_authorization) == (sell.receipt_chain, sell.authorization)
            # One amount of base each way; the quote is floored and never zero.
            assert f.base > 0 and f.quote == quote_of(f.base, f.price) > 0
            assert now <= maker.expiry and now <= taker.order.expiry
            base_filled[buy_hash] += f.base
            base_filled[sell_hash] += f.base
            quote_spent[buy_hash] += f.quote
        # Price-time priority within one incoming order: better prices first; at one price, older first.
        keys = [((f.price if taker.order.side is Side.BUY else -f.price), arrival[f.maker]) for f in fills]
        assert keys == sorted(keys) and len({f.maker for f in fills}) == len(fills)
    for h, filled in base_filled.items():
        o = by_hash[h]
        assert filled <= o.amount
        if o.side is Side.BUY:
            assert quote_spent[h] <= required_authorization(o)
        else:
            assert filled <= required_authorization(o)
    for resting in run.book.orders():
        o = by_hash[resting.hash]
        assert resting.remaining == o.amount - base_filled[resting.hash]
        assert resting.remaining * resting.price >= E, "a dust order rests"
        spent = quote_spent[resting.hash] if o.side is Side.BUY else base_filled[resting.hash]
        assert resting.authorization_left == required_authorization(o) - spent

    bought = sum(f.base for f in run.fills)
    assert bought == sum(base_filled[v.hash] for v in run.placed if v.order.side is Side.SELL)
    assert bought == sum(base_filled[v.hash] for v in run.placed if v.order.side is Side.BUY)


@SETTINGS
@given(flows)
def test_replicas_fed_the_same_sequence_agree(flow: list[tuple[Any, ...]]) -> None:
    one, two = play(flow), play(flow)
    assert one.fills == two.fills and one.digests == two.digests
    assert fill_digest(one.fills) == fill_digest(two.fills)
    assert decode_fills(encode_fills(one.fills)) == one.fills


def test_replicas_with_different_histories_have_different_digests() -> None:
    # Same resting orders at the end, different accepted histories.
    one, two = new_book(), new_book()
    resting = unsigned(order(ALICE, Side.SELL, 2 * E, 5 * E, 0))
    one.place(resting, T0)
    two.place(resting, T0)
    extra = unsigned(order(BOB, Side.BUY, E, 5 * E, 0))
    one.place(extra, T0)
    one.cancel(Cancel(extra.hash, T0).sign(BOB.secret, DOMAIN), T0)
    assert [o.hash for o in one.orders()] == [o.hash for o in two.orders()]
    assert one.state_digest() != two.state_digest()


# -- the rules one by one -----------------------------------------------------------------------------


def test_partial_fills_at_the_makers_price_better_prices_first() -> None:
    book = new_book()
    sells = [
        unsigned(order(ALICE, Side.SELL, 21 * E // 10, 2 * E, 0)),
        unsigned(order(BOB, Side.SELL, 2 * E, 3 * E, 0)),
        unsigned(order(CAROL, Side.SELL, 2 * E, 1 * E, 0)),
    ]
    for s in sells:
        assert book.place(s, T0) == []
    buy = unsigned(order(DAVE, Side.BUY, 22 * E // 10, 5 * E, 0))
    fills = book.place(buy, T0 + 1)
    # Bob (2.0, older) then Carol (2.0) then Alice (2.1), partially.
    assert [(f.maker, f.price, f.base, f.quote) for f in fills] == [
        (sells[1].hash, 2 * E, 3 * E, 6 * E),
        (sells[2].hash, 2 * E, 1 * E, 2 * E),
        (sells[0].hash, 21 * E // 10, 1 * E, 21 * E // 10),
    ]
    assert all(f.buyer == DAVE.address and f.taker == buy.hash for f in fills)
    left = book.resting(sells[0].hash)
    assert left is not None and left.remaining == E and left.authorization_left == E
    assert book.resting(buy.hash) is None
    # Dave's authorization: ceil(5 * 2.2) = 11 quote; he spent 10.1 at maker prices.
    assert required_authorization(buy.order) == 11 * E
    assert sum(f.quote for f in fills) == 101 * E // 10


def test_an_unfilled_remainder_rests_and_is_taken_later() -> None:
    book = new_book()
    buy = unsigned(order(ALICE, Side.BUY, 3 * E, 4 * E, 0))
    assert book.place(unsigned(order(BOB, Side.SELL, 3 * E, E, 0)), T0) == []
    (fill,) = book.place(buy, T0)
    assert fill.base == E and book.resting(buy.hash).remaining == 3 * E  # type: ignore[union-attr]
    assert book.depth().bids[0].price == 3 * E and book.depth().asks == ()
    (fill,) = book.place(unsigned(order(CAROL, Side.SELL, 2 * E, 10 * E, 0)), T0)
    assert (fill.maker, fill.price, fill.base, fill.sequence) == (buy.hash, 3 * E, 3 * E, 1)
    assert book.depth().asks[0].base == 7 * E


def test_a_dust_remainder_is_dropped_not_rested_across_the_book() -> None:
    book = new_book()
    book.place(unsigned(order(ALICE, Side.SELL, E // 10, 100, 0)), T0)  # worth 10 quote units
    taker = unsigned(order(BOB, Side.BUY, E // 10, 105, 0))
    (fill,) = book.place(taker, T0)
    assert (fill.base, fill.quote) == (100, 10)
    # The remaining 5 base units are worth 0.5 quote: not rested.
    assert len(book) == 0
    book.place(unsigned(order(CAROL, Side.SELL, E // 10, 200, 0)), T0)
    book.place(unsigned(order(ALICE, Side.BUY, E // 10, 195, 1)), T0)
    # Carol's 5 remaining are dust at her price: she is taken off the book.
    assert len(book) == 0


def test_self_trade_prevention_cancels_the_resting_order() -> None:
    book = new_book()
    own = unsigned(order(ALICE, Side.SELL, 2 * E, E, 0))
    other = unsigned(order(BOB, Side.SELL, 2 * E, E, 0))
    book.place(own, T0)
    book.place(other, T0)
    (fill,) = book.place(unsigned(order(ALICE, Side.BUY, 2 * E, 3 * E, 1)), T0)
    assert fill.maker == other.hash and fill.seller == BOB.address
    assert book.resting(own.hash) is None
    assert book.depth().bids[0].base == 2 * E


def test_expiry_refuses_drops_and_sweeps() -> None:
    book = new_book()
    with pytest.raises(ExpiredOrder):
        book.place(unsigned(order(ALICE, Side.SELL, E, E, 0, expiry=T0 - 1)), T0)
    short = unsigned(order(ALICE, Side.SELL, E, E, 1, expiry=T0 + 10))
    long = unsigned(order(BOB, Side.SELL, 2 * E, E, 0, expiry=T0 + 100))
    book.place(short, T0)
    book.place(long, T0)
    (fill,) = book.place(unsigned(order(CAROL, Side.BUY, 2 * E, E, 0)), T0 + 10)  # valid at its expiry
    assert fill.maker == short.hash
    book.place(unsigned(order(ALICE, Side.SELL, E, E, 2, expiry=T0 + 20)), T0 + 11)
    (fill,) = book.place(unsigned(order(DAVE, Side.BUY, 2 * E, E, 0)), T0 + 21)
    assert fill.maker == long.hash  # the expired cheaper order was dropped when met
    ask = unsigned(order(ALICE, Side.SELL, 3 * E, E, 3, expiry=T0 + 30))
    book.place(ask, T0 + 21)
    late = unsigned(order(BOB, Side.BUY, E, E, 1, expiry=T0 + 40))
    book.place(late, T0 + 21)
    assert len(book.expire(T0 + 30)) == 0
    assert book.expire(T0 + 31) == [ask.hash]
    assert [o.hash for o in book.orders()] == [late.hash]


def test_cancel_by_the_trader_only() -> None:
    book = new_book()
    mine = signed(ALICE, Side.SELL, 2 * E, E, 0)
    verified = mine.verify(DOMAIN, MARKET, T0)
    book.place(verified, T0)
    with pytest.raises(WrongTrader):
        book.cancel(Cancel(verified.hash, T0 + 5).sign(MALLORY.secret, DOMAIN), T0)
    with pytest.raises(ExpiredOrder):
        book.cancel(Cancel(verified.hash, T0 - 1).sign(ALICE.secret, DOMAIN), T0)
    with pytest.raises(UnknownOrder):
        book.cancel(Cancel(keccak(b"nothing"), T0).sign(ALICE.secret, DOMAIN), T0)
    assert book.resting(verified.hash) is not None
    cancel = Cancel(verified.hash, T0 + 5).sign(ALICE.secret, DOMAIN)
    assert SignedCancel.decode(cancel.encode()) == cancel
    book.cancel(cancel, T0)
    assert len(book) == 0 and book.place(unsigned(order(BOB, Side.BUY, 2 * E, E, 0)), T0) == []
    with pytest.raises(UnknownOrder):
        book.cancel(cancel, T0)
    # A cancelled order cannot come back.
    with pytest.raises(ReplayedOrder):
        book.place(verified, T0)


# -- fees -----------------------------------------------------------------------------------------------

FEE_RATES = (1, 5, 30, 1_000)


@pytest.fixture(scope="module")
def ledgers() -> dict[int, Any]:
    """One receipt chain per fee rate, opened by NoteLedger's genesis on the revm engine."""
    program = note_program()
    engine = RevmEngine()
    reader = NoteReader(engine, program)
    states = {}
    for bps in FEE_RATES:
        terms = NoteTerms(
            note=bps,
            mainchain_id=MAINCHAIN_ID,
            cash=VAULT,
            value=10**18,
            holder=ALICE.address,
            cbdc=BOB.address,
            witnesses=tuple(keccak(b"w%d" % i)[12:] for i in range(5)),
            validators_pool=CAROL.address,
            transfer_fee_bps=bps,
        )
        state, (receipt,) = engine.apply(
            genesis_state(program), [terms.initialize(BOB.secret, program)], BlockContext(terms.chain, 0, T0)
        )
        assert receipt.success
        states[bps] = (reader, state, terms.chain)
    return states


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(FEE_RATES), st.one_of(st.integers(0, 10**6), st.integers(0, 2**200)))
def test_fees_equal_the_note_ledgers(ledgers: dict[int, Any], bps: int, amount: int) -> None:
    reader, state, chain = ledgers[bps]
    fee = fee_of(amount, bps)
    assert reader.view(state, chain, "feeOf", amount) == (fee,)
    assert reader.view(state, chain, "feeSplit", fee) == fee_split(fee)
    cbdc, witness, validators = fee_split(fee)
    assert cbdc + 5 * witness + validators == fee
    assert (fee == 0) == (amount == 0) and fee * 10_000 >= amount * bps


def test_the_odex_fee_of_one_basis_point() -> None:
    assert [fee_of(a, 1) for a in (0, 1, 9_999, 10_000, 10_001, 10**18)] == [0, 1, 1, 1, 2, 10**14]
    assert fee_split(100) == (30, 10, 20) and fee_split(7) == (6, 0, 1)


# -- signatures, domains and the attacks on them --------------------------------------------------------


def test_the_order_digest_is_standard_eip712() -> None:
    made = order(ALICE, Side.BUY, 123 * E, 4 * E, 9)
    typed = encode_typed_data(
        full_message={
            "types": {
                "EIP712Domain": [
                    {"name": "name", "type": "string"},
                    {"name": "version", "type": "string"},
                    {"name": "chainId", "type": "uint256"},
                    {"name": "verifyingContract", "type": "address"},
                ],
                "Order": [
                    {"name": "market", "type": "bytes32"},
                    {"name": "trader", "type": "address"},
                    {"name": "side", "type": "uint8"},
                    {"name": "price", "type": "uint256"},
                    {"name": "amount", "type": "uint256"},
                    {"name": "receiptChain", "type": "bytes32"},
                    {"name": "authorization", "type": "uint256"},
                    {"name": "nonce", "type": "uint256"},
                    {"name": "expiry", "type": "uint256"},
                ],
            },
            "primaryType": "Order",
            "domain": {
                "name": "CoNET oDEX Order",
                "version": "1",
                "chainId": MAINCHAIN_ID,
                "verifyingContract": "0x" + VAULT.hex(),
            },
            "message": {
                "market": made.market,
                "trader": "0x" + made.trader.hex(),
                "side": int(made.side),
                "price": made.price,
                "amount": made.amount,
                "receiptChain": made.receipt_chain,
                "authorization": made.authorization,
                "nonce": made.nonce,
                "expiry": made.expiry,
            },
        }
    )
    assert made.hash(DOMAIN) == keccak(b"\x19" + typed.version + typed.header + typed.body)


def test_verify_names_the_broken_rule() -> None:
    good = signed(ALICE, Side.SELL, 2 * E, E, 0)
    assert good.verify(DOMAIN, MARKET, T0).hash == good.order.hash(DOMAIN)
    with pytest.raises(WrongMarket):
        good.verify(DOMAIN, market_id(QUOTE, BASE), T0)
    with pytest.raises(ExpiredOrder):
        good.verify(DOMAIN, MARKET, T0 + 3601)
    with pytest.raises(ZeroAmount):
        signed(ALICE, Side.SELL, E, 0, 1).verify(DOMAIN, MARKET, T0)
    with pytest.raises(ZeroPrice):
        signed(ALICE, Side.SELL, 0, E, 1).verify(DOMAIN, MARKET, T0)
    with pytest.raises(DustOrder):
        signed(ALICE, Side.SELL, E // 10, 9, 1).verify(DOMAIN, MARKET, T0)
    with pytest.raises(BadOrderSignature):
        SignedOrder(good.order, good.signature[:64] + b"\x1d").verify(DOMAIN, MARKET, T0)
    with pytest.raises(BadOrderSignature):
        SignedOrder(good.order, bytes(65)[:64] + b"\x1b").verify(DOMAIN, MARKET, T0)


@pytest.mark.parametrize(
    "change",
    [{"price": 3 * E}, {"amount": 2 * E}, {"side": Side.BUY}, {"receipt_chain": bytes(32)}, {"expiry": T0 + 7200}],
)
def test_an_order_changed_after_signing_is_refused(change: dict[str, Any]) -> None:
    good = signed(ALICE, Side.SELL, 2 * E, E, 0)
    tampered = SignedOrder(replace(good.order, **change), good.signature)
    with pytest.raises(WrongTrader):
        tampered.verify(DOMAIN, MARKET, T0)


def test_an_order_signed_for_another_vault_or_mainchain_is_refused() -> None:
    for domain in (OrderDomain(MAINCHAIN_ID, bytes(20)), OrderDomain(1, VAULT)):
        elsewhere = order(ALICE, Side.SELL, 2 * E, E, 0).sign(ALICE.secret, domain)
        with pytest.raises(WrongTrader):
            elsewhere.verify(DOMAIN, MARKET, T0)


def test_a_copied_order_cannot_draw_on_the_victims_authorization() -> None:
    """Mallory copies Alice's order. Signed by Mallory with Alice as trader it is refused; with Mallory as
    trader it is Mallory's own order: its fills name Mallory as the seller, so settlement deducts from
    Mallory on the named receipt chain under Mallory's authorization number — which the receipt chain
    refuses unless Mallory holds that receipt and signed that authorization. The book's replay and
    authorization bookkeeping is per trader, so the copy does not block or consume Alice's own order."""
    book = new_book()
    victim = signed(ALICE, Side.SELL, 2 * E, E, 0)
    forged = SignedOrder(victim.order, victim.order.sign(MALLORY.secret, DOMAIN).signature)
    with pytest.raises(WrongTrader):
        book.submit(forged, T0)
    copy = replace(victim.order, trader=MALLORY.address).sign(MALLORY.secret, DOMAIN)
    book.submit(copy, T0)
    book.submit(victim, T0)
    fills = book.submit(signed(BOB, Side.BUY, 2 * E, 2 * E, 0), T0)
    assert [f.seller for f in fills] == [MALLORY.address, ALICE.address]
    assert all(f.sell_receipt_chain == receipt(ALICE, Side.SELL) for f in fills)
    assert [f.base for f in fills] == [E, E]  # each draws only its own signer's authorization


def test_replays_are_refused() -> None:
    book = new_book()
    first = signed(ALICE, Side.SELL, 2 * E, E, 0)
    book.submit(first, T0)
    with pytest.raises(ReplayedOrder):
        book.submit(first, T0)
    with pytest.raises(ReplayedOrder):
        book.submit(signed(ALICE, Side.SELL, 3 * E, E, 0, authorization=7), T0)  # nonce 0 again
    with pytest.raises(AuthorizationReused):
        book.submit(signed(ALICE, Side.SELL, 3 * E, E, 1, authorization=0), T0)
    book.submit(signed(BOB, Side.BUY, 2 * E, E, 0), T0)  # fills `first` completely
    with pytest.raises(ReplayedOrder):
        book.submit(first, T0)
    book.submit(signed(ALICE, Side.SELL, 3 * E, E, 1), T0)  # a fresh nonce and authorization


# -- the wire encoding ------------------------------------------------------------------------------------

GOOD = signed(ALICE, Side.BUY, 2 * E, 3 * E, 5)


def _fields() -> list[Any]:
    return [GOOD.order.to_rlp(), GOOD.signature]


def _with(index: int, value: bytes) -> bytes:
    fields = _fields()
    fields[0][index] = value
    return encode_rlp(fields)


@pytest.mark.parametrize(
    ("data", "cause"),
    [
        (GOOD.encode()[:-1], MalformedRLPError),
        (GOOD.encode() + b"\x00", TrailingBytesError),
        (encode_rlp([GOOD.order.to_rlp()]), FieldCountError),
        (encode_rlp([GOOD.order.to_rlp()[:8], GOOD.signature]), FieldCountError),
        (encode_rlp([GOOD.order.to_rlp(), GOOD.signature[:64]]), FieldLengthError),
        (_with(1, GOOD.order.trader[1:]), FieldLengthError),
        (_with(0, GOOD.order.market + b"\x00"), FieldLengthError),
        (_with(3, b"\x00" + uint_bytes(2 * E)), IntegerError),
        (_with(4, b"\x01" * 33), IntegerError),
    ],
)
def test_malformed_encodings_are_refused_with_the_reason(data: bytes, cause: type[Exception]) -> None:
    with pytest.raises(MalformedOrder) as refused:
        SignedOrder.decode(data)
    assert isinstance(refused.value.__cause__, cause)


def test_an_unknown_side_is_refused() -> None:
    with pytest.raises(MalformedOrder, match="side"):
        SignedOrder.decode(_with(2, b"\x02"))
    with pytest.raises(MalformedOrder, match="side"):
        Order(MARKET, ALICE.address, 2, E, E, bytes(32), 0, 0, 0)  # type: ignore[arg-type]


def test_the_encoding_round_trips() -> None:
    assert SignedOrder.decode(GOOD.encode()) == GOOD
    assert SignedOrder.decode(GOOD.encode()).verify(DOMAIN, MARKET, T0).hash == GOOD.order.hash(DOMAIN)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_the_decoder_refuses_or_round_trips_random_bytes(data: bytes) -> None:
    try:
        decoded = SignedOrder.decode(data)
    except MalformedOrder:
        return
    assert decoded.encode() == data


@settings(max_examples=500, deadline=None)
@given(st.integers(0, len(GOOD.encode()) - 1), st.integers(1, 255), st.booleans())
def test_the_decoder_refuses_or_round_trips_mutations(position: int, xor: int, cut: bool) -> None:
    data = bytearray(GOOD.encode())
    data[position] ^= xor
    mutated = bytes(data[:position] if cut else data)
    try:
        decoded = SignedOrder.decode(mutated)
    except MalformedOrder:
        return
    assert decoded.encode() == mutated and decoded != GOOD


def test_a_fill_batch_decodes_strictly() -> None:
    book = new_book()
    book.place(unsigned(order(ALICE, Side.SELL, 2 * E, E, 0)), T0)
    book.place(unsigned(order(BOB, Side.SELL, 2 * E, E, 0)), T0)
    fills = book.place(unsigned(order(CAROL, Side.BUY, 2 * E, 2 * E, 0)), T0)
    assert decode_fills(encode_fills(fills)) == fills and len(fill_digest(fills)) == 32
    with pytest.raises(MalformedOrder, match="sequence"):
        decode_fills(encode_fills(fills[::-1]))
    with pytest.raises(MalformedOrder):
        decode_fills(encode_fills(fills)[:-1])
