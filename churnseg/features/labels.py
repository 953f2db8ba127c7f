"""Churn labels as of a cutoff, from the horizon window ``[as_of, as_of + horizon)`` only."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import ibis.expr.types as ir

from churnseg.features.timeutil import cutoff_datetime, cutoff_literal

LABEL = "churned"


def inactivity_labels(
    transactions: ir.Table, population: ir.Table, as_of: date | datetime, horizon_days: int
) -> ir.Table:
    """Return ``customer_id`` and ``churned`` (1 when no purchase in the horizon window).

    Args:
        transactions: Clean transactions.
        population: Customers to label (a ``customer_id`` column), e.g. the feature table.
        as_of: Cutoff; the window starts here.
        horizon_days: Window length in days.
    """
    start = cutoff_literal(as_of)
    end = cutoff_literal(cutoff_datetime(as_of) + timedelta(days=horizon_days))
    t = transactions
    active = (
        t.filter((t.timestamp >= start) & (t.timestamp < end) & ~t.is_return)
        .select("customer_id")
        .distinct()
        .mutate(active=1)
    )
    j = population.select("customer_id").left_join(active, "customer_id")
    return j.select("customer_id", **{LABEL: (1 - j.active.fill_null(0)).cast("int8")})
