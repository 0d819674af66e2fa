// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {IERC20Metadata} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Metadata.sol";
import {EnumerableSet} from "@openzeppelin/contracts/utils/structs/EnumerableSet.sol";

/// @notice The names of the parameters, for contracts that read them (a contract's constants cannot
/// be read by another contract's code; a library's can).
library ParameterKeys {
    bytes32 internal constant TRANSFER_FEE_BPS = "TRANSFER_FEE_BPS";
    bytes32 internal constant EXIT_FEE_BPS = "EXIT_FEE_BPS";
    bytes32 internal constant CBDC_BURN_BPS = "CBDC_BURN_BPS";
    bytes32 internal constant ODEX_FEE_BPS = "ODEX_FEE_BPS";
    bytes32 internal constant WITNESSES_PER_NOTE = "WITNESSES_PER_NOTE";
    bytes32 internal constant NOTE_CAP_UNITS = "NOTE_CAP_UNITS";
    bytes32 internal constant ORDER_TIMEOUT = "ORDER_TIMEOUT";
    bytes32 internal constant ODEX_RECEIPT_CAP_UNITS = "ODEX_RECEIPT_CAP_UNITS";
    bytes32 internal constant MIN_ARCHIVE_GROUP_SIZE = "MIN_ARCHIVE_GROUP_SIZE";
}

