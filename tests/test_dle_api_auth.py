"""Authenticated node APIs and bounded servers (issue 12, deliverable 9).

Who may ask a DLE node what: an outsider with no role, a member of another chain, a forged archive
message, a replayed or tampered signed request — each refused with 401/403 and no data, the chains
unchanged; the chain's holder, members and archive peers answered. Then the server's bounds on real
sockets: hundreds of slowloris connections neither stay nor exhaust the file descriptors nor flood
the log, a slow body is cut, and honest requests are served afterwards.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from collections.abc import Awaitable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from test_dle_consensus import ALICE, BUYER, Note, key, open_note

from dle_vm.encoding import encode_rlp
from dle_vm.signature import sign
from offchain.dle.auth import (
    FROM_HEADER,
    NONCE_HEADER,
    SIGNATURE_HEADER,
    TIME_HEADER,
    RequestVerifier,
    Unauthenticated,
    request_digest,
    sign_request,
)
from offchain.dle.client import DleError
from offchain.dle.local import OUTSIDER, address_of_secret
from offchain.dle.messages import Commit, Final, Proposal, TimeoutReport
from offchain.dle.roles import RolesRecord
from offchain.dle.transport import HttpTransport, RemoteError, ServerLimits, http_app, serve, start_guarded
from offchain.odex.service import _dle_handler

MALLORY = key("mallory")
"""A real key with no stake, no role and no coin."""


def run(coro: Awaitable[None], seconds: float = 120) -> None:
    asyncio.run(asyncio.wait_for(coro, seconds))  # type: ignore[arg-type]


def snapshot(note: Note) -> dict[bytes, tuple[int, bytes, int]]:
    """Every node's view of the chain: (height, head hash, roles version)."""
    nodes = [*note.dle.archives.values(), *note.dle.members.values()]
    return {
        n.address: (n.store.height(note.chain), n.store.head(note.chain).block.hash, n.roles(note.chain).roles.version)
        for n in nodes
        if note.chain in n.store.chains()
    }


async def refused(call: Awaitable[Any]) -> RemoteError:
    with pytest.raises(RemoteError) as caught:
        await call
    return caught.value


# -- in process: the authorisation tables -------------------------------------------------------------


def test_an_outsider_reads_no_chain_and_learns_not_even_whether_it_exists(tmp_path: Path) -> None:
    async def scenario() -> None:
        note = await open_note(tmp_path)
        await note.pay(BUYER, ALICE, 1_000)
        host = note.dle.host(note.chain).address
        outsider = note.dle.network.transport(OUTSIDER)
        missing = bytes(31) + b"\x01"
        answers = []
        for method in ("roles", "head", "chain"):
            for chain in (note.chain, missing):
                error = await refused(outsider.call(host, method, chain, timeout=5))
                assert error.code == "forbidden", error
                answers.append(error.message.split(":", 1)[1])
        # The same refusal whether the chain exists or not: nothing to tell them apart.
        assert len(set(answers)) == 1
        # A timeout report from an outsider is refused before any probe or role change.
        roles = note.dle.host(note.chain).roles(note.chain).roles
        report = TimeoutReport(note.chain, roles.version, roles.creator).encode()
        assert (await refused(outsider.call(host, "report_timeout", report, timeout=5))).code == "forbidden"
        # The client of an outsider sees the same, as a DleError.
        with pytest.raises(DleError, match="forbidden"):
            await note.dle.client(OUTSIDER).head(note.chain)

    run(scenario())


def test_the_holder_a_payee_members_and_peers_read_the_chain(tmp_path: Path) -> None:
    async def scenario() -> None:
        note = await open_note(tmp_path)
        await note.pay(BUYER, ALICE, 1_000)
        host = note.dle.host(note.chain)
        roles = host.roles(note.chain).roles
        readers = {
            "holder": address_of_secret(BUYER),
            "payee": address_of_secret(ALICE),
            "creator": roles.creator,
            "witness": roles.witnesses[0],
            "validator": roles.validators[0],
            "archive peer": next(a for a in note.dle.archives if a != host.address),
        }
        for who, address in readers.items():
            height, _state = await note.dle.client(address).head(note.chain)
            assert height == 1, who
            record = RolesRecord.decode(
                await note.dle.network.transport(address).call(host.address, "roles", note.chain, timeout=5)
            )
            assert record.roles == roles, who

    run(scenario())


