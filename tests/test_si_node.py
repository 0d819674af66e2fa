"""The SI recipient node in process (aiohttp's test server), with the client library posting to it
directly: registration and its refusals, replays, delivery to offline and online clients, the
mailbox under fresh session keys, bills and vouchers, relay receipts, malformed input; and the
communication address and wire helpers the node and client share."""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from eth_abi.abi import encode
from eth_utils.crypto import keccak

from offchain.si.address import AddressError, CommunicationAddress, b58decode, b58encode
from offchain.si.billing import Meter, Prices
from offchain.si.client import BillRejected, ClientProfile, NodeRefused, PaymentTerms, SIClient
from offchain.si.directory import NodeInfo
from offchain.si.ecies import KeyPair
from offchain.si.envelope import seal
from offchain.si.mailbox import Mailbox, MailboxLimits
from offchain.si.node import NODE_KEY, LocalPushBus, NodeConfig, NodeState, earnings, open_node_app
from offchain.si.receipt import RECEIPT_HEADER, sign_receipt
from offchain.si.registration import (
    RequestKind,
    seal_request,
    sign_authorization,
    sign_request,
)
from offchain.si.stream import Bill, EventType, SSEParser, open_event, seal_event, sse_frame

T = TypeVar("T")
CASH = bytes.fromhex("c0" * 20)
NOTE_CHAIN = keccak(b"a note chain")
CHAIN_ID = 43112
DAY = 86400


