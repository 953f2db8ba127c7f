"""The chunked score stage: same file whatever the chunk size, typed to the output contract.

``score_stage`` owns the I/O (batches in, one Parquet file out); what a batch's scores are is
``score_batch``'s job, replaced here by a stand-in so these tests need no trained models.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from churnseg.pipelines import stages
from churnseg.pipelines.config import Config, PublishConfig, SampleConfig
from churnseg.pipelines.publish import PublishError, PublishTarget, latest_snapshot, publish_scores
from churnseg.pipelines.sinks.schema import CUSTOMER_SCORES
from churnseg.pipelines.stages import scoring as scoring_stage


def features(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    return pd.DataFrame(
        {
            "customer_id": [f"C{i:03d}" for i in range(n)],
            "snapshot_date": date(2026, 3, 1),
            "recency_days": rng.integers(0, 300, n).astype("float64"),
            "monetary_total": rng.gamma(2.0, 80.0, n),
        }
    )


def stand_in_batch(frame: pd.DataFrame, context: Any, first_row: int | None = None) -> pd.DataFrame:
    """Scores that depend on the row only, like the real models'; later columns left out."""
    big = frame["monetary_total"] > 100
    return pd.DataFrame(
        {
            "customer_id": frame["customer_id"].to_numpy(),
            "snapshot_date": frame["snapshot_date"].to_numpy(),
            "segment_id": big.astype("int64").to_numpy(),
            "segment_name": np.where(big, "Big spenders", "Occasional"),
            "churn_probability": (frame["recency_days"] / 300).to_numpy(),
            "risk_band": np.where(frame["recency_days"] > 150, "high", None),
            "segmentation_model_version": 4,
            "churn_model_version": 7,
            "run_id": "run-1",
            "scored_at": "2026-03-01T06:30:00+00:00",
        }
    )


@pytest.fixture
def score(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    metrics: dict[str, float] = {}
    # score_stage looks these up in its own module.
    monkeypatch.setattr(scoring_stage, "scoring_context", lambda *args, **kwargs: None)
    monkeypatch.setattr(scoring_stage, "score_batch", stand_in_batch)
    monkeypatch.setattr(scoring_stage.mlflow, "log_metrics", metrics.update)
    source = tmp_path / "features.parquet"
    features(23).to_parquet(source, index=False)

    def run(chunk_rows: int) -> tuple[Path, dict[str, float]]:
        config = Config(sample=SampleConfig(), publish=PublishConfig(chunk_rows=chunk_rows))
        out = tmp_path / f"scores_{chunk_rows}.parquet"
        assert stages.score_stage(config, source, out, "run-1") == 23
        return out, dict(metrics)

    return run


def test_chunk_size_does_not_change_the_scores_file(score: Any, tmp_path: Path) -> None:
    chunked, metrics = score(5)
    whole, _ = score(1000)
    assert pq.read_table(chunked).equals(pq.read_table(whole))
    assert pq.ParquetFile(chunked).metadata.num_row_groups == 5, "23 rows in batches of 5"
    assert metrics["rows_scored"] == 23
    mean = features(23)["recency_days"].mean() / 300
    assert metrics["mean_churn_probability"] == pytest.approx(mean)
    assert not list(tmp_path.glob("*.partial")), "the partial file is renamed into place"


def test_scores_file_is_typed_to_the_output_contract(score: Any) -> None:
    path, _ = score(4)
    table = pq.read_table(path)
    # Parquet has no seconds unit: whole-second timestamps come back as milliseconds.
    expected = CUSTOMER_SCORES.arrow_schema()
    for name in ("scored_at", "features_as_of"):
        expected = expected.set(expected.get_field_index(name), table.schema.field(name))
    assert table.schema.equals(expected)
    frame = table.to_pandas()
    absent = ["value_tier", "lifecycle_stage", "top_reasons", "expected_value", "value_at_risk"]
    assert frame[absent].isna().all().all(), "columns a batch does not produce are null"
    assert set(frame.snapshot_date) == {date(2026, 3, 1)}
    assert table.column("scored_at").type == pa.timestamp("ms", tz="UTC")
    assert set(frame.scored_at.astype(str)) == {"2026-03-01 06:30:00+00:00"}
    high = features(23)["recency_days"] > 150
    assert (frame.risk_band.notna() == high).all()


def test_scores_file_publishes_as_is(score: Any, tmp_path: Path) -> None:
    path, _ = score(6)
    assert latest_snapshot(path) == date(2026, 3, 1)
    assert publish_scores(path, PublishTarget(f"sqlite:///{tmp_path}/o.db")) == 23


def test_a_batch_breaking_the_contract_stops_scoring(
    score: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def no_names(frame: pd.DataFrame, context: Any, first_row: int | None = None) -> pd.DataFrame:
        return stand_in_batch(frame, context).assign(segment_name=None)

    monkeypatch.setattr(scoring_stage, "score_batch", no_names)
    with pytest.raises(PublishError, match=r"'segment_name' has 5 null value\(s\) in rows 0-4"):
        score(5)
    assert not (tmp_path / "scores_5.parquet").exists(), "no scores file from a failed run"
