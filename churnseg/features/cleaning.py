"""Cleaning as Ibis expressions: every input row ends up clean or quarantined with a reason code.

Rules are evaluated in a fixed order and the first that fails names the row's reason, so each row
has exactly one reason and ``rows in = clean rows + quarantined rows`` holds by construction.
Duplicate rules run last and only among rows that passed every other rule, so a duplicate is
never dropped in favour of a copy that was itself quarantined. The expressions are
backend-neutral except for three DuckDB built-ins wrapped below (``try_strptime`` and the two
forms of ``timezone``); docs/data_in.md lists every rule and reason code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, time
from typing import TYPE_CHECKING, Literal, cast

import ibis
import ibis.expr.datatypes as dt
import ibis.expr.operations as ops
import ibis.expr.types as ir

from churnseg.features.contract import CONTRACTS, ColumnKind, TableContract

if TYPE_CHECKING:
    import pandas as pd

REASON = "reason"
ROW = "_row"
# The first failing row rule, while tagging (dropped from the tagged table).
_FAILED = "_failed"
_KEY_HASH = "_key_hash"
_DUPLICATE = "_duplicate"
IS_EXTREME = "is_extreme"
IS_STUB = "is_stub"
# Conform adds one of these per converted column: a value was present but did not convert.
BAD_PREFIX = "_bad_"

# Reason codes; REASONS says what each means, docs/data_in.md the rule order per table.
NULL_CUSTOMER_ID = "null_customer_id"
BAD_TIMESTAMP = "bad_timestamp"
BEFORE_MIN_DATE = "before_min_date"
FUTURE_TIMESTAMP = "future_timestamp"
BAD_AMOUNT = "bad_amount"
AMOUNT_ABOVE_MAX = "amount_above_max"
ZERO_AMOUNT = "zero_amount"
NULL_EVENT_TYPE = "null_event_type"
END_BEFORE_START = "end_before_start"
UNKNOWN_CUSTOMER = "unknown_customer"
DUPLICATE_ROW = "duplicate_row"
DUPLICATE_ORDER_LINE = "duplicate_order_line"
MERGED_CUSTOMER = "merged_duplicate_customer"
NULL_OWNER_ID = "null_owner_id"
BAD_CAPACITY = "bad_capacity"
SUPERSEDED_ASSIGNMENT = "superseded_assignment"
# Given at extraction to CSV lines the reader could not split into fields.
BAD_ENCODING = "bad_encoding"
MALFORMED_LINE = "malformed_line"

REASONS: dict[str, str] = {
    BAD_ENCODING: "CSV line with bytes that are not valid in the configured encoding",
    MALFORMED_LINE: "CSV line with too many or too few fields, or a broken quote",
    NULL_CUSTOMER_ID: "customer id null, blank or a placeholder (cleaning.missing_id_values)",
    BAD_TIMESTAMP: "timestamp missing or matching none of the date formats",
    BEFORE_MIN_DATE: "timestamp before cleaning.min_date",
    FUTURE_TIMESTAMP: "timestamp after cleaning.now (default: the run's clock)",
    BAD_AMOUNT: "amount missing, not a number, NaN or infinite",
    AMOUNT_ABOVE_MAX: "|amount| above cleaning.max_abs_amount",
    ZERO_AMOUNT: "amount exactly 0 (only with cleaning.zero_amounts: quarantine)",
    NULL_EVENT_TYPE: "event without an event type",
    END_BEFORE_START: "subscription ending before it starts",
    UNKNOWN_CUSTOMER: "customer id absent from the clean customers table",
    DUPLICATE_ROW: "exact copy of an earlier clean row",
    DUPLICATE_ORDER_LINE: "order line repeating an earlier one (order, product, qty, amount)",
    MERGED_CUSTOMER: "older version of a customer; the latest row's attributes won",
    NULL_OWNER_ID: "owner id null, blank or a placeholder (cleaning.missing_id_values)",
    BAD_CAPACITY: "owner capacity missing, not a whole number, or negative",
    SUPERSEDED_ASSIGNMENT: "older assignment of a customer; the latest (since, then row) won",
}

DEFAULT_MISSING_IDS = ("null", "none", "nan", "n/a", "na", "unknown", "-", "?")
DEFAULT_MAX_ABS_AMOUNT = 1e8
DEFAULT_EXTREME_QUANTILE = 0.999

# numeric: a float; categorical: text (the most frequent values kept, the rest "other"); date:
# a timestamp, whose age at the cutoff becomes the feature; ignore: not a feature (ids,
# free text, values that change after the fact).
AttributeKind = Literal["numeric", "categorical", "date", "ignore"]


class DataContractError(ValueError):
    """Input that cannot be used at all; the message names table, column and row counts."""


@dataclass(frozen=True)
class CleaningRules:
    """Bounds and policies of the cleaning rules; ``CleaningConfig`` documents each one."""

    min_date: date
    now: datetime
    missing_ids: tuple[str, ...] = DEFAULT_MISSING_IDS
    unknown_customers: Literal["quarantine", "stub"] = "quarantine"
    zero_amounts: Literal["quarantine", "keep"] = "keep"
    max_abs_amount: float | None = DEFAULT_MAX_ABS_AMOUNT
    extreme_quantile: float | None = DEFAULT_EXTREME_QUANTILE
    dedupe_order_lines: bool = True
    fold_case: bool = True


@dataclass(frozen=True)
class ReadOptions:
    """How source values are read: timestamp text formats and the zone of naive timestamps."""

    date_formats: tuple[str, ...] = ()
    time_zone: str | None = None


@dataclass(frozen=True)
class Cleaned:
    """The two halves of a cleaned table: usable rows and quarantined rows with a reason."""

    clean: ir.Table
    quarantine: ir.Table


@dataclass(frozen=True)
class Attributes:
    """Kinds of the customer attribute columns, and the text columns that only spell booleans."""

    kinds: dict[str, AttributeKind]
    boolean_text: frozenset[str] = frozenset()


@dataclass(frozen=True)
class CustomerOptions:
    """Customer-specific cleaning: the version column, attribute types, how dates are read."""

    latest_by: str | None = None
    attributes: Attributes | None = None
    read: ReadOptions = field(default_factory=lambda: ReadOptions())


_IBIS_TYPES: dict[ColumnKind, str] = {
    "string": "string",
    "timestamp": "timestamp",
    "date": "date",
    "float": "float64",
    "int": "int64",
    "bool": "boolean",
}
# Text ending in a UTC offset after a time of day: "2024-01-01T10:00:00+02:00", "...10:00Z".
_OFFSET_PATTERN = r"\d:\d{2}(:\d{2}(\.\d+)?)?\s*(Z|[+-]\d{2}(:?\d{2})?)$"
# Categorical columns of the contract whose values are folded to lower case.
_FOLDED = {
    "transactions": ("category", "channel"),
    "events": ("event_type",),
    "subscriptions": ("plan",),
    "owners": ("regions", "industries"),
    "contact_outcomes": ("channel", "outcome"),
}


@ibis.udf.scalar.builtin(name="try_strptime", signature=((dt.string, dt.string), dt.timestamp))
def _strptime(text: str, fmt: str) -> datetime:  # DuckDB built-in; null when no match
    raise NotImplementedError


@ibis.udf.scalar.builtin(
    name="timezone", signature=((dt.string, dt.timestamp), dt.Timestamp(timezone="UTC"))
)
def _local_to_instant(zone: str, ts: datetime) -> datetime:  # wall time in zone -> instant
    raise NotImplementedError


@ibis.udf.scalar.builtin(
    name="timezone", signature=((dt.string, dt.Timestamp(timezone="UTC")), dt.timestamp)
)
def _instant_to_wall(zone: str, ts: datetime) -> datetime:  # instant -> wall time in zone
    raise NotImplementedError


def _stripped(text: ir.StringValue) -> ir.StringValue:
    """Return ``text`` without leading and trailing whitespace, as ``strip()`` gives it.

    DuckDB's trim with a set of characters costs about 50 ns a value (at 1M customers, 6 s of
    the clean stage for five text columns of the transactions); nearly all values start and
    end with a visible character, which the code point of their first and last character
    shows (every whitespace character strip removes is at most 32), and those are kept as
    they are.
    """
    edges = (text.ascii_str() <= 32) | (text.right(1).ascii_str() <= 32)
    return cast(ir.StringValue, ibis.ifelse(edges, text.strip(), text))


def _blank_to_null(value: ir.Value) -> ir.StringValue:
    text = _stripped(value.cast("string"))
    return cast(ir.StringValue, ibis.ifelse(text == "", ibis.null("string"), text))


def _naive_to_utc(ts: ir.Value, zone: str | None) -> ir.TimestampValue:
    if zone is None or zone == "UTC":
        return cast(ir.TimestampValue, ts)
    return cast(ir.TimestampValue, _instant_to_wall("UTC", _local_to_instant(zone, ts)))


def parse_timestamp(value: ir.Value, options: ReadOptions) -> ir.TimestampValue:
    """Return ``value`` as a naive UTC timestamp; null where it does not convert."""
    vtype = value.type()
    if vtype.is_timestamp():
        if cast(dt.Timestamp, vtype).timezone is not None:
            return cast(ir.TimestampValue, _instant_to_wall("UTC", value))
        return _naive_to_utc(value, options.time_zone)
    if vtype.is_date():
        return _naive_to_utc(value.cast("timestamp"), options.time_zone)
    if not vtype.is_string():
        return _naive_to_utc(value.try_cast("timestamp"), options.time_zone)
    text = _blank_to_null(value)
    if options.date_formats:
        parsed = [_strptime(text, fmt) for fmt in options.date_formats]
        naive = parsed[0] if len(parsed) == 1 else ibis.coalesce(*parsed)
    else:
        naive = text.try_cast("timestamp")
    # DuckDB's cast to a naive timestamp drops an offset silently; read those as instants.
    with_offset = _instant_to_wall("UTC", text.try_cast(dt.Timestamp(timezone="UTC")))
    return cast(
        ir.TimestampValue,
        ibis.ifelse(
            text.re_search(_OFFSET_PATTERN).fill_null(False),
            with_offset,
            _naive_to_utc(naive, options.time_zone),
        ),
    )


def _convert(value: ir.Value, kind: ColumnKind, options: ReadOptions) -> ir.Value:
    """Return ``value`` converted to the contract kind; null where it does not convert."""
    if kind == "string":
        return _blank_to_null(value)
    if kind == "timestamp":
        return parse_timestamp(value, options)
    if kind == "date":
        return parse_timestamp(value, options).date()
    target = _IBIS_TYPES[kind]
    if value.type().is_string():
        return _blank_to_null(value).try_cast(target)
    return value if str(value.type()).split("(")[0] == target else value.try_cast(target)


def _present(value: ir.Value) -> ir.BooleanValue:
    """Return whether the raw value carries anything (not null, not blank text)."""
    if value.type().is_string():
        return cast(ir.BooleanValue, _blank_to_null(value).notnull())
    return value.notnull()


def conform(
    table: ir.Table,
    contract: TableContract,
    name_map: dict[str, str],
    options: ReadOptions | None = None,
) -> ir.Table:
    """Return ``table`` renamed to logical column names and cast to the contract's types.

    Text is trimmed and blank text is null. Values that cannot be converted become null and are
    caught by the rules with a reason; for each converted column a boolean ``_bad_<column>``
    marks rows whose value was present but did not convert. Timestamps end as naive UTC.
    Optional columns the source lacks are added as typed nulls so later code sees one schema;
    source columns outside the contract are kept as they are.

    Raises:
        DataContractError: A required column is missing.
    """
    options = options or ReadOptions()
    source_cols = set(table.columns)
    missing = [col for col in contract.required if name_map.get(col, col) not in source_cols]
    if missing:
        wanted = ", ".join(f"{c!r} (source column {name_map.get(c, c)!r})" for c in missing)
        raise DataContractError(
            f"table {contract.name!r}: required column(s) missing: {wanted}; "
            f"the source has {sorted(c for c in source_cols if c != ROW)}"
        )
    out: dict[str, ir.Value] = {}
    flags: dict[str, ir.Value] = {}
    for col, kind in contract.columns.items():
        src = name_map.get(col, col)
        if src not in source_cols:
            out[col] = ibis.null(_IBIS_TYPES[kind])
            continue
        out[col] = _convert(table[src], kind, options)
        if kind != "string":
            flags[f"{BAD_PREFIX}{col}"] = _present(table[src]) & out[col].isnull()
    mapped = {name_map.get(k, k) for k in contract.columns}
    extras = {c: table[c] for c in table.columns if c not in mapped and c not in out}
    return table.select(**out, **extras, **flags)


# Rows ``check_usable`` reads first: enough to find a good value of each required column.
_USABLE_PREFIX_ROWS = 10_000


def check_usable(
    raw: ir.Table, conformed: ir.Table, contract: TableContract, name_map: dict[str, str]
) -> int:
    """Return the row count after checking the table can be used at all.

    A table is unusable when it has no rows, or when a required column is null everywhere or
    converts nowhere (a wrong column mapping or a wrong type, not a few dirty rows: those are
    quarantined row by row).

    Raises:
        DataContractError: Naming the table, the column, counts and example bad values.
    """

    def counted(rows: ir.Table) -> pd.Series:
        aggs: dict[str, ir.Scalar] = {"rows": rows.count()}
        for col in contract.required:
            flag = f"{BAD_PREFIX}{col}"
            good = rows[col].notnull()
            aggs[f"good_{col}"] = good.sum()
            present = good | rows[flag] if flag in rows.columns else good
            aggs[f"present_{col}"] = present.sum()
        return rows.aggregate(**aggs).execute().iloc[0]

    # A good value of every required column among the first rows settles it without a pass
    # over every row (5 s of the clean stage at 1M customers); the count is the raw table's
    # (a Parquet file's metadata).
    counts = counted(conformed.limit(_USABLE_PREFIX_ROWS))
    if all(int(counts[f"good_{col}"] or 0) > 0 for col in contract.required):
        return int(raw.count().execute())
    counts = counted(conformed)
    rows = int(counts["rows"])
    if rows == 0:
        raise DataContractError(
            f"table {contract.name!r}: the source has no rows; check that sources."
            f"{contract.name} (its path, table or query) points at the data"
        )
    for col, kind in contract.required.items():
        src = name_map.get(col, col)
        where = f"table {contract.name!r}, column {col!r} (source column {src!r})"
        present, good = int(counts[f"present_{col}"] or 0), int(counts[f"good_{col}"] or 0)
        if present == 0:
            raise DataContractError(f"{where}: all {rows} values are null or blank")
        if good == 0:
            examples = raw.filter(_present(raw[src])).select(src).distinct().limit(3).execute()
            shown = ", ".join(repr(v) for v in examples[src].tolist())
            raise DataContractError(
                f"{where}: none of {present} values converts to {kind}; examples: {shown}"
            )
    return rows


def _first_failing(rules: list[tuple[ir.BooleanValue, str]]) -> ir.StringValue:
    """Return the reason of the first rule whose condition is true, else null."""
    if not rules:
        return cast(ir.StringValue, ibis.null("string"))
    return cast(ir.StringValue, ibis.cases(*rules, else_=ibis.null("string")))


def _tag(
    table: ir.Table,
    rules: list[tuple[ir.BooleanValue, str]],
    duplicates: list[tuple[list[ir.Value], ir.BooleanValue | None, str]],
    order_by: list[ir.Value] | None = None,
) -> ir.Table:
    """Tag each row with its first failing rule, then with duplicate rules among the rest.

    Args:
        table: Conformed table with ``_row``.
        rules: Row rules as ``(condition, reason)``, in order.
        duplicates: ``(key columns, extra condition or None, reason)``: a row is a duplicate when
            an earlier passing row (in ``order_by``) has the same key.
        order_by: Which copy is kept (the first); default: the source row order.
    """
    # The first failing rule, computed once: the duplicate checks and the reason all read it
    # (inlined, its lookups such as the unknown-customer join ran once per use).
    t = table.mutate(**{_FAILED: _first_failing(rules)})
    # Each duplicate window sorts the rows it reads (at 1M customers, 23M transaction lines
    # sorted twice were half of the clean stage). A duplicate under any rule shares the
    # columns every rule keys on with another passing row, so only the passing rows whose hash
    # of those columns repeats go through the windows: the same tags (a hash collision only
    # adds a row to check), from a sort of a few rows instead of all.
    candidates = t.filter(t[_FAILED].isnull())
    common = _common_key_columns(t, [keys for keys, _, _ in duplicates])
    if common is not None:  # else (a key is not a plain column) every passing row is checked
        key = ibis.struct({c: candidates[c] for c in common}).hash()
        hashed = candidates.mutate(**{_KEY_HASH: key})
        counts = hashed.group_by(_KEY_HASH).aggregate(_n=hashed.count())
        repeated = counts.filter(counts._n > 1)
        candidates = hashed.filter(hashed[_KEY_HASH].isin(repeated[_KEY_HASH]))
    checks = _duplicate_checks(candidates, duplicates, order_by)
    found = candidates.select(ROW, **{_DUPLICATE: _first_failing(checks)})
    found = found.filter(found[_DUPLICATE].notnull())
    joined = t.left_join(found, ROW)
    reason = ibis.coalesce(joined[_FAILED], joined[_DUPLICATE])
    kept = [c for c in t.columns if c != _FAILED and not c.startswith(BAD_PREFIX)]
    return joined.select(*kept, **{REASON: reason})


def _common_key_columns(t: ir.Table, key_sets: list[list[ir.Value]]) -> list[str] | None:
    """Return the columns every duplicate rule keys on, or None (a key is not a column)."""
    if not key_sets:
        return None
    names: list[list[str]] = []
    for keys in key_sets:
        if not all(isinstance(k.op(), ops.Field) and k.get_name() in t.columns for k in keys):
            return None
        names.append([k.get_name() for k in keys])
    common = [c for c in names[0] if all(c in other for other in names[1:])]
    return common or None


def _duplicate_checks(
    t: ir.Table,
    duplicates: list[tuple[list[ir.Value], ir.BooleanValue | None, str]],
    order_by: list[ir.Value] | None,
) -> list[tuple[ir.BooleanValue, str]]:
    """Return ``(is a duplicate, reason)`` per rule: an earlier passing row has the same key."""
    passing = t[_FAILED].isnull()
    order = t.bind(order_by if order_by is not None else [t[ROW]])
    checks: list[tuple[ir.BooleanValue, str]] = []
    for keys, condition, reason in duplicates:
        window = ibis.window(group_by=[*t.bind(keys), passing], order_by=order)
        duplicate = passing & (ibis.row_number().over(window) > 0)
        if condition is not None:
            duplicate = duplicate & t.bind(condition)[0]
        checks.append((duplicate, reason))
    return checks


def split_tagged(name: str, tagged: ir.Table, rules: CleaningRules | None = None) -> Cleaned:
    """Return the clean and quarantined rows of a tagged table (``reason`` null when clean).

    Clean customers get ``is_stub = false``; clean transactions get ``is_extreme``, computed over
    the clean rows only. Materialising ``tagged`` first (the clean stage writes it once) keeps
    the duplicate windows from running once per output.
    """
    rules = rules or _default_rules()
    clean = tagged.filter(tagged[REASON].isnull()).drop(REASON)
    if name == "customers":
        clean = clean.mutate(**{IS_STUB: ibis.literal(False)})
    elif name == "transactions":
        clean = _extreme(clean, rules.extreme_quantile)
    return Cleaned(clean=clean, quarantine=tagged.filter(tagged[REASON].notnull()))


def _content(table: ir.Table) -> list[ir.Value]:
    """Return every column but the row number and the conversion flags."""
    return [table[c] for c in table.columns if c != ROW and not c.startswith(BAD_PREFIX)]


def _missing_id(ids: ir.StringValue, missing: tuple[str, ...]) -> ir.BooleanValue:
    condition = ids.isnull()
    if missing:
        condition = condition | ids.lower().isin([m.strip().lower() for m in missing])
    return cast(ir.BooleanValue, condition)


def _time_bounds(ts: ir.TimestampValue, rules: CleaningRules) -> list[tuple[ir.BooleanValue, str]]:
    lo = ibis.literal(datetime.combine(rules.min_date, time()))
    hi = ibis.literal(rules.now)
    return [(ts.isnull(), BAD_TIMESTAMP), (ts < lo, BEFORE_MIN_DATE), (ts > hi, FUTURE_TIMESTAMP)]


def _unknown(
    table: ir.Table, customer_ids: ir.Table | None, rules: CleaningRules
) -> list[tuple[ir.BooleanValue, str]]:
    if customer_ids is None or rules.unknown_customers != "quarantine":
        return []
    return [(~table.customer_id.isin(customer_ids.customer_id), UNKNOWN_CUSTOMER)]


def _fold(table: ir.Table, name: str, rules: CleaningRules) -> ir.Table:
    columns = [c for c in _FOLDED.get(name, ()) if c in table.columns]
    if not rules.fold_case or not columns:
        return table
    return table.mutate(**{c: table[c].lower() for c in columns})


def _default_rules() -> CleaningRules:
    return CleaningRules(min_date=date(1, 1, 1), now=datetime.max)


_BOOLEAN_TEXT = ("true", "false", "t", "f", "yes", "no", "y", "n")


# An attribute whose values are (almost) all different is an identifier or free text, never a
# category: one level per customer teaches a model nothing and breaks categorical encoders.
ID_LIKE_SHARE = 0.9
# Below this many rows a column's uniqueness says little.
ID_LIKE_MIN_ROWS = 50
# Column names that mark a unique integer column as an identifier, not an amount.
_ID_NAME = r"(^|_)(id|uuid|guid|key|number|no|code)$"


def infer_attributes(
    customers: ir.Table,
    declared: dict[str, AttributeKind],
    exclude: set[str],
    numeric_min_distinct: int = 20,
    options: ReadOptions | None = None,
    boolean_text: frozenset[str] | None = None,
) -> Attributes:
    """Return numeric, categorical, date or ignore for every attribute column of customers.

    Attributes are the columns outside the contract (minus ``exclude``). Declared kinds win.
    Otherwise: numbers are numeric, except unique integers named like an identifier
    (``customer_no``, ``account_id``: ignored); booleans are categorical; date and timestamp
    columns, and text whose every value reads as a timestamp (ISO or the source's
    ``date_formats``), are dates; text is numeric only when every value parses as a number,
    none has a leading zero (codes like "01234") and it has more than ``numeric_min_distinct``
    distinct values; text whose values are nearly all different (``ID_LIKE_SHARE`` of at least
    ``ID_LIKE_MIN_ROWS`` rows: ids, e-mails, names) is ignored; the rest is categorical.
    Categorical text whose every value spells a boolean (true/false, yes/no, t/f, y/n) is
    marked so cleaning can make it a boolean, as a Parquet or database source would have it.
    ``boolean_text`` gives those columns instead (what a full run found): a few customers'
    rows (an intra-day update) may spell only yes and no in a column that holds other values.
    """
    options = options or ReadOptions()
    skip = set(CONTRACTS["customers"].columns) | exclude | {ROW}
    kinds: dict[str, AttributeKind] = {}
    text: list[str] = []
    integers: list[str] = []
    for col in customers.columns:
        if col in skip or col.startswith(BAD_PREFIX):
            continue
        ctype = customers[col].type()
        if ctype.is_string():
            text.append(col)
        if col in declared:
            kinds[col] = declared[col]
        elif ctype.is_boolean():
            kinds[col] = "categorical"
        elif ctype.is_timestamp() or ctype.is_date():
            kinds[col] = "date"
        elif ctype.is_integer() and re.search(_ID_NAME, col.lower()):
            integers.append(col)
        elif ctype.is_numeric():
            kinds[col] = "numeric"
    if boolean_text is not None and not integers and all(col in kinds for col in text):
        # Nothing left to learn from the rows (an update with the full run's findings).
        ordered = {col: kinds[col] for col in customers.columns if col in kinds}
        found = {c for c in boolean_text if ordered.get(c) == "categorical" and c in text}
        return Attributes(kinds=ordered, boolean_text=frozenset(found))
    aggs: dict[str, ir.Scalar] = {"rows": customers.count()}
    for i, col in enumerate(integers):
        aggs[f"int_distinct{i}"] = customers[col].nunique()
    for i, col in enumerate(text):
        value = _blank_to_null(customers[col])
        aggs[f"n{i}"] = value.count()
        aggs[f"num{i}"] = value.try_cast("float64").count()
        aggs[f"zero{i}"] = value.re_search(r"^[+-]?0\d").fill_null(False).sum()
        aggs[f"distinct{i}"] = value.nunique()
        aggs[f"bool{i}"] = value.lower().isin(_BOOLEAN_TEXT).fill_null(False).sum()
        aggs[f"date{i}"] = parse_timestamp(value, options).count()
    found_boolean: set[str] = set()
    stats = customers.aggregate(**aggs).execute().iloc[0]
    rows = int(stats["rows"])

    def id_like(distinct: int) -> bool:
        return rows >= ID_LIKE_MIN_ROWS and distinct >= ID_LIKE_SHARE * rows

    for i, col in enumerate(integers):
        kinds[col] = "ignore" if id_like(int(stats[f"int_distinct{i}"])) else "numeric"
    for i, col in enumerate(text):
        n, distinct = int(stats[f"n{i}"]), int(stats[f"distinct{i}"])
        numeric = (
            n > 0
            and int(stats[f"num{i}"]) == n
            and int(stats[f"zero{i}"] or 0) == 0
            and distinct > numeric_min_distinct
        )
        if col in kinds:
            pass
        elif numeric:
            kinds[col] = "numeric"
        elif n > 0 and int(stats[f"date{i}"]) == n:
            kinds[col] = "date"
        elif id_like(distinct):
            kinds[col] = "ignore"
        else:
            kinds[col] = "categorical"
        spelled = n > 0 and int(stats[f"bool{i}"] or 0) == n
        if kinds[col] == "categorical" and (
            spelled if boolean_text is None else col in boolean_text
        ):
            found_boolean.add(col)
    ordered = {col: kinds[col] for col in customers.columns if col in kinds}
    return Attributes(kinds=ordered, boolean_text=frozenset(found_boolean))


def _categorical_text(value: ir.Value, boolean: bool, rules: CleaningRules) -> ir.Value:
    """Return categorical text trimmed (and folded), or as booleans when it only spells them."""
    text = _blank_to_null(value)
    if boolean:
        return text.lower().try_cast("boolean")
    return text.lower() if rules.fold_case else text


def tag_customers(
    customers: ir.Table,
    rules: CleaningRules | None = None,
    options: CustomerOptions | None = None,
) -> ir.Table:
    """Return conformed customers with ``reason``: null for the one row kept per id.

    Attributes get their kind (numeric: a float, null where it does not parse; categorical:
    trimmed text, lower-cased with ``fold_case``). Duplicate ids are merged with the latest row
    winning: the largest ``latest_by`` value, then the row read last; an exact copy of the
    winner is a ``duplicate_row``, any other older version ``merged_duplicate_customer``.
    """
    rules = rules or _default_rules()
    options = options or CustomerOptions()
    c = customers
    typed: dict[str, ir.Value] = {}
    attributes = options.attributes or Attributes(kinds={})
    for col, kind in attributes.kinds.items():
        if kind == "numeric":
            typed[col] = _convert(c[col], "float", ReadOptions())
        elif kind == "date":
            typed[col] = _convert(c[col], "timestamp", options.read)
        elif kind == "categorical" and c[col].type().is_string():
            typed[col] = _categorical_text(c[col], col in attributes.boolean_text, rules)
    if typed:
        c = c.mutate(**typed)
    latest = [ibis.desc(c[ROW])]
    if options.latest_by is not None:
        if options.latest_by not in c.columns:
            raise DataContractError(
                f"table 'customers': latest_by column {options.latest_by!r} is not in the "
                f"source; it has {sorted(x for x in customers.columns if x != ROW)}"
            )
        latest.insert(0, c[options.latest_by].desc(nulls_first=False))
    tagged = _tag(
        c,
        [(_missing_id(c.customer_id, rules.missing_ids), NULL_CUSTOMER_ID)],
        [(_content(c), None, DUPLICATE_ROW), ([c.customer_id], None, MERGED_CUSTOMER)],
        order_by=latest,
    )
    # Ignored attributes stay in the quarantine's raw records, never in the clean table.
    ignored = [col for col, kind in attributes.kinds.items() if kind == "ignore"]
    return tagged.drop(*ignored) if ignored else tagged


def clean_customers(
    customers: ir.Table,
    rules: CleaningRules | None = None,
    options: CustomerOptions | None = None,
) -> Cleaned:
    """Split conformed customers into one row per id and the rest (``tag_customers``)."""
    return split_tagged("customers", tag_customers(customers, rules, options), rules)


def _extreme(clean: ir.Table, quantile: float | None) -> ir.Table:
    """Return ``clean`` with ``is_extreme``: |amount| above the table's ``quantile``."""
    if quantile is None:
        return clean.mutate(**{IS_EXTREME: ibis.literal(False)})
    size = clean.amount.abs()
    threshold = size.quantile(quantile).as_scalar()
    return clean.mutate(**{IS_EXTREME: (size > threshold).fill_null(False)})


