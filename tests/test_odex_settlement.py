"""oDEX settlement on a real in-process DLE: fills become `deductTo` blocks on both receipt chains.

Two receipt chains (an ETH-like receipt of Alice, an AVAX-like one of Bob), each trader's `Authorize`
naming the book, and the book's `Settler` settling fills: the base moves to the buyer on the seller's
chain, the quote to the seller on the buyer's chain, each payer paying the 0.01% fee on top, split like
note fees; exits of traded balances are certified in the vault's EIP-712 domain. Refusals (a revoked
authorization, a fill over the limit) carry the program's reason and move nothing; a replayed fill
moves nothing twice; every receipt chain conserves its value.
"""

from __future__ import annotations

from pathlib import Path

from eth_utils.address import to_checksum_address
from odex_fixtures import (
    ALICE,
    BOB,
    BOOK,
    CASH,
    ETH,
    FEE_BPS,
    MAINCHAIN_ID,
    NATIVE,
    REGISTRY,
    UNIT,
    VAULT,
    Odex,
    Receipt,
    local_odex,
    run,
)

from dle_vm.signature import recover
from offchain.chain.dle import Digests
from offchain.chain.dle import ExitCertificate as ChainExit
from offchain.dle.local import address_of_secret
from offchain.dle.roles import split_certificate
from offchain.odex.book import Fill
from offchain.odex.order import fee_of, fee_split, market_id, quote_of
from offchain.odex.settlement import FillStatus, Leg, Settler

PRICE = 63_799 * UNIT // 1_000  # 63.799 AVAX per ETH
BASE = UNIT  # 1 ETH
QUOTE = quote_of(BASE, PRICE)
A, B, THE_BOOK = address_of_secret(ALICE), address_of_secret(BOB), address_of_secret(BOOK)


def fill_of(eth: Receipt, avax: Receipt, sell_auth: int, buy_auth: int, *, sequence: int = 0, base: int = BASE) -> Fill:
    """Alice sells `base` ETH to Bob at PRICE (as the book would emit it)."""
    return Fill(
        sequence=sequence,
        market=market_id(ETH, NATIVE),
        maker=b"\x01" * 32,
        taker=b"\x02" * 32,
        buyer=B,
        seller=A,
        price=PRICE,
        base=base,
        quote=quote_of(base, PRICE),
        buy_receipt_chain=avax.chain,
        buy_authorization=buy_auth,
        sell_receipt_chain=eth.chain,
        sell_authorization=sell_auth,
    )


