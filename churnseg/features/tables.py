"""The input tables of a feature build and the per-customer pieces built from them."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime

import ibis
import ibis.expr.types as ir

from churnseg.features.cleaning import _IBIS_TYPES, DataContractError
from churnseg.features.contract import CONTRACTS, TableContract
from churnseg.features.timeutil import cutoff_literal

CUSTOMER = "customer_id"
# First activity before the cutoff: it makes a customer known.
FIRST_TS = "first_ts"


class SinceKnown:
    """Fill marker: days since the customer became known (``tenure_days``)."""

    def __repr__(self) -> str:
        return "SINCE_KNOWN"


SINCE_KNOWN = SinceKnown()
Fill = int | float | str | None | SinceKnown


@dataclass(frozen=True)
class Family:
    """Feature columns of one source, one row per customer with rows in it before the cutoff.

    Attributes:
        table: ``customer_id``, optionally ``first_ts`` (first activity before the cutoff, when
            the family has it anyway), then the feature columns in output order.
        fill: Value for a customer with no row (or a null): a constant, None to keep null, or
            ``SINCE_KNOWN`` for days since the customer became known.
    """

    table: ir.Table
    fill: Mapping[str, Fill] = field(default_factory=dict)

    @property
    def features(self) -> list[str]:
        """Return the feature columns in output order."""
        return [c for c in self.table.columns if c not in (CUSTOMER, FIRST_TS)]


def complete_columns(table: ir.Table, contract: TableContract) -> ir.Table:
    """Return ``table`` with every optional contract column it lacks added as typed nulls.

    Clean tables already have them (``cleaning.conform``); hand-built and Spark tables may not.

    Raises:
        DataContractError: A required column is missing.
    """
    missing = [c for c in contract.required if c not in table.columns]
    if missing:
        raise DataContractError(
            f"table {contract.name!r}: required column(s) {missing} missing; "
            f"it has {list(table.columns)}"
        )
    extra = {
        col: ibis.null(_IBIS_TYPES[kind])
        for col, kind in contract.optional.items()
        if col not in table.columns
    }
    return table.mutate(**extra) if extra else table


def checked_tables(tables: Mapping[str, ir.Table]) -> dict[str, ir.Table]:
    """Return the known tables with their optional columns completed.

    Raises:
        DataContractError: An unknown table name, or neither customers nor transactions.
    """
    unknown = sorted(set(tables) - set(CONTRACTS))
    if unknown:
        raise DataContractError(f"unknown table(s) {unknown}; allowed: {sorted(CONTRACTS)}")
    if "customers" not in tables and "transactions" not in tables:
        raise DataContractError("a feature build needs a 'customers' or 'transactions' table")
    return {name: complete_columns(t, CONTRACTS[name]) for name, t in tables.items()}


def column_slug(value: str) -> str:
    """Return ``value`` as a column-name fragment: ``"Paid Search"`` -> ``paid_search``."""
    slug = re.sub(r"[^0-9a-z]+", "_", value.strip().lower()).strip("_")
    return slug or "blank"


def slugs(kind: str, values: Sequence[str]) -> dict[str, str]:
    """Return value -> column fragment for ``values``.

    Raises:
        DataContractError: Two values give the same fragment (the columns would clash).
    """
    out: dict[str, str] = {}
    seen: dict[str, str] = {}
    for value in values:
        slug = column_slug(value)
        if slug in seen and seen[slug] != value:
            raise DataContractError(
                f"{kind} values {seen[slug]!r} and {value!r} both give column name {slug!r}; "
                f"list the ones to keep in features.{kind}"
            )
        seen[slug] = value
        out[value] = slug
    return out


def top_values(table: ir.Table, column: str, limit: int) -> list[str]:
    """Return the ``limit`` most frequent non-null values of ``column`` (ties by value).

    This executes a small query: the levels decide which feature columns exist.
    """
    col = table[column]
    counts = table.filter(col.notnull()).group_by(column).aggregate(n=col.count())
    top = counts.order_by([counts.n.desc(), counts[column]]).limit(limit).execute()
    return [str(v) for v in top[column]]


def first_activity(table: ir.Table, column: str, as_of: date | datetime) -> ir.Table:
    """Return ``customer_id`` and ``first_ts``: the earliest ``column`` before ``as_of``.

    A filtered aggregate over the whole table rather than a filter first: a filter identical to
    a family's would be shared with it, and DuckDB materialises shared inputs instead of
    streaming them.
    """
    ts = table[column].cast("timestamp")
    first = table.group_by(CUSTOMER).aggregate(
        **{FIRST_TS: ts.min(where=ts < cutoff_literal(as_of))}
    )
    return first.filter(first[FIRST_TS].notnull())
