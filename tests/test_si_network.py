"""SI end to end on real processes on 127.0.0.1: two relays and two recipient nodes started with
`python -m …` on ephemeral ports, a static directory written here, and clients (in this process)
whose connections leave from their own loopback addresses (127.0.0.11, 127.0.0.12) so that "the node
never sees the sender's IP" can fail.

Registration through a relay; a push to an online client through both relays; a message for an
offline client stored, fetched on reconnection under the new session key, acknowledged and deleted;
what each party's files and logs hold; a node SIGKILLed right after its 200 delivering after a
restart; replayed registrations; forged sender signatures; malformed bodies; relays owed per MB."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from eth_utils.crypto import keccak

from offchain.si.client import ClientProfile, PaymentTerms, SIClient
from offchain.si.directory import NodeInfo, StaticDirectory
from offchain.si.ecies import KeyPair
from offchain.si.envelope import seal
from offchain.si.node import earnings
from offchain.si.registration import RequestKind, seal_request, sign_authorization, sign_request

ROOT = Path(__file__).resolve().parent.parent
CASH = bytes.fromhex("c0" * 20)
NOTE_CHAIN = keccak(b"network test note")
CHAIN_ID = 43112
ALICE_IP, BOB_IP = "127.0.0.11", "127.0.0.12"
START_TIMEOUT = 30.0


@dataclass
class Proc:
    """A started `python -m` process: its key, URL, log file, and how it was started (to restart it)."""

    name: str
    key: KeyPair
    args: list[str]
    log: Path
    process: subprocess.Popen[str] | None = None
    url: str = ""

    def start(self, port: int = 0) -> None:
        args = [*self.args, "--port", str(port)]
        with self.log.open("a") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True
            )
        line = _read_line(self.process, START_TIMEOUT)
        match = re.search(r"listening on (http://\S+)", line)
        if match is None:
            self.stop()
            raise RuntimeError(f"{self.name} did not start: {line!r}; log:\n{self.log.read_text()}")
        self.url = match.group(1)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()


def _read_line(process: subprocess.Popen[str], timeout: float) -> str:
    """The process's first stdout line, or "" after `timeout` (a thread: readline cannot time out)."""
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(process.stdout.readline() if process.stdout else ""))
    reader.daemon = True
    reader.start()
    reader.join(timeout)
    return lines[0] if lines else ""


@dataclass
class Network:
    nodes: list[Proc]
    relays: list[Proc]
    directory: Path
    data: list[Path]

    def node_info(self, index: int) -> NodeInfo:
        node = self.nodes[index]
        return NodeInfo(node.key.address, node.url, node.key.public_key_64)


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    tmp = tmp_path_factory.mktemp("si-network")
    procs: list[Proc] = []
    try:
        nodes, data = [], []
        for index in range(2):
            key = KeyPair.generate()
            key_file = tmp / f"node{index}.key"
            key_file.write_text(key.secret.hex())
            data_dir = tmp / f"node{index}-data"
            args = [
                "offchain.si.node", "--key-file", str(key_file), "--data-dir", str(data_dir),
                "--chain-id", str(CHAIN_ID), "--cash", "0x" + CASH.hex(), "--price-outbound", "1000",
                "--relay-price", "1000", "--bill-threshold", "1", "--keepalive", "1",
            ]  # fmt: skip
            node = Proc(f"node{index}", key, args, tmp / f"node{index}.log")
            procs.append(node)
            node.start()
            nodes.append(node)
            data.append(data_dir)
        directory = tmp / "directory.json"
        StaticDirectory([NodeInfo(n.key.address, n.url, n.key.public_key_64) for n in nodes]).save(directory)
        relays = []
        for index in range(2):
            key = KeyPair.generate()
            key_file = tmp / f"relay{index}.key"
            key_file.write_text(key.secret.hex())
            args = ["offchain.si.relay", "--key-file", str(key_file), "--directory", str(directory)]
            relay = Proc(f"relay{index}", key, args, tmp / f"relay{index}.log")
            procs.append(relay)
            relay.start()
            relays.append(relay)
        yield Network(nodes, relays, directory, data)
    finally:
        for proc in procs:
            proc.stop()


def terms() -> PaymentTerms:
    return PaymentTerms(CHAIN_ID, CASH, NOTE_CHAIN, 10**9, 0, int(time.time()) + 7 * 86400)


@contextlib.asynccontextmanager
async def client(
    network: Network, node: int, relay: int, ip: str, key: KeyPair | None = None
) -> AsyncIterator[SIClient]:
    """A client of `node` posting through `relay`, its connections leaving from `ip`."""
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(ip, 0)))
    profile = ClientProfile(network.relays[relay].url, network.node_info(node), terms())
    directory = StaticDirectory.load(network.directory)
    try:
        yield SIClient(key or KeyPair.generate(), profile, directory=directory, session=session, stream_timeout=5)
    finally:
        await session.close()


