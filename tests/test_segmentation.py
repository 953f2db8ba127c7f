from __future__ import annotations

from datetime import date
from pathlib import Path

import ibis
import numpy as np
import pandas as pd
import pytest
import sklearn.base
import skops.io
from sklearn.metrics import adjusted_rand_score

from churnseg.features.behaviour import rfm_features
from churnseg.models import segmentation as seg
from churnseg.pipelines.config import load_config
from churnseg.pipelines.sample import SampleSpec, write_sample

NAMING = load_config(environ={}).segmentation.naming
RULES = [seg.NamingRule(r.name, r.min_rank, r.max_rank) for r in NAMING]


@pytest.fixture(scope="module")
def population(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pd.DataFrame]:
    """Features of 12k generated customers at two cutoffs, with the latent segment."""
    out = tmp_path_factory.mktemp("seg")
    write_sample(SampleSpec(customers=12_000, seed=3, dirty_fraction=0.0), out)
    con = ibis.duckdb.connect()
    tx = con.read_parquet(out / "transactions.parquet")
    cu = con.read_parquet(out / "customers.parquet")
    truth = pd.read_parquet(out / "ground_truth.parquet")[["customer_id", "latent_segment"]]
    frames = {}
    for label, cutoff in [("earlier", date(2025, 10, 1)), ("later", date(2026, 1, 1))]:
        frame = rfm_features(tx, cu, cutoff).execute().merge(truth, on="customer_id")
        frames[label] = frame.sort_values("customer_id").reset_index(drop=True)
    return frames


def fit(frame: pd.DataFrame, **params: object) -> object:
    return seg.segmentation_pipeline(k_min=2, k_max=8, **params).fit(frame)


def established(frame: pd.DataFrame) -> pd.Series:
    """Customers whose type is knowable: 3+ purchases over at least a year."""
    return (frame.frequency >= 3) & (frame.tenure_days >= 365)


def test_recovers_latent_segments(population: dict[str, pd.DataFrame]) -> None:
    frame = population["later"]
    model = fit(frame)
    labels = model.predict(frame)
    mask = established(frame)
    ari = adjusted_rand_score(frame.latent_segment[mask], labels[mask])
    assert mask.sum() > 3000
    assert ari >= 0.8, f"adjusted Rand index {ari:.3f} on {mask.sum()} established customers"
    assert 5 <= model[-1].k_ <= 7, "5 latent types, plus at most a 'barely bought' group or two"


def test_retrain_on_later_snapshot_keeps_segment_names(
    population: dict[str, pd.DataFrame],
) -> None:
    earlier, later = population["earlier"], population["later"]
    champion = fit(earlier)
    champion_names = seg.name_segments(
        seg.segment_profiles(earlier, champion.predict(earlier), seg.DEFAULT_FEATURES),
        seg.DEFAULT_FEATURES,
        RULES,
    )
    challenger = fit(later)
    match = seg.match_segments(challenger, champion, later, max_distance=1.0)
    challenger[-1].relabel(match.ids)
    keep = {sid: champion_names[sid] for sid in match.kept}
    names = seg.name_segments(
        seg.segment_profiles(later, challenger.predict(later), seg.DEFAULT_FEATURES),
        seg.DEFAULT_FEATURES,
        RULES,
        keep=keep,
    )
    before = pd.Series(champion.predict(later)).map(champion_names)
    after = pd.Series(challenger.predict(later)).map(names)
    same = (before == after).mean()
    assert same >= 0.9, f"only {same:.1%} of customers kept their segment name after retraining"
    assert match.kept, "matched segments keep their ids"


@pytest.mark.parametrize("fit_sample_rows", [200_000, 1000], ids=["whole", "sampled"])
def test_deterministic_and_row_order_free(
    population: dict[str, pd.DataFrame], fit_sample_rows: int
) -> None:
    frame = population["later"].head(4000)
    first = fit(frame, random_state=7, fit_sample_rows=fit_sample_rows).predict(frame)
    again = fit(frame, random_state=7, fit_sample_rows=fit_sample_rows).predict(frame)
    np.testing.assert_array_equal(first, again)
    shuffled = frame.sample(frac=1.0, random_state=1)
    refit = fit(shuffled, random_state=7, fit_sample_rows=fit_sample_rows)
    permuted = pd.Series(refit.predict(shuffled), index=shuffled.index)
    np.testing.assert_array_equal(permuted.sort_index().to_numpy(), first)


