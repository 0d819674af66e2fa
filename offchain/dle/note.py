"""The CoNETCash note program as the DLE runs it: genesis, the signed user actions, and reading state.

A note chain's state holds one account, the `NoteLedger` runtime (contracts/dle/NoteLedger.sol) at
`PROGRAM`, with empty storage; the genesis block's one transaction is `initialize(terms)`, signed and
sent by the CBDC. Every later user transaction is a call to `PROGRAM` signed by the user who acts (the
holder, or the payee drawing on an authorization), with that user's DLE nonce; its calldata carries the
user's EIP-712 message signature as well, checked inside the program (docs/protocols.md, "The note
ledger"). The program's privileged calls (`refund`, `replaceWitness`) come only as system transactions,
accepted with the proof `offchain/dle/authority.py` checks.

Wallets build actions with `NoteSigner`; the roles read balances, nonces and exits with `NoteReader`
(a view call through the engine on a state, never written back).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from eth_abi.abi import decode, encode

from dle_vm.encoding import RLPItem, fixed_bytes, list_of, rlp_list, uint, uint_bytes
from dle_vm.engine import BlockContext, Engine, Log, Receipt
from dle_vm.hashing import keccak
from dle_vm.signature import sign
from dle_vm.state import Account, State
from dle_vm.transaction import Message, Transaction

__all__ = [
    "GAS_LIMIT",
    "PROGRAM",
    "WITNESSES_SLOT",
    "WITNESS_COUNT",
    "ExitCertificate",
    "NoteReader",
    "NoteSigner",
    "NoteTerms",
    "Program",
    "chain_id_of",
    "genesis_state",
    "note_program",
    "refund_transaction",
    "role_change_transactions_on",
]

PROGRAM = keccak(b"CoNETCash note program")[12:]
"""Where the program lives in every note chain's state: fixed, so it never collides with a precompile."""

