"""The PostgreSQL mailbox, on a real server: the SQLite mailbox's contract (store/fetch/acknowledge,
idempotence, limits, expiry, accounting), concurrent writers from threads and processes racing the
limit check, reconnection, and durability across a SIGKILL in the middle of writes."""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import os
import random
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
from eth_utils.address import to_checksum_address
from pg_fixtures import pg_schema, postgres_dsn  # noqa: F401
from psycopg import sql

from offchain.si.mailbox import Mailbox
from offchain.si.pgmailbox import (
    MailboxFull,
    MailboxLimits,
    MailboxUnavailable,
    MessageIdConflict,
    PgMailbox,
    check_schema_name,
)

ALICE = to_checksum_address("0x" + "a1" * 20)
BOB = to_checksum_address("0x" + "b2" * 20)
ROOT = Path(__file__).resolve().parent.parent
SMALL = MailboxLimits(max_bytes=10_000, max_messages=5, max_age_seconds=100)


def mid(n: int) -> bytes:
    return n.to_bytes(16, "big")


@pytest.fixture
def box(postgres_dsn: str, pg_schema: str) -> PgMailbox:  # noqa: F811
    return PgMailbox(postgres_dsn, SMALL, schema=pg_schema)


def test_same_public_api_as_the_sqlite_mailbox() -> None:
    def public(cls: type) -> dict[str, inspect.Signature]:
        return {
            name: inspect.signature(getattr(cls, name))
            for name in dir(cls)
            if not name.startswith("_") and callable(getattr(cls, name))
        }

    sqlite_api, pg_api = public(Mailbox), public(PgMailbox)
    for name in ("store", "fetch", "acknowledge", "expire", "usage", "storage_byte_seconds", "close"):
        assert list(pg_api[name].parameters) == list(sqlite_api[name].parameters), name
        assert pg_api[name].return_annotation == sqlite_api[name].return_annotation, name


def test_commits_are_synchronous(box: PgMailbox) -> None:
    conn = box._connection()
    assert conn.execute("SHOW synchronous_commit").fetchone() not in {("off",), None}
    assert conn.autocommit  # reads never leave the session idle in a transaction


def test_schema_holds_nothing_about_the_sender(box: PgMailbox, pg_schema: str) -> None:  # noqa: F811
    rows = (
        box._connection()
        .execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s",
            (pg_schema, "mailbox_messages"),
        )
        .fetchall()
    )
    assert {r[0] for r in rows} == {"seq", "recipient", "message_id", "blob", "size", "stored_at"}


def test_store_fetch_acknowledge(box: PgMailbox) -> None:
    assert box.store(ALICE, mid(1), b"one", now=10)
    assert box.store(BOB, mid(1), b"bob's", now=11)  # ids are per recipient
    assert box.store(ALICE.lower(), mid(2), b"two", now=12)  # address spelling does not matter
    got = box.fetch(ALICE)
    assert [(m.message_id, m.blob, m.size, m.stored_at, m.recipient) for m in got] == [
        (mid(1), b"one", 3, 10, ALICE),
        (mid(2), b"two", 3, 12, ALICE),
    ]
    assert [m.message_id for m in box.fetch(ALICE, limit=1)] == [mid(1)]
    assert box.fetch(ALICE, limit=0) == []
    assert len(box.fetch(ALICE)) == 2  # fetch removes nothing: only the acknowledgement does
    removed = box.acknowledge(ALICE, [mid(1), mid(1), mid(99)], now=20)
    assert [(r.message_id, r.byte_seconds, r.expired) for r in removed] == [(mid(1), 3 * 10, False)]
    assert [m.message_id for m in box.fetch(ALICE)] == [mid(2)]
    assert box.acknowledge(ALICE, [mid(1)], now=21) == []  # a repeated ack is harmless
    assert box.acknowledge(BOB, [mid(2)], now=21) == []  # one cannot acknowledge another's mail
    assert box.acknowledge(to_checksum_address("0x" + "c3" * 20), [mid(1)], now=21) == []  # never had mail
    assert box.acknowledge(ALICE, [], now=21) == []
    assert box.usage(ALICE) == (1, 3)
    assert box.usage(BOB) == (1, 5)
    assert box.integrity_check() == "ok"


