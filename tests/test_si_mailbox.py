"""The recipient node's mailbox: store/fetch/acknowledge, idempotence, limits, expiry, storage
accounting, concurrency, and durability across a SIGKILL in the middle of writes."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import select
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from eth_utils.address import to_checksum_address

from offchain.si.mailbox import (
    Mailbox,
    MailboxFull,
    MailboxLimits,
    MessageIdConflict,
    message_id_of,
)

ALICE = to_checksum_address("0x" + "a1" * 20)
BOB = to_checksum_address("0x" + "b2" * 20)
ROOT = Path(__file__).resolve().parent.parent


def mid(n: int) -> bytes:
    return n.to_bytes(16, "big")


@pytest.fixture
def box(tmp_path: Path) -> Mailbox:
    return Mailbox(tmp_path / "mail.db", MailboxLimits(max_bytes=10_000, max_messages=5, max_age_seconds=100))


def test_pragmas_wal_and_full_sync(box: Mailbox) -> None:
    db = box._connection()
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000


def test_schema_holds_nothing_about_the_sender(box: Mailbox) -> None:
    columns = {row[1] for row in box._connection().execute("PRAGMA table_info(messages)")}
    assert columns == {"seq", "recipient", "message_id", "blob", "size", "stored_at"}


def test_store_fetch_acknowledge(box: Mailbox) -> None:
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
    # fetch removes nothing: only the acknowledgement does
    assert len(box.fetch(ALICE)) == 2
    removed = box.acknowledge(ALICE, [mid(1), mid(1), mid(99)], now=20)
    assert [(r.message_id, r.byte_seconds, r.expired) for r in removed] == [(mid(1), 3 * 10, False)]
    assert [m.message_id for m in box.fetch(ALICE)] == [mid(2)]
    assert box.acknowledge(ALICE, [mid(1)], now=21) == []  # a repeated ack is harmless
    assert box.acknowledge(BOB, [mid(2)], now=21) == []  # one cannot acknowledge another's mail
    assert box.usage(ALICE) == (1, 3)
    assert box.usage(BOB) == (1, 5)


def test_oldest_first_follows_arrival_not_clock(box: Mailbox) -> None:
    box.store(ALICE, mid(1), b"a", now=50)
    box.store(ALICE, mid(2), b"b", now=40)  # a clock step back does not reorder the mailbox
    assert [m.message_id for m in box.fetch(ALICE)] == [mid(1), mid(2)]


def test_duplicate_store_is_idempotent(box: Mailbox) -> None:
    assert box.store(ALICE, mid(1), b"same", now=1)
    assert not box.store(ALICE, mid(1), b"same", now=2)
    assert len(box.fetch(ALICE)) == 1
    assert box.fetch(ALICE)[0].stored_at == 1
    assert box.usage(ALICE) == (1, 4)
    with pytest.raises(MessageIdConflict):
        box.store(ALICE, mid(1), b"other", now=3)
    assert box.fetch(ALICE)[0].blob == b"same"


def test_message_id_of_is_content_hash() -> None:
    assert message_id_of(b"x") == message_id_of(b"x") != message_id_of(b"y")
    assert len(message_id_of(b"x")) == 32


def test_count_limit(box: Mailbox) -> None:
    for n in range(5):
        box.store(ALICE, mid(n), b"m", now=n)
    with pytest.raises(MailboxFull):
        box.store(ALICE, mid(5), b"m", now=5)
    assert box.usage(ALICE) == (5, 5)
    assert not box.store(ALICE, mid(4), b"m", now=6)  # a retry of a kept message succeeds when full
    box.store(BOB, mid(0), b"m", now=6)  # limits are per recipient
    box.acknowledge(ALICE, [mid(0)], now=7)
    assert box.store(ALICE, mid(5), b"m", now=8)


def test_byte_limit_writes_nothing(box: Mailbox) -> None:
    box.store(ALICE, mid(1), b"x" * 6_000, now=0)
    with pytest.raises(MailboxFull):
        box.store(ALICE, mid(2), b"x" * 4_001, now=0)
    assert box.usage(ALICE) == (1, 6_000)
    assert [m.message_id for m in box.fetch(ALICE)] == [mid(1)]
    assert box.store(ALICE, mid(3), b"x" * 4_000, now=0)  # exactly at the limit is allowed
    with pytest.raises(MailboxFull):
        box.store(BOB, mid(1), b"x" * 10_001, now=0)
    assert box.usage(BOB) == (0, 0)


def test_bad_inputs(box: Mailbox) -> None:
    with pytest.raises(ValueError):
        box.store(ALICE, b"", b"x")
    with pytest.raises(ValueError):
        box.store(ALICE, b"i" * 33, b"x")
    with pytest.raises(ValueError):
        box.store(ALICE, mid(1), b"")
    with pytest.raises(ValueError):
        box.store("not an address", mid(1), b"x")
    with pytest.raises(ValueError):
        MailboxLimits(max_bytes=0)


def test_expire_bills_up_to_max_age(box: Mailbox) -> None:
    box.store(ALICE, mid(1), b"a" * 10, now=0)
    box.store(BOB, mid(2), b"b" * 20, now=50)
    box.store(ALICE, mid(3), b"c" * 30, now=120)
    assert box.expire(now=100) == []  # age exactly max_age: kept
    removed = box.expire(now=175)  # mid(1) is 175 s old, mid(2) 125 s, mid(3) 55 s
    assert [(r.recipient, r.message_id, r.removed_at, r.expired) for r in removed] == [
        (ALICE, mid(1), 100, True),
        (BOB, mid(2), 150, True),
    ]
    # billed to the moment each reached the maximum age, not to the late expire() run
    assert [r.byte_seconds for r in removed] == [10 * 100, 20 * 100]
    assert [m.message_id for m in box.fetch(ALICE)] == [mid(3)]
    assert box.fetch(BOB) == []


def test_storage_byte_seconds(box: Mailbox) -> None:
    assert box.storage_byte_seconds(ALICE, now=0) == 0
    box.store(ALICE, mid(1), b"a" * 100, now=10)
    box.store(ALICE, mid(2), b"b" * 50, now=20)
    assert box.storage_byte_seconds(ALICE, now=30) == 100 * 20 + 50 * 10
    box.acknowledge(ALICE, [mid(1)], now=40)
    assert box.storage_byte_seconds(ALICE, now=40) == 100 * 30 + 50 * 20
    assert box.storage_byte_seconds(ALICE, now=60) == 100 * 30 + 50 * 40  # only the pending one grows
    box.acknowledge(ALICE, [mid(2)], now=60)
    assert box.storage_byte_seconds(ALICE, now=1_000) == 100 * 30 + 50 * 40


def test_accounting_matches_rows_under_random_operations(tmp_path: Path) -> None:
    rng = random.Random(5)
    limits = MailboxLimits(max_bytes=5_000, max_messages=8, max_age_seconds=50)
    box = Mailbox(tmp_path / "r.db", limits)
    people = [to_checksum_address(bytes([n]) * 20) for n in range(1, 4)]
    billed = dict.fromkeys(people, 0)  # byte·seconds of removed messages, recomputed here
    now = 0
    for _ in range(400):
        now += rng.randrange(0, 5)
        who = rng.choice(people)
        op = rng.random()
        if op < 0.6:
            with contextlib.suppress(MailboxFull, MessageIdConflict):
                box.store(who, mid(rng.randrange(30)), bytes([rng.randrange(4)]) * rng.randrange(1, 900), now=now)
        elif op < 0.9:
            ids = [m.message_id for m in box.fetch(who, limit=rng.randrange(1, 4))]
            for r in box.acknowledge(who, ids, now=now):
                billed[who] += r.byte_seconds
        else:
            for r in box.expire(now=now):
                billed[r.recipient] += r.byte_seconds
        for p in people:
            pending = box.fetch(p, limit=1_000)
            assert box.usage(p) == (len(pending), sum(m.size for m in pending))
            assert len(pending) <= limits.max_messages and sum(m.size for m in pending) <= limits.max_bytes
            expected = billed[p] + sum(m.size * (now - m.stored_at) for m in pending)
            assert box.storage_byte_seconds(p, now=now) == expected
    assert box.integrity_check() == "ok"


def test_threads_share_a_file_and_respect_limits(tmp_path: Path) -> None:
    box = Mailbox(tmp_path / "t.db", MailboxLimits(max_bytes=10**9, max_messages=150, max_age_seconds=10))
    errors: list[BaseException] = []
    full = [0]

    def worker(base: int) -> None:
        try:
            for n in range(50):
                try:
                    box.store(ALICE, mid(base * 1000 + n), b"z" * 100, now=1)
                except MailboxFull:
                    full[0] += 1
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert box.usage(ALICE) == (150, 15_000)
    assert full[0] == 50


def test_reopen_sees_committed_messages(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    with Mailbox(path) as first:
        first.store(ALICE, mid(1), b"kept", now=1)
    second = Mailbox(path)
    assert [m.blob for m in second.fetch(ALICE)] == [b"kept"]


# -- crash test --------------------------------------------------------------------------------------

# The child stores messages as fast as it can, with bodies up to 256 KiB so that a kill often lands in
# the middle of writing one, and prints each id only after store() has returned.
_CHILD = r"""
import hashlib, sys
from offchain.si.mailbox import Mailbox, MailboxLimits
box = Mailbox(sys.argv[1], MailboxLimits(max_bytes=10**12, max_messages=10**9, max_age_seconds=10**9))
start = int(sys.argv[2])
for n in range(start, start + 10**6):
    mid = n.to_bytes(16, "big")
    size = 1 + int.from_bytes(hashlib.sha256(mid).digest()[:4], "big") % (256 * 1024)
    box.store("0x" + "a1" * 20, mid, hashlib.shake_256(mid).digest(size), now=n)
    print(n, flush=True)
