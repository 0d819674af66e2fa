"""The oDEX matching program: one market's order book, price-time priority, deterministic.

Every member of the order book's DLE group feeds its replica the same sequence of (verified order or
signed cancel, time) and must get the same fills and the same `state_digest()`; a batch of fills is
settled only when the whole group signed its `fill_digest`. So everything here is integer arithmetic
over ordered containers, with no clock, randomness or iteration over unordered sets.

Rules (docs/protocols.md, "oDEX orders"):
- An incoming order trades against the best opposite price first and, at one price, the oldest order
  first; every trade is at the resting (maker) order's price, so neither side trades outside its limit.
- A fill of `base` units at `price` moves quote_of(base, price) = floor(base * price / 10**18); a trade
  whose quote would be 0 is not made. Matching stops there (the taker's remainder is dust at that price)
  and that remainder is dropped: it cannot rest without crossing the book.
- An order rests with what is left only when that is worth at least one quote unit at its price; a
  resting order left with less after a fill is removed. So every resting order can always trade.
- Self-trade prevention: an incoming order meeting a resting order of the same trader cancels the
  resting one ("cancel oldest") and goes on matching.
- Expiry (valid while now <= expiry): an expired incoming order is refused, an expired resting order is
  dropped when matching meets it, and `expire(now)` sweeps them all.
- Replays: a (trader, nonce) pair is used once (so an order hash is placed once), and an authorization
  (trader, receipt chain, authorization nonce) backs one order only, so the book never draws more from
  it than `required_authorization` of that order. A BUY's quote spend stays within its authorization
  because every fill is at a maker price ≤ its limit (asserted on every fill).

Signature checks happen once, at admission (`SignedOrder.verify`, or `submit`), never inside `place`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from heapq import heappop, heappush
from itertools import pairwise

import sha3

from dle_vm.encoding import (
    EncodingError,
    RLPItem,
    decode_rlp,
    encode_rlp,
    fixed_bytes,
    list_of,
    rlp_list,
    uint,
    uint_bytes,
)
from dle_vm.hashing import keccak
from offchain.odex.order import (
    PRICE_SCALE,
    AuthorizationReused,
    ExpiredOrder,
    MalformedOrder,
    OrderDomain,
    ReplayedOrder,
    Side,
    SignedCancel,
    SignedOrder,
    UnknownOrder,
    VerifiedOrder,
    WrongMarket,
    WrongTrader,
)

__all__ = [
    "Book",
    "Fill",
    "Level",
    "OrderBook",
    "RestingOrder",
    "decode_fills",
    "encode_fills",
    "fill_digest",
]


@dataclass(frozen=True, slots=True)
class Fill:
    """One trade: `base` units from `seller` to `buyer` for `quote` units the other way, at the maker's
    `price`. Settlement draws `base` on the seller's `sell_receipt_chain` under `sell_authorization` and
    `quote` on the buyer's `buy_receipt_chain` under `buy_authorization`. `maker`/`taker` are order hashes;
    `sequence` numbers the book's fills from 0 with no gaps."""

    sequence: int
    market: bytes
    maker: bytes
    taker: bytes
    buyer: bytes
    seller: bytes
    price: int
    base: int
    quote: int
    buy_receipt_chain: bytes
    buy_authorization: int
    sell_receipt_chain: bytes
    sell_authorization: int

    def to_rlp(self) -> list[RLPItem]:
        return [
            uint_bytes(self.sequence),
            self.market,
            self.maker,
            self.taker,
            self.buyer,
            self.seller,
            uint_bytes(self.price),
            uint_bytes(self.base),
            uint_bytes(self.quote),
            self.buy_receipt_chain,
            uint_bytes(self.buy_authorization),
            self.sell_receipt_chain,
            uint_bytes(self.sell_authorization),
        ]

    @classmethod
    def from_rlp(cls, item: RLPItem) -> Fill:
        fields = rlp_list(item, 13, "fill")
        return cls(
            sequence=uint(fields[0], "sequence"),
            market=fixed_bytes(fields[1], 32, "market"),
            maker=fixed_bytes(fields[2], 32, "maker"),
            taker=fixed_bytes(fields[3], 32, "taker"),
            buyer=fixed_bytes(fields[4], 20, "buyer"),
            seller=fixed_bytes(fields[5], 20, "seller"),
            price=uint(fields[6], "price"),
            base=uint(fields[7], "base"),
            quote=uint(fields[8], "quote"),
            buy_receipt_chain=fixed_bytes(fields[9], 32, "buy receipt chain"),
            buy_authorization=uint(fields[10], "buy authorization"),
            sell_receipt_chain=fixed_bytes(fields[11], 32, "sell receipt chain"),
            sell_authorization=uint(fields[12], "sell authorization"),
        )


