"""The whole feature table as of a cutoff: every family the available tables allow, joined.

``build_features`` is one Ibis expression: DuckDB runs it by default, Spark or a warehouse
through Ibis. Only the levels that decide columns (channels, event types) are looked up eagerly,
and only when the config does not list them.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

import ibis.expr.types as ir

from churnseg.features.attributes import attribute_features, categorical_attributes
from churnseg.features.behaviour import (
    known_customers,
    lines_before,
    order_features,
    orders_before,
    overdue_columns,
    purchase_day_features,
    purchase_days,
)
from churnseg.features.cleaning import DataContractError
from churnseg.features.events import event_features, events_before
from churnseg.features.labels import LABEL
from churnseg.features.mix import basket_size, mix_features
from churnseg.features.subscriptions import subscription_features
from churnseg.features.tables import (
    CUSTOMER,
    FIRST_TS,
    SinceKnown,
    checked_tables,
    first_activity,
    slugs,
    top_values,
)
from churnseg.features.timeutil import days_before

if TYPE_CHECKING:
    from churnseg.features.history import PreparedHistory
    from churnseg.features.settings import FeatureConfig

TENURE = "tenure_days"
# Where first activity is read besides the orders: any row before the cutoff makes a customer
# known.
ACTIVITY = (("events", "timestamp"), ("subscriptions", "start_date"))


def _not_attributes(config: FeatureConfig) -> set[str]:
    """Return the customers columns that are never attributes: the label and its column."""
    return {LABEL, config.label_column} if config.label_column else {LABEL}


def resolve_levels(
    tables: Mapping[str, ir.Table], as_of: date | datetime, config: FeatureConfig
) -> FeatureConfig:
    """Return ``config`` with ``channels``, ``event_types`` and ``attribute_levels`` listed.

    Levels the config leaves open are the ``max_levels`` most frequent ones before ``as_of``, so
    they never depend on later data (customer attributes carry no time: their most frequent
    values in the table). Resolve them once at the last cutoff of a build and pass
    the result to every cutoff: the column set is then the same for all of them.
    """
    update: dict[str, Any] = {}
    if config.attribute_levels is None:
        attribute_levels: dict[str, list[str]] = {}
        if "customers" in tables:
            customers = tables["customers"]
            for name in categorical_attributes(customers, _not_attributes(config)):
                attribute_levels[name] = top_values(customers, name, config.max_levels)
        update["attribute_levels"] = attribute_levels
    if config.channels is None:
        channels: list[str] = []
        if "transactions" in tables:
            channels = top_values(
                lines_before(tables["transactions"], as_of), "channel", config.max_levels
            )
        update["channels"] = channels
    if config.event_types is None:
        types: list[str] = []
        if "events" in tables:
            types = top_values(
                events_before(tables["events"], as_of), "event_type", config.max_levels
            )
        update["event_types"] = types
    return config.model_copy(update=update) if update else config


def build_features(
    tables: Mapping[str, ir.Table],
    as_of: date | datetime,
    config: FeatureConfig,
    seen: ir.Table | None = None,
    undated_known: bool = False,
    history: PreparedHistory | None = None,
) -> ir.Table:
    """Return one row per customer known at ``as_of`` with every feature, from data before it.

    Args:
        tables: Clean tables by logical name (``customers``, ``transactions``, ``events``,
            ``subscriptions``); at least customers or transactions. Families come only from the
            tables given, so the column set is fixed by which tables a build has.
        as_of: Cutoff (a date means midnight); rows at or after it are never read, except
            future subscription end dates when ``config.subscription_end_known`` says so.
        config: Windows and levels; see ``FeatureConfig``.
        seen: ``customer_id`` and ``first_ts`` of every id any source showed, quarantined rows
            included (the clean stage's ``seen`` table): such a customer is known from
            ``first_ts`` even when none of their rows is clean, and gets the features of a
            customer without activity.
        undated_known: Also keep customers-table rows without a signup date or any activity
            (the scoring snapshot: every customer on the books gets a score). Label mode
            ``column`` keeps them at every cutoff.
        history: The transactions' orders and purchase days prepared once for several
            cutoffs (``history.prepare_history``); used when it serves ``as_of``, for the
            same table faster.

    Returns:
        ``customer_id``, ``tenure_days`` (days since known: the earliest of signup and first
        activity), then the columns of ``behaviour.order_features``,
        ``behaviour.purchase_day_features`` with ``overdue_ratio`` / ``overdue_z``,
        ``mix.mix_features`` with ``basket_size``, ``events.event_features``,
        ``subscriptions.subscription_features`` and the customer attributes
        (``attributes.attribute_features``).

    Raises:
        DataContractError: Unknown tables, required columns missing, or clashing column names.
    """
    t = checked_tables(tables)
    config = resolve_levels(t, as_of, config)
    windows = list(config.windows)
    families = []
    if "transactions" in t:
        tx = t["transactions"]
        if history is not None and history.serves(as_of):
            orders, days = history.orders_before(as_of), history.purchase_days(as_of)
        else:
            orders, days = orders_before(tx, as_of), purchase_days(tx, as_of)
        slope = (config.slope_bucket_days, config.slope_buckets)
        families.append(order_features(orders, as_of, windows, *slope))
        families.append(purchase_day_features(days, config.btyd_period_days))
        channels = list(config.channels or [])
        families.append(mix_features(tx, as_of, channels, slugs("channels", channels)))
    if "events" in t:
        types = list(config.event_types or [])
        families.append(
            event_features(t["events"], as_of, windows, types, slugs("event_types", types))
        )
    if "subscriptions" in t:
        families.append(
            subscription_features(
                t["subscriptions"],
                as_of,
                config.subscription_term_days,
                config.subscription_end_known,
            )
        )
    customers = t.get("customers")
    # The order family has the first order already; reading it twice costs a 1M-row CTE in
    # DuckDB, less than another pass over every transaction line.
    firsts = [f.table for f in families if FIRST_TS in f.table.columns]
    firsts += [first_activity(t[name], column, as_of) for name, column in ACTIVITY if name in t]
    if seen is not None:
        firsts.append(first_activity(seen, FIRST_TS, as_of))
    undated = undated_known or config.label == "column"
    population = known_customers(customers, firsts, as_of, undated_known=undated)
    if customers is not None:
        families.append(
            attribute_features(customers, as_of, _not_attributes(config), config.attribute_levels)
        )

    seen = {CUSTOMER, TENURE, "basket_size", "overdue_ratio", "overdue_z"}  # + derived
    for family in families:
        clash = seen.intersection(family.features)
        if clash:
            raise DataContractError(
                f"feature column(s) {sorted(clash)} appear twice; is a customers attribute "
                "named like a feature?"
            )
        seen.update(family.features)

    j = population
    for family in families:
        table = family.table
        j = j.left_join(table.drop(FIRST_TS) if FIRST_TS in table.columns else table, CUSTOMER)
    tenure = days_before(j.start_ts, as_of)
    columns: dict[str, ir.Value] = {TENURE: tenure}
    for family in families:
        for name in family.features:
            fill = family.fill.get(name)
            value = j[name]
            if isinstance(fill, SinceKnown):
                value = value.fill_null(tenure)
            elif fill is not None:
                value = value.fill_null(fill)
            columns[name] = value
            # Columns that combine two families follow the last column they need.
            if name == "gap_std_days":
                columns.update(
                    overdue_columns(columns["recency_days"], columns["gap_mean_days"], value)
                )
            if name == "purchase_units":
                columns["basket_size"] = basket_size(value, columns["frequency"])
    return j.select(CUSTOMER, **columns)
