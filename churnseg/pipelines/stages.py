"""Pipeline stages as plain functions: read references, call the library, write references.

Prefect tasks wrap these one to one; notebooks and tests call them directly. Stages pass paths
and small summaries, never large frames.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient

from churnseg.features.behaviour import rfm_features
from churnseg.features.cleaning import (
    REASON,
    ROW,
    CleaningRules,
    clean_table,
    conform,
)
from churnseg.features.contract import CONTRACTS
from churnseg.features.snapshots import (
    SNAPSHOT,
    CutoffPlan,
    build_training_set,
    labelled_snapshot,
    plan_cutoffs,
)
from churnseg.models import churn as churn_model
from churnseg.models import segmentation as seg_model
from churnseg.models.registry import (
    champion_version,
    load_champion,
    log_and_register,
    set_champion,
)
from churnseg.pipelines.config import Config, config_as_dict
from churnseg.pipelines.sources import connect_engine, extract_sources

FEATURE_WINDOWS = (30, 90, 180, 365)
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


def run_paths(config: Config, run_key: str) -> RunPaths:
    """Return the paths of run ``run_key`` (the folders are created by the stages)."""
    return RunPaths(config.state_dir / "runs" / run_key)


def new_run_key() -> str:
    """Return a sortable key for a new run folder."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


def ensure_sample(config: Config) -> bool:
    """Generate the bundled sample into ``<state_dir>/sample`` when enabled and missing.

    Returns:
        True when data was generated.
    """
    from churnseg.pipelines.sample import SampleSpec, write_sample

    if not config.sample.enabled:
        return False
    paths = [Path(config.resolve(s.path)) for s in config.sources.values() if s.path]
    in_sample = [p for p in paths if p.parent.resolve() == config.sample_dir.resolve()]
    if in_sample and all(p.exists() for p in in_sample):
        return False
    spec = SampleSpec(
        customers=config.sample.customers,
        seed=config.sample.seed,
        dirty_fraction=config.sample.dirty_fraction,
    )
    write_sample(spec, config.sample_dir)
    return True


def extract_stage(config: Config, paths: RunPaths) -> dict[str, int]:
    """Copy every source into the run folder; return rows read per table."""
    ensure_sample(config)
    counts = extract_sources(config, paths.raw)
    mlflow.log_metrics({f"rows_read_{t}": n for t, n in counts.items()})
    return counts


@dataclass(frozen=True)
class TableQuality:
    """Row accounting of one cleaned table: rows = clean + quarantined."""

    rows: int
    clean: int
    quarantined: int
    by_reason: dict[str, int] = field(default_factory=dict)

    @property
    def quarantined_share(self) -> float:
        """Return the share of rows quarantined (0 for an empty table)."""
        return self.quarantined / self.rows if self.rows else 0.0


def clean_stage(config: Config, paths: RunPaths) -> dict[str, TableQuality]:
    """Conform and clean every extracted table; write clean and quarantine Parquet files.

    Raises:
        DataContractError: A table lacks a required column.
        DataQualityError: A table lost more than ``cleaning.max_quarantine_share`` of its rows.
    """
    paths.clean.mkdir(parents=True, exist_ok=True)
    paths.quarantine.mkdir(parents=True, exist_ok=True)
    now = config.cleaning.now
    rules = CleaningRules(
        min_date=config.cleaning.min_date,
        now=datetime.combine(now + timedelta(days=1), datetime.min.time())
        if now
        else datetime.now(UTC).replace(tzinfo=None),
    )
    con = connect_engine()
    report: dict[str, TableQuality] = {}
    customer_ids = None
    for name in CLEAN_ORDER:
        if name not in config.sources:
            continue
        raw = con.read_parquet(paths.raw / f"{name}.parquet")
        conformed = conform(raw, CONTRACTS[name], config.sources[name].columns)
        result = clean_table(name, conformed, customer_ids, rules)
        clean_file = paths.clean / f"{name}.parquet"
        con.to_parquet(result.clean.drop(ROW), clean_file)
        con.to_parquet(result.quarantine, paths.quarantine / f"{name}.parquet")
        quarantine = con.read_parquet(paths.quarantine / f"{name}.parquet")
        reasons = quarantine.group_by(REASON).aggregate(n=quarantine.count()).execute()
        by_reason = {str(r): int(n) for r, n in zip(reasons[REASON], reasons["n"], strict=True)}
        quality = TableQuality(
            rows=int(raw.count().execute()),
            clean=int(con.read_parquet(clean_file).count().execute()),
            quarantined=sum(by_reason.values()),
            by_reason=by_reason,
        )
        report[name] = quality
        if name == "customers":
            customer_ids = con.read_parquet(clean_file).select("customer_id")
    _log_quality(report)
    _check_quarantine_share(report, config.cleaning.max_quarantine_share)
    return report


