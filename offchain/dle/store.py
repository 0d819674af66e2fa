"""Crash-safe storage of DLE chains in one SQLite file: what archive nodes and witnesses keep.

A chain is its blocks from genesis to the head, each with the certificate that made it final (opaque
bytes: the archive group's signatures, whatever the consensus code puts there) and the state after it,
plus an opaque, versioned per-chain `meta` (the role set, say). The store checks only what makes a
chain a chain — each block extends the head (height + 1, parent hash = head hash, same chain id) and
carries the root of the state stored with it — and nothing about consensus: who signed, whether the
certificate is complete, whether the transactions execute to that state. That is the role services'
job; this module must stay usable by all of them.

Rules, and why:

* **Durable before return.** Every write is one `BEGIN IMMEDIATE` transaction committed with
  `synchronous = FULL` in WAL mode (the commit fsyncs the log), so once `append()` returns the block
  survives a SIGKILL or a power cut, and a crash before the commit leaves no trace of it. Block,
  state and head pointer change in the same transaction: a chain is never seen with a head whose
  block or state is missing.
* **Group commit, same guarantee.** `append_async` queues the append; once the event loop has run
  the callbacks that were ready, every append queued meanwhile (from any chain) is written in one
  transaction — each in its own savepoint, so a refused one writes nothing and leaves the others
  alone — and committed with one fsync; only then do the awaitables complete. The statements run on
  the loop's thread; the COMMIT (the fsync) runs in an executor thread on a connection used for
  nothing else, so the loop keeps serving (its reads see the data before the batch, as the appenders
  are still waiting), and the appends queued during it form the next batch. A node with many chains
  in flight pays one fsync per batch instead of one per block. A crash before the commit loses the
  whole batch, but no caller has acted on any block of it.
* **A refused write writes nothing.** Checks that need no database (chain id, state root) run before
  the transaction; the rest (unknown chain, not extending the head) inside it, before any insert.
  The write lock is taken up front, so two writers racing to append at the same height serialise and
  exactly one wins; the other sees the new head and gets `NotExtendingHead`.
* **Reads check what they decode.** A block whose bytes do not decode, or decode to another hash,
  height or chain than its row says, or a state whose root is not the block's, raises `CorruptStore`:
  a node must never act (sign, refuse, serve) on a silently damaged copy.

Concurrency: one SQLite connection per thread and per process (a connection must not cross a fork
or be shared between threads mid-transaction) and a `busy_timeout`, so writers queue instead of
failing. The schema is in docs/drafts/dle-infra.md.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dle_vm.block import HASH_SIZE, Block
from dle_vm.encoding import EncodingError
from dle_vm.state import State

__all__ = [
    "ANY_VERSION",
    "SCHEMA_VERSION",
    "ChainExists",
    "ChainStore",
    "CorruptStore",
    "InvalidRollback",
    "MetaOrderError",
    "NotExtendingHead",
    "NotGenesis",
    "SchemaError",
    "StateMismatch",
    "StoreError",
    "StoredBlock",
    "UnknownBlock",
    "UnknownChain",
    "WrongChain",
]

SCHEMA_VERSION = 1
_ZERO_HASH = bytes(HASH_SIZE)


class StoreError(Exception):
    """A chain-store operation was refused; nothing was written."""


class ChainExists(StoreError):
    """`create_chain` for a chain id the store already holds."""


class UnknownChain(StoreError):
    """A chain id the store does not hold."""

    def __init__(self, chain_id: bytes) -> None:
        super().__init__(f"chain 0x{chain_id.hex()} is not in the store")
        self.chain_id = chain_id


class UnknownBlock(StoreError):
    """A height the chain does not have (above its head, or rolled back)."""

    def __init__(self, chain_id: bytes, height: int, head: int) -> None:
        super().__init__(f"chain 0x{chain_id.hex()} has no block at height {height} (head {head})")
        self.chain_id = chain_id
        self.height = height
        self.head = head


class NotGenesis(StoreError):
    """`create_chain` with a block that is not a genesis block (height 0, zero parent hash)."""


class WrongChain(StoreError):
    """A block whose header names another chain than the one it is appended to."""


class StateMismatch(StoreError):
    """A block stored with a state whose root is not the header's `state_root`."""


