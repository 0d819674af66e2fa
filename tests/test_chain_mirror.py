"""The chain mirror on a real anvil with the real deployment: it follows a buy + fill and stakes, keeps
queryable state, resumes exactly where it stopped (closed, killed, or failed in the middle of a
range), honours its confirmation depth and gives the same result whatever its range size."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from coincurve import PrivateKey
from eth_account import Account
from web3 import Web3

from offchain.chain import addressbook
from offchain.chain.addressbook import AddressBook
from offchain.chain.deployer import CONET, Role
from offchain.chain.mirror import (
    ArchiveGroupJoined,
    EpochStarted,
    Mirror,
    MirrorError,
    MirrorEvent,
    NodeRegistered,
    NoteIssued,
    ParameterSet,
    StablecoinListed,
    Staked,
    UnstakeRequested,
)
from offchain.chain.web3_contracts import Sender, connect, load_contract
from offchain.devnet.anvil import DEV_MNEMONIC, AnvilNode, rpc, start_anvil
from offchain.toolchain import project_root

pytestmark = pytest.mark.anvil

USDC = 10**6
DEPLOYER, BUYER, CBDC, WITNESS, ARCHIVE = 0, 1, 2, 3, 4
GROUP_ARCHIVES = (6, 7, 8, 9)  # the fixture's archive nodes: token ids 1 to 4, two in each group
KILL_TIMEOUT = 60.0


def dev_key(index: int) -> bytes:
    Account.enable_unaudited_hdwallet_features()
    return bytes(Account.from_mnemonic(DEV_MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}").key)


@dataclass
class Devnet:
    node: AnvilNode
    w3: Web3
    book: AddressBook
    senders: dict[int, Sender]

    def contract(self, name: str) -> Any:
        return load_contract(self.w3, name, self.book.address(name))

    def send(self, who: int, contract: str, function: str, *args: Any) -> Any:
        return self.senders[who].transact(getattr(self.contract(contract).functions, function)(*args))

    def address(self, who: int) -> str:
        return self.senders[who].address


@pytest.fixture(scope="module")
def devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    """A fresh anvil with everything deployed by `ape run deploy`, as an operator deploys it."""
    node = start_anvil()
    books = tmp_path_factory.mktemp("books")
    try:
        ape = str(Path(sys.executable).with_name("ape"))
        done = subprocess.run(
            [ape, "run", "deploy", "--network", f"avalanche:anvil:{node.uri}"],
            cwd=project_root(),
            env={**os.environ, "CONET_DEPLOYMENTS_DIR": str(books)},
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        w3 = connect(node.uri)
        senders = {i: Sender(w3, dev_key(i), receipt_timeout=30) for i in (*range(6), *GROUP_ARCHIVES)}
        devnet = Devnet(node, w3, addressbook.load("avalanche:anvil", books), senders)
        # Two archive nodes per group (a group of one certifies nothing) and both groups' first epoch:
        # they certify the CBDC's draws.
        for index in GROUP_ARCHIVES:
            register_archive(devnet, index, ["https://archive.example"])
        for group in (0, 1):
            devnet.send(DEPLOYER, "DleRegistry", "refreshGroup", group)
        # The CBDC stakes last, so every test's fills find it staked.
        staking = devnet.contract("Staking")
        minimum = staking.functions.minimumStake(int(Role.CBDC)).call()
        devnet.send(DEPLOYER, "CoNETToken", "transfer", devnet.address(CBDC), minimum + 10_000 * CONET)
        devnet.send(CBDC, "CoNETToken", "approve", staking.address, minimum)
        devnet.send(CBDC, "Staking", "stake", int(Role.CBDC), minimum)
        devnet.send(CBDC, "CoNETToken", "approve", devnet.book.address("CoNETCash"), 2**256 - 1)
        yield devnet
    finally:
        node.stop()


def register_archive(devnet: Devnet, index: int, endpoints: list[str], prices: tuple[int, ...] = (0,) * 4) -> None:
    """Dev account `index` stakes the archive minimum and registers its archive node NFT."""
    archive_minimum = devnet.contract("Staking").functions.minimumStake(int(Role.ARCHIVE)).call()
    devnet.send(DEPLOYER, "CoNETToken", "transfer", devnet.address(index), archive_minimum)
    devnet.send(index, "CoNETToken", "approve", devnet.book.address("Staking"), archive_minimum)
    devnet.send(index, "Staking", "stake", int(Role.ARCHIVE), archive_minimum)
    public_key = PrivateKey(dev_key(index)).public_key.format(compressed=False)[1:]
    region = "eu" if index == ARCHIVE else ""
    devnet.send(index, "NodeRegistry", "register", int(Role.ARCHIVE), public_key, endpoints, prices, region)


def buy_and_fill(devnet: Devnet, amount: int) -> int:
    """BUYER buys a note of `amount` mUSDC and the staked CBDC fills it, on its draw's certificate by
    every member of the current epoch of the note's group. Returns the note id."""
    cash, stablecoin = devnet.book.address("CoNETCash"), devnet.book.address("MockStablecoin")
    devnet.send(BUYER, "MockStablecoin", "mint", devnet.address(BUYER), amount)
    devnet.send(BUYER, "MockStablecoin", "approve", cash, amount)
    note = int(devnet.contract("CoNETCash").functions.nextId().call())
    devnet.send(BUYER, "CoNETCash", "buy", stablecoin, amount)
    registry = devnet.contract("DleRegistry").functions
    group = note % int(devnet.contract("NodeRegistry").functions.groupCount().call())
    epoch = int(registry.currentEpoch(group).call())
    members = {address.lower() for address in registry.epochMembers(group, epoch).call()}
    keys = [dev_key(i) for i in (ARCHIVE, *GROUP_ARCHIVES) if devnet.address(i).lower() in members]
    assert len(keys) == len(members)
    draw = (note, devnet.address(CBDC), b"\x5e" * 32, group)
    digest = bytes(devnet.contract("CoNETCash").functions.cbdcDrawDigest(draw).call())
    signed = sorted((Account.from_key(key).address.lower(), Account.unsafe_sign_hash(digest, key)) for key in keys)
    devnet.send(CBDC, "CoNETCash", "fill", draw, epoch, b"".join(bytes(sig.signature) for _, sig in signed))
    return note


