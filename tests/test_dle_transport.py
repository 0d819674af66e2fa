"""DLE transports: the same cases through the in-process network and over real HTTP on 127.0.0.1 —
responses, refusals and errors mapped exactly, bounded timeouts, body limits, many parallel calls —
then what only one of them has (fault injection, call counts; wire headers, intermediaries)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from offchain.dle.transport import (
    FROM_HEADER,
    BodyTooLarge,
    Handler,
    HttpTransport,
    InProcessNetwork,
    PeerTimeout,
    PeerUnavailable,
    RemoteError,
    Transport,
    http_app,
    serve,
)

ALICE = b"\xa1" * 20
BOB = b"\xb2" * 20
CAROL = b"\xc3" * 20
NOBODY = b"\x00" * 19 + b"\x01"
LIMIT = 64 * 1024


class Harness:
    """Nodes brought up and down, and transports to reach them — in process or over HTTP."""

    async def up(self, address: bytes, handler: Handler) -> None:
        raise NotImplementedError

    async def down(self, address: bytes) -> None:
        raise NotImplementedError

    def transport(self, own: bytes) -> Transport:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class InProcess(Harness):
    def __init__(self) -> None:
        self.network = InProcessNetwork(max_body=LIMIT)

    async def up(self, address: bytes, handler: Handler) -> None:
        self.network.register(address, handler)

    async def down(self, address: bytes) -> None:
        self.network.unregister(address)

    def transport(self, own: bytes) -> Transport:
        return self.network.transport(own)

    async def close(self) -> None:
        await self.network.aclose()


class Http(Harness):
    def __init__(self) -> None:
        self.directory: dict[bytes, str] = {}
        self.runners: dict[bytes, web.AppRunner] = {}
        self.transports: list[HttpTransport] = []

    async def up(self, address: bytes, handler: Handler) -> None:
        runner, port = await serve(handler, address=None, max_body=LIMIT)
        self.runners[address] = runner
        self.directory[address] = f"http://127.0.0.1:{port}"

    async def down(self, address: bytes) -> None:
        # The directory still lists it: a killed node's address is known, nothing answers there.
        await self.runners.pop(address).cleanup()

    def transport(self, own: bytes) -> Transport:
        transport = HttpTransport(self.directory, own_address=own, max_body=LIMIT)
        self.transports.append(transport)
        return transport

    async def close(self) -> None:
        for transport in self.transports:
            await transport.aclose()
        for runner in self.runners.values():
            await runner.cleanup()


Scenario = Callable[[Harness], Awaitable[None]]


def run(kind: str, scenario: Scenario) -> None:
    async def main() -> None:
        harness: Harness = InProcess() if kind == "inprocess" else Http()
        try:
            # Nothing here may take long: a hung scenario fails instead of hanging the suite.
            async with asyncio.timeout(30):
                await scenario(harness)
        finally:
            await harness.close()

    asyncio.run(main())


both = pytest.mark.parametrize("kind", ["inprocess", "http"])


async def echo(method: str, body: bytes) -> bytes:
    return method.encode() + b":" + body


@both
def test_round_trip(kind: str) -> None:
    async def scenario(h: Harness) -> None:
        await h.up(BOB, echo)
        t = h.transport(ALICE)
        assert await t.call(BOB, "ping", b"", timeout=5) == b"ping:"
        payload = bytes(range(256)) * 10
        assert await t.call(BOB, "dle.submit_v1", payload, timeout=5) == b"dle.submit_v1:" + payload
        big = b"\x00" * (LIMIT - 20)  # just under both limits, both ways
        assert await t.call(BOB, "x", big, timeout=5) == b"x:" + big

    run(kind, scenario)


@both
def test_remote_error_is_preserved(kind: str) -> None:
    async def refuse(method: str, body: bytes) -> bytes:
        raise RemoteError("not-extending-head", "height 4 is not 3 — “quoted” ünïcode")

    async def scenario(h: Harness) -> None:
        await h.up(BOB, refuse)
        with pytest.raises(RemoteError) as refused:
            await h.transport(ALICE).call(BOB, "append", b"block", timeout=5)
        assert refused.value.code == "not-extending-head"
        assert refused.value.message == "height 4 is not 3 — “quoted” ünïcode"

    run(kind, scenario)


@both
def test_handler_bug_is_an_internal_remote_error(kind: str) -> None:
    async def buggy(method: str, body: bytes) -> bytes:
        raise KeyError("missing-thing")

    async def scenario(h: Harness) -> None:
        await h.up(BOB, buggy)
        with pytest.raises(RemoteError) as failed:
            await h.transport(ALICE).call(BOB, "x", b"", timeout=5)
        assert failed.value.code == "internal"
        assert "KeyError" in failed.value.message and "missing-thing" in failed.value.message

    run(kind, scenario)


@both
def test_unknown_and_killed_peers_are_unavailable(kind: str) -> None:
    async def scenario(h: Harness) -> None:
        await h.up(BOB, echo)
        t = h.transport(ALICE)
        with pytest.raises(PeerUnavailable) as unknown:
            await t.call(NOBODY, "x", b"", timeout=5)
        assert unknown.value.peer == NOBODY
        assert await t.call(BOB, "x", b"1", timeout=5) == b"x:1"
        await h.down(BOB)
        started = time.monotonic()
        with pytest.raises(PeerUnavailable):
            await t.call(BOB, "x", b"2", timeout=5)
        assert time.monotonic() - started < 2  # refused at once, not after the timeout
        await h.up(BOB, echo)  # back up (over HTTP on a new port)
        assert await t.call(BOB, "x", b"3", timeout=5) == b"x:3"

    run(kind, scenario)


@both
def test_timeout_is_bounded(kind: str) -> None:
    release = asyncio.Event()

    async def slow(method: str, body: bytes) -> bytes:
        await release.wait()
        return b"late"

    async def scenario(h: Harness) -> None:
        await h.up(BOB, slow)
        started = time.monotonic()
        with pytest.raises(PeerTimeout) as timed_out:
            await h.transport(ALICE).call(BOB, "slow", b"", timeout=0.3)
        elapsed = time.monotonic() - started
        assert 0.29 <= elapsed < 1.5
        assert (timed_out.value.peer, timed_out.value.method, timed_out.value.timeout) == (BOB, "slow", 0.3)
        release.set()

    run(kind, scenario)


@both
def test_oversized_bodies_are_refused(kind: str) -> None:
    seen: list[int] = []

    async def handler(method: str, body: bytes) -> bytes:
        seen.append(len(body))
        return b"r" * int(body or b"0")

    async def scenario(h: Harness) -> None:
        await h.up(BOB, handler)
        t = h.transport(ALICE)
        with pytest.raises(BodyTooLarge) as too_big:
            await t.call(BOB, "x", b"1" * (LIMIT + 1), timeout=5)
        assert (too_big.value.what, too_big.value.size, too_big.value.limit) == ("request", LIMIT + 1, LIMIT)
        assert seen == []  # never sent
        assert await t.call(BOB, "x", str(LIMIT).encode(), timeout=5) == b"r" * LIMIT
        if kind == "inprocess":  # the caller's check refuses the response
            with pytest.raises(BodyTooLarge) as response_too_big:
                await t.call(BOB, "x", str(LIMIT + 1).encode(), timeout=5)
            assert response_too_big.value.what == "response"
        else:  # the server refuses to send it (the caller's side: test_http_server_limits_and_paths)
            with pytest.raises(RemoteError) as refused:
                await t.call(BOB, "x", str(LIMIT + 1).encode(), timeout=5)
            assert refused.value.code == "response-too-large"

    run(kind, scenario)


@both
def test_many_parallel_calls(kind: str) -> None:
    in_flight = 0
    peak = 0

    async def handler(method: str, body: bytes) -> bytes:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.2)
        in_flight -= 1
        return body[::-1]

    async def scenario(h: Harness) -> None:
        await h.up(BOB, handler)
        await h.up(CAROL, handler)
        t = h.transport(ALICE)
        bodies = [f"request {i}".encode() for i in range(200)]
        started = time.monotonic()
        results = await asyncio.gather(
            *(t.call(BOB if i % 2 else CAROL, "rev", body, timeout=10) for i, body in enumerate(bodies))
        )
        assert results == [body[::-1] for body in bodies]
        assert time.monotonic() - started < 5  # 200 calls of 0.2 s one after another: 40 s
        assert peak >= 50

    run(kind, scenario)


@both
def test_bad_arguments_fail_locally(kind: str) -> None:
    async def scenario(h: Harness) -> None:
        await h.up(BOB, echo)
        t = h.transport(ALICE)
        with pytest.raises(ValueError):
            await t.call(BOB, "no/slash", b"", timeout=1)
        with pytest.raises(ValueError):
            await t.call(BOB, "", b"", timeout=1)
        with pytest.raises(ValueError):
            await t.call(BOB, "x", b"", timeout=0)
        with pytest.raises(TypeError):
            await t.call(BOB[:10], "x", b"", timeout=1)
        with pytest.raises(TypeError):
            await t.call(BOB, "x", "text", timeout=1)  # type: ignore[arg-type]

    run(kind, scenario)


def test_remote_error_codes_are_checked() -> None:
    with pytest.raises(ValueError):
        RemoteError("has space", "m")
    with pytest.raises(ValueError):
        RemoteError("", "m")
    assert RemoteError("ok-code", "x" * 5000).message == "x" * 1024


# -- in-process only ---------------------------------------------------------------------------------------


def test_inprocess_delay_drop_heal_and_counts() -> None:
    async def main() -> None:
        net = InProcessNetwork()
        received: list[bytes] = []

        async def handler(method: str, body: bytes) -> bytes:
            received.append(body)
            return b"ok"

        net.register(BOB, handler)
        t = net.transport(ALICE)
        net.delay(BOB, 0.2)
        started = time.monotonic()
        assert await t.call(BOB, "a", b"1", timeout=2) == b"ok"
        assert time.monotonic() - started >= 0.2
        # a delay beyond the timeout: the caller gives up, the request still arrives later
        with pytest.raises(PeerTimeout):
            await t.call(BOB, "a", b"2", timeout=0.05)
        assert received == [b"1"]
        await asyncio.sleep(0.3)
        assert received == [b"1", b"2"]
        net.heal(BOB)
        net.drop(BOB)
        started = time.monotonic()
        with pytest.raises(PeerTimeout):
            await t.call(BOB, "b", b"3", timeout=0.2)
        assert 0.19 <= time.monotonic() - started < 1
        await asyncio.sleep(0.1)
        assert received == [b"1", b"2"]  # dropped: never delivered
        net.heal(BOB)
        assert await t.call(BOB, "b", b"4", timeout=1) == b"ok"
        assert net.calls == {"a": 2, "b": 2}
        assert net.calls_to(BOB) == {"a": 2, "b": 2}
        assert net.calls_to(CAROL) == {}
        assert net.traffic["a"] == 1 + 2 + 1  # two 1-byte requests, one 2-byte answer (the other came too late)
        await net.aclose()

    asyncio.run(main())


def test_inprocess_kill_during_a_call() -> None:
    async def main() -> None:
        net = InProcessNetwork()
        started = asyncio.Event()

        async def handler(method: str, body: bytes) -> bytes:
            started.set()
            await asyncio.sleep(10)
            return b"never"

        net.register(BOB, handler)
        call = asyncio.create_task(net.transport(ALICE).call(BOB, "x", b"", timeout=5))
        await asyncio.wait_for(started.wait(), 1)
        net.unregister(BOB)
        with pytest.raises(PeerUnavailable, match="went down"):
            await asyncio.wait_for(call, 1)

    asyncio.run(main())


def test_inprocess_bodies_are_copies() -> None:
    async def main() -> None:
        net = InProcessNetwork()
        kept: list[bytes] = []

        async def handler(method: str, body: bytes) -> bytes:
            kept.append(body)
            return body

        net.register(BOB, handler)
        assert await net.transport(ALICE).call(BOB, "x", b"abc", timeout=1) == b"abc"
        assert type(kept[0]) is bytes

    asyncio.run(main())


# -- HTTP only ---------------------------------------------------------------------------------------------


async def _plain_server(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> tuple[Any, str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


def test_http_wire_conventions() -> None:
    """POST /dle/{method}, raw octet-stream body, X-DLE-From of the caller."""
    seen: list[tuple[str, str, str, str | None, bytes]] = []

    async def record(request: web.Request) -> web.StreamResponse:
        seen.append(
            (request.method, request.path, request.content_type, request.headers.get(FROM_HEADER), await request.read())
        )
        return web.Response(body=b"answer", content_type="application/octet-stream")

    async def main() -> None:
        runner, url = await _plain_server(record)
        try:
            async with HttpTransport({BOB: url}, own_address=ALICE) as t:
                assert await t.call(BOB, "commit", b"\x00\x01", timeout=5) == b"answer"
            async with HttpTransport(lambda peer: url if peer == BOB else None) as anonymous:
                assert await anonymous.call(BOB, "reveal", b"", timeout=5) == b"answer"
                with pytest.raises(PeerUnavailable, match="directory"):
                    await anonymous.call(CAROL, "reveal", b"", timeout=5)
        finally:
            await runner.cleanup()
        assert seen == [
            ("POST", "/dle/commit", "application/octet-stream", "0x" + ALICE.hex(), b"\x00\x01"),
            ("POST", "/dle/reveal", "application/octet-stream", None, b""),
        ]

    asyncio.run(main())


def test_http_status_mapping() -> None:
    """What an intermediary or a foreign server answers: JSON errors → RemoteError, gateway errors →
    PeerUnavailable, anything else non-2xx → RemoteError("http-<status>")."""

    async def handler(request: web.Request) -> web.StreamResponse:
        kind = request.match_info["tail"].rsplit("/", 1)[-1]
        if kind == "json":
            return web.json_response({"code": "stale-roles", "message": "version 3 < 4"}, status=409)
        if kind == "gateway":
            return web.Response(status=503, text="upstream down")
        return web.Response(status=418, text="I'm a teapot")

    async def main() -> None:
        runner, url = await _plain_server(handler)
        try:
            async with HttpTransport({BOB: url}) as t:
                with pytest.raises(RemoteError) as as_json:
                    await t.call(BOB, "json", b"", timeout=5)
                assert (as_json.value.code, as_json.value.message) == ("stale-roles", "version 3 < 4")
                with pytest.raises(PeerUnavailable, match="503"):
                    await t.call(BOB, "gateway", b"", timeout=5)
                with pytest.raises(RemoteError) as other:
                    await t.call(BOB, "teapot", b"", timeout=5)
                assert (other.value.code, other.value.message) == ("http-418", "I'm a teapot")
        finally:
            await runner.cleanup()

    asyncio.run(main())


def test_http_server_limits_and_paths() -> None:
    async def main() -> None:
        runner, port = await serve(echo, address=None, max_body=1000)
        url = f"http://127.0.0.1:{port}"
        try:
            # the caller allows more than this server: the server refuses with 413 body-too-large
            async with HttpTransport({BOB: url}, max_body=10_000) as t:
                with pytest.raises(RemoteError) as refused:
                    await t.call(BOB, "x", b"a" * 1001, timeout=5)
                assert refused.value.code == "body-too-large"
                # a response over the server's own limit is refused by the server
                with pytest.raises(RemoteError) as response:
                    await t.call(BOB, "x", b"a" * 999, timeout=5)
                assert response.value.code == "response-too-large"
            # the caller allows less than the server sends: refused while reading
            async with HttpTransport({BOB: url}, max_body=100) as small:
                with pytest.raises(BodyTooLarge) as caller_side:
                    await small.call(BOB, "x", b"a" * 99, timeout=5)
                assert caller_side.value.what == "response"
            async with HttpTransport({BOB: url + "/other"}) as wrong:
                with pytest.raises(RemoteError) as unknown:
                    await wrong.call(BOB, "x", b"", timeout=5)
                assert unknown.value.code == "unknown-path"
        finally:
            await runner.cleanup()

    asyncio.run(main())


def test_http_handler_bug_and_non_bytes() -> None:
    """An http_app mounted by hand, and handlers that misbehave."""

    async def wrong_type(method: str, body: bytes) -> bytes:
        return "text"  # type: ignore[return-value]

    async def main() -> None:
        runner = web.AppRunner(http_app(wrong_type, address=None))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        try:
            async with HttpTransport({BOB: f"http://127.0.0.1:{runner.addresses[0][1]}"}) as t:
                with pytest.raises(RemoteError) as failed:
                    await t.call(BOB, "x", b"", timeout=5)
                assert failed.value.code == "internal"
        finally:
            await runner.cleanup()

    asyncio.run(main())


def test_http_timeouts_bound_a_silent_server_and_refused_ports() -> None:
    """A peer that accepts the connection and never answers a byte; a port where nothing listens."""

    async def main() -> None:
        held: list[asyncio.StreamWriter] = []

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            held.append(writer)

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        free_runner, free_port = await serve(echo, address=None)
        await free_runner.cleanup()  # a port that was just bound and is now closed
        try:
            async with HttpTransport({BOB: f"http://127.0.0.1:{port}", CAROL: f"http://127.0.0.1:{free_port}"}) as t:
                started = time.monotonic()
                with pytest.raises(PeerTimeout):
                    await t.call(BOB, "x", b"", timeout=0.3)
                assert time.monotonic() - started < 1.5
                with pytest.raises(PeerUnavailable):
                    await t.call(CAROL, "x", b"", timeout=5)
        finally:
            for writer in held:
                writer.close()
            server.close()
            await server.wait_closed()

    asyncio.run(main())
