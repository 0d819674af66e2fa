"""The recipient node's own state in PostgreSQL, shared by every entry server of one node wallet.

DESIGN §7: a professional recipient provider runs several entry servers for one node wallet. The
mailbox (pgmailbox.py) and the push bus (pgbus.py) are already shared; this is the third piece, what
`node.NodeState` keeps in a node's SQLite `node.db`: registrations, billing, accepted vouchers,
relay credit — plus the replay cache of signed requests, which one node process keeps in memory.

Why shared and not per entry server: a client registers through whichever entry server the relay
reaches first and may listen, fetch, acknowledge and pay through another after a failover. Every
entry server must know the registration (or the client is "unknown"), bill from the same counters
(or a client is billed twice, or not at all), judge a voucher against the latest accepted one (or a
stale voucher passes on a server that did not see the newer), and credit a relay's receipt once
(or a relay is paid twice). And a captured signed request must be refused wherever it is replayed.

`PgNodeState` has `NodeState`'s methods and semantics (`node.NodeStateStore`), so
`create_node_app(key, config, PgMailbox(...), PgNodeState(...), bus=PgPushBus(...),
replays=PgReplayGuard(...))` is a node whose entry servers agree. The differences that sharing needs:

* **Nothing is cached in memory.** `NodeState` keeps a `billing.Ledger` per note chain and trusts it;
  here every operation reads the rows it needs inside its transaction, so what another entry server
  committed a moment ago counts.
* **One client's changes are serialized** by a per-client advisory lock (`pg_advisory_xact_lock`,
  64 bits of blake2b(schema, "state", address)), taken first in every transaction that reads and then
  writes the client's rows (register, bill, pay, settle). Each transaction takes at most one such
  lock, so they cannot deadlock one another; the key differs from the bus's per-recipient lock.
* **Relay receipts** are credited at most once per envelope tag by the table's primary key
  (`INSERT … ON CONFLICT DO NOTHING`), in the same transaction as the usage.
* **Replays**: `PgReplayGuard` inserts (client, request id) into a table with that primary key; a
  second insert, on any entry server, is a replay. Rows older than twice the clock skew are pruned.

Durability as for the mailbox: `synchronous_commit` at least `on`, so an accepted voucher or
registration survives a crash of the database server once the method has returned.

Tables (in the provider's schema, next to `mailbox_*` and `bus_*`): `node_meta`, `node_clients`,
`node_vouchers`, `node_relay_usage`, `node_relay_receipts`, `node_relay_settled`, `node_requests`.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any, TypeVar

import psycopg
from eth_utils.address import to_checksum_address
from psycopg import sql

from offchain.si.billing import Ledger, Meter, Voucher, VoucherDomain, VoucherError
from offchain.si.node import (
    Account,
    ClientOwed,
    Deduction,
    NodeConfig,
    RegistrationConflict,
    RelayOwed,
    ReplayedRegistration,
    ReplayedRequest,
    UnknownClient,
    owed_by_clients_from,
    owed_to_relays_from,
)
from offchain.si.pgmailbox import DDL_LOCK_KEY, DEFAULT_SCHEMA, check_schema_name, schema_statements
from offchain.si.registration import Authorization, NodeRequest, PayPayload
from offchain.si.stream import Bill

__all__ = [
    "STATE_DDL",
    "NodeStateError",
    "PgNodeState",
    "PgReplayGuard",
    "StateUnavailable",
    "WrongNodeSchema",
]

_T = TypeVar("_T")

STATE_DDL = """
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {s}.node_meta (
    key    text PRIMARY KEY,
    value  text NOT NULL
);
CREATE TABLE IF NOT EXISTS {s}.node_clients (
    address             bytea   PRIMARY KEY CHECK (length(address) = 20),
    registered_ms       bigint  NOT NULL,
    note_chain          bytea   NOT NULL,
    auth_limit          numeric NOT NULL,
    auth_nonce          numeric NOT NULL,
    auth_expiry         bigint  NOT NULL,
    auth_signature      bytea   NOT NULL,
    billed_total        numeric NOT NULL DEFAULT 0,
    settled_under_auth  numeric NOT NULL DEFAULT 0,
    carried_unbilled    bigint  NOT NULL DEFAULT 0,
    storage_billed      numeric NOT NULL,
    last_bill_at        bigint  NOT NULL
);
CREATE TABLE IF NOT EXISTS {s}.node_vouchers (
    payer       bytea   NOT NULL,
    note_chain  bytea   NOT NULL,
    cumulative  numeric NOT NULL,
    nonce       numeric NOT NULL,
    expiry      bigint  NOT NULL,
    signature   bytea   NOT NULL,
    settled     numeric NOT NULL DEFAULT 0,
    PRIMARY KEY (payer, note_chain)
);
CREATE TABLE IF NOT EXISTS {s}.node_relay_usage (
    relay   bytea   NOT NULL,
    per_mb  numeric NOT NULL,
    bytes   bigint  NOT NULL,
    PRIMARY KEY (relay, per_mb)
);
CREATE TABLE IF NOT EXISTS {s}.node_relay_receipts (
    tag    bytea  PRIMARY KEY,
    relay  bytea  NOT NULL,
    bytes  bigint NOT NULL,
    at     bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS node_relay_receipts_by_age ON {s}.node_relay_receipts (at);
CREATE TABLE IF NOT EXISTS {s}.node_relay_settled (
    relay    bytea   PRIMARY KEY,
    settled  numeric NOT NULL
);
CREATE TABLE IF NOT EXISTS {s}.node_requests (
    client      bytea  NOT NULL,
    request_id  bytea  NOT NULL,
    at_ms       bigint NOT NULL,
    PRIMARY KEY (client, request_id)
);
CREATE INDEX IF NOT EXISTS node_requests_by_age ON {s}.node_requests (at_ms);
"""


class NodeStateError(Exception):
    """The shared node state could not be used."""


class StateUnavailable(NodeStateError):
    """PostgreSQL could not be reached, or failed during the operation (nothing half-written: a
    transaction either committed or not; an operation that fails after BEGIN may have committed)."""


class WrongNodeSchema(NodeStateError):
    """The schema holds another node wallet's state: one schema per node wallet."""


def _lock_key(schema: str, address: bytes) -> int:
    digest = hashlib.blake2b(schema.encode() + b"\x00state\x00" + address, digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _int(value: Any) -> int:
    return int(value) if not isinstance(value, Decimal) else int(value.to_integral_exact())


class _Database:
    """One connection per thread and process, autocommit with explicit transactions (as PgMailbox)."""

    def __init__(self, dsn: str, connect_timeout: float) -> None:
        self.dsn = dsn
        self._connect_timeout = connect_timeout
        self._local = threading.local()

    def connection(self) -> psycopg.Connection[Any]:
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed or getattr(self._local, "pid", None) != os.getpid():
            try:
                conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=max(1, int(self._connect_timeout)))
            except psycopg.Error as exc:
                raise StateUnavailable(f"cannot connect to the node state database: {exc}") from exc
            setting = conn.execute("SELECT current_setting('synchronous_commit')").fetchone()
            if setting is not None and setting[0] == "off":  # raise, never lower
                conn.execute("SET synchronous_commit = on")
            self._local.conn = conn
            self._local.pid = os.getpid()
        return conn

    def forget(self) -> None:
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            conn.close()
        self._local.conn = None

    def run(self, operation: Callable[[psycopg.Connection[Any]], _T], *, transaction: bool = True) -> _T:
        """Run `operation`, in one transaction when asked; retried only when nothing can have been
        applied (a dead connection before BEGIN, a transaction the server rolled back itself)."""
        attempts = 3
        for attempt in range(1, attempts + 1):
            conn = self.connection()
            began = False
            try:
                if not transaction:
                    began = True
                    return operation(conn)
                with conn.transaction():
                    began = True
                    return operation(conn)
            except psycopg.errors.TransactionRollback as exc:
                if attempt == attempts:
                    raise StateUnavailable(f"the transaction was rolled back {attempts} times: {exc}") from exc
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                if conn.broken or conn.closed:
                    self.forget()
                if (began and transaction) or attempt == attempts:
                    raise StateUnavailable(f"the node state database failed during the operation: {exc}") from exc
        raise AssertionError("unreachable")


def create_state_schema(conn: psycopg.Connection[Any], schema: str = DEFAULT_SCHEMA) -> None:
    """Create the node-state tables in `schema` if missing (safe to race with other entry servers)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (DDL_LOCK_KEY,))
        for statement in schema_statements(STATE_DDL, schema):
            conn.execute(statement)


class PgNodeState:
    """`node.NodeState` in PostgreSQL, for several entry servers of one node wallet (module docstring).

    Every entry server of the wallet uses the same `schema` and the same `NodeConfig` terms (chain,
    CoNETCash, prices, relay price): bills and vouchers are computed from the shared rows with the
    local config. Methods are synchronous (the node calls them through `run`, on a small thread pool:
    correctness comes from the database's locks, not from a single writer thread)."""

    def __init__(
        self,
        dsn: str,
        *,
        node: bytes,
        config: NodeConfig,
        schema: str = DEFAULT_SCHEMA,
        connect_timeout: float = 10.0,
        threads: int = 4,
    ) -> None:
        self.node = node
        self.config = config
        self.schema = check_schema_name(schema)
        self._db = _Database(dsn, connect_timeout)
        self._q = _Statements(self.schema)
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="si-pg-state")
        self._db.run(lambda conn: create_state_schema(conn, self.schema), transaction=False)
        self._db.run(self._claim_schema)

    def _claim_schema(self, conn: psycopg.Connection[Any]) -> None:
        mine = to_checksum_address(self.node)
        conn.execute(self._q.meta_insert, ("node", mine))
        row = conn.execute(self._q.meta_get, ("node",)).fetchone()
        if row is None or row[0] != mine:
            raise WrongNodeSchema(
                f"schema {self.schema} holds the state of node {row[0] if row else '?'}, not {mine}: "
                "one schema per node wallet"
            )

    async def run(self, function: Callable[..., _T], *args: Any) -> _T:
        """Call a method on the state's threads (it blocks on the network: keep it off the event loop)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, lambda: function(*args))

    def close(self) -> None:
        self._executor.shutdown()
        self._db.forget()

    def _lock(self, conn: psycopg.Connection[Any], client: bytes) -> None:
        conn.execute(self._q.lock, (_lock_key(self.schema, client),))

    def domain(self, note_chain: bytes) -> VoucherDomain:
        return VoucherDomain(self.config.chain_id, to_checksum_address(self.config.cash), note_chain)

    def _ledger(self, conn: psycopg.Connection[Any], payer: bytes, note_chain: bytes) -> Ledger:
        """A ledger holding this payer's latest accepted voucher on the note chain, read now."""
        ledger = Ledger(to_checksum_address(self.node), self.domain(note_chain))
        row = conn.execute(self._q.voucher, (payer, note_chain)).fetchone()
        if row is not None:
            cumulative, nonce, expiry, signature, settled = row
            voucher = Voucher(
                ledger.domain,
                to_checksum_address(payer),
                ledger.payee,
                _int(cumulative),
                _int(nonce),
                int(expiry),
                bytes(signature),
            )
            ledger.latest[voucher.payer] = voucher
            ledger.settled[voucher.payer] = _int(settled)
        return ledger

    # -- registrations ----------------------------------------------------------------------------

    def _account(self, conn: psycopg.Connection[Any], client: bytes) -> Account | None:
        row = conn.execute(self._q.account, (client,)).fetchone()
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
            int(expiry),
            bytes(signature),
        )
        return Account(
            client,
            int(registered_ms),
            authorization,
            _int(billed),
            _int(settled),
            int(carried),
            _int(storage),
            int(last),
        )

    def account(self, client: bytes) -> Account | None:
        return self._db.run(lambda conn: self._account(conn, client), transaction=False)

    def register(
        self, request: NodeRequest, authorization: Authorization, *, storage_reading: int, now: int
    ) -> Account:
        """Record a verified registration, refusing replays and older authorizations (as NodeState)."""
        client = request.client

        def operation(conn: psycopg.Connection[Any]) -> Account:
            self._lock(conn, client)
            current = self._account(conn, client)
            if current is None:
                conn.execute(
                    self._q.insert_client,
                    (
                        client,
                        request.timestamp_ms,
                        authorization.note_chain,
                        authorization.limit,
                        authorization.nonce,
                        authorization.expiry,
                        authorization.signature,
                        storage_reading,
                        now,
                    ),
                )
            else:
                self._check_reregistration(conn, current, request, authorization)
                same_auth = (authorization.note_chain, authorization.nonce) == (
                    current.authorization.note_chain,
                    current.authorization.nonce,
                )
                new_chain = authorization.note_chain != current.authorization.note_chain
                conn.execute(
                    self._q.update_registration,
                    (
                        request.timestamp_ms,
                        authorization.note_chain,
                        authorization.limit,
                        authorization.nonce,
                        authorization.expiry,
                        authorization.signature,
                        0 if new_chain else current.billed_total,
                        current.settled_under_auth if same_auth else 0,
                        client,
                    ),
                )
            account = self._account(conn, client)
            assert account is not None
            return account

        return self._db.run(operation)

    def _check_reregistration(
        self, conn: psycopg.Connection[Any], current: Account, request: NodeRequest, authorization: Authorization
    ) -> None:
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
            ledger = self._ledger(conn, current.address, old.note_chain)
            unsettled = current.billed_total - ledger.settled.get(to_checksum_address(current.address), 0)
            if unsettled:
                raise RegistrationConflict(
                    f"{unsettled} units billed on the registered note chain are not settled yet; "
                    "register another note chain after settlement"
                )

    # -- billing ----------------------------------------------------------------------------------

    def add_carried(self, client: bytes, size: int) -> None:
        if size:
            # One statement: atomic without the client's lock, and it commutes with a concurrent bill
            # (which subtracts what it billed rather than resetting the counter).
            self._db.run(lambda conn: conn.execute(self._q.add_carried, (size, client)))

    def bill(self, client: bytes, *, storage_reading: int, now: int, force: bool) -> Bill | None:
        """Bill what is unbilled when the threshold is reached (or `force` and there is something)."""

        def operation(conn: psycopg.Connection[Any]) -> Bill | None:
            self._lock(conn, client)
            account = self._account(conn, client)
            if account is None:
                return None
            stored = max(0, storage_reading - account.storage_billed)
            carried = account.carried_unbilled
            if carried < self.config.bill_threshold_bytes and not (force and (carried or stored)):
                return None
            charge = Meter(self.config.prices).charge(bytes_carried=carried, byte_seconds_stored=stored)
            billed = account.billed_total + charge
            conn.execute(
                self._q.record_bill, (billed, carried, max(storage_reading, account.storage_billed), now, client)
            )
            if charge == 0:
                return None
            prices = self.config.prices
            return Bill(billed, charge, carried, stored, prices.per_mb_outbound, prices.per_mb_hour_storage, now)

        return self._db.run(operation)

    def paid(self, account: Account) -> tuple[int, int]:
        """(vouched, settled) on the account's note chain."""
        row = self._db.run(
            lambda conn: conn.execute(
                self._q.voucher_totals, (account.address, account.authorization.note_chain)
            ).fetchone(),
            transaction=False,
        )
        return (0, 0) if row is None else (_int(row[0]), _int(row[1]))

    def vouched(self, account: Account) -> int:
        return self.paid(account)[0]

    def outstanding(self, account: Account) -> Bill:
        prices = self.config.prices
        return Bill(account.billed_total, 0, 0, 0, prices.per_mb_outbound, prices.per_mb_hour_storage, 0)

    def pay(self, client: bytes, payment: PayPayload, *, now: int) -> tuple[int, int]:
        """Accept a voucher; return (accepted cumulative, billed total). Judged against the latest
        voucher any entry server accepted (read under the client's lock)."""

        def operation(conn: psycopg.Connection[Any]) -> tuple[int, int]:
            self._lock(conn, client)
            account = self._account(conn, client)
            if account is None:
                raise UnknownClient("the client is not registered here")
            note_chain = account.authorization.note_chain
            ledger = self._ledger(conn, client, note_chain)
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
                raise VoucherError(
                    f"the voucher is for {voucher.cumulative_amount}, only {account.billed_total} is billed"
                )
            if ledger.accept(voucher, now=now):
                conn.execute(
                    self._q.upsert_voucher,
                    (
                        client,
                        note_chain,
                        voucher.cumulative_amount,
                        voucher.nonce,
                        voucher.expiry,
                        voucher.signature,
                    ),
                )
            return ledger.accepted_total(voucher.payer), account.billed_total

        return self._db.run(operation)

    def settle_batch(self, *, now: int) -> list[Deduction]:
        """The deductions of one settlement batch, marked settled (one transaction per payer, under its
        lock, so two entry servers settling at once never deduct the same units twice)."""
        candidates = self._db.run(lambda conn: conn.execute(self._q.unsettled).fetchall(), transaction=False)
        deductions: list[Deduction] = []
        for payer_raw, chain_raw in candidates:
            payer, note_chain = bytes(payer_raw), bytes(chain_raw)

            def operation(conn: psycopg.Connection[Any], payer: bytes = payer, note_chain: bytes = note_chain) -> None:
                self._lock(conn, payer)
                ledger = self._ledger(conn, payer, note_chain)
                for item in ledger.settle_batch(now=now):
                    account = self._account(conn, payer)
                    nonce = account.authorization.nonce if account is not None else 0
                    conn.execute(self._q.mark_settled, (item.settled_total, payer, note_chain))
                    if account is not None and account.authorization.note_chain == note_chain:
                        conn.execute(self._q.settled_under_auth, (account.settled_under_auth + item.amount, payer))
                    deductions.append(
                        Deduction(note_chain, item.payer, nonce, item.amount, item.settled_total, item.voucher)
                    )

            self._db.run(operation)
        return deductions

    def settlement_due(self, *, now: int) -> list[Deduction]:
        """The deductions a settlement batch would carry now, marking nothing (as `NodeState`'s, for
        `settlement.Settler`): per payer, what is vouched and unsettled on the note chain of its current
        authorization, under a voucher still valid at `now`."""

        def operation(conn: psycopg.Connection[Any]) -> list[Deduction]:
            due: list[Deduction] = []
            for payer_raw, chain_raw in conn.execute(self._q.unsettled).fetchall():
                payer, note_chain = bytes(payer_raw), bytes(chain_raw)
                ledger = self._ledger(conn, payer, note_chain)
                account = self._account(conn, payer)
                if account is None or account.authorization.note_chain != note_chain:
                    continue
                for holder, amount in sorted(ledger.owed().items()):
                    voucher = ledger.latest[holder]
                    if voucher.expiry > now:
                        nonce = account.authorization.nonce
                        due.append(Deduction(note_chain, holder, nonce, amount, voucher.cumulative_amount, voucher))
            return due

        return self._db.run(operation, transaction=False)

    def record_settlement(self, note_chain: bytes, holder: bytes, authorization_nonce: int, settled_total: int) -> int:
        """Record that `holder` has settled everything up to `settled_total` on `note_chain`; returns the
        units this adds. Idempotent (the same or a lower total adds nothing), under the holder's lock,
        so two entry servers recording the same deduction count it once."""

        def operation(conn: psycopg.Connection[Any]) -> int:
            self._lock(conn, holder)
            ledger = self._ledger(conn, holder, note_chain)
            payer = to_checksum_address(holder)
            if settled_total > ledger.accepted_total(payer):
                raise ValueError(
                    f"settling {settled_total} for {payer}: only {ledger.accepted_total(payer)} is vouched"
                )
            added = settled_total - ledger.settled.get(payer, 0)
            if added <= 0:
                return 0
            conn.execute(self._q.mark_settled, (settled_total, holder, note_chain))
            account = self._account(conn, holder)
            if account is not None and (account.authorization.note_chain, account.authorization.nonce) == (
                note_chain,
                authorization_nonce,
            ):
                conn.execute(self._q.settled_under_auth, (account.settled_under_auth + added, holder))
            return added

        return self._db.run(operation)

    # -- relays -----------------------------------------------------------------------------------

    def credit_relay(self, relay: bytes, size: int, *, tag: bytes | None = None, now: int = 0) -> bool:
        """Add `size` bytes to what is owed `relay`; with a receipt's `tag`, at most once per tag over
        all entry servers (the tag is the primary key)."""

        def operation(conn: psycopg.Connection[Any]) -> bool:
            if tag is not None and conn.execute(self._q.insert_receipt, (tag, relay, size, now)).fetchone() is None:
                return False
            conn.execute(self._q.add_relay_usage, (relay, self.config.relay_per_mb, size))
            return True

        return self._db.run(operation)

    def forget_receipts(self, before: int) -> None:
        self._db.run(lambda conn: conn.execute(self._q.forget_receipts, (before,)))

    # -- reports ----------------------------------------------------------------------------------

    def owed_by_clients(self) -> list[ClientOwed]:
        def operation(conn: psycopg.Connection[Any]) -> list[ClientOwed]:
            return owed_by_clients_from(
                conn.execute(self._q.report_clients).fetchall(), conn.execute(self._q.report_vouchers).fetchall()
            )

        # One transaction (REPEATABLE READ is not needed: READ COMMITTED reads are consistent per row
        # and the report is a snapshot for people, not the input of a payment).
        return self._db.run(operation)

    def owed_to_relays(self) -> list[RelayOwed]:
        def operation(conn: psycopg.Connection[Any]) -> list[RelayOwed]:
            return owed_to_relays_from(
                conn.execute(self._q.report_relays).fetchall(), conn.execute(self._q.report_relay_settled).fetchall()
            )

        return self._db.run(operation)

    def clients(self) -> list[bytes]:
        """Every registered client's address (for operators and tests)."""
        rows = self._db.run(lambda conn: conn.execute(self._q.all_clients).fetchall(), transaction=False)
        return [bytes(row[0]) for row in rows]


