"""The white paper's oDEX story on a running devnet (`make demo` runs it after the DLE scenario).

Every step is a `conet odex` command, run in this process and printed as typed:

1. alice (user A) deposits 1.0001 mETH into the vault and bob (user B) 100 AVAX: each deposit is a
   receipt, and the archive node that hosts it opens the receipt's chain from the vault's
   `ReceiptIssued` (mirror → draw → genesis by a CBDC → registered on the mainchain). alice deposits
   1.0001 and not 1 because the 0.01% fee is paid on top of every trade leg by its payer: selling 1 mETH
   costs 1.0001 mETH.
2. alice signs a SELL of 1 mETH at 63.799 AVAX (an `Authorize` naming the book on her mETH receipt chain,
   then the order); it rests. bob signs a BUY; the book's group (creator, witness, validator — each its
   own process) replays the batch and signs it with 100%, and the settler writes "a new block in user A's
   ETH receipt to sign 1 ETH held by user B" and the matching block on bob's AVAX receipt.
3. alice withdraws 63.799 AVAX from bob's receipt and bob 1 mETH from alice's: each exit is final on the
   receipt chain, certified by its archive group in the vault's domain, and paid by the vault on anvil.
4. A summary: balances on the receipt chains before and after the trade, what the vault paid, the fees
   and how they were split, and the vault's custody per asset against its outstanding receipts.

`python -m offchain.devnet.odex_demo [--dir DIR]`; exits non-zero if any step fails.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import click

from offchain.chain.cash import format_amount
from offchain.devnet.demo import DemoError, conet

__all__ = ["StoryResult", "main", "run_story"]

UNIT = 10**18
SELL_AMOUNT, PRICE = "1", "63.799"
A_DEPOSIT, B_DEPOSIT = "1.0001", "100"


@dataclass(frozen=True)
class StoryResult:
    """What the story did: the receipts, the vault's payouts and the balances read along the way."""

    eth_receipt: int
    avax_receipt: int
    paid_a: int
    """AVAX the vault paid alice (units)."""
    paid_b: int
    """mETH the vault paid bob."""
    before: dict[str, dict[int, int]]
    """wallet → receipt → balance on its chain, after the deposits."""
    after: dict[str, dict[int, int]]
    """… after the trade settled, before the withdrawals."""
    trades: list[dict[str, object]]
    seconds: float


def _receipt(output: str, what: str) -> int:
    found = re.search(r"receipt (\d+): chain 0x[0-9a-f]+ open", output)
    if found is None:
        raise DemoError(f"the {what} deposit's receipt is not in the output")
    return int(found.group(1))


def _paid(output: str) -> int:
    found = re.search(r"the vault paid ([0-9.]+) ", output)
    if found is None:
        raise DemoError("the vault's payout is not in the output")
    whole, _, fraction = found.group(1).partition(".")
    return int(whole) * UNIT + int((fraction or "0").ljust(18, "0"))


def _balances(directory: Path | None, wallets: Sequence[str]) -> dict[str, dict[int, int]]:
    from offchain.devnet.dle import DevnetClient, load_wallet
    from offchain.odex.cli import OdexWallet

    client = DevnetClient.open(directory)
    out: dict[str, dict[int, int]] = {}
    for name in wallets:
        wallet = OdexWallet(client, load_wallet(client, name), name)
        out[name] = {receipt: units for receipt, _asset, units, _fee in wallet.balances()}
    return out


def _book_trades(directory: Path | None) -> list[dict[str, object]]:
    from offchain.devnet.dle import DevnetClient, load_wallet
    from offchain.odex.cli import OdexWallet

    client = DevnetClient.open(directory)
    wallet = OdexWallet(client, load_wallet(client, "alice"), "alice")
    trades: list[dict[str, object]] = wallet.call_book("/odex/trades")
    return trades


def _wait_settled(directory: Path | None, timeout: float = 60.0) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    while True:
        trades = _book_trades(directory)
        if trades and all(t["status"] != "pending" for t in trades):
            return trades
        if time.monotonic() > deadline:
            raise DemoError(f"the fills were not settled within {timeout:.0f} s: {trades}")
        time.sleep(0.2)