def encode_fills(fills: Sequence[Fill]) -> bytes:
    """The canonical encoding of a batch of fills: RLP list of the fills in sequence order."""
    return encode_rlp([fill.to_rlp() for fill in fills])


def decode_fills(data: bytes) -> list[Fill]:
    """The batch `data` canonically encodes, with consecutive sequence numbers; MalformedOrder (caused by
    the precise EncodingError) for anything else."""
    try:
        fills = [Fill.from_rlp(item) for item in list_of(decode_rlp(data), "fills")]
    except EncodingError as error:
        raise MalformedOrder(f"fills: {error}") from error
    for before, after in pairwise(fills):
        if after.sequence != before.sequence + 1:
            raise MalformedOrder(f"fills: sequence {after.sequence} follows {before.sequence}")
    return fills


def fill_digest(fills: Sequence[Fill]) -> bytes:
    """keccak256 of `encode_fills(fills)`: what the book's group signs for a batch."""
    return keccak(encode_fills(fills))


@dataclass(frozen=True)
class RestingOrder:
    """A resting order as replicas compare it: hash, side, price, base left and authorization left
    (base for a SELL, quote for a BUY)."""

    hash: bytes
    trader: bytes
    side: Side
    price: int
    remaining: int
    authorization_left: int


@dataclass(frozen=True)
class Level:
    """One price level: the base units resting there and how many orders."""

    price: int
    base: int
    orders: int


@dataclass(frozen=True)
class Book:
    """A snapshot of the book: bids best (highest) first, asks best (lowest) first."""

    market: bytes
    sequence: int
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]


class _Entry:
    """A resting order's mutable state (slots: matching touches these millions of times)."""

    __slots__ = ("authorization", "expiry", "hash", "live", "order", "price", "remaining", "spendable", "trader")

    def __init__(self, verified: VerifiedOrder, remaining: int, spendable: int) -> None:
        order = verified.order
        self.hash = verified.hash
        self.order = order
        self.trader = order.trader
        self.price = order.price
        self.expiry = order.expiry
        self.authorization = order.authorization
        self.remaining = remaining
        self.spendable = spendable
        self.live = True


class _Side:
    """One side of the book: a deque of entries per price (arrival order) and a heap of the prices,
    negated for bids so the heap's top is always the best price. Emptied levels leave the heap lazily."""

    __slots__ = ("heap", "levels", "sign")

    def __init__(self, sign: int) -> None:
        self.sign = sign
        self.levels: dict[int, deque[_Entry]] = {}
        self.heap: list[int] = []

    def prices(self) -> list[int]:
        """Prices with a live order, best first."""
        return sorted(
            (p for p, level in self.levels.items() if any(e.live for e in level)), key=lambda p: self.sign * p
        )

    def entries(self) -> Iterator[_Entry]:
        """Live entries in priority order."""
        for price in self.prices():
            yield from (e for e in self.levels[price] if e.live)


