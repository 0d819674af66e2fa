"""DleChainClient on a real anvil with the real deployment and real archive-group signatures: the
Python digests equal the contracts', a chain is registered on its group's genesis certificate, an exit
certificate pays its receiver, bad certificates fail with the contract's error by name (found by the
pre-check, or decoded from the node's revert when the pre-check is skipped), faults and equivocations
slash, epochs refresh, and a missing receipt times out. The mirror then agrees with all of it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from coincurve import PrivateKey
from eth_account import Account
from eth_utils.crypto import keccak
from web3 import Web3

from offchain.chain import addressbook
from offchain.chain.addressbook import AddressBook
from offchain.chain.deployer import CONET, Role
from offchain.chain.dle import DleChainClient, ExitCertificate, FaultKind, FaultReport, SignedBlock, members_hash
from offchain.chain.mirror import (
    ChainRegistered,
    EquivocationReported,
    FaultReported,
    Mirror,
    NoteExited,
    Slashed,
)
from offchain.chain.web3_contracts import ChainError, ContractRevert, Sender, TransactionTimeout, connect, load_contract
from offchain.devnet.anvil import DEV_MNEMONIC, AnvilNode, rpc, start_anvil
from offchain.toolchain import project_root

pytestmark = pytest.mark.anvil

USDC = 10**6
DEPLOYER, REPORTER = 0, 1
ARCHIVES = (2, 3, 4, 5)  # token ids 1..4: groups 1, 0, 1, 0
CBDC, BUYER, WITNESS, SERVICE = 6, 7, 8, 9
NOTE, GROUP = 1, 1
GENESIS = keccak(b"genesis header of note 1")
EXIT_FEE_BPS = 20


def dev_key(index: int) -> bytes:
    Account.enable_unaudited_hdwallet_features()
    return bytes(Account.from_mnemonic(DEV_MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}").key)


def address_of(index: int) -> str:
    address: str = Account.from_key(dev_key(index)).address
    return address


def sign(digest: bytes, signers: list[int]) -> bytes:
    """The signatures of `signers` (dev account indexes), sorted by address, as DleRegistry wants."""
    keys = sorted((dev_key(i) for i in signers), key=lambda key: int(Account.from_key(key).address, 16))
    return b"".join(bytes(Account.unsafe_sign_hash(digest, key).signature) for key in keys)


@dataclass
class Devnet:
    node: AnvilNode
    w3: Web3
    book: AddressBook
    client: DleChainClient

    def contract(self, name: str) -> Any:
        return load_contract(self.w3, name, self.book.address(name))

    def send(self, who: int, contract: str, function: str, *args: Any) -> Any:
        sender = Sender(self.w3, dev_key(who), receipt_timeout=30)
        return sender.transact(getattr(self.contract(contract).functions, function)(*args))

    def group(self, group: int) -> list[int]:
        registry = self.contract("NodeRegistry").functions
        return [
            i
            for i in ARCHIVES
            if registry.archiveGroupOf(registry.tokenOf(address_of(i), int(Role.ARCHIVE)).call()).call() == group
        ]

    def balance(self, token: str, who: str) -> int:
        return int(self.contract(token).functions.balanceOf(who).call())


@pytest.fixture(scope="module")
def devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    """Deployed by `ape run deploy`; four staked archive nodes in two groups, both groups' first epoch,
    and note 1 bought and filled."""
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
        book = addressbook.load("avalanche:anvil", books)
        devnet = Devnet(
            node, w3, book, DleChainClient.from_address_book(w3, book, dev_key(SERVICE), receipt_timeout=30)
        )
        staking = devnet.contract("Staking").functions
        for index, role, amount in [
            *((i, Role.ARCHIVE, staking.minimumStake(int(Role.ARCHIVE)).call()) for i in ARCHIVES),
            (CBDC, Role.CBDC, staking.minimumStake(int(Role.CBDC)).call()),
            (WITNESS, Role.WITNESS, 1_500 * CONET),
        ]:
            devnet.send(DEPLOYER, "CoNETToken", "transfer", address_of(index), amount + 1_000 * CONET)
            devnet.send(index, "CoNETToken", "approve", book.address("Staking"), amount)
            devnet.send(index, "Staking", "stake", int(role), amount)
            if role is Role.ARCHIVE:
                public_key = PrivateKey(dev_key(index)).public_key.format(compressed=False)[1:]
                devnet.send(
                    index, "NodeRegistry", "register", int(role), public_key, ["https://a.example"], (0,) * 4, ""
                )
        for group in (0, 1):
            assert devnet.client.refresh_group(group) == (1, True)
        devnet.send(CBDC, "CoNETToken", "approve", book.address("CoNETCash"), 2**256 - 1)
        devnet.send(BUYER, "MockStablecoin", "mint", address_of(BUYER), 50 * USDC)
        devnet.send(BUYER, "MockStablecoin", "approve", book.address("CoNETCash"), 50 * USDC)
        devnet.send(BUYER, "CoNETCash", "buy", book.address("MockStablecoin"), 50 * USDC)
        # The CBDC fills on its draw's certificate by every member of the note's group (NOTE % 2).
        draw = (NOTE, address_of(CBDC), b"\x00" * 32, GROUP)
        signatures = sign(devnet.client.digests.cbdc_draw(*draw), devnet.group(GROUP))
        devnet.send(CBDC, "CoNETCash", "fill", draw, 1, signatures)
        yield devnet
    finally:
        node.stop()


@pytest.fixture
def note_chain(devnet: Devnet) -> bytes:
    """Note 1's chain, registered by group 1 (at most once per module)."""
    client, cash = devnet.client, devnet.book.address("CoNETCash")
    chain = client.chain_id_of(cash, NOTE)
    if not client.is_registered(chain):
        digest = client.digests.genesis(cash, NOTE, GENESIS, GROUP)
        client.register_chain(cash, NOTE, GENESIS, GROUP, 1, sign(digest, devnet.group(GROUP)))
    return chain


