// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {TimelockController} from "@openzeppelin/contracts/governance/TimelockController.sol";

/// @title CoNET timelock
/// @notice OpenZeppelin's TimelockController under the project's name, so the deploy script can deploy
/// it like every other contract. The governor is its only proposer and canceller; anyone may execute a
/// ready operation. It owns the parameter store and holds the protocol's admin roles.
contract CoNETTimelock is TimelockController {
    /// @param minDelay Seconds between queueing and executing an operation.
    /// @param proposers Accounts allowed to queue (the governor).
    /// @param executors Accounts allowed to execute; the zero address opens execution to anyone.
    /// @param admin Optional setup admin that wires the governor in and then renounces (zero for none).
    constructor(uint256 minDelay, address[] memory proposers, address[] memory executors, address admin)
        TimelockController(minDelay, proposers, executors, admin)
    {}
}
