"""The SI recipient node: registers clients, keeps their mailboxes, pushes to their streams, bills them.

DESIGN §7. One endpoint, `POST /post`, takes outer envelopes from relays; the node-layer kind byte
(registration.py) says what each one is:

* **deliver** — a message (N1) for a registered client. It is stored first (`mailbox.store` returns
  only once durable) and then pushed, re-encrypted under the session key of the client's open
  stream, if the client has one; the sender gets 200 once it is stored. A push handed to a socket is
  not a delivery (a dying connection swallows it), so the stored copy stays until the client
  acknowledges it, whether it came by push or by fetch. The client drops repeats by id.
* **register** — the client's signed registration with a CoNETCash payment authorization naming the
  node; 200 only once the authorization's terms and signature check out (`AuthorizationVerifier`).
* **listen** — opens the client's event stream (`text/event-stream`): the client is online while it
  is open. The relay closes its upstream when the client goes, which ends the stream here.
* **fetch** / **ack** — the mailbox, under the request's session key; deletion only on ack.
* **pay** — a cumulative voucher answering a bill.

Billing: acknowledged bytes (carried) and mailbox byte·seconds (stored) at the node's `Prices`; when
enough is unbilled the node adds a bill event to its answer and the client pays with a voucher in a
`pay` request. A client owing more than the credit limit gets 402 on listen and fetch until it pays.
Relays are owed per MB for what their signed receipts (receipt.py) show they forwarded, plus what the
node sent back through them. Accepted vouchers become note-chain deductions: `settlement.Settler`
submits them to the DLE (`settlement_due`, then `record_settlement` once final); `settle_batch` is the
same batch marked at once, for callers that settle by other means.

What the node learns: its client's address and the size of each message. It never sees a sender's
IP (only a relay's), does not log it, and never logs content; its mailbox rows hold nothing about
senders. docs/drafts/si-node.md has the wire formats.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from aiohttp import web
from eth_typing import ChecksumAddress
from eth_utils.address import to_canonical_address, to_checksum_address

from offchain.si import disguise
from offchain.si import receipt as receipts
from offchain.si.billing import (
    BYTES_PER_MB,
    Ledger,
    Meter,
    Prices,
    SettlementItem,
    Voucher,
    VoucherDomain,
    VoucherError,
    ceil_div,
)
from offchain.si.ecies import KeyPair
from offchain.si.envelope import LAYER_OVERHEAD
from offchain.si.errors import EnvelopeError
from offchain.si.mailbox import (
    DEFAULT_LIMITS,
    Mailbox,
    MailboxError,
    MailboxFull,
    MailboxLimits,
    Removed,
    StoredMessage,
    message_id_of,
)
from offchain.si.padding import DEFAULT_POLICY, PaddingPolicy
from offchain.si.registration import (
    AckPayload,
    Authorization,
    AuthorizationRejected,
    AuthorizationUnverifiable,
    AuthorizationVerifier,
    FetchPayload,
    NodeRequest,
    OfflineAuthorizationVerifier,
    OpenedDelivery,
    PayPayload,
    RequestKind,
    open_node_layer,
)
from offchain.si.stream import (
    CONTENT_TYPE,
    KEEPALIVE,
    Acked,
    Bill,
    EventType,
    InboxEnd,
    Paid,
    Ready,
    Registered,
    seal_event,
    sse_frame,
)

__all__ = [
    "NODE_KEY",
    "Deduction",
    "LocalPushBus",
    "MailboxStore",
    "NodeConfig",
    "NodeError",
    "NodeState",
    "NodeStateStore",
    "PushBus",
    "ReplayGuard",
    "Subscription",
    "build_parser",
    "config_from_args",
    "create_node_app",
    "earnings",
    "main",
    "open_node_app",
]

log = logging.getLogger("offchain.si.node")
_T = TypeVar("_T")
DAY = 24 * 3600


# -- configuration ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeConfig:
    """A node's terms and limits. Amounts are integer stablecoin units (billing.py)."""

    chain_id: int = 43112
    """The main chain whose CoNETCash authorizations are accepted."""
    cash: bytes = bytes(20)
    """The CoNETCash contract (20 bytes) those authorizations name."""
    prices: Prices = field(default_factory=lambda: Prices(0, 0))
    relay_per_mb: int = 0
    """What the node pays a relay per MB it forwarded (requests, as receipted, and answers)."""
    limits: MailboxLimits = DEFAULT_LIMITS
    policy: PaddingPolicy = DEFAULT_POLICY
    clock_skew_seconds: int = 300
    """A signed request is refused if its timestamp is further than this from the node's clock."""
    min_authorization_limit: int = 1
    min_authorization_seconds: int = 3600
    """An authorization must still run at least this long when it is registered."""
    max_authorization_seconds: int = 400 * DAY
    credit_limit: int = 1_000_000
    """Billed but unpaid units beyond which listen and fetch answer 402."""
    bill_threshold_bytes: int = BYTES_PER_MB
    """Bill once this many acknowledged bytes are unbilled (and whenever a stream opens or a fetch runs)."""
    fetch_max_messages: int = 100
    fetch_max_bytes: int = 4 * 1024 * 1024
    """One fetch answer carries at most this many bytes of messages (at least one message)."""
    keepalive_seconds: float = 15.0
    expire_interval_seconds: float = 60.0
    push_queue_size: int = 64
    """A stream that falls this far behind is closed; its client reconnects and fetches."""
    require_relay_receipt: bool = False
    """Refuse envelopes that come without a valid relay receipt (direct posts reveal the poster's IP)."""

    def __post_init__(self) -> None:
        if len(self.cash) != 20:
            raise ValueError("cash is the 20-byte CoNETCash address")
        if self.relay_per_mb < 0 or self.credit_limit < 0 or self.bill_threshold_bytes < 1:
            raise ValueError("relay_per_mb and credit_limit must be >= 0, bill_threshold_bytes >= 1")

    @property
    def max_envelope(self) -> int:
        return LAYER_OVERHEAD + self.policy.max_bucket


# -- errors: each has the HTTP status and the short code the client sees ----------------------------


class NodeError(Exception):
    """A request the node refuses; `status` and `code` go to the client in a JSON body.

    The body travels in clear through the relay, so a message never names the client, the recipient
    or the note chain: only the node's own terms and numbers."""

    status = 400
    code = "bad_request"


class RequestTooLarge(NodeError):
    status = 413
    code = "too_large"


class StaleRequest(NodeError):
    code = "stale_request"


class ReplayedRequest(NodeError):
    status = 409
    code = "replayed_request"


class ReplayedRegistration(NodeError):
    status = 409
    code = "replayed_registration"


class RegistrationConflict(NodeError):
    status = 409
    code = "registration_conflict"


class UnknownClient(NodeError):
    status = 404
    code = "unknown_client"


