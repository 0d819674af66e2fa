"""The recipient node's mailbox in PostgreSQL, shared by every entry server of one node wallet.

DESIGN §7: "A professional recipient provider runs several entry servers for one node wallet,
sharing mailbox and push connections through a shared store and a message bus." This is the shared
store: `PgMailbox` has the public methods and the semantics of the SQLite `Mailbox`
(offchain/si/mailbox.py) and shares its data classes and exceptions, so a node holds either one.
docs/drafts/si-postgres.md has the schema and the reasoning; the rules, briefly:

* **Durable before return.** `store()` returns once its transaction has committed, on a connection
  whose `synchronous_commit` is at least `on` (raised from `off` if the server default is off), so
  the WAL record is flushed to disk (and to synchronous standbys when the server has any). The
  server's own `fsync` must be on — a server setting no client can override.
* **Idempotent.** `(recipient, message_id)` is unique; a retry with the same bytes returns False and
  stores no second copy, with other bytes raises `MessageIdConflict`.
* **Limits in the same transaction.** A store first locks the recipient's row in `mailbox_boxes`
  (`SELECT … FOR UPDATE`), then checks the duplicate and the limits, then inserts and updates the
  counters. Two entry servers storing for one recipient at once queue on that row lock, so they
  cannot both pass the limit check; and since READ COMMITTED takes a fresh snapshot per statement,
  the one that waited sees what the other committed.
* **Deleted only on acknowledgement** (or expiry), with the same exact byte·second accounting.

Locks are always taken in one order — a recipient's box row before its message rows, and several box
rows in ascending recipient order — so the mailbox's transactions cannot deadlock one another (the
push bus, offchain/si/pgbus.py, follows the same order when it moves pushes into the mailbox).

Connections: one per thread and per process, like the SQLite mailbox (a libpq connection must not
cross a fork, and a transaction must not be shared between threads), in autocommit mode with an
explicit transaction around every write, so a read never leaves a session idle in a transaction.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import psycopg
from eth_utils.address import to_canonical_address, to_checksum_address
from psycopg import sql

from offchain.si.mailbox import (
    DEFAULT_LIMITS,
    MAX_MESSAGE_ID_SIZE,
    MailboxError,
    MailboxFull,
    MailboxLimits,
    MessageIdConflict,
    Removed,
    StoredMessage,
    message_id_of,
)

__all__ = [
    "DDL_LOCK_KEY",
    "DEFAULT_LIMITS",
    "DEFAULT_SCHEMA",
    "MAILBOX_DDL",
    "MailboxError",
    "MailboxFull",
    "MailboxLimits",
    "MailboxUnavailable",
    "MessageIdConflict",
    "PgMailbox",
    "Removed",
    "StoredMessage",
    "check_schema_name",
    "create_mailbox_schema",
    "message_id_of",
    "schema_statements",
]

DEFAULT_SCHEMA = "conet_si"
"""The PostgreSQL schema (namespace) holding the mailbox and bus tables; one per node wallet."""

# Serializes concurrent schema creation: CREATE … IF NOT EXISTS is not race-free in PostgreSQL (two
# sessions can both find a table missing and one then fails on the catalog's unique index).
DDL_LOCK_KEY = 0x434F4E45545349  # "CONETSI"
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")

T = TypeVar("T")


class MailboxUnavailable(MailboxError):
    """PostgreSQL could not be reached, or the connection broke during the operation.

    A store that raises this may or may not have committed; it is safe to retry (stores are
    idempotent by message id). Nothing is ever half-written."""


MAILBOX_DDL = """
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {s}.mailbox_messages (
    seq         bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- arrival order, without trusting clocks
    recipient   bytea   NOT NULL CHECK (length(recipient) = 20),
    message_id  bytea   NOT NULL CHECK (length(message_id) BETWEEN 1 AND 32),
    blob        bytea   NOT NULL,
    size        integer NOT NULL CHECK (size = length(blob) AND size > 0),
    stored_at   bigint  NOT NULL,
    UNIQUE (recipient, message_id)
);
CREATE INDEX IF NOT EXISTS mailbox_messages_by_age ON {s}.mailbox_messages (stored_at);
CREATE INDEX IF NOT EXISTS mailbox_messages_by_recipient ON {s}.mailbox_messages (recipient, seq);
CREATE TABLE IF NOT EXISTS {s}.mailbox_boxes (
    recipient             bytea   PRIMARY KEY CHECK (length(recipient) = 20),
    message_count         bigint  NOT NULL DEFAULT 0 CHECK (message_count >= 0),
    total_bytes           bigint  NOT NULL DEFAULT 0 CHECK (total_bytes >= 0),
    size_time_sum         numeric NOT NULL DEFAULT 0,  -- Σ size·stored_at over pending messages (can pass 2^63)
    removed_byte_seconds  numeric NOT NULL DEFAULT 0   -- Σ size·(removed_at - stored_at) over removed ones
);
"""


def check_schema_name(schema: str) -> str:
    """`schema` if it is a plain lower-case SQL identifier (it is also used to derive lock keys)."""
    if not _SCHEMA_NAME.fullmatch(schema):
        raise ValueError(f"schema name must match {_SCHEMA_NAME.pattern}, got {schema!r}")
    return schema


def schema_statements(ddl: str, schema: str) -> list[sql.Composed]:
    """`ddl` (statements separated by ';' ending a line, `{s}` for the schema) as composed statements."""
    ident = sql.Identifier(check_schema_name(schema))
    return [sql.SQL(part.strip()).format(s=ident) for part in ddl.split(";\n") if part.strip()]


def create_mailbox_schema(conn: psycopg.Connection[Any], schema: str = DEFAULT_SCHEMA) -> None:
    """Create the mailbox tables in `schema` if missing (safe to race with other entry servers)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (DDL_LOCK_KEY,))
        for statement in schema_statements(MAILBOX_DDL, schema):
            conn.execute(statement)


