"""End-to-end: the real flows on a small sample, under one Prefect harness and a temp MLflow."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from mlflow import MlflowClient

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def flow_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    state = tmp_path_factory.mktemp("state")
    path = state / "config.yaml"
    path.write_text(
        f"""
state_dir: {state}
sample: {{customers: 800, seed: 5, dirty_fraction: 0.02}}
sources:
  customers: {{path: "{{state_dir}}/sample/customers.parquet"}}
  transactions: {{path: "{{state_dir}}/sample/transactions.parquet"}}
segmentation: {{k_min: 2, k_max: 5, n_init: 2}}
snapshots: {{max_train_cutoffs: 3}}
"""
    )
    return path


@pytest.fixture(scope="module")
def retrained(prefect_harness: None, flow_config: Path) -> dict[str, Any]:
    from churnseg.pipelines.flows import retrain_flow

    return retrain_flow(config_path=str(flow_config))


def published(config_path: Path) -> pd.DataFrame:
    db = config_path.parent / "scores.db"
    with sqlite3.connect(db) as con:
        return pd.read_sql("SELECT * FROM customer_scores", con)


def test_retrain_accounts_for_every_row(retrained: dict[str, Any]) -> None:
    for table, quality in retrained["quality"].items():
        assert quality.rows == retrained["rows_read"][table], table
        assert quality.clean + quality.quarantined == quality.rows, table
    assert retrained["quality"]["transactions"].quarantined > 0, "the sample has dirty rows"


def test_retrain_publishes_one_row_per_clean_customer(
    retrained: dict[str, Any], flow_config: Path
) -> None:
    out = published(flow_config)
    clean_customers = pd.read_parquet(Path(retrained["run_folder"]) / "clean" / "customers.parquet")
    assert len(out) == retrained["rows_published"]
    assert sorted(out.customer_id) == sorted(clean_customers.customer_id)
    assert out.churn_probability.between(0, 1).all()
    assert ((out.churn_probability > 0) & (out.churn_probability < 1)).all(), "never 0 or 1"
    # Bands follow the published probability: a higher one is never in a lower band.
    rank = out.risk_band.map({"low": 0, "medium": 1, "high": 2})
    scored = out[rank.notna()].assign(rank=rank).sort_values("churn_probability")
    assert scored["rank"].is_monotonic_increasing
    assert scored.churn_probability.nunique() == len(scored), "no tied blocks"
    assert out.snapshot_date.nunique() == 1 and out.snapshot_date[0] == retrained["snapshot"]
    assert set(out.segment_id) == set(range(retrained["k"]))


def test_retrain_registers_both_champions(retrained: dict[str, Any], flow_config: Path) -> None:
    client = MlflowClient(tracking_uri=f"sqlite:///{flow_config.parent}/mlflow.db")
    for name, key in [
        ("churnseg-segmentation", "segmentation_version"),
        ("churnseg-churn", "churn_champion_version"),
    ]:
        version = client.get_model_version_by_alias(name, "champion")
        assert int(version.version) == retrained[key], name
        audit = [k for k in version.tags if k.startswith("audit.")]
        assert audit, f"{name}: the promotion is recorded, so it can be rolled back"
    run = client.get_run(retrained["mlflow_run_id"])
    assert run.data.metrics["val_roc_auc"] == pytest.approx(retrained["val_roc_auc"])
    assert retrained["val_roc_auc"] > 0.6, "the sample's churn mechanism gives real signal"
    children = client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'"
    )
    assert [c.data.tags["churnseg.flow"] for c in children] == ["score"]


def test_score_flow_republishes_same_snapshot_idempotently(
    retrained: dict[str, Any], flow_config: Path
) -> None:
    from churnseg.pipelines.flows import score_flow

    before = published(flow_config)
    summary = score_flow(config_path=str(flow_config))
    after = published(flow_config)
    assert summary["rows_published"] == len(before) == len(after)
    merged = before.merge(after, on=["snapshot_date", "customer_id"])
    assert (merged.churn_probability_x == merged.churn_probability_y).all()
    assert (merged.segment_id_x == merged.segment_id_y).all()


def test_scoring_predicts_each_customer_once_and_equals_predicting_per_batch(
    retrained: dict[str, Any], flow_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    import pyarrow.parquet as pq

    from churnseg.models import churn as churn_model
    from churnseg.pipelines import stages
    from churnseg.pipelines.config import load_config

    config = load_config(str(flow_config))
    config = config.model_copy(
        update={"publish": config.publish.model_copy(update={"chunk_rows": 300})}
    )
    stages.configure_mlflow(config)
    features = Path(retrained["run_folder"]) / "features" / "scoring.parquet"
    predicted: list[int] = []
    real = churn_model.churn_scores_and_bins

    def counted(model: Any, frame: pd.DataFrame) -> Any:
        predicted.append(len(frame))
        return real(model, frame)

    monkeypatch.setattr(churn_model, "churn_scores_and_bins", counted)
    with mlflow.start_run():
        rows = stages.score_stage(config, features, tmp_path / "kept.parquet", "r")
        # The Dask path's context keeps nothing: each batch predicts its rows itself.
        context = stages.scoring_context(config, "r", features)
        assert context.batch_scores == {}
        batches = pq.ParquetFile(features).iter_batches(batch_size=300)
        stages.score_batches_to_file(batches, context, tmp_path / "again.parquet", "f")
    assert rows > 600, "several batches"
    assert sum(predicted) == 3 * rows, "once in score_stage, twice without kept scores"
    kept = pd.read_parquet(tmp_path / "kept.parquet").drop(columns="scored_at")
    again = pd.read_parquet(tmp_path / "again.parquet").drop(columns="scored_at")
    pd.testing.assert_frame_equal(kept, again)
