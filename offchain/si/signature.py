"""The sender's signature on an SI message: who wrote it, to whom, when.

    digest = keccak256("CoNET-SI/v1/message" ‖ recipient ‖ sender ‖ timestamp_ms (uint64)
                       ‖ message_id ‖ len(content) (uint32) ‖ content)
    signed = keccak256("\\x19Ethereum Signed Message:\\n32" ‖ digest)          (EIP-191, version 0x45)
    signature = r ‖ s ‖ v, 65 bytes, v ∈ {27, 28}, s in the lower half of the group order

`signed` is what `personal_sign` and eth-account's `Account.sign_message(encode_defunct(digest))`
sign, so any Ethereum wallet, hardware ones included, can sign an SI message. The domain label keeps
the signature from being replayed as any other CoNET signature, and the recipient is part of the
digest because the message is signed before it is encrypted: without it, a recipient could re-seal a
message it received to a third party, which would then believe it had been written to them.
"""

from __future__ import annotations

from eth_utils.crypto import keccak

from dle_vm import signature as canonical
from offchain.si.ecies import KeyPair
from offchain.si.errors import BadSignature

__all__ = ["DIGEST_DOMAIN", "MESSAGE_ID_SIZE", "SIGNATURE_SIZE", "eip191_hash", "message_digest", "recover", "sign"]

DIGEST_DOMAIN = b"CoNET-SI/v1/message"
MESSAGE_ID_SIZE = 16
SIGNATURE_SIZE = 65
_EIP191_PREFIX = b"\x19Ethereum Signed Message:\n32"


def message_digest(*, sender: bytes, recipient: bytes, timestamp_ms: int, message_id: bytes, content: bytes) -> bytes:
    """The 32-byte digest of a message's fields; the caller checks their sizes."""
    return keccak(
        DIGEST_DOMAIN
        + recipient
        + sender
        + timestamp_ms.to_bytes(8, "big")
        + message_id
        + len(content).to_bytes(4, "big")
        + content
    )


def eip191_hash(digest: bytes) -> bytes:
    """The hash a wallet signs for `personal_sign(digest)`."""
    return keccak(_EIP191_PREFIX + digest)


def sign(key: KeyPair, digest: bytes) -> bytes:
    """The sender's 65-byte Ethereum signature (r ‖ s ‖ v) over `digest`, as personal_sign makes it."""
    # libsecp256k1 signs deterministically (RFC 6979) and always with a low s.
    raw = key.private_key.sign_recoverable(eip191_hash(digest), hasher=None)
    return raw[:64] + bytes([raw[64] + 27])


def recover(digest: bytes, signature: bytes) -> bytes:
    """The 20-byte address that made `signature` over `digest`.

    Only the canonical form is accepted (v of 27 or 28, a low s), so that a message has exactly one
    valid signature and its bytes cannot be varied without the sender.
    """
    # One canonical-signature check for the whole project: the DLE's, over the EIP-191 hash.
    try:
        return canonical.recover(eip191_hash(digest), signature)
    except canonical.BadSignature as error:
        raise BadSignature(str(error)) from error
