"""A load-balanced recipient provider on real processes: two entry servers (`python -m
offchain.si.provider`) for ONE node wallet on a throwaway PostgreSQL, two relays whose directory lists
both entry servers, clients listening through entry server A, and a sender posting through the relays.

A is SIGKILLed while messages are being sent. The relays fail over to B, the clients' streams break
and reconnect (their backoff) through B, and every message the sender got a 200 for is received
exactly once by its client (after dedup by id), with nothing left in the mailbox or on the bus once
the clients have acknowledged. Other tests check what sharing the state buys (a client registered
through A is served by B, a request captured on A is refused as a replay on B, billing and relay
credit are one account; two `PgNodeState`s on one database agree on vouchers, receipts and
settlements), the relay's failover in process (small and streamed envelopes), the directory's
`urls`, and that a schema serves one node wallet."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
from eth_utils.crypto import keccak
from pg_fixtures import pg_schema, postgres_dsn  # noqa: F401
from psycopg import sql
from test_si_network import ALICE_IP, BOB_IP, CASH, CHAIN_ID, NOTE_CHAIN, Proc, terms, wait_until
from test_si_relay import NodeStub, relay_for
from test_si_relay import envelope as stub_envelope

from offchain.devnet.anvil import free_port
from offchain.si.billing import Prices, VoucherError, sign_voucher
from offchain.si.client import ClientProfile, Received, SIClient
from offchain.si.directory import InvalidNodeInfo, NodeInfo, StaticDirectory
from offchain.si.ecies import KeyPair
from offchain.si.envelope import seal
from offchain.si.node import NodeConfig, ReplayedRegistration, ReplayedRequest
from offchain.si.pgmailbox import PgMailbox
from offchain.si.pgstate import PgNodeState, PgReplayGuard, WrongNodeSchema
from offchain.si.registration import PayPayload, RequestKind, seal_request, sign_authorization, sign_request

MESSAGES = 90
CLIENTS = 3
KILL_AFTER = 30  # messages answered 200 before entry server A is killed


@dataclass
class Provider:
    node: KeyPair
    entries: dict[str, Proc]
    relays: list[Proc]
    directory: Path
    dsn: str
    schema: str

    @property
    def info(self) -> NodeInfo:
        urls = (self.entries["a"].url, self.entries["b"].url)
        return NodeInfo(self.node.address, urls[0], self.node.public_key_64, urls=urls)

    def query(self, text: str, *args: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            return conn.execute(sql.SQL(text).format(s=sql.Identifier(self.schema)), args).fetchall()

    def holder(self, client: bytes) -> str | None:
        rows = self.query(
            """SELECT s.server_id FROM {s}.bus_claims c JOIN {s}.bus_servers s USING (instance)
               WHERE c.recipient = %s AND s.lease_expires > clock_timestamp()""",
            client,
        )
        return str(rows[0][0]) if rows else None

    def count(self, table: str) -> int:
        return int(self.query(f"SELECT count(*) FROM {{s}}.{table}")[0][0])


@pytest.fixture
def provider(tmp_path: Path, postgres_dsn: str, pg_schema: str) -> Iterator[Provider]:  # noqa: F811
    procs: list[Proc] = []
    node = KeyPair.generate()
    key_file = tmp_path / "node.key"
    key_file.write_text(node.secret.hex())
    try:
        entries = {}
        for name in ("a", "b"):
            args = [
                "offchain.si.provider", "--key-file", str(key_file), "--postgres", postgres_dsn,
                "--server-id", name, "--schema", pg_schema, "--lease", "3", "--chain-id", str(CHAIN_ID),
                "--cash", "0x" + CASH.hex(), "--price-outbound", "1000", "--relay-price", "1000",
                "--bill-threshold", "1", "--keepalive", "1",
            ]  # fmt: skip
            entry = Proc(f"entry-{name}", node, args, tmp_path / f"entry-{name}.log")
            procs.append(entry)
            entry.start()
            entries[name] = entry
        directory = tmp_path / "directory.json"
        urls = (entries["a"].url, entries["b"].url)
        StaticDirectory([NodeInfo(node.address, urls[0], node.public_key_64, urls=urls)]).save(directory)
        relays = []
        for index in range(2):
            relay_key = KeyPair.generate()
            relay_file = tmp_path / f"relay{index}.key"
            relay_file.write_text(relay_key.secret.hex())
            args = ["offchain.si.relay", "--key-file", str(relay_file), "--directory", str(directory)]
            relay = Proc(f"relay{index}", relay_key, args, tmp_path / f"relay{index}.log")
            procs.append(relay)
            relay.start()
            relays.append(relay)
        yield Provider(node, entries, relays, directory, postgres_dsn, pg_schema)
    finally:
        for proc in procs:
            proc.stop()


@contextlib.asynccontextmanager
async def client(provider: Provider, relay: int, ip: str, key: KeyPair | None = None) -> AsyncIterator[SIClient]:
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(ip, 0)))
    profile = ClientProfile(provider.relays[relay].url, provider.info, terms())
    try:
        yield SIClient(key or KeyPair.generate(), profile, session=session, stream_timeout=5)
    finally:
        await session.close()


def content(number: int) -> bytes:
    """Every seventh message is 100 kB: over the relay's 64 KiB buffer, so it streams through the relay."""
    return b"m-%d" % number + (b"." * 100_000 if number % 7 == 3 else b"")


