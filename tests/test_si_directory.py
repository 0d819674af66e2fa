"""Node directories: the static table (and its JSON file), and the on-chain NodeRegistry read through a
real anvil with web3.py, cached with a time-to-live."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from offchain.artifacts import contract_artifact
from offchain.devnet.anvil import AnvilNode, free_port, start_anvil
from offchain.si import KeyPair
from offchain.si.billing import Prices
from offchain.si.directory import (
    SI_NODE_ROLE,
    DirectoryUnavailable,
    InvalidNodeInfo,
    NodeInfo,
    RegistryDirectory,
    StaticDirectory,
    UnknownNode,
)

CONET = 10**18


def node_info(url: str = "http://127.0.0.1:9001", key: KeyPair | None = None) -> NodeInfo:
    key = key or KeyPair.generate()
    return NodeInfo(key.address, url, key.public_key_64, Prices(7, 3), "eu-west")


def test_node_info_checks_its_fields() -> None:
    key, other = KeyPair.generate(), KeyPair.generate()
    info = node_info("https://node.example/si/", key)
    assert info.post_url == "https://node.example/si/post"
    with pytest.raises(InvalidNodeInfo, match="public key is"):
        NodeInfo(other.address, "http://a", key.public_key_64)
    with pytest.raises(InvalidNodeInfo, match="64 bytes"):
        NodeInfo(key.address, "http://a", key.public_key)
    for url in ("ftp://a", "a.example", "http://", "http://a/?q=1"):
        with pytest.raises(InvalidNodeInfo, match="URL"):
            NodeInfo(key.address, url, key.public_key_64)


def test_static_directory_resolves_and_round_trips_its_file(tmp_path: Path) -> None:
    nodes = [node_info(f"http://127.0.0.1:{9000 + i}") for i in range(3)]
    directory = StaticDirectory(nodes)
    path = tmp_path / "nodes.json"
    directory.save(path)
    loaded = StaticDirectory.load(path)
    assert loaded.nodes == nodes

    async def main() -> None:
        assert await loaded.resolve(nodes[1].address) == nodes[1]
        stranger = KeyPair.generate()
        with pytest.raises(UnknownNode, match=stranger.checksum_address) as caught:
            await loaded.resolve(stranger.address)
        assert caught.value.address == stranger.address

    asyncio.run(main())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda e: e.pop("url"), "needs 'url'"),
        (lambda e: e.update(extra=1), "unknown fields"),
        (lambda e: e.update(address="0x" + "11" * 20), "public key is"),
        (lambda e: e.update(public_key="0xzz"), "hex"),
        (lambda e: e.update(prices={"per_mb_outbound": -1}), "bad prices"),
    ],
)
def test_static_directory_file_errors_name_the_entry(tmp_path: Path, change: Any, message: str) -> None:
    entry = node_info().to_json()
    change(entry)
    path = tmp_path / "nodes.json"
    path.write_text(json.dumps({"nodes": [node_info().to_json(), entry]}))
    with pytest.raises(InvalidNodeInfo, match=message) as caught:
        StaticDirectory.load(path)
    assert "entry 1" in str(caught.value)


def test_static_directory_refuses_duplicates_and_unreadable_files(tmp_path: Path) -> None:
    info = node_info()
    with pytest.raises(InvalidNodeInfo, match="twice"):
        StaticDirectory([info, info])
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(InvalidNodeInfo, match="nodes"):
        StaticDirectory.load(tmp_path / "bad.json")
    with pytest.raises(InvalidNodeInfo, match="cannot read"):
        StaticDirectory.load(tmp_path / "missing.json")


# ---------------------------------------------------------------------- the on-chain registry


@pytest.fixture(scope="module")
def anvil() -> Iterator[AnvilNode]:
    node = start_anvil()
    try:
        yield node
    finally:
        node.stop()


class _Chain:
    """Token, Staking and NodeRegistry deployed with plain web3 from the project's artifacts."""

    def __init__(self, uri: str) -> None:
        from web3 import HTTPProvider, Web3

        self.w3 = Web3(HTTPProvider(uri))
        self.admin = self.w3.eth.accounts[0]
        self.token = self.deploy("CoNETToken", self.admin, self.admin)
        self.staking = self.deploy("Staking", self.token.address, self.admin, self.admin, 3600, 1000)
        self.send(self.staking.functions.setMinimumStake(SI_NODE_ROLE, 5_000 * CONET), self.admin)
        self.send(self.staking.functions.setMinimumStake(2, 1_000 * CONET), self.admin)
        self.registry = self.deploy("NodeRegistry", self.staking.address)

    def deploy(self, name: str, *args: Any) -> Any:
        artifact = contract_artifact(name)
        factory = self.w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
        receipt = self.send(factory.constructor(*args), self.admin)
        return self.w3.eth.contract(address=receipt["contractAddress"], abi=artifact.abi)

    def send(self, call: Any, sender: str) -> Any:
        receipt = self.w3.eth.wait_for_transaction_receipt(call.transact({"from": sender}), timeout=10)
        assert receipt["status"] == 1
        return receipt

    def register(self, key: KeyPair, role: int, endpoints: list[str], prices: tuple[int, int, int, int]) -> str:
        """A fresh node: funded, staked and registered, sending as itself (anvil impersonation)."""
        address = key.checksum_address
        self.w3.provider.make_request("anvil_impersonateAccount", [address])  # type: ignore[arg-type]
        self.w3.provider.make_request("anvil_setBalance", [address, hex(10**20)])  # type: ignore[arg-type]
        amount = 5_000 * CONET
        self.send(self.token.functions.transfer(address, amount), self.admin)
        self.send(self.token.functions.approve(self.staking.address, amount), address)
        self.send(self.staking.functions.stake(role, amount), address)
        self.send(self.registry.functions.register(role, key.public_key_64, endpoints, prices, "eu-west"), address)
        return address


