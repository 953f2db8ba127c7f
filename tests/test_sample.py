from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from churnseg.features.contract import CONTRACTS
from churnseg.pipelines.sample import (
    CATEGORIES,
    PLAN_PRICES,
    PLANS,
    SEGMENTS,
    TABLES,
    SampleSpec,
    generate_sample,
    write_sample,
)

START = datetime(2023, 1, 1)
END = datetime(2026, 1, 1)

KIND_CHECKS: dict[str, Callable[[pa.DataType], bool]] = {
    "string": pa.types.is_string,
    "timestamp": pa.types.is_timestamp,
    "date": lambda t: pa.types.is_date(t) or pa.types.is_timestamp(t),
    "float": pa.types.is_floating,
    "int": pa.types.is_integer,
    "bool": pa.types.is_boolean,
}


@pytest.fixture(scope="module")
def clean() -> dict[str, pa.Table]:
    return generate_sample(SampleSpec(customers=3000, seed=11, dirty_fraction=0.0))


@pytest.fixture(scope="module")
def dirty_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dirty")
    write_sample(SampleSpec(customers=600, seed=5, dirty_fraction=0.05), out)
    return out


def _ipc_bytes(table: pa.Table) -> bytes:
    """Serialise a table so that equal contents (NaN included) give equal bytes."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _manifest(folder: Path) -> dict[str, object]:
    return json.loads((folder / "manifest.json").read_text())


def _dirty_counts(folder: Path, table: str) -> dict[str, int]:
    manifest = _manifest(folder)
    dirty = manifest["dirty_rows"]
    assert isinstance(dirty, dict), f"manifest dirty_rows is not a mapping: {dirty!r}"
    return dirty[table]


def test_same_seed_gives_identical_tables() -> None:
    spec = SampleSpec(customers=300, seed=3, dirty_fraction=0.03)
    first, second = generate_sample(spec), generate_sample(spec)
    assert list(first) == list(TABLES), f"unexpected table keys {list(first)}"
    for name in TABLES:
        same = _ipc_bytes(first[name]) == _ipc_bytes(second[name])
        assert same, f"{name} differs between two runs of one spec"


def test_different_seed_gives_different_tables() -> None:
    a = generate_sample(SampleSpec(customers=300, seed=3))
    b = generate_sample(SampleSpec(customers=300, seed=4))
    assert not a["transactions"].equals(b["transactions"]), "seeds 3 and 4 gave equal transactions"
    assert not a["ground_truth"].equals(b["ground_truth"]), "seeds 3 and 4 gave equal ground truth"


def test_write_sample_is_deterministic_and_lists_files(tmp_path: Path) -> None:
    spec = SampleSpec(customers=200, seed=9, dirty_fraction=0.02)
    paths_a = write_sample(spec, tmp_path / "a")
    paths_b = write_sample(spec, tmp_path / "b")
    assert set(paths_a) == {*TABLES, "manifest"}, f"unexpected keys {sorted(paths_a)}"
    for name in TABLES:
        assert paths_a[name].suffix == ".parquet", f"{name} written as {paths_a[name].name}"
        left, right = pq.read_table(paths_a[name]), pq.read_table(paths_b[name])
        same = _ipc_bytes(left) == _ipc_bytes(right)
        assert same, f"{name} file contents differ between two writes"
        file_bytes = paths_a[name].read_bytes() == paths_b[name].read_bytes()
        assert file_bytes, f"{name} files are not byte-identical"
    manifest = _manifest(tmp_path / "a")
    assert manifest["spec"] == spec.to_dict(), f"manifest spec {manifest['spec']} != spec"
    counts = manifest["row_counts"]
    assert isinstance(counts, dict), "row_counts missing from manifest"
    for name in TABLES:
        actual = pq.read_metadata(paths_a[name]).num_rows
        assert counts[name] == actual, f"manifest says {counts[name]} rows in {name}, file {actual}"


@pytest.mark.parametrize("table", ["customers", "transactions", "events", "subscriptions"])
def test_tables_follow_the_contract(clean: dict[str, pa.Table], table: str) -> None:
    schema = clean[table].schema
    for column, kind in CONTRACTS[table].columns.items():
        assert column in schema.names, f"{table} lacks contract column {column!r}"
        arrow_type = schema.field(column).type
        assert KIND_CHECKS[kind](arrow_type), f"{table}.{column} is {arrow_type}, want {kind}"


def test_extra_columns_have_expected_types(clean: dict[str, pa.Table]) -> None:
    customers = clean["customers"].schema
    assert customers.field("region").type == pa.string(), "customers.region is not a string"
    assert customers.field("acquisition_channel").type == pa.string(), "acquisition not string"
    assert customers.field("is_key_account").type == pa.bool_(), "is_key_account not bool"
    truth = clean["ground_truth"].schema
    expected = {
        "customer_id": pa.string(),
        "latent_segment": pa.int64(),
        "latent_segment_name": pa.string(),
        "churn_time": pa.timestamp("us"),
        "base_rate": pa.float64(),
        "decline": pa.float64(),
    }
    for column, arrow_type in expected.items():
        assert truth.field(column).type == arrow_type, f"ground_truth.{column} type mismatch"


def test_clean_sample_has_no_dirty_rows(clean: dict[str, pa.Table]) -> None:
    tx = clean["transactions"]
    customers = clean["customers"]
    for name in ("customers", "transactions", "events", "subscriptions"):
        nulls = clean[name].column("customer_id").null_count
        assert nulls == 0, f"{name} has {nulls} null customer ids with dirty_fraction=0"
    ids = customers.column("customer_id")
    assert pc.count_distinct(ids).as_py() == len(ids), "duplicate customer rows when clean"
    amount = tx.column("amount").to_numpy()
    assert np.isfinite(amount).all(), "non-finite amounts when clean"
    is_return = tx.column("is_return").to_numpy(zero_copy_only=False)
    assert (amount[~is_return] > 0).all(), "a sale line has a non-positive amount"
    assert (amount[is_return] < 0).all(), "a return line has a non-negative amount"
    assert (amount < 1e5).all(), f"absurd amount {amount.max()} when clean"
    for name in ("transactions", "events"):
        ts = clean[name].column("timestamp")
        low, high = pc.min(ts).as_py(), pc.max(ts).as_py()
        assert low >= START and high < END, f"{name} timestamps span {low}..{high}"
    keys = tx.select(["order_id", "product", "is_return"]).group_by(
        ["order_id", "product", "is_return"]
    )
    per_line = keys.aggregate([([], "count_all")]).column("count_all")
    assert pc.max(per_line).as_py() == 1, "an order line appears twice when clean"
    known = set(ids.to_pylist())
    assert set(tx.column("customer_id").unique().to_pylist()) <= known, "unknown customer ids"
    assert set(tx.column("category").unique().to_pylist()) <= set(CATEGORIES), "bad category"
    assert customers.column("churn_date").null_count == len(customers), "churn_date not null"


def test_manifest_counts_match_tables(dirty_dir: Path) -> None:
    tx = pq.read_table(dirty_dir / "transactions.parquet")
    counts = _dirty_counts(dirty_dir, "transactions")
    assert sum(counts.values()) > 0, "no dirty rows at dirty_fraction=0.05"
    assert tx.column("customer_id").null_count == counts["null_customer_id"], (
        f"null ids {tx.column('customer_id').null_count} != manifest {counts['null_customer_id']}"
    )
    ts = tx.column("timestamp")
    future = pc.sum(pc.greater_equal(ts, pa.scalar(END, pa.timestamp("us")))).as_py()
    assert future == counts["future_timestamp"], f"{future} future rows, manifest disagrees"
    sentinel = pc.sum(pc.less(ts, pa.scalar(START, pa.timestamp("us")))).as_py()
    assert sentinel == counts["sentinel_date"], f"{sentinel} pre-history rows, manifest disagrees"
    amount = tx.column("amount").to_numpy()
    assert int(np.isnan(amount).sum()) == counts["amount_nan"], "NaN amounts != manifest"
    assert int((amount >= 1e9).sum()) == counts["amount_absurd"], "absurd amounts != manifest"
    assert int((amount == 0).sum()) == counts["amount_zero"], "zero amounts != manifest"
    padded = pc.sum(pc.invert(pc.is_in(tx.column("category"), pa.array(CATEGORIES)))).as_py()
    assert padded == counts["padded_category"], f"{padded} badly spelled categories"

    customers = pq.read_table(dirty_dir / "customers.parquet")
    known = set(customers.column("customer_id").to_pylist())
    seen = tx.column("customer_id").drop_null().to_pylist()
    unknown = sum(1 for c in seen if c not in known)
    assert unknown == counts["unknown_customer_id"], f"{unknown} unknown ids, manifest disagrees"
    customer_counts = _dirty_counts(dirty_dir, "customers")
    duplicates = customers.num_rows - len(known)
    assert duplicates == customer_counts["duplicate_customer_row"], "duplicate customers mismatch"

    events = pq.read_table(dirty_dir / "events.parquet")
    event_counts = _dirty_counts(dirty_dir, "events")
    assert events.column("customer_id").null_count == event_counts["null_customer_id"], (
        "null event ids != manifest"
    )
    late = pc.sum(pc.greater_equal(events.column("timestamp"), pa.scalar(END))).as_py()
    assert late == event_counts["future_timestamp"], "future events != manifest"


def test_dirty_rows_are_spread_through_the_table(dirty_dir: Path) -> None:
    tx = pq.read_table(dirty_dir / "transactions.parquet")
    rows = np.flatnonzero(tx.column("customer_id").is_null().to_numpy(zero_copy_only=False))
    assert rows.size >= 5, f"too few null-id rows ({rows.size}) to judge their positions"
    n = tx.num_rows
    assert rows.min() < n / 2 < rows.max(), f"null-id rows bunched at positions {rows}"


def test_csv_has_malformed_and_day_first_dates(tmp_path: Path) -> None:
    paths = write_sample(
        SampleSpec(customers=400, seed=2, dirty_fraction=0.05, file_format="csv"), tmp_path
    )
    assert paths["transactions"].suffix == ".csv", "csv format wrote another file type"
    counts = _dirty_counts(tmp_path, "transactions")
    options = pacsv.ConvertOptions(column_types={"timestamp": pa.string()})
    tx = pacsv.read_csv(paths["transactions"], convert_options=options)
    text = pd.Series(tx.column("timestamp").to_pylist())
    iso = text.str.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")
    day_first = text.str.fullmatch(r"\d{2}/\d{2}/\d{4} \d{2}:\d{2}")
    assert int(day_first.sum()) == counts["mixed_date_format"], "day-first rows != manifest"
    parsed = pd.to_datetime(text.where(iso), format="%Y-%m-%d %H:%M:%S", errors="coerce")
    broken = int((~day_first & parsed.isna()).sum())
    assert broken == counts["malformed_date_string"], f"{broken} unparseable dates != manifest"
    assert counts["malformed_date_string"] > 0, "no malformed dates in csv with dirt"


def test_clean_csv_dates_all_parse(tmp_path: Path) -> None:
    paths = write_sample(
        SampleSpec(customers=150, seed=2, dirty_fraction=0.0, file_format="csv"), tmp_path
    )
    tx = pacsv.read_csv(paths["transactions"])
    assert pa.types.is_timestamp(tx.schema.field("timestamp").type), "clean csv dates unparsed"
    subs = pacsv.read_csv(paths["subscriptions"])
    assert pa.types.is_timestamp(subs.schema.field("start_date").type), "start_date unparsed"


def test_no_activity_after_churn(clean: dict[str, pa.Table]) -> None:
    truth = clean["ground_truth"].to_pandas()
    churn = truth.set_index("customer_id")["churn_time"].dropna()
    assert len(churn) > 0, "nobody churned in 3000 customers"
    for name in ("transactions", "events"):
        frame = clean[name].select(["customer_id", "timestamp"]).to_pandas()
        frame = frame[frame.customer_id.isin(churn.index)]
        after = frame.timestamp >= frame.customer_id.map(churn)
        assert not after.any(), f"{int(after.sum())} {name} rows after the customer churned"
    subs = clean["subscriptions"].to_pandas()
    subs = subs[subs.customer_id.isin(churn.index)]
    assert subs.end_date.notna().all(), "a churned customer still has an open subscription"
    late = subs.end_date > subs.customer_id.map(churn)
    assert not late.any(), "a subscription ends after its customer churned"


def test_churn_rates_are_in_range(clean: dict[str, pa.Table]) -> None:
    truth = clean["ground_truth"].to_pandas()
    overall = truth.churn_time.notna().mean()
    assert 0.2 <= overall <= 0.45, f"overall churn {overall:.3f} outside [0.2, 0.45]"
    signup = clean["customers"].to_pandas().set_index("customer_id").signup_date
    cut = END - pd.Timedelta(days=90)
    alive = truth.customer_id.map(signup).lt(cut) & ~truth.churn_time.lt(cut)
    rate = (truth.churn_time.ge(cut) & alive).sum() / alive.sum()
    assert 0.04 <= rate <= 0.2, f"90-day churn at end-90d is {rate:.3f}"


def test_declining_customers_churn_more(clean: dict[str, pa.Table]) -> None:
    truth = clean["ground_truth"].to_pandas()
    churned = truth.churn_time.notna()
    declining = truth.decline > 0
    assert 0.05 < declining.mean() < 0.5, f"declining share {declining.mean():.3f}"
    high, low = churned[declining].mean(), churned[~declining].mean()
    assert high > low + 0.1, f"decline>0 churn {high:.3f} not above decline==0 churn {low:.3f}"


def test_segment_shares(clean: dict[str, pa.Table]) -> None:
    truth = clean["ground_truth"].to_pandas()
    shares = truth.latent_segment_name.value_counts(normalize=True)
    assert set(shares.index) == {s.name for s in SEGMENTS}, f"segments seen: {list(shares.index)}"
    assert shares.min() >= 0.05, f"a segment is below 5%: {shares.round(3).to_dict()}"
    codes = dict(zip(truth.latent_segment, truth.latent_segment_name, strict=True))
    assert codes == {i: s.name for i, s in enumerate(SEGMENTS)}, f"code/name mismatch {codes}"


def test_segments_differ_in_frequency_and_spend(clean: dict[str, pa.Table]) -> None:
    tx = clean["transactions"].to_pandas()
    truth = clean["ground_truth"].to_pandas().set_index("customer_id")
    sales = tx[~tx.is_return].assign(segment=lambda f: f.customer_id.map(truth.latent_segment_name))
    per_customer = sales.groupby(["segment", "customer_id"]).amount.agg(["size", "mean"])
    medians = per_customer.groupby("segment").median()
    assert medians.loc["vip", "mean"] > 2 * medians.loc["bargain", "mean"], "vip not pricier"
    assert medians.loc["vip", "size"] > 3 * medians.loc["occasional", "size"], "vip not frequent"
    assert medians.loc["bargain", "size"] > 3 * medians.loc["trial", "size"], "bargain not frequent"


def test_returns_follow_earlier_purchases(clean: dict[str, pa.Table]) -> None:
    tx = clean["transactions"].to_pandas()
    share = tx.is_return.mean()
    assert 0.02 <= share <= 0.07, f"return share {share:.3f} outside [0.02, 0.07]"
    returns = tx[tx.is_return]
    sales = tx[~tx.is_return]
    pairs = returns.reset_index().merge(
        sales, on=["customer_id", "product"], suffixes=("_r", "_s"), how="left"
    )
    valid = (pairs.timestamp_s < pairs.timestamp_r) & (pairs.amount_s >= -pairs.amount_r - 1e-9)
    matched = valid.groupby(pairs["index"]).any()
    assert matched.all(), f"{int((~matched).sum())} returns have no earlier matching sale line"


def test_subscriptions_are_consistent(clean: dict[str, pa.Table]) -> None:
    subs = clean["subscriptions"].to_pandas()
    customers = clean["customers"].num_rows
    share = subs.customer_id.nunique() / customers
    assert 0.3 <= share <= 0.5, f"subscriber share {share:.3f} outside [0.3, 0.5]"
    assert set(subs.plan) <= set(PLANS), f"unknown plans {set(subs.plan)}"
    prices = subs.plan.map(dict(zip(PLANS, PLAN_PRICES, strict=True)))
    assert (subs.recurring_revenue == prices).all(), "recurring_revenue does not match plan"
    ended = subs.end_date.notna()
    assert (subs.end_date[ended] > subs.start_date[ended]).all(), "a subscription ends too early"
    ordered = subs.sort_values(["customer_id", "start_date"])
    next_start = ordered.groupby("customer_id").start_date.shift(-1)
    overlap = next_start.notna() & (ordered.end_date.isna() | (ordered.end_date > next_start))
    assert not overlap.any(), "a customer has overlapping subscriptions"
    assert ordered.groupby("customer_id").size().max() > 1, "no upgrades or downgrades"


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="customers"):
        SampleSpec(customers=0)
    with pytest.raises(ValueError, match="dirty_fraction"):
        SampleSpec(dirty_fraction=0.9)
    with pytest.raises(ValueError, match="after start"):
        SampleSpec(start=date(2025, 1, 1), end=date(2025, 2, 1))


def test_tiny_sample_works() -> None:
    tables = generate_sample(SampleSpec(customers=1, seed=0, dirty_fraction=0.5))
    assert tables["ground_truth"].num_rows == 1, "one customer should give one truth row"
    assert tables["customers"].num_rows >= 1, "customers table is empty"
