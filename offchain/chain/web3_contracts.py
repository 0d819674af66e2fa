"""The project's contracts through plain web3.py, for processes that do not run ape.

The DLE services (the chain mirror, the archive node's mainchain client) are small separate processes
talking JSON-RPC to a node; ape's project and network machinery is too heavy for them. They read the
ABIs from ape's one build (`offchain.artifacts.contract_artifact`) and the addresses from the address
book, and send transactions signed by a local key with `Sender`, which turns every refusal into a
`ContractRevert` naming the contract's custom error and its arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, Self

from eth_abi.abi import decode
from eth_account import Account
from eth_utils.crypto import keccak
from hexbytes import HexBytes
from web3 import Web3
from web3.contract import Contract
from web3.contract.contract import ContractFunction
from web3.exceptions import ContractLogicError, TimeExhausted, Web3Exception
from web3.types import TxParams, TxReceipt, Wei

from offchain.artifacts import contract_artifact
from offchain.chain.addressbook import AddressBook

DEFAULT_RPC_TIMEOUT = 10.0
DEFAULT_RECEIPT_TIMEOUT = 60.0
GAS_MARGIN = 1.2
"""Gas sent is the estimate plus 20%: state may move between the estimate and inclusion."""

CONTRACTS = (
    "CoNETCash",
    "CoNETToken",
    "DleRegistry",
    "MockStablecoin",
    "NodeRegistry",
    "OdexVault",
    "ParameterStore",
    "Staking",
)
"""The contracts whose errors are decoded; a call into any of them may revert with another's error."""

_ERROR_STRING = keccak(text="Error(string)")[:4]
_PANIC = keccak(text="Panic(uint256)")[:4]


class ChainError(RuntimeError):
    """A mainchain operation failed; subclasses say how."""


class ContractRevert(ChainError):
    """A contract refused: `error` is the custom error's name (or `Error` / `Panic`), `inputs` its
    arguments by name. Raised both for real reverts and for the same refusal found by a pre-check."""

    def __init__(self, error: str, inputs: Mapping[str, Any] | None = None, detail: str = "") -> None:
        self.error = error
        self.inputs = dict(inputs or {})
        shown = ", ".join(f"{k}={_show(v)}" for k, v in self.inputs.items())
        super().__init__(f"{error}({shown})" + (f": {detail}" if detail else ""))


class TransactionTimeout(ChainError):
    """No receipt arrived within the timeout; the transaction may still be mined later."""


class TransactionFailed(ChainError):
    """The transaction was mined but reverted (its revert data is not in a receipt)."""


