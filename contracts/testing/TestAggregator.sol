// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {IAggregatorV3} from "../interfaces/IAggregatorV3.sol";

/// @notice A settable AggregatorV3 feed for tests of feed-backed prices. Never deployed by the
/// deploy script.
contract TestAggregator is IAggregatorV3 {
    uint8 public immutable override decimals;
    int256 private _answer;
    uint256 private _updatedAt;
    uint80 private _roundId;

    constructor(uint8 decimals_) {
        decimals = decimals_;
    }

    /// @notice Publishes a new round.
    function publish(int256 answer, uint256 updatedAt) external {
        _answer = answer;
        _updatedAt = updatedAt;
        _roundId += 1;
    }

    /// @inheritdoc IAggregatorV3
    function description() external pure returns (string memory) {
        return "TEST / USD";
    }

    /// @inheritdoc IAggregatorV3
    function latestRoundData() external view returns (uint80, int256, uint256, uint256, uint80) {
        return (_roundId, _answer, _updatedAt, _updatedAt, _roundId);
    }
}
