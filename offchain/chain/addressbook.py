"""Address books: where a network's contracts live, written by the deploy script, read by the rest.

One JSON file per network, `deployments/<ecosystem>-<network>.json`. Writes are atomic (a temporary
file renamed over the old one), so a deploy killed mid-write leaves the previous book intact.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from offchain.toolchain import project_root

_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
_HASH = re.compile(r"^0x[0-9a-f]{64}$")


class AddressBookError(ValueError):
    """An address book is missing or malformed."""


@dataclass(frozen=True)
class Deployment:
    """One deployed contract."""

    address: str
    block: int
    tx_hash: str
    code_hash: str
    """keccak256 of the runtime code at `address` right after deployment; a re-run compares it."""


@dataclass
class AddressBook:
    """Every contract of the project on one network."""

    network: str
    """`<ecosystem>:<network>`, e.g. `avalanche:fuji`."""
    chain_id: int
    deployer: str = ""
    commit: str = ""
    contracts: dict[str, Deployment] = field(default_factory=dict)

    def address(self, name: str) -> str:
        """The address of contract `name`; a clear error when the network has none."""
        try:
            return self.contracts[name].address
        except KeyError:
            raise AddressBookError(f"{name} is not deployed on {self.network}") from None

    def to_json(self) -> dict[str, Any]:
        return {
            "network": self.network,
            "chainId": self.chain_id,
            "deployer": self.deployer,
            "commit": self.commit,
            "contracts": {
                name: {
                    "address": d.address,
                    "block": d.block,
                    "txHash": d.tx_hash,
                    "codeHash": d.code_hash,
                }
                for name, d in sorted(self.contracts.items())
            },
        }

    @classmethod
    def from_json(cls, data: Any) -> AddressBook:
        try:
            book = cls(
                network=str(data["network"]),
                chain_id=int(data["chainId"]),
                deployer=str(data.get("deployer", "")),
                commit=str(data.get("commit", "")),
            )
            entries = {
                str(name): Deployment(
                    address=str(entry["address"]),
                    block=int(entry["block"]),
                    tx_hash=str(entry["txHash"]),
                    code_hash=str(entry["codeHash"]),
                )
                for name, entry in data["contracts"].items()
            }
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise AddressBookError(f"malformed address book: {exc!r}") from exc
        for name, deployment in entries.items():
            if not _ADDRESS.match(deployment.address):
                raise AddressBookError(f"{name}: not an address: {deployment.address!r}")
            if not _HASH.match(deployment.code_hash):
                raise AddressBookError(f"{name}: not a code hash: {deployment.code_hash!r}")
        book.contracts = entries
        return book


def deployments_dir() -> Path:
    """`CONET_DEPLOYMENTS_DIR`, else `deployments/` of the project."""
    explicit = os.environ.get("CONET_DEPLOYMENTS_DIR")
    return Path(explicit) if explicit else project_root() / "deployments"


def book_path(network: str, directory: Path | None = None) -> Path:
    """The file of `network`, given as `avalanche:fuji` or `avalanche-fuji`."""
    parts = network.replace("-", ":").split(":")
    if len(parts) < 2 or not all(parts[:2]):
        raise AddressBookError(f"network must be <ecosystem>:<network>, got {network!r}")
    return (directory or deployments_dir()) / f"{parts[0]}-{parts[1]}.json"


def load(network: str, directory: Path | None = None) -> AddressBook:
    """The address book of `network`; AddressBookError when there is none or it is malformed."""
    path = book_path(network, directory)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise AddressBookError(f"no address book for {network} at {path}; deploy first") from None
    except json.JSONDecodeError as exc:
        raise AddressBookError(f"{path} is not valid JSON: {exc}") from exc
    return AddressBook.from_json(data)


def save(book: AddressBook, directory: Path | None = None) -> Path:
    """Writes `book` atomically; returns its path."""
    path = book_path(book.network, directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(book.to_json(), handle, indent=2)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


__all__ = [
    "AddressBook",
    "AddressBookError",
    "Deployment",
    "book_path",
    "deployments_dir",
    "load",
    "save",
]
