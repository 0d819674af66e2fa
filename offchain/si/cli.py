"""`conet si …`: a wallet's SI client on the command line, and a node operator's earnings.

A client's private key lives in a key file (hex, mode 600, `conet si keygen`); what it learns by
registering (its node, relay, payment terms, prices, vouchers signed) is kept beside it in
`<key file>.si.json`, so `send`, `listen`, `inbox` and `address` need only the key file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click
from eth_utils.address import is_address, to_canonical_address

from offchain.chain import addressbook
from offchain.si.address import AddressError
from offchain.si.client import (
    ClientProfile,
    KeyFileError,
    PaymentTerms,
    Received,
    SIClient,
    SIClientError,
    profile_path_for,
    read_key_file,
    write_key_file,
)
from offchain.si.directory import DirectoryError, NodeInfo, StaticDirectory
from offchain.si.ecies import KeyPair
from offchain.si.errors import EnvelopeError
from offchain.si.node import earnings as node_earnings

__all__ = ["si"]

_T = TypeVar("_T")
DAY = 24 * 3600
_key_file = click.option(
    "--key-file",
    envvar="CONET_SI_KEY",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The wallet's key file (hex, mode 600). Env: CONET_SI_KEY.",
)
_directory = click.option(
    "--directory",
    envvar="CONET_SI_DIRECTORY",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="A static node directory (JSON) to find nodes' keys. Env: CONET_SI_DIRECTORY.",
)


def _run(coroutine: Coroutine[Any, Any, _T]) -> _T:
    """Run the client; every failure it can explain becomes a one-line error, not a traceback."""
    try:
        return asyncio.run(coroutine)
    except (SIClientError, KeyFileError, AddressError, DirectoryError, EnvelopeError, OSError) as error:
        raise click.ClickException(str(error)) from error


def _key(path: Path) -> KeyPair:
    try:
        return read_key_file(path)
    except KeyFileError as error:
        raise click.ClickException(str(error)) from error


def _profile(key_file: Path) -> ClientProfile:
    path = profile_path_for(key_file)
    if not path.exists():
        raise click.ClickException(f"{path} does not exist: run `conet si register` first")
    try:
        return ClientProfile.load(path)
    except SIClientError as error:
        raise click.ClickException(str(error)) from error


def _load_directory(path: Path | None) -> StaticDirectory | None:
    if path is None:
        return None
    try:
        return StaticDirectory.load(path)
    except DirectoryError as error:
        raise click.ClickException(str(error)) from error


def _client(key_file: Path, directory: Path | None = None, relay: str | None = None) -> SIClient:
    profile = _profile(key_file) if profile_path_for(key_file).exists() or relay is None else ClientProfile(relay)
    if relay is not None:
        profile.relay_url = relay
    return SIClient(
        _key(key_file), profile, directory=_load_directory(directory), profile_path=profile_path_for(key_file)
    )


def _stamp(timestamp_ms: int) -> str:
    return datetime.fromtimestamp(timestamp_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _show(item: Received, as_json: bool) -> str:
    message = item.message
    if as_json:
        return json.dumps(
            {
                "id": "0x" + item.id.hex(),
                "from": message.sender,
                "timestamp_ms": message.timestamp_ms,
                "message_id": "0x" + message.message_id.hex(),
                "content": message.content.decode("utf-8", "backslashreplace"),
            }
        )
    text = message.content.decode("utf-8", "backslashreplace")
    return f"[{_stamp(message.timestamp_ms)}] {message.sender}: {text}"


@click.group()
def si() -> None:
    """The stealth internet: reach people by wallet through relays that cannot read."""


@si.command()
@_key_file
def keygen(key_file: Path) -> None:
    """Create a new wallet key file (mode 600) and print its address."""
    try:
        key = write_key_file(key_file)
    except KeyFileError as error:
        raise click.ClickException(str(error)) from error
    click.echo(key.checksum_address)


def _resolve_node(node: str, directory: StaticDirectory | None) -> NodeInfo:
    if directory is None:
        raise click.UsageError("--directory is needed to find the node's key")
    if is_address(node):
        try:
            return asyncio.run(directory.resolve(to_canonical_address(node)))
        except DirectoryError as error:
            raise click.ClickException(str(error)) from error
    matches = [info for info in directory.nodes if info.url.rstrip("/") == node.rstrip("/")]
    if not matches:
        raise click.ClickException(f"no node with URL {node} in the directory")
    return matches[0]


def _cash(cash: str | None, network: str) -> bytes:
    if cash is None:
        try:
            cash = addressbook.load(network).address("CoNETCash")
        except addressbook.AddressBookError as error:
            raise click.UsageError(f"--cash is needed ({error})") from error
    if not is_address(cash):
        raise click.BadParameter(f"not an address: {cash}", param_hint="--cash")
    return to_canonical_address(cash)


def _note_chain(value: str) -> bytes:
    try:
        raw = bytes.fromhex(value.removeprefix("0x"))
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise click.BadParameter("a note chain id is 32 bytes in hex", param_hint="--note-chain")
    return raw


@si.command()
@_key_file
@click.option("--node", "node_ref", required=True, help="The recipient node: its address or URL.")
@click.option("--relay", required=True, help="The relay to post through, e.g. http://127.0.0.1:8080.")
@_directory
@click.option("--network", default="avalanche:anvil", show_default=True, help="Address book for the defaults.")
@click.option("--chain-id", type=int, help="Main chain id (default: the network's).")
@click.option("--cash", help="CoNETCash address (default: the network's).")
@click.option("--note-chain", required=True, help="The note chain paying the node (32 bytes hex).")
@click.option("--limit", type=int, required=True, help="Authorization limit, stablecoin units.")
@click.option("--auth-nonce", type=int, default=0, show_default=True, help="The authorization's nonce.")
@click.option("--days", type=int, default=30, show_default=True, help="Days the authorization runs.")
def register(
    key_file: Path,
    node_ref: str,
    relay: str,
    directory: Path | None,
    network: str,
    chain_id: int | None,
    cash: str | None,
    note_chain: str,
    limit: int,
    auth_nonce: int,
    days: int,
) -> None:
    """Register with a recipient node through a relay, authorizing it to charge a CoNETCash note."""
    key = _key(key_file)
    node = _resolve_node(node_ref, _load_directory(directory))
    if chain_id is None:
        try:
            chain_id = addressbook.load(network).chain_id
        except addressbook.AddressBookError:
            chain_id = 43112
    terms = PaymentTerms(
        chain_id, _cash(cash, network), _note_chain(note_chain), limit, auth_nonce, int(time.time()) + days * DAY
    )
    path = profile_path_for(key_file)
    profile = ClientProfile.load(path) if path.exists() else ClientProfile(relay)
    profile.relay_url = relay

    async def go() -> str:
        async with SIClient(key, profile, profile_path=path) as client:
            registered = await client.register(node, terms)
            return (
                f"registered with {node.checksum_address} (prices: {registered.per_mb_outbound}/MB carried, "
                f"{registered.per_mb_hour_storage}/MB-hour stored; credit {registered.credit_limit})\n"
                f"{client.communication_address()}"
            )

    click.echo(_run(go()))


@si.command()
@_key_file
@click.option("--relay-hint", help="The relay to name in the address (default: the one registered through).")
def address(key_file: Path, relay_hint: str | None) -> None:
    """Print my communication address: what others need to write to me."""
    client = SIClient(_key(key_file), _profile(key_file))
    try:
        click.echo(client.communication_address(relay_hint))
    except SIClientError as error:
        raise click.ClickException(str(error)) from error


def _content(text: str) -> bytes:
    if text.startswith("@"):
        path = Path(text[1:])
        try:
            return path.read_bytes()
        except OSError as error:
            raise click.ClickException(f"cannot read {path}: {error}") from error
    return text.encode()


@si.command()
@_key_file
@click.argument("to")
@click.argument("text")
@click.option("--relay", help="Post through this relay (default: the registered one).")
@_directory
def send(key_file: Path, to: str, text: str, relay: str | None, directory: Path | None) -> None:
    """Send TEXT (or @FILE's bytes) to TO, a communication address (or a contact's 0x address)."""
    content = _content(text)

    async def go() -> bytes:
        async with _client(key_file, directory, relay) as client:
            if not is_address(to):
                client.add_contact(to)
            return await client.send(to, content)

    message_id = _run(go())
    click.echo(f"sent 0x{message_id.hex()} ({len(content)} bytes)")


@si.command()
@_key_file
@click.option("--count", type=int, help="Stop after this many messages.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per message.")
@click.option(
    "--max-backoff", type=float, default=30.0, show_default=True, help="Seconds between reconnections, at most."
)
def listen(key_file: Path, count: int | None, as_json: bool, max_backoff: float) -> None:
    """Print messages as they arrive (the mailbox first), reconnecting with backoff; Ctrl-C stops."""

    async def go() -> None:
        seen = 0
        async with _client(key_file) as client:
            async for item in client.listen(max_backoff=max_backoff):
                click.echo(_show(item, as_json))
                sys.stdout.flush()
                seen += 1
                if count is not None and seen >= count:
                    # Acknowledge the last one too: the iterator acks a message when asked for the next.
                    await client.ack([item.id])
                    return

    with contextlib.suppress(KeyboardInterrupt):
        _run(go())


@si.command()
@_key_file
@click.option("--keep", is_flag=True, help="Leave the messages in the mailbox (no acknowledgement).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per message.")
def inbox(key_file: Path, keep: bool, as_json: bool) -> None:
    """Print what waits in my mailbox, then acknowledge it (the node deletes it)."""

    async def go() -> tuple[list[Received], int]:
        async with _client(key_file) as client:
            items = await client.fetch_all()
            removed = 0 if keep or not items else await client.ack([item.id for item in items])
            return items, removed

    items, removed = _run(go())
    for item in items:
        click.echo(_show(item, as_json))
    if not as_json:
        click.echo(f"{len(items)} messages" + ("" if keep else f", {removed} deleted at the node"), err=True)


@si.command()
@_key_file
@_directory
def serve(key_file: Path, directory: Path | None) -> None:
    """Serve the example service (echo, time, put/get per requester) anonymously at my wallet address.

    Requests come through my node, answers go back through my relay to each requester's node
    (offchain/si/anonymous.py); neither side learns the other's IP. Needs `register` first and
    --directory to find requesters' nodes. Ctrl-C stops."""
    from offchain.si.anonymous import AnonymousServer
    from offchain.si.anonymous_example import KeyValueService

    async def go() -> None:
        async with _client(key_file, directory) as client:
            server = AnonymousServer(client, KeyValueService())
            click.echo(f"serving at {server.address}")
            sys.stdout.flush()
            await server.run()

    with contextlib.suppress(KeyboardInterrupt):
        _run(go())


