"""Starts and stops the project's own anvil node: a real JSON-RPC chain on 127.0.0.1.

anvil comes from npm (`@foundry-rs/anvil-linux-amd64`), so nothing is downloaded from elsewhere. The
node runs with Avalanche's local chain id, 43112, and the development mnemonic ape's test accounts
use, so the same accounts are funded on the embedded chain and here.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from offchain.toolchain import project_root

CHAIN_ID = 43112
DEFAULT_PORT = 8545
# The contracts are compiled for cancun, which is also what Avalanche's C-Chain runs; anvil would
# otherwise run its newest fork, whose gas rules differ.
HARDFORK = "cancun"
DEV_MNEMONIC = "test test test test test test test test test test test junk"


class AnvilError(RuntimeError):
    """anvil is missing, did not start, or does not answer."""


@dataclass
class AnvilNode:
    """A running anvil process."""

    process: subprocess.Popen[bytes]
    port: int
    chain_id: int

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        """Stops the node: SIGTERM, then SIGKILL if it lingers."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=timeout)


def anvil_binary() -> Path:
    """The anvil executable from node_modules, or from PATH."""
    local = project_root() / "node_modules" / ".bin" / "anvil"
    if local.exists():
        return local
    found = shutil.which("anvil")
    if found is None:
        raise AnvilError("anvil not found: run `make setup` (npm ci installs it)")
    return Path(found)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def rpc(uri: str, method: str, params: list[object] | None = None, timeout: float = 5.0) -> object:
    """One JSON-RPC call; AnvilError on a transport failure or an error answer."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}).encode()
    request = urllib.request.Request(uri, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = json.loads(response.read())
    except (OSError, urllib.error.URLError, json.JSONDecodeError) as exc:
        raise AnvilError(f"{method} at {uri} failed: {exc}") from exc
    if "error" in answer:
        raise AnvilError(f"{method} at {uri} failed: {answer['error']}")
    return answer.get("result")


def start_anvil(
    port: int | None = None,
    chain_id: int = CHAIN_ID,
    block_time: float | None = None,
    startup_timeout: float = 30.0,
) -> AnvilNode:
    """Starts anvil on 127.0.0.1 and returns once it answers `eth_chainId` with `chain_id`."""
    port = port or free_port()
    command = [
        str(anvil_binary()),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--chain-id", str(chain_id),
        "--mnemonic", DEV_MNEMONIC,
        "--hardfork", HARDFORK,
        "--silent",
    ]  # fmt: skip
    if block_time is not None:
        command += ["--block-time", str(block_time)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    node = AnvilNode(process=process, port=port, chain_id=chain_id)
    deadline = time.monotonic() + startup_timeout
    while True:
        if process.poll() is not None:
            stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
            raise AnvilError(f"anvil exited with {process.returncode}: {stderr.strip()}")
        try:
            answered = int(str(rpc(node.uri, "eth_chainId", timeout=1.0)), 16)
        except AnvilError:
            if time.monotonic() > deadline:
                node.stop()
                raise AnvilError(f"anvil did not answer on {node.uri} within {startup_timeout}s") from None
            time.sleep(0.05)
            continue
        if answered != chain_id:
            node.stop()
            raise AnvilError(f"a node on {node.uri} has chain id {answered}, not {chain_id}")
        return node


@contextmanager
def running_anvil(port: int | None = None, chain_id: int = CHAIN_ID) -> Iterator[AnvilNode]:
    """A fresh anvil for the duration of a `with` block."""
    node = start_anvil(port=port, chain_id=chain_id)
    try:
        yield node
    finally:
        node.stop()
