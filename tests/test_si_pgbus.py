"""The push bus of a load-balanced recipient provider, on a real PostgreSQL server: routing a push to
the entry server holding the client's stream, large payloads, release and takeover, a holder whose
lease runs out, and a holder process killed with SIGKILL mid-stream — nothing lost, nothing stored
twice in the mailbox."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from eth_utils.address import to_checksum_address
from pg_fixtures import pg_schema, postgres_dsn  # noqa: F401
from psycopg import sql

from offchain.si.mailbox import message_id_of
from offchain.si.pgbus import BusClosed, BusError, PgPushBus, channel_for
from offchain.si.pgmailbox import MailboxFull, MailboxLimits, MessageIdConflict, PgMailbox

ALICE = to_checksum_address("0x" + "a1" * 20)
BOB = to_checksum_address("0x" + "b2" * 20)
ROOT = Path(__file__).resolve().parent.parent
LEASE = 1.0
BEAT = 0.2
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
    """Run a test's coroutine with a bound on how long it may take."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def bus(dsn: str, schema: str, name: str) -> PgPushBus:
    return PgPushBus(dsn, name, schema=schema, lease_seconds=LEASE, heartbeat_seconds=BEAT)


async def take(b: PgPushBus, count: int, timeout: float = 10.0) -> list[tuple[str, bytes]]:
    """The next `count` deliveries of `b` (each acknowledged by asking for the next, the last one by
    the generator's close: a consumer that stops mid-item gets it again later)."""
    got: list[tuple[str, bytes]] = []

    async def consume() -> None:
        # aclosing: the generator is closed on return, not whenever it is garbage-collected, so the
        # next consumer of this bus does not find it still "being consumed".
        async with contextlib.aclosing(b.deliveries()) as items:
            async for item in items:
                got.append(item)
                if len(got) == count:
                    return

    await asyncio.wait_for(consume(), timeout)
    return got


async def eventually(check: Any, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def mailbox(dsn: str, schema: str, limits: MailboxLimits | None = None) -> PgMailbox:
    return PgMailbox(dsn, limits or MailboxLimits(max_bytes=10**9, max_messages=10**6), schema=schema)


def test_publish_routes_to_the_holder_in_order(postgres_dsn: str, pg_schema: str) -> None:  # noqa: F811
    async def scenario() -> None:
        async with bus(postgres_dsn, pg_schema, "a") as a, bus(postgres_dsn, pg_schema, "b") as b:
            assert not await b.publish(ALICE, b"nobody holds alice")  # the caller uses the mailbox
            assert await b.pending() == 0
            await a.claim(ALICE)
            await b.claim(BOB)
            assert await b.holder_of(ALICE) == "a"
            assert await a.holder_of(BOB) == "b"
            assert a.claims == frozenset({ALICE})
            for n in range(5):
                assert await b.publish(ALICE, b"to alice %d" % n)
            assert await a.publish(BOB, b"to bob")
            assert await a.publish(ALICE, b"from a to its own client")
            assert await take(a, 6) == [(ALICE, b"to alice %d" % n) for n in range(5)] + [
                (ALICE, b"from a to its own client")
            ]
            assert await take(b, 1) == [(BOB, b"to bob")]
            # the last item of each take() was not acknowledged (the consumer stopped with it)
            assert await a.pending() == 2

    run(scenario())


def test_large_payloads_go_through_a_row_and_only_ids_are_notified(postgres_dsn: str, pg_schema: str) -> None:  # noqa: F811
    sizes = [1, 7_999, 8_000, 8_001, 100_000, 2_000_000]
    payloads = [random.Random(n).randbytes(n) for n in sizes]

    async def scenario() -> None:
        async with bus(postgres_dsn, pg_schema, "a") as a, bus(postgres_dsn, pg_schema, "b") as b:
            await a.claim(ALICE)
            spy = await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True)
            await spy.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel_for(a.instance))))
            for payload in payloads:
                assert await b.publish(ALICE, payload)
            assert [p for _, p in await take(a, len(payloads) + 0)] == payloads
            notes = [n.payload async for n in spy.notifies(timeout=2, stop_after=len(payloads))]
            await spy.close()
            assert len(notes) == len(payloads)
            assert all(note.isdigit() and len(note) < 20 for note in notes)

    run(scenario())


