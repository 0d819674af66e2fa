"""The waiting pool's long-poll REST hook on an archive node (DESIGN §5).

Witness and validator candidates wait at an archive node by long-polling it. A candidate joins with a
signed request and gets a ticket; the join is stamped into the node's Proof of History
(`WaitingPool.join`), which fixes its place in line. It then polls `GET /pool/wait` with the ticket:
each poll is held open up to `hold` seconds and answered at once with the assignment when the archive
node draws the candidate (`PoolHook.assign`), or with 204 when the hold ends. The candidate keeps its
place only while it keeps polling: after a poll ends it has `grace` seconds to poll again. A candidate
that misses that — its connection broke, it went away — is dropped from the pool (a leave stamp), its
ticket expires, and coming back is a new join: a new stamp, at the back. So a node cannot keep its
place while away, and cannot improve it by reconnecting.

Join requests are signed so nobody can queue (or re-queue, i.e. push back) someone else:

    join digest = keccak256(rlp([b"CoNET DLE pool join", archive (20 bytes), address (20 bytes), role,
                                 timestamp (Unix seconds), nonce (16 bytes)]))

signed as is with the candidate's key (`dle_vm.signature`, 65 bytes r ‖ s ‖ v). The archive node's own
address in the digest stops a join from being replayed at another archive node; the timestamp (within
`max_skew` of the node's clock) and the nonce (remembered until the timestamp leaves that window)
stop it from being replayed at this one.

An assignment is opaque bytes the archive node hands in after a draw. A delivered assignment is served
again to a poll with the same ticket within `grace` (the 200 may have been lost with the connection).

The hook only joins candidates and drops those that went away (`WaitingPool.join` / `leave`); taking,
releasing and removing them around a draw stays the archive node's. REST API: docs/drafts/dle-infra.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from coincurve import PrivateKey

from dle_vm.encoding import encode_rlp, uint_bytes
from dle_vm.hashing import keccak
from dle_vm.signature import SIGNATURE_SIZE, BadSignature, address_of, recover, sign
from offchain.dle.pool import ADDRESS_SIZE, WaitingPool

__all__ = [
    "DEFAULT_MAX_SKEW",
    "JOIN_DOMAIN",
    "NONCE_SIZE",
    "VALIDATOR",
    "WITNESS",
    "JoinRequest",
    "PoolHook",
    "PoolHookError",
    "join_digest",
    "wait_for_assignment",
]

WITNESS = 2
VALIDATOR = 3
"""contracts/types/Role.sol: the roles that wait in the pool."""
JOIN_DOMAIN = b"CoNET DLE pool join"
NONCE_SIZE = 16
DEFAULT_MAX_SKEW = 60.0
_MAX_JOIN_BODY = 4096
_DISCONNECT_CHECK = 0.25
"""How often an open poll looks whether its client hung up (aiohttp does not cancel the handler)."""


class PoolHookError(Exception):
    """The archive node refused a pool request: `status` is the HTTP status, `code` and `message` its
    JSON error body."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


def join_digest(archive: bytes, address: bytes, role: int, timestamp: int, nonce: bytes) -> bytes:
    """What a candidate signs to join the pool of the archive node at `archive`."""
    return keccak(encode_rlp([JOIN_DOMAIN, archive, address, uint_bytes(role), uint_bytes(timestamp), nonce]))


def _hex(data: bytes) -> str:
    return "0x" + data.hex()


def _unhex(value: object, size: int, name: str) -> bytes:
    if not isinstance(value, str) or not value.startswith("0x"):
        raise ValueError(f"{name} must be a 0x-prefixed hex string")
    try:
        data = bytes.fromhex(value[2:])
    except ValueError as error:
        raise ValueError(f"{name} is not hex") from error
    if len(data) != size:
        raise ValueError(f"{name} must be {size} bytes, got {len(data)}")
    return data


