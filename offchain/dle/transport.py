"""How DLE nodes talk: one request, one response, addressed by the peer's 20-byte address.

The role services (archive node, creator, witness, validator) take a `Transport` as a parameter and
serve a `Handler`, so the same node code runs in-process in tests (`InProcessNetwork`) and over HTTP
in a devnet (`HttpTransport` + `http_app` / `serve`).

    Handler   = async (method, request body) -> response body
    Transport = async call(peer, method, body, *, timeout) -> response body

A call ends in exactly one of: the response body; `PeerUnavailable` (the peer is unknown, down or
refuses the connection — the request did not reach it — or the connection broke before the answer
came, when it may have); `PeerTimeout` (no answer within `timeout`: the peer may or may not have
processed it); `RemoteError(code, message)` (the peer answered with a
refusal — a handler raises `RemoteError` and the caller sees the same code and message); or
`BodyTooLarge` (a request or response over the size limit, refused on the caller's side before
sending or while reading).

Every request is authenticated (offchain/dle/auth.py): `HttpTransport(secret=…)` signs each request
with its node's key over (method, peer address, sha256(body), timestamp, nonce), and `http_app`
verifies the signature, the freshness and the novelty before the handler runs (401 otherwise); the
in-process network vouches for its callers by construction (the calling transport's own address).
Either way the handler learns its caller from `auth.CALLER` and refuses by its authorisation table
(403). Every DLE message that matters still carries its own signatures (block signatures, archive
certificates, signed role records), and a node judges a message by those; the request signature
says only who asks.

A server bounds what a client can hold (`ServerLimits`): connections beyond `max_connections` are
closed at once, a connection that starts no request within `idle_timeout` (a slow or stalled header,
an idle keep-alive) is closed, a request body not received within `body_timeout` is answered 408 and
its connection closed, a body over `max_body` 413; each of these is logged as one rate-limited
warning line. Wire conventions are in docs/protocols.md ("HTTP wire conventions").
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import weakref
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from aiohttp import web
from coincurve import PrivateKey

from dle_vm.signature import address_of
from offchain.dle.auth import ANONYMOUS, CALLER, FROM_HEADER, AuthError, RequestVerifier, sign_request

__all__ = [
    "ADDRESS_SIZE",
    "DEFAULT_MAX_BODY",
    "FROM_HEADER",
    "BodyTooLarge",
    "GuardedSite",
    "Handler",
    "HttpTransport",
    "InProcessNetwork",
    "PeerTimeout",
    "PeerUnavailable",
    "RemoteError",
    "ServerLimits",
    "Transport",
    "TransportError",
    "http_app",
    "serve",
    "start_guarded",
]

ADDRESS_SIZE = 20
DEFAULT_MAX_BODY = 4 * 1024 * 1024
"""4 MiB: a note chain's whole state with its program is tens of KiB; a dump of a long chain is paged."""
_METHOD = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_MAX_CODE = 64
_MAX_MESSAGE = 1024
_log = logging.getLogger(__name__)

Handler = Callable[[str, bytes], Awaitable[bytes]]
"""A node's entry point: (method name, request body) -> response body. Raise `RemoteError` to refuse."""


class TransportError(Exception):
    """A call that did not return a response body."""


class PeerUnavailable(TransportError):
    """The peer is unknown, down, or refused the connection (the request did not reach it), or the
    connection broke before the answer came (it may have). Either way: no answer, try another time."""

    def __init__(self, peer: bytes, reason: str) -> None:
        super().__init__(f"peer 0x{peer.hex()} is unavailable: {reason}")
        self.peer = peer
        self.reason = reason


class PeerTimeout(TransportError):
    """No answer within the timeout. The peer may have processed the request (or may still)."""

    def __init__(self, peer: bytes, method: str, timeout: float) -> None:
        super().__init__(f"peer 0x{peer.hex()} did not answer {method} within {timeout:g} s")
        self.peer = peer
        self.method = method
        self.timeout = timeout


