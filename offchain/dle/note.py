"""The CoNETCash note program as the DLE runs it: genesis, the signed user actions, and reading state.

A note chain's state holds one account, the `NoteLedger` runtime (contracts/dle/NoteLedger.sol) at
`PROGRAM`, with empty storage; the genesis block's one transaction is `initialize(terms)` sent by the
CBDC. Every later transaction is a call to `PROGRAM` whose calldata carries a user's EIP-712 signature,
checked inside the program (docs/protocols.md, "The note ledger"), so the DLE transaction's own
`sender` proves nothing and is always the chain's creator of record (the CBDC).

Wallets build actions with `NoteSigner`; the roles read balances, nonces and exits with `NoteReader`
(a view call through the engine on a state, never written back).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from eth_abi.abi import decode, encode

from dle_vm.block import Block
from dle_vm.encoding import RLPItem, fixed_bytes, list_of, rlp_list, uint, uint_bytes
from dle_vm.engine import BlockContext, Engine, Log, Receipt
from dle_vm.hashing import keccak
from dle_vm.signature import sign
from dle_vm.state import Account, State
from dle_vm.transaction import Transaction

__all__ = [
    "GAS_LIMIT",
    "PROGRAM",
    "ExitCertificate",
    "NoteReader",
    "NoteSigner",
    "NoteTerms",
    "Program",
    "chain_id_of",
    "genesis_state",
    "note_program",
]

PROGRAM = keccak(b"CoNETCash note program")[12:]
"""Where the program lives in every note chain's state: fixed, so it never collides with a precompile."""

GAS_LIMIT = 1_000_000
"""Gas given to every note transaction: a transfer uses ~90k, an exit ~120k."""

_DOMAIN_TYPE = b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract,bytes32 salt)"
_MESSAGES = {
    "Transfer": "Transfer(address holder,address to,uint256 amount,uint256 nonce,uint256 expiry)",
    "Authorize": "Authorize(address holder,address payee,uint256 limit,uint256 nonce,uint256 expiry)",
    "Revoke": "Revoke(address holder,uint256 authorization,uint256 nonce,uint256 expiry)",
    "Deduct": "Deduct(address payee,address holder,uint256 authorization,uint256 amount,uint256 nonce,uint256 expiry)",
    "DeductTo": (
        "DeductTo(address payee,address holder,uint256 authorization,address to,uint256 amount,uint256 nonce,"
        "uint256 expiry)"
    ),
    "Exit": "Exit(address holder,address receiver,uint256 amount,uint256 nonce,uint256 expiry)",
}


def chain_id_of(mainchain_id: int, cash: bytes, note: int) -> bytes:
    """DleChainId.compute(cash, note) on the mainchain: keccak256(abi.encode(chainid, asset, id))."""
    return keccak(encode(["uint256", "address", "uint256"], [mainchain_id, cash, note]))


def _abi_type(item: dict[str, Any]) -> str:
    kind = str(item["type"])
    if kind.startswith("tuple"):
        return "(" + ",".join(_abi_type(c) for c in item["components"]) + ")" + kind[len("tuple") :]
    return kind


@dataclass(frozen=True)
class Program:
    """A compiled DLE program: its runtime code and ABI, with calldata and event codecs."""

    runtime: bytes
    abi: tuple[dict[str, Any], ...]

    def _function(self, name: str) -> tuple[str, list[str], list[str]]:
        for item in self.abi:
            if item["type"] == "function" and item["name"] == name:
                inputs = [_abi_type(i) for i in item["inputs"]]
                return f"{name}({','.join(inputs)})", inputs, [_abi_type(o) for o in item["outputs"]]
        raise KeyError(f"the program has no function {name!r}")

    def call(self, name: str, *args: Any) -> bytes:
        """Calldata of `name(args)`."""
        signature, inputs, _ = self._function(name)
        return keccak(signature.encode())[:4] + encode(inputs, list(args))

    def returns(self, name: str, output: bytes) -> tuple[Any, ...]:
        """The decoded return values of `name`."""
        return tuple(decode(self._function(name)[2], output))

    def event(self, name: str) -> tuple[bytes, list[str], list[bool]]:
        """(topic 0, input types, which inputs are indexed) of event `name`."""
        for item in self.abi:
            if item["type"] == "event" and item["name"] == name:
                types = [_abi_type(i) for i in item["inputs"]]
                return (
                    keccak(f"{name}({','.join(types)})".encode()),
                    types,
                    [bool(i["indexed"]) for i in item["inputs"]],
                )
        raise KeyError(f"the program has no event {name!r}")

    def decode_error(self, output: bytes) -> str:
        """A revert's custom error in words (`Name(arg, ...)`), or the raw data when unknown."""
        for item in self.abi:
            if item["type"] != "error":
                continue
            types = [_abi_type(i) for i in item["inputs"]]
            if output[:4] == keccak(f"{item['name']}({','.join(types)})".encode())[:4]:
                try:
                    values = decode(types, output[4:])
                except Exception:
                    break
                shown = ", ".join(f"0x{v.hex()}" if isinstance(v, bytes) else str(v) for v in values)
                return f"{item['name']}({shown})"
        return f"0x{output.hex()}" if output else "reverted"


