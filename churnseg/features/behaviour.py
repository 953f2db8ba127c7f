"""Behavioural features per customer as of a cutoff: RFM, tenure, windows, trends and gaps.

Every function reads only rows strictly before ``as_of`` and returns one row per customer known
at ``as_of`` (signed up, or first active, before it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date, datetime

import ibis
import ibis.expr.datatypes as dt
import ibis.expr.types as ir

from churnseg.features.contract import TRANSACTIONS
from churnseg.features.tables import (
    CUSTOMER,
    FIRST_TS,
    SINCE_KNOWN,
    Family,
    Fill,
    complete_columns,
)
from churnseg.features.timeutil import cutoff_literal, days_before

# Money is summed as an exact decimal: parallel float sums differ in the last bits from run to
# run, which would make re-scoring the same data publish different probabilities.
MONEY = dt.Decimal(18, 4)

RFM_FEATURES = ("recency_days", "frequency", "monetary_total", "monetary_mean", "tenure_days")


def is_return(lines: ir.Table) -> ir.BooleanValue:
    """Return whether each line is a return: its flag, or a negative amount when unflagged.

    Clean tables always carry the flag (``cleaning.clean_transactions``); tables built by hand
    or read straight into Spark may not.
    """
    return lines.is_return.fill_null(lines.amount < 0)


def lines_before(
    transactions: ir.Table,
    as_of: date | datetime,
    where: Callable[[ir.Table], ir.BooleanValue] | None = None,
) -> ir.Table:
    """Return the transaction lines strictly before ``as_of`` with every contract column.

    ``where`` adds a condition (built from the completed table) to the same filter. Each family
    filters the raw table itself: a lines table shared by several families would be
    materialised by DuckDB (23M rows at 1M customers) instead of streamed.
    """
    t = complete_columns(transactions, TRANSACTIONS)
    before = t.timestamp < cutoff_literal(as_of)
    return t.filter(before if where is None else before & where(t))


def order_totals(lines: ir.Table) -> dict[str, ir.Value]:
    """Return the aggregates that make an order of its ``lines``: ``ts``, ``value``, ``is_return``.

    ``ts`` is the first line's moment, ``value`` the net amount (exact) and ``is_return`` whether
    every line is a return.
    """
    return {
        "ts": lines.timestamp.min(),
        # Per-order sums fit the money type again, so later sums read 64-bit values.
        "value": lines.amount.cast(MONEY).sum().cast(MONEY),
        "is_return": is_return(lines).all(),
    }


def group_orders(lines: ir.Table, **extra: ir.Value) -> ir.Table:
    """Return one row per order of ``lines``: ``customer_id``, ``order_id``, ``order_totals``.

    Lines without an order id are taken as one order per customer and timestamp. ``extra``
    adds aggregates over the same groups.
    """
    loose = ibis.ifelse(lines.order_id.isnull(), lines.timestamp, ibis.null("timestamp"))
    grouped = lines.mutate(_loose=loose).group_by([CUSTOMER, "order_id", "_loose"])
    return grouped.aggregate(**order_totals(lines), **extra).drop("_loose")


def orders_before(transactions: ir.Table, as_of: date | datetime) -> ir.Table:
    """Return one row per (customer, order) before ``as_of``.

    Columns: ``customer_id``, ``ts`` (first line), ``value`` (net, exact) and ``is_return``
    (every line a return). Lines without an order id are taken as one order per customer and
    timestamp. Building the order level once lets every count below be a plain count instead of
    a COUNT DISTINCT; it is the largest aggregation of a build, so its rows are kept narrow:
    no key columns in the output, and line-level sums (units, channels) live in ``mix``.
    """
    return group_orders(lines_before(transactions, as_of)).drop("order_id")


def known_customers(
    customers: ir.Table | None,
    firsts: Sequence[ir.Table],
    as_of: date | datetime,
    undated_known: bool = False,
) -> ir.Table:
    """Return ``customer_id`` and ``start_ts`` of every customer known at ``as_of``.

    A customer is known from the earliest of signup and first activity (order, event,
    subscription start); customers with neither before the cutoff are not in the population yet.

    Args:
        customers: Clean customers (``customer_id``, ``signup_date``) or None.
        firsts: Tables of ``customer_id`` and ``first_ts`` (first activity before ``as_of``).
        as_of: Cutoff.
        undated_known: Also keep customers rows with no signup date and no activity (a
            snapshot table taken at ``as_of``, label mode ``column``); their ``start_ts`` is null.
    """
    parts = [f.select(CUSTOMER, ts=f[FIRST_TS].cast("timestamp")) for f in firsts]
    if customers is not None:
        parts.insert(0, customers.select(CUSTOMER, ts=customers.signup_date.cast("timestamp")))
    stacked = ibis.union(*parts, distinct=False) if len(parts) > 1 else parts[0]
    base = stacked.group_by(CUSTOMER).aggregate(start_ts=stacked.ts.min())
    known = base.start_ts < cutoff_literal(as_of)
    if undated_known and customers is not None:
        known = known | base.start_ts.isnull()
    return base.filter(known)


def _purchase_metrics(orders: ir.Table, as_of: date | datetime) -> dict[str, ir.Value]:
    """Return the order aggregates shared by ``rfm_features`` and ``order_features``."""
    age = days_before(orders.ts, as_of)
    purchase = ~orders.is_return
    return {
        FIRST_TS: orders.ts.min(),
        "frequency": orders.count(where=purchase),
        "n_orders": orders.count(),
        "returns": orders.count(where=orders.is_return),
        "last_purchase_days": age.min(where=purchase),
        "monetary_total": orders.value.sum(),
        "monetary_max": orders.value.max(where=purchase),
    }


def _window_metrics(
    orders: ir.Table, as_of: date | datetime, windows: Sequence[int], previous: bool
) -> dict[str, ir.Value]:
    """Return purchase orders and net spend per window (and the window before, if asked)."""
    age = days_before(orders.ts, as_of)
    purchase = ~orders.is_return
    out: dict[str, ir.Value] = {}
    for w in windows:
        out[f"orders_{w}d"] = orders.count(where=purchase & (age <= w))
        out[f"spend_{w}d"] = orders.value.sum(where=age <= w)
        if previous:
            out[f"orders_prev_{w}d"] = orders.count(where=purchase & (age > w) & (age <= 2 * w))
    return out


def _rfm_columns(j: ir.Table, windows: Sequence[int]) -> dict[str, ir.Value]:
    """Return the RFM and window columns from aggregated order metrics (nulls: no orders)."""
    freq = j.frequency.fill_null(0)
    total = j.monetary_total.cast("float64").fill_null(0.0)
    n_orders = j.n_orders.fill_null(0)
    columns: dict[str, ir.Value] = {
        "recency_days": j.last_purchase_days,
        "frequency": freq.cast("int64"),
        "monetary_total": total,
        "monetary_mean": ibis.ifelse(freq > 0, total / freq, 0.0),
        "monetary_max": j.monetary_max.cast("float64").fill_null(0.0),
        "return_rate": ibis.ifelse(n_orders > 0, j.returns.fill_null(0) / n_orders, 0.0),
    }
    for w in windows:
        columns[f"orders_{w}d"] = j[f"orders_{w}d"].fill_null(0).cast("int64")
        columns[f"spend_{w}d"] = j[f"spend_{w}d"].cast("float64").fill_null(0.0)
    return columns


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
    orders = orders_before(transactions, as_of)
    metrics = _purchase_metrics(orders, as_of) | _window_metrics(orders, as_of, windows, False)
    agg = orders.group_by(CUSTOMER).aggregate(**metrics)
    base = known_customers(customers, [agg], as_of)
    j = base.left_join(agg, CUSTOMER)
    tenure = days_before(j.start_ts, as_of)
    columns = _rfm_columns(j, windows)
    columns["recency_days"] = columns["recency_days"].fill_null(tenure)
    columns = {"recency_days": columns.pop("recency_days"), **columns}
    columns["tenure_days"] = tenure
    ordered = ["recency_days", "frequency", "monetary_total", "monetary_mean", "monetary_max"]
    ordered += ["return_rate", "tenure_days"]
    ordered += [c for c in columns if c not in ordered]
    return j.select(CUSTOMER, **{c: columns[c] for c in ordered})


def order_features(
    orders: ir.Table,
    as_of: date | datetime,
    windows: Sequence[int],
    slope_bucket_days: int,
    slope_buckets: int,
) -> Family:
    """Return the order-level family: RFM, windows, trends and the spend slope.

    Beyond the ``rfm_features`` columns: ``orders_trend_{w}d`` = (purchase orders in the last
    ``w`` days + 1) / (purchase orders in the ``w`` days before + 1), smoothed so it is defined
    for everyone (1 = flat, below 1 = slowing); ``spend_slope`` = least-squares slope of net
    spend per ``slope_bucket_days`` bucket over the last ``slope_buckets`` buckets (money per
    bucket per bucket; buckets before the customer was known count as zero).
    """
    age = days_before(orders.ts, as_of)
    k = slope_buckets
    bucket = (age / slope_bucket_days).floor()
    in_span = age < k * slope_bucket_days
    metrics = _purchase_metrics(orders, as_of) | _window_metrics(orders, as_of, windows, True)
    metrics["slope_sum"] = orders.value.sum(where=in_span)
    # Bucket index times value, summed exactly: the slope is then one float step per customer.
    metrics["slope_ksum"] = (orders.value * bucket.cast(dt.Decimal(9, 0))).sum(where=in_span)
    j = orders.group_by(CUSTOMER).aggregate(**metrics)

    columns = _rfm_columns(j, windows)
    for w in windows:
        trend = (j[f"orders_{w}d"] + 1) / (j[f"orders_prev_{w}d"] + 1)
        columns[f"orders_trend_{w}d"] = trend.cast("float64")
    # slope = sum_k (x_k - mean x) y_k / sum_k (x_k - mean x)^2 with time x_k = -k.
    centre, sxx = (k - 1) / 2, k * (k * k - 1) / 12
    ssum = j.slope_sum.cast("float64").fill_null(0.0)
    ksum = j.slope_ksum.cast("float64").fill_null(0.0)
    columns["spend_slope"] = (centre * ssum - ksum) / sxx
    table = j.select(CUSTOMER, FIRST_TS, **columns)
    fill: dict[str, Fill] = {c: 0 for c in columns}
    fill["recency_days"] = SINCE_KNOWN
    for w in windows:
        fill[f"orders_trend_{w}d"] = 1.0
    return Family(table, fill)


def purchase_days(transactions: ir.Table, as_of: date | datetime) -> ir.Table:
    """Return one row per customer and purchase day before ``as_of``, for ``purchase_day_features``.

    A purchase day is a day with a purchase (non-return) line; its ``value`` is the gross
    purchase value of those lines (exact). ``day`` counts back from the cutoff: day 0 is the 24
    hours before ``as_of``. ``gap`` is the days back to the customer's previous (older) purchase
    day (null for the first) and ``first_day`` the ``day`` of their first purchase day.
    """
    p = lines_before(transactions, as_of, lambda t: ~is_return(t))
    day = days_before(p.timestamp, as_of).floor().cast("int64")
    value = p.amount.cast(MONEY).sum().cast(MONEY)
    days = p.mutate(day=day).group_by([CUSTOMER, "day"]).aggregate(value=value)
    # Oldest day first: lag() is the previous purchase day, first() the first purchase day.
    w = ibis.window(group_by=days[CUSTOMER], order_by=ibis.desc(days.day))
    return days.mutate(gap=days.day.lag().over(w) - days.day, first_day=days.day.first().over(w))


def purchase_day_features(days: ir.Table, period_days: int) -> Family:
    """Return gaps between purchase days and the BTYD summary, from ``purchase_days`` rows.

    Gap columns (null with fewer purchase days than they need): ``gap_mean_days`` (mean days
    between consecutive purchase days), ``gap_std_days`` (their sample standard deviation),
    ``overdue_ratio`` (``recency_days`` / ``gap_mean_days``: above 1 the customer is later than
    usual) and ``overdue_z`` ((``recency_days`` - mean gap) / std gap).

    BTYD summary as in the BG/NBD literature, in periods of ``period_days`` days counted back
    from the cutoff (period 0 is the last ``period_days`` days before ``as_of``): purchases in one
    period count once; ``btyd_frequency`` = repeat purchase periods (periods with a purchase
    minus one); ``btyd_recency`` = periods from the first to the last purchase period; ``btyd_t``
    = periods from the first purchase period to the last period before the cutoff (the
    ``lifetimes`` summary with ``observation_period_end`` one period before ``as_of``);
    ``btyd_monetary_value`` = mean purchase value of the repeat periods (0 without any).

    Args:
        days: ``purchase_days`` of one cutoff, or ``history.PreparedHistory.purchase_days``.
        period_days: BTYD period length.
    """
    period = (days.day / period_days).floor()
    older = days.day + days.gap
    new_period = days.gap.isnull() | ((older / period_days).floor() != period)
    in_first = period == (days.first_day / period_days).floor()
    d = days.mutate(new_period=new_period, in_first=in_first)
    j = d.group_by(CUSTOMER).aggregate(
        n_days=d.count(),
        gap_sum=d.gap.sum(),
        gap_sq=(d.gap * d.gap).sum(),
        first_day=d.day.max(),
        last_day=d.day.min(),
        periods=d.count(where=d.new_period),
        value_total=d.value.sum(),
        value_first=d.value.sum(where=d.in_first),
    )
    gaps = j.n_days - 1
    mean = ibis.ifelse(gaps >= 1, (j.first_day - j.last_day) / gaps, ibis.null("float64"))
    # Integer sums keep the variance exact (and never below 0) up to one float step per row.
    var = (gaps * j.gap_sq - j.gap_sum * j.gap_sum) / (gaps * (gaps - 1))
    std = ibis.ifelse(gaps >= 2, var.sqrt(), ibis.null("float64"))
    repeat = j.periods - 1
    repeat_value = (j.value_total - j.value_first).cast("float64") / repeat
    first_period = (j.first_day / period_days).floor()
    table = j.select(
        CUSTOMER,
        gap_mean_days=mean.cast("float64"),
        gap_std_days=std.cast("float64"),
        btyd_frequency=repeat.cast("int64"),
        btyd_recency=(first_period - (j.last_day / period_days).floor()).cast("int64"),
        # float: null for customers without a purchase, in every snapshot alike
        btyd_t=first_period.cast("float64"),
        btyd_monetary_value=ibis.ifelse(repeat > 0, repeat_value, 0.0),
    )
    fill: dict[str, Fill] = {
        "gap_mean_days": None,
        "gap_std_days": None,
        "btyd_frequency": 0,
        "btyd_recency": 0,
        "btyd_t": None,
        "btyd_monetary_value": 0.0,
    }
    return Family(table, fill)


def overdue_columns(
    recency: ir.FloatingValue, mean: ir.Value, std: ir.Value
) -> dict[str, ir.Value]:
    """Return ``overdue_ratio`` and ``overdue_z`` (null where the usual gap is unknown or 0)."""
    ratio = ibis.ifelse(mean > 0, recency / mean, ibis.null("float64"))
    z = ibis.ifelse(std > 0, (recency - mean) / std, ibis.null("float64"))
    return {"overdue_ratio": ratio.cast("float64"), "overdue_z": z.cast("float64")}