@dataclass(frozen=True)
class JoinRequest:
    """A candidate's signed request to wait in an archive node's pool."""

    address: bytes
    role: int
    timestamp: int
    """Unix seconds when it was signed."""
    nonce: bytes
    """16 random bytes: two joins in the same second differ."""
    signature: bytes

    @classmethod
    def signed(
        cls,
        key: bytes,
        archive: bytes,
        role: int,
        *,
        timestamp: int | None = None,
        nonce: bytes | None = None,
    ) -> JoinRequest:
        """A join request signed with the 32-byte private `key` for the archive node at `archive`."""
        address = address_of(PrivateKey(key).public_key)
        at = int(time.time()) if timestamp is None else timestamp
        salt = secrets.token_bytes(NONCE_SIZE) if nonce is None else nonce
        signature = sign(key, join_digest(archive, address, role, at, salt))
        return cls(address=address, role=role, timestamp=at, nonce=salt, signature=signature)

    def to_json(self) -> dict[str, Any]:
        return {
            "address": _hex(self.address),
            "role": self.role,
            "timestamp": self.timestamp,
            "nonce": _hex(self.nonce),
            "signature": _hex(self.signature),
        }

    @classmethod
    def from_json(cls, value: object) -> JoinRequest:
        """The request in a decoded JSON body; `ValueError` for anything malformed."""
        if not isinstance(value, dict):
            raise ValueError("a join request is a JSON object")
        role, timestamp = value.get("role"), value.get("timestamp")
        if not isinstance(role, int) or isinstance(role, bool) or not 0 <= role < 256:
            raise ValueError("role must be a small integer")
        if not isinstance(timestamp, int) or isinstance(timestamp, bool) or not 0 <= timestamp < 2**64:
            raise ValueError("timestamp must be Unix seconds")
        return cls(
            address=_unhex(value.get("address"), ADDRESS_SIZE, "address"),
            role=role,
            timestamp=timestamp,
            nonce=_unhex(value.get("nonce"), NONCE_SIZE, "nonce"),
            signature=_unhex(value.get("signature"), SIGNATURE_SIZE, "signature"),
        )


@dataclass
class _Entry:
    ticket: str
    address: bytes
    role: int
    deadline: float
    """Monotonic time by which the next poll must arrive (infinite while one is open)."""
    poller: asyncio.Future[str] | None = None
    """Resolved to wake the open poll: "assigned", "superseded" (another poll on this ticket),
    "replaced" (a new join by the same address), "closing" (the node shuts down)."""
    assignment: bytes | None = None


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"code": code, "message": message}, status=status)


