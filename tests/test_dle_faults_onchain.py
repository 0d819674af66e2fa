"""DleRegistry.reportFault: a fault the mainchain cannot re-execute (refusing a valid block, signing an
invalid one) slashes the offender's whole stake in one role on two proofs — the certificate of the
archive group that keeps the chain (every member of one epoch, within its grace) and the offender's own
signed refusal or vote, in that role under that roles version — once per chain, height, roles version
and offender (the key an equivocation uses too), with the reward to the reporter the group named."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import (
    MIN_STAKE,
    REPORTER_BPS,
    eip712_digest,
    group_of,
    group_signatures,
    restake_archive,
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
ASSET_ID = 7
GROUP = 1
GENESIS = b"\x6e" * 32
HEIGHT = 42
VERSION = 2
HEADER = keccak(b"the block judged")
BUNDLE = keccak(b"the evidence bundle: block, signatures, re-execution trace")
REFUSED, SIGNED_INVALID = 1, 2
WITNESS_STAKE = 1_500 * CONET
VALIDATOR_STAKE = 2_000 * CONET
FAULT_FIELDS = [
    ("chain", "bytes32"),
    ("height", "uint256"),
    ("rolesVersion", "uint256"),
    ("offender", "address"),
    ("role", "uint8"),
    ("kind", "uint8"),
    ("headerHash", "bytes32"),
    ("evidenceHash", "bytes32"),
    ("reporter", "address"),
]


@pytest.fixture(scope="module", autouse=True)
def _deployed(
    dle: Any,
    archive_nodes: list[Any],
    funded: list[Any],
    admin: Any,
    treasury: Any,
    bob: Any,
    carol: Any,
    token: Any,
    staking: Any,
    registry: Any,
) -> None:
    """The module's fixtures, then both groups' first epoch and the chain of ASSET #7 kept by group 1,
    all before ape's per-test snapshots start."""
    for group in (0, 1):
        dle.refreshGroup(group, sender=admin)
    digest = dle.genesisDigest(ASSET, ASSET_ID, GENESIS, GROUP)
    signatures = group_signatures(group_of(registry, archive_nodes, GROUP), digest)
    dle.registerChain(ASSET, ASSET_ID, GENESIS, GROUP, 1, signatures, sender=admin)


@pytest.fixture
def chain_id(dle: Any) -> bytes:
    return bytes(dle.chainIdOf(ASSET, ASSET_ID))


@pytest.fixture
def offender(accounts: Any, admin: Any, treasury: Any, token: Any, staking: Any) -> Any:
    """A fresh node staked as a witness and, separately, as a validator, with CoNET to stake again."""
    account = accounts.generate_test_account()
    admin.transfer(account, "1 ether")
    token.transfer(account, 3 * WITNESS_STAKE + VALIDATOR_STAKE, sender=treasury)
    stake(staking, token, account, Role.WITNESS, WITNESS_STAKE)
    stake(staking, token, account, Role.VALIDATOR, VALIDATOR_STAKE)
    return account


def fault(on: bytes, culprit: Any, named: Any, fault_kind: int = SIGNED_INVALID, **changes: Any) -> tuple[Any, ...]:
    """A FaultReport tuple (chain, height, rolesVersion, offender, role, kind, headerHash, evidenceHash,
    reporter): `culprit` as a witness of chain `on` under VERSION, `named` as the reporter; `changes`
    replace fields by name."""
    report = {
        "chain": on,
        "height": HEIGHT,
        "rolesVersion": VERSION,
        "offender": culprit.address,
        "role": int(Role.WITNESS),
        "kind": fault_kind,
        "headerHash": HEADER,
        "evidenceHash": BUNDLE,
        "reporter": named.address,
    }
    report.update(changes)
    return tuple(report[name] for name, _ in FAULT_FIELDS)


