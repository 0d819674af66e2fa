// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @title A note-like ledger for the DLE VM's differential test
/// @notice Not a project contract: a program that exercises what two EVM engines could disagree on —
/// mappings, reverts with data, panics, out-of-gas halts, events with indexed topics, storage cleared
/// (gas refunds), transient storage, nested calls that fail inside a successful transaction, contract
/// creation and same-transaction self-destruction, and the block environment.
contract DleLedger {
    mapping(address holder => uint256) public balanceOf;
    mapping(address owner => mapping(address spender => uint256)) public allowance;
    uint256 public totalSupply;
    uint256 public transfers;
    /// @notice Set by the genesis state: slot 4.
    address public issuer;

    event Transfer(address indexed from, address indexed to, uint256 value);
    event Approval(address indexed owner, address indexed spender, uint256 value);
    event Closed(address indexed holder, uint256 value);
    event Spawned(address indexed child, bytes32 indexed salt);
    event Caught(uint256 depth, bytes reason);

    error NotIssuer(address caller);
    error InsufficientBalance(address holder, uint256 balance, uint256 needed);

    function mint(address to, uint256 amount) external {
        if (msg.sender != issuer) revert NotIssuer(msg.sender);
        balanceOf[to] += amount;
        totalSupply += amount;
        emit Transfer(address(0), to, amount);
    }

    function transfer(address to, uint256 amount) external returns (bool) {
        _move(msg.sender, to, amount);
        return true;
    }

    function approve(address spender, uint256 amount) external returns (bool) {
        allowance[msg.sender][spender] = amount;
        emit Approval(msg.sender, spender, amount);
        return true;
    }

    /// @notice Underflows (panic 0x11) when the allowance is short.
    function transferFrom(address from, address to, uint256 amount) external returns (bool) {
        allowance[from][msg.sender] -= amount;
        _move(from, to, amount);
        return true;
    }

    /// @notice Clears the caller's balance and allowances to `spenders`: the storage-clearing path.
    function close(address[] calldata spenders) external returns (uint256 value) {
        value = balanceOf[msg.sender];
        delete balanceOf[msg.sender];
        for (uint256 i = 0; i < spenders.length; i++) {
            delete allowance[msg.sender][spenders[i]];
        }
        totalSupply -= value;
        emit Closed(msg.sender, value);
    }

    /// @notice Burns gas in a loop: halts out of gas when `rounds` is large for the gas given.
    function spin(uint256 rounds) external returns (bytes32 h) {
        for (uint256 i = 0; i < rounds; i++) {
            h = keccak256(abi.encode(h, i));
        }
        transfers += 1;
    }

    /// @notice Increments a transient counter: 1 in every transaction if transient storage is reset.
    function bump() external returns (uint256 v) {
        assembly {
            v := add(tload(0), 1)
            tstore(0, v)
        }
        if (v > 1) transfers += 100;
    }

    /// @notice Recursion through external calls; the innermost call fails when `failAt` is reached and
    /// the failure is caught one level up, so a successful transaction holds a reverted frame.
    function nest(uint256 depth, uint256 failAt) external returns (uint256) {
        if (msg.sender != address(this)) transfers += 1;
        if (depth == failAt) revert InsufficientBalance(msg.sender, depth, failAt);
        if (depth == 0) return 0;
        balanceOf[address(uint160(depth))] += 1;
        try this.nest(depth - 1, failAt) returns (uint256 r) {
            return r + 1;
        } catch (bytes memory reason) {
            emit Caught(depth, reason);
            return 0;
        }
    }

    /// @notice CREATE2 a child; the same salt again collides and reverts.
    function spawn(bytes32 salt) external returns (address child) {
        child = address(new DleChild{salt: salt}());
        emit Spawned(child, salt);
    }

    /// @notice Creates a child and destroys it in the same transaction (EIP-6780: it is deleted).
    function spawnAndDestroy(bytes32 salt) external {
        DleChild child = new DleChild{salt: salt}();
        child.destroy();
    }

    /// @notice Calls a child's `destroy` (outside its creating transaction: it survives, EIP-6780).
    function destroyChild(DleChild child) external {
        child.destroy();
    }

    function env()
        external
        view
        returns (uint256, uint256, uint256, address, uint256, uint256, uint256, uint256, uint256, address, uint256)
    {
        return (
            block.number,
            block.timestamp,
            block.chainid,
            block.coinbase,
            block.gaslimit,
            block.basefee,
            block.prevrandao,
            block.blobbasefee,
            tx.gasprice,
            tx.origin,
            address(this).balance
        );
    }

    function hashOf(uint256 number) external view returns (bytes32) {
        return blockhash(number);
    }

    function _move(address from, address to, uint256 amount) private {
        uint256 balance = balanceOf[from];
        if (balance < amount) revert InsufficientBalance(from, balance, amount);
        unchecked {
            balanceOf[from] = balance - amount;
        }
        balanceOf[to] += amount;
        transfers += 1;
        emit Transfer(from, to, amount);
    }
}

contract DleChild {
    /// @notice The ledger that created it, so a child's address depends on the salt alone.
    address public owner;
    uint256 public pings;

    constructor() {
        owner = msg.sender;
    }

    function ping() external {
        pings += 1;
    }

    function destroy() external {
        selfdestruct(payable(owner));
    }
}