def certificate(
    chain: bytes, receiver: str, amount: int, nonce: int, height: int = 3, exited_before: bytes = bytes(32)
) -> ExitCertificate:
    return ExitCertificate(NOTE, chain, height, address_of(BUYER), receiver, amount, nonce, exited_before)


def refusal(call: Any, *args: Any, **kwargs: Any) -> ContractRevert:
    """The ContractRevert `call(*args, **kwargs)` raises."""
    with pytest.raises(ContractRevert) as caught:
        call(*args, **kwargs)
    return caught.value


# ---------------------------------------------------------------- digests and views


def test_the_python_digests_equal_the_contracts(devnet: Devnet) -> None:
    client, cash = devnet.client, devnet.book.address("CoNETCash")
    chain = bytes(devnet.contract("CoNETCash").functions.chainOf(NOTE).call())
    assert (
        client.chain_id_of(cash, NOTE)
        == chain
        == bytes(devnet.contract("DleRegistry").functions.chainIdOf(cash, NOTE).call())
    )
    assert client.digests.mainchain_id == 43112
    for group in (0, 1):
        assert client.digests.genesis(cash, NOTE, GENESIS, group) == client.genesis_digest(cash, NOTE, GENESIS, group)
    for height, version, role, header in (
        (0, 0, Role.CBDC, GENESIS),
        (7, 3, Role.WITNESS, keccak(b"block 7")),
        (2**64, 2**70, Role.VALIDATOR, b"\xff" * 32),
    ):
        vote = client.digests.block(chain, height, version, role, header)
        assert vote == client.block_digest(chain, height, version, role, header)
        refusal_ = client.digests.refusal(chain, height, version, role, header)
        assert refusal_ == client.refusal_digest(chain, height, version, role, header) != vote
        # The fast path (plain bytes and ints) and eth_abi's encoder agree.
        assert client.digests.block(chain, height, version, int(role), bytearray(header)) == vote
    assert client.digests.certificate(chain, 7, GENESIS) != client.digests.block(chain, 7, 0, 0, GENESIS)
    exits = [certificate(chain, address_of(REPORTER), 1, 0), certificate(chain, address_of(BUYER), 10**9, 254, 99)]
    for exit_ in exits:
        assert client.digests.exit(exit_) == client.exit_digest(exit_)
    report = FaultReport(
        chain,
        5,
        2,
        address_of(WITNESS),
        Role.WITNESS,
        FaultKind.REFUSED_VALID_BLOCK,
        keccak(b"block 5"),
        GENESIS,
        address_of(REPORTER),
    )
    assert client.digests.fault(report) == client.fault_digest(report)
    other = FaultReport(
        chain,
        5,
        2,
        address_of(WITNESS),
        Role.VALIDATOR,
        FaultKind.REFUSED_VALID_BLOCK,
        keccak(b"block 5"),
        GENESIS,
        address_of(REPORTER),
    )
    assert client.digests.fault(other) == client.fault_digest(other) != client.digests.fault(report)
    # And the digests are what the DLE's keys sign: the registry recovers exactly the group from them.
    digest = client.digests.genesis(cash, NOTE, GENESIS, GROUP)
    signers = client.check_certificate(GROUP, 1, digest, sign(digest, devnet.group(GROUP)))
    assert signers == sorted((address_of(i) for i in devnet.group(GROUP)), key=lambda a: int(a, 16))


