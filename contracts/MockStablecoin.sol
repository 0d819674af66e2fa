// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";

/// @title Mock stablecoin
/// @notice A USDC-like 6-decimal token for local networks, where anyone may mint. Minting is refused
/// on any other chain, so a copy deployed by mistake to a public network is worthless by construction.
contract MockStablecoin is ERC20, ERC20Permit {
    /// @notice Minting was attempted on a chain that is not a local development chain.
    error MintingDisabled(uint256 chainId);

    /// @param name_ Token name, e.g. "Mock USD Coin".
    /// @param symbol_ Token symbol, e.g. "mUSDC".
    constructor(string memory name_, string memory symbol_) ERC20(name_, symbol_) ERC20Permit(name_) {}

    /// @notice Mints `amount` to `to`; only on local chains (1337, 31337, 43112).
    function mint(address to, uint256 amount) external {
        if (!isLocalChain()) revert MintingDisabled(block.chainid);
        _mint(to, amount);
    }

    /// @notice Whether this chain is a local development chain where minting is open.
    function isLocalChain() public view returns (bool) {
        return block.chainid == 1337 || block.chainid == 31337 || block.chainid == 43112;
    }

    /// @notice 6, like USDC: the paper's minimum of 0.000001 is one unit.
    function decimals() public pure override returns (uint8) {
        return 6;
    }
}
