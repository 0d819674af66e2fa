"""The SI relay: `POST /post` forwards an envelope to the node its outer key id names, without opening it
(DESIGN §7, "Flow"; docs/drafts/si-relay.md has the wire details).

    client ──POST /post──▶ relay ──POST {node.url}/post + CoNET-Relay-Receipt──▶ recipient node
           ◀── the node's answer, streamed chunk by chunk (an event stream passes through live) ──

The relay reads only the first 74 bytes of the body: the 29-byte clear header (magic, version, key id,
body length) and the outer layer's ephemeral key and nonce, which the byte-count receipt it signs for
the node binds (`offchain.si.receipt`). It checks the header as strictly as `parse_envelope` does
(magic, version, size bucket), resolves the key id in a `Directory`, and streams the body up as it
arrives. It forwards no header of the client's except `Accept` and `Content-Type`, so the node learns
neither the sender's IP nor anything about its software.

A node with several entry servers (a load-balanced provider, provider.py: `NodeInfo.urls`) is tried
in its listed order; the relay moves to the next entry server only when a connection could not be
made (nothing was sent, so any envelope may go elsewhere unchanged), and tries one that failed last
for `failover_hold` seconds.

Everything else the relay answers — other paths, other methods, refusals, upstream failures — is a
stock nginx page (`offchain.si.disguise`).

What the relay keeps: counters, and log lines that name at most the destination node and, only if
configured, the sender's IP. Never content, never the envelope's bytes, never the inner address (it
never sees it).

Run one: `python -m offchain.si.relay --port 8080 --key-file relay.key --directory nodes.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from eth_utils.address import to_checksum_address
from multidict import CIMultiDict

from offchain.si import disguise
from offchain.si.directory import (
    Directory,
    DirectoryError,
    NodeInfo,
    RegistryDirectory,
    StaticDirectory,
    UnknownNode,
)
from offchain.si.ecies import ADDRESS_SIZE, ECIES_OVERHEAD, KeyPair
from offchain.si.envelope import HEADER_SIZE, LAYER_OVERHEAD, MAGIC, VERSION
from offchain.si.errors import (
    BadMagic,
    EnvelopeError,
    InvalidKey,
    MalformedEnvelope,
    OversizedEnvelope,
    TruncatedEnvelope,
    UnsupportedVersion,
)
from offchain.si.padding import DEFAULT_POLICY, KIB, PaddingPolicy
from offchain.si.receipt import RECEIPT_HEADER, TAG_PREFIX_SIZE, sign_receipt

__all__ = [
    "DEFAULT_MAX_BODY_SIZE",
    "RELAY_KEY",
    "EnvelopePrefix",
    "KeyFileError",
    "Relay",
    "RelayConfig",
    "RelayStats",
    "create_relay_app",
    "load_key_file",
    "main",
    "parse_prefix",
    "serve",
]

_log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_SIZE = (1024 + 1) * KIB
"""1,049,600 bytes: the largest envelope (1,048,666 bytes) and some slack, as nginx's
client_max_body_size would be set; beyond it the relay answers 413 without reading the body."""

_FORWARDED_REQUEST_HEADERS = ("Accept",)
_FORWARDED_RESPONSE_HEADERS = ("Cache-Control", "Retry-After", "Content-Encoding")
"""Passed down besides Content-Type; the node's other headers (Server included) are dropped."""
_EVENT_STREAM = "text/event-stream"


