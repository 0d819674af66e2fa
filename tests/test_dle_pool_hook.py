"""The waiting pool's long-poll hook, with real aiohttp servers on 127.0.0.1 and real signatures: the
line is PoH order, polling again within grace keeps a place, coming back after it goes to the back,
forged / stale / replayed joins are refused, an assignment wakes the poll at once, and the candidate's
client re-joins by the rules after losing its connection."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
import rlp
from aiohttp import web
from coincurve import PrivateKey
from eth_utils.crypto import keccak

from dle_vm.signature import address_of, recover
from offchain.dle.poh import GENESIS_HASH, ProofOfHistory
from offchain.dle.pool import WaitingPool
from offchain.dle.pool_hook import (
    VALIDATOR,
    WITNESS,
    JoinRequest,
    PoolHook,
    PoolHookError,
    join_digest,
    wait_for_assignment,
)

ARCHIVE = b"\xa7" * 20


def key(name: str) -> bytes:
    return hashlib.sha256(name.encode()).digest()


def addr(name: str) -> bytes:
    return address_of(PrivateKey(key(name)).public_key)


class Node:
    """An archive node's app with the hook on it, served on 127.0.0.1."""

    def __init__(self, hook: PoolHook) -> None:
        self.hook = hook
        self.pool = hook.pool
        self.runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        self.hook.add_routes(app)
        self.runner = web.AppRunner(app, shutdown_timeout=1)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        self.port = self.runner.addresses[0][1]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    def order(self) -> list[bytes]:
        return [candidate.address for candidate in self.pool.order()]


@asynccontextmanager
async def archive_node(hold: float, grace: float, **options: Any) -> AsyncIterator[Node]:
    hook = PoolHook(WaitingPool(ProofOfHistory()), hold, grace, archive=ARCHIVE, **options)
    node = Node(hook)
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        async with asyncio.timeout(40):  # a hung scenario fails instead of hanging the suite
            await scenario()

    asyncio.run(main())


async def join(session: aiohttp.ClientSession, node: Node, name: str, role: int = WITNESS) -> str:
    request = JoinRequest.signed(key(name), ARCHIVE, role)
    async with session.post(f"{node.url}/pool/join", json=request.to_json()) as response:
        assert response.status == 200, await response.text()
        return str((await response.json())["ticket"])


async def poll(session: aiohttp.ClientSession, node: Node, ticket: str) -> tuple[int, bytes]:
    async with session.get(f"{node.url}/pool/wait", params={"ticket": ticket}) as response:
        return response.status, await response.read()


def test_line_is_poh_order_and_verifiable() -> None:
    async def scenario() -> None:
        async with archive_node(hold=0.3, grace=2) as node, aiohttp.ClientSession() as session:
            names = ["carol", "alice", "bob", "dave"]
            for name in names:
                await join(session, node, name, role=VALIDATOR if name == "dave" else WITNESS)
            assert node.order() == [addr(name) for name in names]
            indices = [candidate.stamp.index for candidate in node.pool.order()]
            assert indices == sorted(indices) and len(set(indices)) == 4
            node.pool.snapshot().verify(GENESIS_HASH)  # the order is proven by the PoH record
            assert node.pool.order()[3].role == VALIDATOR

    run(scenario)


def test_polling_again_within_grace_keeps_the_place() -> None:
    async def scenario() -> None:
        async with archive_node(hold=0.2, grace=1.0, sweep_interval=0.05) as node, aiohttp.ClientSession() as session:
            tickets = [await join(session, node, name) for name in ("alice", "bob", "carol")]
            stamps = [candidate.stamp for candidate in node.pool.order()]

            async def keep_polling(ticket: str) -> None:
                for _ in range(4):  # each poll held 0.2 s then answered 204; polled again within grace
                    started = time.monotonic()
                    assert await poll(session, node, ticket) == (204, b"")
                    assert 0.19 <= time.monotonic() - started < 1.5
                    await asyncio.sleep(0.3)

            # alice and bob keep polling for 2 s, twice the grace; carol never polls
            await asyncio.gather(keep_polling(tickets[0]), keep_polling(tickets[1]))
            assert node.order() == [addr("alice"), addr("bob")]
            assert [candidate.stamp for candidate in node.pool.order()] == stamps[:2]  # the same places
            assert addr("carol") not in node.pool  # swept after her grace
            assert (await poll(session, node, tickets[2]))[0] == 410

    run(scenario)


