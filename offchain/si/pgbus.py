"""The push bus of a load-balanced recipient provider: PostgreSQL tables plus LISTEN/NOTIFY.

DESIGN §7: one node wallet, several entry servers, "sharing mailbox and push connections through a
shared store and a message bus". A client's event stream is open on exactly one entry server; a
message for that client may arrive at any of them. The bus carries it across:

* An entry server runs one `PgPushBus`. `start()` registers a **lease** (a row in `bus_servers`
  with `lease_expires`, renewed every `heartbeat_seconds`); an *instance* is one bus object, with a
  random id, so a restarted process never inherits a dead one's claims.
* `claim(recipient)` records that this instance holds the client's stream (`bus_claims`, one row per
  recipient: the latest claim wins, since a client that reconnects has left its old stream).
* `publish(recipient, payload)`, on any entry server, looks up the live holder and, **in the same
  transaction**, inserts the push as a row of `bus_pushes` addressed to that holder and NOTIFYs the
  holder's channel with the row's id only (so NOTIFY's 8000-byte limit never matters). It returns
  True once that transaction has committed (durably, like a mailbox store), False when no live
  instance holds the client — then the caller stores the message in the mailbox.
* The holder's `deliveries()` wakes on the notification, reads the rows addressed to it and yields
  `(recipient, payload)`; a row is deleted when the consumer asks for the next item, i.e. after it
  has handled this one. Delivery is **at least once**: a holder killed between handing a push to
  its client and deleting the row has it delivered again (by the next holder or from the mailbox).
  Clients deduplicate by the node-side id, keccak256(N1), which they acknowledge by anyway.
* A push is never lost after `publish()` returned True: its row stays until the holder deletes it
  after delivery, or is re-addressed. `release(recipient)` (the stream closed), a new claim by another
  instance, and a lease that expired (the holder died: every live instance sweeps once per heartbeat)
  each move the recipient's undelivered rows — to the current live holder if there is one, otherwise
  into the mailbox, in one transaction with the mailbox's counters (`ON CONFLICT DO NOTHING` on the
  message id, so nothing is ever duplicated in the mailbox). Moving into the mailbox ignores its
  limits: the sender was already told "delivered", and a message is not dropped for admission.
* `subscribe(client)` / `PgSubscription.get()` / `is_online(client)` are the same machinery in the
  shape of the node's `PushBus` interface (offchain/si/node.py): one queue per client stream, fed
  from the rows addressed here; a push handed out by `get()` is deleted at the next `get()`; a
  newer claim of the client on another instance ends the older stream (`get()` gives None), told
  through a NOTIFY carrying the new claim's number so that a claim made since is not ended.

Every change to one recipient's claim or pushes happens in a transaction holding a per-recipient
advisory lock (`pg_advisory_xact_lock`), so publish, claim, release and the sweep see each other's
committed state and never interleave. Lock order: the recipient's advisory lock, then its mailbox
box row (the mailbox's own order continues from there), so nothing here deadlocks with the mailbox.

Times for liveness are the database server's clock (`clock_timestamp()`), so the entry servers'
clocks need not agree; mailbox `stored_at` for rescued pushes is this process's `clock()`, as the
node's own stores are. docs/drafts/si-postgres.md describes the schema and failure cases.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from eth_typing import ChecksumAddress
from eth_utils.address import to_canonical_address, to_checksum_address
from psycopg import sql

from offchain.si.mailbox import MAX_MESSAGE_ID_SIZE, MessageIdConflict, message_id_of
from offchain.si.pgmailbox import DDL_LOCK_KEY, DEFAULT_SCHEMA, MAILBOX_DDL, check_schema_name, schema_statements

__all__ = [
    "DEFAULT_LEASE_SECONDS",
    "NOTIFY_PAYLOAD_LIMIT",
    "BusClosed",
    "BusError",
    "BusUnavailable",
    "PgPushBus",
    "PgSubscription",
    "Reroute",
    "channel_for",
]

log = logging.getLogger(__name__)

DEFAULT_LEASE_SECONDS = 10.0
NOTIFY_PAYLOAD_LIMIT = 8000
"""PostgreSQL's limit on a NOTIFY payload; the bus notifies row ids only, so payloads never meet it."""

_FETCH_BATCH = 64
_SWEEP_BATCH = 500
T = TypeVar("T")


class BusError(Exception):
    """A push-bus operation was refused."""


class BusClosed(BusError):
    """The bus was used before `start()` or after `close()`."""


class BusUnavailable(BusError):
    """PostgreSQL could not be reached or failed during the operation.

    A `publish()` that raises this may or may not have queued the push: store the message in the
    mailbox (idempotent by id) — at worst the client receives it twice. A `claim()` that raises it
    may or may not have taken effect: call `release()` when the stream ends either way."""


@dataclass(frozen=True)
class Reroute:
    """What a sweep or release did with one recipient's undelivered pushes."""

    recipient: ChecksumAddress
    to_holder: int
    """Pushes re-addressed to the recipient's current live holder."""
    to_mailbox: int
    """Pushes moved into the mailbox (no live holder)."""
    already_in_mailbox: int
    """Of those, how many the mailbox already held under the same id (not stored twice)."""


