"""Resumable retrain: a failed late stage, run again, reuses the finished stages; --fresh does not.

Also: the run fingerprint, the run folder lock, the stale-cache guards, and monitor failing fast.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from mlflow import MlflowClient
from prefect import flow, task
from prefect.cache_policies import NONE

from churnseg.pipelines import resume, stages, tasks
from churnseg.pipelines.config import load_config
from churnseg.pipelines.publish import PublishError
from churnseg.pipelines.stages import RunPaths
from tests.test_flows import published

COMPUTE_STAGES = tuple(f"{s}_stage" for s in ("clean", "feature", "segmentation", "churn", "score"))
REUSED = ["clean", "build-features", "train-segmentation", "train-churn", "score"]


def _write_config(state: Path, sample: Path, extra: str = "") -> Path:
    path = state / "config.yaml"
    path.write_text(
        f"""
state_dir: {state}
sources:
  customers: {{path: "{sample}/customers.parquet"}}
  transactions: {{path: "{sample}/transactions.parquet"}}
segmentation: {{k_min: 2, k_max: 4, n_init: 2}}
churn: {{candidates: [logreg]}}
snapshots: {{max_train_cutoffs: 3}}
{extra}"""
    )
    return path


@pytest.fixture
def stage_calls(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Count calls of the compute stage functions (the tasks look them up on ``stages``)."""
    calls: Counter[str] = Counter()
    for name in COMPUTE_STAGES:
        original = getattr(stages, name)

        def counted(*args: Any, _name: str = name, _fn: Callable[..., Any] = original) -> Any:
            calls[_name] += 1
            return _fn(*args)

        monkeypatch.setattr(stages, name, counted)
    return calls


