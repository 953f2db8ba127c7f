"""Feature stage: training, validation and scoring tables with BG/NBD columns, as Parquet."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any

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

from churnseg.features.btyd import (
    BTYD_FEATURES,
    SUMMARY,
    btyd_features,
    btyd_params,
    fitted_btyd,
)
from churnseg.features.build import resolve_levels
from churnseg.features.cleaning import DataContractError
from churnseg.features.history import PreparedHistory, prepare_history
from churnseg.features.snapshots import (
    SNAPSHOT,
    CutoffPlan,
    labelled_snapshot,
    scoring_snapshot,
    training_snapshots,
)
from churnseg.features.timeutil import cutoff_datetime
from churnseg.models.registry import (
    find_champion,
)
from churnseg.pipelines import progress
from churnseg.pipelines.config import Config, FeatureConfig
from churnseg.pipelines.frames import batches_read_ahead
from churnseg.pipelines.sources import (
    DICTIONARY_VALUES,
    PARQUET_WRITE_OPTIONS,
    FeatureEngine,
    connect_engine,
    connect_feature_engine,
    duckdb_memory_limit,
)
from churnseg.pipelines.stages.extract_clean import SEEN_FILE, read_attributes
from churnseg.pipelines.stages.run_folder import CLEAN_ORDER, RunPaths
from churnseg.pipelines.warm_engine import WarmDuckDB


def unified_schema(schemas: list[pa.Schema]) -> pa.Schema:
    """Return one schema every snapshot file can be cast to: all fields nullable, types unified.

    Engines mark columns NOT NULL when a snapshot happens to have no null in them (DuckDB does,
    Spark never), and a column that is null throughout one snapshot may be typed differently;
    files that differ only so are stacked under this schema.
    """
    nullable = [pa.schema([f.with_nullable(True) for f in schema]) for schema in schemas]
    return pa.unify_schemas(nullable, promote_options="permissive")


def _with_btyd(
    con: DuckDBBackend,
    staged: list[Path],
    target: Path,
    horizon_days: int,
    period_days: int,
    fixed: dict[str, float] | None = None,
) -> dict[str, float]:
    """Write the ``staged`` snapshots and their BTYD predictions (fitted per snapshot) to one file.

    ``target`` is ordered by snapshot and customer, under the snapshots' unified schema. When
    the ``staged`` files are in that order (the feature build writes them so), their rows stream
    through with the predictions appended, one batch at a time; otherwise embedded DuckDB sorts
    them first. The fit reads only the per-customer summary columns into pandas. Without
    transactions there is no BTYD summary: the snapshots are stacked as they are.

    ``fixed``: parameters of an earlier fit (``btyd_params``) to predict with instead of
    fitting; an intra-day update takes the full snapshot's, so a customer's predictions do
    not depend on which other customers were re-scored with it.

    Returns:
        The parameters of the last snapshot (empty when it could not be fitted).
    """
    fitted = fitted_btyd(fixed) if fixed is not None else None
    schema = unified_schema([pq.read_schema(path) for path in staged])
    has_summary = all(c in schema.names for c in SUMMARY)
    columns = ["customer_id", SNAPSHOT, *(SUMMARY if has_summary else ())]
    keys = pa.concat_tables(
        pq.read_table(path, columns=columns).cast(pa.schema([schema.field(c) for c in columns]))
        for path in staged
    )
    # Engines write rows in any order; a fixed order makes the fit bit-identical across them.
    order = pc.sort_indices(keys, [(SNAPSHOT, "ascending"), ("customer_id", "ascending")])
    in_order = np.array_equal(order.to_numpy(), np.arange(keys.num_rows))
    if not in_order:
        keys = keys.take(order)
    params: dict[str, float] = {}
    if has_summary:
        summary = keys.select(list(SUMMARY)).to_pandas()
        snapshots = keys.column(SNAPSHOT).to_pandas()
        predictions = pd.DataFrame(
            index=summary.index, columns=list(BTYD_FEATURES), dtype="float64"
        )
        for snapshot in sorted(snapshots.unique()):
            rows = (snapshots == snapshot).to_numpy()
            out, bgnbd, gamma = btyd_features(summary.loc[rows], horizon_days, period_days, fitted)
            predictions.loc[rows] = out.to_numpy()
            params = btyd_params(bgnbd, gamma)
        extra = pa.Table.from_pandas(predictions, preserve_index=False)
    else:
        extra = pa.table({})
    if in_order:
        _append_columns(staged, schema, extra, target)
        return params
    ordered = target.with_name(target.name + ".sorted")
    base = con.read_parquet([str(path) for path in staged], union_by_name=True)
    con.to_parquet(base.order_by([SNAPSHOT, "customer_id"]), ordered, **PARQUET_WRITE_OPTIONS)
    _append_columns([ordered], schema, extra, target)
    ordered.unlink()
    return params


# DuckDB's own row group size: the streamed feature files keep the layout DuckDB writes.
_APPEND_BATCH_ROWS = 122_880
# pyarrow's dictionary limit is in bytes: the DuckDB writes' 8,192 values of 8 bytes (64 KB).
# Its default (1 MB) hashed most of a row group of distinct floats before giving up; at 64 KB
# the 1M bench's training table is written in 5.3 s instead of 7.0 s, in 422 MB instead of 458.
_DICTIONARY_PAGE_BYTES = 8 * DICTIONARY_VALUES


def _append_columns(sources: list[Path], schema: pa.Schema, extra: pa.Table, target: Path) -> None:
    """Write the rows of ``sources`` cast to ``schema``, then ``extra``'s columns, to ``target``.

    ``extra`` has one row per source row, in order (or no columns at all). One batch at a time:
    the wide table is never in memory whole.
    """
    files = [pq.ParquetFile(source) for source in sources]
    rows = sum(file.metadata.num_rows for file in files)
    if extra.num_columns and rows != extra.num_rows:
        raise ValueError(f"{target.name}: {rows} rows to extend, {extra.num_rows} extra rows")
    # Nullable like every engine's output: DuckDB marks some staged columns NOT NULL, Spark none.
    out_schema = pa.schema([*schema, *(f.with_nullable(True) for f in extra.schema)])
    offset = 0
    with pq.ParquetWriter(
        target, out_schema, dictionary_pagesize_limit=_DICTIONARY_PAGE_BYTES
    ) as writer:
        for batch in batches_read_ahead(files, _APPEND_BATCH_ROWS):
            base = [batch.column(f.name).cast(f.type) for f in schema]
            more = extra.slice(offset, batch.num_rows)
            columns = [*base, *(c.combine_chunks() for c in more.columns)]
            writer.write_batch(pa.RecordBatch.from_arrays(columns, schema=out_schema))
            offset += batch.num_rows


# Exact channel and event-type lists as JSON (a level may hold a comma); read by score runs.
LEVELS_PARAM = "feature_levels"
# Every level list (channels, event types, attribute values) of a build: too long for a param.
LEVELS_ARTIFACT = "feature_levels.json"
LEVEL_KEYS = ("channels", "event_types", "attribute_levels")


def _logged_levels(client: MlflowClient, run_id: str) -> dict[str, Any]:
    """Return the level lists a training run logged (artifact, else the older params)."""
    try:
        return dict(mlflow.artifacts.load_dict(f"runs:/{run_id}/{LEVELS_ARTIFACT}"))
    except Exception:  # a run from before the artifact: its params say channels and event types
        params = client.get_run(run_id).data.params
        if LEVELS_PARAM in params:
            return dict(json.loads(params[LEVELS_PARAM]))
        return {
            key: [v for v in params[f"feature_{key}"].split(",") if v]
            for key in ("channels", "event_types")
            if f"feature_{key}" in params
        }


def champion_levels(config: Config) -> tuple[FeatureConfig, str]:
    """Return the feature settings to score with, and where their levels came from.

    Channels, event types and attribute values the config leaves open are the ones the champion
    churn model was trained with (logged with its training run), so a new frequent channel cannot
    change the column set the model expects. Without a champion they stay open (resolved from data).

    Returns:
        ``config.features`` with the champion's levels filled in, and ``"data"``, ``"config"``
        or ``"champion <model> v<N>"``.
    """
    features = config.features
    if all(getattr(features, key) is not None for key in LEVEL_KEYS):
        return features, "config"
    name = config.mlflow.churn_model
    version = find_champion(name)
    if version is None:
        return features, "data"
    client = MlflowClient()
    run_id = client.get_model_version(name, str(version)).run_id
    if not run_id:
        return features, "data"
    levels = _logged_levels(client, run_id)
    update: dict[str, Any] = {
        key: levels[key] for key in LEVEL_KEYS if getattr(features, key) is None and key in levels
    }
    if not update:  # a champion logged from a run without a feature build
        return features, "data"
    return features.model_copy(update=update), f"champion {name} v{version}"


FEATURE_TABLES = ("train", "validation", "scoring")
# A fixed key: the same customer ids always give the same hold-out, run after run.
_HOLDOUT_KEY = "churnseg-holdout"


def holdout_mask(ids: pd.Series, share: float) -> NDArray[np.bool_]:
    """Return which customers are held out: a stable hash of the id below ``share``.

    The split depends only on each id (not on row order or the other ids), so a customer stays
    on the same side across retrains and engines.
    """
    hashed = pd.util.hash_array(ids.astype("string").to_numpy(dtype=object), hash_key=_HOLDOUT_KEY)
    return np.asarray((hashed % 10_000) < round(share * 10_000), dtype=bool)


def hold_out_customers(labelled: Path, validation: Path, share: float) -> tuple[int, int]:
    """Move a stable ``share`` of the customers of ``labelled`` into ``validation``.

    For a snapshot without timestamps there is no later time to validate on, so a seeded share
    of customers is held out instead (``snapshots.holdout_share``).

    Returns:
        Rows left in ``labelled`` and rows written to ``validation``.
    """
    table = pq.read_table(labelled)
    held = pa.array(holdout_mask(table.column("customer_id").to_pandas(), share))
    kept, out = table.filter(pc.invert(held)), table.filter(held)
    if kept.num_rows == 0 or out.num_rows == 0:
        raise DataContractError(
            f"labelled customers: {table.num_rows} are too few to hold out a share of "
            f"{share:.0%} for validation and keep the rest for training"
        )
    pq.write_table(kept, labelled)
    pq.write_table(out, validation)
    return kept.num_rows, out.num_rows


HISTORY_PREFIX = "history."


def materialised_history(
    engine: FeatureEngine, transactions: ir.Table, latest: date, folder: Path
) -> PreparedHistory:
    """Return the transactions' prepared history up to ``latest``, written once to ``folder``.

    Its tables land as ``history.<table>.parquet`` files (removed by ``drop_history``); every
    snapshot of the build then reads them instead of grouping all transaction lines again.
    """

    def written(name: str, table: ir.Table) -> ir.Table:
        path = folder / f"{HISTORY_PREFIX}{name}.parquet"
        engine.write_parquet(table, path)
        return engine.read_parquet(path)

    return prepare_history(transactions, latest, written)


def drop_history(folder: Path) -> None:
    """Remove the prepared-history files ``materialised_history`` wrote to ``folder``."""
    for path in folder.glob(f"{HISTORY_PREFIX}*.parquet"):
        path.unlink()


BUILD_SUFFIX = ".build.json"


def build_file(features_path: Path) -> Path:
    """Return where a feature table's build state is kept: its BTYD fit, attribute kinds.

    ``{"btyd": {...}, "attribute_kinds": {...}, "boolean_text": [...]}``: what an intra-day
    update of a snapshot built from this table must reuse to give its customers the same
    features.
    """
    return features_path.with_suffix(BUILD_SUFFIX)


# DuckDB memory a snapshot's joined families hold while probed, per customer and column:
# 6.45 GB at 5M customers and 117 columns (duckdb_memory() by tag, sampled during the query).
_JOIN_BYTES_PER_VALUE = 11


def sorts_in_query(engine: FeatureEngine, customers: int, columns: int) -> bool:
    """Return whether a snapshot query sorts its own rows (otherwise ``_with_btyd`` sorts).

    Sorting in the query saves a pass over the wide table, but on DuckDB the sort then needs
    memory beside the hash tables of the families' joins, which stay in memory while they are
    probed: at 5M customers and an 8 GB limit the sorted scoring snapshot ran out of memory and
    the unsorted one completed (135 s). So DuckDB sorts in the query only while those hash
    tables (``customers`` x ``columns`` x 11 bytes) would take less than half its memory limit.
    Spark always does.
    """
    if not isinstance(engine.con, DuckDBBackend):
        return True
    held = customers * columns * _JOIN_BYTES_PER_VALUE
    return held < duckdb_memory_limit(engine.con) / 2


def customers_estimate(paths: RunPaths) -> int:
    """Return about how many customers a snapshot of the run can hold (from file metadata).

    The larger of the clean customers table and the ids any source showed (``seen``); a
    snapshot holds the customers known at its cutoff, at most about that many.
    """
    files = [paths.clean / "customers.parquet", paths.clean / SEEN_FILE]
    return max((pq.ParquetFile(f).metadata.num_rows for f in files if f.exists()), default=0)


def feature_stage(
    config: Config,
    paths: RunPaths,
    plan: CutoffPlan,
    only: tuple[str, ...] = FEATURE_TABLES,
    btyd_fixed: dict[str, float] | None = None,
    features: FeatureConfig | None = None,
    engine: FeatureEngine | None = None,
) -> dict[str, int]:
    """Write training, validation and scoring feature tables; return their row counts.

    ``only`` limits the build to some of them (scoring alone needs no stacked training cutoffs).

    Features come from every clean table present (``features.build_features``), built on the
    configured engine (``engine.backend``: DuckDB or Spark); each table lands as one Parquet
    file either way. Channels and event types are resolved once at the scoring cutoff so the
    three tables share columns; a build without the training table (the score and monitor
    flows) takes them from the champion churn model's training run instead, so scoring gives
    the columns the champion expects. A build of several cutoffs groups the transaction lines
    into orders and purchase days once (``materialised_history``) and cuts that per snapshot,
    with the same result. BG/NBD and Gamma-Gamma are fitted on each snapshot's own
    history and add their predictions; next to each table, ``<table>.build.json`` keeps the
    parameters its newest snapshot was predicted with and the attribute kinds (``build_file``).

    Args:
        config: The run's config.
        paths: The run folder (clean tables in, feature tables out).
        plan: The cutoffs.
        only: The tables to build.
        btyd_fixed: Predict BTYD with these parameters instead of fitting (an intra-day
            update: the published snapshot's fit).
        features: Feature settings with every level list resolved (``champion_levels``), to
            skip the registry lookup (the API resolves them once).
        engine: Build on this engine and leave it open (the API's warm DuckDB connection,
            whose scoring query is a template filled with each cutoff).

    Metrics and parameters go to the active MLflow run, when there is one.
    """
    paths.features.mkdir(parents=True, exist_ok=True)
    if features is not None:
        levels_from = "given"
    elif "train" in only:  # a new model: levels from the config or today's data
        given = all(getattr(config.features, key) is not None for key in LEVEL_KEYS)
        features, levels_from = config.features, "config" if given else "data"
    else:
        features, levels_from = champion_levels(config)
    counts = {}
    params: dict[str, float] = {}
    skipped: list[str] = []
    with contextlib.ExitStack() as opened:
        if engine is None:
            engine = opened.enter_context(connect_feature_engine(config.engine))
            # The BTYD join and the final files run on embedded DuckDB whatever the engine.
            local = opened.enter_context(FeatureEngine(connect_engine(config.engine)))
        else:
            local = engine
        tables = {
            name: engine.read_parquet(paths.clean / f"{name}.parquet")
            for name in CLEAN_ORDER
            if (paths.clean / f"{name}.parquet").exists()
        }
        seen_file = paths.clean / SEEN_FILE
        seen = engine.read_parquet(seen_file) if seen_file.exists() else None
        customers = customers_estimate(paths)
        settings = resolve_levels(tables, plan.scoring, features)
        h = plan.horizon_days
        # Snapshots, oldest first; each is one query, so a build holds one snapshot's state.
        warm = engine.con if isinstance(engine.con, WarmDuckDB) else None
        history = None
        cutoffs = _built_cutoffs(plan, only)
        if "transactions" in tables and len(cutoffs) > 1:
            # Orders and purchase days grouped once for every snapshot (same rows, tested).
            opened.callback(drop_history, paths.features)
            history = materialised_history(
                engine, tables["transactions"], max(cutoffs), paths.features
            )
        builders: dict[str, Callable[[], Sequence[tuple[date, ir.Table | None]]]] = {
            "train": lambda: list(
                zip(
                    sorted(plan.training),
                    training_snapshots(tables, plan.training, settings, h, seen, history),
                    strict=True,
                )
            ),
            "validation": lambda: [
                (
                    plan.validation,
                    labelled_snapshot(tables, plan.validation, settings, h, seen, history),
                )
            ],
            # On a warm connection the scoring query is filled in from its template below.
            "scoring": lambda: [
                (
                    plan.scoring,
                    None
                    if warm
                    else scoring_snapshot(tables, plan.scoring, settings, h, seen, history),
                )
            ],
        }
        if plan.split == "customers":  # one labelled snapshot, split by customer below
            builders.pop("validation")
        exprs = {name: build() for name, build in builders.items() if name in only}
        for name, snapshots in progress.track(exprs.items(), "building feature tables"):
            target = paths.features / f"{name}.parquet"
            staged = []
            for i, (cutoff, expr) in enumerate(snapshots):
                path = paths.features / f"{name}.staged{i}.parquet"
                if expr is not None:
                    if sorts_in_query(engine, customers, len(expr.columns)):
                        # Sorted as the final file is: the BTYD columns stream in, no sort pass.
                        expr = expr.order_by("customer_id")
                    engine.write_parquet(expr, path)
                elif warm is not None:
                    sql, declared = warm.cutoff_query(
                        _scoring_key(tables, seen, settings, h),
                        lambda at: scoring_snapshot(tables, at, settings, h, seen).order_by(
                            "customer_id"
                        ),
                        cutoff_datetime(cutoff),
                    )
                    engine.write_sql(sql, declared, path)
                if pq.ParquetFile(path).metadata.num_rows == 0:
                    path.unlink()
                    skipped.append(f"{name} snapshot {cutoff}: no customer at risk, left out")
                    continue
                staged.append(path)
            if not staged:
                raise DataContractError(
                    f"feature table {name!r}: no customer is known and at risk at "
                    f"{', '.join(str(c) for c, _ in snapshots)} (label mode "
                    f"{settings.label!r}); check snapshots.as_of and the label settings"
                )
            params = _with_btyd(local.con, staged, target, h, settings.btyd_period_days, btyd_fixed)
            kinds, boolean_text = read_attributes(paths.clean)
            build = {"btyd": params, "attribute_kinds": kinds, "boolean_text": boolean_text}
            build_file(target).write_text(json.dumps(build))
            for path in staged:
                path.unlink()
            counts[name] = int(pq.ParquetFile(target).metadata.num_rows)
        if plan.split == "customers" and "train" in counts:
            counts["train"], counts["validation"] = hold_out_customers(
                paths.features / "train.parquet",
                paths.features / "validation.parquet",
                config.snapshots.holdout_share,
            )
    if mlflow.active_run() is not None:
        _log_feature_build(
            config, plan, settings, levels_from, counts, params, [*plan.notes, *skipped]
        )
    return counts


def _built_cutoffs(plan: CutoffPlan, only: tuple[str, ...]) -> list[date]:
    """Return the distinct cutoffs a build of the ``only`` tables computes snapshots at."""
    cutoffs = set(plan.training) if "train" in only else set()
    if "validation" in only and plan.split == "time":
        cutoffs.add(plan.validation)
    if "scoring" in only:
        cutoffs.add(plan.scoring)
    return sorted(cutoffs)


def _scoring_key(
    tables: Mapping[str, ir.Table], seen: ir.Table | None, settings: FeatureConfig, horizon: int
) -> tuple[object, ...]:
    """Return what a scoring query depends on besides its cutoff (``WarmDuckDB.cutoff_query``)."""
    inputs = tuple((name, table.op()) for name, table in tables.items())
    return inputs, seen.op() if seen is not None else None, settings.model_dump_json(), horizon


def _log_feature_build(
    config: Config,
    plan: CutoffPlan,
    settings: FeatureConfig,
    levels_from: str,
    counts: dict[str, int],
    params: dict[str, float],
    notes: list[str],
) -> None:
    """Log what a feature build planned and resolved, and what it wrote, to the active run."""
    h = plan.horizon_days
    if notes:
        mlflow.log_dict({"notes": notes}, "cutoff_plan_notes.json")
    mlflow.log_params(
        {
            "cutoff_scoring": plan.scoring.isoformat(),
            "cutoff_validation": plan.validation.isoformat(),
            "cutoffs_training": ",".join(d.isoformat() for d in plan.training),
            "cutoff_split": plan.split,
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
    mlflow.log_dict({key: getattr(settings, key) for key in LEVEL_KEYS}, LEVELS_ARTIFACT)
    mlflow.log_metrics({f"rows_features_{n}": c for n, c in counts.items()})
    # The scoring snapshot's fit: the parameters the published BTYD features come from.
    mlflow.log_metrics(params)