def _show(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    return str(value)


def connect(uri: str, timeout: float = DEFAULT_RPC_TIMEOUT) -> Web3:
    """A web3 connection to the JSON-RPC node at `uri`; every request gives up after `timeout` s."""
    return Web3(Web3.HTTPProvider(uri, request_kwargs={"timeout": timeout}))


def load_contract(w3: Web3, name: str, address: str) -> Contract:
    """Contract `name` (its ABI from the project's build) at `address`."""
    contract: Contract = w3.eth.contract(address=Web3.to_checksum_address(address), abi=contract_artifact(name).abi)
    return contract


def addresses_of(book: AddressBook) -> dict[str, str]:
    """Contract name → address, from an address book."""
    return {name: deployment.address for name, deployment in book.contracts.items()}


def _abi_type(item: Mapping[str, Any]) -> str:
    kind = str(item["type"])
    if kind.startswith("tuple"):
        return "(" + ",".join(_abi_type(c) for c in item["components"]) + ")" + kind[len("tuple") :]
    return kind


@dataclass(frozen=True)
class _ErrorAbi:
    name: str
    names: tuple[str, ...]
    types: tuple[str, ...]


@cache
def _error_table(names: tuple[str, ...]) -> dict[bytes, _ErrorAbi]:
    table: dict[bytes, _ErrorAbi] = {}
    for name in names:
        for item in contract_artifact(name).abi:
            if item.get("type") != "error":
                continue
            types = tuple(_abi_type(i) for i in item["inputs"])
            selector = keccak(text=f"{item['name']}({','.join(types)})")[:4]
            table[selector] = _ErrorAbi(item["name"], tuple(i["name"] for i in item["inputs"]), types)
    return table


def decode_revert(data: bytes, contracts: Iterable[str] = CONTRACTS) -> ContractRevert:
    """The refusal that revert `data` encodes: a custom error of any of `contracts`, `Error(string)`,
    `Panic(uint256)`, or `Reverted` with the raw data when the selector is unknown."""
    selector, body = data[:4], data[4:]
    if selector == _ERROR_STRING:
        (reason,) = decode(["string"], body)
        return ContractRevert("Error", {"reason": reason})
    if selector == _PANIC:
        (code,) = decode(["uint256"], body)
        return ContractRevert("Panic", {"code": code})
    error = _error_table(tuple(sorted(contracts))).get(selector)
    if error is None:
        return ContractRevert("Reverted", {"data": data})
    try:
        values = decode(list(error.types), body)
    except Exception:  # malformed arguments: name the error, show the data
        return ContractRevert(error.name, {"data": data})
    return ContractRevert(error.name, dict(zip(error.names, values, strict=True)))


def revert_of(exc: ContractLogicError) -> ContractRevert:
    """A web3 revert exception as a ContractRevert, decoding its data when the node returned some."""
    data = exc.data
    if isinstance(data, dict):
        data = data.get("data")
    if isinstance(data, str) and data.startswith("0x") and len(data) >= 10:
        return decode_revert(bytes.fromhex(data[2:]))
    return ContractRevert("Reverted", {}, str(exc.message or exc))


class Sender:
    """Sends contract transactions signed by one local key and waits for their receipts.

    Meant for one process per key: the nonce is read from the node's pending count before each
    transaction, so two senders of one key in parallel could race."""

    def __init__(self, w3: Web3, private_key: bytes | str, receipt_timeout: float = DEFAULT_RECEIPT_TIMEOUT) -> None:
        self.w3 = w3
        self._account = Account.from_key(private_key)
        self.receipt_timeout = receipt_timeout
        self._chain_id: int | None = None

    @property
    def address(self) -> str:
        address: str = self._account.address
        return address

    def call(self, function: ContractFunction) -> Any:
        """`function` as an eth_call from this account; a revert raises ContractRevert."""
        try:
            return function.call({"from": self.address})
        except ContractLogicError as exc:
            raise revert_of(exc) from exc

    def transact(self, function: ContractFunction, value: int = 0) -> TxReceipt:
        """Estimates, signs, sends `function` and waits for its receipt. A refusal found by the
        estimate raises ContractRevert; a mined revert TransactionFailed; no receipt in time
        TransactionTimeout."""
        if self._chain_id is None:
            self._chain_id = int(self.w3.eth.chain_id)
        try:
            params: TxParams = {
                "from": self._account.address,
                "value": Wei(value),
                "chainId": self._chain_id,
                "nonce": self.w3.eth.get_transaction_count(self._account.address, "pending"),
            }
            tx = function.build_transaction(params)
        except ContractLogicError as exc:
            raise revert_of(exc) from exc
        tx["gas"] = int(int(tx["gas"]) * GAS_MARGIN)
        signed = self._account.sign_transaction(tx)
        tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
        try:
            receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=self.receipt_timeout, poll_latency=0.05)
        except TimeExhausted as exc:
            raise TransactionTimeout(
                f"no receipt for {HexBytes(tx_hash).to_0x_hex()} within {self.receipt_timeout}s"
            ) from exc
        if receipt["status"] != 1:
            raise TransactionFailed(f"{HexBytes(tx_hash).to_0x_hex()} reverted in block {receipt['blockNumber']}")
        return receipt


def events_of(contract: Contract, event: str, receipt: TxReceipt) -> list[Mapping[str, Any]]:
    """The decoded arguments of every `event` that `contract` emitted in `receipt`."""
    handler = contract.events[event]()
    out: list[Mapping[str, Any]] = []
    for log in receipt["logs"]:
        if Web3.to_checksum_address(log["address"]) != contract.address:
            continue
        try:
            out.append(handler.process_log(log)["args"])
        except Web3Exception:
            continue  # another event of the same contract
    return out


class DeploymentClient:
    """The base of the clients of one deployment's contracts (`DleChainClient`, `OdexVaultClient`): reads
    through any node; sends only with `private_key`. A subclass takes (w3, addresses, private_key, *,
    receipt_timeout) and loads its contracts from `addresses`."""

    def __init__(
        self, w3: Web3, private_key: bytes | str | None = None, receipt_timeout: float = DEFAULT_RECEIPT_TIMEOUT
    ) -> None:
        self.w3 = w3
        self._sender = None if private_key is None else Sender(w3, private_key, receipt_timeout)

    @classmethod
    def from_address_book(
        cls,
        w3: Web3,
        book: AddressBook,
        private_key: bytes | str | None = None,
        *,
        receipt_timeout: float = DEFAULT_RECEIPT_TIMEOUT,
    ) -> Self:
        """The client of `book`'s contracts; ChainError when the book is of another chain than `w3`'s."""
        if book.chain_id != int(w3.eth.chain_id):
            raise ChainError(f"the address book is for chain {book.chain_id}, the node is chain {w3.eth.chain_id}")
        # Subclasses take the addresses as their second argument (see the class docstring).
        make: Callable[..., Self] = cls
        return make(w3, addresses_of(book), private_key, receipt_timeout=receipt_timeout)

    @property
    def address(self) -> str:
        """The sending account."""
        return self._require_sender().address

    def _require_sender(self) -> Sender:
        if self._sender is None:
            raise ChainError("this client has no private key: it can read but not send")
        return self._sender

    def _transact(self, function: ContractFunction, value: int = 0) -> TxReceipt:
        return self._require_sender().transact(function, value)


__all__ = [
    "CONTRACTS",
    "ChainError",
    "ContractRevert",
    "DeploymentClient",
    "Sender",
    "TransactionFailed",
    "TransactionTimeout",
    "addresses_of",
    "connect",
    "decode_revert",
    "events_of",
    "load_contract",
    "revert_of",
]
