from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.linear_model import LogisticRegression

from churnseg.models import evaluation as ev
from churnseg.models import reasons
from churnseg.models import registry as reg


def test_ranking_metrics_by_hand() -> None:
    y = np.array([1, 0, 1, 0, 0, 0, 0, 0, 0, 1])
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
    assert ev.lift_at(y, s, 0.1) == pytest.approx(1 / 0.3), "top row churns; base rate 30%"
    assert ev.recall_at(y, s, 0.3) == pytest.approx(2 / 3), "top 3 rows hold 2 of 3 churners"
    # churners outrank 7, 6 and 0 of the 7 non-churners
    assert ev.ranking_metrics(y, s, 0.3)["roc_auc"] == pytest.approx(13 / 21)


def test_expected_calibration_error_by_hand() -> None:
    y = [0, 0, 1, 1]
    p = [0.1, 0.1, 0.9, 0.7]
    # bins: 0.1 -> 2 rows, observed 0 (gap 0.1); 0.9 -> 1 row (0.1); 0.7 -> 1 row (0.3)
    assert ev.expected_calibration_error(y, p) == pytest.approx(0.5 * 0.1 + 0.25 * 0.1 + 0.25 * 0.3)


def test_single_class_gives_nan_not_an_error() -> None:
    assert np.isnan(ev.ranking_metrics([0, 0], [0.1, 0.2], 0.5)["roc_auc"])


@pytest.mark.parametrize(
    ("challenger", "champion", "winner", "words"),
    [
        (0.80, None, "challenger", "first model"),
        (0.69, None, "logistic_rfm", "baseline logistic_rfm promoted so the run has a champion"),
        (0.80, 0.79, "challenger", "beats champion"),
        (0.80, 0.798, None, "the champion stays"),
        (0.69, 0.60, "logistic_rfm", "logistic_rfm roc_auc 0.7200 beats champion"),
        (0.69, 0.72, None, "does not beat baseline logistic_rfm"),
    ],
)
def test_promotion_decision(
    challenger: float, champion: float | None, winner: str | None, words: str
) -> None:
    baselines = {"recency": 0.70, "logistic_rfm": 0.72, "bgnbd_p_alive": float("nan")}
    decision = reg.decide_promotion("roc_auc", challenger, champion, baselines, margin=0.005)
    assert decision.winner == winner, decision.reason
    assert decision.promote is (winner is not None)
    assert words in decision.reason


def test_without_baselines_the_first_challenger_is_promoted() -> None:
    decision = reg.decide_promotion("roc_auc", 0.55, None, {}, margin=0.005)
    assert decision.winner == "challenger" and "first model" in decision.reason


def test_attributions_of_logistic_regression_are_coefficient_times_difference() -> None:
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"a": rng.normal(size=200), "b": rng.normal(size=200)})
    y = (X.a - 2 * X.b + rng.normal(size=200) > 0).astype(int)
    model = LogisticRegression().fit(X, y)
    ref = reasons.reference_values(X, ["a", "b"])
    att = reasons.attributions(model, X.head(5), ["a", "b"], ref)
    for j, col in enumerate(["a", "b"]):
        expected = model.coef_[0][j] * (X[col].head(5) - ref[col])
        np.testing.assert_allclose(att[col], expected, rtol=1e-6, atol=1e-9)


def test_top_reasons_in_plain_words() -> None:
    frame = pd.DataFrame(
        {"recency_days": [94.0, 3.0], "gap_mean_days": [31.0, 30.0], "orders_90d": [0, 5]}
    )
    contributions = pd.DataFrame({"recency_days": [1.2, -0.5], "orders_90d": [0.4, -0.2]})
    ref = {"recency_days": 20.0, "orders_90d": 3.0}
    texts = reasons.top_reasons(contributions, frame, ref, k=3).tolist()
    assert texts[0] == (
        "no purchase for 94 days, 3.0x their usual gap; 0 orders in the last 90 days (typical 3)"
    )
    assert texts[1] == "", "nothing raises this customer's risk above typical"


@pytest.fixture
def tracking(tmp_path: Path) -> str:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    # An artifact location of its own: by default MLflow puts a SQLite store's artifacts in
    # ./mlruns of the working directory, the checkout.
    location = (tmp_path / "artifacts").as_uri()
    experiment = mlflow.MlflowClient().create_experiment("registry-test", location)
    mlflow.set_experiment(experiment_id=experiment)
    return uri


