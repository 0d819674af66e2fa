// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {DleRegistry} from "./DleRegistry.sol";
import {DleChainId} from "./libraries/DleChainId.sol";

/// @title Certified exits
/// @notice What every contract holding the value of DLE chains shares: paying out on an exit
/// certificate. An asset `id` of the inheriting contract (a CoNETCash note, an oDEX receipt) lives on
/// DLE chain `DleChainId.compute(address(this), id)`; when an exit is finalized there, every member of
/// the chain's archive group signs an `ExitCertificate` over this contract's EIP-712 domain, and the
/// inheriting contract pays it once.
/// @dev The domain (name, version, this contract's address) is what keeps a certificate for one
/// contract worthless at another: CoNETCash and OdexVault sign the same struct in different domains.
/// The inheriting contract checks what is its own (does the asset exist, what is outstanding) and calls
/// `_certifyExit`, which checks the rest in a fixed order and spends the certificate's nonce.
///
/// Exits of one asset are paid in order and bound to their history, so that a forked chain — a whole
/// archive group that certified two blocks at one height — can never yield two payable exits
/// (docs/security.md, "One exit history per chain"). Certificate `n` of an asset is payable only as
/// the asset's next exit (`nonce` == the number of its exits paid so far) and only if its
/// `exitedBefore` is the head of the paid history: zero for the first, then the first 27 bytes of the
/// EIP-712 struct hash of the certificate paid last. The note program keeps the same head and puts it
/// in every certificate it emits. Two forks share their exits up to the fork; after it, the first exit
/// paid from either fork takes the next nonce and sets the head, and every exit of the other fork then
/// repeats a spent nonce or names another history.
abstract contract CertifiedExits is EIP712 {
    /// @notice What a holder exits: the DLE group's certificate of an exit finalized on the chain of
    /// asset `note` (a note id at CoNETCash, a receipt id at OdexVault). `nonce` is the chain's exit
    /// counter and `exitedBefore` the head of the chain's exit history before this exit.
    struct ExitCertificate {
        uint256 note;
        bytes32 chain;
        uint256 height;
        address holder;
        address receiver;
        uint256 amount;
        uint256 nonce;
        bytes32 exitedBefore;
    }

    // One slot per asset, read and written once per exit. `head` is the history's head truncated to 27
    // bytes (216 bits): forging a second history with the same head is a keccak collision on 216 bits
    // (~2^108 work even for a group that controls both forks), far beyond any group's means. `next`
    // counts exits in 32 bits: 2^32 exits of one asset would cost over 10^14 gas, so it never overflows
    // (and if it did, checked arithmetic would refuse the exit, not wrap). `reserved` keeps a slot
    // pre-written by `_reserveExitNonces` non-zero, so that the first exit's SSTORE updates, not creates.
    struct ExitHistory {
        bytes27 head;
        uint32 next;
        bool reserved;
    }

    bytes32 private constant _EXIT_TYPEHASH = keccak256(
        "ExitCertificate(uint256 note,bytes32 chain,uint256 height,address holder,address receiver,uint256 amount,uint256 nonce,bytes32 exitedBefore)"
    );

    DleRegistry private immutable _registry;
    mapping(uint256 id => ExitHistory) private _exitHistories;

    /// @notice The certificate is for chain `given`, the asset's chain is `expected`.
    error WrongChain(bytes32 expected, bytes32 given);
    /// @notice `amount` is zero or above the asset's outstanding value.
    error InvalidExitAmount(uint256 amount, uint256 outstanding);
    /// @notice The certificate with `nonce` for asset `note` was already used.
    error CertificateUsed(uint256 note, uint256 nonce);
    /// @notice The next exit of asset `note` to pay has nonce `expected`, the certificate has `given`:
    /// earlier exits are paid first.
    error ExitOutOfOrder(uint256 note, uint256 expected, uint256 given);
    /// @notice The exit history of asset `note` paid so far has head `expected`; the certificate names
    /// `given`: it comes from another history (a fork of the chain).
    error ExitHistoryMismatch(uint256 note, bytes32 expected, bytes32 given);

    /// @param name The EIP-712 domain name the archive groups sign under.
    /// @param version The EIP-712 domain version.
    /// @param registry_ The DLE registry that checks group certificates. The inheriting contract
    /// refuses the zero address with the rest of its constructor arguments.
    constructor(string memory name, string memory version, DleRegistry registry_) EIP712(name, version) {
        _registry = registry_;
    }

    /// @notice Whether the exit certificate of asset `note` with `nonce` was used (exits are paid in
    /// order: every nonce below the next one).
    function isExitNonceUsed(uint256 note, uint256 nonce) external view returns (bool) {
        return nonce < _exitHistories[note].next;
    }

    /// @notice The exit the mainchain pays next for asset `note`: its nonce, and the `exitedBefore` its
    /// certificate must carry (zero before the first exit).
    function exitHistoryOf(uint256 note) external view returns (uint256 nextNonce, bytes32 exitedBefore) {
        ExitHistory memory history = _exitHistories[note];
        return (history.next, bytes32(history.head));
    }

    /// @notice The DLE chain id of asset `id`.
    function chainOf(uint256 id) external view returns (bytes32) {
        return DleChainId.compute(address(this), id);
    }

    /// @notice The EIP-712 digest the archive group signs for `certificate`.
    function exitDigest(ExitCertificate calldata certificate) public view returns (bytes32) {
        return _hashTypedDataV4(_exitStructHash(certificate));
    }

    /// @dev Checks `certificate` for an asset with `outstanding` value left — its chain, its amount,
    /// its place in the exit history (the next nonce, the head it names; both advanced here), then the
    /// signatures of every member of epoch `epoch` of the chain's archive group — and reverts on the
    /// first failure. The caller pays out after.
    function _certifyExit(
        ExitCertificate calldata certificate,
        uint256 outstanding,
        uint256 epoch,
        bytes calldata signatures
    ) internal {
        uint256 id = certificate.note;
        bytes32 chain = DleChainId.compute(address(this), id);
        if (certificate.chain != chain) revert WrongChain(chain, certificate.chain);
        uint256 amount = certificate.amount;
        if (amount == 0 || amount > outstanding) revert InvalidExitAmount(amount, outstanding);
        bytes32 structHash = _exitStructHash(certificate);
        _extendHistory(id, certificate.nonce, certificate.exitedBefore, structHash);
        _registry.verifyChainCertificate(chain, _hashTypedDataV4(structHash), epoch, signatures);
    }

    /// @dev Pre-writes asset `id`'s exit history slot, so that whoever writes it first (its first exit)
    /// updates a slot instead of creating one. Worth it where the one who creates the asset should pay.
    function _reserveExitNonces(uint256 id) internal {
        _exitHistories[id].reserved = true;
    }

    /// @dev The registry certificates are checked against.
    function _dleRegistry() internal view returns (DleRegistry) {
        return _registry;
    }

    function _exitStructHash(ExitCertificate calldata certificate) private pure returns (bytes32) {
        return keccak256(abi.encode(_EXIT_TYPEHASH, certificate));
    }

    /// @dev Spends asset `id`'s next nonce on the certificate with `nonce`, `exitedBefore` and struct hash
    /// `structHash`: refuses a spent nonce, a later one, and a history other than the one paid so far.
    function _extendHistory(uint256 id, uint256 nonce, bytes32 exitedBefore, bytes32 structHash) private {
        ExitHistory memory history = _exitHistories[id];
        uint256 next = history.next;
        if (nonce < next) revert CertificateUsed(id, nonce);
        if (nonce > next) revert ExitOutOfOrder(id, next, nonce);
        bytes32 head = bytes32(history.head);
        if (exitedBefore != head) revert ExitHistoryMismatch(id, head, exitedBefore);
        // Checked: the 2^32-th exit of one asset would revert here rather than wrap (see ExitHistory).
        _exitHistories[id] = ExitHistory(bytes27(structHash), history.next + 1, true);
    }
}
