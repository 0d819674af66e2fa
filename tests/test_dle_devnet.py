"""The DLE devnet end to end, on a real anvil with real processes over real HTTP.

1. `conet devnet up` (anvil, the contracts, 4 archive nodes in two groups, a CBDC, 6 witnesses and 2
   validators, each its own process): a note bought with `conet cash buy` is filled by the CBDC, opened
   by the archive node that hosts it (mirror → draw → genesis → registered on DleRegistry), then paid
   on with a transfer, an authorization drawn on by a deduction, and an exit paid by CoNETCash; the
   conservation check holds at every step (an exit final on the DLE but not yet paid is counted), and
   fails, naming the note, on a chain that lost its last block. Everything the devnet started is
   stopped, also when a test fails.
2. Faults slashed on the real chain: an in-process DLE (`LocalDle`) whose archive nodes are the staked
   members of group 0, with the real mainchain adapter (`offchain/dle/mainchain.py`) on anvil: a
   validator refusing a valid block (with its signed refusal) loses its whole VALIDATOR stake through
   `DleRegistry.reportFault` (the group's certificate and the refusal), a creator signing two blocks at
   one height loses its CBDC stake through `DleRegistry.reportEquivocation` — once: the same offence
   reported again, by either path, slashes nothing — and witnesses that re-signed a height after a
   certified role change (the creator died mid-block) cannot be slashed for it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from eth_account import Account
from web3 import Web3

from dle_vm.hashing import keccak
from offchain.chain.deployer import Role
from offchain.chain.dle import DleChainClient, ExitCertificate, FaultKind, FaultReport, SignedBlock, offence_key
from offchain.chain.web3_contracts import ContractRevert, connect, load_contract
from offchain.cli import main
from offchain.devnet import dle as devnet
from offchain.devnet.anvil import AnvilNode, start_anvil
from offchain.dle.archive import ROLE_CBDC, ROLE_VALIDATOR, ROLE_WITNESS
from offchain.dle.conservation import ChainSource, ConservationError, check_conservation, http_source
from offchain.dle.digests import Domains, mainchain_certificate
from offchain.dle.local import LocalDle, address_of_secret
from offchain.dle.mainchain import ArchiveGroups, ChainMainchain
from offchain.dle.member import MemberNode, Timeouts
from offchain.dle.messages import ChainDump, Proposal, Validation
from offchain.dle.note import NoteSigner, NoteTerms, note_program
from offchain.dle.transport import RemoteError

pytestmark = pytest.mark.anvil

USD = 10**6  # the mock stablecoin's units


# -- 1. the devnet as processes ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[devnet.DevnetState]:
    directory = tmp_path_factory.mktemp("devnet")
    lines: list[str] = []
    state = devnet.up(directory, log=lines.append)
    try:
        yield state
    finally:
        devnet.down(directory, log=lines.append)
        left = [n.name for n in state.nodes if n.running()]
        assert not left and not state.anvil_running(), left


def conet(state: devnet.DevnetState, *args: str) -> str:
    """`conet cash --devnet DIR ARGS` or `conet devnet CMD --dir DIR`, through the real CLI."""
    if args[0] == "cash":
        argv = ["cash", "--devnet", state.directory, *args[1:]]
    else:
        argv = [*args[:2], "--dir", state.directory, *args[2:]]
    result = CliRunner().invoke(main, argv, catch_exceptions=False)
    assert result.exit_code == 0, f"conet {' '.join(args)}:\n{result.output}"
    return result.output


def test_every_node_is_its_own_process_on_loopback_and_answers(running: devnet.DevnetState) -> None:
    kinds = [n.kind for n in running.nodes]
    assert kinds.count("archive") == 4 and kinds.count("cbdc") == 1 and kinds.count("member") == 8
    assert len({n.pid for n in running.nodes}) == len(running.nodes)
    report = devnet.status(Path(running.directory))
    assert report.anvil and all(n.answering for n in report.nodes)
    for node in running.nodes:
        config = json.loads(Path(node.config_file).read_text())
        assert config["host"] == "127.0.0.1" and all(
            u.startswith("http://127.0.0.1:") for u in config["directory"].values()
        )
    # Two archive groups of two, each with its first epoch: the members' staked archive nodes.
    groups = {int(g): v for g, v in running.groups.items()}
    assert sorted(groups) == [0, 1] and all(len(g["members"]) == 2 and g["epoch"] == 1 for g in groups.values())
    archives = {n.address for n in running.of_kind("archive")}
    assert {m for g in groups.values() for m in g["members"]} == archives


def test_buy_transfer_authorize_deduct_exit_and_conservation(running: devnet.DevnetState) -> None:
    client = devnet.DevnetClient.open(Path(running.directory))
    out = conet(running, "cash", "--wallet", "alice", "buy", "20")
    assert "note 1: minted by CBDC cbdc-1" in out and "open (archive group 1)" in out
    conet(running, "cash", "--wallet", "bob", "buy", "10")
    for wallet in ("bob", "carol"):
        conet(running, "cash", "--wallet", wallet, "address")
    alice, bob, carol = (
        address_of_secret(bytes.fromhex((Path(running.directory) / "wallets" / f"{w}.key").read_text().strip()))
        for w in ("alice", "bob", "carol")
    )

    # The chains were opened by the archive nodes: registered on DleRegistry by the group that keeps them.
    for note, group in ((1, 1), (2, 0)):
        chain, kept_by = client.chain_of(note)
        assert kept_by == group and client.chain.chain_record(chain).asset_id == note

    conet(running, "cash", "--wallet", "alice", "transfer", "1", "bob", "4.5")
    out = conet(running, "cash", "--wallet", "alice", "authorize", "1", "carol", "5")
    assert "authorization 1 " in out  # alice's second message on note 1: nonce 1
    conet(running, "cash", "--wallet", "carol", "deduct", "1", "alice", "1", "3.25")
    fee_transfer, fee_deduct = 2250, 1625  # 0.05% of 4.5 and of 3.25, rounded up
    balances = asyncio.run(_balances(client, 1, [alice, bob, carol]))
    assert balances == [20 * USD - 4_500_000 - fee_transfer - 3_250_000 - fee_deduct, 4_500_000, 3_250_000]

    # An exit final on the DLE but not yet paid: conservation counts it; then it is paid on chain.
    coin = client.contract("MockStablecoin")
    bob_key, alice_key = (
        bytes.fromhex((Path(running.directory) / "wallets" / f"{w}.key").read_text().strip()) for w in ("bob", "alice")
    )
    result = asyncio.run(_exit_on_dle(client, 1, bob_key, 4 * USD))
    report, _, _ = devnet.check(Path(running.directory))
    assert [n.unpaid_exits for n in report.notes] == [((0, 4 * USD),), ()]
    # Alice's exit comes after Bob's on the chain (nonce 1, naming Bob's in its history): CoNETCash pays
    # exits in order, so hers submitted first is refused, in one clear line, and nothing moves.
    later = asyncio.run(_exit_on_dle(client, 1, alice_key, 1 * USD))
    assert (later.certificate.nonce, later.certificate.exited_before) == (1, _mainchain(result).exited_after)
    with pytest.raises(ContractRevert) as refused:
        client.sender(alice_key).submit_exit(_mainchain(later), later.epoch, later.signatures)
    assert refused.value.error == "ExitOutOfOrder" and "pay exit 0 of 1 first" in str(refused.value)
    assert "\n" not in str(refused.value)
    before = coin.functions.balanceOf(Web3.to_checksum_address("0x" + bob.hex())).call()
    payout = client.sender(bob_key).submit_exit(_mainchain(result), result.epoch, result.signatures)
    assert payout == 4 * USD - 8_000  # the 0.2% exit fee stays with the CBDC
    assert coin.functions.balanceOf(Web3.to_checksum_address("0x" + bob.hex())).call() == before + payout
    assert client.chain.cash.functions.isExitNonceUsed(1, 0).call()
    assert client.sender(alice_key).submit_exit(_mainchain(later), later.epoch, later.signatures) == USD - 2_000

    # The CLI's exit: final on the DLE and paid on the mainchain in one command. An earlier exit of the
    # note is still unpaid (Bob's own, on the DLE only): the CLI gets it certified from the archive
    # group (`exit_certificate`) and pays it first.
    asyncio.run(_exit_on_dle(client, 2, bob_key, 1 * USD))
    out = conet(running, "cash", "--wallet", "bob", "exit", "2", "1", "--receiver", "carol")
    assert "paid the earlier exit 0 (1 to bob) first: exits are paid in order" in out
    assert "CoNETCash paid 0.998 mUSDC to carol" in out

    out = conet(running, "devnet", "check")
    assert "conservation holds: 2 notes, 1 stablecoins" in out
    report, _, _ = devnet.check(Path(running.directory))
    outstanding = {n.note: n.outstanding for n in report.notes}
    assert outstanding == {1: 15 * USD, 2: 8 * USD}
    assert report.coins[0].backing == 23 * USD and report.coins[0].unclaimed_fees == 8_000 + 3 * 2_000

    status = conet(running, "devnet", "status")
    assert "note 1   live" in status and "height 5" in status and "DOWN" not in status


def test_conservation_fails_naming_the_note_whose_chain_lost_its_exit(running: devnet.DevnetState) -> None:
    """An archive node serving a chain without its last block (an exit CoNETCash paid) is caught."""
    client = devnet.DevnetClient.open(Path(running.directory))
    out = conet(running, "cash", "--wallet", "dave", "buy", "3")
    note = int(out.split("order ", 1)[1].split(":", 1)[0])
    conet(running, "cash", "--wallet", "dave", "exit", str(note), "1")
    lost = bytes(client.chain.cash.functions.chainOf(note).call())

    async def check() -> None:
        async with client.transport() as transport:
            honest = http_source(
                transport, client.groups.group_of, client.domains, lambda c: client.chain.chain_record(c).group
            )

            async def without_last_block(chain: bytes) -> ChainDump:
                dump = await honest(chain)
                return ChainDump(dump.blocks[:-1], dump.roles) if chain == lost else dump

            source: ChainSource = without_last_block
            await check_conservation(client.chain.cash, source)

    with pytest.raises(ConservationError) as caught:
        asyncio.run(check())
    # CoNETCash paid the exit (outstanding 2); the truncated chain still holds 3.
    assert caught.value.subject == f"note {note}" and caught.value.difference == -1 * USD
    devnet.check(Path(running.directory))  # the honest chains still conserve


async def _balances(client: devnet.DevnetClient, note: int, accounts: list[bytes]) -> list[int]:
    async with client.transport() as transport:
        chain = client.note_chain(transport, note)
        found = await chain.balances(accounts)
        return [found[a] for a in accounts]


def _mainchain(result: Any) -> ExitCertificate:
    """A wallet's exit result as the mainchain client's certificate."""
    return mainchain_certificate(result.certificate)


async def _exit_on_dle(client: devnet.DevnetClient, note: int, secret: bytes, amount: int) -> Any:
    async with client.transport() as transport:
        return await client.note_chain(transport, note).exit(secret, amount, address_of_secret(secret))


# -- 2. faults slashed on the real chain --------------------------------------------------------------------


def key(name: str) -> bytes:
    return keccak(b"devnet fault test " + name.encode())


WITNESSES, VALIDATORS = 11, 6
"""A dissolution draws 5 new witnesses (6 when the creator is the offender) and excludes the old ones."""
VALUE = 100 * USD


@dataclass
class SlashingChain:
    node: AnvilNode
    w3: Web3
    addresses: dict[str, str]
    domains: Domains
    reporter: bytes
    """The key the archive group's mainchain adapter sends reports with."""
    archives: list[bytes]
    """Keys of group 0's two archive nodes."""

    def contract(self, name: str) -> Any:
        return load_contract(self.w3, name, self.addresses[name])

    def mainchain(self) -> ChainMainchain:
        return RecordingMainchain(DleChainClient(self.w3, self.addresses, self.reporter))

    def stake_of(self, secret: bytes, role: Role) -> int:
        owner = Web3.to_checksum_address("0x" + address_of_secret(secret).hex())
        return int(self.contract("Staking").functions.stakeOf(owner, int(role)).call())


