"""Anonymous servers: a request/response service published at a wallet address (DESIGN §7).

A server is an ordinary SI client: it registers with a recipient node, keeps its event stream open,
and publishes its communication address (its public key, its node, a relay hint). A requester is an
SI client too, registered and listening at its own node. Both ways travel as ordinary SI messages:

    requester ─▶ relay ─▶ server's node ─▶ (push) server        the request, sealed to the server
    server    ─▶ relay ─▶ requester's node ─▶ (push) requester  the response, sealed to the requester

Neither side ever connects to the other: each talks only to a relay of its choice, and a node only
ever sees relays. So the server never learns the requester's IP nor the requester the server's; the
requester's node never learns the server's address and the server's node never learns the
requester's (both are inside N1, sealed to the person); relays see node addresses only.

The request carries a request id and the requester's communication address (where to answer); the
SI message around it is signed by the requester's wallet, the response by the server's. The
payload, inside the SI message's content (all integers big-endian):

    request   "CNAS" ‖ 0x01 ‖ request id (16) ‖ reply address length (2) ‖ reply address (UTF-8) ‖ body
    response  "CNAS" ‖ 0x02 ‖ request id (16) ‖ status (1) ‖ body     status 0 ok, 1 handler failed, 2 refused

Rules that make it safe:

* The requester accepts a response only for a request id it is waiting for, and only if the SI
  message is signed by the server it asked (the wallet of the server's communication address).
  Anything else is ignored (`AnonymousClient.ignored` says why); a response whose signature does not
  match its named sender never opens (`SIClient.rejected`).
* The server answers only to the wallet that signed the request: the reply address must be the
  sender's own, so nobody can make a server send its answers to a third party.
* The server drops a request id it has already taken from the same wallet (a message can arrive by
  push and by fetch) and requests older than `max_request_age` (the requester gave up long ago).

Delivery is the SI's own: durable in the mailbox once a node answered 200, pushed when the stream is
open. The server takes a request off its node (acknowledges it) when it starts working on it, so a
server killed mid-request loses that one request and the requester times out (at most once); a
requester that wants to retry sends a new request.

    server = AnonymousServer(client, handler)      # handler(body, sender) -> response body
    await server.run()                             # until cancelled

    answer = await request(client, server_address, b"...", timeout=30)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import weakref
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import IntEnum

from eth_typing import ChecksumAddress
from eth_utils.address import to_checksum_address

from offchain.si.address import AddressError, CommunicationAddress
from offchain.si.client import NodeRefused, Received, SIClient
from offchain.si.envelope import max_content_size

__all__ = [
    "MAGIC",
    "REQUEST_ID_SIZE",
    "AnonymousClient",
    "AnonymousError",
    "AnonymousServer",
    "Handler",
    "MalformedPayload",
    "Request",
    "RequestTimeout",
    "Response",
    "ServerError",
    "Status",
    "decode",
    "max_body_size",
    "request",
    "requester_for",
]

log = logging.getLogger("offchain.si.anonymous")

MAGIC = b"CNAS"
REQUEST_ID_SIZE = 16
_REQUEST, _RESPONSE = 0x01, 0x02
_REQUEST_HEADER = len(MAGIC) + 1 + REQUEST_ID_SIZE + 2
_RESPONSE_HEADER = len(MAGIC) + 1 + REQUEST_ID_SIZE + 1
_SEEN_MEMORY = 10_000
_IGNORED_MEMORY = 1_000

Handler = Callable[[bytes, ChecksumAddress], Awaitable[bytes]]
"""A service: (request body, the requester's wallet, authenticated by its signature) → response body."""


class AnonymousError(Exception):
    """A request could not be answered."""


class RequestTimeout(AnonymousError, TimeoutError):
    """No response from the server within the timeout (the request may still be served later; a
    late response is ignored)."""


class ServerError(AnonymousError):
    """The server answered with an error status (its handler failed, or it refused the request)."""

    def __init__(self, status: Status, message: str) -> None:
        super().__init__(f"{status.name.lower()}: {message}")
        self.status = status
        self.message = message


class MalformedPayload(AnonymousError, ValueError):
    """Content that is not an anonymous-server request or response."""


class Status(IntEnum):
    OK = 0
    HANDLER_FAILED = 1
    REFUSED = 2


@dataclass(frozen=True)
class Request:
    request_id: bytes
    reply_to: CommunicationAddress
    """Where the server answers: the requester's communication address (key, node, relay hint)."""
    body: bytes

    def encode(self) -> bytes:
        reply = self.reply_to.encode().encode()
        return MAGIC + bytes([_REQUEST]) + self.request_id + len(reply).to_bytes(2, "big") + reply + self.body


@dataclass(frozen=True)
class Response:
    request_id: bytes
    status: Status
    body: bytes

    def encode(self) -> bytes:
        return MAGIC + bytes([_RESPONSE]) + self.request_id + bytes([self.status]) + self.body


def max_body_size() -> int:
    """The largest response body (and roughly the largest request body) one SI message carries."""
    return max_content_size() - _RESPONSE_HEADER


def decode(content: bytes) -> Request | Response:
    """A request or response from an SI message's content; `MalformedPayload` says what is wrong."""
    if content[: len(MAGIC)] != MAGIC:
        raise MalformedPayload("not an anonymous-server payload (magic)")
    if len(content) < len(MAGIC) + 1 + REQUEST_ID_SIZE:
        raise MalformedPayload("truncated before the request id")
    kind = content[len(MAGIC)]
    request_id = content[len(MAGIC) + 1 : len(MAGIC) + 1 + REQUEST_ID_SIZE]
    if kind == _RESPONSE:
        if len(content) < _RESPONSE_HEADER:
            raise MalformedPayload("truncated before the status")
        try:
            status = Status(content[_RESPONSE_HEADER - 1])
        except ValueError:
            raise MalformedPayload(f"unknown status {content[_RESPONSE_HEADER - 1]}") from None
        return Response(request_id, status, content[_RESPONSE_HEADER:])
    if kind == _REQUEST:
        if len(content) < _REQUEST_HEADER:
            raise MalformedPayload("truncated before the reply address")
        size = int.from_bytes(content[_REQUEST_HEADER - 2 : _REQUEST_HEADER], "big")
        if len(content) < _REQUEST_HEADER + size:
            raise MalformedPayload("the reply address is cut short")
        try:
            reply_to = CommunicationAddress.parse(content[_REQUEST_HEADER : _REQUEST_HEADER + size].decode())
        except (UnicodeDecodeError, AddressError) as error:
            raise MalformedPayload(f"bad reply address: {error}") from None
        return Request(request_id, reply_to, content[_REQUEST_HEADER + size :])
    raise MalformedPayload(f"unknown payload kind {kind}")


# -- the server -------------------------------------------------------------------------------------


class AnonymousServer:
    """Serve `handler` at `client`'s wallet address. The client must be registered with its node
    (`SIClient.register`); its communication address (`client.communication_address()`) is what
    requesters need. `run()` listens until cancelled, serving up to `concurrency` requests at once."""

    def __init__(
        self,
        client: SIClient,
        handler: Handler,
        *,
        concurrency: int = 16,
        max_request_age: float = 300.0,
        send_attempts: int = 3,
        on_message: Callable[[Received], Awaitable[None]] | None = None,
    ) -> None:
        if concurrency < 1 or send_attempts < 1 or max_request_age <= 0:
            raise ValueError("concurrency and send_attempts must be >= 1, max_request_age > 0")
        self.client = client
        self.handler = handler
        self.max_request_age = max_request_age
        self.send_attempts = send_attempts
        self.on_message = on_message
        """Gets the messages that are not requests (ordinary SI messages to the server's wallet)."""
        self.served = 0
        self.refused: Counter[str] = Counter()
        """Requests dropped, by reason: "malformed", "reply-not-sender", "stale", "repeat", "unsent"."""
        self._slots = asyncio.Semaphore(concurrency)
        self._seen: OrderedDict[tuple[str, bytes], None] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> CommunicationAddress:
        return self.client.communication_address()

    async def run(self, *, min_backoff: float = 0.5, max_backoff: float = 30.0) -> None:
        """Listen on the client's stream (reconnecting with backoff) and serve requests until cancelled."""
        try:
            async for item in self.client.listen(min_backoff=min_backoff, max_backoff=max_backoff):
                await self._take(item)
        finally:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _take(self, item: Received) -> None:
        message = item.message
        try:
            payload = decode(message.content)
        except MalformedPayload as error:
            if self.on_message is not None and not message.content.startswith(MAGIC):
                await self.on_message(item)
                return
            self._refuse("malformed", message.sender, str(error))
            return
        if not isinstance(payload, Request):
            self._refuse("malformed", message.sender, "a response sent to a server")
            return
        if payload.reply_to.checksum_address != message.sender:
            # Answering elsewhere would let anyone aim a server's answers at a third party.
            self._refuse("reply-not-sender", message.sender, f"reply address is {payload.reply_to.checksum_address}")
            return
        age = time.time() - message.timestamp_ms / 1000
        if age > self.max_request_age:
            self._refuse("stale", message.sender, f"sent {age:.0f} s ago")
            return
        key = (message.sender, payload.request_id)
        if key in self._seen:
            self._refuse("repeat", message.sender, f"request {payload.request_id.hex()} again")
            return
        self._seen[key] = None
        if len(self._seen) > _SEEN_MEMORY:
            self._seen.popitem(last=False)
        await self._slots.acquire()  # back-pressure: the stream is not read further while all slots work
        task = asyncio.create_task(self._serve(message.sender, payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _refuse(self, reason: str, sender: str, detail: str) -> None:
        self.refused[reason] += 1
        log.info("refused a request from %s (%s): %s", sender, reason, detail)

    async def _serve(self, sender: ChecksumAddress, request: Request) -> None:
        try:
            try:
                body = await self.handler(request.body, sender)
                response = Response(request.request_id, Status.OK, body)
                if len(body) > max_body_size():
                    response = Response(
                        request.request_id, Status.REFUSED, b"the response is too large for one message"
                    )
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the handler's failure is the requester's answer, not the server's end
                log.warning("handler failed on a request from %s: %s", sender, type(error).__name__)
                response = Response(request.request_id, Status.HANDLER_FAILED, type(error).__name__.encode())
            await self._answer(sender, request.reply_to, response)
        finally:
            self._slots.release()

    async def _answer(self, sender: ChecksumAddress, reply_to: CommunicationAddress, response: Response) -> None:
        delay = 0.5
        for attempt in range(1, self.send_attempts + 1):
            try:
                await self.client.send(reply_to, response.encode())
            except (NodeRefused, OSError, TimeoutError) as error:
                # Includes aiohttp's errors (OSError subclasses) and a relay or node that refused.
                hopeless = isinstance(error, NodeRefused) and error.status in (400, 404, 413)  # retrying won't help
                if hopeless or attempt == self.send_attempts:
                    self._refuse("unsent", sender, f"the answer could not be sent: {error}")
                    return
                await asyncio.sleep(delay)
                delay *= 2
            else:
                self.served += 1
                log.info("answered %s (status %s, %d bytes)", sender, response.status.name, len(response.body))
                return


# -- the requester ----------------------------------------------------------------------------------


@dataclass
class _Pending:
    server: bytes
    """The 20-byte wallet address the response must be signed by."""
    future: asyncio.Future[Response]


class AnonymousClient:
    """The requester's side: one listener on `client`'s stream that matches responses to requests.

    `async with AnonymousClient(client) as requester: await requester.request(server, body)`. The
    client must be registered with its node (responses come back to it like any message). Messages
    that are not responses go to `on_message` if given (else they are ignored and recorded)."""

    def __init__(
        self,
        client: SIClient,
        *,
        on_message: Callable[[Received], Awaitable[None]] | None = None,
        min_backoff: float = 0.5,
        max_backoff: float = 30.0,
    ) -> None:
        self.client = client
        self.on_message = on_message
        self.ignored: deque[tuple[Received, str]] = deque(maxlen=_IGNORED_MEMORY)
        """Messages that came to the listener and answered nothing: (message, why)."""
        self._backoff = (min_backoff, max_backoff)
        self._pending: dict[bytes, _Pending] = {}
        self._task: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None

    async def __aenter__(self) -> AnonymousClient:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def start(self) -> None:
        """Start listening (idempotent; `request` starts it too)."""
        if self._task is None:
            self._task = asyncio.create_task(self._listen(), name=f"si-anonymous-{self.client.key.checksum_address}")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._fail(AnonymousError("the requester was closed"))

    @property
    def pending(self) -> list[bytes]:
        """Request ids waiting for a response."""
        return list(self._pending)

    async def request(
        self, server: CommunicationAddress | str, body: bytes, *, timeout: float = 30.0, request_id: bytes | None = None
    ) -> bytes:
        """Send `body` to the anonymous server at `server` and wait for its response body.

        Raises `RequestTimeout` after `timeout` seconds without a response, `ServerError` for an error
        status, `NodeRefused` if the request could not be posted (the server's node does not know the
        server: 404), `AnonymousError` if this client's listener stopped (e.g. not registered)."""
        target = CommunicationAddress.parse(server) if isinstance(server, str) else server
        rid = os.urandom(REQUEST_ID_SIZE) if request_id is None else request_id
        if len(rid) != REQUEST_ID_SIZE or rid in self._pending:
            raise ValueError(f"a request id is {REQUEST_ID_SIZE} bytes, unique among pending requests")
        self._check_listener()
        self.start()
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        # Registered before sending: a response can come back before send() returns.
        self._pending[rid] = _Pending(target.address, future)
        try:
            async with asyncio.timeout(timeout):
                reply_to = self.client.communication_address()
                await self.client.send(target, Request(rid, reply_to, body).encode())
                response = await asyncio.shield(future)
        except TimeoutError:
            raise RequestTimeout(
                f"no response from {target.checksum_address} within {timeout:g} s (request {rid.hex()})"
            ) from None
        finally:
            self._pending.pop(rid, None)
        if response.status is not Status.OK:
            raise ServerError(response.status, response.body.decode("utf-8", "replace"))
        return response.body

    def _check_listener(self) -> None:
        if self._failure is not None:
            raise AnonymousError(f"the listener stopped: {self._failure}") from self._failure

    async def _listen(self) -> None:
        low, high = self._backoff
        try:
            async for item in self.client.listen(min_backoff=low, max_backoff=high):
                await self._dispatch(item)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # e.g. NodeRefused(404): not registered; every waiter learns it
            log.warning("listener stopped: %s", error)
            self._failure = error
            self._fail(error)

    def _fail(self, error: BaseException) -> None:
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(error)
                pending.future.exception()  # retrieved: a waiter that timed out first never warns

    async def _dispatch(self, item: Received) -> None:
        message = item.message
        try:
            payload = decode(message.content)
        except MalformedPayload as error:
            if self.on_message is not None:
                await self.on_message(item)
            else:
                self.ignored.append((item, str(error)))
            return
        if not isinstance(payload, Response):
            self.ignored.append((item, "a request, and this is a requester"))
            return
        pending = self._pending.get(payload.request_id)
        if pending is None or pending.future.done():
            self.ignored.append((item, f"no request {payload.request_id.hex()} is waiting"))
            return
        if message.sender != to_checksum_address(pending.server):
            # Whoever learned the request id cannot answer in the server's name: the SI signature binds
            # the response to the wallet that wrote it.
            self.ignored.append(
                (item, f"signed by {message.sender}, not by the server {to_checksum_address(pending.server)}")
            )
            log.warning("ignored a response to %s signed by %s", payload.request_id.hex(), message.sender)
            return
        pending.future.set_result(payload)


_requesters: weakref.WeakKeyDictionary[SIClient, AnonymousClient] = weakref.WeakKeyDictionary()


def requester_for(client: SIClient) -> AnonymousClient:
    """The `AnonymousClient` `request` uses for `client`: made and started on first use, stopped when
    the client closes (`SIClient.close`)."""
    requester = _requesters.get(client)
    if requester is None:
        requester = _requesters[client] = AnonymousClient(client)

        async def stop() -> None:
            with contextlib.suppress(KeyError):
                del _requesters[client]
            await requester.close()

        client.on_close.append(stop)
    return requester


async def request(
    client: SIClient,
    server_address: CommunicationAddress | str,
    body: bytes,
    *,
    timeout: float = 30.0,
    request_id: bytes | None = None,
) -> bytes:
    """Ask the anonymous server at `server_address` (its communication address) and return its answer.

    `client` must be registered with its recipient node: the response comes back through it. The
    first call starts a listener on the client's stream, which matches responses by request id and
    server signature and runs until `client.close()`. See `AnonymousClient.request` for the errors."""
    return await requester_for(client).request(server_address, body, timeout=timeout, request_id=request_id)