def test_a_member_of_another_chain_is_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        note = await open_note(tmp_path, witnesses=12)
        other = replace(note.terms, note=8, witnesses=(), validators_pool=bytes(20), holder=address_of_secret(key("x")))
        await note.dle.open_note(other)
        host = note.dle.host(other.chain)
        theirs = host.roles(other.chain).roles
        ours = note.dle.host(note.chain).roles(note.chain).roles
        strangers = [w for w in theirs.witnesses if w not in ours.members()]
        assert strangers, "the draw takes drawn witnesses out of the pool"
        stranger = note.dle.network.transport(strangers[0])
        ours_host = note.dle.host(note.chain).address
        assert (await refused(stranger.call(ours_host, "head", note.chain, timeout=5))).code == "forbidden"
        # And the holder of one note reads not the other note.
        holder = note.dle.network.transport(address_of_secret(BUYER))
        assert (await refused(holder.call(host.address, "chain", other.chain, timeout=5))).code == "forbidden"

    run(scenario())


def test_forged_archive_and_member_messages_from_an_outsider_change_nothing(tmp_path: Path) -> None:
    async def scenario() -> None:
        note = await open_note(tmp_path)
        await note.pay(BUYER, ALICE, 1_000)
        before = snapshot(note)
        host = note.dle.host(note.chain)
        record = host.roles(note.chain)
        roles = record.roles
        head = host.store.head(note.chain)
        mallory = address_of_secret(MALLORY)
        outsider = note.dle.network.transport(mallory)
        # A role set naming the outsider creator, as if certified: refused before anyone looks at it.
        grab = replace(roles, version=roles.version + 1, creator=mallory)
        forged_record = RolesRecord(grab, record.certificate).encode()
        to_archive = {
            "endorse_roles": encode_rlp([grab.encode(), b""]),
            "endorse_fault": encode_rlp([grab.encode(), b""]),
            "rollback": forged_record,
            "draw_commit": b"\x01" * 32,
            "draw_reveal": b"\x01" * 32,
            "endorse_draw": b"\x00",
            "expect_genesis": forged_record,
            "endorse_genesis_roles": b"\x00",
            "endorse_registration": encode_rlp([note.chain, note.terms.cash, b"\x07"]),
            "accept": Commit(head.block).encode(),
            "final": Final(head.block, head.certificate).encode(),
        }
        for method, body in to_archive.items():
            for archive in note.dle.archives:
                error = await refused(outsider.call(archive, method, body, timeout=5))
                assert error.code == "forbidden", (method, error)
        to_member = {
            "roles": forged_record,
            "rollback": forged_record,
            "propose": Proposal(roles.version, head.block).encode(),
            "final": Final(head.block, head.certificate).encode(),
        }
        for method, body in to_member.items():
            for member in (roles.creator, *roles.witnesses):
                error = await refused(outsider.call(member, method, body, timeout=5))
                assert error.code == "forbidden", (method, error)
        assert snapshot(note) == before
        assert note.mainchain.faults == []
        # The chain still works for its holder.
        await note.pay(ALICE, BUYER, 100)
        assert note.balance(ALICE) == 1_000 - 100 - 1

    run(scenario())


def test_a_block_from_a_member_of_another_chain_is_refused_by_witnesses(tmp_path: Path) -> None:
    """Only the creator its roles name proposes to a witness; a witness of the chain cannot either."""

    async def scenario() -> None:
        note = await open_note(tmp_path)
        host = note.dle.host(note.chain)
        roles = host.roles(note.chain).roles
        head = host.store.head(note.chain)
        witness = note.dle.network.transport(roles.witnesses[0])
        proposal = Proposal(roles.version, head.block).encode()
        error = await refused(witness.call(roles.witnesses[1], "propose", proposal, timeout=5))
        assert (error.code, "creator" in error.message) == ("forbidden", True)

    run(scenario())


# -- the request signature ----------------------------------------------------------------------------

SERVER = b"\x5e" * 20


def _headers(secret: bytes, method: str, peer: bytes, body: bytes, **kwargs: Any) -> dict[str, str]:
    return sign_request(secret, address_of_secret(secret), method, peer, body, **kwargs)