class PgReplayGuard:
    """The node's replay cache of signed requests (`node.ReplayGuard`), shared by every entry server:
    a request id is served once per client, wherever the copy is posted."""

    def __init__(self, state: PgNodeState, window_ms: int | None = None) -> None:
        self._state = state
        self.window_ms = state.config.clock_skew_seconds * 1000 if window_ms is None else window_ms

    async def check_and_add(self, request: NodeRequest, now_ms: int) -> None:
        state = self._state

        def operation(conn: psycopg.Connection[Any]) -> bool:
            row = conn.execute(
                state._q.remember_request, (request.client, request.request_id, request.timestamp_ms)
            ).fetchone()
            return row is not None

        if not await state.run(state._db.run, operation):
            raise ReplayedRequest(f"request {request.request_id.hex()} was already served")

    async def prune(self, now_ms: int) -> None:
        # Twice the window: a request is refused by its timestamp beyond one window on either side.
        horizon = now_ms - 2 * self.window_ms
        state = self._state
        await state.run(state._db.run, lambda conn: conn.execute(state._q.forget_requests, (horizon,)))


class _Statements:
    def __init__(self, schema: str) -> None:
        def q(text: str) -> sql.Composed:
            return sql.SQL(text).format(s=sql.Identifier(schema))

        self.lock = "SELECT pg_advisory_xact_lock(%s)"
        self.meta_insert = q("INSERT INTO {s}.node_meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING")
        self.meta_get = q("SELECT value FROM {s}.node_meta WHERE key = %s")
        self.account = q(
            """SELECT registered_ms, note_chain, auth_limit, auth_nonce, auth_expiry, auth_signature,
                      billed_total, settled_under_auth, carried_unbilled, storage_billed, last_bill_at
               FROM {s}.node_clients WHERE address = %s"""
        )
        self.all_clients = q("SELECT address FROM {s}.node_clients ORDER BY address")
        self.insert_client = q(
            """INSERT INTO {s}.node_clients (address, registered_ms, note_chain, auth_limit, auth_nonce,
                   auth_expiry, auth_signature, storage_billed, last_bill_at)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"""
        )
        self.update_registration = q(
            """UPDATE {s}.node_clients SET registered_ms = %s, note_chain = %s, auth_limit = %s, auth_nonce = %s,
                   auth_expiry = %s, auth_signature = %s, billed_total = %s, settled_under_auth = %s
               WHERE address = %s"""
        )
        self.add_carried = q("UPDATE {s}.node_clients SET carried_unbilled = carried_unbilled + %s WHERE address = %s")
        self.record_bill = q(
            """UPDATE {s}.node_clients SET billed_total = %s, carried_unbilled = carried_unbilled - %s,
                   storage_billed = %s, last_bill_at = %s WHERE address = %s"""
        )
        self.voucher = q(
            """SELECT cumulative, nonce, expiry, signature, settled FROM {s}.node_vouchers
               WHERE payer = %s AND note_chain = %s"""
        )
        self.voucher_totals = q(
            "SELECT cumulative, settled FROM {s}.node_vouchers WHERE payer = %s AND note_chain = %s"
        )
        self.upsert_voucher = q(
            """INSERT INTO {s}.node_vouchers (payer, note_chain, cumulative, nonce, expiry, signature)
               VALUES (%s, %s, %s, %s, %s, %s)
               ON CONFLICT (payer, note_chain) DO UPDATE SET cumulative = excluded.cumulative,
                   nonce = excluded.nonce, expiry = excluded.expiry, signature = excluded.signature"""
        )
        self.unsettled = q(
            "SELECT payer, note_chain FROM {s}.node_vouchers WHERE cumulative > settled ORDER BY payer, note_chain"
        )
        self.mark_settled = q("UPDATE {s}.node_vouchers SET settled = %s WHERE payer = %s AND note_chain = %s")
        self.settled_under_auth = q("UPDATE {s}.node_clients SET settled_under_auth = %s WHERE address = %s")
        self.insert_receipt = q(
            """INSERT INTO {s}.node_relay_receipts (tag, relay, bytes, at) VALUES (%s, %s, %s, %s)
               ON CONFLICT (tag) DO NOTHING RETURNING tag"""
        )
        self.add_relay_usage = q(
            """INSERT INTO {s}.node_relay_usage (relay, per_mb, bytes) VALUES (%s, %s, %s)
               ON CONFLICT (relay, per_mb) DO UPDATE SET bytes = {s}.node_relay_usage.bytes + excluded.bytes"""
        )
        self.forget_receipts = q("DELETE FROM {s}.node_relay_receipts WHERE at < %s")
        self.report_clients = q("SELECT address, note_chain, billed_total FROM {s}.node_clients")
        self.report_vouchers = q("SELECT payer, note_chain, cumulative, settled FROM {s}.node_vouchers")
        self.report_relays = q("SELECT relay, per_mb, bytes FROM {s}.node_relay_usage")
        self.report_relay_settled = q("SELECT relay, settled FROM {s}.node_relay_settled")
        self.remember_request = q(
            """INSERT INTO {s}.node_requests (client, request_id, at_ms) VALUES (%s, %s, %s)
               ON CONFLICT (client, request_id) DO NOTHING RETURNING 1"""
        )
        self.forget_requests = q("DELETE FROM {s}.node_requests WHERE at_ms < %s")
