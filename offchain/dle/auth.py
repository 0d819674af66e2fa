"""Who is asking: signed node API requests, and which callers may call which method of a DLE node.

The white paper lets an archive node serve RPC "only to participants and owners" of a chain and talk
peer-to-peer "only among archive nodes". So every request to a DLE node carries its caller's
secp256k1 signature (`sign_request`) over

    request digest = keccak256(rlp([b"CoNET DLE request v1", method, peer (20 bytes), sha256(body),
                                    timestamp (Unix milliseconds), nonce (16 bytes)]))

in four headers (`X-DLE-From`, `X-DLE-Time`, `X-DLE-Nonce`, `X-DLE-Signature`; docs/protocols.md
"HTTP wire conventions"). The peer's address in the digest stops a request made for one node from being
replayed at another; the timestamp (within `window` of the server's clock) and the request digest
(remembered until its timestamp leaves the window) stop it from being replayed at the same node. A
`RequestVerifier` checks all of that before the handler sees the body: a request that fails gets 401
and nothing else.

The node then learns its authenticated caller from the contextvar `CALLER` (`caller()`), set by the
transport — by the HTTP app after verification, by the in-process network from the calling
transport's own address — so no handler's signature changes. `ArchiveAccess` and `MemberAccess` are
the authorisation tables of the two node kinds, one rule per method, and one `check` each: a caller
outside the rule gets 403 (`Forbidden`) and no data, whether the chain it names exists or not.
"""

from __future__ import annotations

import contextvars
import hashlib
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from enum import Enum
from typing import TypeVar

from dle_vm.block import Block
from dle_vm.encoding import EncodingError, decode_rlp, encode_rlp, fixed_bytes, raw_bytes, rlp_list, uint_bytes
from dle_vm.engine import Engine
from dle_vm.hashing import keccak
from dle_vm.signature import SIGNATURE_SIZE, BadSignature, recover, sign
from dle_vm.state import State
from offchain.dle.messages import Commit, Evidence, ExitRequest, Final, Proposal, TimeoutReport, Validation
from offchain.dle.note import NoteReader
from offchain.dle.roles import ArchiveGroup, ChainRoles, RolesError, RolesRecord

__all__ = [
    "ANONYMOUS",
    "CALLER",
    "DEFAULT_WINDOW",
    "FROM_HEADER",
    "NONCE_HEADER",
    "NONCE_SIZE",
    "REQUEST_DOMAIN",
    "SIGNATURE_HEADER",
    "TIME_HEADER",
    "ArchiveAccess",
    "AuthError",
    "Forbidden",
    "MemberAccess",
    "RequestVerifier",
    "Rule",
    "Unauthenticated",
    "as_caller",
    "caller",
    "request_digest",
    "sign_request",
]

REQUEST_DOMAIN = b"CoNET DLE request v1"
FROM_HEADER = "X-DLE-From"
TIME_HEADER = "X-DLE-Time"
NONCE_HEADER = "X-DLE-Nonce"
SIGNATURE_HEADER = "X-DLE-Signature"
NONCE_SIZE = 16
DEFAULT_WINDOW = 30.0
"""Seconds a signed request stays valid either side of the server's clock (clock skew + transit)."""
DEFAULT_REMEMBERED = 200_000
"""Request digests remembered for replay detection: at 32 bytes + overhead, some tens of MiB at most."""

T = TypeVar("T")

CALLER: contextvars.ContextVar[bytes | None] = contextvars.ContextVar("dle_caller", default=None)
"""The authenticated caller of the request being handled (None: not delivered by any transport)."""
ANONYMOUS = b""
"""The caller of a request to an app that authenticates nothing (`http_app(address=None)`): nobody."""


class AuthError(Exception):
    """A request refused for who sent it: `status` is its HTTP status, `code` and `message` its JSON
    error body; a caller sees `RemoteError(code, message)` (in process and over HTTP alike)."""

    status = 400

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Unauthenticated(AuthError):
    """No valid signature of a fresh, unreplayed request: 401."""

    status = 401


class Forbidden(AuthError):
    """An authenticated caller that the method's rule does not admit: 403."""

    status = 403


