"""NodeRegistry: registration bound to the caller's public key and stake, profile limits, updates,
deregistration, non-transferable node NFTs, and archive groups."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ape
import pytest
from conftest import MIN_STAKE, public_key, stake

from offchain.chain.deployer import Role

ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"
ENDPOINTS = ["https://node.example:443", "wss://node.example/ws"]
PRICES = (1_000, 20, 300_000, 4)
REGION = "eu-west"
ARCHIVE_OPERATORS = 23


@pytest.fixture(scope="module")
def archive_operators(accounts: Any, admin: Any, treasury: Any, token: Any, staking: Any) -> list[Any]:
    """Fresh accounts, each with gas money and the archive minimum bonded: there are only ten test
    accounts, and the archive group tests need more nodes than that."""
    operators = []
    for _ in range(ARCHIVE_OPERATORS):
        account = accounts.generate_test_account()
        admin.transfer(account, "1 ether")
        token.transfer(account, MIN_STAKE[Role.ARCHIVE], sender=treasury)
        stake(staking, token, account, Role.ARCHIVE, MIN_STAKE[Role.ARCHIVE])
        operators.append(account)
    return operators


@pytest.fixture(scope="module", autouse=True)
def _deployed(
    registry: Any, staking: Any, funded: list[Any], archive_operators: list[Any], alice: Any, bob: Any, carol: Any
) -> None:
    """Set up the module's fixtures before ape's per-test snapshots start (else ape warns and rebases)."""


def register(
    registry: Any,
    node: Any,
    role: Role,
    endpoints: Sequence[str] = ENDPOINTS,
    prices: tuple[int, int, int, int] = PRICES,
    region: str = REGION,
    key: bytes | None = None,
) -> Any:
    return registry.register(
        int(role), public_key(node) if key is None else key, list(endpoints), prices, region, sender=node
    )


def staked_node(registry: Any, staking: Any, token: Any, node: Any, role: Role) -> Any:
    """Bonds the role's minimum for `node` and registers it; returns the receipt."""
    stake(staking, token, node, role, MIN_STAKE[role])
    return register(registry, node, role)


def token_id(registry: Any, receipt: Any) -> int:
    return int(receipt.events.filter(registry.NodeRegistered)[0].tokenId)


def group_sizes(registry: Any) -> list[int]:
    return [len(registry.archiveGroupMembers(group)) for group in range(registry.groupCount())]


# ---------------------------------------------------------------- deployment and views


def test_deployment(registry: Any, staking: Any) -> None:
    assert registry.staking() == staking.address
    assert (registry.name(), registry.symbol()) == ("CoNET Node", "CNODE")
    assert registry.supportsInterface(bytes.fromhex("80ac58cd"))  # ERC-721
    assert registry.ARCHIVE_GROUP_TARGET() == 10
    assert registry.MIN_ARCHIVE_GROUPS() == 2
    assert registry.MAX_ENDPOINTS() == 8
    assert registry.MAX_ENDPOINT_LENGTH() == 256
    assert registry.MAX_REGION_LENGTH() == 64
    assert registry.groupCount() == 2
    assert registry.archiveCount() == 0
    assert list(registry.archiveGroupMembers(0)) == []
    assert list(registry.archiveGroupMembers(1)) == []


# ---------------------------------------------------------------- register


def test_register_mints_a_node_with_the_callers_key(
    registry: Any, staking: Any, token: Any, alice: Any, chain: Any
) -> None:
    stake(staking, token, alice, Role.WITNESS, MIN_STAKE[Role.WITNESS])
    receipt = register(registry, alice, Role.WITNESS)

    registered = receipt.events.filter(registry.NodeRegistered)
    assert len(registered) == 1
    assert registered[0].tokenId == 1  # token ids start at 1
    assert registered[0].owner == alice.address
    assert registered[0].role == Role.WITNESS
    minted = receipt.events.filter(registry.Transfer)
    assert len(minted) == 1
    assert (minted[0]["from"], minted[0].to, minted[0].tokenId) == (ZERO_ADDRESS, alice.address, 1)
    assert not receipt.events.filter(registry.ArchiveGroupJoined)  # not an archive node

    assert registry.ownerOf(1) == alice.address
    assert registry.balanceOf(alice) == 1
    assert registry.tokenOf(alice, int(Role.WITNESS)) == 1
    assert registry.tokenOf(alice, int(Role.CBDC)) == 0

    node = registry.nodeOf(1)
    assert node.role == Role.WITNESS
    assert node.registeredAt == chain.blocks[receipt.block_number].timestamp
    assert tuple(node.prices) == PRICES
    assert (
        node.prices.outboundPerMB,
        node.prices.storagePerMBHour,
        node.prices.perVCPU,
        node.prices.perMBMemory,
    ) == PRICES
    assert bytes(node.publicKey) == public_key(alice)
    assert node.region == REGION
    assert list(node.endpoints) == ENDPOINTS


