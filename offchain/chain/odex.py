"""The oDEX vault's mainchain client: deposits that issue receipts, receipt views, and withdrawals on
the receipt chain's exit certificate.

`OdexVaultClient` uses plain web3.py and signs with a local key, like `DleChainClient`. Every transaction
is checked first in Python against what OdexVault would refuse — the same checks in the same order,
raising `ContractRevert` with the contract's own error name and arguments — and a refusal that still
reaches the node is decoded into the same exception, OdexVault's errors included.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractLogicError
from web3.types import TxReceipt

from offchain.chain.dle import Digests, DleChainClient, ExitCertificate, check_exit_order
from offchain.chain.web3_contracts import (
    DEFAULT_RECEIPT_TIMEOUT,
    ContractRevert,
    DeploymentClient,
    events_of,
    load_contract,
    revert_of,
)

NATIVE_ASSET = "0x" + "00" * 20
"""OdexVault.NATIVE_ASSET: the native coin (AVAX)."""
MAX_RECEIPTS_PER_DEPOSIT = 64
"""OdexVault.MAX_RECEIPTS_PER_DEPOSIT."""

# What the client needs of any listed ERC-20; the vault takes tokens that are not the project's own.
_ERC20_ABI: list[dict[str, Any]] = [
    {
        "type": "function",
        "name": "approve",
        "stateMutability": "nonpayable",
        "inputs": [{"name": "spender", "type": "address"}, {"name": "amount", "type": "uint256"}],
        "outputs": [{"name": "", "type": "bool"}],
    },
    {
        "type": "function",
        "name": "allowance",
        "stateMutability": "view",
        "inputs": [{"name": "owner", "type": "address"}, {"name": "spender", "type": "address"}],
        "outputs": [{"name": "", "type": "uint256"}],
    },
    {
        "type": "function",
        "name": "balanceOf",
        "stateMutability": "view",
        "inputs": [{"name": "account", "type": "address"}],
        "outputs": [{"name": "", "type": "uint256"}],
    },
]


@dataclass(frozen=True)
class IssuedReceipt:
    """OdexVault.ReceiptIssued: receipt `receipt` of `amount` of `asset` for `owner`, on DLE chain `chain`."""

    receipt: int
    asset: str
    owner: str
    amount: int
    chain: bytes
    fee_bps: int


@dataclass(frozen=True)
class VaultReceipt:
    """OdexVault.receiptOf: a receipt as the vault holds it now."""

    receipt: int
    asset: str
    depositor: str
    amount: int
    outstanding: int
    """What is left to withdraw: `amount` minus what exit certificates were paid."""
    chain: bytes
    fee_bps: int

    @property
    def issued(self) -> bool:
        return self.amount > 0


@dataclass(frozen=True)
class Withdrawal:
    """OdexVault.ReceiptWithdrawn: `amount` of `asset` paid to `receiver` on a certificate."""

    receipt: int
    holder: str
    receiver: str
    asset: str
    amount: int
    nonce: int


class OdexVaultClient(DeploymentClient):
    """OdexVault for traders and the oDEX's services. `private_key` signs transactions; without one, only
    the views and digests work."""

    def __init__(
        self,
        w3: Web3,
        addresses: Mapping[str, str],
        private_key: bytes | str | None = None,
        *,
        receipt_timeout: float = DEFAULT_RECEIPT_TIMEOUT,
    ) -> None:
        super().__init__(w3, private_key, receipt_timeout)
        self.vault: Contract = load_contract(w3, "OdexVault", addresses["OdexVault"])
        # Certificates are checked against the DLE registry's epochs; that client never sends here.
        self._dle = DleChainClient(w3, addresses, receipt_timeout=receipt_timeout)
        self.digests = Digests(
            int(w3.eth.chain_id), self._dle.registry.address, self._dle.cash.address, self.vault.address
        )
        params, _registry = self.vault.functions.dependencies().call()
        self._params: Contract = load_contract(w3, "ParameterStore", params)

    # ---------------------------------------------------------------- views

    def receipt(self, receipt: int) -> VaultReceipt:
        """Receipt `receipt` (`issued` False if there is none)."""
        asset, depositor, amount, outstanding, chain, fee_bps = self.vault.functions.receiptOf(receipt).call()
        return VaultReceipt(
            receipt,
            Web3.to_checksum_address(asset),
            Web3.to_checksum_address(depositor),
            int(amount),
            int(outstanding),
            bytes(chain),
            int(fee_bps),
        )

    def next_receipt(self) -> int:
        return int(self.vault.functions.nextReceipt().call())

    def custody_of(self, asset: str) -> int:
        """What the vault holds of `asset` for receipts: the sum of their outstanding values."""
        return int(self.vault.functions.custodyOf(Web3.to_checksum_address(asset)).call())

    def receipt_cap(self, asset: str) -> int:
        """The largest receipt a deposit of `asset` issues now, in its smallest units; ContractRevert
        InvalidAsset for a token the vault cannot take (no decimals, or more than 18)."""
        function = self.vault.functions.receiptCap(Web3.to_checksum_address(asset))
        try:
            return int(function.call())
        except ContractLogicError as exc:
            raise revert_of(exc) from exc

    def is_listed(self, asset: str) -> bool:
        """Whether governance lists `asset`: the vault takes deposits of it."""
        return bool(self._params.functions.isOdexAsset(Web3.to_checksum_address(asset)).call())

    def chain_of(self, receipt: int) -> bytes:
        return bytes(self.vault.functions.chainOf(receipt).call())

    def is_exit_nonce_used(self, receipt: int, nonce: int) -> bool:
        return bool(self.vault.functions.isExitNonceUsed(receipt, nonce).call())

    def exit_history(self, receipt: int) -> tuple[int, bytes]:
        """OdexVault.exitHistoryOf(receipt): the nonce of the exit it pays next and the head it must name."""
        nonce, head = self.vault.functions.exitHistoryOf(receipt).call()
        return int(nonce), bytes(head)

    def exit_digest(self, certificate: ExitCertificate) -> bytes:
        """OdexVault.exitDigest, read from the contract (`digests.vault_exit` computes it off chain)."""
        return bytes(self.vault.functions.exitDigest(certificate.as_tuple()).call())

    def balance_of(self, asset: str, who: str) -> int:
        """`who`'s balance of `asset` (the native coin for NATIVE_ASSET)."""
        if _is_native(asset):
            return int(self.w3.eth.get_balance(Web3.to_checksum_address(who)))
        return int(self._erc20(asset).functions.balanceOf(Web3.to_checksum_address(who)).call())

    def issued_in(self, receipt: TxReceipt) -> list[IssuedReceipt]:
        """The receipts a deposit transaction issued, in id order."""
        return [
            IssuedReceipt(
                int(e["receipt"]),
                Web3.to_checksum_address(e["asset"]),
                Web3.to_checksum_address(e["owner"]),
                int(e["amount"]),
                bytes(e["chain"]),
                int(e["feeBps"]),
            )
            for e in events_of(self.vault, "ReceiptIssued", receipt)
        ]

    def withdrawals_in(self, receipt: TxReceipt) -> list[Withdrawal]:
        """The withdrawals a transaction paid."""
        return [
            Withdrawal(
                int(e["receipt"]),
                Web3.to_checksum_address(e["holder"]),
                Web3.to_checksum_address(e["receiver"]),
                Web3.to_checksum_address(e["asset"]),
                int(e["amount"]),
                int(e["nonce"]),
            )
            for e in events_of(self.vault, "ReceiptWithdrawn", receipt)
        ]

    # ---------------------------------------------------------------- transactions

    def deposit(self, asset: str, amount: int, *, precheck: bool = True) -> list[IssuedReceipt]:
        """Deposits `amount` of `asset` (NATIVE_ASSET: sent as value; an ERC-20: approved first when the
        allowance is short) and returns the receipts issued, each of at most `receipt_cap(asset)`."""
        sender = self._require_sender()
        asset = Web3.to_checksum_address(asset)
        if precheck:
            self._check_deposit(asset, amount)
        if _is_native(asset):
            tx = self._transact(self.vault.functions.deposit(asset, amount), value=amount)
        else:
            token = self._erc20(asset)
            if int(token.functions.allowance(sender.address, self.vault.address).call()) < amount:
                self._transact(token.functions.approve(self.vault.address, amount))
            tx = self._transact(self.vault.functions.deposit(asset, amount))
        return self.issued_in(tx)

    def withdraw(
        self, certificate: ExitCertificate, epoch: int, signatures: bytes, *, precheck: bool = True
    ) -> Withdrawal:
        """Submits a receipt chain's exit certificate (`certificate.note` = the receipt id), signed by
        every member of epoch `epoch` of the chain's archive group; the receiver is paid exactly
        `certificate.amount` — the oDEX fee was charged per trade on the receipt chain."""
        if precheck:
            self._check_withdraw(certificate, epoch, signatures)
        tx = self._transact(self.vault.functions.withdraw(certificate.as_tuple(), epoch, signatures))
        (withdrawal,) = self.withdrawals_in(tx)
        return withdrawal

    # ---------------------------------------------------------------- internals

    def _erc20(self, asset: str) -> Contract:
        contract: Contract = self.w3.eth.contract(address=Web3.to_checksum_address(asset), abi=_ERC20_ABI)
        return contract

    def _check_deposit(self, asset: str, amount: int) -> None:
        """OdexVault.deposit's refusals, in its order (the native value is always sent right)."""
        if not self.is_listed(asset):
            raise ContractRevert("AssetNotListed", {"asset": asset})
        if amount <= 0:
            raise ContractRevert("ZeroAmount")
        cap = self.receipt_cap(asset)
        if -(-amount // cap) > MAX_RECEIPTS_PER_DEPOSIT:
            raise ContractRevert("DepositTooLarge", {"amount": amount, "cap": cap})

    def _check_withdraw(self, certificate: ExitCertificate, epoch: int, signatures: bytes) -> None:
        """OdexVault.withdraw's refusals, in its order (CertifiedExits' after the receipt's own)."""
        held = self.receipt(certificate.note)
        if not held.issued:
            raise ContractRevert("UnknownReceipt", {"receipt": certificate.note})
        if certificate.chain != held.chain:
            raise ContractRevert("WrongChain", {"expected": held.chain, "given": certificate.chain})
        if certificate.amount == 0 or certificate.amount > held.outstanding:
            raise ContractRevert("InvalidExitAmount", {"amount": certificate.amount, "outstanding": held.outstanding})
        check_exit_order(
            certificate.note, certificate.nonce, certificate.exited_before, self.exit_history(certificate.note)
        )
        record = self._dle.chain_record(held.chain)
        self._dle.check_certificate(record.group, epoch, self.digests.vault_exit(certificate), signatures)


def _is_native(asset: str) -> bool:
    return int(asset, 16) == 0


__all__ = [
    "MAX_RECEIPTS_PER_DEPOSIT",
    "NATIVE_ASSET",
    "IssuedReceipt",
    "OdexVaultClient",
    "VaultReceipt",
    "Withdrawal",
]
