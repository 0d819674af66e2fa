"""DleRegistry: archive-group epochs (opened, kept, renewed on a member leaving, unbonding or joining),
chain registration on a genesis certificate, group certificates (every member of the epoch, no more, no
fewer, sorted; never an ended epoch nor one below the minimum size; a chain only from the group its asset
id maps to), and equivocation reports that slash the signer."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import (
    MIN_GROUP_SIZE,
    MIN_STAKE,
    REPORTER_BPS,
    block_digest,
    dle_chain_id,
    genesis_digest,
    group_of,
    group_signatures,
    public_key,
    reverts_with,
    reverts_with_wrong_signers,
    sign_digest,
    stake,
)
from eth_abi import encode
from eth_account import Account
from eth_utils import to_checksum_address
from eth_utils.crypto import keccak

from offchain.chain.deployer import CONET, Role

ASSET = to_checksum_address("0x00000000000000000000000000000000000c0de5")
GENESIS = b"\x6e" * 32
DIGEST = keccak(b"some certificate")
HEADER_A = keccak(b"block a")
HEADER_B = keccak(b"block b")
HEADER_C = keccak(b"block c")
CHAIN = keccak(b"a note chain")
HEIGHT = 42


@pytest.fixture(scope="module", autouse=True)
def _deployed(
    dle: Any,
    archive_nodes: list[Any],
    funded: list[Any],
    admin: Any,
    treasury: Any,
    alice: Any,
    bob: Any,
    carol: Any,
    token: Any,
    staking: Any,
    registry: Any,
) -> None:
    """Set up the module's fixtures before ape's per-test snapshots start."""


@pytest.fixture
def epochs(dle: Any, admin: Any) -> None:
    """Both archive groups' first epoch."""
    for group in (0, 1):
        dle.refreshGroup(group, sender=admin)


def sort(accounts: list[Any]) -> list[str]:
    return sorted((a.address for a in accounts), key=lambda address: int(address, 16))


def members_hash(addresses: list[str]) -> bytes:
    """bytes20(keccak256(abi.encodePacked(address[]))): each address padded to a 32-byte word."""
    return keccak(b"".join(bytes.fromhex(a[2:]).rjust(32, b"\x00") for a in addresses))[:20]


def new_archive_node(accounts: Any, admin: Any, treasury: Any, token: Any, staking: Any, registry: Any) -> Any:
    account = accounts.generate_test_account()
    admin.transfer(account, "1 ether")
    token.transfer(account, MIN_STAKE[Role.ARCHIVE], sender=treasury)
    stake(staking, token, account, Role.ARCHIVE, MIN_STAKE[Role.ARCHIVE])
    registry.register(int(Role.ARCHIVE), public_key(account), ["https://a.example"], (0, 0, 0, 0), "eu", sender=account)
    return account


def started(receipt: Any, dle: Any) -> list[Any]:
    return list(receipt.events.filter(dle.EpochStarted))


# ---------------------------------------------------------------- epochs


def test_the_first_refresh_opens_epoch_1_with_the_sorted_staked_members(
    chain: Any, dle: Any, registry: Any, archive_nodes: list[Any], admin: Any
) -> None:
    for group in (0, 1):
        assert dle.currentEpoch(group) == 0
        with reverts_with(dle.UnknownEpoch, group=group, epoch=1):
            dle.verifyGroupCertificate(group, DIGEST, 1, b"\x00" * 65)
        assert dle.refreshGroup.call(group, sender=admin) == (1, True)
        receipt = dle.refreshGroup(group, sender=admin)
        members = sort(group_of(registry, archive_nodes, group))
        assert len(members) == 2
        (event,) = started(receipt, dle)
        assert (event.group, event.epoch, list(event.members)) == (group, 1, members)
        assert bytes(event.membersHash) == members_hash(members)
        record = dle.epochOf(group, 1)
        assert (bytes(record.membersHash), record.startedAt, record.endedAt, record.size, record.minimum) == (
            members_hash(members),
            chain.blocks[receipt.block_number].timestamp,
            0,
            2,
            MIN_GROUP_SIZE,
        )
        assert dle.epochMembers(group, 1) == members
        assert dle.currentEpoch(group) == 1


def test_an_unchanged_group_keeps_its_epoch(dle: Any, admin: Any, epochs: None) -> None:
    before = dle.epochOf(0, 1)
    assert dle.refreshGroup.call(0, sender=admin) == (1, False)
    receipt = dle.refreshGroup(0, sender=admin)
    assert started(receipt, dle) == []
    assert dle.currentEpoch(0) == 1
    assert dle.epochOf(0, 1) == before


