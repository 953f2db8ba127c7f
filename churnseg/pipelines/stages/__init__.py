"""Pipeline stages as plain functions: read references, call the library, write references.

Prefect tasks wrap these one to one; notebooks and tests call them directly. Stages pass paths
and small summaries, never large frames.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import ibis
import ibis.expr.types as ir
import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from ibis.backends.duckdb import Backend as DuckDBBackend
from mlflow import MlflowClient
from numpy.typing import NDArray
from sklearn.inspection import permutation_importance
from sklearn.pipeline import Pipeline

from churnseg.features.btyd import BTYD_FEATURES, SUMMARY, btyd_features
from churnseg.features.build import build_features, resolve_levels
from churnseg.features.cleaning import (
    BAD_ENCODING,
    BAD_TIMESTAMP,
    FUTURE_TIMESTAMP,
    IS_STUB,
    MALFORMED_LINE,
    NULL_CUSTOMER_ID,
    REASON,
    ROW,
    UNKNOWN_CUSTOMER,
    CleaningRules,
    CustomerOptions,
    ReadOptions,
    check_usable,
    conform,
    infer_attributes,
    quarantine_records,
    raw_rows,
    split_tagged,
    stub_customers,
    tag_table,
)
from churnseg.features.contract import CONTRACTS
from churnseg.features.labels import label_days
from churnseg.features.snapshots import (
    SNAPSHOT,
    CutoffPlan,
    labelled_snapshot,
    plan_cutoffs,
    snapshot_literal,
    training_snapshots,
)
from churnseg.models import churn as churn_model
from churnseg.models import evaluation, reasons
from churnseg.models import segmentation as seg_model
from churnseg.models.classification import (
    LifecycleRules,
    Override,
    RiskBandRule,
    RiskThresholds,
    TierThresholds,
    apply_overrides,
    assign_risk_bands,
    assign_tiers,
    lifecycle_stages,
    risk_thresholds,
    tier_thresholds,
)
from churnseg.models.plots import importance_figure, k_selection_figure, reliability_figure
from churnseg.models.registry import (
    champion_version,
    decide_promotion,
    find_champion,
    load_champion,
    load_version,
    log_and_register,
    promote,
    record_rejection,
    version_tags,
)
from churnseg.pipelines import progress
from churnseg.pipelines.config import Config, FeatureConfig, SourceConfig, config_as_dict
from churnseg.pipelines.lineage import code_version, input_lineage
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
from churnseg.pipelines.sinks.schema import CUSTOMER_SCORES, conform_batch
from churnseg.pipelines.sources import (
    REJECTS_SUFFIX,
    FeatureEngine,
    connect_engine,
    connect_feature_engine,
    extract_sources,
)

SEGMENT_NAMES_TAG = "segment_names"
# Customers are cleaned first: the other tables are checked against the clean ids.
CLEAN_ORDER = ("customers", "transactions", "events", "subscriptions")


class DataQualityError(RuntimeError):
    """Too many rows were quarantined; the run stops before training or publishing."""


@dataclass(frozen=True)
class RunPaths:
    """Folders and files of one pipeline run under ``<state_dir>/runs/<run_key>``."""

    root: Path

    @property
    def raw(self) -> Path:
        """Return the folder of extracted source copies."""
        return self.root / "raw"

    @property
    def clean(self) -> Path:
        """Return the folder of clean tables."""
        return self.root / "clean"

    @property
    def quarantine(self) -> Path:
        """Return the folder of quarantined rows."""
        return self.root / "quarantine"

    @property
    def features(self) -> Path:
        """Return the folder of feature tables (train, validation, scoring)."""
        return self.root / "features"

    @property
    def scores(self) -> Path:
        """Return the scored-customers Parquet file."""
        return self.root / "scores.parquet"

    @property
    def manifest(self) -> Path:
        """Return ``run.json``: the run's fingerprint and every attempt (retrain runs)."""
        return self.root / "run.json"

    @property
    def lock(self) -> Path:
        """Return the lock file that keeps two runs with one fingerprint apart."""
        return self.root / ".lock"

    @property
    def results(self) -> Path:
        """Return the folder of persisted Prefect task results (the stage cache)."""
        return self.root / "task-results"


def run_paths(config: Config, run_key: str) -> RunPaths:
    """Return the paths of run ``run_key`` (the folders are created by the stages).

    The retrain flow's key is its run fingerprint (``resume.run_fingerprint``), so an attempt
    with the same config, data and code finds an earlier attempt's outputs; the score and
    monitor flows use ``new_run_key`` or the Prefect flow run id.
    """
    return RunPaths(config.state_dir / "runs" / run_key)