def channel_for(instance: uuid.UUID) -> str:
    """The LISTEN channel of a bus instance (an identifier under PostgreSQL's 63-byte limit)."""
    return f"conet_push_{instance.hex}"


def _lock_key(schema: str, address: bytes) -> int:
    """The per-recipient advisory lock key: 64 bits of a hash, as PostgreSQL's signed bigint."""
    digest = hashlib.blake2b(schema.encode() + b"\x00" + address, digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


_BUS_DDL = """
CREATE TABLE IF NOT EXISTS {s}.bus_servers (
    instance       uuid        PRIMARY KEY,
    server_id      text        NOT NULL,
    started        timestamptz NOT NULL DEFAULT clock_timestamp(),
    lease_expires  timestamptz NOT NULL
);
CREATE SEQUENCE IF NOT EXISTS {s}.bus_claim_versions;
CREATE TABLE IF NOT EXISTS {s}.bus_claims (
    recipient   bytea       PRIMARY KEY CHECK (length(recipient) = 20),
    instance    uuid        NOT NULL,
    version     bigint      NOT NULL,
    claimed_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS bus_claims_by_instance ON {s}.bus_claims (instance);
CREATE TABLE IF NOT EXISTS {s}.bus_pushes (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    recipient   bytea       NOT NULL CHECK (length(recipient) = 20),
    message_id  bytea       NOT NULL CHECK (length(message_id) BETWEEN 1 AND 32),
    payload     bytea       NOT NULL CHECK (length(payload) > 0),
    target      uuid        NOT NULL,
    published   timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (recipient, message_id)
);
CREATE INDEX IF NOT EXISTS bus_pushes_by_target ON {s}.bus_pushes (target, id);
"""


class PgSubscription:
    """One client stream's end of the bus, from `PgPushBus.subscribe()` (the node's `Subscription`)."""

    def __init__(self, bus: PgPushBus, address: bytes, size: int) -> None:
        self.recipient = to_checksum_address(address)
        self.version: int | None = None
        """The claim's number once it is made; a newer claim on another instance ends this one."""
        self.ended = False
        self._bus = bus
        self._size = size
        self._queue: asyncio.Queue[tuple[int, bytes] | None] = asyncio.Queue()
        self._handed: int | None = None  # given out by the last get(), deleted by the next

    def offer(self, push_id: int, payload: bytes) -> bool:
        """Queue a push; False when ended or full (the caller then ends it)."""
        if self.ended or self._queue.qsize() >= self._size:
            return False
        self._queue.put_nowait((push_id, payload))
        return True

    def end(self) -> list[int]:
        """Stop: `get()` returns None from now on. Returns the ids of the pushes queued or handed out
        and not deleted, which stay on the bus to be re-routed."""
        if self.ended:
            return []
        self.ended = True
        ids = [] if self._handed is None else [self._handed]
        self._handed = None
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is not None:
                ids.append(item[0])
        self._queue.put_nowait(None)
        return ids

    async def get(self) -> bytes | None:
        """The next push (an inner envelope N1) for the client, or None once the stream must end (a
        newer stream of the client took over, this one fell too far behind, or the bus closed).
        The push handed out by the previous call counts as written and is deleted from the bus first;
        safe to cancel (e.g. by a keep-alive timeout)."""
        if self._handed is not None:
            await self._bus._acknowledge(self._handed)
            self._bus._in_flight.discard(self._handed)
            self._handed = None
        item = await self._queue.get()
        if item is None:
            self._queue.put_nowait(None)  # for any later call too
            return None
        self._handed = item[0]
        return item[1]


class _Pool:
    """A few autocommit connections for one event loop (psycopg_pool is not among our dependencies,
    and a connection must not carry two tasks' transactions at once)."""

    def __init__(self, dsn: str, size: int, connect_timeout: float) -> None:
        self._dsn = dsn
        self._connect_timeout = connect_timeout
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self._slots = asyncio.Semaphore(size)
        self._closed = False

    async def connect(self) -> psycopg.AsyncConnection[Any]:
        try:
            conn = await psycopg.AsyncConnection.connect(
                self._dsn, autocommit=True, connect_timeout=max(1, int(self._connect_timeout))
            )
        except psycopg.Error as exc:
            raise BusUnavailable(f"cannot connect to the bus database: {exc}") from exc
        cursor = await conn.execute("SELECT current_setting('synchronous_commit')")
        row = await cursor.fetchone()
        if row is not None and row[0] == "off":
            # A push the caller answers 200 for must be as durable as a mailbox store.
            await conn.execute("SET synchronous_commit = on")
        return conn

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        if self._closed:
            raise BusClosed("the bus is closed")
        async with self._slots:
            conn = self._idle.pop() if self._idle else await self.connect()
            try:
                yield conn
            finally:
                reusable = (
                    not self._closed
                    and not conn.closed
                    and not conn.broken
                    and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
                )
                if reusable:
                    self._idle.append(conn)
                else:
                    with contextlib.suppress(Exception):
                        await conn.close()

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                await conn.close()


class PgPushBus:
    """One entry server's end of the push bus. Use from one event loop, in one of two styles:

        bus = PgPushBus(dsn, "entry-1")
        await bus.start()
        await bus.publish(client, blob)            # on any entry server; False: use the mailbox

        await bus.claim(client)                    # the client's stream is open here
        async for recipient, payload in bus.deliveries():
            ...write payload to recipient's stream...
        await bus.release(client)                  # the stream closed

        async with bus.subscribe(client) as stream:   # or: the node's PushBus interface
            while (blob := await stream.get()) is not None:
                ...write blob to the client's stream...

        await bus.close()

    `server_id` names the entry server (for operators and `holder_of`); several instances may share
    one, each with its own lease. `lease_seconds` bounds how long a dead holder's pushes wait before
    they are moved; `heartbeat_seconds` (default a quarter of the lease) is how often the lease is
    renewed and the sweep runs. `clock` gives the mailbox's `stored_at` for moved pushes."""

    def __init__(
        self,
        dsn: str,
        server_id: str,
        *,
        schema: str = DEFAULT_SCHEMA,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        heartbeat_seconds: float | None = None,
        pool_size: int = 4,
        connect_timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
        subscription_queue_size: int = 64,
    ) -> None:
        if not server_id or len(server_id) > 200:
            raise ValueError("server_id must be 1 to 200 characters")
        if lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be positive, got {lease_seconds}")
        heartbeat = lease_seconds / 4 if heartbeat_seconds is None else heartbeat_seconds
        if not 0 < heartbeat < lease_seconds:
            raise ValueError(f"heartbeat_seconds must be between 0 and the lease ({lease_seconds}), got {heartbeat}")
        if pool_size < 1 or subscription_queue_size < 1:
            raise ValueError("pool_size and subscription_queue_size must be at least 1")
        self.dsn = dsn
        self.server_id = server_id
        self.schema = check_schema_name(schema)
        self.lease_seconds = float(lease_seconds)
        self.heartbeat_seconds = float(heartbeat)
        self.instance = uuid.uuid4()
        self.channel = channel_for(self.instance)
        self.lease_losses = 0
        """How often this instance found its lease expired and re-registered (its claims were
        re-made; pushes swept meanwhile are in the mailbox, for the client's next fetch)."""
        self._pool_size = pool_size
        self._connect_timeout = connect_timeout
        self._clock = clock
        self._sql = _BusStatements(self.schema)
        self.subscription_queue_size = subscription_queue_size
        self._claims: set[bytes] = set()
        self._subscriptions: dict[bytes, PgSubscription] = {}
        self._in_flight: set[int] = set()  # push ids queued in subscriptions, deleted once handed out
        self._pump_task: asyncio.Task[None] | None = None
        self._pool: _Pool | None = None
        self._wake: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._consuming = False
        self._started = False
        self._closed = False

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> PgPushBus:
        """Create the tables if missing, register this instance's lease, start listening, the
        heartbeat and the sweep. Returns self."""
        if self._started:
            raise BusError("start() was called twice")
        self._started = True
        self._pool = _Pool(self.dsn, self._pool_size, self._connect_timeout)
        self._wake = asyncio.Event()
        try:
            await self._transaction(self._create_schema)
            await self._transaction(self._register)
            listening = asyncio.Event()
            self._tasks = [
                asyncio.create_task(self._listen(listening), name=f"pgbus-listen-{self.server_id}"),
                asyncio.create_task(self._heartbeat(), name=f"pgbus-heartbeat-{self.server_id}"),
            ]
            # Publishers may address us as soon as a claim exists: be listening before start() returns.
            try:
                await asyncio.wait_for(listening.wait(), timeout=self._connect_timeout + 5)
            except TimeoutError:
                raise BusUnavailable(f"the bus listener for {self.server_id} did not connect") from None
        except BaseException:
            await self._abandon()
            raise
        return self

    async def close(self, *, release: bool = True) -> None:
        """Stop. With `release` (the default) every recipient still claimed here is released, so its
        undelivered pushes go to another live holder or the mailbox at once, and the lease is
        dropped; without it, they wait for the lease to expire as after a crash."""
        if self._closed:
            return
        # The heartbeat (which may re-claim) and the pump stop first, so nothing claims behind our back.
        await self._stop_tasks()
        subscriptions, self._subscriptions = self._subscriptions, {}
        for subscription in subscriptions.values():
            self._end_subscription(subscription)
        if release and self._pool is not None:
            for address in sorted(self._claims):
                try:
                    await self.release(address)
                except BusError as exc:
                    log.warning("releasing %s on close failed: %s", to_checksum_address(address), exc)
            with contextlib.suppress(BusError):
                await self._transaction(lambda conn: self._execute(conn, self._sql.unregister, (self.instance,)))
        await self._abandon()

    async def _abandon(self) -> None:
        """Stop without telling the database anything, as a crash would (tests use it directly)."""
        self._closed = True
        await self._stop_tasks()
        if self._wake is not None:
            self._wake.set()
        if self._pool is not None:
            await self._pool.close()

    async def _stop_tasks(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        # gather, not "suppress(BaseException): await task": a cancellation of close() itself must
        # still reach its caller.
        await asyncio.gather(*tasks, return_exceptions=True)

    async def __aenter__(self) -> PgPushBus:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the interface the node uses ---------------------------------------------------------------

    async def claim(self, recipient: str | bytes) -> None:
        """This instance holds `recipient`'s stream from now on: pushes published for it come here,
        and undelivered ones addressed to another instance are re-addressed here. Claim before
        fetching the client's mailbox, so every message is in one place or the other."""
        await self._claim(to_canonical_address(recipient))

    async def _claim(self, address: bytes) -> int:
        """claim(); returns the claim's version (claims of one recipient are numbered in order)."""
        version = await self._claim_if(address, unless_taken=False)
        assert version is not None
        return version

    async def _claim_if(self, address: bytes, *, unless_taken: bool) -> int | None:
        """Claim `address`; with `unless_taken`, only if no other instance's claim is on record
        (then None, and nothing changes)."""
        self._check_open()
        # Known locally before the transaction: deliveries() must not take the rows it brings for
        # strays, and a release() racing with this claim must see it (see _give_up).
        self._claims.add(address)

        async def operation(conn: psycopg.AsyncConnection[Any]) -> tuple[int, int] | None:
            await self._lock(conn, address)
            if unless_taken:
                current = await (await self._execute(conn, self._sql.current_claim, (address,))).fetchone()
                if current is not None and current[0] != self.instance:
                    return None
            previous = await (await self._execute(conn, self._sql.live_holder, (address,))).fetchone()
            row = await (await self._execute(conn, self._sql.claim, (address, self.instance))).fetchone()
            assert row is not None
            version = int(row[0])
            moved = await self._execute(conn, self._sql.readdress, (self.instance, address, self.instance))
            if previous is not None and previous[0] != self.instance:
                # Tell the previous holder its stream of this client is superseded (it ends it).
                await self._execute(
                    conn, self._sql.notify, (channel_for(previous[0]), f"lost:{address.hex()}:{version}")
                )
            return version, len(await moved.fetchall())

        result = await self._transaction(operation)
        if result is None:
            self._claims.discard(address)
            return None
        version, moved = result
        if moved:
            self._poke()
        return version

    async def release(self, recipient: str | bytes) -> Reroute:
        """`recipient`'s stream here has closed: drop the claim (unless another instance has claimed
        it since) and move its undelivered pushes to the live holder, or into the mailbox."""
        address = to_canonical_address(recipient)
        self._check_open()
        self._claims.discard(address)
        return await self._give_up(address)

    async def publish(self, recipient: str | bytes, payload: bytes, *, message_id: bytes | None = None) -> bool:
        """Queue `payload` for the instance holding `recipient`'s stream and wake it. True once the
        push is durably queued for a live holder (it will be delivered, or end up in the mailbox if
        that holder dies or the stream closes first); False if no live instance holds the stream —
        then nothing was written and the caller stores the message in the mailbox. `message_id`
        defaults to keccak256(payload), the mailbox's id, so the same message is never stored twice."""
        if not payload:
            raise ValueError("an empty payload is not a message")
        mid = message_id_of(payload) if message_id is None else message_id
        if not 1 <= len(mid) <= MAX_MESSAGE_ID_SIZE:
            raise ValueError(f"message_id must be 1 to {MAX_MESSAGE_ID_SIZE} bytes, got {len(mid)}")
        address = to_canonical_address(recipient)
        self._check_open()

        async def operation(conn: psycopg.AsyncConnection[Any]) -> bool:
            await self._lock(conn, address)
            holder = await (await self._execute(conn, self._sql.live_holder, (address,))).fetchone()
            if holder is None:
                return False
            target: uuid.UUID = holder[0]
            inserted = await (
                await self._execute(conn, self._sql.insert_push, (address, mid, payload, target))
            ).fetchone()
            if inserted is None:
                # Already queued (a sender's retry): fine if it is the same message.
                existing = await (await self._execute(conn, self._sql.push_payload, (address, mid))).fetchone()
                if existing is not None and bytes(existing[0]) != payload:
                    raise MessageIdConflict(f"push {mid.hex()} is already queued with other bytes")
                return True
            # Delivered by PostgreSQL at COMMIT, and only if the transaction commits.
            await self._execute(conn, self._sql.notify, (channel_for(target), str(inserted[0])))
            return True

        return await self._transaction(operation)

    async def deliveries(self) -> AsyncIterator[tuple[ChecksumAddress, bytes]]:
        """The pushes addressed to this instance, as (recipient, payload), oldest first per recipient,
        for recipients claimed here. A push is deleted when the consumer asks for the next one; one
        abandoned mid-item (the loop broke, the process died) is delivered again. Runs until
        `close()`; a database outage makes it wait and retry, not end. One consumer at a time, and
        not together with `subscribe()` (which consumes them itself). Close it deterministically
        (`contextlib.aclosing`) if you break out and want to consume again."""
        async for push_id, address, payload in self._rows():
            yield to_checksum_address(address), payload
            await self._acknowledge(push_id)

    # -- the node's PushBus interface (offchain/si/node.py) ----------------------------------------

    @asynccontextmanager
    async def subscribe(self, client: str | bytes) -> AsyncIterator[PgSubscription]:
        """Hold `client`'s stream here for the duration of the context: claims it, ends an older
        subscription of the same client on this instance (and, through the database, on any other),
        releases it on exit. `get()` on the subscription gives the pushes, None once it must end.

        A push handed out by `get()` is deleted from the bus at the next `get()`; one still queued
        or handed out when the subscription ends is re-routed like any undelivered push (another
        holder, or the mailbox, where the node's mailbox-first delivery has it already anyway)."""
        address = to_canonical_address(client)
        self._check_open()
        older = self._subscriptions.pop(address, None)
        if older is not None:
            self._end_subscription(older)
        subscription = PgSubscription(self, address, self.subscription_queue_size)
        self._subscriptions[address] = subscription
        if self._pump_task is None:
            self._pump_task = asyncio.create_task(self._pump(), name=f"pgbus-pump-{self.server_id}")
            self._tasks.append(self._pump_task)
        try:
            subscription.version = await self._claim(address)
            yield subscription
        finally:
            self._end_subscription(subscription)
            if self._subscriptions.get(address) is subscription:
                del self._subscriptions[address]
                if not self._closed:
                    try:
                        await self.release(address)
                    except BusError as exc:
                        log.warning("releasing %s failed: %s", to_checksum_address(address), exc)

    async def is_online(self, client: str | bytes) -> bool:
        """Whether some live instance holds `client`'s stream."""
        return await self.holder_of(client) is not None

    def _end_subscription(self, subscription: PgSubscription) -> None:
        for push_id in subscription.end():
            self._in_flight.discard(push_id)

    async def _pump(self) -> None:
        """Hand the pushes addressed here to the subscriptions' queues (subscribe()'s consumer)."""
        while not self._closed:
            try:
                async for push_id, address, payload in self._rows():
                    subscription = self._subscriptions.get(address)
                    if subscription is not None and subscription.offer(push_id, payload):
                        self._in_flight.add(push_id)
                        continue
                    if subscription is not None:
                        # A full queue: the stream is stuck (a slow client). End it rather than buffer
                        # without bound, as the local bus does; the client reconnects and fetches.
                        del self._subscriptions[address]
                        self._end_subscription(subscription)
                    # No stream here takes it: hand the recipient's pushes on, to a holder or the mailbox.
                    self._claims.discard(address)
                    try:
                        await self._give_up(address)
                    except BusError as exc:
                        log.warning("re-addressing pushes for %s failed: %s", to_checksum_address(address), exc)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not self._closed:
                    log.warning("the push pump of %s failed, restarting: %s", self.server_id, exc)
                    await asyncio.sleep(self.heartbeat_seconds)

    def _on_lost(self, address: bytes, version: int) -> None:
        """Another instance claimed `address` with claim `version`: end our subscription if its claim
        is older. One whose claim is still being made (version None) is newer by construction (claims
        of one recipient are numbered under its lock), so it stays."""
        subscription = self._subscriptions.get(address)
        if subscription is None or subscription.version is None or subscription.version >= version:
            return
        del self._subscriptions[address]
        self._end_subscription(subscription)
        # The database already says the other instance holds it, and our rows were re-addressed.
        self._claims.discard(address)

    # -- the rows addressed here -------------------------------------------------------------------

    async def _rows(self) -> AsyncIterator[tuple[int, bytes, bytes]]:
        """(push id, recipient, payload) of the rows addressed here for claimed recipients, not in
        flight; strays (recipients not claimed here) are handed on. Deletes nothing."""
        self._check_open()
        if self._consuming:
            raise BusError("the pushes of this bus are already being consumed (deliveries() or subscribe())")
        self._consuming = True
        wake = self._wake
        assert wake is not None
        try:
            while not self._closed:
                wake.clear()
                try:
                    rows = await self._transaction(self._fetch_mine, retry_after_begin=True)
                except BusError as exc:
                    if self._closed:
                        break
                    log.warning("fetching pushes for %s failed, retrying: %s", self.server_id, exc)
                    rows = []
                strays: set[bytes] = set()
                for push_id, address, payload in rows:
                    if address not in self._claims:
                        # Released here meanwhile (or a release failed half-way): hand it on, not out.
                        strays.add(address)
                        continue
                    yield push_id, address, payload
                for address in sorted(strays):
                    try:
                        await self._give_up(address)
                    except BusError as exc:
                        log.warning("re-addressing pushes for %s failed: %s", to_checksum_address(address), exc)
                if not rows and not self._closed:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), timeout=self.heartbeat_seconds)
        finally:
            self._consuming = False

    # -- inspection -------------------------------------------------------------------------------

    @property
    def claims(self) -> frozenset[ChecksumAddress]:
        """The recipients this instance holds."""
        return frozenset(to_checksum_address(a) for a in self._claims)

    async def holder_of(self, recipient: str | bytes) -> str | None:
        """The `server_id` of the live instance holding `recipient`'s stream, if any."""
        address = to_canonical_address(recipient)

        async def operation(conn: psycopg.AsyncConnection[Any]) -> str | None:
            row = await (await self._execute(conn, self._sql.live_holder, (address,))).fetchone()
            return None if row is None else str(row[1])

        return await self._transaction(operation, retry_after_begin=True)

    async def pending(self) -> int:
        """Pushes queued on the bus for all instances (delivered ones are deleted)."""

        async def operation(conn: psycopg.AsyncConnection[Any]) -> int:
            row = await (await self._execute(conn, self._sql.count_pushes, ())).fetchone()
            return 0 if row is None else int(row[0])

        return await self._transaction(operation, retry_after_begin=True)

    async def sweep(self) -> list[Reroute]:
        """Re-address or rescue pushes whose holder is gone (lease expired, claim released or taken
        over), and drop dead instances' claims. Runs every heartbeat on every instance; callable."""

        async def candidates(conn: psycopg.AsyncConnection[Any]) -> list[bytes]:
            await self._execute(conn, self._sql.forget_dead_servers, (max(60.0, 10 * self.lease_seconds),))
            rows = await (await self._execute(conn, self._sql.sweep_candidates, ())).fetchall()
            return sorted(bytes(r[0]) for r in rows)

        done = []
        for address in await self._transaction(candidates):
            # One transaction per recipient: a lock is held briefly, and one failure does not undo the rest.
            async def operation(conn: psycopg.AsyncConnection[Any], address: bytes = address) -> Reroute:
                await self._lock(conn, address)
                await self._execute(conn, self._sql.drop_dead_claim, (address,))
                return await self._reroute_locked(conn, address)

            result = await self._transaction(operation)
            if result.to_holder or result.to_mailbox:
                done.append(result)
        return done

    # -- internals --------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if not self._started:
            raise BusClosed("the bus is not started: await bus.start() first")
        if self._closed:
            raise BusClosed("the bus is closed")

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _execute(
        self, conn: psycopg.AsyncConnection[Any], query: sql.Composed, params: tuple[Any, ...]
    ) -> psycopg.AsyncCursor[Any]:
        return await conn.execute(query, params)

    async def _lock(self, conn: psycopg.AsyncConnection[Any], address: bytes) -> None:
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key(self.schema, address),))

    async def _transaction(
        self,
        operation: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]],
        *,
        retry_after_begin: bool = False,
    ) -> T:
        """Run `operation` in one transaction on a pooled connection. Retried when nothing can have
        been applied (the connection was dead before BEGIN, or the server rolled the transaction
        back itself), or always when `retry_after_begin` (read-only operations)."""
        if self._pool is None:
            raise BusClosed("the bus is not started: await bus.start() first")
        attempts = 3
        for attempt in range(1, attempts + 1):
            began = False
            try:
                async with self._pool.connection() as conn, conn.transaction():
                    began = True
                    return await operation(conn)
            except psycopg.errors.TransactionRollback as exc:
                if attempt == attempts:
                    raise BusUnavailable(f"the bus transaction was rolled back {attempts} times: {exc}") from exc
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                if (began and not retry_after_begin) or attempt == attempts:
                    raise BusUnavailable(f"the bus database failed during the operation: {exc}") from exc
            await asyncio.sleep(0.05 * attempt)
        raise AssertionError("unreachable")

    async def _create_schema(self, conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (DDL_LOCK_KEY,))
        # The mailbox's tables too: pushes are moved into them when their holder is gone.
        for statement in schema_statements(MAILBOX_DDL, self.schema) + schema_statements(_BUS_DDL, self.schema):
            await conn.execute(statement)

    async def _register(self, conn: psycopg.AsyncConnection[Any]) -> None:
        await self._execute(conn, self._sql.register, (self.instance, self.server_id, self.lease_seconds))

    async def _fetch_mine(self, conn: psycopg.AsyncConnection[Any]) -> list[tuple[int, bytes, bytes]]:
        cursor = await self._execute(conn, self._sql.mine, (self.instance, list(self._in_flight), _FETCH_BATCH))
        return [(int(i), bytes(r), bytes(p)) for i, r, p in await cursor.fetchall()]

    async def _give_up(self, address: bytes) -> Reroute:
        """Drop our claim on `address` and re-address its pushes, unless it is claimed here (again):
        checked with the recipient's lock held, so a claim() running at the same time either sees
        this transaction committed (and claims afresh) or is seen by it (and nothing is dropped)."""

        async def operation(conn: psycopg.AsyncConnection[Any]) -> Reroute:
            await self._lock(conn, address)
            if address in self._claims:
                return Reroute(to_checksum_address(address), 0, 0, 0)
            await self._execute(conn, self._sql.unclaim, (address, self.instance))
            return await self._reroute_locked(conn, address)

        return await self._transaction(operation)

    async def _acknowledge(self, push_id: int) -> None:
        # Only while still addressed here: if the client moved meanwhile, this copy went to a stream
        # that may be dead, so the new holder must deliver it again.
        try:
            await self._transaction(
                lambda conn: self._execute(conn, self._sql.delete_push, (push_id, self.instance)),
                retry_after_begin=True,
            )
        except BusError as exc:
            # The row stays and is delivered again later: at least once, never lost.
            log.warning("acknowledging push %d failed (it will be delivered again): %s", push_id, exc)

    async def _reroute_locked(self, conn: psycopg.AsyncConnection[Any], address: bytes) -> Reroute:
        """With `address`'s advisory lock held: send its pushes not addressed to its live holder there,
        or into the mailbox when it has none."""
        holder = await (await self._execute(conn, self._sql.live_holder, (address,))).fetchone()
        checksum = to_checksum_address(address)
        if holder is not None:
            target: uuid.UUID = holder[0]
            moved = await (await self._execute(conn, self._sql.readdress, (target, address, target))).fetchall()
            if moved:
                await self._execute(conn, self._sql.notify, (channel_for(target), str(moved[0][0])))
                if target == self.instance:
                    self._poke()
            return Reroute(checksum, len(moved), 0, 0)
        # No live holder: into the mailbox. Its lock order is box row first, which we take now.
        await self._execute(conn, self._sql.ensure_box, (address,))
        await self._execute(conn, self._sql.lock_box, (address,))
        now = int(self._clock())
        row = await (await self._execute(conn, self._sql.rescue, (address, address, now, address))).fetchone()
        moved_count, stored = (0, 0) if row is None else (int(row[0]), int(row[1]))
        return Reroute(checksum, 0, moved_count, moved_count - stored)

    async def _listen(self, listening: asyncio.Event) -> None:
        """Keep a connection LISTENing on our channel; every notification (and every reconnection,
        which may have missed some) wakes deliveries(), which then reads the table."""
        assert self._pool is not None and self._wake is not None
        backoff = 0.1
        while not self._closed:
            conn: psycopg.AsyncConnection[Any] | None = None
            try:
                conn = await self._pool.connect()
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                listening.set()
                self._wake.set()
                backoff = 0.1
                while not self._closed:
                    async for note in conn.notifies(timeout=self.heartbeat_seconds):
                        if note.payload.startswith("lost:"):
                            _, hex_address, version = note.payload.split(":")
                            self._on_lost(bytes.fromhex(hex_address), int(version))
                        self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not self._closed:
                    log.warning("bus listener for %s lost its connection, reconnecting: %s", self.server_id, exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self.heartbeat_seconds)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()

    async def _heartbeat(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.heartbeat_seconds)
            try:
                renewed = await self._transaction(lambda conn: self._renew(conn), retry_after_begin=True)
                if not renewed:
                    await self._recover_lease()
                await self.sweep()
            except Exception as exc:
                # Whatever it was, the heartbeat must go on: without it the lease runs out and this
                # entry server silently stops receiving pushes.
                if not self._closed:
                    log.warning("bus heartbeat for %s failed: %s", self.server_id, exc)
            # A poll as well, in case a notification was lost with a listener connection.
            self._poke()

    async def _renew(self, conn: psycopg.AsyncConnection[Any]) -> bool:
        cursor = await self._execute(conn, self._sql.renew, (self.lease_seconds, self.instance))
        return await cursor.fetchone() is not None

    async def _recover_lease(self) -> None:
        """Our lease ran out (the database or this process stalled longer than the lease); other
        instances may have dropped our claims and moved our pushes. Register again and re-claim."""
        self.lease_losses += 1
        log.warning("bus instance %s (%s) lost its lease; re-registering", self.instance, self.server_id)
        await self._transaction(self._register)
        for address in sorted(self._claims):
            # Not over a claim another instance made meanwhile: the client has moved there.
            version = await self._claim_if(address, unless_taken=True)
            subscription = self._subscriptions.get(address)
            if subscription is None:
                continue
            if version is None:
                del self._subscriptions[address]
                self._end_subscription(subscription)
            else:
                subscription.version = version


