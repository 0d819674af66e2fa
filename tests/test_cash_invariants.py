"""CoNETCash invariants under random buy / fill / cancel / exit / claim sequences (a hypothesis state
machine), against an exact integer model of the contract.

Every example starts from one chain snapshot of a warmed-up economy — three listed stablecoins (two of
6 decimals, one of 18), per stablecoin one open order, one partly exited live note with a registered
chain, one pooled note, unclaimed CBDC earnings — so that short examples reach deep states: re-funds
from the pool, exits to zero, claims capped by the supply cap, exit fees and burn rates changed by
governance between issue and exit.

After every step, for every stablecoin: the contract's balance is exactly the backing of live notes,
the deposits of open orders and the fees the CBDCs have not claimed; the backing is the sum of the live
notes' outstanding values; the open orders, the pool and the CBDCs' earnings are the model's. Also after
every step: the CoNET supply is the model's and never above the cap, and every balance the step moved
(buyers', receivers', CBDCs') is the model's. At the end of every example every balance is checked, so a
step that moved a balance it should not have fails the example too. The burn of a fill is checked rounded
up and the re-issue of a claim rounded down, against exact rational arithmetic.

Speed: on ape's embedded chain an ape transaction takes ~40 ms and an ape view call ~12 ms, too slow for
200 examples. The machine sends raw signed transactions to the eth-tester backend (~20 ms; a failed one
is sent again through ape so that the test fails with ape's decoded revert) and runs its view calls on
one py-evm state per block (~2 ms). 200 examples of 8 steps run in about a minute and a half.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import pytest
from conftest import (
    CONET_PRICE,
    DOLLAR,
    MIN_STAKE,
    ORDER_TIMEOUT,
    cbdc_draw_digest,
    dle_chain_id,
    exit_digest,
    exit_head,
    genesis_digest,
    group_of,
    group_signatures,
    reverts_with,
    stake,
)
from eth_abi import decode, encode
from eth_account import Account
from eth_tester.backends.pyevm.main import EVMSpoofTransaction, _get_vm_for_block_number
from eth_utils import to_canonical_address, to_checksum_address
from eth_utils.crypto import keccak
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from offchain.chain.deployer import CONET, Role

EXAMPLES = 200
STEPS = 8

CAP = 500_000_000 * CONET
BPS = 10_000
NOTE_CAP_UNITS = 100
GROUPS = 2
EPOCH = 1
MAX_UINT = 2**256 - 1
GAS = 3_000_000
MAX_FEE = 10**10
EXIT_FEE_BPS = b"EXIT_FEE_BPS".ljust(32, b"\x00")
CBDC_BURN_BPS = b"CBDC_BURN_BPS".ljust(32, b"\x00")

# CoNETCash.Status
NONE, ORDERED, LIVE, POOLED = 0, 1, 2, 3


# ---------------------------------------------------------------- a fast path to the backend


@dataclass(frozen=True)
class Fn:
    """One contract function: its name, argument types and result types."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...] = ()

    @functools.cached_property
    def selector(self) -> bytes:
        return keccak(text=f"{self.name}({','.join(self.inputs)})")[:4]

    def data(self, *args: Any) -> bytes:
        return self.selector + encode(list(self.inputs), [getattr(a, "address", a) for a in args])


