"""The SI envelope: a message to a person, sealed in two layers (DESIGN §7, white paper "CoNET-SI").

The sender signs the message, encrypts it to the recipient's wallet key (N1, the inner layer), and
encrypts that to the recipient's node (N2, the outer layer). A relay sees only N2's key id, the
node's address, which tells it where to forward. The node opens N2 and sees only N1's key id, the
recipient's address, which tells it whose mailbox or push stream N1 goes to. Only the recipient
opens N1 and learns who wrote what, and only the recipient can check that the sender signed it.

Both layers share one wire format (docs/si-envelope.md has every byte):

    magic "CNSI" ‖ version 0x01 ‖ key id (20) ‖ body length (uint32) ‖ body (ECIES blob)

The key id is the 20-byte wallet address of the layer's recipient, keccak256(x ‖ y)[12:]. That is
how the white paper names the destination ("the wallet address 0x12a0..NodeB through the side
channel"), it is the key the node registry is looked up by, and a relay or node needs no second
identifier; 20 bytes also leave no room for a chosen key to collide with another's id, where an
8-byte id could be matched by grinding keys.

Only the innermost plaintext is padded, and to `bucket - DELIVER_OVERHEAD` bytes: the layers above
it add a fixed number of bytes, so the node's plaintext is exactly one bucket and every envelope on
the wire is `LAYER_OVERHEAD + bucket` bytes, whatever the node-layer kind. Parsers check sizes and
key ids before any curve or cipher work, so junk costs a relay or node a few comparisons.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from enum import Enum

from coincurve import PublicKey
from eth_typing import ChecksumAddress
from eth_utils.address import to_checksum_address

from offchain.si import ecies
from offchain.si.ecies import ADDRESS_SIZE, ECIES_OVERHEAD, KeyPair
from offchain.si.errors import (
    BadMagic,
    BadSignature,
    MalformedEnvelope,
    OversizedEnvelope,
    TruncatedEnvelope,
    UnsupportedVersion,
    WrongRecipient,
)
from offchain.si.padding import DEFAULT_POLICY, LENGTH_PREFIX_SIZE, PaddingPolicy, pad, unpad
from offchain.si.signature import MESSAGE_ID_SIZE, SIGNATURE_SIZE, message_digest, recover, sign

__all__ = [
    "DELIVER_OVERHEAD",
    "HEADER_SIZE",
    "KIND_DELIVER",
    "LAYER_OVERHEAD",
    "MAGIC",
    "MESSAGE_OVERHEAD",
    "VERSION",
    "Delivery",
    "Envelope",
    "Layer",
    "Message",
    "max_content_size",
    "open_inner",
    "open_outer",
    "parse_envelope",
    "seal",
    "sealed_size",
]

MAGIC = b"CNSI"
VERSION = 1
_LENGTH_SIZE = 4
HEADER_SIZE = len(MAGIC) + 1 + ADDRESS_SIZE + _LENGTH_SIZE
"""29: magic, version, key id, body length. The whole header is the AES-GCM associated data."""
LAYER_OVERHEAD = HEADER_SIZE + ECIES_OVERHEAD
"""90: what one layer adds to its plaintext."""

KIND_DELIVER = 0x01
"""Node-layer plaintext kind: deliver the inner envelope that follows to the client it names.

The node layer will also carry registrations and mailbox fetches (the same /post, the same node
key); a kind byte lets the node tell them apart after one decryption."""
_KIND_SIZE = 1
DELIVER_OVERHEAD = _KIND_SIZE + LAYER_OVERHEAD
"""91: what wraps the padded message inside the node-layer plaintext (kind byte, inner layer)."""

_TIMESTAMP_SIZE = 8
_CONTENT_LENGTH_SIZE = 4
MESSAGE_OVERHEAD = ADDRESS_SIZE + _TIMESTAMP_SIZE + MESSAGE_ID_SIZE + _CONTENT_LENGTH_SIZE + SIGNATURE_SIZE
"""113: the fixed fields around a message's content (sender, timestamp, id, length, signature)."""


class Layer(Enum):
    """Which layer a key opens. Each has its own HKDF info, so a blob sealed for one layer never opens
    as the other, even where one key is both (a server that is its own recipient node)."""

    NODE = b"CoNET-SI/v1/ecies/node"
    RECIPIENT = b"CoNET-SI/v1/ecies/recipient"

    @property
    def info(self) -> bytes:
        return self.value


@dataclass(frozen=True)
class Envelope:
    """One parsed layer: the clear header and the still-encrypted body."""

    version: int
    key_id: bytes
    """The 20-byte address of the layer's recipient, the only routing information in clear."""
    header: bytes
    body: bytes

    @property
    def destination(self) -> ChecksumAddress:
        return to_checksum_address(self.key_id)


@dataclass(frozen=True)
class Delivery:
    """What a recipient node learns from an envelope addressed to it: whose it is, and nothing more."""

    recipient: ChecksumAddress
    inner: bytes
    """The recipient's envelope (N1), to push or store as it is: the node cannot read it."""


