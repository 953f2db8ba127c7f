"""k-means segmentation: inputs, k chosen from data, stable ids, readable names, profiles.

The clustering inputs describe *how* a customer buys, not *whether* they still do: purchase rate
over the customer's active life and mean order value (both log-scaled). Recency and tenure stay
out on purpose: they describe a customer's state, which lifecycle stages and churn scores carry;
clustering on them would split one behaviour type by age and churn state and make segment
meaning drift between retrains.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from scipy.optimize import linear_sum_assignment
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, RobustScaler, StandardScaler

from churnseg.models.transforms import SKOPS_TRUSTED_TYPES, signed_log1p

DEFAULT_FEATURES = ("purchase_rate", "monetary_mean")
SKOPS_TYPES = [
    *SKOPS_TRUSTED_TYPES,
    "churnseg.models.segmentation.SegmentInputs",
    "churnseg.models.segmentation.AutoKMeans",
]
# Shortest active life a purchase rate is measured over, so one early order is not "30 a month".
MIN_ACTIVE_DAYS = 30.0


def purchase_rate(frame: pd.DataFrame) -> pd.Series:
    """Return purchases per 30 days over each customer's active life.

    Active life runs from when the customer became known to their last purchase
    (``tenure_days - recency_days``), at least ``MIN_ACTIVE_DAYS``; customers without a purchase
    have rate 0. A churned customer keeps the rate they bought at while active.
    """
    active = (frame["tenure_days"] - frame["recency_days"]).clip(lower=MIN_ACTIVE_DAYS)
    return (frame["frequency"] * 30.0 / active).astype("float64")


DERIVED = {"purchase_rate": purchase_rate}
# The feature-table columns each derived input is computed from.
DERIVED_FROM: dict[str, tuple[str, ...]] = {
    "purchase_rate": ("tenure_days", "recency_days", "frequency"),
}
# Columns that are never clustering inputs: ids, dates, flags and labels.
_NOT_INPUTS = frozenset({"customer_id", "snapshot_date", "churned", "at_risk", "tenure_days"})
# Numeric attributes with fewer distinct values are codes or flags, not amounts.
_MIN_DISTINCT = 10


def behaviour_inputs(columns: Sequence[str], activity_window: int = 90) -> list[str]:
    """Return the behavioural clustering inputs a table with ``columns`` offers (may be none).

    How a customer buys where there are purchases: purchase rate and mean order value. Else
    how active they are (events in the window nearest ``activity_window`` days) and what they
    pay (recurring revenue), whichever the table has. Only the column names are needed, so a
    caller can choose before reading any rows.
    """
    if {"frequency", "tenure_days", "recency_days", "monetary_mean"} <= set(columns):
        return ["purchase_rate", "monetary_mean"]
    windows = [int(m[1]) for c in columns if (m := re.fullmatch(r"events_(\d+)d", c))]
    inputs = []
    if windows:
        inputs.append(f"events_{min(windows, key=lambda w: abs(w - activity_window))}d")
    if "sub_recurring_revenue" in columns:
        inputs.append("sub_recurring_revenue")
    return inputs


def input_columns(features: Sequence[str]) -> list[str]:
    """Return the feature-table columns the clustering inputs ``features`` read.

    A derived input (``purchase_rate``) reads the columns it is computed from; any other input
    is a column itself.
    """
    out: list[str] = []
    for name in features:
        out += DERIVED_FROM.get(name, (name,))
    return list(dict.fromkeys(out))


def pipeline_inputs(pipeline: Pipeline) -> list[str] | None:
    """Return the clustering inputs of a segmentation pipeline; None if it does not say."""
    first = pipeline[0]
    return list(first.features) if isinstance(first, SegmentInputs) else None


def default_inputs(frame: pd.DataFrame, activity_window: int = 90) -> list[str]:
    """Return the clustering inputs ``segmentation.features: auto`` takes for this table.

    ``behaviour_inputs`` where the table has purchases, events or subscriptions; else (a
    customers-only snapshot) up to three numeric attributes with at least ``_MIN_DISTINCT``
    values, in table order.

    Raises:
        ValueError: The table has nothing to cluster on.
    """
    columns = set(frame.columns)
    inputs = behaviour_inputs(list(frame.columns), activity_window)
    if inputs:
        return inputs
    numeric = [
        c
        for c in frame.columns
        if c not in _NOT_INPUTS
        and pd.api.types.is_numeric_dtype(frame[c])
        and not pd.api.types.is_bool_dtype(frame[c])
        and frame[c].nunique() >= _MIN_DISTINCT
    ]
    if numeric:
        return numeric[:3]
    if "tenure_days" in columns and frame["tenure_days"].nunique() >= _MIN_DISTINCT:
        return ["tenure_days"]
    raise ValueError(
        "segmentation.features auto: the feature table has no purchases, events, subscriptions "
        "or numeric attributes to cluster on; list the inputs in segmentation.features"
    )


class SegmentInputs(TransformerMixin, BaseEstimator):
    """Select (and derive) the clustering inputs from a raw feature table.

    A name that is a column of the feature table is taken as is; otherwise a derived input is
    computed (``purchase_rate``, see :func:`purchase_rate`).
    """

    def __init__(self, features: Sequence[str] = DEFAULT_FEATURES) -> None:
        self.features = features

    def fit(self, X: pd.DataFrame, y: Any = None) -> SegmentInputs:
        """Check the inputs exist; remember their names."""
        self.feature_names_out_ = np.asarray(list(self.features), dtype=object)
        self.transform(X)
        return self

    def transform(self, X: pd.DataFrame) -> NDArray[np.float64]:
        """Return the clustering inputs as a float matrix, one column per feature."""
        columns = []
        for name in self.features:
            if name in X.columns:
                columns.append(X[name].to_numpy(dtype="float64"))
            elif name in DERIVED:
                columns.append(DERIVED[name](X).to_numpy())
            else:
                raise KeyError(
                    f"segmentation input {name!r} is neither a feature column nor derived "
                    f"({sorted(DERIVED)}); the feature table has {sorted(X.columns)}"
                )
        return np.nan_to_num(np.column_stack(columns), nan=0.0)

    def get_feature_names_out(self, input_features: Any = None) -> NDArray[Any]:
        """Return the names of the produced columns."""
        return self.feature_names_out_


class AutoKMeans(ClusterMixin, BaseEstimator):
    """k-means whose k is chosen from the data, with ids that can be relabelled.

    For every k in ``[k_min, k_max]`` it fits k-means (``KMeans``, on a seeded sample of
    ``fit_sample_rows`` rows when there are more) and scores, over every row, the segments it
    predicts: silhouette (on a sample of at most ``silhouette_sample`` rows), Calinski-Harabasz,
    Davies-Bouldin, inertia. k is the one with the best silhouette among those whose smallest
    segment holds at least ``min_segment_share`` of the rows (all k when none does). Rows are
    sorted before fitting, so the result does not depend on row order.

    The sample keeps the fit's cost fixed as customers grow: ``MiniBatchKMeans`` over every row,
    used before, took more steps with more rows and longer steps (at 5M rows up to 8x the
    steps of 1M, each about 5x as long), so segmentation grew 12x from 1M to 5M customers. On
    the 1M bench table the sampled fit chose the same k with a lower inertia over every row.

    Attributes:
        k_: The chosen number of segments.
        scores_: One record per candidate k (plain dicts so the model serialises with skops).
        cluster_centers_: Centroids in the input space, row i is segment ``segment_ids_[i]``.
        segment_ids_: The id each centroid predicts (0..k-1 until :meth:`relabel`).
        kmeans_: The fitted k-means estimator.
    """

    def __init__(
        self,
        k_min: int = 2,
        k_max: int = 8,
        min_segment_share: float = 0.03,
        silhouette_sample: int = 5000,
        n_init: int = 4,
        fit_sample_rows: int = 200_000,
        random_state: int = 0,
    ) -> None:
        self.k_min = k_min
        self.k_max = k_max
        self.min_segment_share = min_segment_share
        self.silhouette_sample = silhouette_sample
        self.n_init = n_init
        self.fit_sample_rows = fit_sample_rows
        self.random_state = random_state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore a saved model (one saved before 2026-12-07 says ``minibatch_above``)."""
        if "minibatch_above" in state:  # a champion registered by an earlier version
            state = dict(state)
            state["fit_sample_rows"] = state.pop("minibatch_above")
        super().__setstate__(state)

    def estimator(self, k: int) -> KMeans:
        """Return the unfitted k-means ``fit`` uses for ``k`` segments."""
        return KMeans(n_clusters=k, n_init=self.n_init, random_state=self.random_state)

    def fit_rows(self, X: NDArray[np.float64], rng: np.random.Generator) -> NDArray[np.float64]:
        """Return the rows k-means is fitted on: ``X``, or a sample of ``fit_sample_rows``."""
        if len(X) <= self.fit_sample_rows:
            return X
        return X[np.sort(rng.choice(len(X), self.fit_sample_rows, replace=False))]

    def fit(
        self, X: NDArray[np.float64], y: Any = None, on_k: Callable[[int], None] | None = None
    ) -> AutoKMeans:
        """Fit k-means for every candidate k and keep the best eligible one.

        Args:
            X: Rows to cluster.
            y: Ignored.
            on_k: Called with each k once it is fitted and scored (progress reporting); in a
                pipeline pass it as ``kmeans__on_k``. Not stored: the model stays serialisable.
        """
        X = np.asarray(X, dtype=np.float64)
        if self.k_min < 2 or self.k_max < self.k_min:
            raise ValueError(f"need 2 <= k_min <= k_max, got {self.k_min}..{self.k_max}")
        k_hi = min(self.k_max, len(X) - 1)
        if k_hi < self.k_min:
            raise ValueError(f"{len(X)} rows are too few for k >= {self.k_min}")
        # Row order must not matter: k-means++ draws rows by position.
        X = X[np.lexsort(X.T[::-1])]
        rng = np.random.default_rng(self.random_state)
        sample = (
            np.sort(rng.choice(len(X), self.silhouette_sample, replace=False))
            if len(X) > self.silhouette_sample
            else np.arange(len(X))
        )
        # Drawn after the silhouette sample, so a table small enough to fit whole gets the
        # same silhouette rows as before sampling existed.
        rows = self.fit_rows(X, rng)
        records, fits = [], {}
        for k in range(self.k_min, k_hi + 1):
            km = self.estimator(k).fit(rows)
            labels = km.predict(X)
            sizes = np.bincount(labels, minlength=k)
            # k-means' own inertia is the sample's when it fitted one: every row's instead.
            inertia = km.inertia_ if rows is X else -km.score(X)
            records.append(
                {
                    "k": k,
                    "silhouette": float(silhouette_score(X[sample], labels[sample])),
                    "calinski_harabasz": float(calinski_harabasz_score(X, labels)),
                    "davies_bouldin": float(davies_bouldin_score(X, labels)),
                    "inertia": float(inertia),
                    "min_share": float(sizes.min() / len(X)),
                    "eligible": bool(sizes.min() / len(X) >= self.min_segment_share),
                }
            )
            fits[k] = km
            if on_k is not None:
                on_k(k)
        pool = [r for r in records if r["eligible"]] or records
        best = max(pool, key=lambda r: (r["silhouette"], -r["k"]))
        km = fits[int(best["k"])]
        # Order centroids lexicographically so ids do not depend on k-means' label order.
        order = np.lexsort(km.cluster_centers_.T[::-1])
        km.cluster_centers_ = km.cluster_centers_[order]
        self.k_ = int(best["k"])
        self.scores_ = records
        self.kmeans_ = km
        self.cluster_centers_ = km.cluster_centers_
        self.segment_ids_ = np.arange(self.k_, dtype=np.int64)
        return self

    def predict(self, X: NDArray[np.float64]) -> NDArray[np.int64]:
        """Return the segment id of each row."""
        position = self.kmeans_.predict(np.asarray(X, dtype=np.float64))
        return np.asarray(self.segment_ids_[position], dtype=np.int64)

    def relabel(self, ids: Sequence[int]) -> AutoKMeans:
        """Give centroid i the id ``ids[i]`` (used to keep ids stable across retrains)."""
        ids_array = np.asarray(ids, dtype=np.int64)
        if ids_array.shape != (self.k_,) or len(set(ids_array.tolist())) != self.k_:
            raise ValueError(f"need {self.k_} distinct ids, got {list(ids)}")
        self.segment_ids_ = ids_array
        return self