BALANCE_OF = Fn("balanceOf", ("address",), ("uint256",))
TOTAL_SUPPLY = Fn("totalSupply", (), ("uint256",))
BACKING = Fn("backing", ("address",), ("uint256",))
OPEN_ORDER_VALUE = Fn("openOrderValue", ("address",), ("uint256",))
POOL_SIZE = Fn("poolSize", ("address",), ("uint256",))
EARNINGS_OF = Fn("earningsOf", ("address", "address"), ("(uint128,uint128)",))
NOTE_OF = Fn("noteOf", ("uint256",), ("(uint8,address,uint256,uint256,address,uint256,bool,uint256,uint256,bytes32)",))
OWNER_OF = Fn("ownerOf", ("uint256",), ("address",))
NEXT_ID = Fn("nextId", (), ("uint256",))
IS_NONCE_USED = Fn("isExitNonceUsed", ("uint256", "uint256"), ("bool",))
EXIT_HISTORY = Fn("exitHistoryOf", ("uint256",), ("uint256", "bytes32"))
BUY = Fn("buy", ("address", "uint256"))
FILL = Fn("fill", ("(uint256,address,bytes32,uint256)", "uint256", "bytes"))
CANCEL = Fn("cancel", ("uint256",))
CLAIM = Fn("claim", ("address",))
EXIT = Fn("exit", ("(uint256,bytes32,uint256,address,address,uint256,uint256,bytes32)", "uint256", "bytes"))
SET_PRICE = Fn("setPrice", ("address", "uint256"))
SET_PARAMETER = Fn("setParameter", ("bytes32", "uint256"))
REGISTER_CHAIN = Fn("registerChain", ("address", "uint256", "bytes32", "uint256", "uint256", "bytes"))


class Backend:
    """Raw transactions and view calls on ape's embedded chain, around ape's (slow) layers."""

    def __init__(self, chain: Any, caller: Any) -> None:
        self.chain = chain
        self.evm = chain.provider.evm_backend
        self.tester = chain.provider.tester.ethereum_tester
        self.chain_id = chain.chain_id
        self.caller = to_canonical_address(caller.address)  # eth_call checks that the caller affords gas
        self._keys: dict[str, Any] = {}
        self._state: Any = None
        self._nonce = 0

    def call(self, contract: Any, fn: Fn, *args: Any) -> Any:
        """A view call on the latest block's state, which is kept until the chain moves."""
        if self._state is None:
            self._state = _get_vm_for_block_number(self.evm.chain, "latest").state
            self._nonce = self._state.get_nonce(self.caller)
        request = {
            "from": self.caller,
            "to": to_canonical_address(contract.address),
            "data": fn.data(*args),
            "gas": GAS,
            "value": 0,
            "max_fee_per_gas": MAX_FEE,
            "max_priority_fee_per_gas": 0,
            "nonce": self._nonce,
        }
        unsigned = self.evm._get_normalized_and_unsigned_evm_transaction(request)
        snapshot = self._state.snapshot()
        computation = self._state.apply_transaction(EVMSpoofTransaction(unsigned, from_=self.caller))
        self._state.revert(snapshot)
        assert not computation.is_error, f"{fn.name}{args}: {computation.error!r}"
        result = decode(list(fn.outputs), computation.output)
        return result[0] if len(result) == 1 else result

    def send(self, account: Any, contract: Any, fn: Fn, *args: Any) -> None:
        """Sends a signed transaction; if it fails, sends it again through ape to raise the decoded revert."""
        key = self._keys.get(account.address)
        if key is None:
            key = self._keys[account.address] = Account.from_key(account.private_key)
        transaction = {
            "to": contract.address,
            "data": fn.data(*args),
            "gas": GAS,
            "maxFeePerGas": MAX_FEE,
            "maxPriorityFeePerGas": 0,
            "nonce": self.evm.get_nonce(to_canonical_address(account.address)),
            "chainId": self.chain_id,
            "value": 0,
            "type": 2,
        }
        self.invalidate()
        raw = key.sign_transaction(transaction).raw_transaction.to_0x_hex()
        receipt = self.tester.get_transaction_receipt(self.tester.send_raw_transaction(raw))
        if receipt["status"] != 1:
            getattr(contract, fn.name)(*args, sender=account)
            raise AssertionError(f"{fn.name}{args} failed, then succeeded through ape")

    def invalidate(self) -> None:
        """Forget the state view calls run on: the chain moved."""
        self._state = None

    def latest_block(self) -> int:
        return int(self.evm.get_block_by_number("latest")["number"])


# ---------------------------------------------------------------- exact arithmetic


def worth(conet: int, conet_price: int) -> Fraction:
    """The USD value (8 decimals) of `conet` CoNET wei."""
    return Fraction(conet * conet_price, CONET)