def test_token_ids_count_up_across_nodes_and_roles(
    registry: Any, staking: Any, token: Any, alice: Any, bob: Any
) -> None:
    assert token_id(registry, staked_node(registry, staking, token, alice, Role.CBDC)) == 1
    assert token_id(registry, staked_node(registry, staking, token, bob, Role.CBDC)) == 2
    assert token_id(registry, staked_node(registry, staking, token, alice, Role.VALIDATOR)) == 3
    assert registry.balanceOf(alice) == 2
    assert registry.tokenOf(alice, int(Role.CBDC)) == 1
    assert registry.tokenOf(alice, int(Role.VALIDATOR)) == 3
    assert registry.tokenOf(bob, int(Role.CBDC)) == 2


def test_register_rejects_another_accounts_key(registry: Any, staking: Any, token: Any, alice: Any, bob: Any) -> None:
    stake(staking, token, alice, Role.CBDC, MIN_STAKE[Role.CBDC])
    with ape.reverts(registry.PublicKeyMismatch, caller=alice.address, derived=bob.address):
        register(registry, alice, Role.CBDC, key=public_key(bob))
    assert registry.tokenOf(alice, int(Role.CBDC)) == 0


def test_register_rejects_a_key_that_hashes_to_nobody(registry: Any, staking: Any, token: Any, alice: Any) -> None:
    stake(staking, token, alice, Role.CBDC, MIN_STAKE[Role.CBDC])
    key = bytearray(public_key(alice))
    key[-1] ^= 1
    with ape.reverts(registry.PublicKeyMismatch, caller=alice.address):
        register(registry, alice, Role.CBDC, key=bytes(key))


@pytest.mark.parametrize("form", ["short", "prefixed", "compressed", "empty"])
def test_register_rejects_a_key_of_the_wrong_length(
    registry: Any, staking: Any, token: Any, alice: Any, form: str
) -> None:
    stake(staking, token, alice, Role.CBDC, MIN_STAKE[Role.CBDC])
    key = public_key(alice)
    bad = {
        "short": key[:63],
        "prefixed": b"\x04" + key,  # 65 bytes: the uncompressed SEC1 form
        "compressed": bytes([2 + key[-1] % 2]) + key[:32],  # 33 bytes
        "empty": b"",
    }[form]
    with ape.reverts(registry.InvalidPublicKeyLength, length=len(bad)):
        register(registry, alice, Role.CBDC, key=bad)


def test_register_twice_in_a_role_reverts_but_another_role_is_allowed(
    registry: Any, staking: Any, token: Any, alice: Any
) -> None:
    first = token_id(registry, staked_node(registry, staking, token, alice, Role.ARCHIVE))
    with ape.reverts(registry.AlreadyRegistered, tokenId=first):
        register(registry, alice, Role.ARCHIVE)
    second = token_id(registry, staked_node(registry, staking, token, alice, Role.DCC_PROVIDER))
    assert second == first + 1
    assert registry.nodeOf(second).role == Role.DCC_PROVIDER
    assert registry.archiveCount() == 1


def test_register_needs_the_minimum_stake(registry: Any, staking: Any, token: Any, alice: Any) -> None:
    role = Role.SI_NODE
    with ape.reverts(registry.InsufficientStake, node=alice.address, role=int(role)):
        register(registry, alice, role)
    stake(staking, token, alice, role, MIN_STAKE[role] - 1)
    with ape.reverts(registry.InsufficientStake, node=alice.address, role=int(role)):
        register(registry, alice, role)
    # Stake in another role does not count.
    stake(staking, token, alice, Role.CBDC, MIN_STAKE[Role.CBDC])
    with ape.reverts(registry.InsufficientStake, node=alice.address, role=int(role)):
        register(registry, alice, role)
    stake(staking, token, alice, role, 1)
    register(registry, alice, role)
    assert registry.tokenOf(alice, int(role)) == 1


