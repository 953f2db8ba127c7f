"""Churn classifiers: candidate pipelines, time-aware search, calibration, baselines, backtest.

Time is the only honest split for churn: every selection and calibration step here fits on
earlier cutoffs and judges on a later one. With training cutoffs t1 < ... < tn and a validation
cutoff v (the caller keeps v apart):

* search: each candidate fits on t1..t(n-1) and is scored on tn;
* calibration: the chosen candidate fits on t1..t(n-1), its calibrator on tn (held-out time);
* backtest (rolling origin): for each cutoff c after the first, fit on the cutoffs before c and
  score on c.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from scipy.special import expit
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.frozen import FrozenEstimator
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, OrdinalEncoder, StandardScaler

from churnseg.models.evaluation import ranking_metrics
from churnseg.models.transforms import (
    SKOPS_TRUSTED_TYPES,
    as_float,
    season_of_cutoff,
    signed_log1p,
)

LABEL = "churned"
SNAPSHOT = "snapshot_date"
ID = "customer_id"
NON_FEATURES = (ID, SNAPSHOT, LABEL)
SKOPS_TYPES = [
    *SKOPS_TRUSTED_TYPES,
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.frozen._frozen.FrozenEstimator",
    "sklearn._loss.link.LogitLink",
    "sklearn._loss.link.Interval",
    "sklearn._loss.loss.HalfBinomialLoss",
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    # Categorical encoders keep a partial of check_array for their input validation.
    "functools.partial",
    "sklearn.utils.validation.check_array",
]

# Small grids on purpose: the search runs every retrain, on stacked snapshots.
PARAM_GRIDS: dict[str, list[dict[str, Any]]] = {
    "logreg": [{"C": 0.1}, {"C": 1.0}, {"C": 10.0}],
    "hgb": [
        {"learning_rate": 0.1, "max_iter": 150, "max_leaf_nodes": 15, "min_samples_leaf": 100},
        {"learning_rate": 0.1, "max_iter": 150, "max_leaf_nodes": 31, "min_samples_leaf": 50},
    ],
}
RFM_BASELINE_FEATURES = ("recency_days", "frequency", "monetary_total", "tenure_days")


@dataclass(frozen=True)
class FeatureSpec:
    """Model inputs of a feature table split by kind."""

    numeric: list[str]
    categorical: list[str]
    calendar: list[str] = field(default_factory=list)

    @property
    def columns(self) -> list[str]:
        """Return all inputs: numeric, categorical, then the cutoff date."""
        return [*self.numeric, *self.categorical, *self.calendar]


def feature_spec(frame: pd.DataFrame) -> FeatureSpec:
    """Return the model inputs of a feature table: numeric and categorical columns.

    Ids and the label are never inputs; the cutoff date enters only as its season (see
    ``transforms.season_of_cutoff``); booleans count as numeric; strings and categoricals as
    categorical; other datetimes are skipped (the features carry their ages instead).
    """
    numeric, categorical = [], []
    calendar = [SNAPSHOT] if SNAPSHOT in frame.columns else []
    for col in frame.columns:
        if col in NON_FEATURES:
            continue
        dtype = frame[col].dtype
        if pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_numeric_dtype(dtype):
            numeric.append(col)
        elif pd.api.types.is_string_dtype(dtype) or isinstance(dtype, pd.CategoricalDtype):
            categorical.append(col)
    return FeatureSpec(numeric, categorical, calendar)


def candidate_pipeline(
    name: str, spec: FeatureSpec, params: dict[str, Any], random_state: int = 0
) -> Pipeline:
    """Return an unfitted candidate that scores a raw feature table.

    ``logreg``: median imputation, signed log, standard scaling, one-hot categoricals,
    L2-regularised logistic regression. ``hgb``: ordinal-encoded categoricals (unknown and
    missing become -1), HistGradientBoostingClassifier with native categorical splits.
    """
    if name == "logreg":
        numeric = make_pipeline(
            FunctionTransformer(as_float),
            SimpleImputer(strategy="median"),
            FunctionTransformer(signed_log1p),
            StandardScaler(),
        )
        categorical = make_pipeline(
            SimpleImputer(strategy="constant", fill_value="(missing)"),
            OneHotEncoder(handle_unknown="ignore", min_frequency=20, sparse_output=False),
        )
        prep = ColumnTransformer(
            [
                ("num", numeric, spec.numeric),
                ("cat", categorical, spec.categorical),
                ("season", FunctionTransformer(season_of_cutoff), spec.calendar),
            ],
            verbose_feature_names_out=False,
        )
        model: Any = LogisticRegression(max_iter=2000, **params)
    elif name == "hgb":
        encoder = OrdinalEncoder(
            handle_unknown="use_encoded_value",
            unknown_value=-1,
            encoded_missing_value=-1,
            dtype=np.float64,
        )
        prep = ColumnTransformer(
            [
                ("num", FunctionTransformer(as_float), spec.numeric),
                ("cat", encoder, spec.categorical),
                ("season", FunctionTransformer(season_of_cutoff), spec.calendar),
            ],
            verbose_feature_names_out=False,
        )
        n_num = len(spec.numeric)
        mask = (
            [False] * n_num + [True] * len(spec.categorical) + [False, False] * len(spec.calendar)
        )
        model = HistGradientBoostingClassifier(
            early_stopping=False,
            categorical_features=mask if spec.categorical else None,
            random_state=random_state,
            **params,
        )
    else:
        raise ValueError(f"unknown churn candidate {name!r}; known: {sorted(PARAM_GRIDS)}")
    return Pipeline([("prep", prep), ("model", model)])


def _sample_rows(
    frame: pd.DataFrame, mask: NDArray[np.bool_], rows: int | None, random_state: int
) -> pd.DataFrame:
    """Return up to ``rows`` rows of ``frame`` where ``mask`` holds, copying only those.

    A seeded sample when more rows qualify; all of them when ``rows`` is None. On a million
    customers the training table is gigabytes: selecting by position, rather than filtering
    and then sampling, keeps the filtered copy out of memory.
    """
    index = np.flatnonzero(mask)
    if rows is not None and len(index) > rows:
        chosen = np.random.default_rng(random_state).choice(index, size=rows, replace=False)
        index = np.sort(chosen)
    return frame.iloc[index]


def _last_cutoff(frame: pd.DataFrame) -> NDArray[np.bool_]:
    """Return which rows are of the last snapshot.

    Raises:
        ValueError: Fewer than two snapshots (no held-out time to judge on).
    """
    cutoffs = sorted(frame[SNAPSHOT].unique())
    if len(cutoffs) < 2:
        raise ValueError(
            f"time-aware training needs at least 2 training cutoffs, got {len(cutoffs)}; "
            "raise snapshots.train_cutoffs"
        )
    return np.asarray(frame[SNAPSHOT].to_numpy() == cutoffs[-1], dtype=bool)


def split_last_cutoff(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (rows before the last snapshot, rows of the last snapshot).

    Raises:
        ValueError: Fewer than two snapshots (no held-out time to judge on).
    """
    last = _last_cutoff(frame)
    return frame[~last], frame[last]