def _log_quality(report: dict[str, TableQuality]) -> None:
    metrics: dict[str, float] = {}
    for table, q in report.items():
        metrics[f"rows_clean_{table}"] = q.clean
        metrics[f"rows_quarantined_{table}"] = q.quarantined
        for reason, n in q.by_reason.items():
            metrics[f"quarantine_{table}_{reason}"] = n
    mlflow.log_metrics(metrics)
    mlflow.log_dict({t: asdict(q) for t, q in report.items()}, "data_quality.json")


def _check_quarantine_share(report: dict[str, TableQuality], limit: float) -> None:
    failing = {t: q for t, q in report.items() if q.quarantined_share > limit}
    if not failing:
        return
    parts = []
    for table, q in failing.items():
        top = Counter(q.by_reason).most_common(3)
        reasons = ", ".join(f"{r}: {n}" for r, n in top)
        parts.append(
            f"table {table!r}: {q.quarantined} of {q.rows} rows quarantined "
            f"({q.quarantined_share:.1%} > {limit:.0%}); top reasons: {reasons}"
        )
    raise DataQualityError("; ".join(parts))


def resolve_plan(config: Config, paths: RunPaths) -> CutoffPlan:
    """Return the cutoff plan: ``snapshots.as_of`` or the day after the last clean purchase."""
    snap = config.snapshots
    as_of = snap.as_of
    if as_of is None:
        con = connect_engine()
        t = con.read_parquet(paths.clean / "transactions.parquet")
        last = t.timestamp.max().execute()
        if last is None or pd.isna(last):
            raise DataQualityError("table 'transactions': no clean rows, no cutoff can be set")
        as_of = pd.Timestamp(last).date() + timedelta(days=1)
    return plan_cutoffs(as_of, snap.horizon_days, snap.train_cutoffs, snap.cutoff_step_days)


def feature_stage(config: Config, paths: RunPaths, plan: CutoffPlan) -> dict[str, int]:
    """Write training, validation and scoring feature tables; return their row counts."""
    paths.features.mkdir(parents=True, exist_ok=True)
    con = connect_engine()
    tx = con.read_parquet(paths.clean / "transactions.parquet")
    customers_file = paths.clean / "customers.parquet"
    customers = con.read_parquet(customers_file) if customers_file.exists() else None
    h = plan.horizon_days
    tables = {
        "train": build_training_set(tx, customers, plan.training, h, FEATURE_WINDOWS),
        "validation": labelled_snapshot(tx, customers, plan.validation, h, FEATURE_WINDOWS),
        "scoring": rfm_features(tx, customers, plan.scoring, FEATURE_WINDOWS).mutate(
            **{SNAPSHOT: plan.scoring}
        ),
    }
    counts = {}
    for name, expr in tables.items():
        target = paths.features / f"{name}.parquet"
        con.to_parquet(expr.order_by([SNAPSHOT, "customer_id"]), target)
        counts[name] = int(con.read_parquet(target).count().execute())
    mlflow.log_params(
        {
            "cutoff_scoring": plan.scoring.isoformat(),
            "cutoff_validation": plan.validation.isoformat(),
            "cutoffs_training": ",".join(d.isoformat() for d in plan.training),
            "horizon_days": h,
        }
    )
    mlflow.log_metrics({f"rows_features_{n}": c for n, c in counts.items()})
    return counts


@dataclass(frozen=True)
class SegmentationOutcome:
    """What the segmentation stage registered."""

    version: int
    k: int
    names: dict[int, str]