def _address(recipient: str | bytes) -> bytes:
    return to_canonical_address(recipient)


class PgMailbox:
    """A recipient node's mailbox in PostgreSQL, shared by several entry servers (processes, hosts).

    `dsn` is a libpq connection string or URI. Safe to use from several threads and processes; every
    entry server of one provider must use the same `schema` and the same `limits`."""

    def __init__(
        self,
        dsn: str,
        limits: MailboxLimits = DEFAULT_LIMITS,
        *,
        schema: str = DEFAULT_SCHEMA,
        connect_timeout: float = 10.0,
    ) -> None:
        self.dsn = dsn
        self.limits = limits
        self.schema = check_schema_name(schema)
        self._connect_timeout = connect_timeout
        self._local = threading.local()
        self._sql = _Statements(self.schema)
        self._run(lambda conn: create_mailbox_schema(conn, self.schema), transaction=False)

    # -- connections ------------------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection[Any]:
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        # A connection inherited through fork() shares its socket with the parent: open a fresh one.
        if conn is None or conn.closed or getattr(self._local, "pid", None) != os.getpid():
            try:
                conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=max(1, int(self._connect_timeout)))
            except psycopg.Error as exc:
                raise MailboxUnavailable(f"cannot connect to the mailbox database: {exc}") from exc
            setting = conn.execute("SELECT current_setting('synchronous_commit')").fetchone()
            # Raise, never lower: a server configured for remote_apply keeps it.
            if setting is not None and setting[0] == "off":
                conn.execute("SET synchronous_commit = on")
            self._local.conn = conn
            self._local.pid = os.getpid()
        return conn

    def _forget_connection(self) -> None:
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            conn.close()
        self._local.conn = None

    def _run(self, operation: Callable[[psycopg.Connection[Any]], T], *, transaction: bool = True) -> T:
        """Run `operation` (in one transaction when `transaction`), retrying when nothing can have been
        applied: a connection found dead before the transaction began, or a transaction the server
        rolled back itself (deadlock, serialization failure). A failure after BEGIN is not retried,
        because the COMMIT may have gone through: the caller gets `MailboxUnavailable`."""
        attempts = 3
        for attempt in range(1, attempts + 1):
            conn = self._connection()
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
                    raise MailboxUnavailable(f"the transaction was rolled back {attempts} times: {exc}") from exc
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                if conn.broken or conn.closed:
                    self._forget_connection()
                if (began and transaction) or attempt == attempts:
                    raise MailboxUnavailable(f"the mailbox database failed during the operation: {exc}") from exc
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end)."""
        self._forget_connection()

    def __enter__(self) -> PgMailbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- operations -------------------------------------------------------------------------------

    def store(self, recipient: str | bytes, message_id: bytes, blob: bytes, *, now: int | None = None) -> bool:
        """Keep `blob` for `recipient`; return only once it is durable. True if stored, False if it
        already was (a retry). Raises `MailboxFull` past a limit, `MessageIdConflict` if the id is
        taken by other bytes; in both cases nothing is written. `MailboxUnavailable` when the database
        fails: the message may or may not be stored, and a retry is safe."""
        if not 1 <= len(message_id) <= MAX_MESSAGE_ID_SIZE:
            raise ValueError(f"message_id must be 1 to {MAX_MESSAGE_ID_SIZE} bytes, got {len(message_id)}")
        if not blob:
            raise ValueError("an empty blob is not a message")
        address = _address(recipient)
        stored_at = int(time.time()) if now is None else now
        size = len(blob)
        q = self._sql

        def operation(conn: psycopg.Connection[Any]) -> bool:
            # The box row lock first: it is what serializes stores for this recipient.
            conn.execute(q.ensure_box, (address,))
            count, total = _one(conn.execute(q.lock_box, (address,)))
            existing = conn.execute(q.existing, (address, message_id)).fetchone()
            if existing is not None:
                # Checked before the limits: a retry of a message already kept must succeed even when full.
                if bytes(existing[0]) != blob:
                    raise MessageIdConflict(f"message {message_id.hex()} is already stored with other bytes")
                return False
            if count + 1 > self.limits.max_messages:
                raise MailboxFull(f"{to_checksum_address(address)} already holds {count} messages")
            if total + size > self.limits.max_bytes:
                raise MailboxFull(
                    f"{to_checksum_address(address)} holds {total} bytes; {size} more exceed {self.limits.max_bytes}"
                )
            conn.execute(q.insert_message, (address, message_id, blob, size, stored_at))
            conn.execute(q.add_to_box, (size, size * stored_at, address))
            return True

        return self._run(operation)

    def fetch(self, recipient: str | bytes, limit: int = 100) -> list[StoredMessage]:
        """Up to `limit` pending messages for `recipient`, oldest first. Removes nothing."""
        if limit <= 0:
            return []
        address = _address(recipient)
        rows = self._run(lambda conn: conn.execute(self._sql.fetch, (address, limit)).fetchall(), transaction=False)
        checksum = to_checksum_address(address)
        return [StoredMessage(checksum, bytes(mid), bytes(blob), int(size), int(at)) for mid, blob, size, at in rows]

    def acknowledge(self, recipient: str | bytes, ids: Iterable[bytes], *, now: int | None = None) -> list[Removed]:
        """Delete the recipient's messages with these ids (the client has them). Unknown ids, or ids
        acknowledged before, are ignored, so a repeated acknowledgement is harmless."""
        address = _address(recipient)
        at = int(time.time()) if now is None else now
        wanted = [bytes(i) for i in dict.fromkeys(ids)]  # de-duplicated, in the client's order
        if not wanted:
            return []
        q = self._sql
        checksum = to_checksum_address(address)

        def operation(conn: psycopg.Connection[Any]) -> list[Removed]:
            if conn.execute(q.lock_box, (address,)).fetchone() is None:
                return []  # never had mail
            deleted = {
                bytes(mid): (int(size), int(stored_at))
                for mid, size, stored_at in conn.execute(q.delete_ids, (address, wanted)).fetchall()
            }
            removed = [
                Removed(checksum, mid, size, stored_at, max(at, stored_at), False)
                for mid in wanted
                if mid in deleted
                for size, stored_at in (deleted[mid],)
            ]
            _subtract(conn, q, address, removed)
            return removed

        return self._run(operation)

    def expire(self, now: int | None = None) -> list[Removed]:
        """Delete every message older than the maximum age; return them, for the storage bill."""
        at = int(time.time()) if now is None else now
        max_age = self.limits.max_age_seconds
        cutoff = at - max_age
        q = self._sql

        def operation(conn: psycopg.Connection[Any]) -> list[Removed]:
            recipients = [bytes(r[0]) for r in conn.execute(q.expired_recipients, (cutoff,)).fetchall()]
            if not recipients:
                return []
            # Box rows in ascending order (the query sorts them before locking): the global lock order.
            conn.execute(q.lock_boxes, (recipients,)).fetchall()
            rows = sorted(conn.execute(q.delete_expired, (recipients, cutoff)).fetchall(), key=lambda r: int(r[4]))
            removed = [
                Removed(to_checksum_address(bytes(rcpt)), bytes(mid), int(size), int(st), int(st) + max_age, True)
                for rcpt, mid, size, st, _seq in rows
            ]
            by_recipient: dict[bytes, list[Removed]] = defaultdict(list)
            for item in removed:
                by_recipient[to_canonical_address(item.recipient)].append(item)
            for address in sorted(by_recipient):
                _subtract(conn, q, address, by_recipient[address])
            return removed

        return self._run(operation)

    # -- accounting -------------------------------------------------------------------------------

    def usage(self, recipient: str | bytes) -> tuple[int, int]:
        """(pending messages, pending bytes) for `recipient`."""
        address = _address(recipient)
        row = self._run(lambda conn: conn.execute(self._sql.usage, (address,)).fetchone(), transaction=False)
        return (0, 0) if row is None else (int(row[0]), int(row[1]))

    def storage_byte_seconds(self, recipient: str | bytes, now: int | None = None) -> int:
        """Everything `recipient` has stored so far, in byte·seconds: removed messages up to their
        removal, pending ones up to `now`. Non-decreasing in `now`, so a node bills the difference
        between two readings (billing.Meter turns it into MB-hours)."""
        at = int(time.time()) if now is None else now
        address = _address(recipient)
        row = self._run(lambda conn: conn.execute(self._sql.accounting, (address,)).fetchone(), transaction=False)
        if row is None:
            return 0
        total, size_time, removed = (int(v) for v in row)
        # Σ size·(now - stored_at) over pending = now·Σ size - Σ size·stored_at.
        return removed + at * total - size_time

    def integrity_check(self) -> str:
        """ "ok" when every box's counters equal the sums over its rows; otherwise what differs."""
        rows = self._run(lambda conn: conn.execute(self._sql.integrity).fetchall(), transaction=False)
        if not rows:
            return "ok"
        return "; ".join(
            f"{to_checksum_address(bytes(r[0]))}: counters {tuple(int(v) for v in r[1:4])} "
            f"!= rows {tuple(int(v) for v in r[4:7])}"
            for r in rows
        )


