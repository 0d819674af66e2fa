"""A relay's signed byte count: "I, relay R, forwarded this B-byte envelope to node N at time T".

A recipient node pays each relay per MB forwarded (DESIGN §7). The relay attaches one receipt to every
envelope it forwards, in the `CoNET-Relay-Receipt` request header; the node checks it against the
envelope it actually received and adds `byte_count` to what it owes that relay. The receipt is EIP-712
typed data, so a wallet or a contract can check it as well as this module:

    EIP712Domain(string name,string version)             name = "CoNET-SI Relay", version = "1"
    RelayReceipt(address relay,address node,uint256 byteCount,bytes32 envelopeTag,uint64 timestampMs)

    digest    = keccak256(0x19 0x01 ‖ domainSeparator ‖ hashStruct(receipt))
    signature = r ‖ s ‖ v over `digest` as is (v ∈ {27, 28}, low s): what eth_signTypedData_v4 makes

The relay signs before the envelope has passed through it (it streams the body), so the receipt cannot
hash the whole envelope. It binds instead the envelope's first `TAG_PREFIX_SIZE` bytes — the clear
header (destination, body length) and the outer layer's fresh ephemeral key and random nonce — which
are unique per sealed envelope and authenticated by its AES-GCM tag, and the byte count, which the
header announces. A node accepts the receipt only once it holds the whole envelope, of exactly that
size and with that tag, so a receipt for a body that was cut short is worth nothing.

No chain id is in the domain: a receipt is never redeemed on chain, it is evidence between one relay
and one node, who know each other by address; the node turns what it owes into billing vouchers.

Header value: lowercase hex (no 0x) of

    relay (20) ‖ node (20) ‖ byteCount (uint64) ‖ envelopeTag (32) ‖ timestampMs (uint64) ‖ signature (65)

153 bytes, 306 hex characters.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from eth_typing import ChecksumAddress
from eth_utils.address import to_checksum_address

from dle_vm import signature as canonical
from dle_vm.hashing import keccak
from offchain.si.ecies import ADDRESS_SIZE, EPHEMERAL_KEY_SIZE, NONCE_SIZE, KeyPair
from offchain.si.envelope import HEADER_SIZE

__all__ = [
    "DOMAIN_NAME",
    "DOMAIN_SEPARATOR",
    "DOMAIN_VERSION",
    "MAX_CLOCK_SKEW_MS",
    "RECEIPT_HEADER",
    "RECEIPT_SIZE",
    "RECEIPT_TYPE",
    "TAG_PREFIX_SIZE",
    "BadReceiptSignature",
    "MalformedReceipt",
    "ReceiptError",
    "ReceiptMismatch",
    "RelayReceipt",
    "StaleReceipt",
    "envelope_tag",
    "receipt_digest",
    "sign_receipt",
    "verify_receipt",
]

RECEIPT_HEADER = "CoNET-Relay-Receipt"
DOMAIN_NAME = "CoNET-SI Relay"
DOMAIN_VERSION = "1"
RECEIPT_TYPE = "RelayReceipt(address relay,address node,uint256 byteCount,bytes32 envelopeTag,uint64 timestampMs)"
TAG_PREFIX_SIZE = HEADER_SIZE + EPHEMERAL_KEY_SIZE + NONCE_SIZE
"""74: header, ephemeral key and nonce of the outer layer — what a relay has read when it signs."""
MAX_CLOCK_SKEW_MS = 5 * 60 * 1000
"""How far a receipt's timestamp may be from the node's clock by default (either way)."""

_TAG_SIZE = 32
_UINT64_SIZE = 8
_SIGNATURE_SIZE = canonical.SIGNATURE_SIZE
RECEIPT_SIZE = 2 * ADDRESS_SIZE + _UINT64_SIZE + _TAG_SIZE + _UINT64_SIZE + _SIGNATURE_SIZE
"""153 bytes before hex encoding."""

_DOMAIN_TYPE_HASH = keccak(b"EIP712Domain(string name,string version)")
DOMAIN_SEPARATOR = keccak(_DOMAIN_TYPE_HASH + keccak(DOMAIN_NAME.encode()) + keccak(DOMAIN_VERSION.encode()))
_RECEIPT_TYPE_HASH = keccak(RECEIPT_TYPE.encode())
_UINT64_LIMIT = 1 << 64


class ReceiptError(ValueError):
    """A relay receipt was refused."""


class MalformedReceipt(ReceiptError):
    """The header value is not a receipt: wrong length, not hex, or a field out of range."""


class BadReceiptSignature(ReceiptError):
    """The signature is not canonical or was not made by the relay the receipt names (forged or altered)."""


class ReceiptMismatch(ReceiptError):
    """The receipt is genuine but for another node, another envelope, or another number of bytes."""


class StaleReceipt(ReceiptError):
    """The receipt's timestamp is further from the node's clock than the allowed skew."""


def _word(value: int) -> bytes:
    return value.to_bytes(32, "big")


def receipt_digest(*, relay: bytes, node: bytes, byte_count: int, envelope_tag: bytes, timestamp_ms: int) -> bytes:
    """The EIP-712 digest a relay signs; the caller checks the fields' sizes and ranges."""
    struct_hash = keccak(
        _RECEIPT_TYPE_HASH
        + bytes(12)
        + relay
        + bytes(12)
        + node
        + _word(byte_count)
        + envelope_tag
        + _word(timestamp_ms)
    )
    return keccak(b"\x19\x01" + DOMAIN_SEPARATOR + struct_hash)


