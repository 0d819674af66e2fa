"""Attacks on the money and the stakes, against the real contracts on anvil through the real chain
client (issue 12, deliverable 12): each attacker tries its worst with real signatures, every attempt
is refused by name — by the client's pre-check and, with the pre-check skipped, by the contract — and
afterwards the backing, the balances, the stakes and the chain records are exactly as before.

The attackers here are the archive-group ones of deliverable 5: the lone archive node of a new group
(the 21st archive node opens a third group and is all of it) and the members who stay after one
leaves. The in-process DLE attacks are in tests/test_dle_attacks.py and test_dle_draw_attacks.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from eth_account import Account
from eth_utils.crypto import keccak
from web3 import Web3

from offchain.chain.addressbook import AddressBook
from offchain.chain.deployer import CONET, Role
from offchain.chain.dle import DleChainClient, ExitCertificate, FaultKind, FaultReport
from offchain.chain.web3_contracts import ContractRevert, Sender, connect, load_contract
from offchain.devnet import dle as devnet
from offchain.devnet.anvil import AnvilNode, start_anvil

pytestmark = pytest.mark.anvil

USDC = 10**6
NOTE = 1  # bought and filled by the fixture; its chain is group 1's (1 % 2) and registered
GENESIS = keccak(b"genesis header of note 1")


def key(label: str) -> bytes:
    return keccak(b"test_chain_attacks " + label.encode())


def address(secret: bytes) -> str:
    found: str = Account.from_key(secret).address
    return found


def sign(digest: bytes, secrets: list[bytes]) -> bytes:
    """Signatures of `digest` by `secrets`, sorted by signer address, as DleRegistry wants."""
    ordered = sorted(secrets, key=lambda s: int(address(s), 16))
    return b"".join(bytes(Account.unsafe_sign_hash(digest, s).signature) for s in ordered)


@dataclass
class World:
    node: AnvilNode
    w3: Web3
    book: AddressBook
    funder: bytes
    client: DleChainClient
    archives: list[bytes]
    cbdc: bytes
    buyer: bytes

    @property
    def addresses(self) -> dict[str, str]:
        return {name: deployed.address for name, deployed in self.book.contracts.items()}

    def contract(self, name: str) -> Any:
        return load_contract(self.w3, name, self.book.address(name))

    def group(self, group: int) -> list[bytes]:
        nodes = self.contract("NodeRegistry").functions
        return [
            s
            for s in self.archives
            if nodes.archiveGroupOf(nodes.tokenOf(address(s), int(Role.ARCHIVE)).call()).call() == group
        ]

    def client_of(self, secret: bytes) -> DleChainClient:
        return DleChainClient.from_address_book(self.w3, self.book, secret, receipt_timeout=30)

    def join_archive(self, label: str) -> bytes:
        secret = key(label)
        minimum = int(self.contract("Staking").functions.minimumStake(int(Role.ARCHIVE)).call())
        devnet.fund(self.w3, self.addresses, self.funder, address(secret), eth=devnet.ETH, conet=minimum)
        devnet.stake(self.w3, self.addresses, secret, Role.ARCHIVE, minimum)
        devnet.register_node(self.w3, self.addresses, secret, Role.ARCHIVE, "http://127.0.0.1:1")
        self.archives.append(secret)
        return secret

    def snapshot(self) -> dict[str, Any]:
        """Everything an attack here could move: the note, the backing, the CBDC's and the archive
        nodes' stakes, the token balances of everyone involved, the chain records and epochs."""
        cash = self.contract("CoNETCash").functions
        staking = self.contract("Staking").functions
        stablecoin = self.contract("MockStablecoin").functions
        registry = self.contract("DleRegistry").functions
        people = [address(s) for s in (*self.archives, self.cbdc, self.buyer)]
        return {
            "note": cash.noteOf(NOTE).call(),
            "outstanding": cash.outstandingOf(NOTE).call(),
            "backing": stablecoin.balanceOf(self.book.address("CoNETCash")).call(),
            "stablecoin": [stablecoin.balanceOf(p).call() for p in people],
            "stakes": [staking.stakeOf(p, int(role)).call() for p in people for role in (Role.ARCHIVE, Role.CBDC)],
            "chains": [
                registry.isRegistered(self.client.chain_id_of(self.book.address("CoNETCash"), n)).call()
                for n in range(1, 12)
            ],
            "epochs": [registry.currentEpoch(g).call() for g in range(3)],
            "nonces": [cash.isExitNonceUsed(NOTE, n).call() for n in range(3)],
        }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """The deploy script's contracts on a fresh anvil; four staked archive nodes in two groups with
    their first epochs; a staked CBDC; note 1 bought, filled on its draw's certificate and its chain
    registered by group 1."""
    node = start_anvil()
    try:
        book = devnet.deploy_contracts(tmp_path_factory.mktemp("attacks"), node.uri, log=lambda line: None)
        w3 = connect(node.uri)
        funder = devnet.dev_account_key(0)
        world = World(
            node, w3, book, funder, DleChainClient.from_address_book(w3, book, funder), [], key("cbdc"), key("buyer")
        )
        for i in range(4):
            world.join_archive(f"archive {i}")
        cbdc_minimum = int(world.contract("Staking").functions.minimumStake(int(Role.CBDC)).call())
        devnet.fund(
            w3, world.addresses, funder, address(world.cbdc), eth=devnet.ETH, conet=cbdc_minimum + 10_000 * CONET
        )
        devnet.stake(w3, world.addresses, world.cbdc, Role.CBDC, cbdc_minimum)
        devnet.send_eth(w3, funder, address(world.buyer), devnet.ETH)
        for group in (0, 1):
            world.client.refresh_group(group)
        cash, stablecoin = book.address("CoNETCash"), book.address("MockStablecoin")
        buyer = Sender(w3, world.buyer)
        buyer.transact(world.contract("MockStablecoin").functions.mint(address(world.buyer), 100 * USDC))
        buyer.transact(world.contract("MockStablecoin").functions.approve(cash, 2**256 - 1))
        buyer.transact(world.contract("CoNETCash").functions.buy(stablecoin, 50 * USDC))
        Sender(w3, world.cbdc).transact(world.contract("CoNETToken").functions.approve(cash, 2**256 - 1))
        draw = (NOTE, address(world.cbdc), b"\x00" * 32, 1)
        certificate = sign(world.client.digests.cbdc_draw(*draw), world.group(1))
        Sender(w3, world.cbdc).transact(world.contract("CoNETCash").functions.fill(draw, 1, certificate))
        genesis = sign(world.client.digests.genesis(cash, NOTE, GENESIS, 1), world.group(1))
        world.client.register_chain(cash, NOTE, GENESIS, 1, 1, genesis)
        yield world
    finally:
        node.stop()