def test_a_raised_minimum_group_size_applies_at_the_next_refresh(
    dle: Any, params: Any, registry: Any, archive_nodes: list[Any], admin: Any, epochs: None
) -> None:
    pair = group_of(registry, archive_nodes, 0)
    signatures = group_signatures(pair, DIGEST)
    params.setParameter(params.MIN_ARCHIVE_GROUP_SIZE(), 3, sender=admin)
    assert dle.minGroupSize() == 3
    dle.verifyGroupCertificate(0, DIGEST, 1, signatures)  # epoch 1 opened under the minimum of 2
    # Anyone refreshes: the same members, a new epoch under the new minimum, and the pair is too few.
    receipt = dle.refreshGroup(0, sender=archive_nodes[0])
    (event,) = started(receipt, dle)
    assert (event.epoch, list(event.members)) == (2, sort(pair))
    assert (dle.epochOf(0, 2).size, dle.epochOf(0, 2).minimum) == (2, 3)
    with reverts_with(dle.EpochEnded, group=0, epoch=1, current=2):
        dle.verifyGroupCertificate(0, DIGEST, 1, signatures)
    with reverts_with(dle.GroupTooSmall, group=0, epoch=2, size=2, minimum=3):
        dle.verifyGroupCertificate(0, DIGEST, 2, signatures)
    assert dle.refreshGroup.call(0, sender=admin) == (2, False)
    with reverts_with(params.ParameterOutOfBounds, key=params.MIN_ARCHIVE_GROUP_SIZE(), value=1, min=2, max=64):
        params.setParameter(params.MIN_ARCHIVE_GROUP_SIZE(), 1, sender=admin)


def test_a_member_unbonding_below_the_minimum_opens_a_new_epoch(
    chain: Any,
    dle: Any,
    token: Any,
    staking: Any,
    registry: Any,
    archive_nodes: list[Any],
    admin: Any,
    treasury: Any,
    epochs: None,
) -> None:
    leaver, stayer = group_of(registry, archive_nodes, 0)
    staking.requestUnstake(int(Role.ARCHIVE), 1, sender=leaver)  # one wei below the minimum
    assert not staking.meetsMinimum(leaver, int(Role.ARCHIVE))
    assert dle.refreshGroup.call(0, sender=admin) == (2, True)
    receipt = dle.refreshGroup(0, sender=admin)
    now = chain.blocks[receipt.block_number].timestamp
    (event,) = started(receipt, dle)
    assert (event.epoch, list(event.members)) == (2, [stayer.address])
    assert dle.epochOf(0, 1).endedAt == now
    assert (dle.epochOf(0, 2).startedAt, dle.epochOf(0, 2).endedAt) == (now, 0)
    assert dle.epochMembers(0, 1) == sort([leaver, stayer])  # the old epoch keeps its members
    # Staking back up to the minimum brings the member back in a third epoch.
    token.transfer(leaver, 1, sender=treasury)
    stake(staking, token, leaver, Role.ARCHIVE, 1)
    dle.refreshGroup(0, sender=admin)
    assert dle.currentEpoch(0) == 3
    assert dle.epochMembers(0, 3) == sort([leaver, stayer])


def test_a_stake_above_the_minimum_changing_opens_no_epoch(
    dle: Any,
    staking: Any,
    token: Any,
    registry: Any,
    archive_nodes: list[Any],
    admin: Any,
    treasury: Any,
    epochs: None,
) -> None:
    member = group_of(registry, archive_nodes, 0)[0]
    token.transfer(member, 10 * CONET, sender=treasury)
    stake(staking, token, member, Role.ARCHIVE, 10 * CONET)
    staking.requestUnstake(int(Role.ARCHIVE), 10 * CONET, sender=member)
    assert dle.refreshGroup.call(0, sender=admin) == (1, False)


def test_a_raised_minimum_stake_empties_the_group(
    dle: Any, staking: Any, registry: Any, admin: Any, archive_nodes: list[Any], epochs: None
) -> None:
    """Once no member meets the stake, the next epoch is empty: the old members, all unstaked, cannot keep
    certifying under the epoch they signed in."""
    signatures = {group: group_signatures(group_of(registry, archive_nodes, group), DIGEST) for group in (0, 1)}
    staking.setMinimumStake(int(Role.ARCHIVE), MIN_STAKE[Role.ARCHIVE] + 1, sender=admin)
    for group in (0, 1):
        dle.refreshGroup(group, sender=admin)
        assert dle.currentEpoch(group) == 2 and list(dle.epochMembers(group, 2)) == []
        assert dle.epochOf(group, 2).size == 0
        with reverts_with(dle.EpochEnded, group=group, epoch=1, current=2):
            dle.verifyGroupCertificate(group, DIGEST, 1, signatures[group])
        with reverts_with(dle.MalformedSignatures, length=0):
            dle.verifyGroupCertificate(group, DIGEST, 2, b"")
        assert dle.refreshGroup.call(group, sender=admin) == (2, False)


