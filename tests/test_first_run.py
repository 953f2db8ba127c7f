"""A new user's first run on their own data: cutoffs from the data, no lost customer, clean errors.

Ends with the real CDNOW purchase log (its 1/10 sample ships in ``tests/data``), run as a user
would: every customer published, a champion on the first run.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from churnseg.features.snapshots import HistoryTooShortError, plan_cutoffs
from churnseg.pipelines import stages
from churnseg.pipelines.cli import app
from churnseg.pipelines.config import Config

DATA = Path(__file__).parent / "data"

# --- cutoffs planned from the data -----------------------------------------------------------


def test_auto_takes_every_cutoff_the_history_holds() -> None:
    plan = plan_cutoffs(date(1998, 7, 1), 90, "auto", data_start=date(1997, 1, 1))
    assert plan.validation == date(1998, 4, 2)
    # 90 days of history before each, the last one a label window before validation:
    assert plan.training == (
        date(1997, 4, 7),
        date(1997, 7, 6),
        date(1997, 10, 4),
        date(1998, 1, 2),
    )
    assert all(t - date(1997, 1, 1) >= timedelta(days=90) for t in plan.training)
    capped = plan_cutoffs(date(2030, 1, 1), 90, "auto", data_start=date(2000, 1, 1))
    assert len(capped.training) == 4, "at most max_train_cutoffs, the newest"
    assert capped.training[-1] == capped.validation - timedelta(days=90)


def test_a_short_step_gives_more_cutoffs_whose_labels_all_end_before_validation() -> None:
    plan = plan_cutoffs(
        date(1998, 7, 1), 90, "auto", step_days=30, data_start=date(1997, 1, 1), max_train_cutoffs=6
    )
    assert len(plan.training) == 6
    assert all(t + timedelta(days=90) <= plan.validation for t in plan.training)
    assert plan.training[1] - plan.training[0] == timedelta(days=30)


def test_asking_for_more_cutoffs_than_the_history_holds_gives_fewer_with_a_note() -> None:
    plan = plan_cutoffs(date(1998, 1, 1), 90, 4, data_start=date(1997, 1, 1))
    assert plan.training == (date(1997, 4, 6), date(1997, 7, 5)), "from 1997-04-01 on"
    assert plan.notes and "asked for 4" in plan.notes[0] and "holds 2" in plan.notes[0]


def test_too_short_a_history_says_how_many_days_it_has_and_needs() -> None:
    with pytest.raises(HistoryTooShortError) as info:
        plan_cutoffs(date(1997, 7, 1), 90, "auto", data_start=date(1997, 1, 1))
    message = str(info.value)
    assert "covers 181 days" in message and "needs at least 270 days" in message


# --- the command line: one clean line, the documented exit code --------------------------------


def _transactions(path: Path, days: int, rows_per_day: int = 3) -> Path:
    start = pd.Timestamp("2024-01-01")
    frame = pd.DataFrame(
        {
            "customer_id": [f"C{i % 40}" for i in range(days * rows_per_day)],
            "timestamp": [
                start + pd.Timedelta(days=i // rows_per_day) for i in range(days * rows_per_day)
            ],
            "amount": 10.0,
        }
    )
    frame.to_csv(path, index=False)
    return path


def _config(folder: Path, body: str) -> Path:
    path = folder / "config.yaml"
    path.write_text(f"state_dir: {folder / 'state'}\ncleaning: {{now: 2025-06-01}}\n{body}")
    return path


@pytest.mark.slow
def test_short_history_exits_3_with_one_clean_line_and_no_leak_report(tmp_path: Path) -> None:
    data = _transactions(tmp_path / "tx.csv", days=120)
    config = _config(tmp_path, f"sources:\n  transactions: {{path: {data}}}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHURNSEG__")}
    churnseg = Path(sys.executable).with_name("churnseg")
    done = subprocess.run(
        [str(churnseg), "run", "-c", str(config)], capture_output=True, text=True, env=env
    )
    assert done.returncode == 3, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "history too short" in errors[0], done.stderr
    assert "120 days" in errors[0] and "270 days" in errors[0], errors[0]
    assert "nanobind" not in done.stderr and "leaked" not in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "state" / "scores.db").exists() or _rows(tmp_path) == 0


def _rows(folder: Path) -> int:
    with sqlite3.connect(folder / "state" / "scores.db") as con:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master")}
        if "customer_scores" not in tables:
            return 0
        return int(con.execute("SELECT COUNT(*) FROM customer_scores").fetchone()[0])


def test_an_error_keeps_every_character_of_its_message(tmp_path: Path) -> None:
    config = _config(tmp_path, "sample: {}\npublish: {table: Bad-Name}\n")
    result = CliRunner().invoke(app, ["config", "validate", "-c", str(config)])
    assert result.exit_code == 2
    assert "^[a-z_][a-z0-9_]{0,47}$" in result.output, "rich markup must not eat the brackets"


def test_debug_shows_the_traceback_and_keeps_the_exit_code(tmp_path: Path) -> None:
    config = _config(tmp_path, "sample: {}\npublish: {table: Bad-Name}\n")
    result = CliRunner().invoke(app, ["--debug", "config", "validate", "-c", str(config)])
    assert result.exit_code == 2, "the documented code, not Python's 1"
    assert "Traceback" in result.output


def test_scoring_before_any_retrain_says_what_to_do(tmp_path: Path) -> None:
    config = _config(tmp_path, "sample: {}\n")
    from churnseg.models.registry import NoChampionError
    from churnseg.pipelines.cli import user_message

    stages.configure_mlflow(
        Config.model_validate({"state_dir": str(tmp_path / "state"), "sample": {}})
    )
    with pytest.raises(NoChampionError) as info:
        from churnseg.models.registry import champion_version

        champion_version("churnseg-churn")
    text = user_message(info.value)
    assert "run `churnseg run` first" in text and "RESOURCE_DOES_NOT_EXIST" not in text
    assert config.exists()


# --- every known customer is scored --------------------------------------------------------------


def test_customers_whose_every_row_was_quarantined_are_still_known(tmp_path: Path) -> None:
    lines = ["customer_id,timestamp,amount"]
    lines += [f"C{i},2024-0{1 + i % 6}-1{i % 9},{10 + i}" for i in range(60)]
    lines += ["FREE,2024-03-05,0", "BAD,2024-02-02,abc", "BAD,2024-02-03,abc", "LATE,2031-01-01,5"]
    (tmp_path / "tx.csv").write_text("\n".join(lines) + "\n")
    config = Config.model_validate(
        {
            "state_dir": str(tmp_path / "state"),
            "sources": {"transactions": {"path": str(tmp_path / "tx.csv")}},
            "cleaning": {"now": "2024-12-31", "max_quarantine_share": 1.0},
            "snapshots": {"as_of": "2024-12-01", "min_history_days": 30},
        }
    )
    paths = stages.run_paths(config, "run")
    stages.extract_stage(config, paths)
    stages.clean_stage(config, paths)
    seen = pd.read_parquet(paths.clean / "seen.parquet").set_index("customer_id")
    assert seen.first_ts.loc["BAD"] == pd.Timestamp("2024-02-02"), "first usable time"
    assert "LATE" not in seen.index or seen.first_ts.loc["LATE"] <= pd.Timestamp("2024-12-31")
    clean = pd.read_parquet(paths.clean / "transactions.parquet")
    assert "FREE" in set(clean.customer_id), "a zero amount is activity by default"
    plan = stages.resolve_plan(config, paths)
    with mlflow.start_run():
        stages.feature_stage(config, paths, plan, only=("scoring",))
    scoring = pd.read_parquet(paths.features / "scoring.parquet").set_index("customer_id")
    assert {"BAD", "FREE", "LATE"} <= set(scoring.index), "known, though their rows were bad"
    assert scoring.loc["BAD", "frequency"] == 0 and scoring.loc["BAD", "monetary_total"] == 0
    assert scoring.loc["FREE", "frequency"] == 1 and scoring.loc["FREE", "monetary_total"] == 0
    assert len(scoring) == 63


def test_snapshots_differing_in_nullability_are_stacked(tmp_path: Path) -> None:
    from churnseg.pipelines.sources import connect_engine
    from churnseg.pipelines.stages.feature_tables import _with_btyd, unified_schema

    strict = pa.schema([pa.field("customer_id", pa.string(), nullable=False)])
    loose = pa.schema([pa.field("customer_id", pa.string())])
    files = []
    for i, schema in enumerate([loose, strict]):
        table = pa.table(
            {
                "customer_id": ["a", "b"],
                "snapshot_date": [date(2024, 1, 1 + i)] * 2,
                "x": [1.0, None],
            },
            schema=pa.schema(
                [*schema, pa.field("snapshot_date", pa.date32()), pa.field("x", pa.float64())]
            ),
        )
        files.append(tmp_path / f"s{i}.parquet")
        pq.write_table(table, files[-1])
    assert unified_schema([pq.read_schema(f) for f in files]).field("customer_id").nullable
    _with_btyd(connect_engine(), files, tmp_path / "out.parquet", 90, 7)
    out = pq.read_table(tmp_path / "out.parquet")
    assert out.num_rows == 4 and out.column("x").null_count == 2


# --- a failed retrain registers nothing; a moved state folder stays self-contained --------------


@pytest.mark.slow
def test_a_retrain_failing_in_the_churn_stage_registers_no_model(
    tmp_path: Path, small_sample: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from churnseg.models import churn as churn_model

    config = Config.model_validate(
        {
            "state_dir": str(tmp_path),
            "sources": {
                t: {"path": str(small_sample / f"{t}.parquet")}
                for t in ("customers", "transactions")
            },
            "snapshots": {"max_train_cutoffs": 2},
            "segmentation": {"k_max": 3, "n_init": 1},
            "churn": {"candidates": ["logreg"]},
        }
    )
    stages.configure_mlflow(config)
    paths = stages.run_paths(config, "run")

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("out of memory in the final fit")

    with mlflow.start_run() as run:
        stages.extract_stage(config, paths)
        stages.clean_stage(config, paths)
        stages.feature_stage(config, paths, stages.resolve_plan(config, paths))
        stages.segmentation_stage(config, paths, run.info.run_id)
        monkeypatch.setattr(churn_model, "fit_calibrated", broken)
        with pytest.raises(RuntimeError, match="out of memory"):
            stages.churn_stage(config, paths)
    assert MlflowClient().search_registered_models() == [], "nothing half-registered"


def test_a_copied_state_folder_writes_only_inside_itself(tmp_path: Path) -> None:
    import shutil

    original = tmp_path / "original"
    config = Config.model_validate({"state_dir": str(original), "sample": {}})
    stages.configure_mlflow(config)
    with mlflow.start_run() as first:
        mlflow.log_dict({"a": 1}, "first.json")
        mlflow.set_tag("churnseg.run_folder", str(original / "runs" / "x"))
    mlflow.set_tracking_uri("sqlite:///:memory:")  # release the store before copying it
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    before = sorted(p.relative_to(original) for p in original.rglob("*"))
    moved = Config.model_validate({"state_dir": str(copy), "sample": {}})
    stages.configure_mlflow(moved)
    with mlflow.start_run() as second:
        mlflow.log_dict({"b": 2}, "second.json")
    assert sorted(p.relative_to(original) for p in original.rglob("*")) == before
    client = MlflowClient()
    for run_id in (first.info.run_id, second.info.run_id):
        assert client.get_run(run_id).info.artifact_uri.startswith(copy.as_uri())
    assert client.get_run(first.info.run_id).data.tags["churnseg.run_folder"].startswith(str(copy))
    assert mlflow.artifacts.load_dict(f"runs:/{first.info.run_id}/first.json") == {"a": 1}


# --- the real CDNOW log, as a user would run it --------------------------------------------------


@pytest.fixture(scope="module")
def cdnow(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 1/10 CDNOW sample (2,357 customers) as CSV, cut at 1998-01-01."""
    folder = tmp_path_factory.mktemp("cdnow")
    log = pd.read_csv(
        DATA / "CDNOW_sample.txt",
        sep=r"\s+",
        header=None,
        names=["customer_id", "sample_id", "date", "cds", "dollars"],
        dtype={"customer_id": str, "date": str},
    )
    log.to_csv(folder / "full.csv", index=False)
    log[log.date < "19980101"].to_csv(folder / "transactions.csv", index=False)
    return folder


