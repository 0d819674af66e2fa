"""The SI relay under load, against what it cannot do without, measured in one run on loopback.

    python bench/si.py                   # everything, about a minute and a half
    python bench/si.py --only-stream     # (d) alone
    python bench/si.py --seconds 3       # shorter load phases

Separate processes serve: an upstream (a minimal aiohttp "node" that reads the body and answers
"ok"), a real recipient node for (d) (`python -m offchain.si.node`), the relay (`python -m
offchain.si.relay`, its directory pointing at both), and a plain forwarder written here (aiohttp,
`await request.read()` then one POST upstream, the answer read whole and returned) — the least any
HTTP relay must do. This process is the load generator: aiohttp clients with a fixed number of
requests in flight.

(a) Added latency per hop: sequential POSTs of a 1 KiB-bucket envelope (1,114 bytes) straight to the
    upstream and through the relay, interleaved in rounds; the difference of the percentiles is what
    one relay hop adds. Goal: p50 ≤ 2 ms.
(b) 1 MiB-bucket envelopes (1,048,666 bytes) through the relay and through the plain forwarder, in
    MB/s (10⁶ bytes), best of rounds. Goal: relay ≥ half of plain.
(c) 1 KiB envelopes per second through one relay process at 64 in flight; also the plain forwarder
    and the upstream alone, and the relay's own CPU time per message (from /proc), which gives the
    rate one fully used core would carry. Goal: ≥ 2,000 msg/s per relay process.
(d) 1 KiB messages per second end to end: relay → recipient node → event stream. The recipient node
    is a real process (`python -m offchain.si.node`, SQLite mailbox with synchronous=FULL); a client
    in this process registers through the relay and keeps its stream open (`SIClient.listen`, each
    event decrypted and each message opened and its signature checked), acknowledging in batches
    (one ack request per 50 ms, up to 1,000 ids: what the protocol allows; acking every message one
    by one, as `listen(auto_ack=True)` does, is reported too). The senders post pre-sealed, distinct
    envelopes through the relay with 64 in flight; the figure is messages the client received per
    second, from the first post to the last message received, and the node's CPU per message.
"""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import click
from aiohttp import web
from eth_utils.crypto import keccak

from offchain.si import KeyPair, seal
from offchain.si.client import ClientProfile, PaymentTerms, SIClient
from offchain.si.directory import NodeInfo, StaticDirectory

ROOT = Path(__file__).resolve().parents[1]
READY = "listening on "
SMALL_CONTENT = 800  # seals into the 1 KiB bucket: 1,114 bytes on the wire
LARGE_CONTENT = 1_048_368  # the largest content: the 1 MiB bucket, 1,048,666 bytes
MB = 1_000_000


# ---------------------------------------------------------------------- the servers (child processes)


