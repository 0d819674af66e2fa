"""PriceOracle: set prices, feeds shaped like AggregatorV3, maximum ages and StalePrice."""

from __future__ import annotations

from typing import Any

import ape
import pytest

DAY = 24 * 3600

ASSET = "0x00000000000000000000000000000000000000A1"
USD = 10**8


@pytest.fixture(scope="module")
def feed(project: Any, admin: Any) -> Any:
    return admin.deploy(project.TestAggregator, 18)


@pytest.fixture(scope="module", autouse=True)
def _deployed(oracle: Any, feed: Any) -> None:
    """Set up the module's fixtures before ape's per-test snapshots start (else ape warns and rebases)."""


def test_a_set_price_is_returned_with_its_time(oracle: Any, admin: Any, chain: Any) -> None:
    receipt = oracle.setPrice(ASSET, 5 * USD, sender=admin)
    price, updated = oracle.price(ASSET)
    assert price == 5 * USD
    assert updated == receipt.timestamp
    event = receipt.events[-1]
    assert (event.event_name, event.asset, event.price, event.roundId) == ("PriceUpdated", ASSET, 5 * USD, 1)
    oracle.setPrice(ASSET, 6 * USD, sender=admin)
    round_id, answer, started, updated_at, answered = oracle.latestRoundData(ASSET)
    assert (round_id, answer, answered) == (2, 6 * USD, 2)
    assert started == updated_at
    assert oracle.decimals() == 8 == oracle.DECIMALS()


def test_a_missing_price_is_refused(oracle: Any) -> None:
    with ape.reverts(oracle.PriceNotSet, asset=ASSET):
        oracle.price(ASSET)
    assert oracle.latestRoundData(ASSET)[0] == 0


def test_zero_price_is_refused(oracle: Any, admin: Any) -> None:
    with ape.reverts(oracle.InvalidPrice, asset=ASSET, answer=0):
        oracle.setPrice(ASSET, 0, sender=admin)


def test_a_price_older_than_the_maximum_age_is_stale(oracle: Any, admin: Any, chain: Any) -> None:
    receipt = oracle.setPrice(ASSET, USD, sender=admin)
    assert oracle.maxAgeOf(ASSET) == DAY
    chain.mine(1, timestamp=receipt.timestamp + DAY)
    assert oracle.price(ASSET)[0] == USD  # exactly the maximum age is still fresh
    chain.mine(1, timestamp=receipt.timestamp + DAY + 1)
    with ape.reverts(oracle.StalePrice, asset=ASSET, updatedAt=receipt.timestamp, maxAge=DAY):
        oracle.price(ASSET)


def test_an_asset_can_have_its_own_maximum_age(oracle: Any, admin: Any, chain: Any) -> None:
    receipt = oracle.setPrice(ASSET, USD, sender=admin)
    event = oracle.setMaxAge(ASSET, 60, sender=admin).events[-1]
    assert (event.event_name, event.maxAge) == ("MaxAgeSet", 60)
    chain.mine(1, timestamp=receipt.timestamp + 61)
    with ape.reverts(oracle.StalePrice):
        oracle.price(ASSET)
    oracle.setMaxAge(ASSET, 0, sender=admin)  # back to the default
    assert oracle.maxAgeOf(ASSET) == DAY
    assert oracle.price(ASSET)[0] == USD


def test_the_default_maximum_age_can_change_but_not_to_zero(oracle: Any, admin: Any) -> None:
    with ape.reverts(oracle.InvalidMaxAge):
        oracle.setDefaultMaxAge(0, sender=admin)
    oracle.setDefaultMaxAge(120, sender=admin)
    assert oracle.maxAgeOf(ASSET) == 120


def test_constructor_refuses_a_zero_maximum_age(project: Any, admin: Any) -> None:
    with ape.reverts(project.PriceOracle.InvalidMaxAge):
        admin.deploy(project.PriceOracle, admin, 0)


def test_a_feed_replaces_set_prices_scaled_to_8_decimals(oracle: Any, feed: Any, admin: Any, chain: Any) -> None:
    oracle.setPrice(ASSET, USD, sender=admin)
    now = chain.pending_timestamp
    feed.publish(2 * 10**18 + 5, now, sender=admin)  # $2.000000000000000005 with 18 decimals
    event = oracle.setFeed(ASSET, feed, sender=admin).events[-1]
    assert (event.event_name, event.feed) == ("FeedSet", feed.address)
    assert oracle.feedOf(ASSET) == feed.address
    assert oracle.price(ASSET)[0] == 2 * USD
    feed.publish(-(10**18), now, sender=admin)
    with ape.reverts(oracle.InvalidPrice, asset=ASSET, answer=-USD):
        oracle.price(ASSET)
    feed.publish(1, now, sender=admin)  # positive at 18 decimals, but 0 at 8: refused, not priced free
    with ape.reverts(oracle.InvalidPrice, asset=ASSET, answer=0):
        oracle.price(ASSET)
    oracle.setFeed(ASSET, "0x0000000000000000000000000000000000000000", sender=admin)
    assert oracle.price(ASSET)[0] == USD


def test_a_feed_with_fewer_decimals_is_scaled_up(project: Any, oracle: Any, admin: Any, chain: Any) -> None:
    feed6 = admin.deploy(project.TestAggregator, 6)
    feed6.publish(1_234_567, chain.pending_timestamp, sender=admin)
    oracle.setFeed(ASSET, feed6, sender=admin)
    assert oracle.price(ASSET)[0] == 123_456_700


def test_a_stale_feed_is_refused(oracle: Any, feed: Any, admin: Any, chain: Any) -> None:
    old = chain.pending_timestamp - DAY - 10
    feed.publish(10**18, old, sender=admin)
    oracle.setFeed(ASSET, feed, sender=admin)
    with ape.reverts(oracle.StalePrice, asset=ASSET, updatedAt=old):
        oracle.price(ASSET)


def test_only_the_price_setter_sets_prices(oracle: Any, alice: Any) -> None:
    with ape.reverts(oracle.AccessControlUnauthorizedAccount):
        oracle.setPrice(ASSET, USD, sender=alice)


@pytest.mark.parametrize(
    "call",
    [
        lambda o, a: o.setFeed(ASSET, a, sender=a),
        lambda o, a: o.setMaxAge(ASSET, 1, sender=a),
        lambda o, a: o.setDefaultMaxAge(1, sender=a),
    ],
    ids=["setFeed", "setMaxAge", "setDefaultMaxAge"],
)
def test_only_the_admin_configures(oracle: Any, alice: Any, call: Any) -> None:
    with ape.reverts(oracle.AccessControlUnauthorizedAccount):
        call(oracle, alice)
