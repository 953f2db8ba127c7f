"""Cutoff plans and stacked training sets (one row per customer per cutoff)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING

import ibis
import ibis.expr.types as ir

from churnseg.features.build import build_features, resolve_levels
from churnseg.features.labels import LABEL, label_rule
from churnseg.features.tables import checked_tables
from churnseg.features.timeutil import cutoff_datetime

if TYPE_CHECKING:
    from churnseg.pipelines.config import FeatureConfig

SNAPSHOT = "snapshot_date"


@dataclass(frozen=True)
class CutoffPlan:
    """Cutoffs of one retrain: score at ``scoring``, validate at ``validation``, train before.

    Every training label window ``[t, t + label_days)`` ends on or before ``validation``, so no
    training label sees the validation window (out-of-time validation). ``label_days`` is the
    horizon, plus the grace gap in contract mode.
    """

    scoring: date
    validation: date
    training: tuple[date, ...]
    horizon_days: int
    label_days: int | None = None


def plan_cutoffs(
    scoring: date,
    horizon_days: int,
    train_cutoffs: int,
    step_days: int | None = None,
    label_days: int | None = None,
) -> CutoffPlan:
    """Return the cutoff plan that ends at ``scoring``.

    Args:
        scoring: The cutoff scores are produced for (usually the day after the data ends).
        horizon_days: Churn horizon.
        train_cutoffs: How many training cutoffs to stack.
        step_days: Days between training cutoffs (default: the horizon).
        label_days: Days a label reads after its cutoff (default: the horizon). The validation
            cutoff is this many days before ``scoring``, the last training cutoff as many
            before validation.
    """
    span = label_days or horizon_days
    step = step_days or horizon_days
    validation = scoring - timedelta(days=span)
    last_train = validation - timedelta(days=span)
    training = tuple(last_train - timedelta(days=step * i) for i in range(train_cutoffs))
    return CutoffPlan(scoring, validation, tuple(sorted(training)), horizon_days, span)


def snapshot_literal(as_of: date | datetime) -> ir.Scalar:
    """Return the ``snapshot_date`` value of a cutoff: a date, or a timestamp inside a day."""
    moment = cutoff_datetime(as_of)
    if moment.time() == datetime.min.time():
        return ibis.literal(moment.date(), "date")
    return ibis.literal(moment, "timestamp")


def labelled_snapshot(
    tables: Mapping[str, ir.Table],
    as_of: date | datetime,
    config: FeatureConfig,
    horizon_days: int,
) -> ir.Table:
    """Return features as of ``as_of`` with ``churned`` and ``snapshot_date``.

    Customers the label mode does not consider at risk (null label) are left out.
    """
    t = checked_tables(tables)
    features = build_features(t, as_of, config)
    labelled = label_rule(t, as_of, config, horizon_days).attach(features)
    labelled = labelled.filter(labelled[LABEL].notnull())
    return labelled.mutate(**{SNAPSHOT: snapshot_literal(as_of)})


def training_snapshots(
    tables: Mapping[str, ir.Table],
    cutoffs: Sequence[date | datetime],
    config: FeatureConfig,
    horizon_days: int,
) -> list[ir.Table]:
    """Return one labelled snapshot per cutoff, oldest first, with the same columns.

    Customers join a snapshot only once known at its cutoff, so later joiners are absent from
    earlier snapshots. Channels and event types are resolved once, at the last cutoff, so every
    snapshot has the same columns. Built one by one, a large build needs one snapshot's memory.
    """
    if not cutoffs:
        raise ValueError("a training set needs at least one cutoff")
    t = checked_tables(tables)
    config = resolve_levels(t, max(cutoff_datetime(c) for c in cutoffs), config)
    ordered = sorted(cutoffs, key=cutoff_datetime)
    return [labelled_snapshot(t, c, config, horizon_days) for c in ordered]


def build_training_set(
    tables: Mapping[str, ir.Table],
    cutoffs: Sequence[date | datetime],
    config: FeatureConfig,
    horizon_days: int,
) -> ir.Table:
    """Return ``training_snapshots`` stacked into one table."""
    parts = training_snapshots(tables, cutoffs, config, horizon_days)
    return ibis.union(*parts, distinct=False) if len(parts) > 1 else parts[0]
