// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

/// @notice The roles a CoNET node can stake for and register as. The order is part of the ABI:
/// append new roles at the end, never reorder.
enum Role {
    CBDC,
    ARCHIVE,
    WITNESS,
    VALIDATOR,
    SI_NODE,
    DCC_PROVIDER
}

/// @dev One past the last role; used to bound role arguments that arrive as raw integers.
uint8 constant ROLE_COUNT = 6;
