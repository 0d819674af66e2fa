// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {IERC5267} from "@openzeppelin/contracts/interfaces/IERC5267.sol";
import {Initializable} from "@openzeppelin/contracts/proxy/utils/Initializable.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {MessageHashUtils} from "@openzeppelin/contracts/utils/cryptography/MessageHashUtils.sol";
import {Math} from "@openzeppelin/contracts/utils/math/Math.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";

/// @title CoNETCash note ledger (the DLE program of one note chain)
/// @notice The one program of a CoNETCash note's DLE chain (DESIGN §5, §6): balances in the note's own
/// units, holder-signed transfers that pay a transfer fee on top, payment authorizations a payee draws
/// on without the holder online, and exits that burn a balance and yield the exit certificate
/// CoNETCash pays out on the mainchain.
///
/// It runs in `dle_vm`, never on the mainchain: the genesis state holds this runtime code with empty
/// storage, and the genesis block's first transaction is `initialize`, sent by the note's CBDC with
/// the terms of the mainchain's `NoteMinted` event; the archive group checks the one against the other.
/// In the VM, `block.number` is the note chain's height, `block.timestamp` the block header's
/// timestamp and `block.chainid` the first 63 bits of the note chain id.
///
/// Signatures. A DLE transaction is signed by its sender (`msg.sender` is the recovered signer), and each
/// user action must be sent by its own signer (`NotSigner`), so a captured message cannot be wrapped in
/// someone else's transaction. The action is also an EIP-712 message signed by the user and checked HERE,
/// inside the program, with `ecrecover` (OpenZeppelin's `ECDSA`, low-s only): every member that
/// re-executes a block — creator, witnesses, validator, archive nodes — checks every signature itself,
/// and a block with a forged or replayed message cannot reach the state root the group signs. The
/// domain is {name "CoNETCash Note", version "1", chainId: the mainchain's chain id,
/// verifyingContract: the CoNETCash contract, salt: the note chain id}: a message signed for one note
/// is void on every other note, and it can never be mistaken for a CoNETCash message (other name, and
/// a salt). Each signer has one strictly sequential nonce for everything they sign; every message has
/// an expiry (valid while `block.timestamp <= expiry`).
///
/// Fees. A transfer or a deduction of `amount` costs the payer `amount + fee`, fee =
/// max(1, ceil(amount × transferFeeBps / 10,000)). The fee is credited at once, in the note's units, to
/// balances: each of the 5 witnesses floor(fee × 10%), the validators' pool address floor(fee × 20%),
/// and the CBDC the rest (its 30% plus every rounding remainder). Fee recipients are holders like any
/// other: they transfer and exit their fees by the same signed paths. Hence, exactly and at all times,
/// Σ balances (fee recipients included) + Σ exited == Σ funded (the face value plus any re-funding).
contract NoteLedger is IERC5267, Initializable {
    /// @notice The number of witnesses of a note chain.
    uint256 public constant WITNESSES = 5;
    /// @notice Each witness's share of a fee, in percent (rounded down).
    uint256 public constant WITNESS_SHARE_PERCENT = 10;
    /// @notice The validators' pool's share of a fee, in percent (rounded down).
    uint256 public constant VALIDATORS_SHARE_PERCENT = 20;
    /// @notice The CBDC's share of a fee, in percent; it also receives every rounding remainder.
    uint256 public constant CBDC_SHARE_PERCENT = 30;
    /// @notice The highest transfer fee a note may be opened with (10%).
    uint256 public constant MAX_TRANSFER_FEE_BPS = 1_000;
    /// @notice The sender of DLE system transactions (dle_vm.transaction.SYSTEM_SENDER): the low 20 bytes
    /// of keccak256("CoNET DLE system transaction"), an address nobody holds a key for. A system
    /// transaction carries no signature; its authority is a proof every member and archive node checks
    /// against its own view before it signs the block (offchain/dle/authority.py).
    address public constant SYSTEM = address(uint160(uint256(keccak256("CoNET DLE system transaction"))));

    /// @notice The terms of a note chain, from the mainchain's `NoteMinted` event and the draw.
    struct Genesis {
        uint256 note; // the CoNETCash token id
        bytes32 chain; // DleChainId.compute(cash, note) on the mainchain
        uint256 mainchainId; // the mainchain's chain id
        address cash; // the CoNETCash contract
        uint256 value; // the face value, in stablecoin units
        address holder; // the first holder: the buyer
        address cbdc; // the issuing CBDC: the chain's creator
        address[5] witnesses;
        address validatorsPool; // the balance the validators' share accrues to
        uint256 transferFeeBps; // governance's TRANSFER_FEE_BPS (5: 0.05%)
    }

    /// @notice What CoNETCash's `exit` takes: field for field its `ExitCertificate`.
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

    /// @notice A payment authorization: `payee` may deduct up to `limit` (fees not counted; they are
    /// charged to the holder on top) until `expiry`, unless revoked.
    struct Authorization {
        address payee;
        uint64 expiry;
        bool revoked;
        uint128 limit;
        uint128 spent;
    }

    // Three slots per exit. Amounts fit 96 bits: every funding is at most type(uint96).max (checked) and
    // a balance never exceeds the funding in force. Heights fit 64 bits (the DLE header's field).
    struct ExitRecord {
        address holder;
        uint64 height;
        address receiver;
        uint96 amount;
        bytes32 exitedBefore;
    }

    // Both totals in one slot: an exit reads and writes it once. Each funding is below 2^96, so the
    // cumulative total reaches 2^128 only after 2^32 re-fundings of the largest note.
    struct Supply {
        uint128 funded;
        uint128 exited;
    }

    uint256 private constant _BPS = 10_000;
    uint256 private constant _PERCENT = 100;
    bytes32 private constant _DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract,bytes32 salt)");
    bytes32 private constant _NAME_HASH = keccak256("CoNETCash Note");
    bytes32 private constant _VERSION_HASH = keccak256("1");
    bytes32 private constant _TRANSFER_TYPEHASH =
        keccak256("Transfer(address holder,address to,uint256 amount,uint256 nonce,uint256 expiry)");
    bytes32 private constant _AUTHORIZE_TYPEHASH =
        keccak256("Authorize(address holder,address payee,uint256 limit,uint256 nonce,uint256 expiry)");
    bytes32 private constant _REVOKE_TYPEHASH =
        keccak256("Revoke(address holder,uint256 authorization,uint256 nonce,uint256 expiry)");
    bytes32 private constant _DEDUCT_TYPEHASH = keccak256(
        "Deduct(address payee,address holder,uint256 authorization,uint256 amount,uint256 nonce,uint256 expiry)"
    );
    bytes32 private constant _DEDUCT_TO_TYPEHASH = keccak256(
        "DeductTo(address payee,address holder,uint256 authorization,address to,uint256 amount,uint256 nonce,uint256 expiry)"
    );
    bytes32 private constant _EXIT_TYPEHASH =
        keccak256("Exit(address holder,address receiver,uint256 amount,uint256 nonce,uint256 expiry)");
    // The mainchain's certificate type (CertifiedExits): the exit history's head is built from its
    // struct hashes, exactly as CertifiedExits builds it from the certificates it pays.
    bytes32 private constant _EXIT_CERTIFICATE_TYPEHASH = keccak256(
        "ExitCertificate(uint256 note,bytes32 chain,uint256 height,address holder,address receiver,uint256 amount,uint256 nonce,bytes32 exitedBefore)"
    );

    uint256 private _note;
    bytes32 private _chain;
    uint256 private _mainchainId;
    address private _cash;
    bytes32 private _domainSeparator;
    address private _cbdc;
    uint16 private _transferFeeBps;
    // Shares the slot of `_cbdc` and `_transferFeeBps`: re-fundings are rare, reading it costs nothing extra.
    uint32 private _refundCount;
    address private _validatorsPool;
    address[5] private _witnesses;
    Supply private _supply;
    uint256 private _exitCount;
    // The head of the exit history: zero before the first exit, then bytes27 of the struct hash of the
    // last exit's certificate (CertifiedExits.ExitHistory), in a bytes32 with its last 5 bytes zero.
    bytes32 private _exitHistory;
    mapping(address account => uint256) private _balances;
    mapping(address signer => uint256) private _nonces;
    mapping(address holder => mapping(uint256 nonce => Authorization)) private _authorizations;
    mapping(uint256 nonce => ExitRecord) private _exits;

    /// @notice The note chain opened: `holder` holds the face value `value`.
    event NoteOpened(uint256 indexed note, bytes32 indexed chain, address indexed holder, uint256 value);
    /// @notice `holder` paid `amount` to `to`, and `fee` on top.
    event Transferred(address indexed holder, address indexed to, uint256 amount, uint256 fee);
    /// @notice `holder` authorized `payee` to deduct up to `limit` until `expiry`; the authorization is
    /// known by `holder` and the nonce it was signed with, `authorization`.
    event Authorized(
        address indexed holder, uint256 indexed authorization, address indexed payee, uint256 limit, uint256 expiry
    );
    /// @notice `payee` deducted `amount` from `holder` under `authorization`; `holder` paid `fee` on top.
    event Deducted(
        address indexed holder, uint256 indexed authorization, address indexed payee, uint256 amount, uint256 fee
    );
    /// @notice `payee` deducted `amount` from `holder` under `authorization` and paid it to `to`;
    /// `holder` paid `fee` on top.
    event DeductedTo(
        address indexed holder,
        uint256 indexed authorization,
        address indexed payee,
        address to,
        uint256 amount,
        uint256 fee
    );
    /// @notice `holder` revoked `authorization`.
    event Revoked(address indexed holder, uint256 indexed authorization);
    // Nothing is indexed on purpose: the data is then exactly the certificate's ABI encoding.
    // slither-disable-start unindexed-event-address
    /// @notice An exit, its fields exactly those of CoNETCash's `ExitCertificate` and in its order: the
    /// log data is `abi.encode(certificate)`, so the certificate's EIP-712 struct hash is
    /// keccak256(EXIT_CERTIFICATE_TYPEHASH ‖ data). `exitedBefore` is the head of the exits before it.
    event Exited(
        uint256 note,
        bytes32 chain,
        uint256 height,
        address holder,
        address receiver,
        uint256 amount,
        uint256 nonce,
        bytes32 exitedBefore
    );
    // slither-disable-end unindexed-event-address
    /// @notice The fully exited note was re-funded on the mainchain: `buyer` holds `amount`.
    event Refunded(address indexed buyer, uint256 amount);
    /// @notice Witness `index` (a fee recipient) changed from `previous` to `witness`.
    event WitnessReplaced(uint256 indexed index, address indexed previous, address indexed witness);

    /// @notice An address that must be set is zero.
    error ZeroAddress();
    /// @notice The note chain id is not the one CoNETCash derives for this note: `expected`.
    error WrongChain(bytes32 expected, bytes32 chain);
    /// @notice The VM runs under CHAINID `chainid`, not the one of the note chain (`expected`).
    error ForeignChain(uint256 expected, uint256 chainid);
    /// @notice A face value or re-funding is zero or above type(uint96).max.
    error InvalidValue(uint256 value);
    /// @notice The transfer fee is above MAX_TRANSFER_FEE_BPS.
    error InvalidTransferFee(uint256 bps);
    /// @notice `caller` is not the note's CBDC (the chain's creator).
    error NotCreator(address caller);
    /// @notice `caller` is not SYSTEM: only a system transaction may call this.
    error NotSystem(address caller);
    /// @notice The re-funding is number `index`, the next one is number `expected`.
    error RefundOutOfOrder(uint256 expected, uint256 index);
    /// @notice The signature is malformed or not `signer`'s over this message on this note chain.
    error InvalidSignature(address signer);
    /// @notice The message expired at `expiry`; the block's timestamp is `timestamp`.
    error Expired(uint256 expiry, uint256 timestamp);
    /// @notice The DLE transaction was sent by `caller`, the message is `signer`'s: only its signer sends it.
    error NotSigner(address caller, address signer);
    /// @notice `signer`'s next nonce is `expected`, the message carries `nonce`.
    error InvalidNonce(address signer, uint256 expected, uint256 nonce);
    /// @notice An amount is zero.
    error ZeroAmount();
    /// @notice Funds cannot be sent to `receiver` (the zero address, or this program).
    error InvalidReceiver(address receiver);
    /// @notice `holder` holds `balance`, less than `amount` plus `fee`.
    error InsufficientBalance(address holder, uint256 balance, uint256 amount, uint256 fee);
    /// @notice `holder` holds nothing on this chain: an authorization would only take storage.
    error NothingToAuthorize(address holder);
    /// @notice `holder` signed no authorization with nonce `authorization`.
    error UnknownAuthorization(address holder, uint256 authorization);
    /// @notice `holder` revoked `authorization`.
    error AuthorizationRevoked(address holder, uint256 authorization);
    /// @notice `holder`'s `authorization` expired at `expiry`.
    error AuthorizationExpired(address holder, uint256 authorization, uint256 expiry);
    /// @notice `amount` is above the `remaining` limit of `holder`'s `authorization`.
    error OverLimit(address holder, uint256 authorization, uint256 remaining, uint256 amount);
    /// @notice A re-funding needs every balance at zero; `outstanding` is still held.
    error NotFullyExited(uint256 outstanding);
    /// @notice No exit has certificate nonce `nonce` yet.
    error UnknownExit(uint256 nonce);
    /// @notice There is no witness `index` (there are WITNESSES).
    error InvalidWitnessIndex(uint256 index);

    // ---------------------------------------------------------------- genesis and the creator

    /// @notice Opens the note chain with `genesis`: the first holder holds the face value. Called once,
    /// by the CBDC, in the genesis block; the archive group checks every field against the mainchain's
    /// `NoteMinted` event and the draw. Refuses a chain id other than the one CoNETCash derives for the
    /// note, and a VM whose CHAINID is not that chain's.
    function initialize(Genesis calldata genesis) external initializer {
        if (msg.sender != genesis.cbdc) revert NotCreator(msg.sender);
        if (
            genesis.cash == address(0) || genesis.holder == address(0) || genesis.cbdc == address(0)
                || genesis.validatorsPool == address(0)
        ) revert ZeroAddress();
        for (uint256 i = 0; i < WITNESSES; ++i) {
            if (genesis.witnesses[i] == address(0)) revert ZeroAddress();
        }
        if (genesis.value == 0 || genesis.value > type(uint96).max) revert InvalidValue(genesis.value);
        if (genesis.transferFeeBps > MAX_TRANSFER_FEE_BPS) revert InvalidTransferFee(genesis.transferFeeBps);
        bytes32 expected = keccak256(abi.encode(genesis.mainchainId, genesis.cash, genesis.note));
        if (genesis.chain != expected) revert WrongChain(expected, genesis.chain);
        // dle_vm's CHAINID: the chain id's first 8 bytes with the top bit cleared.
        uint256 vmChainId = (uint256(genesis.chain) >> 192) & (type(uint64).max >> 1);
        if (block.chainid != vmChainId) revert ForeignChain(vmChainId, block.chainid);

        _note = genesis.note;
        _chain = genesis.chain;
        _mainchainId = genesis.mainchainId;
        _cash = genesis.cash;
        _domainSeparator = keccak256(
            abi.encode(_DOMAIN_TYPEHASH, _NAME_HASH, _VERSION_HASH, genesis.mainchainId, genesis.cash, genesis.chain)
        );
        _cbdc = genesis.cbdc;
        // At most MAX_TRANSFER_FEE_BPS (checked above): fits 16 bits.
        _transferFeeBps = uint16(genesis.transferFeeBps);
        _validatorsPool = genesis.validatorsPool;
        _witnesses = genesis.witnesses;
        // At most type(uint96).max (checked above).
        _supply.funded = uint128(genesis.value);
        _balances[genesis.holder] = genesis.value;
        emit NoteOpened(genesis.note, genesis.chain, genesis.holder, genesis.value);
    }

    /// @notice Re-funds the note to `buyer` after CoNETCash re-funded it from the pool: the `index`-th
    /// (from 0) `NoteRefunded` event of this note, for `buyer` and `amount`. Only a system transaction may
    /// send it: no key carries this authority, so every member and archive node accepts the block only
    /// when its own mirror of the mainchain shows that event, and this program numbers the re-fundings
    /// so each event is applied once, in order. Needs every balance at zero (the note fully exited).
    /// Exit nonces continue where they were.
    function refund(uint256 index, address buyer, uint256 amount) external {
        if (msg.sender != SYSTEM) revert NotSystem(msg.sender);
        uint256 expected = _refundCount;
        if (index != expected) revert RefundOutOfOrder(expected, index);
        if (buyer == address(0)) revert ZeroAddress();
        if (amount == 0 || amount > type(uint96).max) revert InvalidValue(amount);
        Supply memory totals = _supply;
        uint256 outstanding = totals.funded - totals.exited;
        if (outstanding != 0) revert NotFullyExited(outstanding);
        _refundCount = SafeCast.toUint32(expected + 1);
        // At most type(uint96).max (checked above).
        _supply.funded = totals.funded + uint128(amount);
        _balances[buyer] = amount; // every balance is zero (outstanding is 0)
        emit Refunded(buyer, amount);
    }

    /// @notice Makes `witness` witness `index`, the recipient of that witness's fee share from now on,
    /// when the consensus replaces a witness (DESIGN §5: timeouts). Only a system transaction may send
    /// it, and members and archive nodes accept one only as the computed consequence of the chain's
    /// certified role change (the witnesses here made equal to the certified roles' witnesses). Fees
    /// already credited stay with the previous witness.
    function replaceWitness(uint256 index, address witness) external {
        if (msg.sender != SYSTEM) revert NotSystem(msg.sender);
        if (index >= WITNESSES) revert InvalidWitnessIndex(index);
        if (witness == address(0)) revert ZeroAddress();
        address previous = _witnesses[index];
        _witnesses[index] = witness;
        emit WitnessReplaced(index, previous, witness);
    }

    // ---------------------------------------------------------------- holder-signed actions

    /// @notice Pays `amount` from `holder` to `to`; `holder` pays the transfer fee on top. Sent by
    /// `holder` (every action is sent by its signer); `signature` is `holder`'s EIP-712 signature of
    /// Transfer(holder, to, amount, nonce, expiry), checked here with ecrecover.
    /// @return fee The fee charged on top.
    function transfer(
        address holder,
        address to,
        uint256 amount,
        uint256 nonce,
        uint256 expiry,
        bytes calldata signature
    ) external returns (uint256 fee) {
        _verify(holder, keccak256(abi.encode(_TRANSFER_TYPEHASH, holder, to, amount, nonce, expiry)), signature);
        _useNonce(holder, nonce, expiry);
        fee = _pay(holder, to, amount);
        emit Transferred(holder, to, amount, fee);
    }

    /// @notice Authorizes `payee` to deduct from `holder` up to `limit` in total (fees on top, charged to
    /// `holder`) until `expiry`. The authorization is known by (`holder`, `nonce`). `signature` is
    /// `holder`'s EIP-712 signature of Authorize(holder, payee, limit, nonce, expiry). Only a holder with
    /// a balance may authorize (`NothingToAuthorize`): anyone else's authorizations, free of fees, would
    /// fill every node's state with slots nobody can ever deduct from.
    /// @return authorization The authorization's id: `nonce`.
    function authorize(
        address holder,
        address payee,
        uint256 limit,
        uint256 nonce,
        uint256 expiry,
        bytes calldata signature
    ) external returns (uint256 authorization) {
        _verify(holder, keccak256(abi.encode(_AUTHORIZE_TYPEHASH, holder, payee, limit, nonce, expiry)), signature);
        _useNonce(holder, nonce, expiry);
        if (payee == address(0)) revert ZeroAddress();
        if (limit == 0) revert ZeroAmount();
        if (_balances[holder] == 0) revert NothingToAuthorize(holder);
        authorization = nonce;
        // Clamping changes nothing a payee can do: no balance ever reaches 2^128 (funding < 2^96 each),
        // and block.timestamp is a uint64 in the DLE header.
        _authorizations[holder][authorization] = Authorization({
            payee: payee,
            expiry: uint64(Math.min(expiry, type(uint64).max)),
            revoked: false,
            limit: uint128(Math.min(limit, type(uint128).max)),
            spent: 0
        });
        emit Authorized(holder, authorization, payee, limit, expiry);
    }

    /// @notice Revokes `holder`'s `authorization`; deductions are refused from the next transaction on.
    /// `signature` is `holder`'s EIP-712 signature of Revoke(holder, authorization, nonce, expiry).
    function revoke(address holder, uint256 authorization, uint256 nonce, uint256 expiry, bytes calldata signature)
        external
    {
        _verify(holder, keccak256(abi.encode(_REVOKE_TYPEHASH, holder, authorization, nonce, expiry)), signature);
        _useNonce(holder, nonce, expiry);
        Authorization storage granted = _authorizations[holder][authorization];
        if (granted.payee == address(0)) revert UnknownAuthorization(holder, authorization);
        if (granted.revoked) revert AuthorizationRevoked(holder, authorization);
        granted.revoked = true;
        emit Revoked(holder, authorization);
    }

    /// @notice Pays `amount` from `holder` to the payee of `holder`'s `authorization`, within its limit
    /// and before its expiry, without `holder` online; `holder` pays the transfer fee on top. Signed by
    /// the payee, and sent by the payee: `signature` is the payee's EIP-712
    /// signature of Deduct(payee, holder, authorization, amount, nonce, expiry), `nonce` the payee's.
    /// @return fee The fee charged to `holder` on top.
    function deduct(
        address holder,
        uint256 authorization,
        uint256 amount,
        uint256 nonce,
        uint256 expiry,
        bytes calldata signature
    ) external returns (uint256 fee) {
        address payee = _payeeOf(holder, authorization);
        _verify(
            payee,
            keccak256(abi.encode(_DEDUCT_TYPEHASH, payee, holder, authorization, amount, nonce, expiry)),
            signature
        );
        _useNonce(payee, nonce, expiry);
        _draw(holder, authorization, amount);
        fee = _pay(holder, payee, amount);
        emit Deducted(holder, authorization, payee, amount, fee);
    }

    /// @notice Like `deduct`, but pays `amount` to `to` instead of the payee: the payee settles on the
    /// holder's behalf a payment the holder agreed to elsewhere (an oDEX order book settling a matched
    /// trade: the seller's base to the buyer, the buyer's quote to the seller). The same limit, expiry
    /// and revocation checks; `holder` pays the same fee on top, split the same way. `signature` is the
    /// payee's EIP-712 signature of DeductTo(payee, holder, authorization, to, amount, nonce, expiry),
    /// `nonce` the payee's (one sequence with its `deduct`s).
    /// @return fee The fee charged to `holder` on top.
    function deductTo(
        address holder,
        uint256 authorization,
        address to,
        uint256 amount,
        uint256 nonce,
        uint256 expiry,
        bytes calldata signature
    ) external returns (uint256 fee) {
        address payee = _payeeOf(holder, authorization);
        _verify(
            payee,
            keccak256(abi.encode(_DEDUCT_TO_TYPEHASH, payee, holder, authorization, to, amount, nonce, expiry)),
            signature
        );
        _useNonce(payee, nonce, expiry);
        _draw(holder, authorization, amount);
        fee = _pay(holder, to, amount);
        emit DeductedTo(holder, authorization, payee, to, amount, fee);
    }

    /// @notice Burns `amount` of `holder`'s balance for payment to `receiver` on the mainchain. No fee
    /// here: CoNETCash takes the exit fee when it pays the certificate. The exit gets the note chain's
    /// next certificate nonce (0, 1, 2, ...) and the head of the exits before it (`exitedBefore`, see
    /// `exitHistory`), is recorded (`exitOf`) and emitted as `Exited`. The mainchain pays the exits of
    /// a chain in this order only.
    /// `signature` is `holder`'s EIP-712 signature of Exit(holder, receiver, amount, nonce, expiry).
    /// @return certificate The exit's certificate nonce.
    function exit(
        address holder,
        address receiver,
        uint256 amount,
        uint256 nonce,
        uint256 expiry,
        bytes calldata signature
    ) external returns (uint256 certificate) {
        _verify(holder, keccak256(abi.encode(_EXIT_TYPEHASH, holder, receiver, amount, nonce, expiry)), signature);
        _useNonce(holder, nonce, expiry);
        if (amount == 0) revert ZeroAmount();
        if (receiver == address(0)) revert InvalidReceiver(receiver);
        _debit(holder, amount, 0);
        // amount <= a balance < 2^96 (checked by _debit); the exited total stays below funded.
        _supply.exited += uint128(amount);
        certificate = _recordExit(holder, receiver, amount);
    }

    // ---------------------------------------------------------------- views

    /// @notice What `account` holds (fee recipients' accrued fees included).
    function balanceOf(address account) external view returns (uint256) {
        return _balances[account];
    }

    /// @notice The nonce `signer`'s next message must carry.
    function nonces(address signer) external view returns (uint256) {
        return _nonces[signer];
    }

    /// @notice The fee on a transfer or deduction of `amount`: ceil(amount × bps / 10,000), at least 1
    /// unit on a non-zero amount.
    function feeOf(uint256 amount) public view returns (uint256 fee) {
        if (amount == 0) return 0;
        fee = Math.max(Math.mulDiv(amount, _transferFeeBps, _BPS, Math.Rounding.Ceil), 1);
    }

    /// @notice How `fee` is credited: `cbdc` to the CBDC (30% and every remainder), `eachWitness` to
    /// each of the 5 witnesses, `validators` to the validators' pool. cbdc + 5 × eachWitness + validators
    /// == fee exactly.
    function feeSplit(uint256 fee) public pure returns (uint256 cbdc, uint256 eachWitness, uint256 validators) {
        eachWitness = Math.mulDiv(fee, WITNESS_SHARE_PERCENT, _PERCENT);
        validators = Math.mulDiv(fee, VALIDATORS_SHARE_PERCENT, _PERCENT);
        // The shares are rounded down, so together they are at most 5 × 10% + 20% of fee.
        unchecked {
            cbdc = fee - WITNESSES * eachWitness - validators;
        }
    }

    /// @notice The note's totals: `funded` (the face value plus re-fundings), `exited` (burned by exits)
    /// and `outstanding` = funded − exited, which equals the sum of all balances.
    function supply() external view returns (uint256 funded, uint256 exited, uint256 outstanding) {
        Supply memory totals = _supply;
        return (totals.funded, totals.exited, totals.funded - totals.exited);
    }

    /// @notice The sum of all balances, fee recipients' included: funded − exited. Fees are credited to
    /// balances at once, so no fee is held anywhere else (accrued fees = the recipients' balances).
    function totalBalances() external view returns (uint256) {
        Supply memory totals = _supply;
        return totals.funded - totals.exited;
    }

    /// @notice The number of re-fundings applied so far: the index the next `refund` must carry.
    function refundCount() external view returns (uint256) {
        return _refundCount;
    }

    /// @notice The number of exits so far: the certificate nonce the next exit gets.
    function exitCount() external view returns (uint256) {
        return _exitCount;
    }

    /// @notice The next exit's certificate nonce and the `exitedBefore` it will carry: the head of the
    /// exit history, which CertifiedExits holds too once it has paid every exit so far.
    function exitHistory() external view returns (uint256 next, bytes32 exitedBefore) {
        return (_exitCount, _exitHistory);
    }

    /// @notice The exit certificate of the exit with certificate nonce `nonce`.
    function exitOf(uint256 nonce) external view returns (ExitCertificate memory) {
        if (nonce >= _exitCount) revert UnknownExit(nonce);
        ExitRecord memory record = _exits[nonce];
        return ExitCertificate(
            _note, _chain, record.height, record.holder, record.receiver, record.amount, nonce, record.exitedBefore
        );
    }

    /// @notice `holder`'s authorization `authorization` (all zero if there is none).
    function authorizationOf(address holder, uint256 authorization) external view returns (Authorization memory) {
        return _authorizations[holder][authorization];
    }

    /// @notice The fee recipients: the CBDC, the witnesses and the validators' pool.
    function roles() external view returns (address cbdc, address[5] memory witnesses, address validatorsPool) {
        return (_cbdc, _witnesses, _validatorsPool);
    }

    /// @notice The note this chain carries, and its transfer fee.
    function noteTerms()
        external
        view
        returns (uint256 note, bytes32 chain, uint256 mainchainId, address cash, uint256 transferFeeBps)
    {
        return (_note, _chain, _mainchainId, _cash, _transferFeeBps);
    }

    /// @notice The EIP-712 domain separator users sign under.
    function domainSeparator() external view returns (bytes32) {
        return _domainSeparator;
    }

    /// @inheritdoc IERC5267
    function eip712Domain()
        external
        view
        returns (
            bytes1 fields,
            string memory name,
            string memory version,
            uint256 chainId,
            address verifyingContract,
            bytes32 salt,
            uint256[] memory extensions
        )
    {
        // name, version, chainId, verifyingContract, salt.
        return (hex"1f", "CoNETCash Note", "1", _mainchainId, _cash, _chain, new uint256[](0));
    }

    // ---------------------------------------------------------------- internals

    /// @dev Refuses unless `signature` is `signer`'s over the struct `structHash` in this note's domain.
    function _verify(address signer, bytes32 structHash, bytes calldata signature) private view {
        // The message's signer must also be the DLE transaction's sender. Anyone else wrapping a captured
        // message in a transaction of his own would spend the message's nonce but not the signer's DLE
        // nonce, and the signer's own transaction carrying it would then revert: one key, one sender, and
        // its two nonces move together (offchain/dle/note.py NoteSigner).
        if (msg.sender != signer) revert NotSigner(msg.sender, signer);
        bytes32 digest = MessageHashUtils.toTypedDataHash(_domainSeparator, structHash);
        // The error's argument (a bad length or s) is of no use: every failure is InvalidSignature.
        // slither-disable-next-line unused-return
        (address recovered, ECDSA.RecoverError error,) = ECDSA.tryRecoverCalldata(digest, signature);
        // tryRecover never returns NoError with the zero address, so a zero signer never verifies.
        if (error != ECDSA.RecoverError.NoError || recovered != signer) revert InvalidSignature(signer);
    }

    /// @dev Refuses an expired message or any nonce but `signer`'s next; consumes it.
    function _useNonce(address signer, uint256 nonce, uint256 expiry) private {
        if (block.timestamp > expiry) revert Expired(expiry, block.timestamp);
        uint256 expected = _nonces[signer];
        if (nonce != expected) revert InvalidNonce(signer, expected, nonce);
        _nonces[signer] = expected + 1;
    }

    /// @dev The payee of `holder`'s `authorization`; refuses an authorization that was never granted.
    function _payeeOf(address holder, uint256 authorization) private view returns (address payee) {
        payee = _authorizations[holder][authorization].payee;
        if (payee == address(0)) revert UnknownAuthorization(holder, authorization);
    }

    /// @dev Counts `amount` against `holder`'s `authorization`: refused once revoked, after its expiry,
    /// or beyond what its limit has left.
    function _draw(address holder, uint256 authorization, uint256 amount) private {
        Authorization storage granted = _authorizations[holder][authorization];
        if (granted.revoked) revert AuthorizationRevoked(holder, authorization);
        uint64 expiry = granted.expiry;
        if (block.timestamp > expiry) revert AuthorizationExpired(holder, authorization, expiry);
        uint128 spent = granted.spent;
        uint256 remaining = granted.limit - spent;
        if (amount > remaining) revert OverLimit(holder, authorization, remaining, amount);
        // spent + amount <= limit < 2^128.
        granted.spent = spent + uint128(amount);
    }

    /// @dev Moves `amount` from `from` to `to` and charges `from` the fee on top, credited to its
    /// recipients: the sum of balances is unchanged.
    function _pay(address from, address to, uint256 amount) private returns (uint256 fee) {
        if (amount == 0) revert ZeroAmount();
        if (to == address(0) || to == address(this)) revert InvalidReceiver(to);
        fee = feeOf(amount);
        _debit(from, amount, fee);
        _balances[to] += amount;
        (uint256 cbdcShare, uint256 eachWitness, uint256 validators) = feeSplit(fee);
        _balances[_cbdc] += cbdcShare;
        if (eachWitness != 0) {
            for (uint256 i = 0; i < WITNESSES; ++i) {
                _balances[_witnesses[i]] += eachWitness;
            }
        }
        if (validators != 0) _balances[_validatorsPool] += validators;
    }

    /// @dev Gives the exit of `amount` from `holder` to `receiver` the next nonce and the history's head,
    /// records and emits it, and moves the head on to it.
    function _recordExit(address holder, address receiver, uint256 amount) private returns (uint256 certificate) {
        certificate = _exitCount++;
        bytes32 exitedBefore = _exitHistory;
        // block.number is the DLE height, a uint64 in the header; amount < 2^96 (checked by the caller's
        // _debit): the casts cannot truncate.
        _exits[certificate] = ExitRecord(holder, uint64(block.number), receiver, uint96(amount), exitedBefore);
        bytes32 structHash = keccak256(
            abi.encode(
                _EXIT_CERTIFICATE_TYPEHASH,
                _note,
                _chain,
                block.number,
                holder,
                receiver,
                amount,
                certificate,
                exitedBefore
            )
        );
        _exitHistory = bytes32(bytes27(structHash));
        emit Exited(_note, _chain, block.number, holder, receiver, amount, certificate, exitedBefore);
    }

    /// @dev Takes `amount + fee` from `holder`'s balance, refusing more than it holds.
    function _debit(address holder, uint256 amount, uint256 fee) private {
        uint256 balance = _balances[holder];
        // Compared without adding, so no amount overflows into a bogus pass.
        if (amount > balance || fee > balance - amount) revert InsufficientBalance(holder, balance, amount, fee);
        unchecked {
            // amount + fee <= balance, checked just above.
            _balances[holder] = balance - amount - fee;
        }
    }
}
