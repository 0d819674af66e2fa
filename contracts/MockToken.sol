// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";

/// @title Mock token
/// @notice An ERC-20 of any decimals for local networks, where anyone may mint — the "ETH-like" 18-decimal
/// asset the local oDEX trades against AVAX and the stablecoin. Minting is refused on any other chain,
/// so a copy deployed by mistake to a public network is worthless by construction.
contract MockToken is ERC20, ERC20Permit {
    uint8 private immutable _decimals;

    /// @notice Minting was attempted on a chain that is not a local development chain.
    error MintingDisabled(uint256 chainId);

    /// @param name_ Token name, e.g. "Mock Ether".
    /// @param symbol_ Token symbol, e.g. "mETH".
    /// @param decimals_ Its decimals, e.g. 18.
    constructor(string memory name_, string memory symbol_, uint8 decimals_)
        ERC20(name_, symbol_)
        ERC20Permit(name_)
    {
        _decimals = decimals_;
    }

    /// @notice Mints `amount` to `to`; only on local chains (1337, 31337, 43112).
    function mint(address to, uint256 amount) external {
        if (!isLocalChain()) revert MintingDisabled(block.chainid);
        _mint(to, amount);
    }

    /// @notice Whether this chain is a local development chain where minting is open.
    function isLocalChain() public view returns (bool) {
        return block.chainid == 1337 || block.chainid == 31337 || block.chainid == 43112;
    }

    /// @notice The decimals given at deployment.
    function decimals() public view override returns (uint8) {
        return _decimals;
    }
}
