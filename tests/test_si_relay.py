"""The SI relay against real servers on 127.0.0.1: a node stub written here (a real aiohttp server that
records what reaches it), the relay in process and as `python -m offchain.si.relay`, clients on raw
sockets where the exact bytes or the reuse of one connection matter."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils.address import to_checksum_address

from offchain.si import KeyPair, seal, sealed_size
from offchain.si.directory import NodeInfo, StaticDirectory
from offchain.si.disguise import INDEX_HTML, SERVER
from offchain.si.envelope import HEADER_SIZE, LAYER_OVERHEAD, open_inner, open_outer, parse_envelope
from offchain.si.errors import (
    BadMagic,
    MalformedEnvelope,
    OversizedEnvelope,
    TruncatedEnvelope,
    UnsupportedVersion,
)
from offchain.si.receipt import (
    DOMAIN_NAME,
    DOMAIN_VERSION,
    RECEIPT_HEADER,
    TAG_PREFIX_SIZE,
    BadReceiptSignature,
    MalformedReceipt,
    ReceiptMismatch,
    RelayReceipt,
    StaleReceipt,
    envelope_tag,
    sign_receipt,
    verify_receipt,
)
from offchain.si.relay import (
    RELAY_KEY,
    KeyFileError,
    Relay,
    RelayConfig,
    create_relay_app,
    load_key_file,
    parse_prefix,
    serve,
)

ROOT = Path(__file__).resolve().parents[1]
SECRET_CONTENT = b"the secret content nobody but the recipient may read"


def run(coro: Coroutine[Any, Any, Any], timeout: float = 20.0) -> Any:
    """Run a test's coroutine with a bound on its whole duration."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def envelope(node: KeyPair, content: bytes = SECRET_CONTENT, recipient: KeyPair | None = None) -> bytes:
    return seal(KeyPair.generate(), (recipient or KeyPair.generate()).public_key, node.public_key, content)


# ---------------------------------------------------------------------- the node stub


@dataclass
class Received:
    body: bytes
    headers: dict[str, str]
    remote: str | None


@dataclass
class NodeStub:
    """A real HTTP server standing in for a recipient node: records every POST /post and answers with
    `behaviour` (default: 200 with "ok <size>")."""

    key: KeyPair = field(default_factory=KeyPair.generate)
    received: list[Received] = field(default_factory=list)
    behaviour: Callable[[web.Request, bytes], Awaitable[web.StreamResponse]] | None = None
    read_body: bool = True
    url: str = ""
    _runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read() if self.read_body else b""
        self.received.append(Received(body, dict(request.headers), request.remote))
        if self.behaviour is not None:
            return await self.behaviour(request, body)
        return web.Response(body=f"ok {len(body)}".encode(), content_type="text/plain")

    async def start(self) -> NodeStub:
        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.router.add_post("/post", self.handle)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def info(self) -> NodeInfo:
        return NodeInfo(self.key.address, self.url, self.key.public_key_64)


@asynccontextmanager
async def relay_for(
    *nodes: NodeInfo, config: RelayConfig | None = None, key: KeyPair | None = None
) -> AsyncIterator[tuple[Relay, str]]:
    app = create_relay_app(StaticDirectory(nodes), key or KeyPair.generate(), config)
    runner, port = await serve(app, "127.0.0.1", 0)
    try:
        yield app[RELAY_KEY], f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def stub_and_relay(
    config: RelayConfig | None = None, key: KeyPair | None = None, **stub: Any
) -> AsyncIterator[tuple[NodeStub, Relay, str]]:
    node = await NodeStub(**stub).start()
    try:
        async with relay_for(node.info, config=config, key=key) as (relay, url):
            yield node, relay, url
    finally:
        await node.stop()


# ---------------------------------------------------------------------- raw HTTP, where bytes matter


@dataclass
class RawResponse:
    status_line: str
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def status(self) -> int:
        return int(self.status_line.split()[1])

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key.lower() == name.lower()), None)


async def read_response(reader: asyncio.StreamReader, head: bool = False) -> RawResponse:
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    headers = [tuple(part.strip() for part in line.split(":", 1)) for line in lines[1:] if line]
    response = RawResponse(lines[0], headers, b"")  # type: ignore[arg-type]
    length = response.header("Content-Length")
    if not head and length is not None:
        response.body = await reader.readexactly(int(length))
    return response


