"""SI billing: what a recipient node charges its clients, and what it pays the relays (DESIGN §7).

Charges are never one chain transaction per message. A payer signs **cumulative vouchers**: "I, payer,
owe payee `cumulativeAmount` in total", each one superseding the last. The payee keeps only the latest
per payer (`Ledger`); from time to time it settles a batch, carrying for each payer the difference
since the last settlement as one deduction on a note chain. A lost or replayed voucher costs nothing:
a newer one includes it, an older one is refused.

The voucher is EIP-712 typed data, so any Ethereum wallet can sign it and a contract can verify it:

    EIP712Domain(string name, string version, uint256 chainId, address verifyingContract, bytes32 salt)
        name = "CoNET-SI Billing", version = "1", chainId = the main chain, verifyingContract = CoNETCash,
        salt = the note chain's id (a voucher for one note chain cannot be deducted on another)
    Voucher(address payer, address payee, uint256 cumulativeAmount, uint256 nonce, uint256 expiry)

Amounts are integer stablecoin units (the stablecoin's smallest unit); nothing here uses floats.
`Meter` turns bytes carried and byte·seconds stored into such units at a node's registered prices.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from eth_account import Account
from eth_account.messages import SignableMessage, encode_typed_data
from eth_typing import ChecksumAddress
from eth_utils.address import is_address, to_checksum_address

__all__ = [
    "BYTES_PER_MB",
    "DOMAIN_NAME",
    "DOMAIN_VERSION",
    "SECONDS_PER_HOUR",
    "BadVoucherSignature",
    "DecreasingVoucher",
    "ExpiredVoucher",
    "Ledger",
    "Meter",
    "Prices",
    "SettlementItem",
    "StaleVoucher",
    "Voucher",
    "VoucherDomain",
    "VoucherError",
    "WrongDomain",
    "WrongPayee",
    "ceil_div",
    "sign_voucher",
]

DOMAIN_NAME = "CoNET-SI Billing"
DOMAIN_VERSION = "1"
UINT256_MAX = (1 << 256) - 1

BYTES_PER_MB = 1_000_000
"""Prices are per decimal megabyte, as network traffic is usually sold (not per MiB)."""
SECONDS_PER_HOUR = 3_600


class VoucherError(ValueError):
    """A voucher was refused by the payee's ledger."""


class BadVoucherSignature(VoucherError):
    """The signature does not recover to the payer the voucher names (forged, or altered after signing)."""


class WrongPayee(VoucherError):
    """The voucher pays someone else."""


class WrongDomain(VoucherError):
    """The voucher is for another main chain, CoNETCash deployment or note chain."""


class ExpiredVoucher(VoucherError):
    """The voucher's expiry has passed."""


class DecreasingVoucher(VoucherError):
    """The cumulative amount is below one already accepted: a voucher can only raise what is owed."""


class StaleVoucher(VoucherError):
    """The nonce is below the latest accepted, or reuses it for a different voucher (a replay or a fork)."""


def _uint(name: str, value: int, bits: int = 256) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << bits:
        raise ValueError(f"{name} must be an integer in [0, 2**{bits}), got {value!r}")


def _address(name: str, value: str) -> ChecksumAddress:
    if not is_address(value):
        raise ValueError(f"{name} is not an address: {value!r}")
    return to_checksum_address(value)