def caller() -> bytes | None:
    """The authenticated caller of the current request, or None for a direct call of a handler by code
    in the node's own process (no transport delivered it: as trusted as the node itself). A request
    that came through a transport always has one — `ANONYMOUS` when the server authenticates nothing."""
    return CALLER.get()


async def as_caller(address: bytes, work: Awaitable[T]) -> T:
    """Await `work` (a node's call of its own handler) with `address` as its caller, then restore."""
    token = CALLER.set(address)
    try:
        return await work
    finally:
        CALLER.reset(token)


def request_digest(method: str, peer: bytes, body: bytes, timestamp_ms: int, nonce: bytes) -> bytes:
    """What a caller signs for one request to `peer`'s `method` (see the module docstring)."""
    return keccak(
        encode_rlp(
            [REQUEST_DOMAIN, method.encode(), peer, hashlib.sha256(body).digest(), uint_bytes(timestamp_ms), nonce]
        )
    )


def sign_request(
    secret: bytes, address: bytes, method: str, peer: bytes, body: bytes, *, now: float | None = None
) -> dict[str, str]:
    """The four authentication headers of one request, signed by `secret` (whose address is `address`)."""
    timestamp_ms = int((time.time() if now is None else now) * 1000)
    nonce = os.urandom(NONCE_SIZE)
    signature = sign(secret, request_digest(method, peer, body, timestamp_ms, nonce))
    return {
        FROM_HEADER: "0x" + address.hex(),
        TIME_HEADER: str(timestamp_ms),
        NONCE_HEADER: nonce.hex(),
        SIGNATURE_HEADER: signature.hex(),
    }


def _hex_header(headers: Mapping[str, str], name: str, size: int) -> bytes:
    value = headers.get(name)
    if value is None:
        raise Unauthenticated("unauthenticated", f"the request has no {name} header")
    try:
        data = bytes.fromhex(value.removeprefix("0x"))
    except ValueError:
        raise Unauthenticated("unauthenticated", f"{name} is not hex") from None
    if len(data) != size:
        raise Unauthenticated("unauthenticated", f"{name} is {len(data)} bytes, not {size}")
    return data


class RequestVerifier:
    """Checks the authentication headers of requests to the node at `address` (see the module)."""

    def __init__(
        self,
        address: bytes,
        *,
        window: float = DEFAULT_WINDOW,
        clock: Callable[[], float] = time.time,
        remembered: int = DEFAULT_REMEMBERED,
    ) -> None:
        self.address = address
        self.window = window
        self._clock = clock
        self._remembered = remembered
        # digest -> the wall-clock second after which its timestamp is out of the window anyway.
        self._seen: OrderedDict[bytes, float] = OrderedDict()

    def check_headers(self, headers: Mapping[str, str]) -> None:
        """What can be checked before the body is read: headers present, well-formed, and fresh."""
        self._parse(headers)

    def _parse(self, headers: Mapping[str, str]) -> tuple[bytes, int, bytes, bytes]:
        claimed = _hex_header(headers, FROM_HEADER, 20)
        nonce = _hex_header(headers, NONCE_HEADER, NONCE_SIZE)
        signature = _hex_header(headers, SIGNATURE_HEADER, SIGNATURE_SIZE)
        raw_time = headers.get(TIME_HEADER, "")
        if not raw_time.isdigit() or len(raw_time) > 16:
            raise Unauthenticated("unauthenticated", f"{TIME_HEADER} is not a Unix time in milliseconds")
        timestamp_ms = int(raw_time)
        now = self._clock()
        if abs(timestamp_ms / 1000 - now) > self.window:
            raise Unauthenticated(
                "stale-request", f"signed at {timestamp_ms / 1000:.3f}, more than {self.window:g} s from {now:.3f}"
            )
        return claimed, timestamp_ms, nonce, signature

    def verify(self, method: str, headers: Mapping[str, str], body: bytes) -> bytes:
        """The authenticated caller of a request; `Unauthenticated` when its signature, freshness or
        novelty fails. A request that passes is remembered: the same bytes are refused as a replay."""
        claimed, timestamp_ms, nonce, signature = self._parse(headers)
        digest = request_digest(method, self.address, body, timestamp_ms, nonce)
        try:
            signer = recover(digest, signature)
        except BadSignature as error:
            raise Unauthenticated("unauthenticated", f"a malformed request signature: {error}") from None
        if signer != claimed:
            # Signed for another node, another method, another body, or by another key.
            raise Unauthenticated("unauthenticated", "the signature does not match the request or its sender")
        self._forget_expired()
        if digest in self._seen:
            raise Unauthenticated("replayed", "this signed request was already served")
        if len(self._seen) >= self._remembered:
            raise Unauthenticated("busy", "too many recent requests to remember; try again shortly")
        self._seen[digest] = timestamp_ms / 1000 + self.window
        return signer

    def _forget_expired(self) -> None:
        now = self._clock()
        # Insertion order is nearly expiry order (timestamps are within the window of arrival); an
        # entry inserted out of order is dropped a little later, never early.
        while self._seen:
            digest, expires = next(iter(self._seen.items()))
            if expires >= now - self.window:
                break
            del self._seen[digest]


