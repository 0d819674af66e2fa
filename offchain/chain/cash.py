"""CoNETCash from Python: buying notes, finding and filling orders, claiming a CBDC's earnings.

Every call is checked first against what the contracts would refuse, so a user reads "stablecoin not
listed" or "price stale" rather than a revert; a revert that still happens is translated the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from enum import IntEnum
from typing import Any

from offchain.chain.deployer import Role

MAX_UINT256 = 2**256 - 1


class CashError(RuntimeError):
    """A CoNETCash operation cannot go ahead; the message says why in the user's words."""


class Status(IntEnum):
    """CoNETCash.Status, in the same order."""

    NONE = 0
    ORDERED = 1
    LIVE = 2
    POOLED = 3


@dataclass(frozen=True)
class Order:
    """An open order waiting for a CBDC."""

    id: int
    buyer: str
    stablecoin: str
    amount: int
    placed_at: int


@dataclass(frozen=True)
class CertifiedDraw:
    """What `CoNETCash.fill` takes: the CBDC the order's archive group drew for order `order`, the
    Selection Chain record of that draw (`selection`), the group and its epoch, and the signatures of
    every member of that epoch over `cbdcDrawDigest` (sorted by signer), as `ArchiveNode.cbdc_draw`
    returns them. Only `cbdc` can fill with it."""

    order: int
    cbdc: str
    selection: bytes
    group: int
    epoch: int
    signatures: bytes

    def draw(self) -> tuple[int, str, bytes, int]:
        """CoNETCash.CbdcDraw as the ABI encodes it."""
        return (self.order, self.cbdc, self.selection, self.group)


@dataclass(frozen=True)
class Bought:
    """The outcome of a buy: a note assigned at once from the pool, or an order waiting for a CBDC."""

    id: int
    assigned: bool
    amount: int
    tx_hash: str


@dataclass(frozen=True)
class Filled:
    """An order filled: the note minted and the CoNET burned for it."""

    id: int
    buyer: str
    amount: int
    burned: int
    tx_hash: str


@dataclass(frozen=True)
class Claimed:
    """A CBDC's claim: its fees, the CoNET re-issued, and what the supply cap withheld."""

    fees: int
    reissued: int
    withheld: int


# Custom errors of the contracts, in words a user can act on.
_REASONS: dict[str, Callable[[dict[str, Any]], str]] = {
    "StablecoinNotListed": lambda a: f"stablecoin not listed: {a.get('stablecoin')} may not back notes",
    "InvalidAmount": lambda a: f"invalid amount {a.get('amount')}: must be above 0 and at most {a.get('cap')}",
    "StalePrice": lambda a: f"price stale: {a.get('asset')} was last updated at {a.get('updatedAt')}",
    "PriceNotSet": lambda a: f"price not set for {a.get('asset')}",
    "InvalidPrice": lambda a: f"invalid price for {a.get('asset')}",
    "NotStakedCbdc": lambda a: f"not a staked CBDC: {a.get('caller')} lacks the CBDC minimum stake",
    "NotDrawnCbdc": lambda a: f"order {a.get('id')} was drawn for CBDC {a.get('drawn')}, not {a.get('caller')}",
    "WrongDrawGroup": lambda a: (
        f"order {a.get('id')}'s CBDC is drawn by archive group {a.get('expected')}, not {a.get('given')}"
    ),
    "SignersNotGroup": lambda a: f"the draw is not certified by every member of group {a.get('group')}",
    "EpochEnded": lambda a: (
        f"the draw's epoch {a.get('epoch')} of group {a.get('group')} has ended: "
        f"ask the group's current epoch {a.get('current')} to certify it"
    ),
    "GroupTooSmall": lambda a: (
        f"group {a.get('group')} has {a.get('size')} archive nodes, "
        f"fewer than the {a.get('minimum')} a certificate needs"
    ),
    "OrderNotOpen": lambda a: f"order {a.get('id')} is not open (filled, cancelled or unknown)",
    "OrderNotExpired": lambda a: f"order {a.get('id')} may be cancelled from {a.get('deadline')} on",
    "NotBuyer": lambda a: f"only the buyer may cancel order {a.get('id')}",
    "TransferShortfall": lambda a: "the stablecoin took a fee on transfer; it cannot back notes",
    "NothingToClaim": lambda a: f"nothing to claim in {a.get('stablecoin')}",
    "ERC20InsufficientBalance": lambda a: f"balance too low: {a.get('balance')} < {a.get('needed')}",
    "ERC20InsufficientAllowance": lambda a: f"allowance too low: {a.get('allowance')} < {a.get('needed')}",
}