def run_story(directory: Path | None = None) -> StoryResult:
    """The story of the module docstring, through `conet odex`; returns what it read."""
    started = time.monotonic()
    click.echo("\n== the oDEX story: user A sells 1 ETH-like (mETH) to user B for 63.799 AVAX ==")
    eth = _receipt(conet(["odex", "--wallet", "alice", "deposit", "mETH", A_DEPOSIT], directory), "mETH")
    avax = _receipt(conet(["odex", "--wallet", "bob", "deposit", "AVAX", B_DEPOSIT], directory), "AVAX")
    before = _balances(directory, ("alice", "bob"))
    conet(["odex", "--wallet", "alice", "order", "sell", SELL_AMOUNT, PRICE], directory)
    conet(["odex", "book"], directory)
    conet(["odex", "--wallet", "bob", "order", "buy", SELL_AMOUNT, PRICE], directory)
    trades = _wait_settled(directory)
    if [t["status"] for t in trades] != ["settled"]:
        raise DemoError(f"expected one settled fill, the book reports {trades}")
    conet(["odex", "trades"], directory)
    after = _balances(directory, ("alice", "bob"))
    paid_a = _paid(conet(["odex", "--wallet", "alice", "withdraw", str(avax), PRICE], directory))
    paid_b = _paid(conet(["odex", "--wallet", "bob", "withdraw", str(eth), SELL_AMOUNT], directory))
    conet(["devnet", "status"], directory)
    result = StoryResult(eth, avax, paid_a, paid_b, before, after, trades, time.monotonic() - started)
    _summary(directory, result)
    return result


def _summary(directory: Path | None, result: StoryResult) -> None:
    from offchain.chain.odex import NATIVE_ASSET, OdexVaultClient
    from offchain.devnet.dle import DevnetClient

    client = DevnetClient.open(directory)
    vault = OdexVaultClient(client.w3, client.state.contracts)
    symbols = {result.eth_receipt: "mETH", result.avax_receipt: "AVAX"}

    def amount(units: int) -> str:
        return format_amount(units, 18)

    click.echo("\noDEX summary (receipt-chain balances: after the deposits -> after the trade)")
    for wallet in ("alice", "bob"):
        for receipt, symbol in symbols.items():
            was, now = result.before[wallet].get(receipt, 0), result.after[wallet].get(receipt, 0)
            if was or now:
                click.echo(f"  {wallet:<6} receipt {receipt} ({symbol}): {amount(was)} -> {amount(now)}")
    (trade,) = result.trades
    base_fee = int(str(trade["base_leg"]["fee"]))  # type: ignore[index]
    quote_fee = int(str(trade["quote_leg"]["fee"]))  # type: ignore[index]
    click.echo(
        f"  fees (0.01%, paid on top, split creator 30% / 5 witnesses 10% each / validators 20%): "
        f"alice {amount(base_fee)} mETH, bob {amount(quote_fee)} AVAX"
    )
    click.echo(f"  the vault paid alice {amount(result.paid_a)} AVAX and bob {amount(result.paid_b)} mETH on anvil")
    for asset, symbol in ((client.state.contracts["MockToken"], "mETH"), (NATIVE_ASSET, "AVAX")):
        outstanding = sum(
            r.outstanding
            for r in (vault.receipt(i) for i in range(1, vault.next_receipt()))
            if int(r.asset, 16) == int(asset, 16)
        )
        custody = vault.custody_of(asset)
        held = vault.balance_of(asset, vault.vault.address)
        verdict = "holds" if held == outstanding == custody else "DOES NOT HOLD"
        click.echo(
            f"  vault {symbol}: balance {amount(held)} = custody {amount(custody)} = outstanding receipts "
            f"{amount(outstanding)}: conservation {verdict}"
        )
        if verdict != "holds":
            raise DemoError(f"the vault's {symbol} is not conserved")
    click.echo(f"\nthe oDEX story took {result.seconds:.1f} s")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m offchain.devnet.odex_demo", description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, default=None, help="the devnet directory (default: .devnet)")
    args = parser.parse_args(argv)
    try:
        run_story(args.dir)
    except DemoError as error:
        click.echo(f"\noDEX demo failed: {error}", err=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