def test_acknowledge_returns_the_clients_order(box: PgMailbox) -> None:
    for n in range(4):
        box.store(ALICE, mid(n), bytes([n + 1]) * (n + 1), now=n)
    removed = box.acknowledge(ALICE, [mid(3), mid(0), mid(2)], now=10)
    assert [r.message_id for r in removed] == [mid(3), mid(0), mid(2)]
    assert [m.message_id for m in box.fetch(ALICE)] == [mid(1)]


def test_oldest_first_follows_arrival_not_clock(box: PgMailbox) -> None:
    box.store(ALICE, mid(1), b"a", now=50)
    box.store(ALICE, mid(2), b"b", now=40)  # a clock step back does not reorder the mailbox
    assert [m.message_id for m in box.fetch(ALICE)] == [mid(1), mid(2)]


def test_duplicate_store_is_idempotent(box: PgMailbox) -> None:
    assert box.store(ALICE, mid(1), b"same", now=1)
    assert not box.store(ALICE, mid(1), b"same", now=2)
    assert len(box.fetch(ALICE)) == 1
    assert box.fetch(ALICE)[0].stored_at == 1
    assert box.usage(ALICE) == (1, 4)
    with pytest.raises(MessageIdConflict):
        box.store(ALICE, mid(1), b"other", now=3)
    assert box.fetch(ALICE)[0].blob == b"same"


def test_count_limit(box: PgMailbox) -> None:
    for n in range(5):
        box.store(ALICE, mid(n), b"m", now=n)
    with pytest.raises(MailboxFull):
        box.store(ALICE, mid(5), b"m", now=5)
    assert box.usage(ALICE) == (5, 5)
    assert not box.store(ALICE, mid(4), b"m", now=6)  # a retry of a kept message succeeds when full
    box.store(BOB, mid(0), b"m", now=6)  # limits are per recipient
    box.acknowledge(ALICE, [mid(0)], now=7)
    assert box.store(ALICE, mid(5), b"m", now=8)


def test_byte_limit_writes_nothing(box: PgMailbox) -> None:
    box.store(ALICE, mid(1), b"x" * 6_000, now=0)
    with pytest.raises(MailboxFull):
        box.store(ALICE, mid(2), b"x" * 4_001, now=0)
    assert box.usage(ALICE) == (1, 6_000)
    assert [m.message_id for m in box.fetch(ALICE)] == [mid(1)]
    assert box.store(ALICE, mid(3), b"x" * 4_000, now=0)  # exactly at the limit is allowed
    with pytest.raises(MailboxFull):
        box.store(BOB, mid(1), b"x" * 10_001, now=0)
    assert box.usage(BOB) == (0, 0)
    assert box.integrity_check() == "ok"


def test_bad_inputs(box: PgMailbox, postgres_dsn: str) -> None:  # noqa: F811
    with pytest.raises(ValueError):
        box.store(ALICE, b"", b"x")
    with pytest.raises(ValueError):
        box.store(ALICE, b"i" * 33, b"x")
    with pytest.raises(ValueError):
        box.store(ALICE, mid(1), b"")
    with pytest.raises(ValueError):
        box.store("not an address", mid(1), b"x")
    with pytest.raises(ValueError):
        PgMailbox(postgres_dsn, schema='x"; DROP TABLE y; --')
    with pytest.raises(ValueError):
        check_schema_name("Upper")