def segmentation_pipeline(
    features: Sequence[str] = DEFAULT_FEATURES,
    scaler: str = "standard",
    pca_components: int | None = None,
    **kmeans_params: Any,
) -> Pipeline:
    """Return an unfitted pipeline: inputs, signed log, scaling, optional PCA, ``AutoKMeans``.

    Args:
        features: Clustering inputs (feature columns or derived names).
        scaler: ``standard`` (mean/std) or ``robust`` (median/IQR, for heavy outliers).
        pca_components: Keep this many principal components before clustering; None for all.
        **kmeans_params: Passed to :class:`AutoKMeans`.
    """
    steps: list[tuple[str, Any]] = [
        ("inputs", SegmentInputs(features=tuple(features))),
        ("log", FunctionTransformer(signed_log1p)),
        ("scale", RobustScaler() if scaler == "robust" else StandardScaler()),
    ]
    if pca_components:
        steps.append(("pca", PCA(n_components=pca_components, random_state=0)))
    steps.append(("kmeans", AutoKMeans(**kmeans_params)))
    return Pipeline(steps)


def embed(pipeline: Pipeline, frame: pd.DataFrame) -> NDArray[np.float64]:
    """Return ``frame`` in the fitted pipeline's clustering space (everything before k-means)."""
    return np.asarray(pipeline[:-1].transform(frame), dtype=np.float64)