def run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, 45))


def pending(network: Network, node: int, address: bytes) -> int:
    db = sqlite3.connect(f"file:{network.data[node] / 'mailbox.db'}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT count(*) FROM messages WHERE recipient = ?", (address,)).fetchone()
        return int(row[0])
    finally:
        db.close()


async def first_message(bob: SIClient, timeout: float = 15) -> Any:
    async def one() -> Any:
        async for item in bob.listen(min_backoff=0.2, max_backoff=1):
            await bob.ack([item.id])
            return item

    return await asyncio.wait_for(one(), timeout)


def test_push_to_an_online_client_through_two_relays(network: Network) -> None:
    async def go() -> None:
        async with client(network, 0, 0, ALICE_IP) as alice, client(network, 1, 1, BOB_IP) as bob:
            await alice.register()
            await bob.register()
            listening = asyncio.create_task(first_message(bob))
            # The push needs Bob's stream open at his node first: wait for its log line.
            await wait_for_log(network.nodes[1].log, f"listen: {bob.key.checksum_address} online")
            await alice.send(bob.communication_address(), b"push-marker-7f3a")
            item = await listening
            assert item.message.content == b"push-marker-7f3a"
            assert item.message.sender == alice.key.checksum_address
            assert "stored, pushed" in network.nodes[1].log.read_text()
            assert pending(network, 1, bob.key.address) == 0  # acked: the copy is gone

    run(go())


def test_offline_client_gets_its_mail_on_reconnection_then_it_is_deleted(network: Network) -> None:
    async def go() -> None:
        async with client(network, 0, 0, ALICE_IP) as alice, client(network, 1, 1, BOB_IP) as bob:
            await bob.register()
            await alice.send(bob.communication_address(), b"offline-marker-91c2")
            assert pending(network, 1, bob.key.address) == 1
            item = await first_message(bob)  # opens the stream: READY says 1 waits, the client fetches
            assert item.message.content == b"offline-marker-91c2"
            assert bob.connections == 1
            await wait_until(lambda: pending(network, 1, bob.key.address) == 0)

    run(go())


def test_what_each_party_learns(network: Network) -> None:
    async def go() -> tuple[SIClient, SIClient]:
        async with client(network, 0, 0, ALICE_IP) as alice, client(network, 1, 1, BOB_IP) as bob:
            await bob.register()
            await alice.send(bob.communication_address(), b"secret-marker-5e11")
            await first_message(bob)
            return alice, bob

    alice, bob = run(go())
    people = [alice.key.checksum_address, bob.key.checksum_address]
    # The nodes: no sender IP anywhere (only relays connect to them), no content in clear.
    for index, node in enumerate(network.nodes):
        blobs = [node.log.read_bytes()] + [p.read_bytes() for p in network.data[index].iterdir() if p.is_file()]
        for blob in blobs:
            assert ALICE_IP.encode() not in blob and BOB_IP.encode() not in blob
            assert b"secret-marker-5e11" not in blob
    # The relays: no content, and neither person's address (they see only node addresses).
    for relay in network.relays:
        text = relay.log.read_text().lower()
        assert "secret-marker" not in text
        for person in people:
            assert person.lower() not in text and person.lower()[2:] not in text
    # Bob's node knows its client (it bills him); it never learns Alice's address: N1 is sealed.
    node_files = b"".join(p.read_bytes() for p in network.data[1].iterdir() if p.is_file())
    assert bytes.fromhex(alice.key.address.hex()) not in node_files
    assert alice.key.checksum_address not in network.nodes[1].log.read_text()