def test_unbonding_stake_does_not_count_for_registration(registry: Any, staking: Any, token: Any, alice: Any) -> None:
    stake(staking, token, alice, Role.CBDC, MIN_STAKE[Role.CBDC])
    staking.requestUnstake(int(Role.CBDC), 1, sender=alice)
    with ape.reverts(registry.InsufficientStake, node=alice.address, role=int(Role.CBDC)):
        register(registry, alice, Role.CBDC)


def test_register_reads_the_current_minimum(
    registry: Any, staking: Any, token: Any, admin: Any, alice: Any, bob: Any
) -> None:
    staking.setMinimumStake(int(Role.CBDC), 0, sender=admin)
    # A zero minimum still needs some stake bonded.
    with ape.reverts(registry.InsufficientStake, node=alice.address, role=int(Role.CBDC)):
        register(registry, alice, Role.CBDC)
    stake(staking, token, alice, Role.CBDC, 1)
    register(registry, alice, Role.CBDC)
    staking.setMinimumStake(int(Role.CBDC), 10 * MIN_STAKE[Role.CBDC], sender=admin)
    stake(staking, token, bob, Role.CBDC, MIN_STAKE[Role.CBDC])
    with ape.reverts(registry.InsufficientStake, node=bob.address, role=int(Role.CBDC)):
        register(registry, bob, Role.CBDC)


@pytest.mark.parametrize("count", [0, 9])
def test_register_rejects_a_bad_endpoint_count(registry: Any, staking: Any, token: Any, alice: Any, count: int) -> None:
    stake(staking, token, alice, Role.CBDC, MIN_STAKE[Role.CBDC])
    with ape.reverts(registry.InvalidEndpointCount, count=count):
        register(registry, alice, Role.CBDC, endpoints=[f"https://n{i}.example" for i in range(count)])


def test_register_accepts_the_most_endpoints_and_the_longest(
    registry: Any, staking: Any, token: Any, alice: Any
) -> None:
    stake(staking, token, alice, Role.CBDC, MIN_STAKE[Role.CBDC])
    endpoints = ["x" * 256] + [f"https://n{i}.example" for i in range(7)]
    region = "r" * 64
    register(registry, alice, Role.CBDC, endpoints=endpoints, region=region)
    node = registry.nodeOf(1)
    assert list(node.endpoints) == endpoints
    assert node.region == region


@pytest.mark.parametrize(
    ("endpoints", "index"),
    [
        ([""], 0),
        (["https://a.example", "https://b.example", ""], 2),
        (["x" * 257], 0),
        (["https://a.example", "x" * 257, ""], 1),
    ],
)
def test_register_rejects_a_bad_endpoint(
    registry: Any, staking: Any, token: Any, alice: Any, endpoints: list[str], index: int
) -> None:
    stake(staking, token, alice, Role.CBDC, MIN_STAKE[Role.CBDC])
    with ape.reverts(registry.InvalidEndpoint, index=index):
        register(registry, alice, Role.CBDC, endpoints=endpoints)


@pytest.mark.parametrize("region", ["r" * 65, "é" * 33])  # lengths in bytes: 65 and 66
def test_register_rejects_a_long_region(registry: Any, staking: Any, token: Any, alice: Any, region: str) -> None:
    stake(staking, token, alice, Role.CBDC, MIN_STAKE[Role.CBDC])
    with ape.reverts(registry.RegionTooLong, length=len(region.encode())):
        register(registry, alice, Role.CBDC, region=region)


def test_an_empty_region_is_allowed(registry: Any, staking: Any, token: Any, alice: Any) -> None:
    stake(staking, token, alice, Role.CBDC, MIN_STAKE[Role.CBDC])
    register(registry, alice, Role.CBDC, region="")
    assert registry.nodeOf(1).region == ""


# ---------------------------------------------------------------- update