def tag_transactions(
    transactions: ir.Table, customer_ids: ir.Table | None, rules: CleaningRules
) -> ir.Table:
    """Return conformed transactions with ``reason``: null for usable rows.

    A row is a return when flagged or when its amount is negative, and a return's amount is
    stored negative whatever sign the source used, so returns net against purchases in the
    features and are counted, never thrown away.

    Args:
        transactions: Conformed transactions with a ``_row`` source row number.
        customer_ids: Clean customers (``customer_id`` column), or None to accept every id.
        rules: Bounds and policies.
    """
    t = transactions
    is_return = t.is_return.fill_null(False) | (t.amount < 0).fill_null(False)
    t = t.mutate(is_return=is_return, amount=ibis.ifelse(is_return, -t.amount.abs(), t.amount))
    t = _fold(t, "transactions", rules)
    checks = [(_missing_id(t.customer_id, rules.missing_ids), NULL_CUSTOMER_ID)]
    checks += _time_bounds(t.timestamp, rules)
    checks.append((t.amount.isnull() | t.amount.isnan() | t.amount.isinf(), BAD_AMOUNT))
    if rules.max_abs_amount is not None:
        checks.append((t.amount.abs() > rules.max_abs_amount, AMOUNT_ABOVE_MAX))
    if rules.zero_amounts == "quarantine":
        checks.append((t.amount == 0, ZERO_AMOUNT))
    checks += _unknown(t, customer_ids, rules)
    duplicates: list[tuple[list[ir.Value], ir.BooleanValue | None, str]] = [
        (_content(t), None, DUPLICATE_ROW)
    ]
    if rules.dedupe_order_lines:
        line = [t.customer_id, t.order_id, t["product"], t.quantity, t.amount, t.is_return]
        duplicates.append((line, t.order_id.notnull(), DUPLICATE_ORDER_LINE))
    return _tag(t, checks, duplicates)


