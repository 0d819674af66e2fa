"""The SI part of `make demo`: a message to a person who is offline, received on reconnection, and the bill.

A recipient node and a relay run as processes on 127.0.0.1; Alice and Bob are `conet si` users with
their own key files. Bob registers and goes offline; Alice sends through the relay; the node keeps the
message in Bob's mailbox; Bob comes back, fetches it under a fresh session key and acknowledges it;
then the node's ledger shows what each party owes and is owed, to the unit.

    python -m offchain.devnet.si_demo [--dir .devnet/si]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

from eth_utils.crypto import keccak

from offchain.si.directory import NodeInfo, StaticDirectory
from offchain.si.ecies import KeyPair

MAINCHAIN_ID = 43112
CASH = "0x" + "22" * 20
"""Authorizations are checked offline in this demo (signature and terms), so any CoNETCash address does."""
START_TIMEOUT = 60.0


class DemoError(RuntimeError):
    """A step of the demo failed."""


def _key_file(path: Path) -> KeyPair:
    key = KeyPair.generate()
    path.write_text(key.secret.hex())
    path.chmod(0o600)
    return key


def _start(args: list[str], log: Path) -> tuple[subprocess.Popen[str], str]:
    with log.open("a") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", *args, "--port", "0"], stdout=subprocess.PIPE, stderr=handle, text=True
        )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(process.stdout.readline() if process.stdout else ""))
    reader.daemon = True
    reader.start()
    reader.join(START_TIMEOUT)
    match = re.search(r"listening on (http://\S+)", lines[0] if lines else "")
    if match is None:
        process.kill()
        raise DemoError(f"{args[0]} did not start; see {log}")
    return process, match.group(1)


def _conet(*args: str) -> str:
    command = [str(Path(sys.executable).with_name("conet")), "si", *args]
    print("$ conet si " + " ".join(a if len(a) < 60 else a[:28] + "…" for a in args), flush=True)
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise DemoError(f"conet si {args[0]} failed:\n{result.stdout}{result.stderr}")
    print(result.stdout.rstrip(), flush=True)
    return result.stdout


def run(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    processes: list[subprocess.Popen[str]] = []
    try:
        node_key = _key_file(directory / "node.key")
        node, node_url = _start(
            [
                "offchain.si.node", "--key-file", str(directory / "node.key"), "--data-dir", str(directory / "node"),
                "--chain-id", str(MAINCHAIN_ID), "--cash", CASH, "--price-outbound", "500",
                "--relay-price", "2000", "--bill-threshold", "1",
            ],
            directory / "node.log",
        )  # fmt: skip
        processes.append(node)
        StaticDirectory([NodeInfo(node_key.address, node_url, node_key.public_key_64)]).save(directory / "nodes.json")
        _key_file(directory / "relay.key")
        relay, relay_url = _start(
            [
                "offchain.si.relay", "--key-file", str(directory / "relay.key"),
                "--directory", str(directory / "nodes.json"),
            ],
            directory / "relay.log",
        )  # fmt: skip
        processes.append(relay)
        print(f"recipient node {node_key.checksum_address} at {node_url}; relay at {relay_url}", flush=True)

        alice, bob = directory / "alice.key", directory / "bob.key"
        for who in (alice, bob):
            _conet("keygen", "--key-file", str(who))
            note_chain = "0x" + keccak(b"demo note chain " + who.name.encode()).hex()
            _conet(
                "register", "--key-file", str(who), "--node", node_key.checksum_address, "--relay", relay_url,
                "--directory", str(directory / "nodes.json"), "--cash", CASH, "--chain-id", str(MAINCHAIN_ID),
                "--note-chain", note_chain, "--limit", "1000000",
            )  # fmt: skip
        card = _conet("address", "--key-file", str(bob)).strip()
        print("Bob is offline now (no event stream open).", flush=True)
        _conet("send", "--key-file", str(alice), card, "Hello Bob: this waited for you at your node.")
        print("Bob comes back and fetches his mailbox under a new session key:", flush=True)
        inbox = _conet("inbox", "--key-file", str(bob))
        if "this waited for you" not in inbox:
            raise DemoError("Bob did not receive the message")
        print("The bill (what the node's clients owe it and what it owes the relay):", flush=True)
        _conet("earnings", "--data-dir", str(directory / "node"))
    finally:
        for process in processes:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
            if process.stdout is not None:
                process.stdout.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path(".devnet") / "si")
    args = parser.parse_args()
    try:
        run(args.dir)
    except DemoError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
