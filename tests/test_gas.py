"""Gas of each main call on anvil against bench/gas-snapshot.json: more than 5% above it fails."""

from __future__ import annotations

import pytest

from bench.gas import SNAPSHOT, TOLERANCE, compare, load_snapshot, measure_gas
from offchain.devnet.anvil import running_anvil


@pytest.mark.anvil
def test_no_call_costs_more_than_the_snapshot_allows() -> None:
    with running_anvil() as node:
        measured = measure_gas(node.uri)
    assert compare(measured, load_snapshot(SNAPSHOT)) == []


def test_compare_flags_regressions_beyond_the_tolerance_and_missing_calls() -> None:
    assert TOLERANCE == 0.05
    snapshot = {"A.over": 100_000, "A.under": 100_000, "A.same": 100_000, "A.gone": 1}
    measured = {"A.over": 106_000, "A.under": 104_000, "A.same": 100_000, "A.new": 5}
    problems = compare(measured, snapshot)
    assert len(problems) == 3
    assert problems[0].startswith("A.new:") and "missing from the snapshot" in problems[0]
    assert problems[1].startswith("A.over:") and "+6.0%" in problems[1]
    assert problems[2].startswith("A.gone:") and "not measured" in problems[2]


def test_exactly_the_tolerance_passes() -> None:
    assert compare({"A.edge": 105_000}, {"A.edge": 100_000}) == []
    assert compare({"A.edge": 105_001}, {"A.edge": 100_000}) != []
