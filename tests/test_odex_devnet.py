"""The oDEX end to end on the devnet: real anvil, the real vault, the DLE and the book's group as processes.

The white paper's story runs through `conet odex` (offchain/devnet/odex_demo.py, what `make demo` runs):
A deposits 1.0001 mETH and B 100 AVAX (each a receipt whose chain the archive node opens from the vault's
event), A sells 1 mETH at 63.799 AVAX, B buys, the book's three processes seal the batch with 100% of
their signatures, the settler writes both legs, and both withdraw from the vault on anvil. Checked here
from the chain itself: the exact payouts (ReceiptWithdrawn and the receivers' balances, gas accounted
for), the fees, every receipt chain's conservation (balances + exited == funded) and the vault's (its
balance of each asset == Σ outstanding receipts). Then a cancel: the authorization revoked on the
receipt chain and the order taken off the book; and the CLI's refusals.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from web3 import Web3

from dle_vm.engine import default_engine
from offchain.chain.odex import NATIVE_ASSET, OdexVaultClient
from offchain.cli import main
from offchain.devnet import dle as devnet
from offchain.devnet.odex_demo import run_story
from offchain.dle.local import address_of_secret
from offchain.dle.note import NoteReader, note_program
from offchain.dle.wallet import NoteChain
from offchain.odex.order import Order, OrderDomain, Side, fee_of, fee_split, market_id, quote_of

pytestmark = pytest.mark.anvil

UNIT = 10**18
PRICE = 63_799 * UNIT // 1_000


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[devnet.DevnetState]:
    directory = tmp_path_factory.mktemp("odex-devnet")
    lines: list[str] = []
    state = devnet.up(directory, log=lines.append)
    try:
        yield state
    finally:
        devnet.down(directory, log=lines.append)
        left = [n.name for n in state.nodes if n.running()]
        assert not left and not state.anvil_running(), left


def odex(state: devnet.DevnetState, *args: str, ok: bool = True) -> str:
    result = CliRunner().invoke(main, ["odex", "--devnet", state.directory, *args], catch_exceptions=False)
    assert (result.exit_code == 0) == ok, f"conet odex {' '.join(args)}:\n{result.output}"
    return result.output


def wallet_address(state: devnet.DevnetState, name: str) -> str:
    secret = bytes.fromhex((Path(state.directory) / "wallets" / f"{name}.key").read_text().strip())
    return Web3.to_checksum_address("0x" + address_of_secret(secret).hex())


def receipt_chain_totals(client: devnet.DevnetClient, receipt: int, accounts: list[bytes]) -> tuple[int, int, int]:
    """(Σ balances of `accounts`, funded, exited) on the receipt's chain, from its certified head."""
    vault = OdexVaultClient(client.w3, client.state.contracts)
    chain = vault.chain_of(receipt)
    group = client.chain.chain_record(chain).group
    reader = NoteReader(default_engine(), note_program())

    async def read() -> tuple[int, int, int]:
        async with client.transport() as transport:
            wallet = NoteChain.connect(transport, client.groups.group_of, client.domains, receipt, chain, group)
            _, state = await wallet.head()
            funded, exited = reader.supply(state, chain)
            return sum(reader.balance(state, chain, a) for a in accounts), funded, exited

    return asyncio.run(read())