@dataclass(frozen=True)
class SegmentMatch:
    """How a retrained model's segments map onto the champion's."""

    ids: list[int]  # id given to each new centroid, in centroid order
    kept: dict[int, float]  # champion id kept -> centroid distance
    new: list[int]  # ids of segments with no champion counterpart
    vanished: list[int]  # champion ids with no counterpart now


def match_segments(
    new: Pipeline, champion: Pipeline, frame: pd.DataFrame, max_distance: float
) -> SegmentMatch:
    """Match a retrained model's segments to the champion's by Hungarian assignment.

    Both sets of centroids are compared in the champion's space: each new segment's centroid is
    the mean, in the champion's embedding, of the rows the new model puts in it. A pair farther
    apart than ``max_distance`` (champion-space units, i.e. standard deviations by default) is not
    the same group: the new segment gets a fresh id and the champion's counts as vanished.

    Args:
        new: The freshly fitted pipeline (its ids are still 0..k-1).
        champion: The current champion pipeline.
        frame: Feature table both models can embed (the training snapshot).
        max_distance: Largest centroid distance at which a segment keeps its identity.
    """
    km_new: AutoKMeans = new[-1]
    km_old: AutoKMeans = champion[-1]
    positions = km_new.kmeans_.predict(embed(new, frame))
    space = embed(champion, frame)
    centers_new = np.vstack(
        [
            space[positions == i].mean(axis=0)
            if np.any(positions == i)
            else np.full(space.shape[1], np.inf)
            for i in range(km_new.k_)
        ]
    )
    centers_old = km_old.cluster_centers_
    distance = np.linalg.norm(centers_new[:, None, :] - centers_old[None, :, :], axis=2)
    rows, cols = linear_sum_assignment(np.where(np.isfinite(distance), distance, 1e12))
    ids: list[int | None] = [None] * km_new.k_
    kept: dict[int, float] = {}
    for r, c in zip(rows, cols, strict=True):
        if distance[r, c] <= max_distance:
            old_id = int(km_old.segment_ids_[c])
            ids[r] = old_id
            kept[old_id] = float(distance[r, c])
    next_id = int(max(km_old.segment_ids_.max(), -1)) + 1
    fresh = []
    for i, value in enumerate(ids):
        if value is None:
            ids[i] = next_id
            fresh.append(next_id)
            next_id += 1
    vanished = sorted(int(s) for s in km_old.segment_ids_ if int(s) not in kept)
    return SegmentMatch(
        ids=[int(i) for i in ids if i is not None], kept=kept, new=fresh, vanished=vanished
    )


