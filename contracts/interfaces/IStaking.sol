// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {Role} from "../types/Role.sol";

/// @notice What other contracts read from Staking.
interface IStaking {
    /// @notice Whether `node` has at least the minimum stake of `role` bonded (not unbonding).
    function meetsMinimum(address node, Role role) external view returns (bool);

    /// @notice How many chains `node` may serve at once in `role`: its stake divided by the role's unit.
    function capacity(address node, Role role) external view returns (uint256);
}