def test_the_white_paper_story_on_the_devnet(running: devnet.DevnetState) -> None:
    directory = Path(running.directory)
    story = run_story(directory)
    client = devnet.DevnetClient.open(directory)
    vault = OdexVaultClient(client.w3, client.state.contracts)
    alice, bob = wallet_address(running, "alice"), wallet_address(running, "bob")
    meth = client.state.contracts["MockToken"]
    base_fee, quote = fee_of(UNIT, 1), quote_of(UNIT, PRICE)
    quote_fee = fee_of(quote, 1)
    a, b = (bytes.fromhex(x[2:]) for x in (alice, bob))

    # The receipts: A's of 1.0001 mETH, B's of 100 AVAX, each on its own registered chain.
    eth, avax = vault.receipt(story.eth_receipt), vault.receipt(story.avax_receipt)
    assert (eth.asset, eth.depositor, eth.amount) == (meth, alice, UNIT + base_fee)
    assert (int(avax.asset, 16), avax.depositor, avax.amount) == (0, bob, 100 * UNIT)

    # The trade: one fill at A's price, settled; each leg's fee is 0.01% paid on top by its payer.
    (trade,) = story.trades
    assert trade["status"] == "settled" and int(str(trade["quote"])) == quote == 63_799 * UNIT // 1_000
    assert int(trade["base_leg"]["fee"]) == base_fee and int(trade["quote_leg"]["fee"]) == quote_fee  # type: ignore[index]
    assert story.before["alice"] == {eth.receipt: UNIT + base_fee, avax.receipt: 0}
    assert story.before["bob"] == {eth.receipt: 0, avax.receipt: 100 * UNIT}
    assert story.after["alice"] == {eth.receipt: 0, avax.receipt: quote}
    assert story.after["bob"] == {eth.receipt: UNIT, avax.receipt: 100 * UNIT - quote - quote_fee}

    # The payouts, exactly: the vault's events, and the receivers' balances across each withdrawal.
    assert (story.paid_a, story.paid_b) == (quote, UNIT)
    logs = client.contract("OdexVault").events.ReceiptWithdrawn().get_logs(from_block=0)
    paid = {(e.args.receipt, e.args.holder, e.args.receiver, int(e.args.asset, 16), e.args.amount) for e in logs}
    assert paid == {(avax.receipt, alice, alice, 0, quote), (eth.receipt, bob, bob, int(meth, 16), UNIT)}
    for event in logs:
        tx = client.w3.eth.get_transaction_receipt(event.transactionHash)
        block = tx["blockNumber"]
        who = event.args.receiver
        if int(event.args.asset, 16) == 0:
            gas = tx["gasUsed"] * tx["effectiveGasPrice"]
            delta = client.w3.eth.get_balance(who, block) - client.w3.eth.get_balance(who, block - 1)
            assert delta == event.args.amount - gas
        else:
            token = client.contract("MockToken")
            before = token.functions.balanceOf(who).call(block_identifier=block - 1)
            assert token.functions.balanceOf(who).call(block_identifier=block) - before == event.args.amount
    assert client.contract("MockToken").functions.balanceOf(bob).call() == UNIT

    # Conservation on each receipt chain: every unit funded is held by someone or exited, the fees
    # split exactly (creator, 5 witnesses, validators' pool).
    accounts = [a, b] + [bytes.fromhex(n.address[2:]) for n in running.nodes]
    for receipt, fee, exited in ((eth, base_fee, UNIT), (avax, quote_fee, quote)):
        held, funded, out = receipt_chain_totals(client, receipt.receipt, accounts)
        assert (funded, out) == (receipt.amount, exited) and held + out == funded
        creator, each, pool = fee_split(fee)
        assert creator + 5 * each + pool == fee
    # …and in the vault: its balance of each asset is the sum of the receipts' outstanding amounts.
    assert vault.receipt(eth.receipt).outstanding == base_fee
    assert vault.receipt(avax.receipt).outstanding == 100 * UNIT - quote
    for asset in (meth, NATIVE_ASSET):
        outstanding = sum(
            r.outstanding
            for r in (vault.receipt(i) for i in range(1, vault.next_receipt()))
            if int(r.asset, 16) == int(asset, 16)
        )
        assert vault.balance_of(asset, vault.vault.address) == vault.custody_of(asset) == outstanding

    # The book's status is shown by `conet devnet status`.
    status = "\n".join(devnet.describe_status(devnet.status(directory)))
    assert "book: 0 resting, 2 batches, fills settled 1/1" in status
    assert "oDEX receipts and their chains" in status
    for receipt in (eth, avax):
        assert f"receipt {receipt.receipt}   live     chain 0x{receipt.chain.hex()[:16]}" in status


def test_cancel_revokes_the_authorization_and_takes_the_order_off_the_book(running: devnet.DevnetState) -> None:
    out = odex(running, "--wallet", "carol", "deposit", "mETH", "2")
    assert "balance 2 mETH" in out
    out = odex(running, "--wallet", "carol", "order", "sell", "1.5", "70")
    assert "resting: 1.5 mETH" in out
    order = out.split("order 0x")[1][:64]
    assert f"0x{order[:16]}" in odex(running, "book")
    out = odex(running, "--wallet", "carol", "cancel", order[:12])
    assert "revoked" in out and "off the book" in out
    assert order[:16] not in odex(running, "book")
    # A second order of carol draws on the same receipt with a new authorization; a BUY crossing only
    # the cancelled price finds nothing to trade with.
    out = odex(running, "--wallet", "carol", "order", "sell", "0.5", "70")
    assert "authorization 2 " in out and "resting: 0.5 mETH" in out