class UnknownRecipient(NodeError):
    status = 404
    code = "unknown_recipient"


class PaymentRequired(NodeError):
    status = 402
    code = "payment_required"

    def __init__(self, message: str, bill: Bill) -> None:
        super().__init__(message)
        self.bill = bill


class MissingReceipt(NodeError):
    status = 403
    code = "relay_receipt_required"


# -- the mailbox and the push bus, behind small interfaces ------------------------------------------


class MailboxStore(Protocol):
    """What the node needs of a mailbox: `mailbox.Mailbox` (SQLite) or a shared (PostgreSQL) one.

    Methods are synchronous and may block on disk or network; the node calls them in threads."""

    def store(self, recipient: str | bytes, message_id: bytes, blob: bytes, *, now: int | None = None) -> bool: ...

    def fetch(self, recipient: str | bytes, limit: int = 100) -> list[StoredMessage]: ...

    def acknowledge(self, recipient: str | bytes, ids: Iterable[bytes], *, now: int | None = None) -> list[Removed]: ...

    def expire(self, now: int | None = None) -> list[Removed]: ...

    def usage(self, recipient: str | bytes) -> tuple[int, int]: ...

    def storage_byte_seconds(self, recipient: str | bytes, now: int | None = None) -> int: ...


class Subscription(Protocol):
    """One client stream's end of the bus."""

    async def get(self) -> bytes | None:
        """The next inner envelope (N1) for the client, or None once the stream must end (a newer
        stream of the same client took over, or this one fell too far behind)."""
        ...


class PushBus(Protocol):
    """Delivers to whichever connection holds a client's stream, on this process or (a shared bus)
    another entry server of the same node."""

    async def publish(self, client: bytes, blob: bytes) -> bool:
        """Hand `blob` to the client's stream; False if no stream took it (it stays in the mailbox)."""
        ...

    def subscribe(self, client: bytes) -> AbstractAsyncContextManager[Subscription]:
        """Hold the client's stream for the duration of the context; replaces any older one."""
        ...

    async def is_online(self, client: bytes) -> bool: ...


class NodeStateStore(Protocol):
    """What the node needs of its own state (registrations, billing, vouchers, relay credit):
    `NodeState` (SQLite, one node process) or `pgstate.PgNodeState` (PostgreSQL, shared by every entry
    server of one node wallet). Methods are synchronous; the node calls them through `run`."""

    async def run(self, function: Callable[..., _T], *args: Any) -> _T: ...

    def account(self, client: bytes) -> Account | None: ...

    def register(
        self, request: NodeRequest, authorization: Authorization, *, storage_reading: int, now: int
    ) -> Account: ...

    def add_carried(self, client: bytes, size: int) -> None: ...

    def bill(self, client: bytes, *, storage_reading: int, now: int, force: bool) -> Bill | None: ...

    def vouched(self, account: Account) -> int: ...

    def paid(self, account: Account) -> tuple[int, int]: ...

    def outstanding(self, account: Account) -> Bill: ...

    def pay(self, client: bytes, payment: PayPayload, *, now: int) -> tuple[int, int]: ...

    def settle_batch(self, *, now: int) -> list[Deduction]: ...

    def credit_relay(self, relay: bytes, size: int, *, tag: bytes | None = None, now: int = 0) -> bool: ...

    def forget_receipts(self, before: int) -> None: ...

    def owed_by_clients(self) -> list[ClientOwed]: ...

    def owed_to_relays(self) -> list[RelayOwed]: ...

    def close(self) -> None: ...


class ReplayGuard(Protocol):
    """Remembers the signed requests served within the clock-skew window, so a captured request is
    served once. In memory for one node process; shared (pgstate.PgReplayGuard) when several entry
    servers answer for one node wallet, since a replay may be posted to any of them."""

    async def check_and_add(self, request: NodeRequest, now_ms: int) -> None:
        """Raise `ReplayedRequest` if the request was served already; else remember it."""
        ...

    async def prune(self, now_ms: int) -> None:
        """Forget requests older than the window (their timestamps are refused anyway)."""
        ...


class _LocalSubscription:
    def __init__(self, size: int) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(size)
        self.ended = False

    def end(self) -> None:
        if not self.ended:
            self.ended = True
            # An ended subscription is read no more, so drop what waits and leave room for the marker.
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(None)

    async def get(self) -> bytes | None:
        return await self.queue.get()


class LocalPushBus:
    """The push bus of a single-process node: one queue per online client."""

    def __init__(self, queue_size: int = 64) -> None:
        self.queue_size = queue_size
        self._streams: dict[bytes, _LocalSubscription] = {}

    async def publish(self, client: bytes, blob: bytes) -> bool:
        subscription = self._streams.get(client)
        if subscription is None or subscription.ended:
            return False
        try:
            subscription.queue.put_nowait(blob)
        except asyncio.QueueFull:
            # The stream is stuck (a slow client): close it rather than buffer without bound. The
            # message is in the mailbox; the client reconnects and fetches it.
            subscription.end()
            return False
        return True

    @asynccontextmanager
    async def subscribe(self, client: bytes) -> AsyncIterator[Subscription]:
        older = self._streams.get(client)
        if older is not None:
            older.end()
        subscription = _LocalSubscription(self.queue_size)
        self._streams[client] = subscription
        try:
            yield subscription
        finally:
            if self._streams.get(client) is subscription:
                del self._streams[client]

    async def is_online(self, client: bytes) -> bool:
        subscription = self._streams.get(client)
        return subscription is not None and not subscription.ended


# -- persistent state: registrations, accounts, vouchers, relays ------------------------------------


_SCHEMA = """
CREATE TABLE IF NOT EXISTS clients (
    address             BLOB PRIMARY KEY CHECK (length(address) = 20),
    registered_ms       INTEGER NOT NULL,  -- timestamp of the newest accepted registration (replays are older)
    note_chain          BLOB    NOT NULL,
    auth_limit          TEXT    NOT NULL,  -- uint256 as decimal text
    auth_nonce          TEXT    NOT NULL,
    auth_expiry         INTEGER NOT NULL,
    auth_signature      BLOB    NOT NULL,
    billed_total        TEXT    NOT NULL,  -- everything billed on this note chain
    settled_under_auth  TEXT    NOT NULL,  -- deducted under the current authorization
    carried_unbilled    INTEGER NOT NULL,  -- acknowledged bytes not yet billed
    storage_billed      INTEGER NOT NULL,  -- mailbox byte-seconds reading billed up to
    last_bill_at        INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS vouchers (     -- the latest accepted voucher per client and note chain
    payer       BLOB NOT NULL,
    note_chain  BLOB NOT NULL,
    cumulative  TEXT NOT NULL,
    nonce       TEXT NOT NULL,
    expiry      INTEGER NOT NULL,
    signature   BLOB NOT NULL,
    settled     TEXT NOT NULL DEFAULT '0',
    PRIMARY KEY (payer, note_chain)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS relay_usage (  -- bytes carried per relay and per price in force
    relay   BLOB    NOT NULL,
    per_mb  TEXT    NOT NULL,
    bytes   INTEGER NOT NULL,
    PRIMARY KEY (relay, per_mb)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS relay_receipts (  -- one credit per envelope tag, whatever the retries
    tag    BLOB PRIMARY KEY,
    relay  BLOB    NOT NULL,
    bytes  INTEGER NOT NULL,
    at     INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS relay_receipts_by_age ON relay_receipts (at);
CREATE TABLE IF NOT EXISTS relay_settled (
    relay    BLOB PRIMARY KEY,
    settled  TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
) WITHOUT ROWID;
"""


