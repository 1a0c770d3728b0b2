"""Normalisation onto Netskope's scale at its edges: fixed bounds, inverted scales, population min-max,
labels, out-of-range values skipped and counted; bands at their borders."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ce_daemon.plugin import RiskRecord, RiskScale
from ce_daemon.risk.normalise import band, normalise_poll, normalise_value

ZTA = RiskScale(low=0, high=100)  # CrowdStrike ZTA 1-100, higher = better: x * 10
KNOWBE4 = RiskScale(low=0, high=100, higher_is_safer=False)  # 1000 - 10 x
BITSIGHT = RiskScale(low=250, high=900)
PROOFPOINT = RiskScale(population=True, higher_is_safer=False)
OKTA = RiskScale(labels={"LOW": 875, "MEDIUM": 625, "HIGH": 375})


@pytest.mark.parametrize(
    ("scale", "raw", "expected"),
    [
        (ZTA, 0, 0.0), (ZTA, 100, 1000.0), (ZTA, 55, 550.0),
        (KNOWBE4, 0, 1000.0), (KNOWBE4, 100, 0.0), (KNOWBE4, 12.5, 875.0),
        (BITSIGHT, 250, 0.0), (BITSIGHT, 900, 1000.0), (BITSIGHT, 575, 500.0),
    ],
)  # fmt: skip
def test_fixed_bounds_map_linearly_and_invert(scale: RiskScale, raw: float, expected: float) -> None:
    assert normalise_value(scale, raw) == pytest.approx(expected)


@pytest.mark.parametrize("raw", [-0.001, 100.001, math.nan, math.inf, -math.inf, "50", True, None])
def test_out_of_range_and_non_numbers_are_skipped(raw: object) -> None:
    assert isinstance(normalise_value(KNOWBE4, raw), str)


def test_population_min_max_is_inverted_with_ces_plus_one_and_a_clamped_denominator() -> None:
    records = [RiskRecord("user", f"u{n}@x.com", score=v) for n, v in enumerate((10, 20, 30))]
    poll = normalise_poll(PROOFPOINT, records)
    assert [r.score for r in poll.records] == [1000.0, 500.5, 1.0]  # the most attacked is the riskiest
    same = normalise_poll(PROOFPOINT, [RiskRecord("user", f"u{n}@x.com", score=7) for n in range(3)])
    assert [r.score for r in same.records] == [1000.0] * 3  # max = min: denominator clamped, nobody at 0
    upright = normalise_poll(RiskScale(population=True), records)
    assert [r.score for r in upright.records] == [1.0, 500.5, 1000.0]


def test_labels_map_case_insensitively_and_unknown_labels_are_counted() -> None:
    records = [
        RiskRecord("user", "A@Example.com", label="low"),
        RiskRecord("user", "b@example.com", label="HIGH"),
        RiskRecord("user", "c@example.com", label="NONE"),
        RiskRecord("user", "d@example.com"),
        RiskRecord("router", "e", label="LOW"),
        RiskRecord("user", "  ", label="LOW"),
    ]
    poll = normalise_poll(OKTA, records)
    assert [(r.key, r.score) for r in poll.records] == [("a@example.com", 875.0), ("b@example.com", 375.0)]
    assert poll.skipped == {"unknown label": 1, "no score": 1, "unknown entity type": 1, "no key": 1}


def test_a_source_limited_to_its_entities_counts_the_others() -> None:
    poll = normalise_poll(
        ZTA, [RiskRecord("device", "h1", score=5), RiskRecord("user", "u@x", score=5)], ["device"]
    )
    assert [r.key for r in poll.records] == ["h1"] and poll.skipped == {"unknown entity type": 1}


@pytest.mark.parametrize(
    ("score", "named"),
    [(0, "critical"), (250, "critical"), (250.1, "high"), (500, "high"), (501, "medium"), (750, "medium"),
     (751, "low"), (1000, "low")],
)  # fmt: skip
def test_bands_at_their_borders(score: float, named: str) -> None:
    assert band(score) == named


scales = st.builds(
    RiskScale,
    low=st.floats(-1e6, 1e6),
    high=st.floats(-1e6, 1e6),
    higher_is_safer=st.booleans(),
    population=st.booleans(),
)
raws = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(10**12), 10**12), st.none())


@given(scales, st.lists(raws, max_size=20))
def test_every_result_is_on_the_scale_or_skipped(scale: RiskScale, values: list[object]) -> None:
    records = [RiskRecord("device", f"h{n}", score=v) for n, v in enumerate(values)]  # type: ignore[arg-type]
    poll = normalise_poll(scale, records)
    assert len(poll.records) + sum(poll.skipped.values()) == len(values)
    for record in poll.records:
        assert 0.0 <= record.score <= 1000.0