async def post_until_200(session: aiohttp.ClientSession, urls: list[str], envelope: bytes) -> int:
    """Post the same envelope (the node stores it idempotently by its hash) until a relay says 200;
    returns how many attempts failed on the way."""
    for attempt in range(100):
        try:
            async with session.post(urls[attempt % len(urls)] + "/post", data=envelope) as response:
                await response.read()
                if response.status == 200:
                    return attempt
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("no relay took the envelope in 100 attempts")


def test_killing_an_entry_server_mid_stream_loses_nothing(provider: Provider) -> None:
    keys = [KeyPair.generate() for _ in range(CLIENTS)]
    received: dict[bytes, list[Received]] = {key.address: [] for key in keys}
    answered: dict[bytes, bytes] = {}  # sender's message id → the client it went to (got a 200)
    failed_attempts = 0

    async def listen(bob: SIClient) -> None:
        async for item in bob.listen(min_backoff=0.2, max_backoff=1.0):
            received[bob.key.address].append(item)

    async def go() -> list[SIClient]:
        nonlocal failed_attempts
        async with contextlib.AsyncExitStack() as stack:
            bobs = [await stack.enter_async_context(client(provider, i % 2, BOB_IP, key)) for i, key in enumerate(keys)]
            alice = await stack.enter_async_context(client(provider, 0, ALICE_IP))
            for bob in bobs:
                await bob.register()
            listeners = [asyncio.create_task(listen(bob)) for bob in bobs]
            try:
                # Every client's stream is open through A, the first entry server the relays try.
                await wait_until(lambda: all(provider.holder(k.address) == "a" for k in keys), 15)
                relay_urls = [relay.url for relay in provider.relays]
                node_key = provider.node.public_key

                async def send_to(index: int) -> None:
                    # One sender per client, all at once: when A dies, posts are in flight to it.
                    nonlocal failed_attempts
                    bob = bobs[index]
                    for number in range(index, MESSAGES, CLIENTS):
                        message_id = number.to_bytes(16, "big")
                        envelope = seal(alice.key, bob.key.public_key, node_key, content(number), message_id=message_id)
                        failed_attempts += await post_until_200(alice.session, relay_urls, envelope)
                        answered[message_id] = bob.key.address
                        if len(answered) == KILL_AFTER:
                            entry_a = provider.entries["a"]
                            assert entry_a.process is not None
                            os.kill(entry_a.process.pid, signal.SIGKILL)
                        await asyncio.sleep(0.02)

                await asyncio.gather(*(send_to(index) for index in range(CLIENTS)))

                def all_in() -> bool:
                    got = {item.message.message_id for items in received.values() for item in items}
                    return set(answered) <= got

                await wait_until(all_in, 30)
                # Acknowledged (the listener acks an item when it asks for the next): nothing stays.
                await wait_until(lambda: provider.count("mailbox_messages") == 0, 15)
                await wait_until(lambda: provider.count("bus_pushes") == 0, 15)
                assert all(provider.holder(k.address) == "b" for k in keys)
            finally:
                for task in listeners:
                    task.cancel()
                await asyncio.gather(*listeners, return_exceptions=True)
            return bobs

    bobs = asyncio.run(asyncio.wait_for(go(), 55))
    # Exactly once per client, after the client's dedup by id; each at the client it was sent to.
    for bob in bobs:
        ids = [item.message.message_id for item in received[bob.key.address]]
        assert len(ids) == len(set(ids))
        assert set(ids) == {mid for mid, to in answered.items() if to == bob.key.address}
        for item in received[bob.key.address]:
            assert item.message.content == content(int.from_bytes(item.message.message_id, "big"))
        assert bob.connections >= 2  # the stream through A broke; the client came back through B
        assert bob.rejected == []
    assert len(answered) == MESSAGES
    # The relays failed over (a connection refused by A, then B) rather than failing the senders.
    relay_logs = "".join(relay.log.read_text() for relay in provider.relays)
    assert "unreachable, trying the next" in relay_logs
    assert PgMailbox(provider.dsn, schema=provider.schema).integrity_check() == "ok"
    # B served what came after the kill (A cannot have: it was dead).
    b_log = provider.entries["b"].log.read_text()
    assert "listen: " in b_log and "deliver: " in b_log
    del failed_attempts  # retries are allowed; the assertion is that nothing answered 200 was lost


