"""MLflow model registry: log, register and promote models through aliases."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.models import infer_signature

CHAMPION = "champion"

# Passing explicit requirements skips MLflow's ~4 s requirement inference per logged model.
PIP_REQUIREMENTS = ["scikit-learn", "numpy", "pandas", "churnseg"]


def log_model(
    model: Any,
    name: str,
    example: pd.DataFrame,
    trusted_types: list[str],
    output: Any = None,
) -> str:
    """Log ``model`` to the active run (not registered yet) and return its model URI."""
    # Integer feature columns may hold nulls in a later snapshot; MLflow's advice (and the
    # warning it prints otherwise) is to declare them as doubles in the signature.
    ints = [c for c in example.columns if pd.api.types.is_integer_dtype(example[c])]
    example = example.astype(dict.fromkeys(ints, "float64"))
    signature = infer_signature(example, output)
    info = mlflow.sklearn.log_model(
        model,
        name=name,
        signature=signature,
        input_example=example.head(3),
        pip_requirements=PIP_REQUIREMENTS,
        skops_trusted_types=trusted_types,
    )
    return str(info.model_uri)


def register(model_uri: str, name: str, tags: Mapping[str, str] | None = None) -> int:
    """Register a logged model under ``name`` (with version ``tags``); return its version."""
    version = mlflow.register_model(model_uri, name, tags=dict(tags or {}))
    return int(version.version)


def log_and_register(
    model: Any,
    name: str,
    example: pd.DataFrame,
    trusted_types: list[str],
    output: Any = None,
) -> int:
    """Log ``model`` to the active run, register it under ``name`` and return its version."""
    return register(log_model(model, name, example, trusted_types, output), name)


class NoChampionError(LookupError):
    """A registered model has no ``champion`` version yet (no retrain has promoted one)."""


def champion_version(name: str) -> int:
    """Return the version the ``champion`` alias of ``name`` points at.

    Raises:
        NoChampionError: The model is not registered, or no version is champion.
    """
    from mlflow.exceptions import MlflowException

    try:
        return int(MlflowClient().get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        raise NoChampionError(
            f"model {name!r} has no champion version in the MLflow registry: run "
            "`churnseg run` first (it trains the models and always ends with a champion)"
        ) from None


def load_champion(name: str) -> Any:
    """Return the scikit-learn model behind ``models:/<name>@champion``.

    Raises:
        NoChampionError: No version is champion.
    """
    return load_version(name, champion_version(name))


def find_champion(name: str) -> int | None:
    """Return the champion version of ``name``, or None when there is no such model or alias."""
    try:
        return champion_version(name)
    except NoChampionError:
        return None


def load_version(name: str, version: int) -> Any:
    """Return the scikit-learn model of ``name`` at ``version``."""
    return mlflow.sklearn.load_model(f"models:/{name}/{version}")


def version_tags(name: str, version: int) -> dict[str, str]:
    """Return the tags of one registered model version."""
    return dict(MlflowClient().get_model_version(name, str(version)).tags)


PREVIOUS = "previous"
AUDIT_PREFIX = "audit."


CHALLENGER = "challenger"


@dataclass(frozen=True)
class PromotionDecision:
    """Which candidate becomes champion (None: the champion stays), and why (audited)."""

    winner: str | None
    reason: str

    @property
    def promote(self) -> bool:
        """Return whether a candidate is promoted."""
        return self.winner is not None


def decide_promotion(
    metric: str,
    challenger: float,
    champion: float | None,
    baselines: Mapping[str, float],
    margin: float,
) -> PromotionDecision:
    """Return the promotion decision, every score taken on the same held-out rows.

    The challenger must beat the best baseline; otherwise that baseline is the contender (a
    real, calibrated model too). Without a champion the contender is promoted, so a first run
    always ends with one; with a champion, the contender must beat it by ``margin`` or the
    champion stays (and scoring goes on with it).

    Args:
        metric: The metric compared (higher is better).
        challenger: The challenger's score.
        champion: The current champion's score, or None when there is none.
        baselines: Each baseline's score (may be empty).
        margin: How much better than the champion a contender must be.
    """
    contender, score = CHALLENGER, challenger
    lost = ""
    scored = {k: v for k, v in baselines.items() if np.isfinite(v)}
    if scored:
        best = max(scored, key=lambda b: scored[b])
        if not challenger > scored[best]:
            contender, score = best, scored[best]
            lost = (
                f"challenger {metric} {challenger:.4f} does not beat baseline {best} "
                f"({scored[best]:.4f}); "
            )
    if champion is None:
        what = f"baseline {contender} promoted so the run has a champion" if lost else "first model"
        return PromotionDecision(contender, f"{lost}{what}; {metric} {score:.4f}")
    if score >= champion + margin:
        return PromotionDecision(
            contender,
            f"{lost}{contender} {metric} {score:.4f} beats champion {champion:.4f} "
            f"by >= {margin:g}",
        )
    return PromotionDecision(
        None,
        f"{lost}{contender} {metric} {score:.4f} does not beat champion {champion:.4f} by "
        f"{margin:g}; the champion stays",
    )


def _audit(name: str, version: int, event: dict[str, Any]) -> None:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    MlflowClient().set_model_version_tag(
        name, str(version), f"{AUDIT_PREFIX}{stamp}", json.dumps({"at": stamp, **event})
    )


def promote(
    name: str,
    version: int,
    reason: str,
    metrics: dict[str, float] | None = None,
    gate: Mapping[str, float] | None = None,
) -> None:
    """Make ``version`` champion; the old champion keeps alias ``previous``; audit both.

    ``gate`` holds the figures the decision compared (candidate -> score on the same rows).
    """
    client = MlflowClient()
    old = find_champion(name)
    if old == version:
        return
    if old is not None:
        client.set_registered_model_alias(name, PREVIOUS, str(old))
    client.set_registered_model_alias(name, CHAMPION, str(version))
    event = {"event": "promoted", "replaced": old, "reason": reason, "metrics": metrics or {}}
    _audit(name, version, event | ({"gate": dict(gate)} if gate else {}))


def record_rejection(
    name: str,
    version: int,
    reason: str,
    metrics: dict[str, float],
    gate: Mapping[str, float] | None = None,
) -> None:
    """Audit a challenger that was registered but not promoted (with the gate's figures)."""
    event = {"event": "rejected", "reason": reason, "metrics": metrics}
    _audit(name, version, event | ({"gate": dict(gate)} if gate else {}))


def rollback(name: str) -> tuple[int, int]:
    """Swap ``champion`` and ``previous``; return (old champion, new champion).

    Raises:
        LookupError: There is no ``previous`` version to roll back to.
    """
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    current = champion_version(name)
    try:
        target = int(client.get_model_version_by_alias(name, PREVIOUS).version)
    except MlflowException:
        raise LookupError(f"model {name!r} has no '{PREVIOUS}' version to roll back to") from None
    client.set_registered_model_alias(name, CHAMPION, str(target))
    client.set_registered_model_alias(name, PREVIOUS, str(current))
    _audit(name, target, {"event": "rollback", "replaced": current, "reason": "churnseg rollback"})
    return current, target


def promotion_history(name: str) -> list[dict[str, Any]]:
    """Return every audited promotion, rejection and rollback of ``name``, oldest first."""
    events = []
    for mv in MlflowClient().search_model_versions(f"name = '{name}'"):
        for key, value in mv.tags.items():
            if key.startswith(AUDIT_PREFIX):
                events.append({"version": int(mv.version), **json.loads(value)})
    return sorted(events, key=lambda e: str(e["at"]))
