"""Where an SI node is: its URL and public key by its wallet address (DESIGN §7, "finds the node's URL in
the registry").

A relay reads only the outer key id of an envelope, the recipient node's 20-byte address, and asks a
`Directory` where that node answers. Two directories:

* `StaticDirectory` — a fixed table, in memory or from a JSON file (the devnet writes one);
* `RegistryDirectory` — the on-chain `NodeRegistry`: the address's SI_NODE token, its registered
  public key and first http(s) endpoint, read with web3.py and cached for a time-to-live.

Static JSON file (`StaticDirectory.load` / `save`):

    {"nodes": [{"address": "0x…", "url": "http://127.0.0.1:9001", "public_key": "0x<128 hex>",
                "prices": {"per_mb_outbound": 0, "per_mb_hour_storage": 0}, "region": ""}]}

`prices` and `region` may be left out; the address must be the public key's.

A load-balanced recipient provider (several entry servers for one node wallet, provider.py) lists
every entry server: `"urls": ["http://a:9001", "http://b:9001"]`, its first element equal to `url`
(kept, so a reader that knows only `url` still finds the first one). A relay tries them in order and
fails over to the next when one cannot be connected to (relay.py). The registry's form is the
node's list of endpoints: every usable http(s) one, in the registered order.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from eth_typing import ChecksumAddress
from eth_utils.address import is_address, to_canonical_address, to_checksum_address

from offchain.si.billing import Prices
from offchain.si.ecies import ADDRESS_SIZE, address_of
from offchain.si.errors import InvalidKey

__all__ = [
    "SI_NODE_ROLE",
    "Directory",
    "DirectoryError",
    "DirectoryUnavailable",
    "InvalidNodeInfo",
    "NodeInfo",
    "RegistryDirectory",
    "StaticDirectory",
    "UnknownNode",
]

SI_NODE_ROLE = 4
"""`Role.SI_NODE` in contracts/types/Role.sol."""
_PUBLIC_KEY_SIZE = 64
_URL_SCHEMES = ("http", "https")


class DirectoryError(Exception):
    """A node could not be resolved."""


class UnknownNode(DirectoryError, LookupError):
    """No SI node is registered under the address (or it has no usable endpoint)."""

    def __init__(self, address: bytes, why: str = "no SI node is registered under this address") -> None:
        self.address = address
        super().__init__(f"{_show(address)}: {why}")


class DirectoryUnavailable(DirectoryError):
    """The directory could not be read (the chain's RPC endpoint failed or gave nonsense)."""


class InvalidNodeInfo(DirectoryError, ValueError):
    """A directory entry is malformed: wrong sizes, a key that is not the address's, a bad URL."""


def _show(address: bytes) -> str:
    return to_checksum_address(address) if len(address) == ADDRESS_SIZE else f"0x{address.hex()} (not 20 bytes)"


def _check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in _URL_SCHEMES or not parts.hostname:
        raise InvalidNodeInfo(f"a node URL is http(s)://host[:port][/path], got {url!r}")
    if parts.query or parts.fragment:
        raise InvalidNodeInfo(f"a node URL has no query or fragment, got {url!r}")
    return url


@dataclass(frozen=True)
class NodeInfo:
    """One SI node: where it answers and how to encrypt to it."""

    address: bytes
    """20 bytes, keccak256(public_key)[12:]."""
    url: str
    """Base URL; envelopes are posted to `post_url`."""
    public_key: bytes
    """64 bytes x ‖ y, as the registry stores it."""
    prices: Prices = field(default_factory=lambda: Prices(0, 0))
    region: str = ""
    urls: tuple[str, ...] = ()
    """Every entry server of the node, in the order a relay tries them; the first is `url`. Empty
    (the default) for a node with one entry server: `url` alone."""

    def __post_init__(self) -> None:
        if not isinstance(self.address, bytes) or len(self.address) != ADDRESS_SIZE:
            raise InvalidNodeInfo(f"a node address is {ADDRESS_SIZE} bytes")
        if not isinstance(self.public_key, bytes) or len(self.public_key) != _PUBLIC_KEY_SIZE:
            raise InvalidNodeInfo(f"a node public key is {_PUBLIC_KEY_SIZE} bytes (x ‖ y)")
        try:
            derived = address_of(self.public_key)
        except InvalidKey as error:
            raise InvalidNodeInfo(f"{_show(self.address)}: the public key is not on secp256k1") from error
        if derived != self.address:
            raise InvalidNodeInfo(f"the public key is {_show(derived)}'s, not {_show(self.address)}'s")
        _check_url(self.url)
        if not isinstance(self.urls, tuple):
            object.__setattr__(self, "urls", tuple(self.urls))
        if self.urls:
            for url in self.urls:
                if not isinstance(url, str):
                    raise InvalidNodeInfo(f"a URL is a string, got {url!r}")
                _check_url(url)
            if self.urls[0] != self.url:
                raise InvalidNodeInfo(f"urls must start with url {self.url!r}, got {self.urls[0]!r}")
            if len(set(self.urls)) != len(self.urls):
                raise InvalidNodeInfo(f"{_show(self.address)}: an entry server is listed twice in urls")
            if len(self.urls) == 1:
                object.__setattr__(self, "urls", ())  # one URL is the plain form: equal NodeInfos compare equal

    @property
    def checksum_address(self) -> ChecksumAddress:
        return to_checksum_address(self.address)

    @property
    def post_url(self) -> str:
        return self.url.rstrip("/") + "/post"

    @property
    def entry_urls(self) -> tuple[str, ...]:
        """Every entry server's base URL, in the order to try them (`url` first)."""
        return self.urls or (self.url,)

    @property
    def post_urls(self) -> tuple[str, ...]:
        """`post_url` of every entry server, in the order to try them."""
        return tuple(url.rstrip("/") + "/post" for url in self.entry_urls)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "address": self.checksum_address,
            "url": self.url,
            "public_key": "0x" + self.public_key.hex(),
            "prices": {
                "per_mb_outbound": self.prices.per_mb_outbound,
                "per_mb_hour_storage": self.prices.per_mb_hour_storage,
            },
            "region": self.region,
        }
        if self.urls:
            data["urls"] = list(self.urls)  # only when several: single-server entries keep the old form
        return data

    @classmethod
    def from_json(cls, entry: Mapping[str, Any]) -> NodeInfo:
        """An entry of the static directory file; `InvalidNodeInfo` names what is wrong."""
        unknown = set(entry) - {"address", "url", "public_key", "prices", "region", "urls"}
        if unknown:
            raise InvalidNodeInfo(f"unknown fields {sorted(unknown)} in a directory entry")
        try:
            address, url, public_key = entry["address"], entry["url"], entry["public_key"]
        except KeyError as error:
            raise InvalidNodeInfo(f"a directory entry needs {error.args[0]!r}") from error
        if not isinstance(address, str) or not is_address(address):
            raise InvalidNodeInfo(f"not an address: {address!r}")
        if not isinstance(url, str):
            raise InvalidNodeInfo(f"a URL is a string, got {url!r}")
        if not isinstance(public_key, str):
            raise InvalidNodeInfo("a public key is a hex string")
        try:
            key = bytes.fromhex(public_key.removeprefix("0x"))
        except ValueError as error:
            raise InvalidNodeInfo("a public key is a hex string") from error
        prices = entry.get("prices", {})
        region = entry.get("region", "")
        if not isinstance(prices, dict) or not isinstance(region, str):
            raise InvalidNodeInfo("prices is an object and region a string")
        try:
            price = Prices(int(prices.get("per_mb_outbound", 0)), int(prices.get("per_mb_hour_storage", 0)))
        except (TypeError, ValueError) as error:
            raise InvalidNodeInfo(f"bad prices {prices!r}: {error}") from error
        urls = entry.get("urls", [])
        if not isinstance(urls, list):
            raise InvalidNodeInfo("urls is a list of URLs")
        return cls(to_canonical_address(address), url, key, price, region, tuple(urls))