def test_a_group_that_never_had_a_staked_member_has_no_epoch(
    dle: Any, staking: Any, admin: Any, archive_nodes: list[Any]
) -> None:
    staking.setMinimumStake(int(Role.ARCHIVE), MIN_STAKE[Role.ARCHIVE] + 1, sender=admin)
    with reverts_with(dle.EmptyGroup, group=0):
        dle.refreshGroup(0, sender=admin)
    assert dle.currentEpoch(0) == 0


def test_a_deregistered_member_leaves_and_a_new_node_joins(
    accounts: Any,
    dle: Any,
    token: Any,
    staking: Any,
    registry: Any,
    archive_nodes: list[Any],
    admin: Any,
    treasury: Any,
    epochs: None,
) -> None:
    leaver, stayer = group_of(registry, archive_nodes, 1)
    registry.deregister(registry.tokenOf(leaver, int(Role.ARCHIVE)), sender=leaver)
    receipt = dle.refreshGroup(1, sender=admin)
    assert [list(e.members) for e in started(receipt, dle)] == [[stayer.address]]

    # New archive nodes join the smallest group: the next one joins group 1, back to two members.
    newcomer = new_archive_node(accounts, admin, treasury, token, staking, registry)
    assert registry.archiveGroupOf(registry.tokenOf(newcomer, int(Role.ARCHIVE))) == 1
    assert dle.refreshGroup.call(0, sender=admin) == (1, False)
    receipt = dle.refreshGroup(1, sender=admin)
    (event,) = started(receipt, dle)
    assert (event.epoch, list(event.members)) == (3, sort([stayer, newcomer]))


def test_members_are_sorted_by_address_whatever_the_order_they_joined_in(
    accounts: Any,
    dle: Any,
    token: Any,
    staking: Any,
    registry: Any,
    archive_nodes: list[Any],
    admin: Any,
    treasury: Any,
) -> None:
    joined = [new_archive_node(accounts, admin, treasury, token, staking, registry) for _ in range(8)]
    for group in (0, 1):
        dle.refreshGroup(group, sender=admin)
        members = dle.epochMembers(group, 1)
        expected = sort(group_of(registry, [*archive_nodes, *joined], group))
        assert len(members) == 6
        assert members == expected
        assert [int(a, 16) for a in members] == sorted(int(a, 16) for a in members)
        assert bytes(dle.epochOf(group, 1).membersHash) == members_hash(expected)


def test_an_unknown_group_is_refused(dle: Any, registry: Any, admin: Any) -> None:
    assert registry.groupCount() == 2
    with reverts_with(dle.UnknownArchiveGroup, group=2):
        dle.refreshGroup(2, sender=admin)


# ---------------------------------------------------------------- chains


def test_a_chain_is_registered_once_on_its_groups_genesis_certificate(
    chain: Any, dle: Any, registry: Any, archive_nodes: list[Any], admin: Any, epochs: None
) -> None:
    chain_id = dle_chain_id(chain.chain_id, ASSET, 7)
    assert (
        dle.chainIdOf(ASSET, 7)
        == chain_id
        == keccak(encode(["uint256", "address", "uint256"], [chain.chain_id, ASSET, 7]))
    )
    assert not dle.isRegistered(chain_id)
    with reverts_with(dle.ChainNotRegistered, chain=chain_id):
        dle.chainOf(chain_id)
    digest = dle.genesisDigest(ASSET, 7, GENESIS, 1)
    assert digest == genesis_digest(chain.chain_id, dle, ASSET, 7, GENESIS, 1)
    signatures = group_signatures(group_of(registry, archive_nodes, 1), digest)

    receipt = dle.registerChain(ASSET, 7, GENESIS, 1, 1, signatures, sender=admin)

    (event,) = receipt.events.filter(dle.ChainRegistered)
    assert (event.chain, event.asset, event.assetId, event.genesisHash, event.group) == (chain_id, ASSET, 7, GENESIS, 1)
    record = dle.chainOf(chain_id)
    assert (record.genesisHash, record.asset, record.group, record.assetId) == (GENESIS, ASSET, 1, 7)
    assert record.registeredAt == chain.blocks[receipt.block_number].timestamp
    assert dle.isRegistered(chain_id)
    # Once: not again, not with another genesis, not by the other group.
    with reverts_with(dle.ChainAlreadyRegistered, chain=chain_id):
        dle.registerChain(ASSET, 7, GENESIS, 1, 1, signatures, sender=admin)
    other = group_signatures(group_of(registry, archive_nodes, 0), dle.genesisDigest(ASSET, 7, HEADER_A, 0))
    with reverts_with(dle.ChainAlreadyRegistered, chain=chain_id):
        dle.registerChain(ASSET, 7, HEADER_A, 0, 1, other, sender=admin)