@pytest.mark.anvil
def test_registry_directory_reads_the_chain_and_caches_with_a_ttl(anvil: AnvilNode) -> None:
    chain = _Chain(anvil.uri)
    node, witness, stranger, onion = (KeyPair.generate() for _ in range(4))
    address = chain.register(node, SI_NODE_ROLE, ["tor://abc.onion", "http://127.0.0.1:9001"], (11, 22, 0, 0))
    chain.register(witness, 2, ["http://127.0.0.1:9002"], (0, 0, 0, 0))  # registered, but not as an SI node
    chain.register(onion, SI_NODE_ROLE, ["tor://xyz.onion"], (0, 0, 0, 0))  # no endpoint a relay can use
    now = [1000.0]

    async def main() -> None:
        directory = RegistryDirectory(
            anvil.uri, chain.registry.address, ttl=60.0, negative_ttl=5.0, clock=lambda: now[0]
        )
        try:
            # Ten lookups at once for one address: one chain read, the same answer for all.
            answers = await asyncio.gather(*(directory.resolve(node.address) for _ in range(10)))
            assert {id(a) for a in answers} == {id(answers[0])}
            info = answers[0]
            assert (info.address, info.url, info.public_key) == (
                node.address,
                "http://127.0.0.1:9001",
                node.public_key_64,
            )
            assert (info.prices.per_mb_outbound, info.prices.per_mb_hour_storage, info.region) == (11, 22, "eu-west")
            assert directory.chain_reads == 1

            for unknown in (witness, stranger, onion):
                with pytest.raises(UnknownNode, match=unknown.checksum_address):
                    await directory.resolve(unknown.address)
            reads = directory.chain_reads
            with pytest.raises(UnknownNode):  # negative answers are cached too
                await directory.resolve(stranger.address)
            assert directory.chain_reads == reads

            # The node moves: within the TTL the cached URL is served, after it the new one.
            token_id = chain.registry.functions.tokenOf(address, SI_NODE_ROLE).call()
            chain.send(chain.registry.functions.update(token_id, ["http://127.0.0.1:9100"], (1, 2, 0, 0), ""), address)
            now[0] += 59
            assert (await directory.resolve(node.address)).url == "http://127.0.0.1:9001"
            now[0] += 2
            moved = await directory.resolve(node.address)
            assert (moved.url, moved.prices.per_mb_outbound, moved.region) == ("http://127.0.0.1:9100", 1, "")

            # Deregistered: unknown once the entry expires.
            chain.send(chain.registry.functions.deregister(token_id), address)
            assert (await directory.resolve(node.address)).url == "http://127.0.0.1:9100"
            now[0] += 61
            with pytest.raises(UnknownNode):
                await directory.resolve(node.address)
        finally:
            await directory.close()

        # A chain that does not answer is "unavailable", not "unknown", and nothing is cached.
        dead = RegistryDirectory(f"http://127.0.0.1:{free_port()}", chain.registry.address, request_timeout=2)
        try:
            for _ in range(2):
                with pytest.raises(DirectoryUnavailable, match="reading the node registry"):
                    await dead.resolve(node.address)
            assert dead.chain_reads == 2
        finally:
            await dead.close()

    asyncio.run(asyncio.wait_for(main(), 60))
