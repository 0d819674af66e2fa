// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

/// @notice Checked USD prices with 8 decimals (PriceOracle).
interface IPriceOracle {
    /// @notice The USD price of `asset` with 8 decimals; reverts when unset, invalid or stale.
    function price(address asset) external view returns (uint256 usdPrice, uint256 updatedAt);
}
