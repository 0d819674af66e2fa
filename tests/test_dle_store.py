"""The DLE chain store: round trips, every refusal writes nothing, rollback and metas, corruption found
on read and by the integrity check, two processes racing to append at one height, and a SIGKILL in the
middle of appends."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import select
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from dle_vm.block import Block, Header, transactions_root
from dle_vm.state import Account, State
from dle_vm.transaction import Transaction
from offchain.dle.store import (
    ChainExists,
    ChainStore,
    CorruptStore,
    InvalidRollback,
    MetaOrderError,
    NotExtendingHead,
    NotGenesis,
    SchemaError,
    StateMismatch,
    StoredBlock,
    UnknownBlock,
    UnknownChain,
    WrongChain,
)

ROOT = Path(__file__).resolve().parent.parent
CHAIN = hashlib.sha256(b"chain A").digest()
OTHER = hashlib.sha256(b"chain B").digest()
PROGRAM = bytes.fromhex("aa" * 20)


def make_state(height: int, marker: int = 0, code_size: int = 64) -> State:
    """A state that differs per height (and per marker), with some code and storage."""
    return State(
        {
            PROGRAM: Account(
                nonce=1,
                code=hashlib.shake_256(b"code").digest(code_size),
                storage={0: height + 1, 1: marker + 7, 2 + height % 5: 99},
            )
        }
    )


def make_block(
    chain: bytes, height: int, parent: bytes, state: State, *, txs: int = 1, signatures: int = 2, tick: int = 0
) -> Block:
    transactions = tuple(
        Transaction.signed(bytes([i + 1]) * 32, chain, height, PROGRAM, bytes([height % 256, i]) * 3, 50_000 + i)
        for i in range(txs)
    )
    header = Header(
        chain_id=chain,
        height=height,
        parent_hash=parent,
        state_root=state.root,
        transactions_root=transactions_root(transactions),
        timestamp=1_700_000_000 + height,
        poh_tick=tick or height * 10,
        group_id=1,
    )
    return Block(
        header=header, transactions=transactions, signatures=tuple(bytes([s + 1]) * 65 for s in range(signatures))
    )


def genesis(chain: bytes = CHAIN) -> tuple[Block, State]:
    state = make_state(0)
    return make_block(chain, 0, bytes(32), state, txs=0, signatures=0), state


def next_block(store: ChainStore, chain: bytes = CHAIN, marker: int = 0) -> tuple[Block, State]:
    head = store.head(chain)
    state = make_state(head.height + 1, marker)
    return make_block(chain, head.height + 1, head.hash, state, tick=marker + 1), state


def cert(height: int) -> bytes:
    return b"cert-" + str(height).encode()


def grow(store: ChainStore, count: int, chain: bytes = CHAIN) -> list[Block]:
    appended = []
    for _ in range(count):
        block, state = next_block(store, chain)
        store.append(chain, block, state, cert(block.header.height))
        appended.append(block)
    return appended


def snapshot(path: Path) -> list[Any]:
    """Every row of every table: what "nothing was written" is checked against."""
    db = sqlite3.connect(path)
    try:
        return [
            db.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall() for table in ("chains", "blocks", "metas")
        ]
    finally:
        db.close()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "chains.db"


@pytest.fixture
def store(path: Path) -> ChainStore:
    s = ChainStore(path)
    block, state = genesis()
    s.create_chain(block, state, b"genesis-cert", b"roles-v1")
    return s


def test_pragmas_wal_full_sync(store: ChainStore) -> None:
    db = store._connection()
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert db.execute("PRAGMA user_version").fetchone()[0] == 1


def test_round_trip(store: ChainStore, path: Path) -> None:
    block0, state0 = genesis()
    assert store.chains() == [CHAIN]
    assert store.height(CHAIN) == 0
    head = store.head(CHAIN)
    assert head == StoredBlock(block=block0, certificate=b"genesis-cert", state=state0)
    appended = grow(store, 5)
    assert store.height(CHAIN) == 5
    for height in range(1, 6):
        got = store.block(CHAIN, height)
        assert got.block == appended[height - 1]
        assert got.block.encode() == appended[height - 1].encode()
        assert got.block.signatures == appended[height - 1].signatures
        assert got.certificate == cert(height)
        assert got.state == make_state(height) == store.state(CHAIN, height)
        assert got.state.root == got.block.header.state_root
    assert store.head(CHAIN).block == appended[-1]
    assert [b.height for b in store.blocks(CHAIN, 2, 4)] == [2, 3]
    assert [b.height for b in store.blocks(CHAIN)] == [0, 1, 2, 3, 4, 5]
    assert store.blocks(CHAIN, 6) == []
    store.integrity_check()
    # a second store on the same file (another process would do the same) sees it all
    other = ChainStore(path)
    assert other.head(CHAIN) == store.head(CHAIN)
    assert other.meta(CHAIN) == b"roles-v1"


def test_two_chains_are_independent(store: ChainStore) -> None:
    block, state = genesis(OTHER)
    store.create_chain(block, state, b"c", b"m-other")
    grow(store, 3)
    grow(store, 1, OTHER)
    assert store.chains() == sorted([CHAIN, OTHER])
    assert (store.height(CHAIN), store.height(OTHER)) == (3, 1)
    assert store.meta(OTHER) == b"m-other"
    assert store.rollback(OTHER, 0)[0].block.header.chain_id == OTHER
    assert store.height(CHAIN) == 3
    store.integrity_check()


def test_create_chain_refusals_write_nothing(store: ChainStore, path: Path) -> None:
    grow(store, 1)
    before = snapshot(path)
    block, state = genesis()
    with pytest.raises(ChainExists):
        store.create_chain(block, state, b"x", b"y")
    other_state = make_state(0)
    not_zero_parent = make_block(OTHER, 0, b"\x01" * 32, other_state)
    with pytest.raises(NotGenesis, match="parent"):
        store.create_chain(not_zero_parent, other_state, b"x", b"y")
    height_one = make_block(OTHER, 1, bytes(32), other_state)
    with pytest.raises(NotGenesis, match="height 0"):
        store.create_chain(height_one, other_state, b"x", b"y")
    other_block, _ = genesis(OTHER)
    with pytest.raises(StateMismatch):
        store.create_chain(other_block, make_state(5), b"x", b"y")
    with pytest.raises(TypeError):
        store.create_chain(other_block, other_state, "cert", b"y")  # type: ignore[arg-type]
    assert snapshot(path) == before
    assert store.chains() == [CHAIN]


def test_append_refusals_write_nothing(store: ChainStore, path: Path) -> None:
    grow(store, 2)
    before = snapshot(path)
    head = store.head(CHAIN)
    good_state = make_state(3)
    good = make_block(CHAIN, 3, head.hash, good_state)

    with pytest.raises(UnknownChain):
        store.append(OTHER, make_block(OTHER, 3, head.hash, good_state), good_state, b"c")
    with pytest.raises(WrongChain):
        store.append(CHAIN, make_block(OTHER, 3, head.hash, good_state), good_state, b"c")
    with pytest.raises(StateMismatch):
        store.append(CHAIN, good, make_state(3, marker=1), b"c")
    with pytest.raises(NotExtendingHead, match="height 4 is not 3") as skipped:
        store.append(CHAIN, make_block(CHAIN, 4, head.hash, good_state), good_state, b"c")
    assert (skipped.value.head_height, skipped.value.head_hash) == (2, head.hash)
    with pytest.raises(NotExtendingHead, match="height 2 is not 3"):
        store.append(CHAIN, make_block(CHAIN, 2, head.hash, good_state), good_state, b"c")
    with pytest.raises(NotExtendingHead, match="parent"):
        store.append(CHAIN, make_block(CHAIN, 3, b"\x07" * 32, good_state), good_state, b"c")
    with pytest.raises(TypeError):
        store.append(CHAIN, good, good_state, None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        store.append(CHAIN[:20], good, good_state, b"c")
    assert snapshot(path) == before
    store.append(CHAIN, good, good_state, b"c")  # and the good one still goes in
    assert store.height(CHAIN) == 3


def test_group_committed_appends(store: ChainStore, path: Path) -> None:
    """Appends queued together share one transaction; a refused one writes nothing and fails alone."""
    import asyncio

    block, state = genesis(OTHER)
    store.create_chain(block, state, b"c", b"m-other")
    one, one_state = next_block(store)
    other, other_state = next_block(store, OTHER)
    stale = make_block(CHAIN, 5, one.hash, one_state)
    commits: list[int] = []
    commit_batch = store._commit_batch

    async def counted(batch: Any) -> None:
        commits.append(len(batch))
        await commit_batch(batch)

    store._commit_batch = counted  # type: ignore[method-assign]

    async def together() -> list[BaseException | None]:
        outcomes = await asyncio.gather(
            store.append_async(CHAIN, one, one_state, b"c1"),
            store.append_async(CHAIN, stale, one_state, b"c5"),
            store.append_async(OTHER, other, other_state, b"o1"),
            return_exceptions=True,
        )
        return list(outcomes)

    results = asyncio.run(together())
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], NotExtendingHead)
    assert commits == [3]  # all three were queued before the loop ran the commit
    assert store.head(CHAIN).block == one and store.head(CHAIN).certificate == b"c1"
    assert store.head(OTHER).block == other
    with pytest.raises(StateMismatch):  # checked before queueing, like append
        asyncio.run(store.append_async(CHAIN, make_block(CHAIN, 2, one.hash, one_state), make_state(9), b"c"))
    store.close()
    two, two_state = next_block(store)
    asyncio.run(store.append_async(CHAIN, two, two_state, b"c2"))
    store.close()
    reopened = ChainStore(path)
    assert reopened.height(CHAIN) == 2
    reopened.integrity_check()
    reopened.close()


def test_reads_of_unknown_things(store: ChainStore) -> None:
    with pytest.raises(UnknownChain):
        store.head(OTHER)
    with pytest.raises(UnknownChain):
        store.height(OTHER)
    with pytest.raises(UnknownChain):
        store.meta(OTHER)
    with pytest.raises(UnknownBlock, match="height 1"):
        store.block(CHAIN, 1)
    with pytest.raises(UnknownBlock):
        store.state(CHAIN, -1)


def test_rollback(store: ChainStore, path: Path) -> None:
    appended = grow(store, 6)
    removed = store.rollback(CHAIN, 3)
    assert [r.block for r in removed] == appended[3:]
    assert [r.certificate for r in removed] == [cert(4), cert(5), cert(6)]
    assert [r.state for r in removed] == [make_state(4), make_state(5), make_state(6)]
    assert store.height(CHAIN) == 3
    assert store.head(CHAIN).block == appended[2]
    with pytest.raises(UnknownBlock):
        store.block(CHAIN, 4)
    store.integrity_check()
    # a different block 4 can now be appended on the rolled-back head
    block, state = next_block(store, marker=9)
    store.append(CHAIN, block, state, b"again")
    assert store.head(CHAIN).block == block != appended[3]
    # at or above the head: nothing; to genesis: everything else
    before = snapshot(path)
    assert store.rollback(CHAIN, 4) == []
    assert store.rollback(CHAIN, 100) == []
    with pytest.raises(InvalidRollback):
        store.rollback(CHAIN, -1)
    with pytest.raises(UnknownChain):
        store.rollback(OTHER, 0)
    assert snapshot(path) == before
    assert [r.height for r in store.rollback(CHAIN, 0)] == [1, 2, 3, 4]
    assert store.head(CHAIN).block == genesis()[0]
    store.integrity_check()


def test_meta_versions(store: ChainStore, path: Path) -> None:
    assert store.meta_history(CHAIN) == [(0, b"roles-v1")]
    grow(store, 3)
    assert store.set_meta(CHAIN, b"roles-v2") == 4  # from the next block on
    assert store.meta(CHAIN) == b"roles-v2"
    assert store.meta(CHAIN, 3) == b"roles-v1"
    assert store.meta(CHAIN, 4) == b"roles-v2"
    assert store.set_meta(CHAIN, b"roles-v2b", from_height=4) == 4  # same height replaces
    before = snapshot(path)
    with pytest.raises(MetaOrderError):
        store.set_meta(CHAIN, b"older", from_height=2)  # before the latest meta
    with pytest.raises(MetaOrderError):
        store.set_meta(CHAIN, b"future", from_height=5)  # beyond the next block
    with pytest.raises(UnknownChain):
        store.set_meta(OTHER, b"x")
    assert snapshot(path) == before
    grow(store, 4)  # head 7
    store.set_meta(CHAIN, b"roles-v3", from_height=6)
    store.set_meta(CHAIN, b"roles-v4")  # from 8
    assert store.meta_history(CHAIN) == [(0, b"roles-v1"), (4, b"roles-v2b"), (6, b"roles-v3"), (8, b"roles-v4")]
    # rolling back to 2: the newest meta stays in force and applies from the next block, 3
    store.rollback(CHAIN, 2)
    assert store.meta_history(CHAIN) == [(0, b"roles-v1"), (3, b"roles-v4")]
    assert store.meta(CHAIN) == b"roles-v4"
    assert store.meta(CHAIN, 2) == b"roles-v1"
    store.integrity_check()
    # a rollback that leaves metas within head + 1 does not touch them
    grow(store, 2)  # head 4
    store.rollback(CHAIN, 3)
    assert store.meta_history(CHAIN) == [(0, b"roles-v1"), (3, b"roles-v4")]


def _corrupt(path: Path, sql: str, *args: Any) -> None:
    db = sqlite3.connect(path)
    try:
        db.execute(sql, args)
        db.commit()
    finally:
        db.close()


def test_corrupt_block_bytes_are_reported(store: ChainStore, path: Path) -> None:
    grow(store, 3)
    _corrupt(path, "UPDATE blocks SET block = ? WHERE height = 2", b"\xc0garbage")
    with pytest.raises(CorruptStore, match="height 2: the block does not decode"):
        store.block(CHAIN, 2)
    store.block(CHAIN, 3)  # the others still read
    with pytest.raises(CorruptStore) as found:
        store.integrity_check()
    assert any("height 2" in p for p in found.value.problems)


def test_swapped_block_is_reported(store: ChainStore, path: Path) -> None:
    grow(store, 3)
    db = sqlite3.connect(path)
    three = db.execute("SELECT block FROM blocks WHERE height = 3").fetchone()[0]
    db.close()
    _corrupt(path, "UPDATE blocks SET block = ? WHERE height = 2", three)
    with pytest.raises(CorruptStore, match="another block"):
        store.block(CHAIN, 2)


def test_wrong_state_is_reported(store: ChainStore, path: Path) -> None:
    grow(store, 2)
    _corrupt(path, "UPDATE blocks SET state = ? WHERE height = 1", make_state(1, marker=5).encode())
    with pytest.raises(CorruptStore, match="state's root"):
        store.state(CHAIN, 1)
    _corrupt(path, "UPDATE blocks SET state = ? WHERE height = 2", b"\x01\x02")
    with pytest.raises(CorruptStore, match="state does not decode"):
        store.head(CHAIN)
    with pytest.raises(CorruptStore) as found:
        store.integrity_check(CHAIN)
    assert len(found.value.problems) == 2


def test_integrity_check_finds_gaps_and_bad_head(store: ChainStore, path: Path) -> None:
    grow(store, 4)
    _corrupt(path, "PRAGMA foreign_keys = OFF")
    _corrupt(path, "DELETE FROM blocks WHERE height = 2")
    _corrupt(path, "UPDATE chains SET head_height = 9")
    with pytest.raises(CorruptStore) as found:
        store.integrity_check()
    text = " | ".join(found.value.problems)
    assert "height 2 is missing" in text
    assert "parent hash" in text
    assert "head pointer says 9" in text


def test_other_schema_version_is_refused(path: Path) -> None:
    ChainStore(path).close()
    _corrupt(path, "PRAGMA user_version = 7")
    with pytest.raises(SchemaError, match="schema 7"):
        ChainStore(path)


# -- two processes racing ----------------------------------------------------------------------------

ROUNDS = 25


def _racer(path: str, marker: int, barrier: Any, results: Any) -> None:
    store = ChainStore(path)
    outcome: list[tuple[int, bytes | None]] = []
    for _ in range(ROUNDS):
        barrier.wait(timeout=30)
        block, state = next_block(store, marker=marker)
        barrier.wait(timeout=30)  # both built on the same head; now both append at once
        try:
            store.append(CHAIN, block, state, f"by {marker}".encode())
            outcome.append((block.header.height, block.hash))
        except NotExtendingHead:
            outcome.append((block.header.height, None))
    results.put((marker, outcome))


def test_two_processes_racing_at_one_height_exactly_one_wins(store: ChainStore, path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(2)
    results = ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(str(path), marker, barrier, results)) for marker in (1, 2)]
    for p in procs:
        p.start()
    outcomes = dict(results.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert store.height(CHAIN) == ROUNDS
    for round_ in range(ROUNDS):
        height, won_1 = outcomes[1][round_]
        assert outcomes[2][round_][0] == height == round_ + 1
        won_2 = outcomes[2][round_][1]
        # exactly one wins each height, and what is stored is the winner's block with its certificate
        assert (won_1 is None) != (won_2 is None)
        stored = store.block(CHAIN, height)
        assert stored.hash == (won_1 or won_2)
        assert stored.certificate == (b"by 1" if won_1 else b"by 2")
    store.integrity_check()


# -- crash test ------------------------------------------------------------------------------------------

# The child appends blocks as fast as it can, with states of up to ~200 KiB of code so a kill often lands
# in the middle of writing one, and prints each height only after append() has returned.
_CHILD = r"""
import sys
sys.path.insert(0, sys.argv[2])  # this test module, for the block builders
from test_dle_store import CHAIN, make_block, make_state
from offchain.dle.store import ChainStore
store = ChainStore(sys.argv[1])
while True:
    head = store.head(CHAIN)
    height = head.height + 1
    state = make_state(height, code_size=1 + (height * 7919) % 200_000)
    store.append(CHAIN, make_block(CHAIN, height, head.hash, state), state, b"c%d" % height)
    print(height, flush=True)