def test_entry_servers_share_registrations_replays_and_accounts(provider: Provider) -> None:
    async def go() -> tuple[SIClient, SIClient]:
        async with client(provider, 0, BOB_IP) as bob, client(provider, 1, ALICE_IP) as alice:
            await bob.register()  # through the relay: A
            # A captured signed request, served once through A, is refused when replayed at B.
            session = KeyPair.generate()
            request = sign_request(
                bob.key, node=provider.node.address, kind=RequestKind.FETCH, session_key=session.public_key,
                payload=(10).to_bytes(4, "big"),
            )  # fmt: skip
            envelope = seal_request(provider.node.public_key, request)
            statuses = []
            for entry in ("a", "b"):
                async with bob.session.post(provider.entries[entry].url + "/post", data=envelope) as response:
                    statuses.append((response.status, (await response.read())[:200]))
            assert statuses[0][0] == 200
            assert statuses[1][0] == 409 and b"replayed_request" in statuses[1][1]

            # B knows the client A registered: a message posted straight to B is stored for it and
            # fetched through the relay (A), billed once, paid once.
            sent = seal(alice.key, bob.key.public_key, provider.node.public_key, b"via-b")
            async with alice.session.post(provider.entries["b"].url + "/post", data=sent) as response:
                assert response.status == 200
            items, _ = await bob.fetch()
            assert [item.message.content for item in items] == [b"via-b"]
            await bob.ack([item.id for item in items])
            return alice, bob

    alice, bob = asyncio.run(asyncio.wait_for(go(), 40))
    billed = provider.query("SELECT billed_total FROM {s}.node_clients WHERE address = %s", bob.key.address)
    vouched = provider.query("SELECT cumulative FROM {s}.node_vouchers WHERE payer = %s", bob.key.address)
    assert billed[0][0] > 0 and vouched[0][0] == billed[0][0]  # one account, paid to the unit
    assert bob.profile.vouched_total == int(billed[0][0])
    relays = {bytes(r[0]) for r in provider.query("SELECT relay FROM {s}.node_relay_usage")}
    assert provider.relays[0].key.address in relays
    # Re-registration is judged against the shared record, whichever server takes it.
    assert provider.count("node_clients") == 1
    del alice


