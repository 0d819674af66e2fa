"""The order book's group (offchain/odex/group.py): every member replays a batch and signs it, a batch is
final only with every signature, and a member that signs a wrong match — or refuses a right one — is
found by the archive group's re-execution and slashed on chain through DleRegistry.reportFault.

The group runs on the DLE's in-process network with real keys and real signatures; the slashing runs on
ape's embedded chain with the real DleRegistry and Staking."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from coincurve import PrivateKey
from conftest import group_of, group_signatures, stake

from dle_vm.hashing import keccak
from dle_vm.signature import address_of, recover, sign
from offchain.chain.deployer import CONET, Role
from offchain.chain.dle import FaultKind
from offchain.dle.digests import Domains
from offchain.dle.transport import InProcessNetwork, RemoteError
from offchain.odex.book import OrderBook
from offchain.odex.group import (
    BOOK_ROLES_VERSION,
    ENDORSE,
    Batch,
    BatchRefused,
    BatchStore,
    BookCreator,
    BookMember,
    FinalBatch,
    Input,
    InputKind,
    WrongBatch,
    _encode_endorse,
    book_chain_id,
    certify,
    evidence_hash,
    judge,
)
from offchain.odex.order import PRICE_SCALE, Cancel, Order, OrderDomain, Side, market_id

MAINCHAIN_ID = 1337
VAULT = keccak(b"odex group test vault")[12:]
REGISTRY = keccak(b"odex group test registry")[12:]
BASE, QUOTE = keccak(b"ETH-like")[12:], bytes(20)
MARKET = market_id(BASE, QUOTE)
DOMAIN = OrderDomain(MAINCHAIN_ID, VAULT)
T0 = 1_700_000_000
E = PRICE_SCALE
WITNESS_STAKE = 1_500 * CONET


def key(name: str) -> tuple[bytes, bytes]:
    secret = keccak(b"odex group key " + name.encode())
    return secret, address_of(PrivateKey(secret).public_key)


ALICE, BOB = key("alice"), key("bob")


def order(trader: tuple[bytes, bytes], side: Side, price: int, amount: int, nonce: int) -> Input:
    secret, address = trader
    made = Order(MARKET, address, side, price, amount, keccak(address + bytes([side])), nonce, nonce, T0 + 3600)
    return Input(InputKind.ORDER, T0 + nonce, made.sign(secret, DOMAIN).encode())


class SignsAnything(BookMember):
    """A member that signs whatever it is asked to, without replaying it."""

    def endorse(self, batch: Batch) -> bytes:
        return sign(self.secret, self.digest(batch))


class CheatingCreator(BookCreator):
    """A creator that signs its own batches without replaying them: it can propose a wrong match."""

    def endorse(self, batch: Batch) -> bytes:
        return sign(self.secret, self.digest(batch))


class RefusesEverything(BookMember):
    def endorse(self, batch: Batch) -> bytes:
        raise WrongBatch("I refuse")


@dataclass
class Group:
    network: InProcessNetwork
    creator: BookCreator
    members: list[BookMember]
    domains: Domains
    chain: bytes

    @property
    def order(self) -> list[bytes]:
        return [self.creator.address, *(m.address for m in self.members)]

    def seal(self, batch: Batch) -> FinalBatch:
        return asyncio.run(self.creator.seal(batch, self.order))


def make_group(
    secrets: list[bytes],
    *,
    member_classes: dict[int, type[BookMember]] | None = None,
    registry: bytes = REGISTRY,
    mainchain_id: int = MAINCHAIN_ID,
    creator_class: type[BookCreator] = BookCreator,
) -> Group:
    """A creator (secrets[0]) and members (the rest), each with its own replica, on one network."""
    domains = Domains(mainchain_id, registry, keccak(b"cash")[12:], VAULT)
    chain = book_chain_id(domains, VAULT, MARKET)
    network = InProcessNetwork()
    addresses = [address_of(PrivateKey(s).public_key) for s in secrets]
    group = tuple(addresses)
    creator = creator_class(
        secrets[0],
        addresses[0],
        MARKET,
        DOMAIN,
        domains,
        chain,
        members=group,
        transport=network.transport(addresses[0]),
    )
    members = []
    for index, (secret, address) in enumerate(zip(secrets[1:], addresses[1:], strict=True), start=1):
        cls = (member_classes or {}).get(index, BookMember)
        member = cls(secret, address, MARKET, DOMAIN, domains, chain, members=group)
        network.register(address, member.handle)
        members.append(member)
    return Group(network, creator, members, domains, chain)


def secrets_of(count: int) -> list[bytes]:
    return [keccak(b"odex group member %d" % i) for i in range(count)]


def crossing_inputs() -> list[Input]:
    """Alice sells 1 ETH-like at 63.799, then 2 more at 64; Bob buys 1.5 at 64: two fills."""
    return [
        order(ALICE, Side.SELL, 63_799 * E // 1000, 10**18, 1),
        order(ALICE, Side.SELL, 64 * E, 2 * 10**18, 2),
        order(BOB, Side.BUY, 64 * E, 15 * 10**17, 3),
    ]


def test_a_batch_is_final_with_every_signature_and_every_replica_agrees() -> None:
    group = make_group(secrets_of(4))
    for entry in crossing_inputs():
        group.creator.admit(entry)
    batch, refused = group.creator.propose()
    assert refused == []
    final = group.seal(batch)

    alone = OrderBook(MARKET, DOMAIN)
    expected = [f for entry in crossing_inputs() for f in alone.submit(_decode(entry), entry.time)]
    assert list(final.batch.fills) == expected and len(expected) == 2
    assert [(f.price, f.base) for f in expected] == [(63_799 * E // 1000, 10**18), (64 * E, 5 * 10**17)]
    assert len(final.signatures) == 4
    digests = {m.book.state_digest() for m in [group.creator, *group.members]}
    assert digests == {alone.state_digest()} and {m.height for m in group.members} == {1}
    assert all(m.final == [final] for m in group.members)
    # The final batch survives its wire encoding, and its signatures are the members' block digests.
    assert FinalBatch.decode(final.encode()) == final


def test_an_input_the_book_refuses_is_left_out_with_its_reason() -> None:
    group = make_group(secrets_of(3))
    first = order(ALICE, Side.SELL, 64 * E, 10**18, 1)
    group.creator.admit(first)
    group.creator.admit(first)  # a replay of the same signed order
    batch, refused = group.creator.propose()
    assert batch.inputs == (first,)
    assert [(entry, reason.split(":")[0]) for entry, reason in refused] == [(first, reason_prefix(first))]
    assert "already used nonce 1" in refused[0][1]
    group.seal(batch)


def test_a_wrong_match_is_refused_by_honest_members_and_its_signers_are_slashable() -> None:
    group = make_group(secrets_of(4), member_classes={1: SignsAnything}, creator_class=CheatingCreator)
    for entry in crossing_inputs():
        group.creator.admit(entry)
    honest, _ = group.creator.propose()
    # The creator rewrites the first fill in Bob's favour: 1 ETH for 1 AVAX.
    cheat = replace(honest.fills[0], price=E, quote=1)
    wrong = replace(honest, fills=(cheat, *honest.fills[1:]))
    with pytest.raises(BatchRefused) as caught:
        group.seal(wrong)
    refusal = caught.value
    honest_members = {m.address for m in group.members[1:]}
    assert set(refusal.refusals) == honest_members
    assert set(refusal.signatures) == {group.creator.address, group.members[0].address}

    verdict = judge([], MARKET, DOMAIN, wrong, refusal.signatures, group.order, group.creator.digest(wrong))
    assert not verdict.valid and "differ" in verdict.reason
    assert verdict.offenders == (
        (group.creator.address, FaultKind.SIGNED_INVALID_BLOCK),
        (group.members[0].address, FaultKind.SIGNED_INVALID_BLOCK),
    )
    # Nothing became final anywhere, and the honest batch still goes through afterwards.
    assert all(m.height == 0 for m in group.members)
    final = group.seal(honest)
    assert final.batch == honest and all(m.height == 1 for m in group.members)


def test_a_member_refusing_a_valid_batch_is_the_offender() -> None:
    group = make_group(secrets_of(4), member_classes={2: RefusesEverything})
    for entry in crossing_inputs():
        group.creator.admit(entry)
    batch, _ = group.creator.propose()
    with pytest.raises(BatchRefused) as caught:
        group.seal(batch)
    refuser = group.members[1].address
    assert set(caught.value.refusals) == {refuser}
    verdict = judge([], MARKET, DOMAIN, batch, caught.value.signatures, group.order, group.creator.digest(batch))
    assert verdict.valid and verdict.offenders == ((refuser, FaultKind.REFUSED_VALID_BLOCK),)


def test_batches_chain_and_members_refuse_gaps_replays_and_forged_finals() -> None:
    group = make_group(secrets_of(3))
    group.creator.admit(order(ALICE, Side.SELL, 64 * E, 10**18, 1))
    first = group.seal(group.creator.propose()[0])
    member = group.members[0]
    # The same batch again is not the next one.
    with pytest.raises(WrongBatch, match="the book is at 1"):
        member.endorse(first.batch)
    group.creator.admit(order(BOB, Side.BUY, 64 * E, 10**18, 2))
    group.creator.admit(Input(InputKind.CANCEL, T0 + 9, _cancel(ALICE, first.batch.inputs[0])))
    second, refused = group.creator.propose()
    # Bob's buy took Alice's whole order, so her cancel finds nothing resting and is left out.
    assert len(refused) == 1 and refused[0][0].kind is InputKind.CANCEL and "not resting" in refused[0][1]
    assert second.parent == first.batch.hash and second.height == 2 and len(second.fills) == 1
    # A final batch whose signatures are not the group's is refused and changes nothing.
    forged = FinalBatch(second, tuple(sign(keccak(b"mallory"), member.digest(second)) for _ in group.order))
    with pytest.raises(WrongBatch, match="not its own"):
        member.accept(forged)
    assert member.height == 1
    group.seal(second)
    assert member.height == 2 and member.book.state_digest() == group.creator.book.state_digest()


def test_malformed_batches_are_refused_by_name() -> None:
    with pytest.raises(WrongBatch, match="malformed batch"):
        Batch.decode(b"\xc0")
    with pytest.raises(WrongBatch, match="malformed"):
        FinalBatch.decode(b"\x01\x02")
    group = make_group(secrets_of(2))
    with pytest.raises(WrongBatch, match="market"):
        group.members[0].endorse(Batch(keccak(b"other"), 1, bytes(32), (), (), bytes(32)))


def reason_prefix(entry: Input) -> str:
    return f"order 0x{_decode(entry).order.hash(DOMAIN).hex()}"


def _decode(entry: Input) -> Any:
    from offchain.odex.order import SignedOrder

    return SignedOrder.decode(entry.payload)


def _cancel(trader: tuple[bytes, bytes], placed: Input) -> bytes:
    target = _decode(placed).order.hash(DOMAIN)
    return Cancel(target, T0 + 3600).sign(trader[0], DOMAIN).encode()


# ---------------------------------------------------------------- slashed on chain


def _secret(account: Any) -> bytes:
    value = account.private_key
    return bytes.fromhex(value.removeprefix("0x")) if isinstance(value, str) else bytes(value)


def test_the_member_that_signed_a_wrong_match_loses_its_stake_on_chain(
    chain: Any,
    accounts: Any,
    admin: Any,
    treasury: Any,
    token: Any,
    staking: Any,
    registry: Any,
    dle: Any,
    archive_nodes: list[Any],
    funded: list[Any],
    carol: Any,
) -> None:
    """The book chain is registered like any DLE chain; the archive group re-runs the refused batch,
    certifies a FaultReport for the member that signed it, and DleRegistry slashes exactly that stake."""
    for group_id in (0, 1):
        dle.refreshGroup(group_id, sender=admin)
    genesis = keccak(b"the book's genesis: market " + MARKET)
    vault = "0x" + VAULT.hex()
    asset_id = int.from_bytes(MARKET, "big")
    book_group = dle.groupFor(asset_id)  # the market id modulo the group count, like any asset id
    archive = group_of(registry, archive_nodes, book_group)
    dle.registerChain(
        vault,
        asset_id,
        genesis,
        book_group,
        1,
        group_signatures(archive, bytes(dle.genesisDigest(vault, asset_id, genesis, book_group))),
        sender=admin,
    )
    members = [accounts.generate_test_account() for _ in range(4)]
    for account in members:
        admin.transfer(account, "1 ether")
        token.transfer(account, WITNESS_STAKE, sender=treasury)
        stake(staking, token, account, Role.WITNESS, WITNESS_STAKE)

    group = make_group(
        [_secret(a) for a in members],
        member_classes={1: SignsAnything},
        creator_class=CheatingCreator,
        registry=bytes.fromhex(dle.address[2:]),
        mainchain_id=chain.chain_id,
    )
    assert group.chain == bytes(dle.chainIdOf(vault, asset_id))
    for entry in crossing_inputs():
        group.creator.admit(entry)
    honest, _ = group.creator.propose()
    wrong = replace(honest, fills=(replace(honest.fills[0], price=E, quote=1), *honest.fills[1:]))
    with pytest.raises(BatchRefused) as caught:
        group.seal(wrong)
    verdict = judge([], MARKET, DOMAIN, wrong, caught.value.signatures, group.order, group.creator.digest(wrong))
    accomplice = group.members[0].address
    assert (accomplice, FaultKind.SIGNED_INVALID_BLOCK) in verdict.offenders

    evidence = evidence_hash(wrong, caught.value.signatures)
    reporter = bytes.fromhex(carol.address[2:])
    # Each archive node judges and signs; the certificate is their signatures sorted by address.
    signatures = b"".join(
        certify(
            _secret(node),
            group.domains,
            group.chain,
            wrong,
            accomplice,
            int(Role.WITNESS),
            FaultKind.SIGNED_INVALID_BLOCK,
            evidence,
            reporter,
        )
        for node in sorted(archive, key=lambda a: int(a.address, 16))
    )
    offender = "0x" + accomplice.hex()
    report = (
        group.chain,
        wrong.height,
        BOOK_ROLES_VERSION,
        offender,
        int(Role.WITNESS),
        int(FaultKind.SIGNED_INVALID_BLOCK),
        wrong.hash,
        evidence,
        carol.address,
    )
    before = token.balanceOf(carol)
    # The accomplice's own signature of the wrong batch is what the registry slashes it on.
    dle.reportFault(report, caught.value.signatures[accomplice], 1, signatures, sender=admin)
    assert staking.stakeOf(offender, int(Role.WITNESS)) == 0
    assert token.balanceOf(carol) > before
    # The honest members keep their stakes.
    for member in group.members[1:]:
        assert staking.stakeOf("0x" + member.address.hex(), int(Role.WITNESS)) == WITNESS_STAKE


# ---------------------------------------------------------------- restarts


def test_a_restarted_member_rebuilds_its_book_from_its_store_and_catches_up(tmp_path: Path) -> None:
    """Members keep final batches in SQLite: one killed and started again has the book it had, and one
    that missed batches while it was away is sent them by the creator and signs again."""
    secrets = secrets_of(3)
    group = make_group(secrets)
    stores = {m.address: BatchStore(tmp_path / f"{m.address.hex()}.sqlite") for m in group.members}
    for member in group.members:
        member.store = stores[member.address]
    group.creator.admit(order(ALICE, Side.SELL, 64 * E, 2 * 10**18, 1))
    group.seal(group.creator.propose()[0])

    # Member 0 is killed; the group goes on without it being asked (it is out of the network).
    away = group.members[0]
    group.network.unregister(away.address)
    stores[away.address].close()
    group.creator.admit(order(BOB, Side.BUY, 64 * E, 10**18, 2))
    with pytest.raises(BatchRefused):
        group.seal(group.creator.propose()[0])

    # It comes back from its store: the book it had at height 1, not the refused batch.
    back = BookMember(
        away.secret, away.address, MARKET, DOMAIN, group.domains, group.chain, members=tuple(group.order),
        store=BatchStore(tmp_path / f"{away.address.hex()}.sqlite"),
    )  # fmt: skip
    assert back.height == 1 and back.book.state_digest() == group.creator.book.state_digest()
    group.network.register(back.address, back.handle)
    group.members[0] = back
    group.creator.admit(order(BOB, Side.BUY, 64 * E, 10**18, 3))
    second = group.seal(group.creator.propose()[0])
    assert second.batch.height == 2 and len(second.batch.fills) == 1
    assert back.height == 2 and back.book.state_digest() == group.creator.book.state_digest()

    # The other member missed nothing; take it down and bring it back behind by two batches.
    other = group.members[1]
    group.network.unregister(other.address)
    fresh = BookMember(
        other.secret, other.address, MARKET, DOMAIN, group.domains, group.chain, members=tuple(group.order)
    )
    group.network.register(fresh.address, fresh.handle)
    group.members[1] = fresh
    assert fresh.height == 0
    group.creator.admit(order(BOB, Side.BUY, 64 * E, 10**17, 4))
    third = group.seal(group.creator.propose()[0])
    assert third.batch.height == 3
    assert fresh.height == 3 and fresh.book.state_digest() == group.creator.book.state_digest()


def test_a_store_refuses_another_markets_book(tmp_path: Path) -> None:
    group = make_group(secrets_of(2))
    group.members[0].store = BatchStore(tmp_path / "m.sqlite")
    group.creator.admit(order(ALICE, Side.SELL, 64 * E, 10**18, 1))
    group.seal(group.creator.propose()[0])
    group.members[0].store.close()
    with pytest.raises(WrongBatch, match="holds the book of market"):
        BatchStore(tmp_path / "m.sqlite").load(keccak(b"another market"))


def test_the_book_says_when_a_sweep_would_drop_an_expired_order() -> None:
    book = OrderBook(MARKET, DOMAIN)
    entry = order(ALICE, Side.SELL, 64 * E, 10**18, 1)
    book.submit(_decode(entry), entry.time)
    expiry = _decode(entry).order.expiry
    assert not book.expired(expiry) and book.expired(expiry + 1)
    assert book.expire(expiry + 1) == [_decode(entry).order.hash(DOMAIN)] and not book.expired(expiry + 1)


def test_a_member_signs_only_batches_its_own_groups_creator_proposed() -> None:
    group = make_group(secrets_of(3))
    member, other = group.members
    for entry in crossing_inputs():
        group.creator.admit(entry)
    batch, _ = group.creator.propose()
    digest = member.digest(batch)
    request = member.request_digest(batch)
    assert request != digest  # a proposal that never becomes final is no equivocation evidence
    before = member.book.state_digest()
    mallory = keccak(b"odex group stranger")

    def ask(node: BookMember, members: list[bytes], signer: bytes) -> bytes:
        return asyncio.run(node.handle(ENDORSE, _encode_endorse(members, batch, sign(signer, request))))

    # A stranger, and a member that is not the creator, propose the creator's very batch: never signed.
    for signer in (mallory, other.secret):
        with pytest.raises(RemoteError, match="not-creator"):
            ask(member, group.order, signer)
    # Another group (the stranger as creator), or a member configured with no group at all.
    stranger_group = [address_of(PrivateKey(mallory).public_key), *group.order[1:]]
    with pytest.raises(RemoteError, match="wrong-group"):
        ask(member, stranger_group, mallory)
    lone = BookMember(member.secret, member.address, MARKET, DOMAIN, group.domains, group.chain)
    with pytest.raises(RemoteError, match="no-group"):
        ask(lone, group.order, group.creator.secret)
    assert member.height == 0 and member.book.state_digest() == before
    # The creator's own request is signed, and the batch becomes final only with every signature.
    signature = ask(member, group.order, group.creator.secret)
    assert recover(digest, signature) == member.address
    final = group.seal(batch)
    assert member.height == other.height == 1 and final.batch == batch