def request_bytes(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: relay.example"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def exchange(url: str, *requests: bytes, head: bool = False) -> list[RawResponse]:
    """Send `requests` one after the other on ONE connection; each answer is read before the next."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        answers = []
        for data in requests:
            writer.write(data)
            await writer.drain()
            answers.append(await read_response(reader, head=head))
        return answers
    finally:
        writer.close()


def assert_nginx_page(response: RawResponse, status: int, title: str) -> None:
    assert response.status_line == f"HTTP/1.1 {title}"
    assert response.status == status
    assert response.header("Server") == SERVER
    assert response.header("Content-Type") == "text/html"
    assert (
        response.header(
            "Date",
        )
        is not None
    )
    expected = (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1></center>\r\n"
        f"<hr><center>{SERVER}</center>\r\n</body>\r\n</html>\r\n"
    ).encode()
    assert response.body == expected
    assert not any("aiohttp" in value.lower() or "python" in value.lower() for _, value in response.headers)


# ---------------------------------------------------------------------- the header-only parser


def test_parse_prefix_reads_destination_and_size_from_the_first_74_bytes() -> None:
    node = KeyPair.generate()
    data = envelope(node)
    prefix = parse_prefix(data[:TAG_PREFIX_SIZE])
    assert prefix.destination == node.address == parse_envelope(data).key_id
    assert prefix.size == len(data) == sealed_size(len(SECRET_CONTENT))
    assert prefix.version == 1


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", TruncatedEnvelope),
        (b"CN", TruncatedEnvelope),
        (b"CNSI", TruncatedEnvelope),
        (b"GET / HTTP/1.1\r\n", BadMagic),
        (b"CNSI\x02" + bytes(100), UnsupportedVersion),
        (b"CNSI\x01" + bytes(10), TruncatedEnvelope),
        (b"CNSI\x01" + bytes(20) + (2_000_000).to_bytes(4, "big") + bytes(45), OversizedEnvelope),
        (b"CNSI\x01" + bytes(20) + (60).to_bytes(4, "big") + bytes(45), MalformedEnvelope),
        (b"CNSI\x01" + bytes(20) + (1000).to_bytes(4, "big") + bytes(45), MalformedEnvelope),
        (b"CNSI\x01" + bytes(20) + (1024 + 61).to_bytes(4, "big") + bytes(10), TruncatedEnvelope),
    ],
)
def test_parse_prefix_refuses_like_parse_envelope(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_prefix(data)
    if len(data) >= HEADER_SIZE and error is not TruncatedEnvelope:
        with pytest.raises(error):  # the whole-envelope parser agrees on the reason
            parse_envelope(data[:HEADER_SIZE] + bytes(int.from_bytes(data[25:29], "big")))


# ---------------------------------------------------------------------- receipts


def test_receipt_is_eip712_and_verifies_and_forgeries_fail() -> None:
    relay, node, other = KeyPair.generate(), KeyPair.generate(), KeyPair.generate()
    data = envelope(node)
    now = 1_700_000_000_000
    receipt = sign_receipt(relay, node=node.address, envelope_prefix=data[:TAG_PREFIX_SIZE], byte_count=len(data),
                           timestamp_ms=now)  # fmt: skip
    header = receipt.encode()
    assert len(header) == 306
    checked = verify_receipt(header, node=node.address, envelope=data, now_ms=now + 1000)
    assert (checked.relay, checked.byte_count, checked.envelope_tag) == (relay.address, len(data), envelope_tag(data))

    # The digest is EIP-712 as eth-account computes it; any wallet recovers the relay from it.
    typed = {
        "types": {
            "EIP712Domain": [{"name": "name", "type": "string"}, {"name": "version", "type": "string"}],
            "RelayReceipt": [
                {"name": "relay", "type": "address"},
                {"name": "node", "type": "address"},
                {"name": "byteCount", "type": "uint256"},
                {"name": "envelopeTag", "type": "bytes32"},
                {"name": "timestampMs", "type": "uint64"},
            ],
        },
        "primaryType": "RelayReceipt",
        "domain": {"name": DOMAIN_NAME, "version": DOMAIN_VERSION},
        "message": {
            "relay": to_checksum_address(relay.address),
            "node": to_checksum_address(node.address),
            "byteCount": len(data),
            "envelopeTag": envelope_tag(data),
            "timestampMs": now,
        },
    }
    signable = encode_typed_data(full_message=typed)
    assert Account.recover_message(signable, signature=receipt.signature) == relay.checksum_address
    assert Account.sign_message(signable, relay.secret).signature == receipt.signature

    def altered(**changes: Any) -> RelayReceipt:
        fields = {name: getattr(receipt, name) for name in RelayReceipt.__dataclass_fields__}
        fields.update(changes)
        return RelayReceipt(**fields)

    # A relay inflating its count after signing, or someone else signing in its name, is caught by the
    # signature; wrong node, envelope, size or a stale time by the comparisons.
    bigger = altered(byte_count=len(data) + 1)
    with pytest.raises(BadReceiptSignature):
        verify_receipt(bigger, node=node.address, envelope=data + b"x", now_ms=now)
    impostor = sign_receipt(other, node=node.address, envelope_prefix=data, byte_count=len(data), timestamp_ms=now)
    with pytest.raises(BadReceiptSignature):
        verify_receipt(altered(signature=impostor.signature), node=node.address, envelope=data, now_ms=now)
    with pytest.raises(ReceiptMismatch):
        verify_receipt(header, node=other.address, envelope=data, now_ms=now)
    with pytest.raises(ReceiptMismatch):
        verify_receipt(header, node=node.address, envelope=envelope(node), now_ms=now)
    with pytest.raises(ReceiptMismatch):
        verify_receipt(header, node=node.address, envelope=data[:-1], now_ms=now)
    with pytest.raises(StaleReceipt):
        verify_receipt(header, node=node.address, envelope=data, now_ms=now + 10 * 60 * 1000)
    for junk in ("", header[:-2], header + "00", "zz" + header[2:], " " + header[1:]):
        with pytest.raises(MalformedReceipt):
            verify_receipt(junk, node=node.address, envelope=data, now_ms=now)
    flipped = header[:100] + ("0" if header[100] != "0" else "1") + header[101:]
    with pytest.raises((BadReceiptSignature, ReceiptMismatch)):
        verify_receipt(flipped, node=node.address, envelope=data, now_ms=now)


# ---------------------------------------------------------------------- forwarding


def test_forwards_the_envelope_byte_for_byte_with_a_receipt_and_nothing_of_the_client() -> None:
    async def main() -> None:
        relay_key = KeyPair.generate()
        async with stub_and_relay(key=relay_key) as (node, relay, url):
            recipient = KeyPair.generate()
            small = envelope(node.key, recipient=recipient)
            large = envelope(node.key, os.urandom(300_000), recipient=recipient)  # streamed, not buffered
            async with aiohttp.ClientSession() as session:
                for data in (small, large):
                    async with session.post(
                        f"{url}/post",
                        data=data,
                        headers={
                            "X-Forwarded-For": "203.0.113.7",
                            "Cookie": "session=abc",
                            "User-Agent": "ClientApp/1.0",
                            "Accept": "application/octet-stream",
                        },
                    ) as response:
                        assert response.status == 200
                        assert await response.read() == f"ok {len(data)}".encode()
                        assert response.headers["Server"] == SERVER
                        assert response.headers["Content-Type"] == "text/plain"
            assert [r.body for r in node.received] == [small, large]
            for got, data in zip(node.received, (small, large), strict=True):
                receipt = verify_receipt(got.headers[RECEIPT_HEADER], node=node.key.address, envelope=got.body)
                assert receipt.relay == relay_key.address and receipt.byte_count == len(data)
                # Only what the relay chose to send: no IP, cookie or user agent of the client's.
                names = {name.lower() for name in got.headers}
                assert names <= {"host", "content-type", "content-length", "accept", RECEIPT_HEADER.lower()}
                assert got.headers["Accept"] == "application/octet-stream"
                assert "203.0.113.7" not in json.dumps(got.headers)
                # The node opens what it got; the content survived the trip.
                assert open_inner(open_outer(got.body, node.key).inner, recipient).content == (
                    SECRET_CONTENT if data is small else open_inner(open_outer(data, node.key).inner, recipient).content
                )
            assert relay.stats.forwarded == 2 and relay.stats.bytes_forwarded == len(small) + len(large)

    run(main())


def test_a_chunked_upload_streams_up_and_a_large_answer_streams_down() -> None:
    big_answer = os.urandom(3 * 1024 * 1024)

    async def answer(request: web.Request, body: bytes) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = len(big_answer)
        await response.prepare(request)
        for start in range(0, len(big_answer), 256 * 1024):
            await response.write(big_answer[start : start + 256 * 1024])
        await response.write_eof()
        return response

    async def main() -> None:
        async with stub_and_relay(behaviour=answer) as (node, _, url):
            data = envelope(node.key, os.urandom(200_000))

            async def pieces() -> AsyncIterator[bytes]:
                for start in range(0, len(data), 10_000):
                    yield data[start : start + 10_000]
                    await asyncio.sleep(0)

            async with aiohttp.ClientSession() as session, session.post(f"{url}/post", data=pieces()) as response:
                assert response.status == 200
                assert response.headers["Content-Length"] == str(len(big_answer))
                assert await response.read() == big_answer
            assert node.received[0].body == data
            assert node.received[0].headers["Content-Length"] == str(len(data))  # the relay knows the size

    run(main())


def test_an_event_stream_passes_through_live_one_event_at_a_time() -> None:
    """The stub sends event n+1 only after the client has received event n through the relay, so the
    test can only pass if every event is delivered before the stream ends."""

    async def main() -> None:
        client_got = [asyncio.Event() for _ in range(3)]

        async def stream(request: web.Request, body: bytes) -> web.StreamResponse:
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
            await response.prepare(request)
            for index in range(3):
                await response.write(f"id: {index}\ndata: event {index}\n\n".encode())
                await asyncio.wait_for(client_got[index].wait(), 5)
            await response.write_eof()
            return response

        async with stub_and_relay(behaviour=stream) as (node, _, url):
            async with (
                aiohttp.ClientSession() as session,
                session.post(f"{url}/post", data=envelope(node.key), headers={"Accept": "text/event-stream"}) as r,
            ):
                assert r.status == 200
                assert r.headers["Content-Type"] == "text/event-stream"
                assert r.headers["Cache-Control"] == "no-cache"
                assert r.headers["Server"] == SERVER
                for index in range(3):
                    event = await asyncio.wait_for(r.content.readuntil(b"\n\n"), 5)
                    assert event == f"id: {index}\ndata: event {index}\n\n".encode()
                    client_got[index].set()
                assert await r.content.read() == b""
            assert node.received[0].headers["Accept"] == "text/event-stream"

    run(main())


def test_a_client_that_leaves_an_event_stream_closes_the_upstream() -> None:
    async def main() -> None:
        dropped = asyncio.Event()
        opened = asyncio.Event()

        async def stream(request: web.Request, body: bytes) -> web.StreamResponse:
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await response.write(b"data: hello\n\n")
            opened.set()
            try:
                await asyncio.sleep(30)  # idle: only the relay closing the connection ends this
            except asyncio.CancelledError:
                dropped.set()
                raise
            return response

        async with stub_and_relay(behaviour=stream) as (node, _, url):
            session = aiohttp.ClientSession()
            response = await session.post(f"{url}/post", data=envelope(node.key))
            assert await asyncio.wait_for(response.content.readuntil(b"\n\n"), 5) == b"data: hello\n\n"
            await asyncio.wait_for(opened.wait(), 5)
            assert not dropped.is_set()
            response.close()  # the client goes away mid-stream
            await session.close()
            await asyncio.wait_for(dropped.wait(), 5)

    run(main())


def test_a_node_that_breaks_off_or_idles_past_the_limit_breaks_the_clients_answer_too() -> None:
    """An answer that has begun cannot turn into an error page: the relay ends the client's connection
    without the final chunk, so a cut answer never looks complete."""

    async def main() -> None:
        dropped = asyncio.Event()

        async def behaviour(request: web.Request, body: bytes) -> web.StreamResponse:
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await response.write(b"data: one\n\n")
            if len(body) > 2000:  # the larger envelope: the node dies mid-answer
                assert request.transport is not None
                request.transport.abort()
                return response
            try:
                await asyncio.sleep(30)  # the smaller one: the node goes quiet
            except asyncio.CancelledError:
                dropped.set()
                raise
            return response

        config = RelayConfig(stream_idle_timeout=0.5, disconnect_poll=0.1)
        async with stub_and_relay(config=config, behaviour=behaviour) as (node, relay, url):
            async with aiohttp.ClientSession() as session:
                for content in (b"x" * 1500, b"y"):
                    async with session.post(f"{url}/post", data=envelope(node.key, content)) as response:
                        assert response.status == 200
                        assert await response.content.readuntil(b"\n\n") == b"data: one\n\n"
                        with pytest.raises(aiohttp.ClientPayloadError):
                            await asyncio.wait_for(response.content.read(), 5)
            await asyncio.wait_for(dropped.wait(), 5)  # the idle node's connection was closed as well
            assert relay.stats.refused["upstream-broken"] == 2

    run(main())


def test_a_client_that_stalls_mid_upload_gets_408_and_the_node_never_gets_a_whole_envelope() -> None:
    async def main() -> None:
        async with stub_and_relay(config=RelayConfig(client_body_timeout=0.5)) as (node, relay, url):
            data = envelope(node.key, os.urandom(100_000))  # above the buffer size: streamed up
            host, port = url.removeprefix("http://").split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            head = f"POST /post HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n\r\n".encode()
            writer.write(head + data[:50_000])  # then nothing more
            answer = await asyncio.wait_for(read_response(reader), 5)
            writer.close()
            assert_nginx_page(answer, 408, "408 Request Time-out")
            assert relay.stats.refused["client-timeout"] == 1
            assert all(r.body != data for r in node.received)

    run(main())


def test_an_oversized_body_gets_413_and_the_connection_serves_the_next_request() -> None:
    async def main() -> None:
        async with stub_and_relay() as (node, relay, url):
            too_big = os.urandom(relay.config.max_body_size + 1)
            good = envelope(node.key)
            first, second = await exchange(
                url, request_bytes("POST", "/post", too_big), request_bytes("POST", "/post", good)
            )
            assert_nginx_page(first, 413, "413 Request Entity Too Large")
            assert first.header("Connection") == "keep-alive"
            assert second.status == 200 and second.body == f"ok {len(good)}".encode()
            assert [r.body for r in node.received] == [good]
            assert relay.stats.refused["too-large"] == 1

    run(main())


def test_malformed_truncated_and_wrong_version_envelopes_get_400_and_the_relay_keeps_serving() -> None:
    async def main() -> None:
        async with stub_and_relay() as (node, relay, url):
            good = envelope(node.key)
            version_2 = good[:4] + b"\x02" + good[5:]
            not_a_bucket = good[:25] + (len(good) - HEADER_SIZE + 1).to_bytes(4, "big") + good[29:] + b"\x00"
            cases = {
                "junk": os.urandom(2000),
                "empty": b"",
                "header only": good[:HEADER_SIZE],
                "truncated": good[:-1],
                "wrong version": version_2,
                "not a bucket": not_a_bucket,
                "trailing bytes": good + b"\x00",
            }
            for name, data in cases.items():
                (answer,) = await exchange(url, request_bytes("POST", "/post", data))
                assert answer.status == 400, name
                assert_nginx_page(answer, 400, "400 Bad Request")
                assert answer.header("Connection") == "close"  # as nginx after a 400
            # A Content-Length that disagrees with the header, and a truncated chunked body.
            async with aiohttp.ClientSession() as session:

                async def short() -> AsyncIterator[bytes]:
                    yield good[:500]

                async with session.post(f"{url}/post", data=short()) as response:
                    assert response.status == 400
                    assert await response.read() == (
                        b"<html>\r\n<head><title>400 Bad Request</title></head>\r\n<body>\r\n<center><h1>400 Bad "
                        b"Request</h1></center>\r\n<hr><center>nginx/1.24.0</center>\r\n</body>\r\n</html>\r\n"
                    )
                # Still serving.
                async with session.post(f"{url}/post", data=good) as response:
                    assert response.status == 200
            assert [r.body for r in node.received if len(r.body) == len(good)] == [good]
            assert all(r.body == good for r in node.received if r.body)  # nothing malformed arrived whole
            assert sum(relay.stats.refused.values()) == len(cases) + 1
            assert relay.stats.refused["UnsupportedVersion"] == 1 and relay.stats.refused["BadMagic"] == 1

    run(main())


def test_unknown_node_is_nginx_404_and_a_down_or_silent_node_is_502_or_504() -> None:
    async def never(request: web.Request, body: bytes) -> web.StreamResponse:
        await asyncio.sleep(30)
        raise AssertionError("unreachable")

    async def main() -> None:
        down = KeyPair.generate()
        silent = await NodeStub(behaviour=never).start()
        # A port nothing listens on: bind one, note it, close it.
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        dead_port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        nodes = [NodeInfo(down.address, f"http://127.0.0.1:{dead_port}", down.public_key_64), silent.info]
        config = RelayConfig(response_timeout=0.5, connect_timeout=1.0)
        try:
            async with relay_for(*nodes, config=config) as (relay, url):
                unknown, to_down, to_silent, index = await exchange(
                    url,
                    request_bytes("POST", "/post", envelope(KeyPair.generate())),
                    request_bytes("POST", "/post", envelope(down)),
                    request_bytes("POST", "/post", envelope(silent.key)),
                    request_bytes("GET", "/"),
                )
                assert_nginx_page(unknown, 404, "404 Not Found")
                assert_nginx_page(to_down, 502, "502 Bad Gateway")
                assert_nginx_page(to_silent, 504, "504 Gateway Time-out")
                assert index.status == 200  # one connection through all of it
                assert relay.stats.refused == {"unknown-node": 1, "upstream-down": 1, "upstream-timeout": 1}
        finally:
            await silent.stop()

    run(main())


def test_every_other_request_looks_like_a_default_nginx() -> None:
    async def main() -> None:
        async with stub_and_relay() as (node, _, url):
            (index,) = await exchange(url, request_bytes("GET", "/"))
            assert index.status_line == "HTTP/1.1 200 OK"
            assert [name for name, _ in index.headers] == [
                "Server", "Date", "Content-Type", "Content-Length", "Last-Modified", "Connection", "ETag",
                "Accept-Ranges",
            ]  # fmt: skip
            assert index.header("Server") == SERVER and index.body == INDEX_HTML
            assert index.header("ETag") == '"6434bbbe-267"'
            (head,) = await exchange(url, request_bytes("HEAD", "/index.html"), head=True)
            assert head.status == 200 and head.header("Content-Length") == "615"
            pages = await exchange(
                url,
                request_bytes("GET", "/post"),
                request_bytes("GET", "/wp-login.php"),
                request_bytes("POST", "/other", b"x"),
                request_bytes("POST", "/", b"x"),
                request_bytes("PUT", "/post", b"x"),
                request_bytes("DELETE", "/"),
            )
            expected = [(404, "404 Not Found")] * 3 + [(405, "405 Not Allowed")] * 3
            for page, (status, title) in zip(pages, expected, strict=True):
                assert_nginx_page(page, status, title)
            # Bytes that are not HTTP at all (a TLS hello, a scanner's junk) get nginx's 400 too.
            host, port = url.removeprefix("http://").split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03junk\r\n\r\n")
            raw = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            assert b"Server: nginx/1.24.0\r\n" in raw and b"<title>400 Bad Request</title>" in raw
            assert b"aiohttp" not in raw.lower() and b"python" not in raw.lower()
            assert node.received == []

    run(main())


def test_a_request_that_already_carries_a_receipt_is_refused() -> None:
    """A client cannot slip its own receipt to the node, and a node URL pointing at a relay cannot
    make relays forward to each other in a loop."""

    async def main() -> None:
        async with stub_and_relay() as (node, relay, url):
            data = envelope(node.key)
            forged = sign_receipt(KeyPair.generate(), node=node.key.address, envelope_prefix=data, byte_count=len(data))
            (answer,) = await exchange(url, request_bytes("POST", "/post", data, {RECEIPT_HEADER: forged.encode()}))
            assert_nginx_page(answer, 400, "400 Bad Request")
            assert node.received == [] and relay.stats.refused["loop"] == 1

    run(main())


def test_the_relay_logs_no_content_no_inner_address_and_no_ip(caplog: pytest.LogCaptureFixture) -> None:
    recipient = KeyPair.generate()

    async def main() -> list[bytes]:
        async with stub_and_relay() as (node, _, url):
            sent = [envelope(node.key, SECRET_CONTENT, recipient) for _ in range(3)]
            sent.append(envelope(KeyPair.generate(), SECRET_CONTENT, recipient))  # unknown node
            async with aiohttp.ClientSession() as session:
                for data in sent:
                    async with session.post(f"{url}/post", data=data) as response:
                        await response.read()
                async with session.post(f"{url}/post", data=sent[0][:-5]) as response:
                    assert response.status == 400
            return sent

    with caplog.at_level(logging.DEBUG):
        sent = run(main())
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert "forwarded to" in text and "refused" in text  # the relay did log, at DEBUG
    assert_clean_log(text, sent, recipient)


def assert_clean_log(text: str, sent: list[bytes], recipient: KeyPair) -> None:
    assert "127.0.0.1" not in text
    assert SECRET_CONTENT.decode() not in text
    for needle in (recipient.address.hex(), recipient.checksum_address, recipient.checksum_address.lower()):
        assert needle.removeprefix("0x") not in text.lower()
    for data in sent:
        for start in range(0, len(data) - 16, 97):  # any 16-byte window of an envelope, in hex
            assert data[start : start + 16].hex() not in text.lower()


def test_key_file_and_config_errors_are_clear(tmp_path: Path) -> None:
    good = tmp_path / "relay.key"
    key = KeyPair.generate()
    good.write_text("0x" + key.secret.hex() + "\n")
    assert load_key_file(good).address == key.address
    bad = tmp_path / "bad.key"
    bad.write_text("not hex")
    with pytest.raises(KeyFileError, match="32-byte private key"):
        load_key_file(bad)
    with pytest.raises(KeyFileError, match="cannot read"):
        load_key_file(tmp_path / "missing.key")
    with pytest.raises(ValueError, match="positive"):
        RelayConfig(response_timeout=0)


# ---------------------------------------------------------------------- as a separate process


def test_relay_as_a_process_forwards_and_stops_cleanly(tmp_path: Path) -> None:
    relay_key = KeyPair.generate()
    key_file = tmp_path / "relay.key"
    key_file.write_text(relay_key.secret.hex())
    recipient = KeyPair.generate()

    async def main() -> None:
        node = await NodeStub().start()
        directory = tmp_path / "nodes.json"
        StaticDirectory([node.info]).save(directory)
        command = [
            sys.executable, "-m", "offchain.si.relay", "--port", "0", "--key-file", str(key_file),
            "--directory", str(directory), "--log-level", "DEBUG",
        ]  # fmt: skip
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert process.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 15)
            assert line.startswith(f"relay {relay_key.checksum_address} listening on http://127.0.0.1:"), line
            url = line.split()[-1]
            sent = [envelope(node.key, SECRET_CONTENT, recipient) for _ in range(2)]
            async with aiohttp.ClientSession() as session:
                for data in sent:
                    async with session.post(f"{url}/post", data=data) as response:
                        assert response.status == 200 and response.headers["Server"] == SERVER
                async with session.get(f"{url}/") as response:
                    assert await response.read() == INDEX_HTML
            assert [r.body for r in node.received] == sent
            for got in node.received:
                receipt = verify_receipt(got.headers[RECEIPT_HEADER], node=node.key.address, envelope=got.body)
                assert receipt.relay == relay_key.address
        finally:
            process.send_signal(signal.SIGTERM)
            started = time.monotonic()
            code = await asyncio.to_thread(process.wait, 10)
            stderr = process.stderr.read() if process.stderr else ""
            await node.stop()
        assert code == 0, stderr
        assert time.monotonic() - started < 10
        assert "forwarded to" in stderr  # DEBUG lines were written, and they are clean
        assert_clean_log(stderr, sent, recipient)

    run(main(), timeout=40)


def test_the_maximum_envelope_fits_the_default_limit() -> None:
    assert RelayConfig().max_body_size >= LAYER_OVERHEAD + 1024 * 1024