def usd(units: int, price: int, decimals: int) -> Fraction:
    """The USD value (8 decimals) of `units` of a stablecoin with `decimals`."""
    return Fraction(units * price, 10**decimals)


def burn_for(face: int, burn_bps: int, price: int, conet_price: int, decimals: int) -> int:
    """The CoNET a fill burns, checked to be rounded up twice: to a whole stablecoin unit of value,
    then to a CoNET wei of worth — at least the value, one wei less is not."""
    share = math.ceil(Fraction(face * burn_bps, BPS))
    assert share >= Fraction(face * burn_bps, BPS) > share - 1
    burned = math.ceil(usd(share, price, decimals) / Fraction(conet_price, CONET))
    assert worth(burned, conet_price) >= usd(share, price, decimals) > worth(burned - 1, conet_price)
    return burned


def reissue_share(exited: int, burn_bps: int) -> int:
    """The re-issue value one exit earns: its note's burn rate times the amount, rounded down to a
    whole stablecoin unit."""
    share = math.floor(Fraction(exited * burn_bps, BPS))
    assert share <= Fraction(exited * burn_bps, BPS) < share + 1
    return share


def reissue_for(share: int, price: int, conet_price: int, decimals: int) -> int:
    """The CoNET a claim owes for a re-issue value of `share` units, rounded down to a CoNET wei of
    worth — at most the value, one wei more is not."""
    owed = math.floor(usd(share, price, decimals) / Fraction(conet_price, CONET))
    assert worth(owed, conet_price) <= usd(share, price, decimals) < worth(owed + 1, conet_price)
    return owed


def exit_fee(amount: int, fee_bps: int) -> int:
    """The exit fee, rounded up."""
    return math.ceil(Fraction(amount * fee_bps, BPS))


# ---------------------------------------------------------------- the model


@dataclass
class NoteModel:
    coin: int
    status: int
    face: int
    outstanding: int
    party: str  # the buyer while ordered, then the issuing CBDC (kept through re-funds)
    owner: str  # who holds the note (the buyer while ordered)
    burn_bps: int = 0  # the burn rate its CBDC paid at fill; 0 after a re-fund (no re-issue)
    fee_bps: int = 0  # the exit fee, fixed when the note is issued or re-funded

    @property
    def reissuable(self) -> bool:
        return self.burn_bps > 0

    stamp: int = 0  # the order's timestamp while ordered


@dataclass
class Model:
    next_id: int
    exit_fee_bps: int
    burn_bps: int
    notes: dict[int, NoteModel] = field(default_factory=dict)
    pools: dict[int, list[int]] = field(default_factory=dict)  # a stack per coin
    earnings: dict[tuple[str, int], list[int]] = field(default_factory=dict)  # [fees, reissueValue]
    balances: dict[tuple[str, Any], int] = field(default_factory=dict)  # (account, coin index or "conet")
    supply: int = 0
    prices: dict[Any, int] = field(default_factory=dict)  # coin index or "conet" -> USD, 8 decimals
    registered: set[int] = field(default_factory=set)
    histories: dict[int, tuple[int, bytes]] = field(default_factory=dict)
    """Per note id, over all its lives: (the next exit nonce, the exit history's head)."""

    def ids(self, status: int, coin: int | None = None) -> list[int]:
        return sorted(i for i, n in self.notes.items() if n.status == status and (coin is None or n.coin == coin))