@dataclass(frozen=True)
class Account:
    """A registered client: its authorization and where its billing stands."""

    address: bytes
    registered_ms: int
    authorization: Authorization
    billed_total: int
    settled_under_auth: int
    carried_unbilled: int
    storage_billed: int
    last_bill_at: int


@dataclass(frozen=True)
class Deduction:
    """One line of a settlement batch: what the node deducts on a client's note chain.

    It becomes the note ledger's `deduct(holder, authorization, amount, …)` signed by the node (the
    payee) once the DLE can take it; the voucher is the client's signed consent to the amount."""

    note_chain: bytes
    holder: ChecksumAddress
    authorization_nonce: int
    """The authorization's id on the note chain is (holder, nonce)."""
    amount: int
    settled_total: int
    voucher: Voucher


@dataclass(frozen=True)
class RelayOwed:
    relay: ChecksumAddress
    bytes: int
    owed: int
    """What the node owes the relay, to the unit, not yet settled."""
    settled: int


@dataclass(frozen=True)
class ClientOwed:
    client: ChecksumAddress
    note_chain: bytes
    billed: int
    """Everything the node billed the client on this note chain."""
    vouched: int
    """The cumulative amount of the client's latest accepted voucher."""
    settled: int
    owed: int
    """Vouched and not yet settled: what a settlement batch would deduct."""
    unpaid: int
    """Billed and not yet covered by a voucher."""


def _int(value: Any) -> int:
    """A stored amount: decimal text in SQLite, numeric (Decimal) in PostgreSQL."""
    return int(value)