@dataclass(frozen=True)
class NamingRule:
    """A segment name and the centroid ranks a segment needs to earn it.

    Ranks are a segment's position among all segments on one input, scaled to 0 (lowest) .. 1
    (highest). Among eligible segments the most extreme one wins (highest sum of ``min_rank``
    inputs minus ``max_rank`` inputs). Each rule names at most one segment.
    """

    name: str
    min_rank: Mapping[str, float]
    max_rank: Mapping[str, float]


def centroid_ranks(profiles: pd.DataFrame, inputs: Sequence[str]) -> pd.DataFrame:
    """Return each segment's rank on each input, scaled to 0..1, indexed by segment id."""
    ranks = profiles.set_index("segment_id")[list(inputs)].rank(method="average")
    span = max(len(profiles) - 1, 1)
    return (ranks - 1) / span


# A segment input "differs" across segments when its centroids span at least this share of
# their mean size (plain units): a name must say something true of the segment it is given.
MIN_RELATIVE_SPREAD = 0.25
# Words for a segment's level on an input: (low, middle, high), by its centroid's rank.
INPUT_WORDS: dict[str, tuple[str, str, str]] = {
    "purchase_rate": ("rare buyers", "regular buyers", "frequent buyers"),
    "monetary_mean": ("low order value", "mid order value", "high order value"),
    "sub_recurring_revenue": (
        "low recurring revenue",
        "mid recurring revenue",
        "high recurring revenue",
    ),
}


