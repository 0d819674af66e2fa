"""The CoNETCash note program (`contracts/dle/NoteLedger.sol`) run as a DLE chain's program.

Every block runs on both engines — py-evm (the reference) and pyrevm — which must agree on receipts,
logs and the state root; the tests then read the reference's result. Users sign EIP-712 messages with
`dle_vm.signature.sign`; the digests are computed here independently of the program (and checked once
against eth-account's encoder). The program is compiled with py-solc-x, as ape would (same compiler,
EVM version, optimizer and remapping), and placed in the genesis state with empty storage;
`initialize` is the genesis block's transaction.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import solcx
from coincurve import PrivateKey
from eth_abi.abi import decode, encode
from hypothesis import HealthCheck, given, settings
from hypothesis import event as note_event
from hypothesis import strategies as st

from dle_vm.engine import BlockContext, Engine, Log, Receipt, evm_chain_id
from dle_vm.hashing import keccak
from dle_vm.pyevm_engine import PyEvmEngine
from dle_vm.revm_engine import RevmEngine
from dle_vm.signature import address_of, sign
from dle_vm.state import Account, State
from dle_vm.transaction import SYSTEM_SENDER, Message
from offchain.dle.note import WITNESSES_SLOT
from offchain.toolchain import SOLC_VERSION, configure_environment

ROOT = configure_environment()
SOURCE = "contracts/dle/NoteLedger.sol"
ENGINES: list[Engine] = [PyEvmEngine(), RevmEngine()]

PROGRAM = bytes.fromhex("de" * 20)
MAINCHAIN_ID = 43112
CASH = bytes.fromhex("ca5c" * 10)
NOTE = 7
VALUE = 100_000_000  # $100 of a 6-decimal stablecoin
FEE_BPS = 5
T0 = 1_700_000_000
GAS = 1_000_000


def chain_of(note: int, cash: bytes = CASH, mainchain_id: int = MAINCHAIN_ID) -> bytes:
    """DleChainId.compute on the mainchain: keccak256(abi.encode(block.chainid, asset, assetId))."""
    return keccak(encode(["uint256", "address", "uint256"], [mainchain_id, cash, note]))


CHAIN = chain_of(NOTE)


@dataclass(frozen=True)
class Key:
    name: str
    secret: bytes
    address: bytes

    @classmethod
    def of(cls, name: str) -> Key:
        secret = keccak(b"note-ledger test key " + name.encode())
        return cls(name, secret, address_of(PrivateKey(secret).public_key))


BUYER = Key.of("buyer")
ALICE = Key.of("alice")
BOB = Key.of("bob")
CAROL = Key.of("carol")
CBDC = Key.of("cbdc")
WITNESSES = [Key.of(f"witness {i}") for i in range(5)]
POOL = Key.of("validators pool")
MALLORY = Key.of("mallory")
HOLDERS = [BUYER, ALICE, BOB, CAROL]
FEE_RECIPIENTS = [CBDC, *WITNESSES, POOL]
EVERYONE = [*HOLDERS, *FEE_RECIPIENTS]


# -- the program --------------------------------------------------------------------------------------


def abi_type(item: dict[str, Any]) -> str:
    kind = str(item["type"])
    if kind.startswith("tuple"):
        return "(" + ",".join(abi_type(c) for c in item["components"]) + ")" + kind[len("tuple") :]
    return kind


@dataclass(frozen=True)
class Program:
    runtime: bytes
    abi: list[dict[str, Any]]
    balances_slot: int
    functions: dict[str, tuple[str, list[str]]] = field(default_factory=dict)  # name -> (signature, outputs)
    errors: dict[str, list[str]] = field(default_factory=dict)
    events: dict[str, tuple[bytes, list[str]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for item in self.abi:
            types = [abi_type(i) for i in item.get("inputs", [])]
            signature = f"{item.get('name')}({','.join(types)})"
            if item["type"] == "function":
                self.functions[item["name"]] = (signature, [abi_type(o) for o in item["outputs"]])
            elif item["type"] == "error":
                self.errors[item["name"]] = types
            elif item["type"] == "event":
                self.events[item["name"]] = (keccak(signature.encode()), types)

    def call(self, name: str, *args: Any) -> bytes:
        signature, _ = self.functions[name]
        inner = signature[signature.index("(") + 1 : -1]
        types = split_types(inner)
        return keccak(signature.encode())[:4] + encode(types, list(args))

    def returns(self, name: str, output: bytes) -> tuple[Any, ...]:
        return tuple(decode(self.functions[name][1], output))

    def error(self, name: str, *args: Any) -> bytes:
        types = self.errors[name]
        return keccak(f"{name}({','.join(types)})".encode())[:4] + encode(types, list(args))

    def balance_slot(self, account: bytes) -> int:
        return int.from_bytes(keccak(encode(["address", "uint256"], [account, self.balances_slot])), "big")


def split_types(inner: str) -> list[str]:
    """Top-level comma split of an ABI parameter list (tuples kept whole)."""
    types, depth, start = [], 0, 0
    for i, char in enumerate(inner):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            types.append(inner[start:i])
            start = i + 1
    if inner:
        types.append(inner[start:])
    return types


@pytest.fixture(scope="module")
def program() -> Program:
    out = solcx.compile_standard(
        {
            "language": "Solidity",
            "sources": {SOURCE: {"content": (ROOT / SOURCE).read_text()}},
            "settings": {
                "evmVersion": "cancun",
                "optimizer": {"enabled": True, "runs": 200},
                "remappings": ["@openzeppelin/contracts=node_modules/@openzeppelin/contracts"],
                "outputSelection": {SOURCE: {"NoteLedger": ["abi", "evm.deployedBytecode.object", "storageLayout"]}},
            },
        },
        solc_version=SOLC_VERSION,
        base_path=str(ROOT),
        allow_paths=str(ROOT),
    )
    warnings = [e["formattedMessage"] for e in out.get("errors", []) if e["severity"] != "info"]
    assert warnings == []
    contract = out["contracts"][SOURCE]["NoteLedger"]
    (balances,) = (s for s in contract["storageLayout"]["storage"] if s["label"] == "_balances")
    (witnesses,) = (s for s in contract["storageLayout"]["storage"] if s["label"] == "_witnesses")
    # Members read the witnesses straight from storage (offchain.dle.note.NoteReader.witnesses).
    assert int(witnesses["slot"]) == WITNESSES_SLOT
    return Program(
        runtime=bytes.fromhex(contract["evm"]["deployedBytecode"]["object"]),
        abi=contract["abi"],
        balances_slot=int(balances["slot"]),
    )


# -- EIP-712 ------------------------------------------------------------------------------------------

DOMAIN_TYPE = "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract,bytes32 salt)"
MESSAGE_TYPES = {
    "Transfer": ("Transfer(address holder,address to,uint256 amount,uint256 nonce,uint256 expiry)", "address"),
    "Authorize": ("Authorize(address holder,address payee,uint256 limit,uint256 nonce,uint256 expiry)", "address"),
    "Revoke": ("Revoke(address holder,uint256 authorization,uint256 nonce,uint256 expiry)", "uint256"),
    "Deduct": (
        "Deduct(address payee,address holder,uint256 authorization,uint256 amount,uint256 nonce,uint256 expiry)",
        None,
    ),
    "DeductTo": (
        "DeductTo(address payee,address holder,uint256 authorization,address to,uint256 amount,uint256 nonce,"
        "uint256 expiry)",
        None,
    ),
    "Exit": ("Exit(address holder,address receiver,uint256 amount,uint256 nonce,uint256 expiry)", "address"),
}


def field_types(type_string: str) -> list[str]:
    return [part.split(" ")[0] for part in type_string[type_string.index("(") + 1 : -1].split(",")]


def domain_separator(chain: bytes = CHAIN, mainchain_id: int = MAINCHAIN_ID, cash: bytes = CASH) -> bytes:
    return keccak(
        encode(
            ["bytes32", "bytes32", "bytes32", "uint256", "address", "bytes32"],
            [keccak(DOMAIN_TYPE.encode()), keccak(b"CoNETCash Note"), keccak(b"1"), mainchain_id, cash, chain],
        )
    )


DOMAIN = domain_separator()


def digest(kind: str, values: Sequence[Any], domain: bytes = DOMAIN) -> bytes:
    type_string = MESSAGE_TYPES[kind][0]
    struct_hash = keccak(keccak(type_string.encode()) + encode(field_types(type_string), list(values)))
    return keccak(b"\x19\x01" + domain + struct_hash)


@dataclass
class Signer:
    """Builds signed calls the way a wallet would: (sender, calldata), sent by the action's signer."""

    program: Program
    domain: bytes = DOMAIN

    def transfer(
        self, key: Key, to: Key | bytes, amount: int, nonce: int, expiry: int = T0 + 3600
    ) -> tuple[bytes, bytes]:
        to_address = to.address if isinstance(to, Key) else to
        values = [key.address, to_address, amount, nonce, expiry]
        return key.address, self.program.call("transfer", *values, self._sign(key, "Transfer", values))

    def authorize(self, key: Key, payee: Key, limit: int, nonce: int, expiry: int = T0 + 3600) -> tuple[bytes, bytes]:
        values = [key.address, payee.address, limit, nonce, expiry]
        return key.address, self.program.call("authorize", *values, self._sign(key, "Authorize", values))

    def revoke(self, key: Key, authorization: int, nonce: int, expiry: int = T0 + 3600) -> tuple[bytes, bytes]:
        values = [key.address, authorization, nonce, expiry]
        return key.address, self.program.call("revoke", *values, self._sign(key, "Revoke", values))

    def deduct(
        self, payee: Key, holder: Key, authorization: int, amount: int, nonce: int, expiry: int = T0 + 3600
    ) -> tuple[bytes, bytes]:
        values = [payee.address, holder.address, authorization, amount, nonce, expiry]
        signature = self._sign(payee, "Deduct", values)
        return payee.address, self.program.call("deduct", *values[1:], signature)

    def deduct_to(
        self,
        payee: Key,
        holder: Key,
        authorization: int,
        to: Key | bytes,
        amount: int,
        nonce: int,
        expiry: int = T0 + 3600,
    ) -> tuple[bytes, bytes]:
        to_address = to.address if isinstance(to, Key) else to
        values = [payee.address, holder.address, authorization, to_address, amount, nonce, expiry]
        signature = self._sign(payee, "DeductTo", values)
        return payee.address, self.program.call("deductTo", *values[1:], signature)

    def exit(self, key: Key, receiver: bytes, amount: int, nonce: int, expiry: int = T0 + 3600) -> tuple[bytes, bytes]:
        values = [key.address, receiver, amount, nonce, expiry]
        return key.address, self.program.call("exit", *values, self._sign(key, "Exit", values))

    def _sign(self, key: Key, kind: str, values: Sequence[Any]) -> bytes:
        return sign(key.secret, digest(kind, values, self.domain))