class BodyTooLarge(TransportError):
    """A request or response body over this side's limit; the request is not sent, the response not read."""

    def __init__(self, what: str, size: int | None, limit: int) -> None:
        shown = "more" if size is None else str(size)
        super().__init__(f"the {what} body is {shown} bytes, over the limit of {limit}")
        self.what = what
        self.size = size
        self.limit = limit


class RemoteError(TransportError):
    """The peer refused the request. A handler raises it; the caller receives the same code and message.
    `code` is a short machine-readable name (letters, digits, `-`, `_`, `.`), `message` for people."""

    def __init__(self, code: str, message: str) -> None:
        if not isinstance(code, str) or not _METHOD.match(code) or len(code) > _MAX_CODE:
            raise ValueError(f"a remote error code is 1-{_MAX_CODE} of [A-Za-z0-9_.-], got {code!r}")
        message = str(message)[:_MAX_MESSAGE]
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Transport(Protocol):
    """What a role service sends its messages through."""

    async def call(self, peer: bytes, method: str, body: bytes, *, timeout: float) -> bytes:
        """Send `body` to `peer`'s `method` and return the response body (errors: see the module)."""
        ...


def _check_call(peer: bytes, method: str, body: bytes, timeout: float) -> None:
    if not isinstance(peer, bytes) or len(peer) != ADDRESS_SIZE:
        raise TypeError(f"a peer is a {ADDRESS_SIZE}-byte address")
    if not isinstance(method, str) or not _METHOD.match(method):
        raise ValueError(f"a method name is 1-64 of [A-Za-z0-9_.-], got {method!r}")
    if not isinstance(body, bytes):
        raise TypeError(f"a body is bytes, got {type(body).__name__}")
    if not timeout > 0:
        raise ValueError(f"a timeout must be positive, got {timeout}")


def _internal_error(error: BaseException) -> RemoteError:
    # What a peer sees of a handler's bug: its type and text, no traceback (that goes to the log).
    return RemoteError("internal", f"{type(error).__name__}: {error}")


# -- in-process ---------------------------------------------------------------------------------------


@dataclass
class _Node:
    handler: Handler
    running: set[asyncio.Task[bytes]]


