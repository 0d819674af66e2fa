"""The DLE devnet: anvil, the contracts, and every DLE node as its own process on 127.0.0.1.

`up` starts anvil (chain id 43112) on a free port, deploys the contracts with the project's deploy
script (`ape run deploy`, its address book kept in the devnet directory), derives a key for each node
(keccak256("CoNET devnet\\0" ‖ name): the same addresses every time), funds each from a development
account (ETH for gas, CoNET to stake), stakes each in its role, registers each node NFT with its
endpoint (archive nodes form the archive groups: NodeRegistry splits them by token id), opens every
group's first epoch (`DleRegistry.refreshGroup`), writes one config per node and `devnet.json`, starts
the nodes (`python -m offchain.dle.service …`) and the oDEX order book of the mETH/AVAX market (its
creator `book-operator` and the members `book-witness` and `book-validator`, `python -m
offchain.odex.service …`: not staked, the book's group is fixed by its config), and returns once every
node answers and every archive node's waiting pool holds every witness and validator. `status` reads it
all back; `down` stops the processes `devnet.json` names, each checked first to be the one started (by
its command line).

Directory layout (default `.devnet/` in the project, or `CONET_DEVNET_DIR`):

    devnet.json                        addresses, ports, pids, contracts, groups (DevnetState)
    anvil.log, deploy.log
    deployments/avalanche-anvil.json   the address book
    keys/<node>.key                    node keys (hex)
    wallets/<name>.key                 user wallets (`conet cash --wallet NAME`)
    nodes/<node>/config.json           the node's config (offchain/dle/service.py, NodeConfig)
    nodes/<node>/node.log              its log
    nodes/<node>/chains.sqlite         its chain store (an archive node's mirror: mirror.sqlite)
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from coincurve import PrivateKey
from eth_account import Account
from web3 import Web3
from web3.contract import Contract

from dle_vm.hashing import keccak
from offchain.chain.addressbook import AddressBook
from offchain.chain.deployer import CONET, Role
from offchain.chain.dle import DleChainClient
from offchain.chain.web3_contracts import ChainError, Sender, connect, load_contract
from offchain.devnet.anvil import CHAIN_ID, DEV_MNEMONIC, HARDFORK, AnvilError, anvil_binary, free_port, rpc
from offchain.dle.auth import sign_request
from offchain.dle.conservation import (
    ConservationReport,
    ReceiptReport,
    check_conservation,
    check_receipts,
    http_source,
)
from offchain.dle.digests import Domains
from offchain.dle.local import address_of_secret
from offchain.dle.mainchain import ArchiveGroups
from offchain.dle.member import Timeouts
from offchain.dle.messages import ChainDump
from offchain.dle.roles import RolesError
from offchain.dle.service import NodeConfig
from offchain.dle.transport import HttpTransport, TransportError
from offchain.dle.wallet import NoteChain
from offchain.toolchain import configure_environment, project_root

__all__ = [
    "ChainStatus",
    "DevnetClient",
    "DevnetError",
    "DevnetSpec",
    "DevnetState",
    "DevnetStatus",
    "NodeRecord",
    "NodeStatus",
    "check",
    "default_dir",
    "deploy_contracts",
    "describe_status",
    "dev_account_key",
    "down",
    "fund",
    "load_wallet",
    "node_info",
    "node_key",
    "process_running",
    "register_node",
    "running_devnet",
    "send_eth",
    "stake",
    "status",
    "up",
    "wallet_path",
    "wallet_secret",
]

STATE_FILE = "devnet.json"
NETWORK = "avalanche:anvil"
ETH = 10**18
MAX_UINT256 = 2**256 - 1
SERVICE_MODULE = "offchain.dle.service"
BOOK_MODULE = "offchain.odex.service"
BOOK = "book"
"""The kind of the oDEX book's processes."""
BOOK_CREATOR = "book-operator"
BOOK_MEMBERS = ("book-witness", "book-validator")
NOT_STAKED = -1
"""The `role` of a process that stakes nothing (the book's)."""
ANVIL = "anvil"
"""anvil's process name."""
FUNDER = 0
"""Development account that deployed (the token's treasury): funds and stakes the nodes."""
WALLET_FUNDER = 1
"""Development account that gives user wallets gas, apart from the deployer's nonces."""

Log = Callable[[str], None]


class DevnetError(RuntimeError):
    """The devnet cannot do what was asked; the message says why and what to do."""


def default_dir() -> Path:
    """`CONET_DEVNET_DIR`, else `.devnet/` in the project."""
    explicit = os.environ.get("CONET_DEVNET_DIR")
    return Path(explicit).resolve() if explicit else project_root() / ".devnet"