def clean_transactions(
    transactions: ir.Table, customer_ids: ir.Table | None, rules: CleaningRules
) -> Cleaned:
    """Split conformed transactions into usable rows (with ``is_extreme``) and the rest."""
    return split_tagged("transactions", tag_transactions(transactions, customer_ids, rules), rules)


def tag_events(events: ir.Table, customer_ids: ir.Table | None, rules: CleaningRules) -> ir.Table:
    """Return conformed events with ``reason`` (same id and time rules as transactions)."""
    e = _fold(events, "events", rules)
    checks = [(_missing_id(e.customer_id, rules.missing_ids), NULL_CUSTOMER_ID)]
    checks += _time_bounds(e.timestamp, rules)
    checks.append((e.event_type.isnull(), NULL_EVENT_TYPE))
    checks += _unknown(e, customer_ids, rules)
    return _tag(e, checks, [(_content(e), None, DUPLICATE_ROW)])


def clean_events(events: ir.Table, customer_ids: ir.Table | None, rules: CleaningRules) -> Cleaned:
    """Split conformed events into usable rows and quarantined rows."""
    return split_tagged("events", tag_events(events, customer_ids, rules), rules)


def tag_subscriptions(
    subscriptions: ir.Table, customer_ids: ir.Table | None, rules: CleaningRules
) -> ir.Table:
    """Return conformed subscriptions with ``reason``: null for usable rows.

    An ``end_date`` that is present but does not parse is a ``bad_timestamp`` (read as null it
    would turn an ended subscription into an active one).
    """
    s = _fold(subscriptions, "subscriptions", rules)
    checks = [(_missing_id(s.customer_id, rules.missing_ids), NULL_CUSTOMER_ID)]
    checks += _time_bounds(s.start_date, rules)
    bad_end = f"{BAD_PREFIX}end_date"
    if bad_end in s.columns:
        checks.append((s[bad_end], BAD_TIMESTAMP))
    checks.append(((s.end_date < s.start_date).fill_null(False), END_BEFORE_START))
    checks += _unknown(s, customer_ids, rules)
    return _tag(s, checks, [(_content(s), None, DUPLICATE_ROW)])