@pytest.fixture(scope="module")
def slashing_chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlashingChain]:
    """anvil with the contracts; 4 staked archive nodes in two groups (both groups' first epoch), two
    CBDCs, 11 witnesses and 6 validators staked."""
    node = start_anvil()
    try:
        directory = tmp_path_factory.mktemp("faults")
        book = devnet.deploy_contracts(directory, node.uri, log=lambda line: None)
        w3 = connect(node.uri)
        addresses = {name: d.address for name, d in book.contracts.items()}
        staking = load_contract(w3, "Staking", addresses["Staking"])
        funder = devnet.dev_account_key(0)

        def staked(secret: bytes, role: Role, *, register: bool = False) -> None:
            amount = int(staking.functions.minimumStake(int(role)).call())
            owner = Account.from_key(secret).address
            devnet.fund(w3, addresses, funder, owner, eth=devnet.ETH, conet=amount)
            devnet.stake(w3, addresses, secret, role, amount)
            if register:
                devnet.register_node(w3, addresses, secret, role, "http://127.0.0.1:1")

        archives = [key(f"archive {i}") for i in range(4)]
        for secret in archives:
            staked(secret, Role.ARCHIVE, register=True)
        for secret in (key("cbdc a"), key("cbdc b")):
            staked(secret, Role.CBDC)
        for i in range(WITNESSES):
            staked(key(f"witness {i}"), Role.WITNESS)
        for i in range(VALIDATORS):
            staked(key(f"validator {i}"), Role.VALIDATOR)
        reporter = key("reporter")
        devnet.send_eth(w3, funder, Account.from_key(reporter).address, devnet.ETH)
        client = DleChainClient(w3, addresses, funder)
        for group in (0, 1):
            assert client.refresh_group(group) == (1, True)
        group0 = ArchiveGroups(client).group_of(0)
        members = [s for s in archives if address_of_secret(s) in group0.members]
        assert len(members) == 2
        domains = Domains(
            int(w3.eth.chain_id), bytes.fromhex(addresses["DleRegistry"][2:]), bytes.fromhex(addresses["CoNETCash"][2:])
        )
        yield SlashingChain(node, w3, addresses, domains, reporter, members)
    finally:
        node.stop()


