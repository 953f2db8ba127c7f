"""Cleaning as Ibis expressions: every input row ends up clean or quarantined with a reason code.

Rules are evaluated in a fixed order and the first that fails names the row's reason, so each row
has exactly one reason and ``rows in = clean rows + quarantined rows`` holds by construction.
The expressions are backend-neutral: DuckDB by default, Spark or a warehouse through Ibis.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time

import ibis
import ibis.expr.types as ir

from churnseg.features.contract import CONTRACTS, TableContract

REASON = "reason"
ROW = "_row"

# Reason codes, documented for ops in docs/ and in the quarantine table.
NULL_CUSTOMER_ID = "null_customer_id"
BAD_TIMESTAMP = "bad_timestamp"
BEFORE_MIN_DATE = "before_min_date"
FUTURE_TIMESTAMP = "future_timestamp"
BAD_AMOUNT = "bad_amount"
ZERO_AMOUNT = "zero_amount"
UNKNOWN_CUSTOMER = "unknown_customer"
DUPLICATE_ROW = "duplicate_row"
DUPLICATE_ORDER_LINE = "duplicate_order_line"
MERGED_CUSTOMER = "merged_duplicate_customer"


class DataContractError(ValueError):
    """Input that cannot be used at all; the message names table, column and row counts."""


@dataclass(frozen=True)
class CleaningRules:
    """Bounds the cleaning rules need; see ``CleaningConfig`` for the configurable defaults."""

    min_date: date
    now: datetime


@dataclass(frozen=True)
class Cleaned:
    """The two halves of a cleaned table: usable rows and quarantined rows with a reason."""

    clean: ir.Table
    quarantine: ir.Table


_IBIS_TYPES = {
    "string": "string",
    "timestamp": "timestamp",
    "date": "date",
    "float": "float64",
    "int": "int64",
    "bool": "boolean",
}


def conform(table: ir.Table, contract: TableContract, name_map: dict[str, str]) -> ir.Table:
    """Return ``table`` renamed to logical column names and cast to the contract's types.

    Values that cannot be cast become null (and are then caught by the rules with a reason);
    optional columns the source lacks are added as typed nulls so later code sees one schema.

    Raises:
        DataContractError: A required column is missing.
    """
    source_cols = set(table.columns)
    missing = [col for col in contract.required if name_map.get(col, col) not in source_cols]
    if missing:
        wanted = ", ".join(f"{c!r} (source column {name_map.get(c, c)!r})" for c in missing)
        raise DataContractError(
            f"table {contract.name!r}: required column(s) missing: {wanted}; "
            f"the source has {sorted(source_cols)}"
        )
    out: dict[str, ir.Value] = {}
    for col, kind in contract.columns.items():
        src = name_map.get(col, col)
        dtype = _IBIS_TYPES[kind]
        if src not in source_cols:
            out[col] = ibis.null(dtype)
            continue
        value = table[src]
        if kind == "string":
            value = value.cast("string").strip()
            value = ibis.ifelse(value == "", ibis.null("string"), value)
        elif str(value.type()).split("(")[0] != dtype:
            value = value.try_cast(dtype)
        out[col] = value
    extras = {
        c: table[c]
        for c in table.columns
        if c not in {name_map.get(k, k) for k in contract.columns} and c not in out
    }
    return table.select(**out, **extras)


def _first_failing(*rules: tuple[ir.BooleanValue, str]) -> ir.StringValue:
    """Return the reason of the first rule whose condition is true, else null."""
    return ibis.cases(*rules, else_=ibis.null("string"))


def _split(table: ir.Table, reason: ir.StringValue) -> Cleaned:
    tagged = table.mutate(**{REASON: reason})
    clean = tagged.filter(tagged[REASON].isnull()).drop(REASON)
    quarantine = tagged.filter(tagged[REASON].notnull())
    return Cleaned(clean=clean, quarantine=quarantine)


def _time_bounds(ts: ir.TimestampValue, rules: CleaningRules) -> list[tuple[ir.BooleanValue, str]]:
    lo = ibis.literal(datetime.combine(rules.min_date, time()))
    hi = ibis.literal(rules.now)
    return [(ts.isnull(), BAD_TIMESTAMP), (ts < lo, BEFORE_MIN_DATE), (ts > hi, FUTURE_TIMESTAMP)]


def clean_customers(customers: ir.Table) -> Cleaned:
    """Split conformed customers into one row per id and the rest.

    Duplicate ids are merged with the latest attributes winning: the row read last (``_row``).
    """
    window = ibis.window(group_by=customers.customer_id, order_by=ibis.desc(customers[ROW]))
    rank = ibis.row_number().over(window)
    return _split(
        customers,
        _first_failing(
            (customers.customer_id.isnull(), NULL_CUSTOMER_ID),
            (rank > 0, MERGED_CUSTOMER),
        ),
    )


def clean_transactions(
    transactions: ir.Table, customer_ids: ir.Table | None, rules: CleaningRules
) -> Cleaned:
    """Split conformed transactions into usable rows and quarantined rows.

    Negative amounts are returns whatever the source flag says (they are netted in features,
    never dropped); zero amounts carry no information and are quarantined.

    Args:
        transactions: Conformed transactions with a ``_row`` source row number.
        customer_ids: Clean customers (``customer_id`` column), or None to accept every id.
        rules: Date bounds.
    """
    t = transactions
    t = t.mutate(is_return=(t.amount < 0) | t.is_return.fill_null(False))
    content = [c for c in t.columns if c != ROW]
    dup_rank = ibis.row_number().over(ibis.window(group_by=content, order_by=t[ROW]))
    line_key = [t.order_id, t.product, t.quantity, t.amount, t.is_return]
    line_rank = ibis.row_number().over(ibis.window(group_by=line_key, order_by=t[ROW]))
    checks: list[tuple[ir.BooleanValue, str]] = [(t.customer_id.isnull(), NULL_CUSTOMER_ID)]
    checks += _time_bounds(t.timestamp, rules)
    checks += [
        (t.amount.isnull() | t.amount.isnan() | t.amount.isinf(), BAD_AMOUNT),
        (t.amount == 0, ZERO_AMOUNT),
    ]
    if customer_ids is not None:
        known = t.customer_id.isin(customer_ids.customer_id)
        checks.append((~known, UNKNOWN_CUSTOMER))
    checks += [
        (dup_rank > 0, DUPLICATE_ROW),
        (t.order_id.notnull() & (line_rank > 0), DUPLICATE_ORDER_LINE),
    ]
    return _split(t, _first_failing(*checks))


def clean_events(events: ir.Table, customer_ids: ir.Table | None, rules: CleaningRules) -> Cleaned:
    """Split conformed events into usable rows and quarantined rows (same id and time rules)."""
    e = events.mutate(event_type=events.event_type.lower())
    content = [c for c in e.columns if c != ROW]
    dup_rank = ibis.row_number().over(ibis.window(group_by=content, order_by=e[ROW]))
    checks: list[tuple[ir.BooleanValue, str]] = [(e.customer_id.isnull(), NULL_CUSTOMER_ID)]
    checks += _time_bounds(e.timestamp, rules)
    if customer_ids is not None:
        checks.append((~e.customer_id.isin(customer_ids.customer_id), UNKNOWN_CUSTOMER))
    checks.append((dup_rank > 0, DUPLICATE_ROW))
    return _split(e, _first_failing(*checks))


def clean_subscriptions(
    subscriptions: ir.Table, customer_ids: ir.Table | None, rules: CleaningRules
) -> Cleaned:
    """Split conformed subscriptions into usable rows and quarantined rows."""
    s = subscriptions
    content = [c for c in s.columns if c != ROW]
    dup_rank = ibis.row_number().over(ibis.window(group_by=content, order_by=s[ROW]))
    checks: list[tuple[ir.BooleanValue, str]] = [(s.customer_id.isnull(), NULL_CUSTOMER_ID)]
    checks += _time_bounds(s.start_date, rules)
    if customer_ids is not None:
        checks.append((~s.customer_id.isin(customer_ids.customer_id), UNKNOWN_CUSTOMER))
    checks.append((dup_rank > 0, DUPLICATE_ROW))
    return _split(s, _first_failing(*checks))


def clean_table(
    name: str,
    table: ir.Table,
    customer_ids: ir.Table | None,
    rules: CleaningRules,
) -> Cleaned:
    """Dispatch to the cleaning rules of logical table ``name``."""
    if name == "customers":
        return clean_customers(table)
    cleaners = {
        "transactions": clean_transactions,
        "events": clean_events,
        "subscriptions": clean_subscriptions,
    }
    if name not in cleaners:
        raise KeyError(f"no cleaning rules for table {name!r}; known: {sorted(CONTRACTS)}")
    return cleaners[name](table, customer_ids, rules)