WITNESSES_SLOT = 7
"""NoteLedger's `_witnesses` (address[5]) begins at this storage slot; tests/test_note_ledger.py holds
it to the compiler's storage layout."""
WITNESS_COUNT = 5

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

    def selector(self, name: str) -> bytes:
        """The 4-byte selector of function `name`."""
        return keccak(self._function(name)[0].encode())[:4]

    def call(self, name: str, *args: Any) -> bytes:
        """Calldata of `name(args)`."""
        signature, inputs, _ = self._function(name)
        return keccak(signature.encode())[:4] + encode(inputs, list(args))

    def decode_call(self, name: str, data: bytes) -> tuple[Any, ...]:
        """The arguments of calldata `data` of `name` (addresses as 20 bytes); `ValueError` for other data."""
        signature, inputs, _ = self._function(name)
        if data[:4] != keccak(signature.encode())[:4]:
            raise ValueError(f"not a call of {name}")
        try:
            values = decode(inputs, data[4:])
        except Exception as error:  # eth_abi raises several kinds for malformed calldata
            raise ValueError(f"malformed {name} calldata: {error}") from error
        return tuple(bytes.fromhex(v[2:]) if kind == "address" else v for kind, v in zip(inputs, values, strict=True))

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

    def initialize(self, cbdc_secret: bytes, program: Program | None = None) -> Transaction:
        """The genesis block's transaction, signed by the CBDC (`cbdc_secret`) with its first nonce."""
        data = (program or note_program()).call("initialize", self.as_tuple())
        return Transaction.signed(cbdc_secret, self.chain, 0, PROGRAM, data, GAS_LIMIT)

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
    """CoNETCash's `ExitCertificate`, as the program's `Exited` event yields it. `exited_before` is the
    head of the chain's exit history before this exit (zero for the first; then bytes27 of the previous
    certificate's EIP-712 struct hash): the mainchain pays the exits in nonce order along that history."""

    note: int
    chain: bytes
    height: int
    holder: bytes
    receiver: bytes
    amount: int
    nonce: int
    exited_before: bytes = bytes(32)

    _TYPES = ("uint256", "bytes32", "uint256", "address", "address", "uint256", "uint256", "bytes32")

    def as_tuple(self) -> tuple[Any, ...]:
        return (
            self.note,
            self.chain,
            self.height,
            self.holder,
            self.receiver,
            self.amount,
            self.nonce,
            self.exited_before,
        )

    def encode(self) -> bytes:
        """abi.encode(certificate): the `Exited` log's data."""
        return encode(list(self._TYPES), list(self.as_tuple()))

    @classmethod
    def decode(cls, data: bytes) -> ExitCertificate:
        note, chain, height, holder, receiver, amount, nonce, exited_before = decode(list(cls._TYPES), data)
        return cls(
            note, chain, height, bytes.fromhex(holder[2:]), bytes.fromhex(receiver[2:]), amount, nonce, exited_before
        )

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

    def _tx(self, secret: bytes, data: bytes, nonce: int, tx_nonce: int | None) -> Transaction:
        # The action's signer sends it (the program refuses any other sender: `NotSigner`): the DLE
        # transaction is signed with the same key. Its DLE nonce is `tx_nonce`, by default the action's
        # own nonce — the two move together while every one of the signer's transactions on the chain
        # is a successful note action (reverting transactions never stay in a block). The CBDC's
        # `initialize` moves only its DLE nonce, so a wallet reads both from the head and passes both.
        return Transaction.signed(
            secret, self.terms.chain, nonce if tx_nonce is None else tx_nonce, PROGRAM, data, GAS_LIMIT
        )

    def transfer(
        self,
        secret: bytes,
        holder: bytes,
        to: bytes,
        amount: int,
        nonce: int,
        expiry: int,
        *,
        tx_nonce: int | None = None,
    ) -> Transaction:
        values = [holder, to, amount, nonce, expiry]
        data = self.program.call("transfer", *values, self._signed(secret, "Transfer", values))
        return self._tx(secret, data, nonce, tx_nonce)

    def authorize(
        self,
        secret: bytes,
        holder: bytes,
        payee: bytes,
        limit: int,
        nonce: int,
        expiry: int,
        *,
        tx_nonce: int | None = None,
    ) -> Transaction:
        values = [holder, payee, limit, nonce, expiry]
        data = self.program.call("authorize", *values, self._signed(secret, "Authorize", values))
        return self._tx(secret, data, nonce, tx_nonce)

    def revoke(
        self,
        secret: bytes,
        holder: bytes,
        authorization: int,
        nonce: int,
        expiry: int,
        *,
        tx_nonce: int | None = None,
    ) -> Transaction:
        values = [holder, authorization, nonce, expiry]
        data = self.program.call("revoke", *values, self._signed(secret, "Revoke", values))
        return self._tx(secret, data, nonce, tx_nonce)

    def deduct(
        self,
        secret: bytes,
        payee: bytes,
        holder: bytes,
        authorization: int,
        amount: int,
        nonce: int,
        expiry: int,
        *,
        tx_nonce: int | None = None,
    ) -> Transaction:
        values = [payee, holder, authorization, amount, nonce, expiry]
        signature = self._signed(secret, "Deduct", values)
        return self._tx(secret, self.program.call("deduct", *values[1:], signature), nonce, tx_nonce)

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
        *,
        tx_nonce: int | None = None,
    ) -> Transaction:
        """The payee's (`secret`'s) deduction of `amount` from `holder` paid to `to` (an oDEX settlement leg)."""
        values = [payee, holder, authorization, to, amount, nonce, expiry]
        signature = self._signed(secret, "DeductTo", values)
        return self._tx(secret, self.program.call("deductTo", *values[1:], signature), nonce, tx_nonce)

    def exit(
        self,
        secret: bytes,
        holder: bytes,
        receiver: bytes,
        amount: int,
        nonce: int,
        expiry: int,
        *,
        tx_nonce: int | None = None,
    ) -> Transaction:
        values = [holder, receiver, amount, nonce, expiry]
        data = self.program.call("exit", *values, self._signed(secret, "Exit", values))
        return self._tx(secret, data, nonce, tx_nonce)