@contextmanager
def explained() -> Iterator[None]:
    """Turns a contract revert into a CashError with the reason in words."""
    from ape.exceptions import ContractLogicError

    try:
        yield
    except ContractLogicError as exc:
        name = type(exc).__name__
        inputs = dict(getattr(exc, "inputs", {}) or {})
        reason = _REASONS.get(name)
        raise CashError(reason(inputs) if reason else f"reverted: {name} {inputs or exc}") from exc


def parse_amount(text: str, decimals: int) -> int:
    """'12.5' of a 6-decimal coin is 12,500,000 units; more precision than the coin has is an error."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise CashError(f"not an amount: {text!r}") from None
    units = value.scaleb(decimals)
    if units != units.to_integral_value() or units <= 0:
        raise CashError(f"{text} is not a positive amount with at most {decimals} decimals")
    return int(units)


def format_amount(units: int, decimals: int) -> str:
    """12,500,000 units of a 6-decimal coin read '12.5'."""
    return f"{Decimal(units).scaleb(-decimals).normalize():f}"


class CashClient:
    """The CoNETCash operations of one deployment (`contracts` from offchain.chain.contracts.connect)."""

    def __init__(self, contracts: dict[str, Any]) -> None:
        self.cash = contracts["CoNETCash"]
        self.token = contracts["CoNETToken"]
        self.oracle = contracts["PriceOracle"]
        self.staking = contracts["Staking"]
        self.params = contracts["ParameterStore"]
        self.registry = contracts["NodeRegistry"]

    # ---------------------------------------------------------------- checks

    def note_terms(self, stablecoin: str) -> tuple[int, int]:
        """The stablecoin's decimals and the note cap in its units; CashError if it may not back notes."""
        listed, decimals, cap = self.params.noteTerms(stablecoin)
        if not listed:
            raise CashError(f"stablecoin not listed: {stablecoin} may not back notes")
        return int(decimals), int(cap)

    def check_price(self, asset: str) -> int:
        """The oracle's USD price of `asset` (8 decimals), judged as PriceOracle.price judges it;
        CashError if unset, invalid or stale. Read rather than called: a node may not return the
        revert data of a failed call, and the user deserves the reason."""
        from ape import chain

        round_id, answer, _started, updated, _answered = self.oracle.latestRoundData(asset)
        if int(round_id) == 0:
            raise CashError(f"price not set for {asset}")
        if int(answer) <= 0:
            raise CashError(f"invalid price for {asset}: {answer}")
        now = int(chain.blocks.head.timestamp)
        max_age = int(self.oracle.maxAgeOf(asset))
        if int(updated) < now and now - int(updated) > max_age:
            raise CashError(f"price stale: {asset} was last updated {now - int(updated)} s ago (max {max_age} s)")
        return int(answer)

    def check_cbdc(self, address: str) -> None:
        if not self.staking.meetsMinimum(address, int(Role.CBDC)):
            raise CashError(f"not a staked CBDC: {address} lacks the CBDC minimum stake")

    # ---------------------------------------------------------------- buyers

    def buy(self, account: Any, stablecoin: Any, amount: int) -> Bought:
        """Approves and buys a note of `amount` units; a pooled note is assigned at once."""
        _decimals, cap = self.note_terms(stablecoin.address)
        if not 0 < amount <= cap:
            raise CashError(f"invalid amount {amount}: must be above 0 and at most {cap}")
        balance = stablecoin.balanceOf(account.address)
        if balance < amount:
            raise CashError(f"balance too low: {account.address} holds {balance} of {stablecoin.address}")
        with explained():
            if stablecoin.allowance(account.address, self.cash.address) < amount:
                stablecoin.approve(self.cash.address, amount, sender=account)
            receipt = self.cash.buy(stablecoin.address, amount, sender=account)
        refunded = receipt.events.filter(self.cash.NoteRefunded)
        if refunded:
            return Bought(int(refunded[0].id), True, amount, receipt.txn_hash)
        placed = receipt.events.filter(self.cash.OrderPlaced)[0]
        return Bought(int(placed.id), False, amount, receipt.txn_hash)

    # ---------------------------------------------------------------- CBDCs

    def open_orders(self, start: int = 1) -> list[Order]:
        """Open orders with ids from `start` on, oldest first."""
        orders = []
        for order_id in range(start, int(self.cash.nextId())):
            note = self.cash.noteOf(order_id)
            if note.status == Status.ORDERED:
                orders.append(Order(order_id, note.party, note.stablecoin, int(note.faceValue), int(note.stamp)))
        return orders

    def prepare_cbdc(self, account: Any, stake: int, log: Callable[[str], None]) -> None:
        """Stakes the CBDC minimum (topping up to `stake`) and lets CoNETCash burn the CBDC's CoNET."""
        bonded = int(self.staking.stakeOf(account.address, int(Role.CBDC)))
        if bonded < stake:
            needed = stake - bonded
            balance = int(self.token.balanceOf(account.address))
            if balance < needed:
                raise CashError(f"not enough CoNET to stake: {account.address} holds {balance}, needs {needed}")
            with explained():
                self.token.approve(self.staking.address, needed, sender=account)
                self.staking.stake(int(Role.CBDC), needed, sender=account)
            log(f"staked   {needed / 10**18:,.0f} CONET as a CBDC")
        self.check_cbdc(account.address)
        if self.token.allowance(account.address, self.cash.address) < 2**255:
            with explained():
                self.token.approve(self.cash.address, MAX_UINT256, sender=account)
            log("approved CoNETCash to burn CoNET for fills")

    def fill(self, account: Any, order: Order, draw: CertifiedDraw) -> Filled:
        """Fills `order` as the CBDC `account` on the archive group's certified `draw` of it, after
        checking what the contract would refuse."""
        self.check_cbdc(account.address)
        if draw.order != order.id:
            raise CashError(f"the draw is for order {draw.order}, not order {order.id}")
        if draw.cbdc.lower() != account.address.lower():
            raise CashError(f"order {order.id} was drawn for CBDC {draw.cbdc}, not {account.address}")
        self.check_price(self.token.address)
        self.check_price(order.stablecoin)
        burn = int(self.cash.burnFor(order.stablecoin, order.amount))
        balance = int(self.token.balanceOf(account.address))
        if balance < burn:
            raise CashError(f"not enough CoNET to burn: {balance} held, {burn} needed for order {order.id}")
        with explained():
            receipt = self.cash.fill(draw.draw(), draw.epoch, draw.signatures, sender=account)
        minted = receipt.events.filter(self.cash.NoteMinted)[0]
        return Filled(order.id, minted.buyer, int(minted.faceValue), int(minted.burned), receipt.txn_hash)

    def claim(self, account: Any, stablecoin: str) -> Claimed:
        with explained():
            receipt = self.cash.claim(stablecoin, sender=account)
        event = receipt.events.filter(self.cash.EarningsClaimed)[0]
        return Claimed(int(event.fees), int(event.reissued), int(event.withheld))
