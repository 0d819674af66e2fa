// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {ERC721} from "@openzeppelin/contracts/token/ERC721/ERC721.sol";
import {ERC20Burnable} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Burnable.sol";

/// @notice Gas baseline for CoNETCash.fill (bench/gas.py): an OpenZeppelin ERC-721 mint, an ERC-20
/// transferFrom and a burn, in one call, on the same CoNET token. Testing only.
contract FillBaseline is ERC721 {
    uint256 private _nextId = 1;

    constructor() ERC721("Baseline", "BASE") {}

    /// @notice Takes `amount` of the caller's `token`, burns it and mints the caller an NFT.
    function run(ERC20Burnable token, uint256 amount) external {
        // The token is the project's own CoNET: its transferFrom reverts on failure.
        // slither-disable-next-line unchecked-transfer
        token.transferFrom(msg.sender, address(this), amount);
        token.burn(amount);
        _mint(msg.sender, _nextId++);
    }
}