def stake_witness(devnet: Devnet, amount: int) -> None:
    staking = devnet.book.address("Staking")
    devnet.send(DEPLOYER, "CoNETToken", "transfer", devnet.address(WITNESS), amount)
    devnet.send(WITNESS, "CoNETToken", "approve", staking, amount)
    devnet.send(WITNESS, "Staking", "stake", int(Role.WITNESS), amount)


def from_scratch(devnet: Devnet, database: Path, **options: Any) -> list[MirrorEvent]:
    """Every event a new mirror finds from the deployment on: the reference a resumed one must equal."""
    mirror = Mirror.from_address_book(devnet.w3, devnet.book, database, **options)
    try:
        mirror.poll()
        return mirror.events()
    finally:
        mirror.close()


def positions(events: list[MirrorEvent]) -> list[tuple[int, int]]:
    return [event.position for event in events]


def test_the_mirror_follows_the_deployment_a_buy_and_fill_and_a_stake(devnet: Devnet, tmp_path: Path) -> None:
    mirror = Mirror.from_address_book(devnet.w3, devnet.book, tmp_path / "mirror.db")
    deployed = mirror.poll()
    # The deployment itself: the parameter store's constructor sets every parameter, then the mock
    # stablecoin is listed; then the fixture's four archive nodes stake and register, each group's first
    # epoch opens, and the CBDC stakes.
    archives = [Staked, NodeRegistered, ArchiveGroupJoined] * 4 + [EpochStarted] * 2
    assert [type(e) for e in deployed] == [ParameterSet] * 9 + [StablecoinListed, *archives, Staked]
    assert mirror.parameters()["TRANSFER_FEE_BPS"] == 5
    assert mirror.parameter("ORDER_TIMEOUT") == 24 * 3600
    stablecoin = devnet.book.address("MockStablecoin")
    assert mirror.stablecoins()[stablecoin].listed and mirror.stablecoins()[stablecoin].decimals == 6
    assert mirror.cursor().scanned_to == devnet.w3.eth.block_number

    note = buy_and_fill(devnet, 25 * USDC)
    stake_witness(devnet, 1_500 * CONET)
    events = mirror.poll()

    assert [type(e) for e in events] == [NoteIssued, Staked]
    assert positions(events) == sorted(positions(events))
    issued, witness_stake = events
    cbdc_stake = deployed[-1]
    assert isinstance(issued, NoteIssued)
    cash = devnet.contract("CoNETCash")
    receipt = devnet.w3.eth.get_transaction_receipt(issued.tx_hash)
    assert receipt["blockNumber"] == issued.block_number
    assert (issued.note, issued.buyer, issued.cbdc, issued.stablecoin, issued.face_value) == (
        note,
        devnet.address(BUYER),
        devnet.address(CBDC),
        stablecoin,
        25 * USDC,
    )
    assert issued.chain == bytes(cash.functions.chainOf(note).call())
    assert issued.selection == b"\x5e" * 32
    assert issued.burned == cash.functions.burnFor(stablecoin, 25 * USDC).call() > 0

    state = mirror.note(note)
    assert state is not None
    assert (state.status, state.outstanding, state.buyer, state.cbdc, state.chain) == (
        "live",
        25 * USDC,
        devnet.address(BUYER),
        devnet.address(CBDC),
        issued.chain,
    )
    terms = mirror.genesis_terms(note)
    assert (terms.note, terms.chain, terms.mainchain_id, terms.cash, terms.value, terms.holder, terms.cbdc) == (
        note,
        issued.chain,
        43112,
        cash.address,
        25 * USDC,
        devnet.address(BUYER),
        devnet.address(CBDC),
    )
    assert terms.transfer_fee_bps == 5 and terms.block_number == issued.block_number
    assert terms.raw_addresses()["holder"] == bytes.fromhex(devnet.address(BUYER)[2:])
    with pytest.raises(MirrorError, match="no NoteMinted"):
        mirror.genesis_terms(note + 1)

    staking = devnet.contract("Staking")
    for event, who, role in ((cbdc_stake, CBDC, Role.CBDC), (witness_stake, WITNESS, Role.WITNESS)):
        assert isinstance(event, Staked) and event.node == devnet.address(who) and event.role is role
        mirrored = mirror.stake(devnet.address(who), role)
        assert mirrored.staked == staking.functions.stakeOf(devnet.address(who), int(role)).call() > 0
    assert mirror.stake(devnet.address(BUYER), Role.CBDC).staked == 0
    # Stored events read back equal to what poll returned.
    assert mirror.events(after=deployed[-1].position) == events
    assert mirror.events(kinds=[NoteIssued]) == [issued]
    mirror.close()


