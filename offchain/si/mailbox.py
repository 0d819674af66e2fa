"""The recipient node's mailbox: inner envelopes (N1) kept in SQLite for clients that are offline.

DESIGN §7: when a client's event stream is closed, its node keeps what arrives for it and hands it
over when the client reconnects. The rules, and why:

* **Durable before 200.** The sender is told "delivered" only once the message is on disk, so
  `store()` returns only after its transaction has committed with `synchronous=FULL` in WAL mode:
  the commit fsyncs the write-ahead log, and a SIGKILL or power cut after `store()` returns cannot
  lose the row. A crash before the commit leaves no trace of it (SQLite's atomic commit), so there is
  never half a message.
* **Opaque.** A row holds the recipient's address, a message id, the inner envelope exactly as it
  arrived (sealed to the client: the node cannot read it), its size and when it was stored. Nothing
  about the sender — least of all its IP, which the node never learns (the relay does).
* **Idempotent.** A relay or sender that retries after a lost 200 re-posts the same bytes; the id is
  unique per recipient, so the retry is acknowledged without a second copy. `message_id_of` derives
  the id from the blob for exactly that reason.
* **Deleted only on acknowledgement.** `fetch()` does not remove anything; the client acknowledges
  what it has safely received and only then `acknowledge()` deletes it, so a connection lost during
  the fetch loses nothing.
* **Bounded.** Per-recipient byte and count limits (`MailboxFull`, checked in the same transaction
  as the insert, so nothing is half-written and two concurrent stores cannot both squeeze past) and
  a maximum age (`expire()`).
* **Billable.** Storage is charged per MB-hour (billing.Meter): the mailbox keeps, per recipient, the
  byte·seconds of every message it has removed, plus two running sums over the pending ones, so
  `storage_byte_seconds()` is exact and O(1).

Concurrency: one SQLite connection per thread and per process (a connection must not cross a fork
or be shared between threads mid-transaction), `busy_timeout` so writers queue instead of failing,
and every write in a `BEGIN IMMEDIATE` transaction, which takes the write lock up front so a
read-then-write (the limit check) cannot be overtaken by another writer.

Times are integer seconds supplied by the caller (`now`), so tests and billing are deterministic;
the node passes its clock, which must not run backwards.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from eth_typing import ChecksumAddress
from eth_utils.address import to_canonical_address, to_checksum_address
from eth_utils.crypto import keccak

__all__ = [
    "DEFAULT_LIMITS",
    "Mailbox",
    "MailboxError",
    "MailboxFull",
    "MailboxLimits",
    "MessageIdConflict",
    "Removed",
    "StoredMessage",
    "message_id_of",
]

MAX_MESSAGE_ID_SIZE = 32


class MailboxError(Exception):
    """A mailbox operation was refused."""


class MailboxFull(MailboxError):
    """Storing the message would take the recipient past its byte or message-count limit; nothing was stored."""


class MessageIdConflict(MailboxError):
    """A message with this id is already stored for the recipient, with different bytes."""


@dataclass(frozen=True)
class MailboxLimits:
    """Retention limits per recipient. The defaults hold a week of a busy person's mail at 1 MiB maxima."""

    max_bytes: int = 256 * 1024 * 1024
    max_messages: int = 10_000
    max_age_seconds: int = 7 * 24 * 3600

    def __post_init__(self) -> None:
        if self.max_bytes <= 0 or self.max_messages <= 0 or self.max_age_seconds <= 0:
            raise ValueError(f"mailbox limits must be positive: {self}")


DEFAULT_LIMITS = MailboxLimits()


@dataclass(frozen=True)
class StoredMessage:
    """A pending message, as `fetch()` returns it."""

    recipient: ChecksumAddress
    """The client it is for."""
    message_id: bytes
    blob: bytes
    """The inner envelope (N1), exactly as it arrived."""
    size: int
    stored_at: int


@dataclass(frozen=True)
class Removed:
    """A message taken out of the mailbox (acknowledged or expired), with what its storage cost."""

    recipient: ChecksumAddress
    message_id: bytes
    size: int
    stored_at: int
    removed_at: int
    """The end of the billed storage period: the acknowledgement, or for an expired message the
    moment it reached the maximum age (a late `expire()` run must not bill the client for the delay)."""
    expired: bool

    @property
    def byte_seconds(self) -> int:
        return self.size * (self.removed_at - self.stored_at)


