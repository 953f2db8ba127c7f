"""MLflow set-up and lineage: which config, code and data a run used."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient

from churnseg.pipelines.config import Config, config_as_dict
from churnseg.pipelines.lineage import code_version, input_lineage
from churnseg.pipelines.sources import (
    connect_engine,
)
from churnseg.pipelines.stages.run_folder import RunPaths


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