def clean_subscriptions(
    subscriptions: ir.Table, customer_ids: ir.Table | None, rules: CleaningRules
) -> Cleaned:
    """Split conformed subscriptions into usable rows and quarantined rows."""
    return split_tagged(
        "subscriptions", tag_subscriptions(subscriptions, customer_ids, rules), rules
    )


def tag_owners(owners: ir.Table, customer_ids: ir.Table | None, rules: CleaningRules) -> ir.Table:
    """Return conformed owners with ``reason``: missing id, bad capacity, exact copies.

    An owner id that repeats with different values is kept twice here: which row is right
    cannot be guessed, so ``check_unique_owners`` stops the run instead.
    """
    o = _fold(owners, "owners", rules)
    checks = [
        (_missing_id(o.owner_id, rules.missing_ids), NULL_OWNER_ID),
        (o.capacity.isnull() | (o.capacity < 0), BAD_CAPACITY),
    ]
    return _tag(o, checks, [(_content(o), None, DUPLICATE_ROW)])


def check_unique_owners(owners: ir.Table) -> None:
    """Raise when clean owners repeat an id with different values.

    Raises:
        DataContractError: Naming the table, the column, the rows and a few of the ids.
    """
    counts = owners.group_by("owner_id").aggregate(rows=owners.count())
    repeated = counts.filter(counts.rows > 1).execute()
    if len(repeated):
        shown = ", ".join(sorted(map(str, repeated.owner_id))[:5])
        raise DataContractError(
            f"table 'owners': column 'owner_id' repeats with different values in "
            f"{int(repeated.rows.sum())} rows ({len(repeated)} ids, e.g. {shown}); each owner "
            "must appear once, so the run stopped before allocating"
        )