def ceil_div(numerator: int, denominator: int) -> int:
    """⌈numerator / denominator⌉ in integers (both non-negative, denominator positive)."""
    return -(-numerator // denominator)


@dataclass(frozen=True)
class VoucherDomain:
    """Where a voucher can be redeemed: the EIP-712 domain, all of which the signature covers."""

    chain_id: int
    """The main chain's id (where CoNETCash lives)."""
    verifying_contract: ChecksumAddress
    """CoNETCash's address."""
    note_chain_id: bytes
    """The note chain the deduction is made on (32 bytes), the domain's salt."""

    def __post_init__(self) -> None:
        _uint("chain_id", self.chain_id)
        object.__setattr__(self, "verifying_contract", _address("verifying_contract", self.verifying_contract))
        if not isinstance(self.note_chain_id, bytes) or len(self.note_chain_id) != 32:
            raise ValueError("note_chain_id must be 32 bytes")

    def typed(self) -> dict[str, Any]:
        return {
            "name": DOMAIN_NAME,
            "version": DOMAIN_VERSION,
            "chainId": self.chain_id,
            "verifyingContract": self.verifying_contract,
            "salt": self.note_chain_id,
        }


_TYPES = {
    "EIP712Domain": [
        {"name": "name", "type": "string"},
        {"name": "version", "type": "string"},
        {"name": "chainId", "type": "uint256"},
        {"name": "verifyingContract", "type": "address"},
        {"name": "salt", "type": "bytes32"},
    ],
    "Voucher": [
        {"name": "payer", "type": "address"},
        {"name": "payee", "type": "address"},
        {"name": "cumulativeAmount", "type": "uint256"},
        {"name": "nonce", "type": "uint256"},
        {"name": "expiry", "type": "uint256"},
    ],
}


@dataclass(frozen=True)
class Voucher:
    """A signed promise: `payer` owes `payee` `cumulative_amount` units in total, redeemable until `expiry`."""

    domain: VoucherDomain
    payer: ChecksumAddress
    payee: ChecksumAddress
    cumulative_amount: int
    nonce: int
    """The payer's serial for this payee: each new voucher has a higher one."""
    expiry: int
    """Unix seconds; the voucher is refused at or after it."""
    signature: bytes = b""

    def __post_init__(self) -> None:
        object.__setattr__(self, "payer", _address("payer", self.payer))
        object.__setattr__(self, "payee", _address("payee", self.payee))
        _uint("cumulative_amount", self.cumulative_amount)
        _uint("nonce", self.nonce)
        _uint("expiry", self.expiry)

    def typed_data(self) -> dict[str, Any]:
        """The EIP-712 message, as `eth_signTypedData_v4` takes it."""
        return {
            "types": _TYPES,
            "primaryType": "Voucher",
            "domain": self.domain.typed(),
            "message": {
                "payer": self.payer,
                "payee": self.payee,
                "cumulativeAmount": self.cumulative_amount,
                "nonce": self.nonce,
                "expiry": self.expiry,
            },
        }

    def signable(self) -> SignableMessage:
        return encode_typed_data(full_message=self.typed_data())

    def signer(self) -> ChecksumAddress | None:
        """Who signed it, or None if the signature is not a valid signature at all."""
        if len(self.signature) != 65:
            return None
        try:
            return to_checksum_address(Account.recover_message(self.signable(), signature=self.signature))
        except Exception:  # eth-keys raises several types for junk r, s, v; all mean "not signed"
            return None

    def same_terms(self, other: Voucher) -> bool:
        """The same voucher, whatever the signature bytes."""
        return replace(self, signature=b"") == replace(other, signature=b"")


def sign_voucher(
    private_key: bytes | str,
    *,
    domain: VoucherDomain,
    payee: str,
    cumulative_amount: int,
    nonce: int,
    expiry: int,
) -> Voucher:
    """The payer's side: sign a cumulative voucher with its wallet key."""
    account = Account.from_key(private_key)
    unsigned = Voucher(domain, account.address, _address("payee", payee), cumulative_amount, nonce, expiry)
    signed = Account.sign_message(unsigned.signable(), private_key=account.key)
    return replace(unsigned, signature=bytes(signed.signature))


@dataclass(frozen=True)
class SettlementItem:
    """One payer's line in a settlement batch: deduct `amount` on the note chain, authorised by `voucher`."""

    payer: ChecksumAddress
    amount: int
    """The delta since the previous settlement."""
    settled_total: int
    """Everything settled for this payer once this batch is carried (= voucher.cumulative_amount)."""
    voucher: Voucher


@dataclass
class Ledger:
    """What a payee (a recipient node, or a relay) has been promised, per payer, on one note chain.

    It is a state machine with no I/O, so it can be tested exhaustively; the payee persists the
    accepted vouchers (the latest per payer is enough to rebuild it) and the settled totals."""

    payee: ChecksumAddress
    domain: VoucherDomain
    latest: dict[ChecksumAddress, Voucher] = field(default_factory=dict)
    settled: dict[ChecksumAddress, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.payee = _address("payee", self.payee)

    def accept(self, voucher: Voucher, *, now: int) -> bool:
        """Take `voucher` as the payer's latest. True if it changed the ledger, False for a repeat of
        the latest; raises a `VoucherError` saying why it is refused. Cheap checks come first, the
        signature recovery (the only costly one) last."""
        if voucher.payee != self.payee:
            raise WrongPayee(f"voucher pays {voucher.payee}, not {self.payee}")
        if voucher.domain != self.domain:
            raise WrongDomain(f"voucher is for {voucher.domain}, this ledger for {self.domain}")
        if voucher.expiry <= now:
            raise ExpiredVoucher(f"voucher expired at {voucher.expiry} (now {now})")
        last = self.latest.get(voucher.payer)
        if last is not None:
            if voucher.cumulative_amount < last.cumulative_amount:
                raise DecreasingVoucher(
                    f"cumulative {voucher.cumulative_amount} below the accepted {last.cumulative_amount}"
                )
            if voucher.nonce < last.nonce or (voucher.nonce == last.nonce and not voucher.same_terms(last)):
                raise StaleVoucher(f"nonce {voucher.nonce} against the accepted {last.nonce}")
        if voucher.signer() != voucher.payer:
            raise BadVoucherSignature(f"signature does not recover to {voucher.payer}")
        if last is not None and voucher.same_terms(last):
            return False  # the same voucher again: idempotent
        self.latest[voucher.payer] = voucher
        return True

    def accepted_total(self, payer: str) -> int:
        voucher = self.latest.get(_address("payer", payer))
        return 0 if voucher is None else voucher.cumulative_amount

    def owed(self) -> dict[ChecksumAddress, int]:
        """Per payer, what is promised and not yet settled (payers owing nothing are left out)."""
        owed = {payer: v.cumulative_amount - self.settled.get(payer, 0) for payer, v in self.latest.items()}
        return {payer: amount for payer, amount in owed.items() if amount > 0}

    def settle_batch(self, *, now: int) -> list[SettlementItem]:
        """The deductions for one batch on the note chain, and mark them settled.

        A voucher that has expired by `now` cannot be redeemed, so its payer is left out and stays in
        `owed()`: the payer's next voucher, being cumulative, covers it."""
        batch = [
            SettlementItem(payer, amount, voucher.cumulative_amount, voucher)
            for payer, amount in sorted(self.owed().items())
            if (voucher := self.latest[payer]).expiry > now
        ]
        for item in batch:
            self.settled[item.payer] = item.settled_total
        return batch


@dataclass(frozen=True)
class Prices:
    """A node's (or relay's) registered prices, in integer stablecoin units."""

    per_mb_outbound: int
    """Per MB (10**6 bytes) carried: delivered to a client, or forwarded by a relay."""
    per_mb_hour_storage: int
    """Per MB kept in the mailbox for one hour."""

    def __post_init__(self) -> None:
        _uint("per_mb_outbound", self.per_mb_outbound)
        _uint("per_mb_hour_storage", self.per_mb_hour_storage)


@dataclass(frozen=True)
class Meter:
    """Usage → charge, in integers.

        charge(batch) = ⌈ (bytes · per_mb_outbound · 3600 + byte_seconds · per_mb_hour_storage)
                          / (10**6 · 3600) ⌉

    One rounding, up, per batch of messages (never per message, which would charge a unit for every
    tiny message, and never down, which would let a node carry traffic for free in small batches).
    A node bills a batch whenever it asks its client for a new voucher; a payer recomputes the same
    figure from the same usage to check the bill."""

    prices: Prices

    def charge(self, *, bytes_carried: int = 0, byte_seconds_stored: int = 0) -> int:
        _uint("bytes_carried", bytes_carried)
        _uint("byte_seconds_stored", byte_seconds_stored)
        numerator = (
            bytes_carried * self.prices.per_mb_outbound * SECONDS_PER_HOUR
            + byte_seconds_stored * self.prices.per_mb_hour_storage
        )
        return ceil_div(numerator, BYTES_PER_MB * SECONDS_PER_HOUR)
