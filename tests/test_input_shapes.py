"""The shapes of customer data teams really have, each run end to end from a short config.

(a) a customers-only snapshot (attributes and a churn flag, no timestamps); (b) subscriptions
and events without transactions (SaaS, contract label); (c) transactions only (retail); (d) all
four tables. Each is cut from one generated sample, run through the retrain flow, and checked on
what a user reads: every known customer published, a champion, readable segment names, classes
that agree with the label mode.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from churnseg.pipelines.config import ConfigError, load_config
from churnseg.pipelines.sample import SampleSpec, generate_sample

pytestmark = pytest.mark.slow

# Fast settings: the shapes are the point here, not the model search.
FAST = (
    "segmentation: {k_min: 2, k_max: 4, n_init: 2}\nchurn: {candidates: [logreg]}\n"
    "snapshots: {max_train_cutoffs: 3}\n"
)


@pytest.fixture(scope="module")
def sample() -> dict[str, pd.DataFrame]:
    tables = generate_sample(SampleSpec(customers=900, seed=17, dirty_fraction=0.0))
    return {name: table.to_pandas() for name, table in tables.items()}


def snapshot_table(sample: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Return a churn table as most public ones are: attributes and a flag, no timestamps.

    Besides plain attributes it has what such tables hold in the wild: an e-mail (an id in
    disguise), a birth date, a city with hundreds of values and a numeric code.
    """
    customers = sample["customers"]
    churned = customers.customer_id.map(
        sample["ground_truth"].set_index("customer_id").churn_time.notna()
    )
    rng = np.random.default_rng(5)
    orders = sample["transactions"].groupby("customer_id").order_id.nunique()
    fees = sample["subscriptions"].groupby("customer_id").recurring_revenue.max()
    n = len(customers)
    return pd.DataFrame(
        {
            "customer_id": customers.customer_id,
            "region": customers.region,
            "channel": customers.acquisition_channel,
            "orders": customers.customer_id.map(orders).fillna(0).astype("int64"),
            "monthly_fee": customers.customer_id.map(fees).fillna(0.0),
            "email": [f"user{i}@example.com" for i in range(n)],
            "birth_date": pd.Timestamp("1960-01-01")
            + pd.to_timedelta(rng.integers(0, 15_000, n), unit="D"),
            "city": [f"city {i}" for i in rng.integers(0, 400, n)],
            "churn": np.where(churned, "Yes", "No"),
        }
    )


SHAPES: dict[str, tuple[tuple[str, ...], str]] = {
    "customers_only": (("customers",), "features: {label: column, label_column: churn}\n"),
    "saas": (("customers", "events", "subscriptions"), "features: {label: contract}\n"),
    "retail": (("transactions",), ""),
    "all_four": (("customers", "transactions", "events", "subscriptions"), ""),
}


def write_shape(folder: Path, sample: dict[str, pd.DataFrame], shape: str) -> Path:
    tables, extra = SHAPES[shape]
    data = folder / "data"
    data.mkdir(parents=True)
    sources = []
    for name in tables:
        frame = snapshot_table(sample) if shape == "customers_only" else sample[name]
        if name == "customers" and shape == "saas":
            frame = frame.drop(columns=["churn_date"])  # the subscriptions say who left
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), data / f"{name}.parquet")
        sources.append(f"  {name}: {{path: {data / name}.parquet}}\n")
    config = folder / "config.yaml"
    config.write_text(
        f"state_dir: {folder / 'state'}\ncleaning: {{now: 2026-01-01}}\n"
        f"sources:\n{''.join(sources)}{extra}{FAST}"
    )
    return config


def published(config: Path) -> pd.DataFrame:
    with sqlite3.connect(config.parent / "state" / "scores.db") as con:
        return pd.read_sql("SELECT * FROM customer_scores", con)


@pytest.fixture(scope="module")
def runs(
    prefect_harness: None, sample: dict[str, pd.DataFrame], tmp_path_factory: Any
) -> dict[str, tuple[dict[str, Any], pd.DataFrame, Path]]:
    from churnseg.pipelines.flows import retrain_flow

    out = {}
    for shape in SHAPES:
        config = write_shape(tmp_path_factory.mktemp(shape), sample, shape)
        summary = retrain_flow(config_path=str(config))
        out[shape] = (summary, published(config), config)
    return out


@pytest.mark.parametrize("shape", list(SHAPES))
def test_every_shape_publishes_every_known_customer_with_a_champion(
    runs: dict[str, Any], sample: dict[str, pd.DataFrame], shape: str
) -> None:
    summary, scores, _ = runs[shape]
    known = (
        set(sample["transactions"].customer_id)
        if shape == "retail"
        else set(sample["customers"].customer_id)
    )
    assert set(scores.customer_id) == known, "every known customer has a published row"
    assert len(scores) == len(known) == summary["customers_known"]
    assert summary["churn_champion_version"] is not None, summary["churn_decision"]
    assert scores.churn_probability.between(0, 1).all()
    names = summary["segment_names"]
    assert len(set(names.values())) == len(names), names
    assert not any(name.startswith("Segment ") for name in names.values()), names


