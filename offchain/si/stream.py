"""What a recipient node says to its client: events, encrypted to the session key, framed as SSE.

Every answer of the node to a client's request (registration.py) — the long-lived listen stream, the
mailbox, the answer to an ack or a payment — is a `text/event-stream` body of events, each one

    data: base64url( ECIES(session key, event plaintext) )  "\\n\\n"        (unpadded base64url)

with ECIES as the envelope's (ecies.py) under HKDF info "CoNET-SI/v1/ecies/session" and no associated
data. The event plaintext is exactly one padding bucket long, so a relay carrying the stream learns
the bucket of each event and nothing else, not even whether it is a message or a bill:

    message:  0x01 ‖ inner envelope N1                           (N1 is a bucket minus 1 already)
    other:    type (1) ‖ pad(body, reserve = 1)                  (padding.py)

The node does not send the node-side message id: the client computes it, keccak256(N1), to
acknowledge. A comment line (": \\n\\n") keeps an idle stream alive and lets the node notice a closed
connection. docs/drafts/si-node.md lists the bodies.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar

from offchain.si import ecies
from offchain.si.ecies import ADDRESS_SIZE, KeyPair
from offchain.si.errors import MalformedEnvelope
from offchain.si.padding import DEFAULT_POLICY, PaddingPolicy, pad, unpad

__all__ = [
    "CONTENT_TYPE",
    "KEEPALIVE",
    "SESSION_INFO",
    "Acked",
    "Bill",
    "Event",
    "EventType",
    "InboxEnd",
    "MalformedEvent",
    "Paid",
    "Ready",
    "Registered",
    "SSEParser",
    "open_event",
    "seal_event",
    "sse_frame",
]

CONTENT_TYPE = "text/event-stream"
SESSION_INFO = b"CoNET-SI/v1/ecies/session"
KEEPALIVE = b": \n\n"
_TYPE_SIZE = 1
_WORD = 32


class MalformedEvent(MalformedEnvelope):
    """An event, or the SSE framing around it, is not as this module writes it."""


class EventType(IntEnum):
    MESSAGE = 0x01
    BILL = 0x02
    REGISTERED = 0x03
    READY = 0x04
    INBOX_END = 0x05
    ACKED = 0x06
    PAID = 0x07


@dataclass(frozen=True)
class Event:
    type: EventType
    body: bytes
    """N1 for a message, else the unpadded body (one of the dataclasses below, encoded)."""


def seal_event(session_key: bytes, event_type: EventType, body: bytes, policy: PaddingPolicy = DEFAULT_POLICY) -> bytes:
    """Encrypt an event to a client's session key (33 bytes)."""
    if event_type is EventType.MESSAGE:
        if not policy.is_bucket(len(body) + _TYPE_SIZE):
            raise MalformedEvent(f"a {len(body)}-byte inner envelope is not a bucket minus {_TYPE_SIZE}")
        plaintext = bytes([event_type]) + body
    else:
        plaintext = bytes([event_type]) + pad(body, policy, reserve=_TYPE_SIZE)
    return ecies.encrypt(session_key, plaintext, info=SESSION_INFO, aad=b"")


def open_event(session: KeyPair, blob: bytes, policy: PaddingPolicy = DEFAULT_POLICY) -> Event:
    """Decrypt an event with the session key it was sealed to."""
    plaintext = ecies.decrypt(session, blob, info=SESSION_INFO, aad=b"")
    if not policy.is_bucket(len(plaintext)):
        raise MalformedEvent(f"a {len(plaintext)}-byte event is not a size bucket")
    try:
        event_type = EventType(plaintext[0])
    except ValueError as error:
        raise MalformedEvent(f"unknown event type {plaintext[0]:#04x}") from error
    if event_type is EventType.MESSAGE:
        return Event(event_type, plaintext[_TYPE_SIZE:])
    return Event(event_type, unpad(plaintext[_TYPE_SIZE:], policy, reserve=_TYPE_SIZE))


def sse_frame(blob: bytes) -> bytes:
    """One SSE event carrying `blob`."""
    return b"data: " + base64.urlsafe_b64encode(blob).rstrip(b"=") + b"\n\n"


class SSEParser:
    """Incremental reader of the node's SSE bodies: feed chunks as they arrive, get whole blobs.

    It follows the SSE line rules (LF or CRLF, comments, `data:` lines joined, a blank line ends an
    event), ignores other fields, and refuses an event growing past `max_event` bytes so a broken or
    hostile peer cannot make it buffer without bound."""

    def __init__(self, max_event: int) -> None:
        self.max_event = max_event
        self._buffer = b""
        self._data: list[bytes] = []
        self._size = 0

    def feed(self, chunk: bytes) -> list[bytes]:
        self._buffer += chunk
        blobs: list[bytes] = []
        while (end := self._buffer.find(b"\n")) >= 0:
            line = self._buffer[:end].removesuffix(b"\r")
            self._buffer = self._buffer[end + 1 :]
            if not line:
                if self._data:
                    blobs.append(_decode_data(b"".join(self._data)))
                self._data, self._size = [], 0
            elif line.startswith(b"data:"):
                value = line[5:].removeprefix(b" ")
                self._size += len(value)
                if self._size > self.max_event:
                    raise MalformedEvent(f"an event is over {self.max_event} bytes")
                self._data.append(value)
        if len(self._buffer) > self.max_event:
            raise MalformedEvent(f"a line is over {self.max_event} bytes")
        return blobs