class Refuses(MemberNode):
    """A validator that refuses a valid block with its signed refusal (claiming it invalid)."""

    refuse = False

    async def _validate(self, body: bytes) -> bytes:
        if self.refuse:
            request = Validation.decode(body)
            raise self._refuse(request.block, request.roles.roles, RemoteError("invalid-block", "I sign nothing"))
        return await super()._validate(body)


class KeepsVotes(MemberNode):
    """A witness that keeps every vote it gave: (height, roles version, role, header hash, signature)."""

    votes: list[tuple[int, int, int, bytes, bytes]]

    async def _vote(self, header: Any, roles: Any, post: Any, creator_signature: bytes = b"") -> Any:
        vote = await super()._vote(header, roles, post, creator_signature)
        if not hasattr(self, "votes"):
            self.votes = []
        self.votes.append((header.height, roles.version, roles.stake_role(self.address), header.hash, vote.signature))
        return vote


class DiesMidBlock(MemberNode):
    """A creator that has its block signed by the witnesses, then dies before the archive group sees it."""

    armed = False
    on_death: Any = None

    async def _attempt(self, record: Any, block: Any, post: Any, parent: Any, genesis_pre: Any) -> Any:
        if not self.armed:
            return await super()._attempt(record, block, post, parent, genesis_pre)
        roles = record.roles
        for witness in roles.witnesses:
            await self._call(witness, "propose", Proposal(roles.version, block).encode(), 1.0)
        self.on_death()
        await asyncio.sleep(3600)


