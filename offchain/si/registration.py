"""What a client asks of its recipient node: registration and the signed requests of a registered client.

Every request travels as an ordinary outer envelope (N2) to the node through any relay, so a relay
sees the node's address and a bucket size, nothing else. The node-layer plaintext starts with a kind
byte (envelope.py reserved the room):

    0x01 deliver   a message for one of the node's clients (envelope.seal; not signed, not padded here)
    0x02 register  device address, payment authorization, session key
    0x03 listen    open the client's event stream
    0x04 fetch     hand over the mailbox
    0x05 ack       delete these messages, the client has them
    0x06 pay       a cumulative voucher answering the node's bill

Kinds 0x02-0x06 carry a *signed request*, padded like a message so the plaintext is exactly a bucket:

    kind (1) ‖ pad( client (20) ‖ timestamp_ms (8) ‖ request id (16) ‖ session key (33)
                    ‖ payload length (4) ‖ payload ‖ signature (65) )

    signature = personal_sign(keccak256("CoNET-SI/v1/node-request" ‖ node address (20) ‖ kind (1)
                                        ‖ every field before the signature))

The node address in the digest keeps a request for one node from being replayed to another; the
timestamp and random request id let the node refuse replays (node.py). The session key is a fresh
key of the client's: the node encrypts its answer — the listen stream, the mailbox, a bill — to it,
so a relay carrying the answer learns nothing, and a key stolen later opens no earlier answer.

A registration's payload is a CoNETCash payment authorization, the note ledger's EIP-712 `Authorize`
message (docs/protocols.md, "The note ledger") naming the node as payee. docs/drafts/si-node.md has
every field of every payload.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Protocol

from eth_account.messages import encode_typed_data
from eth_typing import ChecksumAddress
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from dle_vm import signature as canonical
from offchain.si import ecies
from offchain.si.ecies import ADDRESS_SIZE, KeyPair
from offchain.si.envelope import HEADER_SIZE, MAGIC, VERSION, Delivery, Layer, _parse_inner, parse_envelope
from offchain.si.errors import BadSignature, EnvelopeError, MalformedEnvelope, WrongRecipient
from offchain.si.padding import DEFAULT_POLICY, PaddingPolicy, pad, unpad
from offchain.si.signature import SIGNATURE_SIZE, recover, sign

__all__ = [
    "MAX_ACK_IDS",
    "REQUEST_ID_SIZE",
    "SESSION_KEY_SIZE",
    "AckPayload",
    "Authorization",
    "AuthorizationRejected",
    "AuthorizationUnverifiable",
    "AuthorizationVerifier",
    "FetchPayload",
    "MalformedRequest",
    "NodeRequest",
    "OfflineAuthorizationVerifier",
    "OpenedDelivery",
    "OpenedRequest",
    "PayPayload",
    "RequestKind",
    "open_node_layer",
    "seal_request",
    "sign_authorization",
    "sign_request",
]

REQUEST_DOMAIN = b"CoNET-SI/v1/node-request"
REQUEST_ID_SIZE = 16
SESSION_KEY_SIZE = 33
MAX_ACK_IDS = 1000
_TIMESTAMP_SIZE = 8
_LENGTH_SIZE = 4
_WORD = 32
_KIND_SIZE = 1
_REQUEST_FIXED = ADDRESS_SIZE + _TIMESTAMP_SIZE + REQUEST_ID_SIZE + SESSION_KEY_SIZE + _LENGTH_SIZE
NOTE_DOMAIN_NAME = "CoNETCash Note"
NOTE_DOMAIN_VERSION = "1"


class RequestKind(IntEnum):
    """The node-layer kind byte."""

    DELIVER = 0x01
    REGISTER = 0x02
    LISTEN = 0x03
    FETCH = 0x04
    ACK = 0x05
    PAY = 0x06


class MalformedRequest(MalformedEnvelope):
    """A node-layer request that decrypted but does not follow its wire format."""


class AuthorizationRejected(ValueError):
    """A registration's payment authorization was refused (signature, payee, domain, limit or expiry)."""


