"""Extract, clean and plan stages: raw sources to clean Parquet tables and the cutoff plan."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import ibis
import ibis.expr.types as ir
import mlflow
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from ibis.backends.duckdb import Backend as DuckDBBackend

from churnseg.features.cleaning import (
    BAD_ENCODING,
    BAD_TIMESTAMP,
    BEFORE_MIN_DATE,
    FUTURE_TIMESTAMP,
    IS_STUB,
    MALFORMED_LINE,
    NULL_CUSTOMER_ID,
    REASON,
    ROW,
    SEEN_AT,
    UNKNOWN_CUSTOMER,
    AttributeKind,
    Attributes,
    CleaningRules,
    CustomerOptions,
    ReadOptions,
    check_unique_owners,
    check_usable,
    conform,
    infer_attributes,
    quarantine_records,
    raw_rows,
    seen_in_quarantine,
    split_tagged,
    stub_customers,
    tag_table,
)
from churnseg.features.contract import CONTRACTS
from churnseg.features.labels import label_days
from churnseg.features.snapshots import (
    CutoffPlan,
    HistoryTooShortError,
    plan_cutoffs,
    snapshot_plan,
)
from churnseg.pipelines.config import Config, SourceConfig
from churnseg.pipelines.quality import (
    DATE_COLUMNS,
    QUARANTINE_FILE,
    QUARANTINE_SCHEMA,
    TableQuality,
    profile_table,
    quality_dict,
    quality_markdown,
    reason_counts,
)
from churnseg.pipelines.sources import (
    PARQUET_WRITE_OPTIONS,
    REJECTS_SUFFIX,
    connect_engine,
    extract_sources,
    read_extracted,
)
from churnseg.pipelines.stages.run_folder import (
    ALLOCATION_TABLES,
    CLEAN_ORDER,
    RunPaths,
    ensure_sample,
)

# Ids that only quarantined rows show, with when they were first seen (``features.build``).
SEEN_FILE = "seen.parquet"


class DataQualityError(RuntimeError):
    """Too many rows were quarantined; the run stops before training or publishing."""


def extract_stage(config: Config, paths: RunPaths) -> dict[str, int]:
    """Copy every source into the run folder; return source rows per table.

    Raises:
        SourceError: A source cannot be read (the message names the table and location).
    """
    ensure_sample(config)
    counts = extract_sources(config, paths.raw)
    if mlflow.active_run() is not None:
        mlflow.log_metrics({f"rows_read_{t}": n for t, n in counts.items()})
    return counts


def _cleaning_rules(config: Config) -> CleaningRules:
    """Return the library's cleaning rules from the ``cleaning`` config section."""
    c = config.cleaning
    now = (
        datetime.combine(c.now + timedelta(days=1), datetime.min.time())
        if c.now
        else datetime.now(UTC).replace(tzinfo=None)
    )
    return CleaningRules(
        min_date=c.min_date,
        now=now,
        missing_ids=tuple(c.missing_id_values),
        unknown_customers=c.unknown_customers,
        zero_amounts=c.zero_amounts,
        max_abs_amount=c.max_abs_amount,
        extreme_quantile=c.extreme_quantile,
        dedupe_order_lines=c.dedupe_order_lines,
        fold_case=c.fold_case,
    )


ATTRIBUTES_FILE = "attributes.json"


def read_attributes(clean: Path) -> tuple[dict[str, str], list[str]]:
    """Return the attribute kinds and boolean text columns a clean folder's run used.

    Empty without a customers table; folders of earlier versions hold the kinds alone.
    """
    path = clean / ATTRIBUTES_FILE
    written = json.loads(path.read_text()) if path.exists() else {}
    if "kinds" not in written:
        return written, []
    return dict(written["kinds"]), list(written["boolean_text"])