def refused(call: Callable[..., Any], *args: Any, **kwargs: Any) -> ContractRevert:
    with pytest.raises(ContractRevert) as caught:
        call(*args, **kwargs)
    return caught.value


def both_ways(call: Callable[..., Any], *args: Any) -> tuple[ContractRevert, ContractRevert]:
    """The refusal found by the client's pre-check, and the contract's own with the pre-check skipped."""
    return refused(call, *args, precheck=True), refused(call, *args, precheck=False)


def test_the_members_who_stay_cannot_use_the_epoch_a_member_left(world: World) -> None:
    """The two of group 1 sign an exit of the whole note to a stranger; one of them unbonds first. The
    old epoch's certificate is worthless, and the one who stayed is no group alone."""
    leaver, stayer = world.group(1)
    chain = bytes(world.contract("CoNETCash").functions.chainOf(NOTE).call())
    theft = ExitCertificate(NOTE, chain, 9, address(world.buyer), address(stayer), 50 * USDC, 0)
    both = sign(world.client.digests.exit(theft), [leaver, stayer])
    epoch = world.client.current_epoch(1)
    staking = world.contract("Staking").functions
    Sender(world.w3, leaver).transact(
        staking.requestUnstake(int(Role.ARCHIVE), int(staking.stakeOf(address(leaver), int(Role.ARCHIVE)).call()))
    )
    assert world.client.refresh_group(1) == (epoch + 1, True)
    before = world.snapshot()
    for answer in both_ways(world.client.submit_exit, theft, epoch, both):
        assert (answer.error, answer.inputs) == ("EpochEnded", {"group": 1, "epoch": epoch, "current": epoch + 1})
    alone = sign(world.client.digests.exit(theft), [stayer])
    for answer in both_ways(world.client.submit_exit, theft, epoch + 1, alone):
        assert (answer.error, answer.inputs) == (
            "GroupTooSmall",
            {"group": 1, "epoch": epoch + 1, "size": 1, "minimum": 2},
        )
    assert world.snapshot() == before


