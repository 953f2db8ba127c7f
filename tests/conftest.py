"""Shared fixtures: quiet, isolated Prefect and MLflow state for the whole session."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Prefect reads its settings at import; set them before any test module imports it.
_PREFECT_HOME = tempfile.mkdtemp(prefix="churnseg-prefect-")
for key, value in {
    "PREFECT_HOME": _PREFECT_HOME,
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    "DO_NOT_TRACK": "true",
}.items():
    os.environ[key] = value
# OpenMP threads spin while they wait: when anything else shares the two cores (another test
# process, DuckDB), HistGradientBoosting predictions slowed 15x here (3.1 s against 0.21 s for
# 8,000 rows). One thread keeps the suite's timing stable; a run can still override it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
for key in [k for k in os.environ if k.startswith("CHURNSEG__") or k == "PREFECT_API_URL"]:
    del os.environ[key]
# Tests that log without configuring a store get a throwaway one, never ./mlruns.
_MLFLOW_DEFAULT = f"sqlite:///{tempfile.mkdtemp(prefix='churnseg-mlflow-')}/mlflow.db"
os.environ["MLFLOW_TRACKING_URI"] = _MLFLOW_DEFAULT


@pytest.fixture(scope="session", autouse=True)
def _no_mlruns_in_the_checkout() -> Iterator[None]:
    """Fail the session when a test leaves MLflow artifacts in ./mlruns of the checkout.

    A SQLite tracking store without an artifact location puts artifacts there, relative to
    the working directory: give every experiment a location in the test's own folder.
    """
    stray = Path("mlruns")
    existed = stray.exists()
    yield
    if not existed and stray.exists():
        pytest.fail(f"a test wrote MLflow artifacts into {stray.resolve()}; remove it")


@pytest.fixture(scope="module", autouse=True)
def _mlflow_state_per_module() -> Iterator[None]:
    """Reset MLflow's process-wide state after each test module.

    Stages point MLflow at their own store and experiment (``configure_mlflow``); without a
    reset, the next module would start runs against an experiment id from another store
    ("No Experiment with id=1 exists").
    """
    yield
    import mlflow
    from mlflow.tracking import fluent

    while mlflow.active_run() is not None:
        mlflow.end_run()
    fluent._active_experiment_id = None
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)  # set_experiment exports it to children
    mlflow.set_tracking_uri(_MLFLOW_DEFAULT)
    mlflow.set_registry_uri(_MLFLOW_DEFAULT)


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One temporary Prefect server for every flow test in the session (6-9 s once)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture(scope="session")
def small_sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small deterministic sample with 1% dirty rows, shared read-only by tests."""
    from churnseg.pipelines.sample import SampleSpec, write_sample

    out = tmp_path_factory.mktemp("sample")
    write_sample(SampleSpec(customers=800, seed=11, dirty_fraction=0.01), out)
    return out


# The tables of the bundled sample a full run reads (allocation included, as the default config).
RUN_TABLES = ("customers", "transactions", "events", "subscriptions", "owners", "assignments")


@pytest.fixture(scope="session")
def trained_run(
    small_sample: Path, tmp_path_factory: pytest.TempPathFactory, prefect_harness: None
) -> tuple[Path, dict[str, Any]]:
    """A state folder after one retrain on a copy of the small sample (default config).

    The state holds ``config.yaml``, the sources in ``data/``, the published ``scores.db`` and
    the MLflow store; the summary is the retrain flow's. One retrain (about 20 s) serves every
    module that needs a trained, published state. Read-only: a test that changes data or
    publishes takes a copy (``copy_state``).
    """
    import shutil

    import yaml

    from churnseg.pipelines.flows import retrain_flow

    state = tmp_path_factory.mktemp("trained_state")
    shutil.copytree(small_sample, state / "data")
    config = yaml.safe_load(Path("configs/default.yaml").read_text())
    config["sample"] = {"enabled": False}
    config["snapshots"]["max_train_cutoffs"] = 2
    path = _write_state_config(config, state)
    return state, retrain_flow(config_path=str(path))


@pytest.fixture(scope="session")
def trained_state(trained_run: tuple[Path, dict[str, Any]]) -> Path:
    """The state folder of ``trained_run`` (read-only: copy it with ``copy_state``)."""
    return trained_run[0]


def _write_state_config(config: dict[str, object], state: Path) -> Path:
    import yaml

    config["state_dir"] = str(state)
    config["sources"] = {t: {"path": str(state / "data" / f"{t}.parquet")} for t in RUN_TABLES}
    path = state / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def copy_state(trained: Path, target: Path) -> Path:
    """Copy a trained state folder to ``target``; return its config, pointing at the copy."""
    import shutil

    import yaml

    shutil.copytree(trained, target)
    config = yaml.safe_load((trained / "config.yaml").read_text())
    return _write_state_config(config, target)


# Settings of the shared Spark session; tests that configure engine.spark_conf reuse them.
SPARK_TEST_CONF = {"spark.sql.shuffle.partitions": 2, "spark.ui.enabled": False}


@pytest.fixture(scope="session")
def spark() -> Iterator[object]:
    """One local Spark session for every Spark test in the session (about 14 s to start).

    Built the way the pipeline builds it (``sources.spark_session``): UTC, naive timestamps.
    Skips where ``java`` is missing.
    """
    import shutil

    if shutil.which("java") is None:
        pytest.skip("PySpark needs Java")
    from churnseg.pipelines.config import EngineConfig
    from churnseg.pipelines.sources import spark_session

    session = spark_session(EngineConfig(backend="pyspark", spark_conf=SPARK_TEST_CONF))
    yield session
    session.stop()