def accused_digest(dle: Any, report: tuple[Any, ...]) -> bytes:
    """What the offender must have signed for `report`: its Refusal of the block (kind 1) or its
    BlockSignature of it (kind 2), in the report's role under the report's roles version."""
    chain, height, version, _offender, role, kind, header, _bundle, _reporter = report
    view = dle.refusalDigest if kind == REFUSED else dle.blockDigest
    return bytes(view(chain, height, version, role, header))


def accused(dle: Any, report: tuple[Any, ...], signer: Any) -> bytes:
    """`signer`'s own signed refusal or vote for `report`."""
    return sign_digest(signer, accused_digest(dle, report))


def certified(dle: Any, members: list[Any], report: tuple[Any, ...]) -> bytes:
    return group_signatures(members, bytes(dle.faultDigest(report)))


def evidence_key(chain: bytes, offender: Any, height: int = HEIGHT, version: int = VERSION) -> bytes:
    return keccak(encode(["bytes32", "uint256", "uint256", "address"], [chain, height, version, offender.address]))


def test_the_fault_digest_is_the_eip712_digest_of_the_report(
    chain: Any, dle: Any, chain_id: bytes, offender: Any, carol: Any
) -> None:
    report = fault(chain_id, offender, carol)
    message = dict(zip((name for name, _ in FAULT_FIELDS), report, strict=True))
    expected = eip712_digest("CoNET DLE", chain.chain_id, dle.address, "FaultReport", FAULT_FIELDS, message)
    assert bytes(dle.faultDigest(report)) == expected
    # Every field is signed: changing any one changes the digest.
    changed = {
        "chain": keccak(b"another chain"),
        "height": HEIGHT + 1,
        "rolesVersion": VERSION + 1,
        "offender": carol.address,
        "role": int(Role.VALIDATOR),
        "kind": REFUSED,
        "headerHash": keccak(b"another block"),
        "evidenceHash": keccak(b"another bundle"),
        "reporter": offender.address,
    }
    digests = {
        bytes(dle.faultDigest(fault(chain_id, offender, carol, **{name: value}))) for name, value in changed.items()
    }
    assert len(digests) == len(changed) and expected not in digests


@pytest.mark.parametrize("kind", [REFUSED, SIGNED_INVALID])
def test_a_certified_fault_slashes_exactly_the_role_stake_and_rewards_the_named_reporter(
    dle: Any,
    staking: Any,
    token: Any,
    registry: Any,
    archive_nodes: list[Any],
    treasury: Any,
    bob: Any,
    carol: Any,
    chain_id: bytes,
    offender: Any,
    kind: int,
) -> None:
    # Part of the witness stake is unbonding: it is slashed too.
    staking.requestUnstake(int(Role.WITNESS), 500 * CONET, sender=offender)
    report = fault(chain_id, offender, carol, kind)
    signatures = certified(dle, group_of(registry, archive_nodes, GROUP), report)
    pool, rewarded, submitter = token.balanceOf(treasury), token.balanceOf(carol), token.balanceOf(bob)
    reward = WITNESS_STAKE * REPORTER_BPS // 10_000

    own = accused(dle, report, offender)
    assert dle.reportFault.call(report, own, 1, signatures, sender=bob) == WITNESS_STAKE
    receipt = dle.reportFault(report, own, 1, signatures, sender=bob)

    (slashed,) = receipt.events.filter(staking.Slashed)
    assert (slashed.node, slashed.role, slashed.amount, slashed.reporter, slashed.reward) == (
        offender.address,
        int(Role.WITNESS),
        WITNESS_STAKE,
        carol.address,
        reward,
    )
    assert bytes(slashed.evidenceHash) == evidence_key(chain_id, offender)
    (reported,) = receipt.events.filter(dle.FaultReported)
    assert reported.rolesVersion == VERSION
    assert (
        bytes(reported.chain),
        reported.height,
        reported.offender,
        reported.role,
        reported.kind,
        bytes(reported.evidenceHash),
        reported.reporter,
        reported.slashed,
    ) == (chain_id, HEIGHT, offender.address, int(Role.WITNESS), kind, BUNDLE, carol.address, WITNESS_STAKE)
    assert staking.stakeOf(offender, int(Role.WITNESS)) == 0
    assert staking.unbondingOf(offender, int(Role.WITNESS)) == (0, 0)
    # Only the certified role: the validator stake is untouched.
    assert staking.stakeOf(offender, int(Role.VALIDATOR)) == VALIDATOR_STAKE
    # The reward goes to the reporter the group named, not to whoever submitted the certificate.
    assert token.balanceOf(carol) == rewarded + reward
    assert token.balanceOf(bob) == submitter
    assert token.balanceOf(treasury) == pool + WITNESS_STAKE - reward