def tag_assignments(
    assignments: ir.Table, customer_ids: ir.Table | None, rules: CleaningRules
) -> ir.Table:
    """Return conformed CRM assignments with ``reason``: one row kept per customer.

    The latest assignment of a customer wins (largest ``since``, then the row read last).
    """
    a = assignments
    checks = [
        (_missing_id(a.customer_id, rules.missing_ids), NULL_CUSTOMER_ID),
        (_missing_id(a.owner_id, rules.missing_ids), NULL_OWNER_ID),
        *_unknown(a, customer_ids, rules),
    ]
    latest = [a.since.desc(nulls_first=False), ibis.desc(a[ROW])]
    return _tag(
        a,
        checks,
        [(_content(a), None, DUPLICATE_ROW), ([a.customer_id], None, SUPERSEDED_ASSIGNMENT)],
        order_by=latest,
    )


def tag_contact_outcomes(
    contacts: ir.Table, customer_ids: ir.Table | None, rules: CleaningRules
) -> ir.Table:
    """Return conformed contact outcomes with ``reason`` (missing id, bad time, unknown)."""
    c = _fold(contacts, "contact_outcomes", rules)
    checks = [
        (_missing_id(c.customer_id, rules.missing_ids), NULL_CUSTOMER_ID),
        *_time_bounds(c.contacted_at, rules),
        *_unknown(c, customer_ids, rules),
    ]
    return _tag(c, checks, [(_content(c), None, DUPLICATE_ROW)])