def test_a_sampled_fit_finds_the_whole_fit_s_segments(population: dict[str, pd.DataFrame]) -> None:
    """k-means fitted on 2,000 of 12,000 rows: the same k and nearly the same segments."""
    frame = population["later"]
    whole, sampled = fit(frame), fit(frame, fit_sample_rows=2000)
    assert sampled[-1].k_ == whole[-1].k_
    agreement = adjusted_rand_score(whole.predict(frame), sampled.predict(frame))
    assert agreement >= 0.95, f"adjusted Rand index {agreement:.3f} against the whole fit"
    mask = established(frame)
    truth = adjusted_rand_score(frame.latent_segment[mask], sampled.predict(frame)[mask])
    assert truth >= 0.8, f"adjusted Rand index {truth:.3f} against the latent types"
    # Scores describe every row, not the sample: inertia over all 12,000 rows by hand.
    km, space = sampled[-1], seg.embed(sampled, frame)
    by_hand = ((space - km.cluster_centers_[km.kmeans_.predict(space)]) ** 2).sum()
    chosen = next(r for r in km.scores_ if r["k"] == km.k_)
    assert chosen["inertia"] == pytest.approx(by_hand, rel=1e-9)
    sizes = np.bincount(km.kmeans_.predict(space), minlength=km.k_)
    assert chosen["min_share"] == pytest.approx(sizes.min() / len(frame))


def test_a_model_saved_before_the_sample_setting_loads_and_refits() -> None:
    """A champion registered before 2026-12-07 stored ``minibatch_above``; it still works."""
    x = np.random.default_rng(0).normal(size=(300, 2))
    km = seg.AutoKMeans(k_max=3, n_init=1, fit_sample_rows=5000).fit(x)
    km.__dict__["minibatch_above"] = km.__dict__.pop("fit_sample_rows")  # the old layout
    blob = skops.io.dumps(km)
    old = skops.io.loads(blob, trusted=skops.io.get_untrusted_types(data=blob))
    assert old.get_params()["fit_sample_rows"] == 5000 and "minibatch_above" not in vars(old)
    np.testing.assert_array_equal(old.predict(x), km.predict(x))
    np.testing.assert_array_equal(sklearn.base.clone(old).fit(x).predict(x), km.predict(x))


def blobs(centers: list[tuple[float, float]], n: int = 300, seed: int = 0) -> pd.DataFrame:
    """Customers whose (purchase_rate, monetary_mean) sit around the given centres."""
    rng = np.random.default_rng(seed)
    rows = []
    for rate, value in centers:
        rates = rate * np.exp(rng.normal(0, 0.05, n))
        values = value * np.exp(rng.normal(0, 0.05, n))
        rows.append(pd.DataFrame({"purchase_rate": rates, "monetary_mean": values}))
    return pd.concat(rows, ignore_index=True)


def test_matching_reports_kept_new_and_vanished() -> None:
    feats = ("purchase_rate", "monetary_mean")
    old = blobs([(0.2, 10.0), (3.0, 10.0), (3.0, 100.0)])
    new = blobs([(0.2, 10.0), (3.0, 100.0), (0.2, 200.0)], seed=1)
    champion = seg.segmentation_pipeline(features=feats, k_min=3, k_max=3).fit(old)
    challenger = seg.segmentation_pipeline(features=feats, k_min=3, k_max=3).fit(new)
    match = seg.match_segments(challenger, champion, new, max_distance=1.0)
    assert len(match.kept) == 2 and len(match.new) == 1 and len(match.vanished) == 1
    assert match.new == [3], "a fresh id follows the champion's highest"
    challenger[-1].relabel(match.ids)
    probe = pd.DataFrame({"purchase_rate": [0.2, 3.0], "monetary_mean": [10.0, 100.0]})
    np.testing.assert_array_equal(challenger.predict(probe), champion.predict(probe))


def test_names_follow_centroid_ranks() -> None:
    profiles = pd.DataFrame(
        {
            "segment_id": [0, 1, 2, 3, 4, 5],
            "purchase_rate": [3.0, 3.1, 0.2, 0.9, 0.25, 0.01],
            "monetary_mean": [100.0, 8.0, 120.0, 30.0, 9.0, 40.0],
        }
    )
    names = seg.name_segments(profiles, seg.DEFAULT_FEATURES, RULES)
    assert names == {
        0: "Champions",
        1: "Bargain hunters",
        2: "Big spenders",
        3: "Regular buyers, mid order value",  # no rule fits: its centroid in words
        4: "Occasional",
        5: "Dormant",
    }
    kept = seg.name_segments(profiles, seg.DEFAULT_FEATURES, RULES, keep={3: "Regulars"})
    assert kept[3] == "Regulars" and kept[0] == "Champions"


