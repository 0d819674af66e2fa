"""OdexVault on a real anvil with the real deployment and real archive-group signatures: deposits of
AVAX and ERC-20s issue receipts capped and split exactly, bad deposits are refused by name, a receipt
chain's exit certificate pays its receiver exactly once, every bad certificate is refused by name (found
by the client's pre-check, or decoded from the node's revert), a CoNETCash certificate is worthless at
the vault and the other way round, a native receiver cannot re-enter, and after every test the vault
holds of each asset exactly the sum of its receipts' outstanding values."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from coincurve import PrivateKey
from eth_account import Account
from eth_utils.crypto import keccak
from web3 import Web3
from web3.contract import Contract

from offchain.artifacts import contract_artifact
from offchain.chain import addressbook
from offchain.chain.addressbook import AddressBook
from offchain.chain.deployer import CONET, Role
from offchain.chain.dle import Digests, DleChainClient, ExitCertificate
from offchain.chain.odex import NATIVE_ASSET, OdexVaultClient
from offchain.chain.web3_contracts import ContractRevert, Sender, connect, load_contract
from offchain.devnet.anvil import DEV_MNEMONIC, AnvilNode, rpc, start_anvil
from offchain.toolchain import project_root

pytestmark = pytest.mark.anvil

ETHER = 10**18
USDC = 10**6
DEPLOYER = 0
ARCHIVES = (2, 3, 4, 5)  # token ids 1..4: groups 1, 0, 1, 0
CBDC, TRADER, OTHER, SERVICE = 6, 7, 8, 9
GROUP = 1  # note 1's (1 % 2): the CoNETCash chain the cross-domain test registers
GENESIS = keccak(b"genesis header of a receipt chain")
DEFAULT_CAP_UNITS = 1_000_000
REENTRANCY = keccak(text="ReentrancyGuardReentrantCall()")[:4]


def dev_key(index: int) -> bytes:
    Account.enable_unaudited_hdwallet_features()
    return bytes(Account.from_mnemonic(DEV_MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}").key)


def address_of(index: int) -> str:
    address: str = Account.from_key(dev_key(index)).address
    return address


def sign(digest: bytes, signers: list[int]) -> bytes:
    """The signatures of `signers` (dev account indexes), sorted by address, as DleRegistry wants."""
    keys = sorted((dev_key(i) for i in signers), key=lambda key: int(Account.from_key(key).address, 16))
    return b"".join(bytes(Account.unsafe_sign_hash(digest, key).signature) for key in keys)


@dataclass
class Devnet:
    node: AnvilNode
    w3: Web3
    book: AddressBook
    dle: DleChainClient
    trader: OdexVaultClient
    other: OdexVaultClient

    def contract(self, name: str) -> Contract:
        return load_contract(self.w3, name, self.book.address(name))

    def send(self, who: int, contract: str, function: str, *args: Any, value: int = 0) -> Any:
        sender = Sender(self.w3, dev_key(who), receipt_timeout=30)
        return sender.transact(getattr(self.contract(contract).functions, function)(*args), value)

    def group(self, group: int) -> list[int]:
        registry = self.contract("NodeRegistry").functions
        return [
            i
            for i in ARCHIVES
            if registry.archiveGroupOf(registry.tokenOf(address_of(i), int(Role.ARCHIVE)).call()).call() == group
        ]

    @property
    def vault(self) -> str:
        return self.book.address("OdexVault")

    @property
    def digests(self) -> Digests:
        return self.trader.digests

    def as_governance(self, contract: str, function: str, *args: Any) -> None:
        """Sends as the timelock that owns the parameter store: what a passed proposal would execute. The
        proposal machinery itself is tested in test_governance; here only its effect matters."""
        timelock = self.book.address("CoNETTimelock")
        rpc(self.node.uri, "anvil_impersonateAccount", [timelock])
        rpc(self.node.uri, "anvil_setBalance", [timelock, hex(ETHER)])
        try:
            tx = getattr(self.contract(contract).functions, function)(*args).transact({"from": timelock})
            assert self.w3.eth.wait_for_transaction_receipt(tx, timeout=30)["status"] == 1
        finally:
            rpc(self.node.uri, "anvil_stopImpersonatingAccount", [timelock])

    def set_cap(self, units: int) -> None:
        self.as_governance("ParameterStore", "setParameter", b"ODEX_RECEIPT_CAP_UNITS".ljust(32, b"\0"), units)

    def deploy(self, name: str, *args: Any) -> Contract:
        artifact = contract_artifact(name)
        factory = self.w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
        receipt = Sender(self.w3, dev_key(DEPLOYER), receipt_timeout=30).transact(factory.constructor(*args))
        return self.w3.eth.contract(address=receipt["contractAddress"], abi=artifact.abi)

    def group_for(self, receipt: int) -> int:
        """The archive group that keeps receipt `receipt`'s chain: `DleRegistry.groupFor`."""
        return self.dle.group_for(receipt)

    def register(self, receipt: int) -> bytes:
        """Registers receipt `receipt`'s chain with its group (once) and returns its id."""
        chain = self.digests.chain_id_of(self.vault, receipt)
        if not self.dle.is_registered(chain):
            group = self.group_for(receipt)
            digest = self.digests.genesis(self.vault, receipt, GENESIS, group)
            self.dle.register_chain(self.vault, receipt, GENESIS, group, 1, sign(digest, self.group(group)))
        return chain

    def certify(self, certificate: ExitCertificate, signers: list[int] | None = None) -> bytes:
        """The signatures over `certificate` in the vault's domain of its receipt's group (or `signers`)."""
        members = self.group(self.group_for(certificate.note)) if signers is None else signers
        return sign(self.digests.vault_exit(certificate), members)

    def assert_conserved(self) -> None:
        """The vault holds of every asset exactly what its receipts have outstanding."""
        vault = self.contract("OdexVault").functions
        outstanding: dict[str, int] = {}
        for receipt in range(1, self.trader.next_receipt()):
            held = self.trader.receipt(receipt)
            outstanding[held.asset] = outstanding.get(held.asset, 0) + held.outstanding
        for asset in (NATIVE_ASSET, self.book.address("MockToken"), self.book.address("MockStablecoin")):
            asset = Web3.to_checksum_address(asset)
            held = self.trader.balance_of(asset, self.vault)
            assert held == int(vault.custodyOf(asset).call()) == outstanding.get(asset, 0), asset