class InProcessNetwork:
    """Nodes of one test run, talking through direct calls on one event loop, with HTTP's semantics:
    bodies are copied, size limits apply, a handler's `RemoteError` reaches the caller as such and any
    other exception as `RemoteError("internal", …)` (chained, so the test's traceback shows it).

    Faults: `unregister` kills a node (new calls and calls in flight raise `PeerUnavailable`),
    `delay` adds latency before a node receives a request (a late request is still processed after
    the caller timed out, as over a network), `drop` makes a node's requests vanish (calls hang until
    their timeout), `heal` clears both. `calls` counts requests per method, `calls_to` per node and
    method, `traffic` bytes (request + response) per method."""

    def __init__(self, *, max_body: int = DEFAULT_MAX_BODY) -> None:
        self.max_body = max_body
        self._nodes: dict[bytes, _Node] = {}
        self._delays: dict[bytes, float] = {}
        self._dropped: set[bytes] = set()
        self._late: set[asyncio.Task[bytes]] = set()
        self.calls: Counter[str] = Counter()
        self.traffic: Counter[str] = Counter()
        self._calls_to: dict[bytes, Counter[str]] = {}

    def register(self, address: bytes, handler: Handler) -> None:
        """Bring a node up at `address` (replacing one that was there)."""
        if not isinstance(address, bytes) or len(address) != ADDRESS_SIZE:
            raise TypeError(f"an address is {ADDRESS_SIZE} bytes")
        self.unregister(address)
        self._nodes[address] = _Node(handler=handler, running=set())

    def unregister(self, address: bytes) -> None:
        """Kill the node at `address`: calls to it raise `PeerUnavailable`, and so do calls it was serving."""
        node = self._nodes.pop(address, None)
        if node is not None:
            for task in node.running:
                task.cancel()

    def delay(self, address: bytes, seconds: float) -> None:
        """Requests to `address` arrive `seconds` late (the caller's timeout keeps running)."""
        self._delays[address] = seconds

    def drop(self, address: bytes) -> None:
        """Requests to `address` are lost: calls hang until their timeout."""
        self._dropped.add(address)

    def heal(self, address: bytes) -> None:
        """Clear `delay` and `drop` for `address`."""
        self._delays.pop(address, None)
        self._dropped.discard(address)

    def calls_to(self, address: bytes) -> Counter[str]:
        """Requests sent to `address`, per method."""
        return Counter(self._calls_to.get(address, Counter()))

    def transport(self, own_address: bytes) -> Transport:
        """The transport a node at `own_address` sends through."""
        return _InProcessTransport(self, own_address)

    async def aclose(self) -> None:
        """Cancel requests still being processed after their callers gave up."""
        for task in list(self._late):
            task.cancel()
        await asyncio.gather(*self._late, return_exceptions=True)

    async def _deliver(self, own: bytes, peer: bytes, node: _Node, method: str, body: bytes) -> bytes:
        latency = self._delays.get(peer, 0.0)
        if latency > 0:
            await asyncio.sleep(latency)
        if self._nodes.get(peer) is not node:
            raise PeerUnavailable(peer, "the node went down")
        # The task runs in its own copy of the context: the caller is set for this request only. The
        # network vouches for it (the transport was made for `own`), as a signature does over HTTP.
        CALLER.set(own)
        try:
            return await node.handler(method, body)
        except AuthError as error:
            raise RemoteError(error.code, error.message) from None

    async def _call(self, own: bytes, peer: bytes, method: str, body: bytes, timeout: float) -> bytes:
        _check_call(peer, method, body, timeout)
        self.calls[method] += 1
        self._calls_to.setdefault(peer, Counter())[method] += 1
        self.traffic[method] += len(body)
        if len(body) > self.max_body:
            raise BodyTooLarge("request", len(body), self.max_body)
        node = self._nodes.get(peer)
        if node is None:
            raise PeerUnavailable(peer, "no node at this address")
        if peer in self._dropped:
            await asyncio.sleep(timeout)
            raise PeerTimeout(peer, method, timeout)
        # bytes(...) copies, so neither side can see the other mutate a buffer (as over a wire).
        task = asyncio.ensure_future(self._deliver(own, peer, node, method, bytes(body)))
        node.running.add(task)
        task.add_done_callback(node.running.discard)
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            # Over a network the peer would go on processing a request its caller gave up on.
            self._late.add(task)
            task.add_done_callback(self._late_done)
            raise PeerTimeout(peer, method, timeout)
        if task.cancelled():
            raise PeerUnavailable(peer, "the node went down while serving the request")
        error = task.exception()
        if isinstance(error, RemoteError | PeerUnavailable):
            raise error
        if error is not None:
            _log.error("in-process node 0x%s failed serving %s", peer.hex(), method, exc_info=error)
            raise _internal_error(error) from error
        response = task.result()
        if not isinstance(response, bytes):
            raise _internal_error(TypeError(f"the handler returned {type(response).__name__}, not bytes"))
        self.traffic[method] += len(response)
        if len(response) > self.max_body:
            raise BodyTooLarge("response", len(response), self.max_body)
        return bytes(response)

    def _late_done(self, task: asyncio.Task[bytes]) -> None:
        self._late.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Nobody awaits a late request's outcome; retrieving it keeps asyncio from warning.
            _log.debug("late request failed: %r", task.exception())


class _InProcessTransport:
    def __init__(self, network: InProcessNetwork, own: bytes) -> None:
        self._network = network
        self._own = own

    async def call(self, peer: bytes, method: str, body: bytes, *, timeout: float) -> bytes:
        return await self._network._call(self._own, peer, method, body, timeout)