@pytest.mark.slow
def test_cdnow_first_run_scores_every_customer_with_a_champion(
    prefect_harness: None, cdnow: Path
) -> None:
    from churnseg.pipelines.flows import retrain_flow

    config = cdnow / "config.yaml"
    config.write_text(
        f"state_dir: {cdnow / 'state'}\n"
        "sources:\n"
        f"  transactions:\n    path: {cdnow / 'transactions.csv'}\n"
        "    columns: {timestamp: date, amount: dollars, quantity: cds}\n"
        "    date_formats: ['%Y%m%d']\n"
        "snapshots: {horizon_days: 90}\n"
    )
    summary = retrain_flow(config_path=str(config))
    with sqlite3.connect(cdnow / "state" / "scores.db") as con:
        scores = pd.read_sql("SELECT * FROM customer_scores", con)
    log = pd.read_csv(cdnow / "full.csv", dtype={"customer_id": str, "date": str})
    assert summary["snapshot"] == "1998-01-01", "the day after the last purchase"
    assert set(scores.customer_id) == set(log[log.date < "19980101"].customer_id)
    assert summary["churn_champion_version"] is not None, summary["churn_decision"]
    assert not any(n.startswith("Segment ") for n in summary["segment_names"].values())
    # Judged on what happened in the next 90 days (never seen by the run).
    active = set(log[(log.date >= "19980101") & (log.date < "19980401")].customer_id)
    at_risk = scores[scores.risk_band != "churned"]
    churned = ~at_risk.customer_id.isin(active)
    from sklearn.metrics import roc_auc_score

    auc = roc_auc_score(churned, at_risk.churn_probability)
    assert auc > 0.75, f"out of time on a real log: ROC AUC {auc:.3f}"
    assert abs(at_risk.churn_probability.mean() - churned.mean()) < 0.05, "calibrated"
    assert np.isfinite(scores.expected_value).all()