def test_relays_are_owed_per_mb_and_clients_billed(network: Network) -> None:
    async def go() -> SIClient:
        async with client(network, 0, 0, ALICE_IP) as alice, client(network, 1, 1, BOB_IP) as bob:
            await bob.register()
            await alice.send(bob.communication_address(), b"x" * 5000)
            await first_message(bob)
            await asyncio.sleep(0.3)
            return bob

    bob = run(go())
    node, clients, relays = earnings(network.data[1])
    assert node == network.nodes[1].key.checksum_address
    owed = {r.relay: r for r in relays}
    # Relay 0 carried Alice's envelope to node 1, relay 1 carried Bob's requests and the answers.
    assert network.relays[0].key.checksum_address in owed and network.relays[1].key.checksum_address in owed
    for line in relays:
        assert line.owed == -(-line.bytes * 1000 // 10**6)  # ⌈bytes · 1000 / 10⁶⌉, to the unit
    (line,) = [c for c in clients if c.client == bob.key.checksum_address]
    assert line.billed > 0 and line.vouched == line.billed and line.unpaid == 0


def test_replayed_registration_and_forged_sender_through_a_relay(network: Network) -> None:
    async def go() -> None:
        async with client(network, 0, 0, ALICE_IP) as alice, client(network, 1, 1, BOB_IP) as bob:
            node = network.node_info(1)
            authorization = sign_authorization(
                bob.key, chain_id=CHAIN_ID, cash=CASH, note_chain=NOTE_CHAIN, payee=node.address, limit=10**9,
                nonce=0, expiry=int(time.time()) + 86400,
            )  # fmt: skip
            session = KeyPair.generate().public_key
            request = sign_request(
                bob.key, node=node.address, kind=RequestKind.REGISTER, session_key=session,
                payload=authorization.encode(),
            )  # fmt: skip
            envelope = seal_request(node.public_key, request)
            statuses = []
            for _ in range(2):
                async with alice.session.post(bob.post_url, data=envelope) as response:
                    statuses.append((response.status, (await response.read())))
            assert statuses[0][0] == 200
            assert statuses[1][0] == 409 and b"replayed_request" in statuses[1][1]

            # Mallory writes as Alice: the node stores it (it cannot read N1); Bob refuses it.
            mallory = KeyPair.generate()
            from offchain.si import envelope as env

            real_sign = env.sign
            env.sign = lambda key, digest: real_sign(mallory, digest)  # type: ignore[assignment]
            try:
                forged = seal(alice.key, bob.key.public_key, node.public_key, b"forged-marker")
            finally:
                env.sign = real_sign  # type: ignore[assignment]
            async with alice.session.post(bob.post_url, data=forged) as response:
                assert response.status == 200
            received, _ = await bob.fetch()
            assert received == [] and "BadSignature" in bob.rejected[0][1]
            assert pending(network, 1, bob.key.address) == 0

    run(go())


def test_malformed_and_oversized_bodies_get_clear_errors_and_service_goes_on(network: Network) -> None:
    async def go() -> None:
        async with client(network, 0, 0, ALICE_IP) as alice, client(network, 1, 1, BOB_IP) as bob:
            await bob.register()
            good = seal(alice.key, bob.key.public_key, network.node_info(1).public_key, b"ok")
            tampered = good[:-1] + bytes([good[-1] ^ 1])
            async with alice.session.post(alice.post_url, data=tampered) as response:
                # Well framed, so the relay forwards it; the node's refusal comes back through it.
                assert response.status == 400
                assert (await response.json())["error"] == "tampered_envelope"
            async with alice.session.post(alice.post_url, data=b"junk" * 100) as response:
                assert response.status == 400  # the relay refuses it (an nginx page)
            async with alice.session.post(alice.post_url, data=b"\0" * (2 * 1024 * 1024)) as response:
                assert response.status == 413
            # Straight at the node, past any relay: the node's own clear errors.
            async with alice.session.post(network.nodes[1].url + "/post", data=b"\0" * (2 * 1024 * 1024)) as response:
                assert response.status == 413 and (await response.json())["error"] == "too_large"
            async with alice.session.post(network.nodes[1].url + "/post", data=b"CNSI\x01" + b"\0" * 40) as response:
                assert response.status == 400 and (await response.json())["error"] == "malformed_envelope"
            await alice.send(bob.communication_address(), b"after the junk")
            received, _ = await bob.fetch()
            assert [r.message.content for r in received] == [b"after the junk"]
            await bob.ack([r.id for r in received])

    run(go())


def test_node_killed_right_after_its_200_delivers_after_restart(network: Network) -> None:
    bob_key = KeyPair.generate()

    async def send() -> None:
        async with client(network, 0, 0, ALICE_IP) as alice, client(network, 1, 1, BOB_IP, bob_key) as bob:
            await bob.register()
            await alice.send(bob.communication_address(), b"survives-sigkill")
            # The 200 is in: kill at once, no chance to flush anything more.
            node = network.nodes[1]
            assert node.process is not None
            os.kill(node.process.pid, signal.SIGKILL)
            node.process.wait(10)

    run(send())
    node = network.nodes[1]
    port = node.port
    node.stop()
    node.start(port)  # same port: the directory still points here

    async def receive() -> None:
        async with client(network, 1, 1, BOB_IP, bob_key) as bob:
            item = await first_message(bob)
            assert item.message.content == b"survives-sigkill"

    run(receive())


async def wait_for_log(path: Path, text: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not in {path.name}:\n{path.read_text()[-2000:]}")
        await asyncio.sleep(0.05)


async def wait_until(condition: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)
