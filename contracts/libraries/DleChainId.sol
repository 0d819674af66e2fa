// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

/// @title DLE chain ids
/// @notice Every DLE chain belongs to one asset: a CoNETCash note, an oDEX receipt. Its id is derived,
/// never chosen, so the contract holding the asset and the registry agree on it without storing a
/// mapping, and a chain of one mainchain or contract can never be passed off as another's.
library DleChainId {
    /// @notice The id of the DLE chain of asset `assetId` held by contract `asset` on this mainchain.
    function compute(address asset, uint256 assetId) internal view returns (bytes32) {
        return keccak256(abi.encode(block.chainid, asset, assetId));
    }
}