@dataclass(frozen=True)
class Message:
    """An opened, authenticated message."""

    sender: ChecksumAddress
    recipient: ChecksumAddress
    timestamp_ms: int
    """The sender's clock, milliseconds since the Unix epoch; signed, but not checked for freshness."""
    message_id: bytes
    """16 bytes chosen by the sender; signed, so a recipient can drop replays by id."""
    content: bytes
    signature: bytes


def max_content_size(policy: PaddingPolicy = DEFAULT_POLICY) -> int:
    """The largest content `seal` accepts under `policy`."""
    return policy.max_bucket - DELIVER_OVERHEAD - LENGTH_PREFIX_SIZE - MESSAGE_OVERHEAD


def sealed_size(content_size: int, policy: PaddingPolicy = DEFAULT_POLICY) -> int:
    """The size on the wire of an envelope carrying `content_size` bytes: `LAYER_OVERHEAD` + its bucket."""
    return LAYER_OVERHEAD + policy.bucket_for(DELIVER_OVERHEAD + LENGTH_PREFIX_SIZE + MESSAGE_OVERHEAD + content_size)


def _parse_layer(data: bytes, max_size: int) -> Envelope:
    # The size check comes first so an oversized input costs one comparison; the version is checked
    # before any other length so a later version is free to lay out everything after it differently.
    if len(data) > max_size:
        raise OversizedEnvelope(f"{len(data)} bytes exceed the limit of {max_size}")
    if data[: len(MAGIC)] != MAGIC:
        if MAGIC.startswith(data):
            raise TruncatedEnvelope(f"{len(data)} bytes end inside the magic")
        raise BadMagic("not an SI envelope: the magic is wrong")
    if len(data) == len(MAGIC):
        raise TruncatedEnvelope("the input ends before the version byte")
    version = data[len(MAGIC)]
    if version != VERSION:
        raise UnsupportedVersion(f"envelope version {version}; this code speaks version {VERSION}")
    if len(data) < HEADER_SIZE:
        raise TruncatedEnvelope(f"{len(data)} bytes end inside the {HEADER_SIZE}-byte header")
    body_size = int.from_bytes(data[HEADER_SIZE - _LENGTH_SIZE : HEADER_SIZE], "big")
    if HEADER_SIZE + body_size > max_size:
        raise OversizedEnvelope(f"the header announces {HEADER_SIZE + body_size} bytes, over the limit of {max_size}")
    if len(data) < HEADER_SIZE + body_size:
        raise TruncatedEnvelope(f"the header announces a {body_size}-byte body, {len(data) - HEADER_SIZE} follow")
    if len(data) > HEADER_SIZE + body_size:
        raise MalformedEnvelope(f"{len(data) - HEADER_SIZE - body_size} bytes follow the body")
    if body_size < ECIES_OVERHEAD:
        raise MalformedEnvelope(f"a body is at least {ECIES_OVERHEAD} bytes, the header announces {body_size}")
    key_id = data[len(MAGIC) + 1 : len(MAGIC) + 1 + ADDRESS_SIZE]
    return Envelope(version, key_id, data[:HEADER_SIZE], data[HEADER_SIZE:])


def parse_envelope(data: bytes, policy: PaddingPolicy = DEFAULT_POLICY) -> Envelope:
    """Parse an envelope as posted to a relay or node, without decrypting it.

    A relay calls this to learn where to forward (`Envelope.destination`); it also refuses envelopes
    whose size is not a bucket, since such sizes would leak more than the bucket.
    """
    envelope = _parse_layer(data, LAYER_OVERHEAD + policy.max_bucket)
    if not policy.is_bucket(len(envelope.body) - ECIES_OVERHEAD):
        raise MalformedEnvelope(f"a {len(data)}-byte envelope is not a size bucket plus {LAYER_OVERHEAD} bytes")
    return envelope


def _seal_layer(public_key: PublicKey, key_id: bytes, layer: Layer, plaintext: bytes) -> bytes:
    header = MAGIC + bytes([VERSION]) + key_id + (len(plaintext) + ECIES_OVERHEAD).to_bytes(_LENGTH_SIZE, "big")
    return header + ecies.encrypt(public_key, plaintext, info=layer.info, aad=header)


def _open_layer(envelope: Envelope, key: KeyPair, layer: Layer) -> bytes:
    # Comparing the key id first spares a scalar multiplication for envelopes meant for another key.
    if envelope.key_id != key.address:
        raise WrongRecipient(f"the envelope is for {envelope.destination}, not {key.checksum_address}")
    return ecies.decrypt(key, envelope.body, info=layer.info, aad=envelope.header)