def test_a_genesis_certificate_registers_only_what_was_signed(
    dle: Any, registry: Any, archive_nodes: list[Any], admin: Any, epochs: None
) -> None:
    signatures = group_signatures(group_of(registry, archive_nodes, 1), dle.genesisDigest(ASSET, 7, GENESIS, 1))
    for asset, asset_id, genesis in ((ASSET, 9, GENESIS), (ASSET, 7, HEADER_A), (admin.address, 7, GENESIS)):
        with reverts_with_wrong_signers(dle, dle.genesisDigest(asset, asset_id, genesis, 1), signatures, 1, 1):
            dle.registerChain(asset, asset_id, genesis, 1, 1, signatures, sender=admin)
    # The other group's members cannot register a chain for this group.
    digest = dle.genesisDigest(ASSET, 7, GENESIS, 1)
    with reverts_with(dle.SignersNotGroup, group=1, epoch=1):
        dle.registerChain(
            ASSET, 7, GENESIS, 1, 1, group_signatures(group_of(registry, archive_nodes, 0), digest), sender=admin
        )
    with reverts_with(dle.UnknownEpoch, group=1, epoch=2):
        dle.registerChain(ASSET, 7, GENESIS, 1, 2, signatures, sender=admin)


def test_a_group_cannot_register_another_groups_chain(
    dle: Any, registry: Any, archive_nodes: list[Any], admin: Any, epochs: None
) -> None:
    """Asset 7 maps to group 1 (7 % 2): group 0, all of it signing, cannot open it."""
    assert dle.groupFor(7) == 1 and dle.groupFor(8) == 0
    chain_id = dle.chainIdOf(ASSET, 7)
    digest = dle.genesisDigest(ASSET, 7, GENESIS, 0)
    with reverts_with(dle.WrongGroup, assetId=7, given=0, expected=1):
        dle.registerChain(
            ASSET, 7, GENESIS, 0, 1, group_signatures(group_of(registry, archive_nodes, 0), digest), sender=admin
        )
    assert not dle.isRegistered(chain_id)


def test_the_lone_archive_node_of_a_new_group_registers_and_certifies_nothing(
    dle: Any,
    registry: Any,
    staking: Any,
    token: Any,
    treasury: Any,
    accounts: Any,
    archive_nodes: list[Any],
    admin: Any,
    epochs: None,
) -> None:
    """The attack of issue 12: the 21st archive node opens a third group and is all of it. It may not
    register a chain of another group's asset, nor one of its own group's (a group of one is too small),
    nor certify anything at all."""
    joined = []
    while registry.groupCount() < 3:
        node = accounts.generate_test_account()
        admin.transfer(node, "1 ether")
        token.transfer(node, MIN_STAKE[Role.ARCHIVE], sender=treasury)
        stake(staking, token, node, Role.ARCHIVE, MIN_STAKE[Role.ARCHIVE])
        registry.register(
            int(Role.ARCHIVE), public_key(node), ["https://archive.example"], (0, 0, 0, 0), "eu", sender=node
        )
        joined.append(node)
    lone = joined[-1]
    assert len(archive_nodes) + len(joined) == 21
    assert registry.archiveGroupOf(registry.tokenOf(lone, int(Role.ARCHIVE))) == 2
    dle.refreshGroup(2, sender=lone)
    assert list(dle.epochMembers(2, 1)) == [lone.address]
    # Asset 7 now maps to group 1 (7 % 3), asset 8 to group 2.
    with reverts_with(dle.WrongGroup, assetId=7, given=2, expected=1):
        dle.registerChain(
            ASSET, 7, GENESIS, 2, 1, sign_digest(lone, dle.genesisDigest(ASSET, 7, GENESIS, 2)), sender=lone
        )
    with reverts_with(dle.GroupTooSmall, group=2, epoch=1, size=1, minimum=MIN_GROUP_SIZE):
        dle.registerChain(
            ASSET, 8, GENESIS, 2, 1, sign_digest(lone, dle.genesisDigest(ASSET, 8, GENESIS, 2)), sender=lone
        )
    with reverts_with(dle.GroupTooSmall, group=2, epoch=1, size=1, minimum=MIN_GROUP_SIZE):
        dle.verifyGroupCertificate(2, DIGEST, 1, sign_digest(lone, DIGEST))
    assert not dle.isRegistered(dle.chainIdOf(ASSET, 7)) and not dle.isRegistered(dle.chainIdOf(ASSET, 8))


