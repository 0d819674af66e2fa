// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {ERC721} from "@openzeppelin/contracts/token/ERC721/ERC721.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {Math} from "@openzeppelin/contracts/utils/math/Math.sol";
import {CertifiedExits} from "./CertifiedExits.sol";
import {DleRegistry} from "./DleRegistry.sol";
import {ParameterKeys, ParameterStore} from "./governance/ParameterStore.sol";
import {ICoNETToken} from "./interfaces/ICoNETToken.sol";
import {IPriceOracle} from "./interfaces/IPriceOracle.sol";
import {IStaking} from "./interfaces/IStaking.sol";
import {DleChainId} from "./libraries/DleChainId.sol";
import {Role} from "./types/Role.sol";
import {TransientReentrancyGuard} from "./utils/TransientReentrancyGuard.sol";

/// @title CoNETCash
/// @notice Stablecoin-backed e-cash notes (DESIGN §4, §6). A buyer deposits at most NOTE_CAP_UNITS of a
/// backing stablecoin. A withdrawn note of that stablecoin waiting in the pool is re-funded and handed
/// over at once; otherwise the deposit waits as an order until a staked CBDC fills it, burning CoNET
/// worth CBDC_BURN_BPS of the note, and the note NFT is minted. Its value then lives on its own DLE
/// chain; this contract holds the backing and pays it out on exit certificates signed by every member
/// of the note's archive group.
///
/// Token ids are shared by orders and notes: an order becomes the note of the same id when filled.
///
/// The note's CBDC is paid by pull, not push: an exit credits its fee and the value it may claim
/// CoNET re-issue for, and `claim` pays both. An exit therefore never depends on the CBDC's address
/// accepting a transfer, nor on a fresh oracle price; the re-issue is valued when it is claimed.
///
/// Exit certificates are checked by `CertifiedExits`, shared with the oDEX vault; this contract's
/// EIP-712 domain is "CoNETCash" version 1.
contract CoNETCash is ERC721, CertifiedExits, TransientReentrancyGuard {
    using SafeERC20 for IERC20;

    /// @notice Where an id stands.
    enum Status {
        None,
        Ordered,
        Live,
        Pooled
    }

    /// @notice A note or order as the views return it.
    struct NoteView {
        Status status;
        address stablecoin;
        uint256 faceValue;
        uint256 outstanding;
        address party; // the buyer while ordered, the issuing CBDC once live
        uint256 stamp; // the order's timestamp while ordered, the block the note was minted or re-funded in
        bool reissuable; // whether exits earn the CBDC a CoNET re-issue (the note was backed by a burn)
        uint256 burnBps; // the burn rate its CBDC paid at fill, and the rate of its re-issue (0: none)
        uint256 exitFeeBps; // fixed when the note was issued or re-funded
        bytes32 chain;
    }

    /// @notice What a CBDC has earned in one stablecoin and not claimed: fees, and the value (in the
    /// stablecoin's units) of the CoNET to re-issue — the burn rate of each note times what was exited.
    struct Earnings {
        uint128 fees;
        uint128 reissueValue;
    }

    // One slot per note: its whole life is read and written with one SLOAD and one SSTORE. Amounts
    // fit 80 bits: the largest note the parameter bounds allow is 10^6 units of an 18-decimal coin.
    // The exit fee is fixed when the note is issued, so a holder knows what exiting will cost; the
    // burn rate is the one its CBDC paid, so the re-issue restores exactly that rate (0: the note
    // was re-funded from the pool, nothing was burned for it, nothing is re-issued).
    struct Note {
        uint16 coin;
        Status status;
        uint16 burnBps;
        uint16 exitFeeBps;
        uint80 outstanding;
        uint80 faceValue;
        uint40 stamp;
    }

    // The coin's address and its total backing share a slot: an exit updates it with one write.
    // 96 bits hold 79 billion whole units of an 18-decimal coin; `buy` refuses to go beyond.
    struct Coin {
        address token;
        uint96 backing;
    }

    /// @notice An archive group's certificate that `cbdc` is the CBDC the roulette drew for order
    /// `id`; `selection` is the hash of that draw's record in the group's Selection Chain.
    struct CbdcDraw {
        uint256 id;
        address cbdc;
        bytes32 selection;
        uint256 group;
    }

    bytes32 private constant _CBDC_DRAW_TYPEHASH =
        keccak256("CbdcDraw(uint256 id,address cbdc,bytes32 selection,uint256 group)");
    uint256 private constant _BPS = 10_000;
    uint256 private constant _CONET_DECIMALS = 18;

    ICoNETToken private immutable _conet;
    IPriceOracle private immutable _oracle;
    IStaking private immutable _staking;
    ParameterStore private immutable _params;

    uint256 private _nextId = 1;
    mapping(uint256 id => Note) private _notes;
    mapping(uint256 id => address) private _parties;

    Coin[] private _coins; // index + 1 is a coin's id; 0 means "not seen yet"
    mapping(address token => uint16 coin) private _coinIds;
    mapping(uint16 coin => uint256) private _openOrderValue;
    mapping(uint16 coin => uint256[] ids) private _pool;
    mapping(address cbdc => mapping(uint16 coin => Earnings)) private _earnings;

    /// @notice A constructor argument is the zero address.
    error ZeroAddress();
    /// @notice `stablecoin` is not listed to back notes.
    error StablecoinNotListed(address stablecoin);
    /// @notice `amount` is zero or above the note cap `cap`.
    error InvalidAmount(uint256 amount, uint256 cap);
    /// @notice The stablecoin delivered `received` where `expected` was sent: fee-on-transfer tokens
    /// cannot back notes.
    error TransferShortfall(uint256 expected, uint256 received);
    /// @notice `id` is not an open order.
    error OrderNotOpen(uint256 id);
    /// @notice `caller` is not a CBDC with the minimum stake.
    error NotStakedCbdc(address caller);
    /// @notice The archive group drew `drawn`, not `caller`, to fill order `id`.
    error NotDrawnCbdc(uint256 id, address drawn, address caller);
    /// @notice The draw for order `id` names group `given`; the order's chain is kept by group `expected`.
    error WrongDrawGroup(uint256 id, uint256 given, uint256 expected);
    /// @notice Only the buyer may cancel order `id`.
    error NotBuyer(uint256 id, address caller);
    /// @notice Order `id` may be cancelled from `deadline` on.
    error OrderNotExpired(uint256 id, uint256 deadline);
    /// @notice `id` is not a live note.
    error NoteNotLive(uint256 id);
    /// @notice Nothing to claim in `stablecoin`.
    error NothingToClaim(address stablecoin);
    /// @notice The deposits and notes of `stablecoin` would exceed what this contract can account for.
    error BackingLimitReached(address stablecoin);

    /// @notice `buyer` deposited `amount` of `stablecoin`; the order waits for a CBDC until `deadline`.
    event OrderPlaced(uint256 indexed id, address indexed buyer, address indexed stablecoin, uint256 amount);
    /// @notice `buyer` took back the deposit of unfilled order `id`.
    event OrderCancelled(uint256 indexed id, address indexed buyer, uint256 amount);
    /// @notice CBDC `issuer` filled order `id`: note `id` is minted for `buyer`, `burned` CoNET burned.
    /// `selection` is the Selection Chain record of the roulette draw that picked the CBDC.
    /// The DLE mirror starts the note's chain from this event.
    event NoteMinted(
        uint256 indexed id,
        address indexed buyer,
        address indexed issuer,
        address stablecoin,
        uint256 faceValue,
        uint256 burned,
        bytes32 selection,
        bytes32 chain
    );
    /// @notice Pooled note `id` was re-funded with `amount` and assigned to `buyer`.
    event NoteRefunded(uint256 indexed id, address indexed buyer, address indexed stablecoin, uint256 amount);
    /// @notice `amount` of note `id` was exited: `payout` to `receiver`, `fee` credited to the CBDC.
    event NoteExited(
        uint256 indexed id, address indexed holder, address indexed receiver, uint256 amount, uint256 fee, uint256 nonce
    );
    /// @notice Note `id` is fully exited and waits in the pool of its stablecoin.
    event NotePooled(uint256 indexed id, address indexed stablecoin);
    /// @notice `cbdc` claimed `fees` of `stablecoin` and `reissued` CoNET; the cap withheld `withheld`.
    event EarningsClaimed(
        address indexed cbdc, address indexed stablecoin, uint256 fees, uint256 reissued, uint256 withheld
    );

    /// @param conet_ The CoNET token; this contract needs its re-issuer role.
    /// @param oracle_ USD prices of CoNET and the stablecoins.
    /// @param staking_ Where CBDC stakes are checked.
    /// @param params_ The governance parameter store.
    /// @param registry_ The DLE registry that checks exit certificates.
    constructor(
        ICoNETToken conet_,
        IPriceOracle oracle_,
        IStaking staking_,
        ParameterStore params_,
        DleRegistry registry_
    ) ERC721("CoNETCash", "CASH") CertifiedExits("CoNETCash", "1", registry_) {
        if (
            address(conet_) == address(0) || address(oracle_) == address(0) || address(staking_) == address(0)
                || address(params_) == address(0) || address(registry_) == address(0)
        ) revert ZeroAddress();
        _conet = conet_;
        _oracle = oracle_;
        _staking = staking_;
        _params = params_;
    }

    // ---------------------------------------------------------------- buyers

    /// @notice Buys a note of `amount` units of `stablecoin`, pulling the deposit (needs an allowance).
    /// A pooled note of that stablecoin is re-funded and assigned at once; otherwise an order waits
    /// for a CBDC.
    /// @return id The note (if `assigned`) or the order.
    /// @return assigned Whether a pooled note was assigned at once.
    function buy(address stablecoin, uint256 amount) external nonReentrant returns (uint256 id, bool assigned) {
        // The decimals are read where prices are converted; here only listing and cap matter.
        // slither-disable-next-line unused-return
        (bool listed,, uint256 cap) = _params.noteTerms(stablecoin);
        if (!listed) revert StablecoinNotListed(stablecoin);
        if (amount == 0 || amount > cap) revert InvalidAmount(amount, cap);
        uint16 coin = _coinOf(stablecoin);
        // Every open order may become backing: keep their sum within the backing's 96 bits.
        if (_coins[coin - 1].backing + _openOrderValue[coin] + amount > type(uint96).max) {
            revert BackingLimitReached(stablecoin);
        }

        uint256[] storage pool = _pool[coin];
        if (pool.length > 0) {
            id = pool[pool.length - 1];
            pool.pop();
            uint16 exitFee = uint16(_params.value(ParameterKeys.EXIT_FEE_BPS));
            _notes[id] = Note(coin, Status.Live, 0, exitFee, uint80(amount), uint80(amount), uint40(block.number));
            _coins[coin - 1].backing += uint96(amount);
            emit NoteRefunded(id, msg.sender, stablecoin, amount);
            assigned = true;
        } else {
            id = _nextId++;
            _notes[id] = Note(coin, Status.Ordered, 0, 0, uint80(amount), uint80(amount), uint40(block.timestamp));
            _parties[id] = msg.sender;
            // The buyer pays for the nonce word once, not the CBDC's fill nor the first exit.
            _reserveExitNonces(id);
            _openOrderValue[coin] += amount;
            emit OrderPlaced(id, msg.sender, stablecoin, amount);
        }
        _pullExactly(IERC20(stablecoin), amount);
        if (assigned) _safeMint(msg.sender, id);
    }

    /// @notice Cancels the caller's order `id` after the order timeout and refunds the deposit.
    function cancel(uint256 id) external nonReentrant {
        Note memory order = _notes[id];
        if (order.status != Status.Ordered) revert OrderNotOpen(id);
        address buyer = _parties[id];
        if (buyer != msg.sender) revert NotBuyer(id, msg.sender);
        uint256 deadline = _deadline(order);
        if (block.timestamp < deadline) revert OrderNotExpired(id, deadline);

        delete _notes[id];
        delete _parties[id];
        _openOrderValue[order.coin] -= order.faceValue;
        emit OrderCancelled(id, buyer, order.faceValue);
        IERC20(_coins[order.coin - 1].token).safeTransfer(buyer, order.faceValue);
    }

    // ---------------------------------------------------------------- CBDCs

    /// @notice Fills order `draw.id` as the CBDC its archive group drew: burns the caller's CoNET worth
    /// CBDC_BURN_BPS of the note at the oracle price (rounded up; needs an allowance) and mints the note
    /// to the buyer.
    /// @param draw The draw: the order, the CBDC drawn (must be the caller), the Selection Chain record
    /// of the roulette draw (recorded in `NoteMinted`, so anyone can re-run it) and the group that drew.
    /// @param epoch The epoch of `draw.group` that certified the draw.
    /// @param signatures Every member of that epoch over `cbdcDrawDigest(draw)`, sorted by signer.
    function fill(CbdcDraw calldata draw, uint256 epoch, bytes calldata signatures)
        external
        nonReentrant
        returns (uint256 burned)
    {
        uint256 id = draw.id;
        Note memory note = _notes[id];
        if (note.status != Status.Ordered) revert OrderNotOpen(id);
        if (draw.cbdc != msg.sender) revert NotDrawnCbdc(id, draw.cbdc, msg.sender);
        if (!_staking.meetsMinimum(msg.sender, Role.CBDC)) revert NotStakedCbdc(msg.sender);
        uint256 group = _dleRegistry().groupFor(id);
        if (draw.group != group) revert WrongDrawGroup(id, draw.group, group);
        // Only the group that keeps the note's chain drew its CBDC; all of its epoch's members sign.
        _dleRegistry().verifyGroupCertificate(group, _cbdcDrawDigest(draw), epoch, signatures);
        burned = _issue(id, note, draw.selection);
    }

    /// @dev Order `id` (`note`, still ordered) becomes the caller's note: burns its CoNET, then mints
    /// the NFT to the buyer, effects first. A function of its own: with `fill`'s certificate arguments on
    /// the stack, these locals would not fit it.
    function _issue(uint256 id, Note memory note, bytes32 selection) private returns (uint256 burned) {
        Coin storage coin = _coins[note.coin - 1];
        address stablecoin = coin.token;
        // Bounded by 10,000 in the parameter store: the casts cannot truncate.
        note.burnBps = uint16(_params.value(ParameterKeys.CBDC_BURN_BPS));
        burned = _burnFor(stablecoin, note.faceValue, note.burnBps);

        address buyer = _parties[id];
        note.status = Status.Live;
        note.exitFeeBps = uint16(_params.value(ParameterKeys.EXIT_FEE_BPS));
        note.stamp = uint40(block.number);
        _notes[id] = note;
        _parties[id] = msg.sender;
        _openOrderValue[note.coin] -= note.faceValue;
        coin.backing += note.faceValue;
        bytes32 chain = DleChainId.compute(address(this), id);
        emit NoteMinted(id, buyer, msg.sender, stablecoin, note.faceValue, burned, selection, chain);

        if (burned > 0) _conet.burnFrom(msg.sender, burned);
        _safeMint(buyer, id);
    }

    /// @notice Pays the caller's fees in `stablecoin` and re-issues the CoNET its exits earned: each
    /// exit earned its note's burn rate times the amount, valued here at today's oracle price (rounded
    /// down), never above the cap: what the cap withholds is reported and forfeited.
    function claim(address stablecoin) external nonReentrant returns (uint256 fees, uint256 reissued) {
        uint16 coinId = _coinIds[stablecoin];
        Earnings memory earned = coinId == 0 ? Earnings(0, 0) : _earnings[msg.sender][coinId];
        if (earned.fees == 0 && earned.reissueValue == 0) revert NothingToClaim(stablecoin);
        delete _earnings[msg.sender][coinId];
        fees = earned.fees;

        uint256 withheld = 0;
        if (earned.reissueValue > 0) {
            uint256 owed = _conetWorth(stablecoin, earned.reissueValue, Math.Rounding.Floor);
            reissued = Math.min(owed, _conet.reissuable());
            withheld = owed - reissued;
        }
        emit EarningsClaimed(msg.sender, stablecoin, fees, reissued, withheld);
        if (reissued > 0) _conet.reissue(msg.sender, reissued);
        if (fees > 0) IERC20(stablecoin).safeTransfer(msg.sender, fees);
    }

    // ---------------------------------------------------------------- exits

    /// @notice Pays out an exit finalized on a note chain. `signatures` are those of every member of
    /// epoch `epoch` of the note's archive group over the certificate's EIP-712 digest, sorted by
    /// signer. Pays `amount` minus EXIT_FEE_BPS (rounded up) to the receiver and credits the fee and
    /// the re-issue to the note's CBDC. A note exited to zero goes to the pool. The fee is the one in
    /// force when the note was issued (or re-funded).
    function exit(ExitCertificate calldata certificate, uint256 epoch, bytes calldata signatures)
        external
        nonReentrant
        returns (uint256 payout)
    {
        uint256 id = certificate.note;
        Note memory note = _notes[id];
        if (note.status != Status.Live) revert NoteNotLive(id);
        _certifyExit(certificate, note.outstanding, epoch, signatures);

        (address stablecoin, uint256 fee) = _debit(certificate, note);
        payout = certificate.amount - fee;
        if (payout > 0) IERC20(stablecoin).safeTransfer(certificate.receiver, payout);
    }

    // ---------------------------------------------------------------- views

    // incorrect-equality: slither taints every field of a note and every coin id with the timestamp an
    // order is stamped with, so it takes the id and status tests below (`coin == 0`, `status == Live`) for
    // balance or time comparisons. They are exact tests of an id or an enum, in views that move nothing.
    // slither-disable-start incorrect-equality

    /// @notice Note or order `id`.
    function noteOf(uint256 id) external view returns (NoteView memory) {
        Note memory note = _notes[id];
        address stablecoin = note.coin == 0 ? address(0) : _coins[note.coin - 1].token;
        return NoteView({
            status: note.status,
            stablecoin: stablecoin,
            faceValue: note.faceValue,
            outstanding: note.status == Status.Live ? note.outstanding : 0,
            party: _parties[id],
            stamp: note.stamp,
            reissuable: note.burnBps > 0,
            burnBps: note.burnBps,
            exitFeeBps: note.exitFeeBps,
            chain: DleChainId.compute(address(this), id)
        });
    }

    /// @notice The value still backing live note `id` (0 for anything else).
    function outstandingOf(uint256 id) external view returns (uint256) {
        Note memory note = _notes[id];
        return note.status == Status.Live ? note.outstanding : 0;
    }

    /// @notice When order `id` may be cancelled.
    function orderDeadline(uint256 id) external view returns (uint256) {
        Note memory order = _notes[id];
        if (order.status != Status.Ordered) revert OrderNotOpen(id);
        return _deadline(order);
    }

    /// @notice The id the next order will get; orders and notes have ids below it.
    function nextId() external view returns (uint256) {
        return _nextId;
    }

    /// @notice Withdrawn notes of `stablecoin` waiting to be re-funded.
    function poolSize(address stablecoin) external view returns (uint256) {
        uint16 coin = _coinIds[stablecoin];
        return coin == 0 ? 0 : _pool[coin].length;
    }

    /// @notice The sum of outstanding values of live notes of `stablecoin`.
    function backing(address stablecoin) external view returns (uint256) {
        uint16 coin = _coinIds[stablecoin];
        return coin == 0 ? 0 : _coins[coin - 1].backing;
    }

    /// @notice The deposits of `stablecoin` waiting in open orders.
    function openOrderValue(address stablecoin) external view returns (uint256) {
        return _openOrderValue[_coinIds[stablecoin]];
    }

    /// @notice What `cbdc` may claim in `stablecoin`: fees, and the exited value its re-issue is based on.
    function earningsOf(address cbdc, address stablecoin) external view returns (Earnings memory) {
        uint16 coin = _coinIds[stablecoin];
        return coin == 0 ? Earnings(0, 0) : _earnings[cbdc][coin];
    }

    /// @notice The EIP-712 digest an archive group signs to certify the CBDC drawn for an order
    /// (docs/protocols.md "CoNETCash fill").
    function cbdcDrawDigest(CbdcDraw calldata draw) external view returns (bytes32) {
        return _cbdcDrawDigest(draw);
    }


    /// @notice The CoNET a CBDC burns to fill an order of `amount` `stablecoin` at today's prices.
    function burnFor(address stablecoin, uint256 amount) external view returns (uint256) {
        return _burnFor(stablecoin, amount, _params.value(ParameterKeys.CBDC_BURN_BPS));
    }

    /// @notice The contracts this one works with.
    function dependencies()
        external
        view
        returns (ICoNETToken conet, IPriceOracle oracle, IStaking staking, ParameterStore params, DleRegistry registry)
    {
        return (_conet, _oracle, _staking, _params, _dleRegistry());
    }

    // slither-disable-end incorrect-equality

    // ---------------------------------------------------------------- internals

    function _coinOf(address stablecoin) private returns (uint16 coin) {
        coin = _coinIds[stablecoin];
        if (coin != 0) return coin;
        _coins.push(Coin(stablecoin, 0));
        coin = uint16(_coins.length);
        _coinIds[stablecoin] = coin;
    }

    function _cbdcDrawDigest(CbdcDraw calldata draw) private view returns (bytes32) {
        return _hashTypedDataV4(keccak256(abi.encode(_CBDC_DRAW_TYPEHASH, draw)));
    }

    function _pullExactly(IERC20 stablecoin, uint256 amount) private {
        uint256 before = stablecoin.balanceOf(address(this));
        stablecoin.safeTransferFrom(msg.sender, address(this), amount);
        uint256 received = stablecoin.balanceOf(address(this)) - before;
        if (received != amount) revert TransferShortfall(amount, received);
    }

    /// @dev The exit's effects: lowers the note and the backing, credits the CBDC, pools an empty note.
    function _debit(ExitCertificate calldata certificate, Note memory note)
        private
        returns (address stablecoin, uint256 fee)
    {
        uint256 id = certificate.note;
        uint256 amount = certificate.amount;
        fee = Math.mulDiv(amount, note.exitFeeBps, _BPS, Math.Rounding.Ceil);
        // `amount` is at most `outstanding`, itself at most the note cap: the casts cannot truncate.
        note.outstanding -= uint80(amount);
        Coin storage coin = _coins[note.coin - 1];
        coin.backing -= uint96(amount);
        stablecoin = coin.token;
        Earnings storage earned = _earnings[_parties[id]][note.coin];
        earned.fees += uint128(fee);
        if (note.burnBps > 0) earned.reissueValue += uint128(Math.mulDiv(amount, note.burnBps, _BPS));
        emit NoteExited(id, certificate.holder, certificate.receiver, amount, fee, certificate.nonce);

        if (note.outstanding == 0) {
            note.status = Status.Pooled;
            note.burnBps = 0;
            _pool[note.coin].push(id);
            _burn(id);
            emit NotePooled(id, stablecoin);
        }
        _notes[id] = note;
    }

    /// @dev CoNET (18 decimals) worth `value` units of `stablecoin`:
    /// value × price(stablecoin) × 10^18 / (price(CoNET) × 10^decimals).
    /// @dev An order may be cancelled from its timestamp plus the order timeout in force now.
    function _deadline(Note memory order) private view returns (uint256) {
        return uint256(order.stamp) + _params.value(ParameterKeys.ORDER_TIMEOUT);
    }

    /// @dev The CoNET burned for a note of `amount` at `burnBps`: both roundings up, in the protocol's favour.
    function _burnFor(address stablecoin, uint256 amount, uint256 burnBps) private view returns (uint256) {
        uint256 burnValue = Math.mulDiv(amount, burnBps, _BPS, Math.Rounding.Ceil);
        return _conetWorth(stablecoin, burnValue, Math.Rounding.Ceil);
    }

    function _conetWorth(address stablecoin, uint256 value, Math.Rounding rounding) private view returns (uint256) {
        // Recorded when the coin was listed, and kept after a delisting for the notes it still backs.
        uint8 decimals = _params.stablecoinDecimals(stablecoin);
        // The oracle has already refused a stale price; when it was updated is of no further use here.
        // slither-disable-next-line unused-return
        (uint256 coinPrice,) = _oracle.price(stablecoin);
        // slither-disable-next-line unused-return
        (uint256 conetPrice,) = _oracle.price(address(_conet));
        return Math.mulDiv(value * coinPrice, 10 ** _CONET_DECIMALS, conetPrice * 10 ** decimals, rounding);
    }
}
