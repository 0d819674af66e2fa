// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";

/// @notice What CoNETCash needs of the CoNET token: burning a CBDC's CoNET and re-issuing it.
interface ICoNETToken is IERC20 {
    /// @notice Burns `amount` of `account`'s tokens, spending the caller's allowance.
    function burnFrom(address account, uint256 amount) external;

    /// @notice Mints back up to what burns have removed; only the re-issuer role.
    function reissue(address to, uint256 amount) external;

    /// @notice How much burned supply may still be re-issued.
    function reissuable() external view returns (uint256);
}