class Economy:
    """The contracts, the accounts, the model, and every action done on both."""

    def __init__(
        self,
        chain: Any,
        contracts: dict[str, Any],
        coins: list[Any],
        decimals: list[int],
        buyers: list[Any],
        receivers: list[Any],
        cbdcs: list[Any],
        members: list[list[Any]],
        admin: Any,
    ) -> None:
        self.chain = chain
        self.backend = Backend(chain, admin)
        self.cash, self.token, self.oracle = contracts["cash"], contracts["token"], contracts["oracle"]
        self.dle, self.params = contracts["dle"], contracts["params"]
        self.coins, self.decimals = coins, decimals
        self.buyers, self.receivers, self.cbdcs = buyers, receivers, cbdcs
        self.members = members
        self.admin = admin
        self.accounts = {a.address: a for a in [*buyers, *receivers, *cbdcs]}
        self.model = Model(next_id=0, exit_fee_bps=0, burn_bps=0)
        self.dirty: set[tuple[str, Any]] = set()

    def call(self, contract: Any, fn: Fn, *args: Any) -> Any:
        return self.backend.call(contract, fn, *args)

    def load(self) -> None:
        """The model's starting point, read once from the chain."""
        m = self.model
        m.next_id = self.call(self.cash, NEXT_ID)
        m.exit_fee_bps = self.params.value(EXIT_FEE_BPS)
        m.burn_bps = self.params.value(CBDC_BURN_BPS)
        for address in self.accounts:
            for coin in range(len(self.coins)):
                m.balances[(address, coin)] = self.balance(address, coin)
        for cbdc in self.cbdcs:
            m.balances[(cbdc.address, "conet")] = self.balance(cbdc.address, "conet")
        m.supply = self.call(self.token, TOTAL_SUPPLY)

    def balance(self, account: str, asset: Any) -> int:
        return self.call(self.token if asset == "conet" else self.coins[asset], BALANCE_OF, account)

    def move(self, account: str, asset: Any, delta: int) -> None:
        if (account, asset) in self.model.balances:
            self.model.balances[(account, asset)] += delta
            self.dirty.add((account, asset))

    def check_note(self, note_id: int, minted_now: bool = False) -> None:
        """noteOf(id) is the model's; `minted_now`: the note was minted or re-funded in the last block."""
        status, coin, face, outstanding, party, stamp, reissuable, burn_bps, fee_bps, chain = self.call(
            self.cash, NOTE_OF, note_id
        )
        assert chain == dle_chain_id(self.backend.chain_id, self.cash, note_id)
        note = self.model.notes.get(note_id)
        if note is None:  # cancelled: nothing left but the chain id
            assert (status, int(coin, 16), face, outstanding, int(party, 16), stamp, reissuable, burn_bps, fee_bps) == (
                NONE,
                0,
                0,
                0,
                0,
                0,
                False,
                0,
                0,
            )
            return
        assert (status, to_checksum_address(coin), face) == (note.status, self.coins[note.coin].address, note.face)
        assert outstanding == (note.outstanding if note.status == LIVE else 0)
        assert (to_checksum_address(party), reissuable, burn_bps, fee_bps) == (
            note.party,
            note.reissuable,
            note.burn_bps,
            note.fee_bps,
        )
        if note.status == ORDERED:
            assert stamp == note.stamp
        if minted_now:
            assert stamp == self.backend.latest_block()
            assert to_checksum_address(self.call(self.cash, OWNER_OF, note_id)) == note.owner

    # ------------------------------------------------------------ actions

    def set_price(self, asset: Any, price: int) -> None:
        self.backend.send(
            self.admin, self.oracle, SET_PRICE, self.token if asset == "conet" else self.coins[asset], price
        )
        self.model.prices[asset] = price

    def set_parameter(self, key: bytes, value: int) -> None:
        self.backend.send(self.admin, self.params, SET_PARAMETER, key, value)
        if key == EXIT_FEE_BPS:
            self.model.exit_fee_bps = value
        else:
            self.model.burn_bps = value

    def buy(self, buyer: Any, coin: int, amount: int) -> int:
        m = self.model
        pool = m.pools.setdefault(coin, [])
        self.backend.send(buyer, self.cash, BUY, self.coins[coin], amount)
        self.move(buyer.address, coin, -amount)
        if pool:
            note_id = pool.pop()  # the last pooled note is re-funded first
            note = m.notes[note_id]
            assert note.status == POOLED
            note.status, note.face, note.outstanding, note.owner = LIVE, amount, amount, buyer.address
            note.fee_bps = m.exit_fee_bps
            # No CoNET was burned for a re-fund, so its exits earn no re-issue; its fees still go to the
            # CBDC that issued the note.
            note.burn_bps = 0
            self.check_note(note_id, minted_now=True)
        else:
            note_id = m.next_id
            m.next_id += 1
            m.notes[note_id] = NoteModel(coin, ORDERED, amount, amount, buyer.address, buyer.address)
            m.notes[note_id].stamp = self.call(self.cash, NOTE_OF, note_id)[5]
            self.check_note(note_id)
        return note_id

    def fill(self, cbdc: Any, note_id: int) -> None:
        m = self.model
        note = m.notes[note_id]
        burned = burn_for(note.face, m.burn_bps, m.prices[note.coin], m.prices["conet"], self.decimals[note.coin])
        # The order's group certifies the draw of `cbdc` (the roulette is the DLE's; here the test picks).
        draw = (note_id, cbdc.address, note_id.to_bytes(32, "big"), note_id % GROUPS)
        signatures = group_signatures(
            self.members[note_id % GROUPS], cbdc_draw_digest(self.backend.chain_id, self.cash, draw)
        )
        self.backend.send(cbdc, self.cash, FILL, draw, EPOCH, signatures)
        self.move(cbdc.address, "conet", -burned)
        m.supply -= burned
        note.status, note.party, note.burn_bps, note.fee_bps = LIVE, cbdc.address, m.burn_bps, m.exit_fee_bps
        self.check_note(note_id, minted_now=True)

    def cancel(self, note_id: int) -> None:
        note = self.model.notes[note_id]
        deadline = note.stamp + ORDER_TIMEOUT
        if self.chain.pending_timestamp < deadline:
            self.chain.pending_timestamp = deadline
        self.backend.send(self.accounts[note.owner], self.cash, CANCEL, note_id)
        self.move(note.owner, note.coin, note.face)
        del self.model.notes[note_id]
        self.check_note(note_id)

    def register(self, note_id: int) -> None:
        """The note's archive group registers its chain (once per note id, whatever its lives)."""
        group = note_id % GROUPS
        genesis = keccak(note_id.to_bytes(32, "big"))
        digest = genesis_digest(self.backend.chain_id, self.dle, self.cash, note_id, genesis, group)
        signatures = group_signatures(self.members[group], digest)
        self.backend.send(self.admin, self.dle, REGISTER_CHAIN, self.cash, note_id, genesis, group, EPOCH, signatures)
        self.model.registered.add(note_id)

    def exit(self, note_id: int, receiver: Any, amount: int, flaw: str = "", pick: int = 0) -> None:
        """Exit `amount` of the note to `receiver` as its next exit — or, with `flaw`, a certificate the
        group signed that is not payable: a `replay`ed (spent) nonce, a `later` nonce than the next,
        or a `fork`ed history. A refused one changes nothing (checked by the invariants after)."""
        m = self.model
        note = m.notes[note_id]
        if note_id not in m.registered:
            self.register(note_id)
        chain = dle_chain_id(self.backend.chain_id, self.cash, note_id)
        nonce, head = m.histories.get(note_id, (0, bytes(32)))
        if flaw == "replay" and nonce:
            nonce, error = pick % nonce, (self.cash.CertificateUsed, {"note": note_id, "nonce": pick % nonce})
        elif flaw == "later":
            error = (self.cash.ExitOutOfOrder, {"note": note_id, "expected": nonce, "given": nonce + 1 + pick % 3})
            nonce += 1 + pick % 3
        elif flaw == "fork":
            forked = keccak(pick.to_bytes(32, "big"))[:27] + bytes(5)
            error = (self.cash.ExitHistoryMismatch, {"note": note_id, "expected": head, "given": forked})
            head = forked
        else:
            error = None
        certificate = (note_id, chain, nonce + 1, note.owner, receiver.address, amount, nonce, head)
        digest = exit_digest(self.backend.chain_id, self.cash, certificate)
        signatures = group_signatures(self.members[note_id % GROUPS], digest)
        if error is not None:  # nonces and the history are per note id, over all its lives
            with reverts_with(error[0], **error[1]):
                self.cash.exit(certificate, EPOCH, signatures, sender=receiver)
            self.backend.invalidate()
            return
        assert not self.call(self.cash, IS_NONCE_USED, note_id, nonce)
        self.backend.send(receiver, self.cash, EXIT, certificate, EPOCH, signatures)
        m.histories[note_id] = (nonce + 1, exit_head(certificate))
        assert self.call(self.cash, IS_NONCE_USED, note_id, nonce)
        fee = exit_fee(amount, note.fee_bps)
        self.move(receiver.address, note.coin, amount - fee)
        earned = m.earnings.setdefault((note.party, note.coin), [0, 0])
        earned[0] += fee
        if note.reissuable:
            earned[1] += reissue_share(amount, note.burn_bps)
        note.outstanding -= amount
        if note.outstanding == 0:
            note.status, note.burn_bps = POOLED, 0
            m.pools.setdefault(note.coin, []).append(note_id)
        self.check_note(note_id)

    def claim(self, cbdc: Any, coin: int) -> None:
        m = self.model
        fees, value = m.earnings.get((cbdc.address, coin), [0, 0])
        if fees == 0 and value == 0:
            with reverts_with(self.cash.NothingToClaim, stablecoin=self.coins[coin]):
                self.cash.claim(self.coins[coin], sender=cbdc)
            self.backend.invalidate()
            return
        owed = reissue_for(value, m.prices[coin], m.prices["conet"], self.decimals[coin])
        reissued = min(owed, CAP - m.supply)  # the cap withholds the rest, which is forfeited
        self.backend.send(cbdc, self.cash, CLAIM, self.coins[coin])
        self.move(cbdc.address, coin, fees)
        self.move(cbdc.address, "conet", reissued)
        m.supply += reissued
        m.earnings[(cbdc.address, coin)] = [0, 0]

    # ------------------------------------------------------------ invariants

    def check(self, everything: bool = False) -> None:
        """The invariants for every stablecoin, the supply, and the balances the steps since the last
        check moved (or every balance)."""
        m = self.model
        for coin in range(len(self.coins)):
            contract = self.coins[coin]
            held = self.call(contract, BALANCE_OF, self.cash)
            backing = self.call(self.cash, BACKING, contract)
            open_value = self.call(self.cash, OPEN_ORDER_VALUE, contract)
            unclaimed = 0
            for cbdc in self.cbdcs:
                fees, value = self.call(self.cash, EARNINGS_OF, cbdc, contract)
                assert [fees, value] == m.earnings.get((cbdc.address, coin), [0, 0])
                unclaimed += fees
            # The contract holds exactly the backing, the open orders and the unclaimed fees.
            assert held == backing + open_value + unclaimed
            assert backing == sum(m.notes[i].outstanding for i in m.ids(LIVE, coin))
            assert open_value == sum(m.notes[i].face for i in m.ids(ORDERED, coin))
            assert self.call(self.cash, POOL_SIZE, contract) == len(m.pools.get(coin, []))
        supply = self.call(self.token, TOTAL_SUPPLY)
        assert supply == m.supply <= CAP
        # Every note's exits were paid in order along one history: the next nonce and head the model kept.
        for note_id, history in m.histories.items():
            assert tuple(self.call(self.cash, EXIT_HISTORY, note_id)) == history
        for account, asset in sorted(m.balances if everything else self.dirty, key=str):
            assert self.balance(account, asset) == m.balances[(account, asset)], (account, asset)
        self.dirty.clear()


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def second_stablecoin(project: Any, admin: Any) -> Any:
    return admin.deploy(project.MockStablecoin, "Mock Tether", "mUSDT")


