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

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

_EPS = 1e-6


def _logit(p: NDArray[np.float64]) -> NDArray[np.float64]:
    q = np.clip(p, _EPS, 1 - _EPS)
    return np.asarray(np.log(q / (1 - q)), dtype=np.float64)


def reference_values(frame: pd.DataFrame, columns: Sequence[str]) -> dict[str, Any]:
    """Return a typical value per feature: the median of numbers, the mode of categories."""
    ref: dict[str, Any] = {}
    for col in columns:
        series = frame[col]
        if pd.api.types.is_bool_dtype(series) or pd.api.types.is_numeric_dtype(series):
            ref[col] = float(series.astype("float64").median())
        else:
            mode = series.mode(dropna=True)
            ref[col] = mode.iloc[0] if len(mode) else None
    return ref


def attributions(
    model: Any, frame: pd.DataFrame, columns: Sequence[str], reference: Mapping[str, Any]
) -> pd.DataFrame:
    """Return the occlusion attribution of each feature in ``columns`` for each row.

    Args:
        model: Fitted classifier with ``predict_proba`` over the feature table's columns.
        frame: Rows to explain (all model inputs present).
        columns: Features to attribute (e.g. the most important ones).
        reference: Typical value per feature (see :func:`reference_values`).
    """
    inputs = list(getattr(model, "feature_names_in_", frame.columns))
    base = _logit(model.predict_proba(frame[inputs])[:, 1])
    out = {}
    for col in columns:
        probe = frame[inputs].copy()
        probe[col] = pd.Series([reference[col]] * len(probe), index=probe.index).astype(
            probe[col].dtype, errors="ignore"
        )
        out[col] = base - _logit(model.predict_proba(probe)[:, 1])
    return pd.DataFrame(out, index=frame.index)


Phrase = Callable[[float, float, Mapping[str, Any]], str]


def _days(v: float, ref: float, row: Mapping[str, Any]) -> str:
    gap = row.get("gap_mean_days")
    text = f"no purchase for {v:.0f} days"
    if gap is not None and np.isfinite(gap) and gap > 0:
        text += f", {v / gap:.1f}x their usual gap"
    return text


# (pattern, phrase) pairs, first match wins; groups feed the phrase via the feature name.
TEMPLATES: list[tuple[str, Callable[[re.Match[str], float, float, Mapping[str, Any]], str]]] = [
    (r"^recency_days$", lambda m, v, r, row: _days(v, r, row)),
    (
        r"^orders_(\d+)d$",
        lambda m, v, r, row: f"{v:.0f} orders in the last {m[1]} days (typical {r:.0f})",
    ),
    (
        r"^spend_(\d+)d$",
        lambda m, v, r, row: f"spent {v:,.0f} in the last {m[1]} days (typical {r:,.0f})",
    ),
    (r"^frequency$", lambda m, v, r, row: f"{v:.0f} purchases in total (typical {r:.0f})"),
    (r"^monetary_mean$", lambda m, v, r, row: f"average order {v:,.0f} (typical {r:,.0f})"),
    (r"^monetary_total$", lambda m, v, r, row: f"lifetime spend {v:,.0f} (typical {r:,.0f})"),
    (r"^tenure_days$", lambda m, v, r, row: f"customer for {v:.0f} days"),
    (r"^return_rate$", lambda m, v, r, row: f"{v:.0%} of orders returned (typical {r:.0%})"),
    (
        r"^(?:events_)?(\w+?)_(?:count_)?(\d+)d$",
        lambda m, v, r, row: (
            f"{v:.0f} {m[1].replace('_', ' ')} in the last {m[2]} days (typical {r:.0f})"
        ),
    ),
    (
        r"^days_since_(\w+)$",
        lambda m, v, r, row: f"{v:.0f} days since last {m[1].replace('_', ' ')} (typical {r:.0f})",
    ),
    (r"p_alive", lambda m, v, r, row: f"probability still active {v:.0%} (typical {r:.0%})"),
]


def describe(feature: str, value: Any, reference: Any, row: Mapping[str, Any]) -> str:
    """Return one plain-language reason for ``feature`` having ``value`` (vs ``reference``)."""
    try:
        v, r = float(value), float(reference)
    except (TypeError, ValueError):
        return f"{feature.replace('_', ' ')} is {value}"
    for pattern, phrase in TEMPLATES:
        match = re.search(pattern, feature)
        if match:
            return phrase(match, v, r, row)
    return f"{feature.replace('_', ' ')} {v:.3g} (typical {r:.3g})"


def top_reasons(
    contributions: pd.DataFrame,
    frame: pd.DataFrame,
    reference: Mapping[str, Any],
    k: int = 3,
) -> pd.Series:
    """Return, per row, the ``k`` features raising risk most, as reasons joined by "; ".

    Only positive attributions count: a customer with nothing above typical gets "".
    """
    values = contributions.to_numpy()
    names = np.asarray(contributions.columns)
    order = np.argsort(-values, axis=1, kind="stable")[:, :k]
    records: list[dict[str, Any]] = [
        {str(k): v for k, v in r.items()} for r in frame.to_dict("records")
    ]
    texts = []
    for i, row in enumerate(records):
        parts = [
            describe(names[j], row[names[j]], reference[names[j]], row)
            for j in order[i]
            if values[i, j] > 0
        ]
        texts.append("; ".join(parts))
    return pd.Series(texts, index=frame.index, name="top_reasons")
