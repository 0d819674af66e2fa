"""What the devnet's wallet commands (`conet cash`, `conet odex`) share: the options naming the devnet and
the wallet, a click group that turns the failures it knows into one-line errors, and bounded waits."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import click
from web3 import Web3

from offchain.devnet.dle import DevnetClient, DevnetError, wallet_path
from offchain.dle.local import address_of_secret

__all__ = ["DevnetWallet", "WalletSettings", "explained_group", "wait_for", "wallet_options"]

W = TypeVar("W")
F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class DevnetWallet:
    """A wallet's key on a running devnet."""

    client: DevnetClient
    secret: bytes

    @property
    def address(self) -> bytes:
        return address_of_secret(self.secret)

    @property
    def checksum(self) -> str:
        return Web3.to_checksum_address("0x" + self.address.hex())

    def resolve(self, who: str) -> bytes:
        """An 0x address, a devnet wallet name or a devnet node name, as 20 bytes."""
        if who.startswith("0x"):
            if not Web3.is_address(who):
                raise click.BadParameter(f"{who} is not an address")
            return bytes.fromhex(who[2:])
        path = wallet_path(self.client.directory, who)
        if path.exists():
            return address_of_secret(bytes.fromhex(path.read_text().strip().removeprefix("0x")))
        for node in self.client.state.nodes:
            if node.name == who:
                return bytes.fromhex(node.address[2:])
        raise click.BadParameter(
            f"{who!r} is no address, devnet wallet or node (create a wallet with `--wallet {who}`)"
        )


@dataclass
class WalletSettings(Generic[W]):
    """The group's options; the wallet is opened on first use, so `--help` needs no devnet."""

    directory: Path | None
    name: str
    key_file: Path | None
    wallet: W | None = None


def wallet_options(command: F) -> F:
    """`--devnet DIR`, `--wallet NAME` and `--key-file PATH`, passed as `directory`, `name`, `key_file`."""
    for option in reversed(
        [
            click.option(
                "--devnet",
                "directory",
                type=click.Path(file_okay=False, path_type=Path),
                default=None,
                help="The devnet directory (default: $CONET_DEVNET_DIR or .devnet in the project).",
            ),
            click.option(
                "--wallet", "name", default="default", show_default=True, help="A wallet of the devnet, by name."
            ),
            click.option(
                "--key-file",
                type=click.Path(dir_okay=False, exists=True, path_type=Path),
                help="A hex key file instead.",
            ),
        ]
    ):
        command = option(command)
    return command


def explained_group(errors: tuple[type[Exception], ...]) -> type[click.Group]:
    """A click group class under which every failure of `errors` becomes a ClickException with its
    reason (no traceback): what went wrong on the devnet is the user's answer, not a bug."""

    class Explained(click.Group):
        def invoke(self, ctx: click.Context) -> Any:
            try:
                return super().invoke(ctx)
            except errors as error:
                raise click.ClickException(str(error)) from error

    return Explained


def wait_for(what: str, timeout: float, done: Callable[[], bool], interval: float = 0.2) -> None:
    """Poll `done` until it holds; DevnetError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise DevnetError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