class AuthorizationUnverifiable(RuntimeError):
    """The authorization could not be checked now (the note chain is unreachable): not the client's
    fault, so the node answers 503 and registers nothing; the client may retry."""


# -- the payment authorization ------------------------------------------------------------------


_AUTHORIZE_TYPES = {
    "EIP712Domain": [
        {"name": "name", "type": "string"},
        {"name": "version", "type": "string"},
        {"name": "chainId", "type": "uint256"},
        {"name": "verifyingContract", "type": "address"},
        {"name": "salt", "type": "bytes32"},
    ],
    "Authorize": [
        {"name": "holder", "type": "address"},
        {"name": "payee", "type": "address"},
        {"name": "limit", "type": "uint256"},
        {"name": "nonce", "type": "uint256"},
        {"name": "expiry", "type": "uint256"},
    ],
}


@dataclass(frozen=True)
class Authorization:
    """The note ledger's `Authorize(holder, payee, limit, nonce, expiry)`, with its EIP-712 domain.

    Submitted to the holder's note chain it lets `payee` deduct up to `limit` until `expiry`; the
    authorization's id on the chain is (`holder`, `nonce`)."""

    chain_id: int
    """The main chain's id (the domain's chainId), not the note chain's VM id."""
    cash: bytes
    """CoNETCash's 20-byte address (verifyingContract)."""
    note_chain: bytes
    """The note chain id, 32 bytes (the domain's salt)."""
    holder: bytes
    payee: bytes
    limit: int
    nonce: int
    expiry: int
    """Unix seconds."""
    signature: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        for name in ("cash", "holder", "payee"):
            if len(getattr(self, name)) != ADDRESS_SIZE:
                raise MalformedRequest(f"authorization {name} must be {ADDRESS_SIZE} bytes")
        if len(self.note_chain) != _WORD:
            raise MalformedRequest(f"the note chain id is {_WORD} bytes, got {len(self.note_chain)}")
        for name in ("chain_id", "limit", "nonce", "expiry"):
            value = getattr(self, name)
            if not 0 <= value < 1 << 256:
                raise MalformedRequest(f"authorization {name} does not fit a uint256")

    def typed_data(self) -> dict[str, Any]:
        return {
            "types": _AUTHORIZE_TYPES,
            "primaryType": "Authorize",
            "domain": {
                "name": NOTE_DOMAIN_NAME,
                "version": NOTE_DOMAIN_VERSION,
                "chainId": self.chain_id,
                "verifyingContract": to_checksum_address(self.cash),
                "salt": self.note_chain,
            },
            "message": {
                "holder": to_checksum_address(self.holder),
                "payee": to_checksum_address(self.payee),
                "limit": self.limit,
                "nonce": self.nonce,
                "expiry": self.expiry,
            },
        }

    def digest(self) -> bytes:
        """keccak256(0x19 0x01 ‖ domain separator ‖ struct hash), what the holder signs and the program checks."""
        signable = encode_typed_data(full_message=self.typed_data())
        return keccak(b"\x19" + signable.version + signable.header + signable.body)

    def signer(self) -> bytes | None:
        """Who signed it (canonical signatures only, as the program's ECDSA check), or None."""
        try:
            return canonical.recover(self.digest(), self.signature)
        except canonical.BadSignature:
            return None

    def encode(self) -> bytes:
        """A registration's payload (the holder is the registering client, so it is not repeated)."""
        return (
            self.chain_id.to_bytes(_WORD, "big")
            + self.cash
            + self.note_chain
            + self.payee
            + self.limit.to_bytes(_WORD, "big")
            + self.nonce.to_bytes(_WORD, "big")
            + self.expiry.to_bytes(_WORD, "big")
            + self.signature
        )

    @classmethod
    def decode(cls, data: bytes, *, holder: bytes) -> Authorization:
        """A registration's payload; the holder is the registering client."""
        if len(data) != _REGISTER_SIZE:
            raise MalformedRequest(f"a registration payload is {_REGISTER_SIZE} bytes, got {len(data)}")
        words = _Reader(data)
        return cls(
            chain_id=words.uint(),
            cash=words.take(ADDRESS_SIZE),
            note_chain=words.take(_WORD),
            holder=holder,
            payee=words.take(ADDRESS_SIZE),
            limit=words.uint(),
            nonce=words.uint(),
            expiry=words.uint(),
            signature=words.take(SIGNATURE_SIZE),
        )


