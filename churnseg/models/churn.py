"""Churn classifier: one scikit-learn pipeline that scores a raw feature table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from churnseg.models.transforms import SKOPS_TRUSTED_TYPES, signed_log1p

NON_FEATURES = ("customer_id", "snapshot_date", "churned")
SKOPS_TYPES = list(SKOPS_TRUSTED_TYPES)


def feature_columns(frame: pd.DataFrame) -> list[str]:
    """Return the numeric model inputs of a feature table (ids, dates and labels excluded)."""
    return [
        c
        for c in frame.columns
        if c not in NON_FEATURES and pd.api.types.is_numeric_dtype(frame[c])
    ]


def churn_pipeline(c: float = 1.0, max_iter: int = 1000) -> Pipeline:
    """Return an unfitted logistic-regression pipeline over signed-log, scaled features."""
    return Pipeline(
        [
            ("impute", SimpleImputer(strategy="median")),
            ("log", FunctionTransformer(signed_log1p)),
            ("scale", StandardScaler()),
            ("model", LogisticRegression(C=c, max_iter=max_iter)),
        ]
    )


@dataclass(frozen=True)
class ChurnMetrics:
    """Validation metrics of a churn model on one labelled snapshot."""

    roc_auc: float
    pr_auc: float
    churn_rate: float
    rows: int

    def as_dict(self, prefix: str = "val_") -> dict[str, float]:
        """Return the metrics keyed for MLflow."""
        return {
            f"{prefix}roc_auc": self.roc_auc,
            f"{prefix}pr_auc": self.pr_auc,
            f"{prefix}churn_rate": self.churn_rate,
            f"{prefix}rows": float(self.rows),
        }


def evaluate_churn(model: Pipeline, frame: pd.DataFrame, columns: Sequence[str]) -> ChurnMetrics:
    """Return ROC AUC, PR AUC and the base rate of ``model`` on a labelled snapshot.

    Raises:
        ValueError: The snapshot has only one class, so ranking metrics are undefined.
    """
    y = frame["churned"].to_numpy()
    if len(np.unique(y)) < 2:
        raise ValueError(
            f"validation snapshot has {len(y)} rows of a single class; cannot compute ROC AUC"
        )
    proba = model.predict_proba(frame[list(columns)])[:, 1]
    return ChurnMetrics(
        roc_auc=float(roc_auc_score(y, proba)),
        pr_auc=float(average_precision_score(y, proba)),
        churn_rate=float(y.mean()),
        rows=len(y),
    )
