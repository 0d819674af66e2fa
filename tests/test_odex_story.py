"""The white paper's oDEX story, in one process: deposit, sign, match, settle, withdraw.

User A deposits 1 ETH-like (a receipt chain opened with A as its holder) and user B 100 AVAX-like; A
signs a SELL of 1 ETH at 63.799 AVAX, B a BUY; the book matches them at the maker's price; the settler
writes "a new block in user A's ETH receipt to sign 1 ETH held by user B" and the matching block on B's
AVAX receipt; A exits 63.799 AVAX and B exits 1 ETH, each certified in the vault's domain.

Fees are on top (0.01% of each leg, paid by the payer and split like note fees), so A's deposit covers
the 1 ETH plus its fee, 0.0001 ETH: a seller who deposited exactly 1 ETH could sell 0.9999 ETH. The
mainchain (vault deposit and payout) is not run here: tests/test_odex_devnet.py runs the same story on
a devnet, where the vault on anvil pays the certificates.
"""

from __future__ import annotations

import time
from pathlib import Path

from odex_fixtures import ALICE, BOB, BOOK, ETH, FEE_BPS, MAINCHAIN_ID, NATIVE, UNIT, VAULT, local_odex, run

from offchain.dle.local import address_of_secret
from offchain.odex.book import OrderBook
from offchain.odex.order import (
    Order,
    OrderDomain,
    Side,
    fee_of,
    fee_split,
    market_id,
    quote_of,
    required_authorization,
)
from offchain.odex.settlement import FillStatus

PRICE = 63_799 * UNIT // 1_000


def test_the_white_paper_story(tmp_path: Path) -> None:
    async def story() -> None:
        odex = local_odex(tmp_path)
        a, b, book_key = address_of_secret(ALICE), address_of_secret(BOB), address_of_secret(BOOK)
        market = market_id(ETH, NATIVE)
        domain = OrderDomain(MAINCHAIN_ID, VAULT)
        base_fee = fee_of(UNIT, FEE_BPS)

        # Deposits: one receipt chain each.
        eth = await odex.deposit(ALICE, ETH, UNIT + base_fee)
        avax = await odex.deposit(BOB, NATIVE, 100 * UNIT)
        assert odex.balance(eth, ALICE) == UNIT + base_fee and odex.balance(avax, BOB) == 100 * UNIT

        # Orders: each backed by an authorization naming the book on the trader's receipt chain.
        expiry = int(time.time()) + 3600
        sell = Order(market, a, Side.SELL, PRICE, UNIT, eth.chain, 0, 0, expiry)
        buy = Order(market, b, Side.BUY, PRICE, UNIT, avax.chain, 0, 0, expiry)
        sell_auth, _ = await eth.wallet.authorize(ALICE, book_key, required_authorization(sell))
        buy_auth, _ = await avax.wallet.authorize(BOB, book_key, required_authorization(buy))
        assert (sell_auth, buy_auth) == (sell.authorization, buy.authorization)

        # Matching: A's order rests, B's crosses it at A's price.
        book = OrderBook(market, domain)
        now = int(time.time())
        assert book.submit(sell.sign(ALICE, domain), now) == []
        (fill,) = book.submit(buy.sign(BOB, domain), now)
        assert (fill.seller, fill.buyer, fill.base, fill.price) == (a, b, UNIT, PRICE)
        assert fill.quote == quote_of(UNIT, PRICE) == 63_799 * UNIT // 1_000
        assert fill.maker == sell.hash(domain) and fill.taker == buy.hash(domain)

        # Settlement: one block on each receipt chain.
        settler = odex.settler(tmp_path / "journal.db")
        (report,) = await settler.settle([fill])
        assert report.status is FillStatus.SETTLED, report.reason
        quote_fee = fee_of(fill.quote, FEE_BPS)
        assert odex.balance(eth, BOB) == UNIT and odex.balance(eth, ALICE) == 0
        assert odex.balance(avax, ALICE) == fill.quote
        assert odex.balance(avax, BOB) == 100 * UNIT - fill.quote - quote_fee
        for receipt, fee in ((eth, base_fee), (avax, quote_fee)):
            creator, each, pool = fee_split(fee)
            assert odex.balance(receipt, receipt.roles.creator) == creator
            assert [odex.balance(receipt, w) for w in receipt.roles.witnesses] == [each] * 5
            assert odex.balance(receipt, receipt.roles.validators[0]) == pool
            assert creator + 5 * each + pool == fee

        # Withdrawals: A exits 63.799 AVAX from B's receipt, B exits 1 ETH from A's (nothing deducted:
        # the fees were paid on top).
        a_out = await avax.wallet.exit(ALICE, fill.quote, a)
        b_out = await eth.wallet.exit(BOB, UNIT, b)
        assert (a_out.certificate.amount, a_out.certificate.note, a_out.certificate.receiver) == (
            63_799 * UNIT // 1_000,
            avax.receipt,
            a,
        )
        assert (b_out.certificate.amount, b_out.certificate.note, b_out.certificate.receiver) == (UNIT, eth.receipt, b)
        assert odex.balance(avax, ALICE) == 0 and odex.balance(eth, BOB) == 0
        # What is left on each receipt is the fee recipients' and B's change: conserved to the unit.
        for receipt in (eth, avax):
            odex.check_conservation(receipt)
        state = odex.head_state(avax.chain)
        assert odex.reader.supply(state, avax.chain) == (100 * UNIT, fill.quote)
        assert odex.reader.supply(odex.head_state(eth.chain), eth.chain) == (UNIT + base_fee, UNIT)

    run(story())