def test_a_snapshot_table_trains_on_labels_and_splits_by_customer(runs: dict[str, Any]) -> None:
    summary, scores, _ = runs["customers_only"]
    assert summary["plan_notes"] and "holds out" in summary["plan_notes"][0]
    assert scores.value_tier.isna().all(), "no money column: no made-up tiers"
    assert scores.expected_value.isna().all(), "nothing to value a customer on: null, not 0"
    run = Path(summary["run_folder"])
    train = pd.read_parquet(run / "features" / "train.parquet")
    validation = pd.read_parquet(run / "features" / "validation.parquet")
    assert not set(train.customer_id) & set(validation.customer_id)
    assert 0.15 < len(validation) / (len(train) + len(validation)) < 0.35
    # Attribute inference: the e-mail is an id, the birth date an age, the city folded.
    assert "email" not in train.columns
    assert "birth_date_age_years" in train.columns
    assert train.birth_date_age_years.between(20, 70).all()
    assert train.city.nunique() <= 21 and "other" in set(train.city), "20 levels + other"
    assert summary["val_roc_auc"] > 0.55, "the attributes carry the sample's churn signal"


def test_ended_contracts_are_churned_and_never_high_risk(
    runs: dict[str, Any], sample: dict[str, pd.DataFrame]
) -> None:
    summary, scores, _ = runs["saas"]
    subs = sample["subscriptions"]
    as_of = pd.Timestamp(summary["snapshot"])
    active = subs[subs.start_date.lt(as_of) & (subs.end_date.isna() | subs.end_date.ge(as_of))]
    ended = set(subs.customer_id) - set(active.customer_id)
    assert ended, "the sample has subscribers who left"
    lapsed = scores[scores.customer_id.isin(ended)]
    assert (lapsed.lifecycle_stage == "churned").all()
    assert (lapsed.risk_band == "churned").all(), "no retention slot for people already gone"
    at_risk = scores[scores.customer_id.isin(set(active.customer_id))]
    assert (at_risk.risk_band != "churned").all() and (at_risk.risk_band == "high").any()
    assert summary["customers_at_risk"] == len(at_risk)
    assert (at_risk.expected_value > 0).all(), "recurring revenue over the horizon"


def test_retail_zero_amounts_are_activity(runs: dict[str, Any]) -> None:
    summary, _, _ = runs["retail"]
    assert "zero_amount" not in summary["quality"]["transactions"].by_reason
    assert summary["customers_at_risk"] < summary["customers_known"], "long lapsed: churned"


@pytest.mark.parametrize(
    ("tables", "label", "message"),
    [
        ({"customers"}, "inactivity", "use features.label: column"),
        ({"customers", "subscriptions"}, "inactivity", "contract or column"),
        ({"events"}, "contract", "needs sources.subscriptions"),
        ({"transactions"}, "column", "needs sources.customers"),
    ],
)
def test_config_says_which_tables_the_label_mode_lacks(
    tmp_path: Path, tables: set[str], label: str, message: str
) -> None:
    sources = "".join(f"  {t}: {{path: {t}.parquet}}\n" for t in sorted(tables))
    column = ", label_column: churn" if label == "column" else ""
    path = tmp_path / "c.yaml"
    path.write_text(f"sources:\n{sources}features: {{label: {label}{column}}}\n")
    with pytest.raises(ConfigError, match=message):
        load_config(path, environ={})


@pytest.mark.parametrize(
    ("tables", "label"),
    [
        ({"customers"}, "column"),
        ({"customers"}, "contract"),
        ({"subscriptions", "events"}, "contract"),
        ({"transactions"}, "inactivity"),
        ({"customers", "transactions", "events", "subscriptions"}, "inactivity"),
    ],
)
def test_config_accepts_the_shapes_that_work(tmp_path: Path, tables: set[str], label: str) -> None:
    sources = "".join(f"  {t}: {{path: {t}.parquet}}\n" for t in sorted(tables))
    column = ", label_column: churn" if label == "column" else ""
    path = tmp_path / "c.yaml"
    path.write_text(f"sources:\n{sources}features: {{label: {label}{column}}}\n")
    assert set(load_config(path, environ={}).sources) == tables


def test_a_config_without_a_sample_section_never_reads_the_sample(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"state_dir: {tmp_path}\n")
    with pytest.raises(ConfigError, match="no sources"):
        load_config(path, environ={})
    assert not (tmp_path / "sample").exists()