@si.command()
@_key_file
@click.argument("server")
@click.argument("body")
@_directory
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds to wait for the answer.")
def request(key_file: Path, server: str, body: str, directory: Path | None, timeout: float) -> None:
    """Send BODY (or @FILE's bytes) to the anonymous server SERVER (a communication address) and print
    its answer. The answer comes back through my node: `register` first."""
    from offchain.si.anonymous import AnonymousError
    from offchain.si.anonymous import request as ask

    content = _content(body)

    async def go() -> bytes:
        async with _client(key_file, directory) as client:
            return await ask(client, server, content, timeout=timeout)

    try:
        answer = _run(go())
    except AnonymousError as error:
        raise click.ClickException(str(error)) from error
    click.echo(answer.decode("utf-8", "backslashreplace"))


def _table(rows: list[dict[str, Any]], columns: list[str]) -> list[str]:
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines += [
        "  ".join(str(r[c]).rjust(widths[c]) if isinstance(r[c], int) else str(r[c]).ljust(widths[c]) for c in columns)
        for r in rows
    ]
    return lines


@si.command()
@click.option("--data-dir", required=True, type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def earnings(data_dir: Path, as_json: bool) -> None:
    """What a node's clients owe it and what it owes relays, to the unit, from its data dir."""
    try:
        node, clients, relays = node_earnings(data_dir)
    except (FileNotFoundError, OSError) as error:
        raise click.ClickException(str(error)) from error
    client_rows = [
        {
            "client": c.client,
            "note chain": "0x" + c.note_chain.hex()[:8] + "…",
            "billed": c.billed,
            "vouched": c.vouched,
            "settled": c.settled,
            "owed": c.owed,
            "unpaid": c.unpaid,
        }
        for c in clients
    ]
    relay_rows = [{"relay": r.relay, "bytes": r.bytes, "owed": r.owed, "settled": r.settled} for r in relays]
    deductions = _deduction_rows(data_dir)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "node": node,
                    "clients": [
                        dict(row, **{"note chain": "0x" + c.note_chain.hex()})
                        for row, c in zip(client_rows, clients, strict=True)
                    ],
                    "relays": relay_rows,
                    "deductions": deductions,
                    "owed_to_node": sum(c.owed for c in clients),
                    "owed_by_node": sum(r.owed for r in relays),
                },
                indent=2,
            )
        )
        return
    click.echo(f"node {node}")
    click.echo(f"owed to the node by its clients (vouched, not settled): {sum(c.owed for c in clients)}")
    if client_rows:
        click.echo("\n".join(_table(client_rows, list(client_rows[0]))))
    click.echo(f"owed by the node to relays: {sum(r.owed for r in relays)}")
    if relay_rows:
        click.echo("\n".join(_table(relay_rows, list(relay_rows[0]))))
    if deductions:
        total = sum(d["amount"] for d in deductions)
        click.echo(f"settled on the note chains: {total} in {len(deductions)} deductions")
        click.echo("\n".join(_table(deductions, ["client", "amount", "fee", "authorization", "block"])))


def _deduction_rows(data_dir: Path) -> list[dict[str, Any]]:
    """The deductions final on the note chains (settlement.py's journal), if the node settles there."""
    from offchain.si.settlement import settlement_history

    history = settlement_history(data_dir)
    if history is None:
        return []
    return [
        {
            "client": d.holder,
            "note chain": "0x" + d.note_chain.hex(),
            "amount": d.amount,
            "fee": "?" if d.fee is None else d.fee,
            "authorization": d.authorization,
            "block": "?" if d.height is None else d.height,
        }
        for d in history.settled
    ]