def test_a_restarted_mirror_resumes_exactly_where_it_stopped(devnet: Devnet, tmp_path: Path) -> None:
    database = tmp_path / "mirror.db"
    first = Mirror.from_address_book(devnet.w3, devnet.book, database)
    before = first.poll()
    cursor = first.cursor()
    first.close()

    # While it is stopped: a note, a stake and an unstake, an archive node with its group, an epoch.
    note = buy_and_fill(devnet, 40 * USDC)
    stake_witness(devnet, 1_500 * CONET)
    devnet.send(WITNESS, "Staking", "requestUnstake", int(Role.WITNESS), 500 * CONET)
    endpoints = ["https://archive.example:443", "wss://archive.example:8443"]
    register_archive(devnet, ARCHIVE, endpoints, (1, 2, 3, 4))
    public_key = PrivateKey(dev_key(ARCHIVE)).public_key.format(compressed=False)[1:]
    token_id = int(devnet.contract("NodeRegistry").functions.tokenOf(devnet.address(ARCHIVE), 1).call())
    group = int(devnet.contract("NodeRegistry").functions.archiveGroupOf(token_id).call())
    devnet.send(DEPLOYER, "DleRegistry", "refreshGroup", group)

    second = Mirror.from_address_book(devnet.w3, devnet.book, database)
    assert second.cursor() == cursor
    resumed = second.poll()
    assert min(positions(resumed)) > (cursor.block_number, cursor.log_index)
    assert [type(e).__name__ for e in resumed] == [
        "NoteIssued",
        "Staked",
        "UnstakeRequested",
        "Staked",
        "NodeRegistered",
        "ArchiveGroupJoined",
        "EpochStarted",
    ]
    assert second.poll() == []

    # Exactly once: the stopped-and-resumed database equals one built from scratch, event for event.
    everything = second.events()
    assert everything == before + resumed
    assert len(set(positions(everything))) == len(everything)
    assert everything == from_scratch(devnet, tmp_path / "scratch.db")

    node = second.node(token_id)
    assert node is not None
    assert (node.owner, node.role, node.public_key, node.endpoints, node.region, node.archive_group) == (
        devnet.address(ARCHIVE),
        Role.ARCHIVE,
        public_key,
        tuple(endpoints),
        "eu",
        group,
    )
    assert (node.prices.outbound_per_mb, node.prices.per_mb_memory) == (1, 4)
    # The group's second epoch: the fixture's archive nodes of that group, and this one.
    epoch = second.epoch(group)
    nodes = devnet.contract("NodeRegistry").functions
    fellows = [
        devnet.address(i)
        for i in GROUP_ARCHIVES
        if nodes.archiveGroupOf(nodes.tokenOf(devnet.address(i), 1).call()).call() == group
    ]
    assert len(fellows) == 2
    expected = tuple(sorted((devnet.address(ARCHIVE), *fellows), key=lambda a: int(a, 16)))
    assert epoch is not None and epoch.members == expected and epoch.epoch == 2
    *_, started = second.events(kinds=[EpochStarted])
    assert isinstance(started, EpochStarted) and started.members_hash == epoch.members_hash
    unstaked = second.stake(devnet.address(WITNESS), Role.WITNESS)
    staking = devnet.contract("Staking").functions
    assert unstaked.unbonding >= 500 * CONET
    assert (unstaked.staked, unstaked.unbonding) == (
        staking.stakeOf(devnet.address(WITNESS), int(Role.WITNESS)).call(),
        staking.unbondingOf(devnet.address(WITNESS), int(Role.WITNESS)).call()[0],
    )
    (request,) = second.events(kinds=[UnstakeRequested])
    assert isinstance(request, UnstakeRequested) and unstaked.release_at == request.release_at > 0
    assert second.note(note) is not None
    second.close()