def test_epochs_are_read_and_refreshed_only_when_the_group_changed(devnet: Devnet) -> None:
    client = devnet.client
    for group in (0, 1):
        members = client.epoch_members(group, 1)
        assert members == sorted((address_of(i) for i in devnet.group(group)), key=lambda a: int(a, 16))
        assert client.epoch(group, 1).members_hash == members_hash(members)
        assert client.current_epoch(group) >= 1
    block = devnet.w3.eth.block_number
    assert client.refresh_group(GROUP) == (client.current_epoch(GROUP), False)
    assert devnet.w3.eth.block_number == block, "an unchanged group costs no transaction"
    with pytest.raises(ContractRevert, match="UnknownArchiveGroup"):
        client.refresh_group(7)


# ---------------------------------------------------------------- registration


def test_a_chain_is_registered_with_its_groups_signatures(devnet: Devnet, note_chain: bytes) -> None:
    client, cash = devnet.client, devnet.book.address("CoNETCash")
    assert client.is_registered(note_chain)
    record = client.chain_record(note_chain)
    assert (record.chain, record.genesis_hash, record.asset, record.group, record.asset_id) == (
        note_chain,
        GENESIS,
        cash,
        GROUP,
        NOTE,
    )
    assert record.registered_at > 0
    signatures = sign(client.digests.genesis(cash, NOTE, GENESIS, GROUP), devnet.group(GROUP))
    for precheck in (True, False):
        refused = refusal(client.register_chain, cash, NOTE, GENESIS, GROUP, 1, signatures, precheck=precheck)
        assert (refused.error, refused.inputs) == ("ChainAlreadyRegistered", {"chain": note_chain})
    unknown = client.chain_id_of(cash, 404)
    assert not client.is_registered(unknown)
    assert refusal(client.chain_record, unknown).error == "ChainNotRegistered"


@pytest.mark.parametrize(
    ("flaw", "error"),
    [
        ("missing signer", "SignersNotGroup"),
        ("other group", "SignersNotGroup"),
        ("unsorted", "UnsortedSigners"),
        ("unknown epoch", "UnknownEpoch"),
        ("empty", "MalformedSignatures"),
    ],
)
@pytest.mark.parametrize("precheck", [True, False], ids=["precheck", "node"])
def test_a_bad_genesis_certificate_is_refused_by_name(devnet: Devnet, flaw: str, error: str, precheck: bool) -> None:
    client, cash = devnet.client, devnet.book.address("CoNETCash")
    digest = client.digests.genesis(cash, 77, GENESIS, GROUP)
    members = devnet.group(GROUP)
    epoch = 9 if flaw == "unknown epoch" else 1
    signatures = {
        "missing signer": sign(digest, members[:1]),
        "other group": sign(digest, devnet.group(1 - GROUP)),
        "unsorted": sign(digest, members)[65:] + sign(digest, members)[:65],
        "unknown epoch": sign(digest, members),
        "empty": b"",
    }[flaw]
    refused = refusal(client.register_chain, cash, 77, GENESIS, GROUP, epoch, signatures, precheck=precheck)
    assert refused.error == error
    assert error in str(refused)
    assert not client.is_registered(client.chain_id_of(cash, 77))