# -- authorisation ----------------------------------------------------------------------------------------


class Rule(Enum):
    """Which callers a method admits (each node's table maps every method to one)."""

    ANYONE = "anyone"
    """Any authenticated caller: `ping` (the answer is the node's own, public address) and `submit`
    (every transaction carries its own sender's signature, which the program checks)."""
    PEER = "peer"
    """An archive node of this node's group: draws, endorsements, rollbacks."""
    READER = "reader"
    """A peer, a member named by the chain's roles, or a participant (a holder, payee or signer of the
    chain's state): roles, chain dumps, heads."""
    MEMBER = "member"
    """A member named by the chain's current (or pending genesis) roles: accept, final."""
    REPORTER = "reporter"
    """A peer, a member or a participant: timeout reports (a wallet reports its creator's silence)."""
    WATCHER = "watcher"
    """A peer or a member: fault reports."""
    CREATOR = "creator"
    """The creator named by the chain's certified roles: propose, validate, genesis validation."""
    KEEPER = "keeper"
    """An archive node of the group that keeps the chain (or a member, for `final`): roles records,
    rollbacks, finals, genesis openings sent to a member."""


def _addresses_in(calldata: bytes) -> set[bytes]:
    """The 20-byte addresses among an ABI call's 32-byte argument words (a word with 12 zero bytes
    before a non-zero tail). Small integers look alike and are admitted too: nobody holds their keys."""
    found = set()
    for offset in range(4, len(calldata) - 31, 32):
        word = calldata[offset : offset + 32]
        if word[:12] == bytes(12) and any(word[12:]):
            found.add(word[12:])
    return found


def _forbid(method: str, who: bytes, why: str) -> Forbidden:
    return Forbidden("forbidden", f"0x{who.hex()} may not call {method}: {why}")


def _chain_of(method: str, body: bytes) -> bytes:
    """The chain a request to an archive node is about (decoding errors surface as bad-request)."""
    if method in ("roles", "chain", "head"):
        return fixed_bytes(body, 32, "chain")
    if method == "exit_certificate":
        return ExitRequest.decode(body).chain
    if method == "accept":
        return Commit.decode(body).block.header.chain_id
    if method == "final":
        return Final.decode(body).block.header.chain_id
    if method == "report_timeout":
        return TimeoutReport.decode(body).chain
    if method == "report_fault":
        return Evidence.decode(body).block.header.chain_id
    raise EncodingError(f"{method} names no chain")