def seal(
    sender: KeyPair | bytes,
    recipient_public_key: bytes | PublicKey,
    node_public_key: bytes | PublicKey,
    content: bytes,
    *,
    timestamp_ms: int | None = None,
    message_id: bytes | None = None,
    policy: PaddingPolicy = DEFAULT_POLICY,
) -> bytes:
    """Sign `content` as `sender`, encrypt it to the recipient, and that to the recipient's node.

    Public keys are 33, 64 or 65 bytes. `message_id` defaults to 16 random bytes and `timestamp_ms`
    to now. Raises `InvalidKey` for a bad key and `OversizedEnvelope` for content over
    `max_content_size(policy)`.
    """
    sender_key = KeyPair.of(sender)
    recipient = ecies.load_public_key(recipient_public_key)
    node = ecies.load_public_key(node_public_key)
    if timestamp_ms is None:
        timestamp_ms = time.time_ns() // 1_000_000
    if not 0 <= timestamp_ms < 1 << (8 * _TIMESTAMP_SIZE):
        raise ValueError(f"timestamp_ms must fit in an unsigned 64-bit integer, got {timestamp_ms}")
    if message_id is None:
        message_id = os.urandom(MESSAGE_ID_SIZE)
    if len(message_id) != MESSAGE_ID_SIZE:
        raise ValueError(f"message_id must be {MESSAGE_ID_SIZE} bytes, got {len(message_id)}")
    if len(content) > max_content_size(policy):
        raise OversizedEnvelope(f"{len(content)} bytes of content exceed the limit of {max_content_size(policy)}")

    recipient_address = ecies.address_of(recipient)
    digest = message_digest(
        sender=sender_key.address,
        recipient=recipient_address,
        timestamp_ms=timestamp_ms,
        message_id=message_id,
        content=content,
    )
    message = (
        sender_key.address
        + timestamp_ms.to_bytes(_TIMESTAMP_SIZE, "big")
        + message_id
        + len(content).to_bytes(_CONTENT_LENGTH_SIZE, "big")
        + content
        + sign(sender_key, digest)
    )
    padded = pad(message, policy, reserve=DELIVER_OVERHEAD)
    inner = _seal_layer(recipient, recipient_address, Layer.RECIPIENT, padded)
    return _seal_layer(node, ecies.address_of(node), Layer.NODE, bytes([KIND_DELIVER]) + inner)


def _parse_inner(data: bytes, policy: PaddingPolicy) -> Envelope:
    envelope = _parse_layer(data, policy.max_bucket - _KIND_SIZE)
    if not policy.is_bucket(len(data) + _KIND_SIZE):
        raise MalformedEnvelope(f"a {len(data)}-byte inner envelope is not a size bucket minus {_KIND_SIZE}")
    return envelope


def open_outer(envelope: bytes, node_key: KeyPair | bytes, policy: PaddingPolicy = DEFAULT_POLICY) -> Delivery:
    """Node side: open the outer layer and learn the recipient's address, and nothing of the content."""
    parsed = parse_envelope(envelope, policy)  # first: junk is refused before the key is even loaded
    plaintext = _open_layer(parsed, KeyPair.of(node_key), Layer.NODE)
    # The plaintext is authentic, yet a sender is free to lie in it, so it is parsed as strictly.
    kind = plaintext[:_KIND_SIZE]
    if kind != bytes([KIND_DELIVER]):
        raise MalformedEnvelope(f"unknown node-layer kind {kind.hex() or 'none'}")
    inner = plaintext[_KIND_SIZE:]
    return Delivery(recipient=_parse_inner(inner, policy).destination, inner=inner)


def open_inner(inner: bytes, recipient_key: KeyPair | bytes, policy: PaddingPolicy = DEFAULT_POLICY) -> Message:
    """Recipient side: open the inner layer, check the sender's signature, return the message."""
    parsed = _parse_inner(inner, policy)
    recipient = KeyPair.of(recipient_key)
    padded = _open_layer(parsed, recipient, Layer.RECIPIENT)
    message = unpad(padded, policy, reserve=DELIVER_OVERHEAD)
    if len(message) < MESSAGE_OVERHEAD:
        raise TruncatedEnvelope(f"a message is at least {MESSAGE_OVERHEAD} bytes, got {len(message)}")
    sender = message[:ADDRESS_SIZE]
    offset = ADDRESS_SIZE
    timestamp_ms = int.from_bytes(message[offset : offset + _TIMESTAMP_SIZE], "big")
    offset += _TIMESTAMP_SIZE
    message_id = message[offset : offset + MESSAGE_ID_SIZE]
    offset += MESSAGE_ID_SIZE
    content_size = int.from_bytes(message[offset : offset + _CONTENT_LENGTH_SIZE], "big")
    offset += _CONTENT_LENGTH_SIZE
    if len(message) != MESSAGE_OVERHEAD + content_size:
        raise MalformedEnvelope(
            f"the message announces {content_size} bytes of content, {len(message) - MESSAGE_OVERHEAD} are there"
        )
    content = message[offset : offset + content_size]
    signature = message[offset + content_size :]
    digest = message_digest(
        sender=sender,
        recipient=recipient.address,
        timestamp_ms=timestamp_ms,
        message_id=message_id,
        content=content,
    )
    if recover(digest, signature) != sender:
        raise BadSignature(f"the message names {to_checksum_address(sender)} as sender, who did not sign it")
    return Message(
        sender=to_checksum_address(sender),
        recipient=recipient.checksum_address,
        timestamp_ms=timestamp_ms,
        message_id=message_id,
        content=content,
        signature=signature,
    )