def message_id_of(blob: bytes) -> bytes:
    """The node-side id of an inner envelope: keccak256 of its bytes.

    The node cannot read the sender's message id (it is inside N1), but a retried POST carries the
    very same bytes, so a content hash makes the retry a duplicate; a different message always has
    a fresh ephemeral key and so a different hash."""
    return keccak(blob)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,  -- arrival order: "oldest first" without trusting clocks
    recipient   BLOB    NOT NULL CHECK (length(recipient) = 20),
    message_id  BLOB    NOT NULL CHECK (length(message_id) BETWEEN 1 AND 32),
    blob        BLOB    NOT NULL,
    size        INTEGER NOT NULL CHECK (size = length(blob)),
    stored_at   INTEGER NOT NULL,
    UNIQUE (recipient, message_id)
);
CREATE INDEX IF NOT EXISTS messages_by_age ON messages (stored_at);
CREATE INDEX IF NOT EXISTS messages_by_recipient ON messages (recipient, seq);
-- Per-recipient counters kept in the same transactions as the rows: limits and storage billing in O(1).
CREATE TABLE IF NOT EXISTS boxes (
    recipient             BLOB    PRIMARY KEY CHECK (length(recipient) = 20),
    message_count         INTEGER NOT NULL DEFAULT 0,
    total_bytes           INTEGER NOT NULL DEFAULT 0,
    size_time_sum         INTEGER NOT NULL DEFAULT 0,  -- Σ size · stored_at over pending messages
    removed_byte_seconds  INTEGER NOT NULL DEFAULT 0   -- Σ size · (removed_at - stored_at) over removed ones
) WITHOUT ROWID;
"""


def _address(recipient: str | bytes) -> bytes:
    return to_canonical_address(recipient)


class Mailbox:
    """A recipient node's mailbox in one SQLite file. Safe to use from several threads and processes."""

    def __init__(self, path: str | Path, limits: MailboxLimits = DEFAULT_LIMITS, *, busy_timeout_ms: int = 10_000):
        self.path = Path(path)
        self.limits = limits
        self._busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        self._create()

    # -- connections ------------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        # A connection inherited through fork() shares file locks with the parent: open a fresh one.
        if db is None or getattr(self._local, "pid", None) != os.getpid():
            # isolation_level=None: no implicit transactions; every write says BEGIN IMMEDIATE itself.
            db = sqlite3.connect(self.path, isolation_level=None, timeout=self._busy_timeout_ms / 1000)
            db.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
            # WAL is a property of the file (persists); synchronous is per connection, so set on each.
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")
            self._local.db = db
            self._local.pid = os.getpid()
        return db

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            # Also when COMMIT itself fails (disk full, I/O error): the transaction must not stay open
            # on this connection, or the next BEGIN would fail and the caller would think it stored.
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _create(self) -> None:
        db = self._connection()
        # executescript commits on its own; the statements are all IF NOT EXISTS, so racing openers agree.
        db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end)."""
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is not None and getattr(self._local, "pid", None) == os.getpid():
            db.close()
        self._local.db = None

    def __enter__(self) -> Mailbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- operations -------------------------------------------------------------------------------

    def store(self, recipient: str | bytes, message_id: bytes, blob: bytes, *, now: int | None = None) -> bool:
        """Keep `blob` for `recipient`; return only once it is durable. True if stored, False if it
        already was (a retry). Raises `MailboxFull` past a limit, `MessageIdConflict` if the id is
        taken by other bytes; in both cases nothing is written."""
        if not 1 <= len(message_id) <= MAX_MESSAGE_ID_SIZE:
            raise ValueError(f"message_id must be 1 to {MAX_MESSAGE_ID_SIZE} bytes, got {len(message_id)}")
        if not blob:
            raise ValueError("an empty blob is not a message")
        address = _address(recipient)
        stored_at = int(time.time()) if now is None else now
        size = len(blob)
        with self._write() as db:
            existing = db.execute(
                "SELECT blob FROM messages WHERE recipient = ? AND message_id = ?", (address, message_id)
            ).fetchone()
            if existing is not None:
                # Checked before the limits: a retry of a message already kept must succeed even when full.
                if bytes(existing[0]) != blob:
                    raise MessageIdConflict(f"message {message_id.hex()} is already stored with other bytes")
                return False
            row = db.execute("SELECT message_count, total_bytes FROM boxes WHERE recipient = ?", (address,)).fetchone()
            count, total = row if row is not None else (0, 0)
            if count + 1 > self.limits.max_messages:
                raise MailboxFull(f"{to_checksum_address(address)} already holds {count} messages")
            if total + size > self.limits.max_bytes:
                raise MailboxFull(
                    f"{to_checksum_address(address)} holds {total} bytes; {size} more exceed {self.limits.max_bytes}"
                )
            db.execute(
                "INSERT INTO messages (recipient, message_id, blob, size, stored_at) VALUES (?, ?, ?, ?, ?)",
                (address, message_id, blob, size, stored_at),
            )
            db.execute(
                """INSERT INTO boxes (recipient, message_count, total_bytes, size_time_sum) VALUES (?, 1, ?, ?)
                   ON CONFLICT (recipient) DO UPDATE SET message_count = message_count + 1,
                       total_bytes = total_bytes + excluded.total_bytes,
                       size_time_sum = size_time_sum + excluded.size_time_sum""",
                (address, size, size * stored_at),
            )
        return True

    def fetch(self, recipient: str | bytes, limit: int = 100) -> list[StoredMessage]:
        """Up to `limit` pending messages for `recipient`, oldest first. Removes nothing."""
        if limit <= 0:
            return []
        address = _address(recipient)
        rows = self._connection().execute(
            "SELECT message_id, blob, size, stored_at FROM messages WHERE recipient = ? ORDER BY seq LIMIT ?",
            (address, limit),
        )
        checksum = to_checksum_address(address)
        return [StoredMessage(checksum, bytes(mid), bytes(blob), size, at) for mid, blob, size, at in rows]

    def acknowledge(self, recipient: str | bytes, ids: Iterable[bytes], *, now: int | None = None) -> list[Removed]:
        """Delete the recipient's messages with these ids (the client has them). Unknown ids, or ids
        acknowledged before, are ignored, so a repeated acknowledgement is harmless."""
        address = _address(recipient)
        at = int(time.time()) if now is None else now
        with self._write() as db:
            removed = [
                self._remove(db, address, message_id, size, stored_at, max(at, stored_at), expired=False)
                for message_id in dict.fromkeys(ids)  # de-duplicated, in the client's order
                for size, stored_at in db.execute(
                    "SELECT size, stored_at FROM messages WHERE recipient = ? AND message_id = ?",
                    (address, message_id),
                ).fetchall()
            ]
        return removed

    def expire(self, now: int | None = None) -> list[Removed]:
        """Delete every message older than the maximum age; return them, for the storage bill."""
        at = int(time.time()) if now is None else now
        cutoff = at - self.limits.max_age_seconds
        with self._write() as db:
            rows = db.execute(
                "SELECT recipient, message_id, size, stored_at FROM messages WHERE stored_at < ? ORDER BY seq",
                (cutoff,),
            ).fetchall()
            removed = [
                self._remove(
                    db, bytes(rcpt), bytes(mid), size, stored_at, stored_at + self.limits.max_age_seconds, expired=True
                )
                for rcpt, mid, size, stored_at in rows
            ]
        return removed

    @staticmethod
    def _remove(
        db: sqlite3.Connection,
        address: bytes,
        message_id: bytes,
        size: int,
        stored_at: int,
        removed_at: int,
        *,
        expired: bool,
    ) -> Removed:
        item = Removed(to_checksum_address(address), message_id, size, stored_at, removed_at, expired)
        db.execute("DELETE FROM messages WHERE recipient = ? AND message_id = ?", (address, message_id))
        db.execute(
            """UPDATE boxes SET message_count = message_count - 1, total_bytes = total_bytes - ?,
                   size_time_sum = size_time_sum - ?, removed_byte_seconds = removed_byte_seconds + ?
               WHERE recipient = ?""",
            (size, size * stored_at, item.byte_seconds, address),
        )
        return item

    # -- accounting -------------------------------------------------------------------------------

    def usage(self, recipient: str | bytes) -> tuple[int, int]:
        """(pending messages, pending bytes) for `recipient`."""
        row = (
            self._connection()
            .execute("SELECT message_count, total_bytes FROM boxes WHERE recipient = ?", (_address(recipient),))
            .fetchone()
        )
        return (0, 0) if row is None else (int(row[0]), int(row[1]))

    def storage_byte_seconds(self, recipient: str | bytes, now: int | None = None) -> int:
        """Everything `recipient` has stored so far, in byte·seconds: removed messages up to their
        removal, pending ones up to `now`. Non-decreasing in `now`, so a node bills the difference
        between two readings (billing.Meter turns it into MB-hours)."""
        at = int(time.time()) if now is None else now
        row = (
            self._connection()
            .execute(
                "SELECT total_bytes, size_time_sum, removed_byte_seconds FROM boxes WHERE recipient = ?",
                (_address(recipient),),
            )
            .fetchone()
        )
        if row is None:
            return 0
        total, size_time, removed = (int(v) for v in row)
        # Σ size·(now - stored_at) over pending = now·Σ size - Σ size·stored_at.
        return removed + at * total - size_time

    def integrity_check(self) -> str:
        """SQLite's own check of the file ("ok" when sound)."""
        return str(self._connection().execute("PRAGMA integrity_check").fetchone()[0])