class NodeState:
    """The node's own SQLite file (node.db): registrations, billing, vouchers, relay credit.

    All methods are synchronous; the node runs them on one worker thread (`run`), which serialises
    the writes without locks and keeps fsyncs off the event loop. WAL and synchronous=FULL as for the
    mailbox: an accepted voucher or registration survives a crash."""

    def __init__(self, path: str | Path, *, node: bytes, config: NodeConfig) -> None:
        self.path = Path(path)
        self.node = node
        self.config = config
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="si-node-state")
        # One connection, used by the executor's thread and, for direct calls (reports, tests), by
        # others under the lock; the lock is re-entrant because methods call each other.
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=10, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = FULL")
        self._db.executescript(_SCHEMA)
        self._db.execute(
            "INSERT INTO meta VALUES ('node', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (to_checksum_address(self.node),),
        )
        self._ledgers: dict[bytes, Ledger] = {}
        self._load_ledgers()

    async def run(self, function: Callable[..., _T], *args: Any) -> _T:
        """Call a method on the state's worker thread (writes fsync: keep them off the event loop)."""

        def locked() -> _T:
            with self._lock:
                return function(*args)

        return await asyncio.get_running_loop().run_in_executor(self._executor, locked)

    def close(self) -> None:
        self._executor.shutdown()
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def domain(self, note_chain: bytes) -> VoucherDomain:
        return VoucherDomain(self.config.chain_id, to_checksum_address(self.config.cash), note_chain)

    def _ledger(self, note_chain: bytes) -> Ledger:
        ledger = self._ledgers.get(note_chain)
        if ledger is None:
            ledger = self._ledgers[note_chain] = Ledger(to_checksum_address(self.node), self.domain(note_chain))
        return ledger

    def _load_ledgers(self) -> None:
        rows = self._db.execute("SELECT payer, note_chain, cumulative, nonce, expiry, signature, settled FROM vouchers")
        for payer, note_chain, cumulative, nonce, expiry, signature, settled in rows:
            ledger = self._ledger(bytes(note_chain))
            voucher = Voucher(
                ledger.domain,
                to_checksum_address(bytes(payer)),
                ledger.payee,
                _int(cumulative),
                _int(nonce),
                expiry,
                bytes(signature),
            )
            ledger.latest[voucher.payer] = voucher
            ledger.settled[voucher.payer] = _int(settled)

    # -- registrations ------------------------------------------------------------------------------

    def account(self, client: bytes) -> Account | None:
        with self._lock:
            row = self._db.execute(
                """SELECT registered_ms, note_chain, auth_limit, auth_nonce, auth_expiry, auth_signature,
                      billed_total, settled_under_auth, carried_unbilled, storage_billed, last_bill_at
               FROM clients WHERE address = ?""",
                (client,),
            ).fetchone()
        if row is None:
            return None
        registered_ms, note_chain, limit, nonce, expiry, signature, billed, settled, carried, storage, last = row
        authorization = Authorization(
            self.config.chain_id,
            self.config.cash,
            bytes(note_chain),
            client,
            self.node,
            _int(limit),
            _int(nonce),
            expiry,
            bytes(signature),
        )
        return Account(client, registered_ms, authorization, _int(billed), _int(settled), carried, storage, last)

    def register(
        self, request: NodeRequest, authorization: Authorization, *, storage_reading: int, now: int
    ) -> Account:
        """Record a verified registration, refusing replays and older authorizations."""
        client = request.client
        with self._write() as db:
            current = self.account(client)
            if current is None:
                db.execute(
                    """INSERT INTO clients VALUES (?, ?, ?, ?, ?, ?, ?, '0', '0', 0, ?, ?)""",
                    (
                        client,
                        request.timestamp_ms,
                        authorization.note_chain,
                        str(authorization.limit),
                        str(authorization.nonce),
                        authorization.expiry,
                        authorization.signature,
                        storage_reading,
                        now,
                    ),
                )
            else:
                self._check_reregistration(current, request, authorization)
                same_auth = (authorization.note_chain, authorization.nonce) == (
                    current.authorization.note_chain,
                    current.authorization.nonce,
                )
                new_chain = authorization.note_chain != current.authorization.note_chain
                db.execute(
                    """UPDATE clients SET registered_ms = ?, note_chain = ?, auth_limit = ?, auth_nonce = ?,
                          auth_expiry = ?, auth_signature = ?, billed_total = ?, settled_under_auth = ?
                       WHERE address = ?""",
                    (
                        request.timestamp_ms,
                        authorization.note_chain,
                        str(authorization.limit),
                        str(authorization.nonce),
                        authorization.expiry,
                        authorization.signature,
                        "0" if new_chain else str(current.billed_total),
                        str(current.settled_under_auth if same_auth else 0),
                        client,
                    ),
                )
        account = self.account(client)
        assert account is not None
        return account

    def _check_reregistration(self, current: Account, request: NodeRequest, authorization: Authorization) -> None:
        if request.timestamp_ms <= current.registered_ms:
            raise ReplayedRegistration(
                f"the registration of {request.timestamp_ms} ms is not newer than the "
                f"registered one at {current.registered_ms} ms: a replay, or an older registration"
            )
        old = current.authorization
        if authorization.note_chain == old.note_chain:
            if authorization.nonce < old.nonce:
                raise ReplayedRegistration(
                    f"authorization nonce {authorization.nonce} is older than the registered {old.nonce}"
                )
            if authorization.nonce == old.nonce and authorization.signature != old.signature:
                raise RegistrationConflict(f"authorization nonce {old.nonce} is registered with other terms")
        else:
            # Vouchers are per note chain; moving on with a balance open would strand it.
            ledger = self._ledger(old.note_chain)
            unsettled = current.billed_total - ledger.settled.get(to_checksum_address(current.address), 0)
            if unsettled:
                raise RegistrationConflict(
                    f"{unsettled} units billed on the registered note chain are not settled yet; "
                    "register another note chain after settlement"
                )

    # -- billing -------------------------------------------------------------------------------------

    def add_carried(self, client: bytes, size: int) -> None:
        if size:
            with self._write() as db:
                db.execute(
                    "UPDATE clients SET carried_unbilled = carried_unbilled + ? WHERE address = ?", (size, client)
                )

    def bill(self, client: bytes, *, storage_reading: int, now: int, force: bool) -> Bill | None:
        """Bill what is unbilled when the threshold is reached (or `force` and there is something)."""
        account = self.account(client)
        if account is None:
            return None
        stored = max(0, storage_reading - account.storage_billed)
        carried = account.carried_unbilled
        if carried < self.config.bill_threshold_bytes and not (force and (carried or stored)):
            return None
        charge = Meter(self.config.prices).charge(bytes_carried=carried, byte_seconds_stored=stored)
        billed = account.billed_total + charge
        with self._write() as db:
            db.execute(
                """UPDATE clients SET billed_total = ?, carried_unbilled = carried_unbilled - ?,
                      storage_billed = ?, last_bill_at = ? WHERE address = ?""",
                (str(billed), carried, max(storage_reading, account.storage_billed), now, client),
            )
        if charge == 0:
            return None  # free service: usage is absorbed, nothing to sign
        prices = self.config.prices
        return Bill(billed, charge, carried, stored, prices.per_mb_outbound, prices.per_mb_hour_storage, now)

    def vouched(self, account: Account) -> int:
        return self._ledger(account.authorization.note_chain).accepted_total(to_checksum_address(account.address))

    def paid(self, account: Account) -> tuple[int, int]:
        """(vouched, settled) on the account's note chain."""
        ledger = self._ledger(account.authorization.note_chain)
        payer = to_checksum_address(account.address)
        return ledger.accepted_total(payer), ledger.settled.get(payer, 0)

    def outstanding(self, account: Account) -> Bill:
        """A bill for what is billed and not vouched (charge 0: nothing new), to re-send with a 402."""
        prices = self.config.prices
        return Bill(account.billed_total, 0, 0, 0, prices.per_mb_outbound, prices.per_mb_hour_storage, 0)

    def pay(self, client: bytes, payment: PayPayload, *, now: int) -> tuple[int, int]:
        """Accept a voucher; return (accepted cumulative, billed total)."""
        account = self.account(client)
        if account is None:
            raise UnknownClient("the client is not registered here")
        note_chain = account.authorization.note_chain
        ledger = self._ledger(note_chain)
        voucher = Voucher(
            ledger.domain,
            to_checksum_address(client),
            ledger.payee,
            payment.cumulative_amount,
            payment.nonce,
            payment.expiry,
            payment.signature,
        )
        if voucher.cumulative_amount > account.billed_total:
            raise VoucherError(f"the voucher is for {voucher.cumulative_amount}, only {account.billed_total} is billed")
        if ledger.accept(voucher, now=now):
            with self._write() as db:
                db.execute(
                    """INSERT INTO vouchers (payer, note_chain, cumulative, nonce, expiry, signature)
                       VALUES (?, ?, ?, ?, ?, ?)
                       ON CONFLICT (payer, note_chain) DO UPDATE SET cumulative = excluded.cumulative,
                           nonce = excluded.nonce, expiry = excluded.expiry, signature = excluded.signature""",
                    (
                        client,
                        note_chain,
                        str(voucher.cumulative_amount),
                        str(voucher.nonce),
                        voucher.expiry,
                        voucher.signature,
                    ),
                )
        return ledger.accepted_total(voucher.payer), account.billed_total

    def settle_batch(self, *, now: int) -> list[Deduction]:
        """The deductions of one settlement batch, marked settled. The caller submits them (DLE, later)."""
        deductions: list[Deduction] = []
        with self._write() as db:
            for note_chain, ledger in sorted(self._ledgers.items()):
                items: list[SettlementItem] = ledger.settle_batch(now=now)
                for item in items:
                    holder = to_canonical_address(item.payer)
                    account = self.account(holder)
                    nonce = account.authorization.nonce if account is not None else 0
                    db.execute(
                        "UPDATE vouchers SET settled = ? WHERE payer = ? AND note_chain = ?",
                        (str(item.settled_total), holder, note_chain),
                    )
                    if account is not None and account.authorization.note_chain == note_chain:
                        db.execute(
                            "UPDATE clients SET settled_under_auth = ? WHERE address = ?",
                            (str(account.settled_under_auth + item.amount), holder),
                        )
                    deductions.append(
                        Deduction(note_chain, item.payer, nonce, item.amount, item.settled_total, item.voucher)
                    )
        return deductions

    def settlement_due(self, *, now: int) -> list[Deduction]:
        """The deductions a settlement batch would carry now, marking nothing: settlement.Settler
        submits each to the DLE and records it (`record_settlement`) only once it is final. A payer
        whose account has no authorization on the voucher's note chain is left out (nothing to deduct
        under); an expired voucher too, as in `settle_batch`."""
        due: list[Deduction] = []
        with self._lock:
            for note_chain, ledger in sorted(self._ledgers.items()):
                for payer, amount in sorted(ledger.owed().items()):
                    voucher = ledger.latest[payer]
                    account = self.account(to_canonical_address(payer))
                    if voucher.expiry <= now or account is None or account.authorization.note_chain != note_chain:
                        continue
                    nonce = account.authorization.nonce
                    due.append(Deduction(note_chain, payer, nonce, amount, voucher.cumulative_amount, voucher))
        return due

    def record_settlement(self, note_chain: bytes, holder: bytes, authorization_nonce: int, settled_total: int) -> int:
        """Record that `holder` has settled everything up to `settled_total` on `note_chain` (a deduction
        final there under `authorization_nonce`); returns the units this adds. Idempotent: recording
        the same total again, or a lower one, adds nothing."""
        payer = to_checksum_address(holder)
        with self._lock:
            ledger = self._ledger(note_chain)
            if settled_total > ledger.accepted_total(payer):
                raise ValueError(f"settling {settled_total} for {payer}: {ledger.accepted_total(payer)} is vouched")
            added = settled_total - ledger.settled.get(payer, 0)
            if added <= 0:
                return 0
            with self._write() as db:
                db.execute(
                    "UPDATE vouchers SET settled = ? WHERE payer = ? AND note_chain = ?",
                    (str(settled_total), holder, note_chain),
                )
                account = self.account(holder)
                if account is not None and (account.authorization.note_chain, account.authorization.nonce) == (
                    note_chain,
                    authorization_nonce,
                ):
                    db.execute(
                        "UPDATE clients SET settled_under_auth = ? WHERE address = ?",
                        (str(account.settled_under_auth + added), holder),
                    )
            ledger.settled[payer] = settled_total  # after the commit: memory never runs ahead of the file
            return added

    # -- relays --------------------------------------------------------------------------------------

    def credit_relay(self, relay: bytes, size: int, *, tag: bytes | None = None, now: int = 0) -> bool:
        """Add `size` bytes to what is owed `relay`; with a receipt's `tag`, at most once per tag."""
        with self._write() as db:
            if tag is not None:
                seen = db.execute("SELECT 1 FROM relay_receipts WHERE tag = ?", (tag,)).fetchone()
                if seen is not None:
                    return False
                db.execute("INSERT INTO relay_receipts VALUES (?, ?, ?, ?)", (tag, relay, size, now))
            db.execute(
                """INSERT INTO relay_usage VALUES (?, ?, ?)
                   ON CONFLICT (relay, per_mb) DO UPDATE SET bytes = bytes + excluded.bytes""",
                (relay, str(self.config.relay_per_mb), size),
            )
        return True

    def forget_receipts(self, before: int) -> None:
        """Receipts older than the clock skew can no longer be replayed (verify_receipt refuses them)."""
        with self._write() as db:
            db.execute("DELETE FROM relay_receipts WHERE at < ?", (before,))

    # -- reports ---------------------------------------------------------------------------------------

    def owed_by_clients(self) -> list[ClientOwed]:
        with self._lock:
            return _owed_by_clients(self._db)

    def owed_to_relays(self) -> list[RelayOwed]:
        with self._lock:
            return _owed_to_relays(self._db)