def test_update_replaces_the_profile(registry: Any, staking: Any, token: Any, alice: Any, chain: Any) -> None:
    receipt = staked_node(registry, staking, token, alice, Role.VALIDATOR)
    registered_at = chain.blocks[receipt.block_number].timestamp
    endpoints = ["https://new.example"]
    prices = (5, 6, 7, 8)
    receipt = registry.update(1, endpoints, prices, "ap-south", sender=alice)
    updated = receipt.events.filter(registry.NodeUpdated)
    assert len(updated) == 1
    assert updated[0].tokenId == 1

    node = registry.nodeOf(1)
    assert list(node.endpoints) == endpoints  # the shorter list replaces the old one entirely
    assert tuple(node.prices) == prices
    assert node.region == "ap-south"
    # What registration fixed stays.
    assert node.role == Role.VALIDATOR
    assert node.registeredAt == registered_at
    assert bytes(node.publicKey) == public_key(alice)
    assert registry.ownerOf(1) == alice.address

    longer = [f"https://n{i}.example" for i in range(8)]
    registry.update(1, longer, PRICES, "", sender=alice)
    node = registry.nodeOf(1)
    assert list(node.endpoints) == longer
    assert node.region == ""


def test_only_the_owner_updates(registry: Any, staking: Any, token: Any, alice: Any, bob: Any) -> None:
    staked_node(registry, staking, token, alice, Role.CBDC)
    with ape.reverts(registry.NotNodeOwner, tokenId=1, caller=bob.address):
        registry.update(1, ["https://evil.example"], PRICES, REGION, sender=bob)
    # Not even someone the owner approved.
    registry.approve(bob, 1, sender=alice)
    with ape.reverts(registry.NotNodeOwner, tokenId=1, caller=bob.address):
        registry.update(1, ["https://evil.example"], PRICES, REGION, sender=bob)
    assert list(registry.nodeOf(1).endpoints) == ENDPOINTS


def test_update_of_a_missing_node_reverts(registry: Any, alice: Any) -> None:
    with ape.reverts(registry.ERC721NonexistentToken, tokenId=7):
        registry.update(7, ENDPOINTS, PRICES, REGION, sender=alice)


def test_update_checks_the_profile(registry: Any, staking: Any, token: Any, alice: Any) -> None:
    staked_node(registry, staking, token, alice, Role.CBDC)
    with ape.reverts(registry.InvalidEndpointCount, count=0):
        registry.update(1, [], PRICES, REGION, sender=alice)
    with ape.reverts(registry.InvalidEndpointCount, count=9):
        registry.update(1, ["https://a.example"] * 9, PRICES, REGION, sender=alice)
    with ape.reverts(registry.InvalidEndpoint, index=1):
        registry.update(1, ["https://a.example", ""], PRICES, REGION, sender=alice)
    with ape.reverts(registry.InvalidEndpoint, index=0):
        registry.update(1, ["x" * 257], PRICES, REGION, sender=alice)
    with ape.reverts(registry.RegionTooLong, length=65):
        registry.update(1, ENDPOINTS, PRICES, "r" * 65, sender=alice)
    assert list(registry.nodeOf(1).endpoints) == ENDPOINTS


# ---------------------------------------------------------------- deregister


def test_deregister_burns_the_node(registry: Any, staking: Any, token: Any, alice: Any) -> None:
    staked_node(registry, staking, token, alice, Role.WITNESS)
    receipt = registry.deregister(1, sender=alice)
    left = receipt.events.filter(registry.NodeDeregistered)
    assert len(left) == 1
    assert (left[0].tokenId, left[0].owner, left[0].role) == (1, alice.address, Role.WITNESS)
    burned = receipt.events.filter(registry.Transfer)
    assert [(t["from"], t.to, t.tokenId) for t in burned] == [(alice.address, ZERO_ADDRESS, 1)]

    assert registry.balanceOf(alice) == 0
    assert registry.tokenOf(alice, int(Role.WITNESS)) == 0
    with ape.reverts(registry.ERC721NonexistentToken, tokenId=1):
        registry.ownerOf(1)
    with ape.reverts(registry.ERC721NonexistentToken, tokenId=1):
        registry.nodeOf(1)
    with ape.reverts(registry.ERC721NonexistentToken, tokenId=1):
        registry.deregister(1, sender=alice)
    # The stake stays in Staking.
    assert staking.stakeOf(alice, int(Role.WITNESS)) == MIN_STAKE[Role.WITNESS]