def test_release_moves_undelivered_pushes_to_the_mailbox(postgres_dsn: str, pg_schema: str) -> None:  # noqa: F811
    box = mailbox(postgres_dsn, pg_schema)

    async def scenario() -> None:
        async with bus(postgres_dsn, pg_schema, "a") as a, bus(postgres_dsn, pg_schema, "b") as b:
            await a.claim(ALICE)
            for n in range(3):
                assert await b.publish(ALICE, b"m%d" % n)
            moved = await a.release(ALICE)  # the stream closed before a delivered anything
            assert (moved.to_mailbox, moved.to_holder, moved.already_in_mailbox) == (3, 0, 0)
            assert await b.pending() == 0
            assert not await b.publish(ALICE, b"later")  # nobody holds alice now
            assert a.claims == frozenset()

    run(scenario())
    assert [m.blob for m in box.fetch(ALICE)] == [b"m0", b"m1", b"m2"]
    assert [m.message_id for m in box.fetch(ALICE)] == [message_id_of(b"m%d" % n) for n in range(3)]
    assert box.integrity_check() == "ok"


def test_a_new_claim_takes_over_pending_pushes(postgres_dsn: str, pg_schema: str) -> None:  # noqa: F811
    async def scenario() -> None:
        async with bus(postgres_dsn, pg_schema, "a") as a, bus(postgres_dsn, pg_schema, "b") as b:
            await a.claim(ALICE)
            for n in range(3):
                assert await b.publish(ALICE, b"m%d" % n)
            await b.claim(ALICE)  # the client reconnected through b before a noticed anything
            assert await a.holder_of(ALICE) == "b"
            assert [p for _, p in await take(b, 3)] == [b"m0", b"m1", b"m2"]
            assert (await a.release(ALICE)).to_mailbox == 0  # a's late release takes nothing from b
            assert await a.holder_of(ALICE) == "b"
            assert await a.publish(ALICE, b"m3")
            assert [p for _, p in await take(b, 2)] == [b"m2", b"m3"]  # m2 again: never acknowledged

    run(scenario())


def test_a_dead_holders_pushes_are_rescued_after_its_lease(postgres_dsn: str, pg_schema: str) -> None:  # noqa: F811
    box = mailbox(postgres_dsn, pg_schema)

    async def scenario() -> None:
        async with bus(postgres_dsn, pg_schema, "b") as b:
            a = await bus(postgres_dsn, pg_schema, "a").start()
            await a.claim(ALICE)
            for n in range(3):
                assert await b.publish(ALICE, b"m%d" % n)
            await a._abandon()  # a crash: no release, no goodbye; the lease runs out on its own
            assert await b.publish(ALICE, b"m3")  # still within a's lease: queued for a
            loop = asyncio.get_running_loop()
            started = loop.time()
            await eventually(lambda: _zero(b.pending()), timeout=LEASE * 5, what="b's sweep")
            assert loop.time() - started < 3 * LEASE + 2  # bounded: the lease plus a sweep or two
            assert await b.holder_of(ALICE) is None
            assert not await b.publish(ALICE, b"m4")

    run(scenario())
    assert [m.blob for m in box.fetch(ALICE)] == [b"m0", b"m1", b"m2", b"m3"]
    assert box.integrity_check() == "ok"


async def _zero(value: Coroutine[Any, Any, int]) -> bool:
    return await value == 0