@pytest.mark.slow
def test_a_failed_publish_resumes_without_recomputing_and_fresh_recomputes(
    prefect_harness: None,
    small_sample: Path,
    tmp_path: Path,
    stage_calls: Counter[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from churnseg.pipelines.flows import RESUMED_STAGES_TAG, retrain_flow

    config_path = _write_config(tmp_path, small_sample)
    real_publish = tasks.publish_scores
    publishes: list[Path] = []

    def database_down_once(path: Path, target: Any, **_: Any) -> int:
        publishes.append(path)
        if len(publishes) == 1:
            raise PublishError("customer_scores: database is down")  # not transient: no retry
        return real_publish(path, target)

    monkeypatch.setattr(tasks, "publish_scores", database_down_once)
    with pytest.raises(PublishError, match="database is down"):
        retrain_flow(config_path=str(config_path))
    assert stage_calls == dict.fromkeys(COMPUTE_STAGES, 1), stage_calls

    stage_calls.clear()
    resumed = retrain_flow(config_path=str(config_path))
    assert not stage_calls, f"finished stages were recomputed: {dict(stage_calls)}"
    assert resumed["resumed_stages"] == REUSED
    assert len(publishes) == 2, "the failed publish runs again"
    for key in ("k", "val_roc_auc", "segmentation_version", "churn_version", "rows_published"):
        assert resumed[key] is not None, key
    folder = Path(resumed["run_folder"])
    assert folder.name == resumed["fingerprint"] and folder.parent == tmp_path / "runs"
    assert not (tmp_path / "runs" / ".incoming").exists() or not any(
        (tmp_path / "runs" / ".incoming").iterdir()
    ), "extraction staging is cleaned up"
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    run = client.get_run(resumed["mlflow_run_id"])
    assert run.data.tags[RESUMED_STAGES_TAG].split(",") == REUSED, run.data.tags
    assert run.data.tags["prefect.flow_run_id"] != folder.name, "the real flow run id"
    assert run.data.metrics["val_roc_auc"] == pytest.approx(resumed["val_roc_auc"])
    after_resume = published(config_path)
    assert len(after_resume) == resumed["rows_published"]
    assert set(after_resume.snapshot_date) == {resumed["snapshot"]}

    stage_calls.clear()
    fresh = retrain_flow(config_path=str(config_path), fresh=True)
    assert stage_calls == dict.fromkeys(COMPUTE_STAGES, 1), stage_calls
    assert fresh["resumed_stages"] == []
    assert fresh["run_folder"] == resumed["run_folder"], "same fingerprint, same folder"
    after_fresh = published(config_path)
    assert len(after_fresh) == len(after_resume) == fresh["rows_published"]
    assert set(after_fresh.snapshot_date) == {fresh["snapshot"]} == {resumed["snapshot"]}
    merged = after_resume.merge(after_fresh, on=["snapshot_date", "customer_id"])
    assert len(merged) == len(after_resume), "the same customers"
    assert merged.churn_probability_x.to_numpy() == pytest.approx(
        merged.churn_probability_y.to_numpy()
    ), "same data, same seed: the fresh run scores as the resumed one did"


def test_fingerprint_follows_config_inputs_not_publishing(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    pd.DataFrame({"customer_id": ["a", "b"]}).to_parquet(raw / "customers.parquet")
    base = load_config(_write_config(tmp_path, tmp_path))
    key = resume.run_fingerprint(base, raw).key
    assert resume.run_fingerprint(base, raw).key == key, "deterministic"
    assert len(key) == resume.KEY_LENGTH

    moved = load_config(_write_config(tmp_path, tmp_path, "publish: {keep_snapshots: 3}\n"))
    assert resume.run_fingerprint(moved, raw).key == key, "publishing settings compute nothing"
    changed = load_config(_write_config(tmp_path, tmp_path, "snapshots: {horizon_days: 60}\n"))
    assert resume.run_fingerprint(changed, raw).key != key, "a compute setting changes it"
    pd.DataFrame({"customer_id": ["a", "c"]}).to_parquet(raw / "customers.parquet")
    assert resume.run_fingerprint(base, raw).key != key, "different input content changes it"
    assert resume.fingerprint_config(base, today="2030-01-01")["cleaning_now"] == "2030-01-01"


def test_a_second_run_on_the_same_folder_fails_fast_and_the_lock_is_released(
    tmp_path: Path,
) -> None:
    paths = RunPaths(tmp_path / "run")
    with (
        resume.run_lock(paths, "flow run first"),
        pytest.raises(resume.RunInProgressError, match="in use by flow run first"),
        resume.run_lock(paths, "flow run second"),
    ):
        pass
    with resume.run_lock(paths, "flow run third"):
        assert paths.lock.read_text() == "flow run third"


def test_missing_outputs_recompute_the_stage_and_every_stage_after_it(
    prefect_harness: None, tmp_path: Path
) -> None:
    from churnseg.pipelines.flows import StageRunner

    calls: Counter[str] = Counter()

    @task(name="toy-first", cache_policy=NONE)
    def first(out: Path) -> int:
        calls["first"] += 1
        out.write_text("1")
        return 1

    @task(name="toy-second", cache_policy=NONE)
    def second(value: int) -> int:
        calls["second"] += 1
        return value + 1

    paths = RunPaths(tmp_path / "run")
    out = tmp_path / "first.txt"

    @flow
    def toy(fresh: bool = False) -> list[str]:
        runner = StageRunner(paths, "fp", fresh)
        value = runner.stage(first, [out])(out)
        runner.stage(second, valid=lambda v: v == 2)(value)
        return runner.reused

    assert toy() == [] and calls == {"first": 1, "second": 1}
    assert toy() == ["toy-first", "toy-second"] and calls == {"first": 1, "second": 1}
    out.unlink()
    assert toy() == [], "a missing output recomputes it, and the stage after it"
    assert calls == {"first": 2, "second": 2}
    assert toy(fresh=True) == [] and calls == {"first": 3, "second": 3}
    assert toy() == ["toy-first", "toy-second"], "a fresh run leaves a cache to resume from"


def test_monitor_without_a_champion_fails_before_reading_data(
    prefect_harness: None,
    small_sample: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from churnseg.pipelines.flows import monitor_flow
    from churnseg.pipelines.monitor import MonitorError

    touched: list[str] = []
    for name in ("extract_stage", "clean_stage", "feature_stage"):
        monkeypatch.setattr(stages, name, lambda *a, _n=name, **k: touched.append(_n))
    config_path = _write_config(tmp_path, small_sample)
    with pytest.raises(MonitorError, match="no champion"):
        monitor_flow(config_path=str(config_path))
    assert touched == [], f"monitor read data before checking for a champion: {touched}"
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("command", ["run", "retrain"])
def test_run_and_retrain_offer_fresh(command: str) -> None:
    from typer.testing import CliRunner

    from churnseg.pipelines.cli import app

    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0 and "--fresh" in result.output, result.output