def test_promote_rollback_and_history(tracking: str) -> None:
    X = pd.DataFrame({"a": [0.0, 1.0, 2.0, 3.0]})
    model = LogisticRegression().fit(X, [0, 0, 1, 1])
    with mlflow.start_run():
        v1 = reg.log_and_register(model, "m", X, [])
        v2 = reg.log_and_register(model, "m", X, [])
    reg.promote("m", v1, "first")
    reg.promote("m", v2, "better")
    assert reg.champion_version("m") == v2
    assert reg.rollback("m") == (v2, v1)
    assert reg.champion_version("m") == v1
    events = [(e["version"], e["event"]) for e in reg.promotion_history("m")]
    assert events == [(v1, "promoted"), (v2, "promoted"), (v1, "rollback")]
    reg.record_rejection("m", v2, "worse", {"val_roc_auc": 0.5})
    assert reg.promotion_history("m")[-1]["event"] == "rejected"


@pytest.mark.parametrize("candidate", ["hgb", "logreg"])
def test_prepared_attributions_equal_plain_occlusion(candidate: str) -> None:
    """The prepare-once path gives the plain method's numbers (and 0 at the reference)."""
    from churnseg.models import churn as churn_model

    rng = np.random.default_rng(1)
    n = 400
    X = pd.DataFrame(
        {
            "a": rng.normal(size=n),
            "b": rng.integers(0, 3, n).astype(float),  # mostly at its median: skipped rows
            "c": np.where(rng.random(n) < 0.1, np.nan, rng.gamma(2.0, 3.0, n)),
            "region": rng.choice(["north", "south", "west"], n),
        }
    )
    y = ((X.a + X.b - X.c.fillna(0) / 3 + rng.normal(size=n)) > 0).astype(int)
    spec = churn_model.FeatureSpec(["a", "b", "c"], ["region"])
    grid = churn_model.PARAM_GRIDS[candidate][0]
    if candidate == "hgb":
        grid = {**grid, "max_iter": 20, "min_samples_leaf": 10}
    model = churn_model.candidate_pipeline(candidate, spec, grid).fit(X, y)
    ref = reasons.reference_values(X, ["a", "b", "c"])
    prepared = reasons._PreparedRows.build(model, X, ["a", "b", "c"], ref)
    assert prepared is not None
    if candidate == "hgb":  # the per-tree path, not a silent fallback to whole-model predicts
        base_logit = reasons._logit(model.predict_proba(X)[:, 1])
        trees = reasons._TreeSum.of(model[-1], prepared.matrix, prepared.reference_row, base_logit)
        assert trees is not None
        assert len(trees.users) >= 3, "every feature is split on by some tree"
        assert any(len(t) < trees.leaves.shape[1] for t in trees.users.values())
    fast = reasons.attributions(model, X, ["a", "b", "c"], ref)
    base = reasons._logit(model.predict_proba(X)[:, 1])
    direct = prepared.occlude(["a", "b", "c"], base)
    for i, col in enumerate(["a", "b", "c"]):
        probe = X.copy()
        probe[col] = ref[col]
        plain = base - reasons._logit(model.predict_proba(probe)[:, 1])
        np.testing.assert_allclose(fast[col], plain, rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(direct[:, i], plain, rtol=1e-7, atol=1e-9)
        # 0 exactly where the reference changes nothing, as in the plain method: the tree
        # path once left +-1e-16 there, and top_reasons named such a fact as a reason.
        np.testing.assert_array_equal(fast[col] == 0, plain == 0)
    assert (fast["b"][X.b == ref["b"]] == 0).all()
    if candidate == "hgb":  # given the model's bins, the same numbers from unprepared rows
        from churnseg.models.trees import decision_and_bins

        found = decision_and_bins(model, X)
        assert found is not None
        proba = model.predict_proba(X)[:, 1]
        prep, prepared_rows = model[0], []
        real_transform = prep.transform
        prep.transform = lambda rows: (prepared_rows.append(len(rows)), real_transform(rows))[1]
        with_bins = reasons.attributions(model, X, ["a", "b", "c"], ref, proba, found[1])
        del prep.transform
        pd.testing.assert_frame_equal(with_bins, fast, check_exact=True)
        assert prepared_rows and max(prepared_rows) < len(X), "only the checked rows prepared"
        # Bins of other rows are not taken for these: every row is prepared, as without.
        for other in (found[1][::-1], found[1][:-1]):
            again = reasons.attributions(model, X, ["a", "b", "c"], ref, proba, other)
            pd.testing.assert_frame_equal(again, fast, check_exact=True)
    if candidate == "hgb":  # unseen and missing categories bin like the model predicts them
        later = X.assign(region=["east"] * 20 + [None] * 20 + list(X.region[40:]))
        again = reasons._PreparedRows.build(model, later, ["a", "b", "c"], ref)
        assert again is not None
        later_logit = reasons._logit(model.predict_proba(later)[:, 1])
        assert reasons._TreeSum.of(model[-1], again.matrix, again.reference_row, later_logit)


@pytest.mark.parametrize("method", ["isotonic", "sigmoid"])
@pytest.mark.parametrize("candidate", ["logreg", "hgb"])
def test_churn_scores_equal_two_predictions(
    candidate: str, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One decision function gives the calibrated and the ranking probabilities exactly."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.frozen import FrozenEstimator

    from churnseg.models import churn as churn_model

    rng = np.random.default_rng(3)
    n = 600
    X = pd.DataFrame(
        {
            "a": rng.normal(size=n),
            "c": np.where(rng.random(n) < 0.1, np.nan, rng.gamma(2.0, 3.0, n)),
            "region": rng.choice(["north", "south"], n),
        }
    )
    y = ((X.a - X.c.fillna(0) / 3 + rng.normal(size=n)) > -1).astype(int)
    spec = churn_model.FeatureSpec(["a", "c"], ["region"])
    grid = churn_model.PARAM_GRIDS[candidate][0]
    if candidate == "hgb":
        grid = {**grid, "max_iter": 20, "min_samples_leaf": 10}
    base = churn_model.candidate_pipeline(candidate, spec, grid).fit(X[:400], y[:400])
    model = CalibratedClassifierCV(FrozenEstimator(base), method=method).fit(X[400:], y[400:])
    proba, score = churn_model.churn_scores(model, X)
    np.testing.assert_array_equal(proba, churn_model.churn_probability(model, X))
    np.testing.assert_array_equal(score, churn_model.churn_probability(base, X))
    # The uncalibrated pipeline (the search's and backtests' prediction) to the last bit.
    np.testing.assert_array_equal(
        churn_model.churn_probability(base, X), base.predict_proba(X)[:, 1]
    )
    assert not np.array_equal(proba, score), "calibration changed something"
    if candidate == "hgb":  # the champions' model: the same numbers, and the trees' bins
        from churnseg.models.calibration import CalibratedChurnModel
        from churnseg.models.trees import decision_and_bins

        champion = CalibratedChurnModel(base, method).fit(X[400:], y[400:])
        monkeypatch.setattr(churn_model, "PREDICT_ROWS", 64)  # bins joined across chunks
        proba, score, bins = churn_model.churn_scores_and_bins(champion, X)
        np.testing.assert_array_equal(proba, champion.predict_proba(X)[:, 1])
        np.testing.assert_array_equal(score, base.predict_proba(X)[:, 1])
        found = decision_and_bins(base, X)
        assert found is not None and bins is not None
        np.testing.assert_array_equal(bins, found[1])
        monkeypatch.undo()
    # Predicted in chunks of 64 rows (the last one short): what one call on every row gives.
    monkeypatch.setattr(churn_model, "PREDICT_ROWS", 64)
    np.testing.assert_array_equal(
        churn_model.churn_probability(model, X), model.predict_proba(X)[:, 1]
    )


def _stacked(cutoffs: int, rows: int, seed: int = 0) -> pd.DataFrame:
    """Labelled snapshots: ``rows`` customers at each of ``cutoffs`` monthly cutoffs."""
    from churnseg.models import churn as churn_model

    rng = np.random.default_rng(seed)
    frames = []
    for k in range(cutoffs):
        a = rng.normal(size=rows)
        frames.append(
            pd.DataFrame(
                {
                    "customer_id": np.arange(rows),
                    churn_model.SNAPSHOT: pd.Timestamp("2024-01-01") + pd.DateOffset(months=k),
                    "a": a,
                    churn_model.LABEL: (a + rng.normal(size=rows) > 0.5).astype(int),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def test_sample_rows_takes_a_seeded_subset_of_the_masked_rows() -> None:
    from churnseg.models import churn as churn_model

    frame = pd.DataFrame({"x": np.arange(100)})
    mask = frame.x.to_numpy() % 2 == 0
    picked = churn_model._sample_rows(frame, mask, 10, random_state=4)
    assert len(picked) == 10 and (picked.x % 2 == 0).all()
    assert picked.x.is_monotonic_increasing, "rows keep their order"
    again = churn_model._sample_rows(frame, mask, 10, random_state=4)
    assert picked.x.tolist() == again.x.tolist()
    assert churn_model._sample_rows(frame, mask, None, 0).x.tolist() == list(range(0, 100, 2))
    assert len(churn_model._sample_rows(frame, mask, 500, 0)) == 50


def test_backtest_with_later_rows_equals_the_stacked_table() -> None:
    from churnseg.models import churn as churn_model

    frame = _stacked(4, 300)
    last = frame[churn_model.SNAPSHOT] == frame[churn_model.SNAPSHOT].max()
    spec = churn_model.FeatureSpec(["a"], [])
    params = churn_model.PARAM_GRIDS["logreg"][1]
    stacked = churn_model.backtest(frame, spec, "logreg", params, 0.1, 10_000)
    split = churn_model.backtest(
        frame[~last], spec, "logreg", params, 0.1, 10_000, later=frame[last]
    )
    pd.testing.assert_frame_equal(stacked, split)
    assert len(split) == 3 and split.train_rows.tolist() == [300, 600, 900]


def test_backtest_takes_the_search_winners_fold_instead_of_fitting_it_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from churnseg.models import churn as churn_model

    frame = _stacked(4, 300)
    spec = churn_model.FeatureSpec(["a"], [])
    search = churn_model.time_aware_search(frame, spec, ["logreg"], 200, random_state=3)
    plain = churn_model.backtest(frame, spec, search.name, search.params, 0.1, 200, 3)
    fits = []
    real = churn_model.candidate_pipeline

    def counted(*args: Any, **kwargs: Any) -> Any:
        fits.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(churn_model, "candidate_pipeline", counted)
    reused = churn_model.backtest(
        frame, spec, search.name, search.params, 0.1, 200, 3, search=search
    )
    pd.testing.assert_frame_equal(reused, plain)
    assert len(reused) == 3 and len(fits) == 2, "the last cutoff's fold is the search's winner"
    other = {"C": 99.0}
    churn_model.backtest(frame, spec, "logreg", other, 0.1, 200, 3, search=search)
    assert len(fits) == 5, "other parameters are not the winner: every fold is fitted"


def test_fit_calibrated_calibrates_on_a_sample_of_the_last_cutoff_when_asked() -> None:
    from churnseg.models import churn as churn_model

    frame = _stacked(3, 2000)
    spec = churn_model.FeatureSpec(["a"], [])
    params = churn_model.PARAM_GRIDS["hgb"][0]

    def isotonic(calibration_rows: int | None) -> tuple[float, ...]:
        model = churn_model.fit_calibrated(
            frame, spec, "hgb", params, "isotonic", 0, calibration_rows=calibration_rows
        )
        calibrator = model.calibrator_
        return tuple(calibrator.X_thresholds_) + tuple(calibrator.y_thresholds_)

    every = isotonic(None)
    assert isotonic(2000) == every, "a sample as large as the cutoff is the whole cutoff"
    assert isotonic(500) != every, "500 of the 2,000 last rows give another step function"
    assert isotonic(500) == isotonic(500), "seeded"


def test_fit_calibrated_fits_on_a_sample_and_calibrates_on_every_last_row() -> None:
    from churnseg.models import churn as churn_model

    frame = _stacked(3, 2000)
    spec = churn_model.FeatureSpec(["a"], [])
    params = churn_model.PARAM_GRIDS["hgb"][0]
    model = churn_model.fit_calibrated(frame, spec, "hgb", params, "isotonic", 0, sample_rows=1000)
    base = churn_model.ranking_model(model)
    # Fitted on 1,000 of the 4,000 earlier rows: min_samples_leaf=100 allows at most 10 leaves.
    assert max(p[0].get_n_leaf_nodes() for p in base[-1]._predictors) <= 10
    full = churn_model.fit_calibrated(frame, spec, "hgb", params, "isotonic", 0)
    assert (
        max(p[0].get_n_leaf_nodes() for p in churn_model.ranking_model(full)[-1]._predictors) > 10
    )


def test_reading_the_at_risk_population_keeps_the_same_rows(tmp_path: Path) -> None:
    from churnseg.pipelines.stages import at_risk_population, read_at_risk_population

    frame = pd.DataFrame(
        {
            "customer_id": np.arange(6),
            "recency_days": [10.0, 400.0, np.nan, 365.0, 366.0, np.nan],
            "frequency": [3, 2, 0, 1, 0, 1],
        }
    )
    path = tmp_path / "train.parquet"
    frame.to_parquet(path)
    read = read_at_risk_population(path, 365)
    assert read.customer_id.tolist() == [0, 2, 3, 4]  # hand-checked: recent, or never bought
    expected = at_risk_population(frame, 365).reset_index(drop=True)
    pd.testing.assert_frame_equal(read, expected)
    assert len(read_at_risk_population(path, None)) == 6


def test_reading_at_most_max_rows_takes_a_seeded_sample_of_the_same_rows(tmp_path: Path) -> None:
    from churnseg.pipelines.stages import churn_training

    rng = np.random.default_rng(3)
    n = 200_000
    frame = pd.DataFrame(
        {
            "customer_id": np.arange(n),
            "snapshot_date": np.repeat(pd.to_datetime(["2025-01-01", "2025-04-01"]), n // 2),
            "recency_days": np.where(rng.random(n) < 0.1, np.nan, rng.uniform(0, 800, n)),
            "frequency": rng.integers(0, 3, n),
            "region": rng.choice(["north", "south", None], n),
        }
    )
    path = tmp_path / "train.parquet"
    frame.to_parquet(path, row_group_size=30_000)
    whole = churn_training.read_at_risk_population(path, 365)
    read = churn_training.read_at_risk_population(path, 365, max_rows=50_000, random_state=1)
    assert len(whole) > 50_000 and len(read) == 50_000
    # Rows of the at-risk population, whole and in file order, a fresh index like the full read.
    assert read.customer_id.is_monotonic_increasing
    assert list(read.index) == list(range(len(read)))
    expected = whole.set_index("customer_id").loc[read.customer_id].reset_index()
    pd.testing.assert_frame_equal(read, expected)
    # Seeded, and about the same share of each cutoff as of the whole population.
    again = churn_training.read_at_risk_population(path, 365, max_rows=50_000, random_state=1)
    pd.testing.assert_frame_equal(read, again)
    shares = read.snapshot_date.value_counts(normalize=True).sort_index()
    whole_shares = whole.snapshot_date.value_counts(normalize=True).sort_index()
    assert np.allclose(shares, whole_shares, atol=0.01)
    # At or under the cap the read is the whole population, as before.
    pd.testing.assert_frame_equal(
        churn_training.read_at_risk_population(path, 365, max_rows=n), whole
    )


_READ_AND_MEASURE = """
import sys
from pathlib import Path
from churnseg.pipelines.frames import read_feature_table

def resident_mb():
    line = next(x for x in Path("/proc/self/status").read_text().splitlines()
                if x.startswith("VmRSS"))
    return int(line.split()[1]) / 1e3

before = resident_mb()
frame = read_feature_table(Path(sys.argv[1]))
print(resident_mb() - before, frame.memory_usage(index=False).sum() / 1e6)
"""


def test_reading_a_feature_table_leaves_no_freed_arrow_memory_resident(tmp_path: Path) -> None:
    import subprocess
    import sys

    import pyarrow as pa
    import pyarrow.parquet as pq

    if not Path("/proc/self/status").exists():
        pytest.skip("reads resident memory from /proc (Linux)")
    # 24 float columns of 500k rows (96 MB as a frame), in a fresh process: the decoded Parquet
    # pages Arrow freed while converting would stay resident in its pool beside the frame.
    rng = np.random.default_rng(0)
    columns = {f"x{i}": rng.normal(size=500_000) for i in range(24)}
    path = tmp_path / "wide.parquet"
    pq.write_table(pa.table(columns), path)
    out = subprocess.run(
        [sys.executable, "-c", _READ_AND_MEASURE, str(path)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    grown, frame = (float(x) for x in out.stdout.split())
    assert frame == pytest.approx(96, rel=0.01)
    assert grown < frame * 1.3, f"resident memory grew {grown:.0f} MB for a {frame:.0f} MB frame"


def test_binned_decision_is_the_models_own_decision_bit_for_bit() -> None:
    """Trees walked on binned rows give scikit-learn's raw scores exactly, or nothing."""
    from churnseg.models import churn as churn_model
    from churnseg.models.calibration import CalibratedChurnModel
    from churnseg.models.trees import binned_decision

    rng = np.random.default_rng(11)
    n = 3000
    X = pd.DataFrame(
        {
            "a": rng.normal(size=n),
            # Missing values, ties on bin edges and values beyond the training range later.
            "c": np.where(rng.random(n) < 0.15, np.nan, np.round(rng.gamma(2.0, 3.0, n), 1)),
            "region": rng.choice(["north", "south", "west", None], n),
        }
    )
    y = ((X.a - X.c.fillna(0) / 3 + (X.region == "west") + rng.normal(size=n)) > -1).astype(int)
    spec = churn_model.FeatureSpec(["a", "c"], ["region"])
    grid = {**churn_model.PARAM_GRIDS["hgb"][0], "max_iter": 60, "min_samples_leaf": 5}
    base = churn_model.candidate_pipeline("hgb", spec, grid).fit(X[:2000], y[:2000])
    later = X[2000:].copy()
    later.loc[later.index[:50], "c"] = np.inf
    later.loc[later.index[50:100], "c"] = -1e9
    later.loc[later.index[100:150], "region"] = "east"  # never seen: encoded as missing
    expected = base.decision_function(later)
    got = binned_decision(base, later)
    assert got is not None
    np.testing.assert_array_equal(got, expected)
    # Through churn_scores, the calibrated and ranking probabilities are unchanged too.
    model = CalibratedChurnModel(base, "isotonic").fit(X[2000:2500], y[2000:2500])
    proba, score = churn_model.churn_scores(model, later)
    np.testing.assert_array_equal(score, base.predict_proba(later)[:, 1])
    np.testing.assert_array_equal(proba, model.predict_proba(later)[:, 1])
    # The estimator's own encoder turns a code it never saw into a missing value first, so
    # such a row bins like scikit-learn predicts it.
    bare = base[-1]
    matrix = base[:-1].transform(later)
    matrix[:5, 2] = 7.0  # an ordinal code past every known one
    np.testing.assert_array_equal(binned_decision(bare, matrix), bare.decision_function(matrix))
    # Were a category unknown to the bins after all, no binned answer: the caller predicts.
    odd = copy.deepcopy(bare)
    cat = int(np.flatnonzero(odd._bin_mapper.is_categorical_)[0])
    odd._bin_mapper.bin_thresholds_[cat] = odd._bin_mapper.bin_thresholds_[cat][:-1]
    assert binned_decision(odd, matrix) is None


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(
        st.one_of(st.sampled_from([0.0, -0.0, 1.5]), st.none()), min_size=1, max_size=6
    ),
    text=st.lists(st.sampled_from(["a", "b", None]), min_size=1, max_size=6),
)
def test_uninformative_columns_are_all_missing_or_one_value(
    values: list[float | None], text: list[str | None]
) -> None:
    from churnseg.models import churn as churn_model

    n = min(len(values), len(text))
    frame = pd.DataFrame(
        {
            "x": pd.Series(values[:n], dtype="float64"),
            "t": pd.Series(text[:n], dtype="string"),
            "k": pd.Series(text[:n], dtype="category"),
        }
    )
    spec = churn_model.FeatureSpec(["x"], ["t", "k"])
    dropped = churn_model.uninformative_columns(frame, spec)
    for col in ("x", "t", "k"):
        column = frame[col]
        if column.isna().all():
            assert dropped[col] == "missing on every training row"
        elif column.nunique(dropna=False) <= 1:
            assert dropped[col].startswith("constant on the training rows")
        else:
            assert col not in dropped
