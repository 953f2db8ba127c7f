"""The whole scoring snapshot written by hand in DuckDB SQL: the reference for the feature build.

``snapshot_sql`` returns one query computing, from the clean tables of the bundled sample's
shape (customers with text and boolean attributes, transactions, events, subscriptions and the
``seen`` ids), the table ``snapshots.scoring_snapshot`` builds at one cutoff: every column, in the
same order, with the same types (label mode ``inactivity``, no prepared history). It follows the
same algorithm (orders from lines, purchase days with their gaps, one aggregate per family,
joined on the customer) the way one would write it by hand, without Ibis: what the feature
build costs over the engine itself is the time of the two side by side.

``tests/test_feature_reference.py`` checks that both give the same table on a generated sample.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime, time
from pathlib import Path


def _q(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def snapshot_sql(
    clean: Path,
    as_of: date,
    *,
    windows: Sequence[int],
    channels: Mapping[str, str],
    event_types: Mapping[str, str],
    attribute_levels: Mapping[str, Sequence[str]],
    numeric_attributes: Sequence[str] = (),
    slope_bucket_days: int = 30,
    slope_buckets: int = 12,
    btyd_period_days: int = 7,
    term_days: int = 30,
) -> str:
    """Return the scoring snapshot at ``as_of`` as one DuckDB query over ``clean``'s Parquet files.

    ``channels`` and ``event_types`` map each level to its column slug; ``attribute_levels``
    lists the kept values of each text attribute (the rest become "other"), in the customers
    table's column order, and ``numeric_attributes`` the numeric or boolean ones.
    """
    cut = f"TIMESTAMP '{datetime.combine(as_of, time()).isoformat(sep=' ')}'"
    epoch = f"epoch({cut})"

    def age(ts: str) -> str:  # days from ts to the cutoff, as ``days_before``
        return f"(CAST({epoch} - epoch(CAST({ts} AS TIMESTAMP)) AS DOUBLE) / 86400.0)"

    def file(name: str) -> str:
        return f"read_parquet({_q(str(clean / f'{name}.parquet'))})"

    returned = "coalesce(is_return, amount < 0)"
    orders_windows = ",\n".join(
        f"count(*) FILTER (WHERE NOT is_return AND a <= {w}) AS orders_{w}d, "
        f"sum(value) FILTER (WHERE a <= {w}) AS spend_{w}d, "
        f"count(*) FILTER (WHERE NOT is_return AND a > {w} AND a <= {2 * w}) AS prev_{w}"
        for w in windows
    )
    span = slope_buckets * slope_bucket_days
    centre, sxx = (slope_buckets - 1) / 2, slope_buckets * (slope_buckets**2 - 1) / 12
    channel_counts = "".join(
        f", count(*) FILTER (WHERE channel = {_q(c)}) AS ch_{s}" for c, s in channels.items()
    )
    channel_sums = "".join(f", sum(ch_{s}) AS ch_{s}" for s in channels.values())
    event_windows = ",\n".join(
        f"count(*) FILTER (WHERE a <= {w}) AS n_{w}, "
        f"count(*) FILTER (WHERE a > {w} AND a <= {2 * w}) AS p_{w}, "
        f"CAST(sum(CAST(value AS DECIMAL(18, 4))) FILTER (WHERE a <= {w}) AS DECIMAL(18, 4))"
        f" AS v_{w}"
        for w in windows
    )
    pivot = []
    for t, s in event_types.items():
        where = f"FILTER (WHERE event_type = {_q(t)})"
        for w in windows:
            pivot += [f"max(n_{w}) {where} AS {s}_n_{w}", f"max(p_{w}) {where} AS {s}_p_{w}"]
            pivot += [f"max(v_{w}) {where} AS {s}_v_{w}"]
        pivot.append(f"min(last) {where} AS {s}_last")
    pivot.append("min(last) AS all_last")
    for w in windows:
        pivot += [f"sum(n_{w}) AS all_n_{w}", f"sum(p_{w}) AS all_p_{w}"]

    known = "p.tenure_days"
    out = ["p.customer_id", f"{known} AS tenure_days"]
    out += [
        f"coalesce(o.last_purchase, {known}) AS recency_days",
        "coalesce(o.frequency, 0) AS frequency",
        "coalesce(CAST(o.total AS DOUBLE), 0.0) AS monetary_total",
        "CASE WHEN coalesce(o.frequency, 0) > 0 THEN CAST(o.total AS DOUBLE) / o.frequency"
        " ELSE 0.0 END AS monetary_mean",
        "coalesce(CAST(o.largest AS DOUBLE), 0.0) AS monetary_max",
        "CASE WHEN coalesce(o.n_orders, 0) > 0 THEN o.returns / o.n_orders ELSE 0.0 END"
        " AS return_rate",
    ]
    for w in windows:
        out += [f"coalesce(o.orders_{w}d, 0) AS orders_{w}d"]
        out += [f"coalesce(CAST(o.spend_{w}d AS DOUBLE), 0.0) AS spend_{w}d"]
    out += [
        f"coalesce((o.orders_{w}d + 1) / (o.prev_{w} + 1), 1.0) AS orders_trend_{w}d"
        for w in windows
    ]
    out += [
        f"coalesce(({centre} * coalesce(CAST(o.slope_sum AS DOUBLE), 0.0)"
        f" - coalesce(CAST(o.slope_ksum AS DOUBLE), 0.0)) / {sxx}, 0) AS spend_slope",
        "d.gap_mean_days",
        "d.gap_std_days",
        f"CASE WHEN d.gap_mean_days > 0 THEN coalesce(o.last_purchase, {known}) / d.gap_mean_days"
        " END AS overdue_ratio",
        f"CASE WHEN d.gap_std_days > 0 THEN (coalesce(o.last_purchase, {known})"
        " - d.gap_mean_days) / d.gap_std_days END AS overdue_z",
        "coalesce(d.btyd_frequency, 0) AS btyd_frequency",
        "coalesce(d.btyd_recency, 0) AS btyd_recency",
        "d.btyd_t",
        "coalesce(d.btyd_monetary_value, 0.0) AS btyd_monetary_value",
        "coalesce(m.n_categories, 0) AS n_categories",
        "coalesce(m.top_category_share, 0) AS top_category_share",
        "coalesce(m.category_entropy, 0) AS category_entropy",
    ]
    out += [
        f"coalesce(CAST(m.ch_{s} / m.lines AS DOUBLE), 0) AS channel_share_{s}"
        for s in channels.values()
    ]
    out += [
        "coalesce(m.units, 0) AS purchase_units",
        "CASE WHEN coalesce(o.frequency, 0) > 0 THEN coalesce(m.units, 0) / o.frequency ELSE 0.0"
        " END AS basket_size",
        f"coalesce(e.all_last, {known}) AS days_since_event",
    ]
    for w in windows:
        out += [f"coalesce(CAST(e.all_n_{w} AS BIGINT), 0) AS events_{w}d"]
        out += [
            f"(coalesce(CAST(e.all_n_{w} AS BIGINT), 0) + 1)"
            f" / (coalesce(CAST(e.all_p_{w} AS BIGINT), 0) + 1) AS events_trend_{w}d"
        ]
    for s in event_types.values():
        for w in windows:
            out += [
                f"coalesce(e.{s}_n_{w}, 0) AS events_{s}_{w}d",
                f"(coalesce(e.{s}_n_{w}, 0) + 1) / (coalesce(e.{s}_p_{w}, 0) + 1)"
                f" AS events_{s}_trend_{w}d",
                f"coalesce(CAST(e.{s}_v_{w} AS DOUBLE), 0.0) AS events_{s}_value_{w}d",
            ]
        out.append(f"coalesce(e.{s}_last, {known}) AS days_since_{s}")
    out += [
        "coalesce(s.n, 0) AS sub_count",
        "coalesce(CAST(s.n_active > 0 AS BIGINT), 0) AS sub_active",
        "s.plan AS sub_plan",
        f"{age('s.current_start')} AS sub_days_on_plan",
        "coalesce(CAST(s.revenue AS DOUBLE), 0.0) AS sub_recurring_revenue",
        "coalesce(s.up, 0) AS sub_upgrades",
        "coalesce(s.down, 0) AS sub_downgrades",
        f"CASE WHEN s.n_active > 0 THEN {term_days} - ({age('s.current_start')} % {term_days})"
        " END AS sub_days_to_end",
        f"CASE WHEN s.n_active > 0 THEN NULL ELSE {age('s.last_end')} END AS sub_days_since_end",
    ]
    attributes = []
    for name, kept in attribute_levels.items():
        levels = ", ".join(_q(v) for v in kept)
        value = f"CASE WHEN {name} IN ({levels}) THEN {name} ELSE 'other' END" if kept else name
        attributes.append(f"CASE WHEN {name} IS NULL THEN NULL ELSE {value} END AS {name}")
    attributes += [f"CAST({name} AS DOUBLE) AS {name}" for name in numeric_attributes]
    out += [f"c.{name}" for name in [*attribute_levels, *numeric_attributes]]
    out += ["TRUE AS at_risk", f"DATE '{as_of.isoformat()}' AS snapshot_date"]
    select = ",\n  ".join(out)
    seen = ""
    if (clean / "seen.parquet").exists():  # ids whose every row was quarantined
        seen = (
            "    UNION ALL SELECT customer_id, min(CAST(first_ts AS TIMESTAMP))"
            f" FROM {file('seen')}\n      WHERE first_ts < {cut} GROUP BY customer_id"
        )
    attribute_select = ", ".join(["customer_id", *attributes])
    return f"""
