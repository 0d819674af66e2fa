"""Communication addresses: the one string people exchange to reach each other over SI.

To send to a person, a sender needs three things a wallet address alone does not give: the person's
public key (an address is a hash of it, and N1 is encrypted to the key), and the recipient node that
keeps the person's mailbox (N2 is encrypted to that node, whose key the directory gives by address).
A communication address carries them, plus an optional hint of a relay the person likes:

    "conet:" ‖ base58( version 0x01 ‖ public key (33, compressed) ‖ node address (20)
                       ‖ hint length (1) ‖ relay hint (UTF-8 URL, 0-200 bytes) ‖ checksum (4) )
    checksum = keccak256("CoNET-SI/v1/address" ‖ everything before it)[:4]

The wallet address is not written out: it is keccak256 of the public key, so spelling it separately
would only add 20 bytes that must agree. Base58 (Bitcoin's alphabet) leaves out 0/O and I/l, and the
checksum catches a mistyped or truncated address with odds of 1 in 2³² of missing it, before anything
is encrypted to a wrong key. A typical address without a hint is about 86 characters.
"""

from __future__ import annotations

from dataclasses import dataclass

from eth_typing import ChecksumAddress
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from offchain.si.ecies import ADDRESS_SIZE, address_of, load_public_key
from offchain.si.errors import InvalidKey

__all__ = [
    "PREFIX",
    "AddressError",
    "CommunicationAddress",
    "b58decode",
    "b58encode",
]

PREFIX = "conet:"
VERSION = 1
_PUBLIC_KEY_SIZE = 33
_CHECKSUM_SIZE = 4
_CHECKSUM_DOMAIN = b"CoNET-SI/v1/address"
MAX_HINT_SIZE = 200
_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_INDEX = {char: index for index, char in enumerate(_ALPHABET)}


class AddressError(ValueError):
    """A communication address could not be read (wrong prefix, character, length, version or checksum)."""


def b58encode(data: bytes) -> str:
    """Base58 with Bitcoin's alphabet; each leading zero byte becomes a leading "1"."""
    zeros = len(data) - len(data.lstrip(b"\0"))
    number = int.from_bytes(data, "big")
    digits = []
    while number:
        number, remainder = divmod(number, 58)
        digits.append(_ALPHABET[remainder])
    return "1" * zeros + "".join(reversed(digits))


def b58decode(text: str) -> bytes:
    """The bytes of a base58 string; raises `AddressError` on a character outside the alphabet."""
    number = 0
    for position, char in enumerate(text):
        if char not in _INDEX:
            raise AddressError(f"character {char!r} at position {position} is not base58")
        number = number * 58 + _INDEX[char]
    zeros = len(text) - len(text.lstrip("1"))
    body = number.to_bytes((number.bit_length() + 7) // 8, "big") if number else b""
    return b"\0" * zeros + body


def _checksum(payload: bytes) -> bytes:
    return keccak(_CHECKSUM_DOMAIN + payload)[:_CHECKSUM_SIZE]


@dataclass(frozen=True)
class CommunicationAddress:
    """A person's public key, their recipient node's address, and optionally a relay to post through."""

    public_key: bytes
    """33 bytes, compressed."""
    node: bytes
    """The recipient node's 20-byte wallet address."""
    relay_hint: str = ""

    def __post_init__(self) -> None:
        try:
            compressed = load_public_key(self.public_key).format(compressed=True)
        except InvalidKey as error:
            raise AddressError(f"not a valid public key: {error}") from error
        object.__setattr__(self, "public_key", bytes(compressed))
        if len(self.node) != ADDRESS_SIZE:
            raise AddressError(f"a node address is {ADDRESS_SIZE} bytes, got {len(self.node)}")
        if len(self.relay_hint.encode()) > MAX_HINT_SIZE:
            raise AddressError(f"the relay hint is over {MAX_HINT_SIZE} bytes")

    @property
    def address(self) -> bytes:
        """The person's 20-byte wallet address (keccak256 of the public key)."""
        return address_of(self.public_key)

    @property
    def checksum_address(self) -> ChecksumAddress:
        return to_checksum_address(self.address)

    @property
    def node_checksum_address(self) -> ChecksumAddress:
        return to_checksum_address(self.node)

    def encode(self) -> str:
        hint = self.relay_hint.encode()
        payload = bytes([VERSION]) + self.public_key + self.node + bytes([len(hint)]) + hint
        return PREFIX + b58encode(payload + _checksum(payload))

    def __str__(self) -> str:
        return self.encode()

    @classmethod
    def parse(cls, text: str) -> CommunicationAddress:
        """Read a communication address; every way it can be wrong raises `AddressError` saying which."""
        text = text.strip()
        if not text.startswith(PREFIX):
            raise AddressError(f"a communication address starts with {PREFIX!r}")
        raw = b58decode(text[len(PREFIX) :])
        fixed = 1 + _PUBLIC_KEY_SIZE + ADDRESS_SIZE + 1
        if len(raw) < fixed + _CHECKSUM_SIZE:
            raise AddressError(f"too short: {len(raw)} bytes, at least {fixed + _CHECKSUM_SIZE} expected")
        payload, checksum = raw[:-_CHECKSUM_SIZE], raw[-_CHECKSUM_SIZE:]
        if _checksum(payload) != checksum:
            raise AddressError("checksum mismatch: the address was mistyped or cut short")
        if payload[0] != VERSION:
            raise AddressError(f"communication address version {payload[0]}; this code reads version {VERSION}")
        public_key = payload[1 : 1 + _PUBLIC_KEY_SIZE]
        node = payload[1 + _PUBLIC_KEY_SIZE : 1 + _PUBLIC_KEY_SIZE + ADDRESS_SIZE]
        hint_size = payload[fixed - 1]
        if len(payload) != fixed + hint_size:
            raise AddressError(f"the relay hint announces {hint_size} bytes, {len(payload) - fixed} are there")
        try:
            hint = payload[fixed:].decode()
        except UnicodeDecodeError as error:
            raise AddressError("the relay hint is not UTF-8") from error
        return cls(public_key, node, hint)