def envelope_tag(envelope: bytes) -> bytes:
    """keccak256 of the envelope's first `TAG_PREFIX_SIZE` bytes (the whole envelope may be passed)."""
    if len(envelope) < TAG_PREFIX_SIZE:
        raise ValueError(f"an envelope tag needs the first {TAG_PREFIX_SIZE} bytes, got {len(envelope)}")
    return keccak(envelope[:TAG_PREFIX_SIZE])


@dataclass(frozen=True)
class RelayReceipt:
    """One signed byte count, as carried in the `CoNET-Relay-Receipt` header."""

    relay: bytes
    """The forwarding relay's 20-byte address: who is owed."""
    node: bytes
    """The destination node's 20-byte address: who owes."""
    byte_count: int
    """The envelope's size in bytes (the HTTP body forwarded, no headers)."""
    envelope_tag: bytes
    """`envelope_tag(envelope)`: which envelope, 32 bytes."""
    timestamp_ms: int
    """The relay's clock when it forwarded, milliseconds since the Unix epoch."""
    signature: bytes
    """65 bytes r ‖ s ‖ v over `digest`."""

    def __post_init__(self) -> None:
        for name, value, size in (
            ("relay", self.relay, ADDRESS_SIZE),
            ("node", self.node, ADDRESS_SIZE),
            ("envelope_tag", self.envelope_tag, _TAG_SIZE),
            ("signature", self.signature, _SIGNATURE_SIZE),
        ):
            if not isinstance(value, bytes) or len(value) != size:
                raise MalformedReceipt(f"{name} must be {size} bytes")
        for name, number in (("byte_count", self.byte_count), ("timestamp_ms", self.timestamp_ms)):
            if not isinstance(number, int) or isinstance(number, bool) or not 0 <= number < _UINT64_LIMIT:
                raise MalformedReceipt(f"{name} must be an unsigned 64-bit integer, got {number!r}")

    @property
    def digest(self) -> bytes:
        return receipt_digest(
            relay=self.relay,
            node=self.node,
            byte_count=self.byte_count,
            envelope_tag=self.envelope_tag,
            timestamp_ms=self.timestamp_ms,
        )

    @property
    def relay_address(self) -> ChecksumAddress:
        return to_checksum_address(self.relay)

    def encode(self) -> str:
        """The header value: hex of the packed fields (module docstring)."""
        return (
            self.relay
            + self.node
            + self.byte_count.to_bytes(_UINT64_SIZE, "big")
            + self.envelope_tag
            + self.timestamp_ms.to_bytes(_UINT64_SIZE, "big")
            + self.signature
        ).hex()

    @classmethod
    def decode(cls, value: str) -> RelayReceipt:
        """Parse a header value strictly (exact length, lowercase or uppercase hex, nothing else)."""
        if len(value) != 2 * RECEIPT_SIZE:
            raise MalformedReceipt(f"a receipt is {2 * RECEIPT_SIZE} hex characters, got {len(value)}")
        try:
            raw = bytes.fromhex(value)
        except ValueError as error:
            raise MalformedReceipt("a receipt is hexadecimal") from error
        if len(raw) != RECEIPT_SIZE:  # fromhex skips whitespace, which is not part of the format
            raise MalformedReceipt("a receipt is hexadecimal without spaces")
        offset = 0

        def take(size: int) -> bytes:
            nonlocal offset
            field = raw[offset : offset + size]
            offset += size
            return field

        return cls(
            relay=take(ADDRESS_SIZE),
            node=take(ADDRESS_SIZE),
            byte_count=int.from_bytes(take(_UINT64_SIZE), "big"),
            envelope_tag=take(_TAG_SIZE),
            timestamp_ms=int.from_bytes(take(_UINT64_SIZE), "big"),
            signature=take(_SIGNATURE_SIZE),
        )