def run(test: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async test in its own loop, bounded."""

    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(test(*args, **kwargs), 30))

    return wrapper


def terms(**changes: Any) -> PaymentTerms:
    values: dict[str, Any] = {
        "chain_id": CHAIN_ID,
        "cash": CASH,
        "note_chain": NOTE_CHAIN,
        "limit": 1_000_000,
        "nonce": 0,
        "expiry": int(time.time()) + 30 * DAY,
    }
    values.update(changes)
    return PaymentTerms(**values)


class Node:
    """A node on an ephemeral port, its stores open for inspection."""

    def __init__(self, data: Path, config: NodeConfig, key: KeyPair | None = None) -> None:
        self.data = data
        self.config = config
        self.key = key or KeyPair.generate()
        self.clients: list[SIClient] = []

    async def __aenter__(self) -> Node:
        self.app, self.mailbox, self.state = open_node_app(self.data, self.key, self.config)
        self.server = TestServer(self.app, host="127.0.0.1")
        await self.server.start_server()
        self.url = str(self.server.make_url("/")).rstrip("/")
        self.info = NodeInfo(self.key.address, self.url, self.key.public_key_64)
        self.session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for client in self.clients:
            await client.close()
        await self.session.close()
        await self.server.close()
        self.state.close()
        self.mailbox.close()

    def client(self, key: KeyPair | None = None) -> SIClient:
        client = SIClient(key or KeyPair.generate(), ClientProfile(self.url, self.info, terms()))
        self.clients.append(client)
        return client

    async def post(self, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        async with self.session.post(self.url + "/post", data=body, headers=headers or {}) as response:
            return response.status, await response.read()


def config(**changes: Any) -> NodeConfig:
    return NodeConfig(chain_id=CHAIN_ID, cash=CASH, keepalive_seconds=0.5, **changes)


def error_of(body: bytes) -> str:
    return str(json.loads(body)["error"])


# -- registration -------------------------------------------------------------------------------------


@run
async def test_register_then_refusals_of_bad_authorizations(tmp_path: Path) -> None:
    async with Node(tmp_path, config(prices=Prices(7, 3), min_authorization_limit=10)) as node:
        alice = node.client()
        registered = await alice.register()
        assert (registered.node, registered.per_mb_outbound, registered.per_mb_hour_storage) == (node.key.address, 7, 3)
        assert node.state.account(alice.key.address) is not None

        async def refused(**bad: Any) -> NodeRefused:
            client = node.client()
            with pytest.raises(NodeRefused) as caught:
                await client.register(terms=terms(**bad))
            assert node.state.account(client.key.address) is None
            return caught.value

        for bad, words in [
            ({"chain_id": 1}, "chain 1"),
            ({"cash": bytes(20)}, "CoNETCash"),
            ({"limit": 9}, "minimum 10"),
            ({"expiry": int(time.time()) + 60}, "less than"),
            ({"expiry": int(time.time()) + 1000 * DAY}, "over"),
        ]:
            error = await refused(**bad)
            assert (error.status, error.code) == (403, "authorization_rejected")
            assert words in error.message

        # Signed for another payee, or by someone other than the registering client.
        client = node.client()
        other = KeyPair.generate()
        for authorization in (
            sign_authorization(
                client.key,
                chain_id=CHAIN_ID,
                cash=CASH,
                note_chain=NOTE_CHAIN,
                payee=other.address,
                limit=100,
                nonce=0,
                expiry=int(time.time()) + DAY,
            ),
            sign_authorization(
                other,
                chain_id=CHAIN_ID,
                cash=CASH,
                note_chain=NOTE_CHAIN,
                payee=node.key.address,
                limit=100,
                nonce=0,
                expiry=int(time.time()) + DAY,
            ),
        ):
            request = sign_request(
                client.key,
                node=node.key.address,
                kind=RequestKind.REGISTER,
                session_key=KeyPair.generate().public_key,
                payload=authorization.encode(),
            )
            status, body = await node.post(seal_request(node.key.public_key, request))
            assert (status, error_of(body)) == (403, "authorization_rejected")
            assert client.key.checksum_address.lower() not in body.decode().lower()  # refusals name nobody


def test_authorization_digest_is_the_note_ledgers_eip712() -> None:
    holder, payee = KeyPair.generate(), KeyPair.generate()
    authorization = sign_authorization(
        holder, chain_id=CHAIN_ID, cash=CASH, note_chain=NOTE_CHAIN, payee=payee.address, limit=5, nonce=2, expiry=99
    )
    domain_type = b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract,bytes32 salt)"
    separator = keccak(
        encode(
            ["bytes32", "bytes32", "bytes32", "uint256", "address", "bytes32"],
            [keccak(domain_type), keccak(b"CoNETCash Note"), keccak(b"1"), CHAIN_ID, CASH, NOTE_CHAIN],
        )
    )
    type_hash = keccak(b"Authorize(address holder,address payee,uint256 limit,uint256 nonce,uint256 expiry)")
    struct = keccak(
        type_hash
        + encode(["address", "address", "uint256", "uint256", "uint256"], [holder.address, payee.address, 5, 2, 99])
    )
    assert authorization.digest() == keccak(b"\x19\x01" + separator + struct)
    assert authorization.signer() == holder.address


@run
async def test_replayed_and_older_registrations_are_refused(tmp_path: Path) -> None:
    key = KeyPair.generate()
    async with Node(tmp_path, config()) as node:
        client = node.client(key)
        authorization = sign_authorization(
            key,
            chain_id=CHAIN_ID,
            cash=CASH,
            note_chain=NOTE_CHAIN,
            payee=node.key.address,
            limit=100,
            nonce=3,
            expiry=int(time.time()) + DAY,
        )

        def registration(timestamp_ms: int, auth: Any = authorization) -> bytes:
            request = sign_request(
                key,
                node=node.key.address,
                kind=RequestKind.REGISTER,
                timestamp_ms=timestamp_ms,
                session_key=KeyPair.generate().public_key,
                payload=auth.encode(),
            )
            return seal_request(node.key.public_key, request)

        now_ms = int(time.time() * 1000)
        first = registration(now_ms)
        assert (await node.post(first))[0] == 200
        status, body = await node.post(first)  # the very same bytes
        assert (status, error_of(body)) == (409, "replayed_request")
        status, body = await node.post(registration(now_ms - 1000))  # fresh id, older time
        assert (status, error_of(body)) == (409, "replayed_registration")
        older_nonce = sign_authorization(
            key,
            chain_id=CHAIN_ID,
            cash=CASH,
            note_chain=NOTE_CHAIN,
            payee=node.key.address,
            limit=100,
            nonce=2,
            expiry=int(time.time()) + DAY,
        )
        status, body = await node.post(registration(now_ms + 1000, older_nonce))
        assert (status, error_of(body)) == (409, "replayed_registration")
        assert b"nonce 2" in body
        assert (await node.post(registration(now_ms + 2000)))[0] == 200  # newer: a re-registration
        del client
    # After a restart the replay cache is empty; the stored registration time still refuses the replay.
    async with Node(tmp_path, config(), key=node.key) as again:
        status, body = await again.post(first)
        assert (status, error_of(body)) == (409, "replayed_registration")


@run
async def test_stale_forged_and_unregistered_requests(tmp_path: Path) -> None:
    async with Node(tmp_path, config(clock_skew_seconds=60)) as node:
        alice = node.client()
        await alice.register()
        session = KeyPair.generate().public_key

        stale = sign_request(
            alice.key,
            node=node.key.address,
            kind=RequestKind.LISTEN,
            session_key=session,
            timestamp_ms=int(time.time() * 1000) - 120_000,
        )
        status, body = await node.post(seal_request(node.key.public_key, stale))
        assert (status, error_of(body)) == (400, "stale_request")

        # Mallory signs a request that names Alice as its client.
        forged = sign_request(
            KeyPair.generate(),
            node=node.key.address,
            kind=RequestKind.FETCH,
            session_key=session,
            payload=(10).to_bytes(4, "big"),
        )
        forged = type(forged)(**{**forged.__dict__, "client": alice.key.address})
        status, body = await node.post(seal_request(node.key.public_key, forged))
        assert (status, error_of(body)) == (400, "bad_signature")

        # A request for another node does not verify here even when sealed to this one.
        elsewhere = sign_request(
            alice.key, node=KeyPair.generate().address, kind=RequestKind.LISTEN, session_key=session
        )
        status, body = await node.post(seal_request(node.key.public_key, elsewhere))
        assert (status, error_of(body)) == (400, "bad_signature")

        stranger = node.client()
        with pytest.raises(NodeRefused) as caught:
            await stranger.fetch()
        assert (caught.value.status, caught.value.code) == (404, "unknown_client")


# -- delivery -----------------------------------------------------------------------------------------


@run
async def test_offline_message_is_stored_fetched_under_fresh_keys_and_deleted_on_ack(tmp_path: Path) -> None:
    async with Node(tmp_path, config()) as node:
        alice, bob = node.client(), node.client()
        await bob.register()
        assert not await node.app[NODE_KEY].bus.is_online(bob.key.address)
        await alice.send(bob.communication_address(), b"while you were out")
        assert node.mailbox.usage(bob.key.address) == (1, 1023)
        rows = node.mailbox._connection().execute("SELECT blob FROM messages").fetchall()
        assert b"while you were out" not in bytes(rows[0][0])  # the node cannot read what it keeps

        first, remaining = await bob.fetch()
        second, _ = await bob.fetch()  # fetching deletes nothing
        assert [m.message.content for m in first] == [b"while you were out"] and remaining == 0
        assert first[0].message.sender == alice.key.checksum_address
        assert [m.id for m in second] == [m.id for m in first]
        assert await bob.ack([first[0].id]) == 1
        assert await bob.ack([first[0].id]) == 0  # a repeated ack is harmless
        assert node.mailbox.usage(bob.key.address) == (0, 0)
        assert (await bob.fetch())[0] == []


@run
async def test_fetch_answer_is_under_the_request_session_key(tmp_path: Path) -> None:
    async with Node(tmp_path, config()) as node:
        alice, bob = node.client(), node.client()
        await bob.register()
        await alice.send(bob.communication_address(), b"x")
        sessions = [KeyPair.generate(), KeyPair.generate()]
        blobs = []
        for session in sessions:
            request = sign_request(
                bob.key,
                node=node.key.address,
                kind=RequestKind.FETCH,
                session_key=session.public_key,
                payload=(10).to_bytes(4, "big"),
            )
            status, body = await node.post(seal_request(node.key.public_key, request))
            assert status == 200
            blobs.append(SSEParser(1 << 21).feed(body))
        events = [open_event(sessions[0], blob) for blob in blobs[0]]
        assert [e.type for e in events] == [EventType.MESSAGE, EventType.INBOX_END]
        with pytest.raises(Exception, match="authentication failed"):
            open_event(sessions[0], blobs[1][0])  # the second answer opens only with the second key
        assert open_event(sessions[1], blobs[1][0]).body == events[0].body


@run
async def test_online_client_gets_a_push_and_the_copy_goes_on_ack(tmp_path: Path) -> None:
    async with Node(tmp_path, config()) as node:
        alice, bob = node.client(), node.client()
        await bob.register()
        got: list[bytes] = []

        async def listen() -> None:
            async for item in bob.listen():
                got.append(item.message.content)
                if len(got) == 2:
                    return

        task = asyncio.create_task(listen())
        bus = node.app[NODE_KEY].bus
        await wait_for(lambda: bus._streams.get(bob.key.address) is not None)
        await alice.send(bob.communication_address(), b"one")
        await alice.send(bob.communication_address(), b"two")
        await asyncio.wait_for(task, 10)
        assert got == [b"one", b"two"]
        # "two" was yielded last; the stream closed before asking for a third, so its copy stays.
        await wait_for(lambda: node.mailbox.usage(bob.key.address)[0] <= 1)
        assert bob.connections == 1


@run
async def test_a_newer_stream_replaces_the_older(tmp_path: Path) -> None:
    bus = LocalPushBus(queue_size=2)
    async with bus.subscribe(b"a" * 20) as first:
        async with bus.subscribe(b"a" * 20) as second:
            assert await first.get() is None  # ended: its handler closes the stream
            assert await bus.publish(b"a" * 20, b"blob")
            assert await second.get() == b"blob"
            assert await bus.publish(b"a" * 20, b"1") and await bus.publish(b"a" * 20, b"2")
            assert not await bus.publish(b"a" * 20, b"3")  # fell behind: closed, client refetches
            assert await second.get() is None
        assert not await bus.is_online(b"a" * 20)


@run
async def test_forged_sender_signature_is_dropped_by_the_recipient(tmp_path: Path) -> None:
    async with Node(tmp_path, config()) as node:
        mallory, bob = node.client(), node.client()
        await bob.register()
        # Mallory seals a message naming Alice as sender (signed by Mallory): only Bob can tell.
        alice = KeyPair.generate()
        from offchain.si import envelope as env

        real_sign = env.sign
        env.sign = lambda key, digest: real_sign(mallory.key, digest)  # type: ignore[assignment]
        try:
            forged = seal(alice, bob.key.public_key, node.key.public_key, b"send me money")
        finally:
            env.sign = real_sign  # type: ignore[assignment]
        assert (await node.post(forged))[0] == 200  # the node cannot read N1, so it stores it
        received, _ = await bob.fetch()
        assert received == []
        assert len(bob.rejected) == 1 and "BadSignature" in bob.rejected[0][1]
        assert node.mailbox.usage(bob.key.address) == (0, 0)  # acknowledged away


@run
async def test_unknown_recipient_and_malformed_bodies_get_clear_errors(tmp_path: Path) -> None:
    async with Node(tmp_path, config()) as node:
        alice, bob = node.client(), node.client()
        await bob.register()
        stranger = KeyPair.generate()
        status, body = await node.post(seal(alice.key, stranger.public_key, node.key.public_key, b"hi"))
        assert (status, error_of(body)) == (404, "unknown_recipient")
        assert stranger.checksum_address.lower() not in body.decode().lower()

        good = seal(alice.key, bob.key.public_key, node.key.public_key, b"hi")
        cases = [
            (b"GET / HTTP/1.1 junk", 400, "bad_magic"),
            (good[:500], 400, "truncated_envelope"),
            (good[:-1] + bytes([good[-1] ^ 1]), 400, "tampered_envelope"),
            (seal(alice.key, bob.key.public_key, KeyPair.generate().public_key, b"hi"), 400, "wrong_recipient"),
            (b"CNSI\x02" + good[5:], 400, "unsupported_version"),
            (b"\0" * (node.config.max_envelope + 1), 413, "too_large"),
        ]
        for data, status_expected, code in cases:
            status, body = await node.post(data)
            assert (status, error_of(body)) == (status_expected, code), body

        # A chunked body (no Content-Length) over the limit is cut off too.
        async def chunks() -> Any:
            for _ in range(20):
                yield b"\0" * 65536

        status, body = await node.post(chunks())  # type: ignore[arg-type]
        assert (status, error_of(body)) == (413, "too_large")

        await alice.send(bob.communication_address(), b"still serving")
        assert [m.message.content for m in (await bob.fetch())[0]] == [b"still serving"]
        async with node.session.get(node.url + "/") as response:
            assert response.headers["Server"].startswith("nginx") and b"Welcome to nginx" in await response.read()


@run
async def test_mailbox_full_is_refused_and_nothing_kept(tmp_path: Path) -> None:
    async with Node(tmp_path, config(limits=MailboxLimits(max_bytes=10_000, max_messages=2))) as node:
        alice, bob = node.client(), node.client()
        await bob.register()
        await alice.send(bob.communication_address(), b"1")
        await alice.send(bob.communication_address(), b"2")
        with pytest.raises(NodeRefused) as caught:
            await alice.send(bob.communication_address(), b"3")
        assert (caught.value.status, caught.value.code) == (507, "mailbox_full")
        assert node.mailbox.usage(bob.key.address)[0] == 2


# -- billing -----------------------------------------------------------------------------------------


@run
async def test_bills_vouchers_credit_and_earnings_to_the_unit(tmp_path: Path) -> None:
    prices = Prices(per_mb_outbound=1_000, per_mb_hour_storage=3_600_000)
    async with Node(tmp_path, config(prices=prices, bill_threshold_bytes=2_000, credit_limit=3)) as node:
        alice, bob = node.client(), node.client()
        await bob.register()
        for text in (b"a", b"b", b"c"):
            await alice.send(bob.communication_address(), text)
        received, _ = await bob.fetch()
        # One ack of 1,023 bytes stays under the threshold: no bill; the second crosses it.
        await bob.ack([received[0].id])
        assert bob.profile.billed_total == 0
        await bob.ack([received[1].id])
        account = node.state.account(bob.key.address)
        assert account is not None and account.carried_unbilled == 0
        billed = account.billed_total
        # 2,046 bytes at 1,000/MB = 2.046; storage at 1/byte-second for whatever seconds passed: one ceiling.
        assert billed >= Meter(prices).charge(bytes_carried=2046) == 3
        assert bob.profile.vouched_total == billed and bob.profile.voucher_nonce == 1

        # Usage piles up without paying: the node refuses service past the credit limit, then is paid.
        node.state.add_carried(bob.key.address, 10_000_000)
        received, _ = await bob.fetch()  # 402 answered by a voucher, then served
        assert bob.profile.vouched_total == node.state.account(bob.key.address).billed_total  # type: ignore[union-attr]

        node_address, clients, relays = earnings(tmp_path)
        assert node_address == node.key.checksum_address and relays == []
        (line,) = [c for c in clients if c.client == bob.key.checksum_address]
        assert line.billed == line.vouched == line.owed == bob.profile.vouched_total and line.unpaid == 0

        batch = node.state.settle_batch(now=int(time.time()))
        assert [(d.holder, d.amount, d.note_chain) for d in batch] == [
            (bob.key.checksum_address, line.owed, NOTE_CHAIN)
        ]
        assert node.state.settle_batch(now=int(time.time())) == []
        (line,) = [c for c in earnings(tmp_path)[1] if c.client == bob.key.checksum_address]
        assert (line.owed, line.settled) == (0, bob.profile.vouched_total)


def test_client_checks_bills_before_paying() -> None:
    client = SIClient(KeyPair.generate(), ClientProfile("http://x", None, terms(limit=100), Prices(1_000, 0)))
    ok = Bill(
        cumulative_due=3,
        charge=3,
        bytes_carried=2046,
        byte_seconds=0,
        per_mb_outbound=1_000,
        per_mb_hour_storage=0,
        issued_at=0,
    )
    client.check_bill(ok)
    for bad in (
        Bill(4, 4, 2046, 0, 1_000, 0, 0),  # overcharged
        Bill(3, 3, 2046, 0, 999, 0, 0),  # other prices
        Bill(101, 3, 2046, 0, 1_000, 0, 0),  # beyond the authorization
    ):
        with pytest.raises(BillRejected):
            client.check_bill(bad)


@run
async def test_relay_receipts_credit_each_envelope_once_at_the_relay_price(tmp_path: Path) -> None:
    async with Node(tmp_path, config(relay_per_mb=1_000)) as node:
        alice, bob = node.client(), node.client()
        await bob.register()
        relay = KeyPair.generate()
        envelope = seal(alice.key, bob.key.public_key, node.key.public_key, b"paid for")
        receipt = sign_receipt(relay, node=node.key.address, envelope_prefix=envelope, byte_count=len(envelope))
        for _ in range(2):  # a retried envelope carries the same tag: credited once
            assert (await node.post(envelope, {RECEIPT_HEADER: receipt.encode()}))[0] == 200
        (owed,) = node.state.owed_to_relays()
        assert (owed.relay, owed.bytes, owed.owed) == (relay.checksum_address, len(envelope), 2)  # ⌈1,114·1000/10⁶⌉

        forged = sign_receipt(
            KeyPair.generate(), node=node.key.address, envelope_prefix=envelope, byte_count=len(envelope)
        )
        forged = type(forged)(**{**forged.__dict__, "relay": relay.address})
        status, body = await node.post(envelope, {RECEIPT_HEADER: forged.encode()})
        assert (status, error_of(body)) == (400, "bad_receipt_signature")
        assert node.state.owed_to_relays()[0].bytes == len(envelope)


# -- shared pieces -----------------------------------------------------------------------------------


def test_communication_address_round_trip_and_errors() -> None:
    person, node = KeyPair.generate(), KeyPair.generate()
    address = CommunicationAddress(person.public_key, node.address, "http://127.0.0.1:8080")
    text = address.encode()
    assert text.startswith("conet:") and CommunicationAddress.parse(text) == address
    assert CommunicationAddress.parse(text).address == person.address
    bare = CommunicationAddress(person.public_key_64, node.address).encode()
    assert len(bare) < 90 and CommunicationAddress.parse(bare).relay_hint == ""
    with pytest.raises(AddressError, match="starts with"):
        CommunicationAddress.parse(text[1:])
    with pytest.raises(AddressError, match="not base58"):
        CommunicationAddress.parse(text[:-1] + "0")
    with pytest.raises(AddressError, match="checksum"):
        CommunicationAddress.parse(text[:-1] + ("2" if text[-1] != "2" else "3"))
    with pytest.raises(AddressError, match=r"too short|checksum"):
        CommunicationAddress.parse(text[:20])
    with pytest.raises(AddressError, match="public key"):
        CommunicationAddress(b"\x02" + b"\xff" * 32, node.address)
    assert b58decode(b58encode(b"\0\0abc")) == b"\0\0abc"


def test_events_are_one_bucket_and_sse_survives_any_chunking() -> None:
    session = KeyPair.generate()
    bodies = [(EventType.READY, b"\0" * 12), (EventType.BILL, Bill(1, 1, 1, 1, 1, 1, 1).encode())]
    blobs = [seal_event(session.public_key, kind, body) for kind, body in bodies]
    assert {len(blob) for blob in blobs} == {1024 + 61}
    stream = b": \n\n" + b"".join(sse_frame(blob) for blob in blobs)
    for size in (1, 7, 1000):
        parser = SSEParser(1 << 20)
        out = [blob for start in range(0, len(stream), size) for blob in parser.feed(stream[start : start + size])]
        assert out == blobs
    assert [open_event(session, blob).body for blob in blobs] == [body for _, body in bodies]


def test_node_state_survives_reopening(tmp_path: Path) -> None:
    key = KeyPair.generate()
    state = NodeState(tmp_path / "node.db", node=key.address, config=config())
    assert state.credit_relay(b"r" * 20, 500_000, tag=b"t" * 32, now=1)
    assert not state.credit_relay(b"r" * 20, 500_000, tag=b"t" * 32, now=1)
    state.close()
    state = NodeState(tmp_path / "node.db", node=key.address, config=config())
    assert [r.bytes for r in state.owed_to_relays()] == [500_000]
    state.close()
    Mailbox(tmp_path / "mailbox.db").close()


async def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)