def _one(cursor: psycopg.Cursor[Any]) -> tuple[int, int]:
    row = cursor.fetchone()
    if row is None:
        raise AssertionError("the box row was created in this transaction and must exist")
    return int(row[0]), int(row[1])


def _subtract(conn: psycopg.Connection[Any], q: _Statements, address: bytes, removed: list[Removed]) -> None:
    if not removed:
        return
    conn.execute(
        q.subtract_from_box,
        (
            len(removed),
            sum(r.size for r in removed),
            sum(r.size * r.stored_at for r in removed),
            sum(r.byte_seconds for r in removed),
            address,
        ),
    )


class _Statements:
    """The mailbox's SQL, composed once for a schema."""

    def __init__(self, schema: str) -> None:
        def q(text: str) -> sql.Composed:
            return sql.SQL(text).format(s=sql.Identifier(schema))

        self.ensure_box = q("INSERT INTO {s}.mailbox_boxes (recipient) VALUES (%s) ON CONFLICT DO NOTHING")
        self.lock_box = q("SELECT message_count, total_bytes FROM {s}.mailbox_boxes WHERE recipient = %s FOR UPDATE")
        self.lock_boxes = q(
            "SELECT recipient FROM {s}.mailbox_boxes WHERE recipient = ANY(%s) ORDER BY recipient FOR UPDATE"
        )
        self.existing = q("SELECT blob FROM {s}.mailbox_messages WHERE recipient = %s AND message_id = %s")
        self.insert_message = q(
            """INSERT INTO {s}.mailbox_messages (recipient, message_id, blob, size, stored_at)
               VALUES (%s, %s, %s, %s, %s)"""
        )
        self.add_to_box = q(
            """UPDATE {s}.mailbox_boxes SET message_count = message_count + 1, total_bytes = total_bytes + %s,
                   size_time_sum = size_time_sum + %s WHERE recipient = %s"""
        )
        self.subtract_from_box = q(
            """UPDATE {s}.mailbox_boxes SET message_count = message_count - %s, total_bytes = total_bytes - %s,
                   size_time_sum = size_time_sum - %s, removed_byte_seconds = removed_byte_seconds + %s
               WHERE recipient = %s"""
        )
        self.fetch = q(
            """SELECT message_id, blob, size, stored_at FROM {s}.mailbox_messages
               WHERE recipient = %s ORDER BY seq LIMIT %s"""
        )
        self.delete_ids = q(
            """DELETE FROM {s}.mailbox_messages WHERE recipient = %s AND message_id = ANY(%s)
               RETURNING message_id, size, stored_at"""
        )
        self.expired_recipients = q(
            "SELECT DISTINCT recipient FROM {s}.mailbox_messages WHERE stored_at < %s ORDER BY recipient"
        )
        self.delete_expired = q(
            """DELETE FROM {s}.mailbox_messages WHERE recipient = ANY(%s) AND stored_at < %s
               RETURNING recipient, message_id, size, stored_at, seq"""
        )
        self.usage = q("SELECT message_count, total_bytes FROM {s}.mailbox_boxes WHERE recipient = %s")
        self.accounting = q(
            "SELECT total_bytes, size_time_sum, removed_byte_seconds FROM {s}.mailbox_boxes WHERE recipient = %s"
        )
        self.integrity = q(
            """SELECT coalesce(b.recipient, m.recipient),
                      coalesce(b.message_count, 0), coalesce(b.total_bytes, 0), coalesce(b.size_time_sum, 0),
                      coalesce(m.n, 0), coalesce(m.bytes, 0), coalesce(m.size_time, 0)
               FROM {s}.mailbox_boxes b
               FULL JOIN (SELECT recipient, count(*) AS n, sum(size) AS bytes,
                                 sum(size::numeric * stored_at) AS size_time
                          FROM {s}.mailbox_messages GROUP BY recipient) m ON m.recipient = b.recipient
               WHERE coalesce(b.message_count, 0) <> coalesce(m.n, 0)
                  OR coalesce(b.total_bytes, 0) <> coalesce(m.bytes, 0)
                  OR coalesce(b.size_time_sum, 0) <> coalesce(m.size_time, 0)"""
        )
