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

from churnseg.models.calibration import CalibratedChurnModel, decision_values
from churnseg.models.evaluation import ranking_metrics
from churnseg.models.transforms import (
    SKOPS_TRUSTED_TYPES,
    as_float,
    season_of_cutoff,
    signed_log1p,
)
from churnseg.models.trees import binned_decision, decision_and_bins

LABEL = "churned"
SNAPSHOT = "snapshot_date"
ID = "customer_id"
NON_FEATURES = (ID, SNAPSHOT, LABEL)
SKOPS_TYPES = [
    *SKOPS_TRUSTED_TYPES,
    "churnseg.models.calibration.CalibratedChurnModel",
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


def uninformative_columns(frame: pd.DataFrame, spec: FeatureSpec) -> dict[str, str]:
    """Return the inputs that cannot inform a model on ``frame``, each with why.

    A column missing on every row breaks HistGradientBoosting ("window shape cannot be larger
    than input array shape") and makes every imputer warn; a constant one carries nothing.
    """
    out: dict[str, str] = {}
    for col in [*spec.numeric, *spec.categorical]:
        values = frame[col]
        missing = values.isna()
        if missing.all():
            out[col] = "missing on every training row"
        # Constant: no row missing and every row equal to the first, what nunique(dropna=False)
        # <= 1 says without hashing 2.4M values per column (5.8 s of the 1M churn stage).
        elif not missing.any() and bool((values == values.iloc[0]).all()):
            out[col] = f"constant on the training rows ({values.iloc[0]!r})"
    return out


# Seasonal terms need training cutoffs in every quarter of the year: fitted on a few months,
# they extrapolate to the others (a model taught on February-April cutoffs, scored in July).
SEASON_QUARTERS = 4


def seasonality_check(frame: pd.DataFrame) -> tuple[bool, str]:
    """Return whether the cutoff's season may be a model input on ``frame``, and why (or not).

    Only when the training cutoffs fall in all four quarters of the year.
    """
    if SNAPSHOT not in frame.columns:
        return False, "off: no cutoff dates"
    dates = pd.DatetimeIndex(pd.to_datetime(pd.unique(frame[SNAPSHOT])))
    quarters = sorted(set(dates.quarter))
    if len(quarters) >= SEASON_QUARTERS:
        return True, f"on: training cutoffs in every quarter ({len(dates)} cutoffs)"
    shown = ", ".join(f"Q{q}" for q in quarters)
    return False, f"off: training cutoffs only in {shown}, not every season"


def model_inputs(frame: pd.DataFrame) -> tuple[FeatureSpec, dict[str, str], str]:
    """Return the inputs a churn model fits on, the columns left out (with why), the season note.

    ``feature_spec`` minus ``uninformative_columns``; the cutoff's season only where
    ``seasonality_check`` allows it.
    """
    spec = feature_spec(frame)
    dropped = uninformative_columns(frame, spec)
    seasonal, note = seasonality_check(frame)
    spec = FeatureSpec(
        [c for c in spec.numeric if c not in dropped],
        [c for c in spec.categorical if c not in dropped],
        spec.calendar if seasonal else [],
    )
    return spec, dropped, note


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
    return frame.iloc[sample_positions(mask, rows, random_state)]


def sample_positions(
    mask: NDArray[np.bool_], rows: int | None, random_state: int
) -> NDArray[np.intp]:
    """Return the sorted positions of a seeded sample of ``rows`` of ``mask``'s (None: all)."""
    index = np.flatnonzero(mask)
    if rows is not None and len(index) > rows:
        chosen = np.random.default_rng(random_state).choice(index, size=rows, replace=False)
        index = np.sort(chosen)
    return index


def _cutoff_days(values: Any) -> NDArray[np.int64]:
    """Return cutoff dates (dates, timestamps or text) as day numbers."""
    days = pd.to_datetime(pd.Series(values)).to_numpy(dtype="datetime64[D]")
    return days.astype(np.int64)


def _matured_before(days: NDArray[np.int64], cutoff: int, label_days: int) -> NDArray[np.bool_]:
    """Return which rows' cutoffs lie before ``cutoff`` with their label window ended by it."""
    return np.asarray((days < cutoff) & (days + label_days <= cutoff), dtype=bool)


# Share of customers held out to choose and calibrate on when there is one training cutoff.
IN_TIME_SHARE = 0.3
OUT_OF_TIME = "out of time: fit on earlier cutoffs, judged on the last"


def held_out_rows(
    frame: pd.DataFrame, label_days: int = 0, random_state: int = 0
) -> tuple[NDArray[np.bool_], NDArray[np.bool_], str]:
    """Return the rows to fit on, the rows to judge and calibrate on, and how they were split.

    Out of time where it can be: judge on the last training cutoff, fit on the earlier cutoffs
    whose label window ended by it (``label_days`` after them; with cutoffs closer together
    than that, the nearest ones are left out). With one cutoff, or none matured before the
    last, a seeded ``IN_TIME_SHARE`` of the last cutoff's customers is held out instead (in
    time: the validation cutoff stays the out-of-time judge).

    Raises:
        ValueError: No rows, or too few customers to hold any out.
    """
    if len(frame) == 0:
        raise ValueError("time-aware training needs training rows, got none")
    days = _cutoff_days(frame[SNAPSHOT])
    last = int(days.max())
    is_last = days == last
    fit = _matured_before(days, last, label_days)
    if fit.any():
        return fit, is_last, OUT_OF_TIME
    ids = frame[ID].to_numpy()[is_last]
    unique = np.unique(ids)
    chosen = np.random.default_rng(random_state).random(len(unique)) < IN_TIME_SHARE
    if chosen.all() or not chosen.any():
        raise ValueError(
            f"time-aware training: {len(unique)} customers at one cutoff are too few to hold "
            "some out for model choice and calibration"
        )
    test = np.zeros(len(frame), dtype=bool)
    test[np.flatnonzero(is_last)] = np.isin(ids, unique[chosen])
    return is_last & ~test, test, "in time: one cutoff, a share of its customers held out"


def split_last_cutoff(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (rows fitted on, rows judged on) as ``held_out_rows`` splits ``frame``."""
    fit, test, _ = held_out_rows(frame)
    return frame[fit], frame[test]


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
    split: str = OUT_OF_TIME  # how the trials were judged (``held_out_rows``)

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
    label_days: int = 0,
) -> SearchResult:
    """Return the candidate and parameters with the best ROC AUC on held-out rows.

    The held-out rows are the last training cutoff (``held_out_rows``: fitted on earlier cutoffs
    whose labels matured by then). Each trial fits on a seeded sample of ``sample_rows`` fitting
    rows and is scored on a sample of as many held-out rows: on a million customers predicting
    the whole last cutoff for every trial cost more than the fits, for no better choice.
    """
    fit_mask, test_mask, split = held_out_rows(train, label_days, random_state)
    cutoff = train[SNAPSHOT].to_numpy()[test_mask][0]
    fit_rows = _sample_rows(train, fit_mask, sample_rows, random_state)
    last = _sample_rows(train, test_mask, sample_rows, random_state + 1)
    trials: list[dict[str, Any]] = []
    predictions = []
    for name in candidates:
        for params in PARAM_GRIDS[name]:
            model = candidate_pipeline(name, spec, params, random_state)
            model.fit(fit_rows[spec.columns], fit_rows[LABEL])
            proba = churn_probability(model, last)
            score = ranking_metrics(last[LABEL], proba, 0.1)["roc_auc"]
            trials.append({"candidate": name, "params": params, "roc_auc": score})
            predictions.append(np.asarray(proba, dtype=np.float64))
    chosen = max(
        range(len(trials)),
        key=lambda i: (
            np.nan_to_num(trials[i]["roc_auc"], nan=-1.0),
            -len(str(trials[i]["params"])),
        ),
    )
    best = trials[chosen]
    # Only an out-of-time split is the backtest's fold at the last cutoff.
    out_of_time = split == OUT_OF_TIME
    return SearchResult(
        str(best["candidate"]),
        dict(best["params"]),
        trials,
        cutoff if out_of_time else None,
        predictions[chosen] if out_of_time else None,
        split,
    )


def _fold_rows(
    frame: pd.DataFrame,
    source: pd.DataFrame,
    cutoff: Any,
    sample_rows: int | None,
    random_state: int,
    label_days: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return an out-of-time fold: rows of ``frame`` matured before ``cutoff``, ``source``'s at it.

    Both are seeded samples of ``sample_rows``. The backtest takes its folds here; at the last
    training cutoff this is the search's split (``held_out_rows``), row for row.
    """
    day = int(_cutoff_days([cutoff])[0])
    past_mask = _matured_before(_cutoff_days(frame[SNAPSHOT]), day, label_days)
    past = _sample_rows(frame, past_mask, sample_rows, random_state)
    at = _cutoff_days(source[SNAPSHOT]) == day
    test = _sample_rows(source, at, sample_rows, random_state + 1)
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
    label_days: int = 0,
    latest: pd.DataFrame | None = None,
    fold_rows: int | None = None,
) -> CalibratedChurnModel:
    """Fit the candidate on earlier cutoffs and its calibrator on held-out later rows.

    Without ``latest`` (the model that is judged): the split is ``held_out_rows``'s, fitting on
    the cutoffs whose labels matured by the last training cutoff (one cutoff: a held-out share of
    its customers) and calibrating on the last one. With ``latest`` (the refit, the model that is
    scored): the candidate fits on every training row and its calibrator on ``latest``, the
    freshest matured labels (the validation cutoff).

    Args:
        train: Stacked training snapshots with labels.
        spec: Model inputs.
        name: Candidate (``logreg`` or ``hgb``).
        params: Its parameters (from the search).
        method: ``auto`` (chosen by cross-fitted log loss), ``isotonic``, ``sigmoid`` or
            ``none`` (see ``calibration``).
        random_state: Seed of the model and of the sample.
        sample_rows: Fit on a seeded sample of this many rows (default: all of them).
        calibration_rows: Calibrate on a seeded sample of this many held-out rows (default:
            all of them). Predicting them is the calibration's cost; an isotonic fit on 200k
            rows is as smooth as on the 600k of a million customers.
        label_days: Days a label reads after its cutoff (see ``held_out_rows``).
        latest: Rows of a later cutoff to learn from and calibrate on too (the refit on the
            newest labels, see ``refit_calibrated``).
        fold_rows: With ``latest``: rows each out-of-fold calibration model fits on (a seeded
            sample; default: all).
    """
    if latest is not None:
        rows = refit_rows(train, latest, sample_rows, random_state)
        return refit_calibrated(
            rows, spec, name, params, method, random_state, calibration_rows, fold_rows
        )
    fit_mask, test_mask, _ = held_out_rows(train, label_days, random_state)
    early = _sample_rows(train, fit_mask, sample_rows, random_state)
    base = candidate_pipeline(name, spec, params, random_state)
    base.fit(early[spec.columns], early[LABEL])
    del early  # the fit keeps no reference; free it before the calibration copies
    # Drawn after the fit (the same rows either way): the fit is the larger moment.
    last = _sample_rows(train, test_mask, calibration_rows, random_state + 2)
    calibrated = CalibratedChurnModel(base, method, random_state)
    return calibrated.fit(last[spec.columns], last[LABEL])


# Folds of the refit's out-of-fold calibration (each fits the candidate once more).
REFIT_FOLDS = 2


@dataclass(frozen=True)
class RefitRows:
    """The rows a refit on the newest labels learns from: ``every`` = training rows, then latest.

    ``every`` stacks a seeded sample of the training rows (its first ``older`` rows) and of the
    latest cutoff's rows, as ``refit_rows`` draws them. Drawn apart from the fits, so a caller
    can let the whole training frame go before the refit's final fit, its largest moment.
    """

    every: pd.DataFrame
    older: int

    @property
    def latest(self) -> pd.DataFrame:
        """Return the latest cutoff's rows (a view of ``every``)."""
        return self.every.iloc[self.older :]


def refit_rows(
    train: pd.DataFrame, latest: pd.DataFrame, sample_rows: int | None, random_state: int
) -> RefitRows:
    """Return the refit's rows: seeded samples of ``train`` and ``latest``, in that order.

    Together at most ``sample_rows`` (None: all), each table giving its share of them. The
    rows depend only on the tables' lengths and the seed, so the challenger's refit and a
    baseline's (other columns) learn from the same customers.
    """
    share = len(train) / max(len(train) + len(latest), 1)
    rows = None if sample_rows is None else round(sample_rows * share)
    old = _sample_rows(train, np.ones(len(train), dtype=bool), rows, random_state)
    rows = None if sample_rows is None else sample_rows - len(old)
    new = _sample_rows(latest, np.ones(len(latest), dtype=bool), rows, random_state + 1)
    return RefitRows(pd.concat([old, new]), len(old))


def refit_calibrated(
    rows: RefitRows,
    spec: FeatureSpec,
    name: str,
    params: dict[str, Any],
    method: str,
    random_state: int = 0,
    calibration_rows: int | None = None,
    fold_rows: int | None = None,
) -> CalibratedChurnModel:
    """Fit the candidate on all of ``rows``; calibrate it out of fold on the latest ones.

    The newest matured labels (``rows.latest``, the validation cutoff) are learnt from as well
    as calibrated on: their customers are split in ``REFIT_FOLDS`` seeded folds, each fold's
    decision values come from the candidate fitted without that fold (on a seeded sample of at
    most ``fold_rows`` rows: the folds only calibrate, and at a million customers two more full
    fits cost more than the rest of the stage), and the calibrator is fitted on those
    out-of-fold values; the model kept is the candidate fitted on everything.

    Args:
        rows: What to learn from (``refit_rows``).
        spec: Model inputs.
        name: Candidate (``logreg`` or ``hgb``).
        params: Its parameters.
        method: Calibration, as in ``fit_calibrated``.
        random_state: Seed of the model, the folds and the samples.
        calibration_rows: Calibrate on a seeded sample of this many latest rows (None: all).
        fold_rows: Rows each out-of-fold model fits on (a seeded sample; None: all).
    """
    old, new = rows.every.iloc[: rows.older], rows.latest
    fold = np.random.default_rng(random_state + 3).integers(0, REFIT_FOLDS, len(new))
    every_new = np.ones(len(new), dtype=bool)
    positions = sample_positions(every_new, calibration_rows, random_state + 2)
    cal, cal_fold = new.iloc[positions], fold[positions]
    decisions = np.empty(len(cal), dtype=np.float64)
    for k in range(REFIT_FOLDS):
        part = pd.concat([old, new[fold != k]])
        part = _sample_rows(part, np.ones(len(part), dtype=bool), fold_rows, random_state + 4)
        model = candidate_pipeline(name, spec, params, random_state)
        model.fit(part[spec.columns], part[LABEL])
        held = cal_fold == k
        decisions[held] = decision_values(model, cal[spec.columns][held])
    labels = cal[LABEL]
    # The final fit copies its inputs twice more (to one array, then stacked with the encoded
    # categoricals): the copies it does not read go first (``old`` and ``new`` are views of
    # ``rows.every``, which it reads).
    del cal, part, model
    base = candidate_pipeline(name, spec, params, random_state)
    base.fit(rows.every[spec.columns], rows.every[LABEL])
    return CalibratedChurnModel(base, method, random_state).fit_decisions(decisions, labels)


def ranking_model(model: Any) -> Any:
    """Return the uncalibrated pipeline inside a calibrated model (or the model itself)."""
    if isinstance(model, CalibratedChurnModel):
        return model.ranking
    if isinstance(model, CalibratedClassifierCV):  # champions registered before 2026-12
        inner = model.calibrated_classifiers_[0].estimator
        return inner.estimator if isinstance(inner, FrozenEstimator) else inner
    return model


# Simple baselines every challenger must beat, each the first of its columns the table has:
# recency alone (days since the last purchase, or the last event without purchases), logistic
# regression on RFM and tenure, and BG/NBD's P(alive). Fitted and calibrated like a candidate
# (logistic regression on those columns), so the best of them can be promoted and scored.
BASELINES: dict[str, tuple[tuple[str, ...], ...]] = {
    "recency": (("recency_days",), ("days_since_event",)),
    "logistic_rfm": (RFM_BASELINE_FEATURES,),
    "bgnbd_p_alive": (("btyd_p_alive",),),
}
BASELINE_PARAMS: dict[str, Any] = {"C": 1.0}


def baseline_specs(spec: FeatureSpec) -> dict[str, FeatureSpec]:
    """Return each baseline whose columns are model inputs of ``spec``, as its own spec."""
    inputs = set(spec.numeric)
    out = {}
    for name, options in BASELINES.items():
        for columns in options:
            present = [c for c in columns if c in inputs]
            if len(present) == len(columns) or (len(columns) > 2 and len(present) >= 2):
                out[name] = FeatureSpec(present, [])
                break
    return out


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
    label_days: int = 0,
    compare_newest: bool = False,
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
        label_days: Days a label reads after its cutoff: a fold fits only on cutoffs whose
            label window ended by its cutoff (folds without such cutoffs are left out).
        compare_newest: Also fit the ``COMPARED_FOLDS`` most recent folds without their
            newest matured cutoff (``roc_auc_without_newest``, NaN for the others): what
            learning from the newest labels gains.
    """
    tests = [(c, frame) for c in np.unique(frame[SNAPSHOT].to_numpy())[1:]]
    if later is not None:
        tests += [(c, later) for c in np.unique(later[SNAPSHOT].to_numpy())]
    folds = []
    days = _cutoff_days(frame[SNAPSHOT])
    scored = []  # the (cutoff, rows) of each fold, in order
    for cutoff, source in tests:
        if not _matured_before(days, int(_cutoff_days([cutoff])[0]), label_days).any():
            continue
        scored.append((cutoff, source))
        past, test = _fold_rows(frame, source, cutoff, sample_rows, random_state, label_days)
        proba = search.fold_proba(cutoff, name, params, len(test)) if search else None
        if proba is None:
            model = candidate_pipeline(name, spec, params, random_state)
            model.fit(past[spec.columns], past[LABEL])
            proba = churn_probability(model, test)
        fold = {
            "cutoff": str(pd.Timestamp(cutoff).date()),
            "train_rows": len(past),
            "test_rows": len(test),
            "churn_rate": float(test[LABEL].mean()),
            **ranking_metrics(test[LABEL], proba, capacity),
        }
        folds.append(fold)
    if compare_newest:  # the most recent folds: each costs one more fit
        for fold, (cutoff, source) in list(zip(folds, scored, strict=True))[-COMPARED_FOLDS:]:
            past, test = _fold_rows(frame, source, cutoff, sample_rows, random_state, label_days)
            fold |= _without_newest(past, test, spec, name, params, random_state)
    return pd.DataFrame(folds)


# Folds compared with and without their newest cutoff: the most recent ones.
COMPARED_FOLDS = 3


def _without_newest(
    past: pd.DataFrame,
    test: pd.DataFrame,
    spec: FeatureSpec,
    name: str,
    params: dict[str, Any],
    random_state: int,
) -> dict[str, float]:
    """Return the fold's ROC AUC when its newest matured cutoff is left out of the fit.

    That is the model scoring would use without ``refit_on_latest``: the newest labels are
    only held out (for calibration and judging), never learnt from. NaN with one cutoff.
    """
    days = _cutoff_days(past[SNAPSHOT])
    older = days < days.max()
    if not older.any():
        return {"roc_auc_without_newest": float("nan")}
    model = candidate_pipeline(name, spec, params, random_state)
    model.fit(past.loc[older, spec.columns], past.loc[older, LABEL])
    proba = churn_probability(model, test)
    return {"roc_auc_without_newest": ranking_metrics(test[LABEL], proba, 0.1)["roc_auc"]}


def churn_scores(
    model: Any, frame: pd.DataFrame
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Return the calibrated P(churn) and the ranking model's P(churn), predicting once.

    A calibrated model calibrates its ranking pipeline's decision function, and both
    candidates' ``predict_proba`` is the logistic of that decision function; so one decision
    function gives both numbers exactly as two ``predict_proba`` calls would (a test checks
    it). Any other model is predicted twice.
    """
    proba, score, _ = churn_scores_and_bins(model, frame)
    return proba, score


def churn_scores_and_bins(
    model: Any, frame: pd.DataFrame
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.uint8] | None]:
    """Return :func:`churn_scores` and, when it walked them, the ranking model's binned rows.

    The bins (``trees.decision_and_bins``, one byte per value) are what the reasons'
    attributions walk the same trees on: a scoring run hands them over instead of preparing
    and binning every row again. None for models that are not predicted from bins.
    """
    ranking = ranking_model(model)
    if ranking is model:
        proba = churn_probability(model, frame)
        return proba, proba, None
    if isinstance(model, CalibratedChurnModel):
        inputs = _inputs(model, frame)
        decision = np.empty(len(inputs), dtype=np.float64)
        bins: list[NDArray[np.uint8]] | None = []
        for start in range(0, len(inputs), PREDICT_ROWS):
            rows = inputs.iloc[start : start + PREDICT_ROWS]
            found = decision_and_bins(ranking, rows)
            if found is None:  # not predicted from bins: the usual decision values
                decision[start : start + len(rows)] = decision_values(ranking, rows)
                bins = None
                continue
            decision[start : start + len(rows)] = found[0]
            if bins is not None:
                bins.append(found[1])
        binned = np.concatenate(bins) if bins else None
        return model.calibrate(decision), np.asarray(expit(decision), dtype=np.float64), binned
    calibrated = getattr(model, "calibrated_classifiers_", [])
    one_calibrator = len(calibrated) == 1 and len(calibrated[0].calibrators) == 1
    if not (one_calibrator and hasattr(ranking, "decision_function")):
        return churn_probability(model, frame), churn_probability(ranking, frame), None
    decision = decision_values(ranking, _inputs(model, frame))
    proba = np.asarray(calibrated[0].calibrators[0].predict(decision), dtype=np.float64)
    return proba, np.asarray(expit(decision), dtype=np.float64), None


