"""Anonymous servers on real processes: two relays and two recipient nodes (`python -m …`, logging at
DEBUG), the example service (`python -m offchain.si.anonymous_example serve`) registered with node 1
through relay 1 and connecting from 127.0.0.12, and requesters in this process registered with node 0
through relay 0, connecting from 127.0.0.11 — so "nobody learns the other's IP" can fail.

A request answered both ways through both relays and both nodes; what each party's logs and files
hold; a timeout when nobody answers; forged responses (another signer, a forged sender) ignored; a
request aimed at a third party refused by the server; the `conet si request` command."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from click.testing import CliRunner
from eth_utils.crypto import keccak
from test_si_network import ALICE_IP, CASH, CHAIN_ID, NOTE_CHAIN, Proc, _read_line, terms, wait_for_log, wait_until

from offchain.cli import main as conet
from offchain.si import envelope as env
from offchain.si import signature
from offchain.si.address import CommunicationAddress
from offchain.si.anonymous import (
    MalformedPayload,
    Request,
    RequestTimeout,
    Response,
    ServerError,
    Status,
    decode,
    request,
    requester_for,
)
from offchain.si.client import ClientProfile, NodeRefused, SIClient, write_key_file
from offchain.si.directory import NodeInfo, StaticDirectory
from offchain.si.ecies import KeyPair
from offchain.si.envelope import seal

SERVER_IP = "127.0.0.12"
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Network:
    nodes: list[Proc]
    relays: list[Proc]
    directory: Path
    data: list[Path]
    server_key: KeyPair
    server_address: str
    server_log: Path

    def node_info(self, index: int) -> NodeInfo:
        node = self.nodes[index]
        return NodeInfo(node.key.address, node.url, node.key.public_key_64)


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    tmp = tmp_path_factory.mktemp("si-anonymous")
    procs: list[Proc] = []
    server: subprocess.Popen[str] | None = None
    try:
        nodes, data = [], []
        for index in range(2):
            key = KeyPair.generate()
            (tmp / f"node{index}.key").write_text(key.secret.hex())
            args = [
                "offchain.si.node", "--key-file", str(tmp / f"node{index}.key"), "--data-dir",
                str(tmp / f"node{index}-data"), "--chain-id", str(CHAIN_ID), "--cash", "0x" + CASH.hex(),
                "--keepalive", "1", "--log-level", "DEBUG",
            ]  # fmt: skip
            node = Proc(f"node{index}", key, args, tmp / f"node{index}.log")
            procs.append(node)
            node.start()
            nodes.append(node)
            data.append(tmp / f"node{index}-data")
        directory = tmp / "directory.json"
        StaticDirectory([NodeInfo(n.key.address, n.url, n.key.public_key_64) for n in nodes]).save(directory)
        relays = []
        for index in range(2):
            key = KeyPair.generate()
            (tmp / f"relay{index}.key").write_text(key.secret.hex())
            args = [
                "offchain.si.relay", "--key-file", str(tmp / f"relay{index}.key"), "--directory", str(directory),
                "--log-level", "DEBUG",
            ]  # fmt: skip
            relay = Proc(f"relay{index}", key, args, tmp / f"relay{index}.log")
            procs.append(relay)
            relay.start()
            relays.append(relay)
        # The anonymous server: its own process, its own node (1) and relay (1), its own source IP.
        server_key = write_key_file(tmp / "server.key")
        server_log = tmp / "server.log"
        with server_log.open("a") as log:
            server = subprocess.Popen(
                [
                    sys.executable, "-m", "offchain.si.anonymous_example", "serve", "--key-file",
                    str(tmp / "server.key"), "--relay", relays[1].url, "--node", nodes[1].key.checksum_address,
                    "--directory", str(directory), "--chain-id", str(CHAIN_ID), "--cash", "0x" + CASH.hex(),
                    "--note-chain", "0x" + NOTE_CHAIN.hex(), "--limit", str(10**9), "--local-address", SERVER_IP,
                    "--max-backoff", "1", "--log-level", "DEBUG",
                ],
                cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True,
            )  # fmt: skip
        line = _read_line(server, 30)
        match = re.search(r"at (conet:\S+) serving", line)
        assert match is not None, f"the server did not start: {line!r}\n{server_log.read_text()}"
        yield Network(nodes, relays, directory, data, server_key, match.group(1), server_log)
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(10)
            if server.stdout is not None:
                server.stdout.close()
        for proc in procs:
            proc.stop()


@contextlib.asynccontextmanager
async def requester(
    network: Network, node: int = 0, relay: int = 0, ip: str = ALICE_IP, key: KeyPair | None = None
) -> AsyncIterator[SIClient]:
    """A client of `node` posting through `relay`, its connections leaving from `ip`."""
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(ip, 0)))
    profile = ClientProfile(network.relays[relay].url, network.node_info(node), terms())
    directory = StaticDirectory.load(network.directory)
    client = SIClient(key or KeyPair.generate(), profile, directory=directory, session=session, stream_timeout=5)
    try:
        yield client
    finally:
        await client.close()  # stops the requester's listener first
        await session.close()


def run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, 45))


def test_the_wire_format_round_trips_and_refuses_junk() -> None:
    reply = CommunicationAddress(KeyPair.generate().public_key, bytes(20), "http://relay")
    req = Request(os.urandom(16), reply, b"body")
    assert decode(req.encode()) == req
    resp = Response(req.request_id, Status.HANDLER_FAILED, b"why")
    assert decode(resp.encode()) == resp
    for junk in (b"", b"hello", b"CNAS\x01" + bytes(16), b"CNAS\x03" + bytes(20), b"CNAS\x02" + bytes(16) + b"\x09"):
        with pytest.raises(MalformedPayload):
            decode(junk)
    with pytest.raises(MalformedPayload, match="reply address"):
        decode(b"CNAS\x01" + bytes(16) + (5).to_bytes(2, "big") + b"conet")


def test_a_request_is_answered_through_two_relays_and_two_nodes(network: Network) -> None:
    async def go() -> SIClient:
        async with requester(network) as alice:
            await alice.register()
            answer = await request(alice, network.server_address, b"echo answered-marker-4b1d", timeout=20)
            assert answer == b"answered-marker-4b1d"
            assert await request(alice, network.server_address, b"put colour blue", timeout=20) == b"ok"
            assert await request(alice, network.server_address, b"get colour", timeout=20) == b"blue"
            with pytest.raises(ServerError, match="handler_failed: BadCommand"):
                await request(alice, network.server_address, b"get nothing", timeout=20)
            # Another requester has its own store: the server keys it by the wallet that signed.
            async with requester(network) as carol:
                await carol.register()
                with pytest.raises(ServerError):
                    await request(carol, network.server_address, b"get colour", timeout=20)
            return alice

    alice = run(go())
    node0, node1 = (n.key.checksum_address for n in network.nodes)
    server = network.server_key.checksum_address
    # Requests: relay 0 → node 1 (the server's); answers: relay 1 → node 0 (the requester's).
    assert f"forwarded to {node1}" in network.relays[0].log.read_text()
    assert f"forwarded to {node0}" in network.relays[1].log.read_text()
    assert f"for {server} stored" in network.nodes[1].log.read_text()
    assert f"for {alice.key.checksum_address} stored" in network.nodes[0].log.read_text()
    assert alice.rejected == []


def test_what_each_party_learns(network: Network) -> None:
    async def go() -> SIClient:
        async with requester(network) as alice:
            await alice.register()
            answer = await request(alice, network.server_address, b"echo learn-marker-77e0", timeout=20)
            assert answer == b"learn-marker-77e0"
            return alice

    alice = run(go())
    server = network.server_key
    marker = b"learn-marker-77e0"

    def files(index: int) -> bytes:
        node = network.nodes[index]
        return node.log.read_bytes() + b"".join(p.read_bytes() for p in network.data[index].iterdir() if p.is_file())

    def mentions(blob: bytes, key: KeyPair) -> bool:
        # The checksum or plain hex form (case-insensitively), or the raw 20 bytes (SQLite blobs).
        return key.address.hex().encode() in blob.lower() or key.address in blob

    # The server's node: never the requester's IP nor wallet, nor the content.
    server_node = files(1)
    assert ALICE_IP.encode() not in server_node and marker not in server_node
    assert not mentions(server_node, alice.key)
    assert mentions(server_node, server)  # it does know its own client: the check can fail
    # The requester's node: never the server's IP nor wallet, nor the content.
    requester_node = files(0)
    assert SERVER_IP.encode() not in requester_node and marker not in requester_node
    assert not mentions(requester_node, server)
    assert mentions(requester_node, alice.key)
    # Relays: neither person, never the content (at DEBUG they log every forward, by node).
    for relay in network.relays:
        blob = relay.log.read_bytes()
        assert marker not in blob
        assert not mentions(blob, alice.key) and not mentions(blob, server)
    # The server learns the requester's wallet (it signed the request), not where it is.
    server_log = network.server_log.read_text()
    assert f"answered {alice.key.checksum_address}" in server_log
    assert ALICE_IP not in server_log


def test_no_answer_times_out_and_an_unknown_server_is_refused(network: Network) -> None:
    async def go() -> None:
        async with requester(network) as alice, requester(network, 1, 1, "127.0.0.13") as silent:
            await alice.register()
            await silent.register()  # registered and never serving: requests wait in its mailbox
            started = time.monotonic()
            with pytest.raises(RequestTimeout, match="no response"):
                await request(alice, silent.communication_address(), b"time", timeout=2)
            assert 2 <= time.monotonic() - started < 8
            assert requester_for(alice).pending == []  # the waiter is gone; a late answer is ignored
            # A wallet its node never registered: the node refuses the request at once (404).
            nobody = CommunicationAddress(KeyPair.generate().public_key, network.nodes[1].key.address)
            with pytest.raises(NodeRefused) as refused:
                await request(alice, nobody, b"time", timeout=10)
            assert refused.value.status == 404 and refused.value.code == "unknown_recipient"

    run(go())


def test_forged_responses_are_ignored(network: Network) -> None:
    async def go() -> None:
        async with (
            requester(network) as alice,
            requester(network, 1, 1, "127.0.0.13") as silent,
            requester(network, 1, 1, "127.0.0.14") as mallory,
        ):
            await alice.register()
            await silent.register()
            request_id = keccak(b"a request id mallory learned")[:16]
            asking = asyncio.create_task(
                request(alice, silent.communication_address(), b"time", timeout=5, request_id=request_id)
            )
            await wait_until(lambda: requester_for(alice).pending == [request_id])
            forged = Response(request_id, Status.OK, b"forged-answer").encode()
            # 1. Mallory answers in her own name: the signature is hers, not the server's.
            await mallory.send(alice.communication_address(), forged)
            # 2. Mallory names the server as the sender and signs herself: it does not even open.
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(env, "sign", lambda key, digest: signature.sign(mallory.key, digest))
                blob = seal(silent.key, alice.key.public_key, network.node_info(0).public_key, forged)
            async with mallory.session.post(mallory.post_url, data=blob) as response:
                assert response.status == 200
            ignored = requester_for(alice).ignored
            await wait_until(lambda: len(ignored) == 1 and len(alice.rejected) == 1)
            with pytest.raises(RequestTimeout):
                await asking
            item, why = ignored[0]
            assert item.message.sender == mallory.key.checksum_address and "not by the server" in why
            assert "BadSignature" in alice.rejected[0][1]

    run(go())


def test_the_server_answers_only_the_wallet_that_asked(network: Network) -> None:
    async def go() -> None:
        async with requester(network) as alice, requester(network, 1, 1, "127.0.0.14") as mallory:
            await alice.register()
            # Mallory signs a request whose reply address is Alice's: the server must not answer Alice.
            aimed = Request(os.urandom(16), alice.communication_address(), b"echo reflected").encode()
            await mallory.send(network.server_address, aimed)
            await wait_for_log(network.server_log, f"from {mallory.key.checksum_address} (reply-not-sender)")
            # Alice, listening, gets nothing from it; her own request goes through.
            assert await request(alice, network.server_address, b"echo mine", timeout=20) == b"mine"
            assert [why for _, why in requester_for(alice).ignored] == []

    run(go())


def test_conet_si_request(network: Network, tmp_path: Path) -> None:
    key_file = tmp_path / "cli.key"
    runner = CliRunner()
    assert runner.invoke(conet, ["si", "keygen", "--key-file", str(key_file)]).exit_code == 0
    registered = runner.invoke(conet, [
        "si", "register", "--key-file", str(key_file), "--node", network.nodes[0].key.checksum_address,
        "--relay", network.relays[0].url, "--directory", str(network.directory), "--cash", "0x" + CASH.hex(),
        "--chain-id", str(CHAIN_ID), "--note-chain", "0x" + NOTE_CHAIN.hex(), "--limit", "1000000",
    ])  # fmt: skip
    assert registered.exit_code == 0, registered.output
    answered = runner.invoke(conet, [
        "si", "request", "--key-file", str(key_file), "--directory", str(network.directory),
        network.server_address, "echo from-the-cli", "--timeout", "20",
    ])  # fmt: skip
    assert answered.exit_code == 0, answered.output
    assert answered.output.strip() == "from-the-cli"
