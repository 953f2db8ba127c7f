"""MLflow set-up and lineage: which config, code and data a run used."""

from __future__ import annotations

import logging
import sqlite3
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

logger = logging.getLogger(__name__)


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
    """Point MLflow at the configured store and experiment; return the experiment id.

    A state folder that holds its own SQLite tracking store is self-contained: copied or moved,
    the store still names the folder it was created in (MLflow keeps absolute artifact paths),
    so those paths are re-pointed at the folder's new place before anything is written.
    """
    config.state_dir.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(config.tracking_uri)
    mlflow.set_registry_uri(config.tracking_uri)
    client = MlflowClient()
    location = Path(config.resolve(config.mlflow.artifact_location)).resolve().as_uri()
    existing = client.get_experiment_by_name(config.mlflow.experiment)
    if existing is not None:
        experiment_id: str = existing.experiment_id
        if existing.artifact_location != location:
            _follow_moved_state(config, existing.artifact_location, location)
    else:
        experiment_id = client.create_experiment(
            config.mlflow.experiment, artifact_location=location
        )
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


# Columns of MLflow's SQLite store that hold absolute artifact or run-folder paths.
_PATH_COLUMNS = (
    ("experiments", "artifact_location", None),
    ("runs", "artifact_uri", None),
    ("logged_models", "artifact_location", None),
    ("model_versions", "storage_location", None),
    ("model_versions", "source", None),
    ("tags", "value", "churnseg.run_folder"),
)


def _follow_moved_state(config: Config, recorded: str, configured: str) -> int:
    """Re-point a copied or moved state folder's SQLite store at the folder; return rows changed.

    Only for a store kept inside the state folder (a shared server or database is left alone),
    and only when the recorded artifact location is the configured one under another folder.
    """
    store = _sqlite_store_in_state(config)
    relative = _relative_to_state(config)
    if store is None or relative is None:
        return 0
    old_artifacts = recorded.removeprefix("file://")
    if not old_artifacts.endswith("/" + relative):
        return 0
    old_root = old_artifacts[: -len(relative) - 1]
    new_root = str(config.state_dir.resolve())
    changed = relocate_paths(store, old_root, new_root)
    logger.warning(
        "state folder moved from %s to %s: re-pointed %d paths in %s",
        old_root,
        new_root,
        changed,
        store.name,
    )
    return changed


def _sqlite_store_in_state(config: Config) -> Path | None:
    """Return the SQLite tracking database when it lives inside the state folder."""
    uri = config.tracking_uri
    if not uri.startswith("sqlite:///"):
        return None
    path = Path(uri.removeprefix("sqlite:///")).resolve()
    return path if path.is_relative_to(config.state_dir.resolve()) else None


def _relative_to_state(config: Config) -> str | None:
    """Return the artifact location relative to the state folder (None when outside it)."""
    location = Path(config.resolve(config.mlflow.artifact_location)).resolve()
    state = config.state_dir.resolve()
    return location.relative_to(state).as_posix() if location.is_relative_to(state) else None


def relocate_paths(store: Path, old_root: str, new_root: str) -> int:
    """Replace the ``old_root`` folder by ``new_root`` in every path an MLflow SQLite store keeps.

    Returns:
        The number of values changed.
    """
    changed = 0
    pairs = [(f"file://{old_root}/", f"file://{new_root}/"), (f"{old_root}/", f"{new_root}/")]
    with sqlite3.connect(store) as con:
        tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master")}
        for table, column, key in _PATH_COLUMNS:
            if table not in tables:
                continue
            for old, new in pairs:
                # An exact prefix test: LIKE would read "_" in a path as a wildcard.
                where = f"substr({column}, 1, length(?)) = ?" + (" AND key = ?" if key else "")
                args: tuple[str, ...] = (new, old, old, old) + ((key,) if key else ())
                cursor = con.execute(
                    f"UPDATE {table} SET {column} = ? || substr({column}, length(?) + 1) "
                    f"WHERE {where}",
                    args,
                )
                changed += cursor.rowcount
    return changed


def summary_line(items: dict[str, Any]) -> str:
    """Return ``key=value`` pairs joined for a one-line log message."""
    return ", ".join(f"{k}={v}" for k, v in items.items())
