// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {ERC721} from "@openzeppelin/contracts/token/ERC721/ERC721.sol";
import {EnumerableSet} from "@openzeppelin/contracts/utils/structs/EnumerableSet.sol";
import {IStaking} from "./interfaces/IStaking.sol";
import {Role} from "./types/Role.sol";

/// @title Node registry
/// @notice ERC-721 node NFTs. A node registers itself with its role, its secp256k1 public key (which
/// must hash to the caller's address, so anyone can encrypt to the node knowing only the registry),
/// its endpoint URLs, its prices and its region; it must hold the role's minimum stake. A node NFT
/// cannot be transferred: it stands for the key that registered it.
///
/// Archive nodes form archive groups (DESIGN §5). There are at least two groups; whenever the number
/// of archive nodes exceeds 10 × groups, one more group opens. A new archive node joins the group
/// with the fewest members, preferring group `tokenId % groupCount` among equals, which makes the
/// first groups the odd and even token ids when archive nodes register in a row. Groups never merge
/// and members never move, so a chain's group keeps its meaning.
contract NodeRegistry is ERC721 {
    using EnumerableSet for EnumerableSet.UintSet;

    /// @notice Archive nodes per group before another group opens.
    uint256 public constant ARCHIVE_GROUP_TARGET = 10;
    /// @notice The fewest archive groups there are.
    uint256 public constant MIN_ARCHIVE_GROUPS = 2;
    /// @notice Most endpoint URLs per node.
    uint256 public constant MAX_ENDPOINTS = 8;
    /// @notice Longest endpoint URL, in bytes.
    uint256 public constant MAX_ENDPOINT_LENGTH = 256;
    /// @notice Longest region code, in bytes.
    uint256 public constant MAX_REGION_LENGTH = 64;

    /// @notice What a node charges, in units of the paying stablecoin (6 decimals for USDC-like).
    struct Prices {
        uint64 outboundPerMB;
        uint64 storagePerMBHour;
        uint64 perVCPU;
        uint64 perMBMemory;
    }

    /// @notice A registered node.
    struct Node {
        Role role;
        uint64 registeredAt;
        Prices prices;
        bytes publicKey;
        string region;
        string[] endpoints;
    }

    IStaking private immutable _staking;
    uint256 private _nextTokenId = 1;
    mapping(uint256 tokenId => Node) private _nodes;
    mapping(address owner => mapping(Role => uint256 tokenId)) private _tokenOf;

    uint256 private _groupCount = MIN_ARCHIVE_GROUPS;
    uint256 private _archiveCount;
    mapping(uint256 group => EnumerableSet.UintSet tokenIds) private _groupMembers;
    mapping(uint256 tokenId => uint256 group) private _archiveGroups;

    /// @notice A public key must be 64 bytes: the uncompressed secp256k1 point without its 0x04 prefix.
    error InvalidPublicKeyLength(uint256 length);
    /// @notice The public key hashes to `derived`, not to the caller.
    error PublicKeyMismatch(address caller, address derived);
    /// @notice The caller already runs node `tokenId` in this role.
    error AlreadyRegistered(uint256 tokenId);
    /// @notice The caller lacks the minimum stake of the role.
    error InsufficientStake(address node, Role role);
    /// @notice The caller does not own node `tokenId`.
    error NotNodeOwner(uint256 tokenId, address caller);
    /// @notice Node `tokenId` is not an archive node.
    error NotArchiveNode(uint256 tokenId);
    /// @notice Archive group `group` does not exist.
    error UnknownArchiveGroup(uint256 group);
    /// @notice A node needs between 1 and MAX_ENDPOINTS endpoints.
    error InvalidEndpointCount(uint256 count);
    /// @notice Endpoint `index` is empty or longer than MAX_ENDPOINT_LENGTH.
    error InvalidEndpoint(uint256 index);
    /// @notice A region is at most MAX_REGION_LENGTH bytes.
    error RegionTooLong(uint256 length);
    /// @notice Node NFTs stand for a key and cannot change hands.
    error NodeNotTransferable(uint256 tokenId);
    /// @notice The staking contract is the zero address.
    error InvalidStaking();

    /// @notice `owner` registered node `tokenId` in `role`.
    event NodeRegistered(uint256 indexed tokenId, address indexed owner, Role indexed role);
    /// @notice Node `tokenId` changed its endpoints, prices or region.
    event NodeUpdated(uint256 indexed tokenId);
    /// @notice Node `tokenId` left the registry.
    event NodeDeregistered(uint256 indexed tokenId, address indexed owner, Role indexed role);
    /// @notice Archive node `tokenId` joined archive group `group`.
    event ArchiveGroupJoined(uint256 indexed tokenId, uint256 indexed group);
    /// @notice Archive node `tokenId` left archive group `group`.
    event ArchiveGroupLeft(uint256 indexed tokenId, uint256 indexed group);
    /// @notice The archive nodes now form `groupCount` groups.
    event ArchiveGroupOpened(uint256 groupCount);

    /// @param staking_ Where minimum stakes are checked.
    constructor(IStaking staking_) ERC721("CoNET Node", "CNODE") {
        if (address(staking_) == address(0)) revert InvalidStaking();
        _staking = staking_;
    }

    // ---------------------------------------------------------------- node operations

    /// @notice Registers the caller as a node in `role` and mints its node NFT.
    /// @param role The role served; the caller must meet its minimum stake.
    /// @param publicKey The caller's 64-byte secp256k1 public key (x ‖ y); must hash to the caller.
    /// @param endpoints 1 to MAX_ENDPOINTS URLs the node answers on.
    /// @param prices What the node charges.
    /// @param region Where the node runs (free text, e.g. "eu-west"), at most MAX_REGION_LENGTH bytes.
    /// @return tokenId The new node NFT.
    function register(
        Role role,
        bytes calldata publicKey,
        string[] calldata endpoints,
        Prices calldata prices,
        string calldata region
    ) external returns (uint256 tokenId) {
        if (publicKey.length != 64) revert InvalidPublicKeyLength(publicKey.length);
        address derived = address(uint160(uint256(keccak256(publicKey))));
        if (derived != msg.sender) revert PublicKeyMismatch(msg.sender, derived);
        uint256 existing = _tokenOf[msg.sender][role];
        if (existing != 0) revert AlreadyRegistered(existing);
        if (!_staking.meetsMinimum(msg.sender, role)) revert InsufficientStake(msg.sender, role);
        _checkProfile(endpoints, region);

        tokenId = _nextTokenId++;
        Node storage node = _nodes[tokenId];
        node.role = role;
        node.registeredAt = uint64(block.timestamp);
        node.publicKey = publicKey;
        _writeProfile(node, endpoints, prices, region);
        _tokenOf[msg.sender][role] = tokenId;
        _mint(msg.sender, tokenId);
        emit NodeRegistered(tokenId, msg.sender, role);

        if (role == Role.ARCHIVE) _joinArchiveGroup(tokenId);
    }

    /// @notice Replaces node `tokenId`'s endpoints, prices and region. Only its owner.
    function update(uint256 tokenId, string[] calldata endpoints, Prices calldata prices, string calldata region)
        external
    {
        _checkNodeOwner(tokenId);
        _checkProfile(endpoints, region);
        _writeProfile(_nodes[tokenId], endpoints, prices, region);
        emit NodeUpdated(tokenId);
    }

    /// @notice Removes node `tokenId` and burns its NFT. Only its owner. Its stake stays in Staking.
    function deregister(uint256 tokenId) external {
        _checkNodeOwner(tokenId);
        Role role = _nodes[tokenId].role;
        if (role == Role.ARCHIVE) _leaveArchiveGroup(tokenId);
        delete _nodes[tokenId];
        delete _tokenOf[msg.sender][role];
        _burn(tokenId);
        emit NodeDeregistered(tokenId, msg.sender, role);
    }

    // ---------------------------------------------------------------- views

    /// @notice Everything node `tokenId` registered. Reverts for a node that does not exist.
    function nodeOf(uint256 tokenId) external view returns (Node memory) {
        _requireOwned(tokenId);
        return _nodes[tokenId];
    }

    /// @notice The node NFT `owner` holds in `role`, or 0.
    function tokenOf(address owner, Role role) external view returns (uint256) {
        return _tokenOf[owner][role];
    }

    /// @notice The staking contract minimum stakes are read from.
    function staking() external view returns (IStaking) {
        return _staking;
    }

    /// @notice The archive group of archive node `tokenId`.
    function archiveGroupOf(uint256 tokenId) external view returns (uint256) {
        _requireOwned(tokenId);
        if (_nodes[tokenId].role != Role.ARCHIVE) revert NotArchiveNode(tokenId);
        return _archiveGroups[tokenId];
    }

    /// @notice How many archive groups there are (at least 2; never fewer than before).
    function groupCount() external view returns (uint256) {
        return _groupCount;
    }

    /// @notice How many archive nodes are registered.
    function archiveCount() external view returns (uint256) {
        return _archiveCount;
    }

    /// @notice The token ids of the members of archive group `group`.
    function archiveGroupMembers(uint256 group) external view returns (uint256[] memory) {
        if (group >= _groupCount) revert UnknownArchiveGroup(group);
        return _groupMembers[group].values();
    }

    // ---------------------------------------------------------------- internals

    function _joinArchiveGroup(uint256 tokenId) private {
        _archiveCount += 1;
        if (_archiveCount > _groupCount * ARCHIVE_GROUP_TARGET) {
            _groupCount += 1;
            emit ArchiveGroupOpened(_groupCount);
        }
        uint256 best = tokenId % _groupCount;
        uint256 bestSize = _groupMembers[best].length();
        // Bounded by the group count, which grows by one per ten archive nodes.
        for (uint256 group = 0; group < _groupCount; ++group) {
            uint256 size = _groupMembers[group].length();
            if (size < bestSize) {
                best = group;
                bestSize = size;
            }
        }
        // A fresh token id is in no group: add() always succeeds.
        // slither-disable-next-line unused-return
        _groupMembers[best].add(tokenId);
        _archiveGroups[tokenId] = best;
        emit ArchiveGroupJoined(tokenId, best);
    }

    function _leaveArchiveGroup(uint256 tokenId) private {
        uint256 group = _archiveGroups[tokenId];
        // Every archive node is a member of the group recorded for it: remove() always succeeds.
        // slither-disable-next-line unused-return
        _groupMembers[group].remove(tokenId);
        delete _archiveGroups[tokenId];
        _archiveCount -= 1;
        emit ArchiveGroupLeft(tokenId, group);
    }

    function _writeProfile(
        Node storage node,
        string[] calldata endpoints,
        Prices calldata prices,
        string calldata region
    ) private {
        node.prices = prices;
        node.region = region;
        // The legacy code generator cannot copy a calldata string[] to storage in one assignment.
        delete node.endpoints;
        for (uint256 i = 0; i < endpoints.length; ++i) {
            node.endpoints.push(endpoints[i]);
        }
    }

    function _checkNodeOwner(uint256 tokenId) private view {
        if (_requireOwned(tokenId) != msg.sender) revert NotNodeOwner(tokenId, msg.sender);
    }

    function _checkProfile(string[] calldata endpoints, string calldata region) private pure {
        if (endpoints.length == 0 || endpoints.length > MAX_ENDPOINTS) revert InvalidEndpointCount(endpoints.length);
        for (uint256 i = 0; i < endpoints.length; ++i) {
            uint256 length = bytes(endpoints[i]).length;
            if (length == 0 || length > MAX_ENDPOINT_LENGTH) revert InvalidEndpoint(i);
        }
        if (bytes(region).length > MAX_REGION_LENGTH) revert RegionTooLong(bytes(region).length);
    }

    /// @dev Only mints and burns: a node NFT stands for the key that registered it.
    function _update(address to, uint256 tokenId, address auth) internal override returns (address from) {
        from = super._update(to, tokenId, auth);
        if (from != address(0) && to != address(0)) revert NodeNotTransferable(tokenId);
    }
}