# ---------------------------------------------------------------- certificates


@pytest.mark.parametrize(
    ("flaw", "error"),
    [
        ("none", None),
        ("missing", "SignersNotGroup"),
        ("extra", "SignersNotGroup"),
        ("stranger", "SignersNotGroup"),
        ("other group", "SignersNotGroup"),
        ("duplicate", "UnsortedSigners"),
        ("unsorted", "UnsortedSigners"),
        ("truncated", "MalformedSignatures"),
        ("empty", "MalformedSignatures"),
    ],
)
def test_a_group_certificate_needs_every_member_and_only_members_in_order(
    dle: Any, registry: Any, archive_nodes: list[Any], carol: Any, epochs: None, flaw: str, error: str | None
) -> None:
    members = sorted(group_of(registry, archive_nodes, 0), key=lambda a: int(a.address, 16))
    others = group_of(registry, archive_nodes, 1)
    signatures = {
        "none": group_signatures(members, DIGEST),
        "missing": sign_digest(members[1], DIGEST),
        "extra": group_signatures([*members, carol], DIGEST),
        "stranger": group_signatures([members[0], carol], DIGEST),
        "other group": group_signatures(others, DIGEST),
        "duplicate": sign_digest(members[0], DIGEST) * 2,
        "unsorted": sign_digest(members[1], DIGEST) + sign_digest(members[0], DIGEST),
        "truncated": group_signatures(members, DIGEST)[:-1],
        "empty": b"",
    }[flaw]
    if error is None:
        dle.verifyGroupCertificate(0, DIGEST, 1, signatures)
        return
    inputs = {
        "SignersNotGroup": {"group": 0, "epoch": 1},
        "UnsortedSigners": {"index": 1},
        "MalformedSignatures": {"length": len(signatures)},
    }[error]
    with reverts_with(getattr(dle, error), **inputs):
        dle.verifyGroupCertificate(0, DIGEST, 1, signatures)


def test_a_certificate_over_another_digest_is_refused(
    dle: Any, registry: Any, archive_nodes: list[Any], epochs: None
) -> None:
    signatures = group_signatures(group_of(registry, archive_nodes, 0), DIGEST)
    with reverts_with_wrong_signers(dle, keccak(DIGEST), signatures, 0, 1):
        dle.verifyGroupCertificate(0, keccak(DIGEST), 1, signatures)


def test_a_chain_certificate_is_checked_against_the_chains_group(
    chain: Any, dle: Any, registry: Any, archive_nodes: list[Any], admin: Any, epochs: None
) -> None:
    chain_id = dle_chain_id(chain.chain_id, ASSET, 7)
    group_1 = group_of(registry, archive_nodes, 1)
    with reverts_with(dle.ChainNotRegistered, chain=chain_id):
        dle.verifyChainCertificate(chain_id, DIGEST, 1, group_signatures(group_1, DIGEST))
    dle.registerChain(
        ASSET, 7, GENESIS, 1, 1, group_signatures(group_1, dle.genesisDigest(ASSET, 7, GENESIS, 1)), sender=admin
    )
    dle.verifyChainCertificate(chain_id, DIGEST, 1, group_signatures(group_1, DIGEST))
    with reverts_with(dle.SignersNotGroup, group=1, epoch=1):
        dle.verifyChainCertificate(chain_id, DIGEST, 1, group_signatures(group_of(registry, archive_nodes, 0), DIGEST))


def test_an_ended_epoch_certifies_nothing_and_a_lone_member_is_no_group(
    dle: Any,
    staking: Any,
    token: Any,
    treasury: Any,
    registry: Any,
    archive_nodes: list[Any],
    admin: Any,
    epochs: None,
) -> None:
    old = group_of(registry, archive_nodes, 0)
    signatures = group_signatures(old, DIGEST)
    dle.verifyGroupCertificate(0, DIGEST, 1, signatures)
    staking.requestUnstake(int(Role.ARCHIVE), MIN_STAKE[Role.ARCHIVE], sender=old[0])
    dle.refreshGroup(0, sender=admin)
    # The member that left would have refused; the epoch it signed in is over for everything.
    with reverts_with(dle.EpochEnded, group=0, epoch=1, current=2):
        dle.verifyGroupCertificate(0, DIGEST, 1, signatures)
    # The one who stayed is the whole of epoch 2, and alone it is no group.
    assert dle.minGroupSize() == MIN_GROUP_SIZE == 2
    with reverts_with(dle.GroupTooSmall, group=0, epoch=2, size=1, minimum=2):
        dle.verifyGroupCertificate(0, DIGEST, 2, group_signatures(old[1:], DIGEST))
    with reverts_with(dle.UnknownEpoch, group=0, epoch=3):
        dle.verifyGroupCertificate(0, DIGEST, 3, signatures)
    # The member stakes again: epoch 3, of two, certifies again.
    token.transfer(old[0], MIN_STAKE[Role.ARCHIVE], sender=treasury)
    stake(staking, token, old[0], Role.ARCHIVE, MIN_STAKE[Role.ARCHIVE])
    dle.refreshGroup(0, sender=admin)
    dle.verifyGroupCertificate(0, DIGEST, 3, signatures)