@dataclass(frozen=True)
class RelayConfig:
    """Limits and timeouts (seconds). client_body_timeout is nginx's default; the upstream ones are
    shorter than nginx's 60 s, since a node that is slow to take an envelope is better retried."""

    max_body_size: int = DEFAULT_MAX_BODY_SIZE
    """A larger declared body is answered 413 at once (connection kept, the body discarded)."""
    policy: PaddingPolicy = DEFAULT_POLICY
    """The size buckets an envelope must fit, as in `parse_envelope`."""
    connect_timeout: float = 5.0
    """Waiting for a pooled connection or a TCP connect to the node."""
    client_body_timeout: float = 60.0
    """Longest pause while reading the client's body and handing it to the node (nginx: 60 s)."""
    response_timeout: float = 30.0
    """From the end of the upload to the node's response headers (nginx: proxy_read_timeout)."""
    read_timeout: float = 30.0
    """Longest pause between chunks of an ordinary response."""
    stream_idle_timeout: float = 3600.0
    """Longest pause between chunks of a text/event-stream response (a client's push stream)."""
    buffer_size: int = 64 * KIB
    """Bodies and answers up to this size (with a known length) are read whole and sent in one go,
    which is cheaper for the many small envelopes; larger ones stream."""
    max_upstream_connections: int = 1000
    """The pool's size over all nodes."""
    disconnect_poll: float = 1.0
    """How often an idle stream checks whether the client is still there."""
    log_client_ip: bool = False
    """Whether log lines carry the sender's IP (DESIGN §7 allows the relay to know it, not to keep it)."""
    failover_hold: float = 10.0
    """A node with several entry servers (`NodeInfo.urls`): one that could not be connected to is
    tried after the others for this long, so every envelope does not wait for a dead server first."""

    def __post_init__(self) -> None:
        largest = LAYER_OVERHEAD + self.policy.max_bucket
        if self.max_body_size < TAG_PREFIX_SIZE:
            raise ValueError(f"max_body_size must be at least {TAG_PREFIX_SIZE} bytes")
        if self.max_body_size < largest:
            _log.warning("max_body_size %d is below the largest envelope (%d bytes)", self.max_body_size, largest)
        for name in ("connect_timeout", "client_body_timeout", "response_timeout", "read_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.stream_idle_timeout <= 0 or self.disconnect_poll <= 0 or self.failover_hold < 0:
            raise ValueError("stream_idle_timeout and disconnect_poll must be positive, failover_hold >= 0")
        if self.max_upstream_connections < 1 or self.buffer_size < 0:
            raise ValueError("max_upstream_connections must be >= 1 and buffer_size >= 0")


@dataclass(frozen=True)
class EnvelopePrefix:
    """What a relay learns from an envelope's first bytes."""

    version: int
    destination: bytes
    """The outer key id: the recipient node's 20-byte address."""
    size: int
    """The whole envelope's size, as its header announces it."""


def parse_prefix(data: bytes, policy: PaddingPolicy = DEFAULT_POLICY) -> EnvelopePrefix:
    """Check the start of an envelope the way `parse_envelope` checks a whole one, without the rest.

    `data` is the envelope's first `TAG_PREFIX_SIZE` bytes, or all of it if it is shorter. Checks, in
    `parse_envelope`'s order: magic, version, header, announced length against the largest bucket,
    the body's minimum, the bucket rule, and that the prefix is whole. Raises the same `EnvelopeError`s.
    """
    if data[: len(MAGIC)] != MAGIC:
        if MAGIC.startswith(data):
            raise TruncatedEnvelope(f"{len(data)} bytes end inside the magic")
        raise BadMagic("not an SI envelope: the magic is wrong")
    if len(data) == len(MAGIC):
        raise TruncatedEnvelope("the input ends before the version byte")
    version = data[len(MAGIC)]
    if version != VERSION:
        raise UnsupportedVersion(f"envelope version {version}; this relay speaks version {VERSION}")
    if len(data) < HEADER_SIZE:
        raise TruncatedEnvelope(f"{len(data)} bytes end inside the {HEADER_SIZE}-byte header")
    body_size = int.from_bytes(data[HEADER_SIZE - 4 : HEADER_SIZE], "big")
    largest = LAYER_OVERHEAD + policy.max_bucket
    if HEADER_SIZE + body_size > largest:
        raise OversizedEnvelope(f"the header announces {HEADER_SIZE + body_size} bytes, over the limit of {largest}")
    if body_size < ECIES_OVERHEAD:
        raise MalformedEnvelope(f"a body is at least {ECIES_OVERHEAD} bytes, the header announces {body_size}")
    if not policy.is_bucket(body_size - ECIES_OVERHEAD):
        raise MalformedEnvelope(f"a {HEADER_SIZE + body_size}-byte envelope is not a size bucket plus {LAYER_OVERHEAD}")
    if len(data) < TAG_PREFIX_SIZE:
        announced = HEADER_SIZE + body_size
        raise TruncatedEnvelope(f"the body ends after {len(data)} bytes, the header announces {announced}")
    key_id = data[len(MAGIC) + 1 : len(MAGIC) + 1 + ADDRESS_SIZE]
    return EnvelopePrefix(version=version, destination=key_id, size=HEADER_SIZE + body_size)


@dataclass
class RelayStats:
    """Counters only: nothing here identifies a message or a person."""

    forwarded: int = 0
    """Envelopes handed to a node that answered."""
    bytes_forwarded: int = 0
    """Their sizes, summed: what the signed receipts add up to."""
    refused: Counter[str] = field(default_factory=Counter)
    """Per reason: an `EnvelopeError` class name, "too-large", "unknown-node", "directory",
    "upstream-down", "upstream-timeout", "client-timeout", "client-body", "loop"."""
    failovers: int = 0
    """Envelopes that went to another entry server of their node because one could not be connected to."""


class _Refusal(Exception):
    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(reason)


class _Upload:
    """The client's body as the node's request body: the prefix already read, then the rest as it
    arrives, exactly `size` bytes. Every chunk moved pushes `deadline` on by `client_body_timeout`
    (a client that stops sending, or a node that stops reading); once the last chunk is written the
    deadline is lifted and aiohttp's read timeout (`response_timeout`, which aiohttp starts when the
    body is written) takes over."""

    def __init__(
        self, request: web.Request, prefix: bytes, size: int, config: RelayConfig, deadline: asyncio.Timeout
    ) -> None:
        self._request = request
        self._prefix = prefix
        self._size = size
        self._config = config
        self._deadline = deadline
        self._loop = asyncio.get_running_loop()
        self.reading_client = False
        self.started = False
        """The client's body began to move: the upload can no longer be tried on another entry server."""
        self.error: _Refusal | None = None

    async def chunks(self) -> AsyncIterator[bytes]:
        self.started = True
        content = self._request.content
        chunked = self._request.content_length is None
        remaining = self._size - len(self._prefix)
        held = self._prefix
        while remaining:
            self.reading_client = True
            chunk = await content.readany()
            self.reading_client = False
            if not chunk:
                self.error = _Refusal(400, "TruncatedEnvelope")
                raise self.error
            if len(chunk) > remaining:
                self.error = _Refusal(400, "MalformedEnvelope")
                raise self.error
            remaining -= len(chunk)
            yield held
            held = chunk
            self._deadline.reschedule(self._loop.time() + self._config.client_body_timeout)
        if chunked:
            # Without a Content-Length only the end of the chunked body shows there is nothing after the
            # envelope; the last piece waits for it, so the node never gets a whole envelope with junk
            # behind it.
            self.reading_client = True
            extra = await content.readany()
            self.reading_client = False
            if extra:
                self.error = _Refusal(400, "MalformedEnvelope")
                raise self.error
        yield held
        # Reached when aiohttp asks for more, i.e. once the last chunk is written.
        self._deadline.reschedule(None)


class Relay:
    """The relay's state: its key, where nodes are, the upstream connection pool, and counters."""

    def __init__(self, directory: Directory, key: KeyPair, config: RelayConfig) -> None:
        self.directory = directory
        self.key = key
        self.config = config
        self.stats = RelayStats()
        self._session: aiohttp.ClientSession | None = None
        self._down_until: dict[str, float] = {}  # entry server post URL → loop time it is tried last until

    async def session_context(self, app: web.Application) -> AsyncIterator[None]:
        """cleanup_ctx: one pooled client session for the application's lifetime."""
        connector = aiohttp.TCPConnector(limit=self.config.max_upstream_connections, keepalive_timeout=30.0)
        self._session = aiohttp.ClientSession(
            connector=connector,
            # aiohttp starts sock_read once the request body is written: exactly "from the end of the
            # upload to the response", and then the longest pause between chunks of the answer.
            timeout=aiohttp.ClientTimeout(
                total=None,
                connect=self.config.connect_timeout,
                sock_connect=self.config.connect_timeout,
                sock_read=self.config.response_timeout,
            ),
            # The node should learn nothing of the relay's software, and bodies pass through as sent.
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
            auto_decompress=False,
        )
        try:
            yield
        finally:
            await self._session.close()
            self._session = None

    # ------------------------------------------------------------------ routing

    async def post(self, request: web.Request) -> web.StreamResponse:
        """`POST /post`: refuse, or forward and stream the node's answer back."""
        destination: bytes | None = None
        config = self.config
        try:
            declared = request.content_length
            if declared is not None and declared > config.max_body_size:
                raise _Refusal(413, "too-large")
            if RECEIPT_HEADER in request.headers:
                # A relay never posts to a relay: a node URL that points at a relay would loop.
                raise _Refusal(400, "loop")
            # A small body with a known length (most envelopes) is read whole, in one wait; any other
            # only as far as the prefix, the rest streams up once the node is known.
            small = declared is not None and declared <= config.buffer_size
            if declared is not None and small:
                data = await self._read_body(request, declared)
            else:
                data = await self._read_prefix(request)
            try:
                header = parse_prefix(data[:TAG_PREFIX_SIZE], config.policy)
            except OversizedEnvelope as error:
                raise _Refusal(413, type(error).__name__) from None
            except EnvelopeError as error:
                raise _Refusal(400, type(error).__name__) from None
            if declared is not None and declared != header.size:
                raise _Refusal(400, "MalformedEnvelope")
            if header.size > config.max_body_size:
                raise _Refusal(413, "too-large")
            destination = header.destination
            try:
                node = await self.directory.resolve(destination)
            except UnknownNode:
                raise _Refusal(404, "unknown-node") from None
            except DirectoryError:
                raise _Refusal(502, "directory") from None
            return await self._forward(request, node, header, data, whole=small)
        except _Refusal as refusal:
            self.stats.refused[refusal.reason] += 1
            self._log_refusal(request, refusal, destination)
            return disguise.error_page(refusal.status, close=False if refusal.status == 413 else None)

    async def _read_body(self, request: web.Request, size: int) -> bytes:
        content = request.content
        try:
            if content.is_eof():  # usually: a small body arrives with its headers; no timer needed
                return await content.readexactly(size)
            async with asyncio.timeout(self.config.client_body_timeout):
                return await content.readexactly(size)
        except TimeoutError:
            raise _Refusal(408, "client-timeout") from None
        except (asyncio.IncompleteReadError, aiohttp.ClientPayloadError, ConnectionError):
            raise _Refusal(400, "client-body") from None

    async def _read_prefix(self, request: web.Request) -> bytes:
        content = request.content
        data = b""
        try:
            async with asyncio.timeout(self.config.client_body_timeout):
                while len(data) < TAG_PREFIX_SIZE:
                    chunk = await content.read(TAG_PREFIX_SIZE - len(data))
                    if not chunk:
                        break
                    data += chunk
        except TimeoutError:
            raise _Refusal(408, "client-timeout") from None
        except (aiohttp.ClientPayloadError, ConnectionError):
            raise _Refusal(400, "client-body") from None
        return data

    def _upstream_headers(self, request: web.Request, node: NodeInfo, header: EnvelopePrefix, prefix: bytes) -> Any:
        receipt = sign_receipt(self.key, node=node.address, envelope_prefix=prefix, byte_count=header.size)
        headers: CIMultiDict[str] = CIMultiDict()
        headers["Content-Type"] = "application/octet-stream"
        headers["Content-Length"] = str(header.size)
        headers[RECEIPT_HEADER] = receipt.encode()
        for name in _FORWARDED_REQUEST_HEADERS:
            value = request.headers.get(name)
            if value is not None:
                headers[name] = value
        return headers

    # ------------------------------------------------------------------ forwarding

    async def _forward(
        self, request: web.Request, node: NodeInfo, header: EnvelopePrefix, data: bytes, *, whole: bool
    ) -> web.StreamResponse:
        """Post the envelope (`data` is all of it if `whole`, else its prefix) and relay the answer."""
        session = self._session
        if session is None:
            raise RuntimeError("the relay's client session is not running (the app was not started)")
        config = self.config
        headers = self._upstream_headers(request, node, header, data)
        upstream: aiohttp.ClientResponse | None = None
        try:
            urls = self._entry_order(node)
            for attempt, url in enumerate(urls, 1):
                upload: _Upload | None = None
                try:
                    if whole:
                        upstream = await session.post(url, data=data, headers=headers, allow_redirects=False)
                    else:
                        async with asyncio.timeout(config.connect_timeout + config.client_body_timeout) as deadline:
                            upload = _Upload(request, data, header.size, config, deadline)
                            upstream = await session.post(
                                url, data=upload.chunks(), headers=headers, allow_redirects=False
                            )
                except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as error:
                    # The connection was never made, so nothing was sent: another entry server of the same
                    # node (a load-balanced provider) can take the very same envelope, whatever its kind.
                    if len(urls) > 1:
                        self._mark_down(url)
                    if attempt < len(urls) and (upload is None or not upload.started):
                        self.stats.failovers += 1
                        _log.info("entry server %d of %s unreachable, trying the next", attempt, node.checksum_address)
                        continue
                    raise _upstream_refusal(error, upload) from None
                except (aiohttp.ClientError, OSError, TimeoutError) as error:
                    raise _upstream_refusal(error, upload) from None
                if self._down_until:
                    self._down_until.pop(url, None)
                break
            assert upstream is not None
            self.stats.forwarded += 1
            self.stats.bytes_forwarded += header.size
            if _log.isEnabledFor(logging.DEBUG):
                _log.debug("%sforwarded to %s: %d", self._peer(request), node.checksum_address, upstream.status)
            response = await self._answer(request, upstream)
            upstream.release()
            upstream = None
            return response
        finally:
            if upstream is not None:
                # Anything but a clean end (the client left, a timeout, an error): drop the connection,
                # so the node sees its stream end too, and never return it to the pool half-read.
                upstream.close()

    def _entry_order(self, node: NodeInfo) -> tuple[str, ...]:
        """The node's entry servers to try, in its listed order, those that lately could not be
        connected to (within `failover_hold`) moved to the end: still tried, as a last resort."""
        urls = node.post_urls
        if len(urls) == 1 or not self._down_until:
            return urls
        now = asyncio.get_running_loop().time()
        held = [url for url in urls if self._down_until.get(url, 0.0) > now]
        return tuple(url for url in urls if url not in held) + tuple(held)

    def _mark_down(self, url: str) -> None:
        now = asyncio.get_running_loop().time()
        if len(self._down_until) >= 10_000:  # bounded: forget the holds that have run out
            self._down_until = {u: t for u, t in self._down_until.items() if t > now}
        self._down_until[url] = now + self.config.failover_hold

    async def _answer(self, request: web.Request, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
        config = self.config
        loop = asyncio.get_running_loop()
        content_type = upstream.headers.get("Content-Type", "")
        streaming = content_type.split(";", 1)[0].strip().lower() == _EVENT_STREAM
        headers = disguise.nginx_headers(content_type=content_type or None)
        # nginx's order: Server, Date, Content-Type, …, Connection; then what the node adds.
        connection = headers.pop("Connection")
        length = upstream.content_length
        whole = not streaming and length is not None and length <= config.buffer_size
        if whole:
            headers["Content-Length"] = str(length)
        headers["Connection"] = connection
        for name in _FORWARDED_RESPONSE_HEADERS:
            value = upstream.headers.get(name)
            if value is not None:
                headers[name] = value
        # aiohttp's read timer (sock_read) is still at response_timeout. A streamed answer gets none:
        # the loop below keeps its own idle limit and polls for a client that left meanwhile.
        protocol = upstream.connection.protocol if upstream.connection is not None else None
        if protocol is not None and (not whole or config.read_timeout != config.response_timeout):
            protocol.read_timeout = config.read_timeout if whole else None
            protocol.start_timeout()  # reschedules the running timer (cancels it, for None)
        if whole:
            try:
                body = await upstream.read()
            except aiohttp.ClientError:
                self.stats.refused["upstream-broken"] += 1
                return disguise.error_page(502)
            return web.Response(status=upstream.status, reason=upstream.reason, body=body, headers=headers)

        response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
        if length is not None and not streaming:
            response.content_length = length
        await response.prepare(request)
        idle = config.stream_idle_timeout if streaming else config.read_timeout
        last = loop.time()
        while True:
            try:
                async with asyncio.timeout(min(config.disconnect_poll, idle)):
                    chunk = await upstream.content.readany()
            except TimeoutError:
                # The poll is for a client that left while the stream is idle: without handler
                # cancellation nothing else would notice before the next event.
                if request.transport is None or request.transport.is_closing():
                    return response
                if loop.time() - last < idle:
                    continue
                self._abort(request, "upstream idle")
                return response
            except aiohttp.ClientError:
                self._abort(request, "upstream broke off")
                return response
            if not chunk:
                break
            last = loop.time()
            await response.write(chunk)
        await response.write_eof()
        return response

    def _abort(self, request: web.Request, why: str) -> None:
        # The answer has begun, so no error page can follow: end the connection without the final
        # chunk, and the client sees a broken response rather than a complete short one.
        self.stats.refused["upstream-broken"] += 1
        _log.info("%sstream aborted: %s", self._peer(request), why)
        if request.transport is not None:
            request.transport.abort()

    def _peer(self, request: web.Request) -> str:
        return f"{request.remote} " if self.config.log_client_ip else ""

    def _log_refusal(self, request: web.Request, refusal: _Refusal, destination: bytes | None) -> None:
        node = f" for {to_checksum_address(destination)}" if destination is not None else ""
        _log.info("%srefused%s: %d %s", self._peer(request), node, refusal.status, refusal.reason)


def _upstream_refusal(error: BaseException, upload: _Upload | None) -> _Refusal:
    """What the client is told when the node could not be posted to."""
    if isinstance(error, aiohttp.ServerTimeoutError):  # before TimeoutError: it is one too
        return _Refusal(504, "upstream-timeout")
    if isinstance(error, TimeoutError):
        if upload is not None and upload.reading_client:
            return _Refusal(408, "client-timeout")
        return _Refusal(504, "upstream-timeout")
    if upload is not None and upload.error is not None:
        return upload.error
    return _Refusal(502, "upstream-down")


RELAY_KEY = web.AppKey("relay", Relay)


def create_relay_app(directory: Directory, key: KeyPair, config: RelayConfig | None = None) -> web.Application:
    """The relay as an aiohttp application; serve it with `disguise.NginxAppRunner` (or `serve`).

    The application sets its own server options: handler cancellation (a client that leaves cancels
    the forward, which closes the node's connection), no access log (it would keep IPs, paths and
    user agents).
    """
    config = config or RelayConfig()
    relay = Relay(directory, key, config)
    app = web.Application(
        middlewares=[disguise.disguise_middleware],
        client_max_size=config.max_body_size,
        handler_args={"handler_cancellation": True, "access_log": None},
    )
    app[RELAY_KEY] = relay
    app.cleanup_ctx.append(relay.session_context)
    # POST /post is a plain route (looked up in a dict); everything else, GET /post included, falls
    # through to nginx's default site.
    app.router.add_post("/post", relay.post)
    app.router.add_route("*", "/{tail:.*}", disguise.not_a_relay)
    return app


# ---------------------------------------------------------------------- running one


class KeyFileError(ValueError):
    """The relay's key file is missing or not a 32-byte hex private key."""


def load_key_file(path: str | Path) -> KeyPair:
    """A key file holds one secp256k1 private key as 64 hex digits (0x optional, whitespace ignored)."""
    try:
        text = Path(path).read_text().strip()
    except OSError as error:
        raise KeyFileError(f"cannot read the key file {path}: {error}") from error
    try:
        secret = bytes.fromhex(text.removeprefix("0x"))
        return KeyPair.from_secret(secret)
    except (ValueError, InvalidKey) as error:
        raise KeyFileError(f"{path}: a key file holds a 32-byte private key in hex") from error


async def serve(app: web.Application, host: str, port: int) -> tuple[disguise.NginxAppRunner, int]:
    """Start `app` on host:port (0: any free port) behind nginx's face; returns the runner and the port."""
    runner = disguise.NginxAppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = port
    for address in runner.addresses:
        if isinstance(address, tuple):
            bound = int(address[1])
    return runner, bound


async def _run(args: argparse.Namespace) -> None:
    key = load_key_file(args.key_file)
    directory: Directory
    if args.directory is not None:
        directory = StaticDirectory.load(args.directory)
    else:
        directory = RegistryDirectory(args.rpc, args.node_registry, ttl=args.ttl)
    config = RelayConfig(max_body_size=args.max_body_size, log_client_ip=args.log_client_ip)
    runner, port = await serve(create_relay_app(directory, key, config), args.host, args.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # The one line a supervisor (or a test) reads to learn the port when --port 0 was asked.
    print(f"relay {key.checksum_address} listening on http://{args.host}:{port}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        if isinstance(directory, RegistryDirectory):
            await directory.close()


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m offchain.si.relay --port P --key-file F (--directory F | --rpc URL --node-registry A)`."""
    parser = argparse.ArgumentParser(prog="python -m offchain.si.relay", description="Run an SI relay.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="0 picks a free port (printed on start)")
    parser.add_argument("--key-file", required=True, help="the relay's private key, 64 hex digits")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--directory", help="a static node directory (JSON)")
    source.add_argument("--rpc", help="JSON-RPC URL of the main chain, to read the NodeRegistry")
    parser.add_argument("--node-registry", help="the NodeRegistry's address (with --rpc)")
    parser.add_argument("--ttl", type=float, default=60.0, help="seconds a registry answer is cached")
    parser.add_argument("--max-body-size", type=int, default=DEFAULT_MAX_BODY_SIZE)
    parser.add_argument("--log-client-ip", action="store_true", help="put the sender's IP in log lines")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    if args.rpc is not None and args.node_registry is None:
        parser.error("--rpc needs --node-registry")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(_run(args))
    except (KeyFileError, DirectoryError, OSError, ValueError) as error:
        print(f"relay: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