# Rows per predict_proba call: a pipeline copies its input at every step, so predicting a whole
# 1M-row validation table at once took 1.9 GB on top of the table (the churn stage's peak).
PREDICT_ROWS = 100_000


def churn_probability(model: Any, frame: pd.DataFrame) -> NDArray[np.float64]:
    """Return P(churn) for each row of a raw feature table, predicted ``PREDICT_ROWS`` at a time.

    Every step predicts row by row, so the result is the one a single ``predict_proba`` call
    gives, to the last bit.
    """
    inputs = _inputs(model, frame)
    out = np.empty(len(inputs), dtype=np.float64)
    for start in range(0, len(inputs), PREDICT_ROWS):
        rows = inputs.iloc[start : start + PREDICT_ROWS]
        # Gradient boosting's predict_proba is the logistic of its decision function, which
        # its trees give walked on binned rows bit for bit and three times faster (the search
        # and the backtests predict a cutoff per fit).
        decision = binned_decision(model, rows)
        if decision is not None:
            out[start : start + len(rows)] = expit(decision)
        else:
            out[start : start + len(rows)] = model.predict_proba(rows)[:, 1]
    return out


def _inputs(model: Any, frame: pd.DataFrame) -> pd.DataFrame:
    """Return the columns of ``frame`` that ``model`` was fitted on (all when it does not say)."""
    columns = list(getattr(model, "feature_names_in_", []))
    return frame[columns] if columns else frame
