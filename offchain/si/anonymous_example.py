"""An anonymous server to try: a tiny key-value, time and echo service at a wallet address.

    python -m offchain.si.anonymous_example serve --key-file server.key --relay http://127.0.0.1:8080 \\
        --node 0x<node> --directory nodes.json --note-chain 0x<32 bytes> --limit 1000000 [--cash 0x…]
    python -m offchain.si.anonymous_example request --key-file me.key --relay … --node … --directory … \\
        --note-chain … --limit … <the server's communication address> "put colour blue"

`serve` registers the key with the node (through the relay), prints one line

    anonymous server 0x<wallet> at conet:<communication address> serving

and answers until SIGINT/SIGTERM. `request` registers its own key the same way (the answer comes back
through its node), sends one request and prints the answer. Key files hold a private key in hex and
must be mode 600.

Commands (UTF-8 text): `echo <text>`, `time` (the server's UTC clock, ISO 8601), `put <key> <value>`,
`get <key>`, `keys`. Keys live per requester: the handler is given the wallet that signed the
request, so one requester never reads another's values — and never learns where the server runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime

import aiohttp
from eth_typing import ChecksumAddress
from eth_utils.address import is_address, to_canonical_address

from offchain.si.address import AddressError
from offchain.si.anonymous import AnonymousError, AnonymousServer, request
from offchain.si.client import ClientProfile, PaymentTerms, SIClient, SIClientError, read_key_file
from offchain.si.directory import DirectoryError, StaticDirectory
from offchain.si.relay import KeyFileError

__all__ = ["BadCommand", "KeyValueService", "main"]

log = logging.getLogger("offchain.si.anonymous_example")
DAY = 24 * 3600


class BadCommand(ValueError):
    """The request is not one of the service's commands."""


class KeyValueService:
    """The handler: `echo`, `time`, `put`, `get`, `keys`, with a store per requesting wallet."""

    def __init__(self, max_keys: int = 1000, max_value: int = 4096) -> None:
        self.max_keys = max_keys
        self.max_value = max_value
        self.stores: dict[ChecksumAddress, dict[str, str]] = {}

    async def __call__(self, body: bytes, sender: ChecksumAddress) -> bytes:
        try:
            text = body.decode()
        except UnicodeDecodeError as error:
            raise BadCommand("a command is UTF-8 text") from error
        command, _, rest = text.strip().partition(" ")
        store = self.stores.setdefault(sender, {})
        if command == "echo":
            return rest.encode()
        if command == "time":
            return datetime.now(UTC).isoformat(timespec="milliseconds").encode()
        if command == "put":
            key, _, value = rest.partition(" ")
            if not key or len(value.encode()) > self.max_value:
                raise BadCommand(f"put <key> <value of at most {self.max_value} bytes>")
            if key not in store and len(store) >= self.max_keys:
                raise BadCommand(f"at most {self.max_keys} keys per requester")
            store[key] = value
            return b"ok"
        if command == "get":
            if rest not in store:
                raise BadCommand(f"no key {rest!r}")
            return store[rest].encode()
        if command == "keys":
            return " ".join(sorted(store)).encode()
        raise BadCommand(f"unknown command {command!r}: echo, time, put, get, keys")


def _client(args: argparse.Namespace) -> tuple[SIClient, aiohttp.ClientSession]:
    key = read_key_file(args.key_file)
    directory = StaticDirectory.load(args.directory)
    terms = PaymentTerms(
        args.chain_id,
        to_canonical_address(args.cash),
        bytes.fromhex(args.note_chain.removeprefix("0x")),
        args.limit,
        args.auth_nonce,
        int(time.time()) + args.days * DAY,
    )
    connector = aiohttp.TCPConnector(local_addr=(args.local_address, 0)) if args.local_address else None
    session = aiohttp.ClientSession(connector=connector)
    profile = ClientProfile(args.relay, None, terms)
    return SIClient(key, profile, directory=directory, session=session), session


async def _register(client: SIClient, node: str) -> None:
    if client.directory is None or not is_address(node):
        raise SIClientError("--node is the node's 0x address, found in --directory")
    info = await client.directory.resolve(to_canonical_address(node))
    await client.register(info)


async def _serve(args: argparse.Namespace) -> None:
    client, session = _client(args)
    try:
        await _register(client, args.node)
        server = AnonymousServer(client, KeyValueService())
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        task = asyncio.create_task(server.run(min_backoff=0.2, max_backoff=args.max_backoff))
        print(f"anonymous server {client.key.checksum_address} at {server.address} serving", flush=True)
        waiter = asyncio.create_task(stop.wait())
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        task.cancel()
        waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task  # re-raises what stopped the server (e.g. its registration is gone)
    finally:
        await client.close()
        await session.close()


async def _request(args: argparse.Namespace) -> None:
    client, session = _client(args)
    try:
        await _register(client, args.node)
        answer = await request(client, args.server, args.body.encode(), timeout=args.timeout)
        print(answer.decode("utf-8", "backslashreplace"), flush=True)
    finally:
        await client.close()
        await session.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m offchain.si.anonymous_example", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("serve", "request"):
        sub = commands.add_parser(name)
        sub.add_argument("--key-file", required=True, help="the wallet's key file (hex, mode 600)")
        sub.add_argument("--relay", required=True, help="the relay to post through")
        sub.add_argument("--node", required=True, help="the recipient node's 0x address (in the directory)")
        sub.add_argument("--directory", required=True, help="static node directory (JSON)")
        sub.add_argument("--chain-id", type=int, default=43112)
        sub.add_argument("--cash", default="0x" + "00" * 20, help="CoNETCash address of the authorization")
        sub.add_argument("--note-chain", required=True, help="the note chain paying the node (32 bytes hex)")
        sub.add_argument("--limit", type=int, required=True, help="authorization limit, stablecoin units")
        sub.add_argument("--auth-nonce", type=int, default=0)
        sub.add_argument("--days", type=int, default=30)
        sub.add_argument("--local-address", help="the local IP to connect from (to tell parties apart in tests)")
        sub.add_argument("--log-level", default="INFO")
        if name == "serve":
            sub.add_argument("--max-backoff", type=float, default=30.0, help="seconds between reconnections")
        else:
            sub.add_argument("server", help="the server's communication address (conet:…)")
            sub.add_argument("body", help="the command, e.g. 'time' or 'put key value'")
            sub.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(_serve(args) if args.command == "serve" else _request(args))
    except (SIClientError, AnonymousError, KeyFileError, AddressError, DirectoryError, OSError, ValueError) as error:
        print(f"anonymous_example: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