class RecordingMainchain(ChainMainchain):
    """The real adapter, keeping the equivocation proofs it sent (to replay them)."""

    proofs: list[tuple[Any, ...]]

    def report_equivocation(self, *args: Any) -> int:
        if not hasattr(self, "proofs"):
            self.proofs = []
        self.proofs.append(args)
        return super().report_equivocation(*args)


class Equivocates(MemberNode):
    """A creator that shows one witness another block at the same height first."""

    armed = False

    async def _attempt(self, record: Any, block: Any, post: Any, parent: Any, genesis_pre: Any) -> Any:
        if self.armed:
            self.armed = False
            header = replace(block.header, timestamp=block.header.timestamp + 1)
            other = type(block)(header, block.transactions, (self._sign_header(header, record.roles),))
            roles = record.roles
            await self._call(roles.witnesses[0], "propose", Proposal(roles.version, other).encode(), 1.0)
        return await super()._attempt(record, block, post, parent, genesis_pre)


async def _open(
    chain: SlashingChain,
    directory: Path,
    note: int,
    cbdc: bytes,
    *,
    cbdc_cls: Any = MemberNode,
    validator_cls: Any = MemberNode,
    witness_cls: Any = MemberNode,
) -> tuple[LocalDle, NoteTerms]:
    """Group 0's archive nodes with the real mainchain adapter, the staked members, one note opened
    (drawn from the pool with real stake checks, registered on DleRegistry). `note` must be even: group 0
    keeps the chains of even asset ids (`DleRegistry.groupFor`)."""
    dle = LocalDle(
        directory, chain.domains, chain.mainchain(), timeouts=Timeouts(vote=1.0, accept=1.0, final=1.0, archive=20.0)
    )
    dle.add_archives(chain.archives)
    dle.add_member(cbdc, cls=cbdc_cls)
    for i in range(WITNESSES):
        dle.add_member(key(f"witness {i}"), role=ROLE_WITNESS, cls=witness_cls)
    for i in range(VALIDATORS):
        dle.add_member(key(f"validator {i}"), role=ROLE_VALIDATOR, cls=validator_cls)
    terms = NoteTerms(
        note, chain.domains.mainchain_id, chain.domains.cash, VALUE, address_of_secret(key("buyer")),
        address_of_secret(cbdc), (), bytes(20), 5,
    )  # fmt: skip
    await dle.open_note(terms)
    client = DleChainClient(chain.w3, chain.addresses)
    assert client.is_registered(terms.chain) and client.chain_record(terms.chain).group == 0
    return dle, terms