def test_a_fault_is_reported_once_per_chain_height_roles_version_and_offender(
    dle: Any,
    staking: Any,
    token: Any,
    registry: Any,
    archive_nodes: list[Any],
    treasury: Any,
    bob: Any,
    carol: Any,
    chain_id: bytes,
    offender: Any,
) -> None:
    members = group_of(registry, archive_nodes, GROUP)
    report = fault(chain_id, offender, carol)
    dle.reportFault(report, accused(dle, report, offender), 1, certified(dle, members, report), sender=bob)
    # The node stakes again; the same offence still cannot be slashed twice, whatever the bundle, the
    # reporter, the block, the kind or the role named (each with the offender's own signature of it).
    stake(staking, token, offender, Role.WITNESS, WITNESS_STAKE)
    key = evidence_key(chain_id, offender)
    for replay in (
        report,
        fault(chain_id, offender, carol, evidenceHash=keccak(b"another bundle")),
        fault(chain_id, offender, bob),
        fault(chain_id, offender, carol, headerHash=keccak(b"another block")),
        fault(chain_id, offender, carol, REFUSED),
        fault(chain_id, offender, carol, role=int(Role.VALIDATOR)),
    ):
        with reverts_with(staking.EvidenceAlreadyUsed, evidenceHash=key):
            dle.reportFault(replay, accused(dle, replay, offender), 1, certified(dle, members, replay), sender=bob)
    assert staking.stakeOf(offender, int(Role.WITNESS)) == WITNESS_STAKE
    assert staking.stakeOf(offender, int(Role.VALIDATOR)) == VALIDATOR_STAKE
    # Another roles version, or another height, is another offence.
    for other in (
        fault(chain_id, offender, carol, rolesVersion=VERSION + 1),
        fault(chain_id, offender, carol, height=HEIGHT + 1),
    ):
        if staking.stakeOf(offender, int(Role.WITNESS)) == 0:
            stake(staking, token, offender, Role.WITNESS, WITNESS_STAKE)
        receipt = dle.reportFault(other, accused(dle, other, offender), 1, certified(dle, members, other), sender=bob)
        assert receipt.events.filter(dle.FaultReported)[0].slashed == WITNESS_STAKE