def differing_inputs(profiles: pd.DataFrame, inputs: Sequence[str]) -> list[str]:
    """Return the inputs whose segment means really differ (see ``MIN_RELATIVE_SPREAD``)."""
    out = []
    for name in inputs:
        values = profiles[name].astype("float64")
        scale = float(values.abs().mean())
        spread = float(values.max() - values.min())
        if scale > 0 and spread >= MIN_RELATIVE_SPREAD * scale:
            out.append(name)
    return out


def _input_words(name: str) -> tuple[str, str, str]:
    """Return (low, middle, high) words for an input, from ``INPUT_WORDS`` or its name."""
    if name in INPUT_WORDS:
        return INPUT_WORDS[name]
    match = re.fullmatch(r"events_(\d+)d", name)
    what = f"activity ({match[1]} days)" if match else name.replace("_", " ")
    return f"low {what}", f"mid {what}", f"high {what}"


def describe_segments(profiles: pd.DataFrame, inputs: Sequence[str]) -> dict[int, str]:
    """Return a description in words of each segment's centroid, unique per segment.

    Each input that differs across segments contributes its level (low, middle or high third
    of the centroid ranks), e.g. "frequent buyers, low order value"; inputs that do not differ
    are left out. Descriptions that still coincide get the next input's level, then a number.
    """
    ranks = centroid_ranks(profiles, inputs)
    useful = differing_inputs(profiles, inputs) or list(inputs)
    words = {
        int(str(sid)): [
            _input_words(f)[0 if row[f] < 1 / 3 else 2 if row[f] > 2 / 3 else 1] for f in useful
        ]
        for sid, row in ranks.iterrows()
    }
    names = {sid: ", ".join(w) for sid, w in words.items()}
    seen: dict[str, int] = {}
    for sid in sorted(names):
        text = names[sid]
        seen[text] = seen.get(text, 0) + 1
        if list(names.values()).count(text) > 1:
            names[sid] = f"{text} ({seen[text]})"
    return {sid: text[0].upper() + text[1:] for sid, text in names.items()}


