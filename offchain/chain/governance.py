"""Governance from Python: build a proposal's action, propose it, vote, queue, execute, read its state.

The governor and timelock are OpenZeppelin's; what passes changes the parameter store (the economy's
numbers, the backing stablecoins, the oDEX assets), which the timelock owns.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from eth_utils.crypto import keccak


class GovernanceError(RuntimeError):
    """A governance step cannot go ahead; the message says why."""


class ProposalState(IntEnum):
    """IGovernor.ProposalState, in the same order."""

    PENDING = 0
    ACTIVE = 1
    CANCELED = 2
    DEFEATED = 3
    SUCCEEDED = 4
    QUEUED = 5
    EXPIRED = 6
    EXECUTED = 7


class Support(IntEnum):
    """GovernorCountingSimple's vote types."""

    AGAINST = 0
    FOR = 1
    ABSTAIN = 2


@dataclass(frozen=True)
class Action:
    """One call the timelock makes if the proposal passes, and the proposal's description."""

    target: str
    calldata: bytes
    description: str


@dataclass(frozen=True)
class Proposal:
    """A proposal as the governor and its creation event tell it."""

    id: int
    state: ProposalState
    description: str
    targets: list[str]
    values: list[int]
    calldatas: list[bytes]
    snapshot: int
    deadline: int
    eta: int
    votes_for: int
    votes_against: int
    votes_abstain: int
    quorum: int

    @property
    def description_hash(self) -> bytes:
        return keccak(text=self.description)


def parameter_key(name: str) -> bytes:
    """A parameter's key: its name as a right-padded bytes32 string."""
    raw = name.encode()
    if not raw or len(raw) > 32:
        raise GovernanceError(f"not a parameter name: {name!r}")
    return raw.ljust(32, b"\0")


def parameter_names(params: Any) -> list[str]:
    return [bytes(key).rstrip(b"\0").decode() for key in params.parameterKeys()]


# ---------------------------------------------------------------- actions


def add_stablecoin(params: Any, stablecoin: str) -> Action:
    if params.isBackingStablecoin(stablecoin):
        raise GovernanceError(f"{stablecoin} is already a backing stablecoin")
    return Action(
        params.address, params.listStablecoin.encode_input(stablecoin), f"Add {stablecoin} as a backing stablecoin"
    )


def remove_stablecoin(params: Any, stablecoin: str) -> Action:
    if not params.isBackingStablecoin(stablecoin):
        raise GovernanceError(f"stablecoin not listed: {stablecoin}")
    return Action(
        params.address,
        params.delistStablecoin.encode_input(stablecoin),
        f"Remove {stablecoin} from the backing stablecoins",
    )


def set_parameter(params: Any, name: str, value: int) -> Action:
    names = parameter_names(params)
    if name not in names:
        raise GovernanceError(f"unknown parameter {name!r}; known: {', '.join(names)}")
    key = parameter_key(name)
    low, high = params.boundsOf(key)
    if not low <= value <= high:
        raise GovernanceError(f"{name} must lie within [{low}, {high}], not {value}")
    return Action(params.address, params.setParameter.encode_input(key, value), f"Set {name} to {value}")


def list_odex_asset(params: Any, asset: str) -> Action:
    if params.isOdexAsset(asset):
        raise GovernanceError(f"{asset} is already an oDEX asset")
    return Action(params.address, params.listOdexAsset.encode_input(asset), f"List {asset} on the oDEX")


def delist_odex_asset(params: Any, asset: str) -> Action:
    if not params.isOdexAsset(asset):
        raise GovernanceError(f"{asset} is not an oDEX asset")
    return Action(params.address, params.delistOdexAsset.encode_input(asset), f"Delist {asset} from the oDEX")


# ---------------------------------------------------------------- the governor