@dataclass(frozen=True)
class SearchResult:
    """The chosen candidate, every trial's out-of-time score, and the winner's predictions.

    ``last_cutoff`` and ``last_proba`` are the last training cutoff and the chosen trial's
    P(churn) of its sampled rows: the backtest fold at that cutoff is this very trial (same
    samples, same model), so ``backtest`` takes them instead of fitting it again.
    """

    name: str
    params: dict[str, Any]
    trials: list[dict[str, Any]]
    last_cutoff: Any = None
    last_proba: NDArray[np.float64] | None = field(default=None, repr=False)

    def fold_proba(
        self, cutoff: Any, name: str, params: dict[str, Any], rows: int
    ) -> NDArray[np.float64] | None:
        """Return the winner's predictions if they are the fold ``(cutoff, name, params)``."""
        same = (self.last_cutoff, self.name, self.params) == (cutoff, name, params)
        if same and self.last_proba is not None and len(self.last_proba) == rows:
            return self.last_proba
        return None


def time_aware_search(
    train: pd.DataFrame,
    spec: FeatureSpec,
    candidates: Sequence[str],
    sample_rows: int,
    random_state: int = 0,
) -> SearchResult:
    """Return the candidate and parameters with the best ROC AUC on the last training cutoff.

    Each trial fits on a seeded sample of ``sample_rows`` rows of the earlier cutoffs and is
    scored on a sample of as many rows of the last one: on a million customers predicting the
    whole last cutoff for every trial cost more than the fits, for no better choice.
    """
    is_last = _last_cutoff(train)
    cutoff = train[SNAPSHOT].to_numpy()[is_last][0]
    fit_rows, last = _fold_rows(train, train, cutoff, sample_rows, random_state)
    trials: list[dict[str, Any]] = []
    predictions = []
    for name in candidates:
        for params in PARAM_GRIDS[name]:
            model = candidate_pipeline(name, spec, params, random_state)
            model.fit(fit_rows[spec.columns], fit_rows[LABEL])
            proba = model.predict_proba(last[spec.columns])[:, 1]
            score = ranking_metrics(last[LABEL], proba, 0.1)["roc_auc"]
            trials.append({"candidate": name, "params": params, "roc_auc": score})
            predictions.append(np.asarray(proba, dtype=np.float64))
    chosen = max(
        range(len(trials)),
        key=lambda i: (trials[i]["roc_auc"], -len(str(trials[i]["params"]))),
    )
    best = trials[chosen]
    return SearchResult(
        str(best["candidate"]), dict(best["params"]), trials, cutoff, predictions[chosen]
    )


