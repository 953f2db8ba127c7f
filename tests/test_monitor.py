"""Monitoring end to end: a retrained champion, then an unshifted and a shifted population."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from mlflow import MlflowClient

from churnseg.pipelines.monitor import FLAGGED_TAG, matured_snapshots


def test_matured_snapshots_need_the_whole_label_window() -> None:
    snapshots = [date(2025, 1, 1), date(2025, 3, 1), date(2025, 1, 1)]
    # 2025-01-01 + 60 days = 2025-03-02 <= 2025-03-02; 2025-03-01's window is still open.
    assert matured_snapshots(snapshots, date(2025, 3, 2), 60) == [date(2025, 1, 1)]
    assert matured_snapshots(snapshots, date(2025, 3, 1), 60) == []


def _config(state: Path, name: str, folder: str) -> Path:
    path = state / f"{name}.yaml"
    tables = "\n".join(
        f'  {t}: {{path: "{{state_dir}}/{folder}/{t}.parquet"}}'
        for t in ("customers", "transactions")
    )
    path.write_text(
        f"""
state_dir: {state}
sample: {{customers: 800, seed: 5, dirty_fraction: 0.02}}
sources:
{tables}
segmentation: {{k_min: 2, k_max: 4, n_init: 2}}
churn: {{candidates: [logreg]}}
snapshots: {{max_train_cutoffs: 3}}
"""
    )
    return path


@pytest.fixture(scope="module")
def monitored(prefect_harness: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Retrain on one sample, then monitor another seed (unshifted) and a 4x spend copy."""
    from churnseg.pipelines.flows import monitor_flow, retrain_flow
    from churnseg.pipelines.sample import SampleSpec, write_sample

    state = tmp_path_factory.mktemp("monitor-state")
    trained = _config(state, "trained", "sample")
    retrain = retrain_flow(config_path=str(trained))
    write_sample(SampleSpec(customers=800, seed=6, dirty_fraction=0.02), state / "other")
    shifted_dir = state / "shifted"
    shifted_dir.mkdir()
    pd.read_parquet(state / "other" / "customers.parquet").to_parquet(
        shifted_dir / "customers.parquet"
    )
    tx = pd.read_parquet(state / "other" / "transactions.parquet")
    tx.assign(amount=tx.amount * 4).to_parquet(shifted_dir / "transactions.parquet")
    return {
        "state": state,
        "retrain": retrain,
        "unshifted": monitor_flow(config_path=str(_config(state, "unshifted", "other"))),
        "shifted": monitor_flow(config_path=str(_config(state, "shifted", "shifted"))),
    }


@pytest.mark.slow
def test_unshifted_population_is_not_flagged(monitored: dict[str, Any]) -> None:
    out = monitored["unshifted"]
    assert out["flagged"] is False, out["reasons"]
    assert out["features_major_drift"] == []
    assert out["score"]["score_psi"] < 0.1, out["score"]
    assert out["snapshots_matured"] == [], "the published snapshot's horizon has not passed"


@pytest.mark.slow
def test_shifted_population_is_flagged_and_logged(monitored: dict[str, Any]) -> None:
    out = monitored["shifted"]
    assert out["flagged"] is True
    assert "monetary_total" in out["features_major_drift"], out["features_major_drift"]
    assert any(r.startswith("feature monetary_total: PSI") for r in out["reasons"]), out
    client = MlflowClient(tracking_uri=f"sqlite:///{monitored['state']}/mlflow.db")
    run = client.get_run(out["mlflow_run_id"])
    assert run.data.tags[FLAGGED_TAG] == "true"
    assert run.data.tags["churnseg.flow"] == "monitor"
    assert run.data.tags["churnseg.reference_run_id"] == monitored["retrain"]["mlflow_run_id"]
    assert run.data.metrics["psi_monetary_total"] >= 0.25
    assert run.data.metrics["drift_flagged"] == 1.0
    unshifted = client.get_run(monitored["unshifted"]["mlflow_run_id"])
    assert unshifted.data.tags[FLAGGED_TAG] == "false"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "monitoring")}
    assert {"monitoring/feature_psi.json", "monitoring/summary.json"} <= artifacts


@pytest.mark.slow
def test_report_shows_every_section_from_the_stores(monitored: dict[str, Any]) -> None:
    from churnseg.pipelines.config import load_config
    from churnseg.pipelines.report import build_report

    config = load_config(monitored["state"] / "trained.yaml")
    out = build_report(config, monitored["state"] / "report.html")
    page = out.read_text()
    for heading in (
        "Segment profiles",
        "Churn model performance",
        "Drift",
        "Top customers by value at risk",
    ):
        assert f"<h2>{heading}</h2>" in page, heading
    assert 'class="note"' not in page, "every section found its data"
    assert page.count("data:image/png;base64,") == 3, "segments, performance, PSI charts"
    assert "http://" not in page and "https://" not in page, "self-contained"
    assert "flagged" in page, "the latest monitoring run (shifted) was flagged"
    client = MlflowClient(tracking_uri=f"sqlite:///{monitored['state']}/mlflow.db")
    runs = client.search_runs(
        [client.get_experiment_by_name("churnseg").experiment_id],
        filter_string="tags.`churnseg.flow` = 'report'",
    )
    assert len(runs) == 1
    assert [a.path for a in client.list_artifacts(runs[0].info.run_id, "report")] == [
        "report/report.html"
    ]
