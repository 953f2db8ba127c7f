"""The notebooks: committed without outputs, paired with their scripts, and executed headless.

Each notebook runs with nbclient on a small sample against a temporary state folder (sample,
MLflow store, output database), then the test checks what it produced: a file, MLflow runs with
the expected parameters, an exported list.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import jupytext
import nbformat
import pandas as pd
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ("01_explore_data", "02_segmentation", "03_churn_model", "04_scores_for_ops")
RUN_KEY = "notebook"


def test_every_notebook_is_paired_and_committed_without_outputs() -> None:
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(NAMES)
    for name in NAMES:
        nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        with_outputs = [
            i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.get("outputs")
        ]
        counted = [i for i, c in enumerate(nb.cells) if c.get("execution_count") is not None]
        assert not with_outputs and not counted, (
            f"{name}.ipynb has outputs in cells {with_outputs or counted}: strip them with "
            "`.venv/bin/jupytext --sync notebooks/*.py` after clearing outputs (README)"
        )
        script = jupytext.read(NOTEBOOKS / f"{name}.py")
        assert [c.source for c in script.cells] == [c.source for c in nb.cells], (
            f"{name}.py and {name}.ipynb differ: run `.venv/bin/jupytext --sync notebooks/*.py`"
        )


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A temporary state folder and Jupyter data folder, given to the kernels by environment."""
    root = tmp_path_factory.mktemp("notebooks")
    env = {
        "CHURNSEG_STATE_DIR": str(root / "state"),
        "CHURNSEG_NOTEBOOK_CUSTOMERS": "1200",
        "CHURNSEG__SNAPSHOTS__MAX_TRAIN_CUTOFFS": "3",
        "CHURNSEG_NOTEBOOK_RUN": RUN_KEY,
        "JUPYTER_DATA_DIR": str(root / "jupyter"),
        "MPLBACKEND": "Agg",
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        mp.delenv("CHURNSEG_CONFIG", raising=False)
        yield root / "state"


def execute(name: str) -> nbformat.NotebookNode:
    """Run a committed notebook in a fresh kernel (cwd: notebooks/); raise on any cell error."""
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    client = NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    return client.execute()


def notebook_runs(state: Path, notebook: str) -> pd.DataFrame:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{state}/mlflow.db")
    runs = mlflow.search_runs(
        experiment_names=["churnseg"],
        filter_string=f"tags.`churnseg.notebook` = '{notebook}' and tags.`churnseg.source` = "
        "'notebook'",
    )
    assert isinstance(runs, pd.DataFrame)
    return runs.dropna(subset=["tags.churnseg.variant"])


@pytest.mark.slow
def test_explore_notebook_writes_the_quality_report(state: Path) -> None:
    execute("01_explore_data")
    run = state / "runs" / RUN_KEY
    clean = pd.read_parquet(run / "clean" / "customers.parquet")
    assert 1100 <= len(clean) <= 1200, f"1,200 sample customers minus quarantined, got {len(clean)}"
    report = (run / "notebook_quality.md").read_text(encoding="utf-8")
    for table in ("customers", "transactions", "events", "subscriptions"):
        assert table in report, f"quality report lacks table {table}"


@pytest.mark.slow
def test_segmentation_notebook_logs_one_run_per_variant(state: Path) -> None:
    execute("02_segmentation")
    runs = notebook_runs(state, "02_segmentation").set_index("tags.churnseg.variant")
    assert sorted(runs.index) == ["default", "robust scaler", "with recency"]
    assert runs.loc["robust scaler", "params.segmentation_scaler"] == "robust"
    assert runs.loc["default", "params.segmentation_scaler"] == "standard"
    assert runs.loc["with recency", "params.segmentation_features"].endswith("recency_days")
    ks = runs["params.segmentation_k"].astype(int)
    assert ks.between(2, 8).all(), f"k outside the default range 2..8: {ks.to_dict()}"
    assert (runs["metrics.segmentation_silhouette"] > 0).all()


@pytest.mark.slow
def test_churn_notebook_compares_variants_in_mlflow(state: Path) -> None:
    nb = execute("03_churn_model")
    runs = notebook_runs(state, "03_churn_model").set_index("tags.churnseg.variant")
    assert sorted(runs.index) == ["hgb isotonic", "logreg isotonic", "logreg sigmoid"]
    assert runs["params.churn_candidate"].to_dict() == {
        "hgb isotonic": "hgb",
        "logreg isotonic": "logreg",
        "logreg sigmoid": "logreg",
    }
    assert runs.loc["logreg sigmoid", "params.churn_calibration"] == "sigmoid"
    auc = runs["metrics.val_roc_auc"]
    assert (auc > 0.6).all(), f"the sample's churn mechanism gives real signal: {auc.to_dict()}"
    last = "".join(o.get("text", "") for o in nb.cells[-1].outputs)
    assert "CHURNSEG__CHURN__CANDIDATES=" in last, f"no override printed for the winner: {last!r}"


def publish_small_run(state: Path) -> int:
    """Publish scores and profiles with the pipeline's stages (fast settings); return rows."""
    import mlflow

    from churnseg.pipelines import stages
    from churnseg.pipelines.config import load_config
    from churnseg.pipelines.publish import (
        publish_scores,
        publish_segment_profiles,
        target_from_config,
    )

    fast = {"CHURNSEG__CHURN__CANDIDATES": "[logreg]", "CHURNSEG__SEGMENTATION__K_MAX": "4"}
    config = load_config(environ={**os.environ, **fast})
    stages.configure_mlflow(config)
    paths = stages.run_paths(config, RUN_KEY)
    with mlflow.start_run(run_name="test-publish") as run:
        if not (paths.features / "scoring.parquet").exists():
            stages.extract_stage(config, paths)
            stages.clean_stage(config, paths)
            stages.feature_stage(config, paths, stages.resolve_plan(config, paths))
        stages.segmentation_stage(config, paths, run.info.run_id)
        stages.churn_stage(config, paths)
        stages.score_stage(
            config, paths.features / "scoring.parquet", paths.scores, run.info.run_id
        )
    target = target_from_config(config)
    publish_segment_profiles(paths.root / "segment_profiles.parquet", target)
    return publish_scores(paths.scores, target)


@pytest.mark.slow
def test_ops_notebook_exports_the_riskiest_customers(state: Path) -> None:
    published = publish_small_run(state)
    execute("04_scores_for_ops")
    calls = pd.read_csv(state / "exports" / "contact_list.csv")
    scores = pd.read_parquet(state / "runs" / RUN_KEY / "scores.parquet")
    at_risk = scores[scores.risk_band != "churned"]
    assert len(at_risk) < published, "some customers have churned already"
    assert len(calls) == round(0.10 * len(at_risk)), (len(at_risk), len(calls))
    assert calls.churn_probability.is_monotonic_decreasing
    assert (calls.risk_band != "churned").all(), "no call to a customer who has left"
    expected = at_risk.nlargest(len(calls), "churn_probability").churn_probability
    assert calls.churn_probability.to_numpy() == pytest.approx(expected.to_numpy())
