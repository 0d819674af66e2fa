"""Why an SI envelope was refused.

Every refusal is an `EnvelopeError`, so a relay or node can drop bad input with one `except` and
still log the precise reason. The base class is a `ValueError` because every case is a bad value
handed in from outside, never a fault of the program.
"""

from __future__ import annotations

__all__ = [
    "BadMagic",
    "BadPadding",
    "BadSignature",
    "EnvelopeError",
    "InvalidKey",
    "MalformedEnvelope",
    "OversizedEnvelope",
    "TamperedEnvelope",
    "TruncatedEnvelope",
    "UnsupportedVersion",
    "WrongRecipient",
]


class EnvelopeError(ValueError):
    """An SI envelope, or a key or plaintext meant for one, was refused."""


class MalformedEnvelope(EnvelopeError):
    """The bytes do not follow the wire format (a length that does not add up, trailing bytes, an unknown kind)."""


class TruncatedEnvelope(MalformedEnvelope):
    """The input ends before the fields its header announces."""


class BadMagic(MalformedEnvelope):
    """The input does not start with the SI magic: it is not an SI envelope at all."""


class BadPadding(MalformedEnvelope):
    """A decrypted plaintext is not a canonical padding of some content into a size bucket."""


class UnsupportedVersion(EnvelopeError):
    """The envelope is of a wire-format version this code does not speak."""


class OversizedEnvelope(EnvelopeError):
    """The input, or content to be sealed, exceeds the largest size bucket of the padding policy."""


class InvalidKey(EnvelopeError):
    """A public or private key has the wrong length or is not a valid secp256k1 key."""


class WrongRecipient(EnvelopeError):
    """The envelope's key id names someone else: this key cannot (and should not try to) open it."""


class TamperedEnvelope(EnvelopeError):
    """Authenticated decryption failed: the bytes were changed, or were not sealed to this key."""


class BadSignature(EnvelopeError):
    """The message's signature is invalid or was not made by the sender it names."""