@dataclass(frozen=True)
class DevnetSpec:
    """How many nodes of each kind, and what they stake."""

    archives: int = 4
    """Two archive groups of two: NodeRegistry splits archive nodes by token id, so two archive nodes
    would make two groups of one, where no archive node ever talks to another."""
    witnesses: int = 6
    validators: int = 2
    cbdcs: int = 1
    odex: bool = True
    """Run the oDEX order book (mETH/AVAX) and its group."""
    stake_multiple: int = 10
    """Witnesses and validators stake this many minimum stakes (capacity for that many chains)."""
    cbdc_conet: int = 50_000 * CONET
    """CoNET each CBDC holds beyond its stake, to burn when it fills orders."""
    node_eth: int = 10 * ETH
    pool_hold: float = 10.0
    pool_grace: float = 5.0
    ready_timeout: float = 90.0
    timeouts: Timeouts = field(default_factory=Timeouts)

    def __post_init__(self) -> None:
        if self.archives < 1 or self.cbdcs < 1 or self.validators < 1:
            raise DevnetError("a devnet needs at least one archive node, one CBDC and one validator")
        if self.witnesses < 5:
            raise DevnetError("a note chain has 5 witnesses: the devnet needs at least 5")


def node_key(name: str) -> bytes:
    """A devnet node's key: derived from its name, so the devnet's addresses are the same every run."""
    return keccak(b"CoNET devnet\x00" + name.encode())


def wallet_secret(name: str) -> bytes:
    """A devnet user wallet's key, derived from its name."""
    return keccak(b"CoNET devnet wallet\x00" + name.encode())