def sent_by(key: Key, call: bytes | tuple[bytes, bytes]) -> tuple[bytes, bytes]:
    """`call` (a Signer's, or bare calldata) sent as `key`'s DLE transaction."""
    return key.address, call[1] if isinstance(call, tuple) else call


# -- running blocks on both engines -------------------------------------------------------------------


def genesis_args(
    *, note: int = NOTE, chain: bytes = CHAIN, value: int = VALUE, fee_bps: int = FEE_BPS, holder: Key = BUYER
) -> tuple[Any, ...]:
    return (
        note,
        chain,
        MAINCHAIN_ID,
        CASH,
        value,
        holder.address,
        CBDC.address,
        [w.address for w in WITNESSES],
        POOL.address,
        fee_bps,
    )


class Chain:
    """One note chain: its state, height and clock; every block runs on both engines."""

    def __init__(self, program: Program, *, chain: bytes = CHAIN) -> None:
        self.program = program
        self.state = State({PROGRAM: Account(code=program.runtime)})
        self.chain = chain
        self.height = 0
        self.timestamp = T0
        self.signer = Signer(program)

    def block(self, calls: Sequence[bytes | tuple[bytes, bytes]], *, advance: int = 1) -> tuple[Receipt, ...]:
        """Runs one block of `calls` (calldata, or (sender, calldata)); returns the receipts."""
        txs = [
            Message(sender=c[0], to=PROGRAM, data=c[1], gas_limit=GAS)
            if isinstance(c, tuple)
            else Message(sender=CBDC.address, to=PROGRAM, data=c, gas_limit=GAS)
            for c in calls
        ]
        context = BlockContext(chain_id=self.chain, height=self.height, timestamp=self.timestamp)
        (ref_state, ref), (fast_state, fast) = (engine.apply(self.state, txs, context) for engine in ENGINES)
        assert ref == fast, "py-evm and revm disagree"
        assert ref_state.root == fast_state.root
        self.state = ref_state
        self.height += 1
        self.timestamp += advance
        return ref

    def one(self, call: bytes | tuple[bytes, bytes]) -> Receipt:
        (receipt,) = self.block([call])
        return receipt

    def ok(self, call: bytes | tuple[bytes, bytes]) -> Receipt:
        receipt = self.one(call)
        assert receipt.success, f"reverted: 0x{receipt.output.hex()}"
        return receipt

    def refused(self, call: bytes | tuple[bytes, bytes], error: str, *args: Any) -> None:
        receipt = self.one(call)
        assert not receipt.success
        assert receipt.output == self.program.error(error, *args), receipt.output.hex()

    def view(self, name: str, *args: Any) -> tuple[Any, ...]:
        context = BlockContext(chain_id=self.chain, height=self.height, timestamp=self.timestamp)
        tx = Message(sender=MALLORY.address, to=PROGRAM, data=self.program.call(name, *args), gas_limit=GAS)
        (receipt,) = ENGINES[1].apply(self.state, [tx], context)[1]
        assert receipt.success
        return self.program.returns(name, receipt.output)

    def balance(self, key: Key | bytes) -> int:
        address = key.address if isinstance(key, Key) else key
        return self.state.storage_at(PROGRAM, self.program.balance_slot(address))

    def balances(self) -> dict[str, int]:
        return {k.name: self.balance(k) for k in EVERYONE}

    def total(self) -> int:
        """Σ balances, read from storage over every address that can hold one here."""
        return sum(self.balance(k) for k in EVERYONE)


def opened(program: Program, **kwargs: Any) -> Chain:
    chain = Chain(program)
    chain.ok(program.call("initialize", genesis_args(**kwargs)))
    return chain