def new_run_key() -> str:
    """Return a sortable key for a new run folder (outside a Prefect flow run)."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


def ensure_sample(config: Config) -> bool:
    """Generate the bundled sample into ``<state_dir>/sample`` when enabled and missing.

    The sample is written as CSV when the sources read CSV files from the sample folder.

    Returns:
        True when data was generated.
    """
    from churnseg.pipelines.sample import SampleSpec, write_sample

    if not config.sample.enabled:
        return False
    sample_dir = config.sample_dir.resolve()
    in_sample = [
        (Path(config.resolve(s.path)), s.file_format)
        for s in config.sources.values()
        if s.path and Path(config.resolve(s.path)).parent.resolve() == sample_dir
    ]
    if in_sample and all(p.exists() for p, _ in in_sample):
        return False
    csv = any(fmt == "csv" for _, fmt in in_sample)
    spec = SampleSpec(
        customers=config.sample.customers,
        seed=config.sample.seed,
        dirty_fraction=config.sample.dirty_fraction,
        file_format="csv" if csv else "parquet",
    )
    write_sample(spec, config.sample_dir)
    return True


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


def _customer_options(conformed: ir.Table, source: SourceConfig, config: Config) -> CustomerOptions:
    """Return attribute kinds (declared or inferred) and print what was inferred."""
    exclude = {source.latest_by} if source.latest_by else set()
    attributes = infer_attributes(
        conformed, source.attributes, exclude, config.cleaning.numeric_min_distinct
    )
    inferred = {c: k for c, k in attributes.kinds.items() if c not in source.attributes}
    if inferred:
        shown = ", ".join(f"{c}={k}" for c, k in inferred.items())
        # A printed summary, so a wrong guess is seen; sources.customers.attributes fixes it.
        print(f"customers attributes inferred: {shown}")
    return CustomerOptions(latest_by=source.latest_by, attributes=attributes)


def clean_stage(config: Config, paths: RunPaths) -> dict[str, TableQuality]:
    """Conform, validate and clean every extracted table; write clean and quarantine files.

    Writes ``clean/<table>.parquet``, ``quarantine/<table>.parquet`` (raw source columns, ``_row``
    and ``reason``), ``quarantine/<table>.rejects.parquet`` for CSV lines the reader rejected,
    and ``quarantine.parquet`` in the run folder: every rejected row of every table in the fixed
    schema ``quality.QUARANTINE_SCHEMA`` (``run_id`` is the active MLflow run's, else null).
    Logs counts and the quality report to the active MLflow run, if any.

    Raises:
        DataContractError: A table lacks a required column, has no rows, or a required column
            is null or unconvertible everywhere.
        DataQualityError: A table lost more than ``cleaning.max_quarantine_share`` of its rows.
    """
    paths.clean.mkdir(parents=True, exist_ok=True)
    paths.quarantine.mkdir(parents=True, exist_ok=True)
    rules = _cleaning_rules(config)
    con = connect_engine(config.engine)
    active = mlflow.active_run()
    run_id = active.info.run_id if active is not None else None
    counts: dict[str, tuple[int, dict[str, int]]] = {}
    records: list[ir.Table] = []
    attributes: dict[str, str] = {}
    customer_ids = None
    for name in CLEAN_ORDER:
        if name not in config.sources:
            continue
        source = config.sources[name]
        raw = con.read_parquet(paths.raw / f"{name}.parquet")
        options = ReadOptions(tuple(source.date_formats), source.time_zone)
        conformed = conform(raw, CONTRACTS[name], source.columns, options)
        rows = check_usable(raw, conformed, CONTRACTS[name], source.columns)
        customer_options = None
        if name == "customers":
            customer_options = _customer_options(conformed, source, config)
            if customer_options.attributes is not None:
                attributes = dict(customer_options.attributes.kinds)
        # Written once, so the duplicate windows run once for both outputs.
        tagged_file = paths.clean / f"{name}.tagged.parquet"
        tagged = tag_table(name, conformed, customer_ids, rules, customer_options)
        con.to_parquet(tagged, tagged_file)
        result = split_tagged(name, con.read_parquet(tagged_file), rules)
        clean_file = paths.clean / f"{name}.parquet"
        con.to_parquet(result.clean.drop(ROW), clean_file)
        quarantine_file = paths.quarantine / f"{name}.parquet"
        con.to_parquet(raw_rows(raw, result.quarantine), quarantine_file)
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
    stubs = _add_stub_customers(con, config, paths)
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
    _check_quarantine_share(report, config.cleaning.max_quarantine_share)
    return report


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


def resolve_plan(config: Config, paths: RunPaths) -> CutoffPlan:
    """Return the cutoff plan: ``snapshots.as_of`` or the day after the last clean purchase.

    Cutoffs are spaced by the days a label reads: the horizon, plus the grace gap for contract
    labels from subscriptions.
    """
    snap = config.snapshots
    as_of = snap.as_of
    if as_of is None:
        con = connect_engine(config.engine)
        t = con.read_parquet(paths.clean / "transactions.parquet")
        last = t.timestamp.max().execute()
        if last is None or pd.isna(last):
            raise DataQualityError("table 'transactions': no clean rows, no cutoff can be set")
        as_of = pd.Timestamp(last).date() + timedelta(days=1)
    has_subscriptions = (paths.clean / "subscriptions.parquet").exists()
    span = label_days(config.features, snap.horizon_days, has_subscriptions)
    return plan_cutoffs(
        as_of, snap.horizon_days, snap.train_cutoffs, snap.cutoff_step_days, label_days=span
    )


def _with_btyd(
    con: DuckDBBackend, staged: list[Path], target: Path, horizon_days: int, period_days: int
) -> dict[str, float]:
    """Write the ``staged`` snapshots and their BTYD predictions (fitted per snapshot) to one file.

    ``target`` is ordered by snapshot and customer. When the ``staged`` files are, in that order,
    with one schema (the feature build writes them so), their rows stream through with the
    predictions appended, one batch at a time; otherwise embedded DuckDB sorts them first. The
    fit reads only the per-customer summary columns into pandas.

    Returns:
        The fitted parameters of the last snapshot (empty when it could not be fitted).
    """
    keys = pa.concat_tables(
        pq.read_table(path, columns=["customer_id", SNAPSHOT, *SUMMARY]) for path in staged
    )
    # Engines write rows in any order; a fixed order makes the fit bit-identical across them.
    order = pc.sort_indices(keys, [(SNAPSHOT, "ascending"), ("customer_id", "ascending")])
    in_order = np.array_equal(order.to_numpy(), np.arange(keys.num_rows))
    schemas = [pq.read_schema(path) for path in staged]
    streamable = in_order and all(schema.equals(schemas[0]) for schema in schemas)
    if not in_order:
        keys = keys.take(order)
    summary = keys.select(list(SUMMARY)).to_pandas()
    snapshots = keys.column(SNAPSHOT).to_pandas()
    predictions = pd.DataFrame(index=summary.index, columns=list(BTYD_FEATURES), dtype="float64")
    params: dict[str, float] = {}
    for snapshot in sorted(snapshots.unique()):
        rows = (snapshots == snapshot).to_numpy()
        out, bgnbd, gamma = btyd_features(summary.loc[rows], horizon_days, period_days)
        predictions.loc[rows] = out.to_numpy()
        params = {f"btyd_{k}": v for k, v in bgnbd.params_.items()} if bgnbd else {}
        params |= {f"gamma_gamma_{k}": v for k, v in gamma.params_.items()} if gamma else {}
    extra = pa.Table.from_pandas(predictions, preserve_index=False)
    if streamable:
        _append_columns(staged, extra, target)
        return params
    ordered = target.with_name(target.name + ".sorted")
    base = con.read_parquet([str(path) for path in staged], union_by_name=True)
    con.to_parquet(base.order_by([SNAPSHOT, "customer_id"]), ordered)
    _append_columns([ordered], extra, target)
    ordered.unlink()
    return params


# DuckDB's own row group size: the streamed feature files keep the layout DuckDB writes.
_APPEND_BATCH_ROWS = 122_880


def _append_columns(sources: list[Path], extra: pa.Table, target: Path) -> None:
    """Write the rows of ``sources`` (one schema), then ``extra``'s columns, to ``target``.

    ``extra`` has one row per source row, in order. One batch at a time: the wide table is
    never in memory whole.
    """
    files = [pq.ParquetFile(source) for source in sources]
    rows = sum(file.metadata.num_rows for file in files)
    if rows != extra.num_rows:
        raise ValueError(f"{target.name}: {rows} rows to extend, {extra.num_rows} extra rows")
    # Nullable like every engine's output: DuckDB marks some staged columns NOT NULL, Spark none.
    schema = pa.schema([f.with_nullable(True) for f in [*files[0].schema_arrow, *extra.schema]])
    offset = 0
    with pq.ParquetWriter(target, schema) as writer:
        for file in files:
            for batch in file.iter_batches(batch_size=_APPEND_BATCH_ROWS):
                more = extra.slice(offset, batch.num_rows)
                columns = [*batch.columns, *(c.combine_chunks() for c in more.columns)]
                writer.write_batch(pa.RecordBatch.from_arrays(columns, schema=schema))
                offset += batch.num_rows


# Exact channel and event-type lists as JSON (a level may hold a comma); read by score runs.
LEVELS_PARAM = "feature_levels"


def champion_levels(config: Config) -> tuple[FeatureConfig, str]:
    """Return the feature settings to score with, and where their levels came from.

    Channels and event types the config leaves open are the ones the champion churn model was
    trained with (params logged on its training run), so a new frequent channel cannot change the
    column set the model expects. Without a champion they stay open (resolved from data).

    Returns:
        ``config.features`` with the champion's levels filled in, and ``"data"``, ``"config"``
        or ``"champion <model> v<N>"``.
    """
    features = config.features
    if features.channels is not None and features.event_types is not None:
        return features, "config"
    name = config.mlflow.churn_model
    version = find_champion(name)
    if version is None:
        return features, "data"
    client = MlflowClient()
    run_id = client.get_model_version(name, str(version)).run_id
    if not run_id:
        return features, "data"
    params = client.get_run(run_id).data.params
    if LEVELS_PARAM in params:
        levels: dict[str, Any] = json.loads(params[LEVELS_PARAM])
    else:  # trained before the JSON param existed: the comma-joined ones
        levels = {
            key: [v for v in params[f"feature_{key}"].split(",") if v]
            for key in ("channels", "event_types")
            if f"feature_{key}" in params
        }
    update: dict[str, Any] = {
        key: list(levels[key])
        for key in ("channels", "event_types")
        if getattr(features, key) is None and key in levels
    }
    if not update:  # a champion logged from a run without a feature build
        return features, "data"
    return features.model_copy(update=update), f"champion {name} v{version}"


FEATURE_TABLES = ("train", "validation", "scoring")


def feature_stage(
    config: Config,
    paths: RunPaths,
    plan: CutoffPlan,
    only: tuple[str, ...] = FEATURE_TABLES,
) -> dict[str, int]:
    """Write training, validation and scoring feature tables; return their row counts.

    ``only`` limits the build to some of them (scoring alone needs no stacked training cutoffs).

    Features come from every clean table present (``features.build_features``), built on the
    configured engine (``engine.backend``: DuckDB or Spark); each table lands as one Parquet
    file either way. Channels and event types are resolved once at the scoring cutoff so the
    three tables share columns; a build without the training table (the score and monitor
    flows) takes them from the champion churn model's training run instead, so scoring gives
    the columns the champion expects. BG/NBD and Gamma-Gamma are fitted on each snapshot's own
    history and add their predictions.
    """
    paths.features.mkdir(parents=True, exist_ok=True)
    if "train" in only:  # a new model: levels from the config or today's data
        given = config.features.channels is not None and config.features.event_types is not None
        features, levels_from = config.features, "config" if given else "data"
    else:
        features, levels_from = champion_levels(config)
    counts = {}
    params: dict[str, float] = {}
    with (
        connect_feature_engine(config.engine) as engine,
        # The BTYD join and the final files run on embedded DuckDB whatever the engine.
        FeatureEngine(connect_engine(config.engine)) as local,
    ):
        tables = {
            name: engine.read_parquet(paths.clean / f"{name}.parquet")
            for name in CLEAN_ORDER
            if (paths.clean / f"{name}.parquet").exists()
        }
        settings = resolve_levels(tables, plan.scoring, features)
        h = plan.horizon_days
        # Snapshots, oldest first; each is one query, so a build holds one snapshot's state.
        builders = {
            "train": lambda: training_snapshots(tables, plan.training, settings, h),
            "validation": lambda: [labelled_snapshot(tables, plan.validation, settings, h)],
            "scoring": lambda: [
                build_features(tables, plan.scoring, settings).mutate(
                    **{SNAPSHOT: snapshot_literal(plan.scoring)}
                )
            ],
        }
        exprs = {name: build() for name, build in builders.items() if name in only}
        for name, snapshots in progress.track(exprs.items(), "building feature tables"):
            target = paths.features / f"{name}.parquet"
            staged = [paths.features / f"{name}.staged{i}.parquet" for i in range(len(snapshots))]
            for expr, path in zip(snapshots, staged, strict=True):
                # Sorted as the final file is, so the BTYD columns stream in without a join.
                engine.write_parquet(expr.order_by("customer_id"), path)
            params = _with_btyd(local.con, staged, target, h, settings.btyd_period_days)
            for path in staged:
                path.unlink()
            counts[name] = int(pq.ParquetFile(target).metadata.num_rows)
    mlflow.log_params(
        {
            "cutoff_scoring": plan.scoring.isoformat(),
            "cutoff_validation": plan.validation.isoformat(),
            "cutoffs_training": ",".join(d.isoformat() for d in plan.training),
            "horizon_days": h,
            "label_mode": settings.label,
            "feature_channels": ",".join(settings.channels or []),
            "feature_event_types": ",".join(settings.event_types or []),
            LEVELS_PARAM: json.dumps(
                {"channels": settings.channels or [], "event_types": settings.event_types or []}
            ),
            "feature_levels_from": levels_from,
            "feature_engine": config.engine.backend,
        }
    )
    mlflow.log_metrics({f"rows_features_{n}": c for n, c in counts.items()})
    # The scoring snapshot's fit: the parameters the published BTYD features come from.
    mlflow.log_metrics(params)
    return counts


@dataclass(frozen=True)
class SegmentationOutcome:
    """What the segmentation stage registered, and how ids relate to the previous champion."""

    version: int
    k: int
    names: dict[int, str]
    kept: list[int] = field(default_factory=list)
    new: list[int] = field(default_factory=list)
    vanished: list[int] = field(default_factory=list)


# Plain-unit columns shown in segment profiles beside the clustering inputs.
PROFILE_COLUMNS = ("recency_days", "frequency", "monetary_total", "monetary_mean", "tenure_days")


def segment_names(model_name: str, version: int) -> dict[int, str]:
    """Return the segment names stored on a registered segmentation model version."""
    tags = version_tags(model_name, version)
    return {int(k): v for k, v in json.loads(tags.get(SEGMENT_NAMES_TAG, "{}")).items()}


def segmentation_pipeline_from_config(config: Config) -> Pipeline:
    """Return the unfitted segmentation pipeline that ``config.segmentation`` describes."""
    s = config.segmentation
    return seg_model.segmentation_pipeline(
        features=s.features,
        scaler=s.scaler,
        pca_components=s.pca_components,
        k_min=s.k_min,
        k_max=s.k_max,
        min_segment_share=s.min_segment_share,
        silhouette_sample=s.silhouette_sample,
        n_init=s.n_init,
        minibatch_above=s.minibatch_above,
        random_state=s.random_state,
    )


def segmentation_stage(config: Config, paths: RunPaths, run_id: str = "") -> SegmentationOutcome:
    """Fit segmentation on the latest snapshot, keep ids stable, name, profile and register.

    Segment ids and names follow the champion's where a new segment matches one of its segments
    (Hungarian matching on centroids in the champion's space); the model becomes champion.
    Writes ``segment_profiles.parquet`` (for publishing) and ``segment_migration.parquet``.
    """
    s = config.segmentation
    model_name = config.mlflow.segmentation_model
    frame = pd.read_parquet(paths.features / "scoring.parquet")
    candidates = max(min(s.k_max, len(frame) - 1) - s.k_min + 1, 0)
    with progress.stage("segmentation: trying k", candidates) as step:
        pipeline = segmentation_pipeline_from_config(config).fit(
            frame, kmeans__on_k=lambda _k: step.advance()
        )
    km = pipeline[-1]
    match, keep = None, {}
    previous = find_champion(model_name)
    if previous is not None:
        champion = load_version(model_name, previous)
        match = seg_model.match_segments(pipeline, champion, frame, s.match_max_distance)
        km.relabel(match.ids)
        old_names = segment_names(model_name, previous)
        keep = {sid: old_names[sid] for sid in match.kept if sid in old_names}
    segments = pipeline.predict(frame)
    columns = list(dict.fromkeys([*s.features, *PROFILE_COLUMNS]))
    profiles = seg_model.segment_profiles(frame, segments, columns)
    rules = [seg_model.NamingRule(r.name, r.min_rank, r.max_rank) for r in s.naming]
    names = seg_model.name_segments(profiles, s.features, rules, keep=keep)
    profiles.insert(1, "segment_name", profiles.segment_id.map(names))

    validation = pd.read_parquet(paths.features / "validation.parquet")
    before = validation.assign(segment_id=pipeline.predict(validation))
    churn_rate = before.groupby("segment_id")["churned"].mean()
    profiles["churn_rate"] = profiles.segment_id.map(churn_rate)
    migration = seg_model.migration_table(before, frame.assign(segment_id=segments), names)

    k_scores = pd.DataFrame(km.scores_)
    mlflow.log_params({"segmentation_k": km.k_, "segmentation_features": ",".join(s.features)})
    mlflow.log_metric("segmentation_silhouette", float(k_scores.set_index("k").silhouette[km.k_]))
    mlflow.log_table(k_scores, "segmentation/k_scores.json")
    mlflow.log_figure(k_selection_figure(km.scores_, km.k_), "segmentation/k_selection.png")
    mlflow.log_table(profiles, "segmentation/profiles.json")
    mlflow.log_table(migration, "segmentation/migration.json")
    if match is not None:
        mlflow.log_dict(
            {"kept": match.kept, "new": match.new, "vanished": match.vanished},
            "segmentation/identity.json",
        )
    version = log_and_register(
        pipeline, model_name, frame.head(100), seg_model.SKOPS_TYPES, segments[:100]
    )
    MlflowClient().set_model_version_tag(
        model_name, str(version), SEGMENT_NAMES_TAG, json.dumps(names)
    )
    promote(model_name, version, "segmentation follows every retrain; ids and names are matched")

    snapshot = str(frame[SNAPSHOT].iloc[0]) if len(frame) else ""
    profile_json = profiles[columns].apply(lambda r: json.dumps(r.to_dict()), axis=1)
    pd.DataFrame(
        {
            "snapshot_date": snapshot,
            "segment_id": profiles.segment_id.astype("int64"),
            "segment_name": profiles.segment_name,
            "size": profiles["size"].astype("int64"),
            "share": profiles["share"],
            "revenue_share": profiles["revenue_share"],
            "churn_rate": profiles["churn_rate"],
            "profile": profile_json,
            "segmentation_model_version": version,
            "run_id": run_id,
        }
    ).to_parquet(paths.root / "segment_profiles.parquet", index=False)
    migration.to_parquet(paths.root / "segment_migration.parquet", index=False)
    return SegmentationOutcome(
        version=version,
        k=int(km.k_),
        names=names,
        kept=sorted(match.kept) if match else [],
        new=match.new if match else [],
        vanished=match.vanished if match else [],
    )


@dataclass(frozen=True)
class ChurnOutcome:
    """What the churn stage registered, how it validated, and whether it became champion."""

    version: int
    promoted: bool
    reason: str
    candidate: str
    metrics: dict[str, float]


EXPLAIN_ARTIFACT = "churn/explain.json"


def at_risk_population(frame: pd.DataFrame, max_recency_days: int | None) -> pd.DataFrame:
    """Return the rows the churn model learns from: bought recently, or not bought yet."""
    if max_recency_days is None:
        return frame
    keep = (frame["recency_days"] <= max_recency_days) | (frame["frequency"] == 0)
    return frame[keep]


def read_at_risk_population(path: Path, max_recency_days: int | None) -> pd.DataFrame:
    """Return ``at_risk_population`` of the feature table at ``path``, filtered while reading.

    At a million customers the stacked training table is over 2 GB as a DataFrame and a third
    of it is long-lapsed: reading only the kept rows saves that copy. Same rows, same order.
    """
    if max_recency_days is None:
        return pd.read_parquet(path)
    # Missing recency (never bought) fails the first test and passes the second, as in pandas.
    keep = [[("recency_days", "<=", max_recency_days)], [("frequency", "==", 0)]]
    return pq.read_table(path, filters=keep).to_pandas()


def _p_alive_column(frame: pd.DataFrame) -> str | None:
    return next((c for c in frame.columns if "p_alive" in c), None)


def churn_stage(config: Config, paths: RunPaths) -> ChurnOutcome:
    """Search, calibrate and validate a churn model out of time; promote it only if it wins.

    Validation rows are the validation cutoff's at-risk population. The challenger must beat
    every baseline (recency alone, BG/NBD P(alive) when present, logistic regression on RFM)
    and the champion, scored on the same rows, by ``churn.promotion_margin``.
    """
    c = config.churn
    name = config.mlflow.churn_model
    max_recency = c.population_max_recency_days
    train = read_at_risk_population(paths.features / "train.parquet", max_recency)
    validation = read_at_risk_population(paths.features / "validation.parquet", max_recency)
    spec = churn_model.feature_spec(train)
    search = churn_model.time_aware_search(
        train, spec, c.candidates, c.search_sample_rows, c.random_state
    )
    model = churn_model.fit_calibrated(
        train,
        spec,
        search.name,
        search.params,
        c.calibration,
        c.random_state,
        c.fit_sample_rows,
        c.calibration_sample_rows,
    )
    y = validation[churn_model.LABEL].to_numpy()
    proba = churn_model.churn_probability(model, validation)
    cap = c.contact_capacity
    metrics = {
        **evaluation.ranking_metrics(y, proba, cap),
        **evaluation.probability_metrics(y, proba),
    }

    baselines = {"recency": evaluation.ranking_metrics(y, validation["recency_days"], cap)}
    p_alive = _p_alive_column(validation)
    if p_alive is not None:
        # BG/NBD says nothing about customers who never bought: rank them at the median.
        alive = validation[p_alive].fillna(validation[p_alive].median())
        baselines["bgnbd_p_alive"] = evaluation.ranking_metrics(y, 1 - alive, cap)
    rfm = churn_model.fit_rfm_baseline(train)
    baselines["logistic_rfm"] = evaluation.ranking_metrics(
        y, churn_model.churn_probability(rfm, validation), cap
    )

    segmenter = load_champion(config.mlflow.segmentation_model)
    seg_names = segment_names(
        config.mlflow.segmentation_model, champion_version(config.mlflow.segmentation_model)
    )
    segments = pd.Series(segmenter.predict(validation)).map(seg_names).fillna("(unnamed)")
    by_segment = evaluation.metrics_by_group(y, proba, segments, cap)
    folds = churn_model.backtest(
        train,
        spec,
        search.name,
        search.params,
        cap,
        c.search_sample_rows,
        c.random_state,
        later=validation,
        search=search,
    )
    # Importance of the ranking model: calibration is monotone, so the ROC AUC drop is the same,
    # and skipping the calibrator halves the cost of the many predictions this takes.
    sample = validation.sample(n=min(len(validation), 3000), random_state=c.random_state)
    importance = permutation_importance(
        churn_model.ranking_model(model),
        sample[spec.columns],
        sample[churn_model.LABEL],
        scoring="roc_auc",
        n_repeats=2,
        random_state=c.random_state,
    )
    importances = pd.DataFrame(
        {"feature": spec.columns, "importance": importance.importances_mean}
    ).sort_values("importance", ascending=False)

    metric = c.promotion_metric
    mlflow.log_params(
        {
            "churn_candidate": search.name,
            "churn_params": json.dumps(search.params),
            "churn_calibration": c.calibration,
            "churn_features": len(spec.columns),
        }
    )
    mlflow.log_metrics(
        {
            **{f"val_{k}": v for k, v in metrics.items()},
            **{f"baseline_{b}_{k}": v for b, m in baselines.items() for k, v in m.items()},
            "train_rows": float(len(train)),
            "train_churn_rate": float(train[churn_model.LABEL].mean()),
            "val_rows": float(len(validation)),
            "val_churn_rate": float(y.mean()),
            f"backtest_{metric}_mean": float(folds[metric].mean()),
            f"backtest_{metric}_std": float(folds[metric].std(ddof=0)),
        }
    )
    mlflow.log_table(pd.DataFrame(search.trials).astype({"params": str}), "churn/search.json")
    mlflow.log_table(folds, "churn/backtest.json")
    mlflow.log_table(by_segment, "churn/metrics_by_segment.json")
    mlflow.log_dict(baselines, "churn/baselines.json")
    mlflow.log_table(importances, "churn/permutation_importance.json")
    reliability = evaluation.reliability_table(y, proba)
    mlflow.log_table(reliability, "churn/reliability.json")
    mlflow.log_figure(reliability_figure(reliability), "churn/reliability.png")
    mlflow.log_figure(importance_figure(importances), "churn/permutation_importance.png")
    reference = reasons.reference_values(train, spec.columns)
    top = [f for f in importances.feature if f in spec.numeric][: c.reasons_max_features]
    mlflow.log_dict({"reference": reference, "features": top}, EXPLAIN_ARTIFACT)

    version = log_and_register(
        model, name, validation[spec.columns].head(100), churn_model.SKOPS_TYPES, proba[:100]
    )
    champion_score = None
    previous = find_champion(name)
    if previous is not None:
        try:
            champion_proba = churn_model.churn_probability(load_version(name, previous), validation)
            champion_score = evaluation.ranking_metrics(y, champion_proba, cap)[metric]
            mlflow.log_metric(f"champion_{metric}", champion_score)
        except KeyError:
            champion_score = None  # the champion needs features this data no longer has
    best = max(baselines, key=lambda b: baselines[b][metric])
    decision = decide_promotion(
        metric,
        metrics[metric],
        champion_score,
        (best, baselines[best][metric]),
        c.promotion_margin,
    )
    record = {f"val_{k}": v for k, v in metrics.items()}
    if decision.promote:
        promote(name, version, decision.reason, record)
    else:
        record_rejection(name, version, decision.reason, record)
    mlflow.set_tags({"churn.promoted": str(decision.promote), "churn.decision": decision.reason})
    return ChurnOutcome(
        version=version,
        promoted=decision.promote,
        reason=decision.reason,
        candidate=search.name,
        metrics={f"val_{k}": v for k, v in metrics.items()},
    )


@dataclass(frozen=True)
class ScoringContext:
    """Everything a scoring run applies to every batch: models, their versions, run facts.

    Quantities that need the whole population (tier cut values, risk band thresholds) are
    computed once before the batches, so ``score_batch`` stays a function of one batch and
    batch scoring gives the same classes as scoring everyone at once.
    """

    segmenter: Any
    classifier: Any
    segmentation_version: int
    churn_version: int
    segment_names: dict[int, str]
    run_id: str
    scored_at: datetime
    horizon_days: int
    value_column: str
    tiers: TierThresholds
    risk: RiskThresholds
    risk_rank_by: str
    lifecycle: LifecycleRules
    overrides: tuple[Override, ...]
    explainer: Any  # the uncalibrated ranking model: reasons and risk ranking
    reference: dict[str, Any]
    reason_features: tuple[str, ...]
    reasons_top_k: int
    # (calibrated, ranking) P(churn) of each batch of the ranking pass, by its first row, when
    # kept (``keep_scores``): scoring that batch takes them instead of predicting it again.
    batch_scores: dict[int, tuple[NDArray[np.float64], NDArray[np.float64]]] = field(
        default_factory=dict, repr=False
    )


def expected_value(frame: pd.DataFrame, horizon_days: int) -> NDArray[np.float64]:
    """Return each customer's expected spend over the horizon.

    BG/NBD expected purchases x Gamma-Gamma expected spend (``btyd_expected_value``) where the
    features have it (0 for customers the models cannot describe); otherwise the last year's
    spend pro rata.
    """
    if "btyd_expected_value" in frame:
        value = frame["btyd_expected_value"].astype("float64").fillna(0.0)
    elif "spend_365d" in frame:
        value = frame["spend_365d"].astype("float64").fillna(0.0) * horizon_days / 365.0
    else:
        value = pd.Series(0.0, index=frame.index)
    return np.asarray(value.clip(lower=0.0), dtype=np.float64)


def _risk_ranking(
    model: Any,
    frame: pd.DataFrame,
    proba: NDArray[np.float64] | None,
    value: NDArray[np.float64],
    by: str,
    score: NDArray[np.float64] | None = None,
) -> pd.Series:
    """Return what the retention list is ordered by: value at risk, or churn risk.

    Churn risk is ranked by the uncalibrated model's score: it orders customers exactly as the
    calibrated probability does, but without the ties isotonic calibration creates, so "top
    10%" is 10% of customers. ``proba`` (calibrated) is needed only for value at risk;
    ``score`` is the uncalibrated model's P(churn) when the caller has it already.
    """
    if by == "value_at_risk":
        if proba is None:
            raise ValueError("ranking by value at risk needs churn probabilities")
        return pd.Series(proba * value, index=frame.index)
    if score is None:
        score = churn_model.churn_probability(model, frame)
    return pd.Series(score, index=frame.index)


def _explanations(name: str, version: int) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Return the reference values and reason features logged with a churn model's run."""
    run_id = MlflowClient().get_model_version(name, str(version)).run_id
    try:
        explain = mlflow.artifacts.load_dict(f"runs:/{run_id}/{EXPLAIN_ARTIFACT}")
    except Exception:  # a model trained before reasons existed: score it without reasons
        return {}, ()
    return dict(explain["reference"]), tuple(explain["features"])


def scoring_context(
    config: Config, run_id: str, features_path: Path, keep_scores: bool = False
) -> ScoringContext:
    """Load the champion models and compute population-wide thresholds for a scoring run.

    One pass over ``features_path`` collects the tier value and the risk ranking of every
    customer (two floats each), so memory stays bounded at any population size.

    Args:
        config: The run's config.
        run_id: The MLflow run the scores belong to.
        features_path: The scoring feature table.
        keep_scores: Also keep each batch's churn probabilities (two more floats per customer)
            in ``batch_scores``, so a scoring pass over the same batches predicts nothing twice.
    """
    seg_name, churn_name = config.mlflow.segmentation_model, config.mlflow.churn_model
    seg_version, churn_version = champion_version(seg_name), champion_version(churn_name)
    classifier = load_champion(churn_name)
    cls, bands = config.classification, config.churn.risk_bands
    rule = RiskBandRule(
        mode=bands.mode,
        high_share=bands.high_share,
        medium_share=bands.medium_share,
        contact_cost=bands.contact_cost,
        save_rate=bands.save_rate,
    )
    rank_by = "value_at_risk" if bands.mode == "cost" else bands.rank_by
    horizon = config.snapshots.horizon_days
    explainer = churn_model.ranking_model(classifier)
    values, rankings = [], []
    batch_scores: dict[int, tuple[NDArray[np.float64], NDArray[np.float64]]] = {}
    features = pq.ParquetFile(features_path)
    chunk = config.publish.chunk_rows
    batches = features.iter_batches(batch_size=chunk)
    n_batches = -(-features.metadata.num_rows // chunk)
    first_row = 0
    for batch in progress.track(batches, "ranking customers (batches)", total=n_batches):
        frame = batch.to_pandas()
        # Both probabilities cost one prediction (``churn_scores``), as much as either alone.
        proba, score = churn_model.churn_scores(classifier, frame)
        if keep_scores:
            batch_scores[first_row] = (proba, score)
        first_row += len(frame)
        values.append(frame[cls.value_column].astype("float64").fillna(0.0).to_numpy())
        value = expected_value(frame, horizon)
        ranking = _risk_ranking(explainer, frame, proba, value, rank_by, score=score)
        rankings.append(ranking.to_numpy())
    all_values = pd.Series(np.concatenate(values) if values else np.array([], dtype=float))
    all_ranks = pd.Series(np.concatenate(rankings) if rankings else np.array([], dtype=float))
    tiers = tier_thresholds(all_values, cls.tier_cuts)
    risk = risk_thresholds(all_ranks, rule)
    reference, reason_features = _explanations(churn_name, churn_version)
    mlflow.log_params(
        {
            "tier_a_min_value": round(tiers.a_min, 4),
            "tier_b_min_value": round(tiers.b_min, 4),
            "risk_high_min": round(risk.high_min, 6),
            "risk_medium_min": round(risk.medium_min, 6),
        }
    )
    return ScoringContext(
        segmenter=load_champion(seg_name),
        classifier=classifier,
        segmentation_version=seg_version,
        churn_version=churn_version,
        segment_names=segment_names(seg_name, seg_version),
        run_id=run_id,
        scored_at=datetime.now(UTC).replace(microsecond=0),
        horizon_days=horizon,
        value_column=cls.value_column,
        tiers=tiers,
        risk=risk,
        risk_rank_by=rank_by,
        lifecycle=LifecycleRules(
            new_within_days=cls.new_within_days,
            churned_after_days=cls.churned_after_days,
            trend_window_days=cls.trend_window_days,
            growing_ratio=cls.growing_ratio,
            declining_ratio=cls.declining_ratio,
        ),
        overrides=tuple(
            Override(o.column, o.op, o.value, {str(k): v for k, v in o.set.items()})
            for o in cls.overrides
        ),
        explainer=explainer,
        reference=reference,
        reason_features=tuple(f for f in reason_features if f in reference),
        reasons_top_k=config.churn.reasons_top_k,
        batch_scores=batch_scores,
    )


def score_batch(
    frame: pd.DataFrame, context: ScoringContext, first_row: int | None = None
) -> pd.DataFrame:
    """Return the ``customer_scores`` rows of one batch of scoring features.

    Every output column is built here (docs/output_tables.md): segment, value tier, lifecycle
    stage and risk band (business overrides applied last), churn probability, top reasons,
    expected value and value at risk.

    Args:
        frame: One batch of the scoring feature table.
        context: The run's models and population-wide thresholds.
        first_row: The batch's first row in the table: its probabilities are taken from
            ``context.batch_scores`` when the ranking pass kept them (and they fit the batch).
    """
    segments = context.segmenter.predict(frame)
    # The uncalibrated score is the risk ranking and the attributions' baseline; predicting is
    # most of a scoring run's cost, so both probabilities come from one prediction, made once.
    known = context.batch_scores.pop(first_row, None) if first_row is not None else None
    if known is not None and len(known[0]) == len(frame):
        proba, score = known
    else:
        proba, score = churn_model.churn_scores(context.classifier, frame)
    value = expected_value(frame, context.horizon_days)
    names = context.segment_names
    classes = pd.DataFrame(
        {
            "segment_name": [names.get(int(s), f"Segment {s}") for s in segments],
            "value_tier": assign_tiers(
                frame[context.value_column].astype("float64").fillna(0.0), context.tiers
            ).to_numpy(),
            "lifecycle_stage": lifecycle_stages(frame, context.lifecycle).to_numpy(),
        },
        index=frame.index,
    )
    classes, _ = apply_overrides(classes, frame, context.overrides)
    ranking = _risk_ranking(
        context.explainer, frame, proba, value, context.risk_rank_by, score=score
    )
    if context.reason_features:
        contributions = reasons.attributions(
            context.explainer, frame, context.reason_features, context.reference, base=score
        )
        why = reasons.top_reasons(
            contributions, frame, context.reference, context.reasons_top_k
        ).to_numpy()
    else:
        why = np.full(len(frame), None, dtype=object)
    return pd.DataFrame(
        {
            "customer_id": frame["customer_id"].to_numpy(),
            "snapshot_date": frame[SNAPSHOT].to_numpy(),
            "segment_id": segments.astype("int64"),
            "segment_name": classes["segment_name"].to_numpy(),
            "value_tier": classes["value_tier"].to_numpy(),
            "lifecycle_stage": classes["lifecycle_stage"].to_numpy(),
            "churn_probability": proba.astype("float64"),
            "risk_band": assign_risk_bands(ranking, context.risk).to_numpy(),
            "top_reasons": why,
            "expected_value": value,
            "value_at_risk": value * proba,
            "segmentation_model_version": context.segmentation_version,
            "churn_model_version": context.churn_version,
            "run_id": context.run_id,
            # ISO text, typed on write: pyarrow warns converting tz-aware pandas columns.
            "scored_at": context.scored_at.isoformat(),
        }
    )


def score_batches_to_file(
    batches: Iterable[pa.RecordBatch],
    context: ScoringContext,
    path: Path,
    source: str,
    first_row: int = 0,
    total_rows: int | None = None,
) -> tuple[int, float]:
    """Score feature batches into a Parquet file of conformed ``customer_scores`` rows.

    Progress is reported in rows (of ``total_rows`` when given) to the installed reporter.

    Returns:
        Rows scored and the sum of their churn probabilities.
    """
    rows, proba_sum = 0, 0.0
    with (
        pq.ParquetWriter(path, CUSTOMER_SCORES.arrow_schema()) as writer,
        progress.stage("scoring customers", total_rows) as step,
    ):
        for batch in batches:
            scores = score_batch(batch.to_pandas(), context, first_row)
            arrow = pa.RecordBatch.from_pandas(scores, preserve_index=False)
            writer.write_batch(conform_batch(arrow, CUSTOMER_SCORES, source, first_row))
            first_row += batch.num_rows
            rows += len(scores)
            proba_sum += float(scores["churn_probability"].sum())
            step.advance(batch.num_rows)
    return rows, proba_sum


def score_stage(config: Config, features_path: Path, out_path: Path, run_id: str) -> int:
    """Score a feature table with the champion models in batches; write the scores file.

    Reads ``publish.chunk_rows`` rows at a time and appends each scored batch to the output, so
    memory stays bounded whatever the number of customers. The file appears complete or not
    at all (written beside, then renamed).

    Returns:
        Rows scored.
    """
    context = scoring_context(config, run_id, features_path, keep_scores=True)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(out_path.name + ".partial")
    features = pq.ParquetFile(features_path)
    batches = features.iter_batches(batch_size=config.publish.chunk_rows)
    rows, proba_sum = score_batches_to_file(
        batches, context, partial, features_path.name, total_rows=features.metadata.num_rows
    )
    partial.replace(out_path)
    log_scoring_metrics(rows, proba_sum)
    return rows


def log_scoring_metrics(rows: int, proba_sum: float, **extra: float) -> None:
    """Log rows scored and their mean churn probability (plus ``extra``) to the active run."""
    metrics = {"rows_scored": float(rows), **extra}
    if rows:
        metrics["mean_churn_probability"] = proba_sum / rows
    mlflow.log_metrics(metrics)


def log_lineage(config: Config) -> None:
    """Log the resolved config and the code version to the active run.

    Credentials stay in the environment: ``config_as_dict`` redacts them.
    """
    mlflow.log_dict(config_as_dict(config), "config.json")
    mlflow.set_tags({f"churnseg.{k}": v for k, v in code_version().items()})


def data_lineage_stage(paths: RunPaths, rows_read: dict[str, int]) -> dict[str, Any]:
    """Log which data this run used: input fingerprints, rows, and the transactions' date range.

    Returns:
        The lineage record (also logged as ``lineage.json``).
    """
    record: dict[str, Any] = {"inputs": input_lineage(paths.raw, rows_read)}
    clean_tx = paths.clean / "transactions.parquet"
    if clean_tx.exists():
        con = connect_engine()
        t = con.read_parquet(clean_tx)
        first, last = t.timestamp.min().execute(), t.timestamp.max().execute()
        record["transactions_date_range"] = [str(first), str(last)]
        mlflow.log_params({"data_first_timestamp": str(first), "data_last_timestamp": str(last)})
    mlflow.log_dict(record, "lineage.json")
    mlflow.log_params({f"input_sha256_{t}": v["sha256"][:16] for t, v in record["inputs"].items()})
    return record


def configure_mlflow(config: Config) -> str:
    """Point MLflow at the configured store and experiment; return the experiment id."""
    config.state_dir.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(config.tracking_uri)
    mlflow.set_registry_uri(config.tracking_uri)
    client = MlflowClient()
    existing = client.get_experiment_by_name(config.mlflow.experiment)
    if existing is not None:
        experiment_id: str = existing.experiment_id
    else:
        location = Path(config.resolve(config.mlflow.artifact_location)).resolve().as_uri()
        experiment_id = client.create_experiment(
            config.mlflow.experiment, artifact_location=location
        )
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def summary_line(items: dict[str, Any]) -> str:
    """Return ``key=value`` pairs joined for a one-line log message."""
    return ", ".join(f"{k}={v}" for k, v in items.items())