_REGISTER_SIZE = _WORD + ADDRESS_SIZE + _WORD + ADDRESS_SIZE + 3 * _WORD + SIGNATURE_SIZE


def sign_authorization(
    holder: KeyPair,
    *,
    chain_id: int,
    cash: bytes,
    note_chain: bytes,
    payee: bytes,
    limit: int,
    nonce: int,
    expiry: int,
) -> Authorization:
    """The holder's side: sign an `Authorize` for `payee` (the recipient node)."""
    unsigned = Authorization(chain_id, cash, note_chain, holder.address, payee, limit, nonce, expiry)
    return Authorization(
        chain_id,
        cash,
        note_chain,
        holder.address,
        payee,
        limit,
        nonce,
        expiry,
        canonical.sign(holder.secret, unsigned.digest()),
    )


class AuthorizationVerifier(Protocol):
    """Decides whether a registration's authorization is good enough to serve the client on.

    The node has already checked the terms (payee, domain, limit, expiry). The note-chain verifier
    (`settlement.NoteChainVerifier`) also requires the `authorize` transaction to be final on the note
    chain, so the node can deduct without the holder online; the default checks the signature only."""

    @property
    def final_on_chain(self) -> bool:
        """True when `verify` also proves the authorization is final on the note chain."""
        ...

    async def verify(self, authorization: Authorization, *, now: int) -> None:
        """Raise `AuthorizationRejected` saying why (or `AuthorizationUnverifiable` when it cannot be
        checked now), or return."""


@dataclass(frozen=True)
class OfflineAuthorizationVerifier:
    """The signature check only: the holder signed exactly these terms (EIP-712, canonical signature).

    It does not know whether the authorization was submitted to the note chain, nor whether the note
    holds the balance; until the DLE's note chains are reachable that risk is the node's (it bounds
    it with its credit limit)."""

    final_on_chain: bool = False

    async def verify(self, authorization: Authorization, *, now: int) -> None:
        if authorization.signer() != authorization.holder:
            # No address in the message: refusals travel in clear through the relay.
            raise AuthorizationRejected("the authorization is not signed by its holder, the registering client")


# -- signed requests ------------------------------------------------------------------------------


