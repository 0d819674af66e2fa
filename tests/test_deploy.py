"""The deploy script: dependency order, the address book, idempotent re-runs, and real nodes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from offchain.chain import addressbook
from offchain.chain.deployer import DeployConfig, DeployError, Role, deploy
from offchain.devnet.anvil import AnvilNode, start_anvil
from offchain.toolchain import project_root

PUBLIC = [
    "CoNETCash",
    "CoNETGovernor",
    "CoNETTimelock",
    "CoNETToken",
    "DleRegistry",
    "NodeRegistry",
    "OdexVault",
    "ParameterStore",
    "PriceOracle",
    "Staking",
]
ALL = sorted([*PUBLIC, "MockStablecoin", "MockToken"])
NATIVE = "0x" + "00" * 20


@pytest.fixture
def book_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CONET_DEPLOYMENTS_DIR", str(tmp_path))
    return tmp_path


def quiet(_: str) -> None:
    pass


def test_first_deploy_writes_every_contract_and_configures_them(book_dir: Path, accounts: Any, chain: Any) -> None:
    result = deploy(accounts[0], "avalanche:local", log=quiet)
    assert sorted(result.deployed) == ALL
    book = addressbook.load("avalanche:local")
    assert book.chain_id == chain.chain_id == 1337
    assert sorted(book.contracts) == ALL
    assert book.deployer == accounts[0].address
    assert len(book.commit) >= 40
    blocks = [book.contracts[name].block for name in ["CoNETToken", "Staking", "NodeRegistry"]]
    assert blocks == sorted(blocks), "dependencies are deployed first"

    c = result.contracts
    config = DeployConfig()
    assert c["Staking"].token() == c["CoNETToken"].address
    assert c["NodeRegistry"].staking() == c["Staking"].address
    assert c["PriceOracle"].hasRole(c["PriceOracle"].PRICE_SETTER_ROLE(), accounts[0])
    for role in Role:
        assert c["Staking"].minimumStake(int(role)) == config.minimum_stakes[role]
        assert c["Staking"].capacityUnit(int(role)) == config.capacity_units[role]
    assert c["PriceOracle"].price(c["CoNETToken"].address)[0] == config.local_conet_price
    assert c["PriceOracle"].price(c["MockStablecoin"].address)[0] == config.local_stablecoin_price
    assert c["ParameterStore"].backingStablecoins() == [c["MockStablecoin"].address]
    # The oDEX trades AVAX, an 18-decimal ETH-like token and the stablecoin on local chains.
    assert c["MockToken"].decimals() == 18
    assert c["ParameterStore"].odexAssets() == [NATIVE, c["MockToken"].address, c["MockStablecoin"].address]
    assert c["OdexVault"].dependencies() == (c["ParameterStore"].address, c["DleRegistry"].address)
    assert c["OdexVault"].nextReceipt() == 1

    # The wiring: CoNETCash re-issues, the DLE registry slashes, the governor proposes to the timelock,
    # and the timelock owns the parameters and administers every role.
    token, staking, oracle, timelock = c["CoNETToken"], c["Staking"], c["PriceOracle"], c["CoNETTimelock"]
    assert token.hasRole(token.REISSUER_ROLE(), c["CoNETCash"])
    assert staking.hasRole(staking.SLASHER_ROLE(), c["DleRegistry"])
    assert timelock.hasRole(timelock.PROPOSER_ROLE(), c["CoNETGovernor"])
    assert timelock.hasRole(timelock.CANCELLER_ROLE(), c["CoNETGovernor"])
    assert timelock.hasRole(timelock.EXECUTOR_ROLE(), "0x" + "00" * 20)
    assert c["ParameterStore"].owner() == timelock.address
    for contract in (token, staking, oracle):
        assert contract.hasRole(contract.DEFAULT_ADMIN_ROLE(), timelock)
    assert oracle.hasRole(oracle.PRICE_SETTER_ROLE(), timelock)
    assert c["CoNETGovernor"].timelock() == timelock.address
    assert c["CoNETGovernor"].token() == token.address
    assert c["CoNETCash"].dependencies() == tuple(
        c[name].address for name in ["CoNETToken", "PriceOracle", "Staking", "ParameterStore", "DleRegistry"]
    )


def test_rerun_keeps_what_the_chain_confirms(book_dir: Path, accounts: Any) -> None:
    first = deploy(accounts[0], "avalanche:local", log=quiet)
    before = addressbook.load("avalanche:local")
    second = deploy(accounts[0], "avalanche:local", log=quiet)
    assert second.deployed == []
    assert addressbook.load("avalanche:local").contracts == before.contracts
    assert {n: c.address for n, c in second.contracts.items()} == {n: c.address for n, c in first.contracts.items()}


def test_fresh_redeploys_everything(book_dir: Path, accounts: Any) -> None:
    deploy(accounts[0], "avalanche:local", log=quiet)
    before = addressbook.load("avalanche:local")
    result = deploy(accounts[0], "avalanche:local", fresh=True, log=quiet)
    assert sorted(result.deployed) == ALL
    after = addressbook.load("avalanche:local")
    assert all(after.contracts[n].address != before.contracts[n].address for n in ALL)


def test_changed_code_is_redeployed_with_its_dependents(book_dir: Path, accounts: Any) -> None:
    deploy(accounts[0], "avalanche:local", log=quiet)
    book = addressbook.load("avalanche:local")
    # Point Staking at the token's address: the chain holds other code there than the book recorded.
    staking = book.contracts["Staking"]
    book.contracts["Staking"] = addressbook.Deployment(
        address=book.contracts["CoNETToken"].address,
        block=staking.block,
        tx_hash=staking.tx_hash,
        code_hash=staking.code_hash,
    )
    addressbook.save(book)
    result = deploy(accounts[0], "avalanche:local", log=quiet)
    # Staking's dependents follow: the node registry, the DLE registry on both, CoNETCash and the oDEX
    # vault on that.
    assert sorted(result.deployed) == ["CoNETCash", "DleRegistry", "NodeRegistry", "OdexVault", "Staking"]
    assert result.contracts["OdexVault"].dependencies()[1] == result.contracts["DleRegistry"].address
    assert result.contracts["NodeRegistry"].staking() == result.contracts["Staking"].address
    staking = result.contracts["Staking"]
    assert staking.hasRole(staking.SLASHER_ROLE(), result.contracts["DleRegistry"])


def test_an_interrupted_deploy_resumes(
    book_dir: Path, accounts: Any, project: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = project.get_contract

    def failing(name: str) -> Any:
        if name == "Staking":
            raise RuntimeError("node went away")
        return real(name)

    monkeypatch.setattr(project, "get_contract", failing)
    with pytest.raises(RuntimeError, match="node went away"):
        deploy(accounts[0], "avalanche:local", log=quiet)
    assert sorted(addressbook.load("avalanche:local").contracts) == ["CoNETToken", "PriceOracle"]
    monkeypatch.setattr(project, "get_contract", real)
    result = deploy(accounts[0], "avalanche:local", log=quiet)
    assert sorted(result.deployed) == sorted(set(ALL) - {"CoNETToken", "PriceOracle"})


def test_a_book_of_another_chain_is_refused(book_dir: Path, accounts: Any) -> None:
    addressbook.save(addressbook.AddressBook(network="avalanche:local", chain_id=43114))
    with pytest.raises(DeployError, match="chain 43114"):
        deploy(accounts[0], "avalanche:local", log=quiet)


# ---------------------------------------------------------------- `ape run deploy` on real nodes


def ape_run(*args: str, book_dir: Path) -> subprocess.CompletedProcess[str]:
    ape = str(Path(sys.executable).with_name("ape"))
    env = {**os.environ, "CONET_DEPLOYMENTS_DIR": str(book_dir)}
    return subprocess.run(
        [ape, "run", "deploy", *args], cwd=project_root(), env=env, capture_output=True, text=True, timeout=180
    )


@pytest.fixture
def anvil() -> Iterator[AnvilNode]:
    node = start_anvil()
    yield node
    node.stop()


@pytest.mark.anvil
def test_ape_run_deploy_on_anvil_writes_a_book_for_43112_and_reruns(anvil: AnvilNode, tmp_path: Path) -> None:
    network = f"avalanche:anvil:{anvil.uri}"
    first = ape_run("--network", network, book_dir=tmp_path)
    assert first.returncode == 0, first.stderr + first.stdout
    data = json.loads((tmp_path / "avalanche-anvil.json").read_text())
    assert data["chainId"] == 43112
    assert sorted(data["contracts"]) == ALL
    assert "CoNET supply      500,000,000 of 500,000,000" in first.stdout

    second = ape_run("--network", network, book_dir=tmp_path)
    assert second.returncode == 0, second.stderr + second.stdout
    assert "deployed " not in second.stdout
    assert second.stdout.count("kept     ") == len(ALL)
    assert json.loads((tmp_path / "avalanche-anvil.json").read_text())["contracts"] == data["contracts"]

    show = subprocess.run(
        [str(Path(sys.executable).with_name("conet")), "deployments", "show", "--network", "avalanche:anvil"],
        env={**os.environ, "CONET_DEPLOYMENTS_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert show.returncode == 0, show.stderr
    assert data["contracts"]["NodeRegistry"]["address"] in show.stdout


@pytest.mark.anvil
def test_a_public_network_needs_an_account_and_never_gets_the_mock(tmp_path: Path) -> None:
    # A node answering with Fuji's chain id stands in for Fuji: the script must treat it as public.
    # ape waits for one confirmation on Fuji, so this node must mine blocks on its own.
    fuji = start_anvil(chain_id=43113, block_time=0.2)
    try:
        network = f"avalanche:fuji:{fuji.uri}"
        refused = ape_run("--network", network, book_dir=tmp_path)
        assert refused.returncode != 0
        assert "--account is required" in refused.stderr + refused.stdout
        assert not (tmp_path / "avalanche-fuji.json").exists()

        done = ape_run("--network", network, "--account", "TEST::0", book_dir=tmp_path)
        assert done.returncode == 0, done.stderr + done.stdout
        data = json.loads((tmp_path / "avalanche-fuji.json").read_text())
        assert data["chainId"] == 43113
        assert "MockStablecoin" not in data["contracts"] and "MockToken" not in data["contracts"]
        assert sorted(data["contracts"]) == PUBLIC
        # On a public chain the deployer keeps no admin role: only governance changes anything.
        assert "renounced DEFAULT_ADMIN_ROLE" in done.stdout
        again = ape_run("--network", network, "--account", "TEST::0", book_dir=tmp_path)
        assert again.returncode == 0, again.stderr + again.stdout
        assert "deployed " not in again.stdout and "granted " not in again.stdout
    finally:
        fuji.stop()


def test_a_malformed_book_is_refused_not_replaced(book_dir: Path, accounts: Any) -> None:
    # Starting over silently would redeploy every contract of a public network.
    path = book_dir / "avalanche-local.json"
    path.write_text("{not json")
    with pytest.raises(DeployError, match=r"not valid JSON.*--fresh"):
        deploy(accounts[0], "avalanche:local", log=quiet)
    assert path.read_text() == "{not json"


def test_a_rerun_that_only_confirms_keeps_the_recorded_commit(book_dir: Path, accounts: Any) -> None:
    deploy(accounts[0], "avalanche:local", log=quiet)
    book = addressbook.load("avalanche:local")
    book.commit, book.deployer = "built-from-this", "0x0000000000000000000000000000000000000001"
    addressbook.save(book)
    deploy(accounts[0], "avalanche:local", log=quiet)
    kept = addressbook.load("avalanche:local")
    assert (kept.commit, kept.deployer) == ("built-from-this", "0x0000000000000000000000000000000000000001")
