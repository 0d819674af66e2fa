"""oDEX orders: the EIP-712 `Order` a trader signs, its `Cancel`, their wire encoding and the arithmetic
of prices, authorizations and fees.

An order is signed in the domain name "CoNET oDEX Order", version "1", chainId = the mainchain id,
verifyingContract = the OdexVault; its hash is the EIP-712 digest, so one hash names one signed intent on
one mainchain's vault. `SignedOrder.verify` is the only place a signature is checked: the order book
(offchain/odex/book.py) is handed `VerifiedOrder`s, so matching never repeats signature work.

What verification proves is narrow on purpose: the `trader` field is the signer, the order is for this
book's market, its numbers are usable and it has not expired. Whether the trader really holds the
receipt named by `receipt_chain` and signed the `Authorize` numbered `authorization` naming the book as
payee is the receipt chain's to check at settlement (NoteLedger's `deductTo` refuses a deduction the
holder never authorized), so a copied order re-signed by another key can only ever draw on that other
key's own receipts.

Prices are integers: `price` quote units per `PRICE_SCALE` (10**18) base units; a fill of `base` units at
`price` moves `quote_of(base, price)` = floor(base * price / 10**18) quote units. A BUY's authorization must
cover `ceil(amount * price / 10**18)`, which bounds every sum of floored fills at prices ≤ its limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from functools import cached_property

from dle_vm.encoding import (
    EncodingError,
    RLPItem,
    check_length,
    check_uint,
    decode_rlp,
    encode_rlp,
    fixed_bytes,
    rlp_list,
    uint,
    uint_bytes,
)
from dle_vm.hashing import keccak
from dle_vm.signature import SIGNATURE_SIZE
from dle_vm.signature import BadSignature as _BadSignature
from dle_vm.signature import recover as _recover
from dle_vm.signature import sign as _sign

__all__ = [
    "BPS",
    "CANCEL_TYPE",
    "DOMAIN_NAME",
    "DOMAIN_VERSION",
    "ORDER_TYPE",
    "PRICE_SCALE",
    "AuthorizationReused",
    "BadOrderSignature",
    "Cancel",
    "DustOrder",
    "ExpiredOrder",
    "MalformedOrder",
    "Order",
    "OrderDomain",
    "OrderError",
    "ReplayedOrder",
    "Side",
    "SignedCancel",
    "SignedOrder",
    "UnknownOrder",
    "VerifiedOrder",
    "WrongMarket",
    "WrongTrader",
    "ZeroAmount",
    "ZeroPrice",
    "fee_of",
    "fee_split",
    "market_id",
    "quote_of",
    "required_authorization",
]

PRICE_SCALE = 10**18
"""`price` is quote units per this many base units."""

BPS = 10_000
"""Fee rates are in basis points of this (NoteLedger's `_BPS`)."""

_WITNESSES = 5
_WITNESS_PERCENT = 10
_VALIDATORS_PERCENT = 20

DOMAIN_NAME = b"CoNET oDEX Order"
DOMAIN_VERSION = b"1"
_DOMAIN_TYPE = b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
ORDER_TYPE = (
    b"Order(bytes32 market,address trader,uint8 side,uint256 price,uint256 amount,bytes32 receiptChain,"
    b"uint256 authorization,uint256 nonce,uint256 expiry)"
)
CANCEL_TYPE = b"Cancel(bytes32 order,uint256 expiry)"
_ORDER_TYPEHASH = keccak(ORDER_TYPE)
_CANCEL_TYPEHASH = keccak(CANCEL_TYPE)
_MAX_UINT256 = 2**256 - 1


# -- errors --------------------------------------------------------------------------------------------


class OrderError(ValueError):
    """An order or cancel the book refuses; the subclass says why, the message gives the values."""


class MalformedOrder(OrderError):
    """Bytes that are not the canonical encoding of an order/cancel, or a field out of its range."""


class BadOrderSignature(OrderError):
    """A signature that is malformed, non-canonical, or from which no key recovers."""


class WrongTrader(OrderError):
    """The signature recovers to another address than the order's `trader` (or the cancelled order's)."""


class ExpiredOrder(OrderError):
    """The order or cancel is past its expiry (valid while now <= expiry, as NoteLedger's messages)."""


class WrongMarket(OrderError):
    """The order names another market than the book's."""


class ZeroAmount(OrderError):
    """An order for zero base units."""


class ZeroPrice(OrderError):
    """An order at price zero."""


class DustOrder(OrderError):
    """An order whose whole amount is worth less than one quote unit at its price: it could never fill."""


class ReplayedOrder(OrderError):
    """An order hash the book has already seen, or a (trader, nonce) pair already used."""


class AuthorizationReused(OrderError):
    """A second order drawing on an authorization an earlier order already drew on."""


class UnknownOrder(OrderError):
    """A cancel of an order that is not resting (never placed, filled, cancelled or expired)."""


# -- amounts -------------------------------------------------------------------------------------------


class Side(IntEnum):
    """BUY base with quote, or SELL base for quote (the EIP-712 `uint8 side`)."""

    BUY = 0
    SELL = 1


def market_id(base: bytes, quote: bytes) -> bytes:
    """keccak256(abi.encode(baseAsset, quoteAsset)); address(0) is native AVAX."""
    check_length(base, 20, "base asset")
    check_length(quote, 20, "quote asset")
    return keccak(bytes(12) + base + bytes(12) + quote)


def quote_of(base: int, price: int) -> int:
    """Quote units a fill of `base` units at `price` moves: floor(base * price / 10**18)."""
    return base * price // PRICE_SCALE


def required_authorization(order: Order) -> int:
    """The limit of the `Authorize` an order draws on: its base amount for a SELL, and for a BUY the
    quote of its whole amount at its own limit price rounded up, ceil(amount * price / 10**18), so the
    floored quotes of its fills at maker prices ≤ its limit never sum above it."""
    if order.side is Side.SELL:
        return order.amount
    return -(-order.amount * order.price // PRICE_SCALE)


def fee_of(amount: int, bps: int) -> int:
    """NoteLedger's `feeOf`: `amount * bps / 10_000` rounded up, and at least one unit on any non-zero
    amount (so no transfer is free by being small); zero on zero."""
    if amount == 0:
        return 0
    return max(-(-amount * bps // BPS), 1)


def fee_split(fee: int) -> tuple[int, int, int]:
    """NoteLedger's `feeSplit`: (creator, each of the 5 witnesses, validators' pool); the shares are
    10% and 20% rounded down and the creator gets 30% plus every remainder, so they sum to `fee` exactly."""
    each_witness = fee * _WITNESS_PERCENT // 100
    validators = fee * _VALIDATORS_PERCENT // 100
    return fee - _WITNESSES * each_witness - validators, each_witness, validators


# -- EIP-712 -------------------------------------------------------------------------------------------


def _word(value: int) -> bytes:
    return value.to_bytes(32, "big")


@dataclass(frozen=True)
class OrderDomain:
    """The EIP-712 domain of orders and cancels: one mainchain, one vault."""

    mainchain_id: int
    vault: bytes

    def __post_init__(self) -> None:
        check_uint(self.mainchain_id, "mainchain id")
        check_length(self.vault, 20, "vault")

    @cached_property
    def separator(self) -> bytes:
        return keccak(
            keccak(_DOMAIN_TYPE)
            + keccak(DOMAIN_NAME)
            + keccak(DOMAIN_VERSION)
            + _word(self.mainchain_id)
            + bytes(12)
            + self.vault
        )

    def digest(self, struct_hash: bytes) -> bytes:
        return keccak(b"\x19\x01" + self.separator + struct_hash)


# -- orders --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Order:
    """EIP-712 `Order(bytes32 market,address trader,uint8 side,uint256 price,uint256 amount,
    bytes32 receiptChain,uint256 authorization,uint256 nonce,uint256 expiry)`.

    `receipt_chain` is the receipt the order draws on (base asset for a SELL, quote asset for a BUY) and
    `authorization` the nonce of the trader's `Authorize` on it naming the book as payee, of at least
    `required_authorization(order)`. Constructing one checks only that each field fits its type."""

    market: bytes
    trader: bytes
    side: Side
    price: int
    amount: int
    receipt_chain: bytes
    authorization: int
    nonce: int
    expiry: int

    def __post_init__(self) -> None:
        try:
            check_length(self.market, 32, "market")
            check_length(self.trader, 20, "trader")
            check_length(self.receipt_chain, 32, "receipt chain")
            for name in ("price", "amount", "authorization", "nonce", "expiry"):
                check_uint(getattr(self, name), name)
        except EncodingError as error:
            raise MalformedOrder(str(error)) from error
        if not isinstance(self.side, Side):
            if isinstance(self.side, bool) or self.side not in (0, 1):
                raise MalformedOrder(f"side: expected 0 (BUY) or 1 (SELL), got {self.side!r}")
            object.__setattr__(self, "side", Side(self.side))

    def struct_hash(self) -> bytes:
        """hashStruct(order): abi.encode of static fields is their 32-byte words, concatenated."""
        return keccak(
            _ORDER_TYPEHASH
            + self.market
            + bytes(12)
            + self.trader
            + _word(self.side)
            + _word(self.price)
            + _word(self.amount)
            + self.receipt_chain
            + _word(self.authorization)
            + _word(self.nonce)
            + _word(self.expiry)
        )

    def hash(self, domain: OrderDomain) -> bytes:
        """The order hash: its EIP-712 digest in `domain` (what the trader signs)."""
        return domain.digest(self.struct_hash())

    def sign(self, secret: bytes, domain: OrderDomain) -> SignedOrder:
        return SignedOrder(self, _sign(secret, self.hash(domain)))

    def to_rlp(self) -> list[RLPItem]:
        return [
            self.market,
            self.trader,
            uint_bytes(self.side),
            uint_bytes(self.price),
            uint_bytes(self.amount),
            self.receipt_chain,
            uint_bytes(self.authorization),
            uint_bytes(self.nonce),
            uint_bytes(self.expiry),
        ]

    @classmethod
    def from_rlp(cls, item: RLPItem) -> Order:
        market, trader, side, price, amount, chain, authorization, nonce, expiry = rlp_list(item, 9, "order")
        return cls(
            market=fixed_bytes(market, 32, "market"),
            trader=fixed_bytes(trader, 20, "trader"),
            side=Side(_side(side)),
            price=uint(price, "price"),
            amount=uint(amount, "amount"),
            receipt_chain=fixed_bytes(chain, 32, "receipt chain"),
            authorization=uint(authorization, "authorization"),
            nonce=uint(nonce, "nonce"),
            expiry=uint(expiry, "expiry"),
        )


def _side(item: RLPItem) -> int:
    value = uint(item, "side", 255)
    if value not in (0, 1):
        raise MalformedOrder(f"side: expected 0 (BUY) or 1 (SELL), got {value}")
    return value


def _signature(item: RLPItem) -> bytes:
    return fixed_bytes(item, SIGNATURE_SIZE, "signature")


def _decode(data: bytes, what: str) -> RLPItem:
    try:
        return decode_rlp(data)
    except EncodingError as error:
        raise MalformedOrder(f"{what}: {error}") from error


@dataclass(frozen=True)
class SignedOrder:
    """An order with its 65-byte signature r ‖ s ‖ v; on the wire RLP [order fields, signature]."""

    order: Order
    signature: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.signature, bytes) or len(self.signature) != SIGNATURE_SIZE:
            raise MalformedOrder(f"signature: expected {SIGNATURE_SIZE} bytes")

    def encode(self) -> bytes:
        return encode_rlp([self.order.to_rlp(), self.signature])

    @classmethod
    def decode(cls, data: bytes) -> SignedOrder:
        """The signed order `data` canonically encodes; MalformedOrder (its cause the precise
        EncodingError) for anything else."""
        item = _decode(data, "signed order")
        try:
            order, signature = rlp_list(item, 2, "signed order")
            return cls(Order.from_rlp(order), _signature(signature))
        except EncodingError as error:
            raise MalformedOrder(str(error)) from error

    def signer(self, domain: OrderDomain) -> tuple[bytes, bytes]:
        """(order hash, the address that signed it); BadOrderSignature if none recovers."""
        digest = self.order.hash(domain)
        try:
            return digest, _recover(digest, self.signature)
        except _BadSignature as error:
            raise BadOrderSignature(str(error)) from error

    def verify(self, domain: OrderDomain, market: bytes, now: int) -> VerifiedOrder:
        """Admission: every check that needs no book state. The book adds replay and authorization-reuse
        checks when placing. Raises the OrderError subclass that names the first failed rule."""
        order = self.order
        if order.market != market:
            raise WrongMarket(f"order for market 0x{order.market.hex()}, this book is 0x{market.hex()}")
        if order.amount == 0:
            raise ZeroAmount("an order for 0 base units")
        if order.price == 0:
            raise ZeroPrice("an order at price 0")
        if order.amount * order.price < PRICE_SCALE:
            raise DustOrder(f"{order.amount} base units at {order.price} are worth less than 1 quote unit")
        if now > order.expiry:
            raise ExpiredOrder(f"order expired at {order.expiry}, now {now}")
        digest, signer = self.signer(domain)
        if signer != order.trader:
            raise WrongTrader(f"signed by 0x{signer.hex()}, the order's trader is 0x{order.trader.hex()}")
        return VerifiedOrder(order, self.signature, digest)


@dataclass(frozen=True, slots=True)
class VerifiedOrder:
    """An order whose signature, market, numbers and expiry were checked, with its hash: what
    `OrderBook.place` takes (so matching does no signature or hashing work)."""

    order: Order
    signature: bytes
    hash: bytes

    @property
    def signed(self) -> SignedOrder:
        return SignedOrder(self.order, self.signature)


# -- cancels -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cancel:
    """EIP-712 `Cancel(bytes32 order,uint256 expiry)`, signed by the order's trader. It takes the order
    off the book; revoking the order's authorization on its receipt chain is what makes a fill of it
    impossible anywhere."""

    order: bytes
    expiry: int

    def __post_init__(self) -> None:
        try:
            check_length(self.order, 32, "order")
            check_uint(self.expiry, "expiry")
        except EncodingError as error:
            raise MalformedOrder(str(error)) from error

    def hash(self, domain: OrderDomain) -> bytes:
        return domain.digest(keccak(_CANCEL_TYPEHASH + self.order + _word(self.expiry)))

    def sign(self, secret: bytes, domain: OrderDomain) -> SignedCancel:
        return SignedCancel(self, _sign(secret, self.hash(domain)))

    def to_rlp(self) -> list[RLPItem]:
        return [self.order, uint_bytes(self.expiry)]

    @classmethod
    def from_rlp(cls, item: RLPItem) -> Cancel:
        order, expiry = rlp_list(item, 2, "cancel")
        return cls(fixed_bytes(order, 32, "order"), uint(expiry, "expiry"))


@dataclass(frozen=True)
class SignedCancel:
    """A cancel with its signature; on the wire RLP [[order hash, expiry], signature]."""

    cancel: Cancel
    signature: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.signature, bytes) or len(self.signature) != SIGNATURE_SIZE:
            raise MalformedOrder(f"signature: expected {SIGNATURE_SIZE} bytes")

    def encode(self) -> bytes:
        return encode_rlp([self.cancel.to_rlp(), self.signature])

    @classmethod
    def decode(cls, data: bytes) -> SignedCancel:
        item = _decode(data, "signed cancel")
        try:
            cancel, signature = rlp_list(item, 2, "signed cancel")
            return cls(Cancel.from_rlp(cancel), _signature(signature))
        except EncodingError as error:
            raise MalformedOrder(str(error)) from error

    def signer(self, domain: OrderDomain, now: int) -> bytes:
        """The address that signed this cancel; ExpiredOrder or BadOrderSignature."""
        if now > self.cancel.expiry:
            raise ExpiredOrder(f"cancel expired at {self.cancel.expiry}, now {now}")
        try:
            return _recover(self.cancel.hash(domain), self.signature)
        except _BadSignature as error:
            raise BadOrderSignature(str(error)) from error
