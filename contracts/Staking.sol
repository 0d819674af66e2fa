// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {EnumerableSet} from "@openzeppelin/contracts/utils/structs/EnumerableSet.sol";
import {Math} from "@openzeppelin/contracts/utils/math/Math.sol";
import {ISlashing} from "./interfaces/ISlashing.sol";
import {IStaking} from "./interfaces/IStaking.sol";
import {Role} from "./types/Role.sol";

/// @title Staking
/// @notice CoNET stakes per node and role (CBDC, archive, witness, validator, SI node, DCC provider).
/// A role has a minimum stake and a capacity unit (stake ÷ unit = how many chains a node may serve at
/// once). Unstaking waits out an unbonding delay, during which the stake can still be slashed: fraud
/// found late is still punished. A slash sends the stake to the income pool and a share to whoever
/// reported the evidence; each piece of evidence is usable once.
contract Staking is IStaking, ISlashing, AccessControl {
    using SafeERC20 for IERC20;
    using EnumerableSet for EnumerableSet.AddressSet;

    /// @notice The role allowed to slash (the DLE registry, on proven fraud).
    bytes32 public constant SLASHER_ROLE = keccak256("SLASHER_ROLE");

    /// @notice Denominator of basis-point shares.
    uint256 public constant BPS = 10_000;

    /// @notice The longest unbonding delay: a longer one would lock stakes for good.
    uint64 public constant MAX_UNBONDING_DELAY = 365 days;

    struct Position {
        uint256 staked;
        uint256 unbonding;
        uint64 releaseAt;
    }

    IERC20 private immutable _token;
    mapping(address node => mapping(Role => Position)) private _positions;
    mapping(Role => EnumerableSet.AddressSet) private _stakers;
    mapping(Role => uint256) private _minimumStakes;
    mapping(Role => uint256) private _capacityUnits;
    mapping(bytes32 evidenceHash => bool) private _usedEvidence;
    address private _incomePool;
    uint64 private _unbondingDelay;
    uint16 private _reporterRewardBps;

    /// @notice An amount must be positive.
    error ZeroAmount();
    /// @notice Asked to unstake `requested` with only `available` staked.
    error InsufficientStake(uint256 requested, uint256 available);
    /// @notice Nothing is unbonding for this node and role.
    error NothingToWithdraw();
    /// @notice The unbonding stake is released at `releaseAt`.
    error UnbondingNotFinished(uint64 releaseAt);
    /// @notice The node has no stake, bonded or unbonding, in this role.
    error NothingToSlash(address node, Role role);
    /// @notice This evidence has already been used for a slash.
    error EvidenceAlreadyUsed(bytes32 evidenceHash);
    /// @notice The role has no capacity unit set.
    error CapacityUnitNotSet(Role role);
    /// @notice An address parameter is the zero address.
    error ZeroAddress();
    /// @notice A basis-point share above 100%.
    error InvalidBps(uint256 bps);
    /// @notice An unbonding delay above MAX_UNBONDING_DELAY.
    error InvalidUnbondingDelay(uint64 delay);
    /// @notice A node cannot be rewarded for reporting itself.
    error SelfReport(address node);

    /// @notice `node` staked `amount` for `role`, now holding `total`.
    event Staked(address indexed node, Role indexed role, uint256 amount, uint256 total);
    /// @notice `node` started unbonding `amount` of `role`, released at `releaseAt`.
    event UnstakeRequested(address indexed node, Role indexed role, uint256 amount, uint64 releaseAt);
    /// @notice `node` withdrew `amount` of unbonded `role` stake.
    event Withdrawn(address indexed node, Role indexed role, uint256 amount);
    /// @notice `amount` of `node`'s `role` stake was slashed on `evidenceHash`; `reward` of it went to
    /// `reporter`, the rest to the income pool.
    event Slashed(
        address indexed node,
        Role indexed role,
        uint256 amount,
        bytes32 indexed evidenceHash,
        address reporter,
        uint256 reward
    );
    /// @notice The minimum stake of `role` is now `amount`.
    event MinimumStakeSet(Role indexed role, uint256 amount);
    /// @notice The capacity unit of `role` is now `unit`.
    event CapacityUnitSet(Role indexed role, uint256 unit);
    /// @notice Unstaking now waits `delay` seconds.
    event UnbondingDelaySet(uint64 delay);
    /// @notice Reporters now receive `bps` of what they get slashed.
    event ReporterRewardSet(uint16 bps);
    /// @notice Slashed stake now goes to `pool`.
    event IncomePoolSet(address indexed pool);

    /// @param token_ The CoNET token.
    /// @param admin Holds DEFAULT_ADMIN_ROLE: sets parameters, grants the slasher role.
    /// @param incomePool_ Receives slashed stake (less the reporter's reward).
    /// @param unbondingDelay_ Seconds between an unstake request and its withdrawal.
    /// @param reporterRewardBps_ Share of a slash paid to the reporter, in basis points.
    constructor(IERC20 token_, address admin, address incomePool_, uint64 unbondingDelay_, uint16 reporterRewardBps_) {
        if (address(token_) == address(0) || admin == address(0) || incomePool_ == address(0)) revert ZeroAddress();
        if (reporterRewardBps_ > BPS) revert InvalidBps(reporterRewardBps_);
        if (unbondingDelay_ > MAX_UNBONDING_DELAY) revert InvalidUnbondingDelay(unbondingDelay_);
        _token = token_;
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _incomePool = incomePool_;
        _unbondingDelay = unbondingDelay_;
        _reporterRewardBps = reporterRewardBps_;
        emit IncomePoolSet(incomePool_);
        emit UnbondingDelaySet(unbondingDelay_);
        emit ReporterRewardSet(reporterRewardBps_);
    }

    // ---------------------------------------------------------------- node operations

    /// @notice Bonds `amount` CoNET of the caller's to `role`. Needs an allowance to this contract.
    function stake(Role role, uint256 amount) external {
        if (amount == 0) revert ZeroAmount();
        Position storage position = _positions[msg.sender][role];
        position.staked += amount;
        // A top-up finds the node already in the set; add() returning false is expected then.
        // slither-disable-next-line unused-return
        _stakers[role].add(msg.sender);
        emit Staked(msg.sender, role, amount, position.staked);
        _token.safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @notice Starts unbonding `amount` of the caller's `role` stake. Unbonding restarts the delay for
    /// everything already unbonding in that role.
    function requestUnstake(Role role, uint256 amount) external {
        if (amount == 0) revert ZeroAmount();
        Position storage position = _positions[msg.sender][role];
        if (amount > position.staked) revert InsufficientStake(amount, position.staked);
        position.staked -= amount;
        position.unbonding += amount;
        position.releaseAt = uint64(block.timestamp) + _unbondingDelay;
        // Leaving the set is exactly "no bonded stake left"; remove() cannot miss a member here.
        // slither-disable-next-line incorrect-equality,unused-return
        if (position.staked == 0) _stakers[role].remove(msg.sender);
        emit UnstakeRequested(msg.sender, role, amount, position.releaseAt);
    }

    /// @notice Withdraws the caller's unbonded `role` stake once the delay has passed.
    function withdraw(Role role) external {
        Position storage position = _positions[msg.sender][role];
        uint256 amount = position.unbonding;
        if (amount == 0) revert NothingToWithdraw();
        if (block.timestamp < position.releaseAt) revert UnbondingNotFinished(position.releaseAt);
        position.unbonding = 0;
        position.releaseAt = 0;
        emit Withdrawn(msg.sender, role, amount);
        _token.safeTransfer(msg.sender, amount);
    }

    // ---------------------------------------------------------------- slashing

    /// @notice Slashes up to `amount` of `node`'s `role` stake, bonded first, then unbonding.
    /// @param node The offender.
    /// @param role The role the fraud was committed in.
    /// @param amount The most to slash; less is slashed if the node holds less.
    /// @param evidenceHash Hash of the evidence; each is usable once.
    /// @param reporter Receives the reporter's share; the zero address sends everything to the pool.
    /// @return slashed What was actually slashed.
    function slash(address node, Role role, uint256 amount, bytes32 evidenceHash, address reporter)
        external
        onlyRole(SLASHER_ROLE)
        returns (uint256 slashed)
    {
        if (amount == 0) revert ZeroAmount();
        if (_usedEvidence[evidenceHash]) revert EvidenceAlreadyUsed(evidenceHash);
        if (reporter == node) revert SelfReport(node);
        Position storage position = _positions[node][role];
        if (position.staked + position.unbonding == 0) revert NothingToSlash(node, role);
        _usedEvidence[evidenceHash] = true;

        uint256 fromStaked = Math.min(amount, position.staked);
        uint256 fromUnbonding = Math.min(amount - fromStaked, position.unbonding);
        position.staked -= fromStaked;
        position.unbonding -= fromUnbonding;
        if (position.unbonding == 0) position.releaseAt = 0;
        // The node may already have left the set (only unbonding stake was slashed).
        // slither-disable-next-line unused-return
        if (position.staked == 0) _stakers[role].remove(node);
        slashed = fromStaked + fromUnbonding;

        uint256 reward = reporter == address(0) ? 0 : (slashed * _reporterRewardBps) / BPS;
        emit Slashed(node, role, slashed, evidenceHash, reporter, reward);
        if (reward > 0) _token.safeTransfer(reporter, reward);
        _token.safeTransfer(_incomePool, slashed - reward);
    }

    // ---------------------------------------------------------------- parameters

    /// @notice Sets the minimum stake a node needs to serve in `role`.
    function setMinimumStake(Role role, uint256 amount) external onlyRole(DEFAULT_ADMIN_ROLE) {
        _minimumStakes[role] = amount;
        emit MinimumStakeSet(role, amount);
    }

    /// @notice Sets the stake per unit of capacity in `role`.
    function setCapacityUnit(Role role, uint256 unit) external onlyRole(DEFAULT_ADMIN_ROLE) {
        if (unit == 0) revert ZeroAmount();
        _capacityUnits[role] = unit;
        emit CapacityUnitSet(role, unit);
    }

    /// @notice Sets the unbonding delay of future unstake requests.
    function setUnbondingDelay(uint64 delay) external onlyRole(DEFAULT_ADMIN_ROLE) {
        if (delay > MAX_UNBONDING_DELAY) revert InvalidUnbondingDelay(delay);
        _unbondingDelay = delay;
        emit UnbondingDelaySet(delay);
    }

    /// @notice Sets the reporter's share of a slash, in basis points.
    function setReporterRewardBps(uint16 bps) external onlyRole(DEFAULT_ADMIN_ROLE) {
        if (bps > BPS) revert InvalidBps(bps);
        _reporterRewardBps = bps;
        emit ReporterRewardSet(bps);
    }

    /// @notice Sets where slashed stake goes.
    function setIncomePool(address pool) external onlyRole(DEFAULT_ADMIN_ROLE) {
        if (pool == address(0)) revert ZeroAddress();
        _incomePool = pool;
        emit IncomePoolSet(pool);
    }

    // ---------------------------------------------------------------- views

    /// @notice The staked token.
    function token() external view returns (IERC20) {
        return _token;
    }

    /// @notice `node`'s bonded stake in `role`.
    function stakeOf(address node, Role role) external view returns (uint256) {
        return _positions[node][role].staked;
    }

    /// @notice `node`'s unbonding stake in `role` and when it is released.
    function unbondingOf(address node, Role role) external view returns (uint256 amount, uint64 releaseAt) {
        Position storage position = _positions[node][role];
        return (position.unbonding, position.releaseAt);
    }

    /// @inheritdoc IStaking
    function meetsMinimum(address node, Role role) external view returns (bool) {
        uint256 staked = _positions[node][role].staked;
        return staked > 0 && staked >= _minimumStakes[role];
    }

    /// @inheritdoc IStaking
    function capacity(address node, Role role) external view returns (uint256) {
        uint256 unit = _capacityUnits[role];
        if (unit == 0) revert CapacityUnitNotSet(role);
        return _positions[node][role].staked / unit;
    }

    /// @notice The minimum stake of `role`.
    function minimumStake(Role role) external view returns (uint256) {
        return _minimumStakes[role];
    }

    /// @notice The capacity unit of `role` (0: not set).
    function capacityUnit(Role role) external view returns (uint256) {
        return _capacityUnits[role];
    }

    /// @notice Seconds an unstake request waits.
    function unbondingDelay() external view returns (uint64) {
        return _unbondingDelay;
    }

    /// @notice The reporter's share of a slash, in basis points.
    function reporterRewardBps() external view returns (uint16) {
        return _reporterRewardBps;
    }

    /// @notice Where slashed stake goes.
    function incomePool() external view returns (address) {
        return _incomePool;
    }

    /// @notice Whether `evidenceHash` has already been used for a slash.
    function isEvidenceUsed(bytes32 evidenceHash) external view returns (bool) {
        return _usedEvidence[evidenceHash];
    }

    /// @notice How many nodes have bonded stake in `role`.
    function stakedNodeCount(Role role) external view returns (uint256) {
        return _stakers[role].length();
    }

    /// @notice Up to `limit` nodes with bonded stake in `role`, from position `offset`. The order is
    /// stable only while nobody joins or leaves; page through quickly or read at one block.
    function stakedNodes(Role role, uint256 offset, uint256 limit) external view returns (address[] memory page) {
        EnumerableSet.AddressSet storage stakers = _stakers[role];
        uint256 length = stakers.length();
        if (offset >= length) return new address[](0);
        // Compared before adding, so a huge `limit` ("everything") cannot overflow.
        uint256 end = limit > length - offset ? length : offset + limit;
        page = new address[](end - offset);
        for (uint256 i = offset; i < end; ++i) {
            page[i - offset] = stakers.at(i);
        }
    }
}