# ---------------------------------------------------------------- equivocation


@pytest.fixture
def witness(accounts: Any, admin: Any, treasury: Any, token: Any, staking: Any) -> Any:
    """A fresh account staked 1,500 CoNET as a witness."""
    account = accounts.generate_test_account()
    admin.transfer(account, "1 ether")
    token.transfer(account, 1_500 * CONET, sender=treasury)
    stake(staking, token, account, Role.WITNESS, 1_500 * CONET)
    return account


VERSION = 3
"""The roles version the equivocation tests' blocks are signed under."""


def signed_block(
    chain: Any,
    dle: Any,
    signer: Any,
    header: bytes,
    height: int = HEIGHT,
    on: bytes = CHAIN,
    version: int = VERSION,
    role: Role = Role.WITNESS,
) -> tuple[Any, ...]:
    """A DleRegistry.SignedBlock: `signer`'s BlockSignature of `header` under `version` in `role`."""
    digest = dle.blockDigest(on, height, version, int(role), header)
    assert digest == block_digest(chain.chain_id, dle, on, height, version, int(role), header)
    return (on, height, version, int(role), header, sign_digest(signer, digest))


def evidence(signer: Any, height: int = HEIGHT, on: bytes = CHAIN, version: int = VERSION) -> bytes:
    return keccak(encode(["bytes32", "uint256", "uint256", "address"], [on, height, version, signer.address]))


def test_two_blocks_at_one_height_signed_by_one_witness_slash_its_stake(
    chain: Any, dle: Any, staking: Any, token: Any, treasury: Any, bob: Any, witness: Any
) -> None:
    first = signed_block(chain, dle, witness, HEADER_A)
    second = signed_block(chain, dle, witness, HEADER_B)
    pool, reporter = token.balanceOf(treasury), token.balanceOf(bob)
    reward = 1_500 * CONET * REPORTER_BPS // 10_000

    receipt = dle.reportEquivocation(first, second, sender=bob)

    (slashed,) = receipt.events.filter(staking.Slashed)
    assert (slashed.node, slashed.role, slashed.amount, slashed.reporter, slashed.reward) == (
        witness.address,
        int(Role.WITNESS),
        1_500 * CONET,
        bob.address,
        reward,
    )
    assert bytes(slashed.evidenceHash) == evidence(witness)
    assert bytes(dle.offenceKey(CHAIN, HEIGHT, VERSION, witness.address)) == evidence(witness)
    (reported,) = receipt.events.filter(dle.EquivocationReported)
    assert (
        reported.chain,
        reported.height,
        reported.rolesVersion,
        reported.signer,
        reported.role,
        reported.reporter,
        reported.slashed,
    ) == (CHAIN, HEIGHT, VERSION, witness.address, int(Role.WITNESS), bob.address, 1_500 * CONET)
    assert staking.stakeOf(witness, int(Role.WITNESS)) == 0
    assert not staking.meetsMinimum(witness, int(Role.WITNESS))
    assert token.balanceOf(bob) == reporter + reward
    assert token.balanceOf(treasury) == pool + 1_500 * CONET - reward
    assert staking.isEvidenceUsed(evidence(witness))

    # The same height and version again, even with another pair of blocks, is the same offence.
    third = signed_block(chain, dle, witness, HEADER_C)
    with reverts_with(staking.EvidenceAlreadyUsed, evidenceHash=evidence(witness)):
        dle.reportEquivocation(first, third, sender=bob)


def test_an_equivocation_slashes_unbonding_stake_too(
    chain: Any, dle: Any, staking: Any, bob: Any, witness: Any
) -> None:
    staking.requestUnstake(int(Role.WITNESS), 1_500 * CONET, sender=witness)
    first = signed_block(chain, dle, witness, HEADER_A)
    second = signed_block(chain, dle, witness, HEADER_B)
    receipt = dle.reportEquivocation(first, second, sender=bob)
    assert receipt.events.filter(dle.EquivocationReported)[0].slashed == 1_500 * CONET
    assert staking.unbondingOf(witness, int(Role.WITNESS)) == (0, 0)


