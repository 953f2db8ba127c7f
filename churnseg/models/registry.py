"""MLflow model registry: log, register and promote models through aliases."""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.models import infer_signature

CHAMPION = "champion"

# Passing explicit requirements skips MLflow's ~4 s requirement inference per logged model.
PIP_REQUIREMENTS = ["scikit-learn", "numpy", "pandas", "churnseg"]


def log_and_register(
    model: Any,
    name: str,
    example: pd.DataFrame,
    trusted_types: list[str],
    output: Any = None,
) -> int:
    """Log ``model`` to the active run, register it under ``name`` and return its version."""
    signature = infer_signature(example, output)
    info = mlflow.sklearn.log_model(
        model,
        name=name,
        signature=signature,
        input_example=example.head(3),
        pip_requirements=PIP_REQUIREMENTS,
        skops_trusted_types=trusted_types,
        registered_model_name=name,
    )
    version = info.registered_model_version
    if version is None:
        raise RuntimeError(f"model {name!r} was logged but not registered")
    return int(version)


def set_champion(name: str, version: int) -> None:
    """Point the ``champion`` alias of ``name`` at ``version``."""
    MlflowClient().set_registered_model_alias(name, CHAMPION, str(version))


def champion_version(name: str) -> int:
    """Return the version the ``champion`` alias of ``name`` points at."""
    return int(MlflowClient().get_model_version_by_alias(name, CHAMPION).version)


def load_champion(name: str) -> Any:
    """Return the scikit-learn model behind ``models:/<name>@champion``."""
    return mlflow.sklearn.load_model(f"models:/{name}@{CHAMPION}")


def find_champion(name: str) -> int | None:
    """Return the champion version of ``name``, or None when there is no such model or alias."""
    from mlflow.exceptions import MlflowException

    try:
        return champion_version(name)
    except MlflowException:
        return None


def load_version(name: str, version: int) -> Any:
    """Return the scikit-learn model of ``name`` at ``version``."""
    return mlflow.sklearn.load_model(f"models:/{name}/{version}")


def version_tags(name: str, version: int) -> dict[str, str]:
    """Return the tags of one registered model version."""
    return dict(MlflowClient().get_model_version(name, str(version)).tags)