def test_expire_bills_up_to_max_age(box: PgMailbox) -> None:
    box.store(ALICE, mid(1), b"a" * 10, now=0)
    box.store(BOB, mid(2), b"b" * 20, now=50)
    box.store(ALICE, mid(3), b"c" * 30, now=120)
    assert box.expire(now=100) == []  # age exactly max_age: kept
    removed = box.expire(now=175)  # mid(1) is 175 s old, mid(2) 125 s, mid(3) 55 s
    assert [(r.recipient, r.message_id, r.removed_at, r.expired) for r in removed] == [
        (ALICE, mid(1), 100, True),
        (BOB, mid(2), 150, True),
    ]
    assert [r.byte_seconds for r in removed] == [10 * 100, 20 * 100]
    assert [m.message_id for m in box.fetch(ALICE)] == [mid(3)]
    assert box.fetch(BOB) == []
    assert box.integrity_check() == "ok"


def test_storage_byte_seconds(box: PgMailbox) -> None:
    assert box.storage_byte_seconds(ALICE, now=0) == 0
    box.store(ALICE, mid(1), b"a" * 100, now=10)
    box.store(ALICE, mid(2), b"b" * 50, now=20)
    assert box.storage_byte_seconds(ALICE, now=30) == 100 * 20 + 50 * 10
    box.acknowledge(ALICE, [mid(1)], now=40)
    assert box.storage_byte_seconds(ALICE, now=40) == 100 * 30 + 50 * 20
    assert box.storage_byte_seconds(ALICE, now=60) == 100 * 30 + 50 * 40  # only the pending one grows
    box.acknowledge(ALICE, [mid(2)], now=60)
    assert box.storage_byte_seconds(ALICE, now=1_000) == 100 * 30 + 50 * 40


def test_accounting_beyond_64_bits(postgres_dsn: str, pg_schema: str) -> None:  # noqa: F811
    # Σ size·stored_at passes 2^63 with large stores at far-future clocks: kept exactly (numeric).
    limits = MailboxLimits(max_bytes=10**9, max_messages=10, max_age_seconds=10**12)
    box = PgMailbox(postgres_dsn, limits, schema=pg_schema)
    far = 2**62
    box.store(ALICE, mid(1), b"x" * 1_000, now=far)
    box.store(ALICE, mid(2), b"y" * 3_000, now=far + 5)
    assert box.storage_byte_seconds(ALICE, now=far + 10) == 1_000 * 10 + 3_000 * 5
    box.acknowledge(ALICE, [mid(1)], now=far + 20)
    assert box.storage_byte_seconds(ALICE, now=far + 20) == 1_000 * 20 + 3_000 * 15