async def _pay(dle: LocalDle, terms: NoteTerms, nonce: int) -> None:
    buyer = key("buyer")
    # The holder asks: an archive node answers a chain's participants, not strangers.
    roles = (await dle.client(address_of_secret(buyer)).roles(terms.chain)).roles
    full = replace(terms, witnesses=roles.witnesses, validators_pool=roles.validators[0])
    tx = NoteSigner(full, note_program()).transfer(
        buyer, address_of_secret(buyer), address_of_secret(key("alice")), 1_000, nonce, int(time.time()) + 3600
    )
    outcome = await dle.client(address_of_secret(buyer), submit_timeout=5.0).submit(terms.chain, [tx])
    assert all(r.success for r in outcome.receipts)


def test_a_refusing_validator_loses_its_validator_stake_on_chain(slashing_chain: SlashingChain, tmp_path: Path) -> None:
    staking = slashing_chain.contract("Staking")
    token = slashing_chain.contract("CoNETToken")

    async def scenario() -> tuple[bytes, bytes]:
        dle, terms = await _open(slashing_chain, tmp_path, 1000, key("cbdc a"), validator_cls=Refuses)
        host = dle.host(terms.chain)
        refuser = host.roles(terms.chain).roles.validator_for(host.store.head(terms.chain).block.hash)
        node = dle.members[refuser]
        assert isinstance(node, Refuses)
        node.refuse = True
        await _pay(dle, terms, 0)
        assert host.slashed and host.slashed[0][:2] == (refuser, ROLE_VALIDATOR)
        return refuser, host.address

    secret_of = {address_of_secret(key(f"validator {i}")): key(f"validator {i}") for i in range(VALIDATORS)}
    stake = int(staking.functions.minimumStake(int(Role.VALIDATOR)).call())
    refuser, host = asyncio.run(asyncio.wait_for(scenario(), 120))
    assert slashing_chain.stake_of(secret_of[refuser], Role.VALIDATOR) == 0
    # The registry's event and Staking's: the whole stake, 10% to the reporter the group named (its host).
    registry = slashing_chain.contract("DleRegistry")
    (fault,) = registry.events.FaultReported().get_logs(from_block=0)
    assert fault["args"]["offender"] == Web3.to_checksum_address("0x" + refuser.hex())
    assert fault["args"]["kind"] == 1 and fault["args"]["slashed"] == stake
    assert fault["args"]["role"] == int(Role.VALIDATOR)
    assert fault["args"]["reporter"] == Web3.to_checksum_address("0x" + host.hex())
    assert token.functions.balanceOf(fault["args"]["reporter"]).call() == stake // 10