def test_re_signing_a_height_after_a_certified_role_change_is_no_equivocation(
    chain: Any, dle: Any, staking: Any, bob: Any, witness: Any
) -> None:
    """After a certified rollback (the roles version moved on) an honest member signs the height again,
    another block: the two signatures bind two versions, and the registry refuses to call that
    equivocation; the stake is untouched."""
    before = signed_block(chain, dle, witness, HEADER_A, version=VERSION)
    after = signed_block(chain, dle, witness, HEADER_B, version=VERSION + 1)
    with reverts_with(dle.DifferentRolesVersions, first=VERSION, second=VERSION + 1):
        dle.reportEquivocation(before, after, sender=bob)
    # Nor can a reporter relabel one of them: the signature binds the version it was given under.
    relabelled = (*after[:2], VERSION, *after[3:])
    stranger = Account._recover_hash(
        dle.blockDigest(CHAIN, HEIGHT, VERSION, int(Role.WITNESS), HEADER_B), signature=after[5]
    )
    with reverts_with(dle.DifferentSigners, first=witness, second=stranger):
        dle.reportEquivocation(before, relabelled, sender=bob)
    assert staking.stakeOf(witness, int(Role.WITNESS)) == 1_500 * CONET
    assert not staking.isEvidenceUsed(evidence(witness))


def test_the_role_slashed_is_the_one_the_signatures_name_not_the_reporters(
    chain: Any, dle: Any, staking: Any, token: Any, treasury: Any, bob: Any, witness: Any
) -> None:
    """An equivocating witness with 1 wei of validator stake: a reporter who relabels the signatures as
    validator votes (to spare the big stake, or to hit the small one) recovers a stranger; mixing the
    labels is refused; the witness stake, the one the signatures name, is the one slashed."""
    token.transfer(witness, 1, sender=treasury)
    stake(staking, token, witness, Role.VALIDATOR, 1)
    first = signed_block(chain, dle, witness, HEADER_A)
    second = signed_block(chain, dle, witness, HEADER_B)
    as_validator = [(*signed[:3], int(Role.VALIDATOR), *signed[4:]) for signed in (first, second)]
    strangers = [
        Account._recover_hash(dle.blockDigest(CHAIN, HEIGHT, VERSION, int(Role.VALIDATOR), h), signature=signed[5])
        for h, signed in ((HEADER_A, first), (HEADER_B, second))
    ]
    assert witness.address not in strangers
    with reverts_with(dle.DifferentSigners, first=strangers[0], second=strangers[1]):
        dle.reportEquivocation(*as_validator, sender=bob)
    with reverts_with(dle.DifferentRoles, first=int(Role.WITNESS), second=int(Role.VALIDATOR)):
        dle.reportEquivocation(first, as_validator[1], sender=bob)
    assert staking.stakeOf(witness, int(Role.VALIDATOR)) == 1
    receipt = dle.reportEquivocation(first, second, sender=bob)
    assert receipt.events.filter(dle.EquivocationReported)[0].role == int(Role.WITNESS)
    assert staking.stakeOf(witness, int(Role.WITNESS)) == 0
    assert staking.stakeOf(witness, int(Role.VALIDATOR)) == 1


def test_an_equivocating_archive_member_is_slashed_and_leaves_its_group(
    chain: Any, dle: Any, staking: Any, registry: Any, archive_nodes: list[Any], admin: Any, bob: Any, epochs: None
) -> None:
    """A key that signs two block votes in its archive stake role (no honest archive node votes: it
    certifies) is slashed in that role like any other."""
    cheat, honest = group_of(registry, archive_nodes, 0)
    first = signed_block(chain, dle, cheat, HEADER_A, role=Role.ARCHIVE)
    second = signed_block(chain, dle, cheat, HEADER_B, role=Role.ARCHIVE)
    dle.reportEquivocation(first, second, sender=bob)
    assert staking.stakeOf(cheat, int(Role.ARCHIVE)) == 0
    dle.refreshGroup(0, sender=admin)
    assert dle.epochMembers(0, 2) == [honest.address]


def test_one_block_twice_is_no_equivocation(chain: Any, dle: Any, bob: Any, witness: Any) -> None:
    signed = signed_block(chain, dle, witness, HEADER_A)
    with reverts_with(dle.SameBlock, headerHash=HEADER_A):
        dle.reportEquivocation(signed, signed, sender=bob)


def test_blocks_signed_by_two_keys_are_no_equivocation(
    chain: Any, dle: Any, bob: Any, carol: Any, witness: Any
) -> None:
    first = signed_block(chain, dle, witness, HEADER_A)
    second = signed_block(chain, dle, carol, HEADER_B)
    with reverts_with(dle.DifferentSigners, first=witness, second=carol):
        dle.reportEquivocation(first, second, sender=bob)