async def two_receipts(odex: Odex) -> tuple[Receipt, Receipt, int, int]:
    """Alice's 2 ETH receipt and Bob's 100 AVAX receipt, each authorizing the book for one order."""
    eth = await odex.deposit(ALICE, ETH, 2 * UNIT)
    avax = await odex.deposit(BOB, NATIVE, 100 * UNIT)
    sell_auth, _ = await eth.wallet.authorize(ALICE, THE_BOOK, BASE)
    buy_auth, _ = await avax.wallet.authorize(BOB, THE_BOOK, -(-BASE * PRICE // UNIT))
    return eth, avax, sell_auth, buy_auth


def test_a_fill_moves_base_and_quote_on_both_receipt_chains_with_fees_on_top(tmp_path: Path) -> None:
    async def scenario() -> None:
        odex = local_odex(tmp_path)
        eth, avax, sell_auth, buy_auth = await two_receipts(odex)
        # The receipt chains are registered as the vault's asset ids.
        assert [(r[0], r[1]) for r in odex.mainchain.registered] == [(VAULT, 1), (VAULT, 2)]
        settler = odex.settler(tmp_path / "journal.db")
        (report,) = await settler.settle([fill_of(eth, avax, sell_auth, buy_auth)])
        assert report.status is FillStatus.SETTLED, report.reason
        assert report.base is not None and report.quote is not None
        base_fee, quote_fee = fee_of(BASE, FEE_BPS), fee_of(QUOTE, FEE_BPS)
        assert (report.base.fee, report.quote.fee) == (base_fee, quote_fee)
        assert report.base.final and report.quote.final

        # Alice's ETH receipt: Bob holds the base, Alice paid base + fee.
        assert odex.balance(eth, BOB) == BASE
        assert odex.balance(eth, ALICE) == 2 * UNIT - BASE - base_fee
        # Bob's AVAX receipt: Alice holds the quote, Bob paid quote + fee.
        assert odex.balance(avax, ALICE) == QUOTE == 63_799 * UNIT // 1_000
        assert odex.balance(avax, BOB) == 100 * UNIT - QUOTE - quote_fee
        # The book is only the payee of record: it holds nothing.
        assert odex.balance(eth, BOOK) == odex.balance(avax, BOOK) == 0
        # Fees split exactly like note fees: creator 30% + remainders, witnesses 10% each, pool 20%.
        for receipt, fee in ((eth, base_fee), (avax, quote_fee)):
            creator, each, pool = fee_split(fee)
            assert odex.balance(receipt, receipt.roles.creator) == creator
            assert [odex.balance(receipt, w) for w in receipt.roles.witnesses] == [each] * 5
            assert odex.balance(receipt, receipt.roles.validators[0]) == pool
            odex.check_conservation(receipt)

        # Alice exits the quote from Bob's receipt chain: certified in the vault's domain.
        receiver = b"\xa1" * 20
        exited = await avax.wallet.exit(ALICE, QUOTE, receiver)
        certificate = exited.certificate
        assert (certificate.note, certificate.chain, certificate.holder) == (avax.receipt, avax.chain, A)
        assert (certificate.receiver, certificate.amount, certificate.nonce) == (receiver, QUOTE, 0)
        digests = Digests(
            MAINCHAIN_ID, to_checksum_address(REGISTRY), to_checksum_address(CASH), to_checksum_address(VAULT)
        )
        as_chain = ChainExit(
            certificate.note,
            certificate.chain,
            certificate.height,
            to_checksum_address(certificate.holder),
            to_checksum_address(certificate.receiver),
            certificate.amount,
            certificate.nonce,
        )
        vault_digest = digests.vault_exit(as_chain)
        assert vault_digest != digests.exit(as_chain)  # not payable by CoNETCash
        signers = [recover(vault_digest, s) for s in split_certificate(exited.signatures)]
        assert signers == sorted(odex.dle.archives)
        # Bob exits the base from Alice's chain the same way.
        bob_exit = await eth.wallet.exit(BOB, BASE, b"\xb0" * 20)
        assert bob_exit.certificate.amount == BASE and bob_exit.certificate.note == eth.receipt
        for receipt in (eth, avax):
            odex.check_conservation(receipt)
        assert odex.balance(avax, ALICE) == 0 and odex.balance(eth, BOB) == 0

    run(scenario())


def test_a_revoked_authorization_refuses_the_fill_and_moves_nothing(tmp_path: Path) -> None:
    async def scenario() -> None:
        odex = local_odex(tmp_path)
        eth, avax, sell_auth, buy_auth = await two_receipts(odex)
        # Bob cancels his order on chain: the book's authorization is revoked.
        await avax.wallet.revoke(BOB, buy_auth)
        settler = odex.settler(tmp_path / "journal.db")
        (report,) = await settler.settle([fill_of(eth, avax, sell_auth, buy_auth)])
        assert report.status is FillStatus.REFUSED
        assert report.reason is not None and "quote leg: AuthorizationRevoked" in report.reason
        # Neither leg moved: Alice's base is still hers.
        assert odex.balance(eth, ALICE) == 2 * UNIT and odex.balance(eth, BOB) == 0
        assert odex.balance(avax, ALICE) == 0
        for receipt in (eth, avax):
            odex.check_conservation(receipt)

    run(scenario())


def test_an_over_limit_fill_is_refused_and_the_next_fill_settles(tmp_path: Path) -> None:
    async def scenario() -> None:
        odex = local_odex(tmp_path)
        eth, avax, sell_auth, buy_auth = await two_receipts(odex)
        settler = odex.settler(tmp_path / "journal.db")
        too_much = fill_of(eth, avax, sell_auth, buy_auth, sequence=0, base=BASE + 1)
        half = fill_of(eth, avax, sell_auth, buy_auth, sequence=1, base=BASE // 2)
        refused, settled = await settler.settle([too_much, half])
        assert refused.status is FillStatus.REFUSED
        assert refused.reason is not None and refused.reason.startswith("base leg: OverLimit(")
        # The refused fill took no nonce: the next one, in the same batch, settled.
        assert settled.status is FillStatus.SETTLED, settled.reason
        assert odex.balance(eth, BOB) == BASE // 2
        assert odex.balance(avax, ALICE) == quote_of(BASE // 2, PRICE)
        for receipt in (eth, avax):
            odex.check_conservation(receipt)

    run(scenario())


def test_a_replayed_fill_moves_nothing_twice(tmp_path: Path) -> None:
    async def scenario() -> None:
        odex = local_odex(tmp_path)
        eth, avax, _, _ = await two_receipts(odex)
        # Authorizations with room for twice the fill: only the journal stands between a replay and
        # a second transfer.
        sell_auth, _ = await eth.wallet.authorize(ALICE, THE_BOOK, 2 * BASE // 3 * 3)
        buy_auth, _ = await avax.wallet.authorize(BOB, THE_BOOK, 90 * UNIT)
        fill = fill_of(eth, avax, sell_auth, buy_auth, base=BASE // 3)
        settler = odex.settler(tmp_path / "journal.db")
        (first,) = await settler.settle([fill])
        assert first.status is FillStatus.SETTLED and not first.replayed
        height = odex.dle.archives[next(iter(odex.dle.archives))].store.height(eth.chain)
        again, duplicate = await settler.settle([fill, fill])
        assert again.status is duplicate.status is FillStatus.SETTLED
        assert again.replayed and duplicate.replayed
        # A restarted settler on the same journal does not settle it again either.
        restarted = odex.settler(tmp_path / "journal.db")
        (after_restart,) = await restarted.settle([fill])
        assert after_restart.replayed and after_restart.status is FillStatus.SETTLED
        assert odex.dle.archives[next(iter(odex.dle.archives))].store.height(eth.chain) == height
        assert odex.balance(eth, BOB) == BASE // 3
        assert odex.balance(avax, ALICE) == quote_of(BASE // 3, PRICE)
        for receipt in (eth, avax):
            odex.check_conservation(receipt)

    run(scenario())


def test_a_buyer_revoking_after_the_base_leg_leaves_the_fill_half_settled_with_the_reason(tmp_path: Path) -> None:
    """The residual risk, forced: Bob revokes between the base legs' block and the quote legs' check."""

    async def scenario() -> None:
        odex = local_odex(tmp_path)
        eth, avax, sell_auth, buy_auth = await two_receipts(odex)

        class Raced(Settler):
            async def _submit(self, legs, *, fresh=True, retry=True):  # type: ignore[no-untyped-def]
                result = await super()._submit(legs, fresh=fresh, retry=retry)
                if legs and all(g.leg is Leg.BASE for g in legs):
                    await avax.wallet.revoke(BOB, buy_auth)
                return result

        plain = odex.settler(tmp_path / "journal.db")
        settler = Raced(plain.client, plain.domains, plain.secret, plain.journal, plain.engine)
        fill = fill_of(eth, avax, sell_auth, buy_auth)
        (report,) = await settler.settle([fill])
        assert report.status is FillStatus.HALF
        assert report.reason is not None and "quote leg: AuthorizationRevoked" in report.reason
        assert report.base is not None and report.base.final
        assert report.quote is not None and not report.quote.final
        assert odex.balance(eth, BOB) == BASE and odex.balance(avax, ALICE) == 0
        # Recorded: asking again does not retry the quote leg nor move the base twice.
        (again,) = await settler.settle([fill])
        assert again.replayed and again.status is FillStatus.HALF
        assert odex.balance(eth, BOB) == BASE
        for receipt in (eth, avax):
            odex.check_conservation(receipt)

    run(scenario())