def test_the_lone_archive_node_of_a_new_group_can_open_exit_and_slash_nothing(world: World) -> None:
    nodes = world.contract("NodeRegistry").functions
    while int(nodes.groupCount().call()) < 3:
        world.join_archive(f"joiner {len(world.archives)}")
    lone = world.archives[-1]
    assert len(world.archives) == 21 and world.group(2) == [lone]
    attacker = world.client_of(lone)
    assert attacker.refresh_group(2) == (1, True)
    before = world.snapshot()
    cash = world.book.address("CoNETCash")

    # Register the chain of a future note of its own group (5 % 3 == 2): a group of one is no group.
    for answer in both_ways(
        attacker.register_chain, cash, 5, GENESIS, 2, 1, sign(attacker.digests.genesis(cash, 5, GENESIS, 2), [lone])
    ):
        assert (answer.error, answer.inputs) == ("GroupTooSmall", {"group": 2, "epoch": 1, "size": 1, "minimum": 2})
    # Register another group's future note (7 % 3 == 1) in its own name: the chain is not its group's.
    for answer in both_ways(
        attacker.register_chain, cash, 7, GENESIS, 2, 1, sign(attacker.digests.genesis(cash, 7, GENESIS, 2), [lone])
    ):
        assert (answer.error, answer.inputs) == ("WrongGroup", {"assetId": 7, "given": 2, "expected": 1})
    # Exit note 1's backing to itself on its own certificate: note 1's chain is group 1's.
    chain = bytes(world.contract("CoNETCash").functions.chainOf(NOTE).call())
    theft = ExitCertificate(NOTE, chain, 9, address(world.buyer), address(lone), 50 * USDC, 0)
    current = world.client.current_epoch(1)
    for answer in both_ways(attacker.submit_exit, theft, current, sign(attacker.digests.exit(theft), [lone])):
        assert (answer.error, answer.inputs) == ("SignersNotGroup", {"group": 1, "epoch": current})
    # Slash the note's CBDC for a fault it never committed: its own word is missing (the attacker's is no
    # substitute), and even with a real vote of the CBDC's the lone node is not the chain's group.
    block = keccak(b"a block the CBDC signed")
    report = FaultReport(
        chain, 3, 0, address(world.cbdc), Role.CBDC, FaultKind.SIGNED_INVALID_BLOCK, block, keccak(b"made up"),
        address(lone),
    )  # fmt: skip
    group_word = sign(attacker.digests.fault(report), [lone])
    forged = sign(attacker.digests.block(chain, 3, 0, Role.CBDC, block), [lone])
    for answer in both_ways(attacker.report_fault, report, forged, current, group_word):
        inputs = {name: str(value).lower() for name, value in answer.inputs.items()}
        assert answer.error == "NotOffendersSignature"
        assert inputs == {"signer": address(lone).lower(), "offender": address(world.cbdc).lower()}
    vote = sign(attacker.digests.block(chain, 3, 0, Role.CBDC, block), [world.cbdc])
    for answer in both_ways(attacker.report_fault, report, vote, current, group_word):
        assert (answer.error, answer.inputs) == ("SignersNotGroup", {"group": 1, "epoch": current})

    assert world.snapshot() == before