def test_a_deregistered_node_can_register_again_with_a_new_id(
    registry: Any, staking: Any, token: Any, alice: Any
) -> None:
    staked_node(registry, staking, token, alice, Role.CBDC)
    registry.deregister(1, sender=alice)
    receipt = register(registry, alice, Role.CBDC, endpoints=["https://again.example"])
    assert token_id(registry, receipt) == 2  # ids are never reused
    assert registry.tokenOf(alice, int(Role.CBDC)) == 2
    assert list(registry.nodeOf(2).endpoints) == ["https://again.example"]


def test_deregister_leaves_other_roles_alone(registry: Any, staking: Any, token: Any, alice: Any) -> None:
    staked_node(registry, staking, token, alice, Role.CBDC)
    staked_node(registry, staking, token, alice, Role.WITNESS)
    registry.deregister(1, sender=alice)
    assert registry.tokenOf(alice, int(Role.WITNESS)) == 2
    assert registry.nodeOf(2).role == Role.WITNESS
    assert registry.balanceOf(alice) == 1


def test_only_the_owner_deregisters(registry: Any, staking: Any, token: Any, alice: Any, bob: Any) -> None:
    staked_node(registry, staking, token, alice, Role.CBDC)
    with ape.reverts(registry.NotNodeOwner, tokenId=1, caller=bob.address):
        registry.deregister(1, sender=bob)
    registry.setApprovalForAll(bob, True, sender=alice)
    with ape.reverts(registry.NotNodeOwner, tokenId=1, caller=bob.address):
        registry.deregister(1, sender=bob)
    assert registry.ownerOf(1) == alice.address


def test_deregister_of_a_missing_node_reverts(registry: Any, alice: Any) -> None:
    with ape.reverts(registry.ERC721NonexistentToken, tokenId=0):
        registry.deregister(0, sender=alice)


# ---------------------------------------------------------------- transfers


def test_node_nfts_cannot_be_transferred(registry: Any, staking: Any, token: Any, alice: Any, bob: Any) -> None:
    staked_node(registry, staking, token, alice, Role.CBDC)
    with ape.reverts(registry.NodeNotTransferable, tokenId=1):
        registry.transferFrom(alice, bob, 1, sender=alice)
    with ape.reverts(registry.NodeNotTransferable, tokenId=1):
        registry.safeTransferFrom(alice, bob, 1, sender=alice)
    with ape.reverts(registry.NodeNotTransferable, tokenId=1):
        registry.safeTransferFrom(alice, bob, 1, b"data", sender=alice)
    # Approval is possible but does not help.
    registry.approve(bob, 1, sender=alice)
    with ape.reverts(registry.NodeNotTransferable, tokenId=1):
        registry.transferFrom(alice, bob, 1, sender=bob)
    registry.setApprovalForAll(bob, True, sender=alice)
    with ape.reverts(registry.NodeNotTransferable, tokenId=1):
        registry.safeTransferFrom(alice, bob, 1, sender=bob)
    assert registry.ownerOf(1) == alice.address
    assert registry.balanceOf(bob) == 0
    assert registry.tokenOf(bob, int(Role.CBDC)) == 0


def test_a_stranger_cannot_transfer_either(registry: Any, staking: Any, token: Any, alice: Any, bob: Any) -> None:
    staked_node(registry, staking, token, alice, Role.CBDC)
    with ape.reverts(registry.ERC721InsufficientApproval, operator=bob.address, tokenId=1):
        registry.transferFrom(alice, bob, 1, sender=bob)


# ---------------------------------------------------------------- archive group views


def test_views_of_a_missing_node_revert(registry: Any) -> None:
    for missing in (0, 1, 2**256 - 1):
        with ape.reverts(registry.ERC721NonexistentToken, tokenId=missing):
            registry.nodeOf(missing)
        with ape.reverts(registry.ERC721NonexistentToken, tokenId=missing):
            registry.archiveGroupOf(missing)


def test_archive_group_of_a_non_archive_node_reverts(registry: Any, staking: Any, token: Any, alice: Any) -> None:
    staked_node(registry, staking, token, alice, Role.WITNESS)
    with ape.reverts(registry.NotArchiveNode, tokenId=1):
        registry.archiveGroupOf(1)
    assert registry.archiveCount() == 0


def test_unknown_archive_groups_revert(registry: Any) -> None:
    count = registry.groupCount()
    with ape.reverts(registry.UnknownArchiveGroup, group=count):
        registry.archiveGroupMembers(count)
    with ape.reverts(registry.UnknownArchiveGroup, group=2**256 - 1):
        registry.archiveGroupMembers(2**256 - 1)