def fee_of(amount: int, bps: int = FEE_BPS) -> int:
    return max(1, -(-amount * bps // 10_000))


def spendable(balance: int, bps: int = FEE_BPS) -> int:
    """The largest amount whose transfer costs at most `balance`, fee included."""
    amount = balance * 10_000 // (10_000 + bps)
    while amount + 1 + fee_of(amount + 1, bps) <= balance:
        amount += 1
    while amount and amount + fee_of(amount, bps) > balance:
        amount -= 1
    return amount


def split(fee: int) -> tuple[int, int, int]:
    """(CBDC, each witness, validators' pool)."""
    witness, validators = fee * 10 // 100, fee * 20 // 100
    return fee - 5 * witness - validators, witness, validators


def event(program: Program, log: Log, name: str) -> tuple[Any, ...]:
    topic, types = program.events[name]
    assert log.address == PROGRAM and log.topics[0] == topic
    indexed = [i for i in next(e for e in program.abi if e.get("name") == name and e["type"] == "event")["inputs"]]
    topic_values = iter(log.topics[1:])
    data_values = iter(decode([t for t, i in zip(types, indexed, strict=True) if not i["indexed"]], log.data))
    return tuple(
        decode([t], next(topic_values))[0] if i["indexed"] else next(data_values)
        for t, i in zip(types, indexed, strict=True)
    )


def hexaddr(address: bytes) -> str:
    return "0x" + address.hex()


# -- genesis ------------------------------------------------------------------------------------------


def test_genesis_opens_the_note_to_the_buyer(program: Program) -> None:
    chain = Chain(program)
    receipt = chain.ok(program.call("initialize", genesis_args()))
    assert chain.balances() == {k.name: VALUE if k is BUYER else 0 for k in EVERYONE}
    opened_log, initialized_log = receipt.logs
    assert program.events["Initialized"][0] == initialized_log.topics[0]
    assert event(program, opened_log, "NoteOpened") == (NOTE, CHAIN, hexaddr(BUYER.address), VALUE)
    assert chain.view("supply") == (VALUE, 0, VALUE)
    assert chain.view("totalBalances") == (VALUE,)
    assert chain.view("noteTerms") == (NOTE, CHAIN, MAINCHAIN_ID, hexaddr(CASH), FEE_BPS)
    assert chain.view("roles") == (
        hexaddr(CBDC.address),
        tuple(hexaddr(w.address) for w in WITNESSES),
        hexaddr(POOL.address),
    )
    assert chain.view("domainSeparator") == (DOMAIN,)
    assert chain.view("eip712Domain") == (b"\x1f", "CoNETCash Note", "1", MAINCHAIN_ID, hexaddr(CASH), CHAIN, ())
    # Once only.
    chain.refused(program.call("initialize", genesis_args()), "InvalidInitialization")


def test_the_digest_is_standard_eip712(program: Program) -> None:
    from eth_account.messages import encode_typed_data

    message = {"holder": BUYER.address, "to": ALICE.address, "amount": 5, "nonce": 0, "expiry": T0}
    typed = encode_typed_data(
        full_message={
            "types": {
                "EIP712Domain": [
                    {"name": "name", "type": "string"},
                    {"name": "version", "type": "string"},
                    {"name": "chainId", "type": "uint256"},
                    {"name": "verifyingContract", "type": "address"},
                    {"name": "salt", "type": "bytes32"},
                ],
                "Transfer": [
                    {"name": "holder", "type": "address"},
                    {"name": "to", "type": "address"},
                    {"name": "amount", "type": "uint256"},
                    {"name": "nonce", "type": "uint256"},
                    {"name": "expiry", "type": "uint256"},
                ],
            },
            "primaryType": "Transfer",
            "domain": {
                "name": "CoNETCash Note",
                "version": "1",
                "chainId": MAINCHAIN_ID,
                "verifyingContract": hexaddr(CASH),
                "salt": CHAIN,
            },
            "message": {k: hexaddr(v) if isinstance(v, bytes) else v for k, v in message.items()},
        }
    )
    assert keccak(b"\x19" + typed.version + typed.header + typed.body) == digest("Transfer", list(message.values()))


@pytest.mark.parametrize(
    ("change", "error", "args"),
    [
        ({"chain": chain_of(NOTE + 1)}, "WrongChain", (CHAIN, chain_of(NOTE + 1))),
        ({"value": 0}, "InvalidValue", (0,)),
        ({"value": 2**96}, "InvalidValue", (2**96,)),
        ({"fee_bps": 1_001}, "InvalidTransferFee", (1_001,)),
    ],
)
def test_genesis_refuses_bad_terms(program: Program, change: dict[str, Any], error: str, args: tuple[Any, ...]) -> None:
    Chain(program).refused(program.call("initialize", genesis_args(**change)), error, *args)


def test_genesis_refuses_a_foreign_vm_and_a_sender_other_than_the_cbdc(program: Program) -> None:
    # The program of note 7 placed on note 8's chain: CHAINID is note 8's.
    other = Chain(program, chain=chain_of(NOTE + 1))
    expected = evm_chain_id(CHAIN)
    other.refused(program.call("initialize", genesis_args()), "ForeignChain", expected, evm_chain_id(other.chain))
    chain = Chain(program)
    chain.refused((MALLORY.address, program.call("initialize", genesis_args())), "NotCreator", hexaddr(MALLORY.address))
    zero_witness = list(genesis_args())
    zero_witness[7] = [bytes(20)] + [w.address for w in WITNESSES[1:]]
    chain.refused(program.call("initialize", tuple(zero_witness)), "ZeroAddress")


# -- transfers ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("amount", [1, 1_999, 2_000, 2_001, 10_000, 1_000_000, 99_950_024])
def test_a_signed_transfer_pays_the_fee_on_top_split_exactly(program: Program, amount: int) -> None:
    chain = opened(program)
    receipt = chain.ok(chain.signer.transfer(BUYER, ALICE, amount, 0))
    fee = fee_of(amount)
    cbdc, witness, validators = split(fee)
    assert fee >= 1 and cbdc + 5 * witness + validators == fee
    assert chain.balance(BUYER) == VALUE - amount - fee
    assert chain.balance(ALICE) == amount
    assert chain.balance(CBDC) == cbdc
    assert [chain.balance(w) for w in WITNESSES] == [witness] * 5
    assert chain.balance(POOL) == validators
    assert chain.total() == VALUE
    assert program.returns("transfer", receipt.output) == (fee,)
    (log,) = receipt.logs
    assert event(program, log, "Transferred") == (hexaddr(BUYER.address), hexaddr(ALICE.address), amount, fee)
    assert chain.view("nonces", BUYER.address) == (1,)


def test_the_whole_balance_cannot_move_without_the_fee(program: Program) -> None:
    chain = opened(program, value=10_000)
    chain.refused(
        chain.signer.transfer(BUYER, ALICE, 10_000, 0), "InsufficientBalance", hexaddr(BUYER.address), 10_000, 10_000, 5
    )
    chain.ok(chain.signer.transfer(BUYER, ALICE, 9_995, 0))
    assert chain.balance(BUYER) == 0 and chain.balance(ALICE) == 9_995
    assert chain.balance(CBDC) + chain.balance(POOL) + sum(chain.balance(w) for w in WITNESSES) == 5


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    amount=st.one_of(st.integers(1, 5_000), st.integers(1, 2**96 - 1)),
    bps=st.one_of(st.just(5), st.integers(0, 1_000)),
)
def test_fee_split_is_exact_for_any_amount_and_rate(program: Program, amount: int, bps: int) -> None:
    value = 2**96 - 1
    chain = opened(program, value=value, fee_bps=bps)
    fee = fee_of(amount, bps)
    if amount + fee > value:
        amount = value - fee
        fee = fee_of(amount, bps)
    assert chain.view("feeOf", amount) == (fee,)
    assert chain.view("feeSplit", fee) == split(fee)
    chain.ok(chain.signer.transfer(BUYER, ALICE, amount, 0))
    cbdc, witness, validators = split(fee)
    assert fee >= 1 and fee == max(1, (amount * bps + 9_999) // 10_000)
    assert cbdc + 5 * witness + validators == fee
    assert cbdc >= fee * 30 // 100 and cbdc - fee * 30 // 100 <= 6  # the remainders, at most 6 units
    assert chain.balance(CBDC) == cbdc and chain.balance(POOL) == validators
    assert [chain.balance(w) for w in WITNESSES] == [witness] * 5
    assert chain.balance(BUYER) == value - amount - fee and chain.balance(ALICE) == amount
    assert chain.total() == value


def test_refusals_of_transfers(program: Program) -> None:
    chain = opened(program)
    signer = chain.signer
    chain.refused(signer.transfer(BUYER, ALICE, 0, 0), "ZeroAmount")
    chain.refused(signer.transfer(BUYER, bytes(20), 5, 0), "InvalidReceiver", hexaddr(bytes(20)))
    chain.refused(signer.transfer(BUYER, PROGRAM, 5, 0), "InvalidReceiver", hexaddr(PROGRAM))
    chain.refused(
        signer.transfer(BUYER, ALICE, VALUE, 0), "InsufficientBalance", hexaddr(BUYER.address), VALUE, VALUE, 50_000
    )
    # An amount near 2^256 is refused as insufficient, never by an overflow panic.
    huge = 2**256 - 1
    chain.refused(
        signer.transfer(BUYER, ALICE, huge, 0), "InsufficientBalance", hexaddr(BUYER.address), VALUE, huge, fee_of(huge)
    )
    # Expired: valid while block.timestamp <= expiry.
    chain.refused(
        signer.transfer(BUYER, ALICE, 5, 0, expiry=chain.timestamp - 1), "Expired", chain.timestamp - 1, chain.timestamp
    )
    chain.ok(signer.transfer(BUYER, ALICE, 5, 0, expiry=chain.timestamp))
    assert chain.view("nonces", BUYER.address) == (1,)


def test_replays_and_out_of_order_nonces_are_refused(program: Program) -> None:
    chain = opened(program)
    first = chain.signer.transfer(BUYER, ALICE, 1_000, 0)
    # The same signed transfer twice in one block, then again in a later block.
    ok, replay = chain.block([first, first])
    assert ok.success and replay.output == program.error("InvalidNonce", hexaddr(BUYER.address), 1, 0)
    chain.refused(first, "InvalidNonce", hexaddr(BUYER.address), 1, 0)
    chain.refused(chain.signer.transfer(BUYER, ALICE, 1_000, 2), "InvalidNonce", hexaddr(BUYER.address), 1, 2)
    assert chain.balance(ALICE) == 1_000
    chain.ok(chain.signer.transfer(BUYER, ALICE, 1_000, 1))
    assert chain.balance(ALICE) == 2_000


def test_signatures_of_another_domain_are_refused(program: Program) -> None:
    chain = opened(program)
    holder = hexaddr(BUYER.address)
    for domain in (
        domain_separator(chain=chain_of(NOTE + 1)),  # another note chain's
        domain_separator(mainchain_id=43113),  # another mainchain's
        domain_separator(cash=bytes.fromhex("11" * 20)),  # another CoNETCash's
    ):
        chain.refused(Signer(program, domain).transfer(BUYER, ALICE, 1_000, 0), "InvalidSignature", holder)
    assert chain.balance(BUYER) == VALUE and chain.view("nonces", BUYER.address) == (0,)


def test_forged_and_malformed_signatures_are_refused(program: Program) -> None:
    chain = opened(program)
    holder = hexaddr(BUYER.address)
    values = [BUYER.address, MALLORY.address, 1_000, 0, T0 + 3600]
    good = sign(BUYER.secret, digest("Transfer", values))
    forged = sign(MALLORY.secret, digest("Transfer", values))
    order = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    high_s = good[:32] + (order - int.from_bytes(good[32:64], "big")).to_bytes(32, "big") + bytes([55 - good[64]])
    for signature in (forged, high_s, good[:64], good + b"\x00", bytes(65), good[:64] + b"\x1d"):
        chain.refused(sent_by(BUYER, program.call("transfer", *values, signature)), "InvalidSignature", holder)
    # A valid signature over other terms (the amount changed in flight).
    tampered = [*values[:2], 1_001, *values[3:]]
    chain.refused(sent_by(BUYER, program.call("transfer", *tampered, good)), "InvalidSignature", holder)
    # The holder's good message wrapped in anybody else's transaction: refused before its signature is
    # even read, so the message's nonce stays the holder's to spend with its own DLE transaction.
    for wrapper in (MALLORY, CBDC, ALICE):
        chain.refused(
            sent_by(wrapper, program.call("transfer", *values, good)), "NotSigner", hexaddr(wrapper.address), holder
        )
    assert chain.view("nonces", BUYER.address) == (0,) and chain.balance(BUYER) == VALUE
    chain.ok(sent_by(BUYER, program.call("transfer", *values, good)))
    assert chain.balance(MALLORY.address) == 1_000


# -- payment authorizations ---------------------------------------------------------------------------


def test_a_payee_deducts_up_to_the_limit_without_the_holder(program: Program) -> None:
    chain = opened(program)
    s = chain.signer
    receipt = chain.ok(s.authorize(BUYER, BOB, 1_000_000, 0, expiry=T0 + 100))
    assert program.returns("authorize", receipt.output) == (0,)
    assert event(program, receipt.logs[0], "Authorized") == (
        hexaddr(BUYER.address),
        0,
        hexaddr(BOB.address),
        1_000_000,
        T0 + 100,
    )
    # The payee signs its deductions with its own nonces.
    first = chain.ok(s.deduct(BOB, BUYER, 0, 400_000, 0))
    assert event(program, first.logs[0], "Deducted") == (hexaddr(BUYER.address), 0, hexaddr(BOB.address), 400_000, 200)
    chain.ok(s.deduct(BOB, BUYER, 0, 599_999, 1))
    chain.refused(s.deduct(BOB, BUYER, 0, 2, 2), "OverLimit", hexaddr(BUYER.address), 0, 1, 2)
    chain.ok(s.deduct(BOB, BUYER, 0, 1, 2))
    chain.refused(s.deduct(BOB, BUYER, 0, 1, 3), "OverLimit", hexaddr(BUYER.address), 0, 0, 1)
    fees = 200 + fee_of(599_999) + 1
    assert chain.balance(BOB) == 1_000_000
    assert chain.balance(BUYER) == VALUE - 1_000_000 - fees
    assert chain.total() == VALUE
    auth = chain.view("authorizationOf", BUYER.address, 0)[0]
    assert auth == (hexaddr(BOB.address), T0 + 100, False, 1_000_000, 1_000_000)
    # The holder's nonce moved only for the authorization.
    assert chain.view("nonces", BUYER.address) == (1,) and chain.view("nonces", BOB.address) == (3,)


def test_deductions_stop_at_expiry_and_on_revocation(program: Program) -> None:
    chain = opened(program)
    s = chain.signer
    # Block n runs at T0 + n.
    chain.ok(s.authorize(BUYER, BOB, 10_000, 0, expiry=T0 + 4))  # authorization 0
    chain.ok(s.authorize(BUYER, CAROL, 10_000, 1, expiry=T0 + 3600))  # authorization 1
    chain.ok(s.deduct(BOB, BUYER, 0, 100, 0))
    assert chain.timestamp == T0 + 4
    chain.ok(s.deduct(BOB, BUYER, 0, 100, 1))  # the last second it is valid
    chain.refused(s.deduct(BOB, BUYER, 0, 100, 2), "AuthorizationExpired", hexaddr(BUYER.address), 0, T0 + 4)
    chain.ok(s.deduct(CAROL, BUYER, 1, 100, 0))
    receipt = chain.ok(s.revoke(BUYER, 1, 2))
    assert event(program, receipt.logs[0], "Revoked") == (hexaddr(BUYER.address), 1)
    chain.refused(s.deduct(CAROL, BUYER, 1, 100, 1), "AuthorizationRevoked", hexaddr(BUYER.address), 1)
    chain.refused(s.revoke(BUYER, 1, 3), "AuthorizationRevoked", hexaddr(BUYER.address), 1)
    chain.refused(s.revoke(BUYER, 9, 3), "UnknownAuthorization", hexaddr(BUYER.address), 9)
    chain.refused(s.deduct(CAROL, BUYER, 9, 100, 1), "UnknownAuthorization", hexaddr(BUYER.address), 9)
    assert chain.balance(BOB) == 200 and chain.balance(CAROL) == 100


def test_only_the_payee_can_draw_on_an_authorization(program: Program) -> None:
    chain = opened(program)
    s = chain.signer
    chain.ok(s.authorize(BUYER, BOB, 10_000, 0))
    # Signed by the holder, or by anyone but the payee, it is refused, whoever sends it.
    chain.refused(sent_by(BOB, s.deduct(BUYER, BUYER, 0, 100, 0)), "InvalidSignature", hexaddr(BOB.address))
    chain.refused(sent_by(BOB, s.deduct(MALLORY, BUYER, 0, 100, 0)), "InvalidSignature", hexaddr(BOB.address))
    chain.refused(s.deduct(MALLORY, BUYER, 0, 100, 0), "NotSigner", hexaddr(MALLORY.address), hexaddr(BOB.address))
    # The payee's deduction signed for another authorization does not apply to this one.
    values = [BOB.address, BUYER.address, 1, 100, 0, T0 + 3600]
    other = sign(BOB.secret, digest("Deduct", values))
    chain.refused(
        sent_by(BOB, program.call("deduct", BUYER.address, 0, 100, 0, T0 + 3600, other)),
        "InvalidSignature",
        hexaddr(BOB.address),
    )
    # Beyond the holder's balance, within the limit: refused as insufficient.
    chain.ok(s.transfer(BUYER, ALICE, spendable(VALUE - 5_000), 1))
    assert chain.balance(BUYER) == 5_000
    chain.refused(s.deduct(BOB, BUYER, 0, 5_000, 0), "InsufficientBalance", hexaddr(BUYER.address), 5_000, 5_000, 3)
    chain.refused(s.authorize(BUYER, BOB, 0, 2), "ZeroAmount")
    chain.refused(s.deduct(BOB, BUYER, 0, 0, 0), "ZeroAmount")
    assert chain.total() == VALUE


def test_a_stranger_with_no_balance_cannot_fill_the_state_with_authorizations(program: Program) -> None:
    """Review finding: an authorization costs no fee, so one from someone holding nothing is refused
    before it takes a slot (the creator drops the reverting transaction: nothing of it is stored)."""
    chain = opened(program)
    s = chain.signer
    assert chain.balance(MALLORY) == 0
    chain.refused(s.authorize(MALLORY, BOB, 10_000, 0), "NothingToAuthorize", hexaddr(MALLORY.address))
    assert chain.view("nonces", MALLORY.address) == (0,)
    chain.refused(s.deduct(BOB, MALLORY, 0, 1, 0), "UnknownAuthorization", hexaddr(MALLORY.address), 0)
    # Once it holds something, it may.
    chain.ok(s.transfer(BUYER, MALLORY, 1_000, 0))
    chain.ok(s.authorize(MALLORY, BOB, 10_000, 0))
    assert chain.view("authorizationOf", MALLORY.address, 0)[0][0] == hexaddr(BOB.address)


def test_deduct_to_pays_a_third_party_within_the_limit_with_the_fee_split(program: Program) -> None:
    chain = opened(program)
    s = chain.signer
    chain.ok(s.authorize(BUYER, BOB, 1_000_000, 0, expiry=T0 + 100))
    # The payee (BOB) signs; the amount goes to CAROL, the holder pays the fee on top.
    receipt = chain.ok(s.deduct_to(BOB, BUYER, 0, CAROL, 400_000, 0))
    assert program.returns("deductTo", receipt.output) == (200,)
    assert event(program, receipt.logs[0], "DeductedTo") == (
        hexaddr(BUYER.address),
        0,
        hexaddr(BOB.address),
        hexaddr(CAROL.address),
        400_000,
        200,
    )
    cbdc, witness, validators = split(200)
    assert chain.balance(CAROL) == 400_000 and chain.balance(BOB) == 0
    assert chain.balance(BUYER) == VALUE - 400_000 - 200
    assert chain.balance(CBDC) == cbdc and chain.balance(POOL) == validators
    assert all(chain.balance(w) == witness for w in WITNESSES)
    # One limit and one payee nonce sequence for `deduct` and `deductTo` together.
    chain.ok(s.deduct(BOB, BUYER, 0, 500_000, 1))
    chain.refused(
        s.deduct_to(BOB, BUYER, 0, ALICE, 100_001, 2), "OverLimit", hexaddr(BUYER.address), 0, 100_000, 100_001
    )
    chain.ok(s.deduct_to(BOB, BUYER, 0, ALICE, 100_000, 2))
    chain.refused(s.deduct_to(BOB, BUYER, 0, ALICE, 1, 3), "OverLimit", hexaddr(BUYER.address), 0, 0, 1)
    assert chain.view("authorizationOf", BUYER.address, 0)[0][4] == 1_000_000
    assert chain.view("nonces", BOB.address) == (3,) and chain.view("nonces", BUYER.address) == (1,)
    assert chain.balance(ALICE) == 100_000 and chain.balance(BOB) == 500_000
    assert chain.total() == VALUE


def test_deduct_to_stops_at_expiry_on_revocation_and_for_anyone_but_the_payee(program: Program) -> None:
    chain = opened(program)
    s = chain.signer
    # Block n runs at T0 + n.
    chain.ok(s.authorize(BUYER, BOB, 10_000, 0, expiry=T0 + 4))  # authorization 0
    chain.ok(s.authorize(BUYER, BOB, 10_000, 1, expiry=T0 + 3600))  # authorization 1
    chain.ok(s.deduct_to(BOB, BUYER, 0, ALICE, 100, 0))
    assert chain.timestamp == T0 + 4
    chain.ok(s.deduct_to(BOB, BUYER, 0, ALICE, 100, 1))  # the last second it is valid
    chain.refused(s.deduct_to(BOB, BUYER, 0, ALICE, 100, 2), "AuthorizationExpired", hexaddr(BUYER.address), 0, T0 + 4)
    # The recipient, the holder or a stranger cannot sign it; nor can the payee's signature be moved
    # to another recipient or authorization.
    chain.refused(sent_by(BOB, s.deduct_to(ALICE, BUYER, 1, ALICE, 100, 0)), "InvalidSignature", hexaddr(BOB.address))
    chain.refused(sent_by(BOB, s.deduct_to(BUYER, BUYER, 1, ALICE, 100, 0)), "InvalidSignature", hexaddr(BOB.address))
    values = [BOB.address, BUYER.address, 1, ALICE.address, 100, 2, T0 + 3600]
    signed = sign(BOB.secret, digest("DeductTo", values))
    stolen = sent_by(BOB, program.call("deductTo", BUYER.address, 1, MALLORY.address, 100, 2, T0 + 3600, signed))
    chain.refused(stolen, "InvalidSignature", hexaddr(BOB.address))
    # A `Deduct` signature is not a `DeductTo` one.
    as_deduct = sign(BOB.secret, digest("Deduct", [BOB.address, BUYER.address, 1, 100, 2, T0 + 3600]))
    chain.refused(
        sent_by(BOB, program.call("deductTo", BUYER.address, 1, BOB.address, 100, 2, T0 + 3600, as_deduct)),
        "InvalidSignature",
        hexaddr(BOB.address),
    )
    chain.ok(sent_by(BOB, program.call("deductTo", BUYER.address, 1, ALICE.address, 100, 2, T0 + 3600, signed)))
    chain.refused(
        sent_by(BOB, program.call("deductTo", BUYER.address, 1, ALICE.address, 100, 2, T0 + 3600, signed)),
        "InvalidNonce",
        hexaddr(BOB.address),
        3,
        2,
    )
    chain.ok(s.revoke(BUYER, 1, 2))
    chain.refused(s.deduct_to(BOB, BUYER, 1, ALICE, 100, 3), "AuthorizationRevoked", hexaddr(BUYER.address), 1)
    chain.refused(s.deduct_to(BOB, BUYER, 9, ALICE, 100, 3), "UnknownAuthorization", hexaddr(BUYER.address), 9)
    chain.refused(s.deduct_to(BOB, BUYER, 1, ALICE, 0, 3), "AuthorizationRevoked", hexaddr(BUYER.address), 1)
    assert chain.balance(ALICE) == 300 and chain.total() == VALUE


def test_deduct_to_refuses_a_short_balance_zero_and_bad_recipients(program: Program) -> None:
    chain = opened(program)
    s = chain.signer
    chain.ok(s.authorize(BUYER, BOB, VALUE, 0))
    chain.ok(s.transfer(BUYER, ALICE, spendable(VALUE - 5_000), 1))
    assert chain.balance(BUYER) == 5_000
    chain.refused(
        s.deduct_to(BOB, BUYER, 0, CAROL, 5_000, 0), "InsufficientBalance", hexaddr(BUYER.address), 5_000, 5_000, 3
    )
    chain.refused(s.deduct_to(BOB, BUYER, 0, CAROL, 0, 0), "ZeroAmount")
    chain.refused(s.deduct_to(BOB, BUYER, 0, bytes(20), 10, 0), "InvalidReceiver", hexaddr(bytes(20)))
    chain.refused(s.deduct_to(BOB, BUYER, 0, PROGRAM, 10, 0), "InvalidReceiver", hexaddr(PROGRAM))
    # Refused deductions spend nothing of the limit.
    assert chain.view("authorizationOf", BUYER.address, 0)[0][4] == 0
    chain.ok(s.deduct_to(BOB, BUYER, 0, CAROL, spendable(5_000), 0))
    assert chain.balance(CAROL) == spendable(5_000) and chain.total() == VALUE


# -- exits --------------------------------------------------------------------------------------------

EXIT_FIELDS = ["uint256", "bytes32", "uint256", "address", "address", "uint256", "uint256", "bytes32"]
EXIT_CERTIFICATE_TYPE = (
    b"ExitCertificate(uint256 note,bytes32 chain,uint256 height,address holder,address receiver,uint256 amount,"
    b"uint256 nonce,bytes32 exitedBefore)"
)


def history_after(certificate: Sequence[Any]) -> bytes:
    """The exit history's head after `certificate`: bytes27 of its EIP-712 struct hash (CertifiedExits)."""
    return keccak(encode(["bytes32", *EXIT_FIELDS], [keccak(EXIT_CERTIFICATE_TYPE), *certificate]))[:27] + bytes(5)


def test_the_exit_certificate_has_exactly_conetcashs_fields(program: Program) -> None:
    # The struct CoNETCash (and the oDEX vault) pay on lives in their shared CertifiedExits.
    source = (ROOT / "contracts" / "CertifiedExits.sol").read_text()
    body = re.search(r"struct ExitCertificate \{(.*?)\}", source, re.S)
    assert body is not None
    fields = [tuple(line.strip().rstrip(";").split()) for line in body.group(1).strip().splitlines()]
    inputs = next(e for e in program.abi if e.get("name") == "Exited")["inputs"]
    assert [(i["type"], i["name"]) for i in inputs] == fields
    assert not any(i["indexed"] for i in inputs)
    assert [t for t, _ in fields] == EXIT_FIELDS


def test_exits_burn_and_number_certificates_sequentially(program: Program) -> None:
    chain = opened(program)
    s = chain.signer
    chain.ok(s.transfer(BUYER, ALICE, 10_000_000, 0))
    receiver = bytes.fromhex("ee" * 20)
    certificates: list[tuple[Any, ...]] = []
    head = bytes(32)  # the first exit names the empty history
    assert chain.view("exitHistory") == (0, head)
    for key, nonce, amount in ((ALICE, 0, 4_000_000), (BUYER, 1, 1), (ALICE, 1, 6_000_000), (CBDC, 0, 1_500)):
        height = chain.height
        receipt = chain.ok(s.exit(key, receiver, amount, nonce))
        (log,) = receipt.logs
        certificate = (NOTE, CHAIN, height, hexaddr(key.address), hexaddr(receiver), amount, len(certificates), head)
        assert event(program, log, "Exited") == certificate
        # The log data is abi.encode(ExitCertificate): what CoNETCash hashes under its typehash.
        assert log.data == encode(EXIT_FIELDS, list(certificate))
        assert program.returns("exit", receipt.output) == (len(certificates),)
        certificates.append(certificate)
        # Each exit names the history before it; the head moves on to bytes27 of its struct hash.
        head = history_after(certificate)
        assert head[27:] == bytes(5) and chain.view("exitHistory") == (len(certificates), head)
    assert chain.view("exitCount") == (4,)
    for nonce, certificate in enumerate(certificates):
        assert chain.view("exitOf", nonce) == (certificate,)
    fee = fee_of(10_000_000)
    assert chain.balance(ALICE) == 0 and chain.balance(CBDC) == split(fee)[0] - 1_500
    exited = 4_000_000 + 1 + 6_000_000 + 1_500
    assert chain.view("supply") == (VALUE, exited, VALUE - exited)
    assert chain.total() + exited == VALUE
    assert chain.balance(BUYER) == VALUE - 10_000_000 - fee - 1


def test_refusals_of_exits(program: Program) -> None:
    chain = opened(program)
    s = chain.signer
    receiver = bytes.fromhex("ee" * 20)
    chain.refused(
        s.exit(BUYER, receiver, VALUE + 1, 0), "InsufficientBalance", hexaddr(BUYER.address), VALUE, VALUE + 1, 0
    )
    chain.refused(s.exit(BUYER, receiver, 0, 0), "ZeroAmount")
    chain.refused(s.exit(BUYER, bytes(20), 1, 0), "InvalidReceiver", hexaddr(bytes(20)))
    chain.refused(s.exit(ALICE, receiver, 1, 0), "InsufficientBalance", hexaddr(ALICE.address), 0, 1, 0)
    chain.refused(s.exit(BUYER, receiver, 1, 0, expiry=T0), "Expired", T0, chain.timestamp)
    chain.refused(
        Signer(program, domain_separator(chain=chain_of(99))).exit(BUYER, receiver, 1, 0),
        "InvalidSignature",
        hexaddr(BUYER.address),
    )
    exit_all = s.exit(BUYER, receiver, VALUE, 0)
    ok, replay = chain.block([exit_all, exit_all])
    assert ok.success and replay.output == program.error("InvalidNonce", hexaddr(BUYER.address), 1, 0)
    chain.refused((MALLORY.address, program.call("exitOf", 1)), "UnknownExit", 1)
    assert chain.view("supply") == (VALUE, VALUE, 0)


# -- the creator's calls ------------------------------------------------------------------------------


def test_refund_only_when_fully_exited_only_by_a_system_transaction_and_in_order(program: Program) -> None:
    chain = opened(program)
    s = chain.signer
    receiver = bytes.fromhex("ee" * 20)
    chain.ok(s.transfer(BUYER, ALICE, 50_000_000, 0))
    call = program.call("refund", 0, CAROL.address, 20_000_000)
    refund = (SYSTEM_SENDER, call)
    chain.refused(refund, "NotFullyExited", VALUE)
    nonces = {k.name: 1 if k is BUYER else 0 for k in EVERYONE}
    for key in EVERYONE:
        balance = chain.balance(key)
        if balance:
            chain.ok(s.exit(key, receiver, balance, nonces[key.name]))
            nonces[key.name] += 1
    assert chain.total() == 0 and chain.view("supply") == (VALUE, VALUE, 0)
    exits = chain.view("exitCount")[0]
    assert exits == 1 + 1 + 1 + 5 + 1  # buyer, alice, CBDC, 5 witnesses, pool
    # Nobody's key carries the authority, the CBDC's included: only the system sender may call it.
    for key in (MALLORY, BUYER, CBDC):
        chain.refused((key.address, call), "NotSystem", hexaddr(key.address))
    chain.refused((SYSTEM_SENDER, program.call("refund", 1, CAROL.address, 20_000_000)), "RefundOutOfOrder", 0, 1)
    chain.refused((SYSTEM_SENDER, program.call("refund", 0, CAROL.address, 0)), "InvalidValue", 0)
    chain.refused((SYSTEM_SENDER, program.call("refund", 0, bytes(20), 1)), "ZeroAddress")
    receipt = chain.ok(refund)
    assert event(program, receipt.logs[0], "Refunded") == (hexaddr(CAROL.address), 20_000_000)
    assert chain.balance(CAROL) == 20_000_000
    assert chain.view("supply") == (VALUE + 20_000_000, VALUE, 20_000_000)
    assert chain.view("refundCount") == (1,)
    chain.refused(refund, "RefundOutOfOrder", 1, 0)  # the same re-funding twice
    chain.refused((SYSTEM_SENDER, program.call("refund", 1, CAROL.address, 1)), "NotFullyExited", 20_000_000)
    # Certificate nonces continue: CoNETCash's nullifiers for this note are never reset.
    receipt = chain.ok(s.exit(CAROL, receiver, 1, 0))
    assert event(program, receipt.logs[0], "Exited")[-2] == exits


def test_a_replaced_witness_earns_the_share_from_then_on(program: Program) -> None:
    chain = opened(program)
    s = chain.signer
    newcomer = Key.of("new witness")
    chain.ok(s.transfer(BUYER, ALICE, 1_000_000, 0))  # fee 500: 50 to each witness
    for key in (MALLORY, CBDC):
        chain.refused(
            (key.address, program.call("replaceWitness", 2, newcomer.address)), "NotSystem", hexaddr(key.address)
        )
    chain.refused((SYSTEM_SENDER, program.call("replaceWitness", 5, newcomer.address)), "InvalidWitnessIndex", 5)
    chain.refused((SYSTEM_SENDER, program.call("replaceWitness", 2, bytes(20))), "ZeroAddress")
    receipt = chain.ok((SYSTEM_SENDER, program.call("replaceWitness", 2, newcomer.address)))
    assert event(program, receipt.logs[0], "WitnessReplaced") == (
        2,
        hexaddr(WITNESSES[2].address),
        hexaddr(newcomer.address),
    )
    chain.ok(s.transfer(BUYER, ALICE, 1_000_000, 1))
    assert chain.balance(WITNESSES[2]) == 50 and chain.balance(newcomer) == 50
    assert chain.balance(WITNESSES[1]) == 100
    assert chain.total() + chain.balance(newcomer) == VALUE


# -- gas ----------------------------------------------------------------------------------------------


def test_gas_of_the_user_actions(program: Program) -> None:
    """Gas in the VM (Ethereum's schedule, intrinsic included), printed for docs/note-ledger.md."""
    chain = opened(program)
    s = chain.signer
    receiver = bytes.fromhex("ee" * 20)
    chain.ok(s.transfer(BUYER, ALICE, 10_000_000, 0))  # every fee recipient gets its first balance
    gas = {
        "transfer (to a new holder)": chain.ok(s.transfer(BUYER, BOB, 1_000_000, 1)).gas_used,
        "transfer (to a holder)": chain.ok(s.transfer(BUYER, ALICE, 1_000_000, 2)).gas_used,
        "authorize": chain.ok(s.authorize(BUYER, BOB, 5_000_000, 3)).gas_used,
        "deduct": chain.ok(s.deduct(BOB, BUYER, 3, 1_000_000, 0)).gas_used,
        "deduct to": chain.ok(s.deduct_to(BOB, BUYER, 3, CAROL, 1_000_000, 1)).gas_used,
        "revoke": chain.ok(s.revoke(BUYER, 3, 4)).gas_used,
        "exit": chain.ok(s.exit(ALICE, receiver, 1_000_000, 0)).gas_used,
        "exit (whole balance)": chain.ok(s.exit(ALICE, receiver, chain.balance(ALICE), 1)).gas_used,
    }
    print()
    for action, used in gas.items():
        print(f"  {action:28} {used:>7,} gas")
    assert all(used < 200_000 for used in gas.values())


# -- conservation over random sequences ---------------------------------------------------------------


@dataclass
class Model:
    """What the program must do, in plain Python: balances, nonces, authorizations, exits."""

    balances: dict[bytes, int]
    nonces: dict[bytes, int] = field(default_factory=dict)
    authorizations: dict[tuple[bytes, int], list[Any]] = field(
        default_factory=dict
    )  # payee, limit, spent, expiry, revoked
    funded: int = VALUE
    exited: int = 0
    exits: int = 0

    def nonce(self, key: Key) -> int:
        return self.nonces.get(key.address, 0)

    def use(self, key: Key) -> None:
        self.nonces[key.address] = self.nonce(key) + 1

    def pay(self, holder: bytes, to: bytes, amount: int) -> bool:
        fee = fee_of(amount)
        if amount == 0 or self.balances.get(holder, 0) < amount + fee:
            return False
        self.balances[holder] -= amount + fee
        self.balances[to] = self.balances.get(to, 0) + amount
        cbdc, witness, validators = split(fee)
        for key, share in ((CBDC, cbdc), *((w, witness) for w in WITNESSES), (POOL, validators)):
            self.balances[key.address] = self.balances.get(key.address, 0) + share
        return True


ACTORS = [BUYER, ALICE, BOB, CAROL, CBDC, WITNESSES[0], POOL]


def draw_action(data: st.DataObject, chain: Chain, model: Model) -> tuple[bytes | tuple[bytes, bytes], bool]:
    """One transaction and whether the model expects it to succeed (applying it to the model if so)."""
    s = chain.signer
    kind = data.draw(
        st.sampled_from(
            ["transfer", "transfer", "transfer", "authorize", "deduct", "deduct to", "revoke", "exit", "exit all"]
        )
    )
    funded = [k for k in ACTORS if model.balances.get(k.address, 0)]
    key = data.draw(st.sampled_from(funded if funded and data.draw(st.integers(0, 3)) else ACTORS))
    balance = model.balances.get(key.address, 0)
    amount = data.draw(
        st.one_of(
            st.integers(0, max(balance, 1)),
            st.just(max(balance - fee_of(balance), 0)),
            st.just(balance),
            st.integers(1, 3),
        )
    )
    fault = data.draw(st.sampled_from([None] * 8 + ["nonce", "expired", "forged"]))
    nonce = model.nonce(key)
    if fault == "nonce":
        nonce += data.draw(st.sampled_from([-1, 1])) if nonce else 1
    expiry = chain.timestamp - 1 if fault == "expired" else chain.timestamp + data.draw(st.integers(0, 5))
    signer = Signer(chain.program, domain_separator(chain=chain_of(NOTE + 1))) if fault == "forged" else s
    valid = fault is None
    if kind == "transfer":
        to = data.draw(st.sampled_from(ACTORS))
        call = signer.transfer(key, to, amount, nonce, expiry)
        valid = valid and model.pay(key.address, to.address, amount)
    elif kind == "authorize":
        payee = data.draw(st.sampled_from(ACTORS))
        limit = data.draw(st.integers(0, VALUE // 2))
        call = signer.authorize(key, payee, limit, nonce, expiry)
        valid = valid and limit > 0 and balance > 0  # NothingToAuthorize without a balance
        if valid:
            model.authorizations[(key.address, nonce)] = [payee, limit, 0, expiry, False]
    elif kind in ("deduct", "deduct to") and model.authorizations:
        (holder, authorization), entry = data.draw(
            st.sampled_from(sorted(model.authorizations.items(), key=lambda i: (i[0][0], i[0][1])))
        )
        payee, limit, spent, auth_expiry, revoked = entry
        nonce = model.nonce(payee) + (1 if fault == "nonce" else 0)
        amount = data.draw(st.one_of(st.integers(1, max(limit - spent, 1)), st.integers(0, limit)))
        holder_key = next(k for k in ACTORS if k.address == holder)
        if kind == "deduct":
            to = payee
            call = signer.deduct(payee, holder_key, authorization, amount, nonce, expiry)
        else:
            to = data.draw(st.sampled_from(ACTORS))
            call = signer.deduct_to(payee, holder_key, authorization, to, amount, nonce, expiry)
        valid = valid and not revoked and chain.timestamp <= auth_expiry and 0 < amount <= limit - spent
        valid = valid and model.pay(holder, to.address, amount)
        if valid:
            entry[2] += amount
            model.use(payee)
        note_event(f"{kind} {'ok' if valid else 'refused'}")
        return call, valid
    elif kind == "revoke" and model.authorizations:
        (holder, authorization), entry = data.draw(
            st.sampled_from(sorted(model.authorizations.items(), key=lambda i: (i[0][0], i[0][1])))
        )
        key = next(k for k in ACTORS if k.address == holder)
        nonce = model.nonce(key) + (1 if fault == "nonce" else 0)
        call = signer.revoke(key, authorization, nonce, expiry)
        valid = valid and not entry[4]
        if valid:
            entry[4] = True
    elif kind in ("exit", "exit all"):
        if kind == "exit all":
            amount = balance
        call = signer.exit(key, bytes.fromhex("ee" * 20), amount, nonce, expiry)
        valid = valid and 0 < amount <= balance
        if valid:
            model.balances[key.address] -= amount
            model.exited += amount
            model.exits += 1
    else:
        call = signer.transfer(key, ALICE, amount, nonce, expiry)
        valid = valid and model.pay(key.address, ALICE.address, amount)
    if valid:
        model.use(key)
    note_event(f"{kind} {'ok' if valid else 'refused'}")
    return call, valid


def drain(chain: Chain, model: Model) -> list[bytes]:
    """Exits of every balance, emptying the note (then it may be re-funded)."""
    calls = []
    for key in EVERYONE:
        balance = model.balances.get(key.address, 0)
        if balance:
            calls.append(chain.signer.exit(key, bytes.fromhex("ee" * 20), balance, model.nonce(key)))
            model.use(key)
            model.balances[key.address] = 0
            model.exited += balance
            model.exits += 1
    return calls


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(data=st.data())
def test_value_is_conserved_over_random_sequences(program: Program, data: st.DataObject) -> None:
    chain = opened(program)
    model = Model(balances={BUYER.address: VALUE})
    refunds = 0
    for _ in range(data.draw(st.integers(1, 5), label="blocks")):
        calls: list[bytes | tuple[bytes, bytes]] = []
        expected: list[bool] = []
        if data.draw(st.integers(0, 4), label="drain") == 0:
            calls = list(drain(chain, model))
            expected = [True] * len(calls)
        else:
            for _ in range(data.draw(st.integers(1, 6), label="transactions")):
                call, valid = draw_action(data, chain, model)
                calls.append(call)
                expected.append(valid)
        if model.funded == model.exited and data.draw(st.booleans(), label="refund"):
            amount = data.draw(st.integers(1, VALUE), label="refund amount")
            calls.append((SYSTEM_SENDER, chain.program.call("refund", refunds, CAROL.address, amount)))
            refunds += 1
            expected.append(True)
            model.funded += amount
            model.balances[CAROL.address] = amount
            note_event("re-funded")
        receipts = chain.block(calls)
        assert [r.success for r in receipts] == expected
        note_event(
            f"{sum(expected)} of {len(expected)} transactions succeeded" if len(expected) < 3 else "3+ transactions"
        )
        # Conservation, to the unit: every balance read from storage, plus everything exited.
        assert chain.total() + model.exited == model.funded
        assert chain.view("supply") == (model.funded, model.exited, model.funded - model.exited)
        assert {k.name: chain.balance(k) for k in EVERYONE} == {
            k.name: model.balances.get(k.address, 0) for k in EVERYONE
        }
        assert chain.view("exitCount") == (model.exits,)
