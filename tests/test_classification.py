from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from churnseg.models.classification import (
    LifecycleRules,
    Override,
    apply_overrides,
    assign_tiers,
    lifecycle_stages,
    tier_thresholds,
)


def test_tiers_by_cumulative_value_share() -> None:
    values = pd.Series([50.0, 30.0, 10.0, 5.0, 3.0, 2.0, 0.0, -4.0])
    thresholds = tier_thresholds(values, (0.80, 0.95))
    tiers = assign_tiers(values, thresholds).tolist()
    # Shares held by customers above each one: 0, .5, .8, .9, .95, .98 -> A while < .8, B < .95.
    assert tiers == ["A", "A", "B", "B", "C", "C", "C", "C"]


def test_tied_values_share_a_tier() -> None:
    values = pd.Series([10.0, 10.0, 10.0, 10.0])
    assert set(assign_tiers(values, tier_thresholds(values, (0.5, 0.9)))) == {"A"}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=0.01, max_value=1e6), min_size=1, max_size=60))
def test_tier_a_holds_at_least_its_share_and_order_is_kept(values: list[float]) -> None:
    series = pd.Series(values)
    tiers = assign_tiers(series, tier_thresholds(series, (0.8, 0.95)))
    share_a = series[tiers == "A"].sum() / series.sum()
    assert share_a >= 0.8 - 1e-9, "tier A covers the top 80% of value"
    rank = {"A": 0, "B": 1, "C": 2}
    ordered = tiers.map(rank)[series.sort_values(ascending=False, kind="stable").index]
    assert ordered.is_monotonic_increasing, "a more valuable customer never gets a lower tier"


def test_lifecycle_rules_by_hand() -> None:
    frame = pd.DataFrame(
        {
            "recency_days": [200.0, 5.0, 10.0, 10.0, 10.0, 10.0, 150.0],
            "tenure_days": [400.0, 30.0, 400.0, 400.0, 400.0, 400.0, 400.0],
            "orders_90d": [0, 1, 5, 2, 4, 3, 0],
            "orders_180d": [0, 1, 8, 8, 8, 3, 0],
        }
    )
    stages = lifecycle_stages(frame, LifecycleRules(churned_after_days=180)).tolist()
    # previous windows: -, -, 3, 6, 4, 0, 0 -> ratios 5/3, 2/6, 1.0, inf, 0/0
    assert stages == ["churned", "new", "growing", "declining", "stable", "growing", "declining"]


def test_lifecycle_needs_its_windows() -> None:
    frame = pd.DataFrame({"recency_days": [1.0], "tenure_days": [1.0], "orders_30d": [1]})
    with pytest.raises(KeyError, match="activity counts over 90 and 180 days"):
        lifecycle_stages(frame, LifecycleRules())


def test_overrides_beat_the_model_and_count_changes() -> None:
    classes = pd.DataFrame({"value_tier": ["C", "A", "B"], "lifecycle_stage": ["new"] * 3})
    attributes = pd.DataFrame({"is_key_account": [True, True, np.nan], "region": ["n", "s", "n"]})
    rules = [
        Override("is_key_account", "eq", True, {"value_tier": "A"}),
        Override("region", "in", ["s"], {"lifecycle_stage": "stable"}),
        Override("not_a_column", "eq", 1, {"value_tier": "C"}),
    ]
    out, changed = apply_overrides(classes, attributes, rules)
    assert out.value_tier.tolist() == ["A", "A", "B"]
    assert out.lifecycle_stage.tolist() == ["new", "stable", "new"]
    assert changed == {0: 1, 1: 1, 2: 0}


def test_risk_bands_by_capacity() -> None:
    from churnseg.models.classification import RiskBandRule, assign_risk_bands, risk_thresholds

    scores = pd.Series(np.linspace(0.0, 0.99, 100))
    thresholds = risk_thresholds(scores, RiskBandRule(high_share=0.1, medium_share=0.2))
    bands = assign_risk_bands(scores, thresholds)
    assert (bands == "high").sum() == 10 and (bands == "medium").sum() == 20
    assert bands[scores.idxmax()] == "high" and bands[scores.idxmin()] == "low"


def test_risk_bands_by_cost() -> None:
    from churnseg.models.classification import RiskBandRule, assign_risk_bands, risk_thresholds

    value_at_risk = pd.Series([100.0, 30.0, 10.0, 1.0])
    rule = RiskBandRule(mode="cost", contact_cost=5.0, save_rate=0.2)
    # a contact saves 20% of value at risk: pays off from 25 (high), half of it from 12.5
    bands = assign_risk_bands(value_at_risk, risk_thresholds(value_at_risk, rule)).tolist()
    assert bands == ["high", "high", "low", "low"]