def test_nothing_is_stored_twice_and_rescue_ignores_limits(postgres_dsn: str, pg_schema: str) -> None:  # noqa: F811
    box = mailbox(postgres_dsn, pg_schema, MailboxLimits(max_bytes=10**6, max_messages=2))
    box.store(ALICE, message_id_of(b"retried"), b"retried", now=1)  # the sender's first try went here

    async def scenario() -> None:
        async with bus(postgres_dsn, pg_schema, "a") as a, bus(postgres_dsn, pg_schema, "b") as b:
            await a.claim(ALICE)
            assert await b.publish(ALICE, b"retried")  # the retry, now that alice is online
            assert await b.publish(ALICE, b"retried")  # and once more: still one push
            assert await b.pending() == 1
            with pytest.raises(MessageIdConflict):
                await b.publish(ALICE, b"other bytes", message_id=message_id_of(b"retried"))
            for n in range(3):
                assert await b.publish(ALICE, b"m%d" % n)
            moved = await a.release(ALICE)
            assert (moved.to_mailbox, moved.already_in_mailbox) == (4, 1)

    run(scenario())
    # Four messages where the limit is two: a push already acknowledged to its sender is not dropped.
    assert [m.blob for m in box.fetch(ALICE)] == [b"retried", b"m0", b"m1", b"m2"]
    assert box.usage(ALICE) == (4, 7 + 6)
    assert box.integrity_check() == "ok"
    with pytest.raises(MailboxFull):
        box.store(ALICE, b"new", b"new", now=2)


def test_a_holder_that_lost_its_lease_claims_again(postgres_dsn: str, pg_schema: str) -> None:  # noqa: F811
    box = mailbox(postgres_dsn, pg_schema)

    async def scenario() -> None:
        async with bus(postgres_dsn, pg_schema, "a") as a, bus(postgres_dsn, pg_schema, "b") as b:
            await a.claim(ALICE)
            assert await b.publish(ALICE, b"before")
            # As if a had stalled longer than its lease: b's sweep drops the claim and rescues the push.
            async with await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True) as admin:
                await admin.execute(
                    sql.SQL(
                        "UPDATE {}.bus_servers SET lease_expires = clock_timestamp() - interval '1 s' "
                        "WHERE instance = %s"
                    ).format(sql.Identifier(pg_schema)),
                    (a.instance,),
                )
            swept = await b.sweep()
            assert [(r.recipient, r.to_mailbox) for r in swept] == [(ALICE, 1)]
            assert not await b.publish(ALICE, b"while lost")
            # a's next heartbeat finds the lease gone, registers again and re-claims its clients
            await eventually(lambda: _holder_is(b, ALICE, "a"), timeout=5, what="a's re-claim")
            assert a.lease_losses == 1
            assert await b.publish(ALICE, b"after")
            assert await take(a, 1) == [(ALICE, b"after")]

    run(scenario())
    # "after" too: take() stopped without acknowledging it, and closing a released alice's stream
    assert [m.blob for m in box.fetch(ALICE)] == [b"before", b"after"]


async def _holder_is(b: PgPushBus, recipient: str, server_id: str) -> bool:
    return await b.holder_of(recipient) == server_id