@pytest.fixture(scope="module")
def wide_stablecoin(project: Any, admin: Any) -> Any:
    """An 18-decimal stablecoin. The project has no 18-decimal test token, but a second CoNETToken is a
    plain 18-decimal ERC-20 whose whole supply goes to admin."""
    return admin.deploy(project.CoNETToken, admin, admin)


@pytest.fixture(scope="module")
def second_cbdc(accounts: Any, admin: Any, treasury: Any, token: Any, staking: Any, cash: Any) -> Any:
    account = accounts.generate_test_account()
    admin.transfer(account, "10 ether")
    token.transfer(account, MIN_STAKE[Role.CBDC] + 1_000_000 * CONET, sender=treasury)
    stake(staking, token, account, Role.CBDC, MIN_STAKE[Role.CBDC])
    token.approve(cash, MAX_UINT, sender=account)
    return account


@pytest.fixture(scope="module")
def economy(
    chain: Any,
    admin: Any,
    token: Any,
    oracle: Any,
    params: Any,
    stablecoin: Any,
    second_stablecoin: Any,
    wide_stablecoin: Any,
    registry: Any,
    dle: Any,
    cash: Any,
    cbdc: Any,
    second_cbdc: Any,
    archive_nodes: list[Any],
    funded: list[Any],
) -> tuple[Economy, Model]:
    """The warmed-up economy, and the model of the state every example starts from."""
    coins = [stablecoin, second_stablecoin, wide_stablecoin]
    decimals = [6, 6, 18]
    buyers, receivers = funded[:4], funded[4:5]
    for coin, places in zip(coins, decimals, strict=True):
        params.listStablecoin(coin, sender=admin)
        for buyer in buyers:
            if coin is wide_stablecoin:
                coin.transfer(buyer, 100_000 * 10**places, sender=admin)
            else:
                coin.mint(buyer, 100_000 * 10**places, sender=admin)
            coin.approve(cash, MAX_UINT, sender=buyer)
    for group in range(GROUPS):
        dle.refreshGroup(group, sender=admin)
        assert dle.currentEpoch(group) == EPOCH
    members = [group_of(registry, archive_nodes, group) for group in range(GROUPS)]
    contracts = {"cash": cash, "token": token, "oracle": oracle, "dle": dle, "params": params}
    world = Economy(chain, contracts, coins, decimals, buyers, receivers, [cbdc, second_cbdc], members, admin)
    world.load()
    world.set_price("conet", CONET_PRICE)
    for coin in range(len(coins)):
        world.set_price(coin, DOLLAR)

    # Per stablecoin: three orders, two filled; one note exited to zero (pooled), one in part.
    # The notes of each stablecoin are issued under a different exit fee: a note keeps its fee.
    for coin, fee_bps in enumerate([20, 35, 7]):
        world.set_parameter(EXIT_FEE_BPS, fee_bps)
        cap = NOTE_CAP_UNITS * 10 ** decimals[coin]
        first = world.buy(buyers[0], coin, cap)
        second = world.buy(buyers[1], coin, cap // 3 + 1)
        world.buy(buyers[2], coin, 7)
        world.fill(world.cbdcs[coin % 2], first)
        world.fill(world.cbdcs[(coin + 1) % 2], second)
        world.exit(first, receivers[0], cap)
        world.exit(second, buyers[1], cap // 7)
    world.set_parameter(EXIT_FEE_BPS, 20)
    world.check(everything=True)
    for coin in range(len(coins)):
        assert [len(world.model.ids(status, coin)) for status in (ORDERED, LIVE, POOLED)] == [1, 1, 1]
    return world, copy.deepcopy(world.model)


@pytest.fixture(scope="module", autouse=True)
def _deployed(economy: tuple[Economy, Model]) -> None:
    """Set up the module's fixtures before ape's per-test snapshots start."""


# ---------------------------------------------------------------- the state machine

PICK = st.integers(min_value=0, max_value=2**32)


def amount_strategy(cap: int) -> st.SearchStrategy[int]:
    return st.one_of(st.integers(1, cap), st.integers(1, 1_000), st.sampled_from([1, cap]))


def step(method: Callable[..., None]) -> Callable[..., None]:
    """Marks the machine unclean while `method` runs: if it fails, teardown skips its final check
    rather than hide the failure behind another."""

    @functools.wraps(method)
    def wrapper(self: CashMachine, *args: Any, **kwargs: Any) -> None:
        self.clean = False
        method(self, *args, **kwargs)
        self.clean = True

    return wrapper


class CashMachine(RuleBasedStateMachine):
    """Each example runs on a snapshot of the warmed-up chain and a copy of its model."""

    world: Economy
    base: Model

    def __init__(self) -> None:
        super().__init__()
        self.snapshot = self.world.chain.snapshot()
        self.world.model = copy.deepcopy(self.base)
        self.world.dirty.clear()
        self.clean = True

    def teardown(self) -> None:
        try:
            if self.clean:
                self.world.check(everything=True)
        finally:
            self.world.chain.restore(self.snapshot)
            self.world.backend.invalidate()

    @rule(buyer=st.integers(0, 3), coin=st.integers(0, 2), data=st.data())
    @step
    def buy(self, buyer: int, coin: int, data: st.DataObject) -> None:
        """Buys a note: re-funded from the pool if the pool has one, else an order."""
        cap = NOTE_CAP_UNITS * 10 ** self.world.decimals[coin]
        self.world.buy(self.world.buyers[buyer], coin, data.draw(amount_strategy(cap), label="amount"))

    @precondition(lambda self: self.world.model.ids(ORDERED))
    @rule(pick=PICK, cbdc=st.integers(0, 1))
    @step
    def fill(self, pick: int, cbdc: int) -> None:
        orders = self.world.model.ids(ORDERED)
        self.world.fill(self.world.cbdcs[cbdc], orders[pick % len(orders)])

    @precondition(lambda self: self.world.model.ids(ORDERED))
    @rule(pick=PICK)
    @step
    def cancel_after_timeout(self, pick: int) -> None:
        orders = self.world.model.ids(ORDERED)
        self.world.cancel(orders[pick % len(orders)])

    @precondition(lambda self: self.world.model.ids(LIVE))
    @rule(
        pick=PICK,
        receiver=st.integers(0, 4),
        mode=st.sampled_from(["all", "all", "one", "all-but-one", "some", "some"]),
        raw=st.integers(min_value=0, max_value=2**96),
        flaw=st.sampled_from(["", "", "", "", "", "", "", "replay", "later", "fork"]),
    )
    @step
    def exit(self, pick: int, receiver: int, mode: str, raw: int, flaw: str) -> None:
        """Exits all of a live note (it crosses to zero and is pooled), one unit (all fee, no payout),
        all but one unit, or some; three times in ten with a certificate of the note's group that is
        not payable: a nonce the note already used, a later nonce, a forked history."""
        world = self.world
        live = world.model.ids(LIVE)
        note_id = live[pick % len(live)]
        outstanding = world.model.notes[note_id].outstanding
        amount = {"all": outstanding, "one": 1, "all-but-one": max(outstanding - 1, 1), "some": raw % outstanding + 1}
        world.exit(note_id, [*world.buyers, *world.receivers][receiver], amount[mode], flaw, raw)

    @rule(cbdc=st.integers(0, 1), coin=st.integers(0, 2))
    @step
    def claim(self, cbdc: int, coin: int) -> None:
        self.world.claim(self.world.cbdcs[cbdc], coin)

    @rule(
        asset=st.sampled_from(["conet", 0, 1, 2]),
        conet=st.integers(1_000_000, 20_000_000),  # $0.01 to $0.20
        coin=st.integers(95_000_000, 105_000_000),  # $0.95 to $1.05
    )
    @step
    def set_price(self, asset: Any, conet: int, coin: int) -> None:
        self.world.set_price(asset, conet if asset == "conet" else coin)

    @rule(
        key=st.sampled_from([EXIT_FEE_BPS, CBDC_BURN_BPS]),
        exit_fee_bps=st.integers(0, 1_000),
        burn_bps=st.integers(0, 10_000),
    )
    @step
    def set_parameter(self, key: bytes, exit_fee_bps: int, burn_bps: int) -> None:
        """Governance changes the exit fee (which binds notes issued from now on) or the burn rate."""
        self.world.set_parameter(key, exit_fee_bps if key == EXIT_FEE_BPS else burn_bps)

    @invariant()
    @step
    def books_balance(self) -> None:
        self.world.check()


def test_cash_state_machine(economy: tuple[Economy, Model]) -> None:
    world, base = economy
    CashMachine.world = world
    CashMachine.base = base
    run_state_machine_as_test(
        CashMachine, settings=settings(max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None)
    )
