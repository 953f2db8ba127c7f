"""Churn labels as of a cutoff, read from the label window after it only.

Three modes (``FeatureConfig.label``):

* ``inactivity``: 1 when the customer makes no purchase (nor an activity event) in
  ``[as_of, as_of + horizon)``.
* ``contract``: only customers covered by a subscription at ``as_of`` are labelled (others are
  not at risk: null); 1 when a subscription ends in ``[as_of, as_of + horizon)`` and no
  subscription covers the customer again within ``grace_days`` of that end, so the label window
  is ``[as_of, as_of + horizon + grace)``. Without a subscriptions table, ``customers.churn_date``
  is the simple form: 1 when it falls in the horizon, null when it is before ``as_of``.
* ``column``: the customers column ``label_column`` as given (snapshot data without timestamps);
  it belongs to the snapshot, whatever the cutoff.

Rows with a null label are not at risk and are dropped from training sets.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING

import ibis
import ibis.expr.types as ir

from churnseg.features.behaviour import is_return
from churnseg.features.cleaning import DataContractError
from churnseg.features.contract import CONTRACTS
from churnseg.features.tables import CUSTOMER, complete_columns
from churnseg.features.timeutil import cutoff_datetime, cutoff_literal

if TYPE_CHECKING:
    from churnseg.features.settings import FeatureConfig

LABEL = "churned"
# Whether a customer can still churn at the cutoff (not left already): the population scored.
AT_RISK = "at_risk"
_TRUE = ("1", "true", "t", "yes", "y", "churned")
_FALSE = ("0", "false", "f", "no", "n", "active", "retained")


def _window(as_of: date | datetime, days: int) -> tuple[ir.TimestampScalar, ir.TimestampScalar]:
    start = cutoff_datetime(as_of)
    return cutoff_literal(start), cutoff_literal(start + timedelta(days=days))


@dataclass(frozen=True)
class LabelRule:
    """What a label mode reads from the label window, and how it turns into ``churned``.

    ``evidence`` has one row per customer with evidence (``customer_id`` and ``_``-prefixed
    columns); ``label`` maps a table left-joined with it to the label (customers without
    evidence see nulls). Joining the evidence onto the feature table directly keeps the feature
    expression from being built twice.
    """

    evidence: ir.Table
    label: Callable[[ir.Table], ir.Value]
    at_risk: Callable[[ir.Table], ir.Value] | None = None

    def attach(self, table: ir.Table) -> ir.Table:
        """Return ``table`` with ``churned`` added (one row per row of ``table``)."""
        j = table.left_join(self.evidence, CUSTOMER)
        return j.select(*[j[c] for c in table.columns], **{LABEL: self.label(j)})

    def attach_at_risk(self, table: ir.Table) -> ir.Table:
        """Return ``table`` with ``at_risk``: whether the customer can still churn at the cutoff.

        Reads only what is known at the cutoff (a subscription covering it, a churn date before
        it), so it is set on the scoring table, where labels are unknown.
        """
        if self.at_risk is None:
            return table.mutate(**{AT_RISK: ibis.literal(True)})
        j = table.left_join(self.evidence, CUSTOMER)
        flag = self.at_risk(j).fill_null(False)
        return j.select(*[j[c] for c in table.columns], **{AT_RISK: flag})


def inactivity_rule(
    transactions: ir.Table,
    as_of: date | datetime,
    horizon_days: int,
    events: ir.Table | None = None,
    activity_event_types: Sequence[str] = (),
) -> LabelRule:
    """Return the ``inactivity`` rule: 1 without a purchase (or activity event) in the horizon."""
    start, end = _window(as_of, horizon_days)
    t = complete_columns(transactions, CONTRACTS["transactions"])
    in_window = (t.timestamp >= start) & (t.timestamp < end)
    active = t.filter(in_window & ~is_return(t)).select(CUSTOMER)
    if events is not None and activity_event_types:
        e = events
        in_window = (e.timestamp >= start) & (e.timestamp < end)
        hits = e.filter(in_window & e.event_type.isin(list(activity_event_types)))
        active = ibis.union(active, hits.select(CUSTOMER), distinct=False)
    evidence = active.distinct().mutate(_active=ibis.literal(1, "int8"))
    return LabelRule(evidence, lambda j: (1 - j._active.fill_null(0)).cast("int8"))


def inactivity_labels(
    transactions: ir.Table,
    population: ir.Table,
    as_of: date | datetime,
    horizon_days: int,
    events: ir.Table | None = None,
    activity_event_types: Sequence[str] = (),
) -> ir.Table:
    """Return ``customer_id`` and ``churned`` (1 when no purchase in the horizon window).

    Args:
        transactions: Clean transactions.
        population: Customers to label (a ``customer_id`` column), e.g. the feature table.
        as_of: Cutoff; the window starts here.
        horizon_days: Window length in days.
        events: Clean events, read only when ``activity_event_types`` is not empty.
        activity_event_types: Event types that count as activity as well as purchases.
    """
    rule = inactivity_rule(transactions, as_of, horizon_days, events, activity_event_types)
    return rule.attach(population.select(CUSTOMER))


def contract_rule(
    subscriptions: ir.Table, as_of: date | datetime, horizon_days: int, grace_days: int
) -> LabelRule:
    """Return the ``contract`` rule from subscription coverage (see the module notes)."""
    s = complete_columns(subscriptions, CONTRACTS["subscriptions"])
    start, end = _window(as_of, horizon_days)
    covering = s.filter((s.start_date < start) & (s.end_date.isnull() | (s.end_date >= start)))
    at_risk = covering.select(CUSTOMER).distinct()
    ends = s.filter((s.end_date >= start) & (s.end_date < end)).select(CUSTOMER, e=s.end_date)
    # An end is a lapse unless another subscription covers the customer within the grace gap.
    other = s.select(o_customer=s[CUSTOMER], o_start=s.start_date, o_end=s.end_date)
    grace = ibis.interval(days=grace_days)
    pairs = ends.left_join(
        other,
        [
            ends[CUSTOMER] == other.o_customer,
            other.o_start < ends.e + grace,
            other.o_end.isnull() | (other.o_end > ends.e),
        ],
    )
    per_end = pairs.group_by([CUSTOMER, "e"]).aggregate(n=pairs.o_start.count())
    lapsed = per_end.filter(per_end.n == 0).select(CUSTOMER).distinct()
    evidence = at_risk.left_join(lapsed.mutate(_lapse=ibis.literal(1, "int8")), CUSTOMER)
    evidence = evidence.select(CUSTOMER, _risk=ibis.literal(1, "int8"), _lapse=evidence._lapse)
    return LabelRule(
        evidence,
        lambda j: ibis.ifelse(
            j._risk.isnull(), ibis.null("int8"), j._lapse.fill_null(0).cast("int8")
        ),
        lambda j: j._risk.notnull(),
    )


def churn_date_rule(customers: ir.Table, as_of: date | datetime, horizon_days: int) -> LabelRule:
    """Return the simple ``contract`` rule: 1 when ``churn_date`` is in the horizon.

    Customers whose churn date is before ``as_of`` have left already: null (not at risk).
    """
    start, end = _window(as_of, horizon_days)
    c = customers.filter(customers.churn_date.notnull())
    evidence = c.select(CUSTOMER, _churn=c.churn_date.cast("timestamp"))
    return LabelRule(
        evidence,
        lambda j: ibis.cases(
            (j._churn < start, ibis.null("int8")),
            (j._churn < end, ibis.literal(1, "int8")),
            else_=ibis.literal(0, "int8"),
        ),
        lambda j: j._churn.isnull() | (j._churn >= start),
    )


def column_rule(customers: ir.Table, label_column: str) -> LabelRule:
    """Return the ``column`` rule: the flag as given (bool, 0/1, or yes/no-style text).

    Raises:
        DataContractError: The column is missing.
    """
    if label_column not in customers.columns:
        raise DataContractError(
            f"table 'customers': label column {label_column!r} missing; "
            f"it has {list(customers.columns)}"
        )
    col = customers[label_column]
    if col.type().is_string():
        text = col.strip().lower()
        value = ibis.cases(
            (text.isin(list(_TRUE)), ibis.literal(1, "int8")),
            (text.isin(list(_FALSE)), ibis.literal(0, "int8")),
            else_=ibis.null("int8"),
        )
    else:
        value = (col.cast("float64") != 0).cast("int8")
    return LabelRule(customers.select(CUSTOMER, _flag=value), lambda j: j._flag)


def label_days(config: FeatureConfig, horizon_days: int, has_subscriptions: bool) -> int:
    """Return how many days after a cutoff its label reads (the horizon, plus grace if any)."""
    if config.label == "contract" and has_subscriptions:
        return horizon_days + config.grace_days
    return horizon_days


def label_rule(
    tables: Mapping[str, ir.Table],
    as_of: date | datetime,
    config: FeatureConfig,
    horizon_days: int,
) -> LabelRule:
    """Return the rule of the configured label mode.

    Raises:
        DataContractError: The tables the mode needs are missing.
    """
    customers = tables.get("customers")
    if config.label == "inactivity":
        if "transactions" not in tables:
            raise DataContractError("label 'inactivity' needs the 'transactions' table")
        return inactivity_rule(
            tables["transactions"],
            as_of,
            horizon_days,
            tables.get("events"),
            config.activity_event_types,
        )
    if config.label == "contract":
        if "subscriptions" in tables:
            return contract_rule(tables["subscriptions"], as_of, horizon_days, config.grace_days)
        if customers is None or "churn_date" not in customers.columns:
            raise DataContractError(
                "label 'contract' needs a 'subscriptions' table or customers.churn_date"
            )
        return churn_date_rule(customers, as_of, horizon_days)
    if customers is None or config.label_column is None:
        raise DataContractError("label 'column' needs the 'customers' table and label_column")
    return column_rule(customers, config.label_column)


def churn_labels(
    tables: Mapping[str, ir.Table],
    population: ir.Table,
    as_of: date | datetime,
    config: FeatureConfig,
    horizon_days: int,
) -> ir.Table:
    """Return ``customer_id`` and ``churned`` for ``population`` in the configured label mode."""
    rule = label_rule(tables, as_of, config, horizon_days)
    return rule.attach(population.select(CUSTOMER))