def _customer_options(
    conformed: ir.Table,
    source: SourceConfig,
    config: Config,
    options: ReadOptions,
    known: dict[str, AttributeKind] | None = None,
    boolean_text: frozenset[str] | None = None,
) -> CustomerOptions:
    """Return attribute kinds (declared or inferred) and print what was inferred.

    ``known``: the kinds a full run settled on (an intra-day update's few rows cannot tell a
    number from a category); they are not printed again.
    """
    exclude = {source.latest_by} if source.latest_by else set()
    if config.features.label_column:  # the label is not an attribute
        exclude.add(config.features.label_column)
    declared: dict[str, AttributeKind] = {**(known or {}), **source.attributes}
    attributes = infer_attributes(
        conformed, declared, exclude, config.cleaning.numeric_min_distinct, options, boolean_text
    )
    inferred = {c: k for c, k in attributes.kinds.items() if c not in declared}
    if inferred:
        shown = ", ".join(f"{c}={k}" for c, k in inferred.items())
        # A printed summary, so a wrong guess is seen; sources.customers.attributes fixes it.
        print(f"customers attributes inferred: {shown}")
    return CustomerOptions(latest_by=source.latest_by, attributes=attributes, read=options)


def clean_stage(
    config: Config,
    paths: RunPaths,
    scoped: bool = False,
    attribute_kinds: dict[str, AttributeKind] | None = None,
    con: DuckDBBackend | None = None,
    boolean_text: frozenset[str] | None = None,
) -> dict[str, TableQuality]:
    """Conform, validate and clean every extracted table; write clean and quarantine files.

    Writes ``clean/<table>.parquet``, ``quarantine/<table>.parquet`` (raw source columns, ``_row``
    and ``reason``), ``quarantine/<table>.rejects.parquet`` for CSV lines the reader rejected,
    and ``quarantine.parquet`` in the run folder: every rejected row of every table in the fixed
    schema ``quality.QUARANTINE_SCHEMA`` (``run_id`` is the active MLflow run's, else null).
    Logs counts and the quality report to the active MLflow run, if any.

    ``scoped``: the extract holds a few customers' rows (an intra-day update): a table may be
    empty, and only the clean tables and the ids quarantined rows show are written (no
    quarantine, no report: returns an empty dict); the full runs judge each table as a whole.
    ``attribute_kinds`` then gives the customer attributes' kinds the full run inferred, and
    ``boolean_text`` the text columns it read as booleans; every run writes both to
    ``clean/attributes.json`` (``read_attributes``).

    ``con``: run on this DuckDB connection (the API's warm one) instead of a new one.

    Raises:
        DataContractError: A table lacks a required column, has no rows, or a required column
            is null or unconvertible everywhere.
        DataQualityError: A table lost more than ``cleaning.max_quarantine_share`` of its rows.
    """
    paths.clean.mkdir(parents=True, exist_ok=True)
    paths.quarantine.mkdir(parents=True, exist_ok=True)
    rules = _cleaning_rules(config)
    con = con if con is not None else connect_engine(config.engine)
    active = mlflow.active_run()
    run_id = active.info.run_id if active is not None else None
    counts: dict[str, tuple[int, dict[str, int]]] = {}
    records: list[ir.Table] = []
    attributes: dict[str, str] = {}
    customer_ids = None
    seen_parts: list[Path] = []
    for name in (*CLEAN_ORDER, *ALLOCATION_TABLES):
        if name not in config.sources:
            continue
        source = config.sources[name]
        raw = read_extracted(con, paths.raw / f"{name}.parquet")
        options = ReadOptions(tuple(source.date_formats), source.time_zone)
        conformed = conform(raw, CONTRACTS[name], source.columns, options)
        rows = 0 if scoped else check_usable(raw, conformed, CONTRACTS[name], source.columns)
        customer_options = None
        if name == "customers":
            customer_options = _customer_options(
                conformed, source, config, options, attribute_kinds, boolean_text
            )
            found = customer_options.attributes or Attributes(kinds={})
            attributes = dict(found.kinds)
            written = {"kinds": attributes, "boolean_text": sorted(found.boolean_text)}
            (paths.clean / ATTRIBUTES_FILE).write_text(json.dumps(written))
        # Written once, so the duplicate windows run once for both outputs.
        tagged_file = paths.clean / f"{name}.tagged.parquet"
        tagged = tag_table(name, conformed, customer_ids, rules, customer_options)
        con.to_parquet(tagged, tagged_file, **PARQUET_WRITE_OPTIONS)
        result = split_tagged(name, con.read_parquet(tagged_file), rules)
        clean_file = paths.clean / f"{name}.parquet"
        con.to_parquet(result.clean.drop(ROW), clean_file, **PARQUET_WRITE_OPTIONS)
        if scoped:  # no quarantine report: only the clean rows and the ids they show
            if name in SEEN_AT:
                seen_parts.append(paths.clean / f"{name}.seen.parquet")
                con.to_parquet(seen_in_quarantine(result.quarantine, name, rules), seen_parts[-1])
            tagged_file.unlink()
            if name == "customers":
                customer_ids = con.read_parquet(clean_file).select("customer_id")
            continue
        quarantine_file = paths.quarantine / f"{name}.parquet"
        con.to_parquet(raw_rows(raw, result.quarantine), quarantine_file, **PARQUET_WRITE_OPTIONS)
        if name in SEEN_AT:
            seen_parts.append(paths.clean / f"{name}.seen.parquet")
            con.to_parquet(seen_in_quarantine(result.quarantine, name, rules), seen_parts[-1])
        tagged_file.unlink()
        quarantined = con.read_parquet(quarantine_file)
        by_reason = reason_counts(quarantined)
        records.append(quarantine_records(quarantined, name, run_id))
        rejects_file = paths.raw / f"{name}{REJECTS_SUFFIX}"
        if rejects_file.exists():
            shutil.copyfile(rejects_file, paths.quarantine / rejects_file.name)
            rejected = con.read_parquet(rejects_file)
            rows += int(rejected.count().execute())
            for reason, n in reason_counts(rejected).items():
                by_reason[reason] = by_reason.get(reason, 0) + n
            records.append(
                rejected.select(
                    run_id=ibis.literal(run_id, type="string"),
                    table_name=ibis.literal(name, type="string"),
                    source_row=rejected.source_row,
                    reason=rejected[REASON],
                    record=rejected.record,
                )
            )
        counts[name] = (rows, by_reason)
        if name == "customers":
            customer_ids = con.read_parquet(clean_file).select("customer_id")
        elif name == "owners":
            check_unique_owners(con.read_parquet(clean_file))
    stubs = _add_stub_customers(con, config, paths)
    _write_seen(con, seen_parts, config, paths)
    if scoped:
        return {}
    _write_quarantine(con, records, paths.root / QUARANTINE_FILE)
    report = {
        name: profile_table(
            rows,
            con.read_parquet(paths.clean / f"{name}.parquet"),
            by_reason,
            DATE_COLUMNS.get(name),
            stubs if name == "customers" else 0,
        )
        for name, (rows, by_reason) in counts.items()
    }
    _log_quality(report, attributes)
    if not scoped:
        _check_quarantine_share(report, config.cleaning.max_quarantine_share)
    return report


