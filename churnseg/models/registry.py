"""MLflow model registry: log, register and promote models through aliases."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
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
        registered_model_name=name,
    )
    version = info.registered_model_version
    if version is None:
        raise RuntimeError(f"model {name!r} was logged but not registered")
    return int(version)


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


PREVIOUS = "previous"
AUDIT_PREFIX = "audit."


@dataclass(frozen=True)
class PromotionDecision:
    """Whether a challenger becomes champion, and why (kept in the audit trail)."""

    promote: bool
    reason: str


def decide_promotion(
    metric: str,
    challenger: float,
    champion: float | None,
    best_baseline: tuple[str, float] | None,
    margin: float,
) -> PromotionDecision:
    """Return the promotion decision for a challenger judged on the champion's validation rows.

    The challenger must beat the best baseline, and the champion (if any) by at least ``margin``.
    """
    if best_baseline is not None and not challenger > best_baseline[1]:
        return PromotionDecision(
            False,
            f"{metric} {challenger:.4f} does not beat baseline {best_baseline[0]} "
            f"({best_baseline[1]:.4f})",
        )
    if champion is None:
        return PromotionDecision(True, f"first model; {metric} {challenger:.4f}")
    if challenger >= champion + margin:
        return PromotionDecision(
            True,
            f"{metric} {challenger:.4f} beats champion {champion:.4f} by >= {margin:g}",
        )
    return PromotionDecision(
        False,
        f"{metric} {challenger:.4f} does not beat champion {champion:.4f} by {margin:g}",
    )


def _audit(name: str, version: int, event: dict[str, Any]) -> None:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    MlflowClient().set_model_version_tag(
        name, str(version), f"{AUDIT_PREFIX}{stamp}", json.dumps({"at": stamp, **event})
    )


def promote(name: str, version: int, reason: str, metrics: dict[str, float] | None = None) -> None:
    """Make ``version`` champion; the old champion keeps alias ``previous``; audit both."""
    client = MlflowClient()
    old = find_champion(name)
    if old == version:
        return
    if old is not None:
        client.set_registered_model_alias(name, PREVIOUS, str(old))
    client.set_registered_model_alias(name, CHAMPION, str(version))
    _audit(
        name,
        version,
        {"event": "promoted", "replaced": old, "reason": reason, "metrics": metrics or {}},
    )


def record_rejection(name: str, version: int, reason: str, metrics: dict[str, float]) -> None:
    """Audit a challenger that was registered but not promoted."""
    _audit(name, version, {"event": "rejected", "reason": reason, "metrics": metrics})


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
