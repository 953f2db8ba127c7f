"""Scoring on a local Dask cluster gives the same scores file as scoring in-process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient

from churnseg.pipelines.dask_scoring import read_rows, row_ranges

# Columns that differ between two scoring runs of the same data by design.
RUN_COLUMNS = ["scored_at", "run_id"]


def test_row_ranges_cover_every_row_once() -> None:
    assert row_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert row_ranges(8, 4) == [(0, 4), (4, 8)]
    assert row_ranges(3, 10) == [(0, 3)]
    assert row_ranges(0, 10) == []


def test_read_rows_crosses_row_groups_in_order(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"x": list(range(10))}), path, row_group_size=3)
    assert pq.ParquetFile(path).num_row_groups == 4, "the test needs several row groups"
    batches = list(read_rows(path, 2, 8, batch_rows=2))
    assert [b.column("x").to_pylist() for b in batches] == [[2], [3, 4], [5], [6, 7]]
    assert all(b.num_rows <= 2 for b in batches), "batches respect batch_rows"
    assert [b.column("x").to_pylist() for b in read_rows(path, 9, 10, 5)] == [[9]]


def _config(state: Path, name: str, extra: str = "") -> Path:
    path = state / name
    path.write_text(
        f"""
state_dir: {state}
sample: {{customers: 600, seed: 3, dirty_fraction: 0.0}}
sources:
  customers: {{path: "{{state_dir}}/sample/customers.parquet"}}
  transactions: {{path: "{{state_dir}}/sample/transactions.parquet"}}
segmentation: {{k_min: 2, k_max: 4, n_init: 2}}
snapshots: {{max_train_cutoffs: 3}}
{extra}
"""
    )
    return path


def _scores_file(state: Path, summary: dict[str, Any]) -> pd.DataFrame:
    client = MlflowClient(tracking_uri=f"sqlite:///{state}/mlflow.db")
    run = client.get_run(summary["score_run_id"])
    folder = state / "runs" / run.data.tags["prefect.flow_run_id"]
    frame = pd.read_parquet(folder / "scores.parquet")
    assert not (folder / "scores.parquet.parts").exists(), "part files are cleaned up"
    return frame


@pytest.fixture
def own_mlflow_experiment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Undo the MLFLOW_EXPERIMENT_ID that ``mlflow.set_experiment`` leaves for later tests."""
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", "")  # recorded, so teardown restores it
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID")


@pytest.mark.slow
def test_score_flow_on_two_dask_workers_equals_the_sequential_run(
    prefect_harness: None, own_mlflow_experiment: None, tmp_path: Path
) -> None:
    from churnseg.pipelines.flows import retrain_flow, score_flow

    sequential_config = _config(tmp_path, "sequential.yaml")
    dask_config = _config(tmp_path, "dask.yaml", "scoring: {dask_workers: 2, partition_rows: 250}")
    retrained = retrain_flow(config_path=str(sequential_config))
    features = str(Path(retrained["run_folder"]) / "features" / "scoring.parquet")
    sequential = score_flow(config_path=str(sequential_config), features_path=features)
    on_dask = score_flow(config_path=str(dask_config), features_path=features)

    n_rows = pq.ParquetFile(features).metadata.num_rows
    assert n_rows > 500, f"three partitions of 250 need > 500 rows, got {n_rows}"
    assert on_dask["rows_scored"] == sequential["rows_scored"] == n_rows
    assert on_dask["rows_published"] == n_rows
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    metrics = client.get_run(on_dask["score_run_id"]).data.metrics
    assert metrics["score_partitions"] == 3, metrics

    expected = _scores_file(tmp_path, sequential)
    actual = _scores_file(tmp_path, on_dask)
    features_order = pd.read_parquet(features, columns=["customer_id"]).customer_id
    assert actual.customer_id.tolist() == features_order.tolist(), "parts concatenated in order"
    assert (actual.run_id != expected.run_id).all(), "two distinct runs"
    pd.testing.assert_frame_equal(
        actual.drop(columns=RUN_COLUMNS).sort_values("customer_id").reset_index(drop=True),
        expected.drop(columns=RUN_COLUMNS).sort_values("customer_id").reset_index(drop=True),
    )