def test_matches_the_sqlite_mailbox_under_random_operations(
    postgres_dsn: str,  # noqa: F811
    pg_schema: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    # The same random operations on both mailboxes give the same answers, step by step.
    rng = random.Random(5)
    limits = MailboxLimits(max_bytes=5_000, max_messages=8, max_age_seconds=50)
    pg = PgMailbox(postgres_dsn, limits, schema=pg_schema)
    lite = Mailbox(tmp_path / "r.db", limits)
    people = [to_checksum_address(bytes([n]) * 20) for n in range(1, 4)]
    now = 0

    def outcome(box: PgMailbox | Mailbox, who: str, message_id: bytes, blob: bytes) -> object:
        try:
            return box.store(who, message_id, blob, now=now)
        except (MailboxFull, MessageIdConflict) as exc:
            return type(exc)

    for _ in range(250):
        now += rng.randrange(0, 5)
        who = rng.choice(people)
        op = rng.random()
        if op < 0.6:
            message_id, blob = mid(rng.randrange(30)), bytes([rng.randrange(4)]) * rng.randrange(1, 900)
            assert outcome(pg, who, message_id, blob) == outcome(lite, who, message_id, blob)
        elif op < 0.9:
            ids = [m.message_id for m in lite.fetch(who, limit=rng.randrange(1, 4))]
            assert pg.acknowledge(who, ids, now=now) == lite.acknowledge(who, ids, now=now)
        else:
            assert pg.expire(now=now) == lite.expire(now=now)
        for p in people:
            assert pg.fetch(p, limit=1_000) == lite.fetch(p, limit=1_000)
            assert pg.usage(p) == lite.usage(p)
            assert pg.storage_byte_seconds(p, now=now) == lite.storage_byte_seconds(p, now=now)
    assert pg.integrity_check() == "ok"


def _race(box: PgMailbox, recipient: str, writers: int) -> list[object]:
    """`writers` threads, each on its own connection, released together to store one message each."""
    barrier = threading.Barrier(writers, timeout=10)
    results: list[object] = []

    def writer(n: int) -> None:
        box._connection()  # connect before the barrier, so that all really start together
        barrier.wait()
        try:
            results.append(box.store(recipient, mid(n), b"m", now=1))
        except MailboxFull:
            results.append(MailboxFull)
        except BaseException as exc:  # surfaced by the caller's assertion
            results.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return results


def test_racing_writers_cannot_both_pass_the_limit(postgres_dsn: str, pg_schema: str) -> None:  # noqa: F811
    # One free slot, writers released together on their own connections: exactly one fits.
    box = PgMailbox(postgres_dsn, MailboxLimits(max_bytes=10**6, max_messages=1, max_age_seconds=10), schema=pg_schema)
    for round_ in range(15):
        recipient = to_checksum_address(round_.to_bytes(20, "big"))
        # The recipient's box row exists already (a first store for a new recipient is serialized
        # by the primary key anyway): what keeps the writers apart here is the row lock alone.
        box.store(recipient, b"earlier", b"e", now=0)
        box.acknowledge(recipient, [b"earlier"], now=0)
        results = _race(box, recipient, writers=2 + round_ % 3)
        assert results.count(True) == 1, results
        assert results.count(MailboxFull) == len(results) - 1, results
        assert box.usage(recipient) == (1, 1)
    assert box.integrity_check() == "ok"


_WRITER = r"""
import sys, time
from offchain.si.pgmailbox import MailboxFull, MailboxLimits, PgMailbox
dsn, schema, base, start_at = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
box = PgMailbox(dsn, MailboxLimits(max_bytes=10**9, max_messages=60, max_age_seconds=10), schema=schema)
box.fetch("0x" + "a1" * 20)  # connected before the start
time.sleep(max(0.0, start_at - time.time()))
stored = full = 0
for n in range(base, base + 50):
    try:
        stored += box.store("0x" + "a1" * 20, n.to_bytes(16, "big"), b"z" * 100, now=1)
    except MailboxFull:
        full += 1
print(stored, full, flush=True)
"""


def test_processes_share_the_mailbox_and_respect_limits(postgres_dsn: str, pg_schema: str) -> None:  # noqa: F811
    PgMailbox(postgres_dsn, schema=pg_schema)  # the schema exists before the writers race
    start_at = time.time() + 2.0
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, postgres_dsn, pg_schema, str(k * 1000), str(start_at)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        for k in range(3)
    ]
    outputs = []
    for child in children:
        out, _ = child.communicate(timeout=60)
        assert child.returncode == 0
        outputs.append(tuple(int(v) for v in out.split()))
    assert sum(stored for stored, _ in outputs) == 60
    assert sum(full for _, full in outputs) == 90
    box = PgMailbox(postgres_dsn, schema=pg_schema)
    assert box.usage(ALICE) == (60, 6_000)
    assert box.integrity_check() == "ok"


def test_a_dropped_connection_is_replaced(box: PgMailbox, postgres_dsn: str) -> None:  # noqa: F811
    box.store(ALICE, mid(1), b"before", now=1)
    pid = box._connection().info.backend_pid
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    # The dead connection is noticed before the transaction begins, so the store is retried on a new one.
    assert box.store(ALICE, mid(2), b"after", now=2)
    assert box._connection().info.backend_pid != pid
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (box._connection().info.backend_pid,))
    assert [m.blob for m in box.fetch(ALICE)] == [b"before", b"after"]