class ArchiveAccess:
    """The archive node's authorisation table and its one check.

    `group()` is the node's archive group (its members are its peers), `known_roles(chain)` the chain's
    current (or pending genesis) roles record or None, `head_state(chain)` the final head's state or
    None, `blocks(chain, start)` the final blocks from height `start` on.

    A participant is an address the chain's final history names: the sender of one of its
    transactions, or an address among a transaction's call arguments (the genesis holder and CBDC,
    a transfer's receiver, an authorization's payee, an exit's receiver), or an account holding a
    balance in the head state. Anyone else — an outsider, a member of another chain — is refused."""

    TABLE: Mapping[str, Rule] = {
        "ping": Rule.ANYONE,
        "roles": Rule.READER,
        "chain": Rule.READER,
        "head": Rule.READER,
        # An exit certificate says no more than the head does (the exits are in its state), and the
        # mainchain pays a chain's exits in order: any participant may need an earlier one to pay it.
        "exit_certificate": Rule.READER,
        "accept": Rule.MEMBER,
        "final": Rule.MEMBER,
        "report_timeout": Rule.REPORTER,
        "report_fault": Rule.WATCHER,
        "rollback": Rule.PEER,
        "endorse_roles": Rule.PEER,
        "endorse_fault": Rule.PEER,
        "draw_commit": Rule.PEER,
        "draw_reveal": Rule.PEER,
        "endorse_draw": Rule.PEER,
        "draw_final": Rule.PEER,
        "endorse_cbdc_draw": Rule.PEER,
        # A CBDC asks for its order's certified draw; the handler admits staked CBDCs only (a
        # mainchain read, which this synchronous table cannot make).
        "cbdc_draw": Rule.ANYONE,
        "endorse_genesis_roles": Rule.PEER,
        "expect_genesis": Rule.PEER,
        "endorse_registration": Rule.PEER,
    }

    def __init__(
        self,
        group: Callable[[], ArchiveGroup],
        known_roles: Callable[[bytes], RolesRecord | None],
        head_state: Callable[[bytes], State | None],
        engine: Engine,
        blocks: Callable[[bytes, int], Sequence[Block]],
    ) -> None:
        self._group = group
        self._known_roles = known_roles
        self._head_state = head_state
        self._blocks = blocks
        self._reader = NoteReader(engine)
        self._named: dict[bytes, tuple[int, set[bytes]]] = {}
        """Per chain: (the next height to scan, the addresses its history names so far)."""
        self._former: dict[bytes, set[bytes]] = {}
        """Members of the chain's earlier roles this node saw (in memory: lost on a restart)."""

    def check(self, method: str, body: bytes) -> None:
        """Raise `Unauthenticated`/`Forbidden` unless the caller may call `method` with `body`. A method
        missing from the table is for peers only (a method added later is never open by omission)."""
        who = caller()
        if who is None:
            return
        rule = self.TABLE.get(method, Rule.PEER)
        if rule is Rule.ANYONE:
            return
        # A peer is admitted by every rule except MEMBER (a block's accept and final come from its
        # creator; a peer never sends them).
        if rule is not Rule.MEMBER and who in self._group().members:
            return
        if rule is Rule.PEER:
            raise _forbid(method, who, "only archive nodes of this group")
        chain = _chain_of(method, body)
        record = self._known_roles(chain)
        if record is not None:
            members = record.roles.members()
            former = self._former.setdefault(chain, set())
            former |= members
            if who in members:
                return
            # A member replaced by a role change asks for the new roles (and may still report): it
            # held the chain, so it reads it; it can no longer accept or finalise blocks.
            if rule is not Rule.MEMBER and who in former:
                return
        if rule in (Rule.MEMBER, Rule.WATCHER):
            raise _forbid(method, who, "only the chain's members")
        if self._participant(chain, who):
            return
        # The same answer whether or not the chain exists: an outsider learns nothing of it.
        raise _forbid(method, who, "only the chain's participants, members and archive nodes")

    def _participant(self, chain: bytes, who: bytes) -> bool:
        if who in self._names(chain):
            return True
        state = self._head_state(chain)
        if state is None:
            return False
        try:
            return self._reader.balance(state, chain, who) > 0
        except Exception:  # a chain without the note program (a Selection Chain): no balances
            return False

    def _names(self, chain: bytes) -> set[bytes]:
        """The addresses the chain's final blocks name, scanned once per block (cached in memory)."""
        start, names = self._named.get(chain, (0, set()))
        try:
            new = self._blocks(chain, start)
        except Exception:  # an unknown chain names nobody
            return names
        for block in new:
            for tx in block.transactions:
                names.add(tx.sender)
                names.update(_addresses_in(tx.data))
            start = block.header.height + 1
        self._named[chain] = (start, names)
        return names


