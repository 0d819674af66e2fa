"""Address books: round trip, clear errors for malformed files, atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ADDRESS, HASH, sample_book

from offchain.chain import addressbook
from offchain.chain.addressbook import AddressBookError

sample = sample_book


def test_round_trip(tmp_path: Path) -> None:
    path = addressbook.save(sample(), tmp_path)
    assert path == tmp_path / "avalanche-fuji.json"
    assert addressbook.load("avalanche-fuji", tmp_path) == sample()
    assert addressbook.load("avalanche:fuji", tmp_path).address("CoNETToken") == ADDRESS
    assert json.loads(path.read_text())["chainId"] == 43113


def test_a_contract_not_deployed_is_named(tmp_path: Path) -> None:
    with pytest.raises(AddressBookError, match="Staking is not deployed on avalanche:fuji"):
        sample().address("Staking")


def test_a_missing_book_says_to_deploy(tmp_path: Path) -> None:
    with pytest.raises(AddressBookError, match="deploy first"):
        addressbook.load("avalanche:mainnet", tmp_path)


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ("[]", "malformed"),
        ('{"network": "avalanche:fuji", "chainId": 1}', "malformed"),
        ('{"network": "a:b", "chainId": "x", "contracts": {}}', "malformed"),
        (
            json.dumps(
                {
                    "network": "a:b",
                    "chainId": 1,
                    "contracts": {"T": {"address": "0x12", "block": 1, "txHash": HASH, "codeHash": HASH}},
                }
            ),
            "not an address",
        ),
        (
            json.dumps(
                {
                    "network": "a:b",
                    "chainId": 1,
                    "contracts": {"T": {"address": ADDRESS, "block": 1, "txHash": HASH, "codeHash": "0x"}},
                }
            ),
            "not a code hash",
        ),
    ],
)
def test_malformed_books_are_refused_clearly(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "avalanche-fuji.json").write_text(content)
    with pytest.raises(AddressBookError, match=message):
        addressbook.load("avalanche:fuji", tmp_path)


def test_a_bad_network_name_is_refused() -> None:
    with pytest.raises(AddressBookError, match="<ecosystem>:<network>"):
        addressbook.book_path("fuji")


def test_a_write_that_fails_midway_leaves_the_old_book(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    addressbook.save(sample(), tmp_path)
    before = (tmp_path / "avalanche-fuji.json").read_text()

    def crash(*_: object, **__: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(addressbook.json, "dump", crash)
    changed = sample()
    changed.chain_id = 1
    with pytest.raises(OSError, match="disk full"):
        addressbook.save(changed, tmp_path)
    assert (tmp_path / "avalanche-fuji.json").read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["avalanche-fuji.json"], "no temporary file is left behind"