def test_a_range_that_fails_midway_is_not_applied_at_all(
    devnet: Devnet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = tmp_path / "mirror.db"
    mirror = Mirror.from_address_book(devnet.w3, devnet.book, database)
    mirror.poll()
    cursor, count = mirror.cursor(), len(mirror.events())
    note = buy_and_fill(devnet, 10 * USDC)
    stake_witness(devnet, 100 * CONET)

    real = Mirror._apply
    seen: list[MirrorEvent] = []

    def crash_on_second(self: Mirror, event: MirrorEvent) -> None:
        seen.append(event)
        if len(seen) == 2:
            raise ConnectionError("the node went away mid-range")
        real(self, event)

    monkeypatch.setattr(Mirror, "_apply", crash_on_second)
    with pytest.raises(ConnectionError):
        mirror.poll()
    # The first event of the range was applied inside the transaction, then rolled back with it.
    assert mirror.cursor() == cursor
    assert len(mirror.events()) == count
    assert mirror.note(note) is None

    monkeypatch.setattr(Mirror, "_apply", real)
    applied = mirror.poll()
    assert [type(e) for e in applied] == [NoteIssued, Staked]
    assert mirror.note(note) is not None
    assert mirror.events() == from_scratch(devnet, tmp_path / "scratch.db")
    mirror.close()


_FOLLOWER = """
import json, sys, time
from pathlib import Path
from offchain.chain import addressbook
from offchain.chain.mirror import Mirror
from offchain.chain.web3_contracts import connect

uri, books, database = sys.argv[1:4]
mirror = Mirror.from_address_book(connect(uri), addressbook.load("avalanche:anvil", Path(books)), database)
while True:
    mirror.poll()
    cursor = mirror.cursor()
    print(json.dumps([cursor.block_number, cursor.log_index, cursor.scanned_to]), flush=True)
    time.sleep(0.05)
"""


def test_the_cursor_survives_a_kill(devnet: Devnet, tmp_path: Path) -> None:
    database = tmp_path / "mirror.db"
    books = tmp_path / "books"
    addressbook.save(devnet.book, books)
    follower = subprocess.Popen(
        [sys.executable, "-c", _FOLLOWER, devnet.node.uri, str(books), str(database)],
        cwd=project_root(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        note = buy_and_fill(devnet, 5 * USDC)
        target = devnet.w3.eth.block_number
        deadline = time.monotonic() + KILL_TIMEOUT
        reported: list[int] = []
        assert follower.stdout is not None
        while time.monotonic() < deadline:
            line = follower.stdout.readline()
            if not line:
                pytest.fail(f"the follower exited: {follower.stderr.read() if follower.stderr else ''}")
            reported = json.loads(line)
            if reported[2] >= target:
                break
        else:
            pytest.fail("the follower did not catch up in time")
        follower.send_signal(signal.SIGKILL)
        follower.wait(timeout=10)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait(timeout=10)

    mirror = Mirror.from_address_book(devnet.w3, devnet.book, database)
    cursor = mirror.cursor()
    # The last cursor it printed, or a later one it committed before the kill landed.
    assert (cursor.block_number, cursor.log_index, cursor.scanned_to) >= tuple(reported)
    assert mirror.note(note) is not None
    stake_witness(devnet, 100 * CONET)
    resumed = mirror.poll()
    assert [type(e) for e in resumed] == [Staked]
    assert mirror.events() == from_scratch(devnet, tmp_path / "scratch.db")
    mirror.close()


def test_confirmations_hold_back_the_newest_blocks_and_the_range_size_changes_nothing(
    devnet: Devnet, tmp_path: Path
) -> None:
    mirror = Mirror.from_address_book(devnet.w3, devnet.book, tmp_path / "deep.db", confirmations=3)
    mirror.poll()
    head = devnet.w3.eth.block_number
    assert mirror.cursor().scanned_to == head - 3
    note = buy_and_fill(devnet, 7 * USDC)  # mint, approve, buy, fill: the fill is the newest block
    assert all(not isinstance(e, NoteIssued) for e in mirror.poll())
    for _ in range(3):
        rpc(devnet.node.uri, "evm_mine")
    issued = [e for e in mirror.poll() if isinstance(e, NoteIssued)]
    assert [e.note for e in issued] == [note]
    assert mirror.cursor().scanned_to == devnet.w3.eth.block_number - 3
    mirror.close()

    # One block per eth_getLogs: many more requests, the same events.
    assert from_scratch(devnet, tmp_path / "small.db", max_range=1) == from_scratch(devnet, tmp_path / "big.db")


def test_a_database_of_another_deployment_is_refused(devnet: Devnet, tmp_path: Path) -> None:
    database = tmp_path / "mirror.db"
    Mirror.from_address_book(devnet.w3, devnet.book, database).close()
    addresses = {name: d.address for name, d in devnet.book.contracts.items()}
    addresses["CoNETCash"] = devnet.book.address("CoNETToken")
    with pytest.raises(MirrorError, match="another deployment"):
        Mirror(devnet.w3, addresses, database)
    with pytest.raises(MirrorError, match="no address for DleRegistry"):
        Mirror(devnet.w3, {k: v for k, v in addresses.items() if k != "DleRegistry"}, tmp_path / "other.db")
