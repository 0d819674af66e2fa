// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

/// @title Transient reentrancy guard
/// @notice OpenZeppelin's `ReentrancyGuardTransient` (EIP-1153 transient storage, the same ERC-7201 slot,
/// the same `ReentrancyGuardReentrantCall` error), written so that slither can analyse it.
/// @dev Why not OpenZeppelin's own: it reaches the slot through `using TransientSlot for *` and the
/// user-defined value type `BooleanSlot` (`slot.asBoolean().tstore(true)`), and slither 0.11.6 (the
/// newest release) cannot resolve that call: it logs "Impossible to generate IR" for the guard's
/// functions, drops them, and so analyses every `nonReentrant` function of the contracts holding the
/// money without its guard. Plain `tload`/`tstore` in assembly it models. Behaviour and gas are those
/// of OpenZeppelin's guard. Slither's `assembly` detector is silenced on the three blocks: they are
/// the point of this contract.
abstract contract TransientReentrancyGuard {
    // keccak256(abi.encode(uint256(keccak256("openzeppelin.storage.ReentrancyGuard")) - 1)) & ~bytes32(uint256(0xff)):
    // OpenZeppelin's slot, so the guard stays where tools that know OpenZeppelin's look for it.
    bytes32 private constant _REENTRANCY_GUARD_SLOT = 0x9b779b17422d0df92223018b32b4d1fa46e071723d6817e2486d003becc55f00;

    /// @notice A `nonReentrant` function was entered again before it returned.
    error ReentrancyGuardReentrantCall();

    /// @dev Refuses a call made while a `nonReentrant` function of this contract is on the call stack.
    modifier nonReentrant() {
        _nonReentrantBefore();
        _;
        _nonReentrantAfter();
    }

    /// @dev Whether a `nonReentrant` function of this contract is on the call stack.
    function _reentrancyGuardEntered() internal view returns (bool entered) {
        // slither-disable-next-line assembly
        assembly ("memory-safe") {
            entered := tload(_REENTRANCY_GUARD_SLOT)
        }
    }

    function _nonReentrantBefore() private {
        if (_reentrancyGuardEntered()) revert ReentrancyGuardReentrantCall();
        // slither-disable-next-line assembly
        assembly ("memory-safe") {
            tstore(_REENTRANCY_GUARD_SLOT, 1)
        }
    }

    function _nonReentrantAfter() private {
        // slither-disable-next-line assembly
        assembly ("memory-safe") {
            tstore(_REENTRANCY_GUARD_SLOT, 0)
        }
    }
}
