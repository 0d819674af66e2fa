"""A load-balanced recipient provider: several entry servers answering for ONE node wallet.

DESIGN §7: "A professional recipient provider runs several entry servers for one node wallet,
sharing mailbox and push connections through a shared store and a message bus." Each entry server
is the ordinary recipient node (node.py, `create_node_app`) with its three stores in one PostgreSQL
database, in one schema per node wallet:

| what                                  | one node process (node.py)   | an entry server (here)        |
| ------------------------------------- | ---------------------------- | ----------------------------- |
| mailbox                               | `Mailbox`, mailbox.db        | `PgMailbox`                   |
| push routing to the client's stream   | `LocalPushBus`, in memory    | `PgPushBus` (LISTEN/NOTIFY)   |
| registrations, billing, relay credit  | `NodeState`, node.db         | `PgNodeState` (pgstate.py)    |
| replay cache of signed requests       | in memory                    | `PgReplayGuard` (pgstate.py)  |

All entry servers hold the node's private key (each opens envelopes sealed to the node) and run with
the same terms (`NodeConfig`). Any of them takes any request: a message stored through one is pushed
by the one holding the client's stream; a client registered through one listens through another.

How clients and senders reach them: the node's directory entry lists every entry server
(`NodeInfo.urls`; on chain, the node's endpoints), and a relay tries them in order, failing over to
the next when one cannot be connected to (relay.py). No front proxy is needed, and there is no
single point of failure in front of the entry servers: every relay is its own front. A client whose
stream ran through an entry server that died reconnects (its backoff), the relay picks a live entry
server, the new stream claims the client on the bus (pushes queued for the dead server follow it) and
the mailbox holds everything stored meanwhile.

Run one entry server:

    python -m offchain.si.provider --port 0 --key-file node.key --postgres postgresql://… \\
        --server-id entry-a [--schema conet_si] [--lease 10] [the node's terms, as node.py]

It prints `entry server ID of node 0x… listening on http://HOST:PORT` once it serves.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aiohttp import web

from offchain.si.ecies import KeyPair
from offchain.si.node import NodeConfig, build_parser, config_from_args, create_node_app
from offchain.si.pgbus import DEFAULT_LEASE_SECONDS, BusError, PgPushBus
from offchain.si.pgmailbox import DEFAULT_SCHEMA, MailboxError, PgMailbox
from offchain.si.pgstate import NodeStateError, PgNodeState, PgReplayGuard
from offchain.si.registration import AuthorizationVerifier

__all__ = ["EntryServer", "main", "open_entry_server"]

log = logging.getLogger("offchain.si.provider")


@dataclass
class EntryServer:
    """One entry server: the node's app and the shared stores it holds (close them with `close`)."""

    server_id: str
    app: web.Application
    mailbox: PgMailbox
    state: PgNodeState
    bus: PgPushBus

    async def close(self) -> None:
        """Release this server's clients on the bus (their pushes go to another live entry server or
        the mailbox at once), then close the connections. Stop serving the app first."""
        await self.bus.close()
        self.state.close()
        self.mailbox.close()


async def open_entry_server(
    dsn: str,
    key: KeyPair,
    config: NodeConfig,
    *,
    server_id: str,
    schema: str = DEFAULT_SCHEMA,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    verifier: AuthorizationVerifier | None = None,
    clock: Callable[[], float] = time.time,
) -> EntryServer:
    """An entry server of `key`'s node on the PostgreSQL database `dsn` (tables created if missing).

    Raises `WrongNodeSchema` if `schema` already holds another node wallet's state."""

    def stores() -> tuple[PgMailbox, PgNodeState]:
        # Both constructors talk to the database (schema creation): off the event loop.
        mailbox = PgMailbox(dsn, config.limits, schema=schema)
        try:
            return mailbox, PgNodeState(dsn, node=key.address, config=config, schema=schema)
        except BaseException:
            mailbox.close()
            raise

    mailbox, state = await asyncio.to_thread(stores)
    bus = PgPushBus(
        dsn, server_id, schema=schema, lease_seconds=lease_seconds, subscription_queue_size=config.push_queue_size
    )
    try:
        await bus.start()
    except BaseException:
        state.close()
        mailbox.close()
        raise
    app = create_node_app(
        key, config, mailbox, state, bus=bus, verifier=verifier, clock=clock, replays=PgReplayGuard(state)
    )
    return EntryServer(server_id, app, mailbox, state, bus)


async def _run(args: argparse.Namespace) -> None:
    from offchain.si.relay import load_key_file, serve

    key = load_key_file(args.key_file)
    config = config_from_args(args)
    entry = await open_entry_server(
        args.postgres, key, config, server_id=args.server_id, schema=args.schema, lease_seconds=args.lease
    )
    try:
        runner, port = await serve(entry.app, args.host, args.port)
    except BaseException:
        await entry.close()
        raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(
        f"entry server {args.server_id} of node {key.checksum_address} listening on http://{args.host}:{port}",
        flush=True,
    )
    try:
        await stop.wait()
    finally:
        await runner.cleanup()  # ends the streams first: each releases its client on the bus
        await entry.close()


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m offchain.si.provider --port P --key-file F --postgres DSN --server-id ID [terms]`."""
    parser = build_parser(
        "python -m offchain.si.provider",
        "Run one entry server of a load-balanced SI recipient provider (state in PostgreSQL).",
        data_dir=False,
    )
    parser.add_argument("--postgres", required=True, help="libpq URI or connection string of the shared database")
    parser.add_argument("--server-id", required=True, help="this entry server's name (operators, bus holder)")
    parser.add_argument("--schema", default=DEFAULT_SCHEMA, help="the node wallet's schema; all its servers share it")
    parser.add_argument(
        "--lease", type=float, default=DEFAULT_LEASE_SECONDS, help="seconds before a dead server's pushes move"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(_run(args))
    except (ValueError, OSError, MailboxError, BusError, NodeStateError) as error:
        print(f"provider: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
