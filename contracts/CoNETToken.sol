// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Burnable} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Burnable.sol";
import {ERC20Capped} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Capped.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";
import {ERC20Votes} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Votes.sol";
import {Nonces} from "@openzeppelin/contracts/utils/Nonces.sol";

/// @title CoNET token
/// @notice The CoNET governance and staking token. The whole supply is minted once, at genesis, to a
/// treasury. CBDCs burn CoNET when they issue a CoNETCash note; when the note is exited the same value
/// is re-issued by the re-issuer role (the CoNETCash contract). Re-issue restores only what burns
/// removed: `totalSupply()` never exceeds `GENESIS_SUPPLY`.
/// @dev Votes use a timestamp clock (ERC-6372): block times differ between Avalanche networks and a
/// governor speaks in seconds.
// CoNETCash reads it through ICoNETToken; inheriting it would only add override boilerplate.
// slither-disable-next-line missing-inheritance
contract CoNETToken is ERC20, ERC20Burnable, ERC20Capped, ERC20Permit, ERC20Votes, AccessControl {
    /// @notice The role allowed to re-issue burned supply.
    bytes32 public constant REISSUER_ROLE = keccak256("REISSUER_ROLE");

    /// @notice 500,000,000 CoNET with 18 decimals: the supply at genesis and the cap forever.
    uint256 public constant GENESIS_SUPPLY = 500_000_000e18;

    /// @notice A re-issue asked for more than burns have removed from the supply.
    error ReissueExceedsBurned(uint256 requested, uint256 available);

    /// @notice The treasury is the zero address.
    error InvalidTreasury();

    /// @notice Burned supply was re-issued to `to`.
    event Reissued(address indexed to, uint256 amount);

    /// @param treasury Receives the whole genesis supply.
    /// @param admin Holds DEFAULT_ADMIN_ROLE (grants and revokes the re-issuer role).
    constructor(address treasury, address admin)
        ERC20("CoNET", "CONET")
        ERC20Capped(GENESIS_SUPPLY)
        ERC20Permit("CoNET")
    {
        if (treasury == address(0)) revert InvalidTreasury();
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _mint(treasury, GENESIS_SUPPLY);
    }

    /// @notice Mints back up to what burns have removed; reverts rather than silently minting less.
    /// @param to Receiver of the re-issued tokens.
    /// @param amount Amount to re-issue, at most `reissuable()`.
    function reissue(address to, uint256 amount) external onlyRole(REISSUER_ROLE) {
        uint256 available = reissuable();
        if (amount > available) revert ReissueExceedsBurned(amount, available);
        _mint(to, amount);
        emit Reissued(to, amount);
    }

    /// @notice How much burned supply may still be re-issued: the cap minus the current supply.
    function reissuable() public view returns (uint256) {
        return GENESIS_SUPPLY - totalSupply();
    }

    /// @notice The ERC-6372 clock: the block timestamp.
    function clock() public view override returns (uint48) {
        return uint48(block.timestamp);
    }

    /// @notice The ERC-6372 clock mode: timestamps.
    // The name is fixed by ERC-6372.
    // slither-disable-next-line naming-convention
    function CLOCK_MODE() public pure override returns (string memory) {
        return "mode=timestamp";
    }

    /// @inheritdoc ERC20Permit
    function nonces(address owner) public view override(ERC20Permit, Nonces) returns (uint256) {
        return super.nonces(owner);
    }

    function _update(address from, address to, uint256 value)
        internal
        override(ERC20, ERC20Capped, ERC20Votes)
    {
        super._update(from, to, value);
    }
}