class MemberAccess:
    """The member node's authorisation table and its one check.

    `group_of(group)` is an archive group's current epoch, `known_roles(chain)` the chain's roles record
    this node holds or None, `roles_at(chain, version, group)` the roles at `version` (fetched from the
    host archive node when newer than held; refuses a stale version itself)."""

    TABLE: Mapping[str, Rule] = {
        "ping": Rule.ANYONE,
        "submit": Rule.ANYONE,
        "roles": Rule.KEEPER,
        "rollback": Rule.KEEPER,
        "final": Rule.KEEPER,
        "open_genesis": Rule.KEEPER,
        "propose": Rule.CREATOR,
        "validate": Rule.CREATOR,
        "validate_genesis": Rule.CREATOR,
    }

    def __init__(
        self,
        group_of: Callable[[int], ArchiveGroup],
        known_roles: Callable[[bytes], RolesRecord | None],
        roles_at: Callable[[bytes, int, int], Awaitable[ChainRoles]],
    ) -> None:
        self._group_of = group_of
        self._known_roles = known_roles
        self._roles_at = roles_at

    async def check(self, method: str, body: bytes) -> None:
        """Raise `Unauthenticated`/`Forbidden` unless the caller may call `method` with `body`."""
        try:
            await self._check(method, body)
        except RolesError as error:  # a malformed roles record: the same answer as a malformed body
            raise EncodingError(str(error)) from None

    async def _check(self, method: str, body: bytes) -> None:
        who = caller()
        if who is None:
            return
        rule = self.TABLE.get(method)
        if rule is None:
            # Never open by omission; and an outsider learns nothing of which methods exist.
            raise _forbid(method, who, "no such method for this caller")
        if rule is Rule.ANYONE:
            return
        if rule is Rule.CREATOR:
            creator = await self._creator(method, body)
            if who != creator:
                raise _forbid(method, who, "only the chain's creator")
            return
        chain, group = self._keeper_view(method, body)
        if who in self._archive(group):
            return
        known = self._known_roles(chain)
        # The creator tells its witnesses a block is final; roles records, rollbacks and genesis
        # openings come only from the archive nodes that keep the chain.
        if method == "final" and known is not None and who in known.roles.members():
            return
        raise _forbid(method, who, "only the archive nodes that keep the chain")

    def _archive(self, group: int) -> tuple[bytes, ...]:
        try:
            return self._group_of(group).members
        except Exception:  # an unknown group: nobody of it is admitted
            return ()

    def _keeper_view(self, method: str, body: bytes) -> tuple[bytes, int]:
        """(chain, archive group) a keeper's message is about."""
        if method in ("roles", "rollback"):
            record = RolesRecord.decode(body)
            return record.roles.chain, record.roles.group
        if method == "final":
            header = Final.decode(body).block.header
            return header.chain_id, header.group_id
        # open_genesis: rlp([terms, roles record, tick])
        _terms, record_bytes, _tick = rlp_list(decode_rlp(body), 3, "open genesis")
        record = RolesRecord.decode(raw_bytes(record_bytes, "roles"))
        return record.roles.chain, record.roles.group

    async def _creator(self, method: str, body: bytes) -> bytes:
        if method == "propose":
            proposal = Proposal.decode(body)
            header = proposal.block.header
            return (await self._roles_at(header.chain_id, proposal.roles_version, header.group_id)).creator
        if method == "validate":
            record = Validation.decode(body).roles
        else:  # validate_genesis: rlp([block, pre-state, roles record])
            _block, _pre, record_bytes = rlp_list(decode_rlp(body), 3, "genesis validation")
            record = RolesRecord.decode(raw_bytes(record_bytes, "roles"))
        try:
            record.verify(self._group_of(record.roles.group))
        except (RolesError, KeyError, LookupError) as error:
            raise Forbidden("forbidden", f"{method}: the roles record is not certified: {error}") from None
        return record.roles.creator
