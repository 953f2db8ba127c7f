"""Calibrated churn probabilities: the calibration chosen on held-out time, full resolution.

A ranking model orders customers; its calibrator maps that order to probabilities a person can
read. Three calibrators are tried on the held-out rows and the one with the lowest log loss is
kept, judged by two-fold cross-fitting so the rows that fit a calibrator never judge it:
``sigmoid`` (Platt: logistic in the ranking model's decision value), ``isotonic`` (a monotone
step function) and ``none`` (the ranking model's own probability).

Two properties hold for every published probability, whichever calibrator wins:

- *full resolution*: strictly increasing in the ranking model's decision value, so isotonic
  steps leave no blocks of tied probabilities (a tie-break of at most ``TIE_BREAK`` follows the
  decision value) and risk bands by probability agree with the ranking;
- *never exactly 0 or 1*: probabilities are squeezed into the open interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from scipy.special import expit
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

from churnseg.models.trees import binned_decision

METHODS = ("sigmoid", "isotonic", "none")
# The tie-break's largest effect on a probability: far below any calibration error that matters.
TIE_BREAK = 1e-3
# Decision values from probabilities are capped here (log odds of about +-13.8).
_CLIP = 1e-6


def decision_values(model: Any, X: pd.DataFrame) -> NDArray[np.float64]:
    """Return a ranking model's decision value (log odds) for each row."""
    # Gradient boosting walks its trees on binned rows: the same numbers in a third of the time
    # (the churn stage predicts its validation and calibration rows several times).
    binned = binned_decision(model, X)
    if binned is not None:
        return binned
    if hasattr(model, "decision_function"):
        return np.asarray(model.decision_function(X), dtype=np.float64).ravel()
    p = np.clip(np.asarray(model.predict_proba(X)[:, 1], dtype=np.float64), _CLIP, 1 - _CLIP)
    return np.asarray(np.log(p / (1 - p)), dtype=np.float64)


def _fit_map(method: str, d: NDArray[np.float64], y: NDArray[np.int_]) -> Any:
    """Return the fitted map from decision values to probabilities (None for ``none``)."""
    if method == "isotonic":
        return IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(d, y)
    if method == "sigmoid":
        return LogisticRegression(C=1e6, max_iter=1000).fit(d.reshape(-1, 1), y)
    if method == "none":
        return None
    raise ValueError(f"unknown calibration {method!r}; known: {', '.join(METHODS)}")


def _apply_map(calibrator: Any, d: NDArray[np.float64]) -> NDArray[np.float64]:
    """Return the probabilities a fitted map gives decision values ``d`` (before the squeeze)."""
    if calibrator is None:
        return np.asarray(expit(d), dtype=np.float64)
    if isinstance(calibrator, IsotonicRegression):
        return np.asarray(calibrator.predict(d), dtype=np.float64)
    return np.asarray(calibrator.predict_proba(d.reshape(-1, 1))[:, 1], dtype=np.float64)


def full_resolution(p: NDArray[np.float64], d: NDArray[np.float64]) -> NDArray[np.float64]:
    """Return ``p`` made strictly increasing in ``d`` and squeezed into (0, 1).

    ``p`` is non-decreasing in ``d`` (a calibrator's output); adding ``TIE_BREAK`` times a
    strictly increasing function of ``d`` into (0, 1) and dividing by ``1 + TIE_BREAK`` keeps
    every probability within ``TIE_BREAK`` of ``p`` and leaves none equal to another of a
    different ``d``, nor to 0 or 1. The function is ``1/2 + arctan(d)/pi``: it approaches 0 and
    1 only like ``1/|d|``, so the order survives in floating point for any decision value a
    model gives (a logistic of ``d`` would round to 0 beyond ``d = -40``).
    """
    order = 0.5 + np.arctan(d) / np.pi
    out = (np.clip(p, 0.0, 1.0) + TIE_BREAK * order) / (1.0 + TIE_BREAK)
    return np.asarray(out, dtype=np.float64)