def _owed_by_clients(db: sqlite3.Connection) -> list[ClientOwed]:
    return owed_by_clients_from(
        db.execute("SELECT address, note_chain, billed_total FROM clients"),
        db.execute("SELECT payer, note_chain, cumulative, settled FROM vouchers"),
    )


def owed_by_clients_from(clients: Iterable[Sequence[Any]], vouchers_rows: Iterable[Sequence[Any]]) -> list[ClientOwed]:
    """The clients' report from rows (address, note chain, billed) and (payer, note chain, cumulative,
    settled), whichever store they come from (SQLite here, PostgreSQL in pgstate.py)."""
    billed = {(bytes(a), bytes(c)): _int(b) for a, c, b in clients}
    vouchers = {(bytes(p), bytes(c)): (_int(cumulative), _int(settled)) for p, c, cumulative, settled in vouchers_rows}
    owed = []
    for key in sorted(set(billed) | set(vouchers)):
        client, chain = key
        vouched, settled = vouchers.get(key, (0, 0))
        total = billed.get(key, vouched)  # an earlier note chain's account: its vouchers are what is left of it
        owed.append(
            ClientOwed(to_checksum_address(client), chain, total, vouched, settled, vouched - settled, total - vouched)
        )
    return owed


def _owed_to_relays(db: sqlite3.Connection) -> list[RelayOwed]:
    return owed_to_relays_from(
        db.execute("SELECT relay, per_mb, bytes FROM relay_usage"),
        db.execute("SELECT relay, settled FROM relay_settled"),
    )


def owed_to_relays_from(usage_rows: Iterable[Sequence[Any]], settled_rows: Iterable[Sequence[Any]]) -> list[RelayOwed]:
    """The relays' report from rows (relay, price per MB, bytes) and (relay, settled)."""
    usage: dict[bytes, tuple[int, int]] = {}
    for relay, per_mb, size in usage_rows:
        # One rounding per relay and price, over the running total: exact to the unit, never per message.
        size_before, amount_before = usage.get(bytes(relay), (0, 0))
        usage[bytes(relay)] = (size_before + size, amount_before + ceil_div(size * _int(per_mb), BYTES_PER_MB))
    settled = {bytes(r): _int(s) for r, s in settled_rows}
    return [
        RelayOwed(to_checksum_address(relay), size, amount - settled.get(relay, 0), settled.get(relay, 0))
        for relay, (size, amount) in sorted(usage.items())
    ]


# -- the app -----------------------------------------------------------------------------------------


class _ReplayCache:
    """Request ids seen within the clock-skew window; older requests are refused by their timestamp."""

    def __init__(self, window_ms: int, max_entries: int = 200_000) -> None:
        self.window_ms = window_ms
        self.max_entries = max_entries
        self._seen: dict[tuple[bytes, bytes], int] = {}

    async def check_and_add(self, request: NodeRequest, now_ms: int) -> None:
        key = (request.client, request.request_id)
        if key in self._seen:
            raise ReplayedRequest(f"request {request.request_id.hex()} was already served")
        if len(self._seen) >= self.max_entries:
            await self.prune(now_ms)
        self._seen[key] = request.timestamp_ms

    async def prune(self, now_ms: int) -> None:
        horizon = now_ms - self.window_ms
        self._seen = {key: at for key, at in self._seen.items() if at >= horizon}