# ---------------------------------------------------------------- exits


def test_an_exit_certificate_pays_its_receiver(devnet: Devnet, note_chain: bytes) -> None:
    client, cash = devnet.client, devnet.contract("CoNETCash").functions
    receiver = Account.create().address
    exit_ = certificate(note_chain, receiver, 10 * USDC, 0)
    before = int(cash.outstandingOf(NOTE).call())
    payout = client.submit_exit(exit_, 1, sign(client.digests.exit(exit_), devnet.group(GROUP)))
    fee = -(-10 * USDC * EXIT_FEE_BPS // 10_000)
    assert payout == 10 * USDC - fee == 9_980_000
    assert devnet.balance("MockStablecoin", receiver) == payout
    assert int(cash.outstandingOf(NOTE).call()) == before - 10 * USDC
    assert cash.isExitNonceUsed(NOTE, 0).call()


@pytest.mark.parametrize(
    ("flaw", "error"),
    [
        ("replayed nonce", "CertificateUsed"),
        ("a later exit first", "ExitOutOfOrder"),
        ("a forked history", "ExitHistoryMismatch"),
        ("missing signer", "SignersNotGroup"),
        ("other group", "SignersNotGroup"),
        ("altered after signing", None),
        ("more than outstanding", "InvalidExitAmount"),
        ("another note's chain", "WrongChain"),
        ("unknown epoch", "UnknownEpoch"),
    ],
)
@pytest.mark.parametrize("precheck", [True, False], ids=["precheck", "node"])
def test_a_bad_exit_certificate_gives_a_clear_error(
    devnet: Devnet, note_chain: bytes, flaw: str, error: str | None, precheck: bool
) -> None:
    client, cash = devnet.client, devnet.contract("CoNETCash").functions
    if not cash.isExitNonceUsed(NOTE, 0).call():
        test_an_exit_certificate_pays_its_receiver(devnet, note_chain)
    receiver = Account.create().address
    nonce = {"replayed nonce": 0, "a later exit first": 2}.get(flaw, 1)
    amount = 10**12 if flaw == "more than outstanding" else USDC
    chain = client.chain_id_of(devnet.book.address("CoNETCash"), 2) if flaw == "another note's chain" else note_chain
    head = client.exit_history(NOTE)[1] if flaw != "a forked history" else keccak(b"another fork")[:27] + bytes(5)
    exit_ = certificate(chain, receiver, amount, nonce, exited_before=head)
    members = devnet.group(GROUP)
    signers = {"missing signer": members[:1], "other group": devnet.group(1 - GROUP)}.get(flaw, members)
    signatures = sign(client.digests.exit(exit_), signers)
    epoch = 5 if flaw == "unknown epoch" else 1
    if flaw == "altered after signing":
        # The receiver swapped after the group signed: the signatures recover to strangers, in some order.
        exit_ = certificate(chain, address_of(REPORTER), amount, nonce, exited_before=head)
    before = client.exit_history(NOTE), int(cash.outstandingOf(NOTE).call())
    refused = refusal(client.submit_exit, exit_, epoch, signatures, precheck=precheck)
    assert refused.error == (error or refused.error)
    if error is None:
        assert refused.error in ("SignersNotGroup", "UnsortedSigners")
    assert refused.error in str(refused)
    if flaw == "a later exit first":
        assert refused.inputs == {"note": NOTE, "expected": 1, "given": 2}
        if precheck:  # the client's own words say what to do
            assert "pay exit 1 of 1 first" in str(refused)
    assert devnet.balance("MockStablecoin", receiver) == 0
    assert not cash.isExitNonceUsed(NOTE, 1).call()
    assert (client.exit_history(NOTE), int(cash.outstandingOf(NOTE).call())) == before


# ---------------------------------------------------------------- faults


def test_a_certified_fault_slashes_the_offender_and_rewards_the_reporter(devnet: Devnet, note_chain: bytes) -> None:
    client = devnet.client
    staking = devnet.contract("Staking").functions
    header = keccak(b"block 4, invalid")
    report = FaultReport(
        note_chain,
        4,
        1,
        address_of(WITNESS),
        Role.WITNESS,
        FaultKind.SIGNED_INVALID_BLOCK,
        header,
        keccak(b"evidence bundle"),
        address_of(REPORTER),
    )
    reward = 1_500 * CONET * int(staking.reporterRewardBps().call()) // 10_000
    before = devnet.balance("CoNETToken", address_of(REPORTER))
    signatures = sign(client.digests.fault(report), devnet.group(GROUP))
    vote = sign(client.digests.block(note_chain, 4, 1, Role.WITNESS, header), [WITNESS])
    wrong = refusal(client.report_fault, report, vote, 1, sign(client.digests.fault(report), devnet.group(0)))
    assert wrong.error == "SignersNotGroup"
    # Without the offender's own vote (here the reporter's, or its vote under another roles version)
    # the group's word is not enough, checked before sending and by the contract.
    for precheck in (True, False):
        for forged in (
            sign(client.digests.block(note_chain, 4, 1, Role.WITNESS, header), [REPORTER]),
            sign(client.digests.block(note_chain, 4, 2, Role.WITNESS, header), [WITNESS]),
        ):
            unsigned = refusal(client.report_fault, report, forged, 1, signatures, precheck=precheck)
            assert unsigned.error == "NotOffendersSignature"
    assert staking.stakeOf(address_of(WITNESS), int(Role.WITNESS)).call() == 1_500 * CONET

    assert client.report_fault(report, vote, 1, signatures) == 1_500 * CONET
    assert staking.stakeOf(address_of(WITNESS), int(Role.WITNESS)).call() == 0
    assert devnet.balance("CoNETToken", address_of(REPORTER)) == before + reward
    assert staking.isEvidenceUsed(report.evidence_key).call()
    for precheck in (True, False):
        replay = refusal(client.report_fault, report, vote, 1, signatures, precheck=precheck)
        assert (replay.error, replay.inputs) == ("EvidenceAlreadyUsed", {"evidenceHash": report.evidence_key})
    unknown = FaultReport(
        note_chain, 4, 1, address_of(WITNESS), Role.WITNESS, 3, header, keccak(b"x"), address_of(REPORTER)
    )
    assert refusal(client.report_fault, unknown, vote, 1, signatures).error == "UnknownFaultKind"


def test_an_equivocating_archive_node_is_slashed_and_leaves_the_next_epoch(devnet: Devnet, note_chain: bytes) -> None:
    client = devnet.client
    cheat, honest = devnet.group(0)
    headers = keccak(b"block 9 a"), keccak(b"block 9 b")
    votes = [
        SignedBlock(
            note_chain, 9, 4, Role.ARCHIVE, h, sign(client.digests.block(note_chain, 9, 4, Role.ARCHIVE, h), [cheat])
        )
        for h in headers
    ]
    stake = devnet.contract("Staking").functions.minimumStake(int(Role.ARCHIVE)).call()
    same = refusal(client.report_equivocation, votes[0], votes[0])
    assert same.error == "SameBlock"
    # A re-signing under the next roles version is no equivocation, before sending and on chain.
    resigned = SignedBlock(
        note_chain,
        9,
        5,
        Role.ARCHIVE,
        headers[1],
        sign(client.digests.block(note_chain, 9, 5, Role.ARCHIVE, headers[1]), [cheat]),
    )
    for precheck in (True, False):
        later = refusal(client.report_equivocation, votes[0], resigned, precheck=precheck)
        assert (later.error, later.inputs) == ("DifferentRolesVersions", {"first": 4, "second": 5})
    slashed = client.report_equivocation(votes[0], votes[1])
    assert slashed == stake
    epoch, changed = client.refresh_group(0)
    assert changed and epoch == 2
    assert client.epoch_members(0, 2) == [address_of(honest)]

    # Epoch 1 ended now: its certificates are refused, by the client's check and by the contract; the
    # member left is all of epoch 2, and alone it is no group.
    cash = devnet.book.address("CoNETCash")
    old = sign(client.digests.genesis(cash, 56, GENESIS, 0), [cheat, honest])
    current = sign(client.digests.genesis(cash, 56, GENESIS, 0), [honest])
    for precheck in (True, False):
        ended = refusal(client.register_chain, cash, 56, GENESIS, 0, 1, old, precheck=precheck)
        assert (ended.error, ended.inputs) == ("EpochEnded", {"group": 0, "epoch": 1, "current": 2})
        alone = refusal(client.register_chain, cash, 56, GENESIS, 0, 2, current, precheck=precheck)
        assert (alone.error, alone.inputs) == ("GroupTooSmall", {"group": 0, "epoch": 2, "size": 1, "minimum": 2})
    # Asset 55 is group 1's (55 % 2): group 0 may not register it whatever it signs.
    wrong = sign(client.digests.genesis(cash, 55, GENESIS, 0), [honest])
    for precheck in (True, False):
        refused = refusal(client.register_chain, cash, 55, GENESIS, 0, 2, wrong, precheck=precheck)
        assert (refused.error, refused.inputs) == ("WrongGroup", {"assetId": 55, "given": 0, "expected": 1})
    assert not client.is_registered(client.chain_id_of(cash, 55))


def test_a_client_without_a_key_reads_but_does_not_send_and_a_missing_receipt_times_out(devnet: Devnet) -> None:
    reader = DleChainClient.from_address_book(devnet.w3, devnet.book)
    assert reader.current_epoch(GROUP) == devnet.client.current_epoch(GROUP)
    with pytest.raises(ChainError, match="no private key"):
        reader.refresh_group(GROUP)

    impatient = Sender(devnet.w3, dev_key(DEPLOYER), receipt_timeout=0.5)
    transfer = devnet.contract("CoNETToken").functions.transfer(address_of(REPORTER), 1)
    rpc(devnet.node.uri, "evm_setAutomine", [False])
    try:
        with pytest.raises(TransactionTimeout, match="no receipt"):
            impatient.transact(transfer)
    finally:
        rpc(devnet.node.uri, "evm_setAutomine", [True])
        rpc(devnet.node.uri, "evm_mine")


def test_the_mirror_agrees_with_what_the_client_did(devnet: Devnet, note_chain: bytes, tmp_path: Path) -> None:
    mirror = Mirror.from_address_book(devnet.w3, devnet.book, tmp_path / "mirror.db")
    mirror.poll()
    registered = [e.chain for e in mirror.events(kinds=[ChainRegistered]) if isinstance(e, ChainRegistered)]
    assert note_chain in registered and len(registered) == len(set(registered))
    state = mirror.chain(note_chain)
    assert state is not None and (state.group, state.asset_id, state.genesis_hash) == (GROUP, NOTE, GENESIS)
    exits = mirror.events(kinds=[NoteExited])
    note = mirror.note(NOTE)
    assert note is not None and note.exits == len(exits) >= 1
    assert note.outstanding == devnet.contract("CoNETCash").functions.outstandingOf(NOTE).call()
    faults = mirror.events(kinds=[FaultReported])
    assert [e.offender for e in faults if isinstance(e, FaultReported)] == [address_of(WITNESS)]
    assert len(mirror.events(kinds=[EquivocationReported])) == 1
    assert len(mirror.events(kinds=[Slashed])) == 2
    assert mirror.stake(address_of(WITNESS), Role.WITNESS).staked == 0
    latest = mirror.epoch(0)
    assert latest is not None and latest.members == tuple(devnet.client.epoch_members(0, latest.epoch))
    mirror.close()