class PoolHook:
    """The long-poll front of a `WaitingPool`. Runs on the archive node's event loop (the pool is not
    thread-safe); `add_routes(app)` serves it and sweeps candidates whose grace expired."""

    def __init__(
        self,
        pool: WaitingPool,
        hold: float,
        grace: float,
        *,
        archive: bytes,
        roles: Iterable[int] = (WITNESS, VALIDATOR),
        max_skew: float = DEFAULT_MAX_SKEW,
        admit: Callable[[bytes, int], Awaitable[bool]] | None = None,
        sweep_interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not hold > 0 or not grace > 0:
            raise ValueError("hold and grace must be positive")
        if len(archive) != ADDRESS_SIZE:
            raise ValueError(f"the archive node's address is {ADDRESS_SIZE} bytes")
        self.pool = pool
        self.hold = hold
        self.grace = grace
        self.archive = archive
        self.roles = frozenset(roles)
        self.max_skew = max_skew
        self._admit = admit
        self.sweep_interval = sweep_interval if sweep_interval is not None else max(min(hold, grace) / 2, 0.05)
        self._clock = clock
        self._wall_clock = wall_clock
        self._tickets: dict[str, _Entry] = {}
        self._by_address: dict[bytes, _Entry] = {}
        self._seen_nonces: dict[tuple[bytes, bytes], float] = {}  # (address, nonce) -> wall time it may be forgotten
        self._gone: set[bytes] = set()  # expired while a draw held them: leave once released

    # -- what the archive node calls --------------------------------------------------------------------

    def assign(self, address: bytes, payload: bytes) -> bool:
        """Hand `payload` to the candidate at `address`: its open poll answers at once, or its next poll
        within grace. False when the candidate has no live ticket (gone: the caller draws again)."""
        if not isinstance(payload, bytes):
            raise TypeError("an assignment is bytes")
        entry = self._by_address.get(address)
        if entry is None or not self._live(entry, self._clock()):
            return False
        entry.assignment = payload
        if entry.poller is not None and not entry.poller.done():
            entry.poller.set_result("assigned")
        return True

    def waiting(self) -> list[bytes]:
        """Addresses with a live ticket (polling, or within grace), in no particular order."""
        now = self._clock()
        return [address for address, entry in self._by_address.items() if self._live(entry, now)]

    def sweep(self) -> list[bytes]:
        """Drop every candidate whose grace ran out without a poll: its ticket expires, and if it waits in
        the pool it leaves it (a stamp). Returns the addresses that left the pool. A candidate held by an
        unsettled draw is left to the draw and swept once released (or forgotten once removed)."""
        now = self._clock()
        held = {candidate.address for candidate in self.pool.held}
        gone: list[bytes] = []
        for entry in list(self._tickets.values()):
            if self._live(entry, now) or entry.address in held:
                continue
            if self._drop(entry):
                gone.append(entry.address)
        for address in list(self._gone):
            if address in self._by_address:
                self._gone.discard(address)  # joined again: its new ticket rules
            elif address in self.pool:
                self.pool.leave(address)  # an unused standby returned, but nobody polls for it
                self._gone.discard(address)
                gone.append(address)
            elif address not in held:
                self._gone.discard(address)  # the draw removed it
        wall = self._wall_clock()
        for key, forget_at in list(self._seen_nonces.items()):
            if forget_at < wall:
                del self._seen_nonces[key]
        return gone

    def add_routes(self, app: web.Application) -> None:
        """Serve the hook on `app` (GET /pool/info, POST /pool/join, GET /pool/wait) and run the sweep
        while the app runs; open polls are answered 503 when it shuts down."""
        app.router.add_routes(self.routes())
        app.cleanup_ctx.append(self._sweeper)
        app.on_shutdown.append(self._on_shutdown)

    def routes(self) -> list[web.RouteDef]:
        """The routes alone (no sweep: call `sweep()` yourself)."""
        return [
            web.get("/pool/info", self._info),
            web.post("/pool/join", self._join),
            web.get("/pool/wait", self._wait),
        ]

    # -- internals ------------------------------------------------------------------------------------

    @staticmethod
    def _live(entry: _Entry, now: float) -> bool:
        return entry.poller is not None or now <= entry.deadline

    def _drop(self, entry: _Entry) -> bool:
        """Forget the entry; the candidate leaves the pool if it waits there. True if it left."""
        self._tickets.pop(entry.ticket, None)
        if self._by_address.get(entry.address) is entry:
            del self._by_address[entry.address]
        if entry.address in self.pool:
            self.pool.leave(entry.address)
            return True
        if entry.address in {candidate.address for candidate in self.pool.held}:
            # A draw holds it: leaving now would break the draw's remove/release; the sweep settles it.
            self._gone.add(entry.address)
        return False

    async def _sweeper(self, app: web.Application) -> AsyncIterator[None]:
        async def loop() -> None:
            while True:
                await asyncio.sleep(self.sweep_interval)
                self.sweep()

        task = asyncio.create_task(loop())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _on_shutdown(self, app: web.Application) -> None:
        for entry in self._tickets.values():
            if entry.poller is not None and not entry.poller.done():
                entry.poller.set_result("closing")

    async def _info(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "archive": _hex(self.archive),
                "hold": self.hold,
                "grace": self.grace,
                "roles": sorted(self.roles),
                "max_skew": self.max_skew,
            }
        )

    async def _join(self, request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > _MAX_JOIN_BODY:
            return _error(413, "body-too-large", f"a join request is at most {_MAX_JOIN_BODY} bytes")
        try:
            # The whole body, bounded: under `transport.http_app` its guard has already read it within
            # the server's body timeout; a body over the app's limit is refused there.
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error(413, "body-too-large", f"a join request is at most {_MAX_JOIN_BODY} bytes")
        if len(raw) > _MAX_JOIN_BODY:
            return _error(413, "body-too-large", f"a join request is at most {_MAX_JOIN_BODY} bytes")
        try:
            join = JoinRequest.from_json(json.loads(raw))
        except ValueError as error:  # also JSONDecodeError and UnicodeDecodeError
            return _error(400, "bad-request", str(error))
        if join.role not in self.roles:
            return _error(400, "bad-role", f"role {join.role} does not wait here; roles: {sorted(self.roles)}")
        wall = self._wall_clock()
        if abs(join.timestamp - wall) > self.max_skew:
            return _error(400, "stale", f"timestamp {join.timestamp} is more than {self.max_skew:g} s from {int(wall)}")
        try:
            signer = recover(
                join_digest(self.archive, join.address, join.role, join.timestamp, join.nonce), join.signature
            )
        except BadSignature as error:
            return _error(401, "bad-signature", str(error))
        if signer != join.address:
            return _error(401, "bad-signature", f"signed by {_hex(signer)}, not by {_hex(join.address)}")
        key = (join.address, join.nonce)
        if key in self._seen_nonces:
            return _error(409, "replayed", "this join request was already used")
        if self._admit is not None and not await self._admit(join.address, join.role):
            return _error(403, "not-admitted", f"{_hex(join.address)} may not wait as role {join.role} here")
        if key in self._seen_nonces:  # the same request raced through the awaited admission check
            return _error(409, "replayed", "this join request was already used")
        self._seen_nonces[key] = join.timestamp + self.max_skew
        # A new join replaces the address's earlier ticket: its open poll ends, its place is gone.
        old = self._by_address.pop(join.address, None)
        if old is not None:
            self._tickets.pop(old.ticket, None)
            if old.poller is not None and not old.poller.done():
                old.poller.set_result("replaced")
        candidate = self.pool.join(join.address, join.role)
        entry = _Entry(
            ticket=secrets.token_urlsafe(24),
            address=join.address,
            role=join.role,
            deadline=self._clock() + self.grace,
        )
        self._tickets[entry.ticket] = entry
        self._by_address[entry.address] = entry
        return web.json_response(
            {
                "ticket": entry.ticket,
                "address": _hex(join.address),
                "role": join.role,
                "stamp_index": candidate.stamp.index,
                "stamp_hash": _hex(candidate.stamp.hash),
                "hold": self.hold,
                "grace": self.grace,
            }
        )

    async def _wait(self, request: web.Request) -> web.StreamResponse:
        ticket = request.query.get("ticket", "")
        entry = self._tickets.get(ticket)
        now = self._clock()
        if entry is None:
            return _error(410, "ticket-expired", "unknown or expired ticket: join again (at the back)")
        if not self._live(entry, now):
            self._drop(entry)
            return _error(410, "ticket-expired", "no poll within the grace period: join again (at the back)")
        if entry.assignment is not None:
            # Served again until grace after the last delivery: the previous 200 may have been lost.
            entry.deadline = now + self.grace
            return web.Response(body=entry.assignment, content_type="application/octet-stream")
        if entry.poller is not None and not entry.poller.done():
            entry.poller.set_result("superseded")
        poller: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        entry.poller = poller
        entry.deadline = math.inf
        try:
            reason = await self._hold(request, poller)
        finally:
            if entry.poller is poller:
                entry.poller = None
                entry.deadline = self._clock() + self.grace
        if reason == "replaced":
            return _error(410, "ticket-expired", "the address joined again: this ticket is replaced")
        if reason == "closing":
            return _error(503, "shutting-down", "the archive node is shutting down: poll again")
        if reason == "assigned" and entry.assignment is not None:
            return web.Response(body=entry.assignment, content_type="application/octet-stream")
        return web.Response(status=204)

    async def _hold(self, request: web.Request, poller: asyncio.Future[str]) -> str:
        """Wait for a wake-up, the end of the hold, or the client hanging up (then its grace starts now)."""
        end = self._clock() + self.hold
        while True:
            left = end - self._clock()
            if left <= 0:
                return "hold"
            done, _ = await asyncio.wait({poller}, timeout=min(left, _DISCONNECT_CHECK))
            if done:
                return poller.result()
            transport = request.transport
            if transport is None or transport.is_closing():
                return "disconnected"


# -- the candidate's side ---------------------------------------------------------------------------------


async def _error_of(response: aiohttp.ClientResponse) -> PoolHookError:
    try:
        body = await response.json(content_type=None)
        return PoolHookError(response.status, str(body["code"]), str(body["message"]))
    except (ValueError, KeyError, TypeError, aiohttp.ClientError):
        return PoolHookError(response.status, f"http-{response.status}", response.reason or "")


async def wait_for_assignment(
    session: aiohttp.ClientSession,
    url: str,
    key: bytes,
    *,
    role: int = WITNESS,
    retry_delay: float = 0.2,
    on_join: Callable[[dict[str, Any]], None] | None = None,
) -> bytes:
    """Join the pool at the archive node `url` with the 32-byte private `key` and poll until drawn;
    return the assignment. After a connection loss it polls again with the same ticket (keeping its
    place if back within grace) and joins again when the node says the ticket expired — at the back,
    by the rules. Refusals (`bad-signature`, `stale`, …) raise `PoolHookError`. Bound it with
    `asyncio.timeout` if the wait must end. `on_join` sees each join response (ticket, stamp)."""
    base = url.rstrip("/")
    archive: bytes | None = None
    hold = 0.0
    ticket: str | None = None
    while True:
        try:
            if archive is None:
                async with session.get(f"{base}/pool/info") as response:
                    if response.status != 200:
                        raise await _error_of(response)
                    info = await response.json()
                archive = _unhex(info["archive"], ADDRESS_SIZE, "archive")
                hold = float(info["hold"])
            if ticket is None:
                join = JoinRequest.signed(key, archive, role)
                async with session.post(f"{base}/pool/join", json=join.to_json()) as response:
                    if response.status != 200:
                        raise await _error_of(response)
                    joined = await response.json()
                ticket = str(joined["ticket"])
                if on_join is not None:
                    on_join(joined)
            # The server answers by the end of its hold; past that plus slack the connection is dead.
            poll_timeout = aiohttp.ClientTimeout(total=hold + 10)
            async with session.get(f"{base}/pool/wait", params={"ticket": ticket}, timeout=poll_timeout) as response:
                if response.status == 200:
                    return await response.read()
                if response.status == 204:
                    continue
                if response.status == 410:
                    ticket = None  # expired or replaced: join again, at the back
                    continue
                if response.status in (502, 503, 504):
                    await asyncio.sleep(retry_delay)
                    continue
                raise await _error_of(response)
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError):
            # Connection lost or refused: try again with the same ticket; within grace the place holds.
            await asyncio.sleep(retry_delay)