"""


def _run_and_kill(path: Path, wait_for: int, extra_delay: float) -> list[int]:
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path), str(ROOT / "tests")],
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
    return [int(line) for line in data.split(b"\n")[:-1]]  # a line cut by the kill is no report


def test_sigkill_mid_append_leaves_a_consistent_chain(store: ChainStore, path: Path) -> None:
    import random

    rng = random.Random(11)
    store.close()
    for _ in range(4):
        acknowledged = _run_and_kill(path, wait_for=rng.randrange(3, 15), extra_delay=rng.random() * 0.05)
        assert acknowledged, "the child appended nothing before it was killed"
        reopened = ChainStore(path)
        reopened.integrity_check()  # file sound, heights contiguous, links and state roots all match
        head = reopened.height(CHAIN)
        # every acknowledged append is there; at most the one that committed before it could be printed
        assert head in (acknowledged[-1], acknowledged[-1] + 1)
        for stored in reopened.blocks(CHAIN, 1):
            assert stored.state.root == stored.block.header.state_root
            assert stored.certificate == b"c%d" % stored.height
        reopened.close()


def test_a_signed_block_is_kept_once_per_height_durably(store: ChainStore, path: Path) -> None:
    import asyncio

    from offchain.dle.store import ANY_VERSION

    first, second = b"\x01" * 32, b"\x02" * 32

    async def sign() -> list[bytes]:
        return [
            await store.sign_once(CHAIN, 0, first),  # a genesis: no chain row needed
            await store.sign_once(CHAIN, 0, second),
            await store.sign_once(CHAIN, 0, second, 3),  # a member's record, per roles version
            await store.sign_once(CHAIN, 0, first, 3),
        ]

    assert asyncio.run(sign()) == [first, first, second, second]
    reopened = ChainStore(path)
    assert reopened.signed(CHAIN, 0) == first and reopened.signed(CHAIN, 0, 3) == second
    assert reopened.signed(CHAIN, 1) is None
    assert not reopened.release_signed(CHAIN, 0, second, ANY_VERSION)  # only the block recorded there
    assert reopened.release_signed(CHAIN, 0, first)
    assert asyncio.run(reopened.sign_once(CHAIN, 0, second)) == second
    reopened.close()
