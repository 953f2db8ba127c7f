"""What customers buy and where, per customer as of a cutoff: categories, channels, units.

One pass over the purchase lines, grouped by (customer, category) and then by customer, gives
every mix feature; ``basket_size`` (units per purchase order) joins ``purchase_units`` with the
order count in ``build``. The (customer, category) groups are counted, not COUNT DISTINCT.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime

import ibis
import ibis.expr.datatypes as dt
import ibis.expr.types as ir

from churnseg.features.behaviour import is_return, lines_before
from churnseg.features.tables import CUSTOMER, Family, Fill

# n * ln(n) terms are summed as exact decimals for the same reason money is (behaviour.MONEY).
_TERM = dt.Decimal(18, 9)


def mix_features(
    transactions: ir.Table,
    as_of: date | datetime,
    channels: Sequence[str],
    channel_slugs: dict[str, str],
) -> Family:
    """Return category and channel mix and units over purchase (non-return) lines.

    Columns: ``n_categories`` (distinct categories bought), ``top_category_share`` (share of the
    purchase lines with a category that are in the most bought one), ``category_entropy``
    (Shannon entropy of that distribution, natural log; 0 for one category),
    ``channel_share_{c}`` (share of purchase lines sold through channel ``c``) and
    ``purchase_units`` (units bought; 1 per line without a quantity).
    """
    lines = lines_before(transactions, as_of, lambda t: ~is_return(t))
    per_metrics: dict[str, ir.Value] = {
        "n": lines.count(),
        # Summed as a decimal: DuckDB sums integers into HUGEINT, written to Parquet as DOUBLE,
        # and Ibis drops a cast to the int64 it believes the sum already is; a decimal sum
        # keeps the final cast, so the file needs no retyping pass.
        "units": lines.quantity.fill_null(1).cast(dt.Decimal(18, 0)).sum(),
    }
    for c in channels:
        per_metrics[f"ch_{channel_slugs[c]}"] = lines.count(where=lines.channel == c)
    per = lines.group_by([CUSTOMER, "category"]).aggregate(**per_metrics)

    known = per.category.notnull()
    term = (per.n * per.n.cast("float64").ln()).cast(_TERM)
    metrics: dict[str, ir.Value] = {
        "k": per.count(where=known),
        "total": per.n.sum(where=known),
        "top": per.n.max(where=known),
        "terms": term.sum(where=known),
        "lines": per.n.sum(),
        "units": per.units.sum(),
    }
    for c in channels:
        metrics[f"ch_{channel_slugs[c]}"] = per[f"ch_{channel_slugs[c]}"].sum()
    j = per.group_by(CUSTOMER).aggregate(**metrics)

    total = j.total.cast("float64")
    # H = -sum p ln p = ln N - sum n ln n / N with p = n / N. The decimal rounding of the terms
    # can leave -1e-10 for a single category: clip at 0.
    entropy = (total.ln() - j.terms.cast("float64") / total).clip(lower=0.0)
    columns: dict[str, ir.Value] = {
        "n_categories": j.k.cast("int64"),
        "top_category_share": ibis.ifelse(j.total > 0, j.top / total, 0.0).cast("float64"),
        "category_entropy": ibis.ifelse(j.total > 0, entropy, 0.0).cast("float64"),
    }
    for c in channels:
        share = j[f"ch_{channel_slugs[c]}"] / j.lines
        columns[f"channel_share_{channel_slugs[c]}"] = share.cast("float64")
    columns["purchase_units"] = j.units.cast("int64")
    fill: dict[str, Fill] = {name: 0 for name in columns}
    return Family(j.select(CUSTOMER, **columns), fill)


def basket_size(purchase_units: ir.IntegerValue, frequency: ir.IntegerValue) -> ir.FloatingValue:
    """Return units per purchase order (0 without orders)."""
    return ibis.ifelse(frequency > 0, purchase_units / frequency, 0.0).cast("float64")