@pytest.fixture(scope="module")
def devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    """Deployed by `ape run deploy`; four staked archive nodes in two groups with their first epoch; a
    note bought and filled at CoNETCash; the traders hold mETH and mUSDC."""
    node = start_anvil()
    books = tmp_path_factory.mktemp("books")
    try:
        ape = str(Path(sys.executable).with_name("ape"))
        done = subprocess.run(
            [ape, "run", "deploy", "--network", f"avalanche:anvil:{node.uri}"],
            cwd=project_root(),
            env={**os.environ, "CONET_DEPLOYMENTS_DIR": str(books)},
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        w3 = connect(node.uri)
        book = addressbook.load("avalanche:anvil", books)
        devnet = Devnet(
            node,
            w3,
            book,
            DleChainClient.from_address_book(w3, book, dev_key(SERVICE), receipt_timeout=30),
            OdexVaultClient.from_address_book(w3, book, dev_key(TRADER), receipt_timeout=30),
            OdexVaultClient.from_address_book(w3, book, dev_key(OTHER), receipt_timeout=30),
        )
        staking = devnet.contract("Staking").functions
        for index, role in [*((i, Role.ARCHIVE) for i in ARCHIVES), (CBDC, Role.CBDC)]:
            amount = staking.minimumStake(int(role)).call()
            devnet.send(DEPLOYER, "CoNETToken", "transfer", address_of(index), amount + 1_000 * CONET)
            devnet.send(index, "CoNETToken", "approve", book.address("Staking"), amount)
            devnet.send(index, "Staking", "stake", int(role), amount)
            if role is Role.ARCHIVE:
                public_key = PrivateKey(dev_key(index)).public_key.format(compressed=False)[1:]
                devnet.send(
                    index, "NodeRegistry", "register", int(role), public_key, ["https://a.example"], (0,) * 4, ""
                )
        for group in (0, 1):
            assert devnet.dle.refresh_group(group) == (1, True)
        for who in (TRADER, OTHER):
            devnet.send(who, "MockToken", "mint", address_of(who), 10 * DEFAULT_CAP_UNITS * ETHER)
            devnet.send(who, "MockStablecoin", "mint", address_of(who), 10**6 * USDC)
        # A CoNETCash note, for the cross-contract replays.
        devnet.send(CBDC, "CoNETToken", "approve", book.address("CoNETCash"), 2**256 - 1)
        devnet.send(TRADER, "MockStablecoin", "approve", book.address("CoNETCash"), 50 * USDC)
        devnet.send(TRADER, "CoNETCash", "buy", book.address("MockStablecoin"), 50 * USDC)
        # Note 1's CBDC, drawn and certified by the group that keeps note 1 (1 % the group count).
        cash = devnet.contract("CoNETCash").functions
        group = 1 % int(devnet.contract("NodeRegistry").functions.groupCount().call())
        draw = (1, address_of(CBDC), b"\x00" * 32, group)
        devnet.send(
            CBDC, "CoNETCash", "fill", draw, 1, sign(bytes(cash.cbdcDrawDigest(draw).call()), devnet.group(group))
        )
        yield devnet
    finally:
        node.stop()


@pytest.fixture
def cap_units(devnet: Devnet) -> Iterator[Any]:
    """Sets the receipt cap for one test (`cap_units(n)`), restoring the default after."""
    yield devnet.set_cap
    devnet.set_cap(DEFAULT_CAP_UNITS)


@pytest.fixture(autouse=True)
def conserved(devnet: Devnet) -> Iterator[None]:
    yield
    devnet.assert_conserved()


def refusal(call: Any, *args: Any, **kwargs: Any) -> ContractRevert:
    """The ContractRevert `call(*args, **kwargs)` raises."""
    with pytest.raises(ContractRevert) as caught:
        call(*args, **kwargs)
    return caught.value


def fresh_receipt(devnet: Devnet, asset: str = NATIVE_ASSET, amount: int = 3 * ETHER) -> int:
    """A new receipt of `amount` `asset` deposited by the trader, its chain registered."""
    (issued,) = devnet.trader.deposit(asset, amount)
    devnet.register(issued.receipt)
    return issued.receipt


def exit_of(devnet: Devnet, receipt: int, receiver: str, amount: int, nonce: int) -> ExitCertificate:
    chain = devnet.digests.chain_id_of(devnet.vault, receipt)
    return ExitCertificate(receipt, chain, 9, address_of(OTHER), receiver, amount, nonce)


# ---------------------------------------------------------------- deposits


def test_a_native_deposit_issues_one_receipt_on_its_own_chain(devnet: Devnet) -> None:
    vault_before = devnet.trader.balance_of(NATIVE_ASSET, devnet.vault)
    first = devnet.trader.next_receipt()
    (issued,) = devnet.trader.deposit(NATIVE_ASSET, 5 * ETHER)
    assert issued.receipt == first and devnet.trader.next_receipt() == first + 1
    assert (issued.asset, issued.owner, issued.amount, issued.fee_bps) == (
        NATIVE_ASSET,
        address_of(TRADER),
        5 * ETHER,
        1,
    )
    chain = devnet.digests.chain_id_of(devnet.vault, first)
    assert issued.chain == chain == devnet.trader.chain_of(first)
    held = devnet.trader.receipt(first)
    assert (held.asset, held.depositor, held.amount, held.outstanding, held.chain, held.fee_bps) == (
        NATIVE_ASSET,
        address_of(TRADER),
        5 * ETHER,
        5 * ETHER,
        chain,
        1,
    )
    assert devnet.trader.balance_of(NATIVE_ASSET, devnet.vault) == vault_before + 5 * ETHER
    assert not devnet.trader.receipt(10**9).issued


@pytest.mark.parametrize(("asset", "unit"), [("MockToken", ETHER), ("MockStablecoin", USDC)])
def test_an_erc20_deposit_is_approved_and_pulled(devnet: Devnet, asset: str, unit: int) -> None:
    token = devnet.book.address(asset)
    before = devnet.other.balance_of(token, address_of(OTHER))
    (issued,) = devnet.other.deposit(token, 7 * unit)
    assert (issued.asset, issued.owner, issued.amount) == (token, address_of(OTHER), 7 * unit)
    assert devnet.other.balance_of(token, address_of(OTHER)) == before - 7 * unit
    assert devnet.other.receipt(issued.receipt).outstanding == 7 * unit
    assert devnet.other.receipt_cap(token) == DEFAULT_CAP_UNITS * unit


@pytest.mark.parametrize(
    ("asset", "unit", "amount", "parts"),
    [
        ("native", ETHER, 2 * ETHER + 1, [ETHER, ETHER, 1]),
        ("native", ETHER, ETHER, [ETHER]),
        ("native", ETHER, ETHER + 1, [ETHER, 1]),
        ("MockToken", ETHER, Decimal("2.5"), [ETHER, ETHER, ETHER // 2]),
        ("MockStablecoin", USDC, 3 * USDC, [USDC, USDC, USDC]),
    ],
)
def test_a_deposit_above_the_cap_is_split_into_exact_receipts(
    devnet: Devnet, cap_units: Any, asset: str, unit: int, amount: int | Decimal, parts: list[int]
) -> None:
    cap_units(1)
    token = NATIVE_ASSET if asset == "native" else devnet.book.address(asset)
    amount = int(amount * unit) if isinstance(amount, Decimal) else amount
    assert devnet.trader.receipt_cap(token) == unit
    first = devnet.trader.next_receipt()
    issued = devnet.trader.deposit(token, amount)
    assert [r.amount for r in issued] == parts and sum(parts) == amount
    assert [r.receipt for r in issued] == list(range(first, first + len(parts)))
    assert len({r.chain for r in issued}) == len(parts)
    assert all(devnet.trader.receipt(r.receipt).outstanding == r.amount for r in issued)


@pytest.mark.parametrize("precheck", [True, False], ids=["precheck", "node"])
def test_a_deposit_needing_more_than_64_receipts_is_refused(devnet: Devnet, cap_units: Any, precheck: bool) -> None:
    cap_units(1)
    token = devnet.book.address("MockStablecoin")
    refused = refusal(devnet.trader.deposit, token, 64 * USDC + 1, precheck=precheck)
    assert (refused.error, refused.inputs) == ("DepositTooLarge", {"amount": 64 * USDC + 1, "cap": USDC})
    if precheck:  # once is enough: the most receipts a deposit may issue
        assert len(devnet.trader.deposit(token, 64 * USDC)) == 64


@pytest.mark.parametrize("precheck", [True, False], ids=["precheck", "node"])
def test_bad_deposits_are_refused_by_name(devnet: Devnet, precheck: bool) -> None:
    unlisted = devnet.deploy("MockToken", "Unlisted", "UNL", 18)
    first = devnet.trader.next_receipt()
    refused = refusal(devnet.trader.deposit, unlisted.address, ETHER, precheck=precheck)
    assert refused.error == "AssetNotListed"
    assert Web3.to_checksum_address(refused.inputs["asset"]) == unlisted.address
    refused = refusal(devnet.trader.deposit, NATIVE_ASSET, 0, precheck=precheck)
    assert refused.error == "ZeroAmount"
    refused = refusal(devnet.trader.deposit, devnet.book.address("MockToken"), 0, precheck=precheck)
    assert refused.error == "ZeroAmount"
    assert devnet.trader.next_receipt() == first


def test_the_native_value_must_match_the_deposit(devnet: Devnet) -> None:
    # The client always sends the right value; a raw transaction shows the contract's own refusal,
    # decoded by the shared decoder (web3_contracts.CONTRACTS).
    token = devnet.book.address("MockToken")
    devnet.send(TRADER, "MockToken", "approve", devnet.vault, ETHER)
    for asset, value, expected in ((token, 1, 0), (NATIVE_ASSET, ETHER - 1, ETHER)):
        with pytest.raises(ContractRevert) as caught:
            devnet.send(TRADER, "OdexVault", "deposit", asset, ETHER, value=value)
        refused = caught.value
        assert (refused.error, refused.inputs) == ("NativeValueMismatch", {"expected": expected, "sent": value})


def test_a_fee_on_transfer_token_is_refused(devnet: Devnet) -> None:
    token = devnet.deploy("FeeOnTransferToken")
    devnet.as_governance("ParameterStore", "listOdexAsset", token.address)
    try:
        Sender(devnet.w3, dev_key(TRADER)).transact(token.functions.mint(address_of(TRADER), 100 * ETHER))
        refused = refusal(devnet.trader.deposit, token.address, 100 * ETHER)
        assert refused.error == "TransferShortfall"
        assert refused.inputs == {"expected": 100 * ETHER, "received": 99 * ETHER}
    finally:
        devnet.as_governance("ParameterStore", "delistOdexAsset", token.address)


@pytest.mark.parametrize("precheck", [True, False], ids=["precheck", "node"])
def test_a_token_with_more_than_18_decimals_is_refused(devnet: Devnet, precheck: bool) -> None:
    # Its receipts could exceed 2^96 units, more than a receipt chain holds.
    token = devnet.deploy("MockToken", "Many Decimals", "MANY", 19)
    devnet.as_governance("ParameterStore", "listOdexAsset", token.address)
    try:
        Sender(devnet.w3, dev_key(TRADER)).transact(token.functions.mint(address_of(TRADER), 10**19))
        refused = refusal(devnet.trader.deposit, token.address, 10**19, precheck=precheck)
        assert refused.error == "InvalidAsset"
        assert Web3.to_checksum_address(refused.inputs["asset"]) == token.address
    finally:
        devnet.as_governance("ParameterStore", "delistOdexAsset", token.address)


# ---------------------------------------------------------------- withdrawals


def test_the_python_exit_digest_is_the_vaults_and_not_cashs(devnet: Devnet) -> None:
    certificate = exit_of(devnet, 1, address_of(OTHER), 1, 0)
    digests = devnet.digests
    assert digests.vault_exit(certificate) == devnet.trader.exit_digest(certificate)
    assert digests.exit(certificate) == devnet.dle.exit_digest(certificate) != digests.vault_exit(certificate)
    assert digests.exit_for(devnet.vault, certificate) == digests.vault_exit(certificate)
    assert digests.exit_for(devnet.book.address("CoNETCash"), certificate) == digests.exit(certificate)


@pytest.mark.parametrize(("asset", "amount"), [("native", 3 * ETHER), ("MockToken", 3 * ETHER), ("MockStablecoin", 30)])
def test_a_certificate_pays_its_receiver_exactly_once(devnet: Devnet, asset: str, amount: int) -> None:
    token = NATIVE_ASSET if asset == "native" else devnet.book.address(asset)
    receipt = fresh_receipt(devnet, token, amount)
    receiver = Account.create().address
    certificate = exit_of(devnet, receipt, receiver, amount // 3, 0)
    paid = devnet.other.withdraw(certificate, 1, devnet.certify(certificate))
    assert (paid.receipt, paid.holder, paid.receiver, paid.asset, paid.amount, paid.nonce) == (
        receipt,
        address_of(OTHER),
        receiver,
        token,
        amount // 3,
        0,
    )
    # No fee at withdrawal: the oDEX fee was charged per trade on the receipt chain.
    assert devnet.other.balance_of(token, receiver) == amount // 3
    assert devnet.other.receipt(receipt).outstanding == amount - amount // 3
    assert devnet.other.is_exit_nonce_used(receipt, 0)
    for precheck in (True, False):
        refused = refusal(devnet.other.withdraw, certificate, 1, devnet.certify(certificate), precheck=precheck)
        assert (refused.error, refused.inputs) == ("CertificateUsed", {"note": receipt, "nonce": 0})
    assert devnet.other.balance_of(token, receiver) == amount // 3
    # The rest, on later nonces, down to zero; then nothing more.
    rest = exit_of(devnet, receipt, receiver, amount - amount // 3, 300)
    devnet.other.withdraw(rest, 1, devnet.certify(rest))
    assert devnet.other.balance_of(token, receiver) == amount
    assert devnet.other.receipt(receipt).outstanding == 0
    more = exit_of(devnet, receipt, receiver, 1, 301)
    assert refusal(devnet.other.withdraw, more, 1, devnet.certify(more)).error == "InvalidExitAmount"


@pytest.mark.parametrize(
    ("flaw", "error"),
    [
        ("another receipt's chain", "WrongChain"),
        ("unknown receipt", "UnknownReceipt"),
        ("unregistered chain", "ChainNotRegistered"),
        ("more than outstanding", "InvalidExitAmount"),
        ("zero amount", "InvalidExitAmount"),
        ("missing signer", "SignersNotGroup"),
        ("extra signer", "SignersNotGroup"),
        ("other group", "SignersNotGroup"),
        ("forged by strangers", "SignersNotGroup"),
        ("unsorted", "UnsortedSigners"),
        ("altered after signing", None),
        ("signed in CoNETCash's domain", None),
        ("unknown epoch", "UnknownEpoch"),
    ],
)
@pytest.mark.parametrize("precheck", [True, False], ids=["precheck", "node"])
def test_a_bad_certificate_is_refused_by_name(devnet: Devnet, flaw: str, error: str | None, precheck: bool) -> None:
    receipt = fresh_receipt(devnet)
    receiver = Account.create().address
    certificate = exit_of(devnet, receipt, receiver, ETHER, 0)
    group = devnet.group_for(receipt)
    members = devnet.group(group)
    signers = {
        "missing signer": members[:1],
        "extra signer": [*members, devnet.group(1 - group)[0]],
        "other group": devnet.group(1 - group),
        "forged by strangers": [TRADER, OTHER],
    }.get(flaw, members)
    if flaw == "another receipt's chain":
        certificate = exit_of(devnet, receipt, receiver, ETHER, 0)
        other = fresh_receipt(devnet)
        certificate = ExitCertificate(other, certificate.chain, 9, address_of(OTHER), receiver, ETHER, 0)
    elif flaw == "unknown receipt":
        certificate = exit_of(devnet, 10**6, receiver, ETHER, 0)
    elif flaw == "unregistered chain":
        (issued,) = devnet.trader.deposit(NATIVE_ASSET, ETHER)
        certificate = exit_of(devnet, issued.receipt, receiver, ETHER, 0)
    elif flaw == "more than outstanding":
        certificate = exit_of(devnet, receipt, receiver, 3 * ETHER + 1, 0)
    elif flaw == "zero amount":
        certificate = exit_of(devnet, receipt, receiver, 0, 0)
    signatures = devnet.certify(certificate, signers)
    if flaw == "unsorted":
        signatures = signatures[65:] + signatures[:65]
    elif flaw == "signed in CoNETCash's domain":
        signatures = sign(devnet.digests.exit(certificate), members)
    elif flaw == "altered after signing":
        # The receiver swapped after the group signed: the signatures recover to strangers.
        certificate = exit_of(devnet, receipt, address_of(TRADER), ETHER, 0)
    epoch = 5 if flaw == "unknown epoch" else 1
    refused = refusal(devnet.other.withdraw, certificate, epoch, signatures, precheck=precheck)
    if error is None:
        assert refused.error in ("SignersNotGroup", "UnsortedSigners")
    else:
        assert refused.error == error
    assert refused.error in str(refused)
    assert devnet.other.balance_of(NATIVE_ASSET, receiver) == 0
    assert devnet.other.receipt(receipt).outstanding == 3 * ETHER
    assert not devnet.other.is_exit_nonce_used(certificate.note, 0)


def test_a_cash_certificate_is_not_paid_by_the_vault_nor_a_vault_certificate_by_cash(devnet: Devnet) -> None:
    cash = devnet.book.address("CoNETCash")
    note_chain = devnet.digests.chain_id_of(cash, 1)
    if not devnet.dle.is_registered(note_chain):
        digest = devnet.digests.genesis(cash, 1, GENESIS, GROUP)
        devnet.dle.register_chain(cash, 1, GENESIS, GROUP, 1, sign(digest, devnet.group(GROUP)))
    receipt = fresh_receipt(devnet)
    assert receipt != 1
    receiver = Account.create().address
    members = devnet.group(GROUP)

    # A note's certificate, genuinely signed for CoNETCash, presented to the vault: wrong chain.
    note_exit = ExitCertificate(1, note_chain, 9, address_of(TRADER), receiver, USDC, 0)
    cash_signatures = sign(devnet.digests.exit(note_exit), members)
    for precheck in (True, False):
        refused = refusal(devnet.other.withdraw, note_exit, 1, cash_signatures, precheck=precheck)
        assert refused.error == "WrongChain"
    # And the same certificate signed for the vault's domain does not pay at CoNETCash.
    refused = refusal(devnet.dle.submit_exit, note_exit, 1, sign(devnet.digests.vault_exit(note_exit), members))
    assert refused.error in ("SignersNotGroup", "UnsortedSigners")

    # A receipt's certificate signed in CoNETCash's domain is refused by the vault (SignersNotGroup is
    # covered above); signed in the vault's it pays, and CoNETCash has no such note chain.
    receipt_exit = exit_of(devnet, receipt, receiver, ETHER, 0)
    refused = refusal(devnet.dle.submit_exit, receipt_exit, 1, devnet.certify(receipt_exit), precheck=False)
    assert refused.error in ("NoteNotLive", "WrongChain")
    assert devnet.other.withdraw(receipt_exit, 1, devnet.certify(receipt_exit)).amount == ETHER
    assert devnet.dle.submit_exit(note_exit, 1, cash_signatures) > 0
    assert devnet.trader.balance_of(NATIVE_ASSET, receiver) == ETHER


def test_a_native_receiver_cannot_reenter(devnet: Devnet) -> None:
    receipt = fresh_receipt(devnet)
    receiver = devnet.deploy("NativeReentrant", devnet.vault)
    first = exit_of(devnet, receipt, receiver.address, ETHER, 0)
    second = exit_of(devnet, receipt, receiver.address, ETHER, 1)
    vault = devnet.contract("OdexVault")
    reentry = vault.encode_abi("withdraw", args=[second.as_tuple(), 1, devnet.certify(second)])
    owner = Sender(devnet.w3, dev_key(DEPLOYER))
    owner.transact(receiver.functions.setReentry(bytes.fromhex(reentry[2:])))

    devnet.other.withdraw(first, 1, devnet.certify(first))
    assert receiver.functions.payments().call() == 1
    assert not receiver.functions.reentered().call()
    assert bytes(receiver.functions.reentryError().call())[:4] == REENTRANCY
    assert devnet.w3.eth.get_balance(receiver.address) == ETHER
    assert not devnet.other.is_exit_nonce_used(receipt, 1)
    # The re-entered certificate was valid: outside the payment it pays.
    owner.transact(receiver.functions.setReentry(b""))
    devnet.other.withdraw(second, 1, devnet.certify(second))
    assert devnet.w3.eth.get_balance(receiver.address) == 2 * ETHER
    assert devnet.other.receipt(receipt).outstanding == ETHER


def test_a_receiver_refusing_the_coin_fails_the_withdrawal_clearly(devnet: Devnet) -> None:
    receipt = fresh_receipt(devnet)
    receiver = devnet.deploy("NativeReentrant", devnet.vault)
    Sender(devnet.w3, dev_key(DEPLOYER)).transact(receiver.functions.setRefuse(True))
    certificate = exit_of(devnet, receipt, receiver.address, ETHER, 0)
    refused = refusal(devnet.other.withdraw, certificate, 1, devnet.certify(certificate))
    assert (refused.error, refused.inputs["amount"]) == ("NativePaymentFailed", ETHER)
    assert Web3.to_checksum_address(refused.inputs["receiver"]) == receiver.address
    assert not devnet.other.is_exit_nonce_used(receipt, 0)
    assert devnet.other.receipt(receipt).outstanding == 3 * ETHER


def test_a_delisted_asset_takes_no_deposit_but_its_receipts_still_pay(devnet: Devnet) -> None:
    token = devnet.book.address("MockToken")
    receipt = fresh_receipt(devnet, token, 4 * ETHER)
    devnet.as_governance("ParameterStore", "delistOdexAsset", token)
    try:
        assert refusal(devnet.trader.deposit, token, ETHER).error == "AssetNotListed"
        receiver = Account.create().address
        certificate = exit_of(devnet, receipt, receiver, 4 * ETHER, 0)
        assert devnet.other.withdraw(certificate, 1, devnet.certify(certificate)).amount == 4 * ETHER
        assert devnet.other.balance_of(token, receiver) == 4 * ETHER
    finally:
        devnet.as_governance("ParameterStore", "listOdexAsset", token)


def test_a_client_without_a_key_reads_but_does_not_send(devnet: Devnet) -> None:
    reader = OdexVaultClient.from_address_book(devnet.w3, devnet.book)
    assert reader.next_receipt() == devnet.trader.next_receipt()
    with pytest.raises(Exception, match="no private key"):
        reader.deposit(NATIVE_ASSET, ETHER)
