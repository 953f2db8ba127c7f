"""Subscription features per customer as of a cutoff: plan, time on plan, changes, revenue.

An ``end_date`` on or after the cutoff is future information (in most data it is written when
the customer cancels), so such a subscription only counts as active and its end is not read,
unless ``end_known`` says end dates are contract ends fixed in advance.
"""

from __future__ import annotations

from datetime import date, datetime

import ibis
import ibis.expr.types as ir

from churnseg.features.behaviour import MONEY
from churnseg.features.contract import SUBSCRIPTIONS
from churnseg.features.tables import CUSTOMER, Family, Fill, complete_columns
from churnseg.features.timeutil import cutoff_literal, days_before


def subscription_features(
    subscriptions: ir.Table, as_of: date | datetime, term_days: int, end_known: bool = False
) -> Family:
    """Return the current subscription state and history of every subscriber before ``as_of``.

    Columns: ``sub_count`` (subscriptions started), ``sub_active`` (1 when one started before
    and has not ended before the cutoff), ``sub_plan`` (plan of the latest active one, text),
    ``sub_days_on_plan`` (days since it started), ``sub_recurring_revenue`` (summed over active
    ones, exact), ``sub_upgrades`` / ``sub_downgrades`` (subscriptions whose recurring revenue is
    above / below the customer's previous one), ``sub_days_to_end`` (days left in the current
    term of ``term_days`` counted from its start; with ``end_known``, the known end date when
    there is one) and ``sub_days_since_end`` (for lapsed subscribers: days since the last end).
    """
    s = complete_columns(subscriptions, SUBSCRIPTIONS)
    cutoff = cutoff_literal(as_of)
    s = s.filter(s.start_date < cutoff)
    active = s.end_date.isnull() | (s.end_date >= cutoff)
    w = ibis.window(group_by=s[CUSTOMER], order_by=[s.start_date, s.plan, s.recurring_revenue])
    previous = s.recurring_revenue.lag().over(w)
    s = s.mutate(
        active=active,
        up=s.recurring_revenue > previous,
        down=s.recurring_revenue < previous,
    )
    j = s.group_by(CUSTOMER).aggregate(
        n=s.count(),
        n_active=s.count(where=s.active),
        current_start=s.start_date.max(where=s.active),
        plan=s.plan.argmax(s.start_date, where=s.active),
        revenue=s.recurring_revenue.cast(MONEY).sum(where=s.active),
        up=s.count(where=s.up),
        down=s.count(where=s.down),
        last_end=s.end_date.max(where=~s.active),
        known_end=s.end_date.min(where=s.active) if end_known else ibis.null("timestamp"),
    )
    on_plan = days_before(j.current_start, as_of)
    to_end = term_days - on_plan % term_days
    if end_known:
        to_end = (-days_before(j.known_end, as_of)).fill_null(to_end)
    is_active = j.n_active > 0
    table = j.select(
        CUSTOMER,
        sub_count=j.n.cast("int64"),
        sub_active=is_active.cast("int64"),
        sub_plan=j.plan.cast("string"),
        sub_days_on_plan=on_plan.cast("float64"),
        sub_recurring_revenue=j.revenue.cast("float64").fill_null(0.0),
        sub_upgrades=j.up.fill_null(0).cast("int64"),
        sub_downgrades=j.down.fill_null(0).cast("int64"),
        sub_days_to_end=ibis.ifelse(is_active, to_end, ibis.null("float64")).cast("float64"),
        sub_days_since_end=ibis.ifelse(
            is_active, ibis.null("float64"), days_before(j.last_end, as_of)
        ).cast("float64"),
    )
    fill: dict[str, Fill] = {
        "sub_count": 0,
        "sub_active": 0,
        "sub_plan": None,
        "sub_days_on_plan": None,
        "sub_recurring_revenue": 0.0,
        "sub_upgrades": 0,
        "sub_downgrades": 0,
        "sub_days_to_end": None,
        "sub_days_since_end": None,
    }
    return Family(table, fill)
