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
abstract contract CertifiedExits is EIP712 {
    /// @notice What a holder exits: the DLE group's certificate of an exit finalized on the chain of
    /// asset `note` (a note id at CoNETCash, a receipt id at OdexVault).
    struct ExitCertificate {
        uint256 note;
        bytes32 chain;
        uint256 height;
        address holder;
        address receiver;
        uint256 amount;
        uint256 nonce;
    }

    // Exit nonces are tracked 255 to a word; the top bit marks a word as written so that a word
    // pre-written by `_reserveExitNonces` turns the first exit's SSTORE into an update, not a creation.
    uint256 private constant _NONCES_PER_WORD = 255;
    uint256 private constant _WORD_WRITTEN = 1 << 255;
    bytes32 private constant _EXIT_TYPEHASH = keccak256(
        "ExitCertificate(uint256 note,bytes32 chain,uint256 height,address holder,address receiver,uint256 amount,uint256 nonce)"
    );

    DleRegistry private immutable _registry;
    mapping(uint256 id => mapping(uint256 word => uint256 bits)) private _usedExitNonces;

    /// @notice The certificate is for chain `given`, the asset's chain is `expected`.
    error WrongChain(bytes32 expected, bytes32 given);
    /// @notice `amount` is zero or above the asset's outstanding value.
    error InvalidExitAmount(uint256 amount, uint256 outstanding);
    /// @notice The certificate with `nonce` for asset `note` was already used.
    error CertificateUsed(uint256 note, uint256 nonce);

    /// @param name The EIP-712 domain name the archive groups sign under.
    /// @param version The EIP-712 domain version.
    /// @param registry_ The DLE registry that checks group certificates. The inheriting contract
    /// refuses the zero address with the rest of its constructor arguments.
    constructor(string memory name, string memory version, DleRegistry registry_) EIP712(name, version) {
        _registry = registry_;
    }

    /// @notice Whether the exit certificate of asset `note` with `nonce` was used.
    function isExitNonceUsed(uint256 note, uint256 nonce) external view returns (bool) {
        uint256 word = _usedExitNonces[note][nonce / _NONCES_PER_WORD];
        return word & (1 << (nonce % _NONCES_PER_WORD)) != 0;
    }

    /// @notice The DLE chain id of asset `id`.
    function chainOf(uint256 id) external view returns (bytes32) {
        return DleChainId.compute(address(this), id);
    }

    /// @notice The EIP-712 digest the archive group signs for `certificate`.
    function exitDigest(ExitCertificate calldata certificate) public view returns (bytes32) {
        return _hashTypedDataV4(keccak256(abi.encode(_EXIT_TYPEHASH, certificate)));
    }

    /// @dev Checks `certificate` for an asset with `outstanding` value left — its chain, its amount,
    /// its nonce (spent here), then the signatures of every member of epoch `epoch` of the chain's
    /// archive group — and reverts on the first failure. The caller pays out after.
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
        _useExitNonce(id, certificate.nonce);
        _registry.verifyChainCertificate(chain, exitDigest(certificate), epoch, signatures);
    }

    /// @dev Pre-writes asset `id`'s first nonce word, so that whoever writes it first (its first exit)
    /// updates a slot instead of creating one. Worth it where the one who creates the asset should pay.
    function _reserveExitNonces(uint256 id) internal {
        _usedExitNonces[id][0] = _WORD_WRITTEN;
    }

    /// @dev The registry certificates are checked against.
    function _dleRegistry() internal view returns (DleRegistry) {
        return _registry;
    }

    function _useExitNonce(uint256 id, uint256 nonce) private {
        uint256 index = nonce / _NONCES_PER_WORD;
        uint256 bit = 1 << (nonce % _NONCES_PER_WORD);
        uint256 word = _usedExitNonces[id][index];
        if (word & bit != 0) revert CertificateUsed(id, nonce);
        _usedExitNonces[id][index] = word | bit | _WORD_WRITTEN;
    }
}
