// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @notice A 6-decimal stablecoin that calls back into a target on every transfer, like ERC-777 hooks,
/// to prove CoNETCash refuses re-entry from a token. Testing only.
contract CallbackToken is ERC20 {
    address public target;
    bytes public callbackData;
    bool public reentered;
    bytes public reentryError;

    constructor() ERC20("Callback USD", "CBUSD") {}

    /// @notice 6 decimals, like USDC.
    function decimals() public pure override returns (uint8) {
        return 6;
    }

    /// @notice Mints `amount` to `to`.
    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    /// @notice Calls `target_` with `data` on every later transfer (empty data: none).
    function setCallback(address target_, bytes calldata data) external {
        target = target_;
        callbackData = data;
    }

    function _update(address from, address to, uint256 value) internal override {
        super._update(from, to, value);
        if (callbackData.length > 0 && from != address(0)) {
            // The hook may fail; whether it did is recorded for the test.
            // slither-disable-next-line low-level-calls
            (bool ok, bytes memory result) = target.call(callbackData);
            reentered = ok;
            reentryError = result;
        }
    }
}
