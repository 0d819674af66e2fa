// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

/// @notice A receiver of the native coin that calls back into a target when paid, to prove the oDEX
/// vault refuses the re-entry; or refuses payment outright. Testing only.
contract NativeReentrant {
    address private immutable _target;
    bytes private _reentry;
    bool private _refuse;
    /// @notice Whether the last re-entry succeeded.
    bool public reentered;
    /// @notice What the last re-entry returned or reverted with.
    bytes public reentryError;
    /// @notice How many payments arrived.
    uint256 public payments;

    constructor(address target) {
        _target = target;
    }

    /// @notice The call made when paid (empty: none).
    function setReentry(bytes calldata data) external {
        _reentry = data;
    }

    /// @notice Whether to refuse payments.
    function setRefuse(bool refuse) external {
        _refuse = refuse;
    }

    receive() external payable {
        if (_refuse) revert("refused");
        ++payments;
        if (_reentry.length > 0) {
            // The re-entry may fail; whether it did is recorded for the test.
            // slither-disable-next-line low-level-calls
            (bool ok, bytes memory result) = _target.call(_reentry);
            reentered = ok;
            reentryError = result;
        }
    }
}