def test_unreachable_server_is_a_clear_error(pg_schema: str) -> None:  # noqa: F811
    with pytest.raises(MailboxUnavailable, match="cannot connect"):
        PgMailbox("postgresql://postgres:x@127.0.0.1:1/postgres", schema=pg_schema, connect_timeout=2)


def test_a_second_instance_sees_committed_messages(box: PgMailbox, postgres_dsn: str, pg_schema: str) -> None:  # noqa: F811
    box.store(ALICE, mid(1), b"kept", now=1)
    box.close()
    with PgMailbox(postgres_dsn, SMALL, schema=pg_schema) as other:
        assert [m.blob for m in other.fetch(ALICE)] == [b"kept"]


# -- crash test --------------------------------------------------------------------------------------

# The child stores as fast as it can, bodies up to 256 KiB, printing each id only after store() returned.
_CHILD = r"""
import hashlib, sys
from offchain.si.pgmailbox import MailboxLimits, PgMailbox
box = PgMailbox(sys.argv[1], MailboxLimits(max_bytes=10**12, max_messages=10**9, max_age_seconds=10**9),
                schema=sys.argv[2])
start = int(sys.argv[3])
for n in range(start, start + 10**6):
    mid = n.to_bytes(16, "big")
    size = 1 + int.from_bytes(hashlib.sha256(mid).digest()[:4], "big") % (256 * 1024)
    box.store("0x" + "a1" * 20, mid, hashlib.shake_256(mid).digest(size), now=n)
    print(n, flush=True)
"""


def _expected_blob(message_id: bytes) -> bytes:
    size = 1 + int.from_bytes(hashlib.sha256(message_id).digest()[:4], "big") % (256 * 1024)
    return hashlib.shake_256(message_id).digest(size)


def _run_and_kill(dsn: str, schema: str, start: int, wait_for: int, extra_delay: float) -> list[int]:
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, dsn, schema, str(start)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert child.stdout is not None
    fd = child.stdout.fileno()
    data = b""
    deadline = time.monotonic() + 30
    try:
        while data.count(b"\n") < wait_for and time.monotonic() < deadline:
            if select.select([fd], [], [], 1)[0]:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                data += chunk
        time.sleep(extra_delay)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    data += child.stdout.read()
    child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    return [int(line) for line in data.split(b"\n")[:-1]]  # a line cut by the kill is not a report


def test_sigkill_mid_write_loses_nothing_acknowledged(postgres_dsn: str, pg_schema: str) -> None:  # noqa: F811
    PgMailbox(postgres_dsn, schema=pg_schema)
    rng = random.Random(7)
    reported: set[int] = set()
    start = 0
    for round_ in range(3):
        got = _run_and_kill(
            postgres_dsn, pg_schema, start, wait_for=rng.randrange(5, 30), extra_delay=rng.random() / 20
        )
        assert got, "the child stored nothing before it was killed"
        reported.update(got)
        # A transaction the kill interrupted is rolled back by the server (or, if its COMMIT was already
        # sent, commits whole): every reported store is there, each row whole, counters equal to rows.
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            rows = conn.execute(
                sql.SQL("SELECT message_id, blob, size FROM {}.mailbox_messages ORDER BY seq").format(
                    sql.Identifier(pg_schema)
                )
            ).fetchall()
        stored = {int.from_bytes(r[0], "big") for r in rows}
        assert reported <= stored
        assert len(stored - reported) <= round_ + 1  # at most the store that committed before its print
        for message_id, blob, size in rows:
            assert size == len(blob)
            assert bytes(blob) == _expected_blob(bytes(message_id))
        box = PgMailbox(postgres_dsn, schema=pg_schema)
        assert box.integrity_check() == "ok"
        box.close()
        start = max(stored) + 1
    with contextlib.closing(PgMailbox(postgres_dsn, schema=pg_schema)) as box:
        assert {int.from_bytes(m.message_id, "big") for m in box.fetch(ALICE, limit=10**6)} >= reported
