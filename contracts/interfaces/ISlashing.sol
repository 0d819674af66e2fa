// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {Role} from "../types/Role.sol";

/// @notice Slashing a node's stake on proven fraud (Staking, for holders of its slasher role).
interface ISlashing {
    /// @notice Slashes up to `amount` of `node`'s `role` stake; the reporter gets the reward share.
    function slash(address node, Role role, uint256 amount, bytes32 evidenceHash, address reporter)
        external
        returns (uint256 slashed);
}