# ---------------------------------------------------------------- archive groups


def test_archive_nodes_in_a_row_split_by_token_parity(registry: Any, archive_operators: list[Any]) -> None:
    joined = []
    for operator in archive_operators[:4]:
        receipt = register(registry, operator, Role.ARCHIVE)
        tid = token_id(registry, receipt)
        events = receipt.events.filter(registry.ArchiveGroupJoined)
        assert len(events) == 1
        assert events[0].tokenId == tid
        joined.append((tid, int(events[0].group)))
    assert joined == [(1, 1), (2, 0), (3, 1), (4, 0)]
    for tid, group in joined:
        assert registry.archiveGroupOf(tid) == group
    assert sorted(registry.archiveGroupMembers(0)) == [2, 4]
    assert sorted(registry.archiveGroupMembers(1)) == [1, 3]
    assert registry.archiveCount() == 4
    assert registry.groupCount() == 2


def test_the_preference_follows_the_token_id_not_the_archive_count(
    registry: Any, staking: Any, token: Any, alice: Any, archive_operators: list[Any]
) -> None:
    staked_node(registry, staking, token, alice, Role.CBDC)  # token 1, not archive
    first = register(registry, archive_operators[0], Role.ARCHIVE)  # token 2
    second = register(registry, archive_operators[1], Role.ARCHIVE)  # token 3
    assert (token_id(registry, first), registry.archiveGroupOf(2)) == (2, 0)
    assert (token_id(registry, second), registry.archiveGroupOf(3)) == (3, 1)


def test_a_new_archive_node_fills_the_smaller_group_first(registry: Any, archive_operators: list[Any]) -> None:
    for operator in archive_operators[:4]:  # tokens 1, 3 in group 1; 2, 4 in group 0
        register(registry, operator, Role.ARCHIVE)
    registry.deregister(2, sender=archive_operators[1])
    assert sorted(registry.archiveGroupMembers(0)) == [4]
    # Token 5 prefers group 1 (5 % 2), but group 0 has fewer members.
    receipt = register(registry, archive_operators[4], Role.ARCHIVE)
    assert token_id(registry, receipt) == 5
    assert registry.archiveGroupOf(5) == 0
    assert sorted(registry.archiveGroupMembers(0)) == [4, 5]


def test_deregistering_an_archive_node_leaves_its_group(registry: Any, archive_operators: list[Any]) -> None:
    for operator in archive_operators[:3]:
        register(registry, operator, Role.ARCHIVE)
    assert registry.archiveCount() == 3
    receipt = registry.deregister(3, sender=archive_operators[2])
    left = receipt.events.filter(registry.ArchiveGroupLeft)
    assert len(left) == 1
    assert (left[0].tokenId, left[0].group) == (3, 1)
    assert registry.archiveCount() == 2
    assert list(registry.archiveGroupMembers(1)) == [1]
    assert list(registry.archiveGroupMembers(0)) == [2]
    with ape.reverts(registry.ERC721NonexistentToken, tokenId=3):
        registry.archiveGroupOf(3)
    # Re-registering is a new node, placed afresh.
    receipt = register(registry, archive_operators[2], Role.ARCHIVE)
    assert token_id(registry, receipt) == 4
    assert registry.archiveGroupOf(4) == 0  # one member each: the tie goes to 4 % 2 = 0


