"""`make lint`'s slither wrapper: an analysis slither could not complete fails the lint."""

from __future__ import annotations

import importlib.util
import re
import sys
from types import ModuleType

import pytest

from offchain.toolchain import project_root

ROOT = project_root()

# What slither 0.11.6 printed for OpenZeppelin's ReentrancyGuardTransient, exiting 0.
IR_FAILURE = """\
'.solcx/solc-v0.8.28 --standard-json --allow-paths /work' running
ERROR:ContractSolcParsing:Impossible to generate IR for CoNETCash._nonReentrantBefore \
(node_modules/@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol#61-67):
 'NoneType' object has no attribute 'parameters'
INFO:Slither:.build/standard-input.json analyzed (96 contracts with 101 detectors), 0 result(s) found
"""
CLEAN = "INFO:Slither:.build/standard-input.json analyzed (95 contracts with 101 detectors), 0 result(s) found\n"


def _wrapper() -> ModuleType:
    spec = importlib.util.spec_from_file_location("slither_check", ROOT / "toolchain" / "slither_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _printing(text: str, code: int = 0) -> list[str]:
    """A stand-in for slither: prints `text` and exits with `code`."""
    return [sys.executable, "-c", f"import sys; sys.stdout.write({text!r}); sys.exit({code})"]


def test_an_ir_failure_fails_the_lint_though_slither_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    wrapper = _wrapper()
    assert any("Impossible to generate IR for CoNETCash._nonReentrantBefore" in r for r in wrapper.problems(IR_FAILURE))
    assert wrapper.main(_printing(IR_FAILURE)) == 1
    out = capsys.readouterr()
    assert IR_FAILURE in out.out  # slither's own output is passed through
    assert "slither_check: incomplete analysis: ERROR:ContractSolcParsing:Impossible to generate IR" in out.err


def test_no_analysis_line_fails_and_a_clean_run_passes_slithers_code_through() -> None:
    wrapper = _wrapper()
    assert wrapper.main(_printing("INFO:Slither:analyzed (0 contracts with 101 detectors)\n")) == 1
    assert wrapper.main(_printing("")) == 1
    assert wrapper.problems(CLEAN) == []
    assert wrapper.main(_printing(CLEAN)) == 0
    assert wrapper.main(_printing(CLEAN, 255)) == 255  # findings at or above fail_on


def test_the_lint_target_runs_slither_through_the_wrapper() -> None:
    lint = re.search(r"^lint:.*?(?=^\S)", (ROOT / "Makefile").read_text(), re.M | re.S)
    assert lint is not None
    assert re.search(r"\$\(BIN\)/python toolchain/slither_check\.py \$\(BIN\)/slither ", lint.group(0))


def test_the_money_contracts_use_a_guard_slither_can_analyse() -> None:
    # OpenZeppelin's ReentrancyGuardTransient is what slither 0.11.6 cannot build IR for.
    for name in ("CoNETCash", "OdexVault"):
        source = (ROOT / "contracts" / f"{name}.sol").read_text()
        assert "ReentrancyGuardTransient" not in source
        assert re.search(rf"contract {name} is [^{{]*TransientReentrancyGuard", source)