def test_clear_refusals(running: devnet.DevnetState) -> None:
    assert "not listed as an oDEX asset" in odex(
        running, "--wallet", "dave", "deposit", "0x" + "12" * 20, "1", ok=False
    )
    assert "is no asset" in odex(running, "--wallet", "dave", "deposit", "DOGE", "1", ok=False)
    out = odex(running, "--wallet", "dave", "order", "buy", "1", "63", ok=False)
    assert "no AVAX receipt of dave holds 63 plus the fee" in out
    assert "dave holds 0 mETH on receipt 1" in odex(running, "--wallet", "dave", "withdraw", "1", "1", ok=False)
    assert "receipt 99 does not exist" in odex(running, "--wallet", "dave", "withdraw", "99", "1", ok=False)
    assert "no open mETH receipt" in odex(
        running, "--wallet", "bob", "order", "sell", "1", "60", "--receipt", "2", ok=False
    )


def test_the_book_refuses_an_order_drawing_on_a_receipt_of_the_other_asset(running: devnet.DevnetState) -> None:
    """A SELL signed against an AVAX receipt would deliver AVAX as the base asset: the book refuses it."""
    client = devnet.DevnetClient.open(Path(running.directory))
    vault = OdexVaultClient(client.w3, client.state.contracts)
    avax = next(r for r in (vault.receipt(i) for i in range(1, vault.next_receipt())) if int(r.asset, 16) == 0)
    secret = devnet.load_wallet(client, "erin")
    assert client.domains.vault is not None
    domain = OrderDomain(client.state.chain_id, client.domains.vault)
    market = market_id(bytes.fromhex(client.state.contracts["MockToken"][2:]), bytes(20))
    order = Order(market, address_of_secret(secret), Side.SELL, PRICE, UNIT, avax.chain, 0, 1, int(time.time()) + 600)
    request = urllib.request.Request(f"{running.book().url}/odex/order", data=order.sign(secret, domain).encode())
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 400
    answer = json.loads(refused.value.read())
    assert answer["code"] == "wrong-receipt" and "is a receipt of 0x" + "00" * 20 in answer["message"]


def fill_lines(trades: str) -> list[str]:
    """The trades listing without each fill's settlement status (which a restarted operator re-learns
    from its settlement journal a moment later)."""
    return [line.rsplit(":", 1)[0] for line in trades.splitlines() if line.startswith("fill ")]


def test_the_book_survives_its_operator_and_a_member_killed(running: devnet.DevnetState) -> None:
    """SIGKILL the book's operator and a member: both come back from their batch stores with the same
    book and trades, and the next order crossing a resting one trades and settles."""
    directory = Path(running.directory)
    assert "balance 1 mETH" in odex(running, "--wallet", "frank", "deposit", "mETH", "1")
    assert "resting: 0.25 mETH" in odex(running, "--wallet", "frank", "order", "sell", "0.25", "69")
    book_before, trades_before = odex(running, "book"), fill_lines(odex(running, "trades"))

    for name in (devnet.BOOK_CREATOR, devnet.BOOK_MEMBERS[0]):
        devnet.restart(directory, name, crash=True)
    assert odex(running, "book") == book_before
    assert fill_lines(odex(running, "trades")) == trades_before

    assert "balance 20 AVAX" in odex(running, "--wallet", "grace", "deposit", "AVAX", "20")
    # 69 is below every other ask of the module's tests: grace's buy meets frank's order.
    out = odex(running, "--wallet", "grace", "order", "buy", "0.25", "69")
    assert "filled 0.25 mETH for 17.25 AVAX" in out, out
    deadline = time.monotonic() + 60
    while not (last := odex(running, "trades").strip().split("\n")[-1]).endswith("settled"):
        assert time.monotonic() < deadline, last
        time.sleep(0.5)
    assert fill_lines(odex(running, "trades"))[: len(trades_before)] == trades_before


def test_conet_devnet_check_walks_every_receipt_chain(running: devnet.DevnetState) -> None:
    """After the module's trades, cancels and withdrawals: every receipt's outstanding value in the vault
    is its chain's balances plus unpaid exits, and the vault holds exactly its custody of each asset."""
    _, receipts, _ = devnet.check(Path(running.directory))
    client = devnet.DevnetClient.open(Path(running.directory))
    vault = OdexVaultClient(client.w3, client.state.contracts)
    assert receipts is not None
    assert [r.receipt for r in receipts.receipts] == list(range(1, vault.next_receipt()))
    for check in receipts.receipts:
        assert check.outstanding == sum(check.balances.values()) + sum(a for _, a in check.unpaid_exits)
        assert check.funded - check.exited == sum(check.balances.values())
    assert {int(a.asset, 16) for a in receipts.assets} == {0, int(client.state.contracts["MockToken"], 16)}
    out = CliRunner().invoke(main, ["devnet", "check", "--dir", running.directory], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert f"conservation holds: {len(receipts.receipts)} oDEX receipts, 2 assets" in out.output