def dev_account_key(index: int) -> bytes:
    """Development account `index` of anvil's mnemonic (funded with 10,000 ETH)."""
    Account.enable_unaudited_hdwallet_features()
    return bytes(Account.from_mnemonic(DEV_MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}").key)


def _checksum(address: bytes) -> str:
    return Web3.to_checksum_address("0x" + address.hex())


# -- state ----------------------------------------------------------------------------------------------


@dataclass
class NodeRecord:
    """One node process of the devnet."""

    name: str
    kind: str
    """archive, member or cbdc (offchain/dle/service.py), or book (offchain/odex/service.py)."""
    role: int
    """Its staked role (contracts/types/Role.sol); NOT_STAKED for the book's processes."""
    address: str
    port: int
    key_file: str
    config_file: str
    log_file: str
    data_dir: str
    pid: int = 0
    token_id: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def marker(self) -> str:
        """What its command line holds: `down` kills a pid only if it still runs this."""
        return self.config_file

    def running(self) -> bool:
        return process_running(self.pid, self.marker)


@dataclass
class DevnetState:
    """`devnet.json`."""

    directory: str
    rpc: str
    chain_id: int
    anvil_port: int
    anvil_pid: int = 0
    address_book: str = ""
    contracts: dict[str, str] = field(default_factory=dict)
    nodes: list[NodeRecord] = field(default_factory=list)
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    started_at: float = 0.0

    @property
    def path(self) -> Path:
        return Path(self.directory) / STATE_FILE

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(tmp, self.path)

    @classmethod
    def load(cls, directory: Path) -> DevnetState:
        path = directory / STATE_FILE
        try:
            data = json.loads(path.read_text())
            nodes = [NodeRecord(**n) for n in data.pop("nodes")]
            return cls(**data, nodes=nodes)
        except FileNotFoundError:
            raise DevnetError(f"no devnet in {directory}: start one with `conet devnet up`") from None
        except (OSError, ValueError, TypeError, KeyError) as error:
            raise DevnetError(f"{path} is not a devnet state file: {error}") from error

    def node(self, name: str) -> NodeRecord:
        for node in self.nodes:
            if node.name == name:
                return node
        raise DevnetError(f"the devnet has no node named {name!r}")

    def of_kind(self, kind: str) -> list[NodeRecord]:
        return [n for n in self.nodes if n.kind == kind]

    def book(self) -> NodeRecord:
        """The oDEX book's creator (its HTTP API); DevnetError when the devnet runs no book."""
        for node in self.nodes:
            if node.name == BOOK_CREATOR:
                return node
        raise DevnetError(f"the devnet in {self.directory} runs no oDEX book")

    def directory_map(self) -> dict[bytes, str]:
        """Every node's address → its base URL: the HTTP transport's directory."""
        return {bytes.fromhex(n.address[2:]): n.url for n in self.nodes}

    @property
    def anvil_marker(self) -> str:
        return f"--port {self.anvil_port}"

    def anvil_running(self) -> bool:
        return process_running(self.anvil_pid, self.anvil_marker, ANVIL)


# -- processes ------------------------------------------------------------------------------------------


def _spawn(command: list[str], log_file: Path) -> int:
    """Start `command` in its own session (it outlives `conet devnet up`), output to `log_file`."""
    with log_file.open("ab") as log:
        process = subprocess.Popen(
            command,
            cwd=project_root(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return process.pid


def _reap(pid: int) -> None:
    """Collect a child that exited (when this process started it), so it is not left a zombie."""
    with suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def process_running(pid: int, marker: str, program: str | None = None) -> bool:
    """Whether `pid` runs and its command line still holds `marker` (a reused pid does not). anvil's
    command line reads empty now and then (/proc/<pid>/cmdline of a multi-threaded Rust process):
    then its `program` name (the kernel's comm) must match instead."""
    if pid <= 0:
        return False
    _reap(pid)
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    comm, state = stat[stat.index("(") + 1 : stat.rindex(")")], stat.rsplit(")", 1)[1].split()[0]
    if state == "Z":
        return False
    if command.strip():
        return marker in command
    return program is not None and comm == program


def _stop(pid: int, marker: str, program: str | None = None, timeout: float = 10.0) -> bool:
    """SIGTERM, then SIGKILL after `timeout`; only if `pid` is still the process we started."""
    if not process_running(pid, marker, program):
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process_running(pid, marker, program):
            return True
        time.sleep(0.05)
    if process_running(pid, marker, program):
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while process_running(pid, marker, program) and time.monotonic() < deadline:
            time.sleep(0.05)
    return True


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _http(url: str, body: bytes | None = None, timeout: float = 2.0, headers: dict[str, str] | None = None) -> bytes:
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    if body is not None:
        request.add_header("Content-Type", "application/octet-stream")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        data: bytes = response.read()
        return data


def _ping(node: NodeRecord) -> bool:
    address = bytes.fromhex(node.address[2:])
    # Signed as the node itself (the launcher holds every node's key): a node answers only signed requests.
    headers = sign_request(node_key(node.name), address, "ping", address, b"")
    try:
        return _http(f"{node.url}/dle/ping", b"", timeout=1.0, headers=headers) == address
    except (OSError, urllib.error.URLError):
        return False


def node_info(node: NodeRecord, timeout: float = 2.0) -> dict[str, Any] | None:
    """The node's `GET /devnet/info`, or None when it does not answer."""
    try:
        data = json.loads(_http(f"{node.url}/devnet/info", timeout=timeout))
    except (OSError, urllib.error.URLError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# -- the mainchain side ---------------------------------------------------------------------------------


def send_eth(w3: Web3, secret: bytes, to: str, value: int, *, timeout: float = 30.0) -> None:
    """A plain ETH transfer signed by `secret`, waited for."""
    account = Account.from_key(secret)
    # EIP-1559 fees as web3 fills them for contract calls. (A legacy price above the market feeds
    # anvil's fee oracle, which then suggests ever higher prices: it doubled with every transfer.)
    tip = int(w3.eth.max_priority_fee)
    base = int(w3.eth.get_block("latest").get("baseFeePerGas", 0))
    tx = {
        "to": Web3.to_checksum_address(to),
        "value": value,
        "gas": 21_000,
        "maxFeePerGas": 2 * base + tip,
        "maxPriorityFeePerGas": tip,
        "nonce": w3.eth.get_transaction_count(account.address, "pending"),
        "chainId": int(w3.eth.chain_id),
    }
    signed = account.sign_transaction(tx)
    receipt = w3.eth.wait_for_transaction_receipt(
        w3.eth.send_raw_transaction(signed.raw_transaction), timeout=timeout, poll_latency=0.05
    )
    if receipt["status"] != 1:
        raise DevnetError(f"sending {value} wei to {to} failed")


def fund(w3: Web3, addresses: dict[str, str], funder: bytes, to: str, *, eth: int = 0, conet: int = 0) -> None:
    """Gas and CoNET for `to` from the development account `funder`."""
    if eth:
        send_eth(w3, funder, to, eth)
    if conet:
        token = load_contract(w3, "CoNETToken", addresses["CoNETToken"])
        Sender(w3, funder).transact(token.functions.transfer(Web3.to_checksum_address(to), conet))


def stake(w3: Web3, addresses: dict[str, str], secret: bytes, role: Role, amount: int) -> None:
    """`secret`'s account stakes `amount` CoNET in `role` (approve, then Staking.stake)."""
    sender = Sender(w3, secret)
    token = load_contract(w3, "CoNETToken", addresses["CoNETToken"])
    staking = load_contract(w3, "Staking", addresses["Staking"])
    sender.transact(token.functions.approve(staking.address, amount))
    sender.transact(staking.functions.stake(int(role), amount))


def register_node(w3: Web3, addresses: dict[str, str], secret: bytes, role: Role, endpoint: str) -> int:
    """Registers `secret`'s node NFT in `role` with `endpoint`; returns its token id."""
    nodes = load_contract(w3, "NodeRegistry", addresses["NodeRegistry"])
    public_key = PrivateKey(secret).public_key.format(compressed=False)[1:]
    Sender(w3, secret).transact(nodes.functions.register(int(role), public_key, [endpoint], (0, 0, 0, 0), "devnet"))
    return int(nodes.functions.tokenOf(Account.from_key(secret).address, int(role)).call())


def deploy_contracts(directory: Path, uri: str, log: Log = print) -> AddressBook:
    """The project's deploy script against the devnet's anvil; the address book stays in the devnet."""
    configure_environment()
    books = directory / "deployments"
    books.mkdir(parents=True, exist_ok=True)
    ape = Path(sys.executable).with_name("ape")
    command = [str(ape), "run", "deploy", "--network", f"{NETWORK}:{uri}"]
    log(f"deploying: {' '.join(command[1:])}")
    with (directory / "deploy.log").open("w") as output:
        try:
            done = subprocess.run(
                command,
                cwd=project_root(),
                env={**os.environ, "CONET_DEPLOYMENTS_DIR": str(books)},
                stdout=output,
                stderr=subprocess.STDOUT,
                timeout=240,
            )
        except subprocess.TimeoutExpired as error:
            raise DevnetError(
                f"the deploy did not finish in {error.timeout:.0f} s; see {directory}/deploy.log"
            ) from error
    if done.returncode != 0:
        raise DevnetError(f"the deploy failed:\n{_log_tail(directory / 'deploy.log', 25)}")
    return AddressBook.from_json(json.loads((books / "avalanche-anvil.json").read_text()))


# -- up -------------------------------------------------------------------------------------------------


def _prepare_directory(directory: Path) -> None:
    """An empty devnet directory: a stale devnet (nothing running) is wiped, anything else refused."""
    if (directory / STATE_FILE).exists():
        state = DevnetState.load(directory)
        running = [n.name for n in state.nodes if process_running(n.pid, n.marker)]
        if state.anvil_running():
            running.append("anvil")
        if running:
            raise DevnetError(f"a devnet is up in {directory} ({', '.join(running)}): `conet devnet down` first")
        shutil.rmtree(directory)
    elif directory.exists() and any(directory.iterdir()):
        raise DevnetError(f"{directory} is not empty and holds no devnet: choose another directory")
    directory.mkdir(parents=True, exist_ok=True)


def _plan(directory: Path, spec: DevnetSpec) -> list[NodeRecord]:
    kinds = (
        [(f"archive-{i}", "archive", Role.ARCHIVE) for i in range(1, spec.archives + 1)]
        + [(f"cbdc-{i}", "cbdc", Role.CBDC) for i in range(1, spec.cbdcs + 1)]
        + [(f"witness-{i}", "member", Role.WITNESS) for i in range(1, spec.witnesses + 1)]
        + [(f"validator-{i}", "member", Role.VALIDATOR) for i in range(1, spec.validators + 1)]
        + ([(name, BOOK, NOT_STAKED) for name in (BOOK_CREATOR, *BOOK_MEMBERS)] if spec.odex else [])
    )
    (directory / "keys").mkdir(exist_ok=True)
    nodes = []
    ports: set[int] = set()
    for name, kind, role in kinds:
        key = node_key(name)
        key_file = directory / "keys" / f"{name}.key"
        key_file.write_text(key.hex() + "\n")
        key_file.chmod(0o600)
        port = free_port()
        while port in ports:
            port = free_port()
        ports.add(port)
        data_dir = directory / "nodes" / name
        data_dir.mkdir(parents=True, exist_ok=True)
        nodes.append(
            NodeRecord(
                name=name,
                kind=kind,
                role=int(role),
                address=_checksum(address_of_secret(key)),
                port=port,
                key_file=str(key_file),
                config_file=str(data_dir / "config.json"),
                log_file=str(data_dir / "node.log"),
                data_dir=str(data_dir),
            )
        )
    return nodes


def _start_anvil(state: DevnetState, directory: Path, timeout: float = 30.0) -> None:
    command = [
        str(anvil_binary()),
        "--host", "127.0.0.1",
        "--port", str(state.anvil_port),
        "--chain-id", str(CHAIN_ID),
        "--mnemonic", DEV_MNEMONIC,
        "--hardfork", HARDFORK,
    ]  # fmt: skip
    state.anvil_pid = _spawn(command, directory / "anvil.log")
    state.save()
    deadline = time.monotonic() + timeout
    while True:
        try:
            if int(str(rpc(state.rpc, "eth_chainId", timeout=1.0)), 16) == CHAIN_ID:
                return
        except AnvilError:
            pass
        if not state.anvil_running():
            raise DevnetError(f"anvil exited:\n{_log_tail(directory / 'anvil.log')}")
        if time.monotonic() > deadline:
            raise DevnetError(f"anvil did not answer on {state.rpc} within {timeout:.0f} s")
        time.sleep(0.05)


def _stake_and_register(w3: Web3, state: DevnetState, spec: DevnetSpec, log: Log) -> None:
    addresses = state.contracts
    funder = dev_account_key(FUNDER)
    staking = load_contract(w3, "Staking", addresses["Staking"])
    token = load_contract(w3, "CoNETToken", addresses["CoNETToken"])
    for node in state.nodes:
        if node.kind == BOOK:
            continue
        role = Role(node.role)
        minimum = int(staking.functions.minimumStake(int(role)).call())
        amount = minimum * (spec.stake_multiple if role in (Role.WITNESS, Role.VALIDATOR) else 1)
        extra = spec.cbdc_conet if role is Role.CBDC else 0
        secret = node_key(node.name)
        fund(w3, addresses, funder, node.address, eth=spec.node_eth, conet=amount + extra)
        stake(w3, addresses, secret, role, amount)
        node.token_id = register_node(w3, addresses, secret, role, node.url)
        if role is Role.CBDC:
            # Filling an order burns the CBDC's CoNET: CoNETCash takes it with burnFrom.
            Sender(w3, secret).transact(token.functions.approve(addresses["CoNETCash"], MAX_UINT256))
        staked = f"staked {amount / CONET:>9,.0f} CONET as {role.name:<9}"
        log(f"  {node.name:<12} {node.address}  {staked} NFT #{node.token_id}")


def _open_epochs(w3: Web3, state: DevnetState, log: Log) -> None:
    client = DleChainClient(w3, state.contracts, dev_account_key(FUNDER))
    groups = ArchiveGroups(client)
    count = int(groups.nodes.functions.groupCount().call())
    for group in range(count):
        try:
            epoch, opened = client.refresh_group(group)
        except ChainError as error:
            log(f"  group {group}: no epoch ({error})")
            continue
        log(f"  group {group}: epoch {epoch}{' opened' if opened else ''}")
    for group, found in groups.refresh().items():
        state.groups[str(group)] = {"epoch": found.epoch, "members": [_checksum(m) for m in found.members]}


def _write_configs(state: DevnetState, spec: DevnetSpec) -> None:
    directory_map = state.directory_map()
    archives = tuple(n.url for n in state.of_kind("archive"))
    for node in state.nodes:
        if node.kind == BOOK:
            _write_book_config(state, node, directory_map)
            continue
        config = NodeConfig(
            name=node.name,
            kind=node.kind,
            key_file=Path(node.key_file),
            port=node.port,
            rpc=state.rpc,
            address_book=Path(state.address_book),
            data_dir=Path(node.data_dir),
            directory=directory_map,
            # Witnesses, validators and CBDCs wait in every archive pool to be drawn.
            archives=archives if node.role in (Role.WITNESS, Role.VALIDATOR, Role.CBDC) else (),
            role=node.role if node.role in (Role.WITNESS, Role.VALIDATOR) else None,
            pool_hold=spec.pool_hold,
            pool_grace=spec.pool_grace,
            timeouts=spec.timeouts,
        )
        Path(node.config_file).write_text(json.dumps(config.to_json(), indent=2) + "\n")


def _write_book_config(state: DevnetState, node: NodeRecord, directory_map: dict[bytes, str]) -> None:
    """The book's process config: one market, mETH (the local MockToken) against native AVAX."""
    from offchain.odex.service import BookConfig

    members = tuple(bytes.fromhex(state.node(name).address[2:]) for name in (BOOK_CREATOR, *BOOK_MEMBERS))
    config = BookConfig(
        name=node.name,
        role="creator" if node.name == BOOK_CREATOR else "member",
        key_file=Path(node.key_file),
        port=node.port,
        rpc=state.rpc,
        address_book=Path(state.address_book),
        data_dir=Path(node.data_dir),
        directory=directory_map,
        members=members,
        base=bytes.fromhex(state.contracts["MockToken"][2:]),
        quote=bytes(20),
    )
    Path(node.config_file).write_text(json.dumps(config.to_json(), indent=2) + "\n")


def _command(node: NodeRecord) -> list[str]:
    if node.kind == BOOK:
        role = "creator" if node.name == BOOK_CREATOR else "member"
        return [sys.executable, "-m", BOOK_MODULE, role, "--config", node.config_file]
    return [sys.executable, "-m", SERVICE_MODULE, node.kind, "--config", node.config_file]


def restart(directory: Path | None, name: str, *, crash: bool = False, timeout: float = 60.0) -> NodeRecord:
    """Stop node `name` — with SIGKILL when `crash`, as a crash would — and start it again with its own
    config, key and data directory; returns once it answers."""
    directory = (directory or default_dir()).resolve()
    state = DevnetState.load(directory)
    node = state.node(name)
    if crash and process_running(node.pid, node.marker):
        os.kill(node.pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while process_running(node.pid, node.marker) and time.monotonic() < deadline:
            time.sleep(0.05)
    else:
        _stop(node.pid, node.marker)
    node.pid = _spawn(_command(node), Path(node.log_file))
    state.save()
    deadline = time.monotonic() + timeout
    while not _ping(node):
        if not process_running(node.pid, node.marker):
            raise DevnetError(f"{name} exited; its log ({node.log_file}):\n{_log_tail(Path(node.log_file))}")
        if time.monotonic() > deadline:
            raise DevnetError(f"{name} is not answering after {timeout:.0f} s")
        time.sleep(0.1)
    return node


def _start_nodes(state: DevnetState, spec: DevnetSpec, log: Log) -> None:
    for node in state.nodes:
        command = _command(node)
        node.pid = _spawn(command, Path(node.log_file))
        state.save()
    deadline = time.monotonic() + spec.ready_timeout
    waiting = list(state.nodes)
    while waiting:
        for node in list(waiting):
            if _ping(node):
                waiting.remove(node)
                log(f"  {node.name:<12} up on {node.url} (pid {node.pid})")
            elif not process_running(node.pid, node.marker):
                raise DevnetError(f"{node.name} exited; its log ({node.log_file}):\n{_log_tail(Path(node.log_file))}")
        if waiting and time.monotonic() > deadline:
            raise DevnetError(f"not answering after {spec.ready_timeout:.0f} s: {', '.join(n.name for n in waiting)}")
        time.sleep(0.1)


def _wait_for_pools(state: DevnetState, spec: DevnetSpec, log: Log) -> None:
    """Every witness and validator waits in every archive node's pool (joined through the hook)."""
    expected = {n.address.lower() for n in state.nodes if n.role in (Role.WITNESS, Role.VALIDATOR)}
    deadline = time.monotonic() + spec.ready_timeout
    for archive in state.of_kind("archive"):
        while True:
            info = node_info(archive)
            waiting = {str(c["address"]).lower() for c in (info or {}).get("pool", [])}
            if expected <= waiting:
                log(f"  {archive.name:<12} pool: {len(waiting)} candidates waiting")
                break
            if time.monotonic() > deadline:
                raise DevnetError(f"{archive.name}'s pool holds {len(waiting)} of {len(expected)} candidates")
            time.sleep(0.2)


def up(directory: Path | None = None, spec: DevnetSpec | None = None, log: Log = print) -> DevnetState:
    """Start the whole devnet (see the module docstring); stops what it started if anything fails."""
    directory = (directory or default_dir()).resolve()
    spec = spec or DevnetSpec()
    _prepare_directory(directory)
    started = time.monotonic()
    anvil_port = free_port()
    state = DevnetState(str(directory), f"http://127.0.0.1:{anvil_port}", CHAIN_ID, anvil_port)
    state.save()
    try:
        _start_anvil(state, directory)
        log(f"anvil      {state.rpc} (chain id {CHAIN_ID}, pid {state.anvil_pid})")
        book = deploy_contracts(directory, state.rpc, log)
        state.address_book = str(directory / "deployments" / "avalanche-anvil.json")
        state.contracts = {name: d.address for name, d in sorted(book.contracts.items())}
        for name, address in state.contracts.items():
            log(f"  {name:<16} {address}")
        state.nodes = _plan(directory, spec)
        state.save()
        w3 = connect(state.rpc)
        log("staking and registering the nodes")
        _stake_and_register(w3, state, spec, log)
        log("archive groups")
        _open_epochs(w3, state, log)
        _write_configs(state, spec)
        state.save()
        log("starting the nodes")
        _start_nodes(state, spec, log)
        _wait_for_pools(state, spec, log)
        state.started_at = time.time()
        state.save()
    except BaseException:
        down(directory, log=lambda line: None)
        raise
    log(f"devnet up in {time.monotonic() - started:.1f} s: {directory}")
    return state


# -- down -----------------------------------------------------------------------------------------------


def down(directory: Path | None = None, log: Log = print) -> list[str]:
    """Stop every process of the devnet in `directory` (nodes first, then anvil); returns their names.
    The directory stays, for its logs; the next `up` replaces it."""
    directory = (directory or default_dir()).resolve()
    state = DevnetState.load(directory)

    def tell(message: str) -> None:
        # Stopping matters more than saying so: a closed stdout (`conet devnet down | head`) must not
        # leave the rest of the devnet running.
        with suppress(OSError):
            log(message)

    stopped = []
    for node in reversed(state.nodes):
        if _stop(node.pid, node.marker):
            stopped.append(node.name)
            tell(f"stopped {node.name} (pid {node.pid})")
    if _stop(state.anvil_pid, state.anvil_marker, ANVIL):
        stopped.append("anvil")
        tell(f"stopped anvil (pid {state.anvil_pid})")
    if not stopped:
        tell(f"nothing was running in {directory}")
    return stopped


# -- a client of the devnet -----------------------------------------------------------------------------


@dataclass
class DevnetClient:
    """What wallets, the status view and the conservation check need to reach a running devnet."""

    state: DevnetState
    w3: Web3
    book: AddressBook
    chain: DleChainClient
    """Read-only: views and digests."""
    groups: ArchiveGroups
    domains: Domains

    @classmethod
    def open(cls, directory: Path | None = None) -> DevnetClient:
        directory = (directory or default_dir()).resolve()
        state = DevnetState.load(directory)
        w3 = connect(state.rpc)
        try:
            w3.eth.chain_id  # noqa: B018  (fails fast when anvil is down)
        except Exception as error:
            raise DevnetError(f"the devnet's anvil ({state.rpc}) does not answer: is the devnet up?") from error
        book = AddressBook.from_json(json.loads(Path(state.address_book).read_text()))
        chain = DleChainClient(w3, state.contracts)
        vault = state.contracts.get("OdexVault")
        domains = Domains(
            state.chain_id,
            bytes.fromhex(state.contracts["DleRegistry"][2:]),
            bytes.fromhex(state.contracts["CoNETCash"][2:]),
            None if vault is None else bytes.fromhex(vault[2:]),
        )
        return cls(state, w3, book, chain, ArchiveGroups(chain), domains)

    @property
    def directory(self) -> Path:
        return Path(self.state.directory)

    def contract(self, name: str, address: str | None = None) -> Contract:
        return load_contract(self.w3, name, address or self.state.contracts[name])

    def transport(self, secret: bytes | None = None) -> HttpTransport:
        """With `secret`, a wallet's transport: every request signed by it (nodes answer it as far as it
        is a participant). Without, the operator's: each request signed by the key of the node it is
        sent to (the devnet derives every node's key from its name), which that node admits as one of
        its own group — for status, conservation checks and benchmarks, never for a wallet."""
        if secret is not None:
            return HttpTransport(self.state.directory_map(), secret=secret)
        keys = {bytes.fromhex(n.address[2:]): node_key(n.name) for n in self.state.nodes}
        return HttpTransport(self.state.directory_map(), secret=keys.get)

    def chain_of(self, note: int) -> tuple[bytes, int]:
        """Note `note`'s chain id and the archive group that keeps it; DevnetError when not open."""
        chain = bytes(self.chain.cash.functions.chainOf(note).call())
        if not self.chain.is_registered(chain):
            status = int(self.chain.cash.functions.noteOf(note).call()[0])
            what = {0: "does not exist", 1: "is an order not yet filled"}.get(status, "has no registered chain yet")
            raise DevnetError(f"note {note} {what}")
        return chain, self.chain.chain_record(chain).group

    def note_chain(self, transport: HttpTransport, note: int) -> NoteChain:
        chain, group = self.chain_of(note)
        return NoteChain.connect(transport, self.groups.group_of, self.domains, note, chain, group)

    def sender(self, secret: bytes) -> DleChainClient:
        return DleChainClient(self.w3, self.state.contracts, secret)


def wallet_path(directory: Path, name: str) -> Path:
    return directory / "wallets" / f"{name}.key"


def load_wallet(client: DevnetClient, name: str | None = None, key_file: Path | None = None) -> bytes:
    """A user wallet's key: `key_file`, else the devnet wallet `name` (created on first use). A wallet
    without gas gets 1 ETH from a development account (the devnet's chain only)."""
    if key_file is not None:
        try:
            secret = bytes.fromhex(key_file.read_text().strip().removeprefix("0x"))
        except (OSError, ValueError) as error:
            raise DevnetError(f"cannot read a key from {key_file}: {error}") from error
        if len(secret) != 32:
            raise DevnetError(f"{key_file} holds {len(secret)} bytes, not a 32-byte key")
    else:
        path = wallet_path(client.directory, name or "default")
        if path.exists():
            secret = bytes.fromhex(path.read_text().strip().removeprefix("0x"))
        else:
            secret = wallet_secret(name or "default")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secret.hex() + "\n")
            path.chmod(0o600)
    address = _checksum(address_of_secret(secret))
    if int(client.w3.eth.get_balance(Web3.to_checksum_address(address))) < ETH // 2:
        send_eth(client.w3, dev_account_key(WALLET_FUNDER), address, ETH)
    return secret


# -- status ---------------------------------------------------------------------------------------------


@dataclass
class NodeStatus:
    record: NodeRecord
    running: bool
    answering: bool
    info: dict[str, Any] | None


@dataclass
class ChainStatus:
    note: int
    status: str
    chain: str
    group: int | None = None
    host: str | None = None
    height: int | None = None
    version: int | None = None
    creator: str | None = None
    witnesses: list[str] = field(default_factory=list)
    validators: list[str] = field(default_factory=list)
    problem: str | None = None
    kind: str = "note"
    """note (CoNETCash) or receipt (an OdexVault receipt; `note` is then the receipt id)."""


@dataclass
class DevnetStatus:
    state: DevnetState
    anvil: bool
    block: int | None
    nodes: list[NodeStatus]
    chains: list[ChainStatus]


_NOTE_STATUS = {0: "none", 1: "ordered", 2: "live", 3: "pooled"}


async def _chain_statuses(client: DevnetClient) -> list[ChainStatus]:
    cash = client.chain.cash.functions
    names = {bytes.fromhex(n.address[2:]): n.name for n in client.state.nodes}
    out = []
    async with client.transport() as transport:
        for note in range(1, int(cash.nextId().call())):
            view = cash.noteOf(note).call()
            row = ChainStatus(note, _NOTE_STATUS.get(int(view[0]), "?"), "0x" + bytes(view[9]).hex())
            out.append(row)
            if row.status not in ("live", "pooled"):
                continue
            try:
                chain, group = client.chain_of(note)
            except DevnetError as error:
                row.problem = str(error)
                continue
            await _read_head(client, transport, names, row, chain, group)
        if "OdexVault" in client.state.contracts:
            vault = client.contract("OdexVault").functions
            for receipt in range(1, int(vault.nextReceipt().call())):
                _asset, _owner, _amount, outstanding, chain, _fee = vault.receiptOf(receipt).call()
                row = ChainStatus(receipt, "live" if outstanding else "withdrawn", "0x" + bytes(chain).hex())
                row.kind = "receipt"
                out.append(row)
                if not client.chain.is_registered(bytes(chain)):
                    row.problem = "its chain is not open yet"
                    continue
                group = client.chain.chain_record(bytes(chain)).group
                await _read_head(client, transport, names, row, bytes(chain), group)
    return out


async def _read_head(
    client: DevnetClient, transport: HttpTransport, names: dict[bytes, str], row: ChainStatus, chain: bytes, group: int
) -> None:
    """Fill `row` from the chain's certified head, read from its host archive node."""
    try:
        keeper = client.groups.group_of(group)
        host = keeper.host_of(chain)
        row.group, row.host = group, names.get(host, "0x" + host.hex())
        dump = ChainDump.decode(await transport.call(host, "head", chain, timeout=5.0))
        block, certificate, _state = dump.blocks[-1]
        keeper.verify(client.domains.certificate(chain, block.header.height, block.hash), certificate)
    except (DevnetError, TransportError, RolesError) as error:
        row.problem = str(error)
        return
    roles = dump.roles.roles
    row.height, row.version = block.header.height, roles.version
    row.creator = names.get(roles.creator, "0x" + roles.creator.hex())
    row.witnesses = [names.get(w, "0x" + w.hex()) for w in roles.witnesses]
    row.validators = [names.get(v, "0x" + v.hex()) for v in roles.validators]


def status(directory: Path | None = None) -> DevnetStatus:
    """Nodes (process running, answering), the mainchain, every note's chain and every pool."""
    directory = (directory or default_dir()).resolve()
    state = DevnetState.load(directory)
    nodes = []
    for node in state.nodes:
        running = process_running(node.pid, node.marker)
        info = node_info(node) if running else None
        nodes.append(NodeStatus(node, running, info is not None, info))
    anvil = state.anvil_running()
    block = None
    chains: list[ChainStatus] = []
    if anvil:
        client = DevnetClient.open(directory)
        block = int(client.w3.eth.block_number)
        chains = asyncio.run(_chain_statuses(client))
    return DevnetStatus(state, anvil, block, nodes, chains)


def _chain_lines(rows: list[ChainStatus]) -> list[str]:
    lines = []
    for chain in rows:
        head = f"  {chain.kind} {chain.note:<3} {chain.status:<8} chain {chain.chain[:18]}…"
        if chain.problem:
            lines.append(f"{head} {chain.problem}")
        elif chain.height is not None:
            lines.append(
                f"{head} group {chain.group} (host {chain.host}), height {chain.height}, roles v{chain.version}"
            )
            lines.append(f"           creator {chain.creator}; witnesses {', '.join(chain.witnesses)}")
            lines.append(f"           validators {', '.join(chain.validators)}")
        else:
            lines.append(head)
    return lines


def describe_status(report: DevnetStatus) -> list[str]:
    """`conet devnet status` as lines of text."""
    state = report.state
    names = {n.address.lower(): n.name for n in state.nodes}
    lines = [
        f"devnet   {state.directory}",
        f"anvil    {state.rpc}  {f'up, block {report.block}' if report.anvil else 'DOWN'}  (pid {state.anvil_pid})",
        "",
        "nodes",
    ]
    for node in report.nodes:
        record = node.record
        health = "up" if node.answering else ("running, not answering" if node.running else "DOWN")
        extra = ""
        if node.info is not None and record.kind == "archive":
            chains = len(node.info.get("chains", []))
            extra = f"group {node.info.get('group')} epoch {node.info.get('epoch')}, chains kept: {chains}"
        elif node.info is not None and record.kind == BOOK and node.info.get("role") == "creator":
            info = node.info
            extra = (
                f"book: {info.get('resting')} resting, {info.get('batches')} batches, "
                f"fills settled {info.get('settled')}/{info.get('fills')}"
            )
        elif node.info is not None and record.kind == BOOK:
            extra = f"book member: {node.info.get('batches')} batches signed"
        elif node.info is not None:
            chains, rounds = len(node.info.get("chains", [])), node.info.get("rounds", 0)
            extra = f"chains kept: {chains}" + (f", blocks proposed: {rounds}" if rounds else "")
        lines.append(f"  {record.name:<14} {record.address}  {record.url:<23} pid {record.pid:<7} {health:<6} {extra}")
    for kind, title in (("note", "notes and their chains"), ("receipt", "oDEX receipts and their chains")):
        rows = [c for c in report.chains if c.kind == kind]
        if kind == "receipt" and not rows:
            continue
        lines += ["", title]
        if not rows:
            lines.append("  (none)")
        lines += _chain_lines(rows)
    lines += ["", "waiting pools"]
    for node in report.nodes:
        if node.record.kind != "archive" or node.info is None:
            continue
        pool = node.info.get("pool", [])
        shown = ", ".join(f"{names.get(str(c['address']).lower(), c['address'])}" for c in pool)
        lines.append(f"  {node.record.name:<12} {len(pool)} waiting, in order: {shown}")
    return lines


@contextmanager
def running_devnet(directory: Path, spec: DevnetSpec | None = None, log: Log = print) -> Iterator[DevnetState]:
    """A devnet for the duration of a `with` block: always brought down, also on failure."""
    state = up(directory, spec, log)
    try:
        yield state
    finally:
        down(directory, log=log)


# -- conservation ---------------------------------------------------------------------------------------


def check(directory: Path | None = None) -> tuple[ConservationReport, ReceiptReport | None, dict[bytes, str]]:
    """The conservation check (offchain/dle/conservation.py) on the running devnet, every chain read
    from its host archive node over HTTP: the notes, and the oDEX receipts when the deployment has a
    vault; also the names of the devnet's nodes and wallets."""
    client = DevnetClient.open(directory)
    names = {bytes.fromhex(n.address[2:]): n.name for n in client.state.nodes}
    wallets = client.directory / "wallets"
    if wallets.is_dir():
        for path in sorted(wallets.glob("*.key")):
            names[address_of_secret(bytes.fromhex(path.read_text().strip().removeprefix("0x")))] = path.stem

    async def run() -> tuple[ConservationReport, ReceiptReport | None]:
        async with client.transport() as transport:
            source = http_source(
                transport, client.groups.group_of, client.domains, lambda c: client.chain.chain_record(c).group
            )
            notes = await check_conservation(client.chain.cash, source)
            vault = client.state.contracts.get("OdexVault")
            receipts = None if vault is None else await check_receipts(client.contract("OdexVault", vault), source)
            return notes, receipts

    notes, receipts = asyncio.run(run())
    return notes, receipts, names