def _serve_forever(app: web.Application, port: int) -> None:
    async def run() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        bound = runner.addresses[0][1]
        print(f"{READY}http://127.0.0.1:{bound}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(run())


def _upstream_app() -> web.Application:
    async def post(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=b"ok")

    app = web.Application(client_max_size=2 * 1024 * 1024)
    app.router.add_post("/post", post)
    return app


def _plain_forward_app(upstream: str) -> web.Application:
    state: dict[str, aiohttp.ClientSession] = {}

    async def session(app: web.Application) -> AsyncIterator[None]:
        state["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000))
        yield
        await state["session"].close()

    async def post(request: web.Request) -> web.Response:
        body = await request.read()
        headers = {"Content-Type": "application/octet-stream"}
        async with state["session"].post(f"{upstream}/post", data=body, headers=headers) as answer:
            return web.Response(status=answer.status, body=await answer.read())

    app = web.Application(client_max_size=2 * 1024 * 1024)
    app.cleanup_ctx.append(session)
    app.router.add_post("/post", post)
    return app


@dataclass
class Server:
    process: subprocess.Popen[str]
    url: str

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process so far (Linux /proc)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def start(*command: str) -> Server:
    """Start a server process and wait for its "listening on URL" line."""
    process = subprocess.Popen(
        [sys.executable, *command], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if READY not in line:
        process.kill()
        raise RuntimeError(f"{' '.join(command)} did not start: {line!r}")
    return Server(process, line.split(READY, 1)[1].strip())


# ---------------------------------------------------------------------- the load generator


def percentile(sorted_values: list[float], fraction: float) -> float:
    return sorted_values[max(0, math.ceil(fraction * len(sorted_values)) - 1)]


async def post(session: aiohttp.ClientSession, url: str, body: bytes) -> None:
    async with session.post(url, data=body) as response:
        await response.read()
        if response.status != 200:
            raise RuntimeError(f"{url} answered {response.status}")


async def latencies(session: aiohttp.ClientSession, url: str, body: bytes, count: int) -> list[float]:
    times = []
    for _ in range(count):
        start_time = time.perf_counter()
        await post(session, url, body)
        times.append(time.perf_counter() - start_time)
    return times


async def load(url: str, body: bytes, concurrency: int, seconds: float) -> tuple[int, float]:
    """(completed requests, elapsed seconds) with `concurrency` requests always in flight."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        # Warm the pools (client, relay and upstream) before the clock starts.
        await asyncio.gather(*(post(session, url, body) for _ in range(concurrency)))
        deadline = time.perf_counter() + seconds
        done = 0

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                await post(session, url, body)
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done, time.perf_counter() - started


@asynccontextmanager
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        yield session


# ---------------------------------------------------------------------- the phases


async def hop_latency(direct: str, relayed: str, body: bytes, count: int) -> None:
    rounds = 10
    samples: dict[str, list[float]] = {"direct": [], "relay": []}
    async with client() as to_direct, client() as to_relay:
        await latencies(to_direct, direct, body, 200)  # warm up both paths
        await latencies(to_relay, relayed, body, 200)
        for _ in range(rounds):
            samples["direct"] += await latencies(to_direct, direct, body, count // rounds)
            samples["relay"] += await latencies(to_relay, relayed, body, count // rounds)
    figures = {name: sorted(values) for name, values in samples.items()}
    p = {name: (percentile(v, 0.50) * 1e3, percentile(v, 0.99) * 1e3) for name, v in figures.items()}
    hop = (p["relay"][0] - p["direct"][0], p["relay"][1] - p["direct"][1])
    print(f"(a) added latency per hop: {len(body):,}-byte envelope, {count:,} sequential POSTs per path")
    print(f"    {'path':<22}{'p50 ms':>9}{'p99 ms':>9}")
    print(f"    {'upstream directly':<22}{p['direct'][0]:>9.3f}{p['direct'][1]:>9.3f}")
    print(f"    {'through the relay':<22}{p['relay'][0]:>9.3f}{p['relay'][1]:>9.3f}")
    print(f"    {'per hop (difference)':<22}{hop[0]:>9.3f}{hop[1]:>9.3f}   goal p50 <= 2 ms: {_met(hop[0] <= 2.0)}")


async def large_throughput(relayed: str, plain: str, body: bytes, concurrency: int, seconds: float) -> None:
    rounds = 2
    best = {"relay": 0.0, "plain": 0.0}
    for _ in range(rounds):
        for name, url in (("relay", relayed), ("plain", plain)):
            done, elapsed = await load(url, body, concurrency, seconds)
            best[name] = max(best[name], done * len(body) / elapsed / MB)
    ratio = best["relay"] / best["plain"]
    print(f"(b) {len(body):,}-byte envelopes, {concurrency} in flight, best of {rounds} rounds of {seconds:g} s")
    print(f"    relay {best['relay']:.1f} MB/s, plain aiohttp forward {best['plain']:.1f} MB/s")
    print(f"    ratio {ratio:.2f}   goal >= 0.5: {_met(ratio >= 0.5)}")


async def message_rate(
    relay: Server, plain: Server, relayed: str, forwarded: str, direct: str, body: bytes, concurrency: int,
    seconds: float,
) -> None:  # fmt: skip
    rates, cpu = {}, {}
    for name, server, url in (("relay", relay, relayed), ("plain", plain, forwarded), ("direct", None, direct)):
        before = server.cpu_seconds() if server else 0.0
        done, elapsed = await load(url, body, concurrency, seconds)
        rates[name] = done / elapsed
        if server:
            # The warm-up requests cost CPU too; counting them keeps the per-message figure honest.
            cpu[name] = (server.cpu_seconds() - before) / (done + concurrency)
    print(f"(c) {len(body):,}-byte envelopes, {concurrency} in flight, {seconds:g} s each")
    print(f"    {'':<24}{'msg/s':>8}{'CPU µs/msg':>12}{'msg/s per core':>16}")
    labels = {"relay": "through the relay", "plain": "plain aiohttp forward", "direct": "upstream directly"}
    for name, label in labels.items():
        cpu_text = f"{cpu[name] * 1e6:>12,.0f}{1 / cpu[name]:>16,.0f}" if name in cpu else ""
        print(f"    {label:<24}{rates[name]:>8,.0f}{cpu_text}")
    print(
        f"    goal >= 2,000 msg/s per relay process: measured {_met(rates['relay'] >= 2000)}, "
        f"per fully used core {_met(1 / cpu['relay'] >= 2000)}"
    )


async def _stream_round(
    relayed: str,
    node: NodeInfo,
    server: Server,
    envelopes_for: Callable[[KeyPair, int], list[bytes]],
    count: int,
    concurrency: int,
    batched: bool,
) -> tuple[float, float, int]:
    """(msg/s received by the listening client, node CPU µs per message, stream reconnections)."""
    recipient = KeyPair.generate()
    terms = PaymentTerms(43112, bytes(20), keccak(b"bench note chain"), 10**12, 0, int(time.time()) + 86400)
    async with SIClient(recipient, ClientProfile(relayed, node, terms), stream_timeout=60) as client:
        await client.register()
        envelopes = envelopes_for(recipient, count)
        seen: set[bytes] = set()
        everything = asyncio.Event()
        to_ack: list[bytes] = []

        def note(item_id: bytes) -> None:
            seen.add(item_id)
            if len(seen) == count:
                everything.set()

        async def listen() -> None:
            async for item in client.listen(auto_ack=not batched, min_backoff=0.1, max_backoff=1.0):
                note(item.id)
                if batched:
                    to_ack.append(item.id)

        async def acknowledge() -> None:
            # listen(auto_ack=False) fetches only the first page of the mailbox after a reconnection (a
            # stream that fell push_queue_size behind is ended by the node): page the rest here.
            drained = client.connections
            while True:
                await asyncio.sleep(0.05)
                while to_ack:
                    batch = to_ack[:1000]
                    del to_ack[: len(batch)]
                    await client.ack(batch)
                if client.connections != drained:
                    drained = client.connections
                    while True:
                        items, remaining = await client.fetch(100)
                        for item in items:
                            note(item.id)
                        if items:
                            await client.ack([item.id for item in items])
                        if not remaining:
                            break

        tasks = [asyncio.create_task(listen())] + ([asyncio.create_task(acknowledge())] if batched else [])
        try:
            while client.connections == 0:  # the node subscribes the stream before its first byte
                await asyncio.sleep(0.01)
            connector = aiohttp.TCPConnector(limit=concurrency)
            async with aiohttp.ClientSession(connector=connector) as session:
                queue = list(reversed(envelopes))
                cpu_before = server.cpu_seconds()
                started = time.perf_counter()

                async def sender() -> None:
                    while queue:
                        await post(session, f"{relayed}/post", queue.pop())

                await asyncio.gather(*(sender() for _ in range(concurrency)))
                await asyncio.wait_for(everything.wait(), 120)
                elapsed = time.perf_counter() - started
                cpu = server.cpu_seconds() - cpu_before
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            reconnections = client.connections - 1
    return count / elapsed, cpu / count * 1e6, reconnections


async def stream_rate(relayed: str, node: NodeInfo, server: Server, count: int, concurrency: int) -> None:
    sender = KeyPair.generate()

    def envelopes_for(recipient: KeyPair, number: int) -> list[bytes]:
        # Distinct messages: the node stores by keccak256(N1), so a repeated envelope would be one message.
        return [seal(sender, recipient.public_key, node.public_key, os.urandom(SMALL_CONTENT)) for _ in range(number)]

    batched = await _stream_round(relayed, node, server, envelopes_for, count, concurrency, True)
    single = await _stream_round(relayed, node, server, envelopes_for, count, concurrency, False)
    print(
        f"(d) relay → recipient node (a real process) → event stream: {SMALL_CONTENT}-byte content "
        f"({len(envelopes_for(sender, 1)[0]):,}-byte envelopes), {concurrency} in flight"
    )
    print(f"    {count:,} messages per round; a stream more than 64 behind is ended and the client fetches")
    print(f"    {'':<36}{'msg/s':>8}{'node CPU µs/msg':>17}{'reconnections':>15}")
    print(f"    {'client acks in batches (50 ms)':<36}{batched[0]:>8,.0f}{batched[1]:>17,.0f}{batched[2]:>15,}")
    print(f"    {'client acks every message':<36}{single[0]:>8,.0f}{single[1]:>17,.0f}{single[2]:>15,}")


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


async def _run(
    seconds: float, concurrency: int, latency_requests: int, stream_messages: int, only_stream: bool
) -> None:
    node = KeyPair.generate()
    sender, recipient = KeyPair.generate(), KeyPair.generate()
    small = seal(sender, recipient.public_key, node.public_key, os.urandom(SMALL_CONTENT))
    large = seal(sender, recipient.public_key, node.public_key, os.urandom(LARGE_CONTENT))
    servers: list[Server] = []
    with tempfile.TemporaryDirectory() as scratch:
        try:
            upstream = start(__file__, "upstream")
            servers.append(upstream)
            plain = start(__file__, "plain-forward", "--upstream", upstream.url)
            servers.append(plain)
            key_file = Path(scratch) / "relay.key"
            key_file.write_text(KeyPair.generate().secret.hex())
            # The recipient node for (d): a real one, with its files in the scratch directory.
            recipient_node = KeyPair.generate()
            node_key_file = Path(scratch) / "node.key"
            node_key_file.write_text(recipient_node.secret.hex())
            si_node = start(
                "-m", "offchain.si.node", "--port", "0", "--key-file", str(node_key_file), "--data-dir",
                str(Path(scratch) / "node-data"), "--log-level", "WARNING",
            )  # fmt: skip
            servers.append(si_node)
            si_node_info = NodeInfo(recipient_node.address, si_node.url, recipient_node.public_key_64)
            directory = Path(scratch) / "nodes.json"
            StaticDirectory([NodeInfo(node.address, upstream.url, node.public_key_64), si_node_info]).save(directory)
            relay = start(
                "-m", "offchain.si.relay", "--port", "0", "--key-file", str(key_file),
                "--directory", str(directory), "--log-level", "WARNING",
            )  # fmt: skip
            servers.append(relay)
            print(f"SI relay benchmark: loopback, {os.cpu_count()} cores shared by the load generator and 4 servers")
            if not only_stream:
                await hop_latency(f"{upstream.url}/post", f"{relay.url}/post", small, latency_requests)
                await large_throughput(f"{relay.url}/post", f"{plain.url}/post", large, 4, seconds)
                await message_rate(
                    relay, plain, f"{relay.url}/post", f"{plain.url}/post", f"{upstream.url}/post", small,
                    concurrency, seconds,
                )  # fmt: skip
            await stream_rate(relay.url, si_node_info, si_node, stream_messages, concurrency)
        finally:
            for server in servers:
                server.stop()


@click.group(invoke_without_command=True)
@click.option("--seconds", default=5.0, show_default=True, help="length of each load phase")
@click.option("--concurrency", default=64, show_default=True, help="requests in flight for msg/s")
@click.option("--latency-requests", default=4000, show_default=True, help="sequential POSTs per path in (a)")
@click.option("--stream-messages", default=4000, show_default=True, help="messages through the node in (d)")
@click.option("--only-stream", is_flag=True, help="run (d) only")
@click.pass_context
def main(
    context: click.Context, seconds: float, concurrency: int, latency_requests: int, stream_messages: int,
    only_stream: bool,
) -> None:  # fmt: skip
    """Measure the SI relay (see the module docstring)."""
    if context.invoked_subcommand is None:
        asyncio.run(_run(seconds, concurrency, latency_requests, stream_messages, only_stream))


@main.command(hidden=True)
@click.option("--port", default=0)
def upstream(port: int) -> None:
    """Serve the stand-in node."""
    _serve_forever(_upstream_app(), port)


@main.command("plain-forward", hidden=True)
@click.option("--port", default=0)
@click.option("--upstream", "upstream_url", required=True)
def plain_forward(port: int, upstream_url: str) -> None:
    """Serve the plain forwarder."""
    _serve_forever(_plain_forward_app(upstream_url), port)


if __name__ == "__main__":
    main()
