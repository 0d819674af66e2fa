"""The SI client library: register with a recipient node, send, listen, fetch and acknowledge, pay.

Everything goes through a relay's `POST /post` as an envelope sealed to a node (registration.py), so
neither the relay nor anyone watching it learns who the client is; every answer comes back encrypted
to a fresh session key made for that one request (stream.py). The client:

* registers with a CoNETCash payment authorization naming its node (`register`);
* sends to a communication address (`send`), sealing the message to the person and their node, whose
  key it finds in a `Directory` by address;
* listens (`listen`): opens its event stream, fetches what waited in the mailbox when the node says
  so, yields each message once, acknowledges it when the caller asks for the next, pays bills as they
  come, and reconnects with exponential backoff (and a fresh session key) when the stream drops;
* checks every bill before paying it: the charge must be what `billing.Meter` makes of the usage at
  the node's registered prices, and the total must stay within the authorization.

What a client remembers between runs (its node, relay, payment terms, voucher count, contacts) is a
`ClientProfile`, kept as JSON beside its key file. Key files hold the private key in hex and must be
readable by their owner only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import stat
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from eth_utils.address import is_address, to_canonical_address, to_checksum_address
from eth_utils.crypto import keccak

from offchain.si.address import AddressError, CommunicationAddress
from offchain.si.billing import Meter, Prices, VoucherDomain, sign_voucher
from offchain.si.directory import Directory, NodeInfo
from offchain.si.ecies import KeyPair
from offchain.si.envelope import Message, open_inner, seal
from offchain.si.errors import EnvelopeError
from offchain.si.padding import DEFAULT_POLICY, PaddingPolicy
from offchain.si.registration import (
    AckPayload,
    FetchPayload,
    PayPayload,
    RequestKind,
    seal_request,
    sign_authorization,
    sign_request,
)
from offchain.si.relay import KeyFileError, load_key_file
from offchain.si.stream import (
    CONTENT_TYPE,
    Acked,
    Bill,
    Event,
    EventType,
    InboxEnd,
    Paid,
    Ready,
    Registered,
    SSEParser,
    open_event,
)

__all__ = [
    "BillRejected",
    "ClientProfile",
    "KeyFileError",
    "NodeRefused",
    "NotRegistered",
    "PaymentTerms",
    "Received",
    "SIClient",
    "SIClientError",
    "profile_path_for",
    "read_key_file",
    "write_key_file",
]

log = logging.getLogger("offchain.si.client")
_ACK_BATCH = 1000
_SEEN_MEMORY = 10_000


class SIClientError(Exception):
    """Something the client could not do."""


class NodeRefused(SIClientError):
    """The node (or the relay in front of it) answered with an error."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class NotRegistered(SIClientError):
    """The operation needs a node and payment terms, which registration sets."""


class BillRejected(SIClientError):
    """A bill did not check out (wrong charge for its usage, other prices, beyond the authorization)."""


# -- key files ------------------------------------------------------------------------------------


def read_key_file(path: str | Path) -> KeyPair:
    """A client key file: the private key in hex, readable by its owner only (like an ssh key)."""
    mode = _mode(path)
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"{path} is readable by others (mode {mode:o}): chmod 600 {path}")
    return load_key_file(path)


def _mode(path: str | Path) -> int:
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError as error:
        raise KeyFileError(f"cannot read the key file {path}: {error}") from error


def write_key_file(path: str | Path, key: KeyPair | None = None) -> KeyPair:
    """Create a key file (mode 600) holding `key`, or a fresh key; never overwrites one."""
    key = key or KeyPair.generate()
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as error:
        raise KeyFileError(f"{path} exists already; not overwriting a key") from error
    with os.fdopen(descriptor, "w") as file:
        file.write(key.secret.hex() + "\n")
    return key


def profile_path_for(key_file: str | Path) -> Path:
    return Path(str(key_file) + ".si.json")


# -- what the client remembers ---------------------------------------------------------------------