def name_segments(
    profiles: pd.DataFrame,
    inputs: Sequence[str],
    rules: Sequence[NamingRule],
    keep: Mapping[int, str] | None = None,
) -> dict[int, str]:
    """Return a unique readable name per segment id.

    A rule names a segment only when every input it ranks on is a clustering input whose
    segment means really differ (``differing_inputs``): no "Bargain hunters" where everyone
    pays the same. Segments no rule names are described in words (``describe_segments``).

    Args:
        profiles: One row per segment with ``segment_id`` and a mean per input.
        inputs: The clustering inputs the ranks are taken over.
        rules: Naming rules, in priority order.
        keep: Names to keep for given ids (matched champion segments keep their names).
    """
    ranks = centroid_ranks(profiles, inputs)
    differing = set(differing_inputs(profiles, inputs))
    names = {int(k): v for k, v in (keep or {}).items() if int(k) in ranks.index}
    taken = set(names.values())
    for rule in rules:
        needed = set(rule.min_rank) | set(rule.max_rank)
        if rule.name in taken or not needed <= differing:
            continue
        best, best_score = None, -np.inf
        for sid, row in ranks.iterrows():
            if int(str(sid)) in names:
                continue
            ok = all(row.get(f, -1) >= v for f, v in rule.min_rank.items()) and all(
                row.get(f, 2) <= v for f, v in rule.max_rank.items()
            )
            score = sum(row[f] for f in rule.min_rank) - sum(row[f] for f in rule.max_rank)
            if ok and score > best_score:
                best, best_score = int(str(sid)), score
        if best is not None:
            names[best] = rule.name
            taken.add(rule.name)
    described = describe_segments(profiles, inputs)
    for sid in ranks.index:
        if int(sid) not in names:
            text = described[int(sid)]
            names[int(sid)] = text if text not in taken else f"{text} (segment {int(sid)})"
            taken.add(names[int(sid)])
    return dict(sorted(names.items()))


def segment_profiles(
    frame: pd.DataFrame,
    segments: NDArray[np.int64],
    columns: Sequence[str],
    value_column: str = "monetary_total",
) -> pd.DataFrame:
    """Return per segment: size, share, revenue share and the mean of each column in plain units.

    Derived inputs (``purchase_rate``) are computed when not already columns of ``frame``.
    """
    data = pd.DataFrame(index=frame.index)
    for col in columns:
        data[col] = DERIVED[col](frame) if col in DERIVED and col not in frame else frame[col]
    data["segment_id"] = segments
    data["_value"] = frame[value_column].clip(lower=0) if value_column in frame else 0.0
    grouped = data.groupby("segment_id")
    profile = grouped[list(columns)].mean()
    profile.insert(0, "size", grouped.size())
    profile.insert(1, "share", profile["size"] / len(data))
    total_value = data["_value"].sum()
    revenue = grouped["_value"].sum()
    profile.insert(2, "revenue_share", revenue / total_value if total_value else 0.0)
    return profile.reset_index()


def migration_table(
    before: pd.DataFrame, after: pd.DataFrame, names: Mapping[int, str]
) -> pd.DataFrame:
    """Return who moved where between two snapshots: one row per (from, to) segment pair.

    Args:
        before: ``customer_id`` and ``segment_id`` at the earlier snapshot.
        after: ``customer_id`` and ``segment_id`` at the later snapshot.
        names: Segment names by id.

    Customers only in ``after`` come "from" segment -1 (new); only in ``before`` go "to" -1 (gone).
    """
    merged = before[["customer_id", "segment_id"]].merge(
        after[["customer_id", "segment_id"]],
        on="customer_id",
        how="outer",
        suffixes=("_from", "_to"),
    )
    merged = merged.fillna({"segment_id_from": -1, "segment_id_to": -1})
    table = (
        merged.groupby(["segment_id_from", "segment_id_to"])
        .size()
        .rename("customers")
        .reset_index()
        .astype({"segment_id_from": "int64", "segment_id_to": "int64"})
    )
    label = {**{int(k): v for k, v in names.items()}, -1: "(none)"}
    table["segment_from"] = table.segment_id_from.map(label)
    table["segment_to"] = table.segment_id_to.map(label)
    table["share_of_from"] = table.customers / table.groupby("segment_id_from").customers.transform(
        "sum"
    )
    return table
