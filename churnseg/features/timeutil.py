"""Cutoff-date helpers shared by every feature and label function."""

from __future__ import annotations

import calendar
from datetime import date, datetime, time

import ibis
import ibis.expr.types as ir

SECONDS_PER_DAY = 86_400.0


def cutoff_datetime(as_of: date | datetime) -> datetime:
    """Return ``as_of`` as a naive UTC datetime at midnight (a date) or as given (a datetime)."""
    if isinstance(as_of, datetime):
        return as_of.replace(tzinfo=None)
    return datetime.combine(as_of, time())


def epoch_seconds(as_of: date | datetime) -> int:
    """Return the cutoff as seconds since 1970-01-01 UTC."""
    return calendar.timegm(cutoff_datetime(as_of).timetuple())


def cutoff_literal(as_of: date | datetime) -> ir.TimestampScalar:
    """Return the cutoff as an Ibis timestamp literal."""
    return ibis.literal(cutoff_datetime(as_of))


def days_before(ts: ir.TimestampValue, as_of: date | datetime) -> ir.FloatingValue:
    """Return the days from ``ts`` to the cutoff (positive for moments before it)."""
    # A float numerator: Spark SQL reads the literal 86400.0 as a DECIMAL and would round.
    return (epoch_seconds(as_of) - ts.epoch_seconds()).cast("float64") / SECONDS_PER_DAY
