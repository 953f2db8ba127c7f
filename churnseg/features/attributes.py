"""Customer attributes passed through to the feature table, typed for the models stage."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import date, datetime

import ibis
import ibis.expr.types as ir

from churnseg.features.cleaning import IS_STUB, ROW
from churnseg.features.tables import CUSTOMER, Family, Fill
from churnseg.features.timeutil import days_before

# Contract columns that are not attributes: the id, the dates that place a customer in time
# (churn_date is future information at most cutoffs), the source row number and the stub flag.
NOT_ATTRIBUTES = frozenset({CUSTOMER, "signup_date", "churn_date", ROW, IS_STUB})


OTHER = "other"
DAYS_PER_YEAR = 365.25


def categorical_attributes(customers: ir.Table, exclude: Collection[str] = ()) -> list[str]:
    """Return the text attribute columns of clean customers (the categorical ones)."""
    return [
        name
        for name, dtype in customers.schema().items()
        if name not in NOT_ATTRIBUTES and name not in exclude and dtype.is_string()
    ]


def attribute_features(
    customers: ir.Table,
    as_of: date | datetime,
    exclude: Collection[str] = (),
    levels: Mapping[str, Sequence[str]] | None = None,
) -> Family:
    """Return the customers table's own columns as features, typed.

    Numbers and booleans (as 0/1) become float64, so a missing value in a later snapshot never
    changes a column's type. Text stays text (categorical for the models stage); with
    ``levels`` a column keeps only its listed values and the rest become ``"other"``, so no
    category explodes into thousands of levels. A date attribute (a timestamp column: cleaning
    types the ones it infers or is told are dates) becomes ``<name>_age_years``, the years from
    it to the cutoff, null where the date is on or after the cutoff (not known yet). ``exclude``
    names columns to keep out (e.g. the label column).
    """
    columns: dict[str, ir.Value] = {}
    fill: dict[str, Fill] = {}
    for name, dtype in customers.schema().items():
        if name in NOT_ATTRIBUTES or name in exclude:
            continue
        col = customers[name]
        if dtype.is_boolean() or dtype.is_numeric():
            columns[name] = col.cast("float64")
            fill[name] = None
        elif dtype.is_string():
            kept = list((levels or {}).get(name, ()))
            columns[name] = ibis.ifelse(col.isin(kept), col, OTHER) if kept else col
            columns[name] = ibis.ifelse(col.isnull(), ibis.null("string"), columns[name])
            fill[name] = None
        elif dtype.is_timestamp() or dtype.is_date():
            days = days_before(col.cast("timestamp"), as_of)
            age = ibis.ifelse(days > 0, days / DAYS_PER_YEAR, ibis.null("float64"))
            columns[f"{name}_age_years"] = age.cast("float64")
            fill[f"{name}_age_years"] = None
    return Family(customers.select(CUSTOMER, **columns), fill)
