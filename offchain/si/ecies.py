"""ECIES on secp256k1: the one public-key encryption every SI layer uses.

A party is reached by the same secp256k1 key that owns its wallet (DESIGN §9), so encrypting "to an
address" means encrypting to the public key behind it:

    ephemeral key e, recipient key P
    shared = x(e · P)                                    (32 bytes, ECDH)
    key    = HKDF-SHA256(ikm=shared, salt=E ‖ P, info)   (32 bytes; E, P compressed, 33 bytes each)
    blob   = E ‖ nonce ‖ AES-256-GCM(key, nonce, plaintext, aad) ‖ tag

The salt names both keys, so a key is bound to this exact pair even if a caller reuses `info`; the
caller's `info` separates protocols and layers, and its `aad` binds whatever clear header travels
with the blob. Each derived key encrypts one message, so a fixed nonce would do; a random one costs
12 bytes and keeps AES-GCM safe should a later change ever reuse a derived key.

coincurve (libsecp256k1) does the curve arithmetic; HKDF-SHA256 and AES-256-GCM come from the
`cryptography` package, both running in OpenSSL.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from coincurve import PrivateKey, PublicKey
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from eth_typing import ChecksumAddress
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from offchain.si.errors import InvalidKey, TamperedEnvelope, TruncatedEnvelope

__all__ = [
    "ADDRESS_SIZE",
    "ECIES_OVERHEAD",
    "EPHEMERAL_KEY_SIZE",
    "KEY_SIZE",
    "NONCE_SIZE",
    "TAG_SIZE",
    "KeyPair",
    "address_of",
    "decrypt",
    "encrypt",
    "hkdf_sha256",
    "load_public_key",
]

KEY_SIZE = 32
EPHEMERAL_KEY_SIZE = 33
NONCE_SIZE = 12
TAG_SIZE = 16
ADDRESS_SIZE = 20
_SHA256_SIZE = 32
ECIES_OVERHEAD = EPHEMERAL_KEY_SIZE + NONCE_SIZE + TAG_SIZE
"""Bytes `encrypt` adds to a plaintext: ephemeral key, nonce and tag."""


def load_public_key(key: bytes | PublicKey) -> PublicKey:
    """A secp256k1 public key from 33 (compressed), 65 (0x04 ‖ x ‖ y) or 64 (x ‖ y) bytes.

    The 64-byte form is what the node registry and Ethereum tooling store; libsecp256k1 would also
    take the "hybrid" 0x06/0x07 prefixes, which nobody uses, so only the standard ones are let in.
    """
    if isinstance(key, PublicKey):
        return key
    size = len(key)
    if size == 64:
        key = b"\x04" + key
    elif not ((size == 65 and key[0] == 0x04) or (size == 33 and key[0] in (0x02, 0x03))):
        raise InvalidKey(f"a public key is 33, 64 or 65 bytes with a standard SEC1 prefix, got {size} bytes")
    try:
        return PublicKey(key)
    except ValueError as error:
        raise InvalidKey("the public key is not a point on secp256k1") from error


def address_of(key: bytes | PublicKey) -> bytes:
    """The 20-byte wallet address of a public key: the last 20 bytes of keccak256(x ‖ y)."""
    return keccak(load_public_key(key).format(compressed=False)[1:])[12:]


@dataclass(frozen=True)
class KeyPair:
    """A secp256k1 wallet key with its public key and address worked out once.

    A node opens many envelopes with one key; deriving the public key costs a scalar multiplication,
    so it is done here once instead of on every open.
    """

    private_key: PrivateKey = field(repr=False, compare=False)
    public_key: bytes
    """Compressed, 33 bytes."""
    address: bytes
    """20 bytes."""

    @classmethod
    def from_secret(cls, secret: bytes) -> KeyPair:
        """The key pair of a 32-byte private key (eth-account's `Account.from_key` takes the same bytes)."""
        if len(secret) != KEY_SIZE:
            raise InvalidKey(f"a private key is {KEY_SIZE} bytes, got {len(secret)}")
        try:
            private_key = PrivateKey(secret)
        except ValueError as error:
            raise InvalidKey("the private key is zero or not below the secp256k1 group order") from error
        public = private_key.public_key
        return cls(private_key, public.format(compressed=True), address_of(public))

    @classmethod
    def generate(cls) -> KeyPair:
        """A fresh random key pair."""
        return cls.from_secret(PrivateKey().secret)

    @classmethod
    def of(cls, key: KeyPair | bytes) -> KeyPair:
        """`key` itself, or the key pair of a 32-byte private key."""
        return key if isinstance(key, KeyPair) else cls.from_secret(key)

    @property
    def secret(self) -> bytes:
        return bytes(self.private_key.secret)

    @property
    def public_key_64(self) -> bytes:
        """x ‖ y, the form the node registry stores."""
        return bytes(self.private_key.public_key.format(compressed=False)[1:])

    @property
    def checksum_address(self) -> ChecksumAddress:
        return to_checksum_address(self.address)


def hkdf_sha256(ikm: bytes, *, salt: bytes, info: bytes, length: int = KEY_SIZE) -> bytes:
    """HKDF (RFC 5869) with SHA-256, extract then expand, from `cryptography` (OpenSSL).

    An `HKDF` object derives once, so each call builds its own.
    """
    if not 0 < length <= 255 * _SHA256_SIZE:
        raise ValueError(f"HKDF-SHA256 yields 1 to {255 * _SHA256_SIZE} bytes, not {length}")
    return HKDF(algorithm=SHA256(), length=length, salt=salt, info=info).derive(ikm)


def _symmetric_key(secret: bytes, public: PublicKey, ephemeral: bytes, recipient: bytes, info: bytes) -> bytes:
    # libsecp256k1's tweak_mul is constant-time in the scalar; the x-coordinate alone is the classic
    # ECDH secret (SEC1 §3.3.1), and HKDF then removes its algebraic structure.
    shared = public.multiply(secret).format(compressed=True)[1:]
    return hkdf_sha256(shared, salt=ephemeral + recipient, info=info)


def encrypt(recipient: bytes | PublicKey, plaintext: bytes, *, info: bytes, aad: bytes) -> bytes:
    """Encrypt to `recipient`'s public key; the result is `ECIES_OVERHEAD` bytes longer than `plaintext`."""
    recipient_key = load_public_key(recipient)
    ephemeral = PrivateKey()
    ephemeral_public = ephemeral.public_key.format(compressed=True)
    key = _symmetric_key(ephemeral.secret, recipient_key, ephemeral_public, recipient_key.format(compressed=True), info)
    nonce = os.urandom(NONCE_SIZE)
    # AESGCM returns the ciphertext with the 16-byte tag appended: exactly the blob's tail.
    return ephemeral_public + nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def decrypt(recipient: KeyPair, blob: bytes, *, info: bytes, aad: bytes) -> bytes:
    """Decrypt and authenticate a blob made by `encrypt` to `recipient`'s public key.

    Every failure after the length check is one `TamperedEnvelope`: an invalid ephemeral key, a
    wrong key, a changed byte, or a different `info`/`aad` all mean "not sealed to this, as this".
    """
    if len(blob) < ECIES_OVERHEAD:
        raise TruncatedEnvelope(f"an ECIES blob is at least {ECIES_OVERHEAD} bytes, got {len(blob)}")
    ephemeral_public = blob[:EPHEMERAL_KEY_SIZE]
    nonce = blob[EPHEMERAL_KEY_SIZE : EPHEMERAL_KEY_SIZE + NONCE_SIZE]
    ciphertext_and_tag = blob[EPHEMERAL_KEY_SIZE + NONCE_SIZE :]
    if ephemeral_public[0] not in (0x02, 0x03):
        raise TamperedEnvelope("the ephemeral key is not a compressed secp256k1 key")
    try:
        ephemeral = PublicKey(ephemeral_public)
    except ValueError as error:
        raise TamperedEnvelope("the ephemeral key is not a point on secp256k1") from error
    key = _symmetric_key(recipient.secret, ephemeral, ephemeral_public, recipient.public_key, info)
    try:
        return AESGCM(key).decrypt(nonce, ciphertext_and_tag, aad)
    except InvalidTag as error:
        raise TamperedEnvelope("authentication failed: changed, or not sealed to this key") from error