def test_blocks_at_two_heights_are_no_equivocation(chain: Any, dle: Any, bob: Any, witness: Any) -> None:
    """Two heights are refused outright; a signature of a block at another height, presented as one at
    this height, recovers to a stranger."""
    first = signed_block(chain, dle, witness, HEADER_A)
    second = signed_block(chain, dle, witness, HEADER_B, height=HEIGHT + 1)
    with reverts_with(
        dle.DifferentHeights, firstChain=CHAIN, firstHeight=HEIGHT, secondChain=CHAIN, secondHeight=HEIGHT + 1
    ):
        dle.reportEquivocation(first, second, sender=bob)
    moved = (CHAIN, HEIGHT, *second[2:])
    stranger = Account._recover_hash(
        dle.blockDigest(CHAIN, HEIGHT, VERSION, int(Role.WITNESS), HEADER_B), signature=second[5]
    )
    assert stranger != witness.address
    with reverts_with(dle.DifferentSigners, first=witness, second=stranger):
        dle.reportEquivocation(first, moved, sender=bob)


def test_an_equivocator_cannot_report_itself(chain: Any, dle: Any, staking: Any, witness: Any) -> None:
    first = signed_block(chain, dle, witness, HEADER_A)
    second = signed_block(chain, dle, witness, HEADER_B)
    with reverts_with(staking.SelfReport, node=witness):
        dle.reportEquivocation(first, second, sender=witness)
    assert staking.stakeOf(witness, int(Role.WITNESS)) == 1_500 * CONET


def test_an_equivocator_without_stake_in_the_role_is_not_slashable(
    chain: Any, dle: Any, staking: Any, bob: Any, witness: Any
) -> None:
    first = signed_block(chain, dle, witness, HEADER_A, role=Role.VALIDATOR)
    second = signed_block(chain, dle, witness, HEADER_B, role=Role.VALIDATOR)
    with reverts_with(staking.NothingToSlash, node=witness, role=int(Role.VALIDATOR)):
        dle.reportEquivocation(first, second, sender=bob)
    assert staking.stakeOf(witness, int(Role.WITNESS)) == 1_500 * CONET


def test_an_equivocation_and_a_certified_fault_of_one_offence_slash_once(
    chain: Any,
    dle: Any,
    staking: Any,
    token: Any,
    registry: Any,
    archive_nodes: list[Any],
    admin: Any,
    treasury: Any,
    bob: Any,
    witness: Any,
    epochs: None,
) -> None:
    """Two blocks at one height under one roles version (proven on chain) and signing an invalid block
    there (certified by the group) are one offence: whichever path comes second slashes nothing, even
    after the offender staked again; the next roles version is another offence."""
    members = group_of(registry, archive_nodes, 1)
    dle.registerChain(
        ASSET, 7, GENESIS, 1, 1, group_signatures(members, dle.genesisDigest(ASSET, 7, GENESIS, 1)), sender=admin
    )
    on = dle_chain_id(chain.chain_id, ASSET, 7)
    first = signed_block(chain, dle, witness, HEADER_A, on=on)
    second = signed_block(chain, dle, witness, HEADER_B, on=on)
    dle.reportEquivocation(first, second, sender=bob)
    key = evidence(witness, on=on)
    assert staking.isEvidenceUsed(key)

    token.transfer(witness, 1_500 * CONET, sender=treasury)
    stake(staking, token, witness, Role.WITNESS, 1_500 * CONET)
    report = (on, HEIGHT, VERSION, witness.address, int(Role.WITNESS), 2, HEADER_A, keccak(b"bundle"), bob.address)
    certificate = group_signatures(members, dle.faultDigest(report))
    with reverts_with(staking.EvidenceAlreadyUsed, evidenceHash=key):
        dle.reportFault(report, first[5], 1, certificate, sender=admin)
    assert staking.stakeOf(witness, int(Role.WITNESS)) == 1_500 * CONET

    later = signed_block(chain, dle, witness, HEADER_C, on=on, version=VERSION + 1)
    report = (on, HEIGHT, VERSION + 1, witness.address, int(Role.WITNESS), 2, HEADER_C, keccak(b"b"), bob.address)
    receipt = dle.reportFault(report, later[5], 1, group_signatures(members, dle.faultDigest(report)), sender=admin)
    assert receipt.events.filter(dle.FaultReported)[0].slashed == 1_500 * CONET
    assert staking.isEvidenceUsed(evidence(witness, on=on, version=VERSION + 1))
