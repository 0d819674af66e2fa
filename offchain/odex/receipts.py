"""Receipt chains: an OdexVault deposit receipt as a DLE chain run by the note program.

A receipt chain is a note chain with oDEX terms (docs/protocols.md, "oDEX receipt chains"): the
program is the same `contracts/dle/NoteLedger.sol`, and its `Genesis` is built from the vault's
`ReceiptIssued(receipt, asset, owner, amount, chain, feeBps)` event — `cash` is the vault (so every
message on the chain is signed in a domain whose `verifyingContract` is the vault, and the exit
certificate's digest is the vault's `exitDigest`), `note` is the receipt id, `value` the receipt's
amount in the asset's own units, `holder` the depositor and `transferFeeBps` the oDEX fee. The chain's
creator (`cbdc`) is a staked CBDC-role node assigned like a note's; the witnesses and the validators'
pool come from the archive group's draw (`ArchiveNode.open_note` fills them in).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from eth_utils.address import to_canonical_address

from offchain.dle.note import NoteTerms, chain_id_of

__all__ = ["MAX_FEE_BPS", "MAX_RECEIPT_AMOUNT", "ReceiptIssued", "receipt_terms"]

MAX_RECEIPT_AMOUNT = (1 << 96) - 1
"""The note program refuses a face value above type(uint96).max (`InvalidValue`)."""
MAX_FEE_BPS = 1_000
"""NoteLedger.MAX_TRANSFER_FEE_BPS."""


def _address(value: Any) -> bytes:
    return value if isinstance(value, bytes) and len(value) == 20 else to_canonical_address(value)


@dataclass(frozen=True)
class ReceiptIssued:
    """The vault's `ReceiptIssued` event: receipt `receipt` of `amount` units of `asset` (address(0) =
    native AVAX) held by `owner`, whose DLE chain is `chain`, charging `fee_bps` per trade."""

    receipt: int
    asset: bytes
    owner: bytes
    amount: int
    chain: bytes
    fee_bps: int

    @classmethod
    def from_event(cls, args: Mapping[str, Any]) -> ReceiptIssued:
        """From a decoded log's arguments (web3's `event["args"]`: checksummed addresses, bytes32 as bytes)."""
        return cls(
            int(args["receipt"]),
            _address(args["asset"]),
            _address(args["owner"]),
            int(args["amount"]),
            bytes(args["chain"]),
            int(args["feeBps"]),
        )


def receipt_terms(
    issued: ReceiptIssued,
    *,
    mainchain_id: int,
    vault: bytes,
    cbdc: bytes,
    witnesses: tuple[bytes, ...] = (),
    validators_pool: bytes = bytes(20),
) -> NoteTerms:
    """The `Genesis` of the receipt's chain. The witnesses and the validators' pool are left empty for
    `ArchiveNode.open_note`, which draws them. ValueError when the event cannot open a chain: its chain
    id is not the one the vault derives for the receipt (`DleChainId.compute(vault, receipt)`), or the
    amount or fee is one the program would refuse at genesis."""
    expected = chain_id_of(mainchain_id, vault, issued.receipt)
    if issued.chain != expected:
        raise ValueError(
            f"receipt {issued.receipt}: chain 0x{issued.chain.hex()} is not the vault's, 0x{expected.hex()}"
        )
    if not 0 < issued.amount <= MAX_RECEIPT_AMOUNT:
        raise ValueError(f"receipt {issued.receipt}: amount {issued.amount} is zero or above 2^96 - 1")
    if issued.fee_bps > MAX_FEE_BPS:
        raise ValueError(f"receipt {issued.receipt}: fee {issued.fee_bps} bps is above {MAX_FEE_BPS}")
    if issued.owner == bytes(20) or cbdc == bytes(20):
        raise ValueError(f"receipt {issued.receipt}: the owner and the creator must be set")
    return NoteTerms(
        note=issued.receipt,
        mainchain_id=mainchain_id,
        cash=vault,
        value=issued.amount,
        holder=issued.owner,
        cbdc=cbdc,
        witnesses=witnesses,
        validators_pool=validators_pool,
        transfer_fee_bps=issued.fee_bps,
    )
