"""Rule-based customer classes: value tiers A/B/C, lifecycle stages, business overrides.

Plain, documented rules on the per-customer feature table; thresholds come from config and are
logged with the run, so a person can reproduce any customer's class by hand.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

TIERS = ("A", "B", "C")
LIFECYCLE_STAGES = ("new", "growing", "stable", "declining", "churned")


@dataclass(frozen=True)
class TierThresholds:
    """Smallest value that still earns tier A and tier B (customers below both are C)."""

    a_min: float
    b_min: float


# Where value is read when ``classification.value_column`` is ``auto``, first found wins.
VALUE_COLUMNS = ("spend_365d", "sub_recurring_revenue")


def value_column(configured: str, columns: Sequence[str]) -> str | None:
    """Return the column value tiers are cut on (None: the table has no value to cut).

    ``auto`` takes the first of ``VALUE_COLUMNS`` the table has; a named column must exist.

    Raises:
        KeyError: A named column is not in the table.
    """
    if configured != "auto":
        if configured not in columns:
            raise KeyError(
                f"classification.value_column {configured!r} is not a feature column; "
                "use 'auto' or one of the numeric features or attributes"
            )
        return configured
    return next((c for c in VALUE_COLUMNS if c in columns), None)


def tier_thresholds(values: pd.Series, cuts: tuple[float, float]) -> TierThresholds:
    """Return value thresholds so tiers cover the given cumulative shares of total value.

    Customers are ranked by value, highest first; tier A holds the customers whose cumulative
    share of total value is within ``cuts[0]`` (e.g. the top customers making 80% of value),
    tier B the next ones up to ``cuts[1]``. A customer straddling a cut goes to the higher tier.
    Zero and negative values are always C. Computed once over the whole population, so scoring
    in batches assigns the same tiers.
    """
    positive = np.sort(values[values > 0].to_numpy(dtype="float64"))[::-1]
    if len(positive) == 0:
        return TierThresholds(np.inf, np.inf)
    before = (np.cumsum(positive) - positive) / positive.sum()  # share above each customer
    a_last = int(np.searchsorted(before, cuts[0], side="left")) - 1
    b_last = int(np.searchsorted(before, cuts[1], side="left")) - 1
    a_min = positive[max(a_last, 0)]
    b_min = positive[max(b_last, 0)]
    return TierThresholds(float(a_min), float(min(b_min, a_min)))


def assign_tiers(values: pd.Series, thresholds: TierThresholds) -> pd.Series:
    """Return tier A/B/C for each value given precomputed thresholds."""
    v = values.to_numpy(dtype="float64")
    positive = v > 0
    tiers = np.select(
        [positive & (v >= thresholds.a_min), positive & (v >= thresholds.b_min)], ["A", "B"], "C"
    )
    return pd.Series(tiers, index=values.index, name="value_tier")


@dataclass(frozen=True)
class LifecycleRules:
    """Thresholds of the lifecycle stages, checked in this order: churned, new, trend."""

    new_within_days: int = 90
    churned_after_days: int = 365
    trend_window_days: int = 90
    growing_ratio: float = 1.25
    declining_ratio: float = 0.75


# Where activity is read, first found wins: purchases, else events of any type.
ACTIVITY_SOURCES = (("recency_days", "orders"), ("days_since_event", "events"))


def activity_columns(columns: Sequence[str], window: int) -> tuple[str, str, str] | None:
    """Return the recency column and the activity counts over ``window`` and twice it.

    Purchases where the table has them (``recency_days``, ``orders_{w}d``), else events of any
    type (``days_since_event``, ``events_{w}d``); None for a table without activity (a
    customers-only snapshot).
    """
    for recency, counts in ACTIVITY_SOURCES:
        recent, both = f"{counts}_{window}d", f"{counts}_{2 * window}d"
        if recency in columns and recent in columns and both in columns:
            return recency, recent, both
    if any(recency in columns for recency, _ in ACTIVITY_SOURCES):
        raise KeyError(
            f"lifecycle rules need activity counts over {window} and {2 * window} days; "
            f"configure feature windows {window} and {2 * window} days or change "
            "classification.trend_window_days"
        )
    return None


def lifecycle_stages(
    frame: pd.DataFrame, rules: LifecycleRules, at_risk: NDArray[np.bool_] | None = None
) -> pd.Series:
    """Return each customer's lifecycle stage.

    - ``churned``: not in the at-risk population (``at_risk`` false: a contract that ended, a
      churn date passed, long lapsed), or no activity for more than ``churned_after_days`` (or
      never active and known for longer than that);
    - ``new``: known for less than ``new_within_days``;
    - ``growing`` / ``declining``: activity in the last ``trend_window_days`` against the window
      before it, at or above ``growing_ratio`` / at or below ``declining_ratio`` (a customer with
      no activity in either window is ``declining``);
    - ``stable``: everyone else.

    Activity is purchases (``recency_days``, ``orders_{w}d``) where the table has them, else
    events of any type (``days_since_event``, ``events_{w}d``); a table with neither (a
    customers-only snapshot) has only ``churned`` (from ``at_risk``), ``new`` (by
    ``tenure_days``, where known) and ``stable``.
    """
    tenure = frame["tenure_days"].to_numpy(dtype="float64") if "tenure_days" in frame else None
    stage = np.full(len(frame), "stable", dtype=object)
    activity = activity_columns(list(frame.columns), rules.trend_window_days)
    if activity is not None:
        _, recent_col, both_col = activity
        recent = frame[recent_col].to_numpy(dtype="float64")
        previous = frame[both_col].to_numpy(dtype="float64") - recent
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(previous > 0, recent / previous, np.where(recent > 0, np.inf, 0.0))
        stage = np.select(
            [ratio >= rules.growing_ratio, ratio <= rules.declining_ratio],
            ["growing", "declining"],
            default="stable",
        ).astype(object)
    if tenure is not None:
        stage = np.where(tenure < rules.new_within_days, "new", stage)
    if activity is not None:
        lapsed = frame[activity[0]].to_numpy(dtype="float64") > rules.churned_after_days
        stage = np.where(lapsed, "churned", stage)
    if at_risk is not None:
        stage = np.where(at_risk, stage, "churned")
    return pd.Series(stage, index=frame.index, name="lifecycle_stage", dtype=object)


_OPS: Mapping[str, Callable[[Any, Any], Any]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "gt": operator.gt,
    "ge": operator.ge,
    "lt": operator.lt,
    "le": operator.le,
}


@dataclass(frozen=True)
class Override:
    """Where ``column`` ``op`` ``value`` holds, set the given output fields."""

    column: str
    op: str
    value: Any
    set: Mapping[str, str]


def apply_overrides(
    classes: pd.DataFrame, attributes: pd.DataFrame, overrides: Sequence[Override]
) -> tuple[pd.DataFrame, dict[int, int]]:
    """Return ``classes`` with business overrides applied, and how many rows each rule changed.

    Later rules win over earlier ones. A rule whose column is absent changes nothing (the count
    says 0), so one config serves data with and without that attribute.

    Args:
        classes: Output columns to override (``value_tier``, ``lifecycle_stage``, ...).
        attributes: Same index, with the columns rules test.
        overrides: The rules, in order.
    """
    out = classes.copy()
    changed: dict[int, int] = {}
    for i, rule in enumerate(overrides):
        if rule.column not in attributes:
            changed[i] = 0
            continue
        column = attributes[rule.column]
        if rule.op == "in":
            mask = column.isin(list(rule.value))
        else:
            mask = _OPS[rule.op](column, rule.value).fillna(False).astype(bool)
        changed[i] = 0
        for field, value in rule.set.items():
            changed[i] += int((out.loc[mask, field] != value).sum())
            out.loc[mask, field] = value
    return out, changed


RISK_BANDS = ("low", "medium", "high")
# The band of customers outside the at-risk population: they have churned already, so they
# take no slot of a retention list.
CHURNED_BAND = "churned"


@dataclass(frozen=True)
class RiskBandRule:
    """How scores become bands; see ``RiskBandConfig`` in the config for the meaning."""

    mode: str = "capacity"
    high_share: float = 0.10
    medium_share: float = 0.20
    contact_cost: float = 5.0
    save_rate: float = 0.2


@dataclass(frozen=True)
class RiskThresholds:
    """Smallest ranking score that is still ``high`` and ``medium`` risk."""

    high_min: float
    medium_min: float


def risk_thresholds(ranking: pd.Series, rule: RiskBandRule) -> RiskThresholds:
    """Return band thresholds over the whole scored population.

    ``capacity``: ``ranking`` is what the retention list is ordered by (churn probability or
    value at risk); the top ``high_share`` are high, the next ``medium_share`` medium.
    ``cost``: ``ranking`` must be value at risk (probability x expected value); a contact pays off
    where ``save_rate`` x value at risk >= ``contact_cost`` (high), or at least half of it
    (medium).
    """
    if rule.mode == "cost":
        high = rule.contact_cost / rule.save_rate
        return RiskThresholds(high, high / 2)
    values = np.sort(ranking.to_numpy(dtype="float64"))[::-1]
    if len(values) == 0:
        return RiskThresholds(np.inf, np.inf)
    n_high = max(1, round(len(values) * rule.high_share))
    n_medium = round(len(values) * (rule.high_share + rule.medium_share))
    high_min = values[n_high - 1]
    medium_min = values[max(n_medium - 1, n_high - 1)]
    return RiskThresholds(float(high_min), float(medium_min))


def assign_risk_bands(
    ranking: pd.Series, thresholds: RiskThresholds, at_risk: NDArray[np.bool_] | None = None
) -> pd.Series:
    """Return low / medium / high for each ranking score given precomputed thresholds.

    Customers outside the at-risk population (``at_risk`` false) get ``churned``.
    """
    v = ranking.to_numpy(dtype="float64")
    bands = np.select(
        [v >= thresholds.high_min, v >= thresholds.medium_min], ["high", "medium"], "low"
    ).astype(object)
    if at_risk is not None:
        bands = np.where(at_risk, bands, CHURNED_BAND)
    return pd.Series(bands, index=ranking.index, name="risk_band", dtype=object)
