"""SI, the stealth internet: envelopes that reach people by wallet address through relays that cannot read them.

`seal` (sender) → relay: `parse_envelope(...).destination` → node: `open_outer` → recipient: `open_inner`.
The wire format is in docs/si-envelope.md.
"""

from offchain.si.ecies import KeyPair, address_of, load_public_key
from offchain.si.envelope import (
    Delivery,
    Envelope,
    Message,
    max_content_size,
    open_inner,
    open_outer,
    parse_envelope,
    seal,
    sealed_size,
)
from offchain.si.errors import (
    BadMagic,
    BadPadding,
    BadSignature,
    EnvelopeError,
    InvalidKey,
    MalformedEnvelope,
    OversizedEnvelope,
    TamperedEnvelope,
    TruncatedEnvelope,
    UnsupportedVersion,
    WrongRecipient,
)
from offchain.si.padding import DEFAULT_POLICY, PaddingPolicy

__all__ = [
    "DEFAULT_POLICY",
    "BadMagic",
    "BadPadding",
    "BadSignature",
    "Delivery",
    "Envelope",
    "EnvelopeError",
    "InvalidKey",
    "KeyPair",
    "MalformedEnvelope",
    "Message",
    "OversizedEnvelope",
    "PaddingPolicy",
    "TamperedEnvelope",
    "TruncatedEnvelope",
    "UnsupportedVersion",
    "WrongRecipient",
    "address_of",
    "load_public_key",
    "max_content_size",
    "open_inner",
    "open_outer",
    "parse_envelope",
    "seal",
    "sealed_size",
]