@pytest.mark.parametrize("kind", [REFUSED, SIGNED_INVALID])
def test_a_fault_without_the_accuseds_own_signature_slashes_nothing(
    dle: Any,
    staking: Any,
    registry: Any,
    archive_nodes: list[Any],
    bob: Any,
    carol: Any,
    chain_id: bytes,
    offender: Any,
    kind: int,
) -> None:
    """The whole group certifying a fault is not enough: a member that never answered (a timeout) has
    signed no refusal, and a signature of anyone else, of another block, version, role or kind, or a
    vote offered as a refusal, recovers somebody other than the offender."""
    members = group_of(registry, archive_nodes, GROUP)
    report = fault(chain_id, offender, carol, kind)
    signatures = certified(dle, members, report)
    other_kind = fault(chain_id, offender, carol, SIGNED_INVALID if kind == REFUSED else REFUSED)
    forgeries = [
        accused(dle, report, carol),  # the reporter's word for it
        accused(dle, fault(chain_id, offender, carol, kind, headerHash=keccak(b"another block")), offender),
        accused(dle, fault(chain_id, offender, carol, kind, rolesVersion=VERSION + 1), offender),
        accused(dle, fault(chain_id, offender, carol, kind, role=int(Role.VALIDATOR)), offender),
        accused(dle, other_kind, offender),
    ]
    for forged in forgeries:
        signer = Account._recover_hash(accused_digest(dle, report), signature=forged)
        with reverts_with(dle.NotOffendersSignature, signer=signer, offender=offender):
            dle.reportFault(report, forged, 1, signatures, sender=bob)
    with pytest.raises(Exception, match="length=0"):  # ECDSAInvalidSignatureLength(0): OpenZeppelin's
        dle.reportFault(report, b"", 1, signatures, sender=bob)
    assert staking.stakeOf(offender, int(Role.WITNESS)) == WITNESS_STAKE
    assert not staking.isEvidenceUsed(evidence_key(chain_id, offender))


def test_a_certified_fault_then_an_equivocation_of_one_offence_slash_once(
    dle: Any,
    staking: Any,
    token: Any,
    registry: Any,
    archive_nodes: list[Any],
    bob: Any,
    carol: Any,
    chain_id: bytes,
    offender: Any,
) -> None:
    """A witness signed an invalid block (certified, slashed) and a second block at that height under that
    roles version: the equivocation report of the same offence slashes nothing, even after it staked
    again."""
    members = group_of(registry, archive_nodes, GROUP)
    report = fault(chain_id, offender, carol)
    own = accused(dle, report, offender)
    dle.reportFault(report, own, 1, certified(dle, members, report), sender=bob)
    stake(staking, token, offender, Role.WITNESS, WITNESS_STAKE)
    other = keccak(b"a second block at the height")
    second = sign_digest(offender, bytes(dle.blockDigest(chain_id, HEIGHT, VERSION, int(Role.WITNESS), other)))
    a = (chain_id, HEIGHT, VERSION, int(Role.WITNESS), HEADER, own)
    b = (chain_id, HEIGHT, VERSION, int(Role.WITNESS), other, second)
    with reverts_with(staking.EvidenceAlreadyUsed, evidenceHash=evidence_key(chain_id, offender)):
        dle.reportEquivocation(a, b, sender=bob)
    assert staking.stakeOf(offender, int(Role.WITNESS)) == WITNESS_STAKE


@pytest.mark.parametrize("flaw", ["other group", "missing signer", "stranger added", "altered after signing"])
def test_only_the_chains_whole_group_certifies_a_fault(
    dle: Any,
    staking: Any,
    registry: Any,
    archive_nodes: list[Any],
    bob: Any,
    carol: Any,
    chain_id: bytes,
    offender: Any,
    flaw: str,
) -> None:
    members = sorted(group_of(registry, archive_nodes, GROUP), key=lambda a: int(a.address, 16))
    report = fault(chain_id, offender, carol)
    digest = bytes(dle.faultDigest(report))
    if flaw == "altered after signing":
        # The reporter swapped for the submitter: the signatures recover to strangers.
        signatures = group_signatures(members, digest)
        altered = fault(chain_id, offender, bob)
        with reverts_with_wrong_signers(dle, bytes(dle.faultDigest(altered)), signatures, GROUP, 1):
            dle.reportFault(altered, accused(dle, altered, offender), 1, signatures, sender=bob)
    else:
        signers = {
            "other group": group_of(registry, archive_nodes, 1 - GROUP),
            "missing signer": members[:1],
            "stranger added": [*members, carol],
        }[flaw]
        with reverts_with(dle.SignersNotGroup, group=GROUP, epoch=1):
            dle.reportFault(report, accused(dle, report, offender), 1, group_signatures(signers, digest), sender=bob)
    assert staking.stakeOf(offender, int(Role.WITNESS)) == WITNESS_STAKE


