"""Why a customer is at risk: per-customer attributions and plain-language reasons.

Attribution (occlusion against a typical customer): for feature j of customer x,

    a_j(x) = logit f(x) - logit f(x with feature j set to its reference value)

where f is the uncalibrated ranking model and the reference is the feature's median over the
training rows. A positive a_j means the customer's actual value of j raises their churn risk
compared with a typical value. It works for any model; for logistic regression on standardised
inputs it equals coefficient x (transformed value - transformed reference). Calibration is
monotone, so it does not change the direction or order of reasons.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from scipy.special import expit
from sklearn.compose import ColumnTransformer
from sklearn.pipeline import Pipeline

from churnseg.models.trees import (
    INTERNALS_MOVED,
    binned_rows,
    inner_columns,
    is_binary_hgb,
    tree_leaves,
)
from churnseg.models.wording import churned_reasons, describe, top_reasons

_EPS = 1e-6


def _logit(p: NDArray[np.float64]) -> NDArray[np.float64]:
    q = np.clip(p, _EPS, 1 - _EPS)
    return np.asarray(np.log(q / (1 - q)), dtype=np.float64)


# A category is a reference only when at least this share of customers has it.
MIN_REFERENCE_SHARE = 0.05


def reference_values(
    frame: pd.DataFrame, columns: Sequence[str], label: pd.Series | None = None
) -> dict[str, Any]:
    """Return the value each feature is compared with.

    Numbers: the median (a typical customer). Categories: with ``label``, the level with the
    lowest churn rate among those held by at least ``MIN_REFERENCE_SHARE`` of customers, so a
    customer on the riskier level gets the reason ("contract: month-to-month, lowest risk: two
    year"), even when most customers share it; without ``label``, the most common level.
    """
    ref: dict[str, Any] = {}
    for col in columns:
        series = frame[col]
        if pd.api.types.is_bool_dtype(series) or pd.api.types.is_numeric_dtype(series):
            ref[col] = float(series.astype("float64").median())
            continue
        shares = series.value_counts(normalize=True, dropna=True)
        common = shares[shares >= MIN_REFERENCE_SHARE].index
        if label is not None and len(common):
            rates = label.groupby(series).mean().reindex(common)
            ref[col] = rates.idxmin()
        else:
            ref[col] = shares.index[0] if len(shares) else None
    return ref


def attributions(
    model: Any,
    frame: pd.DataFrame,
    columns: Sequence[str],
    reference: Mapping[str, Any],
    base: NDArray[np.float64] | None = None,
    bins: NDArray[np.uint8] | None = None,
) -> pd.DataFrame:
    """Return the occlusion attribution of each feature in ``columns`` for each row.

    Two exact shortcuts keep this affordable on millions of rows: a row whose value already is
    the reference gets 0 without predicting (the probe would equal the row), and for a
    ``Pipeline(ColumnTransformer, estimator)`` whose transformer maps a feature to one output
    column, the rows are prepared once and only that column is replaced before predicting
    (checked against the plain method on the first rows; on any difference the plain method
    runs).

    Args:
        model: Fitted classifier with ``predict_proba`` over the feature table's columns.
        frame: Rows to explain (all model inputs present).
        columns: Features to attribute (e.g. the most important ones).
        reference: Typical value per feature (see :func:`reference_values`).
        base: ``model``'s P(churn) of ``frame`` when the caller has it already.
        bins: ``model``'s binned rows of ``frame`` (``trees.decision_and_bins``) when the
            caller has them: gradient boosting's trees are then walked on them, and only the
            rows checked against the plain method are prepared.
    """
    inputs = list(getattr(model, "feature_names_in_", frame.columns))
    data = frame[inputs]
    if base is None:
        base = np.asarray(model.predict_proba(data)[:, 1], dtype=np.float64)
    base_logit = _logit(base)
    values = None
    if bins is not None and len(bins) == len(data):  # else not these rows' bins: ignored
        values = _occlude_prepared(model, data, columns, reference, base_logit, bins)
    if values is None:  # without bins (or the trees would not walk them): every row prepared
        values = _occlude_prepared(model, data, columns, reference, base_logit)
    if values is None:
        values = _occlude_plain(model, data, columns, reference, base_logit)
    return pd.DataFrame(values, index=frame.index, columns=list(columns))


def _occlude_prepared(
    model: Any,
    data: pd.DataFrame,
    columns: Sequence[str],
    reference: Mapping[str, Any],
    base_logit: NDArray[np.float64],
    bins: NDArray[np.uint8] | None = None,
) -> NDArray[np.float64] | None:
    """Return the prepared path's attributions, or None where only the plain method holds.

    None when ``model`` is not a column-wise pipeline, when the first rows' attributions
    differ from plain occlusion's, or when ``bins`` are given but the trees cannot walk them.
    """
    prepared = _PreparedRows.build(model, data, columns, reference, bins)
    if prepared is None:
        return None
    head = data.iloc[: min(len(data), _CHECKED_ROWS)]
    plain = _occlude_plain(model, head, columns, reference, base_logit[: len(head)])
    fast = prepared.occlude(columns, base_logit, rows=len(head))
    if fast is None or not np.allclose(plain, fast, rtol=1e-7, atol=1e-9, equal_nan=True):
        return None  # a transformer that is not column-wise after all
    return prepared.occlude(columns, base_logit)


# Rows of each call that the fast occlusion is checked on against the plain one.
_CHECKED_ROWS = 64


# Rows of occlusion probes predicted in one call.
_PROBE_ROWS = 50_000


def _differs(values: NDArray[Any], ref: Any) -> NDArray[np.bool_]:
    """Return which values are not the reference (missing values always differ)."""
    same = pd.Series(values).eq(ref).fillna(False).to_numpy(dtype=bool)
    return ~same


def _occlude_plain(
    model: Any,
    data: pd.DataFrame,
    columns: Sequence[str],
    reference: Mapping[str, Any],
    base_logit: NDArray[np.float64],
) -> NDArray[np.float64]:
    """Occlude each column on the raw frame; rows already at the reference get 0.

    The probes of several columns go to the model in one call (up to ``_PROBE_ROWS`` rows):
    a call costs a few milliseconds whatever its size, which dominated small batches.
    """
    out = np.zeros((len(data), len(columns)), dtype=np.float64)
    probes: list[pd.DataFrame] = []
    slots: list[tuple[NDArray[np.bool_], int]] = []

    def predict() -> None:
        logits = _logit(model.predict_proba(pd.concat(probes, ignore_index=True))[:, 1])
        start = 0
        for rows, i in slots:
            n = int(rows.sum())
            out[rows, i] = base_logit[rows] - logits[start : start + n]
            start += n
        probes.clear()
        slots.clear()

    for i, col in enumerate(columns):
        rows = _differs(data[col].to_numpy(), reference[col])
        if not rows.any():
            continue
        probe = data[rows].copy()
        probe[col] = pd.Series([reference[col]] * len(probe), index=probe.index).astype(
            probe[col].dtype, errors="ignore"
        )
        if probe[col].dtype != data[col].dtype and probes:
            predict()  # a probe of its own type: stacked, it would change the others' types
        probes.append(probe)
        slots.append((rows, i))
        if sum(len(p) for p in probes) >= _PROBE_ROWS or probe[col].dtype != data[col].dtype:
            predict()
    if probes:
        predict()
    return out


@dataclass(frozen=True)
class _PreparedRows:
    """Rows through a pipeline's column transformer once, with the reference row beside them.

    Given the estimator's ``bins`` of every row, only the first ``_CHECKED_ROWS`` rows are
    prepared (``matrix``): the trees walk the bins, and the rows are needed only to check.
    """

    estimator: Any
    matrix: NDArray[np.float64]
    reference_row: NDArray[np.float64]
    position: dict[str, int]
    bins: NDArray[np.uint8] | None = None

    @classmethod
    def build(
        cls,
        model: Any,
        data: pd.DataFrame,
        columns: Sequence[str],
        reference: Mapping[str, Any],
        bins: NDArray[np.uint8] | None = None,
    ) -> _PreparedRows | None:
        """Return the prepared rows, or None when ``model`` is not a column-wise pipeline."""
        if not (isinstance(model, Pipeline) and len(model) == 2 and len(data)):
            return None
        prep = model[0]
        if not isinstance(prep, ColumnTransformer):
            return None
        position: dict[str, int] = {}
        for name, _, cols in prep.transformers_:
            span = prep.output_indices_.get(name, slice(0, 0))
            names = [c for c in np.atleast_1d(cols) if isinstance(c, str)]
            if names and len(names) == len(np.atleast_1d(cols)) == span.stop - span.start:
                position |= {c: span.start + k for k, c in enumerate(names)}
        if not all(c in position for c in columns):
            return None
        ref_frame = data.iloc[:1].copy()
        for col in columns:
            ref_frame[col] = pd.Series([reference[col]], index=ref_frame.index).astype(
                ref_frame[col].dtype, errors="ignore"
            )
        matrix = prep.transform(data if bins is None else data.iloc[:_CHECKED_ROWS])
        reference_row = prep.transform(ref_frame)
        if not isinstance(matrix, np.ndarray):  # sparse output: keep the plain method
            return None
        return cls(
            model[-1],
            np.asarray(matrix, dtype=np.float64),
            np.asarray(reference_row, dtype=np.float64)[0],
            position,
            bins,
        )

    def occlude(
        self, columns: Sequence[str], base_logit: NDArray[np.float64], rows: int | None = None
    ) -> NDArray[np.float64] | None:
        """Return attributions of the first ``rows`` rows (all by default).

        None when only some rows were prepared and the trees cannot be walked on the bins.
        """
        n = len(base_logit) if rows is None else min(rows, len(base_logit))
        matrix, base_logit = self.matrix[:n], base_logit[:n]
        bins = None if self.bins is None else self.bins[:n]
        trees = _TreeSum.of(self.estimator, matrix, self.reference_row, base_logit, bins)
        if trees is None and len(matrix) < n:
            return None
        out = np.zeros((n, len(columns)), dtype=np.float64)
        for i, col in enumerate(columns):
            j = self.position[col]
            if trees is not None:
                # Only rows whose bin differs from the reference's can move (a value equal
                # to the reference has its bin), so the trees need no prepared rows.
                moved, occluded = trees.proba_with_reference(j)
                out[moved, i] = base_logit[moved] - _logit(occluded)
                continue
            ref = self.reference_row[j]
            differs = ~(matrix[:, j] == ref)  # NaN compares unequal: missing values differ
            if not differs.any():
                continue
            probe = matrix[differs]
            probe[:, j] = ref
            occluded = self.estimator.predict_proba(probe)[:, 1]
            out[differs, i] = base_logit[differs] - _logit(occluded)
        return out


@dataclass(frozen=True)
class _TreeSum:
    """A binary HistGradientBoostingClassifier's raw score of some rows as a sum of tree leaves.

    Two exact shortcuts for occlusion, which is most of a scoring run's cost:

    - Trees are evaluated on the model's own binned copy of the rows (one byte per value):
      a split ``value <= threshold`` is ``bin <= bin threshold`` by construction of the bins,
      and the small matrix makes it about 5x faster than predicting from raw values.
    - Occluding feature j changes only the trees that split on j; the other trees' leaves
      cancel in the attribution, so only the trees that use j are evaluated again.

    It reads scikit-learn internals (through ``trees``, which scoring's own prediction shares).
    :meth:`of` returns None when they are missing or when the binned sum
    differs from the model's own prediction on any row or on the reference row; the caller
    then predicts the whole model.
    """

    estimator: Any
    binned: NDArray[np.uint8]  # (rows, model columns)
    reference_bins: NDArray[np.uint8]  # (model columns,)
    leaves: NDArray[np.float64]  # (rows, trees)
    raw: NDArray[np.float64]  # (rows,) the model's raw score
    inner: NDArray[np.intp]  # input column -> model column
    users: dict[int, NDArray[np.intp]]  # input column -> trees that split on it

    @classmethod
    def of(
        cls,
        estimator: Any,
        matrix: NDArray[np.float64],
        reference_row: NDArray[np.float64],
        base_logit: NDArray[np.float64],
        bins: NDArray[np.uint8] | None = None,
    ) -> _TreeSum | None:
        """Return the binned rows and their tree leaves, or None (see the class docstring).

        Args:
            estimator: The pipeline's final estimator.
            matrix: Prepared rows (the pipeline's transformer output); with ``bins``, only
                its width is read.
            reference_row: The prepared reference row.
            base_logit: Logit of the model's P(churn) of the rows: the check of the sum.
            bins: The estimator's binned rows when the caller has them (else binned here).
        """
        if not is_binary_hgb(estimator) or len(base_logit) == 0:
            return None
        try:
            predictors = estimator._predictors
            baseline = float(np.asarray(estimator._baseline_prediction).ravel()[0])
            # Trees index the estimator's own preprocessed columns (categoricals moved first).
            inner = inner_columns(estimator, matrix.shape[1])
            binned = bins if bins is not None else binned_rows(estimator, matrix)
            reference_bins = binned_rows(estimator, reference_row[None, :])
            if binned is None or reference_bins is None:
                return None
            users: dict[int, list[int]] = {}
            for t, (tree,) in enumerate(predictors):
                splits = tree.nodes["feature_idx"][~tree.nodes["is_leaf"].astype(bool)]
                for f in np.unique(splits):
                    users.setdefault(int(f), []).append(t)
            by_input = {
                j: np.asarray(users[int(inner[j])], dtype=np.intp)
                for j in range(matrix.shape[1])
                if int(inner[j]) in users
            }
            every = range(len(predictors))
            leaves = tree_leaves(estimator, binned, every)
            raw = baseline + leaves.sum(axis=1)
            reference_raw = baseline + tree_leaves(estimator, reference_bins, every).sum()
            expected = estimator._raw_predict(reference_row[None, :]).ravel()[0]
        except INTERNALS_MOVED:
            return None  # scikit-learn internals moved: predict the whole model instead
        same = np.allclose(_logit(expit(raw)), base_logit, rtol=1e-9, atol=1e-9)
        if not (same and np.isclose(reference_raw, expected, rtol=1e-9, atol=1e-9)):
            return None
        return cls(estimator, binned, reference_bins[0], leaves, raw, inner, by_input)

    def proba_with_reference(self, feature: int) -> tuple[NDArray[np.intp], NDArray[np.float64]]:
        """Return the rows a reference value of input column ``feature`` moves, and their P(churn).

        The rows are indices into the table. A row moves when some tree puts it in another
        leaf; the others keep the model's prediction, so their attribution is 0 exactly
        (computed, it was the difference of two sums added in other orders, up to 5e-13, and a
        positive one named a fact that changes nothing as a reason). A row whose bin of
        ``feature`` is the reference's cannot move, nor can any row when no tree splits on it:
        neither is walked.
        """
        users = self.users.get(feature)
        if users is None:
            return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.float64)
        column = self.inner[feature]
        index = np.flatnonzero(self.binned[:, column] != self.reference_bins[column])
        probe = self.binned[index]
        probe[:, column] = self.reference_bins[column]
        after = tree_leaves(self.estimator, probe, users)
        # Tree by tree: gathers from contiguous columns, 3x faster than one np.ix_ gather.
        before = np.zeros(len(index), dtype=np.float64)
        moved = np.zeros(len(index), dtype=bool)
        for k, t in enumerate(users):
            leaf = self.leaves[index, t]
            before += leaf
            moved |= after[:, k] != leaf
        raw = self.raw[index] - before + after.sum(axis=1)
        return index[moved], np.asarray(expit(raw[moved]), dtype=np.float64)


# The words: templates, one fact per reason, why a customer counts as churned already.
__all__ = [
    "attributions",
    "churned_reasons",
    "describe",
    "reference_values",
    "top_reasons",
]
