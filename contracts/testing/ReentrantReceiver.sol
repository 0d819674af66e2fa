// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {IERC721Receiver} from "@openzeppelin/contracts/token/ERC721/IERC721Receiver.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";

/// @notice A buyer contract that calls back into CoNETCash from onERC721Received, to prove the
/// re-entry is refused. Testing only.
contract ReentrantReceiver is IERC721Receiver {
    address private immutable _cash;
    bytes private _reentry;
    bool public reentered;
    bytes public reentryError;

    constructor(address cash) {
        _cash = cash;
    }

    /// @notice The call made on receiving a note (empty: none).
    function setReentry(bytes calldata data) external {
        _reentry = data;
    }

    /// @notice Approves `spender` for `amount` of `token` held by this contract.
    function approve(IERC20 token, address spender, uint256 amount) external {
        // slither-disable-next-line unused-return
        token.approve(spender, amount);
    }

    /// @notice Calls CoNETCash with `data` and bubbles up a revert.
    function call(bytes calldata data) external returns (bytes memory) {
        (bool ok, bytes memory result) = _cash.call(data);
        if (!ok) {
            assembly ("memory-safe") {
                revert(add(result, 32), mload(result))
            }
        }
        return result;
    }

    /// @inheritdoc IERC721Receiver
    function onERC721Received(address, address, uint256, bytes calldata) external returns (bytes4) {
        if (_reentry.length > 0) {
            (bool ok, bytes memory result) = _cash.call(_reentry);
            reentered = ok;
            reentryError = result;
        }
        return IERC721Receiver.onERC721Received.selector;
    }
}