def test_an_ended_epoch_certifies_no_fault_and_a_lone_member_none_either(
    dle: Any,
    staking: Any,
    token: Any,
    treasury: Any,
    registry: Any,
    archive_nodes: list[Any],
    admin: Any,
    bob: Any,
    carol: Any,
    chain_id: bytes,
    offender: Any,
) -> None:
    old = group_of(registry, archive_nodes, GROUP)
    report = fault(chain_id, offender, carol)
    signatures = certified(dle, old, report)
    own = accused(dle, report, offender)
    staking.requestUnstake(int(Role.ARCHIVE), MIN_STAKE[Role.ARCHIVE], sender=old[0])
    dle.refreshGroup(GROUP, sender=admin)
    with reverts_with(dle.EpochEnded, group=GROUP, epoch=1, current=2):
        dle.reportFault(report, own, 1, signatures, sender=bob)
    with reverts_with(dle.UnknownEpoch, group=GROUP, epoch=3):
        dle.reportFault(report, own, 3, signatures, sender=bob)
    # The member that stayed is all of epoch 2: alone, it slashes nobody.
    with reverts_with(dle.GroupTooSmall, group=GROUP, epoch=2, size=1, minimum=2):
        dle.reportFault(report, own, 2, certified(dle, old[1:], report), sender=bob)
    assert staking.stakeOf(offender, int(Role.WITNESS)) == WITNESS_STAKE
    # The leaver is back: the current epoch, of both, certifies the fault.
    restake_archive(staking, token, treasury, old[0])
    dle.refreshGroup(GROUP, sender=admin)
    receipt = dle.reportFault(report, own, 3, signatures, sender=bob)
    assert receipt.events.filter(dle.FaultReported)[0].slashed == WITNESS_STAKE


@pytest.mark.parametrize("kind", [0, 3, 255])
def test_an_unknown_kind_is_refused(
    dle: Any, registry: Any, archive_nodes: list[Any], bob: Any, carol: Any, chain_id: bytes, offender: Any, kind: int
) -> None:
    report = fault(chain_id, offender, carol, kind)
    own = sign_digest(offender, keccak(b"whatever a vote of an unknown kind would be"))
    with reverts_with(dle.UnknownFaultKind, kind=kind):
        dle.reportFault(report, own, 1, certified(dle, group_of(registry, archive_nodes, GROUP), report), sender=bob)


def test_a_fault_on_an_unregistered_chain_is_refused(
    dle: Any, registry: Any, archive_nodes: list[Any], bob: Any, carol: Any, offender: Any
) -> None:
    unknown = keccak(b"no such chain")
    report = fault(unknown, offender, carol)
    members = group_of(registry, archive_nodes, GROUP)
    with reverts_with(dle.ChainNotRegistered, chain=unknown):
        dle.reportFault(report, accused(dle, report, offender), 1, certified(dle, members, report), sender=bob)


def test_an_offender_cannot_be_its_own_reporter_nor_be_slashed_in_a_role_it_holds_no_stake_in(
    dle: Any,
    staking: Any,
    registry: Any,
    archive_nodes: list[Any],
    bob: Any,
    carol: Any,
    chain_id: bytes,
    offender: Any,
) -> None:
    members = group_of(registry, archive_nodes, GROUP)
    selfish = fault(chain_id, offender, offender)
    with reverts_with(staking.SelfReport, node=offender):
        dle.reportFault(selfish, accused(dle, selfish, offender), 1, certified(dle, members, selfish), sender=bob)
    unstaked = fault(chain_id, offender, carol, role=int(Role.CBDC))
    with reverts_with(staking.NothingToSlash, node=offender, role=int(Role.CBDC)):
        dle.reportFault(unstaked, accused(dle, unstaked, offender), 1, certified(dle, members, unstaked), sender=bob)
    assert staking.stakeOf(offender, int(Role.WITNESS)) == WITNESS_STAKE