# -- HTTP ------------------------------------------------------------------------------------------------

Directory = Mapping[bytes, str] | Callable[[bytes], str | None]
"""Where a node is reached: its base URL (`http://host:port`), or None/absent if unknown."""


class HttpTransport:
    """Calls over HTTP: `POST {url}/dle/{method}` with the raw body, through one pooled aiohttp session
    (created on first use inside the running loop, and bound to that loop; `aclose()` or `async with`
    to release it). `directory` maps a peer's address to its base URL, as a mapping or a function
    (re-read on every call, so a node that moves is found at its new URL).

    With `secret` every request is signed by that key (auth.sign_request) and `own_address` is its
    address; `secret` may also be a function peer -> key (a devnet operator's tools sign each request
    as the node they call, whose key the devnet holds). Without it requests go unsigned, which a DLE
    node refuses with 401 (`own_address` then only names the caller in `X-DLE-From`)."""

    def __init__(
        self,
        directory: Directory,
        *,
        secret: bytes | Callable[[bytes], bytes | None] | None = None,
        own_address: bytes | None = None,
        max_body: int = DEFAULT_MAX_BODY,
        connection_limit: int = 256,
    ) -> None:
        self._directory = directory
        self._secret = secret
        if isinstance(secret, bytes):
            derived = address_of(PrivateKey(secret).public_key)
            if own_address is not None and own_address != derived:
                raise ValueError("own_address is not the address of secret")
            own_address = derived
        self._own = own_address
        self.max_body = max_body
        self._limit = connection_limit
        self._session: aiohttp.ClientSession | None = None

    def _signer(self, peer: bytes) -> tuple[bytes, bytes] | None:
        """(key, address) to sign a request to `peer` with, or None to send it unsigned."""
        if self._secret is None:
            return None
        if isinstance(self._secret, bytes):
            assert self._own is not None
            return self._secret, self._own
        key = self._secret(peer)
        return None if key is None else (key, address_of(PrivateKey(key).public_key))

    @property
    def own_address(self) -> bytes | None:
        """The address requests are sent (and, with a secret, signed) as."""
        return self._own

    async def __aenter__(self) -> HttpTransport:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the pooled connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _url(self, peer: bytes) -> str | None:
        if callable(self._directory):
            return self._directory(peer)
        return self._directory.get(peer)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            headers = {FROM_HEADER: f"0x{self._own.hex()}"} if self._own is not None else {}
            self._session = aiohttp.ClientSession(
                # A pooled connection is dropped after 15 s idle, before a server's idle timeout
                # (ServerLimits.idle_timeout, 30 s) would close it under a request being sent.
                connector=aiohttp.TCPConnector(limit=self._limit, keepalive_timeout=15.0),
                headers=headers,
                # Timeouts are per call (below); the session must not add its own 5-minute default.
                timeout=aiohttp.ClientTimeout(total=None),
                auto_decompress=False,
            )
        return self._session

    async def call(self, peer: bytes, method: str, body: bytes, *, timeout: float) -> bytes:
        _check_call(peer, method, body, timeout)
        if len(body) > self.max_body:
            raise BodyTooLarge("request", len(body), self.max_body)
        base = self._url(peer)
        if not base:
            raise PeerUnavailable(peer, "not in the directory")
        url = f"{base.rstrip('/')}/dle/{method}"
        headers = {"Content-Type": "application/octet-stream"}
        signer = self._signer(peer)
        if signer is not None:
            headers.update(sign_request(signer[0], signer[1], method, peer, body))
        try:
            # One bound on everything: connecting, sending, waiting, reading.
            async with asyncio.timeout(timeout):
                return await self._post(peer, url, body, headers)
        except TimeoutError:
            raise PeerTimeout(peer, method, timeout) from None
        except aiohttp.ClientError as error:
            # Connection refused or reset, the server went away mid-response, a malformed response.
            raise PeerUnavailable(peer, f"{type(error).__name__}: {error}") from error

    async def _post(self, peer: bytes, url: str, body: bytes, headers: dict[str, str]) -> bytes:
        async with self._client().post(url, data=body, headers=headers, allow_redirects=False) as response:
            if response.content_length is not None and response.content_length > self.max_body:
                raise BodyTooLarge("response", response.content_length, self.max_body)
            data = await response.content.read(self.max_body + 1)
            # read(n) may return less than is there; keep reading until the end or past the limit.
            while len(data) <= self.max_body:
                more = await response.content.read(self.max_body + 1 - len(data))
                if not more:
                    break
                data += more
            if len(data) > self.max_body:
                raise BodyTooLarge("response", None, self.max_body)
            if 200 <= response.status < 300:
                return data
            raise _error_from_response(peer, response.status, data)


