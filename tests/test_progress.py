"""Progress reporting: the hook's semantics, and the calls long stages make to it."""

from __future__ import annotations

import dataclasses
import io
import threading
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from churnseg.models.segmentation import AutoKMeans
from churnseg.pipelines import progress, stages
from churnseg.pipelines.config import Config
from churnseg.pipelines.publish import publish_scores, target_from_config
from churnseg.pipelines.sample import SampleSpec, generate_sample
from churnseg.pipelines.stages import scoring as scoring_stage
from tests.helpers import write_tables


class Recorder:
    """A reporter that writes every call down, as ("begin", description, total) etc."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self._ids = 0

    def begin(self, description: str, total: float | None) -> int:
        self._ids += 1
        self.calls.append(("begin", description, total))
        return self._ids

    def advance(self, task: int, amount: float) -> None:
        self.calls.append(("advance", task, amount))

    def end(self, task: int) -> None:
        self.calls.append(("end", task))

    def advanced(self, description: str) -> list[float]:
        """Return the amounts the task named ``description`` advanced by."""
        begins = [c[1] for c in self.calls if c[0] == "begin"]
        task = begins.index(description) + 1  # ids count up from 1 in begin order
        return [c[2] for c in self.calls if c[0] == "advance" and c[1] == task]


def test_default_reporter_is_silent_and_using_restores_it() -> None:
    assert isinstance(progress.get_reporter(), progress.NullReporter)
    recorder = Recorder()
    with progress.using(recorder):
        assert progress.get_reporter() is recorder
        assert list(progress.track([1, 2, 3], "loop")) == [1, 2, 3]
    assert isinstance(progress.get_reporter(), progress.NullReporter)
    assert recorder.calls == [
        ("begin", "loop", 3),
        ("advance", 1, 1),
        ("advance", 1, 1),
        ("advance", 1, 1),
        ("end", 1),
    ]


def test_a_stage_ends_even_when_its_block_fails() -> None:
    recorder = Recorder()
    with progress.using(recorder), pytest.raises(RuntimeError), progress.stage("work", 10) as s:
        s.update(4)
        s.update(7)
        raise RuntimeError("boom")
    assert recorder.calls == [
        ("begin", "work", 10),
        ("advance", 1, 4),
        ("advance", 1, 3),
        ("end", 1),
    ]


def test_reports_from_a_worker_thread_reach_the_installed_reporter() -> None:
    """A module global, not a context variable: Prefect may run tasks in worker threads."""
    recorder = Recorder()
    with progress.using(recorder):
        worker = threading.Thread(target=lambda: list(progress.track(range(2), "in a thread")))
        worker.start()
        worker.join()
    assert recorder.advanced("in a thread") == [1, 1]


def test_rich_reporter_draws_description_count_and_time() -> None:
    from rich.console import Console

    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100, color_system=None)
    with progress.RichReporter(console) as reporter, progress.using(reporter):
        for _ in progress.track(range(4), "scoring customers"):
            pass
        with progress.stage("unknown length") as step:
            step.advance(7)
    text = out.getvalue()
    assert "scoring customers" in text and "4/4" in text and "0:00:0" in text
    assert "unknown length" in text and "7/7" in text, "an unknown total ends as its count"


def test_k_selection_reports_each_k_without_storing_the_callback() -> None:
    x = np.random.default_rng(0).normal(size=(60, 2))
    seen: list[int] = []
    km = AutoKMeans(k_min=2, k_max=4, n_init=1).fit(x, on_k=seen.append)
    assert seen == [2, 3, 4]
    assert "on_k" not in km.get_params(), "the model stays serialisable"


@pytest.fixture(scope="module")
def features(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, Recorder, Path]:
    """A feature build of a small sample, recorded."""
    state = tmp_path_factory.mktemp("progress")
    config = Config.model_validate(
        {
            "state_dir": str(state),
            "sample": {},
            "snapshots": {"horizon_days": 60, "train_cutoffs": 2},
        }
    )
    paths = stages.run_paths(config, "run")
    write_tables(paths.clean, generate_sample(SampleSpec(customers=150, seed=4, dirty_fraction=0)))
    # The run folder's own store and artifact location: nothing lands in ./mlruns.
    stages.configure_mlflow(config)
    recorder = Recorder()
    with mlflow.start_run(), progress.using(recorder):
        stages.feature_stage(config, paths, stages.resolve_plan(config, paths))
    return config, recorder, paths.features / "scoring.parquet"


def test_feature_stage_reports_one_step_per_table(
    features: tuple[Config, Recorder, Path],
) -> None:
    _, recorder, _ = features
    assert recorder.calls == [
        ("begin", "building feature tables", 3),
        ("advance", 1, 1),
        ("advance", 1, 1),
        ("advance", 1, 1),
        ("end", 1),
    ]


def _fake_scores(frame: pd.DataFrame, context: Any, first_row: int | None = None) -> pd.DataFrame:
    """``score_batch`` without models: every output column, fixed values."""
    n = len(frame)
    return pd.DataFrame(
        {
            "customer_id": frame["customer_id"].to_numpy(),
            "snapshot_date": frame["snapshot_date"].to_numpy(),
            "segment_id": np.zeros(n, dtype="int64"),
            "segment_name": "Loyal",
            "value_tier": "A",
            "lifecycle_stage": "active",
            "churn_probability": np.linspace(0, 1, n),
            "risk_band": "low",
            "top_reasons": None,
            "expected_value": 1.0,
            "value_at_risk": 0.5,
            "segmentation_model_version": 1,
            "churn_model_version": 1,
            "run_id": "r",
            "scored_at": "2025-01-01T00:00:00+00:00",
        }
    )


def _score(features_path: Path, out: Path, total: int | None) -> tuple[int, float]:
    batches = pq.ParquetFile(features_path).iter_batches(batch_size=40)
    return stages.score_batches_to_file(batches, None, out, "f", total_rows=total)  # type: ignore[arg-type]


def test_scoring_reports_rows_and_the_default_changes_nothing(
    features: tuple[Config, Recorder, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config, _, features_path = features
    monkeypatch.setattr(scoring_stage, "score_batch", _fake_scores)
    rows = pq.ParquetFile(features_path).metadata.num_rows
    silent = _score(features_path, tmp_path / "silent.parquet", rows)
    assert capsys.readouterr() == ("", ""), "no reporter installed: nothing printed"

    recorder = Recorder()
    with progress.using(recorder):
        recorded = _score(features_path, tmp_path / "recorded.parquet", rows)
    assert recorded == silent
    assert pq.read_table(tmp_path / "recorded.parquet").equals(
        pq.read_table(tmp_path / "silent.parquet")
    ), "reporting does not change what is written"
    assert recorder.calls[0] == ("begin", "scoring customers", rows)
    assert recorder.calls[-1] == ("end", 1)
    sizes = recorder.advanced("scoring customers")
    assert sizes == [40] * (rows // 40) + ([rows % 40] if rows % 40 else [])

    # Publishing the scores reports the rows written per chunk, up to the file's rows.
    target = dataclasses.replace(target_from_config(config), chunk_rows=50)
    recorder = Recorder()
    seen: list[int] = []
    with progress.using(recorder):
        assert publish_scores(tmp_path / "recorded.parquet", target, seen.append) == rows
    assert recorder.calls[0] == ("begin", "publishing customer_scores", rows)
    assert sum(recorder.advanced("publishing customer_scores")) == rows
    assert seen[-1] == rows, "the caller's own progress callback still runs"
