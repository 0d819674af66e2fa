// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Metadata} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Metadata.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {Math} from "@openzeppelin/contracts/utils/math/Math.sol";
import {CertifiedExits} from "./CertifiedExits.sol";
import {DleRegistry} from "./DleRegistry.sol";
import {ParameterKeys, ParameterStore} from "./governance/ParameterStore.sol";
import {DleChainId} from "./libraries/DleChainId.sol";
import {TransientReentrancyGuard} from "./utils/TransientReentrancyGuard.sol";

/// @title oDEX vault
/// @notice The mainchain side of CoNET-oDEX (DESIGN §6): custody of the assets governance lists for
/// trading (`ParameterStore.isOdexAsset`; `address(0)` is the native coin, AVAX). A deposit issues
/// receipts of at most ODEX_RECEIPT_CAP_UNITS whole units each — a larger deposit is split into
/// several — and each receipt's value then lives on its own DLE receipt chain, id
/// `DleChainId.compute(address(vault), receipt)`, where it is traded: whoever holds a balance there
/// after trades exits it, and the receipt chain's archive group certifies the exit. `withdraw` pays
/// that certificate.
///
/// The oDEX fee (ODEX_FEE_BPS, fixed per receipt at deposit and announced in `ReceiptIssued`) is charged
/// per trade on the receipt chains and credited there; the vault charges nothing on deposit or
/// withdrawal: a certificate for `amount` pays exactly `amount`.
///
/// Exit certificates are checked by `CertifiedExits`, shared with CoNETCash, in this contract's EIP-712
/// domain "CoNET oDEX" version 1: a certificate of a note chain is worthless here and vice versa.
contract OdexVault is CertifiedExits, TransientReentrancyGuard {
    using SafeERC20 for IERC20;

    /// @notice A receipt as `receiptOf` returns it.
    struct ReceiptView {
        address asset;
        address depositor;
        uint256 amount;
        uint256 outstanding;
        bytes32 chain;
        uint256 feeBps;
    }

    // Two slots per receipt: what never changes (who, which asset, at what fee) and what a withdrawal
    // updates, so a withdrawal reads two slots and writes one. The asset is an index into `_assets`.
    struct Receipt {
        address depositor;
        uint16 asset;
        uint16 feeBps;
        uint128 amount;
        uint128 outstanding;
    }

    // An asset the vault has taken, its decimals read once at its first deposit.
    struct Asset {
        address token;
        uint8 decimals;
    }

    /// @notice The address that stands for the native coin (AVAX), as in ParameterStore.
    address public constant NATIVE_ASSET = address(0);
    /// @notice The most receipts one deposit is split into; a larger deposit is refused, not truncated.
    uint256 public constant MAX_RECEIPTS_PER_DEPOSIT = 64;
    /// @notice The most decimals an ERC-20 may have: a receipt at the largest cap governance may set
    /// (10^9 whole units) is then below 2^96, what a receipt chain's values hold (NoteLedger's Genesis).
    uint8 public constant MAX_ASSET_DECIMALS = 18;

    uint8 private constant _NATIVE_DECIMALS = 18;

    ParameterStore private immutable _params;

    uint256 private _nextReceipt = 1;
    mapping(uint256 receipt => Receipt) private _receipts;
    Asset[] private _assets; // index + 1 is an asset's id; 0 means "not seen yet"
    mapping(address asset => uint16 id) private _assetIds;
    mapping(uint16 asset => uint256) private _custody;

    /// @notice A constructor argument is the zero address.
    error ZeroAddress();
    /// @notice `asset` is not listed for the oDEX.
    error AssetNotListed(address asset);
    /// @notice `asset` is not an ERC-20 contract with at most MAX_ASSET_DECIMALS decimals.
    error InvalidAsset(address asset);
    /// @notice A deposit of zero.
    error ZeroAmount();
    /// @notice `amount` needs more than MAX_RECEIPTS_PER_DEPOSIT receipts of at most `cap` each.
    error DepositTooLarge(uint256 amount, uint256 cap);
    /// @notice The native value sent, `sent`, is not `expected` (the amount for AVAX, 0 for an ERC-20).
    error NativeValueMismatch(uint256 expected, uint256 sent);
    /// @notice The token delivered `received` where `expected` was sent: fee-on-transfer tokens cannot
    /// be held.
    error TransferShortfall(uint256 expected, uint256 received);
    /// @notice No receipt `receipt` was issued.
    error UnknownReceipt(uint256 receipt);
    /// @notice `receiver` did not accept `amount` of the native coin.
    error NativePaymentFailed(address receiver, uint256 amount);

    /// @notice `owner` deposited `amount` of `asset` into receipt `receipt`, whose value lives on DLE
    /// chain `chain`; trades on that chain pay `feeBps`. A deposit above the cap emits one per receipt.
    event ReceiptIssued(
        uint256 indexed receipt, address indexed asset, address indexed owner, uint256 amount, bytes32 chain, uint256 feeBps
    );
    /// @notice `amount` of receipt `receipt` held by `holder` on its chain was paid to `receiver`, on the
    /// certificate with `nonce`.
    event ReceiptWithdrawn(
        uint256 indexed receipt,
        address indexed holder,
        address indexed receiver,
        address asset,
        uint256 amount,
        uint256 nonce
    );

    /// @param params_ The governance parameter store: the listed assets, the fee and the receipt cap.
    /// @param registry_ The DLE registry that checks exit certificates.
    constructor(ParameterStore params_, DleRegistry registry_) CertifiedExits("CoNET oDEX", "1", registry_) {
        if (address(params_) == address(0) || address(registry_) == address(0)) revert ZeroAddress();
        _params = params_;
    }

    // ---------------------------------------------------------------- traders

    /// @notice Deposits `amount` of `asset` (NATIVE_ASSET: send `amount` as value; an ERC-20: needs an
    /// allowance, exactly `amount` must arrive) and issues receipts to the caller: consecutive ids from
    /// `first`, each of at most `receiptCap(asset)`, all but the last exactly the cap.
    /// @return first The first receipt issued.
    /// @return count How many receipts were issued.
    function deposit(address asset, uint256 amount)
        external
        payable
        nonReentrant
        returns (uint256 first, uint256 count)
    {
        if (!_params.isOdexAsset(asset)) revert AssetNotListed(asset);
        if (amount == 0) revert ZeroAmount();
        bool native = asset == NATIVE_ASSET;
        uint256 expectedValue = native ? amount : 0;
        if (msg.value != expectedValue) revert NativeValueMismatch(expectedValue, msg.value);
        uint16 id = _assetOf(asset);
        uint256 cap = _capOf(_assets[id - 1].decimals);
        count = Math.ceilDiv(amount, cap);
        if (count > MAX_RECEIPTS_PER_DEPOSIT) revert DepositTooLarge(amount, cap);
        // Bounded by 1,000 in the parameter store: the cast cannot truncate.
        uint16 feeBps = uint16(_params.value(ParameterKeys.ODEX_FEE_BPS));

        first = _nextReceipt;
        _nextReceipt = first + count;
        _custody[id] += amount;
        uint256 remaining = amount;
        for (uint256 receipt = first; remaining > 0; ++receipt) {
            uint256 part = Math.min(remaining, cap);
            remaining -= part;
            // `part` is at most the cap, itself below 2^96 (MAX_ASSET_DECIMALS): the cast cannot truncate.
            _receipts[receipt] = Receipt(msg.sender, id, feeBps, uint128(part), uint128(part));
            emit ReceiptIssued(receipt, asset, msg.sender, part, DleChainId.compute(address(this), receipt), feeBps);
        }
        if (!native) _pullExactly(IERC20(asset), amount);
    }

    /// @notice Pays out an exit finalized on a receipt chain. `signatures` are those of every member of
    /// epoch `epoch` of the receipt chain's archive group over the certificate's EIP-712 digest
    /// (`exitDigest`), sorted by signer; `certificate.note` is the receipt id. Pays exactly `amount` of
    /// the receipt's asset to `certificate.receiver`: the oDEX fee was charged per trade on the receipt
    /// chain, nothing is deducted here. Works for receipts of an asset delisted since. A receipt's exits
    /// are paid in nonce order along one exit history (`exitHistoryOf`).
    function withdraw(ExitCertificate calldata certificate, uint256 epoch, bytes calldata signatures)
        external
        nonReentrant
        returns (uint256 amount)
    {
        uint256 receiptId = certificate.note;
        Receipt storage receipt = _receipts[receiptId];
        uint16 id = receipt.asset;
        if (id == 0) revert UnknownReceipt(receiptId);
        _certifyExit(certificate, receipt.outstanding, epoch, signatures);

        amount = certificate.amount;
        // `_certifyExit` checked `amount` <= outstanding, itself a uint128: no underflow, no truncation.
        receipt.outstanding -= uint128(amount);
        _custody[id] -= amount;
        address asset = _assets[id - 1].token;
        address receiver = certificate.receiver;
        emit ReceiptWithdrawn(receiptId, certificate.holder, receiver, asset, amount, certificate.nonce);

        if (asset == NATIVE_ASSET) {
            // A call is how the native coin is paid, with all gas so a contract wallet can receive it; the
            // receiver is the one the archive group certified, and re-entry is refused by the guard.
            // arbitrary-send-eth, missing-zero-check: the receiver is the certified one (the program
            // refuses the zero address as a receiver), and every signature of its group was checked.
            // slither-disable-next-line low-level-calls,arbitrary-send-eth,missing-zero-check
            (bool paid,) = receiver.call{value: amount}("");
            if (!paid) revert NativePaymentFailed(receiver, amount);
        } else {
            IERC20(asset).safeTransfer(receiver, amount);
        }
    }

    // ---------------------------------------------------------------- views

    /// @notice Receipt `receipt` (all zero but `chain` if it was never issued).
    function receiptOf(uint256 receipt) external view returns (ReceiptView memory) {
        Receipt memory held = _receipts[receipt];
        return ReceiptView({
            asset: held.asset == 0 ? address(0) : _assets[held.asset - 1].token,
            depositor: held.depositor,
            amount: held.amount,
            outstanding: held.outstanding,
            chain: DleChainId.compute(address(this), receipt),
            feeBps: held.feeBps
        });
    }

    /// @notice The value of receipt `receipt` not yet withdrawn (0 if it was never issued).
    function outstandingOf(uint256 receipt) external view returns (uint256) {
        return _receipts[receipt].outstanding;
    }

    /// @notice The id the next receipt will get; receipts have ids from 1 below it.
    function nextReceipt() external view returns (uint256) {
        return _nextReceipt;
    }

    /// @notice What the vault holds of `asset` for receipts: the sum of their outstanding values.
    function custodyOf(address asset) external view returns (uint256) {
        return _custody[_assetIds[asset]];
    }

    /// @notice The largest receipt a deposit of `asset` would issue now, in its smallest units.
    /// Reverts with InvalidAsset for an ERC-20 without readable decimals (it could not be deposited).
    function receiptCap(address asset) external view returns (uint256) {
        uint16 id = _assetIds[asset];
        return _capOf(id != 0 ? _assets[id - 1].decimals : _readDecimals(asset));
    }

    /// @notice The contracts this one works with.
    function dependencies() external view returns (ParameterStore params, DleRegistry registry) {
        return (_params, _dleRegistry());
    }

    // ---------------------------------------------------------------- internals

    function _assetOf(address asset) private returns (uint16 id) {
        id = _assetIds[asset];
        if (id != 0) return id;
        _assets.push(Asset(asset, _readDecimals(asset)));
        // One id per asset governance ever lists: 65,535 is beyond any listing.
        id = uint16(_assets.length);
        _assetIds[asset] = id;
    }

    function _pullExactly(IERC20 token, uint256 amount) private {
        uint256 before = token.balanceOf(address(this));
        token.safeTransferFrom(msg.sender, address(this), amount);
        uint256 received = token.balanceOf(address(this)) - before;
        if (received != amount) revert TransferShortfall(amount, received);
    }

    /// @dev The receipt cap in force, in smallest units of an asset with `decimals`.
    function _capOf(uint8 decimals) private view returns (uint256) {
        return _params.value(ParameterKeys.ODEX_RECEIPT_CAP_UNITS) * 10 ** decimals;
    }

    function _readDecimals(address asset) private view returns (uint8) {
        if (asset == NATIVE_ASSET) return _NATIVE_DECIMALS;
        if (asset.code.length == 0) revert InvalidAsset(asset);
        try IERC20Metadata(asset).decimals() returns (uint8 decimals) {
            if (decimals > MAX_ASSET_DECIMALS) revert InvalidAsset(asset);
            return decimals;
        } catch {
            revert InvalidAsset(asset);
        }
    }
}