class Directory(Protocol):
    """Resolves a node's 20-byte address to where it answers."""

    async def resolve(self, address: bytes) -> NodeInfo:
        """The node registered under `address`; `UnknownNode` if there is none, `DirectoryUnavailable`
        if the directory cannot be read right now."""
        ...


class StaticDirectory:
    """A fixed table of nodes."""

    def __init__(self, nodes: Iterable[NodeInfo] | Mapping[bytes, NodeInfo] = ()) -> None:
        entries = nodes.values() if isinstance(nodes, Mapping) else nodes
        self._nodes: dict[bytes, NodeInfo] = {}
        if isinstance(nodes, Mapping):
            for address, node in nodes.items():
                if address != node.address:
                    raise InvalidNodeInfo(f"{_show(address)} maps to the entry of {node.checksum_address}")
        for node in entries:
            if node.address in self._nodes:
                raise InvalidNodeInfo(f"{node.checksum_address} is listed twice")
            self._nodes[node.address] = node

    async def resolve(self, address: bytes) -> NodeInfo:
        try:
            return self._nodes[address]
        except KeyError:
            raise UnknownNode(address, "not in the static directory") from None

    @property
    def nodes(self) -> list[NodeInfo]:
        return list(self._nodes.values())

    @classmethod
    def load(cls, path: str | Path) -> StaticDirectory:
        """Read the JSON file described in the module docstring."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise InvalidNodeInfo(f"cannot read the directory file {path}: {error}") from error
        if not isinstance(data, dict) or not isinstance(data.get("nodes"), list):
            raise InvalidNodeInfo(f'{path}: a directory file is {{"nodes": [...]}}')
        entries = []
        for index, entry in enumerate(data["nodes"]):
            if not isinstance(entry, dict):
                raise InvalidNodeInfo(f"{path}: entry {index} is not an object")
            try:
                entries.append(NodeInfo.from_json(entry))
            except InvalidNodeInfo as error:
                raise InvalidNodeInfo(f"{path}: entry {index}: {error}") from error
        return cls(entries)

    def save(self, path: str | Path) -> None:
        """Write the table as a JSON file `load` reads back."""
        text = json.dumps({"nodes": [node.to_json() for node in self._nodes.values()]}, indent=2) + "\n"
        Path(path).write_text(text)


@dataclass
class _Entry:
    expires_at: float
    node: NodeInfo | None
    """None: no SI node under the address (cached too, for `negative_ttl`)."""


class RegistryDirectory:
    """The on-chain NodeRegistry, read through a JSON-RPC endpoint and cached.

    `resolve(address)`: `tokenOf(address, SI_NODE)`, then `nodeOf(token)`; the node's URL is its first
    http(s) endpoint. Answers are kept `ttl` seconds, "no such node" `negative_ttl` seconds (junk key
    ids then cost one chain read per id and interval, not one per envelope), at most `max_entries`
    addresses (least recently used dropped first). Concurrent misses for one address share one read.
    A registry change is seen at the latest `ttl` seconds later.
    """

    def __init__(
        self,
        rpc_url: str,
        registry_address: str,
        *,
        ttl: float = 60.0,
        negative_ttl: float = 10.0,
        max_entries: int = 10_000,
        request_timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from web3 import AsyncHTTPProvider, AsyncWeb3

        from offchain.artifacts import contract_artifact

        if not is_address(registry_address):
            raise ValueError(f"not a contract address: {registry_address!r}")
        if ttl < 0 or negative_ttl < 0 or max_entries < 1:
            raise ValueError("ttl and negative_ttl must be >= 0 and max_entries >= 1")
        self._web3 = AsyncWeb3(AsyncHTTPProvider(rpc_url, request_kwargs={"timeout": request_timeout}))
        self._registry = self._web3.eth.contract(
            address=to_checksum_address(registry_address), abi=contract_artifact("NodeRegistry").abi
        )
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.max_entries = max_entries
        self._clock = clock
        self._cache: OrderedDict[bytes, _Entry] = OrderedDict()
        self._pending: dict[bytes, asyncio.Future[NodeInfo | None]] = {}
        self.chain_reads = 0
        """How many lookups went to the chain (a cache miss or an expiry each)."""

    async def resolve(self, address: bytes) -> NodeInfo:
        if len(address) != ADDRESS_SIZE:
            raise UnknownNode(address, "not a 20-byte address")
        entry = self._cache.get(address)
        if entry is not None and entry.expires_at > self._clock():
            self._cache.move_to_end(address)
            return self._known(address, entry.node)
        pending = self._pending.get(address)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._pending[address] = pending
            try:
                node = await self._read(address)
            except Exception as error:
                pending.set_exception(error)
                pending.exception()  # retrieved here, so a lookup nobody shared never warns
                raise
            except BaseException:
                # This reader was cancelled; those sharing its lookup get an error, not a cancellation
                # that is not theirs.
                pending.set_exception(DirectoryUnavailable(f"the lookup of {_show(address)} was cancelled"))
                pending.exception()
                raise
            else:
                pending.set_result(node)
                self._store(address, node)
            finally:
                del self._pending[address]
            return self._known(address, node)
        # Another task is reading this address right now: share its answer (shield: our cancellation
        # must not cancel the future the reader and the other waiters rely on).
        return self._known(address, await asyncio.shield(pending))

    async def close(self) -> None:
        """Close the RPC connection pool."""
        await self._web3.provider.disconnect()

    def invalidate(self, address: bytes | None = None) -> None:
        """Forget one address, or everything, so the next lookup reads the chain."""
        if address is None:
            self._cache.clear()
        else:
            self._cache.pop(address, None)

    @staticmethod
    def _known(address: bytes, node: NodeInfo | None) -> NodeInfo:
        if node is None:
            raise UnknownNode(address)
        return node

    def _store(self, address: bytes, node: NodeInfo | None) -> None:
        ttl = self.ttl if node is not None else self.negative_ttl
        self._cache[address] = _Entry(self._clock() + ttl, node)
        self._cache.move_to_end(address)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)

    async def _read(self, address: bytes) -> NodeInfo | None:
        from aiohttp import ClientError
        from web3.exceptions import Web3Exception

        self.chain_reads += 1
        checksum = to_checksum_address(address)
        try:
            token_id = int(await self._registry.functions.tokenOf(checksum, SI_NODE_ROLE).call())
            if token_id == 0:
                return None
            record = await self._registry.functions.nodeOf(token_id).call()
        except (TimeoutError, OSError, ClientError, Web3Exception, ValueError) as error:
            # Not cached: the next lookup reads again. (A node deregistered between the two calls
            # lands here too, once: nodeOf reverts, and the next tokenOf says 0.)
            raise DirectoryUnavailable(f"reading the node registry for {checksum} failed: {error}") from error
        return self._node_info(address, record)

    @staticmethod
    def _node_info(address: bytes, record: Any) -> NodeInfo | None:
        # Node(role, registeredAt, prices(outboundPerMB, storagePerMBHour, perVCPU, perMBMemory),
        #      publicKey, region, endpoints), in the order of the Solidity struct.
        _role, _registered_at, prices, public_key, region, endpoints = record
        usable = list(dict.fromkeys(endpoint for endpoint in endpoints if _usable(endpoint)))
        if not usable:
            # Registered, but nowhere a relay can reach (e.g. only onion or other schemes).
            return None
        try:
            return NodeInfo(
                address=address,
                url=usable[0],
                public_key=bytes(public_key),
                prices=Prices(int(prices[0]), int(prices[1])),
                region=str(region),
                urls=tuple(usable),  # several entry servers of one provider: the relay fails over
            )
        except InvalidNodeInfo:
            # The contract checks the key against the address; a mismatch means the RPC lies.
            raise DirectoryUnavailable(f"the registry entry of {_show(address)} is inconsistent") from None


def _usable(url: str) -> bool:
    try:
        _check_url(url)
    except InvalidNodeInfo:
        return False
    return True
