"""`conet si …`: key files, registration through a relay, send, inbox, listen, address, earnings —
against a real node and relay started as processes — and the CLI's error messages."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from eth_utils.crypto import keccak
from test_si_network import CASH, CHAIN_ID, Proc

from offchain.cli import main
from offchain.si.address import CommunicationAddress
from offchain.si.directory import NodeInfo, StaticDirectory
from offchain.si.ecies import KeyPair

NOTE_CHAIN = "0x" + keccak(b"cli note").hex()


@dataclass
class Setup:
    node: Proc
    relay: Proc
    directory: Path
    data: Path
    tmp: Path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("si-cli")
    procs: list[Proc] = []
    try:
        key = KeyPair.generate()
        (tmp / "node.key").write_text(key.secret.hex())
        data = tmp / "node-data"
        node = Proc("node", key, [
            "offchain.si.node", "--key-file", str(tmp / "node.key"), "--data-dir", str(data),
            "--chain-id", str(CHAIN_ID), "--cash", "0x" + CASH.hex(), "--price-outbound", "500",
            "--relay-price", "2000", "--bill-threshold", "1", "--keepalive", "1",
        ], tmp / "node.log")  # fmt: skip
        procs.append(node)
        node.start()
        directory = tmp / "directory.json"
        StaticDirectory([NodeInfo(key.address, node.url, key.public_key_64)]).save(directory)
        relay_key = KeyPair.generate()
        (tmp / "relay.key").write_text(relay_key.secret.hex())
        relay = Proc("relay", relay_key, [
            "offchain.si.relay", "--key-file", str(tmp / "relay.key"), "--directory", str(directory),
        ], tmp / "relay.log")  # fmt: skip
        procs.append(relay)
        relay.start()
        yield Setup(node, relay, directory, data, tmp)
    finally:
        for proc in procs:
            proc.stop()


def conet(*args: str, ok: bool = True) -> Result:
    result = CliRunner().invoke(main, ["si", *args])
    if ok:
        assert result.exit_code == 0, result.output
    return result


def keygen(path: Path) -> str:
    return conet("keygen", "--key-file", str(path)).output.strip()


def register(setup: Setup, key_file: Path) -> Result:
    return conet(
        "register", "--key-file", str(key_file), "--node", setup.node.key.checksum_address,
        "--relay", setup.relay.url, "--directory", str(setup.directory), "--cash", "0x" + CASH.hex(),
        "--chain-id", str(CHAIN_ID), "--note-chain", NOTE_CHAIN, "--limit", "1000000",
    )  # fmt: skip


def test_keygen_writes_an_owner_only_key_and_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "me.key"
    address = keygen(path)
    assert address.startswith("0x") and len(address) == 42
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert KeyPair.from_secret(bytes.fromhex(path.read_text().strip())).checksum_address == address
    again = conet("keygen", "--key-file", str(path), ok=False)
    assert again.exit_code != 0 and "not overwriting" in again.output


def test_the_whole_client_story_on_the_command_line(setup: Setup) -> None:
    alice, bob = setup.tmp / "alice.key", setup.tmp / "bob.key"
    keygen(alice)
    bob_address = keygen(bob)
    # Registration by URL works as well as by address.
    out = conet(
        "register", "--key-file", str(alice), "--node", setup.node.url, "--relay", setup.relay.url,
        "--directory", str(setup.directory), "--cash", "0x" + CASH.hex(), "--chain-id", str(CHAIN_ID),
        "--note-chain", NOTE_CHAIN, "--limit", "1000000",
    ).output  # fmt: skip
    assert f"registered with {setup.node.key.checksum_address}" in out and "500/MB carried" in out
    register(setup, bob)
    card = conet("address", "--key-file", str(bob)).output.strip()
    parsed = CommunicationAddress.parse(card)
    assert parsed.checksum_address == bob_address and parsed.node == setup.node.key.address
    assert parsed.relay_hint == setup.relay.url

    (setup.tmp / "note.txt").write_bytes("from a file ✓".encode())
    assert "sent 0x" in conet("send", "--key-file", str(alice), card, "hello bob").output
    conet("send", "--key-file", str(alice), bob_address, "@" + str(setup.tmp / "note.txt"))  # a contact now

    keep = conet("inbox", "--key-file", str(bob), "--keep")
    assert keep.output.count(": hello bob") == 1 and "from a file ✓" in keep.output
    inbox = conet("inbox", "--key-file", str(bob))
    assert "hello bob" in inbox.output and "2 deleted at the node" in inbox.output
    assert "0 messages" in conet("inbox", "--key-file", str(bob)).output

    conet("send", "--key-file", str(alice), card, "while listening")
    heard = conet("listen", "--key-file", str(bob), "--count", "1", "--json")
    assert '"content": "while listening"' in heard.output
    assert "0 messages" in conet("inbox", "--key-file", str(bob)).output  # listen acknowledged it

    report = conet("earnings", "--data-dir", str(setup.data)).output
    assert f"node {setup.node.key.checksum_address}" in report
    assert setup.relay.key.checksum_address in report and bob_address in report
    as_json = conet("earnings", "--data-dir", str(setup.data), "--json").output
    import json

    data = json.loads(as_json)
    (relay_line,) = data["relays"]
    assert relay_line["owed"] == -(-relay_line["bytes"] * 2000 // 10**6) > 0
    (bob_line,) = [c for c in data["clients"] if c["client"] == bob_address]
    assert bob_line["billed"] == bob_line["vouched"] > 0 and bob_line["unpaid"] == 0


def test_clear_errors(setup: Setup, tmp_path: Path) -> None:
    key = tmp_path / "loose.key"
    key.write_text(KeyPair.generate().secret.hex())
    key.chmod(0o644)
    result = conet("address", "--key-file", str(key), ok=False)
    assert result.exit_code != 0 and "chmod 600" in result.output

    key.chmod(0o600)
    result = conet("address", "--key-file", str(key), ok=False)
    assert "run `conet si register` first" in result.output

    mine = tmp_path / "mine.key"
    keygen(mine)
    register(setup, mine)
    card = CommunicationAddress(KeyPair.generate().public_key, setup.node.key.address).encode()
    bad = conet("send", "--key-file", str(mine), card[:-2] + "zz", "hi", ok=False)
    assert bad.exit_code != 0 and "checksum mismatch" in bad.output
    unknown = conet("send", "--key-file", str(mine), "0x" + "12" * 20, "hi", ok=False)
    assert "not among the contacts" in unknown.output
    stranger = conet("send", "--key-file", str(mine), card, "hi", ok=False)  # a key nobody registered
    assert "404 unknown_recipient" in stranger.output

    no_dir = conet("register", "--key-file", str(mine), "--node", setup.node.url, "--relay", setup.relay.url,
                   "--note-chain", NOTE_CHAIN, "--limit", "5", "--cash", "0x" + CASH.hex(), ok=False)  # fmt: skip
    assert "--directory is needed" in no_dir.output
    wrong_chain = conet(
        "register", "--key-file", str(mine), "--node", setup.node.url, "--relay", setup.relay.url,
        "--directory", str(setup.directory), "--note-chain", NOTE_CHAIN, "--limit", "5", "--cash", "0x" + CASH.hex(),
        "--chain-id", "1", ok=False,
    )  # fmt: skip
    assert "403 authorization_rejected" in wrong_chain.output and "chain 1" in wrong_chain.output
    assert "not a node's data dir" in conet("earnings", "--data-dir", str(tmp_path), ok=False).output