def test_an_equivocating_creator_loses_its_cbdc_stake_on_chain(slashing_chain: SlashingChain, tmp_path: Path) -> None:
    cbdc = key("cbdc b")
    stake = slashing_chain.stake_of(cbdc, Role.CBDC)
    assert stake > 0

    mainchain: list[RecordingMainchain] = []

    async def scenario() -> None:
        dle, terms = await _open(slashing_chain, tmp_path, 1002, cbdc, cbdc_cls=Equivocates)
        assert isinstance(dle.mainchain, RecordingMainchain)
        mainchain.append(dle.mainchain)
        node = dle.members[address_of_secret(cbdc)]
        assert isinstance(node, Equivocates)
        node.armed = True
        await _pay(dle, terms, 0)
        host = dle.host(terms.chain)
        assert host.slashed == [(address_of_secret(cbdc), ROLE_CBDC, stake)]
        assert host.roles(terms.chain).roles.creator != address_of_secret(cbdc)

    asyncio.run(asyncio.wait_for(scenario(), 120))
    assert slashing_chain.stake_of(cbdc, Role.CBDC) == 0
    registry = slashing_chain.contract("DleRegistry")
    (reported,) = registry.events.EquivocationReported().get_logs(from_block=0)
    assert reported["args"]["signer"] == Web3.to_checksum_address("0x" + address_of_secret(cbdc).hex())
    assert reported["args"]["slashed"] == stake
    # The role slashed is the one the signatures name: the creator's CBDC stake, under roles version 0.
    assert (reported["args"]["role"], reported["args"]["rolesVersion"]) == (int(Role.CBDC), 0)
    # reportEquivocation rewards whoever submitted the proof: the archive group's reporting key.
    reporter = Account.from_key(slashing_chain.reporter).address
    assert reported["args"]["reporter"] == reporter
    assert slashing_chain.contract("CoNETToken").functions.balanceOf(reporter).call() == stake // 10

    # One offence, slashed once: the same proof again, or the group's certificate that the creator
    # signed an invalid block at that height under that version (with its own vote), slashes nothing.
    (proof,) = mainchain[0].proofs
    chain_id, height, version, role, hash_a, signature_a, _hash_b, _signature_b = proof
    client = DleChainClient(slashing_chain.w3, slashing_chain.addresses, slashing_chain.reporter)
    key_ = offence_key(chain_id, height, version, Web3.to_checksum_address("0x" + address_of_secret(cbdc).hex()))
    for precheck in (True, False):
        with pytest.raises(ContractRevert) as again:
            mainchain[0].client.report_equivocation(
                SignedBlock(chain_id, height, version, Role(role), hash_a, signature_a),
                SignedBlock(chain_id, height, version, Role(role), _hash_b, _signature_b),
                precheck=precheck,
            )
        assert (again.value.error, again.value.inputs) == ("EvidenceAlreadyUsed", {"evidenceHash": key_})
        report = FaultReport(
            chain_id,
            height,
            version,
            Web3.to_checksum_address("0x" + address_of_secret(cbdc).hex()),
            Role(role),
            int(FaultKind.SIGNED_INVALID_BLOCK),
            hash_a,
            keccak(b"a second bundle"),
            reporter,
        )
        certificate = b"".join(
            bytes(Account.unsafe_sign_hash(slashing_chain.domains.fault(
                chain_id, height, version, address_of_secret(cbdc), role, 2, hash_a, keccak(b"a second bundle"),
                bytes.fromhex(reporter[2:]),
            ), secret).signature)
            for secret in sorted(slashing_chain.archives, key=lambda s: address_of_secret(s))
        )  # fmt: skip
        with pytest.raises(ContractRevert) as other_path:
            client.report_fault(report, signature_a, 1, certificate, precheck=precheck)
        assert (other_path.value.error, other_path.value.inputs) == ("EvidenceAlreadyUsed", {"evidenceHash": key_})
    assert len(registry.events.EquivocationReported().get_logs(from_block=0)) == 1
    cheat = Web3.to_checksum_address("0x" + address_of_secret(cbdc).hex())
    assert all(log["args"]["offender"] != cheat for log in registry.events.FaultReported().get_logs(from_block=0))


