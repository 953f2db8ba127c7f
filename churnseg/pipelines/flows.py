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
from churnseg.pipelines.config import Config, load_config


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
    with mlflow.start_run(run_name="score", nested=nested) as run:
        mlflow.set_tags({"churnseg.flow": "score", "prefect.flow_run_id": paths.root.name})
        summary: dict[str, Any] = {}
        if features_path is None:
            stages.log_lineage(config)
            summary["rows_read"] = tasks.extract(config, paths)
            summary["quality"] = tasks.clean(config, paths)
            cutoffs = tasks.plan(config, paths)
            tasks.features(config, paths, cutoffs)
            features_file = paths.features / "scoring.parquet"
        else:
            features_file = Path(features_path)
        scored = tasks.score(config, features_file, paths.scores, run.info.run_id)
        published = tasks.publish(config, paths.scores)
        mlflow.log_metric("rows_published", published)
    summary.update(
        rows_scored=scored,
        rows_published=published,
        table=f"{config.publish_url} :: {config.publish.table}",
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
    with mlflow.start_run(run_name="retrain") as run:
        mlflow.set_tags({"churnseg.flow": "retrain", "prefect.flow_run_id": paths.root.name})
        stages.log_lineage(config)
        rows_read = tasks.extract(config, paths)
        quality = tasks.clean(config, paths)
        cutoffs = tasks.plan(config, paths)
        feature_rows = tasks.features(config, paths, cutoffs)
        seg = tasks.segmentation(config, paths)
        churn = tasks.churn(config, paths)
        scoring = score_flow(
            config_path=config_path, features_path=str(paths.features / "scoring.parquet")
        )
    return {
        "rows_read": rows_read,
        "quality": quality,
        "snapshot": cutoffs.scoring.isoformat(),
        "feature_rows": feature_rows,
        "k": seg.k,
        "segment_names": seg.names,
        "segmentation_version": seg.version,
        "churn_version": churn.version,
        "val_roc_auc": churn.metrics["val_roc_auc"],
        "mlflow_tracking_uri": config.tracking_uri,
        "mlflow_run_id": run.info.run_id,
        "run_folder": str(paths.root),
        **scoring,
    }