@cache
def note_program() -> Program:
    """NoteLedger as ape compiled it (offchain.artifacts; compiled first when stale)."""
    from offchain.artifacts import contract_artifact

    artifact = contract_artifact("NoteLedger")
    return Program(runtime=artifact.runtime_bytecode, abi=tuple(artifact.abi))


def genesis_state(program: Program | None = None) -> State:
    """A note chain's state before its genesis block: the program's code, no storage."""
    return State({PROGRAM: Account(code=(program or note_program()).runtime)})


@dataclass(frozen=True)
class NoteTerms:
    """`NoteLedger.Genesis`: the note's terms from the mainchain's `NoteMinted` and the draw."""

    note: int
    mainchain_id: int
    cash: bytes
    value: int
    holder: bytes
    cbdc: bytes
    witnesses: tuple[bytes, ...]
    validators_pool: bytes
    transfer_fee_bps: int

    @property
    def chain(self) -> bytes:
        return chain_id_of(self.mainchain_id, self.cash, self.note)

    def as_tuple(self) -> tuple[Any, ...]:
        return (
            self.note,
            self.chain,
            self.mainchain_id,
            self.cash,
            self.value,
            self.holder,
            self.cbdc,
            list(self.witnesses),
            self.validators_pool,
            self.transfer_fee_bps,
        )

    def to_rlp(self) -> list[RLPItem]:
        return [
            uint_bytes(self.note),
            uint_bytes(self.mainchain_id),
            self.cash,
            uint_bytes(self.value),
            self.holder,
            self.cbdc,
            list(self.witnesses),
            self.validators_pool,
            uint_bytes(self.transfer_fee_bps),
        ]

    @classmethod
    def from_rlp(cls, item: RLPItem) -> NoteTerms:
        note, mainchain_id, cash, value, holder, cbdc, witnesses, pool, fee = rlp_list(item, 9, "note terms")
        return cls(
            note=uint(note, "note"),
            mainchain_id=uint(mainchain_id, "mainchain id"),
            cash=fixed_bytes(cash, 20, "cash"),
            value=uint(value, "value"),
            holder=fixed_bytes(holder, 20, "holder"),
            cbdc=fixed_bytes(cbdc, 20, "cbdc"),
            witnesses=tuple(fixed_bytes(w, 20, "witness") for w in list_of(witnesses, "witnesses")),
            validators_pool=fixed_bytes(pool, 20, "validators pool"),
            transfer_fee_bps=uint(fee, "transfer fee"),
        )

    def initialize(self, program: Program | None = None) -> Transaction:
        """The genesis block's transaction."""
        data = (program or note_program()).call("initialize", self.as_tuple())
        return Transaction(sender=self.cbdc, to=PROGRAM, data=data, gas_limit=GAS_LIMIT)

    def domain_separator(self) -> bytes:
        """The EIP-712 domain every user message of this note is signed under."""
        return keccak(
            encode(
                ["bytes32", "bytes32", "bytes32", "uint256", "address", "bytes32"],
                [
                    keccak(_DOMAIN_TYPE),
                    keccak(b"CoNETCash Note"),
                    keccak(b"1"),
                    self.mainchain_id,
                    self.cash,
                    self.chain,
                ],
            )
        )


@dataclass(frozen=True)
class ExitCertificate:
    """CoNETCash's `ExitCertificate`, as the program's `Exited` event yields it."""

    note: int
    chain: bytes
    height: int
    holder: bytes
    receiver: bytes
    amount: int
    nonce: int

    _TYPES = ("uint256", "bytes32", "uint256", "address", "address", "uint256", "uint256")

    def as_tuple(self) -> tuple[Any, ...]:
        return (self.note, self.chain, self.height, self.holder, self.receiver, self.amount, self.nonce)

    def encode(self) -> bytes:
        """abi.encode(certificate): the `Exited` log's data."""
        return encode(list(self._TYPES), list(self.as_tuple()))

    @classmethod
    def decode(cls, data: bytes) -> ExitCertificate:
        note, chain, height, holder, receiver, amount, nonce = decode(list(cls._TYPES), data)
        return cls(note, chain, height, bytes.fromhex(holder[2:]), bytes.fromhex(receiver[2:]), amount, nonce)

    @classmethod
    def from_logs(cls, logs: Iterable[Log], program: Program | None = None) -> list[ExitCertificate]:
        """The certificates among a block's logs."""
        topic = (program or note_program()).event("Exited")[0]
        return [cls.decode(log.data) for log in logs if log.address == PROGRAM and log.topics[:1] == (topic,)]


