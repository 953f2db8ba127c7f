"""Prefect flows: ``retrain`` (extract to publish) and ``score`` (champions to publish).

Each flow run owns exactly one MLflow run; ``score`` called from ``retrain`` opens a nested run
under the retrain run, explicitly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
from prefect import flow
from prefect.runtime import flow_run

from churnseg.pipelines import stages, tasks
from churnseg.pipelines.config import Config, load_config, redact_secrets
from churnseg.pipelines.dask_scoring import score_stage_on_dask
from churnseg.pipelines.publish import latest_snapshot, run_log, target_from_config
from churnseg.pipelines.quality import QUARANTINE_FILE


def _run_key() -> str:
    """Return the Prefect flow run id, or a fresh key outside a flow run."""
    run_id = flow_run.get_id()
    return str(run_id) if run_id else stages.new_run_key()


@flow(name="score")
def score_flow(config_path: str | None = None, features_path: str | None = None) -> dict[str, Any]:
    """Score customers with the champion models and publish them.

    Args:
        config_path: YAML config (default: the bundled sample config).
        features_path: A scoring feature table already built (by ``retrain``); when omitted the
            sources are extracted and cleaned and features are built as of the latest data.

    Returns:
        A summary: rows scored and published, the snapshot, the output table, the MLflow run id.
    """
    config = load_config(config_path)
    stages.configure_mlflow(config)
    paths = stages.run_paths(config, _run_key())
    nested = mlflow.active_run() is not None
    target = target_from_config(config)
    with (
        mlflow.start_run(run_name="score", nested=nested) as run,
        run_log(target, run.info.run_id, "score", paths.root / QUARANTINE_FILE) as entry,
    ):
        mlflow.set_tags({"churnseg.flow": "score", "prefect.flow_run_id": paths.root.name})
        summary: dict[str, Any] = {}
        if features_path is None:
            stages.log_lineage(config)
            summary["rows_read"] = tasks.extract(config, paths)
            entry.rows_read = sum(summary["rows_read"].values())
            summary["quality"] = tasks.clean(config, paths)
            entry.rows_quarantined = sum(q.quarantined for q in summary["quality"].values())
            cutoffs = tasks.plan(config, paths)
            tasks.features(config, paths, cutoffs, only=("scoring",))
            features_file = paths.features / "scoring.parquet"
        else:
            features_file = Path(features_path)
        if config.scoring.uses_dask:  # partitions as tasks on a Dask cluster, same output
            scored = score_stage_on_dask(config, features_file, paths.scores, run.info.run_id)
        else:
            scored = tasks.score(config, features_file, paths.scores, run.info.run_id)
        entry.snapshot_date = latest_snapshot(paths.scores)
        published = tasks.publish(config, paths.scores)
        entry.rows_published = published
        mlflow.log_metric("rows_published", published)
    summary.update(
        rows_scored=scored,
        rows_published=published,
        table=target.describe(target.names.customer_scores),
        score_run_id=run.info.run_id,
    )
    return summary


@flow(name="retrain")
def retrain_flow(config_path: str | None = None) -> dict[str, Any]:
    """Extract, clean, build features, train and promote both models, then score and publish.

    Returns:
        A summary for the command line: rows read and quarantined, k, validation ROC AUC,
        model versions, where the table and the MLflow store are.
    """
    config: Config = load_config(config_path)
    stages.configure_mlflow(config)
    paths = stages.run_paths(config, _run_key())
    target = target_from_config(config)
    with (
        mlflow.start_run(run_name="retrain") as run,
        run_log(target, run.info.run_id, "retrain", paths.root / QUARANTINE_FILE) as entry,
    ):
        mlflow.set_tags(
            {
                "churnseg.flow": "retrain",
                "prefect.flow_run_id": paths.root.name,
                "churnseg.run_folder": str(paths.root.resolve()),
            }
        )
        stages.log_lineage(config)
        rows_read = tasks.extract(config, paths)
        entry.rows_read = sum(rows_read.values())
        quality = tasks.clean(config, paths)
        entry.rows_quarantined = sum(q.quarantined for q in quality.values())
        tasks.lineage(paths, rows_read)
        cutoffs = tasks.plan(config, paths)
        entry.snapshot_date = cutoffs.scoring
        feature_rows = tasks.features(config, paths, cutoffs)
        seg = tasks.segmentation(config, paths, run.info.run_id)
        churn = tasks.churn(config, paths)
        scoring = score_flow(
            config_path=config_path, features_path=str(paths.features / "scoring.parquet")
        )
        entry.rows_published = scoring["rows_published"]
        profiles = paths.root / "segment_profiles.parquet"
        if profiles.exists():
            tasks.publish_profiles(config, profiles)
    return {
        "rows_read": rows_read,
        "quality": quality,
        "snapshot": cutoffs.scoring.isoformat(),
        "feature_rows": feature_rows,
        "k": seg.k,
        "segment_names": seg.names,
        "segmentation_version": seg.version,
        "churn_version": churn.version,
        "churn_promoted": churn.promoted,
        "churn_decision": churn.reason,
        "churn_candidate": churn.candidate,
        "val_roc_auc": churn.metrics["val_roc_auc"],
        "val_ece": churn.metrics["val_ece"],
        "mlflow_tracking_uri": redact_secrets(config.tracking_uri),
        "mlflow_run_id": run.info.run_id,
        "run_folder": str(paths.root),
        **scoring,
    }


@flow(name="monitor")
def monitor_flow(config_path: str | None = None, run_folder: str | None = None) -> dict[str, Any]:
    """Compare the current data with the champion churn model's snapshot; flag drift.

    Feature PSI, churn score drift, segment migration and realised against predicted churn of
    matured published snapshots, all logged to one MLflow run tagged ``churnseg.drift_flagged``.
    When flagged and ``monitoring.retrain_on_drift`` is set, the retrain flow runs afterwards
    (as its own MLflow run, not nested: it is a new model's lineage).

    Args:
        config_path: YAML config (default: the bundled sample config).
        run_folder: A run folder whose clean tables and scoring features are already built
            (e.g. the latest score run); when omitted the sources are extracted, cleaned and
            featurised into a new run folder.

    Returns:
        A summary: flagged, reasons, score drift, features with moderate or major drift,
        matured snapshots, the MLflow run id, and the retrain summary when one ran.
    """
    from churnseg.pipelines.monitor import monitor_summary

    config = load_config(config_path)
    stages.configure_mlflow(config)
    with mlflow.start_run(run_name="monitor") as run:
        if run_folder is None:
            paths = stages.run_paths(config, _run_key())
            stages.log_lineage(config)
            tasks.extract(config, paths)
            tasks.clean(config, paths)
            cutoffs = tasks.plan(config, paths)
            tasks.features(config, paths, cutoffs, only=("scoring",))
        else:
            paths = stages.RunPaths(Path(run_folder))
            cutoffs = stages.resolve_plan(config, paths)
        mlflow.set_tags({"churnseg.flow": "monitor", "churnseg.run_folder": str(paths.root)})
        outcome = tasks.monitor(config, paths, cutoffs.scoring)
    summary = {
        **monitor_summary(outcome),
        "snapshot": cutoffs.scoring.isoformat(),
        "mlflow_run_id": run.info.run_id,
        "run_folder": str(paths.root),
    }
    if outcome.flagged and config.monitoring.retrain_on_drift:
        summary["retrain"] = retrain_flow(config_path=config_path)
    return summary