def test_a_schema_serves_one_node_wallet(provider: Provider, tmp_path: Path) -> None:
    other = KeyPair.generate()
    key_file = tmp_path / "other.key"
    key_file.write_text(other.secret.hex())
    args = [
        "offchain.si.provider", "--key-file", str(key_file), "--postgres", provider.dsn, "--server-id", "c",
        "--schema", provider.schema,
    ]  # fmt: skip
    proc = Proc("entry-c", other, args, tmp_path / "entry-c.log")
    with pytest.raises(RuntimeError, match="did not start"):
        proc.start()
    assert "one schema per node wallet" in (tmp_path / "entry-c.log").read_text()


def test_the_directory_lists_every_entry_server(tmp_path: Path) -> None:
    key = KeyPair.generate()
    several = NodeInfo(key.address, "http://a:1", key.public_key_64, urls=["http://a:1", "http://b:2/"])  # type: ignore[arg-type]
    assert several.urls == ("http://a:1", "http://b:2/")
    assert several.post_urls == ("http://a:1/post", "http://b:2/post")
    one = NodeInfo(key.address, "http://a:1", key.public_key_64, urls=("http://a:1",))
    assert one == NodeInfo(key.address, "http://a:1", key.public_key_64) and one.post_urls == ("http://a:1/post",)
    assert "urls" not in one.to_json()  # a single entry server keeps the old file format
    path = tmp_path / "nodes.json"
    StaticDirectory([several]).save(path)
    assert StaticDirectory.load(path).nodes == [several]
    with pytest.raises(InvalidNodeInfo, match="must start with url"):
        NodeInfo(key.address, "http://a:1", key.public_key_64, urls=("http://b:2", "http://a:1"))
    with pytest.raises(InvalidNodeInfo, match="listed twice"):
        NodeInfo(key.address, "http://a:1", key.public_key_64, urls=("http://a:1", "http://a:1"))
    with pytest.raises(InvalidNodeInfo, match="http"):
        NodeInfo(key.address, "http://a:1", key.public_key_64, urls=("http://a:1", "ftp://b"))


def test_the_relay_fails_over_to_the_next_entry_server_small_and_streamed() -> None:
    """In process: a node listed with a dead entry server first and a live one second. Small (read
    whole) and large (streamed, chunked) envelopes both reach the live one byte for byte, the dead one
    is tried last afterwards, and a node whose every entry server is dead is a 502."""

    async def go() -> None:
        live = await NodeStub().start()
        dead_url = f"http://127.0.0.1:{free_port()}"
        try:
            info = NodeInfo(live.key.address, dead_url, live.key.public_key_64, urls=(dead_url, live.url))
            async with relay_for(info) as (relay, url), aiohttp.ClientSession() as session:
                small = stub_envelope(live.key, b"small")
                large = stub_envelope(live.key, b"L" * 200_000)

                async def chunks() -> AsyncIterator[bytes]:
                    for start in range(0, len(large), 50_000):
                        yield large[start : start + 50_000]

                async with session.post(url + "/post", data=small) as response:
                    assert response.status == 200
                assert relay.stats.failovers == 1
                async with session.post(url + "/post", data=chunks()) as response:  # no Content-Length
                    assert response.status == 200
                assert [r.body for r in live.received] == [small, large]
                assert relay.stats.failovers == 1  # the dead server is now tried last: no second failover
            also_dead = f"http://127.0.0.1:{free_port()}"
            everyone_dead = NodeInfo(live.key.address, dead_url, live.key.public_key_64, urls=(dead_url, also_dead))
            async with relay_for(everyone_dead) as (relay, url), aiohttp.ClientSession() as session:
                async with session.post(url + "/post", data=small) as response:
                    assert response.status == 502
                assert relay.stats.refused["upstream-down"] == 1 and relay.stats.failovers == 1
        finally:
            await live.stop()

    asyncio.run(asyncio.wait_for(go(), 20))


