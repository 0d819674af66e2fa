"""secp256k1 signatures of DLE members: r ‖ s ‖ v, 65 bytes, over a 32-byte digest.

v is 27 or 28 and s lies in the lower half of the group order, the only form OpenZeppelin's `ECDSA`
accepts, so a signature made here verifies on the mainchain unchanged and no signature can be varied
into a second valid one without the key. The digest is signed as is (no EIP-191 prefix): what the
digest of a block is — its header hash, or a typed-data digest wrapping it — is the caller's rule.
"""

from __future__ import annotations

from coincurve import PrivateKey, PublicKey

from dle_vm.hashing import keccak

__all__ = ["SIGNATURE_SIZE", "BadSignature", "address_of", "recover", "sign"]

SIGNATURE_SIZE = 65
_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_HALF_ORDER = _ORDER // 2


class BadSignature(ValueError):
    """A signature that is malformed, non-canonical, or from which no key recovers."""


def address_of(public_key: PublicKey) -> bytes:
    """The 20-byte Ethereum address of a public key."""
    return keccak(public_key.format(compressed=False)[1:])[12:]


def sign(private_key: bytes, digest: bytes) -> bytes:
    """The 65-byte signature r ‖ s ‖ v of `private_key` (32 bytes) over `digest` (32 bytes)."""
    if len(digest) != 32:
        raise BadSignature(f"a digest is 32 bytes, got {len(digest)}")
    # libsecp256k1 signs deterministically (RFC 6979) and always with a low s.
    raw = PrivateKey(private_key).sign_recoverable(digest, hasher=None)
    return raw[:64] + bytes([raw[64] + 27])


def recover(digest: bytes, signature: bytes) -> bytes:
    """The 20-byte address that made `signature` over `digest`."""
    if len(digest) != 32:
        raise BadSignature(f"a digest is 32 bytes, got {len(digest)}")
    if len(signature) != SIGNATURE_SIZE:
        raise BadSignature(f"a signature is {SIGNATURE_SIZE} bytes, got {len(signature)}")
    v = signature[64]
    if v not in (27, 28):
        raise BadSignature(f"the recovery byte v must be 27 or 28, got {v}")
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:64], "big")
    if not (0 < r < _ORDER and 0 < s <= _HALF_ORDER):
        raise BadSignature("r or s is out of range (s must be in the lower half of the order)")
    try:
        public = PublicKey.from_signature_and_message(signature[:64] + bytes([v - 27]), digest, hasher=None)
    except ValueError as error:
        raise BadSignature("no public key recovers from this signature") from error
    return address_of(public)