/// @title Parameter store
/// @notice What CoNET token holders decide, in one place: the economy's numbers, the stablecoins that
/// may back CoNETCash notes, and the assets the oDEX vault may take. Owned by the governance timelock,
/// so every change is a passed proposal that waited out the timelock delay.
/// @dev Parameters are keyed by their name as a bytes32 string (`"EXIT_FEE_BPS"`). Only names given
/// bounds in the constructor exist; a value outside its bounds is refused, so a proposal cannot set a
/// fee above 100% or a note cap of zero by mistake.
contract ParameterStore is Ownable {
    using EnumerableSet for EnumerableSet.AddressSet;

    /// @notice Fee on a note-chain transfer, paid by the sender, in basis points.
    bytes32 public constant TRANSFER_FEE_BPS = ParameterKeys.TRANSFER_FEE_BPS;
    /// @notice Fee on a note exit, paid to the note's CBDC, in basis points.
    bytes32 public constant EXIT_FEE_BPS = ParameterKeys.EXIT_FEE_BPS;
    /// @notice CoNET a CBDC burns to issue a note, as basis points of the note's USD value.
    bytes32 public constant CBDC_BURN_BPS = ParameterKeys.CBDC_BURN_BPS;
    /// @notice oDEX trading fee in basis points.
    bytes32 public constant ODEX_FEE_BPS = ParameterKeys.ODEX_FEE_BPS;
    /// @notice Witnesses drawn for every note chain.
    bytes32 public constant WITNESSES_PER_NOTE = ParameterKeys.WITNESSES_PER_NOTE;
    /// @notice Largest note, in whole units of its stablecoin (100 = $100 of a dollar coin).
    bytes32 public constant NOTE_CAP_UNITS = ParameterKeys.NOTE_CAP_UNITS;
    /// @notice Seconds after which a buyer may cancel an order no CBDC filled.
    bytes32 public constant ORDER_TIMEOUT = ParameterKeys.ORDER_TIMEOUT;
    /// @notice Largest oDEX deposit receipt, in whole units of the deposited asset.
    bytes32 public constant ODEX_RECEIPT_CAP_UNITS = ParameterKeys.ODEX_RECEIPT_CAP_UNITS;
    /// @notice Fewest archive nodes an epoch of a group needs for its certificates to count (2 to 64,
    /// DleRegistry.MAX_GROUP_SIZE): below it, a group certifies nothing. A change applies to a group
    /// at its next `DleRegistry.refreshGroup`, which anyone may call.
    bytes32 public constant MIN_ARCHIVE_GROUP_SIZE = ParameterKeys.MIN_ARCHIVE_GROUP_SIZE;

    /// @notice The address that stands for the chain's native coin (AVAX) in the oDEX asset list.
    address public constant NATIVE_ASSET = address(0);

    /// @notice The most decimals a backing stablecoin may have: a note then still fits CoNETCash's
    /// 88-bit amounts at any note cap the bounds allow.
    uint8 public constant MAX_STABLECOIN_DECIMALS = 18;

    // Value and bounds share a slot: a contract reading a parameter pays for one storage read.
    struct Parameter {
        uint128 value;
        uint64 min;
        uint64 max;
    }

    mapping(bytes32 key => Parameter) private _parameters;
    bytes32[] private _keys;

    EnumerableSet.AddressSet private _stablecoins;
    mapping(address stablecoin => uint8) private _decimals;
    EnumerableSet.AddressSet private _odexAssets;

    /// @notice No parameter is called `key`.
    error UnknownParameter(bytes32 key);
    /// @notice `value` is outside [`min`, `max`] for `key`.
    error ParameterOutOfBounds(bytes32 key, uint256 value, uint256 min, uint256 max);
    /// @notice `stablecoin` is already a backing stablecoin.
    error StablecoinAlreadyListed(address stablecoin);
    /// @notice `stablecoin` is not a backing stablecoin.
    error StablecoinNotListed(address stablecoin);
    /// @notice `stablecoin` is not an ERC-20 with at most MAX_STABLECOIN_DECIMALS decimals.
    error InvalidStablecoin(address stablecoin);
    /// @notice `asset` is already an oDEX asset.
    error OdexAssetAlreadyListed(address asset);
    /// @notice `asset` is not an oDEX asset.
    error OdexAssetNotListed(address asset);

    /// @notice Parameter `key` is now `value`.
    event ParameterSet(bytes32 indexed key, uint256 value);
    /// @notice `stablecoin` may now back notes.
    event StablecoinListed(address indexed stablecoin, uint8 decimals);
    /// @notice `stablecoin` no longer backs new notes; notes it backs keep working until exited.
    event StablecoinDelisted(address indexed stablecoin);
    /// @notice The oDEX vault now takes `asset`.
    event OdexAssetListed(address indexed asset);
    /// @notice The oDEX vault no longer takes deposits of `asset`.
    event OdexAssetDelisted(address indexed asset);

    /// @param owner_ The governance timelock (or, while deploying, the deployer who hands it over).
    /// @param orderTimeout Seconds before an unfilled order may be cancelled.
    constructor(address owner_, uint256 orderTimeout) Ownable(owner_) {
        _define(TRANSFER_FEE_BPS, 5, 0, 1_000);
        _define(EXIT_FEE_BPS, 20, 0, 1_000);
        _define(CBDC_BURN_BPS, 2_000, 0, 10_000);
        _define(ODEX_FEE_BPS, 1, 0, 1_000);
        _define(WITNESSES_PER_NOTE, 5, 1, 32);
        _define(NOTE_CAP_UNITS, 100, 1, 1_000_000);
        _define(ORDER_TIMEOUT, orderTimeout, 60, 30 days);
        _define(ODEX_RECEIPT_CAP_UNITS, 1_000_000, 1, 1_000_000_000);
        _define(MIN_ARCHIVE_GROUP_SIZE, 2, 2, 64);
    }

    // ---------------------------------------------------------------- governance

    /// @notice Sets parameter `key` to `value`, within the bounds of `key`.
    function setParameter(bytes32 key, uint256 newValue) external onlyOwner {
        _set(key, newValue);
    }

    /// @notice Lets `stablecoin` back new notes. Its decimals are read once and kept.
    function listStablecoin(address stablecoin) external onlyOwner {
        uint8 decimals = _readDecimals(stablecoin);
        if (!_stablecoins.add(stablecoin)) revert StablecoinAlreadyListed(stablecoin);
        _decimals[stablecoin] = decimals;
        emit StablecoinListed(stablecoin, decimals);
    }

    /// @notice Stops `stablecoin` backing new notes. Notes and orders it already backs are unaffected.
    function delistStablecoin(address stablecoin) external onlyOwner {
        if (!_stablecoins.remove(stablecoin)) revert StablecoinNotListed(stablecoin);
        emit StablecoinDelisted(stablecoin);
    }

    /// @notice Lets the oDEX vault take `asset` (NATIVE_ASSET for the native coin).
    function listOdexAsset(address asset) external onlyOwner {
        if (!_odexAssets.add(asset)) revert OdexAssetAlreadyListed(asset);
        emit OdexAssetListed(asset);
    }

    /// @notice Stops the oDEX vault taking new deposits of `asset`.
    function delistOdexAsset(address asset) external onlyOwner {
        if (!_odexAssets.remove(asset)) revert OdexAssetNotListed(asset);
        emit OdexAssetDelisted(asset);
    }

    // ---------------------------------------------------------------- views

    /// @notice The value of parameter `key`.
    function value(bytes32 key) external view returns (uint256) {
        Parameter memory parameter = _parameters[key];
        if (parameter.max == 0) revert UnknownParameter(key);
        return parameter.value;
    }

    /// @notice The bounds a value of parameter `key` must lie within.
    function boundsOf(bytes32 key) external view returns (uint256 min, uint256 max) {
        Parameter memory parameter = _parameters[key];
        if (parameter.max == 0) revert UnknownParameter(key);
        return (parameter.min, parameter.max);
    }

    /// @notice The names of every parameter.
    function parameterKeys() external view returns (bytes32[] memory) {
        return _keys;
    }

    /// @notice Whether `stablecoin` may back new notes.
    function isBackingStablecoin(address stablecoin) external view returns (bool) {
        return _stablecoins.contains(stablecoin);
    }

    /// @notice Every stablecoin that may back new notes.
    function backingStablecoins() external view returns (address[] memory) {
        return _stablecoins.values();
    }

    /// @notice What buying a note of `stablecoin` needs to know, in one call.
    /// @return listed Whether the stablecoin may back new notes.
    /// @return decimals Its decimals, as read when it was listed.
    /// @return noteCap The largest note, in its smallest units.
    function noteTerms(address stablecoin) external view returns (bool listed, uint8 decimals, uint256 noteCap) {
        listed = _stablecoins.contains(stablecoin);
        decimals = _decimals[stablecoin];
        noteCap = uint256(_parameters[NOTE_CAP_UNITS].value) * 10 ** decimals;
    }

    /// @notice The decimals `stablecoin` had when it was listed (0 if it never was).
    function stablecoinDecimals(address stablecoin) external view returns (uint8) {
        return _decimals[stablecoin];
    }

    /// @notice Whether the oDEX vault takes `asset`.
    function isOdexAsset(address asset) external view returns (bool) {
        return _odexAssets.contains(asset);
    }

    /// @notice Every asset the oDEX vault takes.
    function odexAssets() external view returns (address[] memory) {
        return _odexAssets.values();
    }

    // ---------------------------------------------------------------- internals

    function _define(bytes32 key, uint256 initial, uint64 min, uint64 max) private {
        _parameters[key] = Parameter(0, min, max);
        _keys.push(key);
        _set(key, initial);
    }

    function _set(bytes32 key, uint256 newValue) private {
        Parameter storage parameter = _parameters[key];
        (uint64 min, uint64 max) = (parameter.min, parameter.max);
        if (max == 0) revert UnknownParameter(key);
        if (newValue < min || newValue > max) revert ParameterOutOfBounds(key, newValue, min, max);
        // Bounded by `max`, a uint64: the cast cannot truncate.
        parameter.value = uint128(newValue);
        emit ParameterSet(key, newValue);
    }

    function _readDecimals(address stablecoin) private view returns (uint8) {
        if (stablecoin.code.length == 0) revert InvalidStablecoin(stablecoin);
        try IERC20Metadata(stablecoin).decimals() returns (uint8 decimals) {
            if (decimals > MAX_STABLECOIN_DECIMALS) revert InvalidStablecoin(stablecoin);
            return decimals;
        } catch {
            revert InvalidStablecoin(stablecoin);
        }
    }
}
