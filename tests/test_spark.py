"""The same feature build on PySpark (local mode) gives the DuckDB result.

One Spark session (the ``spark`` fixture in conftest.py, about 14 s to start) serves every
Spark test. Needs Java; it is on the CI machine, so the module skips only where ``java`` is
missing.
"""

from __future__ import annotations

import shutil
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import ibis
import pandas as pd
import pytest

from churnseg.features.build import build_features
from churnseg.features.history import prepare_history
from churnseg.features.snapshots import build_training_set
from churnseg.pipelines.config import FeatureConfig
from churnseg.pipelines.sample import SampleSpec, generate_sample
from tests.helpers import SAMPLE_TABLES, write_tables
from tests.test_features import CONFIG, hand_tables

pytestmark = [
    pytest.mark.skipif(shutil.which("java") is None, reason="PySpark needs Java"),
    # pyspark 4.0 on pandas 3: upstream deprecation noise, not ours.
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]


def on_both(folder: Path, spark: Any) -> tuple[dict[str, ibis.Table], dict[str, ibis.Table]]:
    """Return the Parquet tables in ``folder`` on DuckDB and on Spark."""
    duck, sparkcon = ibis.duckdb.connect(), ibis.pyspark.connect(spark)
    files = {name: str(folder / f"{name}.parquet") for name in SAMPLE_TABLES}
    return (
        {n: duck.read_parquet(f) for n, f in files.items()},
        {n: sparkcon.read_parquet(f) for n, f in files.items()},
    )


def same(duck: ibis.Table, sparked: ibis.Table, keys: list[str]) -> pd.DataFrame:
    """Assert both executions agree (floats to 1e-9 relative); return the DuckDB frame."""
    a, b = duck.execute(), sparked.execute()
    assert list(a.columns) == list(b.columns), "same columns in the same order"
    for frame in (a, b):
        if "snapshot_date" in frame:
            frame["snapshot_date"] = pd.to_datetime(frame["snapshot_date"]).dt.strftime("%F")
    a = a.sort_values(keys).reset_index(drop=True)
    b = b.sort_values(keys).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, check_dtype=False, rtol=1e-9, atol=1e-9)
    return a


def test_hand_data_gives_the_same_training_set_on_spark(tmp_path: Path, spark: Any) -> None:
    con = ibis.duckdb.connect()
    for name, table in hand_tables(con).items():
        con.to_parquet(table, tmp_path / f"{name}.parquet")
    duck, sparked = on_both(tmp_path, spark)
    cutoffs = [date(2024, 2, 1), date(2024, 4, 1)]
    out = same(
        build_training_set(duck, cutoffs, CONFIG, 30),
        build_training_set(sparked, cutoffs, CONFIG, 30),
        ["snapshot_date", "customer_id"],
    )
    pairs = list(zip(out.snapshot_date, out.customer_id, strict=True))
    assert pairs == [
        ("2024-02-01", "A"),
        ("2024-02-01", "D"),  # known from its 2023 subscription
        ("2024-04-01", "A"),
        ("2024-04-01", "B"),
        ("2024-04-01", "D"),
        ("2024-04-01", "E"),
    ]


def test_generated_sample_gives_the_same_features_on_spark(tmp_path: Path, spark: Any) -> None:
    write_tables(tmp_path, generate_sample(SampleSpec(customers=120, seed=7, dirty_fraction=0.0)))
    duck, sparked = on_both(tmp_path, spark)
    config = FeatureConfig(label="contract")
    as_of = date(2025, 7, 1)
    out = same(
        build_features(duck, as_of, config), build_features(sparked, as_of, config), ["customer_id"]
    )
    assert len(out) > 50 and out.frequency.sum() > 100, "a real population with real orders"
    assert out.sub_active.sum() > 0 and out.events_login_365d.sum() > 0
    # The history a retrain prepares once (orders, purchase days with gaps) on Spark too.
    history = prepare_history(sparked["transactions"], as_of + timedelta(days=91))
    same(
        build_features(duck, as_of, config),
        build_features(sparked, as_of, config, history=history),
        ["customer_id"],
    )
