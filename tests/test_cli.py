"""The `conet` console script."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import sample_book as sample

from offchain import __version__
from offchain.chain import addressbook
from offchain.cli import main


def test_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"conet, version {__version__}"


def test_deployments_show(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONET_DEPLOYMENTS_DIR", str(tmp_path))
    addressbook.save(sample(), tmp_path)
    result = CliRunner().invoke(main, ["deployments", "show", "--network", "avalanche:fuji"])
    assert result.exit_code == 0, result.output
    assert "avalanche:fuji (chain id 43113)" in result.output
    assert "CoNETToken" in result.output and sample().address("CoNETToken") in result.output
    as_json = CliRunner().invoke(main, ["deployments", "show", "--network", "avalanche:fuji", "--json"])
    assert json.loads(as_json.output)["contracts"]["CoNETToken"]["block"] == 7


def test_deployments_show_without_a_book_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONET_DEPLOYMENTS_DIR", str(tmp_path))
    result = CliRunner().invoke(main, ["deployments", "show", "--network", "avalanche:mainnet"])
    assert result.exit_code == 1
    assert "no address book for avalanche:mainnet" in result.output