def test_witnesses_re_signing_a_height_after_a_certified_role_change_are_not_slashable_on_chain(
    slashing_chain: SlashingChain, tmp_path: Path
) -> None:
    """The creator has its block at height 1 signed by the witnesses and dies; the timeout makes the
    first witness creator (roles version 1) and the witnesses sign the new block at height 1. Each of
    them signed two blocks at one height — under two roles versions, so the registry refuses to call it
    equivocation, before sending and on chain, and no stake moves."""
    votes: dict[bytes, list[tuple[int, int, int, bytes, bytes]]] = {}
    chain_ids: list[bytes] = []

    async def scenario() -> None:
        dle, terms = await _open(slashing_chain, tmp_path, 1004, key("cbdc a"), cbdc_cls=DiesMidBlock,
                                 witness_cls=KeepsVotes)  # fmt: skip
        chain_ids.append(terms.chain)
        creator = dle.members[address_of_secret(key("cbdc a"))]
        assert isinstance(creator, DiesMidBlock)
        creator.on_death = lambda: dle.kill(creator.address)
        creator.armed = True
        before = dle.host(terms.chain).roles(terms.chain).roles
        await _pay(dle, terms, 0)  # the client reports the dead creator and resubmits to the new one
        after = dle.host(terms.chain).roles(terms.chain).roles
        assert after.version == before.version + 1 and after.creator == before.witnesses[0]
        for witness in before.witnesses:
            node = dle.members[witness]
            assert isinstance(node, KeepsVotes)
            votes[witness] = [v for v in getattr(node, "votes", []) if v[0] == 1]

    asyncio.run(asyncio.wait_for(scenario(), 120))
    client = DleChainClient(slashing_chain.w3, slashing_chain.addresses, slashing_chain.reporter)
    secret_of = {address_of_secret(key(f"witness {i}")): key(f"witness {i}") for i in range(WITNESSES)}
    stake = int(slashing_chain.contract("Staking").functions.minimumStake(int(Role.WITNESS)).call())
    resigned = {w: v for w, v in votes.items() if len({vote[3] for vote in v}) == 2}
    assert len(resigned) >= 3  # the witnesses that stayed witnesses signed height 1 twice
    for witness, (first, second) in resigned.items():
        assert first[1] + 1 == second[1] and first[3] != second[3]
        a = SignedBlock(chain_ids[0], 1, first[1], Role(first[2]), first[3], first[4])
        b = SignedBlock(chain_ids[0], 1, second[1], Role(second[2]), second[3], second[4])
        for precheck in (True, False):
            with pytest.raises(ContractRevert) as refused:
                client.report_equivocation(a, b, precheck=precheck)
            assert (refused.value.error, refused.value.inputs) == (
                "DifferentRolesVersions",
                {"first": first[1], "second": second[1]},
            )
        assert slashing_chain.stake_of(secret_of[witness], Role.WITNESS) == stake
