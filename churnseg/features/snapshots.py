"""Cutoff plans and stacked training sets (one row per customer per cutoff)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta

import ibis
import ibis.expr.types as ir

from churnseg.features.behaviour import rfm_features
from churnseg.features.labels import inactivity_labels

SNAPSHOT = "snapshot_date"


@dataclass(frozen=True)
class CutoffPlan:
    """Cutoffs of one retrain: score at ``scoring``, validate at ``validation``, train before.

    Every training label window ``[t, t + horizon)`` ends on or before ``validation``, so no
    training label sees the validation window (out-of-time validation).
    """

    scoring: date
    validation: date
    training: tuple[date, ...]
    horizon_days: int


def plan_cutoffs(
    scoring: date, horizon_days: int, train_cutoffs: int, step_days: int | None = None
) -> CutoffPlan:
    """Return the cutoff plan that ends at ``scoring``.

    Args:
        scoring: The cutoff scores are produced for (usually the day after the data ends).
        horizon_days: Churn horizon; the validation cutoff is one horizon before ``scoring``.
        train_cutoffs: How many training cutoffs to stack.
        step_days: Days between training cutoffs (default: the horizon).
    """
    step = step_days or horizon_days
    validation = scoring - timedelta(days=horizon_days)
    last_train = validation - timedelta(days=horizon_days)
    training = tuple(last_train - timedelta(days=step * i) for i in range(train_cutoffs))
    return CutoffPlan(scoring, validation, tuple(sorted(training)), horizon_days)


def labelled_snapshot(
    transactions: ir.Table,
    customers: ir.Table | None,
    as_of: date,
    horizon_days: int,
    windows: Sequence[int],
) -> ir.Table:
    """Return features as of ``as_of`` with ``snapshot_date`` and the churn label."""
    features = rfm_features(transactions, customers, as_of, windows)
    labels = inactivity_labels(transactions, features, as_of, horizon_days)
    return features.join(labels, "customer_id").mutate(**{SNAPSHOT: ibis.literal(as_of)})


def build_training_set(
    transactions: ir.Table,
    customers: ir.Table | None,
    cutoffs: Sequence[date],
    horizon_days: int,
    windows: Sequence[int],
) -> ir.Table:
    """Return labelled snapshots at every cutoff stacked into one table.

    Customers join a snapshot only once known at its cutoff, so later joiners are absent from
    earlier snapshots.
    """
    if not cutoffs:
        raise ValueError("build_training_set needs at least one cutoff")
    parts = [labelled_snapshot(transactions, customers, c, horizon_days, windows) for c in cutoffs]
    return ibis.union(*parts, distinct=False) if len(parts) > 1 else parts[0]