def tag_table(
    name: str,
    table: ir.Table,
    customer_ids: ir.Table | None,
    rules: CleaningRules,
    customer_options: CustomerOptions | None = None,
) -> ir.Table:
    """Return conformed table ``name`` with each row's ``reason`` (null: clean)."""
    if name == "customers":
        return tag_customers(table, rules, customer_options)
    taggers = {
        "transactions": tag_transactions,
        "events": tag_events,
        "subscriptions": tag_subscriptions,
        "owners": tag_owners,
        "assignments": tag_assignments,
        "contact_outcomes": tag_contact_outcomes,
    }
    if name not in taggers:
        raise KeyError(f"no cleaning rules for table {name!r}; known: {sorted(CONTRACTS)}")
    return taggers[name](table, customer_ids, rules)


def clean_table(
    name: str,
    table: ir.Table,
    customer_ids: ir.Table | None,
    rules: CleaningRules,
    customer_options: CustomerOptions | None = None,
) -> Cleaned:
    """Return the clean and quarantined rows of logical table ``name``."""
    tagged = tag_table(name, table, customer_ids, rules, customer_options)
    return split_tagged(name, tagged, rules)


def stub_customers(customers: ir.Table, *id_tables: ir.Table) -> ir.Table:
    """Return one stub row per id of ``id_tables`` absent from clean ``customers``.

    Stubs have the customers' columns, all null but ``customer_id`` and ``is_stub = true``.
    """
    ids = ibis.union(*(t.select("customer_id") for t in id_tables), distinct=True)
    missing = ids.anti_join(customers.select("customer_id"), "customer_id")
    columns: dict[str, ir.Value] = {}
    for col in customers.columns:
        if col == "customer_id":
            columns[col] = missing.customer_id
        elif col == IS_STUB:
            columns[col] = ibis.literal(True)
        else:
            columns[col] = ibis.null(customers[col].type())
    return missing.select(**columns)


