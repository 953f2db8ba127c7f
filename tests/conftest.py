"""Shared fixtures: quiet, isolated Prefect and MLflow state for the whole session."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

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
for key in [k for k in os.environ if k.startswith("CHURNSEG__") or k == "PREFECT_API_URL"]:
    del os.environ[key]


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
