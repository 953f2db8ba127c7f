"""Behavioural features per customer as of a cutoff: RFM, tenure and windowed activity.

Every function reads only rows strictly before ``as_of`` and returns one row per customer known
at ``as_of`` (signed up, or first active, before it).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime

import ibis
import ibis.expr.datatypes as dt
import ibis.expr.types as ir

from churnseg.features.timeutil import SECONDS_PER_DAY, cutoff_literal, epoch_seconds

# Money is summed as an exact decimal: parallel float sums differ in the last bits from run to
# run, which would make re-scoring the same data publish different probabilities.
MONEY = dt.Decimal(18, 4)

RFM_FEATURES = ("recency_days", "frequency", "monetary_total", "monetary_mean", "tenure_days")


def orders_before(transactions: ir.Table, as_of: date | datetime) -> ir.Table:
    """Return one row per (customer, order) before ``as_of``: time, net value, return flag.

    Lines without an order id are taken as one order per customer and timestamp. Building the
    order level once lets every count below be a plain count instead of a COUNT DISTINCT.
    """
    t = transactions.filter(transactions.timestamp < cutoff_literal(as_of))
    order_key = t.order_id.fill_null(t.timestamp.cast("string"))
    return (
        t.mutate(order_key=order_key)
        .group_by(["customer_id", "order_key"])
        .aggregate(
            ts=t.timestamp.min(),
            value=t.amount.cast(MONEY).sum(),
            is_return=t.is_return.all(),
        )
    )


def known_customers(
    customers: ir.Table | None, orders: ir.Table, as_of: date | datetime
) -> ir.Table:
    """Return ``customer_id`` and ``start_ts`` of every customer known at ``as_of``.

    A customer is known from the earlier of signup and first order; customers without either
    before the cutoff are not in the population yet.
    """
    first = orders.group_by("customer_id").aggregate(first_order_ts=orders.ts.min())
    if customers is None:
        return first.select("customer_id", start_ts=first.first_order_ts)
    c = customers.select("customer_id", "signup_date")
    joined = c.outer_join(first, "customer_id")
    cid = joined.customer_id.fill_null(joined.customer_id_right)
    start = ibis.least(joined.signup_date, joined.first_order_ts)
    start = start.fill_null(joined.signup_date).fill_null(joined.first_order_ts)
    base = joined.select(customer_id=cid, start_ts=start)
    return base.filter(base.start_ts < cutoff_literal(as_of))


def rfm_features(
    transactions: ir.Table,
    customers: ir.Table | None,
    as_of: date | datetime,
    windows: Sequence[int] = (30, 90, 180, 365),
) -> ir.Table:
    """Return RFM, tenure and windowed order counts and spend per customer as of ``as_of``.

    Columns: ``customer_id``; ``recency_days`` (days since the last purchase, or since the
    customer became known when there is none); ``frequency`` (purchase orders); ``monetary_total``
    (net of returns); ``monetary_mean`` (net spend per purchase order, 0 without orders);
    ``monetary_max`` (largest order); ``return_rate`` (share of orders that are returns);
    ``tenure_days``; and per window ``w``: ``orders_{w}d`` and ``spend_{w}d``.
    """
    now = epoch_seconds(as_of)
    orders = orders_before(transactions, as_of)
    sec = orders.ts.epoch_seconds()
    age_days = (now - sec) / SECONDS_PER_DAY
    purchase = ~orders.is_return
    metrics: dict[str, ir.Value] = {
        "frequency": purchase.sum(),
        "n_orders": orders.count(),
        "returns": orders.is_return.sum(),
        "last_purchase_days": age_days.min(where=purchase),
        "monetary_total": orders.value.sum(),
        "monetary_max": orders.value.max(where=purchase),
    }
    for w in windows:
        in_window = purchase & (age_days <= w)
        metrics[f"orders_{w}d"] = in_window.sum()
        metrics[f"spend_{w}d"] = orders.value.sum(where=age_days <= w)
    agg = orders.group_by("customer_id").aggregate(**metrics)

    base = known_customers(customers, orders, as_of)
    j = base.left_join(agg, "customer_id")
    tenure = (now - j.start_ts.epoch_seconds()) / SECONDS_PER_DAY
    freq = j.frequency.fill_null(0)
    total = j.monetary_total.cast("float64").fill_null(0.0)
    columns: dict[str, ir.Value] = {
        "customer_id": j.customer_id,
        "recency_days": j.last_purchase_days.fill_null(tenure),
        "frequency": freq.cast("int64"),
        "monetary_total": total,
        "monetary_mean": ibis.ifelse(freq > 0, total / freq, 0.0),
        "monetary_max": j.monetary_max.cast("float64").fill_null(0.0),
        "return_rate": ibis.ifelse(
            j.n_orders.fill_null(0) > 0, j.returns.fill_null(0) / j.n_orders, 0.0
        ),
        "tenure_days": tenure,
    }
    for w in windows:
        columns[f"orders_{w}d"] = j[f"orders_{w}d"].fill_null(0).cast("int64")
        columns[f"spend_{w}d"] = j[f"spend_{w}d"].cast("float64").fill_null(0.0)
    return j.select(**columns)