class NoteReader:
    """Reads a note chain's state through view calls (executed, never written back)."""

    def __init__(self, engine: Engine, program: Program | None = None) -> None:
        self._engine = engine
        self.program = program or note_program()

    def view(self, state: State, chain: bytes, name: str, *args: Any) -> tuple[Any, ...]:
        call = Message(sender=bytes(20), to=PROGRAM, data=self.program.call(name, *args), gas_limit=GAS_LIMIT)
        context = BlockContext(chain_id=chain, height=0, timestamp=0)
        (receipt,) = self._engine.apply(state, [call], context)[1]
        if not receipt.success:
            raise ValueError(f"view {name} failed: {self.program.decode_error(receipt.output)}")
        return self.program.returns(name, receipt.output)

    def balance(self, state: State, chain: bytes, account: bytes) -> int:
        return int(self.view(state, chain, "balanceOf", account)[0])

    def exit_count(self, state: State, chain: bytes) -> int:
        """The number of exits so far: the next exit's certificate nonce."""
        return int(self.view(state, chain, "exitCount")[0])

    def exit_of(self, state: State, chain: bytes, nonce: int) -> ExitCertificate:
        """The certificate of exit `nonce` (`exitOf`); ValueError (`UnknownExit`) if there is none yet."""
        ((note, chain_, height, holder, receiver, amount, nonce_, exited_before),) = self.view(
            state, chain, "exitOf", nonce
        )
        return ExitCertificate(
            int(note),
            bytes(chain_),
            int(height),
            bytes.fromhex(str(holder)[2:]),
            bytes.fromhex(str(receiver)[2:]),
            int(amount),
            int(nonce_),
            bytes(exited_before),
        )

    def nonce(self, state: State, chain: bytes, signer: bytes) -> int:
        """`signer`'s next nonce for the program's signed messages."""
        return int(self.view(state, chain, "nonces", signer)[0])

    @staticmethod
    def tx_nonce(state: State, sender: bytes) -> int:
        """`sender`'s next DLE transaction nonce (its account nonce: `apply_transactions`)."""
        return state[sender].nonce

    @staticmethod
    def witnesses(state: State) -> tuple[bytes, ...]:
        """The fee-receiving witnesses the program holds, read from its storage (`WITNESSES_SLOT`; the
        same as the `roles()` view, without running the EVM: members read it for every block)."""
        return tuple(
            state.storage_at(PROGRAM, WITNESSES_SLOT + i).to_bytes(32, "big")[12:] for i in range(WITNESS_COUNT)
        )

    def refund_count(self, state: State, chain: bytes) -> int:
        """Re-fundings applied so far: the index the next `refund` carries."""
        return int(self.view(state, chain, "refundCount")[0])

    def terms(self, state: State, chain: bytes) -> tuple[int, bytes]:
        """(note id, CoNETCash or vault address) the chain was opened for."""
        note, _, _, cash = self.view(state, chain, "noteTerms")[:4]
        return int(note), bytes.fromhex(cash[2:])

    def supply(self, state: State, chain: bytes) -> tuple[int, int]:
        """(funded, exited) in the note's units."""
        funded, exited, _ = self.view(state, chain, "supply")
        return int(funded), int(exited)


def role_change_transactions_on(chain: bytes, old: Sequence[bytes], new: Sequence[bytes]) -> list[Transaction]:
    """The `replaceWitness` system transactions that turn the program's witnesses `old` into the certified
    roles' witnesses `new` (the fee shares follow the witnesses): a creator puts them first in its next
    block, and every member and archive node computes the same list and accepts no other
    (`offchain/dle/authority.py`)."""
    program = note_program()
    return [
        Transaction.system(chain, PROGRAM, program.call("replaceWitness", i, w), GAS_LIMIT)
        for i, (before, w) in enumerate(zip(old, new, strict=True))
        if before != w
    ]


def refund_transaction(chain: bytes, index: int, buyer: bytes, amount: int) -> Transaction:
    """The system transaction that applies the `index`-th `NoteRefunded` of the note on its chain."""
    return Transaction.system(chain, PROGRAM, note_program().call("refund", index, buyer, amount), GAS_LIMIT)


def failed_reason(program: Program, receipt: Receipt) -> str | None:
    """Why a receipt failed, in words; None when it succeeded."""
    return None if receipt.success else program.decode_error(receipt.output)