def sign_receipt(
    key: KeyPair, *, node: bytes, envelope_prefix: bytes, byte_count: int, timestamp_ms: int | None = None
) -> RelayReceipt:
    """The relay `key` signs that it forwards a `byte_count`-byte envelope starting with `envelope_prefix`."""
    if timestamp_ms is None:
        timestamp_ms = time.time_ns() // 1_000_000
    tag = envelope_tag(envelope_prefix)
    # A relay signs once per message: the digest is computed from the fields directly, and the one
    # dataclass built checks them.
    digest = receipt_digest(
        relay=key.address, node=node, byte_count=byte_count, envelope_tag=tag, timestamp_ms=timestamp_ms
    )
    # libsecp256k1 signs deterministically (RFC 6979) with a low s: the canonical form recover() wants.
    raw = key.private_key.sign_recoverable(digest, hasher=None)
    return RelayReceipt(
        relay=key.address,
        node=node,
        byte_count=byte_count,
        envelope_tag=tag,
        timestamp_ms=timestamp_ms,
        signature=raw[:64] + bytes([raw[64] + 27]),
    )


def verify_receipt(
    receipt: str | RelayReceipt,
    *,
    node: bytes,
    envelope: bytes,
    now_ms: int | None = None,
    max_skew_ms: int = MAX_CLOCK_SKEW_MS,
) -> RelayReceipt:
    """Node side: check a receipt against the envelope the node received whole, and return it.

    `node` is the checking node's own 20-byte address. Raises `MalformedReceipt`, `BadReceiptSignature`
    (not signed by the relay it names), `ReceiptMismatch` (another node, size or envelope) or
    `StaleReceipt` (timestamp more than `max_skew_ms` from `now_ms`, default the local clock). The
    caller credits `byte_count` to `relay` once per `envelope_tag` (a retried envelope carries the same
    tag) and decides whether it deals with that relay at all.
    """
    parsed = RelayReceipt.decode(receipt) if isinstance(receipt, str) else receipt
    # Cheap comparisons first: a mismatched receipt costs no public-key recovery.
    if parsed.node != node:
        raise ReceiptMismatch(
            f"the receipt is for node {to_checksum_address(parsed.node)}, not {to_checksum_address(node)}"
        )
    if parsed.byte_count != len(envelope):
        raise ReceiptMismatch(f"the receipt counts {parsed.byte_count} bytes, the envelope has {len(envelope)}")
    if len(envelope) < TAG_PREFIX_SIZE or parsed.envelope_tag != envelope_tag(envelope):
        raise ReceiptMismatch("the receipt's envelope tag does not match the envelope")
    if now_ms is None:
        now_ms = time.time_ns() // 1_000_000
    if abs(now_ms - parsed.timestamp_ms) > max_skew_ms:
        raise StaleReceipt(f"the receipt is {(now_ms - parsed.timestamp_ms) / 1000:.1f} s from the node's clock")
    try:
        signer = canonical.recover(parsed.digest, parsed.signature)
    except canonical.BadSignature as error:
        raise BadReceiptSignature(str(error)) from error
    if signer != parsed.relay:
        raise BadReceiptSignature(
            f"the receipt names relay {parsed.relay_address}, it was signed by {to_checksum_address(signer)}"
        )
    return parsed
