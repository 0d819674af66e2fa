// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {NodeRegistry} from "./NodeRegistry.sol";
import {ParameterKeys, ParameterStore} from "./governance/ParameterStore.sol";
import {IStaking} from "./interfaces/IStaking.sol";
import {ISlashing} from "./interfaces/ISlashing.sol";
import {DleChainId} from "./libraries/DleChainId.sol";
import {Role} from "./types/Role.sol";

/// @title DLE chain registry
/// @notice What the mainchain knows of the DLE (DESIGN §5): the archive groups, each as a sequence of
/// epochs of fixed membership; the record of every DLE chain (genesis hash, asset, group); the check of
/// a group certificate — signed by every member of the epoch, no more, no fewer; equivocation
/// reports, which slash the signer of two different blocks at one height of one chain under one roles
/// version, in the role its own signatures name; and fault reports, which slash a member the chain's
/// archive group certifies refused a valid block or signed an invalid one — faults the mainchain cannot
/// re-execute, so the group that keeps the chain vouches, and the accused's own signed refusal or vote
/// shows that it was the accused, in that role, under that roles version. Both paths key their evidence
/// by (chain, height, roles version, signer): one offence is slashed once.
///
/// An epoch is a snapshot of one archive group: the owners of its archive-node NFTs in NodeRegistry
/// that still meet the archive minimum stake, sorted by address. `refreshGroup` opens a new epoch when
/// that set has changed. A certificate names the epoch that signed it and is accepted only while that
/// epoch is current, and only from an epoch of at least the governed `MIN_ARCHIVE_GROUP_SIZE` members:
/// once a member has left, the ones who stayed cannot certify alone what it would have refused. What
/// an ended epoch certified and was not submitted in time must be signed again by the current one.
///
/// A chain belongs to the group its asset id maps to, `assetId % groupCount` at registration
/// (`groupFor`), and keeps that group: a group cannot register another group's chain.
///
/// Signatures are 65-byte secp256k1 signatures (r ‖ s ‖ v), concatenated in ascending order of the
/// signers' addresses. Sorted order rules out duplicates; comparing the hash of the recovered signers
/// with the epoch's members hash checks "every member, and only members" with one storage read.
contract DleRegistry is EIP712 {
    /// @notice The most archive nodes an epoch may hold; bounds every loop over a group.
    uint256 public constant MAX_GROUP_SIZE = 64;
    /// @notice FaultReport.kind: the offender refused to sign a block the group found valid.
    uint8 public constant FAULT_REFUSED_VALID_BLOCK = 1;
    /// @notice FaultReport.kind: the offender signed a block the group found invalid (e.g. a wrong state root).
    uint8 public constant FAULT_SIGNED_INVALID_BLOCK = 2;

    bytes32 private constant _GENESIS_TYPEHASH =
        keccak256("ChainGenesis(bytes32 chain,bytes32 genesisHash,address asset,uint256 assetId,uint256 group)");
    // EIP-712 has no enum type: `role` is signed as the uint8 the ABI encodes a Role as.
    bytes32 private constant _BLOCK_TYPEHASH = keccak256(
        "BlockSignature(bytes32 chain,uint256 height,uint256 rolesVersion,uint8 role,bytes32 headerHash)"
    );
    bytes32 private constant _REFUSAL_TYPEHASH =
        keccak256("Refusal(bytes32 chain,uint256 height,uint256 rolesVersion,uint8 role,bytes32 headerHash)");
    bytes32 private constant _FAULT_TYPEHASH = keccak256(
        "FaultReport(bytes32 chain,uint256 height,uint256 rolesVersion,address offender,uint8 role,uint8 kind,"
        "bytes32 headerHash,bytes32 evidenceHash,address reporter)"
    );
    uint256 private constant _SIGNATURE_LENGTH = 65;

    /// @notice One epoch of an archive group, in one slot: a certificate check reads it once.
    /// `membersHash` is the first 20 bytes of keccak256 of the sorted members; forging a certificate
    /// would take a second preimage of it, 2^160 work. `size` is the number of members and `minimum`
    /// the governed MIN_ARCHIVE_GROUP_SIZE when the epoch opened (both at most MAX_GROUP_SIZE): kept
    /// here so that the check reads no other contract; `refreshGroup` opens a new epoch when the
    /// governed minimum changed. Timestamps of 40 bits last until the year 36812.
    struct Epoch {
        bytes20 membersHash;
        uint40 startedAt;
        uint40 endedAt;
        uint8 size;
        uint8 minimum;
    }

    /// @notice One DLE chain.
    struct ChainRecord {
        bytes32 genesisHash;
        // asset, group and registeredAt share one slot: a certificate check reads it once.
        address asset;
        uint48 group;
        uint48 registeredAt;
        uint256 assetId;
    }

    /// @notice A member's signature of block `headerHash` at `height` of `chain`, given under roles
    /// version `rolesVersion` in `role` (its stake: CBDC for the note's CBDC creating its chain, WITNESS
    /// for a witness or a promoted witness creating, VALIDATOR): the EIP-712 `BlockSignature`.
    struct SignedBlock {
        bytes32 chain;
        uint256 height;
        uint256 rolesVersion;
        Role role;
        bytes32 headerHash;
        bytes signature;
    }

    /// @notice An archive group's finding that `offender`, serving `chain` in `role` under roles version
    /// `rolesVersion`, committed fault `kind` on block `headerHash` at `height`: for
    /// FAULT_REFUSED_VALID_BLOCK the block it refused, for FAULT_SIGNED_INVALID_BLOCK the block it signed.
    /// `evidenceHash` is keccak256 of the off-chain evidence bundle the group judged (the block, the
    /// signatures, the re-execution); `reporter` receives the reporter's reward.
    struct FaultReport {
        bytes32 chain;
        uint256 height;
        uint256 rolesVersion;
        address offender;
        Role role;
        uint8 kind;
        bytes32 headerHash;
        bytes32 evidenceHash;
        address reporter;
    }

    NodeRegistry private immutable _nodes;
    IStaking private immutable _staking;
    ParameterStore private immutable _params;

    mapping(uint256 group => uint256 epoch) private _currentEpochs;
    mapping(uint256 group => mapping(uint256 epoch => Epoch)) private _epochs;
    mapping(uint256 group => mapping(uint256 epoch => address[])) private _members;
    mapping(bytes32 chain => ChainRecord) private _chains;

    /// @notice A constructor argument is the zero address.
    error ZeroAddress();
    /// @notice Archive group `group` does not exist in the node registry.
    error UnknownArchiveGroup(uint256 group);
    /// @notice No archive node of group `group` meets the archive minimum stake, and it never had an
    /// epoch: there is nothing to open.
    error EmptyGroup(uint256 group);
    /// @notice Group `group` has more than MAX_GROUP_SIZE staked archive nodes.
    error GroupTooLarge(uint256 group, uint256 size);
    /// @notice Group `group` has no epoch `epoch`.
    error UnknownEpoch(uint256 group, uint256 epoch);
    /// @notice Epoch `epoch` of group `group` has ended; `current` is the group's current epoch.
    error EpochEnded(uint256 group, uint256 epoch, uint256 current);
    /// @notice Epoch `epoch` of group `group` has `size` members, fewer than the governed `minimum`.
    error GroupTooSmall(uint256 group, uint256 epoch, uint256 size, uint256 minimum);
    /// @notice Asset #`assetId`'s chain belongs to group `expected`, not `given`.
    error WrongGroup(uint256 assetId, uint256 given, uint256 expected);
    /// @notice The signatures are not a whole number of 65-byte signatures.
    error MalformedSignatures(uint256 length);
    /// @notice Signer `index` is not above the one before it: signatures must be sorted by signer.
    error UnsortedSigners(uint256 index);
    /// @notice The signers are not exactly the members of epoch `epoch` of group `group`.
    error SignersNotGroup(uint256 group, uint256 epoch);
    /// @notice Chain `chain` is not registered.
    error ChainNotRegistered(bytes32 chain);
    /// @notice Chain `chain` is already registered.
    error ChainAlreadyRegistered(bytes32 chain);
    /// @notice Both headers are the same block: that is no equivocation.
    error SameBlock(bytes32 headerHash);
    /// @notice The two headers were signed by different keys.
    error DifferentSigners(address first, address second);
    /// @notice The two signatures are of different chains or heights: no equivocation.
    error DifferentHeights(bytes32 firstChain, uint256 firstHeight, bytes32 secondChain, uint256 secondHeight);
    /// @notice The two blocks were signed under different roles versions: re-signing a height after a
    /// certified role change (a rollback) is what an honest member does, not equivocation.
    error DifferentRolesVersions(uint256 first, uint256 second);
    /// @notice The two signatures name different roles: no role set gives one key two, so at most one of
    /// them is a vote any honest node counts.
    error DifferentRoles(Role first, Role second);
    /// @notice The accused's signed refusal or vote recovers `signer`, not the report's `offender`.
    error NotOffendersSignature(address signer, address offender);
    /// @notice `kind` is neither FAULT_REFUSED_VALID_BLOCK nor FAULT_SIGNED_INVALID_BLOCK.
    error UnknownFaultKind(uint8 kind);

    /// @notice Epoch `epoch` of archive group `group` began with `members` (sorted).
    event EpochStarted(uint256 indexed group, uint256 indexed epoch, bytes20 membersHash, address[] members);
    /// @notice DLE chain `chain` of asset `asset` #`assetId` was registered by its archive group.
    event ChainRegistered(
        bytes32 indexed chain, address indexed asset, uint256 indexed assetId, bytes32 genesisHash, uint256 group
    );
    /// @notice `signer` signed two blocks at `height` of `chain` under roles version `rolesVersion` in
    /// `role`; `reporter` proved it and `slashed` of its `role` stake was slashed.
    event EquivocationReported(
        bytes32 indexed chain,
        uint256 height,
        uint256 rolesVersion,
        address indexed signer,
        Role role,
        address indexed reporter,
        uint256 slashed
    );
    /// @notice The archive group of `chain` certified fault `kind` of `offender` (in `role`, under roles
    /// version `rolesVersion`) at `height`; `slashed` of its stake was slashed and `reporter` rewarded.
    /// `evidenceHash` names the evidence bundle.
    event FaultReported(
        bytes32 indexed chain,
        uint256 height,
        uint256 rolesVersion,
        address indexed offender,
        Role role,
        uint8 kind,
        bytes32 evidenceHash,
        address indexed reporter,
        uint256 slashed
    );

    /// @param nodes_ The node registry whose archive NFTs form the groups.
    /// @param staking_ Checks archive stakes and slashes equivocators; this registry needs its slasher role.
    /// @param params_ Where the governed minimum group size (`MIN_ARCHIVE_GROUP_SIZE`) is read.
    constructor(NodeRegistry nodes_, IStaking staking_, ParameterStore params_) EIP712("CoNET DLE", "1") {
        if (address(nodes_) == address(0) || address(staking_) == address(0) || address(params_) == address(0)) {
            revert ZeroAddress();
        }
        _nodes = nodes_;
        _staking = staking_;
        _params = params_;
    }

    // ---------------------------------------------------------------- archive groups

    /// @notice Opens a new epoch of `group` if its staked archive nodes differ from the current epoch's,
    /// or the governed minimum group size changed since it opened. Anyone may call it; archive nodes do
    /// after a member joins, leaves or unbonds. When no member is staked any more the new epoch is empty
    /// and certifies nothing: members who all withdrew their stake cannot keep certifying.
    /// @return epoch The current epoch after the call.
    /// @return changed Whether a new epoch was opened.
    function refreshGroup(uint256 group) external returns (uint256 epoch, bool changed) {
        if (group >= _nodes.groupCount()) revert UnknownArchiveGroup(group);
        address[] memory members = _stakedMembers(group);
        bytes20 membersHash = _membersHash(members);
        // Bounded to [2, 64] by the parameter store's bounds: the cast cannot truncate.
        uint8 minimum = uint8(minGroupSize());
        epoch = _currentEpochs[group];
        if (members.length == 0 && epoch == 0) revert EmptyGroup(group);
        Epoch storage current = _epochs[group][epoch];
        if (epoch != 0 && current.membersHash == membersHash && current.minimum == minimum) return (epoch, false);

        if (epoch != 0) current.endedAt = uint40(block.timestamp);
        epoch += 1;
        _currentEpochs[group] = epoch;
        // At most MAX_GROUP_SIZE members (`_stakedMembers`): the cast cannot truncate.
        _epochs[group][epoch] = Epoch(membersHash, uint40(block.timestamp), 0, uint8(members.length), minimum);
        _members[group][epoch] = members;
        emit EpochStarted(group, epoch, membersHash, members);
        return (epoch, true);
    }

    // ---------------------------------------------------------------- chains

    /// @notice Records the DLE chain of `asset` #`assetId`, on the genesis certificate of its group.
    /// @param genesisHash Hash of the chain's genesis block header.
    /// @param group The archive group that keeps the chain: `groupFor(assetId)`, or WrongGroup.
    /// @param epoch The epoch of `group` that signed.
    /// @param signatures The epoch's signatures of the ChainGenesis struct, sorted by signer.
    /// @return chain The chain id (DleChainId.compute(asset, assetId)).
    function registerChain(
        address asset,
        uint256 assetId,
        bytes32 genesisHash,
        uint256 group,
        uint256 epoch,
        bytes calldata signatures
    ) external returns (bytes32 chain) {
        chain = DleChainId.compute(asset, assetId);
        if (_chains[chain].registeredAt != 0) revert ChainAlreadyRegistered(chain);
        uint256 expected = groupFor(assetId);
        if (group != expected) revert WrongGroup(assetId, group, expected);
        bytes32 digest = _hashTypedDataV4(
            keccak256(abi.encode(_GENESIS_TYPEHASH, chain, genesisHash, asset, assetId, group))
        );
        _verifyGroup(group, epoch, digest, signatures);
        _chains[chain] = ChainRecord({
            genesisHash: genesisHash,
            asset: asset,
            group: uint48(group),
            registeredAt: uint48(block.timestamp),
            assetId: assetId
        });
        emit ChainRegistered(chain, asset, assetId, genesisHash, group);
    }

    // ---------------------------------------------------------------- certificates

    /// @notice Reverts unless `signatures` are those of every member of epoch `epoch` of the group
    /// that keeps `chain`, over `digest`. The caller builds `digest` (its own EIP-712 domain and
    /// struct), so the certificate is bound to the contract that acts on it.
    function verifyChainCertificate(bytes32 chain, bytes32 digest, uint256 epoch, bytes calldata signatures)
        external
        view
    {
        ChainRecord storage record = _chains[chain];
        uint256 group = record.group;
        if (record.registeredAt == 0) revert ChainNotRegistered(chain);
        _verifyGroup(group, epoch, digest, signatures);
    }

    /// @notice Reverts unless `signatures` are those of every member of epoch `epoch` of `group`.
    function verifyGroupCertificate(uint256 group, bytes32 digest, uint256 epoch, bytes calldata signatures)
        external
        view
    {
        _verifyGroup(group, epoch, digest, signatures);
    }

    // ---------------------------------------------------------------- equivocation

    /// @notice Proves that one key signed two different blocks at one height of one chain under one
    /// roles version and slashes that key's whole stake in the role both signatures name — the role the
    /// signer held in that role set, never one the caller picks. Blocks signed under different roles
    /// versions are no equivocation: after a certified role change every member re-signs the height.
    /// The caller gets the reporter's reward.
    /// @param a The first signed block.
    /// @param b The second signed block: same chain, height, roles version and role, another header.
    /// @return slashed What was slashed.
    function reportEquivocation(SignedBlock calldata a, SignedBlock calldata b) external returns (uint256 slashed) {
        if (a.chain != b.chain || a.height != b.height) revert DifferentHeights(a.chain, a.height, b.chain, b.height);
        if (a.rolesVersion != b.rolesVersion) revert DifferentRolesVersions(a.rolesVersion, b.rolesVersion);
        if (a.role != b.role) revert DifferentRoles(a.role, b.role);
        if (a.headerHash == b.headerHash) revert SameBlock(a.headerHash);
        address signer = ECDSA.recoverCalldata(
            blockDigest(a.chain, a.height, a.rolesVersion, a.role, a.headerHash), a.signature
        );
        address other = ECDSA.recoverCalldata(
            blockDigest(b.chain, b.height, b.rolesVersion, b.role, b.headerHash), b.signature
        );
        if (signer != other) revert DifferentSigners(signer, other);
        // Staking is the protocol's own contract and the slashed amount is known only after the call.
        // slither-disable-next-line reentrancy-events
        slashed = ISlashing(address(_staking)).slash(
            signer, a.role, type(uint256).max, _offenceKey(a.chain, a.height, a.rolesVersion, signer), msg.sender
        );
        emit EquivocationReported(a.chain, a.height, a.rolesVersion, signer, a.role, msg.sender, slashed);
    }

    // ---------------------------------------------------------------- certified faults

    /// @notice Slashes `report.offender`'s whole `report.role` stake on two proofs: the certificate of
    /// the archive group that keeps `report.chain` (refusing a valid block or signing an invalid one
    /// cannot be re-executed here, so the group's all-members signature vouches for the verdict), and
    /// the offender's own signature — its signed `Refusal` of the block for FAULT_REFUSED_VALID_BLOCK,
    /// its `BlockSignature` of the block for FAULT_SIGNED_INVALID_BLOCK — over the report's chain,
    /// height, roles version, role and header. So a member that never answered (a timeout, handled by a
    /// role change) is never slashed, and the role slashed is the one the offender signed in. One
    /// offence per chain, height, roles version and offender, shared with `reportEquivocation`; anyone
    /// may submit it, the reward goes to `report.reporter`.
    /// @param report The group's finding; its EIP-712 digest is `faultDigest(report)`.
    /// @param accusedSignature The offender's signed refusal or block signature, as above.
    /// @param epoch The epoch of the chain's group that signed.
    /// @param signatures The epoch's signatures of the digest, sorted by signer.
    /// @return slashed What was slashed.
    function reportFault(
        FaultReport calldata report,
        bytes calldata accusedSignature,
        uint256 epoch,
        bytes calldata signatures
    ) external returns (uint256 slashed) {
        _checkAccused(report, accusedSignature);
        ChainRecord storage record = _chains[report.chain];
        uint256 group = record.group;
        if (record.registeredAt == 0) revert ChainNotRegistered(report.chain);
        _verifyGroup(group, epoch, faultDigest(report), signatures);
        slashed = _slashFault(report);
    }

    // ---------------------------------------------------------------- views

    /// @notice The archive group that keeps the chain of asset #`assetId` (a note or receipt id) if it
    /// is registered now: `assetId % groupCount`. The group count only grows, so a chain registers with
    /// the group of the count at its registration and keeps it (`chainOf(chain).group`).
    function groupFor(uint256 assetId) public view returns (uint256) {
        return assetId % _nodes.groupCount();
    }

    /// @notice The EIP-712 digest a DLE member signs for block `headerHash` at `height` of `chain`, under
    /// roles version `rolesVersion`, serving in `role`.
    function blockDigest(bytes32 chain, uint256 height, uint256 rolesVersion, Role role, bytes32 headerHash)
        public
        view
        returns (bytes32)
    {
        return _hashTypedDataV4(keccak256(abi.encode(_BLOCK_TYPEHASH, chain, height, rolesVersion, role, headerHash)));
    }

    /// @notice The EIP-712 digest a DLE member signs to refuse block `headerHash` at `height` of `chain`,
    /// under roles version `rolesVersion`, serving in `role`.
    function refusalDigest(bytes32 chain, uint256 height, uint256 rolesVersion, Role role, bytes32 headerHash)
        public
        view
        returns (bytes32)
    {
        return
            _hashTypedDataV4(keccak256(abi.encode(_REFUSAL_TYPEHASH, chain, height, rolesVersion, role, headerHash)));
    }

    /// @notice The evidence key Staking records for an offence of `signer` at `height` of `chain` under
    /// roles version `rolesVersion`, by either slashing path.
    function offenceKey(bytes32 chain, uint256 height, uint256 rolesVersion, address signer)
        external
        pure
        returns (bytes32)
    {
        return _offenceKey(chain, height, rolesVersion, signer);
    }

    /// @notice The EIP-712 digest an archive group signs to certify `report`.
    function faultDigest(FaultReport calldata report) public view returns (bytes32) {
        return _hashTypedDataV4(keccak256(abi.encode(_FAULT_TYPEHASH, report)));
    }

    /// @notice The EIP-712 digest an archive group signs to register a chain.
    function genesisDigest(address asset, uint256 assetId, bytes32 genesisHash, uint256 group)
        external
        view
        returns (bytes32)
    {
        bytes32 chain = DleChainId.compute(asset, assetId);
        return _hashTypedDataV4(keccak256(abi.encode(_GENESIS_TYPEHASH, chain, genesisHash, asset, assetId, group)));
    }

    /// @notice The id of the DLE chain of `asset` #`assetId`.
    function chainIdOf(address asset, uint256 assetId) external view returns (bytes32) {
        return DleChainId.compute(asset, assetId);
    }

    /// @notice The record of `chain`; reverts if it is not registered.
    function chainOf(bytes32 chain) external view returns (ChainRecord memory) {
        ChainRecord memory record = _chains[chain];
        // Zero is "never registered", not a value compared against a balance or a clock.
        // slither-disable-next-line incorrect-equality
        if (record.registeredAt == 0) revert ChainNotRegistered(chain);
        return record;
    }

    /// @notice Whether `chain` is registered.
    function isRegistered(bytes32 chain) external view returns (bool) {
        return _chains[chain].registeredAt != 0;
    }

    /// @notice The current epoch of `group` (0 before its first refresh).
    function currentEpoch(uint256 group) external view returns (uint256) {
        return _currentEpochs[group];
    }

    /// @notice Epoch `epoch` of `group`.
    function epochOf(uint256 group, uint256 epoch) external view returns (Epoch memory) {
        return _epochs[group][epoch];
    }

    /// @notice The members of epoch `epoch` of `group`, sorted by address.
    function epochMembers(uint256 group, uint256 epoch) external view returns (address[] memory) {
        return _members[group][epoch];
    }

    /// @notice The node registry the groups come from.
    function nodeRegistry() external view returns (NodeRegistry) {
        return _nodes;
    }

    /// @notice The staking contract stakes are checked and slashed in.
    function staking() external view returns (IStaking) {
        return _staking;
    }

    /// @notice The fewest members an epoch must have for its certificates to count (governed); an
    /// epoch holds the value it opened with (`epochOf(group, epoch).minimum`) until `refreshGroup`.
    function minGroupSize() public view returns (uint256) {
        return _params.value(ParameterKeys.MIN_ARCHIVE_GROUP_SIZE);
    }

    // ---------------------------------------------------------------- internals

    function _verifyGroup(uint256 group, uint256 epoch, bytes32 digest, bytes calldata signatures) private view {
        Epoch memory record = _epochs[group][epoch];
        if (record.startedAt == 0) revert UnknownEpoch(group, epoch);
        // An epoch that has not ended is the current one; an ended one certifies nothing more, whatever
        // its members still sign.
        if (record.endedAt != 0) revert EpochEnded(group, epoch, _currentEpochs[group]);
        if (signatures.length == 0 || signatures.length % _SIGNATURE_LENGTH != 0) {
            revert MalformedSignatures(signatures.length);
        }
        uint256 count = signatures.length / _SIGNATURE_LENGTH;
        // A longer list than any epoch holds cannot match; refusing it early bounds the loop.
        if (count > MAX_GROUP_SIZE) revert SignersNotGroup(group, epoch);
        address[] memory signers = new address[](count);
        address previous = address(0);
        for (uint256 i = 0; i < count; ++i) {
            address signer = ECDSA.recoverCalldata(
                digest, signatures[i * _SIGNATURE_LENGTH:(i + 1) * _SIGNATURE_LENGTH]
            );
            if (signer <= previous) revert UnsortedSigners(i);
            signers[i] = signer;
            previous = signer;
        }
        if (_membersHash(signers) != record.membersHash) revert SignersNotGroup(group, epoch);
        // The signers are the whole epoch, so their count is its size. A lone archive node is no group:
        // it would certify its own chains.
        if (count < record.minimum) revert GroupTooSmall(group, epoch, count, record.minimum);
    }

    /// @dev Reverts unless `signature` is the offender's own: its signed refusal of the report's block
    /// (FAULT_REFUSED_VALID_BLOCK) or its vote for it (FAULT_SIGNED_INVALID_BLOCK), in the report's role
    /// under the report's roles version.
    function _checkAccused(FaultReport calldata report, bytes calldata signature) private view {
        uint8 kind = report.kind;
        if (kind != FAULT_REFUSED_VALID_BLOCK && kind != FAULT_SIGNED_INVALID_BLOCK) revert UnknownFaultKind(kind);
        bytes32 digest = kind == FAULT_REFUSED_VALID_BLOCK
            ? refusalDigest(report.chain, report.height, report.rolesVersion, report.role, report.headerHash)
            : blockDigest(report.chain, report.height, report.rolesVersion, report.role, report.headerHash);
        address signer = ECDSA.recoverCalldata(digest, signature);
        if (signer != report.offender) revert NotOffendersSignature(signer, report.offender);
    }

    /// @dev Slashes the offender of a checked fault report and says so.
    function _slashFault(FaultReport calldata report) private returns (uint256 slashed) {
        bytes32 evidence = _offenceKey(report.chain, report.height, report.rolesVersion, report.offender);
        // Staking is the protocol's own contract and the slashed amount is known only after the call.
        // slither-disable-next-line reentrancy-events
        slashed = ISlashing(address(_staking)).slash(
            report.offender, report.role, type(uint256).max, evidence, report.reporter
        );
        emit FaultReported(
            report.chain,
            report.height,
            report.rolesVersion,
            report.offender,
            report.role,
            report.kind,
            report.evidenceHash,
            report.reporter,
            slashed
        );
    }

    /// @dev One key per (chain, height, roles version, signer), whichever path proves the offence and
    /// whichever pair of blocks or bundle of evidence it shows: an offence is slashed once.
    function _offenceKey(bytes32 chain, uint256 height, uint256 rolesVersion, address signer)
        private
        pure
        returns (bytes32)
    {
        return keccak256(abi.encode(chain, height, rolesVersion, signer));
    }

    function _membersHash(address[] memory members) private pure returns (bytes20) {
        return bytes20(keccak256(abi.encodePacked(members)));
    }

    function _stakedMembers(uint256 group) private view returns (address[] memory members) {
        uint256[] memory tokenIds = _nodes.archiveGroupMembers(group);
        if (tokenIds.length > MAX_GROUP_SIZE) revert GroupTooLarge(group, tokenIds.length);
        members = new address[](tokenIds.length);
        uint256 count = 0;
        // The loop is bounded by MAX_GROUP_SIZE and calls only the protocol's own registry and staking.
        for (uint256 i = 0; i < tokenIds.length; ++i) {
            // slither-disable-next-line calls-loop
            address owner = _nodes.ownerOf(tokenIds[i]);
            // slither-disable-next-line calls-loop
            if (!_staking.meetsMinimum(owner, Role.ARCHIVE)) continue;
            // Insertion sort: groups hold a few dozen members at most.
            uint256 j = count;
            while (j > 0 && members[j - 1] > owner) {
                members[j] = members[j - 1];
                --j;
            }
            members[j] = owner;
            ++count;
        }
        // Drop the unused tail: the array's length is what gets hashed and stored. Shortening a memory
        // array in place is safe: nothing was allocated after it.
        // slither-disable-next-line assembly
        assembly ("memory-safe") {
            mstore(members, count)
        }
    }
}