def _write_seen(con: DuckDBBackend, parts: list[Path], config: Config, paths: RunPaths) -> None:
    """Write ``clean/seen.parquet``: ids quarantined rows show, with when they were first seen.

    An id whose rows all had unusable times is first seen on the data's last day of clean
    activity (``activity_range``), so it is scored at the default cutoff without entering
    earlier (training) snapshots. In an update that day is the last of the update's own rows,
    not the whole data's: such an id's tenure can differ from a full build's.
    """
    if not parts:
        return
    seen = ibis.union(*(con.read_parquet(p) for p in parts), distinct=False)
    seen = seen.group_by("customer_id").aggregate(first_ts=seen.first_ts.min())
    undated = int(seen.filter(seen.first_ts.isnull()).count().execute()) > 0
    _, last = activity_range(config, paths, con) if undated else (None, None)
    if last is not None:
        fallback = datetime.combine(last, datetime.min.time())
        seen = seen.mutate(first_ts=seen.first_ts.fill_null(ibis.literal(fallback)))
    con.to_parquet(seen.filter(seen.first_ts.notnull()), paths.clean / SEEN_FILE)
    for part in parts:
        part.unlink()


def _write_quarantine(con: DuckDBBackend, records: list[ir.Table], path: Path) -> None:
    """Write the combined quarantine in batches with exactly ``QUARANTINE_SCHEMA``."""
    if not records:
        pq.write_table(QUARANTINE_SCHEMA.empty_table(), path)
        return
    staged = path.with_suffix(".staged.parquet")
    con.to_parquet(ibis.union(*records) if len(records) > 1 else records[0], staged)
    # DuckDB marks constant columns NOT NULL; the published schema is fixed, so rewrite it.
    with pq.ParquetWriter(path, QUARANTINE_SCHEMA) as writer:
        for batch in pq.ParquetFile(staged).iter_batches(batch_size=100_000):
            writer.write_table(pa.Table.from_batches([batch]).cast(QUARANTINE_SCHEMA))
    staged.unlink()