def _decode_data(data: bytes) -> bytes:
    try:
        return base64.urlsafe_b64decode(data + b"=" * (-len(data) % 4))
    except ValueError as error:
        raise MalformedEvent("an event's data is not base64url") from error


# -- bodies ----------------------------------------------------------------------------------------


def _uint(value: int, size: int = _WORD) -> bytes:
    return value.to_bytes(size, "big")


class _Fixed:
    """Bodies are fixed sequences of unsigned big-endian integers (and addresses): sizes in `FIELDS`."""

    FIELDS: ClassVar[tuple[tuple[str, int], ...]]

    def encode(self) -> bytes:
        out = b""
        for name, size in self.FIELDS:
            value = getattr(self, name)
            out += value if isinstance(value, bytes) else _uint(value, size)
        return out

    @classmethod
    def _values(cls, data: bytes, type_name: str) -> list[int | bytes]:
        expected = sum(size for _, size in cls.FIELDS)
        if len(data) != expected:
            raise MalformedEvent(f"a {type_name} event body is {expected} bytes, got {len(data)}")
        values: list[int | bytes] = []
        offset = 0
        for name, size in cls.FIELDS:
            chunk = data[offset : offset + size]
            values.append(chunk if name in ("node",) else int.from_bytes(chunk, "big"))
            offset += size
        return values


@dataclass(frozen=True)
class Bill(_Fixed):
    """The node asks for a voucher of `cumulative_due`: everything billed so far, this batch included.

    The client checks `charge == Meter(prices).charge(bytes_carried, byte_seconds)` and that
    `cumulative_due` is what it was last billed plus `charge`, then signs a voucher for it."""

    cumulative_due: int
    charge: int
    bytes_carried: int
    byte_seconds: int
    per_mb_outbound: int
    per_mb_hour_storage: int
    issued_at: int
    FIELDS: ClassVar[tuple[tuple[str, int], ...]] = (
        ("cumulative_due", _WORD),
        ("charge", _WORD),
        ("bytes_carried", 8),
        ("byte_seconds", 16),
        ("per_mb_outbound", _WORD),
        ("per_mb_hour_storage", _WORD),
        ("issued_at", 8),
    )

    @classmethod
    def decode(cls, data: bytes) -> Bill:
        return cls(*cls._values(data, "bill"))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Registered(_Fixed):
    """The node's answer to a registration: its terms, and where the client's account stands."""

    node: bytes
    per_mb_outbound: int
    per_mb_hour_storage: int
    billed_total: int
    paid_total: int
    credit_limit: int
    FIELDS: ClassVar[tuple[tuple[str, int], ...]] = (
        ("node", ADDRESS_SIZE),
        ("per_mb_outbound", _WORD),
        ("per_mb_hour_storage", _WORD),
        ("billed_total", _WORD),
        ("paid_total", _WORD),
        ("credit_limit", _WORD),
    )

    @classmethod
    def decode(cls, data: bytes) -> Registered:
        return cls(*cls._values(data, "registered"))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Ready(_Fixed):
    """First event of a listen stream: the stream is open; this much waits in the mailbox."""

    pending_messages: int
    pending_bytes: int
    FIELDS: ClassVar[tuple[tuple[str, int], ...]] = (("pending_messages", 4), ("pending_bytes", 8))

    @classmethod
    def decode(cls, data: bytes) -> Ready:
        return cls(*cls._values(data, "ready"))  # type: ignore[arg-type]


@dataclass(frozen=True)
class InboxEnd(_Fixed):
    """Last event of a fetch answer: how many messages it carried, how many remain after them."""

    returned: int
    remaining: int
    FIELDS: ClassVar[tuple[tuple[str, int], ...]] = (("returned", 4), ("remaining", 4))

    @classmethod
    def decode(cls, data: bytes) -> InboxEnd:
        return cls(*cls._values(data, "inbox-end"))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Acked(_Fixed):
    """Answer to an ack: how many of the named messages were deleted now (repeats count 0)."""

    removed: int
    FIELDS: ClassVar[tuple[tuple[str, int], ...]] = (("removed", 4),)

    @classmethod
    def decode(cls, data: bytes) -> Acked:
        return cls(*cls._values(data, "acked"))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Paid(_Fixed):
    """Answer to a payment: the cumulative amount now accepted, and everything billed."""

    accepted_total: int
    billed_total: int
    FIELDS: ClassVar[tuple[tuple[str, int], ...]] = (("accepted_total", _WORD), ("billed_total", _WORD))

    @classmethod
    def decode(cls, data: bytes) -> Paid:
        return cls(*cls._values(data, "paid"))  # type: ignore[arg-type]