class NotExtendingHead(StoreError):
    """A block that does not extend the chain's head exactly: its height is not head + 1 or its parent
    hash is not the head's hash. `head_height` and `head_hash` are the head the store holds."""

    def __init__(self, chain_id: bytes, head_height: int, head_hash: bytes, message: str) -> None:
        super().__init__(f"chain 0x{chain_id.hex()} (head {head_height}, 0x{head_hash.hex()}): {message}")
        self.chain_id = chain_id
        self.head_height = head_height
        self.head_hash = head_hash


class InvalidRollback(StoreError):
    """A rollback below the genesis block."""


class MetaOrderError(StoreError):
    """A `set_meta` whose first height is before the latest meta's or beyond the next block."""


class SchemaError(StoreError):
    """A file written by another schema version of this store."""


class CorruptStore(StoreError):
    """Stored bytes that do not decode, or decode to something other than their row says.
    `problems` lists each finding (one for a read, all of them for `integrity_check`)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("chain store is corrupt: " + "; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class StoredBlock:
    """A block as the store holds it: the block, the certificate that made it final, the state after it."""

    block: Block
    certificate: bytes
    state: State

    @property
    def height(self) -> int:
        return self.block.header.height

    @property
    def hash(self) -> bytes:
        return self.block.hash


_SCHEMA = f"""
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS chains (
    chain_id     BLOB    PRIMARY KEY CHECK (length(chain_id) = 32),
    head_height  INTEGER NOT NULL CHECK (head_height >= 0),
    head_hash    BLOB    NOT NULL CHECK (length(head_hash) = 32)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS blocks (
    chain_id     BLOB    NOT NULL REFERENCES chains (chain_id),
    height       INTEGER NOT NULL CHECK (height >= 0),
    hash         BLOB    NOT NULL CHECK (length(hash) = 32),
    parent_hash  BLOB    NOT NULL CHECK (length(parent_hash) = 32),
    state_root   BLOB    NOT NULL CHECK (length(state_root) = 32),
    block        BLOB    NOT NULL,
    certificate  BLOB    NOT NULL,
    state        BLOB    NOT NULL,
    PRIMARY KEY (chain_id, height)
);
CREATE TABLE IF NOT EXISTS metas (
    chain_id     BLOB    NOT NULL REFERENCES chains (chain_id),
    from_height  INTEGER NOT NULL CHECK (from_height >= 0),
    meta         BLOB    NOT NULL,
    PRIMARY KEY (chain_id, from_height)
);
PRAGMA user_version = {SCHEMA_VERSION};
COMMIT;
"""

_SIGNED_SCHEMA = """
CREATE TABLE IF NOT EXISTS signed (
    chain_id     BLOB    NOT NULL CHECK (length(chain_id) = 32),
    height       INTEGER NOT NULL CHECK (height >= 0),
    version      INTEGER NOT NULL CHECK (version >= -1),
    hash         BLOB    NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (chain_id, height, version)
) WITHOUT ROWID;
"""
"""The block a node signed at each height of each chain: per roles version for a member, under
`ANY_VERSION` for an archive node (one block per height, whatever the roles). Kept apart from `chains`,
since a genesis is signed before its chain exists here. Created IF NOT EXISTS on every open, so a
schema-1 file written before it gains the table without a version change."""

ANY_VERSION = -1
"""The `version` of what an archive node signed: it signs one block per height across role versions."""


def _check_chain_id(chain_id: bytes) -> None:
    if not isinstance(chain_id, bytes) or len(chain_id) != HASH_SIZE:
        raise TypeError(f"a chain id is {HASH_SIZE} bytes")


def _check_bytes(value: bytes, name: str) -> None:
    if not isinstance(value, bytes):
        raise TypeError(f"{name} must be bytes, got {type(value).__name__}")


@dataclass
class _QueuedWrite:
    """One write waiting for the next group commit, and the awaitable that reports its outcome."""

    run: Callable[[sqlite3.Connection], None]
    future: asyncio.Future[None]


class ChainStore:
    """DLE chains in one SQLite file. Safe to use from several threads and processes."""

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 10_000) -> None:
        self.path = Path(path)
        self._busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        # Writes waiting for the group commit, per event loop (a store may serve loops in several threads).
        self._queued: dict[asyncio.AbstractEventLoop, list[_QueuedWrite]] = {}
        self._queued_lock = threading.Lock()
        self._committing: set[asyncio.AbstractEventLoop] = set()
        self._commit_db: sqlite3.Connection | None = None
        self._commit_pid = 0
        # Decoded blocks and states by their exact stored bytes (see `_decode_row`).
        self._decoded: dict[bytes, Block | State] = {}
        self._decoded_lock = threading.Lock()
        self._create()

    # -- connections ------------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        # A connection inherited through fork() shares file locks with the parent: open a fresh one.
        if db is None or getattr(self._local, "pid", None) != os.getpid():
            # isolation_level=None: no implicit transactions; every write says BEGIN IMMEDIATE itself.
            db = sqlite3.connect(self.path, isolation_level=None, timeout=self._busy_timeout_ms / 1000)
            db.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
            # WAL is a property of the file (persists); synchronous and foreign_keys are per connection.
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")
            db.execute("PRAGMA foreign_keys = ON")
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
            # Also when COMMIT itself fails (disk full, I/O error): the transaction must not stay open on
            # this connection, or the next BEGIN would fail and the caller would think it had written.
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        # One read transaction per multi-statement read, so a concurrent append or rollback cannot
        # slip in between reading the head pointer and reading the head block.
        db = self._connection()
        db.execute("BEGIN")
        try:
            yield db
        finally:
            if db.in_transaction:
                db.execute("ROLLBACK")

    def _create(self) -> None:
        db = self._connection()
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version == 0:
            # Every statement is IF NOT EXISTS and the script holds the write lock: racing openers agree.
            db.executescript(_SCHEMA)
        elif version != SCHEMA_VERSION:
            raise SchemaError(f"{self.path} has chain-store schema {version}; this code reads {SCHEMA_VERSION}")
        db.executescript(_SIGNED_SCHEMA)

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end), and the group
        commit's once no batch is in flight."""
        if self._commit_db is not None and self._commit_pid == os.getpid() and not self._committing:
            self._commit_db.close()
            self._commit_db = None
        self._close_thread_connection()

    def _close_thread_connection(self) -> None:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is not None and getattr(self._local, "pid", None) == os.getpid():
            db.close()
        self._local.db = None

    def __enter__(self) -> ChainStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- group commit -----------------------------------------------------------------------------

    async def _submit_write(self, run: Callable[[sqlite3.Connection], None]) -> None:
        loop = asyncio.get_running_loop()
        write = _QueuedWrite(run, loop.create_future())
        with self._queued_lock:
            queued = self._queued.setdefault(loop, [])
            queued.append(write)
            start = len(queued) == 1 and loop not in self._committing
            if start:
                self._committing.add(loop)
        if start:
            # After the callbacks ready now: whatever they append joins this batch.
            loop.call_soon(lambda: loop.create_task(self._commit_batches(loop)))
        await write.future

    def _group_connection(self) -> sqlite3.Connection:
        # The group commit's own connection: statements on the loop's thread, COMMIT in an executor
        # thread, never both at once (one batch in flight per store), hence check_same_thread=False.
        if self._commit_db is None or self._commit_pid != os.getpid():
            db = sqlite3.connect(
                self.path, isolation_level=None, timeout=self._busy_timeout_ms / 1000, check_same_thread=False
            )
            db.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
            db.execute("PRAGMA synchronous = FULL")
            db.execute("PRAGMA foreign_keys = ON")
            self._commit_db, self._commit_pid = db, os.getpid()
        return self._commit_db

    async def _commit_batches(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            while True:
                with self._queued_lock:
                    batch = self._queued.pop(loop, [])
                    if not batch:
                        self._committing.discard(loop)
                        return
                await self._commit_batch(batch)
        except BaseException:
            with self._queued_lock:
                self._committing.discard(loop)
            raise

    async def _commit_batch(self, batch: list[_QueuedWrite]) -> None:
        outcomes: list[BaseException | None] = []
        db = self._group_connection()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                for write in batch:
                    # A savepoint per write: a refused append is undone alone, the batch goes on.
                    db.execute("SAVEPOINT one_write")
                    try:
                        write.run(db)
                    except Exception as error:
                        db.execute("ROLLBACK TO one_write")
                        outcomes.append(error)
                    else:
                        outcomes.append(None)
                    db.execute("RELEASE one_write")
                commit = asyncio.get_running_loop().run_in_executor(None, db.execute, "COMMIT")
                await commit
            except BaseException:
                if "commit" in locals() and not commit.done():
                    raise  # cancelled while the COMMIT runs: it ends on its own; the connection is its
                # Also when COMMIT itself fails (disk full, I/O error): nothing of the batch was written,
                # and the transaction must not stay open on this connection.
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except Exception as error:
            outcomes = [error] * len(batch)
        for write, outcome in zip(batch, outcomes, strict=True):
            if write.future.done():
                continue  # the caller was cancelled; the write happened (or not) all the same
            if outcome is None:
                write.future.set_result(None)
            else:
                write.future.set_exception(outcome)

    # -- writes -----------------------------------------------------------------------------------

    def create_chain(self, genesis: Block, state: State, certificate: bytes, meta: bytes) -> None:
        """Store a new chain from its genesis block, the state after it, the certificate that made it
        final and its first meta (applying from height 0). Raises `NotGenesis`, `StateMismatch`,
        `ChainExists`; nothing is written then."""
        encoded = self._prepare(genesis, state, certificate)
        _check_bytes(meta, "meta")
        header = genesis.header
        if header.height != 0:
            raise NotGenesis(f"a genesis block has height 0, got {header.height}")
        if header.parent_hash != _ZERO_HASH:
            raise NotGenesis("a genesis block's parent hash is 32 zero bytes")
        with self._write() as db:
            if db.execute("SELECT 1 FROM chains WHERE chain_id = ?", (header.chain_id,)).fetchone() is not None:
                raise ChainExists(f"chain 0x{header.chain_id.hex()} is already in the store")
            db.execute(
                "INSERT INTO chains (chain_id, head_height, head_hash) VALUES (?, 0, ?)",
                (header.chain_id, genesis.hash),
            )
            self._insert_block(db, genesis, encoded, certificate)
            db.execute("INSERT INTO metas (chain_id, from_height, meta) VALUES (?, 0, ?)", (header.chain_id, meta))

    def append(self, chain_id: bytes, block: Block, state: State, certificate: bytes) -> None:
        """Make `block` the chain's new head, with the state after it and its certificate — all three
        and the head pointer in one transaction, durable when this returns. Raises `WrongChain`,
        `StateMismatch`, `UnknownChain`, `NotExtendingHead`; nothing is written then."""
        encoded = self._prepare_append(chain_id, block, state, certificate)
        with self._write() as db:
            self._append_in(db, chain_id, block, encoded, certificate)

    async def append_async(self, chain_id: bytes, block: Block, state: State, certificate: bytes) -> None:
        """`append`, group-committed: completes once the block is durable, after one fsync shared with
        every append queued beside it (from any chain). Same checks, same errors, same guarantee."""
        encoded = self._prepare_append(chain_id, block, state, certificate)
        await self._submit_write(lambda db: self._append_in(db, chain_id, block, encoded, certificate))

    def _prepare_append(self, chain_id: bytes, block: Block, state: State, certificate: bytes) -> tuple[bytes, bytes]:
        _check_chain_id(chain_id)
        encoded = self._prepare(block, state, certificate)
        if block.header.chain_id != chain_id:
            raise WrongChain(f"the block is of chain 0x{block.header.chain_id.hex()}, not 0x{chain_id.hex()}")
        return encoded

    def _append_in(
        self, db: sqlite3.Connection, chain_id: bytes, block: Block, encoded: tuple[bytes, bytes], certificate: bytes
    ) -> None:
        header = block.header
        head_height, head_hash = self._head_pointer(db, chain_id)
        if header.height != head_height + 1:
            raise NotExtendingHead(
                chain_id, head_height, head_hash, f"the block's height {header.height} is not {head_height + 1}"
            )
        if header.parent_hash != head_hash:
            raise NotExtendingHead(
                chain_id, head_height, head_hash, f"the block's parent is 0x{header.parent_hash.hex()}"
            )
        self._insert_block(db, block, encoded, certificate)
        db.execute(
            "UPDATE chains SET head_height = ?, head_hash = ? WHERE chain_id = ?",
            (header.height, block.hash, chain_id),
        )

    def rollback(self, chain_id: bytes, height: int) -> list[StoredBlock]:
        """Remove every block above `height` and return them, lowest first; `height` becomes the head.
        A height at or above the head removes nothing. Raises `InvalidRollback` below 0, `UnknownChain`,
        `CorruptStore` if a removed block does not decode (then nothing is removed).

        Metas that would apply only above the new head collapse onto the next block: the newest one is
        kept, from `height + 1` (a role set decided after the rolled-back blocks is still the one in
        force; the dissolution rule rolls back and re-validates under the new group)."""
        _check_chain_id(chain_id)
        if not isinstance(height, int) or height < 0:
            raise InvalidRollback(f"cannot roll back below the genesis block (height {height})")
        with self._write() as db:
            head_height, _ = self._head_pointer(db, chain_id)
            if height >= head_height:
                return []
            rows = db.execute(
                "SELECT height, hash, state_root, block, certificate, state FROM blocks"
                " WHERE chain_id = ? AND height > ? ORDER BY height",
                (chain_id, height),
            ).fetchall()
            removed = [self._decode_row(chain_id, *row) for row in rows]
            new_head = db.execute(
                "SELECT hash FROM blocks WHERE chain_id = ? AND height = ?", (chain_id, height)
            ).fetchone()
            if new_head is None:
                raise CorruptStore([f"chain 0x{chain_id.hex()}: no block at height {height} below the head"])
            db.execute("DELETE FROM blocks WHERE chain_id = ? AND height > ?", (chain_id, height))
            db.execute(
                "UPDATE chains SET head_height = ?, head_hash = ? WHERE chain_id = ?",
                (height, bytes(new_head[0]), chain_id),
            )
            latest = db.execute(
                "SELECT from_height, meta FROM metas WHERE chain_id = ? ORDER BY from_height DESC LIMIT 1", (chain_id,)
            ).fetchone()
            if latest is not None and latest[0] > height + 1:
                db.execute("DELETE FROM metas WHERE chain_id = ? AND from_height >= ?", (chain_id, height + 1))
                db.execute(
                    "INSERT INTO metas (chain_id, from_height, meta) VALUES (?, ?, ?)",
                    (chain_id, height + 1, bytes(latest[1])),
                )
        return removed

    def set_meta(self, chain_id: bytes, meta: bytes, *, from_height: int | None = None) -> int:
        """Record `meta` as the chain's meta from block `from_height` on (default: the next block,
        head + 1) and return that height. Metas only move forward: `from_height` must be at least the
        latest meta's (equal replaces it) and at most head + 1, else `MetaOrderError`."""
        _check_chain_id(chain_id)
        _check_bytes(meta, "meta")
        with self._write() as db:
            head_height, _ = self._head_pointer(db, chain_id)
            start = head_height + 1 if from_height is None else from_height
            latest = db.execute("SELECT max(from_height) FROM metas WHERE chain_id = ?", (chain_id,)).fetchone()[0]
            if not isinstance(start, int) or start > head_height + 1 or (latest is not None and start < latest):
                raise MetaOrderError(
                    f"chain 0x{chain_id.hex()}: a meta from height {start} must be between the latest meta's"
                    f" {latest} and the next block {head_height + 1}"
                )
            db.execute(
                "INSERT OR REPLACE INTO metas (chain_id, from_height, meta) VALUES (?, ?, ?)",
                (chain_id, start, meta),
            )
        return start

    async def sign_once(self, chain_id: bytes, height: int, block_hash: bytes, version: int = ANY_VERSION) -> bytes:
        """Record that this node signs `block_hash` at `height` of the chain (under roles `version`),
        durably (group-committed), unless it signed another block there: returns the hash it signed
        there (the new one, or the earlier one, which stays). Sign only when the answer is `block_hash`."""
        _check_chain_id(chain_id)
        found: list[bytes] = []

        def run(db: sqlite3.Connection) -> None:
            where = (chain_id, height, version)
            db.execute("INSERT OR IGNORE INTO signed (chain_id, height, version, hash) VALUES (?, ?, ?, ?)",
                       (*where, block_hash))  # fmt: skip
            row = db.execute(
                "SELECT hash FROM signed WHERE chain_id = ? AND height = ? AND version = ?", where
            ).fetchone()
            found.append(bytes(row[0]))

        await self._submit_write(run)
        return found[0]

    def release_signed(self, chain_id: bytes, height: int, block_hash: bytes, version: int = ANY_VERSION) -> bool:
        """Forget that this node signed `block_hash` at `height` (it can never become final: another
        archive node signed its rejection). False when another block, or none, is recorded there."""
        _check_chain_id(chain_id)
        with self._write() as db:
            cursor = db.execute(
                "DELETE FROM signed WHERE chain_id = ? AND height = ? AND version = ? AND hash = ?",
                (chain_id, height, version, block_hash),
            )
            return cursor.rowcount > 0

    def signed(self, chain_id: bytes, height: int, version: int = ANY_VERSION) -> bytes | None:
        """The block this node signed at `height` of the chain (under roles `version`), if any."""
        _check_chain_id(chain_id)
        row = (
            self._connection()
            .execute(
                "SELECT hash FROM signed WHERE chain_id = ? AND height = ? AND version = ?", (chain_id, height, version)
            )
            .fetchone()
        )
        return None if row is None else bytes(row[0])

    # -- reads ------------------------------------------------------------------------------------

    def chains(self) -> list[bytes]:
        """Every chain id in the store, ascending."""
        rows = self._connection().execute("SELECT chain_id FROM chains ORDER BY chain_id").fetchall()
        return [bytes(row[0]) for row in rows]

    def height(self, chain_id: bytes) -> int:
        """The head's height."""
        _check_chain_id(chain_id)
        return self._head_pointer(self._connection(), chain_id)[0]

    def head(self, chain_id: bytes) -> StoredBlock:
        """The head block, its certificate and the state after it."""
        _check_chain_id(chain_id)
        # One statement reads the pointer and the row it points to from one snapshot, so it needs no
        # explicit read transaction; members read the head several times per block.
        row = (
            self._connection()
            .execute(
                "SELECT b.height, b.hash, b.state_root, b.block, b.certificate, b.state FROM chains c"
                " JOIN blocks b ON b.chain_id = c.chain_id AND b.height = c.head_height WHERE c.chain_id = ?",
                (chain_id,),
            )
            .fetchone()
        )
        if row is not None:
            return self._decode_row(chain_id, *row)
        with self._read() as db:  # no such chain, or no block under its head: say which
            head_height, _ = self._head_pointer(db, chain_id)
            return self._load(db, chain_id, head_height, head_height)

    def block(self, chain_id: bytes, height: int) -> StoredBlock:
        """The block at `height`; `UnknownBlock` above the head."""
        _check_chain_id(chain_id)
        with self._read() as db:
            head_height, _ = self._head_pointer(db, chain_id)
            return self._load(db, chain_id, height, head_height)

    def blocks(self, chain_id: bytes, start: int = 0, stop: int | None = None) -> list[StoredBlock]:
        """The blocks with `start` <= height < `stop` (default: to the head), lowest first — what a
        member that fell behind, or a new witness, needs to catch up."""
        _check_chain_id(chain_id)
        with self._read() as db:
            head_height, _ = self._head_pointer(db, chain_id)
            end = head_height + 1 if stop is None else min(stop, head_height + 1)
            rows = db.execute(
                "SELECT height, hash, state_root, block, certificate, state FROM blocks"
                " WHERE chain_id = ? AND height >= ? AND height < ? ORDER BY height",
                (chain_id, max(start, 0), end),
            ).fetchall()
        return [self._decode_row(chain_id, *row) for row in rows]

    def state(self, chain_id: bytes, height: int) -> State:
        """The state after the block at `height`."""
        return self.block(chain_id, height).state

    def meta(self, chain_id: bytes, height: int | None = None) -> bytes:
        """The meta in force for the block at `height` (default: the latest, i.e. for the next block)."""
        _check_chain_id(chain_id)
        if height is None:
            # One statement; a meta row exists only for a stored chain (a foreign key), so a hit needs no
            # look at the chains table. A miss takes the path below to tell an unknown chain.
            found = (
                self._connection()
                .execute("SELECT meta FROM metas WHERE chain_id = ? ORDER BY from_height DESC LIMIT 1", (chain_id,))
                .fetchone()
            )
            if found is not None:
                return bytes(found[0])
        with self._read() as db:
            self._head_pointer(db, chain_id)
            if height is None:
                row = db.execute(
                    "SELECT meta FROM metas WHERE chain_id = ? ORDER BY from_height DESC LIMIT 1", (chain_id,)
                ).fetchone()
            else:
                row = db.execute(
                    "SELECT meta FROM metas WHERE chain_id = ? AND from_height <= ? ORDER BY from_height DESC LIMIT 1",
                    (chain_id, height),
                ).fetchone()
        if row is None:
            raise CorruptStore([f"chain 0x{chain_id.hex()}: no meta in force at height {height}"])
        return bytes(row[0])

    def meta_history(self, chain_id: bytes) -> list[tuple[int, bytes]]:
        """Every meta as (first height it applies to, meta), oldest first."""
        _check_chain_id(chain_id)
        with self._read() as db:
            self._head_pointer(db, chain_id)
            rows = db.execute(
                "SELECT from_height, meta FROM metas WHERE chain_id = ? ORDER BY from_height", (chain_id,)
            ).fetchall()
        return [(int(start), bytes(meta)) for start, meta in rows]

    def integrity_check(self, chain_id: bytes | None = None) -> None:
        """Check the file (SQLite's integrity and foreign-key checks) and every chain (or one): heights
        0..head without a gap, the head pointer on the last block, each block decoding to its row's hash,
        height and chain, linked to its parent, each state decoding to the block's state root, a meta
        from height 0 and none beyond the next block. Raises `CorruptStore` with every finding."""
        problems: list[str] = []
        with self._read() as db:
            if chain_id is None:
                verdict = [str(row[0]) for row in db.execute("PRAGMA integrity_check").fetchall()]
                if verdict != ["ok"]:
                    problems.extend(f"sqlite: {line}" for line in verdict)
                for row in db.execute("PRAGMA foreign_key_check").fetchall():
                    problems.append(f"sqlite: a row of {row[0]} refers to a missing {row[2]}")
                ids = [bytes(row[0]) for row in db.execute("SELECT chain_id FROM chains ORDER BY chain_id")]
            else:
                _check_chain_id(chain_id)
                self._head_pointer(db, chain_id)
                ids = [chain_id]
            for one in ids:
                problems.extend(self._check_chain(db, one))
        if problems:
            raise CorruptStore(problems)

    # -- internals --------------------------------------------------------------------------------

    def _prepare(self, block: Block, state: State, certificate: bytes) -> tuple[bytes, bytes]:
        # Everything that needs no database is checked and encoded before the write lock is taken.
        if not isinstance(block, Block):
            raise TypeError(f"block must be a dle_vm Block, got {type(block).__name__}")
        if not isinstance(state, State):
            raise TypeError(f"state must be a dle_vm State, got {type(state).__name__}")
        _check_bytes(certificate, "certificate")
        if state.root != block.header.state_root:
            raise StateMismatch(
                f"block {block.header.height} claims state root 0x{block.header.state_root.hex()},"
                f" the state given with it has 0x{state.root.hex()}"
            )
        encoded = block.encode(), state.encode()
        # These bytes decode to exactly these objects (one canonical encoding, round trip tested in
        # dle_vm), so reading them back later needs no decode; damaged bytes are other bytes.
        self._remember(encoded[0], block)
        self._remember(encoded[1], state)
        return encoded

    @staticmethod
    def _insert_block(db: sqlite3.Connection, block: Block, encoded: tuple[bytes, bytes], certificate: bytes) -> None:
        header = block.header
        db.execute(
            "INSERT INTO blocks (chain_id, height, hash, parent_hash, state_root, block, certificate, state)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                header.chain_id,
                header.height,
                block.hash,
                header.parent_hash,
                header.state_root,
                encoded[0],
                certificate,
                encoded[1],
            ),
        )

    @staticmethod
    def _head_pointer(db: sqlite3.Connection, chain_id: bytes) -> tuple[int, bytes]:
        row = db.execute("SELECT head_height, head_hash FROM chains WHERE chain_id = ?", (chain_id,)).fetchone()
        if row is None:
            raise UnknownChain(chain_id)
        return int(row[0]), bytes(row[1])

    def _load(self, db: sqlite3.Connection, chain_id: bytes, height: int, head_height: int) -> StoredBlock:
        if not isinstance(height, int) or not 0 <= height <= head_height:
            raise UnknownBlock(chain_id, height, head_height)
        row = db.execute(
            "SELECT height, hash, state_root, block, certificate, state FROM blocks WHERE chain_id = ? AND height = ?",
            (chain_id, height),
        ).fetchone()
        if row is None:
            raise CorruptStore([f"chain 0x{chain_id.hex()}: no block at height {height} below the head {head_height}"])
        return self._decode_row(chain_id, *row)

    _DECODED_KEPT = 1024
    """Decoded blocks and states kept per store: a few per chain in flight is what the members reread."""

    def _remember(self, data: bytes, value: Block | State) -> None:
        with self._decoded_lock:
            self._decoded[data] = value
            if len(self._decoded) > self._DECODED_KEPT:
                del self._decoded[next(iter(self._decoded))]

    def _decoded_block(self, data: bytes) -> Block:
        # Decoding is a pure function of the bytes: the same bytes read again give the same block, so
        # an exact repeat is answered from memory. Any other bytes (a damaged row) are decoded afresh,
        # and every check below runs on every read either way.
        known = self._decoded.get(data)
        if isinstance(known, Block):
            return known
        block = Block.decode(data)
        self._remember(data, block)
        return block

    def _decoded_state(self, data: bytes) -> State:
        known = self._decoded.get(data)
        if isinstance(known, State):
            return known
        state = State.decode(data)
        self._remember(data, state)
        return state

    def _decode_row(
        self,
        chain_id: bytes,
        height: int,
        hash_: bytes,
        state_root: bytes,
        block: bytes,
        certificate: bytes,
        state: bytes,
    ) -> StoredBlock:
        where = f"chain 0x{chain_id.hex()} height {height}"
        try:
            decoded = self._decoded_block(bytes(block))
        except EncodingError as error:
            raise CorruptStore([f"{where}: the block does not decode ({error})"]) from error
        header = decoded.header
        if decoded.hash != bytes(hash_) or header.height != height or header.chain_id != chain_id:
            raise CorruptStore([f"{where}: the stored block is another block (0x{decoded.hash.hex()})"])
        try:
            decoded_state = self._decoded_state(bytes(state))
        except EncodingError as error:
            raise CorruptStore([f"{where}: the state does not decode ({error})"]) from error
        # The root costs a trie pass (~0.3 ms for a note); acting on a wrong pre-state would make an
        # honest member refuse a valid block, which is slashable — worth checking on every read.
        if decoded_state.root != header.state_root or bytes(state_root) != header.state_root:
            raise CorruptStore([f"{where}: the stored state's root is not the block's state root"])
        return StoredBlock(block=decoded, certificate=bytes(certificate), state=decoded_state)

    def _check_chain(self, db: sqlite3.Connection, chain_id: bytes) -> list[str]:
        problems: list[str] = []
        name = f"chain 0x{chain_id.hex()}"
        head_height, head_hash = self._head_pointer(db, chain_id)
        expected_height = 0
        parent = _ZERO_HASH
        last_hash: bytes | None = None
        rows = db.execute(
            "SELECT height, hash, parent_hash, state_root, block, certificate, state FROM blocks"
            " WHERE chain_id = ? ORDER BY height",
            (chain_id,),
        )
        for height, hash_, parent_hash, state_root, block, certificate, state in rows:
            if height != expected_height:
                problems.append(f"{name}: height {expected_height} is missing (next stored: {height})")
                expected_height = height
            try:
                stored = self._decode_row(chain_id, height, hash_, state_root, block, certificate, state)
            except CorruptStore as error:
                problems.extend(error.problems)
                parent = bytes(hash_)
            else:
                if stored.block.header.parent_hash != parent or bytes(parent_hash) != parent:
                    problems.append(f"{name} height {height}: its parent hash is not the previous block's hash")
                parent = stored.hash
            last_hash = bytes(hash_)
            expected_height += 1
        if expected_height - 1 != head_height:
            problems.append(f"{name}: the head pointer says {head_height}, the last block is {expected_height - 1}")
        elif last_hash != head_hash:
            problems.append(f"{name}: the head pointer's hash is not the head block's")
        metas = [int(row[0]) for row in db.execute("SELECT from_height FROM metas WHERE chain_id = ?", (chain_id,))]
        if 0 not in metas:
            problems.append(f"{name}: no meta from height 0")
        if any(start > head_height + 1 for start in metas):
            problems.append(f"{name}: a meta applies only beyond the next block")
        return problems
