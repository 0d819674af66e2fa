"""Shared fixtures. Contract tests run on ape's embedded chain (`avalanche:local:test`), with ape's
snapshot isolation reverting each test's transactions; deploy and gas tests start their own anvil."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest
from coincurve import PrivateKey

from offchain.chain.addressbook import AddressBook, Deployment
from offchain.chain.deployer import CONET, Role
from offchain.toolchain import configure_environment

configure_environment()

DAY = 24 * 3600
MIN_STAKE = {role: 1_000 * CONET for role in Role}
UNIT = 100 * CONET
UNBONDING = 7 * DAY
REPORTER_BPS = 1_000


ADDRESS = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
HASH = "0x" + "ab" * 32


def sample_book() -> AddressBook:
    """A small valid address book for Fuji."""
    book = AddressBook(network="avalanche:fuji", chain_id=43113, deployer=ADDRESS, commit="abc")
    book.contracts["CoNETToken"] = Deployment(address=ADDRESS, block=7, tx_hash=HASH, code_hash=HASH)
    return book


def public_key(account: Any) -> bytes:
    """The 64-byte uncompressed secp256k1 public key (x ‖ y) of an ape test account."""
    key = PrivateKey(bytes.fromhex(account.private_key.removeprefix("0x")))
    return key.public_key.format(compressed=False)[1:]


@pytest.fixture(scope="session")
def admin(accounts: Any) -> Any:
    return accounts[0]


@pytest.fixture(scope="session")
def treasury(accounts: Any) -> Any:
    return accounts[1]


@pytest.fixture(scope="session")
def alice(accounts: Any) -> Any:
    return accounts[2]


@pytest.fixture(scope="session")
def bob(accounts: Any) -> Any:
    return accounts[3]


@pytest.fixture(scope="session")
def carol(accounts: Any) -> Any:
    return accounts[4]


@pytest.fixture(scope="module")
def token(project: Any, admin: Any, treasury: Any) -> Any:
    return admin.deploy(project.CoNETToken, treasury, admin)


@pytest.fixture(scope="module")
def oracle(project: Any, admin: Any) -> Any:
    contract = admin.deploy(project.PriceOracle, admin, DAY)
    contract.grantRole(contract.PRICE_SETTER_ROLE(), admin, sender=admin)
    return contract


@pytest.fixture(scope="module")
def stablecoin(project: Any, admin: Any) -> Any:
    return admin.deploy(project.MockStablecoin, "Mock USD Coin", "mUSDC")


@pytest.fixture(scope="module")
def staking(project: Any, admin: Any, treasury: Any, token: Any) -> Any:
    contract = admin.deploy(project.Staking, token, admin, treasury, UNBONDING, REPORTER_BPS)
    for role in Role:
        contract.setMinimumStake(int(role), MIN_STAKE[role], sender=admin)
        contract.setCapacityUnit(int(role), UNIT, sender=admin)
    contract.grantRole(contract.SLASHER_ROLE(), admin, sender=admin)
    return contract


@pytest.fixture(scope="module")
def registry(project: Any, admin: Any, staking: Any) -> Any:
    return admin.deploy(project.NodeRegistry, staking)


@pytest.fixture(scope="module")
def funded(token: Any, treasury: Any, accounts: Any) -> Iterator[list[Any]]:
    """Accounts 2..9 each hold 100,000 CoNET."""
    for account in accounts[2:10]:
        token.transfer(account, 100_000 * CONET, sender=treasury)
    yield list(accounts[2:10])


def stake(staking: Any, token: Any, node: Any, role: Role, amount: int) -> None:
    token.approve(staking, amount, sender=node)
    staking.stake(int(role), amount, sender=node)


def restake_archive(staking: Any, token: Any, treasury: Any, node: Any) -> None:
    """`node`, an archive node that requested its whole stake back, stakes the minimum again: it is a
    member of its group again at the next `refreshGroup`."""
    token.transfer(node, MIN_STAKE[Role.ARCHIVE], sender=treasury)
    stake(staking, token, node, Role.ARCHIVE, MIN_STAKE[Role.ARCHIVE])


# ---------------------------------------------------------------- the CoNETCash economy

ORDER_TIMEOUT = 3_600
MIN_GROUP_SIZE = 2
"""ParameterStore's default MIN_ARCHIVE_GROUP_SIZE: an epoch of one archive node certifies nothing."""
CONET_PRICE = 5 * 10**6  # $0.05 with 8 decimals
DOLLAR = 10**8  # $1.00 with 8 decimals
ARCHIVE_NODES = 4  # two archive groups of two