class GovernanceClient:
    """Proposals of one deployment's governor."""

    def __init__(self, contracts: dict[str, Any], from_block: int = 0) -> None:
        self.governor = contracts["CoNETGovernor"]
        self.timelock = contracts["CoNETTimelock"]
        self.token = contracts["CoNETToken"]
        self.params = contracts["ParameterStore"]
        self._from_block = from_block

    def delegate(self, account: Any, to: str | None = None) -> None:
        """Makes `account`'s CoNET count as votes (for itself unless `to` is given)."""
        self.token.invoke_transaction("delegate", to or account.address, sender=account)

    def propose(self, account: Any, action: Action) -> int:
        threshold = int(self.governor.proposalThreshold())
        if threshold:
            votes = int(self.governor.getVotes(account.address, int(self.governor.clock()) - 1))
            if votes < threshold:
                raise GovernanceError(f"{account.address} has {votes} votes; proposing needs {threshold}")
        receipt = self.governor.propose([action.target], [0], [action.calldata], action.description, sender=account)
        return int(receipt.events.filter(self.governor.ProposalCreated)[0].proposalId)

    def vote(self, account: Any, proposal_id: int, support: Support) -> int:
        """Casts `account`'s vote; returns its weight (the delegated votes at the snapshot)."""
        proposal = self.proposal(proposal_id)
        if proposal.state != ProposalState.ACTIVE:
            raise GovernanceError(f"proposal {proposal_id} is {proposal.state.name.lower()}, not active")
        weight = int(self.governor.getVotes(account.address, proposal.snapshot))
        if weight == 0:
            raise GovernanceError(
                f"{account.address} had no votes at the snapshot ({proposal.snapshot}); "
                "delegate before a proposal's snapshot to vote on it"
            )
        self.governor.castVote(proposal_id, int(support), sender=account)
        return weight

    def queue(self, account: Any, proposal_id: int) -> int:
        """Queues a succeeded proposal in the timelock; returns when it may be executed."""
        proposal = self._require(proposal_id, ProposalState.SUCCEEDED)
        self.governor.queue(
            proposal.targets, proposal.values, proposal.calldatas, proposal.description_hash, sender=account
        )
        return int(self.governor.proposalEta(proposal_id))

    def execute(self, account: Any, proposal_id: int, now: int) -> None:
        proposal = self._require(proposal_id, ProposalState.QUEUED)
        if now < proposal.eta:
            raise GovernanceError(f"proposal {proposal_id} may be executed from {proposal.eta} (now {now})")
        self.governor.execute(
            proposal.targets, proposal.values, proposal.calldatas, proposal.description_hash, sender=account
        )

    def proposal(self, proposal_id: int) -> Proposal:
        created = self._created(proposal_id)
        against, for_, abstain = self.governor.proposalVotes(proposal_id)
        snapshot = int(self.governor.proposalSnapshot(proposal_id))
        return Proposal(
            id=proposal_id,
            state=ProposalState(int(self.governor.state(proposal_id))),
            description=created.description,
            targets=list(created.targets),
            values=[int(v) for v in created.values],
            calldatas=[bytes(c) for c in created.calldatas],
            snapshot=snapshot,
            deadline=int(self.governor.proposalDeadline(proposal_id)),
            eta=int(self.governor.proposalEta(proposal_id)),
            votes_for=int(for_),
            votes_against=int(against),
            votes_abstain=int(abstain),
            # Before the snapshot the quorum is not fixed yet: show today's.
            quorum=int(self.governor.quorum(min(snapshot, int(self.governor.clock()) - 1))),
        )

    def next_step_at(self, proposal: Proposal) -> int | None:
        """The timestamp from which the proposal can move on, or None when nothing waits on time."""
        if proposal.state == ProposalState.PENDING:
            return proposal.snapshot + 1
        if proposal.state == ProposalState.ACTIVE:
            return proposal.deadline + 1
        if proposal.state == ProposalState.QUEUED:
            return proposal.eta
        return None

    def _require(self, proposal_id: int, state: ProposalState) -> Proposal:
        proposal = self.proposal(proposal_id)
        if proposal.state != state:
            raise GovernanceError(f"proposal {proposal_id} is {proposal.state.name.lower()}, not {state.name.lower()}")
        return proposal

    def _created(self, proposal_id: int) -> Any:
        from ape import chain

        # The creation event holds what queue and execute must repeat; proposalId is not indexed.
        for log in self.governor.ProposalCreated.range(self._from_block, chain.blocks.height + 1):
            if int(log.proposalId) == proposal_id:
                return log
        raise GovernanceError(f"no proposal {proposal_id} on this governor")