class _BusStatements:
    """The bus's SQL, composed once for a schema."""

    def __init__(self, schema: str) -> None:
        def q(text: str) -> sql.Composed:
            return sql.SQL(text).format(s=sql.Identifier(schema))

        live = "s.lease_expires > clock_timestamp()"
        self.register = q(
            """INSERT INTO {s}.bus_servers (instance, server_id, lease_expires)
               VALUES (%s, %s, clock_timestamp() + make_interval(secs => %s))
               ON CONFLICT (instance) DO UPDATE SET lease_expires = EXCLUDED.lease_expires"""
        )
        # Only a lease still running is renewed: one that ran out may have been swept already, so its
        # owner must notice (and re-claim) rather than silently come back to life.
        self.renew = q(
            """UPDATE {s}.bus_servers SET lease_expires = clock_timestamp() + make_interval(secs => %s)
               WHERE instance = %s AND lease_expires > clock_timestamp() RETURNING 1"""
        )
        self.unregister = q("DELETE FROM {s}.bus_servers WHERE instance = %s")
        self.forget_dead_servers = q(
            "DELETE FROM {s}.bus_servers WHERE lease_expires < clock_timestamp() - make_interval(secs => %s)"
        )
        # The version comes from a sequence, under the recipient's lock: claims of one recipient are
        # numbered in the order they took effect ("latest claim wins" can then be checked locally).
        self.claim = q(
            """INSERT INTO {s}.bus_claims (recipient, instance, version)
               VALUES (%s, %s, nextval('{s}.bus_claim_versions'))
               ON CONFLICT (recipient) DO UPDATE SET instance = EXCLUDED.instance, version = EXCLUDED.version,
                   claimed_at = clock_timestamp()
               RETURNING version"""
        )
        self.current_claim = q("SELECT instance FROM {s}.bus_claims WHERE recipient = %s")
        self.unclaim = q("DELETE FROM {s}.bus_claims WHERE recipient = %s AND instance = %s")
        self.drop_dead_claim = q(
            f"""DELETE FROM {{s}}.bus_claims c WHERE c.recipient = %s AND NOT EXISTS (
                   SELECT 1 FROM {{s}}.bus_servers s WHERE s.instance = c.instance AND {live})"""
        )
        self.live_holder = q(
            f"""SELECT c.instance, s.server_id FROM {{s}}.bus_claims c
               JOIN {{s}}.bus_servers s ON s.instance = c.instance
               WHERE c.recipient = %s AND {live}"""
        )
        self.readdress = q("UPDATE {s}.bus_pushes SET target = %s WHERE recipient = %s AND target <> %s RETURNING id")
        self.insert_push = q(
            """INSERT INTO {s}.bus_pushes (recipient, message_id, payload, target) VALUES (%s, %s, %s, %s)
               ON CONFLICT (recipient, message_id) DO NOTHING RETURNING id"""
        )
        self.push_payload = q("SELECT payload FROM {s}.bus_pushes WHERE recipient = %s AND message_id = %s")
        self.notify = q("SELECT pg_notify(%s, %s)")
        self.mine = q(
            """SELECT id, recipient, payload FROM {s}.bus_pushes
               WHERE target = %s AND id <> ALL(%s::bigint[]) ORDER BY id LIMIT %s"""
        )
        self.delete_push = q("DELETE FROM {s}.bus_pushes WHERE id = %s AND target = %s")
        self.count_pushes = q("SELECT count(*) FROM {s}.bus_pushes")
        # Recipients with a push not addressed to its live holder, or with a dead instance's claim;
        # a bounded batch, so that one sweep cannot delay the next lease renewal for long.
        self.sweep_candidates = q(
            f"""SELECT recipient FROM (
                   SELECT p.recipient FROM {{s}}.bus_pushes p WHERE NOT EXISTS (
                       SELECT 1 FROM {{s}}.bus_claims c JOIN {{s}}.bus_servers s ON s.instance = c.instance
                       WHERE c.recipient = p.recipient AND c.instance = p.target AND {live})
                   UNION
                   SELECT c.recipient FROM {{s}}.bus_claims c WHERE NOT EXISTS (
                       SELECT 1 FROM {{s}}.bus_servers s WHERE s.instance = c.instance AND {live})
               ) candidates LIMIT {_SWEEP_BATCH}"""
        )
        self.ensure_box = q("INSERT INTO {s}.mailbox_boxes (recipient) VALUES (%s) ON CONFLICT DO NOTHING")
        self.lock_box = q("SELECT 1 FROM {s}.mailbox_boxes WHERE recipient = %s FOR UPDATE")
        # One statement: delete the recipient's pushes, insert those the mailbox lacks (in publish
        # order), add them to the box's counters. Returns (pushes moved, messages newly stored).
        self.rescue = q(
            """WITH moved AS (
                   DELETE FROM {s}.bus_pushes WHERE recipient = %s RETURNING id, message_id, payload
               ), stored AS (
                   INSERT INTO {s}.mailbox_messages (recipient, message_id, blob, size, stored_at)
                   SELECT %s, message_id, payload, length(payload), %s FROM moved ORDER BY id
                   ON CONFLICT (recipient, message_id) DO NOTHING
                   RETURNING size, stored_at
               ), totals AS (
                   SELECT count(*) AS n, coalesce(sum(size), 0) AS bytes,
                          coalesce(sum(size::numeric * stored_at), 0) AS size_time FROM stored
               )
               UPDATE {s}.mailbox_boxes b SET message_count = b.message_count + totals.n,
                      total_bytes = b.total_bytes + totals.bytes, size_time_sum = b.size_time_sum + totals.size_time
               FROM totals WHERE b.recipient = %s
               RETURNING (SELECT count(*) FROM moved), totals.n"""
        )