def test_profiles_and_migration_by_hand() -> None:
    frame = pd.DataFrame(
        {
            "customer_id": ["a", "b", "c", "d"],
            "frequency": [6, 2, 1, 0],
            "tenure_days": [200.0, 100.0, 50.0, 10.0],
            "recency_days": [20.0, 40.0, 20.0, 10.0],
            "monetary_total": [60.0, 40.0, -5.0, 0.0],
        }
    )
    profiles = seg.segment_profiles(frame, np.array([1, 1, 0, 0]), ["purchase_rate"])
    assert profiles["size"].tolist() == [2, 2]
    assert profiles.revenue_share.tolist() == pytest.approx([0.0, 1.0]), "returns count as 0"
    assert profiles.purchase_rate.tolist() == pytest.approx([0.5, (1.0 + 1.0) / 2])
    before = pd.DataFrame({"customer_id": ["a", "b", "c"], "segment_id": [0, 0, 1]})
    after = pd.DataFrame({"customer_id": ["a", "b", "d"], "segment_id": [0, 1, 1]})
    moves = seg.migration_table(before, after, {0: "Loyal", 1: "Dormant"})
    got = {(r.segment_from, r.segment_to): r.customers for r in moves.itertuples()}
    assert got == {
        ("Loyal", "Loyal"): 1,
        ("Loyal", "Dormant"): 1,
        ("Dormant", "(none)"): 1,
        ("(none)", "Dormant"): 1,
    }


def test_segmentation_input_error_names_the_column(tmp_path: Path) -> None:
    frame = pd.DataFrame({"frequency": [1, 2, 3]})
    with pytest.raises(KeyError, match="basket_size"):
        seg.segmentation_pipeline(features=("basket_size",), k_min=2, k_max=2).fit(frame)


def test_a_rule_names_only_what_really_differs() -> None:
    # Everyone pays about the same: no name may claim a difference in order value.
    profiles = pd.DataFrame(
        {
            "segment_id": [0, 1, 2],
            "purchase_rate": [3.0, 0.2, 1.0],
            "monetary_mean": [12.0, 12.1, 11.9],
        }
    )
    names = seg.name_segments(profiles, seg.DEFAULT_FEATURES, RULES)
    assert seg.differing_inputs(profiles, seg.DEFAULT_FEATURES) == ["purchase_rate"]
    assert not {"Champions", "Bargain hunters", "Big spenders"} & set(names.values()), names
    assert names == {0: "Frequent buyers", 1: "Dormant", 2: "Regular buyers"}


def test_descriptions_are_unique_and_in_words() -> None:
    profiles = pd.DataFrame(
        {
            "segment_id": [0, 1, 2, 3],
            "events_90d": [50.0, 2.0, 51.0, 20.0],
            "sub_recurring_revenue": [100.0, 10.0, 99.0, 40.0],
        }
    )
    names = seg.name_segments(profiles, ["events_90d", "sub_recurring_revenue"], RULES)
    assert len(set(names.values())) == 4, names
    assert names[1] == "Low activity (90 days), low recurring revenue"
    assert all("Segment" not in n and n[0].isupper() for n in names.values()), names


def _feature_file(tmp_path: Path, frame: pd.DataFrame) -> Path:
    path = tmp_path / "scoring.parquet"
    frame.to_parquet(path, index=False)
    return path


def test_stage_reads_only_the_columns_segmentation_uses(
    population: dict[str, pd.DataFrame], tmp_path: Path
) -> None:
    from churnseg.pipelines.stages.segmenting import segmentation_frame

    wide = population["later"].assign(
        snapshot_date=date(2026, 1, 1), spend_365d=1.0, events_90d=3, note="x"
    )
    path = _feature_file(tmp_path, wide)
    config = load_config(environ={})
    frame, inputs = segmentation_frame(config, path)
    assert inputs == ["purchase_rate", "monetary_mean"]
    assert set(frame.columns) == {
        "customer_id",
        "snapshot_date",
        "recency_days",
        "frequency",
        "monetary_total",
        "monetary_mean",
        "tenure_days",
    }
    # A champion clustered on events: its input is read too, to match segments in its space.
    champion = seg.segmentation_pipeline(features=["events_90d"], k_min=2, k_max=2)
    frame, _ = segmentation_frame(config, path, champion)
    assert "events_90d" in frame.columns and "spend_365d" not in frame.columns
    # The narrow frame clusters and profiles exactly as the whole table does.
    narrow = fit(frame)
    whole = fit(wide)
    np.testing.assert_array_equal(narrow.predict(frame), whole.predict(wide))
    columns = ["purchase_rate", "monetary_mean", "recency_days"]
    pd.testing.assert_frame_equal(
        seg.segment_profiles(frame, narrow.predict(frame), columns),
        seg.segment_profiles(wide, whole.predict(wide), columns),
    )


def test_stage_reads_a_customers_only_table_whole(tmp_path: Path) -> None:
    from churnseg.pipelines.stages.segmenting import segmentation_frame

    rng = np.random.default_rng(0)
    table = pd.DataFrame(
        {
            "customer_id": [f"c{i}" for i in range(200)],
            "MonthlyCharges": rng.uniform(20, 120, 200),
            "TotalCharges": rng.uniform(20, 8000, 200),
            "SeniorCitizen": rng.integers(0, 2, 200),
        }
    )
    frame, inputs = segmentation_frame(load_config(environ={}), _feature_file(tmp_path, table))
    assert inputs == ["MonthlyCharges", "TotalCharges"]
    assert list(frame.columns) == list(table.columns)