def cross_fit_log_loss(
    d: NDArray[np.float64], y: NDArray[np.int_], method: str, seed: int
) -> float:
    """Return the two-fold cross-fitted log loss of a calibration ``method`` on ``(d, y)``."""
    folds = np.random.default_rng(seed).random(len(d)) < 0.5
    losses = []
    for held in (folds, ~folds):
        if len(np.unique(y[~held])) < 2 or not held.any():
            return float("inf")
        calibrator = _fit_map(method, d[~held], y[~held])
        p = full_resolution(_apply_map(calibrator, d[held]), d[held])
        losses.append(log_loss(y[held], p, labels=[0, 1]) * held.sum())
    return float(sum(losses) / len(d))


def choose_calibration(
    d: NDArray[np.float64], y: NDArray[np.int_], methods: Sequence[str] = METHODS, seed: int = 0
) -> tuple[str, dict[str, float]]:
    """Return the calibration with the lowest cross-fitted log loss, and every method's loss."""
    losses = {m: cross_fit_log_loss(d, y, m, seed) for m in methods}
    return min(losses, key=lambda m: (losses[m], METHODS.index(m))), losses


class CalibratedChurnModel(ClassifierMixin, BaseEstimator):
    """A fitted ranking pipeline and the calibrator of its decision values.

    ``fit`` fits only the calibrator, on rows the ranking model did not learn from (held-out
    time). ``method="auto"`` chooses among ``METHODS`` by cross-fitted log loss on those rows.

    Attributes:
        method_: The calibration used.
        losses_: Cross-fitted log loss of each method tried (``auto``), else empty.
        calibrator_: The fitted map (IsotonicRegression, LogisticRegression or None).
        classes_: ``[0, 1]``.
        feature_names_in_: The ranking pipeline's inputs.
    """

    def __init__(self, ranking: Any, method: str = "auto", random_state: int = 0) -> None:
        self.ranking = ranking
        self.method = method
        self.random_state = random_state

    def fit(self, X: pd.DataFrame, y: ArrayLike) -> CalibratedChurnModel:
        """Fit the calibrator on held-out rows ``X`` with labels ``y``."""
        return self.fit_decisions(decision_values(self.ranking, X), y)

    def fit_decisions(self, d: ArrayLike, y: ArrayLike) -> CalibratedChurnModel:
        """Fit the calibrator on decision values ``d`` of held-out rows with labels ``y``.

        For decision values the ranking model itself did not produce, e.g. out-of-fold values
        of models fitted without those rows (a refit that also learns from them).
        """
        labels = np.asarray(y, dtype=np.int_)
        d = np.asarray(d, dtype=np.float64)
        self.losses_: dict[str, float] = {}
        method = self.method
        if method == "auto":
            method, self.losses_ = choose_calibration(d, labels, seed=self.random_state)
        self.method_ = method
        self.calibrator_ = _fit_map(method, d, labels)
        self.classes_ = np.array([0, 1])
        names = getattr(self.ranking, "feature_names_in_", None)
        if names is not None:
            self.feature_names_in_ = np.asarray(names, dtype=object)
        return self

    def calibrate(self, d: NDArray[np.float64]) -> NDArray[np.float64]:
        """Return published probabilities for decision values ``d``."""
        return full_resolution(_apply_map(self.calibrator_, d), d)

    def predict_proba(self, X: pd.DataFrame) -> NDArray[np.float64]:
        """Return ``[P(stay), P(churn)]`` per row."""
        p = self.calibrate(decision_values(self.ranking, X))
        return np.column_stack([1.0 - p, p])

    def predict(self, X: pd.DataFrame) -> NDArray[np.int_]:
        """Return 1 where P(churn) is at least one half."""
        return np.asarray(self.predict_proba(X)[:, 1] >= 0.5, dtype=np.int_)