async def _expire_lease(dsn: str, schema: str, instance: Any) -> None:
    """As if `instance` had stalled longer than its lease."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as admin:
        await admin.execute(
            sql.SQL(
                "UPDATE {}.bus_servers SET lease_expires = clock_timestamp() - interval '1 s' WHERE instance = %s"
            ).format(sql.Identifier(schema)),
            (instance,),
        )


def test_a_holder_back_from_a_lost_lease_leaves_a_moved_client_alone(postgres_dsn: str, pg_schema: str) -> None:  # noqa: F811
    async def scenario() -> None:
        async with (
            bus(postgres_dsn, pg_schema, "a") as a,
            bus(postgres_dsn, pg_schema, "b") as b,
            a.subscribe(ALICE) as stale,
            a.subscribe(BOB) as kept,
        ):
            await _expire_lease(postgres_dsn, pg_schema, a.instance)
            await b.sweep()
            await b.claim(ALICE)  # alice reconnected through b meanwhile; bob did not
            await eventually(lambda: _count_at_least(a, "lease_losses", 1), timeout=5, what="a's recovery")
            assert await _get(stale) is None
            assert a.claims == frozenset({BOB})
            assert await b.holder_of(ALICE) == "b"
            await eventually(lambda: _holder_is(b, BOB, "a"), timeout=5, what="a's re-claim of bob")
            assert await b.publish(BOB, b"still here")
            assert await _get(kept) == b"still here"

    run(scenario())


async def _count_at_least(obj: Any, attribute: str, count: int) -> bool:
    return int(getattr(obj, attribute)) >= count


def test_close_releases_everything(postgres_dsn: str, pg_schema: str) -> None:  # noqa: F811
    box = mailbox(postgres_dsn, pg_schema)

    async def scenario() -> None:
        async with bus(postgres_dsn, pg_schema, "b") as b:
            a = await bus(postgres_dsn, pg_schema, "a").start()
            await a.claim(ALICE)
            await a.claim(BOB)
            assert await b.publish(ALICE, b"for alice")
            await a.close()
            assert await b.pending() == 0
            assert not await b.publish(BOB, b"for bob")
            with pytest.raises(BusClosed):
                await a.publish(ALICE, b"x")
            async with await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True) as admin:
                cursor = await admin.execute(
                    sql.SQL("SELECT count(*) FROM {}.bus_servers WHERE instance = %s").format(
                        sql.Identifier(pg_schema)
                    ),
                    (a.instance,),
                )
                assert await cursor.fetchone() == (0,)

    run(scenario())
    assert [m.blob for m in box.fetch(ALICE)] == [b"for alice"]


def test_misuse_is_refused(postgres_dsn: str, pg_schema: str) -> None:  # noqa: F811
    with pytest.raises(ValueError):
        PgPushBus(postgres_dsn, "", schema=pg_schema)
    with pytest.raises(ValueError):
        PgPushBus(postgres_dsn, "a", schema=pg_schema, lease_seconds=1, heartbeat_seconds=2)

    async def scenario() -> None:
        idle = bus(postgres_dsn, pg_schema, "idle")
        with pytest.raises(BusClosed):
            await idle.publish(ALICE, b"x")
        async with bus(postgres_dsn, pg_schema, "a") as a:
            with pytest.raises(ValueError):
                await a.publish(ALICE, b"")
            with pytest.raises(ValueError):
                await a.publish("not an address", b"x")
            first = a.deliveries()
            second = a.deliveries()
            pending = asyncio.ensure_future(first.__anext__())
            await asyncio.sleep(0.1)
            with pytest.raises(BusError, match="already"):
                await second.__anext__()
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)

    run(scenario())


# -- the node's PushBus interface: subscribe / get / is_online ------------------------------------------


def test_offers_the_nodes_push_bus_interface() -> None:
    # The node (offchain/si/node.py) holds its bus as a PushBus and streams through a Subscription:
    # PgPushBus and PgSubscription have every method, taking the same positional arguments.
    import inspect

    from offchain.si.node import PushBus, Subscription
    from offchain.si.pgbus import PgSubscription

    def positional(function: Any) -> int:
        kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        return sum(
            p.kind in kinds and p.default is inspect.Parameter.empty
            for p in inspect.signature(function).parameters.values()
        )

    for protocol, cls in ((PushBus, PgPushBus), (Subscription, PgSubscription)):
        for name, member in vars(protocol).items():
            if not name.startswith("_") and callable(member):
                assert positional(getattr(cls, name)) == positional(member), f"{cls.__name__}.{name}"
                assert inspect.iscoroutinefunction(getattr(cls, name)) == inspect.iscoroutinefunction(member), name


async def _get(subscription: Any, timeout: float = 5.0) -> bytes | None:
    result: bytes | None = await asyncio.wait_for(subscription.get(), timeout)
    return result


def test_subscribe_delivers_and_deletes_what_was_handed_out(postgres_dsn: str, pg_schema: str) -> None:  # noqa: F811
    async def scenario() -> None:
        async with bus(postgres_dsn, pg_schema, "a") as a, bus(postgres_dsn, pg_schema, "b") as b:
            assert not await b.is_online(ALICE)
            async with a.subscribe(ALICE) as subscription:
                assert await b.is_online(ALICE)
                for n in range(3):
                    assert await b.publish(ALICE, b"m%d" % n)
                assert [await _get(subscription) for _ in range(3)] == [b"m0", b"m1", b"m2"]
                assert await b.pending() == 1  # m2 is deleted by the next get(), once it is written
                with pytest.raises(TimeoutError):
                    await _get(subscription, timeout=0.3)  # as the node's keep-alive wait does
                assert await b.pending() == 0
            assert not await b.is_online(ALICE)
            assert not await b.publish(ALICE, b"gone")

    run(scenario())


def test_a_newer_stream_elsewhere_ends_the_older(postgres_dsn: str, pg_schema: str) -> None:  # noqa: F811
    async def scenario() -> None:
        async with bus(postgres_dsn, pg_schema, "a") as a, bus(postgres_dsn, pg_schema, "b") as b:
            async with a.subscribe(ALICE) as old:
                assert await b.publish(ALICE, b"first")
                assert await _get(old) == b"first"
                async with b.subscribe(ALICE) as new:
                    assert await _get(old) is None  # told through the database
                    assert await a.publish(ALICE, b"second")
                    # "first" again: the old stream never asked for more, so it may not have been written
                    assert [await _get(new), await _get(new)] == [b"first", b"second"]
                assert await a.holder_of(ALICE) is None  # b's stream closed; a's ended before
            assert not await a.is_online(ALICE)
            # on one instance: the second subscription of a client ends the first
            async with a.subscribe(BOB) as first, a.subscribe(BOB) as second:
                assert await _get(first) is None
                assert await b.publish(BOB, b"to the second")
                assert await _get(second) == b"to the second"

    run(scenario())


def test_a_stuck_stream_is_ended_and_its_pushes_go_to_the_mailbox(postgres_dsn: str, pg_schema: str) -> None:  # noqa: F811
    box = mailbox(postgres_dsn, pg_schema)

    async def scenario() -> None:
        a = PgPushBus(
            postgres_dsn, "a", schema=pg_schema, lease_seconds=LEASE, heartbeat_seconds=BEAT, subscription_queue_size=2
        )
        async with a, bus(postgres_dsn, pg_schema, "b") as b, a.subscribe(ALICE) as subscription:
            published = [await b.publish(ALICE, b"m%d" % n) for n in range(5)]
            # Two queued, no room for the third: the stream is ended and what it held is moved on.
            # Once it is gone publish says False (the node has the message in the mailbox already).
            await eventually(lambda: _zero(b.pending()), timeout=5, what="the stuck stream's rescue")
            assert await _get(subscription) is None
            assert not await b.is_online(ALICE)
            assert published[:3] == [True, True, True], published

    run(scenario())
    stored = [m.blob for m in box.fetch(ALICE)]
    assert len(stored) >= 3
    assert stored == [b"m%d" % n for n in range(len(stored))]


def test_what_a_closed_stream_did_not_write_goes_to_the_mailbox(postgres_dsn: str, pg_schema: str) -> None:  # noqa: F811
    box = mailbox(postgres_dsn, pg_schema)

    async def scenario() -> None:
        async with bus(postgres_dsn, pg_schema, "a") as a, bus(postgres_dsn, pg_schema, "b") as b:
            async with a.subscribe(ALICE) as subscription:
                for n in range(3):
                    assert await b.publish(ALICE, b"m%d" % n)
                assert await _get(subscription) == b"m0"
                # the stream breaks while m0 is being written: m0, m1 and m2 are all still owed
            assert await b.pending() == 0

    run(scenario())
    assert [m.blob for m in box.fetch(ALICE)] == [b"m0", b"m1", b"m2"]


# -- a holder process killed with SIGKILL mid-stream -------------------------------------------------

# Entry server "a" in its own process: holds alice's stream, and "writes each push to the client"
# (prints its number) before taking the next, slowly enough for a backlog to build up.
_HOLDER = r"""
import asyncio, sys
from offchain.si.pgbus import PgPushBus
dsn, schema, recipient, lease, beat = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5])
async def main():
    bus = await PgPushBus(dsn, "entry-a", schema=schema, lease_seconds=lease, heartbeat_seconds=beat).start()
    await bus.claim(recipient)
    print("ready", flush=True)
    async for _, payload in bus.deliveries():
        await asyncio.sleep(0.004)
        print(int(payload[:8]), flush=True)
