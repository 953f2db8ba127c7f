"""Transaction history aggregated once for a build of several cutoffs.

A retrain builds six snapshots. Grouping the lines into orders and the purchase lines into
purchase days is the largest part of each snapshot (at 1M customers, 23M lines into 16M orders
and 15M purchase days), yet it hardly depends on the cutoff: only an order whose lines straddle
the cutoff, or a line at exactly the cutoff's midnight, is cut differently. ``PreparedHistory``
does that grouping once, up to the latest cutoff, keeping what the edges need; each cutoff then
filters it. The rows it gives are exactly those of ``behaviour.orders_before`` and
``behaviour.purchase_days`` (tested), for any cutoff a whole number of days before the latest
one. Materialise its tables (``prepare_history``'s ``materialise``) to gain anything: as bare
expressions they are recomputed per cutoff.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime

import ibis
import ibis.expr.types as ir

from churnseg.features.behaviour import (
    MONEY,
    group_orders,
    is_return,
    lines_before,
    order_totals,
)
from churnseg.features.tables import CUSTOMER
from churnseg.features.timeutil import cutoff_datetime, cutoff_literal, days_before


@dataclass(frozen=True)
class PreparedHistory:
    """Orders and purchase days before ``latest``, to be cut at any earlier midnight cutoff.

    Attributes:
        latest: The latest cutoff served (a midnight).
        orders: One row per order before ``latest``: ``customer_id``, ``order_id`` (only for
            orders whose lines carry several timestamps, else null), ``ts`` (first line),
            ``ts_last`` (last line), ``value`` (net, exact) and ``is_return`` (every line a
            return); grouped as ``behaviour.orders_before`` groups lines.
        straddling: The lines of orders whose lines carry more than one timestamp, with the
            order's ``ts_last``: what a cutoff inside such an order re-aggregates.
        days: One row per customer and purchase day ``k`` (days back from ``latest``, floored):
            ``value``, ``value_at_midnight`` (lines at exactly the day's closing midnight),
            ``inside`` (a line strictly inside the day), ``gap`` (days back to the previous
            purchase day) and ``first_k``.
    """

    latest: datetime
    orders: ir.Table
    straddling: ir.Table
    days: ir.Table

    def serves(self, as_of: date | datetime) -> bool:
        """Return whether ``as_of`` is a midnight a whole number of days at or before ``latest``."""
        moment = cutoff_datetime(as_of)
        return moment <= self.latest and moment.time() == datetime.min.time()

    def _days_back(self, as_of: date | datetime) -> int:
        if not self.serves(as_of):
            raise ValueError(f"cutoff {as_of} is not a midnight at or before {self.latest}")
        return (self.latest - cutoff_datetime(as_of)).days

    def orders_before(self, as_of: date | datetime) -> ir.Table:
        """Return ``behaviour.orders_before(transactions, as_of)``'s rows, from the history."""
        self._days_back(as_of)
        cutoff = cutoff_literal(as_of)
        o = self.orders
        whole = o.filter(o.ts_last < cutoff).select(CUSTOMER, "ts", "value", "is_return")
        # An order with lines on both sides of the cutoff keeps the lines before it only.
        s = self.straddling
        cut = s.filter((s.timestamp < cutoff) & (s.ts_last >= cutoff))
        part = cut.group_by([CUSTOMER, "order_id"]).aggregate(**order_totals(cut))
        return ibis.union(whole, part.drop("order_id"), distinct=False)

    def purchase_days(self, as_of: date | datetime) -> ir.Table:
        """Return ``behaviour.purchase_days(transactions, as_of)``'s rows, from the history."""
        shift = self._days_back(as_of)
        d = self.days
        # Day ``shift`` ends at the cutoff itself: a line at exactly that midnight is after it.
        kept = d.filter((d.k > shift) | ((d.k == shift) & d.inside))
        edge = (kept.value - kept.value_at_midnight.fill_null(0)).cast(MONEY)
        return kept.select(
            CUSTOMER,
            day=kept.k - shift,
            value=ibis.ifelse(kept.k == shift, edge, kept.value),
            gap=kept.gap,
            first_day=kept.first_k - shift,
        )


def prepare_history(
    transactions: ir.Table,
    latest: date | datetime,
    materialise: Callable[[str, ir.Table], ir.Table] | None = None,
) -> PreparedHistory:
    """Return the orders and purchase days before ``latest`` (a midnight).

    Args:
        transactions: Clean transaction lines.
        latest: The latest cutoff to serve.
        materialise: Called with each table's name and expression, in order (``orders``,
            ``straddling``, ``days``); returns the table to use instead, e.g. the expression
            written to a file and read back. The straddling lines are found from the orders
            it returns. Default: keep the expressions.

    Raises:
        ValueError: ``latest`` is not a midnight.
    """
    moment = cutoff_datetime(latest)
    if moment.time() != datetime.min.time():
        raise ValueError(f"a prepared history ends at a midnight, not at {latest}")
    keep = materialise or (lambda _name, table: table)
    t = lines_before(transactions, moment)
    orders = keep(
        "orders",
        group_orders(t, ts_last=t.timestamp.max())
        # Only an order whose lines span several moments needs its id again (to find its
        # lines); null elsewhere, the column costs next to nothing to write (at 5M customers
        # the table was 2.8 GB with every id).
        .mutate(order_id=lambda o: ibis.ifelse(o.ts < o.ts_last, o.order_id, ibis.null("string"))),
    )
    # Lines without an order id form one order per timestamp, so they never straddle.
    spans = orders.filter(orders.order_id.notnull() & (orders.ts < orders.ts_last))
    spans = spans.select(CUSTOMER, "order_id", "ts_last")
    keyed = t.filter(t.order_id.notnull())
    straddling = keep(
        "straddling",
        keyed.join(spans, [CUSTOMER, "order_id"]).select(
            CUSTOMER, "order_id", "timestamp", "amount", "ts_last", is_return=is_return(keyed)
        ),
    )

    p = lines_before(transactions, moment, lambda lines: ~is_return(lines))
    age = days_before(p.timestamp, moment)
    at_midnight = age == age.floor()
    money = p.amount.cast(MONEY)
    days = (
        p.mutate(k=age.floor().cast("int64"), _midnight=at_midnight, _money=money)
        .group_by([CUSTOMER, "k"])
        .aggregate(
            value=lambda g: g._money.sum().cast(MONEY),
            value_at_midnight=lambda g: g._money.sum(where=g._midnight).cast(MONEY),
            inside=lambda g: g.count(where=~g._midnight) > 0,
        )
    )
    # Oldest day first, as in ``behaviour.purchase_days``: gaps do not depend on the cutoff.
    w = ibis.window(group_by=days[CUSTOMER], order_by=ibis.desc(days.k))
    days = days.mutate(gap=days.k.lag().over(w) - days.k, first_k=days.k.first().over(w))
    return PreparedHistory(moment, orders, straddling, keep("days", days))
