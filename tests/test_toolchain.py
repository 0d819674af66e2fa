"""The offline compiler: the solcjs wrapper, the pins agreeing, and artifacts from ape's one build."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import solcx
import yaml

from offchain.artifacts import ArtifactError, _stale, contract_artifact
from offchain.toolchain import SOLC_VERSION, project_root, solc_binary

ROOT = project_root()


def test_every_pin_names_the_same_compiler() -> None:
    package = json.loads((ROOT / "package.json").read_text())
    config = yaml.safe_load((ROOT / "ape-config.yaml").read_text())
    makefile = re.search(r"^SOLC_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert package["dependencies"]["solc"] == SOLC_VERSION
    assert str(config["solidity"]["version"]) == SOLC_VERSION
    assert makefile is not None and makefile.group(1) == SOLC_VERSION
    # py-evm 0.12 stops at Prague; the compiler's own default must never decide.
    assert config["solidity"]["evm_version"] in {"cancun", "prague"}
    lock = json.loads((ROOT / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/@openzeppelin/contracts"]["version"].startswith("5.")


def test_the_wrapper_answers_like_native_solc() -> None:
    out = subprocess.run([str(solc_binary()), "--version"], capture_output=True, text=True, check=True).stdout
    assert re.search(rf"^Version: {re.escape(SOLC_VERSION)}\+commit\.[0-9a-f]{{8}}", out, re.M)
    assert solcx.wrapper.get_solc_version(solc_binary()) == solcx.wrapper.Version(SOLC_VERSION)
    assert solcx.wrapper.Version(SOLC_VERSION) in solcx.get_installed_solc_versions()


def test_the_wrapper_refuses_what_it_does_not_implement() -> None:
    result = subprocess.run([str(solc_binary()), "--bin", "x.sol"], capture_output=True, text=True)
    assert result.returncode == 1
    assert "unsupported option" in result.stderr


def _standard_json(sources: dict[str, Any]) -> dict[str, Any]:
    return {
        "language": "Solidity",
        "sources": sources,
        "settings": {
            "evmVersion": "cancun",
            "remappings": ["@openzeppelin/contracts=node_modules/@openzeppelin/contracts"],
            "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"]}},
        },
    }


def test_py_solc_x_compiles_through_the_wrapper_with_output_over_64_kib() -> None:
    # node cuts piped output at 64 KiB if it exits before stdout drains; the wrapper must not.
    names = ["CoNETToken", "Staking", "NodeRegistry", "PriceOracle"]
    sources = {f"contracts/{n}.sol": {"urls": [str(ROOT / "contracts" / f"{n}.sol")]} for n in names}
    sources = {k: {"content": Path(v["urls"][0]).read_text()} for k, v in sources.items()}
    out = solcx.compile_standard(
        _standard_json(sources), solc_binary=solc_binary(), base_path=str(ROOT), allow_paths=str(ROOT)
    )
    assert len(json.dumps(out)) > 64 * 1024
    bytecode = out["contracts"]["contracts/Staking.sol"]["Staking"]["evm"]["bytecode"]["object"]
    assert len(bytecode) > 1000


def test_a_missing_import_is_a_compiler_error_not_a_crash() -> None:
    source = 'pragma solidity ^0.8.28; import "./nowhere/Missing.sol"; contract A {}'
    with pytest.raises(solcx.exceptions.SolcError, match=r"Missing\.sol"):
        solcx.compile_standard(
            _standard_json({"contracts/A.sol": {"content": source}}), solc_binary=solc_binary(), base_path=str(ROOT)
        )


def test_artifacts_come_from_apes_build(project: Any) -> None:
    artifact = contract_artifact("Staking")
    contract_type = project.Staking.contract_type
    assert artifact.bytecode == bytes(contract_type.deployment_bytecode.to_bytes())
    assert artifact.runtime_bytecode == bytes(contract_type.runtime_bytecode.to_bytes())
    assert {item.get("name") for item in artifact.abi} >= {"stake", "slash", "capacity", "stakedNodes"}


def test_an_unknown_contract_is_a_clear_error() -> None:
    with pytest.raises(ArtifactError, match=r"no contract named 'Nope'.*CoNETToken"):
        contract_artifact("Nope")


def test_a_changed_or_new_source_makes_the_build_stale(tmp_path: Path) -> None:
    (tmp_path / "contracts").mkdir()
    source = tmp_path / "contracts" / "A.sol"
    source.write_text("contract A {}")
    manifest = {"sources": {"contracts/A.sol": {"content": "contract A {}"}}}
    assert not _stale(tmp_path, manifest)
    source.write_text("contract A { uint x; }")
    assert _stale(tmp_path, manifest)
    source.write_text("contract A {}")
    (tmp_path / "contracts" / "B.sol").write_text("contract B {}")
    assert _stale(tmp_path, manifest)