def _add_stub_customers(con: DuckDBBackend, config: Config, paths: RunPaths) -> int:
    """Append stub customers for ids only other tables know (``unknown_customers: stub``)."""
    customers_file = paths.clean / "customers.parquet"
    if config.cleaning.unknown_customers != "stub" or not customers_file.exists():
        return 0
    others = [
        con.read_parquet(paths.clean / f"{name}.parquet")
        for name in CLEAN_ORDER[1:]
        if (paths.clean / f"{name}.parquet").exists()
    ]
    if not others:
        return 0
    customers = con.read_parquet(customers_file)
    stubs = stub_customers(customers, *others)
    staged = customers_file.with_suffix(".with_stubs.parquet")
    con.to_parquet(ibis.union(customers, stubs), staged)
    staged.replace(customers_file)
    return int(con.read_parquet(customers_file)[IS_STUB].sum().execute())


def _log_quality(report: dict[str, TableQuality], attributes: dict[str, str]) -> None:
    """Log counts by reason as metrics and the report as JSON and Markdown (active run only)."""
    if mlflow.active_run() is None:
        return
    metrics: dict[str, float] = {}
    for table, q in report.items():
        metrics[f"rows_clean_{table}"] = q.clean
        metrics[f"rows_quarantined_{table}"] = q.quarantined
        for reason, n in q.by_reason.items():
            metrics[f"quarantine_{table}_{reason}"] = n
        for flag, n in q.flagged.items():
            metrics[f"rows_{flag}_{table}"] = n
    mlflow.log_metrics(metrics)
    mlflow.log_dict(quality_dict(report, attributes), "data_quality.json")
    mlflow.log_text(quality_markdown(report, attributes), "data_quality.md")


# What to look at first when a reason dominates a table's quarantine.
_REASON_HINTS = {
    BAD_ENCODING: "set sources.{table}.encoding (utf-8, latin-1, utf-16)",
    MALFORMED_LINE: "check sources.{table}.delimiter and header",
    BAD_TIMESTAMP: "check sources.{table}.date_formats",
    BEFORE_MIN_DATE: "set cleaning.min_date to the first day of your data",
    NULL_CUSTOMER_ID: "check sources.{table}.columns.customer_id",
    UNKNOWN_CUSTOMER: "cleaning.unknown_customers: stub keeps these rows",
    FUTURE_TIMESTAMP: "check sources.{table}.time_zone and cleaning.now",
}