class _Reader:
    """Reads fixed fields off the front of a byte string; running short is a `MalformedRequest`."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    def take(self, size: int) -> bytes:
        if self.offset + size > len(self.data):
            raise MalformedRequest(f"the request ends {self.offset + size - len(self.data)} bytes early")
        chunk = self.data[self.offset : self.offset + size]
        self.offset += size
        return chunk

    def uint(self, size: int = _WORD) -> int:
        return int.from_bytes(self.take(size), "big")

    def rest(self) -> bytes:
        return self.take(len(self.data) - self.offset)


def _request_digest(node: bytes, kind: RequestKind, signed_fields: bytes) -> bytes:
    return keccak(REQUEST_DOMAIN + node + bytes([kind]) + signed_fields)


@dataclass(frozen=True)
class NodeRequest:
    """A client's signed request to its node (kinds register to pay)."""

    kind: RequestKind
    client: bytes
    timestamp_ms: int
    request_id: bytes
    session_key: bytes
    """33 bytes, compressed: the node encrypts its answer to it."""
    payload: bytes
    signature: bytes = field(repr=False)

    @property
    def client_address(self) -> ChecksumAddress:
        return to_checksum_address(self.client)

    def _signed_fields(self) -> bytes:
        return (
            self.client
            + self.timestamp_ms.to_bytes(_TIMESTAMP_SIZE, "big")
            + self.request_id
            + self.session_key
            + len(self.payload).to_bytes(_LENGTH_SIZE, "big")
            + self.payload
        )

    def encode(self) -> bytes:
        return self._signed_fields() + self.signature

    @classmethod
    def decode(cls, kind: RequestKind, data: bytes) -> NodeRequest:
        reader = _Reader(data)
        client = reader.take(ADDRESS_SIZE)
        timestamp_ms = reader.uint(_TIMESTAMP_SIZE)
        request_id = reader.take(REQUEST_ID_SIZE)
        session_key = reader.take(SESSION_KEY_SIZE)
        size = reader.uint(_LENGTH_SIZE)
        payload = reader.take(size)
        signature = reader.take(SIGNATURE_SIZE)
        if reader.offset != len(data):
            raise MalformedRequest(f"{len(data) - reader.offset} bytes follow the request's signature")
        try:
            ecies.load_public_key(session_key)
        except EnvelopeError as error:
            raise MalformedRequest(f"the session key is not a compressed secp256k1 key: {error}") from error
        if session_key[0] not in (0x02, 0x03):
            raise MalformedRequest("the session key must be compressed (33 bytes, 02/03 prefix)")
        return cls(kind, client, timestamp_ms, request_id, session_key, payload, signature)

    def verify(self, node: bytes) -> None:
        """Raise `BadSignature` unless the client named in the request signed it, for this node."""
        if recover(_request_digest(node, self.kind, self._signed_fields()), self.signature) != self.client:
            raise BadSignature("the request is not signed by the client it names")


def sign_request(
    key: KeyPair,
    *,
    node: bytes,
    kind: RequestKind,
    session_key: bytes,
    payload: bytes = b"",
    timestamp_ms: int | None = None,
    request_id: bytes | None = None,
) -> NodeRequest:
    """The client's side: a request signed with its wallet key, answered to `session_key`."""
    if kind is RequestKind.DELIVER:
        raise ValueError("a delivery is sealed with envelope.seal, not signed as a request")
    unsigned = NodeRequest(
        kind,
        key.address,
        time.time_ns() // 1_000_000 if timestamp_ms is None else timestamp_ms,
        os.urandom(REQUEST_ID_SIZE) if request_id is None else request_id,
        session_key,
        payload,
        b"",
    )
    digest = _request_digest(node, kind, unsigned._signed_fields())
    return NodeRequest(**{**unsigned.__dict__, "signature": sign(key, digest)})


def seal_request(node_public_key: bytes, request: NodeRequest, policy: PaddingPolicy = DEFAULT_POLICY) -> bytes:
    """The outer envelope carrying `request` to the node: exactly as large as a message of its bucket."""
    node = ecies.load_public_key(node_public_key)
    plaintext = bytes([request.kind]) + pad(request.encode(), policy, reserve=_KIND_SIZE)
    header = MAGIC + bytes([VERSION]) + ecies.address_of(node)
    header += (len(plaintext) + ecies.ECIES_OVERHEAD).to_bytes(_LENGTH_SIZE, "big")
    assert len(header) == HEADER_SIZE
    return header + ecies.encrypt(node, plaintext, info=Layer.NODE.info, aad=header)


@dataclass(frozen=True)
class OpenedDelivery:
    kind: RequestKind
    delivery: Delivery


@dataclass(frozen=True)
class OpenedRequest:
    kind: RequestKind
    request: NodeRequest