class OrderBook:
    """One market's book. `place` takes verified orders; `submit` verifies then places; `cancel` takes a
    signed cancel; `expire` sweeps expired resting orders. All of them are deterministic functions of
    the sequence of calls (and their `now`)."""

    def __init__(self, market: bytes, domain: OrderDomain) -> None:
        self.market = market
        self.domain = domain
        self.sequence = 0
        """The next fill's sequence number (= fills made so far)."""
        self._bids = _Side(-1)
        self._asks = _Side(1)
        self._index: dict[bytes, _Entry] = {}
        self._nonces: set[tuple[bytes, int]] = set()
        self._authorizations: set[tuple[bytes, bytes, int]] = set()
        # keccak256 streamed over every accepted order and cancel (a tag byte and the hash each), so
        # replicas that accepted different histories, even ones leaving the same resting orders, have
        # different state digests. Streamed because a fresh keccak per order costs more than matching.
        self._history = sha3.keccak_256()

    # -- admission ------------------------------------------------------------------------------------

    def submit(self, signed: SignedOrder, now: int) -> list[Fill]:
        """Verify `signed` (signature, market, numbers, expiry) and place it."""
        return self.place(signed.verify(self.domain, self.market, now), now)

    def place(self, verified: VerifiedOrder, now: int) -> list[Fill]:
        """Match a verified order against the book at time `now` and rest what is left; the fills in the
        order they happened. Refuses (changing nothing) an expired order, another market's, a replayed
        hash or (trader, nonce), and a reused authorization."""
        order = verified.order
        digest = verified.hash
        trader = order.trader
        if order.market != self.market:
            raise WrongMarket(f"order for market 0x{order.market.hex()}, this book is 0x{self.market.hex()}")
        if now > order.expiry:
            raise ExpiredOrder(f"order expired at {order.expiry}, now {now}")
        # One set covers both replays: an order placed again has the same (trader, nonce).
        nonce = (trader, order.nonce)
        if nonce in self._nonces:
            raise ReplayedOrder(
                f"order 0x{digest.hex()}: trader 0x{trader.hex()} already used nonce {order.nonce} "
                "(this order, or another one)"
            )
        authorization = (trader, order.receipt_chain, order.authorization)
        if authorization in self._authorizations:
            raise AuthorizationReused(
                f"authorization {order.authorization} on 0x{order.receipt_chain.hex()} already backs an order"
            )
        self._nonces.add(nonce)
        self._authorizations.add(authorization)
        self._history.update(b"\x00" + digest)

        limit = order.price
        remaining = order.amount
        buying = order.side is Side.BUY
        # required_authorization(order), inlined: this is the hot path.
        spendable = remaining if not buying else -(-remaining * limit // PRICE_SCALE)
        book = self._asks if buying else self._bids
        levels = book.levels
        heap = book.heap
        sign = book.sign
        index = self._index
        fills: list[Fill] = []
        dust = False
        while heap:
            price = sign * heap[0]
            if (price > limit) if buying else (price < limit):
                break
            level = levels[price]
            while level:
                maker = level[0]
                if not maker.live:
                    level.popleft()
                    continue
                if now > maker.expiry or maker.trader == trader:
                    # Expired, or the taker's own order: self-trade prevention cancels the resting one.
                    maker.live = False
                    del index[maker.hash]
                    level.popleft()
                    continue
                base = remaining if remaining < maker.remaining else maker.remaining
                quote = base * price // PRICE_SCALE
                if quote == 0:
                    # Resting orders are never dust, so the taker's remainder is: it cannot trade here
                    # and cannot rest across this order.
                    dust = True
                    break
                made = order
                other = maker.order
                if buying:
                    spendable -= quote
                    maker.spendable -= base
                    buyer, seller = made, other
                else:
                    spendable -= base
                    maker.spendable -= quote
                    buyer, seller = other, made
                assert spendable >= 0 and maker.spendable >= 0, "a fill above the order's authorization"
                fills.append(
                    Fill(
                        self.sequence,
                        self.market,
                        maker.hash,
                        digest,
                        buyer.trader,
                        seller.trader,
                        price,
                        base,
                        quote,
                        buyer.receipt_chain,
                        buyer.authorization,
                        seller.receipt_chain,
                        seller.authorization,
                    )
                )
                self.sequence += 1
                remaining -= base
                left = maker.remaining - base
                maker.remaining = left
                if left * price < PRICE_SCALE:
                    maker.live = False
                    del index[maker.hash]
                    level.popleft()
                if not remaining:
                    break
            if not level:
                del levels[price]
                heappop(heap)
            if dust or not remaining:
                break
        if remaining and not dust and remaining * limit >= PRICE_SCALE:
            entry = _Entry(verified, remaining, spendable)
            index[digest] = entry
            own = self._bids if buying else self._asks
            queue = own.levels.get(limit)
            if queue is None:
                own.levels[limit] = queue = deque()
                heappush(own.heap, own.sign * limit)
            queue.append(entry)
        return fills

    def cancel(self, signed: SignedCancel, now: int) -> None:
        """Take a resting order off the book on its trader's signed, unexpired cancel. UnknownOrder when
        the order is not resting, WrongTrader when someone else signed."""
        signer = signed.signer(self.domain, now)
        target = signed.cancel.order
        entry = self._index.get(target)
        if entry is None:
            raise UnknownOrder(f"order 0x{target.hex()} is not resting")
        if entry.trader != signer:
            raise WrongTrader(f"cancel signed by 0x{signer.hex()}, the order's trader is 0x{entry.trader.hex()}")
        entry.live = False
        del self._index[target]
        self._history.update(b"\x01" + target)

    def expired(self, now: int) -> bool:
        """Whether any resting order has expired at `now`: whether `expire(now)` would drop anything."""
        return any(now > entry.expiry for entry in self._index.values())

    def expire(self, now: int) -> list[bytes]:
        """Drop every resting order expired at `now`; their hashes in priority order (bids, then asks)."""
        dropped: list[bytes] = []
        for side in (self._bids, self._asks):
            for entry in list(side.entries()):
                if now > entry.expiry:
                    entry.live = False
                    del self._index[entry.hash]
                    dropped.append(entry.hash)
        return dropped

    # -- reading --------------------------------------------------------------------------------------

    def resting(self, order: bytes) -> RestingOrder | None:
        """The resting order with hash `order`, or None."""
        entry = self._index.get(order)
        return None if entry is None else self._snapshot(entry)

    def orders(self) -> list[RestingOrder]:
        """Every resting order in priority order: bids best first, then asks best first."""
        return [self._snapshot(e) for side in (self._bids, self._asks) for e in side.entries()]

    def depth(self, levels: int | None = None) -> Book:
        """The aggregated book, `levels` prices per side (all when None)."""

        def aggregate(side: _Side) -> tuple[Level, ...]:
            out = []
            for price in side.prices()[:levels]:
                live = [e for e in side.levels[price] if e.live]
                out.append(Level(price, sum(e.remaining for e in live), len(live)))
            return tuple(out)

        return Book(self.market, self.sequence, aggregate(self._bids), aggregate(self._asks))

    def state_digest(self) -> bytes:
        """keccak256 of RLP [market, sequence, history, [[hash, side, price, remaining, authorization
        left] of every resting order in priority order]]: equal on two replicas exactly when they made
        the same number of fills, accepted the same orders and cancels in the same order, and rest the
        same orders with the same amounts in the same priority."""
        resting: list[RLPItem] = [
            [o.hash, uint_bytes(o.side), uint_bytes(o.price), uint_bytes(o.remaining), uint_bytes(o.authorization_left)]
            for o in self.orders()
        ]
        history = self._history.copy().digest()
        return keccak(encode_rlp([self.market, uint_bytes(self.sequence), history, resting]))

    def __len__(self) -> int:
        return len(self._index)

    @staticmethod
    def _snapshot(entry: _Entry) -> RestingOrder:
        order = entry.order
        return RestingOrder(entry.hash, order.trader, order.side, entry.price, entry.remaining, entry.spendable)