def _check_quarantine_share(report: dict[str, TableQuality], limit: float) -> None:
    """Stop the run when a table lost more than ``limit`` of its rows, naming the top reasons."""
    failing = {t: q for t, q in report.items() if q.quarantined_share > limit}
    if not failing:
        return
    parts = []
    for table, q in failing.items():
        top = q.top_reasons(3)
        shown = ", ".join(f"{r}: {n}" for r, n in top)
        hint = _REASON_HINTS.get(top[0][0], "") if top else ""
        parts.append(
            f"table {table!r}: {q.quarantined} of {q.rows} rows quarantined "
            f"({q.quarantined_share:.1%} > {limit:.0%}); top reasons: {shown}"
            + (f" ({hint.format(table=table)})" if hint else "")
        )
    raise DataQualityError(
        "; ".join(parts) + ". The run stopped before training; published scores are unchanged "
        "(cleaning.max_quarantine_share sets the limit)"
    )


# Where a table records activity: the dates the plan's history and default as_of come from.
ACTIVITY_COLUMNS = {
    "transactions": ("timestamp",),
    "events": ("timestamp",),
    "subscriptions": ("start_date", "end_date"),
}
# Without any activity table, the customers' own dates place the data in time.
CUSTOMER_DATES = ("signup_date", "churn_date")


def activity_range(
    config: Config, paths: RunPaths, con: DuckDBBackend | None = None
) -> tuple[date | None, date | None]:
    """Return the first and last day of activity in the clean tables (None: no dates at all).

    Activity is a transaction, an event, or a subscription start or end; a customers table
    alone contributes its signup and churn dates. Dates after ``cleaning.now`` (a contract end
    fixed in advance) are not activity yet.
    """
    tables = {n: c for n, c in ACTIVITY_COLUMNS.items() if (paths.clean / f"{n}.parquet").exists()}
    if not tables and (paths.clean / "customers.parquet").exists():
        tables = {"customers": CUSTOMER_DATES}
    now = _cleaning_rules(config).now
    own = con is None
    con = connect_engine(config.engine) if con is None else con
    firsts, lasts = [], []
    try:
        for name, columns in tables.items():
            t = con.read_parquet(paths.clean / f"{name}.parquet")
            for column in columns:
                if column not in t.columns:
                    continue
                ts = t[column].cast("timestamp")
                row = t.aggregate(
                    first=ts.min(), last=ts.max(where=ts <= ibis.literal(now))
                ).execute()
                firsts.append(row["first"].iloc[0])
                lasts.append(row["last"].iloc[0])
    finally:
        if own:
            con.disconnect()
    first = [pd.Timestamp(v).date() for v in firsts if v is not None and not pd.isna(v)]
    last = [pd.Timestamp(v).date() for v in lasts if v is not None and not pd.isna(v)]
    return (min(first) if first else None), (max(last) if last else None)


def resolve_plan(config: Config, paths: RunPaths) -> CutoffPlan:
    """Return the cutoff plan, planned from the data's history.

    The scoring cutoff is ``snapshots.as_of``, or the day after the last clean activity (today
    for a table without dates). Cutoffs are spaced by the days a label reads: the horizon, plus
    the grace gap for contract labels from subscriptions. Label mode ``column`` (a snapshot
    table) has one cutoff and holds out customers instead.

    Raises:
        HistoryTooShortError: The history cannot hold a training and a validation cutoff (the
            message says how many days there are and how many are needed).
    """
    snap = config.snapshots
    first, last = activity_range(config, paths)
    as_of = snap.as_of
    if as_of is None:
        today = (config.cleaning.now or datetime.now(UTC).date()) + timedelta(days=1)
        as_of = last + timedelta(days=1) if last is not None else today
    if config.features.label == "column":
        return snapshot_plan(as_of, snap.horizon_days)
    if first is None:
        raise HistoryTooShortError(
            f"no dated activity in the clean tables {sorted(config.sources)}: label mode "
            f"{config.features.label!r} needs dated rows (or use features.label: column)"
        )
    has_subscriptions = (paths.clean / "subscriptions.parquet").exists()
    span = label_days(config.features, snap.horizon_days, has_subscriptions)
    return plan_cutoffs(
        as_of,
        snap.horizon_days,
        snap.train_cutoffs,
        snap.cutoff_step_days,
        label_days=span,
        data_start=first,
        min_history_days=snap.min_history_days,
        max_train_cutoffs=snap.max_train_cutoffs,
    )
