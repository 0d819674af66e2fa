"""Exits in order along one history, on the DLE side (issue 12, deliverable 7's mainchain half).

The note program gives every exit the chain's next certificate nonce and the head of the exits
before it (`exitedBefore`), exactly the rule CertifiedExits checks, so the archive group certifies
what the mainchain will pay. Since the mainchain pays a chain's exits in order, the holder of a later
exit may have to pay an earlier one first: any participant of the chain gets it, certified by the
whole group, with the `exit_certificate` request; an outsider gets 403 and nothing. In process (the
DLE of tests/test_dle_consensus.py, real signatures, SQLite stores); the same certificates are paid
on the real contracts in tests/test_cash_attacks.py and tests/test_odex_vault.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from itertools import pairwise
from pathlib import Path

import pytest
from test_dle_consensus import ALICE, BUYER, DOMAINS, key, open_note

from offchain.chain.dle import exit_history_head
from offchain.dle.client import DleError
from offchain.dle.digests import mainchain_certificate
from offchain.dle.local import OUTSIDER, address_of_secret
from offchain.dle.messages import ExitRequest
from offchain.dle.note import ExitCertificate, NoteReader
from offchain.dle.transport import RemoteError

RECEIVER = bytes.fromhex("ee" * 20)


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 120))  # type: ignore[arg-type]


def test_exits_carry_the_history_the_mainchain_checks_and_any_participant_gets_earlier_ones(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        note = await open_note(tmp_path)
        await note.pay(BUYER, ALICE, 1_000)
        expiry = int(time.time()) + 3600
        certificates: list[ExitCertificate] = []
        for secret, amount in ((ALICE, 400), (BUYER, 500), (ALICE, 100)):
            holder = address_of_secret(secret)
            nonce = note.nonces.get(holder, 0)
            note.nonces[holder] = nonce + 1
            tx = note.signer.exit(secret, holder, RECEIVER, amount, nonce, expiry)
            outcome = await note.client.submit(note.chain, [tx])
            (certificate,) = [c for r in outcome.receipts for c in ExitCertificate.from_logs(r.logs)]
            certificates.append(certificate)
        # Nonces 0, 1, 2; the first names the empty history, each later one the head after the one
        # before: bytes27 of its EIP-712 struct hash, as CertifiedExits keeps it.
        assert [c.nonce for c in certificates] == [0, 1, 2]
        assert certificates[0].exited_before == bytes(32)
        for before, after in pairwise(certificates):
            head = exit_history_head(mainchain_certificate(before).struct_hash)
            assert after.exited_before == head == mainchain_certificate(before).exited_after
        archive = next(iter(note.dle.archives.values()))
        state = archive.store.head(note.chain).state
        reader = NoteReader(note.dle.engine)
        assert reader.view(state, note.chain, "exitHistory") == (3, mainchain_certificate(certificates[2]).exited_after)
        assert [reader.exit_of(state, note.chain, n) for n in range(3)] == certificates

        # Buyer holds exit 1; exit 0 is Alice's. Buyer asks the group for exit 0, certified: every
        # archive node's signature over the very certificate the program emitted.
        group = note.dle.group_of(0)
        for asker in (BUYER, ALICE):
            client = note.dle.client(address_of_secret(asker))
            certificate, signatures, epoch = await client.exit_certificate(note.chain, 0, 0)
            assert certificate == certificates[0]
            assert epoch == group.epoch
            group.verify(DOMAINS.exit(certificate.encode()), signatures)  # raises unless all of them
        # A member of the chain and an archive peer may ask too (they read the chain already).
        creator = archive.roles(note.chain).roles.creator
        assert (await note.dle.client(creator).exit_certificate(note.chain, 2, 0))[0] == certificates[2]

        # An outsider gets 403 and no signature; an exit that does not exist yet is unknown.
        outsider = note.dle.network.transport(OUTSIDER)
        for node in group.members:
            with pytest.raises(RemoteError) as caught:
                await outsider.call(node, "exit_certificate", ExitRequest(note.chain, 0).encode(), timeout=5)
            assert caught.value.code == "forbidden"
        with pytest.raises(DleError, match="forbidden"):
            await note.dle.client(address_of_secret(key("mallory"))).exit_certificate(note.chain, 0, 0)
        with pytest.raises(DleError, match="unknown-exit"):
            await note.dle.client(address_of_secret(BUYER)).exit_certificate(note.chain, 3, 0)
        assert reader.supply(state, note.chain) == (note.terms.value, 1_000)

    run(scenario())