class _Node:
    """The handlers and their shared state; `create_node_app` wires it into an aiohttp app."""

    def __init__(
        self,
        key: KeyPair,
        config: NodeConfig,
        mailbox: MailboxStore,
        state: NodeStateStore,
        bus: PushBus,
        verifier: AuthorizationVerifier,
        clock: Callable[[], float],
        replays: ReplayGuard | None = None,
    ) -> None:
        self.key = key
        self.config = config
        self.mailbox = mailbox
        self.state = state
        self.bus = bus
        self.verifier = verifier
        self.clock = clock
        self.replays: ReplayGuard = replays if replays is not None else _ReplayCache(config.clock_skew_seconds * 1000)

    def now(self) -> int:
        return int(self.clock())

    async def _mailbox(self, function: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        return await asyncio.to_thread(function, *args, **kwargs)

    # -- entry ---------------------------------------------------------------------------------------

    async def post(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._read_body(request)
            opened = open_node_layer(body, self.key, self.config.policy)
            relay = await self._credit_relay(request, body)
            if isinstance(opened, OpenedDelivery):
                return await self.deliver(opened, relay)
            return await self.serve(opened.request, request, relay)
        except NodeError as error:
            return self._error(error.status, error.code, str(error))
        except (EnvelopeError, receipts.ReceiptError) as error:
            return self._error(400, _snake(type(error).__name__), str(error))
        except AuthorizationRejected as error:
            return self._error(403, "authorization_rejected", str(error))
        except AuthorizationUnverifiable as error:
            # The note chain could not be read: nothing is registered, the client retries later.
            return self._error(503, "authorization_unverifiable", str(error))
        except VoucherError as error:
            return self._error(400, "voucher_rejected", f"{type(error).__name__}: {error}")
        except MailboxFull as error:
            return self._error(507, "mailbox_full", str(error))
        except MailboxError as error:
            # A shared mailbox (PostgreSQL) that cannot be reached: nothing was promised, the sender retries.
            return self._error(503, "mailbox_unavailable", type(error).__name__)

    async def _read_body(self, request: web.Request) -> bytes:
        limit = self.config.max_envelope
        if request.content_length is not None and request.content_length > limit:
            raise RequestTooLarge(f"{request.content_length} bytes exceed the largest envelope, {limit} bytes")
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge as error:
            raise RequestTooLarge(f"the body exceeds the largest envelope, {limit} bytes") from error

    async def _credit_relay(self, request: web.Request, body: bytes) -> bytes | None:
        """Check the relay's receipt (only for an envelope that opened: junk earns a relay nothing)."""
        header = request.headers.get(receipts.RECEIPT_HEADER)
        if header is None:
            if self.config.require_relay_receipt:
                raise MissingReceipt("this node takes envelopes only through relays, with their receipts")
            return None
        receipt = receipts.verify_receipt(
            header,
            node=self.key.address,
            envelope=body,
            now_ms=int(self.clock() * 1000),
            max_skew_ms=self.config.clock_skew_seconds * 1000,
        )
        await self.state.run(
            lambda: self.state.credit_relay(receipt.relay, receipt.byte_count, tag=receipt.envelope_tag, now=self.now())
        )
        return receipt.relay

    async def _count_answer(self, relay: bytes | None, size: int) -> None:
        if relay is not None and size:
            await self.state.run(self.state.credit_relay, relay, size)

    # -- deliver -------------------------------------------------------------------------------------

    async def deliver(self, opened: OpenedDelivery, relay: bytes | None) -> web.StreamResponse:
        recipient = to_canonical_address(opened.delivery.recipient)
        if await self.state.run(self.state.account, recipient) is None:
            raise UnknownRecipient("the recipient is not a client of this node")
        blob = opened.delivery.inner
        await self._mailbox(self.mailbox.store, recipient, message_id_of(blob), blob, now=self.now())
        try:
            pushed = await self.bus.publish(recipient, blob)
        except Exception as error:  # a shared bus's database hiccup: the push is only the fast path
            # The message is durable already; the client gets it from the mailbox on its next fetch.
            log.warning("deliver: push failed (%s), the message waits in the mailbox", type(error).__name__)
            pushed = False
        log.info(
            "deliver: %d bytes for %s stored%s", len(blob), opened.delivery.recipient, ", pushed" if pushed else ""
        )
        # The sender learns "accepted" and nothing of the recipient's presence.
        return web.Response(text="ok")

    # -- client requests -----------------------------------------------------------------------------

    async def serve(self, req: NodeRequest, request: web.Request, relay: bytes | None) -> web.StreamResponse:
        now_ms = int(self.clock() * 1000)
        skew = self.config.clock_skew_seconds * 1000
        if abs(now_ms - req.timestamp_ms) > skew:
            raise StaleRequest(
                f"the request's time is {(req.timestamp_ms - now_ms) / 1000:+.0f} s from the node's clock "
                f"(at most ±{self.config.clock_skew_seconds} s)"
            )
        req.verify(self.key.address)
        await self.replays.check_and_add(req, now_ms)
        try:
            return await self._serve_verified(req, request, relay)
        except PaymentRequired as error:
            # The 402's body is the outstanding bill under the request's session key, so the client can
            # pay at once; the code goes in a header, the relay sees nothing else.
            log.info("refused (402 %s): %s", error.code, error)
            answer = await self._answer(req, [(EventType.BILL, error.bill.encode())], relay, status=402)
            answer.headers["CoNET-Error"] = error.code
            return answer

    async def _serve_verified(self, req: NodeRequest, request: web.Request, relay: bytes | None) -> web.StreamResponse:
        if req.kind is RequestKind.REGISTER:
            return await self.register(req, relay)
        account = await self.state.run(self.state.account, req.client)
        if account is None:
            raise UnknownClient("the client is not registered here: register first")
        if req.kind is RequestKind.LISTEN:
            return await self.listen(req, account, request, relay)
        if req.kind is RequestKind.FETCH:
            return await self.fetch(req, account, FetchPayload.decode(req.payload), relay)
        if req.kind is RequestKind.ACK:
            return await self.ack(req, AckPayload.decode(req.payload), relay)
        return await self.pay(req, PayPayload.decode(req.payload), relay)

    async def register(self, req: NodeRequest, relay: bytes | None) -> web.StreamResponse:
        authorization = Authorization.decode(req.payload, holder=req.client)
        self._check_terms(authorization)
        await self.verifier.verify(authorization, now=self.now())
        reading = await self._mailbox(self.mailbox.storage_byte_seconds, req.client, self.now())
        account = await self.state.run(
            lambda: self.state.register(req, authorization, storage_reading=reading, now=self.now())
        )
        vouched = await self.state.run(self.state.vouched, account)
        log.info(
            "register: %s, authorization %d on note chain 0x%s (checked %s)",
            req.client_address,
            authorization.nonce,
            authorization.note_chain.hex()[:16],
            "on the note chain" if self.verifier.final_on_chain else "offline: signature only",
        )
        prices = self.config.prices
        registered = Registered(
            self.key.address,
            prices.per_mb_outbound,
            prices.per_mb_hour_storage,
            account.billed_total,
            vouched,
            self.config.credit_limit,
        )
        return await self._answer(req, [(EventType.REGISTERED, registered.encode())], relay)

    def _check_terms(self, authorization: Authorization) -> None:
        config = self.config
        if authorization.payee != self.key.address:
            raise AuthorizationRejected(
                f"the authorization pays {to_checksum_address(authorization.payee)}, not this node "
                f"{self.key.checksum_address}"
            )
        if (authorization.chain_id, authorization.cash) != (config.chain_id, config.cash):
            raise AuthorizationRejected(
                f"the authorization is for chain {authorization.chain_id} and CoNETCash "
                f"{to_checksum_address(authorization.cash)}; this node takes chain {config.chain_id} and "
                f"{to_checksum_address(config.cash)}"
            )
        if authorization.limit < config.min_authorization_limit:
            raise AuthorizationRejected(
                f"the limit {authorization.limit} is under this node's minimum {config.min_authorization_limit}"
            )
        now = self.now()
        if authorization.expiry < now + config.min_authorization_seconds:
            raise AuthorizationRejected(
                f"the authorization expires at {authorization.expiry}, less than "
                f"{config.min_authorization_seconds} s from now ({now})"
            )
        if authorization.expiry > now + config.max_authorization_seconds:
            raise AuthorizationRejected(
                f"the authorization expires at {authorization.expiry}, over "
                f"{config.max_authorization_seconds} s from now ({now})"
            )

    async def _bill(self, client: bytes, *, force: bool) -> Bill | None:
        now = self.now()
        reading = await self._mailbox(self.mailbox.storage_byte_seconds, client, now)
        return await self.state.run(lambda: self.state.bill(client, storage_reading=reading, now=now, force=force))

    async def _check_credit(self, client: bytes) -> list[tuple[EventType, bytes]]:
        """Bill what is due; refuse service (402) to a client over its credit or its authorization."""
        bill = await self._bill(client, force=True)
        account = await self.state.run(self.state.account, client)
        assert account is not None
        vouched, settled = await self.state.run(self.state.paid, account)
        unpaid = account.billed_total - vouched
        if unpaid > self.config.credit_limit:
            raise PaymentRequired(
                f"{unpaid} units are billed and unpaid, over the credit limit {self.config.credit_limit}",
                self.state.outstanding(account),
            )
        remaining = account.authorization.limit - account.settled_under_auth
        if account.billed_total - settled > remaining:
            raise PaymentRequired(
                f"{account.billed_total - settled} units are unsettled and the authorization has {remaining} "
                "left: register a new authorization",
                self.state.outstanding(account),
            )
        return [] if bill is None else [(EventType.BILL, bill.encode())]

    async def listen(
        self, req: NodeRequest, account: Account, request: web.Request, relay: bytes | None
    ) -> web.StreamResponse:
        bills = await self._check_credit(req.client)
        written = 0
        response = web.StreamResponse(headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"})
        async with self.bus.subscribe(req.client) as subscription:
            # Counted after subscribing: a message stored from now on is also pushed, so none falls between.
            pending, pending_bytes = await self._mailbox(self.mailbox.usage, req.client)
            await response.prepare(request)
            log.info("listen: %s online (%d waiting)", req.client_address, pending)
            try:
                for event_type, body in [(EventType.READY, Ready(pending, pending_bytes).encode()), *bills]:
                    written += await self._write_event(response, req.session_key, event_type, body)
                while True:
                    try:
                        blob = await asyncio.wait_for(subscription.get(), self.config.keepalive_seconds)
                    except TimeoutError:
                        await response.write(KEEPALIVE)
                        continue
                    if blob is None:
                        break
                    written += await self._write_event(response, req.session_key, EventType.MESSAGE, blob)
            except (ConnectionError, asyncio.CancelledError):
                # The client (its relay) went away; the finally below marks it offline.
                pass
            finally:
                log.info("listen: %s offline", req.client_address)
                await self._count_answer(relay, written)
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response

    async def _write_event(
        self, response: web.StreamResponse, session_key: bytes, event_type: EventType, body: bytes
    ) -> int:
        frame = sse_frame(seal_event(session_key, event_type, body, self.config.policy))
        await response.write(frame)
        return len(frame)

    async def fetch(
        self, req: NodeRequest, account: Account, payload: FetchPayload, relay: bytes | None
    ) -> web.StreamResponse:
        events = await self._check_credit(req.client)
        limit = max(0, min(payload.limit, self.config.fetch_max_messages))
        messages = await self._mailbox(self.mailbox.fetch, req.client, limit)
        budget = self.config.fetch_max_bytes
        returned = 0
        for message in messages:
            if returned and message.size > budget:
                break
            budget -= message.size
            returned += 1
            events.append((EventType.MESSAGE, message.blob))
        pending, _ = await self._mailbox(self.mailbox.usage, req.client)
        events.append((EventType.INBOX_END, InboxEnd(returned, pending - returned).encode()))
        log.info("fetch: %s, %d messages handed over, %d left", req.client_address, returned, pending - returned)
        return await self._answer(req, events, relay)

    async def ack(self, req: NodeRequest, payload: AckPayload, relay: bytes | None) -> web.StreamResponse:
        removed = await self._mailbox(self.mailbox.acknowledge, req.client, payload.ids, now=self.now())
        carried = sum(item.size for item in removed)
        await self.state.run(self.state.add_carried, req.client, carried)
        bill = await self._bill(req.client, force=False)
        events = [(EventType.ACKED, Acked(len(removed)).encode())]
        if bill is not None:
            events.append((EventType.BILL, bill.encode()))
        log.info("ack: %s, %d messages (%d bytes) deleted", req.client_address, len(removed), carried)
        return await self._answer(req, events, relay)

    async def pay(self, req: NodeRequest, payload: PayPayload, relay: bytes | None) -> web.StreamResponse:
        accepted, billed = await self.state.run(lambda: self.state.pay(req.client, payload, now=self.now()))
        log.info("pay: %s, voucher for %d of %d billed", req.client_address, accepted, billed)
        return await self._answer(req, [(EventType.PAID, Paid(accepted, billed).encode())], relay)

    # -- answers -------------------------------------------------------------------------------------

    async def _answer(
        self, req: NodeRequest, events: Sequence[tuple[EventType, bytes]], relay: bytes | None, status: int = 200
    ) -> web.Response:
        body = b"".join(
            sse_frame(seal_event(req.session_key, event_type, data, self.config.policy)) for event_type, data in events
        )
        await self._count_answer(relay, len(body))
        return web.Response(
            status=status, body=body, headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"}
        )

    @staticmethod
    def _error(status: int, code: str, message: str) -> web.Response:
        log.info("refused (%d %s): %s", status, code, message)
        return web.json_response({"error": code, "message": message}, status=status)

    # -- housekeeping ----------------------------------------------------------------------------------

    async def expire_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.expire_interval_seconds)
            try:
                removed = await self._mailbox(self.mailbox.expire, self.now())
                if removed:
                    log.info("expire: %d messages past the maximum age deleted", len(removed))
                await self.replays.prune(int(self.clock() * 1000))
                horizon = self.now() - 2 * self.config.clock_skew_seconds
                await self.state.run(self.state.forget_receipts, horizon)
            except Exception:  # housekeeping must not die with one failed round
                log.exception("expire: round failed")


def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")


def create_node_app(
    key: KeyPair,
    config: NodeConfig,
    mailbox: MailboxStore,
    state: NodeStateStore,
    *,
    bus: PushBus | None = None,
    verifier: AuthorizationVerifier | None = None,
    clock: Callable[[], float] = time.time,
    replays: ReplayGuard | None = None,
) -> web.Application:
    """The recipient node as an aiohttp application; serve it with `disguise.NginxAppRunner` (as
    `relay.serve` does). Handler cancellation is on, so a client's departure ends its stream at once.

    One process: the defaults (`LocalPushBus`, the in-memory replay cache). Several entry servers of
    one node wallet (provider.py): a shared mailbox, `bus`, `state` and `replays` (PostgreSQL)."""
    node = _Node(
        key,
        config,
        mailbox,
        state,
        bus if bus is not None else LocalPushBus(config.push_queue_size),
        verifier if verifier is not None else OfflineAuthorizationVerifier(),
        clock,
        replays,
    )
    app = web.Application(
        middlewares=[disguise.disguise_middleware],
        client_max_size=config.max_envelope,
        # No access log: it would keep the relays' IPs and timings of every client's requests.
        handler_args={"handler_cancellation": True, "access_log": None},
    )
    app[NODE_KEY] = node

    async def dispatch(request: web.Request) -> web.StreamResponse:
        # Everything but POST /post answers as a stock nginx (disguise.py), like a relay.
        if request.method == "POST" and request.path == "/post":
            return await node.post(request)
        return await disguise.not_a_relay(request)

    app.router.add_route("*", "/{tail:.*}", dispatch)

    async def server_header(request: web.Request, response: web.StreamResponse) -> None:
        response.headers["Server"] = disguise.SERVER  # not aiohttp's, which would name the software

    app.on_response_prepare.append(server_header)

    async def housekeeping(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(node.expire_loop())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(housekeeping)
    return app


def open_node_app(
    data_dir: str | Path,
    key: KeyPair,
    config: NodeConfig,
    **kwargs: Any,
) -> tuple[web.Application, Mailbox, NodeState]:
    """A node keeping its files in `data_dir` (mailbox.db, node.db); the caller closes the two stores."""
    directory = Path(data_dir)
    directory.mkdir(parents=True, exist_ok=True)
    mailbox = Mailbox(directory / "mailbox.db", config.limits)
    state = NodeState(directory / "node.db", node=key.address, config=config)
    return create_node_app(key, config, mailbox, state, **kwargs), mailbox, state


def earnings(data_dir: str | Path) -> tuple[ChecksumAddress, list[ClientOwed], list[RelayOwed]]:
    """(the node's address, what its clients owe it, what it owes relays), read from its data dir
    without writing (a running node keeps its file; WAL lets this read alongside)."""
    path = Path(data_dir) / "node.db"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: {data_dir} is not a node's data dir")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT value FROM meta WHERE key = 'node'").fetchone()
        node = to_checksum_address(row[0]) if row else to_checksum_address(bytes(20))
        return node, _owed_by_clients(db), _owed_to_relays(db)
    finally:
        db.close()


NODE_KEY = web.AppKey("si_node", _Node)


# -- running one -------------------------------------------------------------------------------------


def config_from_args(args: argparse.Namespace) -> NodeConfig:
    """The `NodeConfig` of the options `build_parser` defines (shared with provider.py)."""
    return NodeConfig(
        chain_id=args.chain_id,
        cash=to_canonical_address(args.cash),
        prices=Prices(args.price_outbound, args.price_storage),
        relay_per_mb=args.relay_price,
        limits=MailboxLimits(args.max_bytes, args.max_messages, args.max_age),
        credit_limit=args.credit_limit,
        bill_threshold_bytes=args.bill_threshold,
        keepalive_seconds=args.keepalive,
        require_relay_receipt=args.require_receipt,
    )


async def _run(args: argparse.Namespace) -> None:
    from offchain.si.relay import load_key_file, serve
    from offchain.si.settlement import open_settlement

    key = load_key_file(args.key_file)
    # Without --devnet: the offline verifier and no settlement, as before.
    settlement = await open_settlement(args, key, config_from_args(args))
    config = settlement.config
    app, mailbox, state = open_node_app(args.data_dir, key, config, verifier=settlement.verifier)
    runner, port = await serve(app, args.host, args.port)
    settlement.start(state, args.data_dir, key)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # The one line a supervisor (or a test) reads to learn the port when --port 0 was asked.
    print(f"node {key.checksum_address} listening on http://{args.host}:{port}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await settlement.close()
        state.close()
        mailbox.close()


def build_parser(
    prog: str = "python -m offchain.si.node", description: str = "Run an SI recipient node.", *, data_dir: bool = True
) -> argparse.ArgumentParser:
    """The node's options: address, key, terms and limits (provider.py adds its own to these)."""
    defaults = NodeConfig()
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="0 picks a free port (printed on start)")
    parser.add_argument("--key-file", required=True, help="the node's private key, 64 hex digits")
    if data_dir:
        parser.add_argument("--data-dir", required=True, help="where mailbox.db and node.db live")
    parser.add_argument("--chain-id", type=int, default=defaults.chain_id, help="main chain of accepted authorizations")
    parser.add_argument("--cash", default="0x" + "00" * 20, help="CoNETCash address of accepted authorizations")
    parser.add_argument("--price-outbound", type=int, default=0, help="units per MB carried to a client")
    parser.add_argument("--price-storage", type=int, default=0, help="units per MB-hour in the mailbox")
    parser.add_argument("--relay-price", type=int, default=0, help="units per MB paid to a relay")
    parser.add_argument("--credit-limit", type=int, default=defaults.credit_limit)
    parser.add_argument("--bill-threshold", type=int, default=defaults.bill_threshold_bytes, help="bytes")
    parser.add_argument("--max-bytes", type=int, default=defaults.limits.max_bytes, help="mailbox bytes per client")
    parser.add_argument("--max-messages", type=int, default=defaults.limits.max_messages)
    parser.add_argument("--max-age", type=int, default=defaults.limits.max_age_seconds, help="seconds")
    parser.add_argument("--keepalive", type=float, default=defaults.keepalive_seconds, help="seconds")
    parser.add_argument("--require-receipt", action="store_true", help="take envelopes only through relays")
    parser.add_argument("--log-level", default="INFO")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m offchain.si.node --port P --key-file F --data-dir D [terms]`."""
    from offchain.si.settlement import add_arguments

    parser = build_parser()
    add_arguments(parser)  # --devnet, --settle-every: the note chains (settlement.py)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(_run(args))
    except (ValueError, OSError) as error:
        print(f"node: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
