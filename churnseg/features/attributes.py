"""Customer attributes passed through to the feature table, typed for the models stage."""

from __future__ import annotations

from collections.abc import Collection

import ibis.expr.types as ir

from churnseg.features.cleaning import IS_STUB, ROW
from churnseg.features.tables import CUSTOMER, Family, Fill

# Contract columns that are not attributes: the id, the dates that place a customer in time
# (churn_date is future information at most cutoffs), the source row number and the stub flag.
NOT_ATTRIBUTES = frozenset({CUSTOMER, "signup_date", "churn_date", ROW, IS_STUB})


def attribute_features(customers: ir.Table, exclude: Collection[str] = ()) -> Family:
    """Return the customers table's own columns as features, typed.

    Numbers and booleans (as 0/1) become float64, so a missing value in a later snapshot never
    changes a column's type; text stays text (categorical for the models stage). Dates and
    timestamps are dropped: an attribute date has no rule saying whether it was known at the
    cutoff. ``exclude`` names columns to keep out (e.g. the label column).
    """
    columns: dict[str, ir.Value] = {}
    fill: dict[str, Fill] = {}
    for name, dtype in customers.schema().items():
        if name in NOT_ATTRIBUTES or name in exclude:
            continue
        col = customers[name]
        if dtype.is_boolean() or dtype.is_numeric():
            columns[name] = col.cast("float64")
        elif dtype.is_string():
            columns[name] = col
        else:
            continue
        fill[name] = None
    return Family(customers.select(CUSTOMER, **columns), fill)