def segmentation_stage(config: Config, paths: RunPaths) -> SegmentationOutcome:
    """Fit segmentation on the latest snapshot, register it and make it champion."""
    s = config.segmentation
    frame = pd.read_parquet(paths.features / "scoring.parquet")
    X = frame[list(seg_model.SEGMENT_FEATURES)]
    pipeline = seg_model.segmentation_pipeline(
        k_min=s.k_min,
        k_max=s.k_max,
        min_segment_share=s.min_segment_share,
        silhouette_sample=s.silhouette_sample,
        n_init=s.n_init,
        random_state=s.random_state,
    ).fit(X)
    km = pipeline.named_steps["kmeans"]
    segments = pipeline.predict(X)
    profiles = seg_model.segment_profiles(frame, segments, seg_model.SEGMENT_FEATURES)
    names = seg_model.name_segments(profiles)
    profiles.insert(1, "segment_name", profiles.segment_id.map(names))
    mlflow.log_param("segmentation_k", km.k_)
    k_scores = pd.DataFrame(km.scores_)
    mlflow.log_metric("segmentation_silhouette", float(k_scores.set_index("k").silhouette[km.k_]))
    mlflow.log_table(k_scores, "segmentation/k_scores.json")
    mlflow.log_table(profiles, "segmentation/profiles.json")
    version = log_and_register(
        pipeline, config.mlflow.segmentation_model, X, seg_model.SKOPS_TYPES, segments
    )
    MlflowClient().set_model_version_tag(
        config.mlflow.segmentation_model, str(version), SEGMENT_NAMES_TAG, json.dumps(names)
    )
    set_champion(config.mlflow.segmentation_model, version)
    return SegmentationOutcome(version=version, k=int(km.k_), names=names)


@dataclass(frozen=True)
class ChurnOutcome:
    """What the churn stage registered and how it validated."""

    version: int
    metrics: dict[str, float]


def churn_stage(config: Config, paths: RunPaths) -> ChurnOutcome:
    """Train on stacked training snapshots, validate out of time, register as champion."""
    train = pd.read_parquet(paths.features / "train.parquet")
    validation = pd.read_parquet(paths.features / "validation.parquet")
    columns = churn_model.feature_columns(train)
    model = churn_model.churn_pipeline(c=config.churn.c, max_iter=config.churn.max_iter)
    model.fit(train[columns], train["churned"])
    metrics = churn_model.evaluate_churn(model, validation, columns).as_dict()
    metrics["train_rows"] = float(len(train))
    metrics["train_churn_rate"] = float(train["churned"].mean())
    mlflow.log_metrics(metrics)
    example = validation[columns]
    version = log_and_register(
        model,
        config.mlflow.churn_model,
        example,
        churn_model.SKOPS_TYPES,
        model.predict_proba(example.head(3))[:, 1],
    )
    set_champion(config.mlflow.churn_model, version)
    return ChurnOutcome(version=version, metrics=metrics)


def score_stage(config: Config, features_path: Path, out_path: Path, run_id: str) -> int:
    """Score a feature table with the champion models; write the scores file; return rows."""
    seg_name, churn_name = config.mlflow.segmentation_model, config.mlflow.churn_model
    segmenter, classifier = load_champion(seg_name), load_champion(churn_name)
    seg_version, churn_version = champion_version(seg_name), champion_version(churn_name)
    names_json = MlflowClient().get_model_version(seg_name, str(seg_version)).tags
    names = {int(k): v for k, v in json.loads(names_json[SEGMENT_NAMES_TAG]).items()}
    frame = pd.read_parquet(features_path)
    segments = segmenter.predict(frame[list(seg_model.SEGMENT_FEATURES)])
    columns = list(classifier.feature_names_in_)
    proba = classifier.predict_proba(frame[columns])[:, 1]
    scores = pd.DataFrame(
        {
            "customer_id": frame["customer_id"],
            "snapshot_date": frame[SNAPSHOT].astype(str),
            "segment_id": segments.astype("int64"),
            "segment_name": [names.get(int(s), f"Segment {s}") for s in segments],
            "churn_probability": proba.astype("float64"),
            "segmentation_model_version": seg_version,
            "churn_model_version": churn_version,
            "run_id": run_id,
            "scored_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    scores.to_parquet(out_path, index=False)
    mlflow.log_metrics({"rows_scored": len(scores), "mean_churn_probability": proba.mean()})
    return len(scores)


def log_lineage(config: Config) -> None:
    """Log the resolved config to the active run (credentials stay in the environment)."""
    mlflow.log_dict(config_as_dict(config), "config.json")


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