@dataclass(frozen=True)
class PaymentTerms:
    """How the client pays its node: the note chain, and the authorization it signed for the node."""

    chain_id: int
    cash: bytes
    """CoNETCash's 20-byte address."""
    note_chain: bytes
    """32 bytes."""
    limit: int
    nonce: int
    """The authorization's nonce on the note chain (its id)."""
    expiry: int

    def to_json(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "cash": to_checksum_address(self.cash),
            "note_chain": "0x" + self.note_chain.hex(),
            "limit": str(self.limit),
            "nonce": str(self.nonce),
            "expiry": self.expiry,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PaymentTerms:
        return cls(
            int(data["chain_id"]),
            to_canonical_address(data["cash"]),
            bytes.fromhex(str(data["note_chain"]).removeprefix("0x")),
            int(data["limit"]),
            int(data["nonce"]),
            int(data["expiry"]),
        )


@dataclass
class ClientProfile:
    """The client's memory between runs, kept as JSON (`save`/`load`)."""

    relay_url: str
    node: NodeInfo | None = None
    terms: PaymentTerms | None = None
    prices: Prices | None = None
    """The node's prices as its registration answer stated them; bills must use them."""
    billed_total: int = 0
    vouched_total: int = 0
    voucher_nonce: int = 0
    contacts: dict[str, str] = field(default_factory=dict)
    """Checksum address → communication address, so `send` can take a plain address it has seen."""

    def to_json(self) -> dict[str, Any]:
        return {
            "relay_url": self.relay_url,
            "node": None if self.node is None else self.node.to_json(),
            "terms": None if self.terms is None else self.terms.to_json(),
            "prices": None
            if self.prices is None
            else {
                "per_mb_outbound": self.prices.per_mb_outbound,
                "per_mb_hour_storage": self.prices.per_mb_hour_storage,
            },
            "billed_total": str(self.billed_total),
            "vouched_total": str(self.vouched_total),
            "voucher_nonce": str(self.voucher_nonce),
            "contacts": self.contacts,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClientProfile:
        prices = data.get("prices")
        return cls(
            relay_url=str(data["relay_url"]),
            node=None if data.get("node") is None else NodeInfo.from_json(data["node"]),
            terms=None if data.get("terms") is None else PaymentTerms.from_json(data["terms"]),
            prices=None
            if prices is None
            else Prices(int(prices["per_mb_outbound"]), int(prices["per_mb_hour_storage"])),
            billed_total=int(data.get("billed_total", 0)),
            vouched_total=int(data.get("vouched_total", 0)),
            voucher_nonce=int(data.get("voucher_nonce", 0)),
            contacts=dict(data.get("contacts", {})),
        )

    def save(self, path: str | Path) -> None:
        """Write atomically (a crash leaves the old file or the new one) and owner-only: it names the node."""
        target = Path(path)
        temporary = target.with_name(target.name + ".tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            json.dump(self.to_json(), file, indent=2)
            file.write("\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target)

    @classmethod
    def load(cls, path: str | Path) -> ClientProfile:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise SIClientError(f"cannot read the client profile {path}: {error}") from error
        try:
            return cls.from_json(data)
        except (KeyError, TypeError, ValueError) as error:
            raise SIClientError(f"{path} is not a client profile: {error}") from error


@dataclass(frozen=True)
class Received:
    """A message the client opened: the node-side id (to acknowledge) and the authenticated message."""

    id: bytes
    """keccak256 of the inner envelope, the id the node stores it under."""
    message: Message


# -- the client -------------------------------------------------------------------------------------


class SIClient:
    """One wallet's SI client, talking to its node through one relay.

    Use as `async with SIClient(key, profile) as client:`; pass `session` to use your own aiohttp
    session (its connector decides the source address, proxies, TLS), `directory` to send to people
    whose node is not yours, `profile_path` to have the profile saved after every change."""

    def __init__(
        self,
        key: KeyPair,
        profile: ClientProfile,
        *,
        directory: Directory | None = None,
        session: aiohttp.ClientSession | None = None,
        profile_path: str | Path | None = None,
        policy: PaddingPolicy = DEFAULT_POLICY,
        request_timeout: float = 30.0,
        stream_timeout: float = 45.0,
    ) -> None:
        self.key = key
        self.profile = profile
        self.directory = directory
        self.policy = policy
        self.profile_path = None if profile_path is None else Path(profile_path)
        self.request_timeout = request_timeout
        self.stream_timeout = stream_timeout
        """With no byte for this long (the node sends keepalives) the stream is taken as dead."""
        self._session = session
        self._own_session = session is None
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self.rejected: list[tuple[bytes, str]] = []
        """(id, reason) of messages that came but did not open (forged signatures, tampering); acked away."""
        self.connections = 0
        """How many times `listen` opened a stream (reconnections included)."""
        self.on_close: list[Callable[[], Awaitable[None]]] = []
        """Run by `close()` before the session closes: what runs on this client (e.g. the listener of
        anonymous.py's `request`) stops first."""

    async def __aenter__(self) -> SIClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        hooks, self.on_close = self.on_close, []
        for hook in hooks:
            await hook()
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    @property
    def node(self) -> NodeInfo:
        if self.profile.node is None:
            raise NotRegistered("no recipient node: register first")
        return self.profile.node

    @property
    def terms(self) -> PaymentTerms:
        if self.profile.terms is None:
            raise NotRegistered("no payment terms: register first")
        return self.profile.terms

    def _save(self) -> None:
        if self.profile_path is not None:
            self.profile.save(self.profile_path)

    def communication_address(self, relay_hint: str | None = None) -> CommunicationAddress:
        """The string others need to write to this client (its key, its node, a relay it uses)."""
        hint = self.profile.relay_url if relay_hint is None else relay_hint
        return CommunicationAddress(self.key.public_key, self.node.address, hint)

    # -- transport --------------------------------------------------------------------------------

    @property
    def post_url(self) -> str:
        url = self.profile.relay_url.rstrip("/")
        return url if url.endswith("/post") else url + "/post"

    async def _post(self, envelope: bytes, timeout: float | None) -> aiohttp.ClientResponse:
        return await self.session.post(
            self.post_url,
            data=envelope,
            headers={"Content-Type": "application/octet-stream", "Accept": CONTENT_TYPE},
            timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=self.request_timeout),
        )

    @staticmethod
    async def _refusal(response: aiohttp.ClientResponse) -> NodeRefused:
        body = await response.read()
        try:
            data = json.loads(body)
            return NodeRefused(response.status, str(data["error"]), str(data["message"]))
        except (ValueError, KeyError, TypeError):
            # Not the node's JSON: the relay refused (its answers are nginx pages) or something between.
            return NodeRefused(response.status, "relay", f"{response.status} {response.reason} from the relay")

    async def _request(self, kind: RequestKind, payload: bytes = b"", *, pay_and_retry: bool = True) -> list[Event]:
        """A signed request and the node's events, decrypted with the request's own session key.

        A 402 carries the outstanding bill: it is checked and paid, and the request made once more."""
        session_key = KeyPair.generate()
        request = sign_request(
            self.key, node=self.node.address, kind=kind, session_key=session_key.public_key, payload=payload
        )
        envelope = seal_request(self.node.public_key, request, self.policy)
        async with await self._post(envelope, self.request_timeout) as response:
            if response.status not in (200, 402) or not response.content_type.startswith(CONTENT_TYPE):
                raise await self._refusal(response)
            parser = SSEParser(max_event=2 * self.policy.max_bucket)
            events = [open_event(session_key, blob, self.policy) for blob in parser.feed(await response.read())]
        if response.status == 402:
            await self._pay_bills(events)
            if kind is RequestKind.PAY or not pay_and_retry:
                raise NodeRefused(402, "payment_required", "the node wants payment the voucher did not cover")
            return await self._request(kind, payload, pay_and_retry=False)
        return events

    # -- registration and payment -------------------------------------------------------------------

    async def register(self, node: NodeInfo | None = None, terms: PaymentTerms | None = None) -> Registered:
        """Register with `node` (through the profile's relay) on `terms`; returns the node's answer."""
        if node is not None:
            self.profile.node = node
        if terms is not None:
            self.profile.terms = terms
        node, terms = self.node, self.terms
        authorization = sign_authorization(
            self.key,
            chain_id=terms.chain_id,
            cash=terms.cash,
            note_chain=terms.note_chain,
            payee=node.address,
            limit=terms.limit,
            nonce=terms.nonce,
            expiry=terms.expiry,
        )
        events = await self._request(RequestKind.REGISTER, authorization.encode())
        registered = Registered.decode(_only(events, EventType.REGISTERED).body)
        if registered.node != node.address:
            raise SIClientError("the registration was answered for another node")
        self.profile.prices = Prices(registered.per_mb_outbound, registered.per_mb_hour_storage)
        self.profile.billed_total = registered.billed_total
        self.profile.vouched_total = max(self.profile.vouched_total, registered.paid_total)
        self._save()
        return registered

    def check_bill(self, bill: Bill) -> None:
        """Raise `BillRejected` unless the bill is what the node's registered prices make of its usage."""
        prices = Prices(bill.per_mb_outbound, bill.per_mb_hour_storage)
        if self.profile.prices is not None and bill.charge and prices != self.profile.prices:
            raise BillRejected(f"the bill uses prices {prices}, the node registered {self.profile.prices}")
        expected = Meter(prices).charge(bytes_carried=bill.bytes_carried, byte_seconds_stored=bill.byte_seconds)
        if bill.charge != expected:
            raise BillRejected(
                f"{bill.bytes_carried} bytes and {bill.byte_seconds} byte-seconds cost {expected}, "
                f"the bill says {bill.charge}"
            )
        if bill.cumulative_due - self.profile.vouched_total > self.terms.limit:
            raise BillRejected(f"the bill's total {bill.cumulative_due} goes beyond the authorization's limit")

    async def pay(self, bill: Bill) -> Paid | None:
        """Check `bill` and answer it with a cumulative voucher; None if it asks for nothing new."""
        self.check_bill(bill)
        self.profile.billed_total = max(self.profile.billed_total, bill.cumulative_due)
        if bill.cumulative_due <= self.profile.vouched_total:
            return None
        terms = self.terms
        voucher = sign_voucher(
            self.key.secret,
            domain=VoucherDomain(terms.chain_id, to_checksum_address(terms.cash), terms.note_chain),
            payee=self.node.checksum_address,
            cumulative_amount=bill.cumulative_due,
            nonce=self.profile.voucher_nonce + 1,
            expiry=terms.expiry,
        )
        self.profile.voucher_nonce += 1
        self._save()  # before sending: a nonce must never be signed twice for different amounts
        payload = PayPayload(voucher.cumulative_amount, voucher.nonce, voucher.expiry, voucher.signature)
        events = await self._request(RequestKind.PAY, payload.encode())
        paid = Paid.decode(_only(events, EventType.PAID).body)
        self.profile.vouched_total = paid.accepted_total
        self._save()
        log.info("paid: voucher for %d units", paid.accepted_total)
        return paid

    async def _pay_bills(self, events: Sequence[Event]) -> None:
        for event in events:
            if event.type is EventType.BILL:
                await self.pay(Bill.decode(event.body))

    # -- sending ----------------------------------------------------------------------------------------

    def add_contact(self, address: CommunicationAddress | str) -> CommunicationAddress:
        parsed = CommunicationAddress.parse(address) if isinstance(address, str) else address
        self.profile.contacts[parsed.checksum_address] = parsed.encode()
        self._save()
        return parsed

    def _target(self, to: CommunicationAddress | str) -> CommunicationAddress:
        if isinstance(to, CommunicationAddress):
            return to
        if is_address(to):
            known = self.profile.contacts.get(to_checksum_address(to))
            if known is None:
                raise AddressError(f"{to} is not among the contacts: give its communication address once")
            return CommunicationAddress.parse(known)
        return CommunicationAddress.parse(to)

    async def _node_of(self, address: bytes) -> NodeInfo:
        if self.profile.node is not None and self.profile.node.address == address:
            return self.profile.node
        if self.directory is None:
            raise SIClientError(f"no directory to look up node {to_checksum_address(address)}'s key")
        return await self.directory.resolve(address)

    async def send(self, to: CommunicationAddress | str, content: bytes) -> bytes:
        """Seal `content` to the person and their node and post it through the relay; returns the
        message id the recipient will see. Raises `NodeRefused` unless the node stored it (its 200)."""
        target = self._target(to)
        node = await self._node_of(target.node)
        message_id = os.urandom(16)
        envelope = seal(
            self.key, target.public_key, node.public_key, content, message_id=message_id, policy=self.policy
        )
        async with await self._post(envelope, self.request_timeout) as response:
            if response.status != 200:
                raise await self._refusal(response)
            await response.read()
        return message_id

    # -- receiving --------------------------------------------------------------------------------------

    def _open(self, blob: bytes) -> Received | None:
        message_id = keccak(blob)
        try:
            return Received(message_id, open_inner(blob, self.key, self.policy))
        except EnvelopeError as error:
            # Forged or tampered: never shown; acknowledged anyway so it does not come back forever.
            log.warning("dropped a message that did not open: %s", error)
            self.rejected.append((message_id, f"{type(error).__name__}: {error}"))
            return None

    async def fetch(self, limit: int = 100) -> tuple[list[Received], int]:
        """One batch of the mailbox (nothing deleted): the messages that opened, and how many remain.
        Messages that do not open are acknowledged away at once (see `rejected`)."""
        events = await self._request(RequestKind.FETCH, FetchPayload(limit).encode())
        await self._pay_bills(events)
        received: list[Received] = []
        dropped: list[bytes] = []
        for event in events:
            if event.type is EventType.MESSAGE:
                item = self._open(event.body)
                if item is None:
                    dropped.append(keccak(event.body))
                else:
                    received.append(item)
        if dropped:
            await self.ack(dropped)
        end = InboxEnd.decode(_only(events, EventType.INBOX_END).body)
        return received, end.remaining

    async def fetch_all(self, batch: int = 100) -> list[Received]:
        """The whole mailbox (nothing deleted until `ack`)."""
        everything: list[Received] = []
        seen: set[bytes] = set()
        while True:
            received, remaining = await self.fetch(batch)
            fresh = [item for item in received if item.id not in seen]
            everything += fresh
            seen.update(item.id for item in received)
            if not remaining or not fresh:
                return everything
            # Unacknowledged messages come back first: acknowledge nothing, so page by asking for more.
            batch = len(seen) + batch

    async def ack(self, ids: Sequence[bytes]) -> int:
        """Delete these messages at the node (the client has them); returns how many were deleted."""
        removed = 0
        for start in range(0, len(ids), _ACK_BATCH):
            events = await self._request(RequestKind.ACK, AckPayload.of(ids[start : start + _ACK_BATCH]).encode())
            removed += Acked.decode(_only(events, EventType.ACKED).body).removed
            await self._pay_bills(events)
        return removed

    def _first_time(self, message_id: bytes) -> bool:
        if message_id in self._seen:
            return False
        self._seen[message_id] = None
        if len(self._seen) > _SEEN_MEMORY:
            self._seen.popitem(last=False)
        return True

    async def listen(
        self, *, min_backoff: float = 0.5, max_backoff: float = 30.0, auto_ack: bool = True
    ) -> AsyncIterator[Received]:
        """Messages as they come, forever: pushed ones, and the mailbox's after every (re)connection.

        Each message is yielded once and acknowledged when the caller asks for the next one (with
        `auto_ack`). A dropped stream is reopened after min_backoff, doubling up to max_backoff with
        jitter, reset once a stream is up; a refusal that retrying cannot cure (not registered, a
        rejected bill) is raised."""
        delay = min_backoff
        while True:
            try:
                async for item in self._listen_once(auto_ack):
                    delay = min_backoff
                    yield item
                delay = min_backoff  # the node ended the stream cleanly (replaced, or it fell behind)
            except NodeRefused as error:
                if error.status in (400, 401, 403, 404, 409, 413):
                    raise
                log.info("listen: refused (%s), retrying in %.1f s", error, delay)
            except (aiohttp.ClientError, OSError, TimeoutError, EnvelopeError) as error:
                log.info("listen: stream lost (%s), reconnecting in %.1f s", type(error).__name__, delay)
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, max_backoff)

    async def _listen_once(self, auto_ack: bool) -> AsyncIterator[Received]:
        session_key = KeyPair.generate()  # a new session key for every connection
        request = sign_request(
            self.key, node=self.node.address, kind=RequestKind.LISTEN, session_key=session_key.public_key
        )
        envelope = seal_request(self.node.public_key, request, self.policy)
        response = await self._post(envelope, None)
        try:
            if response.status not in (200, 402) or not response.content_type.startswith(CONTENT_TYPE):
                raise await self._refusal(response)
            if response.status == 402:
                # The body is the outstanding bill: pay it, and the next attempt is served.
                blobs = SSEParser(max_event=2 * self.policy.max_bucket).feed(await response.read())
                await self._pay_bills([open_event(session_key, blob, self.policy) for blob in blobs])
                raise NodeRefused(402, "payment_required", "the node asked for payment first; a voucher was sent")
            self.connections += 1
            parser = SSEParser(max_event=2 * self.policy.max_bucket)
            while True:
                async with asyncio.timeout(self.stream_timeout):
                    chunk = await response.content.readany()
                if not chunk:
                    return
                for blob in parser.feed(chunk):
                    event = open_event(session_key, blob, self.policy)
                    if event.type is EventType.BILL:
                        await self.pay(Bill.decode(event.body))
                    elif event.type is EventType.READY and Ready.decode(event.body).pending_messages:
                        async for item in self._drain_mailbox(auto_ack):
                            yield item
                    elif event.type is EventType.MESSAGE:
                        opened = self._open(event.body)
                        if opened is None:
                            await self.ack([keccak(event.body)])
                            continue
                        if self._first_time(opened.id):
                            yield opened
                        if auto_ack:  # a repeat too: it may have come by push and fetch, acked by neither yet
                            await self.ack([opened.id])
        finally:
            response.close()

    async def _drain_mailbox(self, auto_ack: bool) -> AsyncIterator[Received]:
        while True:
            received, remaining = await self.fetch()
            fresh = [item for item in received if self._first_time(item.id)]
            for item in fresh:
                yield item
            if auto_ack and received:
                await self.ack([item.id for item in received])
            if not remaining or not auto_ack:
                return


def _only(events: Sequence[Event], event_type: EventType) -> Event:
    for event in events:
        if event.type is event_type:
            return event
    raise SIClientError(f"the node's answer lacks its {event_type.name.lower()} event")
