"""Cutoff plans and stacked training sets (one row per customer per cutoff)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Literal

import ibis
import ibis.expr.types as ir

from churnseg.features.build import build_features, resolve_levels
from churnseg.features.cleaning import DataContractError
from churnseg.features.labels import LABEL, label_rule
from churnseg.features.tables import checked_tables
from churnseg.features.timeutil import cutoff_datetime

if TYPE_CHECKING:
    from churnseg.features.history import PreparedHistory
    from churnseg.features.settings import FeatureConfig

SNAPSHOT = "snapshot_date"


class HistoryTooShortError(DataContractError):
    """The data's history cannot hold one training cutoff and the validation cutoff."""


@dataclass(frozen=True)
class CutoffPlan:
    """Cutoffs of one retrain: score at ``scoring``, validate at ``validation``, train before.

    Every training label window ``[t, t + label_days)`` ends on or before ``validation``, so no
    training label sees the validation window (out-of-time validation). ``label_days`` is the
    horizon, plus the grace gap in contract mode.

    ``split`` is ``"customers"`` for a snapshot without timestamps (label mode ``column``): one
    cutoff, and validation holds a seeded share of the labelled customers instead of a later
    time. ``notes`` says how the plan was made (logged with the run).
    """

    scoring: date
    validation: date
    training: tuple[date, ...]
    horizon_days: int
    label_days: int | None = None
    split: Literal["time", "customers"] = "time"
    notes: tuple[str, ...] = ()


def plan_cutoffs(
    scoring: date,
    horizon_days: int,
    train_cutoffs: int | Literal["auto"] = "auto",
    step_days: int | None = None,
    label_days: int | None = None,
    data_start: date | None = None,
    min_history_days: int | None = None,
    max_train_cutoffs: int = 4,
) -> CutoffPlan:
    """Return the cutoff plan that ends at ``scoring``, planned from the data's history.

    Args:
        scoring: The cutoff scores are produced for (usually the day after the data ends).
        horizon_days: Churn horizon.
        train_cutoffs: How many training cutoffs to stack; ``"auto"``: as many as the history
            allows, at most ``max_train_cutoffs``. A number the history cannot hold gives
            fewer (said in ``notes``).
        step_days: Days between training cutoffs (default: the horizon). It may be shorter
            than the horizon: every training label window still ends by the validation cutoff.
        label_days: Days a label reads after its cutoff (default: the horizon). The validation
            cutoff is this many days before ``scoring``, the last training cutoff as many
            before validation.
        data_start: The first day of activity in the data; None: unknown (no limit).
        min_history_days: History every training cutoff needs after ``data_start`` (default:
            one horizon).
        max_train_cutoffs: The most cutoffs ``"auto"`` takes.

    Raises:
        HistoryTooShortError: Not even one training cutoff fits after ``data_start``.
    """
    span = label_days or horizon_days
    step = step_days or horizon_days
    history = horizon_days if min_history_days is None else min_history_days
    validation = scoring - timedelta(days=span)
    last_train = validation - timedelta(days=span)
    wanted = max_train_cutoffs if train_cutoffs == "auto" else int(train_cutoffs)
    candidates = [last_train - timedelta(days=step * i) for i in range(wanted)]
    earliest = data_start + timedelta(days=history) if data_start is not None else None
    training = [c for c in candidates if earliest is None or c >= earliest]
    if not training:
        assert data_start is not None and earliest is not None  # candidates is never empty
        days = (scoring - data_start).days
        needed = history + 2 * span
        raise HistoryTooShortError(
            f"history too short: the data covers {days} days ({data_start} to {scoring}); "
            f"a {horizon_days}-day horizon needs at least {needed} days: "
            f"{history} of history before a training cutoff (snapshots.min_history_days), "
            f"{span} for its label and {span} for the validation label. Shorten "
            "snapshots.horizon_days or min_history_days, or bring more history"
        )
    notes = []
    if train_cutoffs != "auto" and len(training) < wanted:
        notes.append(
            f"snapshots.train_cutoffs asked for {wanted}; the history since {data_start} "
            f"holds {len(training)} with {history} days of history each"
        )
    return CutoffPlan(
        scoring, validation, tuple(sorted(training)), horizon_days, span, notes=tuple(notes)
    )


def snapshot_plan(scoring: date, horizon_days: int) -> CutoffPlan:
    """Return the plan of a snapshot without timestamps: one cutoff, customers held out."""
    note = "one snapshot without timestamps: validation holds out a share of the customers"
    return CutoffPlan(
        scoring, scoring, (scoring,), horizon_days, horizon_days, split="customers", notes=(note,)
    )


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
    seen: ir.Table | None = None,
    history: PreparedHistory | None = None,
) -> ir.Table:
    """Return features as of ``as_of`` with ``churned`` and ``snapshot_date``.

    Customers the label mode does not consider at risk (null label) are left out. ``seen`` and
    ``history`` as in ``build.build_features``.
    """
    t = checked_tables(tables)
    features = build_features(t, as_of, config, seen, history=history)
    labelled = label_rule(t, as_of, config, horizon_days).attach(features)
    labelled = labelled.filter(labelled[LABEL].notnull())
    return labelled.mutate(**{SNAPSHOT: snapshot_literal(as_of)})


def scoring_snapshot(
    tables: Mapping[str, ir.Table],
    as_of: date | datetime,
    config: FeatureConfig,
    horizon_days: int,
    seen: ir.Table | None = None,
    history: PreparedHistory | None = None,
) -> ir.Table:
    """Return every customer known at ``as_of`` with features, ``at_risk`` and ``snapshot_date``.

    Nothing at or after ``as_of`` is read: ``at_risk`` says whether the label mode still
    considers the customer able to churn (a contract covering the cutoff, no churn date before
    it); the label itself is unknown. Customers on the books without any date are included.
    """
    t = checked_tables(tables)
    features = build_features(t, as_of, config, seen, undated_known=True, history=history)
    flagged = label_rule(t, as_of, config, horizon_days).attach_at_risk(features)
    return flagged.mutate(**{SNAPSHOT: snapshot_literal(as_of)})


def training_snapshots(
    tables: Mapping[str, ir.Table],
    cutoffs: Sequence[date | datetime],
    config: FeatureConfig,
    horizon_days: int,
    seen: ir.Table | None = None,
    history: PreparedHistory | None = None,
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
    return [labelled_snapshot(t, c, config, horizon_days, seen, history) for c in ordered]


def build_training_set(
    tables: Mapping[str, ir.Table],
    cutoffs: Sequence[date | datetime],
    config: FeatureConfig,
    horizon_days: int,
) -> ir.Table:
    """Return ``training_snapshots`` stacked into one table."""
    parts = training_snapshots(tables, cutoffs, config, horizon_days)
    return ibis.union(*parts, distinct=False) if len(parts) > 1 else parts[0]
