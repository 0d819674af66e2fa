"""The three economy scripts (`ape run buy`, `ape run cbdc`, `ape run governance`) against the project's
anvil node, as a user runs them, with the clear errors they promise; and the client checks behind them."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import MIN_STAKE, set_prices

from offchain.chain.cash import CashClient, CashError, CertifiedDraw, Order, format_amount, parse_amount
from offchain.chain.deployer import Role
from offchain.devnet.anvil import AnvilNode, rpc, start_anvil
from offchain.toolchain import project_root

STALE = 2 * 24 * 3600


def ape_run(node: AnvilNode, book_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    ape = str(Path(sys.executable).with_name("ape"))
    env = {**os.environ, "CONET_DEPLOYMENTS_DIR": str(book_dir), "CONET_WALLET_PASSPHRASE": "correct horse"}
    script, *rest = args
    return subprocess.run(
        [ape, "run", script, *rest, "--network", f"avalanche:anvil:{node.uri}"],
        cwd=project_root(),
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def failed(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result.stdout
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def anvil() -> Iterator[AnvilNode]:
    node = start_anvil()
    yield node
    node.stop()


@pytest.mark.anvil
def test_buy_fill_and_govern_through_the_scripts(anvil: AnvilNode, tmp_path: Path) -> None:
    ok(ape_run(anvil, tmp_path, "deploy"))
    wallets = tmp_path / "wallets"

    # A user buys from a fresh wallet: an order waits, and the wallet's keyfile is saved.
    out = ok(ape_run(anvil, tmp_path, "buy", "--amount", "25.5", "--wallet-dir", str(wallets)))
    assert "order    #1 of 25.5 waits for a CBDC" in out
    assert len(list(wallets.glob("buyer-*.json"))) == 1

    # A CBDC stakes and registers; with no archive group to draw the order's CBDC it fills nothing (the
    # contract takes a fill only on the group's certified draw): the order waits.
    out = ok(ape_run(anvil, tmp_path, "cbdc", "--once"))
    assert "staked   100,000 CONET as a CBDC" in out
    assert "registered CBDC node #1" in out
    assert "order 1: waits for its CBDC draw by the archive group" in out
    assert "filled 0 order(s)" in out and "filled   order" not in out
    # A second pass does not stake or register again.
    out = ok(ape_run(anvil, tmp_path, "cbdc", "--once"))
    assert "filled 0 order(s)" in out and "staked" not in out and "known as CBDC node #1" in out

    # Governance, step by step: delegate, propose, wait, vote, wait, queue, wait, execute, show.
    ok(ape_run(anvil, tmp_path, "governance", "delegate"))
    out = ok(ape_run(anvil, tmp_path, "governance", "propose", "set-parameter", "NOTE_CAP_UNITS", "20"))
    proposal = out.split("proposed ", 1)[1].split()[0]
    assert "state     pending" in out
    assert "voting ends" in ok(ape_run(anvil, tmp_path, "governance", "wait", proposal))
    # The treasury's votes: the genesis supply less what it gave the CBDC (which burned nothing: it
    # filled no order).
    assert f"voted    for on {proposal} with 498,800,000 votes" in ok(
        ape_run(anvil, tmp_path, "governance", "vote", proposal)
    )
    assert "state     succeeded" in ok(ape_run(anvil, tmp_path, "governance", "wait", proposal))
    ok(ape_run(anvil, tmp_path, "governance", "queue", proposal))
    assert "may be executed from" in failed(ape_run(anvil, tmp_path, "governance", "execute", proposal))
    ok(ape_run(anvil, tmp_path, "governance", "wait", proposal))
    ok(ape_run(anvil, tmp_path, "governance", "execute", proposal))
    assert "state     executed" in ok(ape_run(anvil, tmp_path, "governance", "show", proposal))

    # The new cap holds: 25.5 is now too much, 20 is fine.
    assert "invalid amount" in failed(ape_run(anvil, tmp_path, "buy", "--amount", "25.5", "--wallet-dir", str(wallets)))
    # Out-of-bounds and unknown parameters are refused before anything is proposed.
    assert "must lie within" in failed(
        ape_run(anvil, tmp_path, "governance", "propose", "set-parameter", "EXIT_FEE_BPS", "5000")
    )
    assert "unknown parameter" in failed(
        ape_run(anvil, tmp_path, "governance", "propose", "set-parameter", "NOPE", "1")
    )

    # Errors in words: an unlisted stablecoin, and a price gone stale.
    unlisted = "0x000000000000000000000000000000000000dEaD"
    assert "stablecoin not listed" in failed(
        ape_run(anvil, tmp_path, "buy", "--stablecoin", unlisted, "--wallet-dir", str(wallets))
    )
    rpc(anvil.uri, "evm_increaseTime", [STALE])
    rpc(anvil.uri, "evm_mine", [])
    assert "price stale" in failed(ape_run(anvil, tmp_path, "buy", "--amount", "20", "--wallet-dir", str(wallets)))


# ---------------------------------------------------------------- the client's checks, in process


@pytest.fixture(scope="module")
def client(cash: Any, token: Any, oracle: Any, staking: Any, params: Any, registry: Any) -> CashClient:
    return CashClient(
        {
            "CoNETCash": cash,
            "CoNETToken": token,
            "PriceOracle": oracle,
            "Staking": staking,
            "ParameterStore": params,
            "NodeRegistry": registry,
        }
    )


@pytest.fixture(scope="module", autouse=True)
def _deployed(client: CashClient, cbdc: Any, funded: list[Any]) -> None:
    """Set up the module's fixtures before ape's per-test snapshots start."""


def test_not_a_staked_cbdc_is_refused_in_words(
    client: CashClient, admin: Any, alice: Any, bob: Any, token: Any, oracle: Any, stablecoin: Any, params: Any
) -> None:
    params.listStablecoin(stablecoin, sender=admin)
    set_prices(oracle, admin, token, stablecoin)
    stablecoin.mint(alice, 10**6, sender=alice)
    bought = client.buy(alice, stablecoin, 10**6)
    order = client.open_orders()[0]
    assert order == Order(bought.id, alice.address, stablecoin.address, 10**6, order.placed_at)
    draw = CertifiedDraw(order.id, bob.address, b"\x5e" * 32, order.id % 2, 1, b"")
    with pytest.raises(CashError, match="not a staked CBDC"):
        client.fill(bob, order, draw)
    assert MIN_STAKE[Role.CBDC] > 0


def test_reverts_that_slip_past_the_checks_are_translated(client: CashClient, alice: Any, stablecoin: Any) -> None:
    with pytest.raises(CashError, match="stablecoin not listed"):
        client.buy(alice, stablecoin, 1)
    with pytest.raises(CashError, match="nothing to claim"):
        client.claim(alice, stablecoin.address)


def test_amounts_parse_exactly_or_not_at_all() -> None:
    assert parse_amount("12.5", 6) == 12_500_000
    assert parse_amount("100", 18) == 100 * 10**18
    assert format_amount(12_500_000, 6) == "12.5"
    for bad in ["0", "-1", "0.0000001", "abc", ""]:
        with pytest.raises(CashError):
            parse_amount(bad, 6)