@dataclass(frozen=True)
class NoteSigner:
    """Builds signed note transactions the way a wallet does (the caller tracks nonces)."""

    terms: NoteTerms
    program: Program

    def _signed(self, secret: bytes, kind: str, values: Sequence[Any]) -> bytes:
        type_string = _MESSAGES[kind]
        types = [part.split(" ")[0] for part in type_string[type_string.index("(") + 1 : -1].split(",")]
        struct_hash = keccak(keccak(type_string.encode()) + encode(types, list(values)))
        return sign(secret, keccak(b"\x19\x01" + self.terms.domain_separator() + struct_hash))

    def _tx(self, data: bytes) -> Transaction:
        return Transaction(sender=self.terms.cbdc, to=PROGRAM, data=data, gas_limit=GAS_LIMIT)

    def transfer(self, secret: bytes, holder: bytes, to: bytes, amount: int, nonce: int, expiry: int) -> Transaction:
        values = [holder, to, amount, nonce, expiry]
        return self._tx(self.program.call("transfer", *values, self._signed(secret, "Transfer", values)))

    def authorize(self, secret: bytes, holder: bytes, payee: bytes, limit: int, nonce: int, expiry: int) -> Transaction:
        values = [holder, payee, limit, nonce, expiry]
        return self._tx(self.program.call("authorize", *values, self._signed(secret, "Authorize", values)))

    def revoke(self, secret: bytes, holder: bytes, authorization: int, nonce: int, expiry: int) -> Transaction:
        values = [holder, authorization, nonce, expiry]
        return self._tx(self.program.call("revoke", *values, self._signed(secret, "Revoke", values)))

    def deduct(
        self, secret: bytes, payee: bytes, holder: bytes, authorization: int, amount: int, nonce: int, expiry: int
    ) -> Transaction:
        values = [payee, holder, authorization, amount, nonce, expiry]
        signature = self._signed(secret, "Deduct", values)
        return self._tx(self.program.call("deduct", *values[1:], signature))

    def deduct_to(
        self,
        secret: bytes,
        payee: bytes,
        holder: bytes,
        authorization: int,
        to: bytes,
        amount: int,
        nonce: int,
        expiry: int,
    ) -> Transaction:
        """The payee's (`secret`'s) deduction of `amount` from `holder` paid to `to` (an oDEX settlement leg)."""
        values = [payee, holder, authorization, to, amount, nonce, expiry]
        signature = self._signed(secret, "DeductTo", values)
        return self._tx(self.program.call("deductTo", *values[1:], signature))

    def exit(self, secret: bytes, holder: bytes, receiver: bytes, amount: int, nonce: int, expiry: int) -> Transaction:
        values = [holder, receiver, amount, nonce, expiry]
        return self._tx(self.program.call("exit", *values, self._signed(secret, "Exit", values)))

    def replace_witness(self, index: int, witness: bytes) -> Transaction:
        """The creator's record of a witness replaced after a timeout or a dissolution."""
        return self._tx(self.program.call("replaceWitness", index, witness))


class NoteReader:
    """Reads a note chain's state through view calls (executed, never written back)."""

    def __init__(self, engine: Engine, program: Program | None = None) -> None:
        self._engine = engine
        self.program = program or note_program()

    def view(self, state: State, chain: bytes, name: str, *args: Any) -> tuple[Any, ...]:
        tx = Transaction(sender=bytes(20), to=PROGRAM, data=self.program.call(name, *args), gas_limit=GAS_LIMIT)
        context = BlockContext(chain_id=chain, height=0, timestamp=0)
        (receipt,) = self._engine.apply(state, [tx], context)[1]
        if not receipt.success:
            raise ValueError(f"view {name} failed: {self.program.decode_error(receipt.output)}")
        return self.program.returns(name, receipt.output)

    def balance(self, state: State, chain: bytes, account: bytes) -> int:
        return int(self.view(state, chain, "balanceOf", account)[0])

    def nonce(self, state: State, chain: bytes, signer: bytes) -> int:
        return int(self.view(state, chain, "nonces", signer)[0])

    def supply(self, state: State, chain: bytes) -> tuple[int, int]:
        """(funded, exited) in the note's units."""
        funded, exited, _ = self.view(state, chain, "supply")
        return int(funded), int(exited)


def role_change_transactions(genesis: Block, old: Sequence[bytes], new: Sequence[bytes]) -> list[Transaction]:
    """The `replaceWitness` calls a new creator prepends after the witnesses changed (the fee shares
    follow the witnesses). The sender is the CBDC of record, the genesis transaction's sender."""
    cbdc = genesis.transactions[0].sender
    program = note_program()
    return [
        Transaction(sender=cbdc, to=PROGRAM, data=program.call("replaceWitness", i, w), gas_limit=GAS_LIMIT)
        for i, (before, w) in enumerate(zip(old, new, strict=True))
        if before != w
    ]


def failed_reason(program: Program, receipt: Receipt) -> str | None:
    """Why a receipt failed, in words; None when it succeeded."""
    return None if receipt.success else program.decode_error(receipt.output)
