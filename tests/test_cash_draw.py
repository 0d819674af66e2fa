"""The CBDC draw certificate's digest, off chain and on chain: `Digests.cbdc_draw` (what every archive
node of the group signs in `ArchiveNode._endorse_cbdc_draw`) equals `CoNETCash.cbdcDrawDigest`, and a
certificate names one CBDC, one order, one draw and one group."""

from __future__ import annotations

from typing import Any

from offchain.chain.dle import Digests

SELECTION = b"\x5e" * 32


def test_the_cbdc_draw_digest_matches_the_contract(chain: Any, cash: Any, dle: Any, alice: Any, bob: Any) -> None:
    digests = Digests(chain.chain_id, dle.address, cash.address)
    digest = digests.cbdc_draw(7, alice.address, SELECTION, 1)
    assert bytes(cash.cbdcDrawDigest((7, alice.address, SELECTION, 1))) == digest
    others = {
        digests.cbdc_draw(8, alice.address, SELECTION, 1),
        digests.cbdc_draw(7, bob.address, SELECTION, 1),
        digests.cbdc_draw(7, alice.address, b"\x5f" * 32, 1),
        digests.cbdc_draw(7, alice.address, SELECTION, 0),
        Digests(chain.chain_id + 1, dle.address, cash.address).cbdc_draw(7, alice.address, SELECTION, 1),
    }
    assert digest not in others and len(others) == 5