WITH lines AS NOT MATERIALIZED (  -- filtered again where read, never stored
  SELECT customer_id, order_id, "timestamp", amount, {returned} AS is_return, category,
         channel, quantity
  FROM {file("transactions")} WHERE "timestamp" < {cut}
),
orders AS (  -- lines without an order id: one order per customer and moment
  SELECT customer_id, min("timestamp") AS ts,
         CAST(sum(CAST(amount AS DECIMAL(18, 4))) AS DECIMAL(18, 4)) AS value,
         bool_and(is_return) AS is_return
  FROM lines
  GROUP BY customer_id, order_id, CASE WHEN order_id IS NULL THEN "timestamp" END
),
order_family AS (
  SELECT customer_id, min(ts) AS first_ts,
         count(*) FILTER (WHERE NOT is_return) AS frequency, count(*) AS n_orders,
         count(*) FILTER (WHERE is_return) AS returns,
         min(a) FILTER (WHERE NOT is_return) AS last_purchase,
         sum(value) AS total, max(value) FILTER (WHERE NOT is_return) AS largest,
         {orders_windows},
         sum(value) FILTER (WHERE a < {span}) AS slope_sum,
         sum(value * CAST(floor(a / {slope_bucket_days}) AS DECIMAL(9, 0)))
           FILTER (WHERE a < {span}) AS slope_ksum
  FROM (SELECT *, {age("ts")} AS a FROM orders)
  GROUP BY customer_id
),
purchase_days AS (
  SELECT customer_id, day, value,
         lag(day) OVER w - day AS gap, first_value(day) OVER w AS first_day
  FROM (
    SELECT customer_id, CAST(floor({age('"timestamp"')}) AS BIGINT) AS day,
           CAST(sum(CAST(amount AS DECIMAL(18, 4))) AS DECIMAL(18, 4)) AS value
    FROM lines WHERE NOT is_return GROUP BY ALL
  )
  WINDOW w AS (PARTITION BY customer_id ORDER BY day DESC)
),
day_family AS (
  SELECT customer_id,
         CASE WHEN n - 1 >= 1 THEN (oldest - newest) / (n - 1) END AS gap_mean_days,
         CASE WHEN n - 1 >= 2 THEN
           sqrt(((n - 1) * gap_sq - gap_sum * gap_sum) / ((n - 1) * (n - 2))) END AS gap_std_days,
         periods - 1 AS btyd_frequency,
         CAST(floor(oldest / {btyd_period_days}) - floor(newest / {btyd_period_days})
           AS BIGINT) AS btyd_recency,
         floor(oldest / {btyd_period_days}) AS btyd_t,
         CASE WHEN periods - 1 > 0
           THEN CAST(value_total - value_first AS DOUBLE) / (periods - 1) ELSE 0.0 END
           AS btyd_monetary_value
  FROM (
    SELECT customer_id, count(*) AS n, sum(gap) AS gap_sum, sum(gap * gap) AS gap_sq,
           max(day) AS oldest, min(day) AS newest,
           count(*) FILTER (WHERE gap IS NULL OR floor((day + gap) / {btyd_period_days})
             <> floor(day / {btyd_period_days})) AS periods,
           sum(value) AS value_total,
           sum(value) FILTER (WHERE floor(day / {btyd_period_days})
             = floor(first_day / {btyd_period_days})) AS value_first
    FROM purchase_days GROUP BY customer_id
  )
),
mix_family AS (
  SELECT customer_id, count(*) FILTER (WHERE category IS NOT NULL) AS n_categories,
         CASE WHEN sum(n) FILTER (WHERE category IS NOT NULL) > 0 THEN
           max(n) FILTER (WHERE category IS NOT NULL)
           / CAST(sum(n) FILTER (WHERE category IS NOT NULL) AS DOUBLE) ELSE 0.0 END
           AS top_category_share,
         CASE WHEN sum(n) FILTER (WHERE category IS NOT NULL) > 0 THEN greatest(
           ln(CAST(sum(n) FILTER (WHERE category IS NOT NULL) AS DOUBLE))
           - CAST(sum(CAST(n * ln(CAST(n AS DOUBLE)) AS DECIMAL(18, 9)))
               FILTER (WHERE category IS NOT NULL) AS DOUBLE)
             / CAST(sum(n) FILTER (WHERE category IS NOT NULL) AS DOUBLE), 0.0)
           ELSE 0.0 END AS category_entropy,
         sum(n) AS lines, CAST(sum(units) AS BIGINT) AS units{channel_sums}
  FROM (
    SELECT customer_id, category, count(*) AS n,
           sum(CAST(coalesce(quantity, 1) AS DECIMAL(18, 0))) AS units{channel_counts}
    FROM lines WHERE NOT is_return GROUP BY customer_id, category
  )
  GROUP BY customer_id
),
event_family AS (
  SELECT customer_id, {", ".join(pivot)}
  FROM (
    SELECT customer_id, event_type, min(a) AS last, {event_windows}
    FROM (SELECT customer_id, event_type, value, {age('"timestamp"')} AS a
          FROM {file("events")} WHERE "timestamp" < {cut})
    GROUP BY customer_id, event_type
  )
  GROUP BY customer_id
),
subscription_rows AS (
  SELECT *, end_date IS NULL OR end_date >= {cut} AS active,
         recurring_revenue > lag(recurring_revenue) OVER w AS up,
         recurring_revenue < lag(recurring_revenue) OVER w AS down
  FROM {file("subscriptions")} WHERE start_date < {cut}
  WINDOW w AS (PARTITION BY customer_id ORDER BY start_date, plan, recurring_revenue)
),
subscription_family AS (
  SELECT customer_id, count(*) AS n, count(*) FILTER (WHERE active) AS n_active,
         max(start_date) FILTER (WHERE active) AS current_start,
         first(plan ORDER BY start_date DESC) FILTER (WHERE active) AS plan,
         sum(CAST(recurring_revenue AS DECIMAL(18, 4))) FILTER (WHERE active) AS revenue,
         count(*) FILTER (WHERE up) AS up, count(*) FILTER (WHERE down) AS down,
         max(end_date) FILTER (WHERE NOT active) AS last_end
  FROM subscription_rows GROUP BY customer_id
),
population AS (  -- known from the earliest of signup and any activity before the cutoff
  SELECT customer_id, {age("min(ts)")} AS tenure_days
  FROM (
    SELECT customer_id, CAST(signup_date AS TIMESTAMP) AS ts FROM {file("customers")}
    UNION ALL SELECT customer_id, first_ts FROM order_family
    UNION ALL SELECT customer_id, min("timestamp") FROM {file("events")}
      WHERE "timestamp" < {cut} GROUP BY customer_id
    UNION ALL SELECT customer_id, min(CAST(start_date AS TIMESTAMP)) FROM {file("subscriptions")}
      WHERE start_date < {cut} GROUP BY customer_id
{seen}
  )
  GROUP BY customer_id
  HAVING min(ts) < {cut} OR min(ts) IS NULL
)
SELECT
  {select}
FROM population p
LEFT JOIN order_family o USING (customer_id)
LEFT JOIN day_family d USING (customer_id)
LEFT JOIN mix_family m USING (customer_id)
LEFT JOIN event_family e USING (customer_id)
LEFT JOIN subscription_family s USING (customer_id)
LEFT JOIN (SELECT {attribute_select} FROM {file("customers")}) c USING (customer_id)
"""