def sign_digest(account: Any, digest: bytes) -> bytes:
    """A 65-byte r ‖ s ‖ v signature of `digest` by an ape test account's key."""
    from eth_account import Account

    signed = Account.unsafe_sign_hash(digest, account.private_key)
    return bytes(signed.signature)


def group_signatures(signers: Sequence[Any], digest: bytes) -> bytes:
    """The signatures of `signers`, concatenated in ascending order of address, as DleRegistry wants."""
    ordered = sorted(signers, key=lambda account: int(account.address, 16))
    return b"".join(sign_digest(account, digest) for account in ordered)


@pytest.fixture(scope="module")
def params(project: Any, admin: Any) -> Any:
    """The parameter store, owned by admin (governance takes it over in the deploy and story tests)."""
    return admin.deploy(project.ParameterStore, admin, ORDER_TIMEOUT)


@pytest.fixture(scope="module")
def dle(project: Any, admin: Any, registry: Any, staking: Any, params: Any) -> Any:
    contract = admin.deploy(project.DleRegistry, registry, staking, params)
    staking.grantRole(staking.SLASHER_ROLE(), contract, sender=admin)
    return contract


@pytest.fixture(scope="module")
def cash(project: Any, admin: Any, token: Any, oracle: Any, staking: Any, params: Any, dle: Any) -> Any:
    contract = admin.deploy(project.CoNETCash, token, oracle, staking, params, dle)
    token.grantRole(token.REISSUER_ROLE(), contract, sender=admin)
    return contract


@pytest.fixture(scope="module")
def archive_nodes(accounts: Any, admin: Any, treasury: Any, token: Any, staking: Any, registry: Any) -> list[Any]:
    """ARCHIVE_NODES fresh staked and registered archive nodes (token ids alternate between the two
    groups), with both groups' first epoch opened in the DLE registry by the `dle` fixture's users."""
    nodes = []
    for _ in range(ARCHIVE_NODES):
        account = accounts.generate_test_account()
        admin.transfer(account, "1 ether")
        token.transfer(account, MIN_STAKE[Role.ARCHIVE], sender=treasury)
        stake(staking, token, account, Role.ARCHIVE, MIN_STAKE[Role.ARCHIVE])
        registry.register(
            int(Role.ARCHIVE), public_key(account), ["https://archive.example"], (0, 0, 0, 0), "eu", sender=account
        )
        nodes.append(account)
    return nodes


def group_of(registry: Any, nodes: Sequence[Any], group: int) -> list[Any]:
    """The archive nodes among `nodes` that are members of `group`."""
    return [node for node in nodes if registry.archiveGroupOf(registry.tokenOf(node, int(Role.ARCHIVE))) == group]


@pytest.fixture(scope="module")
def cbdc(accounts: Any, admin: Any, treasury: Any, token: Any, staking: Any, cash: Any) -> Any:
    """A fresh staked CBDC holding 1,000,000 CoNET beyond its stake, with an allowance to CoNETCash."""
    account = accounts.generate_test_account()
    admin.transfer(account, "10 ether")
    token.transfer(account, MIN_STAKE[Role.CBDC] + 1_000_000 * CONET, sender=treasury)
    stake(staking, token, account, Role.CBDC, MIN_STAKE[Role.CBDC])
    token.approve(cash, 2**256 - 1, sender=account)
    return account


DRAW_SELECTION = b"\x5e" * 32
"""The Selection Chain record hash the test draws name (the contract records it, it checks the signatures)."""

Draw = tuple[int, str, bytes, int]
"""CoNETCash.CbdcDraw as ape takes it: (id, cbdc, selection, group)."""


class Draws:
    """Certified CBDC draws for `CoNETCash.fill`, signed by the `archive_nodes` fixture's nodes as
    `ArchiveNode.draw_cbdc` signs them: every member of the current epoch of the order's group (order id
    modulo the group count) over `cbdcDrawDigest`. Each keyword overrides one part, to forge."""

    def __init__(self, dle: Any, registry: Any, nodes: Sequence[Any]) -> None:
        self.dle, self.registry, self.nodes = dle, registry, list(nodes)

    def group_for(self, order: int) -> int:
        return order % int(self.registry.groupCount())

    def certify(
        self,
        cash: Any,
        order: int,
        cbdc: Any,
        *,
        selection: bytes = DRAW_SELECTION,
        group: int | None = None,
        epoch: int | None = None,
        signers: Sequence[Any] | None = None,
    ) -> tuple[Draw, int, bytes]:
        """(draw, epoch, signatures): what `fill` takes, by default certified by the order's group."""
        group = self.group_for(order) if group is None else group
        epoch = int(self.dle.currentEpoch(group)) if epoch is None else epoch
        draw: Draw = (order, _abi_value(cbdc), selection, group)
        signers = group_of(self.registry, self.nodes, group) if signers is None else signers
        return draw, epoch, group_signatures(signers, bytes(cash.cbdcDrawDigest(draw)))

    def fill(self, cash: Any, order: int, cbdc: Any, **overrides: Any) -> Any:
        """`cbdc` fills `order` with a draw of it certified by the order's group (see `certify`)."""
        draw, epoch, signatures = self.certify(cash, order, cbdc, **overrides)
        return cash.fill(draw, epoch, signatures, sender=cbdc)