def test_two_state_instances_agree_on_one_database(postgres_dsn: str, pg_schema: str) -> None:  # noqa: F811
    """What two entry servers' `PgNodeState`s see of each other, without processes: a registration,
    a replayed one, a voucher judged against the other's latest, a relay receipt credited once,
    concurrent settlements that deduct each unit once, the shared replay guard, and one wallet per schema."""
    node, bob, relay = KeyPair.generate(), KeyPair.generate(), KeyPair.generate()
    config = NodeConfig(chain_id=CHAIN_ID, cash=CASH, prices=Prices(1000, 0), relay_per_mb=1000, bill_threshold_bytes=1)
    a = PgNodeState(postgres_dsn, node=node.address, config=config, schema=pg_schema)
    b = PgNodeState(postgres_dsn, node=node.address, config=config, schema=pg_schema)
    try:
        now = int(time.time())
        authorization = sign_authorization(
            bob, chain_id=CHAIN_ID, cash=CASH, note_chain=NOTE_CHAIN, payee=node.address, limit=10**9, nonce=0,
            expiry=now + 86400,
        )  # fmt: skip
        request = sign_request(bob, node=node.address, kind=RequestKind.REGISTER, session_key=bob.public_key)
        a.register(request, authorization, storage_reading=0, now=now)
        assert b.account(bob.address) is not None
        with pytest.raises(ReplayedRegistration):
            b.register(request, authorization, storage_reading=0, now=now)

        a.add_carried(bob.address, 3_000_000)
        bill = b.bill(bob.address, storage_reading=0, now=now, force=False)
        assert (
            bill is not None
            and bill.charge == 3000
            and a.bill(bob.address, storage_reading=0, now=now, force=True) is None
        )

        domain = a.domain(NOTE_CHAIN)

        def voucher(amount: int, nonce: int) -> PayPayload:
            signed = sign_voucher(bob.secret, domain=domain, payee=node.checksum_address, cumulative_amount=amount,
                                  nonce=nonce, expiry=now + 3600)  # fmt: skip
            return PayPayload(signed.cumulative_amount, signed.nonce, signed.expiry, signed.signature)

        assert a.pay(bob.address, voucher(3000, 2), now=now) == (3000, 3000)
        assert b.pay(bob.address, voucher(3000, 2), now=now) == (3000, 3000)  # the same again: idempotent
        with pytest.raises(VoucherError):  # older than what A accepted: B judges it by the shared row
            b.pay(bob.address, voucher(2000, 1), now=now)

        tag = keccak(b"one envelope")[:32]
        credited = [
            a.credit_relay(relay.address, 1114, tag=tag, now=now),
            b.credit_relay(relay.address, 1114, tag=tag, now=now),
        ]
        assert sorted(credited) == [False, True]
        (owed,) = b.owed_to_relays()
        assert (owed.bytes, owed.owed) == (1114, 2)

        (due,) = b.settlement_due(now=now)
        assert (due.holder, due.amount, due.settled_total) == (bob.checksum_address, 3000, 3000)
        with ThreadPoolExecutor(2) as pool:  # both servers record one final deduction of 1000: counted once
            added = list(pool.map(lambda state: state.record_settlement(NOTE_CHAIN, bob.address, 0, 1000), [a, b]))
            assert sorted(added) == [0, 1000]
            batches = list(pool.map(lambda state: state.settle_batch(now=now), [a, b]))
        assert sum(d.amount for batch in batches for d in batch) == 2000
        assert a.settlement_due(now=now) == []
        (line,) = a.owed_by_clients()
        assert (line.billed, line.vouched, line.settled, line.owed, line.unpaid) == (3000, 3000, 3000, 0, 0)

        async def replay() -> None:
            fetch = sign_request(bob, node=node.address, kind=RequestKind.FETCH, session_key=bob.public_key)
            await PgReplayGuard(a).check_and_add(fetch, now * 1000)
            with pytest.raises(ReplayedRequest):
                await PgReplayGuard(b).check_and_add(fetch, now * 1000)

        asyncio.run(replay())
        with pytest.raises(WrongNodeSchema, match="one schema per node wallet"):
            PgNodeState(postgres_dsn, node=KeyPair.generate().address, config=config, schema=pg_schema)
    finally:
        a.close()
        b.close()