def _error_from_response(peer: bytes, status: int, data: bytes) -> TransportError:
    try:
        parsed = json.loads(data)
        if isinstance(parsed, dict) and isinstance(parsed.get("code"), str) and isinstance(parsed.get("message"), str):
            return RemoteError(parsed["code"], parsed["message"])
    except (ValueError, UnicodeDecodeError):
        pass
    if status in (502, 503, 504):
        # A proxy or load balancer in front of a node that is down.
        return PeerUnavailable(peer, f"HTTP {status} from an intermediary")
    return RemoteError(f"http-{status}", data[:200].decode("utf-8", "replace"))


def _json_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"code": code, "message": message}, status=status)


@dataclass(frozen=True)
class ServerLimits:
    """What one client may hold of a server (see the module docstring)."""

    max_connections: int = 512
    """Open connections at once; more are closed as soon as they are accepted (a process's file
    descriptors stay bounded however many a client opens)."""
    idle_timeout: float = 30.0
    """A connection that starts no request for this long is closed (checked every `idle_timeout`, so
    one is closed after 1 to 2 times this): headers sent slowly, or an idle keep-alive."""
    body_timeout: float = 30.0
    """A request body must arrive within this; otherwise 408 and the connection is closed."""
    log_interval: float = 10.0
    """At most one warning line per kind of refusal per this many seconds (the rest are counted)."""


class _WarnOnce:
    """Rate-limited warnings: the first of a kind is logged, then at most one per `interval`, with how
    many were left unlogged since (so a flood of bad clients is one line every few seconds)."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._muted: Counter[str] = Counter()

    def warn(self, kind: str, message: str) -> None:
        now = self._clock()
        last = self._last.get(kind)
        if last is not None and now - last < self._interval:
            self._muted[kind] += 1
            return
        self._last[kind] = now
        muted = self._muted.pop(kind, 0)
        since = "" if last is None or not muted else f" (and {muted} more like it in the last {now - last:.0f} s)"
        _log.warning("%s%s", message, since)


class _Connection(asyncio.Protocol):
    """One accepted connection in front of aiohttp's protocol: counted, and closed when it holds the
    server without starting a request (see `ServerLimits.idle_timeout`)."""

    def __init__(self, guard: _Guard, inner: asyncio.Protocol) -> None:
        self._guard = guard
        self._inner = inner
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.busy = 0
        self.progressed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        guard = self._guard
        if guard.open >= guard.limits.max_connections:
            guard.warn.warn("connections", f"refused a connection: {guard.open} open, the limit")
            transport.abort()
            return
        guard.open += 1
        self._transport = transport
        _CONNECTIONS[transport] = self
        self._arm()
        self._inner.connection_made(transport)

    def _arm(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self._guard.limits.idle_timeout, self._tick)

    def _tick(self) -> None:
        if self._transport is None:
            return
        if self.busy == 0 and not self.progressed:
            self._guard.warn.warn(
                "idle", f"closed a connection that started no request in {self._guard.limits.idle_timeout:g} s"
            )
            self._transport.abort()
            return
        self.progressed = False
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._transport is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._transport is not None else None

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is None:
            return  # refused in connection_made: aiohttp never saw it
        self._guard.open -= 1
        if self._timer is not None:
            self._timer.cancel()
        self._transport = None
        self._inner.connection_lost(exc)


_CONNECTIONS: weakref.WeakKeyDictionary[asyncio.BaseTransport, _Connection] = weakref.WeakKeyDictionary()
"""The guarded connection of a transport, for the middleware that marks requests started and ended."""


class _Guard:
    def __init__(self, limits: ServerLimits) -> None:
        self.limits = limits
        self.open = 0
        self.warn = _WarnOnce(limits.log_interval)

    def factory(self, inner: Callable[[], asyncio.BaseProtocol]) -> Callable[[], asyncio.Protocol]:
        def make() -> asyncio.Protocol:
            protocol = inner()
            assert isinstance(protocol, asyncio.Protocol)
            return _Connection(self, protocol)

        return make


class GuardedSite(web.TCPSite):
    """aiohttp's TCP site with `ServerLimits` on its connections (`open_connections` counts them)."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, limits: ServerLimits | None = None) -> None:
        super().__init__(runner, host, port)
        self._guard = _Guard(limits or ServerLimits())

    @property
    def open_connections(self) -> int:
        return self._guard.open

    async def start(self) -> None:
        # TCPSite.start with aiohttp's protocol factory wrapped; registering with the runner is BaseSite's.
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self._guard.factory(server), self._host, self._port, backlog=self._backlog
        )
        self._bound_port = self._server.sockets[0].getsockname()[1] if self._server.sockets else self._port


