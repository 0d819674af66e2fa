// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {IAggregatorV3} from "./interfaces/IAggregatorV3.sol";
import {IPriceOracle} from "./interfaces/IPriceOracle.sol";

/// @title Price oracle
/// @notice USD prices with 8 decimals for CoNET and each backing stablecoin, keyed by token address.
/// A price is either set by the price-setter role (governance later) or read from a Chainlink-style
/// AggregatorV3 feed configured for the asset. Readers either take the raw round
/// (`latestRoundData(asset)`, shaped like AggregatorV3) or a checked price (`price(asset)`), which
/// reverts when the price is missing, not positive, or older than the asset's maximum age.
contract PriceOracle is IPriceOracle, AccessControl {
    using SafeCast for uint256;

    /// @notice The role that may set prices.
    bytes32 public constant PRICE_SETTER_ROLE = keccak256("PRICE_SETTER_ROLE");

    /// @notice Decimals of every price this oracle returns.
    uint8 public constant DECIMALS = 8;

    struct Round {
        uint128 answer;
        uint48 updatedAt;
        uint80 roundId;
    }

    mapping(address asset => Round) private _rounds;
    mapping(address asset => IAggregatorV3) private _feeds;
    mapping(address asset => uint32) private _maxAges;
    uint32 private _defaultMaxAge;

    /// @notice No price has ever been set for `asset`.
    error PriceNotSet(address asset);
    /// @notice The price of `asset` was updated at `updatedAt`, more than `maxAge` seconds ago.
    error StalePrice(address asset, uint256 updatedAt, uint256 maxAge);
    /// @notice A price must be positive.
    error InvalidPrice(address asset, int256 answer);
    /// @notice A maximum age must be positive.
    error InvalidMaxAge();

    /// @notice `asset` is now priced at `price` (8 decimals) in round `roundId`.
    event PriceUpdated(address indexed asset, uint256 price, uint80 roundId, uint256 updatedAt);
    /// @notice `asset` is now read from `feed` (the zero address: back to set prices).
    event FeedSet(address indexed asset, address feed);
    /// @notice The maximum age of `asset`'s price is now `maxAge` seconds (0: the default).
    event MaxAgeSet(address indexed asset, uint32 maxAge);
    /// @notice The default maximum age is now `maxAge` seconds.
    event DefaultMaxAgeSet(uint32 maxAge);

    /// @param admin Holds DEFAULT_ADMIN_ROLE: sets feeds and maximum ages, grants the price setter.
    /// @param defaultMaxAge Maximum age in seconds of any price without its own.
    constructor(address admin, uint32 defaultMaxAge) {
        if (defaultMaxAge == 0) revert InvalidMaxAge();
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _defaultMaxAge = defaultMaxAge;
        emit DefaultMaxAgeSet(defaultMaxAge);
    }

    /// @notice Sets the USD price of `asset`, starting a new round.
    /// @param asset The token priced.
    /// @param newPrice USD per whole token, 8 decimals; positive.
    function setPrice(address asset, uint256 newPrice) external onlyRole(PRICE_SETTER_ROLE) {
        if (newPrice == 0) revert InvalidPrice(asset, 0);
        Round storage round = _rounds[asset];
        round.answer = newPrice.toUint128();
        round.updatedAt = uint48(block.timestamp);
        round.roundId += 1;
        emit PriceUpdated(asset, newPrice, round.roundId, block.timestamp);
    }

    /// @notice Reads `asset` from an AggregatorV3 feed instead of set prices.
    /// @param asset The token priced.
    /// @param feed The feed; the zero address returns the asset to set prices.
    function setFeed(address asset, IAggregatorV3 feed) external onlyRole(DEFAULT_ADMIN_ROLE) {
        _feeds[asset] = feed;
        emit FeedSet(asset, address(feed));
    }

    /// @notice Sets how old `asset`'s price may be before `price(asset)` rejects it.
    /// @param asset The token priced.
    /// @param maxAge Seconds; 0 falls back to the default maximum age.
    function setMaxAge(address asset, uint32 maxAge) external onlyRole(DEFAULT_ADMIN_ROLE) {
        _maxAges[asset] = maxAge;
        emit MaxAgeSet(asset, maxAge);
    }

    /// @notice Sets the maximum age of every price without its own.
    /// @param maxAge Seconds; positive.
    function setDefaultMaxAge(uint32 maxAge) external onlyRole(DEFAULT_ADMIN_ROLE) {
        if (maxAge == 0) revert InvalidMaxAge();
        _defaultMaxAge = maxAge;
        emit DefaultMaxAgeSet(maxAge);
    }

    /// @notice The checked USD price of `asset` with 8 decimals, and when it was updated.
    /// @dev Reverts with PriceNotSet, InvalidPrice or StalePrice; never returns a price it would not
    /// stand behind.
    function price(address asset) external view returns (uint256 usdPrice, uint256 updatedAt) {
        (uint80 roundId, int256 answer,, uint256 updated,) = latestRoundData(asset);
        // Round 0 is "never set" for both set prices and AggregatorV3 feeds; not a balance compare.
        // slither-disable-next-line incorrect-equality
        if (roundId == 0) revert PriceNotSet(asset);
        if (answer <= 0) revert InvalidPrice(asset, answer);
        uint256 maxAge = maxAgeOf(asset);
        // A feed can report a time ahead of this block; that is fresh, not an underflow.
        if (updated < block.timestamp && block.timestamp - updated > maxAge) {
            revert StalePrice(asset, updated, maxAge);
        }
        return (uint256(answer), updated);
    }

    /// @notice The latest round of `asset`, shaped like AggregatorV3's and scaled to 8 decimals.
    /// Unchecked: a missing price has round id 0, staleness is the reader's to judge.
    function latestRoundData(address asset)
        public
        view
        returns (uint80 roundId, int256 answer, uint256 startedAt, uint256 updatedAt, uint80 answeredInRound)
    {
        IAggregatorV3 feed = _feeds[asset];
        if (address(feed) == address(0)) {
            Round memory round = _rounds[asset];
            return (round.roundId, int256(uint256(round.answer)), round.updatedAt, round.updatedAt, round.roundId);
        }
        (roundId, answer, startedAt, updatedAt, answeredInRound) = feed.latestRoundData();
        answer = _scale(answer, feed.decimals());
    }

    /// @notice Decimals of every price: 8.
    function decimals() external pure returns (uint8) {
        return DECIMALS;
    }

    /// @notice The feed `asset` is read from, or the zero address for set prices.
    function feedOf(address asset) external view returns (address) {
        return address(_feeds[asset]);
    }

    /// @notice The maximum age in seconds that `price(asset)` accepts.
    function maxAgeOf(address asset) public view returns (uint256) {
        uint32 own = _maxAges[asset];
        return own == 0 ? _defaultMaxAge : own;
    }

    function _scale(int256 answer, uint8 feedDecimals) private pure returns (int256) {
        if (feedDecimals > DECIMALS) return answer / int256(10 ** (feedDecimals - DECIMALS));
        return answer * int256(10 ** (DECIMALS - feedDecimals));
    }
}