def test_the_verifier_refuses_forgeries_tampering_staleness_and_replays() -> None:
    now = [1_800_000_000.0]
    verifier = RequestVerifier(SERVER, window=30, clock=lambda: now[0])
    good = _headers(MALLORY, "head", SERVER, b"body", now=now[0])
    assert verifier.verify("head", good, b"body") == address_of_secret(MALLORY)

    def code(method: str, headers: dict[str, str], body: bytes) -> str:
        with pytest.raises(Unauthenticated) as caught:
            verifier.verify(method, headers, body)
        return caught.value.code

    assert code("head", good, b"body") == "replayed"
    fresh = _headers(MALLORY, "head", SERVER, b"body", now=now[0])
    assert code("head", fresh, b"tampered") == "unauthenticated"
    assert code("chain", fresh, b"body") == "unauthenticated"  # signed for another method
    for_other = _headers(MALLORY, "head", b"\x77" * 20, b"body", now=now[0])
    assert code("head", for_other, b"body") == "unauthenticated"  # signed for another node
    claimed = dict(fresh, **{FROM_HEADER: "0x" + address_of_secret(BUYER).hex()})
    assert code("head", claimed, b"body") == "unauthenticated"  # someone else's address
    stale = _headers(MALLORY, "head", SERVER, b"body", now=now[0] - 31)
    assert code("head", stale, b"body") == "stale-request"
    future = _headers(MALLORY, "head", SERVER, b"body", now=now[0] + 31)
    assert code("head", future, b"body") == "stale-request"
    for missing in (FROM_HEADER, TIME_HEADER, NONCE_HEADER, SIGNATURE_HEADER):
        partial = {k: v for k, v in fresh.items() if k != missing}
        assert code("head", partial, b"body") == "unauthenticated"
    # The fresh request was never served: it still passes once, then it is a replay.
    assert verifier.verify("head", fresh, b"body") == address_of_secret(MALLORY)
    # A remembered request is forgotten only once its timestamp is out of the window anyway.
    now[0] += 61
    assert code("head", good, b"body") == "stale-request"
    # The digest is what docs/protocols.md says it is.
    timestamp = int(fresh[TIME_HEADER])
    nonce = bytes.fromhex(fresh[NONCE_HEADER])
    digest = request_digest("head", SERVER, b"body", timestamp, nonce)
    assert sign(MALLORY, digest).hex() == fresh[SIGNATURE_HEADER]


def test_over_http_unsigned_forged_and_replayed_requests_get_401_and_outsiders_403(tmp_path: Path) -> None:
    """A real archive node behind a real socket (its `handle` served by `http_app`)."""

    async def scenario() -> None:
        note = await open_note(tmp_path)
        await note.pay(BUYER, ALICE, 1_000)
        host = note.dle.host(note.chain)
        runner, port = await serve(host.handle, address=host.address)
        url = f"http://127.0.0.1:{port}"
        directory = {host.address: url}
        try:
            async with aiohttp.ClientSession() as raw:
                # No signature at all: 401 and no data.
                async with raw.post(f"{url}/dle/head", data=note.chain) as response:
                    assert response.status == 401
                    assert (await response.json())["code"] == "unauthenticated"
                # Signed by an outsider: 403 and no data.
                headers = _headers(MALLORY, "head", host.address, note.chain)
                async with raw.post(f"{url}/dle/head", data=note.chain, headers=headers) as response:
                    assert response.status == 403
                    body = await response.json()
                    assert body["code"] == "forbidden" and note.chain.hex() not in str(body)
                # Signed by the holder: the head. The same bytes again: a replay, 401.
                headers = _headers(BUYER, "head", host.address, note.chain)
                async with raw.post(f"{url}/dle/head", data=note.chain, headers=headers) as response:
                    assert response.status == 200
                    assert len(await response.read()) > 100
                async with raw.post(f"{url}/dle/head", data=note.chain, headers=headers) as response:
                    assert response.status == 401
                    assert (await response.json())["code"] == "replayed"
                # Signed for another node (a request captured at one archive node, replayed at another).
                elsewhere = _headers(BUYER, "head", b"\x77" * 20, note.chain)
                async with raw.post(f"{url}/dle/head", data=note.chain, headers=elsewhere) as response:
                    assert response.status == 401
            # Through the transports: the codes reach the caller as RemoteError.
            async with HttpTransport(directory) as unsigned:
                assert (await refused(unsigned.call(host.address, "head", note.chain, timeout=5))).code == (
                    "unauthenticated"
                )
            async with HttpTransport(directory, secret=MALLORY) as outsider:
                assert (await refused(outsider.call(host.address, "chain", note.chain, timeout=5))).code == "forbidden"
                assert (await refused(outsider.call(host.address, "draw_commit", b"\x01" * 32, timeout=5))).code == (
                    "forbidden"
                )
            async with HttpTransport(directory, secret=BUYER) as holder:
                for _ in range(3):  # every call a fresh nonce: never mistaken for a replay
                    assert len(await holder.call(host.address, "head", note.chain, timeout=5)) > 100
        finally:
            await runner.cleanup()

    run(scenario())


# -- bounded servers ----------------------------------------------------------------------------------


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def _echo(method: str, body: bytes) -> bytes:
    return body