def test_a_third_group_opens_past_ten_per_group_and_never_closes(registry: Any, archive_operators: list[Any]) -> None:
    for count, operator in enumerate(archive_operators[:20], start=1):
        before = group_sizes(registry)
        receipt = register(registry, operator, Role.ARCHIVE)
        tid = token_id(registry, receipt)
        group = registry.archiveGroupOf(tid)
        assert tid == count
        assert group == tid % 2  # in a row: by parity
        assert before[group] == min(before)  # the fewest members
        sizes = group_sizes(registry)
        assert max(sizes) - min(sizes) <= 1  # balanced
        assert not receipt.events.filter(registry.ArchiveGroupOpened)
        assert registry.groupCount() == 2
        assert registry.archiveCount() == count
    assert group_sizes(registry) == [10, 10]

    # The 21st archive node exceeds 10 * 2: a third group opens and the node joins it, empty as it is.
    receipt = register(registry, archive_operators[20], Role.ARCHIVE)
    opened = receipt.events.filter(registry.ArchiveGroupOpened)
    assert len(opened) == 1
    assert opened[0].groupCount == 3
    joined = receipt.events.filter(registry.ArchiveGroupJoined)
    assert (joined[0].tokenId, joined[0].group) == (21, 2)
    assert registry.groupCount() == 3
    assert registry.archiveCount() == 21
    assert registry.archiveGroupOf(21) == 2
    assert list(registry.archiveGroupMembers(2)) == [21]
    with ape.reverts(registry.UnknownArchiveGroup, group=3):
        registry.archiveGroupMembers(3)

    # The next ones fill the new group rather than follow their token ids (22 % 3 = 1, 23 % 3 = 2).
    for operator, tid in zip(archive_operators[21:23], (22, 23), strict=True):
        receipt = register(registry, operator, Role.ARCHIVE)
        assert not receipt.events.filter(registry.ArchiveGroupOpened)
        assert registry.archiveGroupOf(tid) == 2
    assert group_sizes(registry) == [10, 10, 3]
    assert registry.archiveCount() == 23

    # Members leave their groups; the count drops, the groups stay.
    for tid in (21, 22, 23, 1, 2):
        group = registry.archiveGroupOf(tid)
        receipt = registry.deregister(tid, sender=archive_operators[tid - 1])
        assert receipt.events.filter(registry.ArchiveGroupLeft)[0].group == group
        assert tid not in registry.archiveGroupMembers(group)
    assert registry.archiveCount() == 18
    assert registry.groupCount() == 3
    assert group_sizes(registry) == [9, 9, 0]
    # Every remaining archive node is in exactly the group it reports.
    members = {tid: group for group in range(3) for tid in registry.archiveGroupMembers(group)}
    assert sorted(members) == list(range(3, 21))
    for tid, group in members.items():
        assert registry.archiveGroupOf(tid) == group

    # A node joining now goes to the emptied third group.
    receipt = register(registry, archive_operators[0], Role.ARCHIVE)
    assert token_id(registry, receipt) == 24
    assert registry.archiveGroupOf(24) == 2
    assert registry.groupCount() == 3


def test_non_archive_nodes_do_not_count_toward_groups(
    registry: Any, staking: Any, token: Any, funded: list[Any]
) -> None:
    for node in funded[:3]:
        receipt = staked_node(registry, staking, token, node, Role.WITNESS)
        assert not receipt.events.filter(registry.ArchiveGroupJoined)
    assert registry.archiveCount() == 0
    assert group_sizes(registry) == [0, 0]


def test_archive_stake_is_checked_like_any_role(registry: Any, accounts: Any, admin: Any) -> None:
    account = accounts.generate_test_account()
    admin.transfer(account, "1 ether")
    with ape.reverts(registry.InsufficientStake, node=account.address, role=int(Role.ARCHIVE)):
        register(registry, account, Role.ARCHIVE)
    assert registry.archiveCount() == 0


def test_generated_accounts_register_with_their_own_keys(registry: Any, archive_operators: list[Any]) -> None:
    operator = archive_operators[0]
    assert operator.balance > 0
    register(registry, operator, Role.ARCHIVE)
    assert bytes(registry.nodeOf(1).publicKey) == public_key(operator)
    assert registry.ownerOf(1) == operator.address
    with ape.reverts(registry.PublicKeyMismatch, caller=archive_operators[1].address, derived=operator.address):
        register(registry, archive_operators[1], Role.ARCHIVE, key=public_key(operator))


def test_constructor_rejects_a_zero_staking_address(project: Any, admin: Any) -> None:
    with ape.reverts(project.NodeRegistry.InvalidStaking):
        admin.deploy(project.NodeRegistry, "0x0000000000000000000000000000000000000000")


def test_erc721_metadata_and_interfaces(registry: Any) -> None:
    assert (registry.name(), registry.symbol()) == ("CoNET Node", "CNODE")
    assert registry.supportsInterface(bytes.fromhex("80ac58cd"))  # IERC721
    assert registry.supportsInterface(bytes.fromhex("5b5e139f"))  # IERC721Metadata
    assert not registry.supportsInterface(bytes.fromhex("ffffffff"))