def test_coming_back_after_grace_goes_to_the_back() -> None:
    async def scenario() -> None:
        async with archive_node(hold=0.2, grace=0.4, sweep_interval=0.05) as node, aiohttp.ClientSession() as session:
            tickets = {name: await join(session, node, name) for name in ("alice", "bob", "carol")}
            # bob and carol keep polling; alice goes quiet for longer than grace
            keep = asyncio.gather(*(_poll_for(session, node, tickets[name], seconds=1.2) for name in ("bob", "carol")))
            await asyncio.sleep(1.0)
            assert node.order() == [addr("bob"), addr("carol")]  # alice was swept
            status, body = await poll(session, node, tickets["alice"])
            assert status == 410 and json.loads(body)["code"] == "ticket-expired"
            await keep
            await join(session, node, "alice")
            assert node.order() == [addr("bob"), addr("carol"), addr("alice")]

    run(scenario)


async def _poll_for(session: aiohttp.ClientSession, node: Node, ticket: str, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        status, _ = await poll(session, node, ticket)
        assert status == 204


def test_expired_ticket_polled_before_the_sweep_is_refused_and_leaves() -> None:
    async def scenario() -> None:
        # the sweep is far off: the poll itself finds the grace expired
        async with archive_node(hold=0.2, grace=0.2, sweep_interval=60) as node, aiohttp.ClientSession() as session:
            ticket = await join(session, node, "alice")
            await join(session, node, "bob")
            await asyncio.sleep(0.35)
            status, body = await poll(session, node, ticket)
            assert status == 410 and b"grace" in body
            assert node.order() == [addr("bob")]

    run(scenario)


def test_forged_stale_replayed_and_malformed_joins_are_refused() -> None:
    async def scenario() -> None:
        async with archive_node(hold=0.2, grace=2, max_skew=30) as node, aiohttp.ClientSession() as session:

            async def post(body: Any, raw: bytes | None = None) -> tuple[int, str]:
                data = raw if raw is not None else json.dumps(body).encode()
                async with session.post(f"{node.url}/pool/join", data=data) as response:
                    text = await response.text()
                    code = json.loads(text).get("code", "") if response.status != 200 else ""
                    return response.status, code

            good = JoinRequest.signed(key("alice"), ARCHIVE, WITNESS)
            # mallory signs, claiming to be alice: would push alice to the back
            forged = JoinRequest.signed(key("mallory"), ARCHIVE, WITNESS)
            forged_json = {**forged.to_json(), "address": good.to_json()["address"]}
            assert await post(forged_json) == (401, "bad-signature")
            # a signature for another archive node does not recover to alice here
            elsewhere = JoinRequest.signed(key("alice"), b"\x01" * 20, WITNESS)
            assert await post(elsewhere.to_json()) == (401, "bad-signature")
            # changed role after signing
            assert await post({**good.to_json(), "role": VALIDATOR}) == (401, "bad-signature")
            # a high-s or garbage signature
            assert await post({**good.to_json(), "signature": "0x" + "ff" * 65}) == (401, "bad-signature")
            stale = JoinRequest.signed(key("alice"), ARCHIVE, WITNESS, timestamp=int(time.time()) - 31)
            assert await post(stale.to_json()) == (400, "stale")
            future = JoinRequest.signed(key("alice"), ARCHIVE, WITNESS, timestamp=int(time.time()) + 31)
            assert await post(future.to_json()) == (400, "stale")
            cbdc = JoinRequest.signed(key("alice"), ARCHIVE, 0)
            assert await post(cbdc.to_json()) == (400, "bad-role")
            assert await post(None, raw=b"{not json") == (400, "bad-request")
            assert await post({**good.to_json(), "nonce": "0x00"}) == (400, "bad-request")
            assert await post(None, raw=b"x" * 5000) == (413, "body-too-large")
            assert len(node.pool) == 0  # nothing above queued anyone
            assert await post(good.to_json()) == (200, "")
            assert await post(good.to_json()) == (409, "replayed")
            assert node.order() == [addr("alice")]
            # the signature is over the documented digest, as is (no EIP-191 prefix)
            digest = keccak(
                rlp.encode([b"CoNET DLE pool join", ARCHIVE, good.address, WITNESS, good.timestamp, good.nonce])
            )
            assert join_digest(ARCHIVE, good.address, WITNESS, good.timestamp, good.nonce) == digest
            assert recover(digest, good.signature) == addr("alice")

    run(scenario)


def test_admission_callback() -> None:
    async def only_alice(address: bytes, role: int) -> bool:
        return address == addr("alice")

    async def scenario() -> None:
        async with archive_node(hold=0.2, grace=2, admit=only_alice) as node, aiohttp.ClientSession() as session:
            await join(session, node, "alice")
            request = JoinRequest.signed(key("bob"), ARCHIVE, WITNESS)
            async with session.post(f"{node.url}/pool/join", json=request.to_json()) as response:
                assert response.status == 403
            assert node.order() == [addr("alice")]

    run(scenario)


def test_assignment_wakes_the_poll_at_once_and_is_served_again() -> None:
    async def scenario() -> None:
        async with archive_node(hold=10, grace=1) as node, aiohttp.ClientSession() as session:
            ticket = await join(session, node, "alice")
            waiting = asyncio.create_task(poll(session, node, ticket))
            await asyncio.sleep(0.3)
            assert not waiting.done()
            assert node.hook.assign(addr("bob"), b"nobody") is False  # never joined
            started = time.monotonic()
            assert node.hook.assign(addr("alice"), b"\x00assignment\xff") is True
            assert await waiting == (200, b"\x00assignment\xff")
            assert time.monotonic() - started < 0.5  # not at the end of the 10 s hold
            # the 200 may have been lost with the connection: polling again gets it again
            assert await poll(session, node, ticket) == (200, b"\x00assignment\xff")

    run(scenario)


def test_assignment_before_the_next_poll_is_delivered_by_it() -> None:
    async def scenario() -> None:
        async with archive_node(hold=5, grace=2) as node, aiohttp.ClientSession() as session:
            ticket = await join(session, node, "alice")
            assert node.hook.assign(addr("alice"), b"you are witness 3") is True  # drawn before polling
            started = time.monotonic()
            assert await poll(session, node, ticket) == (200, b"you are witness 3")
            assert time.monotonic() - started < 1  # answered at once, not held

    run(scenario)


def test_a_new_join_replaces_the_old_ticket() -> None:
    async def scenario() -> None:
        async with archive_node(hold=5, grace=2) as node, aiohttp.ClientSession() as session:
            old = await join(session, node, "alice")
            await join(session, node, "bob")
            waiting = asyncio.create_task(poll(session, node, old))
            await asyncio.sleep(0.2)
            await join(session, node, "alice")  # re-joined: to the back, old poll ends
            status, _ = await asyncio.wait_for(waiting, 2)
            assert status == 410
            assert node.order() == [addr("bob"), addr("alice")]
            assert (await poll(session, node, old))[0] == 410

    run(scenario)


def test_a_hung_up_poll_starts_the_grace_at_once() -> None:
    """A client whose connection drops mid-poll must not keep its place for the rest of a long hold."""

    async def scenario() -> None:
        async with archive_node(hold=30, grace=0.3, sweep_interval=0.05) as node:
            async with aiohttp.ClientSession() as session:
                ticket = await join(session, node, "alice")
                task = asyncio.create_task(poll(session, node, ticket))
                await asyncio.sleep(0.2)
                task.cancel()  # the client goes away mid-poll
            await asyncio.sleep(1.2)  # the hook notices within 0.25 s; then grace, then a sweep
            assert node.order() == []

    run(scenario)


def test_held_candidates_are_left_to_the_draw() -> None:
    async def scenario() -> None:
        async with archive_node(hold=0.2, grace=0.2, sweep_interval=60) as node, aiohttp.ClientSession() as session:
            await join(session, node, "alice")
            await join(session, node, "bob")
            node.pool.take([addr("alice")])  # a draw holds alice
            await asyncio.sleep(0.3)
            assert node.hook.sweep() == [addr("bob")]
            assert [c.address for c in node.pool.held] == [addr("alice")]
            node.pool.release([addr("alice")])  # an unused standby returns, but nobody polls for it
            assert node.hook.sweep() == [addr("alice")]
            assert len(node.pool) == 0 and node.pool.held == ()
            # the same when the expired ticket is polled (answered 410) while the draw holds it
            ticket = await join(session, node, "carol")
            node.pool.take([addr("carol")])
            await asyncio.sleep(0.3)
            assert (await poll(session, node, ticket))[0] == 410
            assert [c.address for c in node.pool.held] == [addr("carol")]  # the draw still holds her
            assert node.hook.sweep() == []
            node.pool.release([addr("carol")])
            assert node.hook.sweep() == [addr("carol")]
            assert len(node.pool) == 0
            # and one that the draw removes is simply forgotten
            ticket = await join(session, node, "dave")
            node.pool.take([addr("dave")])
            await asyncio.sleep(0.3)
            assert (await poll(session, node, ticket))[0] == 410
            node.pool.remove([addr("dave")])
            assert node.hook.sweep() == []
            assert node.hook._gone == set()

    run(scenario)


# -- the candidate's client ------------------------------------------------------------------------------


def test_client_waits_and_gets_its_assignment() -> None:
    async def scenario() -> None:
        async with archive_node(hold=0.3, grace=1) as node, aiohttp.ClientSession() as session:
            joined: list[dict[str, Any]] = []
            task = asyncio.create_task(
                wait_for_assignment(session, node.url, key("alice"), role=VALIDATOR, on_join=joined.append)
            )
            while addr("alice") not in node.pool:
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.8)  # a few empty polls in between
            assert joined[0]["address"] == "0x" + addr("alice").hex() and len(joined) == 1
            assert node.hook.assign(addr("alice"), b"payload")
            assert await asyncio.wait_for(task, 2) == b"payload"

    run(scenario)


