"""Model-level checks of the churn stage on generated data with a known churn mechanism."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import pytest
from mlflow import MlflowClient

from churnseg.models.registry import promotion_history
from churnseg.pipelines import stages
from churnseg.pipelines.config import Config, load_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One retrain through the plain stage functions (no Prefect) on 8,000 customers."""
    state = tmp_path_factory.mktemp("churn")
    path = state / "config.yaml"
    path.write_text(
        f"state_dir: {state}\n"
        "sample: {customers: 8000, seed: 21, dirty_fraction: 0.0}\n"
        "segmentation: {k_min: 3, k_max: 7, n_init: 2}\n"
        "snapshots: {max_train_cutoffs: 4}\n"
    )
    config: Config = load_config(path, environ={})
    stages.configure_mlflow(config)
    paths = stages.run_paths(config, "model-test")
    with mlflow.start_run() as run:
        stages.extract_stage(config, paths)
        stages.clean_stage(config, paths)
        plan = stages.resolve_plan(config, paths)
        stages.feature_stage(config, paths, plan)
        stages.segmentation_stage(config, paths, run.info.run_id)
        outcome = stages.churn_stage(config, paths)
    metrics = MlflowClient().get_run(run.info.run_id).data.metrics
    return {
        "config": config,
        "paths": paths,
        "outcome": outcome,
        "metrics": metrics,
        "run_id": run.info.run_id,
    }


def test_calibrated_model_beats_baselines_out_of_time(trained: dict[str, Any]) -> None:
    m = trained["metrics"]
    auc = m["val_roc_auc"]
    assert auc > m["baseline_recency_roc_auc"], f"{auc:.3f} vs recency"
    assert auc > m["baseline_logistic_rfm_roc_auc"], f"{auc:.3f} vs logistic RFM"
    assert m["val_ece"] <= 0.03, f"expected calibration error {m['val_ece']:.3f}"
    assert trained["outcome"].promoted, trained["outcome"].reason


def test_backtest_has_three_or_more_folds_and_small_spread(trained: dict[str, Any]) -> None:
    m = trained["metrics"]
    assert m["backtest_roc_auc_std"] < 0.05, "ranking quality is stable across cutoffs"
    folds = mlflow.load_table("churn/backtest.json", run_ids=[trained["run_id"]])
    assert len(folds) >= 3


def test_retraining_the_same_data_is_not_promoted(trained: dict[str, Any]) -> None:
    config, paths = trained["config"], trained["paths"]
    with mlflow.start_run():
        again = stages.churn_stage(config, paths)
    assert not again.promoted, "an equal challenger must not replace the champion"
    history = promotion_history(config.mlflow.churn_model)
    assert [e["event"] for e in history] == ["promoted", "rejected"]
    # The gate's figures, on the same rows, are kept with each decision.
    gate = history[-1]["gate"]
    assert {"challenger", "recency", "logistic_rfm", "champion v1"} <= set(gate), gate
    assert all(0.5 < v < 1 for v in gate.values()), gate


def test_the_scored_model_learns_from_the_newest_labels(trained: dict[str, Any]) -> None:
    m = trained["metrics"]
    assert m["backtest_refit_folds"] >= 2
    # On the generator's data the newest cutoff helps, or at least does not hurt.
    assert m["backtest_refit_gain"] > -0.005, m["backtest_refit_gain"]
    run = mlflow.get_run(trained["run_id"])
    assert run.data.params["churn_refit_on_latest"] == "True"
    assert run.data.params["churn_calibration_chosen"] in ("sigmoid", "isotonic", "none")


def test_reasons_and_reference_are_logged(trained: dict[str, Any]) -> None:
    explain = mlflow.artifacts.load_dict(f"runs:/{trained['run_id']}/{stages.EXPLAIN_ARTIFACT}")
    assert explain["features"], "the most important features are kept for reasons"
    assert set(explain["features"]) <= set(explain["reference"])


def test_model_scores_raw_feature_table(trained: dict[str, Any]) -> None:
    import pandas as pd

    from churnseg.models.churn import churn_probability
    from churnseg.models.registry import load_champion

    config, paths = trained["config"], trained["paths"]
    model = load_champion(config.mlflow.churn_model)
    frame = pd.read_parquet(Path(paths.features) / "scoring.parquet")
    proba = churn_probability(model, frame)
    assert len(proba) == len(frame) and ((proba >= 0) & (proba <= 1)).all()


def test_the_refit_fits_after_the_training_frame_is_let_go(
    trained: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refit's final fit is the stage's largest moment: the training frame is gone by then."""
    import weakref

    import pandas as pd

    from churnseg.models import churn as churn_model
    from churnseg.pipelines.stages import churn_training

    read = churn_training.read_at_risk_population
    refit = churn_model.refit_calibrated
    frames: list[weakref.ref[pd.DataFrame]] = []
    alive: list[bool] = []

    def reading(path: Path, *args: Any, **kwargs: Any) -> pd.DataFrame:
        frame = read(path, *args, **kwargs)
        if path.name == "train.parquet":
            frames.append(weakref.ref(frame))
        return frame

    def refitting(rows: churn_model.RefitRows, *args: Any, **kwargs: Any) -> Any:
        alive.append(frames[-1]() is not None)
        return refit(rows, *args, **kwargs)

    monkeypatch.setattr(churn_training, "read_at_risk_population", reading)
    monkeypatch.setattr(churn_model, "refit_calibrated", refitting)
    with mlflow.start_run():
        stages.churn_stage(trained["config"], trained["paths"])
    assert alive == [False], "the challenger's refit ran once, without the training frame"


def test_a_refit_of_other_columns_learns_from_the_same_customers() -> None:
    import numpy as np
    import pandas as pd

    from churnseg.models import churn as churn_model

    rng = np.random.default_rng(0)
    train = pd.DataFrame({"a": rng.normal(size=3000), "b": rng.normal(size=3000)})
    latest = pd.DataFrame({"a": rng.normal(size=1000), "b": rng.normal(size=1000)})
    rows = churn_model.refit_rows(train, latest, 800, 7)
    assert rows.older == 600 and len(rows.latest) == 200, "each table gives its share"
    assert rows.every.iloc[:600].index.isin(train.index).all()
    assert rows.latest["a"].isin(latest["a"]).all(), "the latest rows come last"
    narrow = churn_model.refit_rows(train[["a"]], latest[["a"]], 800, 7)
    assert narrow.every.index.equals(rows.every.index), "the same rows, whatever the columns"
    assert churn_model.refit_rows(train, latest, None, 7).older == 3000, "None: every row"