@pytest.fixture(scope="module")
def draws(dle: Any, registry: Any, archive_nodes: list[Any]) -> Draws:
    """Certified CBDC draws by the archive groups of `archive_nodes` (their epochs must be open)."""
    return Draws(dle, registry, archive_nodes)


def set_prices(oracle: Any, admin: Any, token: Any, *stablecoins: Any) -> None:
    """CoNET at $0.05, each stablecoin at $1.00."""
    oracle.setPrice(token, CONET_PRICE, sender=admin)
    for coin in stablecoins:
        oracle.setPrice(coin, DOLLAR, sender=admin)


# ---------------------------------------------------------------- strict reverts and EIP-712 digests


def _abi_value(value: Any) -> Any:
    """`value` as eth_abi encodes it: accounts and contracts by address, enums as ints."""
    if hasattr(value, "address"):
        return value.address
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    return value


def _revert_data(err: Any) -> bytes | None:
    """The raw revert data of an undecoded revert: ape gives it as hex, or as the repr of bytes."""
    import ast

    message = str(err.message)
    if message.startswith("0x"):
        return bytes.fromhex(message[2:])
    if message.startswith(("b'", 'b"')):
        return ast.literal_eval(message)
    return None


@contextmanager
def reverts_with(error: Any, **inputs: Any) -> Iterator[None]:
    """Like `ape.reverts(error, **inputs)`, but strict. ape's context manager passes whenever a revert
    is not decoded (an error raised by another contract than the one called stays raw data) and skips
    inputs it does not know by name. This one matches the error by selector, decodes raw revert data
    with the error's ABI, and when inputs are given wants every input, each equal once ABI-encoded."""
    from ape.exceptions import ContractLogicError, CustomError
    from eth_abi import decode, encode
    from eth_utils.crypto import keccak as _keccak

    abi = error.abi
    selector = _keccak(text=abi.selector)[:4]
    types = [item.canonical_type for item in abi.inputs]
    names = [item.name for item in abi.inputs]
    try:
        yield
    except ContractLogicError as err:
        if isinstance(err, CustomError):
            got = _keccak(text=err.abi.selector)[:4]
            assert got == selector, f"expected {abi.selector}, reverted with {err.abi.selector}: {err.inputs}"
            actual = [err.inputs[name] for name in names]
        else:
            data = _revert_data(err)
            assert data is not None, f"expected {abi.selector}, reverted with {err.message!r}"
            assert data[:4] == selector, f"expected {abi.selector} ({selector.hex()}), reverted with 0x{data.hex()}"
            actual = list(decode(types, data[4:]))
        if inputs:
            assert sorted(inputs) == sorted(names), f"{abi.selector}: give every input of {names}"
            for name, kind, value in zip(names, types, actual, strict=True):
                expected = encode([kind], [_abi_value(inputs[name])])
                assert encode([kind], [_abi_value(value)]) == expected, (
                    f"{abi.name}.{name}: expected {inputs[name]!r}, got {value!r}"
                )
    else:
        raise AssertionError(f"did not revert; expected {abi.selector}")


def eip712_digest(
    name: str, chain_id: int, contract: str, primary: str, fields: list[tuple[str, str]], message: dict[str, Any]
) -> bytes:
    """The EIP-712 digest of `message` (a `primary` struct of `fields`) for domain (`name`, "1",
    `chain_id`, `contract`), computed off chain with eth_account."""
    from eth_account.messages import encode_typed_data
    from eth_utils.crypto import keccak as _keccak

    domain = {"name": name, "version": "1", "chainId": chain_id, "verifyingContract": contract}
    types = {primary: [{"name": field, "type": kind} for field, kind in fields]}
    signable = encode_typed_data(domain_data=domain, message_types=types, message_data=message)
    return _keccak(b"\x19\x01" + signable.header + signable.body)


EXIT_FIELDS = [
    ("note", "uint256"),
    ("chain", "bytes32"),
    ("height", "uint256"),
    ("holder", "address"),
    ("receiver", "address"),
    ("amount", "uint256"),
    ("nonce", "uint256"),
    ("exitedBefore", "bytes32"),
]


