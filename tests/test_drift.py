"""PSI, score drift, migration and calibration checks on hand-checkable data."""

from __future__ import annotations

import math
from datetime import date

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from churnseg.models import drift

THRESHOLDS = {"moderate": 0.1, "major": 0.25}


def test_identical_distributions_have_zero_psi() -> None:
    values = np.arange(100, dtype=float)
    assert drift.numeric_psi(values, values.copy()) == 0.0


def test_known_shift_matches_hand_computed_psi() -> None:
    # Reference: 50 zeros, 50 ones -> one interior edge at 0.5 (quantiles 0 ... 1, unique).
    # Bins (-inf, 0], (0, 1], (1, inf) and missing: reference shares 0.5, 0.5, 0, 0.
    reference = np.array([0.0] * 50 + [1.0] * 50)
    current = np.array([0.0] * 20 + [1.0] * 80)  # shares 0.2, 0.8, 0, 0
    expected = (0.2 - 0.5) * math.log(0.2 / 0.5) + (0.8 - 0.5) * math.log(0.8 / 0.5)
    assert expected == pytest.approx(0.416, abs=1e-3)
    assert drift.numeric_psi(reference, current) == pytest.approx(expected, rel=1e-12)


def test_bins_are_right_closed_on_reference_quantiles() -> None:
    edges = drift.quantile_edges(np.arange(1, 11, dtype=float), bins=2)  # median 5.5
    assert edges.tolist() == [5.5]
    shares = drift.numeric_shares(np.array([5.5, 6.0, np.nan, 1.0]), edges)
    assert shares.tolist() == [0.5, 0.25, 0.25], "5.5 is in the first bin; NaN has its own"


def test_empty_bin_gives_finite_psi_from_the_floor() -> None:
    # All current values above the reference's range: shares (0, 0, 1) against (0.5, 0.5, 0).
    value = drift.numeric_psi(np.array([0.0] * 50 + [1.0] * 50), np.full(10, 9.0))
    eps = drift.EPSILON
    expected = 2 * (eps - 0.5) * math.log(eps / 0.5) + (1 - eps) * math.log(1 / eps)
    assert value == pytest.approx(expected)


def test_categorical_psi_counts_unseen_and_missing_levels() -> None:
    ref = pd.Series(["a", "a", "b", "b"])
    cur = pd.Series(["a", "c", None, "b"])  # a 0.25, b 0.25, unseen 0.25, missing 0.25
    eps = drift.EPSILON
    expected = 2 * (0.25 - 0.5) * math.log(0.25 / 0.5) + 2 * (0.25 - eps) * math.log(0.25 / eps)
    assert drift.categorical_psi(ref, cur) == pytest.approx(expected)


def test_feature_psi_sorts_worst_first_and_grades_severity() -> None:
    rng = np.random.default_rng(0)
    ref = pd.DataFrame({"stable": rng.normal(size=2000), "moved": rng.normal(size=2000)})
    cur = pd.DataFrame({"stable": rng.normal(size=2000), "moved": rng.normal(2.0, 1, size=2000)})
    table = drift.feature_psi(ref, cur, ["stable", "moved"], THRESHOLDS)
    assert table.feature.tolist() == ["moved", "stable"]
    assert table.severity.tolist() == ["major", "none"], table
    with pytest.raises(KeyError, match=r"current snapshot .* 'gone'"):
        drift.feature_psi(ref.assign(gone=1.0), cur, ["gone"], THRESHOLDS)


@pytest.mark.parametrize(
    ("value", "expected"), [(0.0, "none"), (0.1, "moderate"), (0.2499, "moderate"), (0.3, "major")]
)
def test_severity_thresholds(value: float, expected: str) -> None:
    assert drift.severity(value, THRESHOLDS) == expected


# No subnormals: quantile interpolation between values near 5e-324 rounds differently once
# doubled, so scaling invariance holds only for normal floats (features never hold subnormals).
floats = st.lists(
    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, allow_subnormal=False),
    min_size=1,
    max_size=60,
)
shares = st.lists(st.floats(0.0, 1.0), min_size=2, max_size=8)


@settings(max_examples=60, deadline=None)
@given(floats, floats)
def test_psi_is_never_negative(reference: list[float], current: list[float]) -> None:
    assert drift.numeric_psi(np.array(reference), np.array(current)) >= 0.0


@settings(max_examples=60, deadline=None)
@given(floats)
def test_psi_of_a_sample_with_itself_is_zero(values: list[float]) -> None:
    a = np.array(values)
    assert drift.numeric_psi(a, a[::-1].copy()) == 0.0, "order does not matter"


@settings(max_examples=60, deadline=None)
@given(shares, st.data())
def test_psi_from_shares_is_symmetric(a: list[float], data: st.DataObject) -> None:
    b = data.draw(st.lists(st.floats(0.0, 1.0), min_size=len(a), max_size=len(a)))
    ra, rb = np.array(a) / (sum(a) or 1), np.array(b) / (sum(b) or 1)
    assert drift.psi_from_shares(ra, rb) == pytest.approx(drift.psi_from_shares(rb, ra))


@settings(max_examples=60, deadline=None)
@given(floats, floats)
def test_psi_is_invariant_to_scaling_both_sides(
    reference: list[float], current: list[float]
) -> None:
    ref, cur = np.array(reference), np.array(current)
    # Doubling is exact in floating point, so the quantile bins move with the data.
    assert drift.numeric_psi(2 * ref, 2 * cur) == pytest.approx(drift.numeric_psi(ref, cur))


def test_score_drift_reports_the_mean_shift() -> None:
    out = drift.score_drift(np.array([0.1, 0.2, 0.3]), np.array([0.3, 0.4, 0.5]))
    assert out["score_mean_shift"] == pytest.approx(0.2)
    assert out["score_psi"] > 0.25


def test_moved_share_ignores_new_and_gone_customers() -> None:
    migration = pd.DataFrame(
        {
            "segment_id_from": [0, 0, 1, -1, 1],
            "segment_id_to": [0, 1, 1, 0, -1],
            "customers": [6, 2, 2, 5, 5],
        }
    )
    assert drift.moved_share(migration) == pytest.approx(2 / 10)


def test_realised_vs_predicted_per_snapshot() -> None:
    d1, d2 = date(2025, 1, 1), date(2025, 4, 1)
    scored = pd.DataFrame(
        {
            "snapshot_date": [d1, d1, d1, d1, d2, d2, d2],
            "churn_probability": [0.5, 0.5, 0.5, 0.5, 0.1, 0.1, 0.1],
            "churned": [1, 0, 1, 0, 1, 1, None],
        }
    )
    table = drift.realised_vs_predicted(scored, tolerance=0.1)
    assert table.snapshot_date.tolist() == [d1, d2]
    assert table.customers.tolist() == [4, 2], "the unlabelled row is left out"
    assert table.gap.tolist() == pytest.approx([0.0, 0.9])
    assert table.flagged.tolist() == [False, True]