asyncio.run(main())
"""


def _payload(n: int) -> bytes:
    # Some pushes larger than NOTIFY's 8000-byte limit.
    size = 20_000 if n % 7 == 0 else 200
    return b"%08d" % n + random.Random(n).randbytes(size)


async def _kill_holder_mid_stream(dsn: str, schema: str, reattach_before_lease_ends: bool, seed: int) -> None:
    rng = random.Random(seed)
    box = mailbox(dsn, schema)
    total = 250
    routed: dict[int, str] = {}  # how each message left the publisher: "push" or "mailbox"
    delivered_a: list[int] = []
    delivered_b: list[int] = []
    async with bus(dsn, schema, "entry-b") as b:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _HOLDER,
            dsn,
            schema,
            ALICE,
            str(LEASE),
            str(BEAT),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        try:
            assert child.stdout is not None
            assert await asyncio.wait_for(child.stdout.readline(), 30) == b"ready\n"

            async def publisher() -> None:
                # What the node does for each message arriving at entry server b.
                for n in range(total):
                    payload = _payload(n)
                    if await b.publish(ALICE, payload):
                        routed[n] = "push"
                    else:
                        await asyncio.to_thread(box.store, ALICE, message_id_of(payload), payload)
                        routed[n] = "mailbox"
                    await asyncio.sleep(0.003)

            async def reader() -> None:
                assert child.stdout is not None
                while line := await child.stdout.readline():
                    if line.endswith(b"\n"):  # a line cut by the kill is no report
                        delivered_a.append(int(line))

            publishing = asyncio.create_task(publisher())
            reading = asyncio.create_task(reader())
            kill_after = rng.randrange(20, 80)
            await eventually(lambda: _at_least(delivered_a, kill_after), timeout=30, what="a's deliveries")
            child.send_signal(signal.SIGKILL)
            await asyncio.wait_for(child.wait(), 10)
            await asyncio.wait_for(reading, 10)
            assert child.returncode == -signal.SIGKILL

            if not reattach_before_lease_ends:
                # Nobody holds alice: b's sweep moves a's undelivered pushes to the mailbox.
                await eventually(lambda: _zero(b.pending()), timeout=LEASE * 6, what="the rescue")
            # The client re-attaches through b: claim first, then read the mailbox.
            await b.claim(ALICE)

            async def consume() -> None:
                async with contextlib.aclosing(b.deliveries()) as items:
                    async for _, payload in items:
                        delivered_b.append(int(payload[:8]))

            consuming = asyncio.create_task(consume())
            await asyncio.wait_for(publishing, 30)
            await eventually(lambda: _zero(b.pending()), timeout=10, what="b's deliveries")
            await asyncio.sleep(0.1)  # the last item's acknowledgement: b's consumer asks for the next
            consuming.cancel()
            await asyncio.gather(consuming, return_exceptions=True)
        finally:
            if child.returncode is None:
                child.kill()
                await child.wait()

    in_mailbox = [int(m.blob[:8]) for m in box.fetch(ALICE, limit=10**6)]
    everything = set(range(total))
    # Nothing lost: every message was delivered by a, by b, or waits in the mailbox.
    assert set(delivered_a) | set(delivered_b) | set(in_mailbox) == everything
    # Nothing stored twice, and nothing both delivered by b and left in the mailbox.
    assert len(in_mailbox) == len(set(in_mailbox))
    assert not set(delivered_b) & set(in_mailbox)
    assert len(delivered_b) == len(set(delivered_b))
    # a's consumer takes one push at a time: at most the one it was writing when killed comes again.
    assert len(set(delivered_a) & (set(delivered_b) | set(in_mailbox))) <= 1
    assert box.integrity_check() == "ok"
    # The scenario did what it says: a delivered some, and some were left for the rescue.
    assert delivered_a and len(set(delivered_a)) < total
    assert routed and all(routed[n] == "push" for n in delivered_a)
    if reattach_before_lease_ends:
        assert delivered_b
    else:
        assert {n for n in in_mailbox if routed[n] == "push"}, "no push was rescued into the mailbox"


async def _at_least(items: list[int], count: int) -> bool:
    return len(items) >= count


@pytest.mark.parametrize("reattach_before_lease_ends", [True, False], ids=["reattach-at-once", "after-rescue"])
def test_killing_the_holder_process_loses_nothing(
    postgres_dsn: str,  # noqa: F811
    pg_schema: str,  # noqa: F811
    reattach_before_lease_ends: bool,
) -> None:
    run(_kill_holder_mid_stream(postgres_dsn, pg_schema, reattach_before_lease_ends, seed=11), timeout=50)