def exit_head(certificate: Sequence[Any]) -> bytes:
    """The exit history's head once `certificate` (a CertifiedExits.ExitCertificate tuple) is paid: the
    first 27 bytes of its EIP-712 struct hash, zero-padded — the next certificate's `exitedBefore`.
    Computed here with eth_abi, independently of the contracts and offchain.chain.dle."""
    from eth_abi.abi import encode as _encode
    from eth_utils.crypto import keccak as _keccak

    type_string = "ExitCertificate(" + ",".join(f"{kind} {field}" for field, kind in EXIT_FIELDS) + ")"
    values = [_abi_value(value) for value in certificate]
    struct = _keccak(_encode(["bytes32", *(kind for _, kind in EXIT_FIELDS)], [_keccak(text=type_string), *values]))
    return struct[:27] + bytes(5)


def exit_digest(chain_id: int, cash: Any, certificate: Sequence[Any]) -> bytes:
    """CoNETCash.exitDigest(certificate) for the CoNETCash at `cash` on chain `chain_id`."""
    message = {field: _abi_value(value) for (field, _), value in zip(EXIT_FIELDS, certificate, strict=True)}
    return eip712_digest("CoNETCash", chain_id, _abi_value(cash), "ExitCertificate", EXIT_FIELDS, message)


CBDC_DRAW_FIELDS = [("id", "uint256"), ("cbdc", "address"), ("selection", "bytes32"), ("group", "uint256")]


def cbdc_draw_digest(chain_id: int, cash: Any, draw: Sequence[Any]) -> bytes:
    """CoNETCash.cbdcDrawDigest(draw) for the CoNETCash at `cash` on chain `chain_id`."""
    message = {field: _abi_value(value) for (field, _), value in zip(CBDC_DRAW_FIELDS, draw, strict=True)}
    return eip712_digest("CoNETCash", chain_id, _abi_value(cash), "CbdcDraw", CBDC_DRAW_FIELDS, message)


def genesis_digest(chain_id: int, dle: Any, asset: Any, asset_id: int, genesis: bytes, group: int) -> bytes:
    """DleRegistry.genesisDigest(asset, assetId, genesis, group) for the registry at `dle`."""
    fields = [
        ("chain", "bytes32"),
        ("genesisHash", "bytes32"),
        ("asset", "address"),
        ("assetId", "uint256"),
        ("group", "uint256"),
    ]
    message = {
        "chain": dle_chain_id(chain_id, asset, asset_id),
        "genesisHash": genesis,
        "asset": _abi_value(asset),
        "assetId": asset_id,
        "group": group,
    }
    return eip712_digest("CoNET DLE", chain_id, _abi_value(dle), "ChainGenesis", fields, message)


def block_digest(
    chain_id: int,
    dle: Any,
    chain: bytes,
    height: int,
    version: int,
    role: int,
    header: bytes,
    kind: str = "BlockSignature",
) -> bytes:
    """DleRegistry.blockDigest(chain, height, rolesVersion, role, header) for the registry at `dle`
    (`kind="Refusal"`: DleRegistry.refusalDigest of the same fields)."""
    fields = [
        ("chain", "bytes32"),
        ("height", "uint256"),
        ("rolesVersion", "uint256"),
        ("role", "uint8"),
        ("headerHash", "bytes32"),
    ]
    message = {"chain": chain, "height": height, "rolesVersion": version, "role": role, "headerHash": header}
    return eip712_digest("CoNET DLE", chain_id, _abi_value(dle), kind, fields, message)


def dle_chain_id(chain_id: int, asset: Any, asset_id: int) -> bytes:
    """DleChainId.compute: keccak256(abi.encode(block.chainid, asset, assetId))."""
    from eth_abi import encode
    from eth_utils.crypto import keccak as _keccak

    return _keccak(encode(["uint256", "address", "uint256"], [chain_id, _abi_value(asset), asset_id]))


def recovered_signers(digest: bytes, signatures: bytes) -> list[str]:
    """The addresses ecrecover finds in concatenated 65-byte `signatures` over `digest`, in order."""
    from eth_account import Account

    return [Account._recover_hash(digest, signature=signatures[i : i + 65]) for i in range(0, len(signatures), 65)]


def reverts_with_wrong_signers(dle: Any, digest: bytes, signatures: bytes, group: int, epoch: int) -> Any:
    """`reverts_with` the error DleRegistry gives for `signatures` that are not over `digest`: whoever
    ecrecover finds instead is either out of order (UnsortedSigners) or not the group (SignersNotGroup)."""
    signers = recovered_signers(digest, signatures)
    for index in range(1, len(signers)):
        if int(signers[index], 16) <= int(signers[index - 1], 16):
            return reverts_with(dle.UnsortedSigners, index=index)
    return reverts_with(dle.SignersNotGroup, group=group, epoch=epoch)