# The column that places a row in time, per table (first seen).
SEEN_AT = {"transactions": "timestamp", "events": "timestamp", "subscriptions": "start_date"}
# Quarantine reasons whose ids are not customers: no id at all, or one the customers table
# (the master list) does not have while cleaning.unknown_customers says to quarantine them.
NOT_CUSTOMERS = (NULL_CUSTOMER_ID, UNKNOWN_CUSTOMER)


def seen_in_quarantine(quarantine: ir.Table, name: str, rules: CleaningRules) -> ir.Table:
    """Return ``customer_id`` and ``first_ts`` of ids that quarantined rows of ``name`` show.

    Such a customer exists even when every one of their rows was rejected (a free order before
    ``zero_amounts: keep``, a duplicated line): they are still known from the first of these
    rows whose time is usable, and null when none is (between ``min_date`` and ``now``).

    Args:
        quarantine: Conformed quarantined rows with ``reason`` (``split_tagged``'s).
        name: The logical table (``SEEN_AT`` names its time column).
        rules: The bounds a usable time lies in.
    """
    q = quarantine.filter(~quarantine[REASON].isin(list(NOT_CUSTOMERS)))
    q = q.filter(q.customer_id.notnull())
    ts = q[SEEN_AT[name]].cast("timestamp")
    lo = ibis.literal(datetime.combine(rules.min_date, time()))
    usable = ts.notnull() & (ts >= lo) & (ts <= ibis.literal(rules.now))
    return q.group_by("customer_id").aggregate(first_ts=ts.min(where=usable))


def raw_rows(raw: ir.Table, quarantine: ir.Table) -> ir.Table:
    """Return the raw source rows of ``quarantine`` (source values as read) with their reason."""
    return raw.inner_join(quarantine.select(ROW, REASON), ROW)


def quarantine_records(rejected: ir.Table, table_name: str, run_id: str | None) -> ir.Table:
    """Return rejected raw rows in the combined quarantine schema.

    Args:
        rejected: Raw source columns with ``_row`` and ``reason`` (``raw_rows``).
        table_name: Logical table the rows came from.
        run_id: Run the rows were rejected in, or None to leave it for the caller.

    Returns:
        ``run_id``, ``table_name``, ``source_row`` (int64), ``reason`` and ``record``: the source
        row as JSON text (raw values; NaN and infinities as bare ``NaN``/``Infinity``).
    """
    source = [c for c in rejected.columns if c not in (ROW, REASON)]
    record = ibis.struct({c: rejected[c] for c in source}).cast("json").cast("string")
    return rejected.select(
        run_id=ibis.literal(run_id, type="string"),
        table_name=ibis.literal(table_name, type="string"),
        source_row=rejected[ROW].cast("int64"),
        reason=rejected[REASON].cast("string"),
        record=record,
    )
