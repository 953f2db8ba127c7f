"""Churn scores a person can read: calibration chosen on held-out time, full resolution, the
newest labels learnt from, and reasons in plain, correctly spelt words, one fact each."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit

from churnseg.models import calibration as cal
from churnseg.models import churn as churn_model
from churnseg.models import wording


def _held_out(seed: int, n: int, link: Any) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    d = rng.normal(0, 2, n)
    return d, (rng.random(n) < link(d)).astype(int)


def test_auto_picks_the_calibration_with_the_lowest_held_out_log_loss() -> None:
    # A ranking model twice too confident: a logistic rescaling fixes it, no calibration not.
    d, y = _held_out(0, 6000, lambda d: expit(0.5 * d))
    method, losses = cal.choose_calibration(d, y)
    assert method == "sigmoid" and losses["sigmoid"] < losses["none"], losses
    # Already calibrated: leaving it alone is as good as any fit (ties go to sigmoid first).
    d, y = _held_out(1, 6000, expit)
    assert (
        cal.choose_calibration(d, y)[1]["none"] <= cal.choose_calibration(d, y)[1]["sigmoid"] + 2e-3
    )
    # A step-shaped truth only isotonic regression can follow.
    d, y = _held_out(2, 6000, lambda d: np.where(d > 0.5, 0.8, 0.1))
    assert cal.choose_calibration(d, y)[0] == "isotonic"


@pytest.mark.parametrize("method", ["isotonic", "sigmoid", "none"])
def test_probabilities_keep_the_ranking_and_are_never_0_or_1(method: str) -> None:
    d, y = _held_out(3, 3000, lambda d: np.where(d > 1, 1.0, np.where(d < -1, 0.0, 0.5)))
    model = cal.CalibratedChurnModel(ranking=None, method=method).fit_decisions(d, y)
    grid = np.sort(np.random.default_rng(4).normal(0, 3, 5000))
    p = model.calibrate(grid)
    assert (p > 0).all() and (p < 1).all(), "no exact 0 or 1"
    assert (np.diff(p) > 0).all(), "strictly increasing: no tied blocks, bands follow the order"
    raw = cal._apply_map(model.calibrator_, grid)
    assert np.abs(p - raw).max() <= cal.TIE_BREAK, "the tie-break is negligible"


def _drifting(cutoffs: int, rows: int, flip_last: bool) -> pd.DataFrame:
    """Snapshots where feature ``a`` predicts churn, its effect reversed at the last cutoff."""
    rng = np.random.default_rng(7)
    frames = []
    for k in range(cutoffs):
        a = rng.normal(size=rows)
        sign = -1.0 if flip_last and k == cutoffs - 1 else 1.0
        frames.append(
            pd.DataFrame(
                {
                    "customer_id": [f"c{k}-{i}" for i in range(rows)],
                    churn_model.SNAPSHOT: pd.Timestamp("2024-01-01") + pd.DateOffset(months=3 * k),
                    "a": a,
                    churn_model.LABEL: (rng.random(rows) < expit(2 * sign * a)).astype(int),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def test_the_refit_learns_from_the_newest_labels() -> None:
    history = _drifting(4, 1500, flip_last=True)
    last = history[churn_model.SNAPSHOT] == history[churn_model.SNAPSHOT].max()
    train, latest = history[~last], history[last]
    spec = churn_model.FeatureSpec(["a"], [])
    params = churn_model.PARAM_GRIDS["logreg"][1]
    judged = churn_model.fit_calibrated(train, spec, "logreg", params, "auto")
    refit = churn_model.fit_calibrated(train, spec, "logreg", params, "auto", latest=latest)
    probe = pd.DataFrame({"a": [-2.0, 2.0]})
    assert np.diff(judged.predict_proba(probe)[:, 1])[0] > 0, "old data: a raises risk"
    coef = refit.ranking[-1].coef_[0][0]
    base = churn_model.ranking_model(judged)[-1].coef_[0][0]
    assert coef < base, "the refit moved towards the newest relationship"
    p = refit.predict_proba(latest[["a"]])[:, 1]
    assert abs(p.mean() - latest[churn_model.LABEL].mean()) < 0.05, "calibrated on the newest"


def test_the_backtest_says_what_the_newest_cutoff_adds() -> None:
    frame = _drifting(4, 600, flip_last=False)
    spec = churn_model.FeatureSpec(["a"], [])
    folds = churn_model.backtest(
        frame, spec, "logreg", {"C": 1.0}, 0.1, 10_000, compare_newest=True
    )
    assert list(folds.cutoff) == ["2024-04-01", "2024-07-01", "2024-10-01"]
    assert np.isnan(folds.roc_auc_without_newest.iloc[0]), "one cutoff before: nothing to drop"
    assert folds.roc_auc_without_newest.iloc[1:].notna().all()


# --- reasons in words -----------------------------------------------------------------------------

# Every feature name the pipeline builds, one per template family.
FEATURES = [
    "recency_days",
    "overdue_ratio",
    "overdue_z",
    "orders_trend_90d",
    "orders_30d",
    "spend_90d",
    "spend_slope",
    "events_trend_30d",
    "events_90d",
    "days_since_event",
    "events_support_ticket_trend_90d",
    "events_login_value_30d",
    "events_complaint_90d",
    "days_since_login",
    "sub_days_since_end",
    "sub_days_to_end",
    "sub_active",
    "sub_count",
    "sub_downgrades",
    "sub_upgrades",
    "sub_days_on_plan",
    "sub_recurring_revenue",
    "gap_mean_days",
    "gap_std_days",
    "btyd_p_alive",
    "btyd_expected_purchases",
    "btyd_expected_spend",
    "btyd_expected_value",
    "btyd_frequency",
    "btyd_recency",
    "btyd_t",
    "btyd_monetary_value",
    "basket_size",
    "purchase_units",
    "n_categories",
    "top_category_share",
    "category_entropy",
    "frequency",
    "monetary_mean",
    "monetary_max",
    "monetary_total",
    "tenure_days",
    "return_rate",
    "channel_share_web",
    "date_of_birth_age_years",
]


def test_every_feature_has_a_template_and_no_reason_shows_a_feature_name() -> None:
    for feature in FEATURES:
        template, _ = wording._template(feature)
        assert template is not wording._NUMBER, f"{feature} has no template"
        for value, typical in [(1.0, 3.0), (2.0, 1.0), (0.0, 0.5)]:
            text = wording.describe(feature, value, typical, {"gap_mean_days": 20.0})
            assert "_" not in text and feature not in text, (feature, text)


def test_every_template_is_spelt_right() -> None:
    from spellchecker import SpellChecker

    checker = SpellChecker()
    words: set[str] = set()
    for feature in FEATURES:
        for value in (0.0, 1.0, 2.0, 12.0):
            text = wording.describe(feature, value, 3.0, {"gap_mean_days": 20.0})
            words |= {w.lower() for w in re.findall(r"[A-Za-z]+", text)}
    # Event types and window units come from the data or are standard abbreviations.
    from_data = {"login", "logins", "complaint", "complaints", "ticket", "tickets", "x"}
    unknown = checker.unknown(words - from_data)
    assert not unknown, f"misspelt or unknown words in reasons: {sorted(unknown)}"


def test_one_fact_per_reason_in_its_strongest_window() -> None:
    frame = pd.DataFrame(
        {
            "orders_30d": [0.0],
            "orders_90d": [1.0],
            "orders_365d": [2.0],
            "recency_days": [80.0],
            "tenure_days": [400.0],
        }
    )
    contributions = pd.DataFrame(
        {"orders_30d": [0.5], "orders_90d": [0.9], "orders_365d": [0.2], "recency_days": [0.3]}
    )
    ref = {"orders_30d": 1.0, "orders_90d": 3.0, "orders_365d": 8.0, "recency_days": 20.0}
    text = wording.top_reasons(contributions, frame, ref, k=3).iloc[0]
    assert text == "1 order in the last 90 days (typical 3); no purchase for 80 days"


def test_a_trend_needs_the_period_before_it_inside_the_customers_history() -> None:
    frame = pd.DataFrame({"events_reply_trend_365d": [925.0, 3.0], "tenure_days": [200.0, 900.0]})
    contributions = pd.DataFrame({"events_reply_trend_365d": [1.5, 1.0]})
    texts = wording.top_reasons(contributions, frame, {"events_reply_trend_365d": 1.0}).tolist()
    assert texts[0] == "", "known 200 days: there is no 365 days before the last 365"
    assert texts[1].startswith("reply activity in the last 365 days at 3.0x")


def test_churn_scores_of_a_calibrated_model_predict_once_and_equal_predict_proba(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    frame = _drifting(3, 400, flip_last=False)
    spec = churn_model.FeatureSpec(["a"], [])
    model = churn_model.fit_calibrated(
        frame, spec, "hgb", churn_model.PARAM_GRIDS["hgb"][0], "auto"
    )
    monkeypatch.setattr(churn_model, "PREDICT_ROWS", 64)  # several chunks, the last one short
    proba, score = churn_model.churn_scores(model, frame)
    np.testing.assert_allclose(proba, model.predict_proba(frame)[:, 1], rtol=0, atol=1e-12)
    ranking = churn_model.ranking_model(model)
    np.testing.assert_allclose(score, ranking.predict_proba(frame[["a"]])[:, 1], rtol=1e-9)


def test_attributes_read_as_people_write_them() -> None:
    assert wording.describe("Partner", 1.0, 0.0, {}) == "Partner: yes"
    assert wording.describe("TotalCharges", 280.4, 1436.0, {}) == "TotalCharges 280 (typical 1,436)"
    assert wording.describe("monthly_fee", 24.75, 70.1, {}) == "monthly fee 24.75 (typical 70.10)"
    contract = wording.describe("contract", "month-to-month", "two year", {})
    assert contract == "contract: month-to-month (lowest risk: two year)"


def test_a_category_is_compared_with_its_lowest_risk_level() -> None:
    from churnseg.models.reasons import reference_values

    frame = pd.DataFrame(
        {"contract": ["monthly"] * 60 + ["yearly"] * 30 + ["rare"] * 2, "x": range(92)}
    )
    churned = pd.Series([1] * 40 + [0] * 20 + [1] * 3 + [0] * 27 + [0, 0])
    ref = reference_values(frame, ["contract", "x"], churned)
    assert ref["contract"] == "yearly", "lowest churn among levels of at least 5%"
    assert ref["x"] == 45.5
    assert reference_values(frame, ["contract"])["contract"] == "monthly", "no label: the mode"


def test_a_count_window_longer_than_the_customer_is_known_is_not_a_reason() -> None:
    frame = pd.DataFrame(
        {
            "events_like_365d": [0.0, 0.0],
            "events_like_30d": [0.0, 0.0],
            "tenure_days": [40.0, 500.0],
        }
    )
    contributions = pd.DataFrame({"events_like_365d": [2.0, 2.0], "events_like_30d": [0.5, 0.5]})
    ref = {"events_like_365d": 74.0, "events_like_30d": 6.0}
    texts = wording.top_reasons(contributions, frame, ref).tolist()
    assert texts[0] == "0 likes in the last 30 days (typical 6)", "known 40 days: no 365-day count"
    assert texts[1] == "0 likes in the last 365 days (typical 74)"


def test_a_flat_trend_says_flat() -> None:
    assert wording.describe("spend_slope", 0.01, 0.3, {}) == (
        "monthly spend flat (typical trend +0.3 a month)"
    )
    assert wording.describe("spend_slope", -1.44, 0.3, {}).startswith(
        "monthly spend trending down by 1.4 a month"
    )
