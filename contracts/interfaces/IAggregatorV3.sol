// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

/// @notice The read interface of a Chainlink AggregatorV3 price feed, so a live feed can stand in for
/// a governance-set price without changing its readers.
interface IAggregatorV3 {
    /// @notice Decimals of `answer`.
    function decimals() external view returns (uint8);

    /// @notice What the feed prices, e.g. "CONET / USD".
    function description() external view returns (string memory);

    /// @notice The latest round: its id, the answer, when it started and was updated, and the round
    /// the answer was computed in.
    function latestRoundData()
        external
        view
        returns (uint80 roundId, int256 answer, uint256 startedAt, uint256 updatedAt, uint80 answeredInRound);
}