"""


def _expected_blob(message_id: bytes) -> bytes:
    size = 1 + int.from_bytes(hashlib.sha256(message_id).digest()[:4], "big") % (256 * 1024)
    return hashlib.shake_256(message_id).digest(size)


def _run_and_kill(path: Path, start: int, wait_for: int, extra_delay: float) -> list[int]:
    """Start the child, let it report `wait_for` stores, wait `extra_delay` more, SIGKILL it; return
    every id it reported (complete lines only: a line cut by the kill is not a report)."""
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path), str(start)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert child.stdout is not None
    fd = child.stdout.fileno()
    data = b""
    deadline = time.monotonic() + 60
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
    lines = data.split(b"\n")[:-1]  # the part after the last newline is unfinished
    return [int(line) for line in lines]


def test_sigkill_mid_write_loses_nothing_acknowledged(tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    rng = random.Random(7)
    reported: set[int] = set()
    start = 0
    for _round in range(4):
        got = _run_and_kill(path, start, wait_for=rng.randrange(5, 30), extra_delay=rng.random() * 0.05)
        assert got, "the child stored nothing before it was killed"
        reported.update(got)
        # reopen as a fresh process would: every reported store is there, each row whole
        db = sqlite3.connect(path)
        try:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            rows = db.execute("SELECT message_id, blob, size FROM messages ORDER BY seq").fetchall()
            stored = {int.from_bytes(r[0], "big") for r in rows}
            assert reported <= stored
            # at most the one store that committed before its id could be printed, per kill
            assert len(stored - reported) <= _round + 1
            for message_id, blob, size in rows:
                assert size == len(blob)
                assert bytes(blob) == _expected_blob(bytes(message_id))
            count, total = db.execute(
                "SELECT message_count, total_bytes FROM boxes WHERE recipient = ?", (bytes.fromhex("a1" * 20),)
            ).fetchone()
            assert (count, total) == (len(rows), sum(r[2] for r in rows))
        finally:
            db.close()
        start = max(stored) + 1
    # and the mailbox itself reads it all back through its API
    box = Mailbox(path)
    assert {int.from_bytes(m.message_id, "big") for m in box.fetch(ALICE, limit=10**6)} >= reported