def test_slowloris_connections_are_bounded_cut_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    """300 connections that send a header line every 0.2 s and never finish, against a node app with
    room for 64: the rest are closed at once, the 64 when they start no request within the idle timeout;
    the server's file descriptors come back; the log has a line or two, not 300; an honest signed
    request is served afterwards."""
    limits = ServerLimits(max_connections=64, idle_timeout=0.5, body_timeout=0.5, log_interval=60)
    server_key = key("server")
    server = address_of_secret(server_key)

    async def scenario() -> None:
        app = http_app(_echo, address=server, limits=limits)
        runner, site = await start_guarded(app, "127.0.0.1", 0, limits=limits)
        # Sockets earlier tests left to the garbage collector would otherwise close mid-count.
        gc.collect()
        baseline = _fds()
        peak = 0
        streams: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        try:
            for _ in range(300):
                streams.append(await asyncio.open_connection("127.0.0.1", site.port))
            opened = _fds()
            assert opened >= baseline + 300  # the attacker's own sockets, in this process

            async def trickle() -> None:
                for writer in (w for _, w in streams):
                    if not writer.is_closing():
                        writer.write(b"POST /dle/head HTTP/1.1\r\nHost: x\r\n")
                for _ in range(10):
                    await asyncio.sleep(0.2)
                    for _, writer in streams:
                        if not writer.is_closing():
                            writer.write(b"X-Slow: 1\r\n")

            dripping = asyncio.create_task(trickle())
            started = time.monotonic()
            while time.monotonic() - started < 2.5:
                peak = max(peak, site.open_connections)
                await asyncio.sleep(0.05)
            await dripping
            assert 0 < peak <= limits.max_connections
            assert site.open_connections == 0, "every stalled connection is closed"
            # The server side holds no descriptor for them any more (only the attacker's remain).
            assert _fds() <= baseline + 300 + 4
            # Every attacker socket was closed by the server: reading gives EOF (or a reset).
            closed = 0
            for reader, _ in streams:
                try:
                    data = await asyncio.wait_for(reader.read(), 1)
                    closed += data == b"" or b"HTTP/1.1" in data
                except (ConnectionError, TimeoutError):
                    closed += 1
            assert closed == 300
        finally:
            for _, writer in streams:
                writer.close()
            await asyncio.sleep(0.1)
        assert _fds() <= baseline + 4
        # An honest request is served once the flood is gone.
        async with HttpTransport({server: f"http://127.0.0.1:{site.port}"}, secret=MALLORY) as honest:
            assert await honest.call(server, "ping", b"hello", timeout=5) == b"hello"
        await runner.cleanup()

    with caplog.at_level(logging.WARNING, logger="offchain.dle.transport"):
        run(scenario(), 60)
    lines = [r for r in caplog.records if r.name == "offchain.dle.transport"]
    assert 1 <= len(lines) <= 4, [r.getMessage() for r in lines]


def test_a_slow_body_is_cut_with_408_and_a_huge_one_refused_with_413() -> None:
    limits = ServerLimits(max_connections=16, idle_timeout=5, body_timeout=0.5)
    server = address_of_secret(key("server"))

    async def scenario() -> None:
        app = http_app(_echo, address=server, max_body=1000, limits=limits)
        runner, site = await start_guarded(app, "127.0.0.1", 0, limits=limits)
        try:
            headers = _headers(MALLORY, "x", server, b"a" * 100)
            head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
            writer.write(f"POST /dle/x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n{head}\r\n".encode() + b"a" * 10)
            started = time.monotonic()
            answer = await asyncio.wait_for(reader.read(), 5)
            assert time.monotonic() - started < 2
            assert answer.startswith(b"HTTP/1.1 408") and b"body-timeout" in answer
            writer.close()
            # A declared body over the limit: 413 before a byte of it is read.
            reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
            writer.write(f"POST /dle/x HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n{head}\r\n".encode())
            answer = await asyncio.wait_for(reader.read(200), 5)
            assert answer.startswith(b"HTTP/1.1 413")
            writer.close()
            assert site.open_connections <= 1
        finally:
            await runner.cleanup()

    run(scenario(), 30)


def test_an_odex_book_node_serves_only_its_members() -> None:
    """The book's DLE entry point over a real socket: a stranger's endorse is refused (403) before
    the member sees it; a member passes the check (and meets the member's own refusals)."""
    creator, member = key("book creator"), key("book member")
    node = address_of_secret(member)
    handler = _dle_handler(node, [address_of_secret(creator), node], None)

    async def scenario() -> None:
        runner, port = await serve(handler, address=node)
        directory = {node: f"http://127.0.0.1:{port}"}
        try:
            async with HttpTransport(directory, secret=MALLORY) as stranger:
                assert await stranger.call(node, "ping", b"", timeout=5) == node
                assert (await refused(stranger.call(node, "endorse", b"\xc0", timeout=5))).code == "forbidden"
            async with HttpTransport(directory, secret=creator) as own:
                # Past the membership check: this node runs no BookMember, so the method is unknown.
                assert (await refused(own.call(node, "endorse", b"\xc0", timeout=5))).code == "unknown-method"
        finally:
            await runner.cleanup()

    run(scenario(), 30)