def open_node_layer(
    data: bytes, node_key: KeyPair, policy: PaddingPolicy = DEFAULT_POLICY
) -> OpenedDelivery | OpenedRequest:
    """Node side: one decryption, then the kind byte says what follows; parsed as strictly as a message.

    A delivery is what `envelope.open_outer` returns; a request is decoded but its signature is not
    yet checked (`NodeRequest.verify`), so the caller can first refuse cheap things (stale times)."""
    parsed = parse_envelope(data, policy)
    if parsed.key_id != node_key.address:
        raise WrongRecipient(f"the envelope is for {parsed.destination}, not {node_key.checksum_address}")
    plaintext = ecies.decrypt(node_key, parsed.body, info=Layer.NODE.info, aad=parsed.header)
    try:
        kind = RequestKind(plaintext[0])
    except ValueError as error:
        raise MalformedRequest(f"unknown node-layer kind {plaintext[:1].hex() or 'none'}") from error
    body = plaintext[_KIND_SIZE:]
    if kind is RequestKind.DELIVER:
        # The same strict inner-layer parse `open_outer` does: one parser for what goes in the mailbox.
        return OpenedDelivery(kind, Delivery(recipient=_parse_inner(body, policy).destination, inner=body))
    return OpenedRequest(kind, NodeRequest.decode(kind, unpad(body, policy, reserve=_KIND_SIZE)))


# -- payloads -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FetchPayload:
    """fetch: at most `limit` messages (the node also caps the bytes of one answer)."""

    limit: int

    def encode(self) -> bytes:
        return self.limit.to_bytes(_LENGTH_SIZE, "big")

    @classmethod
    def decode(cls, data: bytes) -> FetchPayload:
        if len(data) != _LENGTH_SIZE:
            raise MalformedRequest(f"a fetch payload is {_LENGTH_SIZE} bytes, got {len(data)}")
        return cls(int.from_bytes(data, "big"))


@dataclass(frozen=True)
class AckPayload:
    """ack: the node-side ids (keccak256 of each inner envelope) of messages the client has safely."""

    ids: tuple[bytes, ...]

    def encode(self) -> bytes:
        return len(self.ids).to_bytes(2, "big") + b"".join(self.ids)

    @classmethod
    def of(cls, ids: Sequence[bytes]) -> AckPayload:
        if len(ids) > MAX_ACK_IDS or any(len(i) != _WORD for i in ids):
            raise ValueError(f"an ack names 0 to {MAX_ACK_IDS} ids of {_WORD} bytes")
        return cls(tuple(ids))

    @classmethod
    def decode(cls, data: bytes) -> AckPayload:
        reader = _Reader(data)
        count = reader.uint(2)
        if count > MAX_ACK_IDS:
            raise MalformedRequest(f"an ack names at most {MAX_ACK_IDS} ids, this one {count}")
        ids = tuple(reader.take(_WORD) for _ in range(count))
        if reader.offset != len(data):
            raise MalformedRequest("bytes follow the ack's ids")
        return cls(ids)


@dataclass(frozen=True)
class PayPayload:
    """pay: the terms and signature of a cumulative voucher (billing.Voucher) to the node; the node
    fills in the rest (payer = client, payee = node, domain = the client's note chain)."""

    cumulative_amount: int
    nonce: int
    expiry: int
    signature: bytes

    def encode(self) -> bytes:
        return (
            self.cumulative_amount.to_bytes(_WORD, "big")
            + self.nonce.to_bytes(_WORD, "big")
            + self.expiry.to_bytes(_WORD, "big")
            + self.signature
        )

    @classmethod
    def decode(cls, data: bytes) -> PayPayload:
        if len(data) != 3 * _WORD + SIGNATURE_SIZE:
            raise MalformedRequest(f"a pay payload is {3 * _WORD + SIGNATURE_SIZE} bytes, got {len(data)}")
        reader = _Reader(data)
        return cls(reader.uint(), reader.uint(), reader.uint(), reader.take(SIGNATURE_SIZE))