def test_client_refused_join_raises() -> None:
    async def nobody(address: bytes, role: int) -> bool:
        return False

    async def scenario() -> None:
        async with archive_node(hold=0.3, grace=1, admit=nobody) as node, aiohttp.ClientSession() as session:
            with pytest.raises(PoolHookError) as refused:
                await wait_for_assignment(session, node.url, key("alice"))
            assert (refused.value.status, refused.value.code) == (403, "not-admitted")

    run(scenario)


class Proxy:
    """A TCP relay in front of the node for one client: `cut()` drops its connections and refuses new
    ones (the client's network is gone), `start()` brings it back on the same port."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        node_reader, node_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers.update((client_writer, node_writer))

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                writer.close()
                self._writers.discard(writer)

        await asyncio.gather(pipe(client_reader, node_writer), pipe(node_reader, client_writer))


@pytest.mark.parametrize("outage", [0.2, 1.5])
def test_client_after_connection_loss_keeps_its_place_only_within_grace(outage: float) -> None:
    """Alice's connection to the node is cut for `outage` seconds (her open poll breaks, new connections
    are refused) while bob keeps polling. Back within grace (0.8 s), her ticket still holds her first
    place; after it she was swept and her client re-joins, at the back."""

    async def scenario() -> None:
        async with archive_node(hold=0.3, grace=0.8, sweep_interval=0.05) as node, aiohttp.ClientSession() as session:
            proxy = Proxy(node.port)
            await proxy.start()
            joins: list[dict[str, Any]] = []
            alice = asyncio.create_task(
                wait_for_assignment(session, proxy.url, key("alice"), retry_delay=0.05, on_join=joins.append)
            )
            while addr("alice") not in node.pool:
                await asyncio.sleep(0.02)
            bob = await join(session, node, "bob")
            bob_polls = asyncio.create_task(_poll_for(session, node, bob, seconds=outage + 2))
            await asyncio.sleep(0.2)
            assert node.order() == [addr("alice"), addr("bob")]
            await proxy.cut()
            await asyncio.sleep(outage)
            await proxy.start()  # same port
            within_grace = outage < node.hook.grace
            expected = [addr("alice"), addr("bob")] if within_grace else [addr("bob"), addr("alice")]
            deadline = time.monotonic() + 3
            while (node.order() != expected or len(joins) < 2 - within_grace) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert node.order() == expected
            assert len(joins) == (1 if within_grace else 2)
            assert node.hook.assign(addr("alice"), b"drawn")
            assert await asyncio.wait_for(alice, 2) == b"drawn"
            await bob_polls
            await proxy.cut()

    run(scenario)
