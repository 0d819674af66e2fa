"""Node registration from Python: a node's public key from its account, and its node NFT."""

from __future__ import annotations

from typing import Any

from eth_account.messages import _hash_eip191_message, encode_defunct
from eth_keys.datatypes import Signature

from offchain.chain.deployer import Role

_KEY_PROOF = "CoNET node key"


def public_key_of(account: Any) -> bytes:
    """The 64-byte secp256k1 public key (x ‖ y) of an ape account, recovered from a signature it makes:
    keyfile and hardware accounts never reveal their private key, but every account can sign."""
    message = encode_defunct(text=_KEY_PROOF)
    signature = account.sign_message(message)
    if signature is None:
        raise RuntimeError(f"{account.address} declined to sign; its public key is needed to register")
    signable_hash = _hash_eip191_message(message)
    v = signature.v - 27 if signature.v >= 27 else signature.v
    recovered = Signature(vrs=(v, int.from_bytes(signature.r, "big"), int.from_bytes(signature.s, "big")))
    public_key = recovered.recover_public_key_from_msg_hash(signable_hash)
    if public_key.to_checksum_address() != account.address:
        raise RuntimeError("the recovered key does not belong to the account")
    return public_key.to_bytes()


def ensure_registered(
    registry: Any, account: Any, role: Role, endpoints: list[str], prices: tuple[int, int, int, int], region: str
) -> tuple[int, bool]:
    """The account's node NFT in `role`, registering it first if there is none.
    Returns (token id, whether it was registered now)."""
    token_id = int(registry.tokenOf(account.address, int(role)))
    if token_id:
        return token_id, False
    receipt = registry.register(int(role), public_key_of(account), endpoints, prices, region, sender=account)
    return int(receipt.events.filter(registry.NodeRegistered)[0].tokenId), True