async def _read_body(request: web.Request, limits: ServerLimits, max_body: int, warn: _WarnOnce) -> web.Response | None:
    """Read the whole body within `limits.body_timeout` and `max_body` (handlers then read it from
    memory); the refusal to send instead, with the connection to be closed."""
    try:
        async with asyncio.timeout(limits.body_timeout):
            await request.read()
    except TimeoutError:
        warn.warn("slow-body", f"a request body took over {limits.body_timeout:g} s: answered 408 and closed")
        response = _json_error(408, "body-timeout", f"the body did not arrive within {limits.body_timeout:g} s")
    except web.HTTPRequestEntityTooLarge:
        warn.warn("big-body", f"refused a body over {max_body} bytes")
        response = _json_error(413, "body-too-large", f"over the limit of {max_body} bytes")
    else:
        return None
    response.force_close()
    return response


def _guard_middleware(limits: ServerLimits, max_body: int, warn: _WarnOnce) -> Any:
    @web.middleware
    async def guard(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        connection = _CONNECTIONS.get(request.transport) if request.transport is not None else None
        if connection is not None:
            connection.busy += 1
            connection.progressed = True
        try:
            # /dle/ reads its body itself, after the authentication headers are checked.
            if request.body_exists and not request.path.startswith("/dle/"):
                refused = await _read_body(request, limits, max_body, warn)
                if refused is not None:
                    return refused
            return await handler(request)
        finally:
            if connection is not None:
                connection.busy -= 1
                connection.progressed = True

    return guard


def http_app(
    handler: Handler,
    *,
    address: bytes | None,
    max_body: int = DEFAULT_MAX_BODY,
    limits: ServerLimits | None = None,
    verifier: RequestVerifier | None = None,
) -> web.Application:
    """An aiohttp application serving one node's `handler` at `POST /dle/{method}`.

    `address` is the node's own: every request must then be signed for it (auth.py; 401 otherwise),
    and the handler finds its caller in `auth.CALLER`; `address=None` serves unauthenticated (only
    for the transport's own tests and servers that are no DLE node). `verifier` replaces the default
    `RequestVerifier(address)` (its window, its clock).

    200 with the response body; 422 with `{"code", "message"}` when the handler raises `RemoteError`;
    401/403 when it (or the verifier) raises `auth.Unauthenticated`/`auth.Forbidden`; 413
    (`body-too-large`) for a request over `max_body`; 408 (`body-timeout`) for a body slower than
    `limits.body_timeout`; 500 (`internal` for a handler's bug, `response-too-large` for a response
    over `max_body`); 404 (`unknown-path`) for a bad method name."""
    limits = limits or ServerLimits()
    if address is not None and verifier is None:
        verifier = RequestVerifier(address)
    warn = _WarnOnce(limits.log_interval)

    async def dle(request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        if not _METHOD.match(method):
            return _json_error(404, "unknown-path", f"no such method: {method[:64]!r}")
        if request.content_length is not None and request.content_length > max_body:
            return _json_error(413, "body-too-large", f"{request.content_length} bytes; the limit is {max_body}")
        try:
            if verifier is not None:
                # Headers first (cheap), the signature over the body once it is in; the handler parses
                # nothing of a request that fails.
                verifier.check_headers(request.headers)
            refused = await _read_body(request, limits, max_body, warn)
            if refused is not None:
                return refused
            body = await request.read()
            # Without a verifier the caller is nobody (never the trusted None of a direct call).
            CALLER.set(ANONYMOUS if verifier is None else verifier.verify(method, request.headers, body))
            response = await handler(method, body)
        except web.HTTPRequestEntityTooLarge:
            return _json_error(413, "body-too-large", f"over the limit of {max_body} bytes")
        except AuthError as error:
            warn.warn(
                f"auth-{error.status}", f"refused {method} from {request.headers.get(FROM_HEADER, '?')[:42]}: {error}"
            )
            return _json_error(error.status, error.code, error.message)
        except RemoteError as error:
            return _json_error(422, error.code, error.message)
        except Exception as error:
            _log.exception("handler failed serving %s for %s", method, request.headers.get(FROM_HEADER, "?")[:42])
            internal = _internal_error(error)
            return _json_error(500, internal.code, internal.message)
        if not isinstance(response, bytes):
            return _json_error(500, "internal", f"the handler returned {type(response).__name__}, not bytes")
        if len(response) > max_body:
            return _json_error(500, "response-too-large", f"{len(response)} bytes; the limit is {max_body}")
        return web.Response(body=response, content_type="application/octet-stream")

    async def not_found(request: web.Request) -> web.StreamResponse:
        return _json_error(404, "unknown-path", f"{request.method} {request.path} is not served here")

    # client_max_size makes request.read() itself refuse a chunked body that grows past the limit.
    app = web.Application(client_max_size=max_body, middlewares=[_guard_middleware(limits, max_body, warn)])
    app.router.add_post("/dle/{method}", dle)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app


async def start_guarded(
    app: web.Application, host: str, port: int, *, limits: ServerLimits | None = None
) -> tuple[web.AppRunner, GuardedSite]:
    """Run `app` on `host`:`port` behind `ServerLimits` (0 picks a free port: `site.port`); `await
    runner.cleanup()` stops it."""
    # lingering_time=0: a request answered before its body was read (401, 408, 413) closes its
    # connection at once, instead of aiohttp reading and discarding the rest for up to 10 s.
    runner = web.AppRunner(app, access_log=None, lingering_time=0)
    await runner.setup()
    site = GuardedSite(runner, host, port, limits=limits)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, site


async def serve(
    handler: Handler,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    address: bytes | None,
    max_body: int = DEFAULT_MAX_BODY,
    limits: ServerLimits | None = None,
) -> tuple[web.AppRunner, int]:
    """Serve `handler` on `host`:`port` (0 picks a free port) as the node at `address` (None: without
    authentication, see `http_app`); return the runner (`await runner.cleanup()` to stop) and the port
    actually bound."""
    app = http_app(handler, address=address, max_body=max_body, limits=limits)
    runner, site = await start_guarded(app, host, port, limits=limits)
    return runner, site.port