def _fold_rows(
    frame: pd.DataFrame,
    source: pd.DataFrame,
    cutoff: Any,
    sample_rows: int | None,
    random_state: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return an out-of-time fold: rows of ``frame`` before ``cutoff``, rows of ``source`` at it.

    Both are seeded samples of ``sample_rows``.

    The search and the backtest take their folds here, so the search's winning trial is the
    backtest's fold at the last training cutoff, row for row.
    """
    past = _sample_rows(frame, frame[SNAPSHOT].to_numpy() < cutoff, sample_rows, random_state)
    test = _sample_rows(
        source, source[SNAPSHOT].to_numpy() == cutoff, sample_rows, random_state + 1
    )
    return past, test


def fit_calibrated(
    train: pd.DataFrame,
    spec: FeatureSpec,
    name: str,
    params: dict[str, Any],
    method: str,
    random_state: int = 0,
    sample_rows: int | None = None,
    calibration_rows: int | None = None,
) -> CalibratedClassifierCV:
    """Fit the candidate on all but the last training cutoff; calibrate on the last one.

    Args:
        train: Stacked training snapshots with labels.
        spec: Model inputs.
        name: Candidate (``logreg`` or ``hgb``).
        params: Its parameters (from the search).
        method: ``isotonic`` or ``sigmoid``.
        random_state: Seed of the model and of the sample.
        sample_rows: Fit on a seeded sample of this many rows of the earlier cutoffs (default:
            all of them).
        calibration_rows: Calibrate on a seeded sample of this many rows of the last cutoff
            (default: all of them). Predicting them is the calibration's cost; an isotonic
            fit on 200k rows is as smooth as on the 600k of a million customers.
    """
    is_last = _last_cutoff(train)
    early = _sample_rows(train, ~is_last, sample_rows, random_state)
    last = _sample_rows(train, is_last, calibration_rows, random_state + 2)
    base = candidate_pipeline(name, spec, params, random_state)
    base.fit(early[spec.columns], early[LABEL])
    del early  # the fit keeps no reference; free it before the calibration copies
    calibrated = CalibratedClassifierCV(FrozenEstimator(base), method=method)
    calibrated.fit(last[spec.columns], last[LABEL])
    return calibrated


def ranking_model(model: Any) -> Any:
    """Return the uncalibrated pipeline inside a calibrated model (or the model itself)."""
    if isinstance(model, CalibratedClassifierCV):
        inner = model.calibrated_classifiers_[0].estimator
        return inner.estimator if isinstance(inner, FrozenEstimator) else inner
    return model


def fit_rfm_baseline(train: pd.DataFrame) -> Pipeline:
    """Return logistic regression on RFM and tenure only, fitted on the training snapshots."""
    spec = FeatureSpec([c for c in RFM_BASELINE_FEATURES if c in train], [])
    model = candidate_pipeline("logreg", spec, {"C": 1.0})
    return model.fit(train[spec.columns], train[LABEL])


def backtest(
    frame: pd.DataFrame,
    spec: FeatureSpec,
    name: str,
    params: dict[str, Any],
    capacity: float,
    sample_rows: int,
    random_state: int = 0,
    later: pd.DataFrame | None = None,
    search: SearchResult | None = None,
) -> pd.DataFrame:
    """Return ranking metrics per rolling-origin fold (fit on cutoffs before c, score on c).

    Args:
        frame: Stacked labelled snapshots; every cutoff after its first is a fold.
        spec: Model inputs.
        name: Candidate (``logreg`` or ``hgb``).
        params: Its parameters.
        capacity: Share contacted, for recall and lift at capacity.
        sample_rows: Rows per fold's fit (a seeded sample of the earlier cutoffs) and per
            fold's test (a seeded sample of the cutoff).
        random_state: Seed of the model and of the sample.
        later: Rows of cutoffs after all of ``frame``'s (the validation snapshot): each is a
            fold scored by a model fitted on ``frame``, without concatenating the two tables.
        search: The search that chose ``name`` and ``params`` on ``frame``: its winner's
            predictions are the fold at the last cutoff of ``frame`` (not fitted again).
    """
    tests = [(c, frame) for c in np.unique(frame[SNAPSHOT].to_numpy())[1:]]
    if later is not None:
        tests += [(c, later) for c in np.unique(later[SNAPSHOT].to_numpy())]
    folds = []
    for cutoff, source in tests:
        past, test = _fold_rows(frame, source, cutoff, sample_rows, random_state)
        proba = search.fold_proba(cutoff, name, params, len(test)) if search else None
        if proba is None:
            model = candidate_pipeline(name, spec, params, random_state)
            model.fit(past[spec.columns], past[LABEL])
            proba = model.predict_proba(test[spec.columns])[:, 1]
        folds.append(
            {
                "cutoff": str(pd.Timestamp(cutoff).date()),
                "train_rows": len(past),
                "test_rows": len(test),
                "churn_rate": float(test[LABEL].mean()),
                **ranking_metrics(test[LABEL], proba, capacity),
            }
        )
    return pd.DataFrame(folds)


def churn_scores(
    model: Any, frame: pd.DataFrame
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Return the calibrated P(churn) and the ranking model's P(churn), predicting once.

    A calibrated model calibrates its ranking pipeline's decision function, and both
    candidates' ``predict_proba`` is the logistic of that decision function; so one decision
    function gives both numbers exactly as two ``predict_proba`` calls would (a test checks
    it). Any other model is predicted twice.
    """
    ranking = ranking_model(model)
    if ranking is model:
        proba = churn_probability(model, frame)
        return proba, proba
    calibrated = getattr(model, "calibrated_classifiers_", [])
    one_calibrator = len(calibrated) == 1 and len(calibrated[0].calibrators) == 1
    if not (one_calibrator and hasattr(ranking, "decision_function")):
        return churn_probability(model, frame), churn_probability(ranking, frame)
    decision = np.asarray(ranking.decision_function(_inputs(model, frame)), dtype=np.float64)
    decision = decision.ravel()
    proba = np.asarray(calibrated[0].calibrators[0].predict(decision), dtype=np.float64)
    return proba, np.asarray(expit(decision), dtype=np.float64)


# Rows per predict_proba call: a pipeline copies its input at every step, so predicting a whole
# 1M-row validation table at once took 1.9 GB on top of the table (the churn stage's peak).
PREDICT_ROWS = 100_000


def churn_probability(model: Any, frame: pd.DataFrame) -> NDArray[np.float64]:
    """Return P(churn) for each row of a raw feature table, predicted ``PREDICT_ROWS`` at a time.

    Every step predicts row by row, so the result is the one a single call gives.
    """
    inputs = _inputs(model, frame)
    out = np.empty(len(inputs), dtype=np.float64)
    for start in range(0, len(inputs), PREDICT_ROWS):
        rows = inputs.iloc[start : start + PREDICT_ROWS]
        out[start : start + len(rows)] = model.predict_proba(rows)[:, 1]
    return out


def _inputs(model: Any, frame: pd.DataFrame) -> pd.DataFrame:
    """Return the columns of ``frame`` that ``model`` was fitted on (all when it does not say)."""
    columns = list(getattr(model, "feature_names_in_", []))
    return frame[columns] if columns else frame
